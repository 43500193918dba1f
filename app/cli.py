"""``nibble``: the command line (``serve``, ``plan``, ``inspect``, ``presets``, ``devices``, ``quantize``,
``compare``, ``dequantize``, ``jobs``).

Each command runs locally on `quant_core` through the same conversion
functions the API uses (`app.schemas`, `quant_core.single_file`), or against a server with
``--url`` through `app.client`; so ``nibble plan ... --json`` prints exactly
what ``POST /v1/plan`` answers, whichever way it ran.  Sizes in tables are
GiB (1 GiB = 2^30 bytes) unless ``--unit GB`` asks for 10^9 bytes, and every
table says which; ``--json`` prints the API's bytes unchanged.  Sizes and
token counts are read in human units (``80GB``, ``80GiB``, ``8k``; `app.units`).

Exit status (``nibble --help`` lists it too):
  0  done; for ``plan``, the deployed format FITS
  1  the request failed: the problem (title, detail, each invalid field) is on stderr
  2  usage: a bad option or value, or a --url without http:// or https://
  3  ``plan`` only: the model does NOT fit (``--allow-no-fit`` exits 0 instead)
  4  no nibble server answers at --url: refused, timed out, name not resolved, the connection lost, or what
     answers is not nibble (an HTML page, a proxy's error page, JSON of another shape)
  5  the server is busy (503, or 429): retry, after the Retry-After seconds printed when it sent them
  130, 143  interrupted (Ctrl-C, SIGTERM); 141 the reader of stdout left (``nibble ... | head``), silently
No traceback reaches the terminal: an unexpected failure prints one line
(``NIBBLE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, get_args

import httpx
from pydantic import BaseModel, ValidationError

from app.cli_jobs import (
    JobFailed,
    Terminated,
    add_budget_options,
    add_job_options,
    add_jobs_parser,
    command_jobs,
    command_quantize_checkpoint,
    gguf_scheme,
    group_size_option,
    group_size_value,
    print_json,
    progress_bar,
    staged_output,
)
from app.client import NibbleAPIError, NibbleClient, NibbleResponseError
from app.problems import problem_for, validation_problem
from app.schemas.models import (
    DeviceOut,
    InspectRequest,
    InspectResponse,
    ModelSummary,
    device_from_core,
    inspect_from_core,
    model_to_core,
    summary_from_core,
)
from app.schemas.plans import (
    CheckpointHeaders,
    FormatName,
    FormatOut,
    HeaderFile,
    PlanRequest,
    PlanResponse,
    answer_plan_json,
    plan_to_core,
)
from app.schemas.quantize import CompareReport, QuantizeReport
from app.settings import get_settings
from app.units import parse_bytes, parse_tokens
from quant_core import catalog
from quant_core.checkpoint.source import INDEX_NAME
from quant_core.errors import NibbleError, TensorFileError
from quant_core.quantize import METHODS
from quant_core.single_file import (
    OUTPUT_SUFFIXES,
    QuantizeJob,
    ReadLimits,
    compare_file,
    dequantize_file,
    quantize_file,
)
from quant_core.tensorio import sniff_format
from quant_core.tensorio.checkpoint_headers import checkpoint_files, index_weight_map, read_header_prefix

GIB = 1 << 30
GB = 10**9
UNITS = {"GiB": (GIB, "1 GiB = 2^30 bytes"), "GB": (GB, "1 GB = 10^9 bytes")}
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DOES_NOT_FIT = 3
EXIT_UNREACHABLE = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `ls | head` reports for ls
BUSY_STATUSES = (429, 503)
EXIT_STATUS_HELP = (
    "exit status: 0 done (plan: the deployed format fits; jobs: the job succeeded or, without --watch, was "
    "accepted); 1 the request failed (problem on stderr), or the job failed or was cancelled; 2 usage error; "
    "3 plan: does not fit (--allow-no-fit: 0); 4 no nibble server answers at --url; 5 server busy, retry later")


class CommandError(Exception):
    """A problem to print (already worded for a person) and exit with status 1."""


class UsageError(CommandError):
    """A bad option value found after parsing (a --url without a scheme): exit status 2."""


def in_unit(value: int, unit: str) -> str:
    """`value` bytes in `unit` (``GiB`` = 2^30 or ``GB`` = 10^9 bytes) with two decimals."""
    return f"{value / UNITS[unit][0]:.2f}"


def _client(args: argparse.Namespace) -> NibbleClient:
    try:
        return NibbleClient(args.url, api_key=args.api_key)
    except ValueError as exc:  # the client's own check of the address, worded for --url
        raise UsageError(str(exc).replace("base_url", "--url", 1)) from None


def _print_answer(args: argparse.Namespace, out: TextIO, answer: BaseModel | Sequence[BaseModel],
                  render: Callable[[], str]) -> None:
    """With ``--json`` the API's JSON of `answer` (an answer model, or a list of them), else the text `render`s."""
    if not args.json:
        out.write(render())
    elif isinstance(answer, BaseModel):
        print_json(answer.model_dump(mode="json"), out)
    else:
        print_json([item.model_dump(mode="json") for item in answer], out)


def _read_json_file(path: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandError(f"{path} holds a JSON {type(document).__name__}, not an object (config.json)")
    return document


# --- plan ---------------------------------------------------------------------------------------


def read_checkpoint(path: str, max_header_bytes: int) -> tuple[dict[str, bytes], bytes | None]:
    """The headers of a local checkpoint's files by file name (a file, or a directory of shards), read
    without one byte of their tensor data, and the directory's ``model.safetensors.index.json``."""
    try:
        headers = {file.name: read_header_prefix(file, max_header_bytes) for file in checkpoint_files(Path(path))}
        index = Path(path) / INDEX_NAME
        return headers, index.read_bytes() if index.is_file() else None
    except OSError as exc:
        raise CommandError(f"cannot read the checkpoint {path}: {exc}") from None


def checkpoint_headers(headers: dict[str, bytes], index: bytes | None) -> CheckpointHeaders:
    """The headers as the plan form's are handed to the planner (`app.plan_form`): header bytes only."""
    weight_map = None
    if index is not None:
        try:
            weight_map = index_weight_map(index)
        except TensorFileError as exc:
            exc.detail = f"{INDEX_NAME}: {exc.detail}"
            raise
    files = tuple(HeaderFile(name, name, data) for name, data in headers.items())
    return CheckpointHeaders(files, weight_map, headers_only=True)


#: the file ModelOpt 0.29 and before write the quantization config to, beside config.json
HF_QUANT_CONFIG_NAME = "hf_quant_config.json"


def with_hf_quant_config(config_path: str) -> dict[str, Any]:
    """config.json at `config_path`, with ``hf_quant_config.json`` from its directory as its quantization_config when
    it has none, as vLLM reads a model (transformers_utils/config.py ``get_config``, 0.11, 0.19 and 0.33: "ModelOpt
    0.29.0 and before saves the quantization config in a separate hf_quant_config.json in the same directory as the
    model config file"; ModelOpt 0.31 and after write it into config.json)."""
    config = _read_json_file(config_path)
    beside = Path(config_path).parent / HF_QUANT_CONFIG_NAME
    if config.get("quantization_config") is None and beside.is_file():
        config["quantization_config"] = _read_json_file(str(beside))
    return config


def speculative_option(text: str) -> dict[str, Any]:
    """``--speculative METHOD:K`` (``mtp:1``, ``ngram:3``): vLLM's ``--speculative-config`` as the API's
    ``runtime.speculative``, checked for its shape as the option is read (a usage error, exit 2); the API says which
    methods and counts it plans."""
    method, colon, tokens = text.partition(":")
    if not colon or not method or not (tokens.isascii() and tokens.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not METHOD:K (mtp:1, ngram:3)")
    return {"method": method, "num_speculative_tokens": int(tokens)}


def plan_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/plan`` body for the command-line options (unset options keep the API's defaults)."""
    config = args.config
    checkpoint = getattr(args, "checkpoint", None)
    if not config and not args.model and checkpoint and (Path(checkpoint) / "config.json").is_file():
        config = str(Path(checkpoint) / "config.json")
    if not config and not args.model:
        raise CommandError("give --model or --config (or a --checkpoint directory holding config.json)")
    model: dict[str, Any] = {"hf_config": with_hf_quant_config(config)} if config else {"preset": args.model}
    hardware: dict[str, Any] = {"count": args.count}
    if args.memory is not None:
        hardware["memory_bytes"] = args.memory
    else:
        hardware["device"] = args.device
    if args.compute_capability is not None:
        hardware["compute_capability"] = args.compute_capability
    if args.compute_units is not None:
        hardware["compute_units"] = args.compute_units
    body: dict[str, Any] = {"model": model, "hardware": hardware}
    sections: dict[str, dict[str, Any]] = {
        "workload": {"context_length": args.context, "concurrent_sequences": args.sequences},
        "weights": {"format": args.format, "symmetric": args.symmetric or None},
        "kv_cache": {"dtype": args.kv_dtype, "block_size": args.block_size},
        "parallel": {"tensor": args.tensor, "pipeline": args.pipeline, "data": args.data},
        "runtime": {"memory_utilization": args.memory_utilization, "engine": args.engine,
                    "engine_version": args.engine_version, "max_num_seqs": args.max_num_seqs,
                    "max_batched_tokens": args.max_batched_tokens, "overhead_bytes": args.overhead,
                    "activation_bytes": args.activations, "float_format": args.float_format,
                    "expert_parallel": args.expert_parallel or None, "speculative": args.speculative},
    }
    sections["weights"].update(zero=args.zero, pad=args.pad or None)
    if args.group_size is not None:
        sections["weights"]["group_size"] = group_size_value(args.group_size)
    for name, values in sections.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            body[name] = given
    return body


def plan_locally(body: dict[str, Any], checkpoint: CheckpointHeaders | None = None) -> PlanResponse:
    """What ``POST /v1/plan`` answers for `body` (and the `checkpoint` headers its form would carry), computed
    in process by the API's own conversions."""
    request = PlanRequest.model_validate(body)
    settings = get_settings()
    spec, hardware, workload, options = plan_to_core(request, settings.max_config_depth, settings.max_header_bytes,
                                                     checkpoint)
    return PlanResponse.model_validate_json(answer_plan_json(request, spec, hardware, workload, options))


def _verdict(name: str, result: FormatOut, unit: str, shown_refusal: str | None = None) -> str:
    """One format's verdict line; a format the engine refuses says so first (its reason unless it is
    `shown_refusal`, printed above), then whether its memory alone would fit."""
    if result.refusal:
        reason = "" if result.refusal == shown_refusal else f": {result.refusal}"
        worst = min(result.devices, key=lambda d: d.headroom_bytes)
        memory = ("its memory alone would fit" if worst.headroom_bytes >= 0 else
                  f"nor does its memory fit: device {worst.index} needs {in_unit(worst.used_bytes, unit)} {unit} of "
                  f"{in_unit(worst.usable_bytes, unit)} {unit} usable")
        return f"{name}: NOT DEPLOYABLE, the engine refuses it{reason}; {memory}"
    limits = [f"longest context {result.max_context_length:,}" if result.max_context_length
              else "no context fits", f"most sequences {result.max_concurrent_sequences:,}",
              f"fewest devices {result.min_devices}" if result.min_devices else "no device count fits"]
    if result.max_context_length and result.context_limited_by == "model":
        limits[0] += " (the model's trained context, not memory)"
    if result.fits:
        tightest = min(d.headroom_bytes for d in result.devices)
        return (f"{name}: FITS with {in_unit(tightest, unit)} {unit} headroom on the fullest device; "
                + ", ".join(limits))
    worst = min(result.devices, key=lambda d: d.headroom_bytes)
    return (f"{name}: DOES NOT FIT: device {worst.index} needs {in_unit(worst.used_bytes, unit)} {unit} of "
            f"{in_unit(worst.usable_bytes, unit)} {unit} usable ({in_unit(-worst.headroom_bytes, unit)} {unit} "
            "short); " + ", ".join(limits))


def plan_formats(answer: PlanResponse) -> dict[str, FormatOut]:
    """Every format the answer plans: the 16-bit and INT4 comparison, plus the deployed format when it is
    neither (``--format int8``), built from the answer's top-level fields."""
    formats = dict(answer.comparison)
    deployed = answer.weights.format  # a format label: int4-g128-asym, int8, bf16
    if all(result.format != deployed for result in formats.values()):
        formats[deployed] = FormatOut(
            format=deployed, weights_bytes=answer.weights.bytes, bits_per_weight=answer.weights.bits_per_weight,
            weights_by_role=answer.weights.by_role, kv_cache_bytes=answer.kv_cache.bytes,
            used_bytes=sum(device.used_bytes for device in answer.devices), fits=answer.fits,
            max_context_length=answer.max_context_length, context_limited_by=answer.context_limited_by,
            max_concurrent_sequences=answer.max_concurrent_sequences,
            sequences_limited_by=answer.sequences_limited_by, min_devices=answer.min_devices,
            kv_capacity_tokens=answer.kv_cache.capacity_tokens, refusal=answer.refusal,
            devices=answer.devices)
    return formats


def _device_runs(result: FormatOut) -> list[tuple[int, int, Any]]:
    """Neighbouring devices that hold the same bytes (tensor-parallel ranks) as one run: (first, last, device)."""
    runs: list[tuple[int, int, Any]] = []
    for device in result.devices:
        terms = device.model_dump(exclude={"index", "pipeline_stage", "tensor_rank", "layers"})
        if runs and runs[-1][2].model_dump(exclude={"index", "pipeline_stage", "tensor_rank", "layers"}) == terms:
            runs[-1] = (runs[-1][0], device.index, runs[-1][2])
        else:
            runs.append((device.index, device.index, device))
    return runs


def render_plan(answer: PlanResponse, unit: str = "GiB") -> str:
    """A readable table: per format and device, each term in `unit` (GiB or GB), then verdicts, limits, the
    speed bound and warnings.  Devices holding the same bytes share a row (``0-7``); the deployed format
    (``weights.format``) is marked."""
    hardware = answer.hardware
    scale_note = UNITS[unit][1]
    lines = [
        f"{answer.model} on {hardware.count} x {hardware.name} ({in_unit(hardware.capacity_bytes, unit)} {unit} "
        f"each), context {answer.workload.context_length:,} x {answer.workload.concurrent_sequences} sequences, "
        f"KV cache {answer.kv_cache.dtype} ({answer.kv_cache.bytes_per_token:,} bytes/token), "
        f"tensor x pipeline = {answer.parallel.tensor} x {answer.parallel.pipeline}"
        + (f", data parallel {answer.parallel.data} (devices: one replica's)" if answer.parallel.data > 1 else ""),
        f"Sizes in {unit} ({scale_note}) per device; usable = capacity x {answer.memory_utilization:g}.",
        "",
    ]
    header = ("format", "device", "weights", "KV cache", "activations", "overhead", "used", "usable",
              "capacity", "headroom", "fits")
    rows: list[tuple[str, ...]] = [header]
    formats = plan_formats(answer)
    for name, result in formats.items():
        label = f"{name} ({result.bits_per_weight:.3f} b/w)" + (" deployed" if result.format == answer.weights.format
                                                                else "")
        for first, last, device in _device_runs(result):
            devices = str(first) if first == last else f"{first}-{last}"
            rows.append((label, devices, *(in_unit(value, unit) for value in (
                device.weights_bytes, device.kv_cache_bytes, device.activation_bytes, device.overhead_bytes,
                device.used_bytes, device.usable_bytes, device.capacity_bytes, device.headroom_bytes)),
                "refused" if result.refusal else "yes" if device.fits else "NO"))
    lines += [*_table(rows, set(range(2, len(header)))).splitlines(), ""]
    if answer.refusal:
        lines.append(f"NOT DEPLOYABLE: {answer.refusal}")
    lines.extend(_verdict(name, result, unit, answer.refusal) for name, result in formats.items())
    engine, kv = answer.engine, answer.kv_cache
    if kv.capacity_tokens is not None:
        lines.append(
            f"KV cache ({engine.name} {engine.version}, max_num_batched_tokens {engine.max_batched_tokens}, "
            f"max_num_seqs {engine.max_num_seqs}): {in_unit(kv.pool_bytes, 'GiB')} GiB on the tightest device holds "
            f"{kv.capacity_tokens:,} tokens (what vLLM logs as 'GPU KV cache size'); vLLM's maximum concurrency "
            f"for {answer.workload.context_length:,} tokens per request: {kv.engine_max_concurrency or 0:.2f}x; "
            f"nibble's (sliding-window aware): {answer.max_concurrent_sequences:,} sequences")
    if answer.speed is not None:
        speed = answer.speed
        bounds = "; ".join(
            f"{name} <= {bound.decode_tokens_per_second_per_sequence:,.1f} tokens/s per sequence, "
            f"{bound.decode_tokens_per_second_aggregate:,.1f} in all"
            if formats[name].fits else f"{name} does not fit"
            for name, bound in speed.formats.items()
            if bound.decode_tokens_per_second_per_sequence is not None
            and bound.decode_tokens_per_second_aggregate is not None)
        prefill = next(iter(speed.formats.values())).prefill_seconds
        lines.append(f"decode speed (upper bound, {answer.workload.concurrent_sequences} sequences): {bounds}")
        if prefill is not None:
            lines.append(f"prefill of one {answer.workload.context_length:,}-token prompt takes at least "
                         f"{prefill:.3g} s")
        lines.append(f"speed basis: {speed.basis}")
    lines.append(f"activations: {answer.activation.basis}")
    lines.append(f"overhead: {answer.runtime_overhead.basis}")
    lines.extend(f"warning: {warning}" for warning in answer.warnings)
    return "\n".join(lines) + "\n"


def command_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    body = plan_body(args)
    path = getattr(args, "checkpoint", None)
    checkpoint = read_checkpoint(path, get_settings().max_header_bytes) if path else None
    if args.url:  # the checkpoint's headers as files: the multipart form, whatever their size
        with _client(args) as client:
            answer = client.plan(body) if checkpoint is None else client.plan(body, checkpoint=checkpoint[0],
                                                                              index=checkpoint[1])
    else:
        answer = plan_locally(body, checkpoint_headers(*checkpoint) if checkpoint is not None else None)
    _print_answer(args, out, answer, lambda: render_plan(answer, args.unit))
    if answer.fits or args.allow_no_fit:
        return EXIT_OK
    verdict = "cannot be deployed by the engine" if answer.refusal else "does not fit"
    err.write(f"{answer.model} {verdict} at {answer.weights.format} (exit status {EXIT_DOES_NOT_FIT}; "
              "--allow-no-fit exits 0)\n")
    return EXIT_DOES_NOT_FIT


# --- presets and devices ------------------------------------------------------------------------


def _table(rows: list[tuple[str, ...]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                               for i, cell in enumerate(row)).rstrip() for row in rows) + "\n"


def render_presets(models: Sequence[ModelSummary]) -> str:
    """One row per preset: id (for --model), name, parameters (billions), active per token, model type."""
    rows: list[tuple[str, ...]] = [("id", "name", "parameters", "active/token", "model_type")]
    for model in models:
        active = model.active_parameters_per_token
        rows.append((model.id, model.display_name, f"{model.total_parameters / 1e9:.2f}B",
                     f"{active / 1e9:.2f}B" if active else "all", model.model_type))
    return _table(rows, {2, 3}) + "Parameters in billions (10^9); use an id as --model ID.\n"


def render_devices(devices: Sequence[DeviceOut], unit: str) -> str:
    """One row per device: id (for --device), name, nominal memory in `unit` and in bytes, the memory CUDA
    reports (what plans use; "-" where no public log verified it), memory type."""
    rows: list[tuple[str, ...]] = [("id", "name", f"memory ({unit})", "bytes", f"CUDA reports ({unit})", "type")]
    for device in devices:
        reported = device.reported_memory_bytes
        rows.append((device.id, device.name, in_unit(device.memory_bytes, unit), f"{device.memory_bytes:,}",
                     "-" if reported is None else in_unit(reported, unit), device.memory_type))
    return _table(rows, {2, 3, 4}) + (
        f"Memory per device in {unit} ({UNITS[unit][1]}): nominal, and what CUDA reports, which plans use "
        "(nominal where '-'); use an id as --device ID.\n")


def command_presets(args: argparse.Namespace, out: TextIO) -> int:
    if args.url:
        with _client(args) as client:
            models = client.list_models()
    else:
        models = [summary_from_core(preset) for preset in catalog.list_presets()]
    _print_answer(args, out, models, lambda: render_presets(models))
    return EXIT_OK


def command_devices(args: argparse.Namespace, out: TextIO) -> int:
    if args.url:
        with _client(args) as client:
            devices = client.list_devices()
    else:
        devices = [device_from_core(device) for device in catalog.list_devices()]
    _print_answer(args, out, devices, lambda: render_devices(devices, args.unit))
    return EXIT_OK


# --- inspect ------------------------------------------------------------------------------------


def command_inspect(args: argparse.Namespace, out: TextIO) -> int:
    if (args.config is None) == (args.preset is None):
        raise CommandError("give a config.json path or --preset ID (one of them)")
    body: dict[str, Any] = {"preset": args.preset} if args.preset else {"hf_config": _read_json_file(args.config)}
    if args.url:
        with _client(args) as client:
            answer = client.inspect(body)
    else:
        spec = model_to_core(InspectRequest.model_validate(body), get_settings().max_config_depth, where="")
        answer = inspect_from_core(spec)
    _print_answer(args, out, answer, lambda: render_inspect(answer))
    return 0


def render_inspect(answer: InspectResponse) -> str:
    """Parameters by role, KV bytes per token per dtype and weight GiB per format."""
    parameters = answer.parameters
    lines = [f"{answer.name} ({answer.model_type}): {parameters.total:,} parameters"
             + (f", {parameters.active_per_token:,} active per token" if parameters.active_per_token else "")]
    lines.extend(f"  {role:<20} {count:>18,}" for role, count in parameters.by_role.items())
    lines.append("KV cache bytes per token (all layers): "
                 + ", ".join(f"{dtype} {size:,}" for dtype, size in answer.kv_bytes_per_token.items()))
    lines.append("Weights (GiB = 2^30 bytes):")
    for entry in answer.weight_bytes:
        if entry.bytes is None:
            lines.append(f"  {entry.format:<24} cannot store this model: {entry.error}")
        else:
            lines.append(f"  {entry.format:<24} {in_unit(entry.bytes, 'GiB'):>10} GiB  "
                         f"{entry.bits_per_weight or 0:.3f} b/w")
    lines.append(f"Tensor inventory: {len(answer.tensors)} rows (--json lists them)")
    return "\n".join(lines) + "\n"


# --- quantize and compare -----------------------------------------------------------------------


def _group_size(value: str | None) -> int | None:
    """A checked ``--group-size`` (`group_size_option`), or the API's default 128 when none is given."""
    return group_size_value(value or "128")


def _job(args: argparse.Namespace, methods: tuple[str, ...]) -> QuantizeJob:
    path = Path(args.input)
    try:
        kind = sniff_format(path)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    if kind is None:
        raise CommandError(f"{path} is neither a .npy nor a .safetensors file (by its first bytes)")
    settings = get_settings()
    limits = ReadLimits(settings.max_tensors, settings.max_elements_per_tensor, settings.max_header_bytes)
    calibration = Path(args.calibration) if args.calibration else None
    if args.bits_per_weight is not None and args.budget_bytes is not None:
        raise CommandError("give --bits-per-weight or --budget-bytes, not both")
    return QuantizeJob(path, kind, calibration, methods, _group_size(args.group_size), args.symmetric,
                       args.include, limits, importance_path=Path(args.importance) if args.importance else None,
                       budget_bytes=args.budget_bytes, bits_per_weight=args.bits_per_weight)


def _local_only(args: argparse.Namespace) -> None:
    """Importance statistics and budgets are not sent by the HTTP client yet: refuse them with --url."""
    if args.url and (args.importance or args.bits_per_weight is not None or args.budget_bytes is not None):
        raise CommandError("--importance, --bits-per-weight and --budget-bytes run locally only (without --url) "
                           "for now; POST /v1/quantize takes them as form fields")


class ProgressBar:
    """One line per quantized tensor on `stream`: a bar of tensors done, the name and its seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, name: str, seconds: float) -> None:
        elapsed = time.perf_counter() - self.started
        self.stream.write(f"{progress_bar(done, total)} {done}/{total} {name} ({seconds:.2f} s; {elapsed:.1f} s in "
                          "all)\n")
        self.stream.flush()


def _output_file(path: str) -> Path:
    """``-o`` of a command that writes one file: refused before any work when it is a directory."""
    if Path(path).is_dir():
        raise CommandError(f"{path} is a directory; give a file name (-o)")
    return Path(path)


def command_quantize(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if Path(args.input).is_dir():  # a checkpoint directory: the job, locally (app/cli_jobs.py)
        return command_quantize_checkpoint(args, out, err)
    args.format = args.format or "nibble"
    gguf_scheme(args, args.format)
    output = _output_file(args.output)
    _local_only(args)
    if args.url:
        err.write(f"uploading {args.input} to {args.url} (the server reports no per-tensor progress)\n")
        with _client(args) as client:
            download = client.quantize(args.input, method=args.method, group_size=_group_size(args.group_size),
                                       symmetric=args.symmetric, output=args.format, include=args.include,
                                       calibration=args.calibration)
        if isinstance(download, QuantizeReport):  # only for output=report, which this command never asks
            raise CommandError("the server answered a report instead of a file")
        with staged_output(output) as staging:
            download.save(staging)
        summary = download.summary
    else:
        job = _job(args, (args.method,))
        progress = ProgressBar(err) if not args.quiet else None
        with staged_output(output) as staging:
            summary = quantize_file(job, args.format, staging, progress=progress)
    if args.json:
        print_json(summary, out)
        return 0
    totals = summary.get("totals", summary)
    out.write(f"wrote {output} ({args.format}, {output.stat().st_size:,} bytes): "
              f"{totals.get('quantized_tensors', 0)} tensors quantized by {args.method}, "
              f"{totals.get('passthrough_tensors', 0)} passed through; input {totals.get('input_bytes', 0):,} bytes, "
              f"INT4 payload {totals.get('output_payload_bytes', 0):,} bytes"
              + (f", {totals['output_file_tensor_bytes']:,} as the file's tensors"
                 if totals.get("output_file_tensor_bytes") is not None else "") + "\n")
    for tensor in summary.get("tensors", []):
        quality = tensor["quality"]
        out.write(f"  {tensor['name']:<40} {tensor['bits_per_weight']:.3f} b/w  relative error "
                  f"{quality['relative_error']:.5f}  SQNR {quality['sqnr_db']:.2f} dB\n")
    return 0


def render_compare(report: CompareReport) -> str:
    """Per tensor, one row per method: payload bytes, bits per weight, relative error, SQNR, max error."""
    header = ("tensor", "method", "bytes", "bits/weight", "rel. error", "SQNR dB", "max |error|", "")
    rows: list[tuple[str, ...]] = [header]
    for tensor in report.tensors:
        for result in tensor.results:
            rows.append((f"{tensor.name} {'x'.join(map(str, tensor.shape))}", result.method,
                         f"{result.bytes.output:,}", f"{result.bits_per_weight:.3f}",
                         f"{result.quality.relative_error:.5f}", f"{result.quality.sqnr_db:.2f}",
                         f"{result.quality.max_abs_error:.4g}", "best" if result.method == tensor.best_method else ""))
    lines = [f"INT4 {report.format}; relative error = ||W - W'||_F / ||W||_F",
             *_table(rows, set(range(2, len(header)))).splitlines()]
    lines.extend(f"passed through: {item.name} ({item.reason})" for item in report.passthrough)
    return "\n".join(lines) + "\n"


def command_compare(args: argparse.Namespace, out: TextIO) -> int:
    methods = tuple(method.strip() for method in args.methods.split(",") if method.strip())
    _local_only(args)
    if args.url:
        with _client(args) as client:
            report = client.compare(args.input, methods, group_size=_group_size(args.group_size),
                                    symmetric=args.symmetric, include=args.include, calibration=args.calibration)
    else:
        report = CompareReport.model_validate(compare_file(_job(args, methods)))
    _print_answer(args, out, report, lambda: render_compare(report))
    return 0


def command_dequantize(args: argparse.Namespace, out: TextIO) -> int:
    output = _output_file(args.output)
    if args.url:
        with _client(args) as client:
            download = client.dequantize(args.input, args.dtype)
        with staged_output(output) as staging:
            download.save(staging)
        summary = download.summary
    else:
        settings = get_settings()
        limits = ReadLimits(settings.max_tensors, settings.max_elements_per_tensor, settings.max_header_bytes)
        with staged_output(output) as staging:
            summary = dequantize_file(Path(args.input), args.dtype, limits, staging)
    if args.json:
        print_json(summary, out)
        return EXIT_OK
    out.write(f"wrote {output} ({output.stat().st_size:,} bytes): {summary.get('tensors', 0)} tensors "
              f"dequantized to {args.dtype}, {summary.get('passthrough', 0)} passed through\n")
    return EXIT_OK


# --- serve --------------------------------------------------------------------------------------


#: what one server process holds, through uvicorn's own options (SECURITY.md, "Connections"); the Makefile's
#: ``run`` target and the Dockerfile pass the same
SERVE_LIMIT_CONCURRENCY = 256
SERVE_TIMEOUT_KEEP_ALIVE_SECONDS = 5
SERVE_BACKLOG = 256
SERVE_MAX_HEAD_BYTES = 64 * 1024
#: the event loop that bounds each request head in time and size and the open connections (app/connections.py)
SERVE_LOOP = "app.connections:GuardedEventLoop"


def command_serve(args: argparse.Namespace) -> int:
    """Stock ``uvicorn app.main:app`` on the guarded event loop, with the connection limits of SECURITY.md."""
    import uvicorn  # only this command needs the server

    try:
        uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, http=args.http,
                    loop=SERVE_LOOP, limit_concurrency=args.limit_concurrency,
                    timeout_keep_alive=args.timeout_keep_alive, backlog=args.backlog,
                    h11_max_incomplete_event_size=args.max_head_bytes)
    except SystemExit as exc:  # uvicorn's own statuses (3: did not start) would read as nibble's (3: does not fit)
        if exc.code in (0, None):
            return EXIT_OK
        raise CommandError(f"the server did not start on {args.host}:{args.port} (uvicorn's exit status {exc.code}; "
                           "its log above says why)") from None
    return EXIT_OK


# --- parser and entry point ---------------------------------------------------------------------


def _option_type(parse: Callable[[str], int]) -> Callable[[str], int]:
    """An argparse type reading an option with `parse` (a size or a token count), its ValueError a usage error."""

    def read(text: str) -> int:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return read


_bytes_option, _tokens_option = _option_type(parse_bytes), _option_type(parse_tokens)


def _add_unit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unit", choices=tuple(UNITS), default="GiB",
                        help="sizes in tables: GiB (2^30 bytes, default) or GB (10^9 bytes)")


def _add_remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("NIBBLE_URL"),
                        help="run against this nibble server (default: locally; env NIBBLE_URL)")
    parser.add_argument("--api-key", default=os.environ.get("NIBBLE_API_KEY"),
                        help="bearer token for a server with API keys (env NIBBLE_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")


def _add_scheme(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-size", type=group_size_option,
                        help="32, 64, 128, 256 or row (default 128; 32 for --format gguf)")
    parser.add_argument("--symmetric", action="store_true", help="symmetric INT4 (no zero points)")
    parser.add_argument("--include", help="glob on tensor names (default: every 2-D float tensor)")
    parser.add_argument("--calibration", help="calibration activations [samples, in_features] as .npy")
    add_budget_options(parser, ": llama.cpp imatrix (.gguf or .dat) or a .safetensors of float32 vectors named by "
                       "tensor")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: the problem and where help is, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``nibble`` argument parser with its five subcommands."""
    parser = _Parser(prog="nibble", epilog=EXIT_STATUS_HELP, description=(
        "Plan LLM memory at 16-bit beside INT4, and quantize tensors to INT4 with measured quality. "
        "Sizes are GiB (2^30 bytes) unless --unit GB; sizes in take 80GB or 80GiB, token counts 8k or 128K."))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API and the web page with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                       help="uvicorn's HTTP implementation (auto: httptools; h11 bounds a request head to "
                            "--max-head-bytes, with slower uploads: SECURITY.md)")
    serve.add_argument("--limit-concurrency", type=int, default=SERVE_LIMIT_CONCURRENCY,
                       help="connections or requests at once, past which requests are answered 503")
    serve.add_argument("--timeout-keep-alive", type=int, default=SERVE_TIMEOUT_KEEP_ALIVE_SECONDS,
                       help="seconds an idle keep-alive connection stays open")
    serve.add_argument("--backlog", type=int, default=SERVE_BACKLOG, help="connections waiting to be accepted")
    serve.add_argument("--max-head-bytes", type=int, default=SERVE_MAX_HEAD_BYTES,
                       help="longest request head under --http h11 (h11_max_incomplete_event_size)")

    plan_parser = commands.add_parser("plan", help="will a model fit: per device, 16-bit beside INT4",
                                      epilog=EXIT_STATUS_HELP)
    model = plan_parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="a preset id (nibble inspect --help; GET /v1/models)")
    model.add_argument("--config", help="a Hugging Face config.json file (without a quantization_config, the "
                                        "hf_quant_config.json beside it gives one, as vLLM reads ModelOpt exports)")
    hardware = plan_parser.add_mutually_exclusive_group(required=True)
    hardware.add_argument("--device", help="a device id, e.g. h100-80gb (GET /v1/devices)")
    hardware.add_argument("--memory", "--memory-bytes", dest="memory", type=_bytes_option,
                          help="memory of one device, for unlisted hardware: 80GB (10^9), 80GiB (2^30) or bytes")
    plan_parser.add_argument("--compute-capability", help="CUDA compute capability, for --memory: 9.0 (H100), 8.9 "
                                                           "(L4), 10.0 (B200); picks vLLM's kernels and refusals")
    plan_parser.add_argument("--compute-units", type=int, help="SMs per device, for --memory (default: the most of "
                                                               "the catalog's devices, the safe side)")
    plan_parser.add_argument("--count", type=int, default=1, help="number of devices (default 1)")
    plan_parser.add_argument("--context", type=_tokens_option,
                             help="tokens per sequence, prompt + output: 4096, 8k (8,192), 128K (131,072)")
    plan_parser.add_argument("--sequences", type=int, help="concurrent sequences")
    plan_parser.add_argument("--kv-dtype", help="KV cache dtype: bf16, fp16, fp8, int8, int4, int8_per_token_head, "
                                                "int4_per_token_head, fp8_per_token_head (default: the engine's "
                                                "auto, 16-bit, or fp8 where a ModelOpt checkpoint's config quantizes "
                                                "the KV cache; vLLM runs no int8/int4 cache: --engine generic plans "
                                                "them; *_per_token_head are vLLM 0.33's own caches, fp8's from "
                                                "compute capability 8.9)")
    plan_parser.add_argument("--format", choices=get_args(FormatName),
                             help="the deployed weight format (default: as shipped, else int4; 16-bit is always "
                                  "shown beside)")
    plan_parser.add_argument("--checkpoint", help="a local checkpoint (.safetensors, .gguf, or a directory of "
                                                  "shards): its headers give the weights; only headers are read")
    plan_parser.add_argument("--group-size", type=group_size_option, help="INT4 group size: 32, 64, 128, 256 or row")
    plan_parser.add_argument("--symmetric", action="store_true", help="symmetric INT4")
    plan_parser.add_argument("--zero", choices=("int4", "fp16"),
                             help="INT4 asymmetric zero points stored as int4 (default) or fp16")
    plan_parser.add_argument("--pad", action="store_true",
                             help="pad INT4 rows whose width the group size does not divide (else an error)")
    plan_parser.add_argument("--tensor", type=int, help="tensor-parallel degree (default count / pipeline)")
    plan_parser.add_argument("--pipeline", type=int, help="pipeline-parallel degree")
    plan_parser.add_argument("--data", type=int, help="vLLM --data-parallel-size: replicas of tensor x pipeline")
    plan_parser.add_argument("--memory-utilization", type=float, help="usable share of memory (default 0.9)")
    plan_parser.add_argument("--engine", choices=("vllm", "generic"),
                             help="engine whose memory terms apply (default vllm)")
    plan_parser.add_argument("--engine-version", choices=("0.11", "0.19", "0.33"), help="vLLM release (default 0.19)")
    plan_parser.add_argument("--expert-parallel", action="store_true",
                             help="vLLM --enable-expert-parallel: whole experts on each data x tensor rank")
    plan_parser.add_argument("--speculative", type=speculative_option, metavar="METHOD:K",
                             help="vLLM --speculative-config: mtp:K (the model's MTP layers) or ngram:K, "
                                  "K speculative tokens (mtp on vLLM 0.19, ngram on 0.11 and 0.19)")
    plan_parser.add_argument("--max-num-seqs", type=int,
                             help="vLLM --max-num-seqs (default: vLLM's for the device)")
    plan_parser.add_argument("--block-size", type=int, help="KV cache block (page) size in tokens (default 16)")
    plan_parser.add_argument("--overhead", type=_bytes_option,
                             help="fixed runtime overhead per device, e.g. 1GiB (replaces the default)")
    plan_parser.add_argument("--activations", type=_bytes_option,
                             help="activation peak per device, e.g. 2GiB (replaces the estimate)")
    plan_parser.add_argument("--max-batched-tokens", type=_tokens_option,
                             help="vLLM --max-num-batched-tokens (default: vLLM's for the device; 8k works)")
    plan_parser.add_argument("--float-format", choices=("bf16", "fp16", "fp32"),
                             help="the 16-bit baseline format (default bf16)")
    plan_parser.add_argument("--allow-no-fit", action="store_true",
                             help="exit 0 even when the model does not fit (default: exit status 3)")
    _add_unit(plan_parser)
    _add_remote(plan_parser)

    inspect = commands.add_parser("inspect", help="parameters, KV bytes per token and weight bytes of a model")
    inspect.add_argument("config", nargs="?", help="a Hugging Face config.json file")
    inspect.add_argument("--preset", help="a preset id instead of a config file")
    _add_remote(inspect)

    presets = commands.add_parser("presets", help="list the model presets (ids for --model)")
    _add_remote(presets)

    devices = commands.add_parser("devices", help="list the devices (ids for --device) with their memory")
    _add_unit(devices)
    _add_remote(devices)

    quantize = commands.add_parser("quantize", help="quantize a .safetensors / .npy file to INT4")
    quantize.add_argument("input", help="a .safetensors or .npy file, or a checkpoint directory")
    quantize.add_argument("-o", "--output", required=True, help="where to write the result")
    quantize.add_argument("--method", default="rtn", choices=METHODS, help="quantization method (default rtn)")
    quantize.add_argument("--format", choices=tuple(OUTPUT_SUFFIXES),
                          help="output layout: nibble (dequantizable; a file's default), gptq, awq, "
                               "compressed-tensors (a checkpoint directory's default), gguf "
                               "(Q4_0: group 32, symmetric, set for you)")
    quantize.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _add_scheme(quantize)
    add_job_options(quantize)
    _add_remote(quantize)
    add_jobs_parser(commands, _add_remote)

    compare = commands.add_parser("compare", help="compare quantization methods on a file, per tensor")
    compare.add_argument("input", help="a .safetensors or .npy file")
    compare.add_argument("--methods", default="rtn,clip", help=f"comma-separated, from {','.join(METHODS)}")
    _add_scheme(compare)
    _add_remote(compare)

    dequantize = commands.add_parser("dequantize", help="a nibble .safetensors back to floating point")
    dequantize.add_argument("input", help="a .safetensors file written by nibble quantize (--format nibble)")
    dequantize.add_argument("-o", "--output", required=True, help="where to write the .safetensors result")
    dequantize.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                            help="element type of the result (default float32)")
    _add_remote(dequantize)
    return parser


def _report_problem(document: dict[str, Any], err: TextIO) -> None:
    err.write(f"error: {document.get('title', 'error')} ({document.get('status', '?')}): "
              f"{document.get('detail', '')}\n")
    for item in document.get("errors") or []:
        err.write(f"  {item.get('field', '')}: {item.get('message', '')}\n")


def run(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse `argv` and run the command; returns the exit status (see the module docstring).

    Every failure ends here as one message on `err`, never a traceback.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and its one-line error (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    commands: dict[str, Callable[[], int]] = {
        "serve": lambda: command_serve(args),
        "plan": lambda: command_plan(args, out, err),
        "inspect": lambda: command_inspect(args, out),
        "presets": lambda: command_presets(args, out),
        "devices": lambda: command_devices(args, out),
        "quantize": lambda: command_quantize(args, out, err),
        "compare": lambda: command_compare(args, out),
        "dequantize": lambda: command_dequantize(args, out),
        "jobs": lambda: command_jobs(args, out, err, _client),
    }
    try:
        return commands[args.command]()
    except NibbleAPIError as exc:
        return _report_api_error(exc, args.url, err)
    except NibbleResponseError as exc:
        err.write(f"error: no nibble answer at {args.url}: {exc}; is --url a nibble server?\n")
        return EXIT_UNREACHABLE
    except ValidationError as exc:
        _report_problem(validation_problem(exc.errors(include_url=False)).model_dump(), err)
    except NibbleError as exc:
        _report_problem(problem_for(exc)[0].model_dump(), err)
    except UsageError as exc:
        err.write(f"nibble: error: {exc}\n")
        return EXIT_USAGE
    except (CommandError, JobFailed) as exc:
        err.write(f"error: {exc}\n")
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        err.write(f"error: {_transport_reason(exc, args.url)}\n")
        return EXIT_UNREACHABLE
    except BrokenPipeError:  # the reader left (`nibble ... | head`): nothing more to say, as for any Unix tool
        _silence_stdout(out)
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        err.write(f"error: {exc}\n")
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        err.write("terminated\n")
        return EXIT_TERMINATED
    except Exception as exc:  # the last guard: one line, the traceback only on request
        if os.environ.get("NIBBLE_DEBUG"):
            traceback.print_exc(file=err)
        err.write(f"error: unexpected {type(exc).__name__}: {exc} (NIBBLE_DEBUG=1 shows the traceback)\n")
    return EXIT_ERROR


def _silence_stdout(out: TextIO) -> None:
    """Point the process's stdout at /dev/null when `out` is it, so the interpreter's last flush into the closed
    pipe raises nothing more at exit (the Python documentation's way, "Note on SIGPIPE")."""
    if out is sys.stdout:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _report_api_error(exc: NibbleAPIError, url: str, err: TextIO) -> int:
    """The server's error answer on stderr; the exit status says whose it is: busy (5), not nibble's (4), or
    nibble's problem with the request (1)."""
    if exc.status in BUSY_STATUSES:
        wait = exc.retry_after_seconds
        err.write(f"error: the server at {url} is busy: {exc.title} ({exc.status}): {exc.detail}; "
                  + (f"retry after {wait} s\n" if wait is not None else "retry later\n"))
        return EXIT_BUSY
    if not exc.is_problem:  # a proxy's page, or another server: no problem document of nibble's
        err.write(f"error: no nibble answer at {url}: {exc.status} {exc.title}: {exc.detail}\n")
        return EXIT_UNREACHABLE
    _report_problem(exc.problem, err)
    return EXIT_ERROR


def _transport_reason(exc: Exception, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        return (f"cannot reach the nibble server at {url}: connection failed ({exc}); "
                "is `nibble serve` running there?")
    if isinstance(exc, httpx.TimeoutException):
        return f"cannot reach the nibble server at {url}: timed out ({type(exc).__name__})"
    return f"lost the connection to the nibble server at {url}: {exc or type(exc).__name__}"


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated


def main() -> None:
    """The ``nibble`` console script (SIGTERM ends it as cleanly as Ctrl-C: exit status 143)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    raise SystemExit(run())


if __name__ == "__main__":
    main()
