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

A request may also *divert* part of its body (`QueuedBodyCycle.divert_body`,
offered to the app as the scope extension `BODY_DIVERT_EXTENSION`): the next
n bytes are read from the socket straight into a buffer handed to the app's
sink, skipping the queue, the task wake-ups and the HTTP parser.  An upload
uses it for a tensor file's data, whose length its header declares
(app/uploads.py): the server's CPU per 64 MiB upload fell from 74–78 to 51–58 ms
(BENCHMARKS.md).  For that the transport reads into buffers the protocol
gives it (``get_buffer``), and the protocol counts a diverted request's body
itself, since httptools never sees those bytes: at its end the request is
complete and the next one gets a fresh parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
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
#: one network read into the protocol's buffer, as uvloop reads for a protocol that has none
READ_BYTES = 256_000
#: one network read of a diverted body (fewer reads, and so fewer calls, per MiB)
DIVERTED_READ_BYTES = 1 << 20
#: the most of a diverted body read in one turn of the event loop, before the loop's other work
DIVERTED_BYTES_PER_TURN = 4 << 20
#: the scope extension through which an app diverts part of a request body (`QueuedBodyCycle.divert_body`)
BODY_DIVERT_EXTENSION = "nibble.body_divert"

#: takes a read of a diverted body: `data[start:end]` is the next part of it, valid only during the call
BodySink = Callable[[bytes | bytearray, int, int], None]

_buffers = threading.local()


def _thread_buffer(name: str, size: int) -> bytearray:
    """A read buffer shared by every connection of this thread's event loop.

    A read is handed over (copied, or taken by a sink) before the loop
    reads again, as uvloop does with its own buffer, so one per thread is
    enough however many connections are open.
    """
    buffer = getattr(_buffers, name, None)
    if buffer is None:
        buffer = bytearray(size)
        setattr(_buffers, name, buffer)
    return buffer


class _BufferedReads(asyncio.BufferedProtocol):
    """What the transport calls instead of the protocol: its reads go into buffers the protocol chooses.

    uvloop reads into a protocol's buffer only for a protocol that is not an
    ``asyncio.Protocol``, which uvicorn's is; so the transport is given this
    stand-in, whose methods are the protocol's own.
    """

    def __init__(self, protocol: QueuedBodyProtocol) -> None:
        self.get_buffer = protocol.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = protocol.buffer_updated  # type: ignore[method-assign]
        self.eof_received = protocol.eof_received  # type: ignore[method-assign]
        self.connection_lost = protocol.connection_lost  # type: ignore[method-assign]
        self.pause_writing = protocol.pause_writing  # type: ignore[method-assign]
        self.resume_writing = protocol.resume_writing  # type: ignore[method-assign]


@dataclass
class _Divert:
    """A diverted stretch of a request body still to be read: `left` bytes for `sink`; `done` gets the count."""

    sink: BodySink
    left: int
    done: asyncio.Future[int]
    handed: int = 0


class QueuedBodyCycle(RequestResponseCycle):
    """A request/response cycle whose body is a queue of network reads (installed by `QueuedBodyProtocol`)."""

    chunks: deque[bytes]
    queued_bytes: int
    protocol: QueuedBodyProtocol

    async def divert_body(self, sink: BodySink, count: int) -> int:
        """Hand the body's next `count` bytes to `sink` as they arrive, instead of through ``receive()``.

        Reads already queued go first; the rest is read from the socket into
        a buffer `sink` takes directly, up to a MiB per read and
        `DIVERTED_BYTES_PER_TURN` per turn of the event loop, with no task wake-up, ``bytes`` object or
        HTTP parsing per read.  Returns how many
        bytes `sink` took: `count`, or fewer when the body ends (or the
        client goes) first; ``receive()`` then goes on where they stopped.  An
        exception from `sink` ends the diversion and is raised here.
        """
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it to send the body
            self.waiting_for_100_continue = False
        handed = 0
        while self.chunks and handed < count:
            chunk = self.chunks[0]
            take = min(len(chunk), count - handed)
            if take == len(chunk):
                self.chunks.popleft()
            else:
                self.chunks[0] = chunk[take:]
            self.queued_bytes -= take
            handed += take
            sink(chunk, 0, take)
        if not self.chunks and self.more_body:
            self.message_event.clear()  # set for the reads taken; the next receive() waits (unless the body ended)
        if handed < count and not self.disconnected and not self.response_complete:
            handed += await self.protocol.divert(self, sink, count - handed)
        return handed

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
    #: the event loop's time of the last read (or of the timer's arming)
    _active_at: float = 0.0

    #: the current request's body bytes not yet read from the socket (None: unknown, a chunked body)
    body_left: int | None = None
    #: set once part of the current body was diverted: httptools has not seen it, so this protocol counts
    #: the rest of the body itself and starts a new parser for the next request
    counting_body: bool = False
    _divert: _Divert | None = None
    #: diverted bytes read in this turn of the event loop, and whether reading waits for the next turn
    _turn_bytes: int = 0
    _turn_paused: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reads = memoryview(_thread_buffer("reads", READ_BYTES))
        self._diverted_reads = _thread_buffer("diverted", DIVERTED_READ_BYTES)
        transport.set_protocol(_BufferedReads(self))
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_idle_timer()
        self._end_divert()
        super().connection_lost(exc)

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        """Where the next network read goes: a diverted body's buffer (no further than that stretch, nor
        past this turn's budget), else the shared read buffer."""
        divert = self._divert
        if divert is not None:
            room = DIVERTED_BYTES_PER_TURN - self._turn_bytes
            return memoryview(self._diverted_reads)[: min(divert.left, DIVERTED_READ_BYTES,
                                                          room if room > 0 else DIVERTED_READ_BYTES)]
        return self._reads

    def buffer_updated(self, nbytes: int) -> None:
        """A read of `nbytes` arrived: a diverted body's go to its sink, others through the HTTP parser."""
        divert = self._divert
        if divert is None:
            self.data_received(bytes(self._reads[:nbytes]))
            return
        self._unset_keepalive_if_required()  # the client is sending: an answered request's connection stays
        self._arm_idle_timer()
        assert self.body_left is not None
        self.body_left -= nbytes
        divert.left -= nbytes
        divert.handed += nbytes
        try:
            divert.sink(self._diverted_reads, 0, nbytes)
        except Exception as exc:  # the app's sink refused the bytes: its diversion ends with the error
            self._end_divert(exc)
        else:
            if divert.left == 0 or self.body_left == 0:
                self._end_divert()
            else:
                self._count_turn(nbytes)
        if self.body_left == 0:
            self._finish_counted_body()

    def _count_turn(self, nbytes: int) -> None:
        """Stop reading for the rest of this turn of the event loop once its budget of diverted bytes is read.

        libuv would otherwise read on (up to 32 times) while the client keeps
        sending, and every other connection and task (the early job's
        dispatch) would wait for up to 32 MiB.
        """
        if self._turn_bytes == 0:
            self.loop.call_soon(self._next_turn)
        self._turn_bytes += nbytes
        if self._turn_bytes >= DIVERTED_BYTES_PER_TURN and not self._turn_paused:
            self._turn_paused = True
            self.transport.pause_reading()

    def _next_turn(self) -> None:
        """A new turn of the event loop: a new budget of diverted bytes (reading again if it was spent)."""
        self._turn_bytes = 0
        if self._turn_paused:
            self._turn_paused = False
            if not self.flow.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    async def divert(self, cycle: QueuedBodyCycle, sink: BodySink, count: int) -> int:
        """Read up to `count` more bytes of `cycle`'s body straight into `sink` (`QueuedBodyCycle.divert_body`).

        Only for the request being read, with a Content-Length body, and only
        as far as that body goes: the bytes after it (a pipelined request)
        are parsed as ever.
        """
        if self._divert is not None:
            raise RuntimeError("this request's body is already being diverted")
        if cycle is not self.cycle or self.body_left is None or self.transport.is_closing():
            return 0
        left = min(count, self.body_left)
        if left <= 0:
            return 0
        divert = _Divert(sink, left, self.loop.create_future())
        self._divert = divert
        self.counting_body = True  # from here on httptools does not see this body's bytes
        self.flow.resume_reading()
        try:
            return await divert.done
        finally:
            if self._divert is divert:  # cancelled while reading (the app's deadline): stop diverting
                self._divert = None

    def _end_divert(self, exc: Exception | None = None) -> None:
        """Stop diverting; the waiting `divert` returns the bytes taken (or raises `exc`)."""
        divert, self._divert = self._divert, None
        if divert is None or divert.done.done():
            return
        if exc is None:
            divert.done.set_result(divert.handed)
        elif isinstance(exc, StopIteration):  # a future refuses it (it would end the awaiting coroutine)
            wrapped = RuntimeError(f"the body sink raised {exc!r}")
            wrapped.__cause__ = exc
            divert.done.set_exception(wrapped)
        else:
            divert.done.set_exception(exc)

    def _finish_counted_body(self) -> None:
        """The counted body has ended: the request is complete, and the next one gets a fresh parser."""
        self.counting_body = False
        self.on_message_complete()
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3 has no leniencies
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

    def _arm_idle_timer(self) -> None:
        """Bytes arrived (or a request is due): the connection may idle `request_idle_seconds` from now.

        Called for every network read, so only the time is noted; a timer
        set earlier finds the later time when it fires and waits out the rest.
        """
        self._active_at = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(self._active_at + self.request_idle_seconds, self._on_idle)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle(self) -> None:
        """Nothing arrived for `request_idle_seconds` while a request was due: close (unless we paused reading)."""
        self._idle_timer = None
        due = self._active_at + self.request_idle_seconds
        if self.loop.time() < due:  # bytes arrived after this timer was set
            self._idle_timer = self.loop.call_at(due, self._on_idle)
            return
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
        if self.counting_body:  # the rest of a body part of which was diverted: httptools would miscount it
            assert self.body_left is not None
            self._unset_keepalive_if_required()
            take = min(len(data), self.body_left)
            if take:
                self.on_body(data if take == len(data) else data[:take])
            if self.body_left == 0:
                self._finish_counted_body()
                if take < len(data):
                    self.data_received(data[take:])
            return
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
            cycle = cast(QueuedBodyCycle, self.cycle)
            cycle.chunks = deque()
            cycle.queued_bytes = 0
            cycle.protocol = self
            self.body_left = self._content_length()
            extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
            extensions[BODY_DIVERT_EXTENSION] = cycle.divert_body

    def _content_length(self) -> int | None:
        """The body length this request's head declares, or None (chunked, or no valid Content-Length)."""
        length = None
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
        return length

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if self.body_left is not None:
            self.body_left -= len(body)  # read from the socket, whether or not anyone still wants it
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.queued_bytes += len(body)
        if cycle.queued_bytes > BODY_HIGH_WATER_BYTES:
            self.flow.pause_reading()
        cycle.message_event.set()
