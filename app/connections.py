"""What one connection may hold before its request head is complete: a deadline, a size and a count.

Stock uvicorn arms no timer before a request's head is complete and, under
httptools, buffers a head of any size; its ``--limit-concurrency`` only answers
503 once a head is complete.  So a client that connects and sends nothing, or
trickles its head a byte at a time, held a file descriptor for ever, and
20,000 of them locked everyone out (issue 17, item 6).  No ASGI app sees a
connection before its head is complete, so the guard sits one level down, in
the event loop, chosen with uvicorn's own public option::

    uvicorn app.main:app --loop app.connections:GuardedEventLoop

(`make run`, `nibble serve` and the Dockerfile start it so).
`GuardedEventLoop` is uvloop's loop (uvicorn's own choice here) whose servers wrap
each connection's protocol (uvicorn's, untouched) in a `HeadGuard`: it passes
every byte and call through, and frames the same bytes with httptools' public
parser (the one uvicorn uses) to see where each head begins and ends.  A head
must end within ``head_timeout_seconds`` of the connection's opening, or of
its first byte after an answer (408), and within ``max_head_bytes`` (431);
past ``max_connections`` open connections a new one is answered 503.  Each
answer is a problem document, and the connection is closed after it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import uvloop

from app.problems import ApiProblem, HeadTimeout, HeadTooLarge, TooManyConnections, problem_for
from app.settings import Settings, get_settings

#: what the request line and each header line add to a head beyond the URL, names and values: the method, the
#: version and the line ends (a short estimate; the bound is on the client's bytes, not on a byte count)
REQUEST_LINE_BYTES = len("OPTIONS  HTTP/1.1\r\n\r\n")
HEADER_LINE_BYTES = len(": \r\n")


@dataclass
class GuardStats:
    """What the guarded servers of this process hold and have refused, for ``/metrics`` (`app.metrics`)."""

    guarded: bool = False  # a guarded server started in this process
    open_sets: list[set[HeadGuard]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # by the problem's slug

    @property
    def open(self) -> int:
        return sum(map(len, self.open_sets))


#: this process's figures (one event loop serves one process)
STATS = GuardStats()


@dataclass(frozen=True)
class HeadLimits:
    """The bounds a guarded server holds every connection to, and the Retry-After of its 503 (`app.settings`)."""

    timeout_seconds: float
    max_head_bytes: int
    max_connections: int
    retry_after_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(settings.head_timeout_seconds, settings.max_head_bytes, settings.max_connections,
                   settings.retry_after_seconds)


def refusal(problem: ApiProblem) -> bytes:
    """The whole HTTP/1.1 answer for `problem`, closing its connection (written before any app has run)."""
    document, headers = problem_for(problem)
    body = document.model_dump_json(exclude_none=True).encode()
    lines = [f"HTTP/1.1 {document.status} {HTTPStatus(document.status).phrase}",
             "content-type: application/problem+json", f"content-length: {len(body)}", "connection: close",
             *(f"{name.lower()}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HeadGuard(asyncio.Protocol):
    """One connection's protocol wrapped: every call passes through to `inner` (uvicorn's protocol, given the real
    transport), while the guard frames the same bytes with httptools' public parser, times each request head
    from the connection's opening (the first) or the message's first byte (the next ones) to its end, sizes it,
    and refuses the connection that takes too long or sends too much."""

    def __init__(self, inner: asyncio.BaseProtocol, loop: asyncio.AbstractEventLoop, limits: HeadLimits,
                 open_guards: set[HeadGuard]) -> None:
        self.inner = inner
        self.loop = loop
        self.limits = limits
        self.open_guards = open_guards
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.armed = False       # a head is on its way (or due): its clock runs
        self.refused = False     # the guard answered and closed; nothing more reaches `inner`
        self.fed = 0             # bytes received since the head on its way began, while it is not complete
        self.head_bytes = 0      # the head's request line and headers, as the parser hands them over
        self.too_large = False

    # --- the protocol asyncio calls ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses, but write alike
        if len(self.open_guards) >= self.limits.max_connections:
            # a connection upgraded away from HTTP/1.1 no longer tells its guard it closed
            self.open_guards.difference_update([guard for guard in self.open_guards
                                                if guard.transport is None or guard.transport.is_closing()])
        if len(self.open_guards) >= self.limits.max_connections:
            self.refuse(TooManyConnections(
                f"this server already holds {self.limits.max_connections} open connections (max_connections); "
                "try again shortly", field="connection",
                headers={"Retry-After": str(self.limits.retry_after_seconds)}))
            return
        self.open_guards.add(self)
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.parser is not None:
            self.frame(data)
            if self.refused:
                return
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        if self.refused:
            return None
        result: bool | None = self.inner.eof_received()  # type: ignore[attr-defined]
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self in self.open_guards:
            self.open_guards.discard(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- httptools' callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self.armed:  # the first head's clock started with the connection
            self.arm()
            self.fed = -1  # the read this message began in also holds the previous one's end: not counted
        self.head_bytes += REQUEST_LINE_BYTES

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)  # httptools hands a URL over in as many pieces as reads carried it

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + HEADER_LINE_BYTES

    def on_headers_complete(self) -> None:
        self.too_large = self.head_bytes > self.limits.max_head_bytes
        self.disarm()

    # --- the guard ------------------------------------------------------------------------------

    def frame(self, data: bytes) -> None:
        """Feed `data` to the guard's parser; refuse a head that has grown past ``max_head_bytes``."""
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # as uvicorn's parser: the rest of this read is dropped, the next read parsed anew
        except httptools.HttpParserError:
            self.parser = None  # uvicorn answers this connection 400 and closes it
            self.disarm()
            return
        if self.armed:
            self.fed = 0 if self.fed < 0 else self.fed + len(data)
        if self.too_large or self.fed > self.limits.max_head_bytes:
            self.refuse(HeadTooLarge(
                f"the request head exceeds {self.limits.max_head_bytes} bytes (max_head_bytes)", field="head"))

    def arm(self) -> None:
        """Start the clock and the count of a new head."""
        self.armed, self.fed, self.head_bytes, self.too_large = True, 0, 0, False
        self.timer = self.loop.call_later(self.limits.timeout_seconds, self.expire)

    def disarm(self) -> None:
        self.armed = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        if self.armed and not self.refused:
            self.refuse(HeadTimeout(
                f"the request head was not complete within {self.limits.timeout_seconds:g} s "
                "(head_timeout_seconds)", field="head"))

    def refuse(self, problem: ApiProblem) -> None:
        """Answer `problem` and close; uvicorn's protocol is told the connection is lost when the close is done."""
        self.disarm()
        self.refused = True
        STATS.refused[problem.slug] += 1
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(refusal(problem))
            self.transport.close()


class GuardedEventLoop(uvloop.Loop):
    """uvloop's event loop (what uvicorn runs by default when uvloop is installed, as here), whose servers guard
    each connection's request heads (`HeadGuard`) with the limits of `app.settings` read when the server starts."""

    def _guard(self, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], HeadGuard]:
        limits = HeadLimits.from_settings(get_settings())
        open_guards: set[HeadGuard] = set()
        STATS.guarded = True
        STATS.open_sets.append(open_guards)
        return lambda: HeadGuard(protocol_factory(), self, limits, open_guards)

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any,
                            **kwargs: Any) -> asyncio.Server:
        return await super().create_server(self._guard(protocol_factory), *args, **kwargs)

    async def create_unix_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any,
                                 **kwargs: Any) -> asyncio.Server:
        return await super().create_unix_server(self._guard(protocol_factory), *args, **kwargs)
