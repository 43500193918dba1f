"""Wire models of /v1/jobs: a checkpoint quantize job's request, its status, progress and result files.

The conversion to the core's `CheckpointOptions` lives here (`to_options`).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.schemas.quantize import MAX_INCLUDE_CHARS, BudgetFields
from quant_core.checkpoint import DEFAULT_EXCLUDE, DEFAULT_MAX_SHARD_BYTES, CheckpointOptions
from quant_core.quantize import METHODS
from quant_core.quantize.allocation import BUDGET_GROUP_SIZES

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: one glob of include or exclude: at most as long as /v1/quantize's include
JobGlob = Annotated[str, Field(max_length=MAX_INCLUDE_CHARS)]
#: validation context of a request read back from the job store: its dump carries every default (group_size 128
#: beside a budget, say), and what was sent was checked when the job was submitted
STORED = {"stored": True}


class JobSource(BaseModel):
    """Where the checkpoint is: a directory under the server's data root (NIBBLE_DATA_DIR), or an upload set."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str | None = Field(None, min_length=1, max_length=4096, description=(
        "A directory relative to the data root holding model.safetensors.index.json and its shards (or one "
        "model.safetensors), config.json and tokenizer files.  No '..', no absolute path, no symlink leading out."))
    upload: str | None = Field(None, min_length=1, max_length=64, description=(
        "The id of a complete upload set (POST /v1/uploads, its files sent by tus) holding those files."))

    @model_validator(mode="after")
    def _one_source(self) -> JobSource:
        if (self.path is None) == (self.upload is None):
            raise ValueError("give exactly one of source.path and source.upload")
        return self


class JobCreate(BudgetFields):
    """A checkpoint quantize job: the source, and the options of POST /v1/quantize (a budget: one of
    bits_per_weight and budget_bytes, `BudgetFields`).  Strict, as the plan bodies are: JSON carries types, so
    ``"symmetric": "yes"``, ``"group_size": true`` or ``"128"`` are refused naming the field, not read as True, 1
    or 128 (the lax reading of /v1/quantize's form fields, which are all text)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: JobSource
    method: str = Field("rtn", description=f"One of: {', '.join(m for m in METHODS if not m.startswith('gptq'))} "
                                            "(GPTQ needs calibration activations, which jobs do not take).")
    output: Literal["compressed-tensors", "gptq", "awq", "gguf"] = Field("compressed-tensors", description=(
        "compressed-tensors (pack-quantized), gptq, awq: safetensors shards + index + config.json with its "
        "quantization_config, other files copied; gguf: one Q4_0 file llama.cpp loads (needs group_size 32, "
        "symmetric; Llama, Mistral, Qwen2 or Qwen3 with a tokenizer llama.cpp's converter reads, else 422)."))
    group_size: int | None = Field(128, description="32, 64, 128, 256; 'row' or null for a whole row.")
    symmetric: bool = False
    zero: Literal["auto", "int4"] = Field("auto", description=(
        "Zero points are stored as 4-bit integers in every engine format (auto means int4)."))
    include: list[JobGlob] | None = Field(None, max_length=256, description=(
        f"Globs on tensor names (at most {MAX_INCLUDE_CHARS} characters each): only names matching one are "
        "quantized (default: every linear weight)."))
    exclude: list[JobGlob] | None = Field(None, max_length=256, description=(
        f"Globs on tensor names never quantized (at most {MAX_INCLUDE_CHARS} characters each; default: "
        f"{', '.join(DEFAULT_EXCLUDE)})."))
    max_shard_bytes: int = Field(DEFAULT_MAX_SHARD_BYTES, ge=1, description=(
        "Most tensor data bytes in one output shard (default 5 GB as transformers counts it, 5 x 10^9)."))
    importance: str | None = Field(None, min_length=1, max_length=4096, description=(
        "Importance statistics (llama.cpp imatrix .gguf or .dat, or safetensors of float32 vectors named by "
        "tensor): a file relative to the data root (with source.path, validated as it is) or a file of the "
        "upload set (with source.upload). rtn, clip, refit and hqq minimise the importance-weighted error of "
        "the tensors it names; a vector whose width differs from its tensor's is refused naming the tensor."))
    bits_per_weight: float | None = Field(None, gt=0, le=16, allow_inf_nan=False, description=(
        "A budget in bits per weight over the tensors quantized: each tensor is measured in every format the "
        "output can carry (compressed-tensors: int4 g128/g64/g32, the request's scheme and symmetric, or 16-bit; "
        "gguf: Q4_0, Q8_0 or F16/BF16) and gets the one minimising the total (importance-weighted) error "
        "within it. gptq and awq refuse a budget. Or budget_bytes; not both."))
    budget_bytes: int | None = Field(None, gt=0, description=(
        "A budget in bytes for the quantized tensors as the output stores them (at most this many are written)."))

    @field_validator("group_size")
    @classmethod
    def _not_with_budget(cls, value: int | None, info: ValidationInfo) -> int | None:
        """Refuse a group size a budget would ignore rather than drop it: compressed-tensors' budget chooses each
        tensor's (gguf's int4 is Q4_0, group 32, and gptq and awq refuse a budget: the core checks those);
        validators run on sent values only, so the default never trips it."""
        budget = info.data.get("bits_per_weight") is not None or info.data.get("budget_bytes") is not None
        if budget and info.data.get("output") == "compressed-tensors" and info.context != STORED:
            raise ValueError(f"a budget chooses each tensor's group size among "
                             f"{', '.join(map(str, BUDGET_GROUP_SIZES))} (or 16-bit): send the budget without "
                             "group_size")
        return value

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def to_options(request: JobCreate, threads: int | None = 1) -> CheckpointOptions:
    """The core options of a job request."""
    return CheckpointOptions(
        method=request.method, output=request.output, group_size=request.group_size, symmetric=request.symmetric,
        include=tuple(request.include or ()),
        exclude=DEFAULT_EXCLUDE if request.exclude is None else tuple(request.exclude),
        max_shard_bytes=request.max_shard_bytes, threads=threads, budget_bytes=request.budget_bytes,
        bits_per_weight=request.bits_per_weight)


class JobProgress(BaseModel):
    """How far a job is: quantized tensors and their input bytes done of total, rate and ETA."""

    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    tensors_measured: int | None = Field(None, description=(
        "Under a budget: tensors measured in every allowed format (all are, before any is written)."))
    rate: float | None = Field(None, description="Input bytes quantized per second since this run started.")
    eta_seconds: float | None = Field(None, description="Seconds left at that rate (null until it is known).")


class JobFile(BaseModel):
    name: str
    bytes: int
    url: str


class JobResult(BaseModel):
    files: list[JobFile]
    allocation: dict[str, Any] | None = Field(None, description=(
        "Under a budget: budget_bytes, output_bytes (the quantized tensors' bytes as written, never above the "
        "budget), elements, bits_per_weight, error, the formats chosen (counts) and allowed."))


class JobStatus(BaseModel):
    """A job's state, progress, report so far (quantized tensors, then those passed through with why) and result."""

    id: str
    url: str
    state: JobStateName
    created_at: float = Field(description="Unix time.")
    started_at: float | None = None
    finished_at: float | None = None
    request: dict[str, Any]
    progress: JobProgress
    engine_notes: list[str] = Field(default_factory=list, description=(
        "What an engine will refuse in the result as asked, known from the plan at submission: a layer vLLM "
        "fuses (q/k/v, gate/up, a layer's experts) quantized in part, named with its layers and the remedy; "
        "vLLM 0.11/0.19 refusing asymmetric compressed-tensors experts.  A budget chooses each fused layer's "
        "quantized parts as one (one format; GGUF: all quantized or all 16-bit), so its formats add no note; "
        "once they are chosen the notes are said again as the result's nibble_report.json gives them."))
    report: list[dict[str, Any]] | None = Field(None, description=(
        "One entry per tensor: quantized ones (name, shape, dtype, method, format, bytes, bits_per_weight, "
        "quality, importance_used, seconds) as they finish, and the passthrough tensors (name, shape, dtype, reason). "
        "Absent from GET with report=false and from every event of a stream but its last."))
    result: JobResult | None = None
    error: dict[str, Any] | None = Field(None, description="The problem+json document of a failed job.")


class JobSummary(BaseModel):
    id: str
    url: str
    state: JobStateName
    created_at: float
    progress: JobProgress


class JobList(BaseModel):
    """One page of jobs, newest first; `next` says whether there is more (never a silent cut)."""

    jobs: list[JobSummary]
    next: str | None = Field(None, description=(
        "The URL of the next page (the same limit and state filter, after the last job listed), also sent as "
        "a `Link: <url>; rel=\"next\"` header; null when no job follows this page's last."))
    next_cursor: str | None = Field(None, description="The `cursor` of that next page; null on the last page.")


#: jobs in one page of GET /v1/jobs when `limit` is not sent, and the most `limit` takes
DEFAULT_JOBS_PER_PAGE = 100
MAX_JOBS_PER_PAGE = 1000
#: a cursor is base64url of ``<created_at> <id>``: a float's repr and a 32-digit id, a few dozen characters
MAX_CURSOR_CHARS = 200


def encode_cursor(created_at: float, job_id: str) -> str:
    """The opaque `cursor` naming a job's place in the newest-first order (its creation time, exactly, and id)."""
    return base64.urlsafe_b64encode(f"{created_at!r} {job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, id) an `encode_cursor` cursor names; ValueError for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        created_at, job_id = text.split(" ")
        value = float(created_at)
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise ValueError("is not a cursor this server gave (use the `next` or `next_cursor` of a listing)") from None
    if not math.isfinite(value) or not job_id:
        raise ValueError("is not a cursor this server gave (use the `next` or `next_cursor` of a listing)")
    return value, job_id


class JobListQuery(BaseModel):
    """The query of GET /v1/jobs: a page of at most `limit` jobs after `cursor`, of the `state`s given.  A
    parameter not listed here is refused (422 naming it) rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(DEFAULT_JOBS_PER_PAGE, ge=1, le=MAX_JOBS_PER_PAGE, description=(
        f"The most jobs in the page (default {DEFAULT_JOBS_PER_PAGE}, at most {MAX_JOBS_PER_PAGE})."))
    cursor: str | None = Field(None, min_length=1, max_length=MAX_CURSOR_CHARS, description=(
        "Where the page starts: the `next_cursor` of the page before (or follow its `next` URL)."))
    state: list[JobStateName] = Field(default_factory=list, description=(
        "Only jobs in these states (repeat it for several: state=queued&state=running)."))

    @field_validator("cursor")
    @classmethod
    def _known_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            decode_cursor(value)
        return value
