"""uvicorn's HTTP/1.1 protocol with a request body queued as the network delivered it.

uvicorn's httptools protocol (0.54) appends each network read of a request
body to one ``bytearray``, stops reading the socket once 64 KiB wait there
unread, and at the app's next ``receive()`` copies all of it into a new
``bytes`` object.  An upload then advances by one network read (at most
256,000 bytes under uvloop) per turn of the event loop, and a busy loop
answers every other ready request in each turn: while 32 connections posted
/v1/plan back to back, a 64 MiB upload took 4.7 s, against 0.09 s idle
(BENCHMARKS.md, "API (issue 4)").

`QueuedBodyProtocol` keeps the reads as they came, in a queue, and stops
reading only once `BODY_HIGH_WATER_BYTES` wait unread; ``receive()`` hands
them over one at a time, as they are (no copy), and does not return to the
event loop while one is queued.  A busy loop then moves up to a MiB of an
upload per turn (1.1 s for the same upload under the same load), and an idle
one runs as before: the app takes each read as it arrives.  The rest is
uvicorn's own code: headers, keep-alive, pipelining, ``Expect:
100-continue``, disconnects.

Serve with ``uvicorn app.main:app --http app.http_protocol:QueuedBodyProtocol``
(`UVICORN_HTTP`; the Makefile, the Dockerfile, ``nibble serve`` and the
end-to-end tests do).  Under uvicorn's default protocol the app works the same,
only without that fairness.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

#: the import string uvicorn's ``--http`` option takes for `QueuedBodyProtocol`
UVICORN_HTTP = "app.http_protocol:QueuedBodyProtocol"
#: unread request body a connection may hold before its socket is no longer read
BODY_HIGH_WATER_BYTES = 1 << 20
#: the longest request head (request line and headers) read; a read may hold body bytes too, so this is
#: well above any real head (browsers stay under 16 KiB) plus one network read (256 KiB)
MAX_HEAD_BYTES = 1 << 20
#: how long a refused connection is read (and dropped) before it closes
LINGER_SECONDS = 2.0
#: a request (head or body) that stops arriving for this long has its connection closed
REQUEST_IDLE_SECONDS = 60.0


class QueuedBodyCycle(RequestResponseCycle):
    """A request/response cycle whose body is a queue of network reads (installed by `QueuedBodyProtocol`)."""

    chunks: deque[bytes]
    queued_bytes: int

    async def receive(self) -> ASGIReceiveEvent:
        """The next queued read of the body (waiting for one if none is queued), or ``http.disconnect``."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.chunks and not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = b""
        if self.chunks:
            body = self.chunks.popleft()
            self.queued_bytes -= len(body)
            if not self.chunks:
                self.message_event.clear()  # set for reads handed over already; the next receive waits
            if self.queued_bytes <= BODY_HIGH_WATER_BYTES:
                self.flow.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body or bool(self.chunks)}


class QueuedBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose requests queue their body reads (module docstring).

    It also bounds a request's head (request line and headers) to
    `MAX_HEAD_BYTES`, which httptools does not: past it the answer is 431 and
    the connection closes, instead of the server buffering whatever a client
    sends before its blank line.  And a connection whose request stops
    arriving (a head or body cut off mid-way, or a new connection that sends
    nothing) for `request_idle_seconds` is closed, where uvicorn would hold it
    (and whatever request task waits on its body) for ever; the time the
    server itself stops reading (flow control) does not count.  The app's own
    upload deadline (``upload_idle_seconds``, a 408) comes first.
    """

    #: seconds a started request (or a new connection) may send nothing before the connection is closed
    request_idle_seconds: float = REQUEST_IDLE_SECONDS
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_idle_timer()
        super().connection_lost(exc)

    def _arm_idle_timer(self) -> None:
        self._disarm_idle_timer()
        self._idle_timer = self.loop.call_later(self.request_idle_seconds, self._on_idle)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle(self) -> None:
        """Nothing arrived for `request_idle_seconds` while a request was due: close (unless we paused reading)."""
        self._idle_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # our flow control stopped reading: the client is not the one idling
            self._arm_idle_timer()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # a request task waiting for its body hears http.disconnect
            self.cycle.message_event.set()
        self.transport.close()

    #: bytes read since the current request's head began, while it is not complete (None: in a body)
    head_bytes: int | None = 0

    #: set once a head was refused: what the client still sends is read and dropped until the socket closes
    discarding: bool = False

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self._arm_idle_timer()
        if self.head_bytes is not None:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, as problem+json instead of plain text."""
        self._write_problem(400, "Bad Request", "malformed-http", f"the request is not valid HTTP/1.1: {msg}")
        self.transport.close()

    def _write_problem(self, status: int, reason: str, slug: str, detail: str) -> None:
        """Write a whole ``application/problem+json`` answer, closing the connection, straight to the socket."""
        body = json.dumps({"type": f"urn:nibble:problem:{slug}", "title": reason, "status": status,
                           "detail": detail, "errors": []}, separators=(",", ":")).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, reason.encode(), len(body), body))

    def _refuse_head(self) -> None:
        """Answer 431 (problem+json) to a head past `MAX_HEAD_BYTES` and close the connection."""
        self._write_problem(431, "Request Header Fields Too Large", "header-fields-too-large",
                            f"the request line and headers pass {MAX_HEAD_BYTES} bytes")
        # a lingering close: reading on (and dropping) for a moment lets the answer arrive before the socket
        # closes; closing with the client's bytes unread would send a reset that can destroy the answer
        self.discarding = True
        self.head_bytes = None
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_bytes = 0  # the next request's head starts
        self._disarm_idle_timer()  # answering may take long; then uvicorn's keep-alive timeout applies

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a new request (not an upgrade): its body goes to a queue
            self.cycle.__class__ = QueuedBodyCycle
            self.cycle.chunks = deque()
            self.cycle.queued_bytes = 0

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.queued_bytes += len(body)
        if cycle.queued_bytes > BODY_HIGH_WATER_BYTES:
            self.flow.pause_reading()
        cycle.message_event.set()
