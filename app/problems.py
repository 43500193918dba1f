"""Every error the API answers, as RFC 9457 ``application/problem+json``, mapped in one table.

`PROBLEM_TABLE` maps each `quant_core.errors` class (and the HTTP-only errors
below) to a status, a title and a stable ``type`` URI; `install_problem_handlers`
registers one exception handler that renders any of them, plus FastAPI's
`RequestValidationError` (malformed JSON is 400, schema errors 422, both with
an ``errors`` list naming each field) and Starlette's `HTTPException`.
Handlers never build error JSON themselves: they raise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quant_core.checkpoint import CheckpointError
from quant_core.errors import (
    BudgetTooSmall,
    CalibrationError,
    GroupSizeMismatch,
    ImportanceMismatch,
    InvalidSpec,
    InvalidTensor,
    LimitExceeded,
    MissingConfigKey,
    NibbleError,
    NonFiniteValues,
    TensorFileError,
    UnknownName,
    UnsupportedArchitecture,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:nibble:problem:"
logger = logging.getLogger("nibble.app")


#: the most characters of a field path, and of a ``detail`` or ``message`` (an error that echoes a 1 MiB input is
#: cut to its first and last characters, with the length it had), so every error answer is a few KiB at most
MAX_FIELD_CHARS = 200
MAX_MESSAGE_CHARS = 1000
#: the most invalid fields one answer lists (a list of 100,000 bad items would otherwise list each); the detail
#: says how many there were
MAX_LISTED_ERRORS = 20


def bounded_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to about `limit` characters (its start and end kept, the cut said with the length it had), with
    any character UTF-8 cannot carry (a lone surrogate echoed from the input) written as its ``\\uXXXX`` escape."""
    if len(text) > limit:
        tail = limit // 5
        text = f"{text[:limit - tail]}…[{len(text) - limit} of {len(text)} characters cut]…{text[-tail:]}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class ProblemField(BaseModel):
    """One invalid input: its dotted path (``model.hf_config.num_hidden_layers``) and what is wrong."""

    field: str
    message: str

    @field_validator("field")
    @classmethod
    def _short_field(cls, value: str) -> str:
        return bounded_text(value, MAX_FIELD_CHARS)

    @field_validator("message")
    @classmethod
    def _short_message(cls, value: str) -> str:
        return bounded_text(value)


class Problem(BaseModel):
    """An RFC 9457 problem document, with nibble's extension members."""

    type: str = Field(description="A URN naming the kind of problem, stable across versions.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, with the offending values.")
    errors: list[ProblemField] = Field(default_factory=list, description="Each invalid field.")
    close: list[str] | None = Field(None, description="For unknown names: the closest known names.")
    limit: str | None = Field(None, description="For refusals over a limit: the limit's setting name.")
    value: int | None = Field(None, description="For refusals over a limit: the value that was refused.")
    maximum: int | None = Field(None, description="For refusals over a limit: the configured maximum.")

    @field_validator("detail")
    @classmethod
    def _short_detail(cls, value: str) -> str:
        return bounded_text(value)


class ApiProblem(Exception):
    """An error that exists only at the HTTP layer (not found, unsupported media, overload...)."""

    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str, *, field: str = "", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


class ItemNotFound(ApiProblem):
    """No job, upload set, or file of either, of that id or name (ids are random: no close ones, unlike `NotFound`)."""

    status, title, slug = 404, "Not found", "not-found"


class NotFound(ItemNotFound):
    """A catalog id in the URL path that does not exist: the answer lists the closest known ids."""

    def __init__(self, unknown: UnknownName) -> None:
        super().__init__(unknown.detail, field=unknown.field)
        self.close = unknown.close


class UnsupportedMediaType(ApiProblem):
    """An upload that is neither ``.npy`` nor ``.safetensors`` by its magic bytes."""

    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class MalformedUpload(ApiProblem):
    """A multipart body that cannot be parsed, or lacks a required part."""

    status, title, slug = 400, "Malformed upload", "malformed-upload"


class UploadStalled(ApiProblem):
    """An upload that paused for ``upload_idle_seconds`` or fell that far behind ``upload_min_bytes_per_second``:
    its place in the pool is given back (408)."""

    status, title, slug = 408, "Upload stalled", "upload-stalled"


class UnsupportedTransferCoding(ApiProblem):
    """A ``Transfer-Encoding`` other than ``chunked`` alone (RFC 9112 §6.1: 501)."""

    status, title, slug = 501, "Transfer coding not implemented", "transfer-coding-not-implemented"


class HeadTimeout(ApiProblem):
    """A connection that did not complete its request head within ``head_timeout_seconds`` (slowloris)."""

    status, title, slug = 408, "Request head timed out", "request-head-timeout"


class HeadTooLarge(ApiProblem):
    """A request head longer than ``max_head_bytes`` (RFC 6585 §5: 431)."""

    status, title, slug = 431, "Request head too large", "request-head-too-large"


class TooManyConnections(ApiProblem):
    """The process already holds ``max_connections`` open connections: a new one is answered and closed."""

    status, title, slug = 503, "Too many connections", "too-many-connections"


class PoolFull(ApiProblem):
    """Every worker is busy and the queue is full: try again later (503 with Retry-After)."""

    status, title, slug = 503, "Server busy", "server-busy"


class TimeLimitExceeded(ApiProblem):
    """A job ran past the per-request time limit and was stopped."""

    status, title, slug = 504, "Time limit exceeded", "time-limit-exceeded"


class WorkerCrashed(ApiProblem):
    """The worker process running the job died (out of memory, killed); the worker was replaced."""

    status, title, slug = 500, "Worker crashed", "worker-crashed"


class ShuttingDown(ApiProblem):
    """The server got SIGTERM and its graceful-shutdown period ended before this job did."""

    status, title, slug = 503, "Server shutting down", "shutting-down"


class Unauthorized(ApiProblem):
    """API keys are configured and the request did not present a valid bearer token."""

    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, field="Authorization", headers={"WWW-Authenticate": "Bearer"})


# The one table: core error class -> (status, title, type slug).  Looked up along
# the class's MRO, so a subclass without its own row inherits its parent's.
PROBLEM_TABLE: dict[type[Exception], tuple[int, str, str]] = {
    MissingConfigKey: (422, "Config is missing a key", "missing-config-key"),
    UnsupportedArchitecture: (422, "Unsupported architecture", "unsupported-architecture"),
    InvalidSpec: (422, "Invalid specification", "invalid-spec"),
    UnknownName: (422, "Unknown name", "unknown-name"),
    GroupSizeMismatch: (422, "Group size does not divide the tensor", "group-size-mismatch"),
    NonFiniteValues: (422, "Tensor holds NaN or Inf", "non-finite-values"),
    InvalidTensor: (422, "Invalid tensor", "invalid-tensor"),
    CalibrationError: (422, "Invalid calibration data", "calibration-error"),
    CheckpointError: (422, "Unreadable checkpoint", "checkpoint-error"),
    ImportanceMismatch: (422, "Importance statistics do not fit", "importance-mismatch"),
    BudgetTooSmall: (422, "Budget too small", "budget-too-small"),
    TensorFileError: (422, "Unreadable tensor file", "tensor-file-error"),
    LimitExceeded: (413, "Over a configured limit", "limit-exceeded"),
    NibbleError: (422, "Invalid input", "invalid-input"),
}


def _lookup(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ApiProblem):
        return exc.status, exc.title, exc.slug
    for cls in type(exc).__mro__:
        if cls in PROBLEM_TABLE:
            return PROBLEM_TABLE[cls]
    return 500, "Internal error", "internal"


def problem_for(exc: Exception) -> tuple[Problem, dict[str, str]]:
    """The problem document and extra headers that answer `exc` (any exception)."""
    status, title, slug = _lookup(exc)
    headers: dict[str, str] = {}
    detail = "an unexpected error occurred; it has been logged"
    errors: list[ProblemField] = []
    extra: dict[str, Any] = {}
    if isinstance(exc, NibbleError | ApiProblem):
        detail = exc.detail
        if exc.field or status < 500:  # every 4xx names its field: the body as a whole when no one field is at fault
            errors.append(ProblemField(field=exc.field or "body", message=exc.detail))
    if isinstance(exc, ApiProblem):
        headers = exc.headers
    if isinstance(exc, UnknownName | NotFound):
        extra["close"] = list(exc.close)
    if isinstance(exc, LimitExceeded):
        extra.update(limit=exc.limit, value=exc.value, maximum=exc.maximum)
    problem = Problem(type=TYPE_PREFIX + slug, title=title, status=status, detail=detail,
                      errors=errors, **extra)
    return problem, headers


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Render a problem as ``application/problem+json`` (``None`` extension members omitted)."""
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=problem.status,
                        headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def _field_path(location: Sequence[int | str]) -> str:
    """A validation error's location as a field path: keys joined by dots, list indices in brackets."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> Problem:
    """A 422 (schema) or 400 (malformed JSON) problem listing every invalid field from Pydantic errors."""
    fields = [ProblemField(field=_field_path(err.get("loc", ())) or "body", message=str(err.get("msg", "")))
              for err in errors[:MAX_LISTED_ERRORS]]
    if any(err.get("type") == "json_invalid" for err in errors):
        first = errors[0]
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        detail = f"the request body is not valid JSON: {reason} at position {_field_path(first.get('loc', ()))}"
        return Problem(type=TYPE_PREFIX + "malformed-json", title="Malformed JSON", status=400, detail=detail,
                       errors=[ProblemField(field="body", message=detail)])
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
    listed = f" (the first {len(fields)} listed)" if len(errors) > len(fields) else ""
    return Problem(type=TYPE_PREFIX + "validation-error", title="Invalid request", status=422,
                   detail=f"{len(errors)} invalid field(s){listed}: {summary}", errors=fields)


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for this class only
        return await _handle_known(request, exc)
    errors = exc.errors()
    content_type = request.headers.get("content-type", "")
    if (errors and tuple(errors[0].get("loc", ())) == ("body",) and errors[0].get("type") != "missing"
            and not is_json_media_type(content_type)):
        # a JSON route's body sent as another media type was never parsed: say so (415), not "not an object"
        return problem_response(Problem(
            type=TYPE_PREFIX + "unsupported-media-type", title="Unsupported media type", status=415,
            detail=f"the body must be JSON (Content-Type: application/json), not {content_type or 'untyped'}",
            errors=[ProblemField(field="Content-Type", message="expected application/json")]))
    return problem_response(validation_problem(errors))


def is_json_media_type(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON: ``application/json`` or ``application/*+json``."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    main, _, subtype = media_type.partition("/")
    return main == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # registered for this class only
        return await _handle_known(request, exc)
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "HTTP error"
    slug = title.lower().replace(" ", "-")
    detail = str(exc.detail)
    if exc.status_code == 400 and exc.__cause__ is not None:  # a body that could not be decoded: say why
        detail = f"{detail}: {_undecodable_reason(exc.__cause__)}"
    errors = [ProblemField(field=_HTTP_ERROR_FIELDS.get(exc.status_code, "body"), message=detail)
              ] if 400 <= exc.status_code < 500 else []
    problem = Problem(type=TYPE_PREFIX + slug, title=title, status=exc.status_code, detail=detail, errors=errors)
    return problem_response(problem, exc.headers)


#: the input a Starlette HTTP error is about, by status (others: the body)
_HTTP_ERROR_FIELDS = {404: "path", 405: "method", 406: "Accept"}


def _undecodable_reason(cause: BaseException) -> str:
    """Why a request body could not be decoded, in words (FastAPI keeps only a generic message)."""
    if isinstance(cause, RecursionError):
        return "its JSON nests arrays or objects too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "it holds an integer with too many digits"
    if isinstance(cause, ClientDisconnect):
        return "the client stopped sending it"
    return f"{type(cause).__name__}: {cause}"


async def _handle_known(request: Request, exc: Exception) -> JSONResponse:
    problem, headers = problem_for(exc)
    if isinstance(exc, PoolFull | ShuttingDown | TimeLimitExceeded):  # overload, not a fault: one line
        logger.warning("%s %s answered %d: %s", request.method, request.url.path, problem.status, exc)
    elif problem.status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return problem_response(problem, headers)


async def _handle_disconnect(request: Request, exc: Exception) -> JSONResponse:
    """A client that left mid-body is its own doing: logged in one line, counted as a 400, never a 500
    (the answer reaches no one)."""
    logger.warning("%s %s: the client disconnected before its body was in", request.method, request.url.path)
    detail = "the client disconnected before the request body was received, or while its job ran"
    return problem_response(Problem(type=TYPE_PREFIX + "client-disconnected", title="Client disconnected",
                                    status=400, detail=detail, errors=[ProblemField(field="body", message=detail)]))


class UnexpectedErrors:
    """Pure ASGI middleware, innermost: an exception no handler took is answered 500 problem+json here, and ends.

    Starlette answers such an exception in its outermost middleware and then
    raises it again (for servers to log), so uvicorn logged it a second time
    and closed the client's keep-alive connection, and the middleware between
    (request id, access log, metrics) never saw the answer.  Answered here,
    the connection stays open for the client's next request.  An exception
    after the answer has started is raised on: only closing the connection
    can end half an answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = await _handle_known(Request(scope), exc)
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem+json (call before adding middleware:
    `UnexpectedErrors` must be the innermost)."""
    app.add_middleware(UnexpectedErrors)
    app.add_exception_handler(ClientDisconnect, _handle_disconnect)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(NibbleError, _handle_known)
    app.add_exception_handler(ApiProblem, _handle_known)
    app.add_exception_handler(Exception, _handle_known)


_DESCRIPTIONS = {
    400: "Malformed JSON or multipart body.",
    401: "API keys are configured and no valid bearer token was presented.",
    404: "No such id in the catalog (the answer lists close names).",
    408: "The upload paused longer than upload_idle_seconds, or fell behind upload_min_bytes_per_second.",
    413: "Over a configured size limit (the answer names the limit and the value).",
    403: "The source path lies outside the data root (an absolute path, '..', or a symlink leading out).",
    409: "The job is not in a state that allows this (its files exist once it has succeeded); or, for a tus "
         "upload, Upload-Offset is not where the upload stands, the name is taken, the set is not complete or a "
         "job reads it.",
    412: "Tus-Resumable is missing or not 1.0.0 (the answer's Tus-Version lists the versions spoken).",
    423: "Another PATCH to the same tus upload is still being received.",
    507: "The declared Upload-Length is more than the free space where upload sets are kept.",
    415: "The body is not of a media type this route reads: JSON routes take application/json; uploads take "
         "multipart/form-data whose files are .npy or .safetensors.",
    422: "The input is well-formed but invalid; `errors` names each field.",
    500: "Unexpected server error.",
    503: "Every worker is busy and the queue is full, max_unfinished_jobs checkpoint jobs are queued or running, "
         "or the server is shutting down; retry after the Retry-After header's seconds.",
    501: "A tus extension this server does not offer: Upload-Defer-Length: 1 (creation-defer-length; declare "
         "Upload-Length).",
    504: "The job ran past the time limit.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries declaring problem+json for `statuses` (plus 401 and 500)."""
    codes = sorted({*statuses, 401, 500})
    return {code: {"model": Problem, "description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase)}
            for code in codes}
