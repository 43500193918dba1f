"""One JSON line per request on logger ``nibble.access``, and the ``X-Request-ID`` header.

A line holds: the request id, method, route template, path, status, duration
in milliseconds, and the response size in bytes when declared.  Never a body,
a query string, a header value or an uploaded byte: uploads may be private
weights, and query strings may carry secrets.

The request id is the client's ``X-Request-ID`` when it is sane (1 to 128 of
``A-Z a-z 0-9 . _ : -``, so a log line cannot be forged or bloated through
it), else a fresh UUID4; either way it is sent back in the ``X-Request-ID``
response header and stored in ``scope["state"]["request_id"]`` for handlers.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
LOGGER_NAME = "nibble.access"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"
logger = logging.getLogger(LOGGER_NAME)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The template of the route that handled `scope` (``/v1/devices/{device_id}``), or ``<unmatched>``.

    Logs and metrics label requests by template, never by raw path, so the
    label set stays bounded whatever paths clients send.  FastAPI leaves the
    route as declared in its router in ``scope["route"]`` (without the
    ``include_router`` prefix), so the prefix is recovered as the part of the
    path before the shortest suffix that the route's own pattern matches.
    `root_path` is the scope's ``root_path`` before routing: a static mount
    shows up only as a longer ``root_path`` afterwards.
    """
    route: BaseRoute | None = scope.get("route")
    if isinstance(route, Mount) or (route is None and scope.get("root_path", "") != root_path):
        mounted_at = scope.get("root_path", "").removeprefix(root_path)  # a Mount extends root_path
        return f"{mounted_at}/{{path}}"
    if route is None:
        return UNMATCHED_ROUTE
    path_format = getattr(route, "path_format", None)
    path_regex = getattr(route, "path_regex", None)
    if not isinstance(path_format, str) or path_regex is None:
        return UNMATCHED_ROUTE
    path: str = scope.get("path", "")
    if "{" in path_format:  # paths with parameters are unbounded: not cached
        return _template_of(path_format, path_regex, path)
    return _fixed_template_of(path_format, path_regex, path)


def _template_of(path_format: str, path_regex: re.Pattern[str], path: str) -> str:
    """The template with the prefix it was included under, recovered from `path`."""
    for start, character in enumerate(path):
        if character == "/" and path_regex.fullmatch(path[start:]):
            return path[:start] + path_format
    return path_format


#: Routes without parameters match one path each (per prefix), so this cache stays as small as the app;
#: it saves the regex search that metrics and the access log would each run on every request.
_fixed_template_of = functools.lru_cache(maxsize=1024)(_template_of)


#: the most characters of a path one log line keeps: a head may carry a path of tens of KiB (h11's bound is
#: 64 KiB, httptools' none), and a log line per request that large would let clients fill the log's disk
MAX_LOGGED_PATH_CHARACTERS = 512


def logged_path(path: str) -> str:
    """`path` as a log line holds it: at most `MAX_LOGGED_PATH_CHARACTERS`, a longer one cut and marked."""
    if len(path) <= MAX_LOGGED_PATH_CHARACTERS:
        return path
    return f"{path[:MAX_LOGGED_PATH_CHARACTERS]}...({len(path) - MAX_LOGGED_PATH_CHARACTERS} more characters)"


def request_id_from(value: str | None) -> str:
    """`value` when it is a sane request id, else a new UUID4 (hex with dashes)."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return str(uuid.uuid4())


#: what the access log hands each request to once its answer ends: method, route template, status, seconds
RequestObserver = Callable[[str, str, int, float], None]


class RequestLogMiddleware:
    """Assign the request id, return it in a header, and log one JSON line when the answer ends; hand the
    request to `observe` then too (the metrics: one middleware times and labels a request for both)."""

    def __init__(self, app: ASGIApp, observe: RequestObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        incoming = None
        for name, value in scope.get("headers") or []:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = request_id_from(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_bytes: int | None = None

        async def tagging_send(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                length = headers.get("content-length")
                response_bytes = int(length) if length and length.isdigit() else None
            await send(message)

        try:
            await self.app(scope, receive, tagging_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope, root_path)
            self.observe(scope["method"], route, status, seconds)
            record = {
                "event": "request", "request_id": request_id, "method": scope["method"], "route": route,
                "path": logged_path(scope["path"]), "status": status, "duration_ms": round(seconds * 1000, 3),
            }
            if response_bytes is not None:
                record["response_bytes"] = response_bytes
            logger.info(json.dumps(record, separators=(",", ":")))


class _StderrHandler(logging.Handler):
    """Writes each line to the *current* ``sys.stderr`` (test runners and servers may swap it)."""

    _nibble_access = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_access_log() -> None:
    """Send ``nibble.access`` lines, bare, to stderr at INFO (once per process; idempotent).

    Uvicorn configures only its own loggers, so without this the lines would
    go nowhere.  The logger does not propagate, so a root handler set up by a
    deployment does not print each line twice; attach handlers to
    ``logging.getLogger("nibble.access")`` to ship them elsewhere.
    """
    if any(getattr(handler, "_nibble_access", False) for handler in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def install_request_log(app: FastAPI, observe: RequestObserver) -> None:
    """Add the request-id and access-log middleware to `app` (outermost when called last), handing each request
    to `observe`."""
    configure_access_log()
    app.add_middleware(RequestLogMiddleware, observe=observe)
