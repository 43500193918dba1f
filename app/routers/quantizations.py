"""``/v1/quantize``, ``/v1/quantize/compare``, ``/v1/dequantize``: uploads worked in the bounded pool.

Order of a request: take a place in the pool (503 at once when full, before
reading the body), stream the upload to a temp directory (413 past the limit,
415 for a file that is neither .npy nor .safetensors), validate the text
fields, run the job on a worker under the time limit (504), answer.  The temp
directory is removed when the handler leaves, whatever happened (a client
that disconnects while its job runs has the job cancelled and its worker
replaced: it holds no worker once gone); a download
is streamed from a file descriptor opened before that, so nothing stays on
disk even if the client goes away mid-download.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from app.metrics import observe_report
from app.pool import WorkerPool
from app.problems import MalformedUpload, UnsupportedMediaType, problem_responses
from app.schemas.quantize import (
    CompareForm,
    CompareReport,
    DequantizeForm,
    QuantizeForm,
    QuantizeReport,
    multipart_body,
    parse_form,
)
from app.security import ApiKeyRoute, settings_of
from app.settings import Settings
from app.uploads import FormLimits, Upload, UploadedFile, new_output_path, receive_upload
from quant_core.single_file import (
    EXPORT_REPORT_KEY,
    OUTPUT_SUFFIXES,
    QuantizeJob,
    ReadLimits,
    compare_file,
    dequantize_file,
    quantize_file,
)

router = APIRouter(tags=["quantize"], route_class=ApiKeyRoute)
UPLOAD_ERRORS = problem_responses(400, 408, 413, 415, 422, 503, 504)
FILE_DESCRIPTION = "A .safetensors (several tensors; F32/F16/BF16) or .npy file (never unpickled)."
CALIBRATION_DESCRIPTION = "Optional calibration activations [samples, in_features] as .npy."
IMPORTANCE_DESCRIPTION = ("Optional importance statistics, one float per input column of each tensor (mean of x², "
                          "llama.cpp's imatrix): a GGUF or legacy .dat imatrix, or a .safetensors of float32 vectors "
                          "named by tensor.")
UPLOAD_FIELDS = ("file", "calibration", "importance")
UPLOAD_LIMITS = FormLimits(UPLOAD_FIELDS)
DOWNLOAD_CHUNK_BYTES = 1 << 20
REPORT_HEADER = "X-Nibble-Report"
T = TypeVar("T")
#: longest X-Nibble-Report value: with the other headers the answer's head stays under 4 KiB, which a proxy
#: buffering response heads in one page (nginx's proxy_buffer_size: 4 or 8 KiB) passes rather than answer 502
REPORT_HEADER_MAX_BYTES = 3072


def _pool(request: Request) -> WorkerPool:
    pool: WorkerPool = request.app.state.pool
    return pool


def _limits(settings: Settings) -> ReadLimits:
    return ReadLimits(settings.max_tensors, settings.max_elements_per_tensor, settings.max_header_bytes,
                      settings.max_upload_bytes, settings.max_budget_tensors)


async def _client_left(request: Request) -> None:
    """Return once the client has disconnected (its body is all in: the server's next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, job: Awaitable[T]) -> T:
    """Await `job` (a pool job), or cancel it as soon as the client disconnects and raise `ClientDisconnect`.

    A cancelled job's worker process is killed and replaced (app/pool.py), so
    a client that hangs up frees its worker and its pool place at once,
    instead of holding them until the job ends or reaches the time limit.
    """
    task = asyncio.ensure_future(job)
    watcher = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server's shutdown: the job answers it (503), as it would unwatched
        task.cancel()
        return await task
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise ClientDisconnect()
    return task.result()


def _required_file(upload: Upload, name: str) -> UploadedFile:
    if name not in upload.files:
        raise MalformedUpload(f"the multipart body has no file in field {name!r}", field=name)
    return upload.files[name]


def _calibration(upload: Upload) -> Path | None:
    calibration = upload.files.get("calibration")
    if calibration is None:
        return None
    if calibration.kind != "npy":
        raise MalformedUpload("calibration must be a .npy file", field="calibration")
    return calibration.path


def _importance(upload: Upload) -> Path | None:
    importance = upload.files.get("importance")
    return importance.path if importance is not None else None


def _stream_and_forget(path: Path) -> Iterator[bytes]:
    handle: BinaryIO = path.open("rb")
    path.unlink()  # the open descriptor keeps the data; nothing is left on disk whatever happens next

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(DOWNLOAD_CHUNK_BYTES):
                yield chunk

    return chunks()


def _download(path: Path, filename: str, summary: dict[str, Any]) -> StreamingResponse:
    size = path.stat().st_size
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Length": str(size),
        REPORT_HEADER: _header_json(summary),
    }
    return StreamingResponse(_stream_and_forget(path), media_type="application/octet-stream", headers=headers)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short report sent in the X-Nibble-Report header (the full one is in the file's metadata).

    Its JSON is at most `REPORT_HEADER_MAX_BYTES`: a ``quantization_config``
    that would pass it (compressed-tensors lists every module by name) is
    left out, and the summary says so (``"truncated": ["quantization_config"]``)
    and names the file's metadata key that holds the whole report, config included.
    """
    summary = {"method": report["method"], "format": report["format"], **report["totals"]}
    if report.get("quantization_config") is not None:
        summary["quantization_config"] = report["quantization_config"]
        if len(_header_json(summary)) > REPORT_HEADER_MAX_BYTES:
            del summary["quantization_config"]
            summary.update(truncated=["quantization_config"], full_report=EXPORT_REPORT_KEY)
    return summary


def _header_json(value: dict[str, Any]) -> str:
    """Compact JSON, ASCII only (a header's bytes are Latin-1; names are escaped as \\uXXXX)."""
    return json.dumps(value, separators=(",", ":"))


DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The report (output=report) or the file as a download with the report in its metadata "
                   f"and a summary in the {REPORT_HEADER} header.",
    "model": QuantizeReport,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}}


@router.post("/quantize", summary="Quantize uploaded tensors to INT4", response_model=None,
             responses={**DOWNLOAD_RESPONSE, **UPLOAD_ERRORS},
             openapi_extra=multipart_body(QuantizeForm, {"file": FILE_DESCRIPTION,
                                                         "calibration": CALIBRATION_DESCRIPTION,
                                                         "importance": IMPORTANCE_DESCRIPTION}, ("file",)))
async def create_quantization(request: Request) -> JSONResponse | StreamingResponse:
    """Every 2-D float tensor (or those matching `include`) to INT4 by `method`, measured; the rest passes."""
    settings = settings_of(request)
    pool = _pool(request)
    async with pool.reserve(), receive_upload(request, settings, UPLOAD_LIMITS) as upload:
        form = parse_form(QuantizeForm, upload.fields)
        file = _required_file(upload, "file")
        job = QuantizeJob(file.path, file.kind, _calibration(upload), (form.method,), form.group_size, form.symmetric,
                          form.include, _limits(settings), form.zero, threads=settings.job_threads,
                          importance_path=_importance(upload), budget_bytes=form.budget_bytes,
                          bits_per_weight=form.bits_per_weight)
        if form.output == "report":
            report = await _unless_client_leaves(request, pool.run(quantize_file, job, "report", None))
            observe_report(request.app, report)
            return JSONResponse(report)
        suffix = OUTPUT_SUFFIXES[form.output]
        output = new_output_path(upload, suffix)
        report = await _unless_client_leaves(request, pool.run(quantize_file, job, form.output, output))
        observe_report(request.app, report)
        return _download(output, f"quantized-{form.output}{suffix}", _summary(report))


@router.post("/quantize/compare", summary="Compare quantization methods side by side",
             response_model=CompareReport, responses=UPLOAD_ERRORS,
             openapi_extra=multipart_body(CompareForm, {"file": FILE_DESCRIPTION,
                                                        "calibration": CALIBRATION_DESCRIPTION,
                                                        "importance": IMPORTANCE_DESCRIPTION}, ("file",)))
async def create_comparison(request: Request) -> JSONResponse:
    """Quality figures and sizes of each method, per tensor, so a user sees which survives the squeeze."""
    settings = settings_of(request)
    pool = _pool(request)
    async with pool.reserve(), receive_upload(request, settings, UPLOAD_LIMITS) as upload:
        form = parse_form(CompareForm, upload.fields)
        file = _required_file(upload, "file")
        job = QuantizeJob(file.path, file.kind, _calibration(upload), tuple(form.methods), form.group_size,
                          form.symmetric, form.include, _limits(settings), form.zero,
                          importance_path=_importance(upload), budget_bytes=form.budget_bytes,
                          bits_per_weight=form.bits_per_weight)
        comparison = await _unless_client_leaves(request, pool.run(compare_file, job))
        observe_report(request.app, comparison)
        return JSONResponse(comparison)


@router.post("/dequantize", summary="Dequantize a nibble .safetensors file", response_model=None,
             responses={200: {"description": "A .safetensors file of floating-point tensors.",
                              "content": {"application/octet-stream": {
                                  "schema": {"type": "string", "format": "binary"}}}}, **UPLOAD_ERRORS},
             openapi_extra=multipart_body(DequantizeForm, {"file": "A .safetensors file written by nibble."},
                                          ("file",)))
async def create_dequantization(request: Request) -> StreamingResponse:
    """Back to float32, float16 or bfloat16; passthrough tensors come back unchanged."""
    settings = settings_of(request)
    pool = _pool(request)
    async with pool.reserve(), receive_upload(request, settings, FormLimits(("file",))) as upload:
        form = parse_form(DequantizeForm, upload.fields)
        file = _required_file(upload, "file")
        if file.kind != "safetensors":
            raise UnsupportedMediaType(
                f"the file in field 'file' ({file.filename or 'unnamed'}) is a .{file.kind}; dequantize reads "
                "the .safetensors files nibble writes (POST /v1/quantize with output=nibble)", field="file")
        output = new_output_path(upload, ".safetensors")
        summary = await _unless_client_leaves(
            request, pool.run(dequantize_file, file.path, form.dtype, _limits(settings), output))
        return _download(output, f"dequantized-{form.dtype}.safetensors", summary)
