"""``/v1/uploads``: a checkpoint's files uploaded resumably by the tus protocol, then quantized by a job.

Thin: the protocol and the files are app/tus.py's.  ``POST /v1/uploads`` makes
an upload set; its ``tus_url`` is the endpoint a tus client is given (creation:
POST; core: HEAD, PATCH, OPTIONS; termination: DELETE).  A HEAD is served by
the GET route (app/head.py), with the tus headers and no body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from app.checkpoint_jobs import JobsNotConfigured
from app.problems import ApiProblem, problem_for, problem_response, problem_responses
from app.schemas.uploads import UploadFileStatus, UploadSetStatus
from app.security import ApiKeyRoute
from app.tus import (
    TUS_EXTENSIONS,
    TUS_VERSION,
    UploadConflict,
    UploadFile,
    UploadSets,
    check_defer_length,
    check_patch_length,
    check_tus_resumable,
    header_integer,
    parse_metadata,
)
from quant_core.errors import NibbleError

#: the headers a tus answer carries (the spec: every response but OPTIONS' has Tus-Resumable)
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}


class TusRoute(ApiKeyRoute):
    """An `ApiKeyRoute` whose every answer, a refusal included, carries ``Tus-Resumable`` (tus 1.0.0 core)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_tus_header(request: Request) -> Response:
            try:
                response = await handler(request)
            except (ApiProblem, NibbleError) as exc:  # rendered by the one table, as the app's handler would
                problem, headers = problem_for(exc)
                response = problem_response(problem, headers)
            response.headers.setdefault("Tus-Resumable", TUS_VERSION)
            return response

        return with_tus_header


router = APIRouter(prefix="/uploads", tags=["uploads"], route_class=TusRoute)


def _sets(request: Request) -> UploadSets:
    sets: UploadSets | None = getattr(request.app.state, "uploads", None)
    if sets is None:
        raise JobsNotConfigured("uploads feed checkpoint jobs, which need NIBBLE_STATE_DIR and NIBBLE_DATA_DIR; "
                                "this server has not both")
    return sets


def _readers(request: Request, sets: UploadSets) -> dict[str, list[str]]:
    """The queued or running jobs reading each upload set (a job's source is its set's ``files/``), by set id."""
    jobs = request.app.state.jobs
    readers: dict[str, list[str]] = {}
    for record in jobs.store.unfinished() if jobs else []:
        source = Path(record.source_dir)
        if source.name == "files" and source.parent.parent == sets.root:
            readers.setdefault(source.parent.name, []).append(record.id)
    return readers


def _refuse_while_read(request: Request, sets: UploadSets, set_id: str) -> None:
    """409 while a queued or running job reads the set: its files must stay as they were submitted."""
    sets.set_dir(set_id)  # 404 first
    readers = _readers(request, sets).get(set_id)
    if readers:
        raise UploadConflict(f"job {readers[0]} reads upload set {set_id}; cancel it or let it finish first",
                             field="id")


def _file_url(set_id: str, file: UploadFile) -> str:
    return f"/v1/uploads/{set_id}/files/{file.id}"


def _file_status(set_id: str, file: UploadFile) -> dict[str, Any]:
    return {"id": file.id, "name": file.name, "length": file.length, "offset": file.offset,
            "complete": file.complete, "url": _file_url(set_id, file)}


def _set_status(sets: UploadSets, set_id: str) -> dict[str, Any]:
    files = sets.files(set_id)
    return {"id": set_id, "url": f"/v1/uploads/{set_id}", "tus_url": f"/v1/uploads/{set_id}/files",
            "files": [_file_status(set_id, f) for f in files],
            "complete": bool(files) and all(f.complete for f in files)}


def _offset_headers(file: UploadFile) -> dict[str, str]:
    return {**TUS_HEADERS, "Upload-Offset": str(file.offset), "Upload-Length": str(file.length)}


def _expires_header(sets: UploadSets, set_id: str) -> dict[str, str]:
    """tus expiration: when the set is removable if nothing touches it (an HTTP-date, RFC 9110 §5.6.7)."""
    return {"Upload-Expires": formatdate(sets.expires_at(set_id), usegmt=True)}


@router.post("", status_code=201, response_model=UploadSetStatus, summary="Start an upload set",
             responses=problem_responses(404, 413))
async def create_upload_set(request: Request, response: Response) -> dict[str, Any]:
    """An empty upload set: give its ``tus_url`` to a tus client for each file of the checkpoint (the file's
    name in ``Upload-Metadata: filename``), then submit a job with ``{"source": {"upload": id}}``."""
    sets = _sets(request)
    sets.remove_expired(time.time(), set(_readers(request, sets)))
    set_id = sets.create_set()
    response.headers["Location"] = f"/v1/uploads/{set_id}"
    return _set_status(sets, set_id)


@router.get("/{set_id}", response_model=UploadSetStatus, summary="An upload set's files and their offsets",
            responses=problem_responses(404))
async def read_upload_set(request: Request, set_id: str) -> dict[str, Any]:
    return _set_status(_sets(request), set_id)


@router.delete("/{set_id}", status_code=204, summary="Remove an upload set and its files",
               responses=problem_responses(404, 409, 423))
async def delete_upload_set(request: Request, set_id: str) -> Response:
    """Refused while a queued or running job reads it (409), or a PATCH to one of its files is being received
    (423, with Retry-After)."""
    sets = _sets(request)
    _refuse_while_read(request, sets, set_id)
    sets.delete_set(set_id)
    return Response(status_code=204)


@router.options("/{set_id}/files", status_code=204, summary="tus: the protocol's version, extensions, size limit",
                responses=problem_responses(404))
async def describe_tus(request: Request, set_id: str) -> Response:
    sets = _sets(request)
    sets.set_dir(set_id)
    return Response(status_code=204, headers={"Tus-Version": TUS_VERSION, "Tus-Resumable": TUS_VERSION,
                                              "Tus-Extension": TUS_EXTENSIONS,
                                              "Tus-Max-Size": str(sets.max_file_bytes)})


@router.post("/{set_id}/files", status_code=201, response_model=UploadFileStatus,
             summary="tus creation: a new file of the set",
             responses=problem_responses(400, 404, 409, 412, 413, 422, 501, 507))
async def create_upload_file(request: Request, set_id: str) -> Response:
    """Headers: ``Tus-Resumable: 1.0.0``, ``Upload-Length``, ``Upload-Metadata: filename <base64>``.  Answers
    201 with the file's URL in ``Location``."""
    sets = _sets(request)
    check_tus_resumable(request)
    check_defer_length(request)
    length = header_integer(request, "Upload-Length")
    _refuse_while_read(request, sets, set_id)
    name = parse_metadata(request.headers.get("upload-metadata")).get("filename")
    file = sets.create_file(set_id, name, length)
    url = _file_url(set_id, file)
    return Response(status_code=201, headers={**_offset_headers(file), **_expires_header(sets, set_id),
                                              "Location": url})


@router.get("/{set_id}/files/{file_id}", response_model=UploadFileStatus,
            summary="tus HEAD: a file's offset (GET: the same as JSON)", responses=problem_responses(404, 412))
async def read_upload_file(request: Request, response: Response, set_id: str, file_id: str) -> dict[str, Any]:
    sets = _sets(request)
    check_tus_resumable(request, required=False)
    file = sets.file(set_id, file_id)
    response.headers.update(_offset_headers(file))
    return _file_status(set_id, file)


@router.patch("/{set_id}/files/{file_id}", status_code=204, summary="tus: append bytes at Upload-Offset",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
              responses=problem_responses(400, 404, 408, 409, 412, 413, 415, 423))
async def append_upload_file(request: Request, set_id: str, file_id: str) -> Response:
    """Headers: ``Tus-Resumable``, ``Upload-Offset`` (where the upload stands: 409 otherwise), ``Content-Type:
    application/offset+octet-stream``.  Answers 204 with the new ``Upload-Offset``."""
    sets = _sets(request)
    check_tus_resumable(request)
    check_patch_length(request)
    file = await sets.append(set_id, file_id, request)
    return Response(status_code=204, headers={**_offset_headers(file), **_expires_header(sets, set_id)})


@router.delete("/{set_id}/files/{file_id}", status_code=204, summary="tus termination: remove a file",
               responses=problem_responses(404, 409, 412, 423))
async def delete_upload_file(request: Request, set_id: str, file_id: str) -> Response:
    sets = _sets(request)
    check_tus_resumable(request)
    sets.file(set_id, file_id)  # 404 first
    _refuse_while_read(request, sets, set_id)
    sets.delete_file(set_id, file_id)
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
