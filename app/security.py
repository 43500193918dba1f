"""Optional bearer-token authentication (``NIBBLE_API_KEYS``) and the request body size guard."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import PROBLEM_MEDIA_TYPE, Unauthorized, UnsupportedTransferCoding, UploadStalled, problem_for
from app.settings import Settings
from app.uploads import MULTIPART_OVERHEAD_BYTES
from quant_core.errors import LimitExceeded

#: The OpenAPI security scheme of the v1 routes (`ApiKeyRoute`), added to the document by app/main.py.
BEARER_SCHEME_NAME = "HTTPBearer"
BEARER_SCHEME: dict[str, str] = {"type": "http", "scheme": "bearer",
                                 "description": "Required only when the server sets NIBBLE_API_KEYS."}


def settings_of(request: Request) -> Settings:
    """The settings the app was created with (`create_app` stores them on ``app.state``)."""
    settings: Settings = request.app.state.settings
    return settings


def _path_signature(keys: list[str], path: str, expires: int) -> str:
    """HMAC-SHA256 of the path and its expiry, keyed by the server's API keys (changing the keys revokes
    every link)."""
    key = hashlib.sha256("\n".join(sorted(keys)).encode()).digest()
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_path(settings: Settings, path: str, now: float | None = None) -> str:
    """The URL of `path` (percent-encoded: a file name may hold ``#``, ``?``, ``%`` or a space) with a
    signature that lets a GET or HEAD of it through without an Authorization header for
    ``download_url_seconds``: what a browser's plain link (a job's result file) needs when API keys are set.
    Without API keys, the percent-encoded path alone.  The signature is of `path` itself, as the server
    decodes it again (``scope["path"]``)."""
    if not settings.api_keys:
        return quote(path)
    expires = int(time.time() if now is None else now) + settings.download_url_seconds
    return f"{quote(path)}?expires={expires}&signature={_path_signature(settings.api_keys, path, expires)}"


def _signed_request(request: Request, keys: list[str]) -> bool:
    """Whether `request` is a GET or HEAD carrying a signature (`signed_path`); 401 when it is not valid."""
    signature, expires = request.query_params.get("signature"), request.query_params.get("expires")
    if request.method not in ("GET", "HEAD") or signature is None or expires is None:
        return False
    valid = expires.isascii() and expires.isdigit() and len(expires) <= 12 and hmac.compare_digest(
        signature.encode(), _path_signature(keys, request.scope["path"], int(expires)).encode())
    if not valid or int(expires) < time.time():
        raise Unauthorized("this link's signature is not valid or has expired: GET the job again for a fresh "
                           "link, or send Authorization: Bearer <key>")
    return True


def check_api_key(request: Request) -> None:
    """When API keys are configured, refuse (401) a request without one of them as a bearer token, or a valid
    signature of its path (`signed_path`).

    The header is read as FastAPI's ``HTTPBearer`` reads it (scheme, a space,
    the token; the scheme case-insensitive) and compared in constant time.
    """
    keys = settings_of(request).api_keys
    if not keys:
        return
    if "authorization" not in request.headers and _signed_request(request, keys):
        return
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        raise Unauthorized("this server requires an API key: send Authorization: Bearer <key>")
    presented = token.encode()
    if not any(hmac.compare_digest(presented, key.encode()) for key in keys):
        raise Unauthorized("the bearer token is not one of this server's API keys")


class ApiKeyRoute(APIRoute):
    """A route that checks the API key (`check_api_key`) first, before FastAPI reads the body.

    The v1 routers use it as their ``route_class``.  It replaces a router-wide
    dependency calling `check_api_key`: FastAPI solves dependencies per request at a
    cost of about 0.2 ms on this machine (``benchmarks/api_bench.py``), more
    than planning itself.  The OpenAPI document still declares the bearer
    scheme on every such route (``security``), as the dependency did.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["openapi_extra"] = {"security": [{BEARER_SCHEME_NAME: []}], **(kwargs.get("openapi_extra") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            check_api_key(request)
            return await handler(request)

        return guarded


class BodySizeLimit:
    """Guard every request body: its size (413), its transfer coding (501) and its pace (408).

    JSON bodies may hold ``max_json_bytes``; a body of a media type its route
    reads as an upload (`uploads`: path -> media types, from each route's
    documented request body) the uploads' ``max_upload_bytes`` (plus multipart
    overhead; `app.uploads` enforces the exact per-file limit itself), any other
    body on any other route ``max_json_bytes`` as well, so a route never reads
    256 MiB only to refuse its media type; tus PATCH bodies ``upload_max_file_bytes``
    (app/tus.py holds each to what its file still lacks).  A declared Content-Length over the limit is
    refused without reading a byte; a chunked body is cut off when it passes
    the limit: the app sees a disconnect and its answer is replaced by the 413.
    A ``Transfer-Encoding`` other than ``chunked`` alone is 501 (RFC 9112
    §6.1), unread.  A body that sends nothing for ``upload_idle_seconds``
    while the app waits for it is cut off the same way and answered 408 with
    ``Connection: close`` (uvicorn then closes the connection).
    """

    def __init__(self, app: ASGIApp, settings: Settings, uploads: Mapping[str, frozenset[str]]) -> None:
        self.app = app
        self.settings = settings
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        coding = headers.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            await self._refuse(send, UnsupportedTransferCoding(
                f"Transfer-Encoding {coding.decode('latin-1')[:100]!r} is not implemented; send the body "
                "as is (Content-Length) or chunked", field="Transfer-Encoding"))
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        media_type = content_type.partition(";")[0].strip()
        if media_type in self.uploads.get(scope["path"], ()):
            limit_name, maximum = "max_upload_bytes", self.settings.max_upload_bytes
            allowed = maximum + (MULTIPART_OVERHEAD_BYTES if media_type.startswith("multipart/") else 0)
        elif content_type.startswith("application/offset+octet-stream"):  # a tus PATCH (app/tus.py)
            limit_name, maximum = "upload_max_file_bytes", self.settings.upload_max_file_bytes
            allowed = maximum
        else:
            limit_name, maximum = "max_json_bytes", self.settings.max_json_bytes
            allowed = maximum
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > allowed:
            await self._refuse(send, LimitExceeded(limit_name, int(declared), maximum, field="body"))
            return
        idle = self.settings.upload_idle_seconds
        received = 0
        body_done = False
        refused: Exception | None = None
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, refused, body_done
            if refused is not None:
                return {"type": "http.disconnect"}
            if body_done:  # past the body, the app only listens for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(idle):
                    message = await receive()
            except TimeoutError:
                refused = UploadStalled(f"the request body sent no bytes for {idle:g} s (after {received} bytes)",
                                        field="body", headers={"Connection": "close"})
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > allowed:
                    refused = LimitExceeded(limit_name, received, maximum, field="body")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused is not None and not response_started:
                return  # the app's answer to the cut-off body is replaced by the refusal below
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not response_started:
            await self._refuse(send, refused)

    @staticmethod
    async def _refuse(send: Send, error: Exception) -> None:
        problem, headers = problem_for(error)
        body = json.dumps(problem.model_dump(exclude_none=True)).encode()
        extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()
                 if name.lower() != "connection"]
        await send({"type": "http.response.start", "status": problem.status,
                    "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *extra]})
        await send({"type": "http.response.body", "body": body})
