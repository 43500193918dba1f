"""What one server process holds and answers at the connection level, under stock uvicorn (SECURITY.md).

nibble runs under ``uvicorn app.main:app`` with uvicorn's public options only
(``--limit-concurrency``, ``--timeout-keep-alive``, ``--backlog``, under
``--http h11`` its head bound, and ``--loop app.connections:GuardedEventLoop``,
which bounds every request head in time and size and the open connections);
these tests start such a server and talk raw HTTP/1.1 to it, so the answers
are what a client on the network gets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.cli import SERVE_MAX_HEAD_BYTES
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.slow

PLAN_BODY = json.dumps({"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"}}).encode()


def connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one answer (with a Content-Length) on `connection`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        body += connection.recv(65536)
    return int(lines[0].split()[1]), headers, body


def closed_within(connection: socket.socket, seconds: float) -> bool:
    """Whether the server closes `connection` within `seconds` (whatever it sends first is read and dropped)."""
    connection.settimeout(seconds)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def plan_request(host: str, extra_headers: bytes = b"") -> bytes:
    return (b"POST /v1/plan HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (host.encode(), len(PLAN_BODY), extra_headers) + PLAN_BODY)


@pytest.fixture(scope="module")
def limited_server() -> Iterator[str]:
    """Stock uvicorn with a connection cap of 4, a 1 s keep-alive and a 1.5 s body idle limit."""
    with start_server({"NIBBLE_UPLOAD_IDLE_SECONDS": "1.5"},
                      uvicorn_options=("--limit-concurrency", "4", "--timeout-keep-alive", "1")) as base_url:
        yield base_url


def test_past_the_connection_cap_a_request_is_answered_503_until_a_connection_closes(limited_server: str) -> None:
    host = urlsplit(limited_server).netloc
    held = [connect(limited_server) for _ in range(3)]  # three open connections, one request each, kept alive
    try:
        for connection in held:
            connection.sendall(plan_request(host))
            assert read_answer(connection)[0] == 200
        with connect(limited_server) as fourth:  # uvicorn counts open connections, this one included
            fourth.sendall(plan_request(host))
            status, _, body = read_answer(fourth)
            assert status == 503 and b"Service Unavailable" in body
        held.pop().close()
        time.sleep(0.2)
        with connect(limited_server) as again:
            again.sendall(plan_request(host))
            assert read_answer(again)[0] == 200
    finally:
        for connection in held:
            connection.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(limited_server: str) -> None:
    with connect(limited_server) as connection:
        connection.sendall(plan_request(urlsplit(limited_server).netloc))
        assert read_answer(connection)[0] == 200
        started = time.monotonic()
        assert closed_within(connection, 10)
        assert time.monotonic() - started < 5


def test_a_json_body_that_stops_arriving_is_408_and_its_connection_closes(limited_server: str) -> None:
    # a head and half a body, then nothing: the request used to hold its task and connection for ever
    with connect(limited_server) as connection:
        head = plan_request(urlsplit(limited_server).netloc)
        connection.sendall(head[: len(head) - len(PLAN_BODY) // 2])
        started = time.monotonic()
        status, headers, body = read_answer(connection)
        assert status == 408 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["errors"][0]["field"] == "body"
        assert 1.5 - 0.05 <= time.monotonic() - started < 10
        assert headers["connection"] == "close" and closed_within(connection, 5)


def test_a_body_sent_slowly_but_steadily_is_answered(limited_server: str) -> None:
    with connect(limited_server) as connection:
        request = plan_request(urlsplit(limited_server).netloc)
        split = len(request) - len(PLAN_BODY)
        connection.sendall(request[:split])
        for start in range(split, len(request), 20):  # a piece every 0.5 s: each inside the 1.5 s idle limit
            time.sleep(0.5)
            connection.sendall(request[start: start + 20])
        assert read_answer(connection)[0] == 200


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"x-unknown , chunked"])
def test_a_transfer_coding_other_than_chunked_is_501(limited_server: str, coding: bytes) -> None:
    # RFC 9112 section 6.1: a server that does not understand a transfer coding answers 501
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PLAN_BODY), PLAN_BODY)
    with connect(limited_server) as connection:
        connection.sendall(b"POST /v1/plan HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: %s\r\n\r\n%s" % (coding, body))
        status, headers, answer = read_answer(connection)
    assert status == 501 and headers["content-type"] == "application/problem+json"
    assert json.loads(answer)["errors"][0]["field"] == "Transfer-Encoding"


def test_a_chunked_body_is_served(limited_server: str) -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PLAN_BODY), PLAN_BODY)
    with connect(limited_server) as connection:
        connection.sendall(b"POST /v1/plan HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert read_answer(connection)[0] == 200


@pytest.mark.parametrize("request_bytes", [b"NOT HTTP AT ALL\r\n\r\n",
                                           b"POST /v1/plan HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"],
                         ids=["garbage", "two content lengths"])
def test_a_request_that_is_not_http_is_400_and_its_connection_closes(limited_server: str,
                                                                     request_bytes: bytes) -> None:
    # answered by uvicorn itself, in plain text: no app sees such a request (SECURITY.md)
    with connect(limited_server) as connection:
        connection.sendall(request_bytes)
        status, headers, _ = read_answer(connection)
        assert status == 400 and headers["connection"] == "close"
        assert closed_within(connection, 5)


@pytest.fixture(scope="module")
def h11_server() -> Iterator[str]:
    """Stock uvicorn's h11 protocol with `nibble serve --http h11`'s head bound, on uvicorn's default loop (so
    that the bound is uvicorn's, not the guarded loop's)."""
    with start_server(uvicorn_options=("--http", "h11", "--h11-max-incomplete-event-size",
                                       str(SERVE_MAX_HEAD_BYTES)), guarded=False) as base_url:
        yield base_url


def test_under_h11_a_request_head_past_the_bound_is_refused_and_its_connection_closes(h11_server: str) -> None:
    with connect(h11_server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: ")
        try:
            for _ in range(2 * SERVE_MAX_HEAD_BYTES // 4096):
                connection.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while sending: the answer is already waiting
        status, headers, _ = read_answer(connection)
        assert status == 400 and headers["connection"] == "close"


def test_under_h11_a_head_within_the_bound_is_served(h11_server: str) -> None:
    with connect(h11_server) as connection:
        padding = b"X-Padding: " + b"a" * (SERVE_MAX_HEAD_BYTES // 2) + b"\r\n"
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + padding + b"\r\n")
        assert read_answer(connection)[0] == 200


# --- the guarded event loop: a deadline and a size for every request head, a cap on open connections --------------

HEAD_TIMEOUT_SECONDS = 1.5
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[str]:
    """The guarded loop with a 1.5 s head deadline and at most 6 open connections."""
    with start_server({"NIBBLE_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT_SECONDS),
                       "NIBBLE_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}) as base_url:
        yield base_url


def assert_refused(connection: socket.socket, status: int, field: str) -> None:
    """`connection` is answered `status` as a problem naming `field`, and closed."""
    answer_status, headers, body = read_answer(connection)
    assert answer_status == status and headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close" and json.loads(body)["errors"][0]["field"] == field
    assert closed_within(connection, 5)


def server_descriptors(base_url: str) -> int:
    """How many file descriptors the uvicorn process serving `base_url` holds (Linux /proc)."""
    port = str(urlsplit(base_url).port)
    for process in Path("/proc").iterdir():
        try:
            arguments = (process / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in arguments and port.encode() in arguments:
            return len(list((process / "fd").iterdir()))
    raise LookupError(f"no uvicorn process serves port {port}")


def test_a_connection_that_sends_nothing_is_answered_408_at_the_head_deadline(guarded_server: str) -> None:
    with connect(guarded_server) as connection:
        started = time.monotonic()
        assert_refused(connection, 408, "head")
        assert HEAD_TIMEOUT_SECONDS - 0.05 <= time.monotonic() - started < HEAD_TIMEOUT_SECONDS + 3


def test_a_head_trickled_a_byte_at_a_time_is_answered_408_at_the_head_deadline(guarded_server: str) -> None:
    # slowloris: each byte well inside any idle timeout, the head never done; it used to stay open for ever
    with connect(guarded_server) as connection:
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100:
                connection.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending: the answer is already waiting
        assert_refused(connection, 408, "head")
        assert time.monotonic() - started < HEAD_TIMEOUT_SECONDS + 3


def test_a_second_head_trickled_on_a_kept_alive_connection_is_answered_408(guarded_server: str) -> None:
    # a complete first request does not buy the connection a slow second head
    host = urlsplit(guarded_server).netloc
    with connect(guarded_server) as connection:
        connection.sendall(plan_request(host))
        assert read_answer(connection)[0] == 200
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\n" * 4:
                connection.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_refused(connection, 408, "head")
        assert time.monotonic() - started < HEAD_TIMEOUT_SECONDS + 3


def test_a_body_slower_than_the_head_deadline_is_answered(guarded_server: str) -> None:
    # the deadline is the head's: a body keeps the pace rules of upload_idle_seconds, not this one
    with connect(guarded_server) as connection:
        request = plan_request(urlsplit(guarded_server).netloc)
        split = len(request) - len(PLAN_BODY)
        connection.sendall(request[:split])
        for start in range(split, len(request), len(PLAN_BODY) // 4 + 1):
            time.sleep(0.75)  # four pieces: 3 s in all, twice the head deadline
            connection.sendall(request[start: start + len(PLAN_BODY) // 4 + 1])
        assert read_answer(connection)[0] == 200


def test_pipelined_requests_and_an_expected_continue_are_answered(guarded_server: str) -> None:
    host = urlsplit(guarded_server).netloc
    with connect(guarded_server) as connection:
        connection.sendall(plan_request(host) * 3)
        answers = connection.makefile("rb")  # buffered: one read may hold more than one answer
        statuses = []
        for _ in range(3):
            statuses.append(int(answers.readline().split()[1]))
            headers = dict(line.decode().lower().split(": ", 1) for line in iter(answers.readline, b"\r\n"))
            answers.read(int(headers["content-length"]))
        assert statuses == [200, 200, 200]
        request = plan_request(host, b"Expect: 100-continue\r\n")
        connection.sendall(request[: len(request) - len(PLAN_BODY)])
        time.sleep(HEAD_TIMEOUT_SECONDS + 0.5)  # the client waits for 100 Continue past the head deadline
        assert read_answer(connection)[0] == 100
        connection.sendall(PLAN_BODY)
        assert read_answer(connection)[0] == 200


@pytest.mark.parametrize("complete", [True, False], ids=["whole head", "head still arriving"])
def test_a_head_past_max_head_bytes_is_answered_431(guarded_server: str, complete: bool) -> None:
    # httptools, uvicorn's default parser, buffers a head of any size; the guarded loop bounds it
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * (SERVE_MAX_HEAD_BYTES + 1) + b"\r\n"
    with connect(guarded_server) as connection:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(head + (b"\r\n" if complete else b""))
        assert_refused(connection, 431, "head")


def test_a_head_within_max_head_bytes_is_served(guarded_server: str) -> None:
    padding = b"X-Padding: " + b"a" * (SERVE_MAX_HEAD_BYTES - 1024) + b"\r\n"
    with connect(guarded_server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + padding + b"\r\n")
        assert read_answer(connection)[0] == 200


def test_past_max_connections_a_new_connection_is_answered_503_until_one_closes(guarded_server: str) -> None:
    held = [connect(guarded_server) for _ in range(MAX_CONNECTIONS)]  # silent: no head yet
    try:
        time.sleep(0.2)
        with connect(guarded_server) as refused:
            status, headers, body = read_answer(refused)
            assert status == 503 and int(headers["retry-after"]) > 0
            assert json.loads(body)["errors"][0]["field"] == "connection"
        held.pop().close()
        time.sleep(0.2)
        with connect(guarded_server) as admitted:
            admitted.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_answer(admitted)[0] == 200
    finally:
        for connection in held:
            connection.close()


def test_silent_connections_never_pile_up_past_max_connections(guarded_server: str) -> None:
    # the probe's 20,200 slowloris connections reached the process's descriptor limit; now each is refused
    # past the cap or closed at its head deadline, and the process's descriptors stay bounded
    baseline = server_descriptors(guarded_server)
    opened = [connect(guarded_server) for _ in range(10 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        assert server_descriptors(guarded_server) <= baseline + MAX_CONNECTIONS
        time.sleep(HEAD_TIMEOUT_SECONDS + 1)
        assert server_descriptors(guarded_server) <= baseline
        for connection in opened:
            assert closed_within(connection, 5)
    finally:
        for connection in opened:
            connection.close()


def test_metrics_count_the_open_and_the_refused_connections(guarded_server: str) -> None:
    with connect(guarded_server) as connection:
        assert_refused(connection, 408, "head")
    metrics = httpx.get(f"{guarded_server}/metrics").text
    refused = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("nibble_connections_refused_total{")}
    assert refused["request-head-timeout"] >= 1
    open_now = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("nibble_connections_open ")]
    assert open_now and 1 <= open_now[0] <= MAX_CONNECTIONS  # the scrape's own connection at least
