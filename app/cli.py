"""``nibble``: the command line (``serve``, ``plan``, ``inspect``, ``quantize``, ``compare``).

Each command runs locally on `quant_core` through the same conversion
functions the API uses (`app.schemas`, `app.jobs`), or against a server with
``--url`` through `app.client`; so ``nibble plan ... --json`` prints exactly
what ``POST /v1/plan`` answers, whichever way it ran.  Sizes in tables are
GiB (1 GiB = 2^30 bytes); ``--json`` prints the API's bytes unchanged.
Errors print the problem (title, detail, each invalid field) on stderr and
exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from app.client import NibbleAPIError, NibbleClient
from app.jobs import OUTPUT_SUFFIXES, QuantizeJob, ReadLimits, compare_file, quantize_file
from app.problems import problem_for, validation_problem
from app.schemas.models import InspectRequest, InspectResponse, inspect_from_core, model_to_core
from app.schemas.plans import PlanRequest, PlanResponse, plan_from_core, plan_to_core
from app.schemas.quantize import CompareReport, QuantizeReport
from app.settings import get_settings
from quant_core.errors import NibbleError
from quant_core.planner import plan
from quant_core.quantize import METHODS
from quant_core.tensorio import sniff_format

GIB = 1 << 30
PROGRESS_WIDTH = 24
EXIT_ERROR = 1


class CommandError(Exception):
    """A problem to print (already worded for a person) and exit with status 1."""


def gib(value: int) -> str:
    """`value` bytes in GiB (2^30 bytes) with two decimals."""
    return f"{value / GIB:.2f}"


def _print_json(document: Any, out: TextIO) -> None:
    out.write(json.dumps(document, indent=2) + "\n")


def _client(args: argparse.Namespace) -> NibbleClient:
    return NibbleClient(args.url, api_key=args.api_key)


def _read_json_file(path: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandError(f"{path} holds a JSON {type(document).__name__}, not an object (config.json)")
    return document


# --- plan ---------------------------------------------------------------------------------------


def plan_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/plan`` body for the command-line options (unset options keep the API's defaults)."""
    model: dict[str, Any] = {"hf_config": _read_json_file(args.config)} if args.config else {"preset": args.model}
    hardware: dict[str, Any] = {"count": args.count}
    if args.memory_bytes is not None:
        hardware["memory_bytes"] = args.memory_bytes
    else:
        hardware["device"] = args.device
    body: dict[str, Any] = {"model": model, "hardware": hardware}
    sections: dict[str, dict[str, Any]] = {
        "workload": {"context_length": args.context, "concurrent_sequences": args.sequences},
        "weights": {"format": args.format, "symmetric": args.symmetric or None},
        "kv_cache": {"dtype": args.kv_dtype},
        "parallel": {"tensor": args.tensor, "pipeline": args.pipeline},
        "runtime": {"memory_utilization": args.memory_utilization},
    }
    if args.group_size is not None:
        sections["weights"]["group_size"] = None if args.group_size == "row" else int(args.group_size)
    for name, values in sections.items():
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            body[name] = given
    return body


def plan_locally(body: dict[str, Any]) -> PlanResponse:
    """What ``POST /v1/plan`` answers for `body`, computed in process by the API's own conversions."""
    request = PlanRequest.model_validate(body)
    spec, hardware, workload, options = plan_to_core(request, get_settings().max_config_depth)
    return plan_from_core(plan(spec, hardware, workload, options))


def _verdict(name: str, answer: PlanResponse) -> str:
    result = answer.comparison[name]
    limits = [f"longest context {result.max_context_length:,}" if result.max_context_length
              else "no context fits", f"most sequences {result.max_concurrent_sequences:,}",
              f"fewest devices {result.min_devices}" if result.min_devices else "no device count fits"]
    if result.fits:
        tightest = min(d.headroom_bytes for d in result.devices)
        return f"{name}: FITS with {gib(tightest)} GiB headroom on the fullest device; " + ", ".join(limits)
    worst = min(result.devices, key=lambda d: d.headroom_bytes)
    return (f"{name}: DOES NOT FIT: device {worst.index} needs {gib(worst.used_bytes)} GiB of "
            f"{gib(worst.usable_bytes)} GiB usable ({gib(-worst.headroom_bytes)} GiB short); " + ", ".join(limits))


def render_plan(answer: PlanResponse) -> str:
    """A readable table: per format and device, each term in GiB, then verdicts, limits and warnings."""
    hardware = answer.hardware
    lines = [
        f"{answer.model} on {hardware.count} x {hardware.name} ({gib(hardware.capacity_bytes)} GiB each), "
        f"context {answer.workload.context_length:,} x {answer.workload.concurrent_sequences} sequences, "
        f"KV cache {answer.kv_cache.dtype} ({answer.kv_cache.bytes_per_token:,} bytes/token), "
        f"tensor x pipeline = {answer.parallel.tensor} x {answer.parallel.pipeline}",
        f"Sizes in GiB (1 GiB = 2^30 bytes); usable = capacity x {answer.memory_utilization:g}.",
        "",
    ]
    header = ("format", "device", "weights", "KV cache", "activations", "overhead", "used", "usable",
              "capacity", "headroom", "fits")
    rows: list[tuple[str, ...]] = [header]
    for name, result in answer.comparison.items():
        label = f"{name} ({result.bits_per_weight:.3f} b/w)"
        for device in result.devices:
            rows.append((label, str(device.index), gib(device.weights_bytes), gib(device.kv_cache_bytes),
                         gib(device.activation_bytes), gib(device.overhead_bytes), gib(device.used_bytes),
                         gib(device.usable_bytes), gib(device.capacity_bytes), gib(device.headroom_bytes),
                         "yes" if device.fits else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(_verdict(name, answer) for name in answer.comparison)
    lines.append(f"activations: {answer.activation.basis}")
    lines.append(f"overhead: {answer.runtime_overhead.basis}")
    lines.extend(f"warning: {warning}" for warning in answer.warnings)
    return "\n".join(lines) + "\n"


def command_plan(args: argparse.Namespace, out: TextIO) -> int:
    body = plan_body(args)
    if args.url:
        with _client(args) as client:
            answer = client.plan(body)
    else:
        answer = plan_locally(body)
    if args.json:
        _print_json(answer.model_dump(mode="json"), out)
    else:
        out.write(render_plan(answer))
    return 0


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
    if args.json:
        _print_json(answer.model_dump(mode="json"), out)
    else:
        out.write(render_inspect(answer))
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
            lines.append(f"  {entry.format:<24} {gib(entry.bytes):>10} GiB  {entry.bits_per_weight or 0:.3f} b/w")
    lines.append(f"Tensor inventory: {len(answer.tensors)} rows (--json lists them)")
    return "\n".join(lines) + "\n"


# --- quantize and compare -----------------------------------------------------------------------


def _group_size(value: str) -> int | None:
    return None if value == "row" else int(value)


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
        filled = PROGRESS_WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
        elapsed = time.perf_counter() - self.started
        self.stream.write(f"[{bar}] {done}/{total} {name} ({seconds:.2f} s; {elapsed:.1f} s in all)\n")
        self.stream.flush()


def command_quantize(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    output = Path(args.output)
    _local_only(args)
    if args.url:
        err.write(f"uploading {args.input} to {args.url} (the server reports no per-tensor progress)\n")
        with _client(args) as client:
            download = client.quantize(args.input, method=args.method, group_size=_group_size(args.group_size),
                                       symmetric=args.symmetric, output=args.format, include=args.include,
                                       calibration=args.calibration)
        if isinstance(download, QuantizeReport):  # only for output=report, which this command never asks
            raise CommandError("the server answered a report instead of a file")
        download.save(output)
        summary = download.summary
    else:
        job = _job(args, (args.method,))
        progress = ProgressBar(err) if not args.quiet else None
        summary = quantize_file(job, args.format, output, progress=progress)
    if args.json:
        _print_json(summary, out)
        return 0
    totals = summary.get("totals", summary)
    out.write(f"wrote {output} ({args.format}, {output.stat().st_size:,} bytes): "
              f"{totals.get('quantized_tensors', 0)} tensors quantized by {args.method}, "
              f"{totals.get('passthrough_tensors', 0)} passed through; input {totals.get('input_bytes', 0):,} bytes, "
              f"INT4 payload {totals.get('output_payload_bytes', 0):,} bytes\n")
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"INT4 {report.format}; relative error = ||W - W'||_F / ||W||_F"]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
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
    if args.json:
        _print_json(report.model_dump(mode="json"), out)
    else:
        out.write(render_compare(report))
    return 0


# --- serve --------------------------------------------------------------------------------------


def command_serve(args: argparse.Namespace) -> int:
    import uvicorn  # only this command needs the server

    from app.http_protocol import UVICORN_HTTP

    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, http=UVICORN_HTTP)
    return 0


# --- parser and entry point ---------------------------------------------------------------------


def _add_remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("NIBBLE_URL"),
                        help="run against this nibble server (default: locally; env NIBBLE_URL)")
    parser.add_argument("--api-key", default=os.environ.get("NIBBLE_API_KEY"),
                        help="bearer token for a server with API keys (env NIBBLE_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")


def _add_scheme(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-size", default="128", help="32, 64, 128, 256 or row (default 128)")
    parser.add_argument("--symmetric", action="store_true", help="symmetric INT4 (no zero points)")
    parser.add_argument("--include", help="glob on tensor names (default: every 2-D float tensor)")
    parser.add_argument("--calibration", help="calibration activations [samples, in_features] as .npy")
    parser.add_argument("--importance", help="importance statistics: llama.cpp imatrix (.gguf or .dat) or "
                        "a .safetensors of float32 vectors named by tensor")
    parser.add_argument("--bits-per-weight", type=float, help="a budget: per-tensor formats within this many bits "
                        "per weight over the quantized tensors")
    parser.add_argument("--budget-bytes", type=int, help="a budget in bytes for the quantized tensors")


def build_parser() -> argparse.ArgumentParser:
    """The ``nibble`` argument parser with its five subcommands."""
    parser = argparse.ArgumentParser(prog="nibble", description=(
        "Plan LLM memory at 16-bit beside INT4, and quantize tensors to INT4 with measured quality. "
        "Sizes are GiB (2^30 bytes)."))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API and the web page with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")

    plan_parser = commands.add_parser("plan", help="will a model fit: per device, 16-bit beside INT4")
    model = plan_parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a preset id (nibble inspect --help; GET /v1/models)")
    model.add_argument("--config", help="a Hugging Face config.json file")
    hardware = plan_parser.add_mutually_exclusive_group(required=True)
    hardware.add_argument("--device", help="a device id, e.g. h100-80gb (GET /v1/devices)")
    hardware.add_argument("--memory-bytes", type=int, help="memory of one device in bytes, for unlisted hardware")
    plan_parser.add_argument("--count", type=int, default=1, help="number of devices (default 1)")
    plan_parser.add_argument("--context", type=int, help="tokens per sequence, prompt + output")
    plan_parser.add_argument("--sequences", type=int, help="concurrent sequences")
    plan_parser.add_argument("--kv-dtype", help="KV cache dtype: bf16, fp16, fp8, int8, int4")
    plan_parser.add_argument("--format", choices=("int4", "int8", "bf16", "fp16", "fp32"),
                             help="the deployed weight format (default int4; 16-bit is always shown beside)")
    plan_parser.add_argument("--group-size", help="INT4 group size: 32, 64, 128, 256 or row")
    plan_parser.add_argument("--symmetric", action="store_true", help="symmetric INT4")
    plan_parser.add_argument("--tensor", type=int, help="tensor-parallel degree (default count / pipeline)")
    plan_parser.add_argument("--pipeline", type=int, help="pipeline-parallel degree")
    plan_parser.add_argument("--memory-utilization", type=float, help="usable share of memory (default 0.9)")
    _add_remote(plan_parser)

    inspect = commands.add_parser("inspect", help="parameters, KV bytes per token and weight bytes of a model")
    inspect.add_argument("config", nargs="?", help="a Hugging Face config.json file")
    inspect.add_argument("--preset", help="a preset id instead of a config file")
    _add_remote(inspect)

    quantize = commands.add_parser("quantize", help="quantize a .safetensors / .npy file to INT4")
    quantize.add_argument("input", help="a .safetensors or .npy file")
    quantize.add_argument("-o", "--output", required=True, help="where to write the result")
    quantize.add_argument("--method", default="rtn", choices=METHODS, help="quantization method (default rtn)")
    quantize.add_argument("--format", default="nibble", choices=tuple(OUTPUT_SUFFIXES),
                          help="output layout: nibble (dequantizable), gptq, awq, compressed-tensors, gguf")
    quantize.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _add_scheme(quantize)
    _add_remote(quantize)

    compare = commands.add_parser("compare", help="compare quantization methods on a file, per tensor")
    compare.add_argument("input", help="a .safetensors or .npy file")
    compare.add_argument("--methods", default="rtn,clip", help=f"comma-separated, from {','.join(METHODS)}")
    _add_scheme(compare)
    _add_remote(compare)
    return parser


def _report_problem(document: dict[str, Any], err: TextIO) -> None:
    err.write(f"error: {document.get('title', 'error')} ({document.get('status', '?')}): "
              f"{document.get('detail', '')}\n")
    for item in document.get("errors") or []:
        err.write(f"  {item.get('field', '')}: {item.get('message', '')}\n")


def run(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse `argv` and run the command; returns the exit status (0, 1 on a problem, 2 on usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[], int]] = {
        "serve": lambda: command_serve(args),
        "plan": lambda: command_plan(args, out),
        "inspect": lambda: command_inspect(args, out),
        "quantize": lambda: command_quantize(args, out, err),
        "compare": lambda: command_compare(args, out),
    }
    try:
        return commands[args.command]()
    except NibbleAPIError as exc:
        _report_problem(exc.problem or {"title": exc.title, "status": exc.status, "detail": exc.detail}, err)
    except ValidationError as exc:
        _report_problem(validation_problem(exc.errors(include_url=False)).model_dump(), err)
    except NibbleError as exc:
        _report_problem(problem_for(exc)[0].model_dump(), err)
    except CommandError as exc:
        err.write(f"error: {exc}\n")
    except OSError as exc:
        err.write(f"error: {exc}\n")
    return EXIT_ERROR


def main() -> None:
    """The ``nibble`` console script."""
    raise SystemExit(run())


if __name__ == "__main__":
    main()
