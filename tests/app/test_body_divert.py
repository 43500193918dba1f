"""A request may divert part of its body past the queue and the HTTP parser, straight into the app's sink.

A real uvicorn server (speaking `QueuedBodyProtocol`, on uvloop and on
asyncio's own loop) runs `diverting_app`: it reads the body's first message
through ``receive()``, diverts the number of bytes the ``x-divert`` header
asks for, reads the rest through ``receive()`` again, and answers what it
saw.  The client writes raw HTTP/1.1, so bodies can be cut, chunked,
pipelined and abandoned at will.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.http_protocol import BODY_DIVERT_EXTENSION, DIVERTED_BYTES_PER_TURN, DIVERTED_READ_BYTES, QueuedBodyProtocol
from tests.threaded_server import uvicorn_in_thread

#: what the app saw of bodies whose client went away (no answer can carry it)
abandoned: list[dict[str, Any]] = []


class SinkRefused(Exception):
    pass


async def diverting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Receive, divert ``x-divert`` bytes, receive the rest; answer the digest and how the bytes came."""
    assert scope["type"] == "http"
    headers = dict(scope["headers"])
    wanted = int(headers.get(b"x-divert", b"0"))
    refuse_at = int(headers.get(b"x-refuse-at", b"-1"))
    digest = hashlib.sha256()
    seen = {"received": 0, "diverted": 0, "sink_calls": 0, "largest_read": 0, "reads": [],
            "error": None, "disconnected": False}
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    def sink(data: bytes | bytearray, start: int, end: int) -> None:
        nonlocal turns
        body_ends_here = seen["received"] + seen["diverted"] + (end - start) == int(headers[b"content-length"])
        if 0 <= refuse_at < seen["diverted"] + (end - start) or (b"x-refuse-last" in headers and body_ends_here):
            if headers.get(b"x-refuse-with") == b"StopIteration":
                raise StopIteration  # what next() on an exhausted iterator raises
            raise SinkRefused(f"refused at {seen['diverted']}")
        digest.update(data[start:end])
        seen["diverted"] += end - start
        seen["sink_calls"] += 1
        seen["largest_read"] = max(seen["largest_read"], end - start)
        seen["reads"].append([turns, end - start])  # loop turns since the previous read, and its size
        turns = 0

    more = True
    if b"x-divert-first" not in headers:
        message = await receive()
        digest.update(message["body"])
        seen["received"] += len(message["body"])
        more = message.get("more_body", False)
    if more and wanted:
        ticking = asyncio.create_task(ticker())
        try:
            await scope["extensions"][BODY_DIVERT_EXTENSION](sink, wanted)
        except (SinkRefused, RuntimeError) as exc:
            seen["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            ticking.cancel()
        if seen["error"] is not None and b"x-after-refusal" in headers:  # receive() goes on after a refusal
            try:
                after = await asyncio.wait_for(receive(), 3)
                seen["after_refusal"] = [after["type"], after.get("more_body")]
            except TimeoutError:
                seen["after_refusal"] = "receive() still waiting after 3 s"
    while more and seen["error"] is None:
        message = await receive()
        if message["type"] == "http.disconnect":
            seen["disconnected"] = True
            abandoned.append(seen)
            return
        digest.update(message["body"])
        seen["received"] += len(message["body"])
        more = message.get("more_body", False)
    answer = json.dumps({**seen, "digest": digest.hexdigest()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A real uvicorn server of `diverting_app` in a thread, on the event loop named; yields its port."""
    with uvicorn_in_thread(diverting_app, http=QueuedBodyProtocol, loop=request.param) as port:
        yield port


def connect(port: int) -> socket.socket:
    """A client socket to the server that gives up on an answer after 20 s (a hung server fails the test)."""
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def request_head(length: int, divert: int, extra: str = "") -> bytes:
    return (f"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\nx-divert: {divert}\r\n"
            f"{extra}\r\n").encode()


def read_answer(client: socket.socket, buffered: bytearray) -> dict[str, Any]:
    """One Content-Length answer from `client` (bytes past it stay in `buffered`), its JSON body."""
    while b"\r\n\r\n" not in buffered:
        chunk = client.recv(65_536)
        assert chunk, "the server closed the connection before answering"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        chunk = client.recv(65_536)
        assert chunk
        rest += chunk
    buffered[:] = rest[length:]
    answer: dict[str, Any] = json.loads(rest[:length])
    return answer


def send_in_pieces(client: socket.socket, data: bytes, seed: int) -> None:
    pieces = random.Random(seed)
    sent = 0
    while sent < len(data):
        size = pieces.choice((1, 999, 65_536, 300_000, 2_000_000))
        client.sendall(data[sent: sent + size])
        sent += size


def test_a_diverted_stretch_and_the_rest_of_the_body_arrive_whole_in_order_on_a_kept_alive_connection(
        server: int) -> None:
    body = random.Random(0).randbytes(5 * DIVERTED_READ_BYTES + 4321)
    divert = 3 * DIVERTED_READ_BYTES + 17
    buffered = bytearray()
    with connect(server) as client:
        for seed in range(3):  # the parser that follows a diverted body reads the next requests' heads
            client.sendall(request_head(len(body), divert))
            send_in_pieces(client, body, seed)
            answer = read_answer(client, buffered)
            assert answer["digest"] == hashlib.sha256(body).hexdigest()
            assert answer["diverted"] == divert
            assert answer["received"] == len(body) - divert
            assert answer["largest_read"] <= DIVERTED_READ_BYTES


def test_a_diversion_stops_at_the_end_of_its_body_and_a_pipelined_request_is_served(server: int) -> None:
    first = random.Random(1).randbytes(2 * DIVERTED_READ_BYTES)
    second = random.Random(2).randbytes(1000)
    buffered = bytearray()
    with connect(server) as client:
        # both requests in one stream: the first asks for more than its body holds
        client.sendall(request_head(len(first), 10 * len(first)) + first + request_head(len(second), 0) + second)
        answer = read_answer(client, buffered)
        assert answer["digest"] == hashlib.sha256(first).hexdigest()
        assert answer["diverted"] + answer["received"] == len(first)
        assert read_answer(client, buffered)["digest"] == hashlib.sha256(second).hexdigest()


def test_a_chunked_body_is_not_diverted_and_arrives_through_receive(server: int) -> None:
    body = random.Random(3).randbytes(3 * DIVERTED_READ_BYTES)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece)
                       for piece in (body[i: i + 700_000] for i in range(0, len(body), 700_000))) + b"0\r\n\r\n"
    head = (f"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nx-divert: {len(body)}\r\n"
            "\r\n").encode()
    buffered = bytearray()
    with connect(server) as client:
        client.sendall(head + chunked)
        answer = read_answer(client, buffered)
        assert answer["digest"] == hashlib.sha256(body).hexdigest()
        # only reads already queued can go to the sink: none comes straight from the socket
        assert answer["largest_read"] <= 700_000


def test_a_sink_that_refuses_ends_the_diversion_and_the_connection_serves_the_next_request(server: int) -> None:
    body = random.Random(4).randbytes(4 * DIVERTED_READ_BYTES)
    small = b"after the refusal"
    buffered = bytearray()
    with connect(server) as client:
        client.sendall(request_head(len(body), len(body), f"x-refuse-at: {2 * DIVERTED_READ_BYTES}\r\n") + body)
        answer = read_answer(client, buffered)
        assert answer["error"] is not None and answer["diverted"] <= 2 * DIVERTED_READ_BYTES
        # the refused body's unread bytes are read past; the next request on the connection is parsed as such
        client.sendall(request_head(len(small), 0) + small)
        assert read_answer(client, buffered)["digest"] == hashlib.sha256(small).hexdigest()


def test_other_tasks_run_between_reads_of_a_diverted_body_at_least_every_few_mib(server: int) -> None:
    body = random.Random(5).randbytes(24 * DIVERTED_READ_BYTES)
    buffered = bytearray()
    with connect(server) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        client.sendall(request_head(len(body), len(body)) + body)  # as fast as the socket takes it
        answer = read_answer(client, buffered)
    assert answer["digest"] == hashlib.sha256(body).hexdigest()
    within_a_turn = 0
    for turns, size in answer["reads"][1:]:  # the first read comes from the queue
        within_a_turn = size if turns else within_a_turn + size
        assert within_a_turn <= DIVERTED_BYTES_PER_TURN


def test_a_client_gone_mid_diversion_ends_it_short_and_the_app_hears_the_disconnect(server: int) -> None:
    body = random.Random(6).randbytes(3 * DIVERTED_READ_BYTES)
    abandoned.clear()
    with connect(server) as client:
        client.sendall(request_head(len(body) + 1000, len(body) + 1000) + body)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not abandoned:
        assert time.monotonic() < deadline, "the app never heard the client go"
        time.sleep(0.02)
    seen = abandoned[0]
    assert seen["disconnected"] and seen["received"] + seen["diverted"] == len(body)


def test_a_client_expecting_100_continue_gets_it_when_the_app_diverts_before_any_receive(server: int) -> None:
    body = random.Random(7).randbytes(2 * DIVERTED_READ_BYTES)
    with connect(server) as client:
        client.sendall(request_head(len(body), len(body), "Expect: 100-continue\r\nx-divert-first: 1\r\n"))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = client.recv(1024)
            assert chunk, "the server closed the connection instead of asking for the body"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        client.sendall(body)
        answer = read_answer(client, bytearray(interim.split(b"\r\n\r\n", 1)[1]))
    assert answer["digest"] == hashlib.sha256(body).hexdigest() and answer["diverted"] == len(body)


@pytest.mark.parametrize("refused_read", ["a middle one", "the one holding the last byte"])
def test_receive_goes_on_after_a_sink_refused_a_read(server: int, refused_read: str) -> None:
    body = random.Random(8).randbytes(3 * DIVERTED_READ_BYTES)
    refusal = f"x-refuse-at: {DIVERTED_READ_BYTES}" if refused_read == "a middle one" else "x-refuse-last: 1"
    buffered = bytearray()
    with connect(server) as client:
        client.sendall(request_head(len(body), len(body), f"{refusal}\r\nx-after-refusal: 1\r\n"))
        client.sendall(body)
        answer = read_answer(client, buffered)
    assert answer["error"].startswith("SinkRefused")
    if refused_read == "a middle one":
        assert answer["after_refusal"] == ["http.request", True]
    else:  # the body is all in: the request is complete, receive() says so at once
        assert answer["after_refusal"] == ["http.request", False]


def test_a_sink_raising_stop_iteration_is_an_error_for_the_app_not_a_broken_connection(server: int) -> None:
    body = random.Random(9).randbytes(3 * DIVERTED_READ_BYTES)
    buffered = bytearray()
    with connect(server) as client:
        client.sendall(request_head(len(body), len(body), f"x-refuse-at: {DIVERTED_READ_BYTES}\r\n"
                                    "x-refuse-with: StopIteration\r\n") + body)
        answer = read_answer(client, buffered)
    assert answer["error"].startswith("RuntimeError: the body sink raised StopIteration")


async def answer_then_divert_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Divert the whole body in a task and answer meanwhile (the answer does not wait for the body)."""
    length = int(dict(scope["headers"]).get(b"content-length", b"0"))
    if not length:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    diverting = asyncio.create_task(scope["extensions"][BODY_DIVERT_EXTENSION](lambda data, start, end: None,
                                                                               length))
    await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
    await diverting


def test_a_body_still_being_diverted_after_its_answer_keeps_the_connection_past_the_keep_alive_timeout() -> None:
    body = bytes(20 * 65_536)
    with uvicorn_in_thread(answer_then_divert_app, http=QueuedBodyProtocol, timeout_keep_alive=1) as port, \
            connect(port) as client:
        client.sendall(request_head(len(body), 0))
        for start in range(0, len(body), 65_536):  # 2 s of body: past the 1 s keep-alive timeout
            client.sendall(body[start: start + 65_536])
            time.sleep(0.1)
        client.sendall(b"GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 2:
            chunk = client.recv(65_536)
            assert chunk, "the server closed the connection while the client was still sending its body"
            answers += chunk


class PausingTransport(asyncio.Transport):
    """As much of a transport as the protocol uses, recording whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass


def test_reads_of_any_size_take_no_more_than_the_turns_budget() -> None:
    async def scenario() -> int:
        async def idle_app(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(3600)

        config = uvicorn.Config(idle_app, lifespan="off")
        config.load()
        protocol = QueuedBodyProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        transport = PausingTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
        diverting = asyncio.create_task(protocol.cycle.divert_body(lambda data, start, end: None, 50_000_000))
        await asyncio.sleep(0)
        taken = 0
        while not transport.paused:  # one turn: the transport reads while reading is not paused
            size = min(900_000, len(protocol.get_buffer(-1)))  # a socket holding 900,000 bytes at each read
            protocol.buffer_updated(size)
            taken += size
        protocol.connection_lost(None)
        await diverting
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        return taken

    assert asyncio.run(scenario()) == DIVERTED_BYTES_PER_TURN


async def cancelling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Divert the body under a deadline that passes mid-body; then receive the rest. Answers what the sink got
    after the cancellation, and whether the whole body still arrived in order."""
    length = int(dict(scope["headers"])[b"content-length"])
    digest = hashlib.sha256()
    cancelled = False
    after_cancel = 0

    def sink(data: bytes | bytearray, start: int, end: int) -> None:
        nonlocal after_cancel
        after_cancel += (end - start) if cancelled else 0
        digest.update(data[start:end])

    try:
        async with asyncio.timeout(0.3):
            await scope["extensions"][BODY_DIVERT_EXTENSION](sink, length)
    except TimeoutError:
        cancelled = True
    more = True
    while more:
        message = await receive()
        digest.update(message.get("body", b""))
        more = message.get("more_body", False)
    answer = json.dumps({"digest": digest.hexdigest(), "after_cancel": after_cancel, "cancelled": cancelled})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer.encode()})


def test_a_cancelled_diversion_takes_no_more_reads_and_receive_gets_the_rest_in_order() -> None:
    body = random.Random(10).randbytes(40 * 65_536)
    with uvicorn_in_thread(cancelling_app, http=QueuedBodyProtocol) as port, connect(port) as client:
        client.sendall(request_head(len(body), 0))
        for start in range(0, len(body), 65_536):  # 0.8 s of body: the 0.3 s deadline passes mid-way
            client.sendall(body[start: start + 65_536])
            time.sleep(0.02)
        answer = read_answer(client, bytearray())
    assert answer["cancelled"] and answer["after_cancel"] == 0
    assert answer["digest"] == hashlib.sha256(body).hexdigest()
