"""``/v1/jobs``: quantize a whole checkpoint as a durable job; watch it, cancel it, download its files.

Thin: validation is the wire models', the work is app/checkpoint_jobs.py's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlencode

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse

from app.byte_ranges import checked_range
from app.checkpoint_jobs import JobManager, JobsNotConfigured
from app.job_store import TERMINAL_STATES, JobRecord
from app.problems import problem_responses
from app.routing import JsonBodyRoute
from app.schemas.jobs import (
    JobCreate,
    JobList,
    JobListQuery,
    JobStatus,
    JobSummary,
    decode_cursor,
    encode_cursor,
)
from app.security import ApiKeyRoute, settings_of, signed_path

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=ApiKeyRoute)
#: an event is sent at least this often while a job runs (a heartbeat keeps proxies from closing the stream)
EVENT_INTERVAL_SECONDS = 15.0
#: and at most once in this long: a job of small tensors changes hundreds of times a second
EVENT_MIN_INTERVAL_SECONDS = 0.25


def _manager(request: Request) -> JobManager:
    manager: JobManager | None = getattr(request.app.state, "jobs", None)
    if manager is None:
        raise JobsNotConfigured("checkpoint jobs need NIBBLE_STATE_DIR (the job store) and NIBBLE_DATA_DIR (the "
                                "data root sources are read from); this server has not both")
    return manager


def _url(record: JobRecord) -> str:
    return f"/v1/jobs/{record.id}"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


async def _status_json(request: Request, manager: JobManager, record: JobRecord, *, report: bool = True) -> bytes:
    """The job's status document as JSON; its `report` (every finished tensor's row) only if asked, read on a
    thread: a job of 50,000 tensors has 25 MB of it, and decoding and encoding it again on the event loop held
    every other request for 1.5 s (`JobManager.report_json` splices the stored rows instead)."""
    status = _json(_status(request, manager, record))
    if not report:
        return status
    rows = await to_thread.run_sync(manager.report_json, record)
    return status[:-1] + b',"report":' + rows + b"}"


def _status(request: Request, manager: JobManager, record: JobRecord) -> dict[str, Any]:
    """The job's status document without its report."""
    result = None
    if record.result is not None:  # with API keys, each file's URL is signed: a browser's plain link downloads it
        settings = settings_of(request)
        result = {**record.result, "files": [
            {**entry, "url": signed_path(settings, f"{_url(record)}/files/{entry['name']}")}
            for entry in record.result["files"]]}
    return {"id": record.id, "url": _url(record), "state": record.state, "created_at": record.created_at,
            "started_at": record.started_at, "finished_at": record.finished_at, "request": record.request,
            "progress": manager.progress(record), "engine_notes": record.engine_notes, "result": result,
            "error": record.error}


async def create_job(body: JobCreate, request: Request) -> Response:
    """Validate the source (every shard header and the index) and plan it, then queue the job: 202 with its
    id and URL.  Refused with problem+json: a path outside the data root (403), a checkpoint whose index lies
    or whose shards are truncated (422), options no output format can hold (422), a key given twice (422)."""
    manager = _manager(request)
    record = await manager.submit(body)
    return Response(await _status_json(request, manager, record), status_code=202,
                    headers={"Location": _url(record)}, media_type="application/json")


# The body is read as the plan routes read theirs (JsonBodyRoute, app/routing.py): a key given twice is
# refused 422 naming it, where FastAPI's own parsing keeps the last value without a word.
router.add_api_route("", create_job, methods=["POST"], status_code=202, response_model=JobStatus,
                     summary="Quantize a checkpoint as a job",
                     responses=problem_responses(400, 403, 404, 413, 415, 422, 503),
                     route_class_override=JsonBodyRoute)


@router.get("", response_model=JobList, summary="List jobs, newest first, a page at a time",
            responses={200: {"description": "A page of jobs.", "headers": {"Link": {
                "description": 'While jobs follow the page: `<next page URL>; rel="next"` (RFC 8288).',
                "schema": {"type": "string"}}}}, **problem_responses(404, 422)})
async def list_jobs(request: Request, response: Response,
                    query: Annotated[JobListQuery, Query()]) -> dict[str, Any]:
    """At most `limit` jobs (default 100, at most 1000), newest first, of the `state`s given; the answer's
    ``next`` (and its ``Link: <...>; rel="next"`` header) is the next page's URL while jobs follow.  A bad
    limit, state or cursor, or a parameter not known here, is 422 naming it."""
    repeated = [{"type": "value_error", "loc": ("query", name), "input": values,
                 "msg": f"sent {len(values)} times ({', '.join(map(repr, values[:4]))}); send it once"}
                for name in ("limit", "cursor") if len(values := request.query_params.getlist(name)) > 1]
    if repeated:  # which one was meant? neither is taken silently (as parse_form refuses a repeated form field)
        raise RequestValidationError(repeated)
    manager = _manager(request)
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    # one more than the page: whether another page follows is known without a second query
    records = manager.store.list_jobs(query.limit + 1, after=after, states=query.state)
    page = records[:query.limit]
    jobs = [JobSummary(id=r.id, url=_url(r), state=r.state, created_at=r.created_at,
                       progress=manager.progress(r)).model_dump()  # type: ignore[arg-type]
            for r in page]
    next_url = next_cursor = None
    if len(records) > query.limit:
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id)
        next_url = "/v1/jobs?" + urlencode([("limit", query.limit), *(("state", s) for s in query.state),
                                            ("cursor", next_cursor)])
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return {"jobs": jobs, "next": next_url, "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobStatus, summary="A job's state, progress, report and result",
            responses=problem_responses(404))
async def read_job(request: Request, job_id: str, report: bool = Query(True, description=(
        "Include the per-tensor report (every finished tensor's row; a large job's is megabytes): false for a "
        "cheap poll of the state and progress."))) -> Response:
    manager = _manager(request)
    return Response(await _status_json(request, manager, manager.get(job_id), report=report),
                    media_type="application/json")


@router.delete("/{job_id}", response_model=JobStatus, summary="Cancel a job, or delete a finished one",
               responses=problem_responses(404))
async def cancel_job(request: Request, job_id: str) -> Response:
    """A queued job is cancelled at once; a running one stops after the tensors in flight (its state says
    ``running`` until then; the request is kept, so a restart before then does not resume it), and its files
    are removed.  A finished job (succeeded, failed, cancelled) is deleted: its result files and its record are
    removed (a download already being sent completes first), the answer is its last status, and the job is
    404 from then on."""
    manager = _manager(request)
    record = manager.get(job_id)
    if record.state not in TERMINAL_STATES:
        record = manager.cancel(job_id)
        return Response(await _status_json(request, manager, record), media_type="application/json")
    status = await _status_json(request, manager, record)
    manager.delete(job_id)
    return Response(status, media_type="application/json")


@router.get("/{job_id}/events", summary="A job's status as server-sent events",
            responses={200: {"description": "text/event-stream: a `status` event (the JSON of GET /v1/jobs/{id}, "
                                            "its `report` only in the last) at once and at every change, until "
                                            "the job is finished.",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **problem_responses(404)})
async def stream_job_events(request: Request, job_id: str) -> StreamingResponse:
    manager = _manager(request)
    manager.get(job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[bytes]:
        while True:
            record = manager.store.get(job_id)
            if record is None:  # deleted once finished, between two events
                return
            finished = record.state in TERMINAL_STATES
            # the report grows with every tensor: read and sent whole once, with the final status (read at every
            # event, it cost each stream the whole job's rows per tensor, on the event loop)
            status = await _status_json(request, manager, record, report=finished)
            yield b"event: status\ndata: " + status + b"\n\n"
            if finished or await request.is_disconnected():
                return
            await manager.wait_change(job_id, EVENT_INTERVAL_SECONDS)
            await asyncio.sleep(EVENT_MIN_INTERVAL_SECONDS)  # the changes within it are sent as one event

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{job_id}/files/{name}", summary="Download a result file (HTTP Range supported)",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}},
                             "description": "The file, or the requested byte range (206)."},
                       **problem_responses(400, 404, 409, 416)})
async def read_job_file(request: Request, job_id: str, name: str) -> FileResponse:
    """Only the names the job's manifest lists are served.  A Range that is not byte ranges is 400, one past
    the end 416 (problem+json, app/byte_ranges.py); a unit other than ``bytes`` is ignored."""
    manager = _manager(request)
    path = manager.output_file(job_id, name)
    media_type = "application/json" if name.endswith(".json") else "application/octet-stream"
    stat = os.stat(path)
    response = _Download(manager, job_id, path, media_type=media_type, filename=name, stat_result=stat)
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")  # a failed If-Range sends the whole file, Range unread (§13.1.5)
    if header is not None and (if_range is None or if_range in (response.headers["etag"],
                                                                response.headers["last-modified"])):
        ranges = checked_range(header, stat.st_size)
        # the file response reads the Range from the request's scope: give it the checked ranges, or none
        request.scope["headers"] = [(key, value) for key, value in request.scope["headers"] if key != b"range"]
        if ranges is not None:
            request.scope["headers"].append((b"range", ranges.encode()))
    manager.download(job_id, started=True)  # the job's files stay until it is sent (a DELETE then waits for it)
    return response


class _Download(FileResponse):
    """A result file's response, counted while it is sent (`JobManager.download`)."""

    def __init__(self, manager: JobManager, job_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.manager, self.job_id = manager, job_id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.manager.download(self.job_id, started=False)
