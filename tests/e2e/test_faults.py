"""Faults against a real uvicorn (issue 6): a client killed mid-upload, SIGTERM mid-job, a full pool.

Each test starts its own server (`start_server`) with ``NIBBLE_TEMP_DIR`` set
to a fresh test directory, so "no temp file left behind" is checked by
listing that directory.  Clients that must stall or die at a chosen moment
talk raw HTTP/1.1 over a socket: a half-sent multipart body is exactly what a
killed or stalled uploader leaves the server with.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.slow

BOUNDARY = "nibble-fault-boundary"
SETTLE_SECONDS = 20.0
GRACEFUL_EXIT_CODES = (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled once it is done


def npy_bytes(rows: int, columns: int, seed: int = 0) -> bytes:
    """A float32 ``.npy`` file of standard normal values."""
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(seed).standard_normal((rows, columns), dtype=np.float32))
    return buffer.getvalue()


def multipart_body(file_content: bytes, fields: dict[str, str]) -> bytes:
    """A multipart/form-data body with text `fields` and `file_content` in field ``file``."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="w.npy"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + file_content + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def request_head(base_url: str, path: str, body_length: int) -> bytes:
    """The request line and headers of a multipart POST of `body_length` bytes."""
    host = urlsplit(base_url).netloc
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {body_length}\r\nConnection: close\r\n\r\n").encode()


def open_socket(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=60)


def read_response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the one answer on a ``Connection: close`` socket."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def wait_until(condition: Callable[[], bool], timeout_seconds: float = SETTLE_SECONDS) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def spooled_bytes(temp_dir: Path) -> int:
    """Bytes of upload parts currently spooled by the server in `temp_dir`."""
    return sum(path.stat().st_size for path in temp_dir.glob("nibble-upload-*/part-*") if path.exists())


def spool_files(temp_dir: Path) -> int:
    """Upload parts the server has opened in `temp_dir` (their first bytes may still wait for the writer thread)."""
    return sum(1 for _ in temp_dir.glob("nibble-upload-*/part-*"))


def server_process(base_url: str) -> psutil.Process:
    """The uvicorn child of this test process that serves `base_url`."""
    port = str(urlsplit(base_url).port)
    for child in psutil.Process().children():
        if port in child.cmdline():
            return child
    raise LookupError(f"no child process serves {base_url}")


@contextmanager
def server_in(temp_dir: Path, **settings: str) -> Iterator[str]:
    """A server spooling uploads to files in `temp_dir`, with `settings` (``NIBBLE_*`` without the prefix)."""
    env = {"NIBBLE_TEMP_DIR": str(temp_dir), **{f"NIBBLE_{k.upper()}": v for k, v in settings.items()}}
    with start_server(env) as base_url:
        yield base_url


def quantize_report(base_url: str, content: bytes, method: str = "rtn") -> httpx.Response:
    return httpx.post(f"{base_url}/v1/quantize", files={"file": ("w.npy", content)},
                      data={"method": method, "output": "report"}, timeout=120)


def test_client_killed_mid_upload_leaves_no_temp_file_and_server_keeps_serving(tmp_path: Path) -> None:
    content = npy_bytes(1024, 1024)  # 4 MiB
    body = multipart_body(content, {"method": "rtn", "output": "report"})
    with server_in(tmp_path) as base_url:
        script = (
            "import socket, sys, time\n"
            "host, port, head_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
            "data = sys.stdin.buffer.read()\n"
            "s = socket.create_connection((host, port))\n"
            "s.sendall(data[: head_len + len(data[head_len:]) // 2])\n"
            "print('sent', flush=True)\n"
            "time.sleep(600)\n"
        )
        head = request_head(base_url, "/v1/quantize", len(body))
        parts = urlsplit(base_url)
        client = subprocess.Popen([sys.executable, "-c", script, str(parts.hostname), str(parts.port), str(len(head))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(head + body)
        client.stdin.close()
        assert client.stdout.readline() == b"sent\n"
        assert wait_until(lambda: spool_files(tmp_path) > 0), "the upload never reached the temp dir"
        client.send_signal(signal.SIGKILL)
        client.wait()
        client.stdout.close()
        assert wait_until(lambda: not any(tmp_path.iterdir())), f"left behind: {sorted(tmp_path.rglob('*'))}"
        assert httpx.get(f"{base_url}/healthz", timeout=10).json() == {"status": "ok"}
        metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
        assert 'route="/v1/quantize",status="500"' not in metrics  # the client left: its doing, not a fault
        answer = quantize_report(base_url, content)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tensors"][0]["shape"] == [1024, 1024]
    assert not any(tmp_path.iterdir())


def _post_in_thread(base_url: str, path: str, content: bytes, fields: dict[str, str],
                    results: list[httpx.Response | Exception]) -> threading.Thread:
    def post() -> None:
        try:
            results.append(httpx.post(f"{base_url}{path}", files={"file": ("w.npy", content)}, data=fields,
                                      timeout=120))
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def _sigterm_during_job(temp_dir: Path, grace_seconds: int, methods: str, rows: int = 2048
                        ) -> tuple[httpx.Response | Exception, float, int]:
    """Start a compare job, SIGTERM the server once the upload is spooled; the answer, exit seconds, exit code."""
    content = npy_bytes(rows, 2048)  # 16 MiB at 2048 rows; hqq or refit on it take about a second each
    env = {"NIBBLE_TEMP_DIR": str(temp_dir),
           "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": str(grace_seconds)}
    with start_server(env) as base_url:
        server = server_process(base_url)
        results: list[httpx.Response | Exception] = []
        thread = _post_in_thread(base_url, "/v1/quantize/compare", content, {"methods": methods}, results)
        assert wait_until(lambda: spooled_bytes(temp_dir) >= len(content), 60), "the upload never completed"
        time.sleep(0.3)  # the job is on a worker now
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=grace_seconds + 30)
        exit_seconds = time.monotonic() - signalled
        thread.join(timeout=30)
    assert len(results) == 1
    return results[0], exit_seconds, code


def test_sigterm_during_a_job_lets_it_finish_within_the_grace_period(tmp_path: Path) -> None:
    answer, exit_seconds, code = _sigterm_during_job(tmp_path, grace_seconds=60, methods="hqq,refit")
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200, answer.text
    assert [r["method"] for r in answer.json()["tensors"][0]["results"]] == ["hqq", "refit"]
    assert code in GRACEFUL_EXIT_CODES
    assert exit_seconds < 60
    assert not any(tmp_path.iterdir()), f"left behind: {sorted(tmp_path.rglob('*'))}"


def test_sigterm_during_a_job_longer_than_the_grace_period_answers_503_and_cleans_up(tmp_path: Path) -> None:
    # a job of several seconds: hqq, refit and clip on 128 MiB, each method once
    answer, exit_seconds, code = _sigterm_during_job(tmp_path, grace_seconds=1, methods="hqq,refit,clip", rows=16384)
    assert isinstance(answer, httpx.Response), f"the client got no answer: {answer!r}"
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "Retry-After" in answer.headers
    assert code in GRACEFUL_EXIT_CODES
    assert exit_seconds < 1 + 10, "the server outlived its grace period by more than the worker stop time"
    assert not any(tmp_path.iterdir()), f"left behind: {sorted(tmp_path.rglob('*'))}"


def test_full_pool_answers_503_with_retry_after_then_recovers(tmp_path: Path) -> None:
    content = npy_bytes(256, 256)
    body = multipart_body(content, {"method": "rtn", "output": "report"})
    with server_in(tmp_path, pool_workers="1", pool_queue="0", retry_after_seconds="7") as base_url:
        stalled = open_socket(base_url)  # holds the only place: admitted, its upload half-sent
        head = request_head(base_url, "/v1/quantize", len(body))
        stalled.sendall(head + body[: len(body) // 2])
        assert wait_until(lambda: spool_files(tmp_path) > 0), "the stalled upload was never admitted"

        refused = quantize_report(base_url, content)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 503
        assert httpx.get(f"{base_url}/v1/models", timeout=10).status_code == 200  # the rest still answers

        stalled.sendall(body[len(body) // 2:])
        status, _, _ = read_response(stalled)
        stalled.close()
        assert status == 200
        recovered = quantize_report(base_url, content)
        assert recovered.status_code == 200, recovered.text
    assert not any(tmp_path.iterdir())


# 8 MiB: the stall comes mid-file, with the server's buffers and the socket's full
@pytest.mark.parametrize("shape", [(256, 256), (2048, 1024)])
def test_a_stalled_upload_is_refused_408_and_gives_its_place_back(tmp_path: Path, shape: tuple[int, int]) -> None:
    content = npy_bytes(*shape)
    body = multipart_body(content, {"method": "rtn", "output": "report"})
    with server_in(tmp_path, pool_workers="1", pool_queue="0", upload_idle_seconds="1.5") as base_url:
        stalled = open_socket(base_url)  # takes the only place, then sends nothing more
        stalled.sendall(request_head(base_url, "/v1/quantize", len(body)) + body[: len(body) // 2])
        last_sent = time.monotonic()
        assert wait_until(lambda: spool_files(tmp_path) > 0), "the stalled upload was never admitted"
        assert quantize_report(base_url, content).status_code == 503
        status, headers, answer = read_response(stalled)
        assert time.monotonic() - last_sent >= 1.5 - 0.05, "refused before the idle limit had passed"
        stalled.close()
        assert status == 408 and headers["content-type"] == "application/problem+json"
        assert b"no bytes for 1.5 s" in answer
        recovered = quantize_report(base_url, content)
        assert recovered.status_code == 200, recovered.text
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("shape", [(256, 256), (2048, 1024)])
def test_an_upload_that_pauses_within_the_idle_limit_again_and_again_is_answered(tmp_path: Path,
                                                                                 shape: tuple[int, int]) -> None:
    # five pieces 1 s apart: every pause is inside the 1.5 s idle limit, the whole upload well past it
    content = npy_bytes(*shape)
    body = multipart_body(content, {"method": "rtn", "output": "report"})
    pieces = [body[index * len(body) // 5: (index + 1) * len(body) // 5] for index in range(5)]
    with server_in(tmp_path, pool_workers="1", pool_queue="0", upload_idle_seconds="1.5") as base_url:
        pausing = open_socket(base_url)
        started = time.monotonic()
        pausing.sendall(request_head(base_url, "/v1/quantize", len(body)) + pieces[0])
        for piece in pieces[1:]:
            time.sleep(1.0)
            pausing.sendall(piece)
        status, _headers, answer = read_response(pausing)
        pausing.close()
        assert status == 200, answer[:300]
        assert time.monotonic() - started >= 4.0
    assert not any(tmp_path.iterdir())


def test_an_upload_trickled_slower_than_the_minimum_rate_is_refused_408(tmp_path: Path) -> None:
    # a byte every 0.3 s never pauses for the 1.5 s idle limit, but falls behind 1,000 bytes per second
    content = npy_bytes(256, 256)
    body = multipart_body(content, {"method": "rtn", "output": "report"})
    with server_in(tmp_path, pool_workers="1", pool_queue="0", upload_idle_seconds="1.5",
                   upload_min_bytes_per_second="1000") as base_url:
        trickling = open_socket(base_url)
        trickling.sendall(request_head(base_url, "/v1/quantize", len(body)) + body[:200])
        started = time.monotonic()
        for index in range(200, 260):
            time.sleep(0.3)
            try:
                trickling.sendall(body[index: index + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _headers, answer = read_response(trickling)
        trickling.close()
        assert status == 408 and b"slower than the 1000 bytes per second" in answer
        assert time.monotonic() - started < 15
        recovered = quantize_report(base_url, content)
        assert recovered.status_code == 200, recovered.text
    assert not any(tmp_path.iterdir())
