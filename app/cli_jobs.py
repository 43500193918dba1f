"""``nibble jobs submit/status/watch/cancel/download/list`` (against a server) and ``nibble quantize DIR -o
OUTDIR`` (locally).

The remote commands speak to ``/v1/jobs`` through `app.client`; ``watch``
follows the job's server-sent events with a progress bar on stderr.  A local
``nibble quantize`` of a checkpoint directory runs the same core functions a
job runs (`quant_core.checkpoint`), in this process, so the result is the same
bytes a server's job writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, get_args

import httpx

from app.client import NibbleAPIError, NibbleClient
from app.job_store import TERMINAL_STATES
from app.schemas.jobs import MAX_JOBS_PER_PAGE, JobCreate, JobSource, JobStateName, to_options
from app.settings import get_settings
from quant_core.checkpoint import (
    attach_importance,
    engine_notes,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
    without_statistics,
)
from quant_core.quantize import METHODS
from quant_core.tensorio import read_importance

PROGRESS_WIDTH = 24
MIB = 1 << 20
GGUF_GROUP_SIZE = "32"  # GGUF Q4_0: blocks of 32 weights, symmetric (gguf-py quants.py, Q4_0)
JOB_OUTPUTS = ("compressed-tensors", "gptq", "awq", "gguf")
JOB_STATES: tuple[str, ...] = get_args(JobStateName)
#: how long ``watch`` keeps trying a server that stopped answering (a restart resumes the job), and the pause
#: between tries
RECONNECT_SECONDS = 120.0
RECONNECT_PAUSE_SECONDS = 1.0
#: what a reverse proxy (or nibble, shutting down) answers while the server behind it restarts
GATEWAY_STATUSES = (502, 503, 504)


class Terminated(BaseException):
    """SIGTERM (a CI runner's cancel, ``docker stop``, ``timeout``) as an exception, so that the command's
    temporary files are removed on the way out as for Ctrl-C."""


class JobFailed(Exception):
    """A watched job ended failed or cancelled (the CLI exits 1)."""


def group_size_value(text: str) -> int | None:
    """A ``--group-size`` checked by `group_size_option`: its number, or None for ``row``."""
    return None if text == "row" else int(text)


def group_size_option(text: str) -> str:
    """``--group-size``: a whole number in ASCII digits (``int`` refuses '²', which ``isdigit`` takes) or ``row``,
    checked as the option is read (a usage error, exit 2); the API says which numbers it takes."""
    if text != "row" and not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a group size: give 32, 64, 128, 256 or row")
    return text


def progress_bar(done: int, total: int) -> str:
    """``[#####...]``: `done` of `total` in `PROGRESS_WIDTH` characters."""
    filled = PROGRESS_WIDTH * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (PROGRESS_WIDTH - filled)}]"


def print_json(document: Any, out: TextIO) -> None:
    """`document` as the API's JSON, indented, on `out` (``--json``)."""
    out.write(json.dumps(document, indent=2) + "\n")


def gguf_scheme(args: argparse.Namespace, output: str) -> None:
    """``--format gguf`` writes Q4_0, which is group 32 symmetric: take that scheme unless the user set a group size
    (an explicit other one is sent as is and refused with the reason)."""
    if output == "gguf":
        if args.group_size is None:
            args.group_size = GGUF_GROUP_SIZE
        args.symmetric = True


def job_body(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body of the command-line options (validated by the API's own model)."""
    output = args.format or "compressed-tensors"
    gguf_scheme(args, output)
    # unset: the API's default group size (a budget chooses it)
    chosen: dict[str, Any] = {} if args.group_size is None else {"group_size": group_size_value(args.group_size)}
    request = JobCreate(
        source=JobSource(path=path), method=args.method, output=output,
        symmetric=args.symmetric, include=args.include or None, exclude=args.exclude or None,
        max_shard_bytes=args.max_shard_bytes, importance=args.importance or None,
        bits_per_weight=args.bits_per_weight, budget_bytes=args.budget_bytes, **chosen)
    return request.model_dump(mode="json", exclude_unset=True)


def progress_line(status: dict[str, Any]) -> str:
    """``[#####.......] 12/56 tensors, 1.20 of 4.00 GiB, 35.1 MiB/s, 80 s left (running)``; bytes in MiB
    (2^20) below a GiB total, in KiB (2^10) below a MiB, where GiB would print ``0.00 of 0.00``."""
    progress = status["progress"]
    done, total = progress["tensors_done"], progress["tensors_total"]
    unit, scale = next((name, size) for name, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10), ("bytes", 1))
                       if progress["bytes_total"] >= size or size == 1)
    parts = [f"{progress_bar(done, total)} {done}/{total} tensors",
             f"{progress['bytes_done'] / scale:.2f} of {progress['bytes_total'] / scale:.2f} {unit}"]
    if progress.get("rate"):
        parts.append(f"{progress['rate'] / MIB:.1f} MiB/s")
    if progress.get("eta_seconds") is not None and status["state"] == "running":
        parts.append(f"{progress['eta_seconds']:.0f} s left")
    return ", ".join(parts) + f" ({status['state']})"


def allocation_line(allocation: dict[str, Any]) -> str:
    """``budget 162,201 bytes: 161,852 written (4.390 bits per weight): 2 bf16, 12 int4-g32-asym``."""
    mix = ", ".join(f"{count} {label}" for label, count in allocation["formats"].items())
    return (f"budget {allocation['budget_bytes']:,} bytes: {allocation['output_bytes']:,} written "
            f"({allocation['bits_per_weight']:.3f} bits per weight): {mix}")


def watch(client: NibbleClient, job_id: str, err: TextIO,
          reconnect_seconds: float = RECONNECT_SECONDS) -> dict[str, Any]:
    """Follow a job's events to its end, one progress line per change; its last status.

    A stream that drops (the server restarting resumes its jobs), or a proxy's 502/503/504 in its place, is
    followed again once the server answers, for up to `reconnect_seconds` without an answer; then the error is
    raised, as it is at once by a server never reached (a wrong ``--url``).  A stream that ends before the job
    has is followed again too, so the status returned is always a finished one."""
    try:
        return _follow(client, job_id, err, reconnect_seconds)
    except (KeyboardInterrupt, Terminated):  # the watch stops; the job does not
        err.write(f"stopped watching; job {job_id} goes on on the server (nibble jobs watch {job_id}, "
                  f"or nibble jobs cancel {job_id})\n")
        raise


def _follow(client: NibbleClient, job_id: str, err: TextIO, reconnect_seconds: float) -> dict[str, Any]:
    lost_at: float | None = None
    reached = False
    while True:
        try:
            last = client.get_job(job_id, report=False)
            reached = True
            for status in client.job_events(job_id):
                last, lost_at = status, None
                err.write(progress_line(status) + "\n")
                err.flush()
            if last["state"] in TERMINAL_STATES:
                return last
        except (httpx.TransportError, NibbleAPIError) as exc:
            if not reached or (isinstance(exc, NibbleAPIError) and exc.status not in GATEWAY_STATUSES):
                raise
            now = time.monotonic()
            if lost_at is None:
                lost_at = now
                err.write(f"connection to the server lost ({exc or type(exc).__name__}); following job {job_id} "
                          f"again once it answers (for up to {reconnect_seconds:.0f} s)\n")
            elif now - lost_at > reconnect_seconds:
                err.write(f"gave up watching job {job_id}; it may still run on the server "
                          f"(nibble jobs watch {job_id})\n")
                raise
        time.sleep(RECONNECT_PAUSE_SECONDS)


def _finish(status: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    if args.json:
        print_json(status, out)
    else:
        out.write(f"job {status['id']}: {status['state']}\n")
        for note in status.get("engine_notes") or []:
            out.write(f"  note: {note}\n")
        for file in (status.get("result") or {}).get("files", []):
            out.write(f"  {file['name']:<44} {file['bytes']:>14,} bytes  {file['url']}\n")
        if (status.get("result") or {}).get("allocation"):
            out.write(f"  {allocation_line(status['result']['allocation'])}\n")
        if status.get("error"):
            out.write(f"  error: {status['error'].get('detail', '')}\n")
    if status["state"] in ("failed", "cancelled"):
        raise JobFailed(f"job {status['id']} {status['state']}")
    return 0


def _cancel(client: NibbleClient, args: argparse.Namespace, out: TextIO) -> int:
    """Cancel a queued or running job; delete a finished one (the server's DELETE does either), saying which."""
    before = client.get_job(args.id, report=False)["state"]
    status = client.cancel_job(args.id)
    if args.json:
        print_json(status, out)
    elif before in TERMINAL_STATES:
        out.write(f"job {status['id']}: deleted, with its files (it had {before})\n")
    elif status["state"] == "cancelled":
        out.write(f"job {status['id']}: cancelled\n")
    else:
        out.write(f"job {status['id']}: cancelling (it stops after the tensors in flight)\n")
    return 0


def _download(client: NibbleClient, args: argparse.Namespace, out: TextIO) -> int:
    """Every result file of a succeeded job into a new directory (``-o``), which appears only once complete."""
    status = client.get_job(args.id, report=False)
    if status["state"] != "succeeded":
        raise JobFailed(f"job {args.id} is {status['state']}: only a succeeded job has files to download")
    output = Path(args.output)
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise JobFailed(f"{output} exists and is not an empty directory; give a new directory")
    files = status["result"]["files"]
    for name in (file["name"] for file in files):  # written under OUTDIR: never a path that leaves it
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise JobFailed(f"the server names a result file {name!r}, not a plain file name; nothing downloaded")
    with staged_output(output) as staging:
        staging.mkdir()
        for file in files:
            size = client.download_job_file(file["url"], staging / file["name"]).stat().st_size
            if size != file["bytes"]:  # a proxy's page, or a file changed on the server: not the job's result
                raise JobFailed(f"{file['name']}: {size:,} bytes arrived where the job lists {file['bytes']:,}; "
                                "nothing downloaded")
    if args.json:
        print_json({"id": args.id, "output": str(output), "files": files}, out)
        return 0
    out.write(f"downloaded job {args.id}: {len(files)} files, {sum(file['bytes'] for file in files):,} bytes "
              f"into {output}\n")
    return 0


def command_jobs(args: argparse.Namespace, out: TextIO, err: TextIO,
                 connect: Callable[[argparse.Namespace], NibbleClient]) -> int:
    """``nibble jobs <action>``, on the server `connect` opens a client of (``--url``, ``--api-key``)."""
    if not args.url:
        raise JobFailed("jobs run on a server: pass --url (or set NIBBLE_URL)")
    with connect(args) as client:
        if args.action == "submit":
            status = client.submit_job(job_body(args, args.path))
            err.write(f"submitted job {status['id']} ({status['url']})\n")
            if args.watch:
                for note in status.get("engine_notes") or []:  # known from the plan: said before the wait
                    err.write(f"note: {note}\n")
                status = watch(client, status["id"], err)
            return _finish(status, args, out)
        if args.action == "list":
            return _list(client, args, out, err)
        if args.action == "watch":
            return _finish(watch(client, args.id, err), args, out)
        if args.action == "cancel":
            return _cancel(client, args, out)
        if args.action == "download":
            return _download(client, args, out)
        return _finish(client.get_job(args.id, report=args.json), args, out)  # the report: --json shows it


def _list(client: NibbleClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``nibble jobs list``: every job newest first (of ``--state``), or the ``--limit`` newest, and then a line on
    stderr when more jobs follow them (never a silent cut)."""
    wanted = args.limit
    page_size = None if wanted is None else min(wanted + 1, MAX_JOBS_PER_PAGE)
    jobs = list(itertools.islice(client.iter_jobs(state=args.state or (), page_size=page_size),
                                 None if wanted is None else wanted + 1))
    more = wanted is not None and len(jobs) > wanted
    jobs = jobs[:wanted]
    if args.json:
        print_json(jobs, out)
    for job in [] if args.json else jobs:
        out.write(f"{job['id']}  {job['state']:<10} {progress_line(job)}\n")
    if more:
        err.write(f"more jobs follow these {wanted}: a larger --limit, or none, lists them\n")
    return 0


def command_quantize_checkpoint(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``nibble quantize DIR -o OUTDIR``: the job, in this process, a progress line per tensor on stderr."""
    if args.url:
        raise JobFailed("a checkpoint directory is quantized on a server with `nibble jobs submit PATH --url`, "
                        "PATH under the server's NIBBLE_DATA_DIR")
    if args.calibration:
        raise JobFailed("checkpoint jobs take no calibration activations (GPTQ methods are not offered for them)")
    if args.format == "nibble":
        raise JobFailed("a checkpoint is written as compressed-tensors, gptq, awq or gguf (--format)")
    request = JobCreate.model_validate(job_body(args, "."))
    options = to_options(request, threads=None)  # this process's every core for each tensor
    settings = get_settings()
    checkpoint = open_checkpoint(args.input, max_tensors=settings.job_max_tensors,
                                 max_elements=settings.job_max_elements_per_tensor,
                                 max_header_bytes=settings.max_header_bytes)
    plans = plan_checkpoint(checkpoint, options)
    if args.importance:  # here a local file (a server's job reads it under its data root)
        plans = attach_importance(plans, read_importance(Path(args.importance)))
        checkpoint = without_statistics(checkpoint, Path(args.importance))
    for note in engine_notes(options, plans, checkpoint.config):  # said before any work, and again in the summary
        err.write(f"note: {note}\n")
    output = Path(args.output)
    if output.is_dir() and any(output.iterdir()):
        raise JobFailed(f"{output} exists and is not empty; give a new directory")
    if output.exists() and not output.is_dir():
        raise JobFailed(f"{output} is a file, not a directory; give a new directory")
    started = time.perf_counter()

    def progress(done: int, total: int, entry: dict[str, Any]) -> None:
        if not args.quiet:
            err.write(f"{progress_bar(done, total)} {done}/{total} {entry['name']} "
                      f"({time.perf_counter() - started:.1f} s in all)\n")
            err.flush()

    with (tempfile.TemporaryDirectory(prefix="nibble-parts-", dir=os.environ.get("NIBBLE_TEMP_DIR")) as parts,
          staged_output(output) as staging):
        report = quantize_checkpoint(checkpoint, plans, options, staging, Path(parts), progress)
    if args.json:
        print_json(report, out)
        return 0
    totals = report["totals"]
    out.write(f"wrote {output} ({options.output}): {totals['quantized_tensors']} tensors quantized by "
              f"{options.method}, {totals['passthrough_tensors']} passed through; "
              f"{totals['quantized_input_bytes']:,} bytes in, {totals['quantized_output_bytes']:,} bytes out\n")
    if report.get("allocation") is not None:
        out.write(allocation_line(report["allocation"]) + "\n")
    for note in report.get("engine_notes", []):
        out.write(f"note: {note}\n")
    return 0


@contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """A hidden path beside `output` to write the result to, renamed to `output` once the block ends without an
    error (a directory replaces an empty one); otherwise removed.  An interrupted run (Ctrl-C, SIGTERM, a full
    disk) leaves no half-written result under `output`'s name, and its parent's other files untouched.  A
    symbolic link is written through, as an open() would: the result goes where it points."""
    output = output.resolve() if output.is_symlink() else output
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        yield staging
        try:
            os.replace(staging, output)
        except OSError as exc:  # named after `output`, not the hidden staging path
            raise OSError(exc.errno, f"cannot put the result at {output}: {exc.strerror}") from None
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """The options a checkpoint job takes besides method, format and scheme."""
    parser.add_argument("--exclude", action="append", help="glob of tensor names never quantized (repeatable; "
                                                           "default: embeddings, lm_head, norms, routers)")
    parser.add_argument("--max-shard-bytes", type=int, default=5 * 10**9, help="most data bytes per output shard")


def add_budget_options(parser: argparse.ArgumentParser, importance: str, outputs: str = "") -> None:
    """Importance statistics (`importance`: where the file is read) and a budget (for `outputs`, if said)."""
    parser.add_argument("--importance", help=f"importance statistics{importance}")
    parser.add_argument("--bits-per-weight", type=float, help="a budget: per-tensor formats within this many bits "
                        f"per weight over the quantized tensors{outputs}")
    parser.add_argument("--budget-bytes", type=int, help="a budget in bytes for the quantized tensors")


def positive_count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def add_jobs_parser(commands: Any, add_remote: Any) -> None:
    """Register ``nibble jobs`` and its actions on the CLI's subcommands."""
    jobs = commands.add_parser("jobs", help="quantize a whole checkpoint as a job on a server (--url)")
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="submit a checkpoint directory under the server's data root")
    submit.add_argument("path", help="the checkpoint directory, relative to the server's NIBBLE_DATA_DIR")
    submit.add_argument("--method", default="rtn", choices=[m for m in METHODS if not m.startswith("gptq")])
    submit.add_argument("--format", default="compressed-tensors", choices=JOB_OUTPUTS)
    submit.add_argument("--group-size", type=group_size_option,
                        help="32, 64, 128, 256 or row (default 128; 32 for --format gguf; a budget chooses each "
                        "tensor's)")
    submit.add_argument("--symmetric", action="store_true")
    submit.add_argument("--include", action="append", help="glob of tensor names to quantize (repeatable)")
    submit.add_argument("--watch", action="store_true", help="follow the job with a progress bar to its end")
    add_job_options(submit)
    add_budget_options(submit, " (llama.cpp imatrix .gguf/.dat or safetensors vectors), relative to the server's "
                       "NIBBLE_DATA_DIR", " (compressed-tensors and gguf outputs)")
    add_remote(submit)
    for action, text in (("status", "a job's state, progress and files"), ("watch", "follow a job to its end"),
                         ("cancel", "cancel a job (a finished one is deleted, with its files)"),
                         ("download", "a succeeded job's files into a new directory")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("id")
        if action == "download":
            parser.add_argument("-o", "--output", required=True, help="a new (or empty) directory for the files")
        add_remote(parser)
    listing = actions.add_parser("list", help="every job, newest first (or the --limit newest)")
    listing.add_argument("--state", action="append", choices=JOB_STATES,
                         help="only jobs in this state (repeatable)")
    listing.add_argument("--limit", type=positive_count,
                         help="list at most this many (stderr says when more follow)")
    add_remote(listing)
