"""``HEAD`` wherever ``GET`` answers (RFC 9110 §9.3.2), with no body sent.

FastAPI declares only the methods a route names, so a ``HEAD /v1/models``
was a 405. `HeadAsGet` runs the request as its ``GET`` and sends the status
and headers (``Content-Length`` included) without the body. It sits inside
the metrics and access log, which still see ``HEAD``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request is served as ``GET`` with the body left out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
