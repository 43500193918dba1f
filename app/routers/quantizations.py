"""``/v1/quantize``, ``/v1/quantize/compare``, ``/v1/dequantize``: uploads worked in the bounded pool.

Order of a request: take a place in the pool (503 at once when full, before
reading the body), stream the upload to a temp directory (413 past the limit,
415 for a file that is neither .npy nor .safetensors), validate the text
fields, run the job on a worker under the time limit (504), answer.  The temp
directory is removed when the handler leaves, whatever happened; a download
is streamed from a file descriptor opened before that, so nothing stays on
disk even if the client goes away mid-download.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from app.arrival import ArrivalRecorder, UploadIncomplete
from app.jobs import (
    OUTPUT_SUFFIXES,
    QuantizeJob,
    ReadLimits,
    compare_file,
    dequantize_file,
    quantize_arriving,
    quantize_file,
)
from app.metrics import observe_report
from app.pool import WorkerPool
from app.problems import MalformedUpload, TimeLimitExceeded, UnsupportedMediaType, problem_responses
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
from app.uploads import ArrivingFile, TensorFileKind, Upload, UploadedFile, new_output_path, receive_upload

router = APIRouter(tags=["quantize"], route_class=ApiKeyRoute)
UPLOAD_ERRORS = problem_responses(400, 408, 413, 415, 422, 503, 504)
FILE_DESCRIPTION = "A .safetensors (several tensors; F32/F16/BF16) or .npy file (never unpickled)."
CALIBRATION_DESCRIPTION = "Optional calibration activations [samples, in_features] as .npy."
IMPORTANCE_DESCRIPTION = ("Optional importance statistics, one float per input column of each tensor (mean of x², "
                          "llama.cpp's imatrix): a GGUF or legacy .dat imatrix, or a .safetensors of float32 vectors "
                          "named by tensor.")
UPLOAD_FIELDS = ("file", "calibration", "importance")
DOWNLOAD_CHUNK_BYTES = 1 << 20
REPORT_HEADER = "X-Nibble-Report"


def _pool(request: Request) -> WorkerPool:
    pool: WorkerPool = request.app.state.pool
    return pool


def _limits(settings: Settings) -> ReadLimits:
    return ReadLimits(settings.max_tensors, settings.max_elements_per_tensor, settings.max_header_bytes,
                      settings.max_upload_bytes)


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
        REPORT_HEADER: json.dumps(summary, separators=(",", ":")),
    }
    return StreamingResponse(_stream_and_forget(path), media_type="application/octet-stream", headers=headers)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short report sent in the X-Nibble-Report header (the full one is in the file's metadata)."""
    summary = {"method": report["method"], "format": report["format"], **report["totals"]}
    if report.get("quantization_config") is not None:
        summary["quantization_config"] = report["quantization_config"]
    return summary


DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The report (output=report) or the file as a download with the report in its metadata "
                   f"and a summary in the {REPORT_HEADER} header.",
    "model": QuantizeReport,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}}


class _EarlyQuantization:
    """A quantize job started while its upload is still arriving (app/arrival.py), and kept only if it is
    exactly the job the whole request asks for.

    It starts when the ``file`` part's first bytes arrive, a worker is free,
    and the text fields sent before it are valid; fields or a calibration part that come after the
    file, a different output, or an upload that ends short of its header make
    the request fall back to running the job once the upload is complete, as
    it would without an early start.  Whatever happens, `close` leaves no job
    running: the arrival is marked abandoned (the job stops at its next wait)
    and the task is awaited.
    """

    def __init__(self, pool: WorkerPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.job: QuantizeJob | None = None
        self.output = ""
        self.output_path: Path | None = None
        self.arrival: ArrivalRecorder | None = None

    def start(self, arriving: ArrivingFile) -> None:
        if not self.pool.has_idle_worker():
            return  # the job would only wait for a worker while holding none: run it once the upload is in
        try:
            form = parse_form(QuantizeForm, arriving.fields)
        except RequestValidationError:
            return  # answered 422 once the body is complete
        calibration = arriving.files.get("calibration")
        self.job = _quantize_job(arriving.path, arriving.kind, calibration, form, self.settings,
                                 arriving.files.get("importance"))
        self.output = form.output
        if form.output != "report":
            self.output_path = arriving.directory / f"early-output{OUTPUT_SUFFIXES[form.output]}"
        self.arrival = arriving.arrival
        # handed to the worker now, not a loop turn later: those turns are busy receiving the file
        self.task = self.pool.submit(quantize_arriving, self.job, form.output, self.output_path, arriving.arrival.path)

    async def result(self, job: QuantizeJob, output: str, file: UploadedFile
                     ) -> tuple[dict[str, Any], Path | None] | None:
        """The early job's (report, output path) if it ran `job` for `output` to the end, else None."""
        if self.task is None:
            return None
        if job != self.job or output != self.output:
            await self.close()
            _restore_size(file)
            return None
        try:
            report = await self.task
        except (UploadIncomplete, TimeLimitExceeded):
            # The header promised another size, the client was too slow for the job to keep waiting,
            # or the time limit ran out while the upload was still arriving: run it on the complete file.
            _restore_size(file)
            return None
        return report, self.output_path

    async def close(self) -> None:
        """Stop the early job, if any, and wait for it to end (its errors are not this request's answer)."""
        if self.task is None:
            return
        if not self.task.done() and self.arrival is not None:
            self.arrival.abandon()  # its memory map outlives the upload directory
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self.task


def _restore_size(file: UploadedFile) -> None:
    """Set the spool file back to the bytes received, if an early job resized it to its header's size."""
    if file.path.stat().st_size != file.size:
        os.truncate(file.path, file.size)


def _quantize_job(path: Path, kind: TensorFileKind, calibration: Path | None, form: QuantizeForm,
                  settings: Settings, importance: Path | None = None) -> QuantizeJob:
    return QuantizeJob(path, kind, calibration, (form.method,), form.group_size, form.symmetric, form.include,
                       _limits(settings), form.zero, threads=settings.job_threads, importance_path=importance,
                       budget_bytes=form.budget_bytes, bits_per_weight=form.bits_per_weight)


@router.post("/quantize", summary="Quantize uploaded tensors to INT4", response_model=None,
             responses={**DOWNLOAD_RESPONSE, **UPLOAD_ERRORS},
             openapi_extra=multipart_body(QuantizeForm, {"file": FILE_DESCRIPTION,
                                                         "calibration": CALIBRATION_DESCRIPTION,
                                                         "importance": IMPORTANCE_DESCRIPTION}, ("file",)))
async def create_quantization(request: Request) -> JSONResponse | StreamingResponse:
    """Every 2-D float tensor (or those matching `include`) to INT4 by `method`, measured; the rest passes.

    The job starts while the file is still arriving when the text fields come
    before it in the body (as httpx, curl and browsers send them in form
    order), so the quantization overlaps the upload.
    """
    settings = settings_of(request)
    pool = _pool(request)
    early = _EarlyQuantization(pool, settings)
    # the early job is stopped (before_cleanup) before the spool is released for reuse, inside the pool place
    async with pool.reserve(), receive_upload(request, settings, file_fields=UPLOAD_FIELDS, on_arriving=early.start,
                                              before_cleanup=early.close) as upload:
        form = parse_form(QuantizeForm, upload.fields)
        file = _required_file(upload, "file")
        job = _quantize_job(file.path, file.kind, _calibration(upload), form, settings, _importance(upload))
        finished = await early.result(job, form.output, file)
        if form.output == "report":
            report = finished[0] if finished is not None else await pool.run(
                quantize_file, job, "report", None)
            observe_report(request.app, report)
            return JSONResponse(report)
        suffix = OUTPUT_SUFFIXES[form.output]
        if finished is not None and finished[1] is not None:
            report, output = finished[0], finished[1]
        else:
            output = new_output_path(upload, suffix)
            report = await pool.run(quantize_file, job, form.output, output)
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
    async with pool.reserve(), receive_upload(request, settings, file_fields=UPLOAD_FIELDS) as upload:
        form = parse_form(CompareForm, upload.fields)
        file = _required_file(upload, "file")
        job = QuantizeJob(file.path, file.kind, _calibration(upload), tuple(form.methods), form.group_size,
                          form.symmetric, form.include, _limits(settings), form.zero,
                          importance_path=_importance(upload), budget_bytes=form.budget_bytes,
                          bits_per_weight=form.bits_per_weight)
        comparison = await pool.run(compare_file, job)
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
    async with pool.reserve(), receive_upload(request, settings, file_fields=("file",)) as upload:
        form = parse_form(DequantizeForm, upload.fields)
        file = _required_file(upload, "file")
        if file.kind != "safetensors":
            raise UnsupportedMediaType(
                f"the file in field 'file' ({file.filename or 'unnamed'}) is a .{file.kind}; dequantize reads "
                "the .safetensors files nibble writes (POST /v1/quantize with output=nibble)", field="file")
        output = new_output_path(upload, ".safetensors")
        summary = await pool.run(dequantize_file, file.path, form.dtype, _limits(settings), output)
        return _download(output, f"dequantized-{form.dtype}.safetensors", summary)
