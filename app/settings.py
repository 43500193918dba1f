"""Runtime settings, read from environment variables prefixed ``NIBBLE_``.

Every limit the server enforces lives here, so that an operator can see and
change them in one place (SECURITY.md lists them with their defaults).  The
app reaches them through `get_settings()`, a cached FastAPI dependency that
tests replace with ``app.dependency_overrides`` or by passing a `Settings` to
`create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Limits, pool sizes, CORS and API keys; each field is ``NIBBLE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="NIBBLE_", extra="ignore")

    max_upload_bytes: int = Field(256 * MiB, gt=0, description="Largest accepted uploaded file, bytes.")
    max_json_bytes: int = Field(1 * MiB, gt=0, description="Largest accepted JSON request body, bytes.")
    max_tensors: int = Field(4096, gt=0, description="Most tensors in one uploaded .safetensors file.")
    max_budget_tensors: int = Field(
        1024, gt=0, description="Most tensors a quantize or compare request with a budget (bits_per_weight, "
        "budget_bytes) measures: each is quantized in every budget format, about 2 ms a tensor however small.",
    )
    max_elements_per_tensor: int = Field(
        256 * MiB, gt=0, description="Most elements in one uploaded tensor (256 Mi = 1 GiB of float32)."
    )
    max_header_bytes: int = Field(
        16 * MiB, gt=0, description="Largest .safetensors JSON header, bytes (a .npy header: this, at most 64 KiB)."
    )
    max_checkpoint_form_bytes: int = Field(
        64 * MiB, gt=0, description="Most bytes of the file parts of one multipart /v1/plan or /v1/plan/sweep "
        "(the request, each checkpoint file's header, model.safetensors.index.json, config.json) together; "
        "each part at most max_header_bytes + 8.")
    max_checkpoint_files: int = Field(
        4096, gt=0, description="Most header parts (checkpoint files) in one multipart /v1/plan or /v1/plan/sweep: "
        "the part past it is refused (413 naming header) as it arrives.")
    max_checkpoint_tensors: int = Field(
        1 << 19, gt=0, description="Most tensors the header parts of one multipart /v1/plan or /v1/plan/sweep may "
        "declare together (a real checkpoint: up to about 280,000, a 384-expert int4 one); refused (413 naming "
        "header) at the file that passes it.")
    max_config_depth: int = Field(16, gt=0, description="Deepest nesting accepted in a JSON body.")
    max_sweep_rows: int = Field(4096, gt=0, description="Most rows one /v1/plan/sweep may compute.")
    max_sweep_device_rows: int = Field(
        1 << 18, gt=0, description="Most devices, summed over its rows, one /v1/plan/sweep may plan.")
    sweep_concurrency: int = Field(
        1, gt=0, description="Large /v1/plan/sweep requests computed at once (pure Python: more at once only "
        "take the event loop's turns); small ones are not counted.")
    sweep_queue: int = Field(4, ge=0, description="Large sweeps that may wait for their turn; past that, 503.")
    pool_workers: int = Field(2, gt=0, description="Worker processes running quantization.")
    job_threads: int = Field(
        1, gt=0, description="Threads each quantize job uses (workers already run one job per core)."
    )
    pool_queue: int = Field(4, ge=0, description="Quantize requests that may wait for a free worker.")
    pool_kind: Literal["process", "thread"] = Field(
        "process", description="process: isolated, killable workers (default); thread: in-process."
    )
    request_time_limit_seconds: float = Field(
        300.0, gt=0, description="Longest a quantize/compare/dequantize job may run before 504."
    )
    retry_after_seconds: int = Field(5, gt=0, description="Retry-After sent with 503 when the pool is full.")
    upload_idle_seconds: float = Field(
        30.0, gt=0, description="Longest a request body (an upload, or JSON) may send no bytes before it is "
        "refused with 408 and its connection closed (an upload's pool place given back): a stalled client "
        "cannot hold a place.")
    upload_min_bytes_per_second: float = Field(
        65536.0, gt=0, description="Slowest average rate an upload may keep (it may fall upload_idle_seconds "
        "behind it) before it is refused with 408: a client trickling bytes cannot hold a pool place either.")
    head_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest a connection may take to send a request head, from its opening (or from "
        "its first byte after an answer), before it is answered 408 and closed; under the guarded event loop "
        "(`--loop app.connections:GuardedEventLoop`, as `make run`, `nibble serve` and the Dockerfile start it).")
    max_head_bytes: int = Field(
        64 * 1024, gt=0, description="Longest request head (request line and headers), bytes: past it the "
        "connection is answered 431 and closed; under the guarded event loop.")
    max_connections: int = Field(
        1024, gt=0, description="Most connections one server process holds open (with or without a request "
        "head yet): a new one past it is answered 503 and closed; under the guarded event loop.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated in the environment)."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer tokens (comma-separated); empty means no authentication.",
    )
    download_url_seconds: int = Field(
        3600, gt=0, description="With API keys set, how long the signed URL of a job's result file (given by "
                                "GET /v1/jobs/{id}) downloads without an Authorization header, seconds.")
    temp_dir: Path | None = Field(None, description="Where uploads are spooled; default: the system's.")
    state_dir: Path | None = Field(
        None, description="Where the checkpoint job store (SQLite) and each job's parts and result live; "
                          "unset: the /v1/jobs routes answer 404.")
    data_dir: Path | None = Field(
        None, description="The data root: a job's source.path is a directory under it, and nothing outside it "
                          "(by '..', an absolute path or a symlink) is read; unset: the /v1/jobs routes answer 404.")
    upload_dir: Path | None = Field(
        None, description="Where tus upload sets (checkpoint files uploaded resumably) are kept; default: "
                          "<state_dir>/uploads.  With Ray, put it on the storage every node mounts at the same path.")
    upload_max_file_bytes: int = Field(
        16 * 1024 * MiB, gt=0, description="Largest file of a tus upload set (Tus-Max-Size), bytes: a 5 GB shard "
                                          "fits.")
    upload_max_set_bytes: int = Field(
        2 * 1024 * 1024 * MiB, gt=0, description="Most bytes, the declared lengths summed, in one upload set.")
    upload_max_files: int = Field(1024, gt=0, description="Most files in one upload set.")
    upload_max_sets: int = Field(64, gt=0, description="Most upload sets kept at once (DELETE frees one).")
    upload_expiry_seconds: float = Field(
        86400.0, gt=0, description="An upload set untouched this long (no file created, no byte appended) that no "
                                   "queued or running job reads is removed when the next set is created; tus's "
                                   "Upload-Expires header tells when.")
    job_tensor_concurrency: int = Field(
        2, gt=0, description="Tensors of one checkpoint job quantized at once (each takes a pool worker).")
    ray_address: str | None = Field(
        None, description="A Ray cluster's address (host:port): checkpoint job tensors then run as Ray tasks, "
                          "reading their source at the same path on every node; unset: the local pool.")
    max_unfinished_jobs: int = Field(
        64, gt=0, description="Most checkpoint jobs queued or running at once (those resumed at a restart "
                              "included); past it POST /v1/jobs is 503 with Retry-After, nothing stored.")
    job_max_tensors: int = Field(200_000, gt=0, description="Most tensors in one job's source checkpoint.")
    job_max_elements_per_tensor: int = Field(
        1 << 32, gt=0, description="Most elements in one tensor of a job's source checkpoint (a tensor is read "
                                   "into memory whole when it is quantized).")

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Accept ``a,b,c`` from the environment as well as a list from code."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            if value.strip() and not parts:
                # " , " would otherwise turn authentication (or CORS) off without a word
                raise ValueError(f"{value!r} lists no value; leave it empty to mean none")
            return parts
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
