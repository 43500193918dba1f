"""Upload spools reused across requests (app/spool.py), through a real uvicorn with its process pool.

Each upload's file part goes to an unnamed temp file that the next upload overwrites;
these tests check that a later, smaller or shorter upload is quantized from
its own bytes only, never from what an earlier upload left in the file.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from app.jobs import QuantizeJob, ReadLimits, quantize_file
from tests.e2e.conftest import start_server
from tests.tensor_files import npy_bytes

FIELDS = {"method": "rtn", "group_size": "128", "output": "report"}  # sent before the file: the job starts early


@pytest.fixture(scope="module")
def reusing_server() -> Iterator[str]:
    with start_server({"NIBBLE_SPOOL_KEEP_BYTES": str(64 << 20), "NIBBLE_POOL_WORKERS": "1"}) as base_url:
        yield base_url


def _post(base_url: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/quantize", data=FIELDS, files={"file": ("w.npy", content)}, timeout=120)


def _figures(report: dict[str, object]) -> list[tuple[object, ...]]:
    return [(t["name"], t["shape"], t["bytes"], t["quality"]) for t in report["tensors"]]  # type: ignore[index]


def _local_report(tmp_path: Path, content: bytes) -> dict[str, object]:
    path = tmp_path / "w.npy"
    path.write_bytes(content)
    job = QuantizeJob(path, "npy", None, ("rtn",), 128, False, None, ReadLimits(4096, 1 << 28, 1 << 24))
    return quantize_file(job, "report", None)


def test_a_smaller_upload_after_a_larger_one_is_quantized_from_its_own_bytes(reusing_server: str,
                                                                            tmp_path: Path) -> None:
    large = npy_bytes(np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32))
    small = npy_bytes(np.random.default_rng(2).standard_normal((256, 512), dtype=np.float32))
    for content in (large, small, large, small):
        answer = _post(reusing_server, content)
        assert answer.status_code == 200, answer.text
        assert _figures(answer.json()) == _figures(_local_report(tmp_path, content))


def test_an_upload_shorter_than_its_header_after_a_larger_one_is_refused(reusing_server: str) -> None:
    large = npy_bytes(np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32))
    assert _post(reusing_server, large).status_code == 200
    # the same header, half the data: the spool still held the whole earlier file when this one began
    short = large[: len(large) // 2]
    answer = _post(reusing_server, short)
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert _post(reusing_server, large).status_code == 200  # and the server goes on


def _kept_files(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("nibble_upload_spool_kept_files "):
            return float(line.split()[1])
    raise AssertionError("no nibble_upload_spool_kept_files in /metrics")


def test_an_upload_cut_off_midway_leaves_a_spool_that_the_next_uploads_overwrite_cleanly(
        reusing_server: str, tmp_path: Path) -> None:
    large = npy_bytes(np.random.default_rng(3).standard_normal((1024, 1024), dtype=np.float32))
    request = httpx.Request("POST", f"{reusing_server}/v1/quantize", data=FIELDS, files={"file": ("w.npy", large)})
    body = request.read()
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    address = urlsplit(reusing_server)
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(f"POST /v1/quantize HTTP/1.1\r\n{head}\r\n".encode() + body[: len(body) // 2])
        time.sleep(0.5)  # the server has spooled (and the early job read) half of it
    # the client is gone: the request ends, its spool is kept with half an upload in it
    deadline = time.monotonic() + 10
    while _kept_files(reusing_server) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _kept_files(reusing_server) >= 1
    small = npy_bytes(np.random.default_rng(4).standard_normal((128, 256), dtype=np.float32))
    for content in (small, large):
        answer = _post(reusing_server, content)
        assert answer.status_code == 200, answer.text
        assert _figures(answer.json()) == _figures(_local_report(tmp_path, content))
