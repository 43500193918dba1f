"""The head guard in process: what it passes through, and when it refuses (app/connections.py).

The end-to-end tests (tests/e2e/test_connections.py) send real connections to
a served nibble; these drive one `HeadGuard` with a recording protocol, a
recording transport and a hand-run clock, so that every way of cutting a
stream into reads can be tried.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from app.connections import HeadGuard, HeadLimits


@dataclass
class Timer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Clock:
    """`call_later` on a clock the test moves."""

    now: float = 0.0
    timers: list[Timer] = field(default_factory=list)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in [timer for timer in self.timers if timer.due <= self.now and not timer.cancelled]:
            timer.cancelled = True
            timer.callback()


@dataclass
class Transport:
    written: bytearray = field(default_factory=bytearray)
    closing: bool = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


@dataclass
class Inner:
    """uvicorn's protocol, as the guard sees it: what reached it."""

    received: bytearray = field(default_factory=bytearray)
    made: bool = False
    lost: bool = False

    def connection_made(self, transport: object) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


LIMITS = HeadLimits(timeout_seconds=10.0, max_head_bytes=4096, max_connections=4, retry_after_seconds=5)


def guarded(open_guards: set[HeadGuard] | None = None) -> tuple[HeadGuard, Inner, Transport, Clock]:
    inner, transport, clock = Inner(), Transport(), Clock()
    guard = HeadGuard(inner, clock, LIMITS, set() if open_guards is None else open_guards)  # type: ignore[arg-type]
    guard.connection_made(transport)  # type: ignore[arg-type]
    return guard, inner, transport, clock


def refusal_status(transport: Transport) -> int:
    return int(bytes(transport.written).split(b" ", 2)[1])


def request(path: str, body: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))) + body


# a body longer than a head may be, then two more requests: a read may end one body and begin the next head
STREAM = request("/v1/quantize", bytes(range(256)) * 40) + request(
    "/v1/plan", json.dumps({"model": "x" * 300}).encode()) + request("/healthz")


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=40, unique=True))
def test_pipelined_requests_reach_the_app_unchanged_however_they_are_cut_into_reads(cuts: list[int]) -> None:
    guard, inner, transport, clock = guarded()
    edges = [0, *sorted(cuts), len(STREAM)]
    for start, stop in itertools.pairwise(edges):
        guard.data_received(STREAM[start:stop])
        clock.advance(1.0)  # each read a second apart: the heads are never 10 s in the making
    assert bytes(inner.received) == STREAM and not transport.written and not guard.armed


def test_a_head_not_done_at_the_deadline_is_refused_408_and_the_app_gets_no_more_bytes() -> None:
    guard, inner, transport, clock = guarded()
    guard.data_received(b"GET /healthz HTTP/1.1\r\nHo")
    clock.advance(9.9)
    assert not transport.written
    clock.advance(0.2)
    assert refusal_status(transport) == 408 and transport.closing
    guard.data_received(b"st: test\r\n\r\n")
    assert bytes(inner.received) == b"GET /healthz HTTP/1.1\r\nHo"


def test_the_next_heads_clock_starts_at_its_first_byte_not_at_the_last_answer() -> None:
    guard, _, transport, clock = guarded()
    guard.data_received(request("/healthz"))
    clock.advance(60.0)  # idle between requests: uvicorn's keep-alive timeout is the bound there
    assert not transport.written
    guard.data_received(b"GET /")
    clock.advance(10.1)
    assert refusal_status(transport) == 408


def test_a_slow_body_is_not_the_heads_business() -> None:
    guard, inner, transport, clock = guarded()
    body = b"x" * 100
    guard.data_received(request("/v1/plan", body)[:-len(body)])
    for index in range(100):
        clock.advance(1.0)
        guard.data_received(body[index:index + 1])
    assert not transport.written and inner.received.endswith(body)


def test_a_head_past_max_head_bytes_is_refused_431_while_it_arrives_and_when_whole() -> None:
    guard, _, transport, _ = guarded()
    guard.data_received(b"GET / HTTP/1.1\r\nX-Padding: " + b"a" * LIMITS.max_head_bytes)
    assert refusal_status(transport) == 431
    guard, _, transport, _ = guarded()
    guard.data_received(b"GET / HTTP/1.1\r\nX-Padding: " + b"a" * LIMITS.max_head_bytes + b"\r\n\r\n")
    assert refusal_status(transport) == 431


def test_a_head_within_max_head_bytes_is_served_however_many_reads_carry_its_url() -> None:
    guard, inner, transport, _ = guarded()
    head = b"GET /" + b"u" * (LIMITS.max_head_bytes // 2) + b" HTTP/1.1\r\nHost: test\r\n\r\n"
    for index in range(len(head)):
        guard.data_received(head[index:index + 1])
    assert not transport.written and bytes(inner.received) == head


def test_past_max_connections_a_new_connection_is_refused_503_and_never_reaches_the_app() -> None:
    open_guards: set[HeadGuard] = set()
    for _ in range(LIMITS.max_connections):
        guarded(open_guards)
    _, inner, transport, _ = guarded(open_guards)
    assert refusal_status(transport) == 503 and b"retry-after: 5" in transport.written and not inner.made
    assert len(open_guards) == LIMITS.max_connections


def test_a_request_that_is_not_http_is_left_to_uvicorn() -> None:
    guard, inner, transport, clock = guarded()
    guard.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    clock.advance(60.0)
    assert inner.received == b"NOT HTTP AT ALL\r\n\r\n" and not transport.written  # uvicorn answers it 400


def test_a_lost_connection_is_passed_on_and_forgotten() -> None:
    open_guards: set[HeadGuard] = set()
    guard, inner, _, clock = guarded(open_guards)
    guard.connection_lost(None)
    clock.advance(60.0)
    assert inner.lost and not open_guards


def test_the_guard_is_an_asyncio_protocol() -> None:
    assert issubclass(HeadGuard, asyncio.Protocol)
