"""What one server process holds and answers at the connection level, under stock uvicorn (SECURITY.md).

nibble runs under ``uvicorn app.main:app`` with uvicorn's public options only
(``--limit-concurrency``, ``--timeout-keep-alive``, ``--backlog``, and under
``--http h11`` its head bound); these tests start such a server and talk raw
HTTP/1.1 to it, so the answers are what a client on the network gets.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

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
    """Stock uvicorn's h11 protocol with `nibble serve --http h11`'s head bound."""
    with start_server(uvicorn_options=("--http", "h11", "--h11-max-incomplete-event-size",
                                       str(SERVE_MAX_HEAD_BYTES))) as base_url:
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
