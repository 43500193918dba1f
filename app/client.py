"""A typed Python client of nibble's REST API (httpx): `NibbleClient` (sync) and `AsyncNibbleClient`.

Answers are parsed into the same Pydantic wire models the server answers with
(`app.schemas`), so a script gets attributes and types instead of dict keys.
Every non-2xx answer raises `NibbleAPIError` carrying the problem+json fields
(``type``, ``title``, ``status``, ``detail``, ``errors``).

    with NibbleClient("http://127.0.0.1:8000") as nibble:
        answer = nibble.plan({"model": {"preset": "llama-3.1-70b"},
                              "hardware": {"device": "h100-80gb", "count": 2}})
        print(answer.fits, answer.comparison["int4"].used_bytes)
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar, overload
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.schemas.jobs import JobList, JobStatus, JobSummary
from app.schemas.models import DeviceOut, Health, InspectResponse, ModelDetail, ModelSummary
from app.schemas.plans import PlanRequest, PlanResponse, SweepRequest, SweepResponse
from app.schemas.quantize import CompareReport, QuantizeReport

DEFAULT_TIMEOUT_SECONDS = 300.0  # a quantization of a large upload takes minutes
#: a server whose packets are dropped (a firewall, a full accept queue) is given up on after this long
CONNECT_TIMEOUT_SECONDS = 10.0
#: a job's event stream silent this long is dead: the server sends an event at least every 15 s
#: (app/routers/jobs.py, EVENT_INTERVAL_SECONDS)
EVENTS_READ_TIMEOUT_SECONDS = 60.0
REPORT_HEADER = "X-Nibble-Report"
FileInput = str | os.PathLike[str] | bytes | IO[bytes]
Body = BaseModel | Mapping[str, Any]
ModelT = TypeVar("ModelT", bound=BaseModel)
_MODEL_LIST = TypeAdapter(list[ModelSummary])
_DEVICE_LIST = TypeAdapter(list[DeviceOut])
_JSON_OBJECT = TypeAdapter(dict[str, Any])
AnswerT = TypeVar("AnswerT")


@dataclass(frozen=True, slots=True)
class ProblemField:
    """One invalid input named by the server: dotted `field` path and `message`."""

    field: str
    message: str


class NibbleAPIError(Exception):
    """The server answered an error: the RFC 9457 problem fields, and the raw document in `problem`."""

    def __init__(self, status: int, title: str, detail: str, type: str = "about:blank",
                 errors: Sequence[ProblemField] = (), problem: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = list(errors)
        self.problem = dict(problem or {})
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple[type[NibbleAPIError], tuple[Any, ...]]:
        """Pickled with every field (a worker process's error reaches its parent whole, not as a TypeError)."""
        return type(self), (self.status, self.title, self.detail, self.type, self.errors, self.problem, self.headers)

    @property
    def retry_after_seconds(self) -> int | None:
        """The ``Retry-After`` of a 503 (pool full), in seconds, if the server sent one."""
        value = self.headers.get("retry-after", "")
        return int(value) if value.isdigit() else None

    @property
    def is_problem(self) -> bool:
        """Whether the answer was a problem document (nibble's own error), not another body: a proxy's HTML
        page, uvicorn's plain-text 503 past its connection limit."""
        return bool(self.problem)

    @classmethod
    def from_response(cls, response: httpx.Response) -> NibbleAPIError:
        """The error for a non-2xx `response` (a problem+json body, or any other body, e.g. a proxy's)."""
        headers = {key.lower(): value for key, value in response.headers.items()}
        try:
            document = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict) or type(document.get("status")) is not int:
            return cls(response.status_code, response.reason_phrase or "HTTP error",
                       f"{_body_kind(response)}, not a problem document: {_excerpt(response)}", headers=headers)
        errors = [ProblemField(str(item.get("field", "")), str(item.get("message", "")))
                  for item in document.get("errors") or [] if isinstance(item, dict)]
        return cls(document["status"], str(document.get("title", "")), str(document.get("detail", "")),
                   str(document.get("type", "about:blank")), errors, document, headers)


class NibbleResponseError(Exception):
    """A success answer that is not what nibble answers there (an HTML page, JSON of another shape): the address
    names some other server, or a proxy answers for it.  `status`, `content_type` and a one-line `excerpt`."""

    def __init__(self, status: int, content_type: str, excerpt: str, reason: str) -> None:
        super().__init__(f"the server answered {status} with {content_type}, not nibble's answer ({reason})"
                         + (f": {excerpt}" if excerpt else ""))
        self.status = status
        self.content_type = content_type
        self.excerpt = excerpt
        self.reason = reason

    def __reduce__(self) -> tuple[type[NibbleResponseError], tuple[Any, ...]]:
        return type(self), (self.status, self.content_type, self.excerpt, self.reason)

    @classmethod
    def from_response(cls, response: httpx.Response, error: Exception) -> NibbleResponseError:
        """The error for a 2xx `response` whose body `error` (a JSON or validation error) could not parse."""
        if isinstance(error, ValidationError) and all(item["type"] != "json_invalid" for item in error.errors()):
            reason = f"JSON of another shape: {error.error_count()} field(s) not as nibble answers"
        elif isinstance(error, ValidationError | json.JSONDecodeError):
            reason = "not JSON"
        else:
            reason = str(error)
        return cls(response.status_code, _body_kind(response), _excerpt(response), reason)


def _body_kind(response: httpx.Response) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    return content_type or ("an empty body" if not response.content else "a body of no declared type")


def _excerpt(response: httpx.Response, length: int = 200) -> str:
    """The first `length` characters of the body on one line (an HTML page's whitespace collapsed)."""
    text = " ".join(response.content[:4 * length].decode("utf-8", "replace").split())
    return text[:length] + ("..." if len(text) > length else "")


@dataclass(frozen=True, slots=True)
class Download:
    """A file answered by the server: its bytes, the suggested file name and the report summary."""

    content: bytes
    filename: str
    summary: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bytes to `path` and return it."""
        target = Path(path)
        target.write_bytes(self.content)
        return target


# --- request building and answer parsing, shared by both clients ------------------------------


def _json_body(body: Body) -> Any:
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", exclude_unset=True)
    return dict(body)


def _file_part(file: FileInput, filename: str | None) -> tuple[str, Any, str]:
    """A multipart file part: paths are streamed from disk, bytes and file objects sent as they are."""
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return filename or path.name, path.open("rb"), "application/octet-stream"
    if isinstance(file, bytes):
        return filename or "upload.bin", file, "application/octet-stream"
    return filename or Path(getattr(file, "name", "upload.bin")).name, file, "application/octet-stream"


def _upload(file: FileInput, filename: str | None, calibration: FileInput | None,
            fields: Mapping[str, Any]) -> tuple[dict[str, tuple[str, Any, str]], dict[str, Any]]:
    files = {"file": _file_part(file, filename)}
    if calibration is not None:
        files["calibration"] = _file_part(calibration, None)
    data: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            data[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            data[name] = [str(item) for item in value]
        else:
            data[name] = str(value)
    return files, data


#: a checkpoint's files for the plan form: each file's name and header bytes (`quant_core.tensorio.
#: checkpoint_headers.read_header_prefix`), in the checkpoint's order
CheckpointFiles = Mapping[str, bytes]


def _plan_form(body: Body, checkpoint: CheckpointFiles, index: bytes | None) -> list[tuple[str, tuple[str | None,
                                                                                                       bytes, str]]]:
    """The multipart parts of ``/v1/plan`` (or its sweep) with the checkpoint's headers as files (app/plan_form.py):
    the body as ``request``, one ``header`` part per file named by its file name, the index."""
    parts: list[tuple[str, tuple[str | None, bytes, str]]] = [
        ("request", (None, json.dumps(_json_body(body)).encode(), "application/json"))]
    parts += [("header", (name, data, "application/octet-stream")) for name, data in checkpoint.items()]
    if index is not None:
        parts.append(("index", ("model.safetensors.index.json", index, "application/json")))
    return parts


def _close_files(files: Mapping[str, tuple[str, Any, str]], given: Mapping[str, FileInput | None]) -> None:
    """Close the files the client opened (those `given` as paths); a file object the caller passed stays open,
    theirs to seek back and send again."""
    for key, (_, handle, _) in files.items():
        if isinstance(given[key], str | os.PathLike):
            handle.close()


def _parse(parse: Callable[[bytes], AnswerT], response: httpx.Response) -> AnswerT:
    """`parse` of a success answer's body; `NibbleResponseError` when it is not what nibble answers there."""
    try:
        return parse(response.content)
    except ValueError as exc:  # JSON, Unicode and pydantic's validation errors all are
        raise NibbleResponseError.from_response(response, exc) from None


def _shaped(model: type[BaseModel]) -> Callable[[bytes | str], dict[str, Any]]:
    """A parser of an answer into the JSON object the server sent, once `model` has checked its shape."""

    def parse(content: bytes | str) -> dict[str, Any]:
        model.model_validate_json(content)
        return _JSON_OBJECT.validate_json(content)

    return parse


#: a job's status (`JobStatus`), and one page of GET /v1/jobs (``jobs``, ``next``, ``next_cursor``: `JobList`)
_job_status, _job_page = _shaped(JobStatus), _shaped(JobList)


def _event_status(response: httpx.Response, data: str) -> dict[str, Any]:
    """An event's status: a job's summary fields at least (its ``report`` comes only with the last)."""
    try:
        return _shaped(JobSummary)(data)
    except ValueError as exc:
        raise NibbleResponseError(response.status_code, "text/event-stream", data[:200],
                                  "an event that is not a job's status") from exc


def _jobs_params(limit: int | None, cursor: str | None, state: str | Sequence[str]) -> httpx.QueryParams:
    """The query of one ``GET /v1/jobs`` page: each state, then the limit and the cursor when given."""
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("state", name) for name in ([state] if isinstance(state, str) else state)]
    if limit is not None:
        params.append(("limit", limit))
    if cursor is not None:
        params.append(("cursor", cursor))
    return httpx.QueryParams(params)


def _not_an_event_stream(response: httpx.Response) -> bool:
    """Whether a streamed events answer is an error, or a success that is not ``text/event-stream`` (a proxy's
    page): then its body is read and `_stream_error` raised."""
    return response.is_error or not response.headers.get("content-type", "").startswith("text/event-stream")


def _stream_error(response: httpx.Response) -> Exception:
    """The error for such an answer (its body read): the server's error, or a `NibbleResponseError`."""
    if response.is_error:
        return NibbleAPIError.from_response(response)
    return NibbleResponseError.from_response(response, ValueError("not an event stream"))


def _timeouts(timeout_seconds: float, connect_timeout_seconds: float) -> httpx.Timeout:
    """`timeout_seconds` for each read, write and pool wait; a connection that is not made within
    `connect_timeout_seconds` (at most `timeout_seconds`) fails then, not after a quantization's minutes."""
    return httpx.Timeout(timeout_seconds, connect=min(connect_timeout_seconds, timeout_seconds))


def _events_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """The client's timeouts, but reads of an event stream wait `EVENTS_READ_TIMEOUT_SECONDS`: four of the
    server's 15 s heartbeats, however long the client's own read timeout."""
    return httpx.Timeout(timeout.connect, read=EVENTS_READ_TIMEOUT_SECONDS, write=timeout.write, pool=timeout.pool)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise NibbleAPIError.from_response(response)
    return response


def _download(response: httpx.Response) -> Download:
    """The file of a quantize or dequantize answer, which nibble always sends with its report summary in the
    ``X-Nibble-Report`` header: an answer without it (a proxy's or portal's page) is no file of nibble's."""
    disposition = response.headers.get("content-disposition", "")
    filename = disposition.split('filename="', 1)[1].rstrip('"') if 'filename="' in disposition else "download"
    summary_text = response.headers.get(REPORT_HEADER)
    if summary_text is None:
        raise NibbleResponseError.from_response(response, ValueError(f"a file without nibble's {REPORT_HEADER}"))
    try:
        summary = _JSON_OBJECT.validate_json(summary_text)
    except ValueError:
        raise NibbleResponseError.from_response(response, ValueError(f"an {REPORT_HEADER} that is not a JSON object")) \
            from None
    return Download(response.content, filename, summary)


def _base_url(url: str) -> str:
    """`url` without surrounding white space (a ``NIBBLE_URL`` read from a file keeps its newline) or a trailing
    slash; a ValueError that says what to write when it names no http(s) server (httpx would otherwise fail on the
    first request with "unsupported protocol 'localhost://'", or "Connection refused" for port 99999)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number, or out of 0-65535, raises
    except ValueError as exc:
        raise ValueError(f"base_url {url!r} is not a valid address: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f"; did you mean http://{url}?" if "://" not in url else ""
        raise ValueError(f"base_url {url!r} is not an http:// or https:// address{hint}")
    if port == 0:
        raise ValueError(f"base_url {url!r} is not a valid address: port 0")
    return url.rstrip("/")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _quantize_fields(method: str, group_size: int | None, symmetric: bool, output: str,
                     include: str | None) -> dict[str, Any]:
    return {"method": method, "group_size": "row" if group_size is None else group_size,
            "symmetric": symmetric, "output": output, "include": include}


def _compare_fields(methods: Sequence[str], group_size: int | None, symmetric: bool,
                    include: str | None) -> dict[str, Any]:
    return {"methods": ",".join(methods), "group_size": "row" if group_size is None else group_size,
            "symmetric": symmetric, "include": include}


class NibbleClient:
    """Synchronous client; use it as a context manager (or call `close`)."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=_base_url(base_url), headers=_auth_headers(api_key),
                                  timeout=_timeouts(timeout_seconds, connect_timeout_seconds), transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: Mapping[str, Any] | httpx.QueryParams | None = None) -> httpx.Response:
        return _checked(self._http.get(path, params=params))

    def _post_json(self, path: str, body: Body) -> httpx.Response:
        return _checked(self._http.post(path, json=_json_body(body)))

    def _post_upload(self, path: str, file: FileInput, filename: str | None, calibration: FileInput | None,
                     fields: Mapping[str, Any]) -> httpx.Response:
        files, data = _upload(file, filename, calibration, fields)
        try:
            return _checked(self._http.post(path, files=files, data=data))
        finally:
            _close_files(files, {"file": file, "calibration": calibration})

    def health(self) -> Health:
        """``GET /healthz``: ``Health(status="ok")`` when the server is up."""
        return _parse(Health.model_validate_json, self._get("/healthz"))

    def _post_plan(self, path: str, body: Body, checkpoint: CheckpointFiles | None,
                   index: bytes | None) -> httpx.Response:
        if checkpoint is None:
            return self._post_json(path, body)
        return _checked(self._http.post(path, files=_plan_form(body, checkpoint, index)))

    def plan(self, body: PlanRequest | Mapping[str, Any], *, checkpoint: CheckpointFiles | None = None,
             index: bytes | None = None) -> PlanResponse:
        """``POST /v1/plan``: will the model fit, per device, 16-bit beside INT4.  With `checkpoint` (file name
        -> header bytes) and its `index`, the checkpoint's own tensors, sent as the multipart form."""
        return _parse(PlanResponse.model_validate_json, self._post_plan("/v1/plan", body, checkpoint, index))

    def sweep(self, body: SweepRequest | Mapping[str, Any], *, checkpoint: CheckpointFiles | None = None,
              index: bytes | None = None) -> SweepResponse:
        """``POST /v1/plan/sweep``: one row per combination of the swept values (`checkpoint` as for `plan`)."""
        return _parse(SweepResponse.model_validate_json, self._post_plan("/v1/plan/sweep", body, checkpoint, index))

    def inspect(self, model: Body) -> InspectResponse:
        """``POST /v1/models/inspect``: ``{"preset": id}``, ``{"hf_config": {...}}`` or ``{"spec": {...}}``."""
        return _parse(InspectResponse.model_validate_json, self._post_json("/v1/models/inspect", model))

    def list_models(self) -> list[ModelSummary]:
        """``GET /v1/models``: every preset."""
        return _parse(_MODEL_LIST.validate_json, self._get("/v1/models"))

    def get_model(self, model_id: str) -> ModelDetail:
        """``GET /v1/models/{id}``."""
        return _parse(ModelDetail.model_validate_json, self._get(f"/v1/models/{model_id}"))

    def list_devices(self) -> list[DeviceOut]:
        """``GET /v1/devices``: every catalogued accelerator."""
        return _parse(_DEVICE_LIST.validate_json, self._get("/v1/devices"))

    def get_device(self, device_id: str) -> DeviceOut:
        """``GET /v1/devices/{id}``."""
        return _parse(DeviceOut.model_validate_json, self._get(f"/v1/devices/{device_id}"))

    @overload
    def quantize(self, file: FileInput, *, filename: str | None = ..., method: str = ...,
                 group_size: int | None = ..., symmetric: bool = ..., output: Literal["report"] = ...,
                 include: str | None = ..., calibration: FileInput | None = ...) -> QuantizeReport: ...

    @overload
    def quantize(self, file: FileInput, *, filename: str | None = ..., method: str = ...,
                 group_size: int | None = ..., symmetric: bool = ..., output: str,
                 include: str | None = ..., calibration: FileInput | None = ...) -> QuantizeReport | Download: ...

    def quantize(self, file: FileInput, *, filename: str | None = None, method: str = "rtn",
                 group_size: int | None = 128, symmetric: bool = False, output: str = "report",
                 include: str | None = None, calibration: FileInput | None = None) -> QuantizeReport | Download:
        """``POST /v1/quantize``: the JSON report (``output="report"``) or the quantized file as a `Download`."""
        response = self._post_upload("/v1/quantize", file, filename, calibration,
                                     _quantize_fields(method, group_size, symmetric, output, include))
        if output == "report":
            return _parse(QuantizeReport.model_validate_json, response)
        return _download(response)

    def compare(self, file: FileInput, methods: Sequence[str] = ("rtn", "clip"), *, filename: str | None = None,
                group_size: int | None = 128, symmetric: bool = False, include: str | None = None,
                calibration: FileInput | None = None) -> CompareReport:
        """``POST /v1/quantize/compare``: each method's sizes and quality figures, per tensor."""
        response = self._post_upload("/v1/quantize/compare", file, filename, calibration,
                                     _compare_fields(methods, group_size, symmetric, include))
        return _parse(CompareReport.model_validate_json, response)

    def dequantize(self, file: FileInput, dtype: str = "float32", *, filename: str | None = None) -> Download:
        """``POST /v1/dequantize``: a nibble ``.safetensors`` back to `dtype` floats."""
        return _download(self._post_upload("/v1/dequantize", file, filename, None, {"dtype": dtype}))

    # --- checkpoint jobs (/v1/jobs) ---

    def submit_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/jobs``: the queued job's status (``id``, ``url``, ``state``, ``progress``...)."""
        return _parse(_job_status, self._post_json("/v1/jobs", body))

    def get_job(self, job_id: str, *, report: bool = True) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``; ``report=False`` leaves out the per-tensor report (megabytes for a large job)."""
        return _parse(_job_status, self._get(f"/v1/jobs/{job_id}", None if report else {"report": "false"}))

    def jobs_page(self, *, limit: int | None = None, cursor: str | None = None,
                  state: str | Sequence[str] = ()) -> dict[str, Any]:
        """One page of ``GET /v1/jobs``: ``jobs`` (newest first; at most `limit`, the server's default 100, at
        most 1000), and ``next_cursor``, the `cursor` of the page after it (None on the last page); only jobs
        in `state` (one state or several) if given."""
        return _parse(_job_page, self._get("/v1/jobs", _jobs_params(limit, cursor, state)))

    def iter_jobs(self, *, state: str | Sequence[str] = (), page_size: int | None = None
                  ) -> Iterator[dict[str, Any]]:
        """Every job, newest first (of `state` if given), a page of `page_size` read at a time as it is
        needed (`jobs_page`)."""
        cursor = None
        while True:
            page = self.jobs_page(limit=page_size, cursor=cursor, state=state)
            yield from page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def list_jobs(self, *, state: str | Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every job, newest first (of `state` if given), however many pages ``GET /v1/jobs`` takes."""
        return list(self.iter_jobs(state=state))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/jobs/{id}``: cancel a queued or running job; delete a finished one (its files and record)."""
        return _parse(_job_status, _checked(self._http.delete(f"/v1/jobs/{job_id}")))

    def job_events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """``GET /v1/jobs/{id}/events``: each status the server sends, until the job is finished.

        The server sends an event at least every 15 s while a job runs; a stream silent for
        `EVENTS_READ_TIMEOUT_SECONDS` raises `httpx.ReadTimeout`, and a dropped one `httpx.TransportError`
        (``nibble jobs watch`` reconnects)."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=_events_timeout(self._http.timeout)) \
                as response:
            if _not_an_event_stream(response):
                response.read()
                raise _stream_error(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield _event_status(response, line.removeprefix("data: "))

    def download_job_file(self, url: str, path: str | os.PathLike[str]) -> Path:
        """Stream one result file (its ``url`` from the job's ``result.files``) to `path`: written beside it
        under a hidden name and renamed once whole, so an interrupted download leaves no partial file there."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with self._http.stream("GET", url, timeout=_events_timeout(self._http.timeout)) as response:
                if response.status_code >= 400:
                    response.read()
                    _checked(response)
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target


class AsyncNibbleClient:
    """Asynchronous client (``async with AsyncNibbleClient(url) as nibble: await nibble.plan(...)``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=_base_url(base_url), headers=_auth_headers(api_key),
                                       timeout=_timeouts(timeout_seconds, connect_timeout_seconds),
                                       transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: Mapping[str, Any] | httpx.QueryParams | None = None) -> httpx.Response:
        return _checked(await self._http.get(path, params=params))

    async def _post_json(self, path: str, body: Body) -> httpx.Response:
        return _checked(await self._http.post(path, json=_json_body(body)))

    async def _post_upload(self, path: str, file: FileInput, filename: str | None,
                           calibration: FileInput | None, fields: Mapping[str, Any]) -> httpx.Response:
        files, data = _upload(file, filename, calibration, fields)
        try:
            return _checked(await self._http.post(path, files=files, data=data))
        finally:
            _close_files(files, {"file": file, "calibration": calibration})

    async def health(self) -> Health:
        """``GET /healthz``: ``Health(status="ok")`` when the server is up."""
        return _parse(Health.model_validate_json, await self._get("/healthz"))

    async def _post_plan(self, path: str, body: Body, checkpoint: CheckpointFiles | None,
                         index: bytes | None) -> httpx.Response:
        if checkpoint is None:
            return await self._post_json(path, body)
        return _checked(await self._http.post(path, files=_plan_form(body, checkpoint, index)))

    async def plan(self, body: PlanRequest | Mapping[str, Any], *, checkpoint: CheckpointFiles | None = None,
                   index: bytes | None = None) -> PlanResponse:
        """``POST /v1/plan`` (`checkpoint`: see `NibbleClient.plan`)."""
        return _parse(PlanResponse.model_validate_json, await self._post_plan("/v1/plan", body, checkpoint, index))

    async def sweep(self, body: SweepRequest | Mapping[str, Any], *, checkpoint: CheckpointFiles | None = None,
                    index: bytes | None = None) -> SweepResponse:
        """``POST /v1/plan/sweep`` (`checkpoint`: see `NibbleClient.plan`)."""
        answer = await self._post_plan("/v1/plan/sweep", body, checkpoint, index)
        return _parse(SweepResponse.model_validate_json, answer)

    async def inspect(self, model: Body) -> InspectResponse:
        """``POST /v1/models/inspect``."""
        return _parse(InspectResponse.model_validate_json, await self._post_json("/v1/models/inspect", model))

    async def list_models(self) -> list[ModelSummary]:
        """``GET /v1/models``."""
        return _parse(_MODEL_LIST.validate_json, await self._get("/v1/models"))

    async def get_model(self, model_id: str) -> ModelDetail:
        """``GET /v1/models/{id}``."""
        return _parse(ModelDetail.model_validate_json, await self._get(f"/v1/models/{model_id}"))

    async def list_devices(self) -> list[DeviceOut]:
        """``GET /v1/devices``."""
        return _parse(_DEVICE_LIST.validate_json, await self._get("/v1/devices"))

    async def get_device(self, device_id: str) -> DeviceOut:
        """``GET /v1/devices/{id}``."""
        return _parse(DeviceOut.model_validate_json, await self._get(f"/v1/devices/{device_id}"))

    @overload
    async def quantize(self, file: FileInput, *, filename: str | None = ..., method: str = ...,
                       group_size: int | None = ..., symmetric: bool = ..., output: Literal["report"] = ...,
                       include: str | None = ..., calibration: FileInput | None = ...) -> QuantizeReport: ...

    @overload
    async def quantize(self, file: FileInput, *, filename: str | None = ..., method: str = ...,
                       group_size: int | None = ..., symmetric: bool = ..., output: str,
                       include: str | None = ...,
                       calibration: FileInput | None = ...) -> QuantizeReport | Download: ...

    async def quantize(self, file: FileInput, *, filename: str | None = None, method: str = "rtn",
                       group_size: int | None = 128, symmetric: bool = False, output: str = "report",
                       include: str | None = None,
                       calibration: FileInput | None = None) -> QuantizeReport | Download:
        """``POST /v1/quantize``: the JSON report or the quantized file as a `Download`."""
        response = await self._post_upload("/v1/quantize", file, filename, calibration,
                                           _quantize_fields(method, group_size, symmetric, output, include))
        if output == "report":
            return _parse(QuantizeReport.model_validate_json, response)
        return _download(response)

    async def compare(self, file: FileInput, methods: Sequence[str] = ("rtn", "clip"), *,
                      filename: str | None = None, group_size: int | None = 128, symmetric: bool = False,
                      include: str | None = None, calibration: FileInput | None = None) -> CompareReport:
        """``POST /v1/quantize/compare``."""
        response = await self._post_upload("/v1/quantize/compare", file, filename, calibration,
                                           _compare_fields(methods, group_size, symmetric, include))
        return _parse(CompareReport.model_validate_json, response)

    async def dequantize(self, file: FileInput, dtype: str = "float32", *, filename: str | None = None) -> Download:
        """``POST /v1/dequantize``."""
        return _download(await self._post_upload("/v1/dequantize", file, filename, None, {"dtype": dtype}))

    # --- checkpoint jobs (/v1/jobs): see NibbleClient's methods of the same names ---

    async def submit_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/jobs``: the queued job's status."""
        return _parse(_job_status, await self._post_json("/v1/jobs", body))

    async def get_job(self, job_id: str, *, report: bool = True) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``; ``report=False`` leaves out the per-tensor report."""
        return _parse(_job_status, await self._get(f"/v1/jobs/{job_id}", None if report else {"report": "false"}))

    async def jobs_page(self, *, limit: int | None = None, cursor: str | None = None,
                        state: str | Sequence[str] = ()) -> dict[str, Any]:
        """One page of ``GET /v1/jobs`` (``jobs``, ``next_cursor``)."""
        return _parse(_job_page, await self._get("/v1/jobs", _jobs_params(limit, cursor, state)))

    async def iter_jobs(self, *, state: str | Sequence[str] = (), page_size: int | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
        """Every job, newest first (of `state` if given), a page read at a time as it is needed."""
        cursor = None
        while True:
            page = await self.jobs_page(limit=page_size, cursor=cursor, state=state)
            for job in page["jobs"]:
                yield job
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def list_jobs(self, *, state: str | Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every job, newest first (of `state` if given), however many pages it takes."""
        return [job async for job in self.iter_jobs(state=state)]

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/jobs/{id}``: cancel a queued or running job; delete a finished one."""
        return _parse(_job_status, _checked(await self._http.delete(f"/v1/jobs/{job_id}")))

    async def job_events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """``GET /v1/jobs/{id}/events``: each status the server sends, until the job is finished (timeouts as
        `NibbleClient.job_events`)."""
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/events",
                                     timeout=_events_timeout(self._http.timeout)) as response:
            if _not_an_event_stream(response):
                await response.aread()
                raise _stream_error(response)
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    yield _event_status(response, line.removeprefix("data: "))

    async def download_job_file(self, url: str, path: str | os.PathLike[str]) -> Path:
        """Stream one result file to `path`, renamed into place once whole (`NibbleClient.download_job_file`)."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            async with self._http.stream("GET", url, timeout=_events_timeout(self._http.timeout)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _checked(response)
                with partial.open("wb") as handle:
                    async for chunk in response.aiter_bytes(1 << 20):
                        handle.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target
