"""The served protocol queues a request body's network reads and hands them over one at a time.

One test runs a real uvicorn server with `QueuedBodyProtocol` and a recording
ASGI app and sends it a body in uneven pieces; the others drive the cycle and
the protocol's ``on_body`` directly, with a flow control that records when
reading stops and starts again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from app.http_protocol import BODY_HIGH_WATER_BYTES, MAX_HEAD_BYTES, QueuedBodyCycle, QueuedBodyProtocol
from tests.threaded_server import uvicorn_in_thread

READ = 256_000  # one network read under uvloop, at most


class RecordingFlow:
    """uvicorn's flow control as far as the cycle uses it: whether the socket is being read."""

    def __init__(self) -> None:
        self.read_paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.read_paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.read_paused = False


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)


def queued_cycle(flow: RecordingFlow, expect_100_continue: bool = False) -> QueuedBodyCycle:
    cycle: Any = RequestResponseCycle(
        scope={"type": "http"}, transport=Transport(), flow=flow, logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"), access_log=False, default_headers=[],
        message_event=asyncio.Event(), expect_100_continue=expect_100_continue, keep_alive=True,
        on_response=lambda: None,
    )
    cycle.__class__ = QueuedBodyCycle
    cycle.chunks, cycle.queued_bytes = deque(), 0
    queued: QueuedBodyCycle = cycle
    return queued


def network_read(cycle: QueuedBodyCycle, flow: RecordingFlow, body: bytes) -> None:
    """What uvicorn does with a read of the body: the protocol's ``on_body`` for this cycle."""
    protocol = SimpleNamespace(parser=SimpleNamespace(should_upgrade=lambda: False), _should_upgrade=lambda: False,
                               cycle=cycle, flow=flow, body_left=None)
    QueuedBodyProtocol.on_body(protocol, body)  # duck-typed: on_body uses only these attributes


def test_reads_queue_until_a_mib_waits_unread_then_the_socket_is_no_longer_read() -> None:
    flow = RecordingFlow()
    cycle = queued_cycle(flow)
    reads = 0
    while not flow.read_paused:
        network_read(cycle, flow, bytes(READ))
        reads += 1
    assert reads == BODY_HIGH_WATER_BYTES // READ + 1
    assert cycle.queued_bytes == reads * READ > BODY_HIGH_WATER_BYTES

    message = asyncio.run(cycle.receive())
    assert message == {"type": "http.request", "body": bytes(READ), "more_body": True}
    assert not flow.read_paused  # back under the mark: reading again


def test_the_app_gets_each_read_as_it_came_and_more_body_false_with_the_last() -> None:
    flow = RecordingFlow()
    cycle = queued_cycle(flow)
    for piece in (b"first", b"second", b"third"):
        network_read(cycle, flow, piece)
    cycle.more_body = False  # what uvicorn's on_message_complete does at the body's end

    async def drain() -> list[Any]:
        return [await cycle.receive() for _ in range(3)]

    messages = asyncio.run(drain())
    assert [(m["body"], m["more_body"]) for m in messages] == [(b"first", True), (b"second", True), (b"third", False)]


def test_a_queued_read_is_handed_over_without_waiting_for_the_event_loop() -> None:
    flow = RecordingFlow()
    cycle = queued_cycle(flow)
    network_read(cycle, flow, b"a")
    network_read(cycle, flow, b"b")
    cycle.message_event.clear()  # nothing new to announce: the queued reads are enough
    assert asyncio.run(asyncio.wait_for(cycle.receive(), 1.0))["body"] == b"a"
    assert asyncio.run(asyncio.wait_for(cycle.receive(), 1.0))["body"] == b"b"


def test_a_disconnect_is_reported_even_with_reads_still_queued() -> None:
    flow = RecordingFlow()
    cycle = queued_cycle(flow)
    network_read(cycle, flow, b"never read")
    cycle.disconnected = True
    assert asyncio.run(cycle.receive()) == {"type": "http.disconnect"}


def test_expect_100_continue_is_answered_before_the_body_is_awaited() -> None:
    flow = RecordingFlow()
    cycle = queued_cycle(flow, expect_100_continue=True)
    network_read(cycle, flow, b"body")
    asyncio.run(cycle.receive())
    assert cycle.transport.written == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def recording_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers each POST with the sha256 of its body, the number of messages and whether only the last ended it."""
    if scope["type"] != "http":
        return
    digest, messages, ends = hashlib.sha256(), 0, []
    while True:
        message = await receive()
        digest.update(message["body"])
        messages += 1
        ends.append(message["more_body"])
        if not message["more_body"]:
            break
    only_last = ends[-1] is False and all(ends[:-1])
    answer = f"{digest.hexdigest()} {messages} {only_last}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def _serve(protocol: type[QueuedBodyProtocol]) -> Iterator[int]:
    """A real uvicorn server of `recording_app` speaking `protocol`, in a thread; yields its port."""
    with uvicorn_in_thread(recording_app, http=protocol) as port:
        yield port


@pytest.fixture()
def server() -> Iterator[int]:
    yield from _serve(QueuedBodyProtocol)


def test_a_body_sent_in_uneven_pieces_reaches_a_real_server_whole_in_order(server: int) -> None:
    body = random.Random(0).randbytes(3 * BODY_HIGH_WATER_BYTES + 12_345)
    pieces = random.Random(1)
    with socket.create_connection(("127.0.0.1", server)) as client:
        for _ in range(2):  # twice on one keep-alive connection
            client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body))
            sent = 0
            while sent < len(body):
                size = pieces.choice((1, 7, 4096, 65_536, 300_000, 1_500_000))
                client.sendall(body[sent: sent + size])
                sent += size
                if pieces.random() < 0.05:
                    time.sleep(0.005)
            answer = b""
            while not answer.endswith((b"True", b"False")):
                answer += client.recv(65_536)
            digest, messages, only_last = answer.split(b"\r\n\r\n", 1)[1].decode().split()
            assert digest == hashlib.sha256(body).hexdigest()
            assert int(messages) > 1
            assert only_last == "True"


def test_a_request_head_past_the_limit_is_431_and_the_connection_closes(server: int) -> None:
    # httptools buffers a head of any size: 16 MiB of one header used to be held (and parsed) whole
    with socket.create_connection(("127.0.0.1", server)) as client:
        client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        filler = b"a" * 65_536
        answer = b""
        try:
            for _ in range(2 * MAX_HEAD_BYTES // len(filler)):
                client.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while sending: the answer is already waiting
        client.settimeout(10)
        while chunk := client.recv(65_536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"application/problem+json" in answer and b'"status":431' in answer


def test_a_head_just_under_the_limit_is_served(server: int) -> None:
    body = b"x" * 10
    header = b"X-Padding: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n"
    with socket.create_connection(("127.0.0.1", server)) as client:
        client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\n" + header + b"Content-Length: 10\r\n\r\n" + body)
        answer = b""
        while not answer.endswith((b"True", b"False")):
            answer += client.recv(65_536)
    assert answer.startswith(b"HTTP/1.1 200 ")


class QuickIdleProtocol(QueuedBodyProtocol):
    request_idle_seconds = 0.5


@pytest.fixture()
def quick_idle_server() -> Iterator[int]:
    yield from _serve(QuickIdleProtocol)


def _closed_within(client: socket.socket, seconds: float) -> bool:
    client.settimeout(seconds)
    try:
        while client.recv(65_536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("sent", [b"", b"POST /upload HTTP/1.1\r\nHost: te",
                                  b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\nonly this"],
                         ids=["nothing", "half a head", "part of a body"])
def test_a_request_that_stops_arriving_has_its_connection_closed(quick_idle_server: int, sent: bytes) -> None:
    # uvicorn held such connections (and a request task waiting on the body) for ever
    with socket.create_connection(("127.0.0.1", quick_idle_server)) as client:
        client.sendall(sent)
        assert _closed_within(client, 5.0)


def test_a_slow_but_steady_body_is_not_cut_off(quick_idle_server: int) -> None:
    body = b"y" * 40
    with socket.create_connection(("127.0.0.1", quick_idle_server)) as client:
        client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 10):  # a piece every 0.3 s: each inside the 0.5 s idle limit
            time.sleep(0.3)
            client.sendall(body[start: start + 10])
        answer = b""
        while not answer.endswith((b"True", b"False")):
            answer += client.recv(65_536)
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n",
                                           b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"],
                         ids=["garbage", "two content lengths"])
def test_a_request_that_is_not_http_is_a_400_problem(server: int, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server)) as client:
        client.sendall(request_bytes)
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(65_536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["status"] == 400
