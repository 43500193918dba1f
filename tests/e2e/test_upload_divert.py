"""Uploads whose tensor data a real uvicorn reads straight into its spool (the body diversion).

Past a file's header, the bytes its header declares are read from the socket
into the spool without the multipart parser (app/uploads.py, app/http_protocol.py).
These tests check, over HTTP, that this gives the report an in-process run
gives, and the answers the parser would give to bodies that break the rules.
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
from quant_core.tensorio import write_safetensors
from tests.e2e.conftest import start_server
from tests.tensor_files import npy_bytes

BOUNDARY = "nibble-divert-test-7Hq2"
LIMITS = ReadLimits(4096, 1 << 28, 1 << 24)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with start_server() as base_url:
        yield base_url


def multipart(parts: list[tuple[str, bytes, bool]]) -> bytes:
    """A multipart/form-data body of (field, content, is_file) parts, in order, with `BOUNDARY`."""
    body = b""
    for name, content, is_file in parts:
        filename = f'; filename="{name}.bin"' if is_file else ""
        body += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n').encode()
        body += content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(base_url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/quantize", content=body, timeout=120,
                      headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def figures(report: dict[str, object]) -> list[tuple[object, ...]]:
    return [(t["name"], t["shape"], t["bytes"], t["quality"]) for t in report["tensors"]]  # type: ignore[index]


def test_a_large_npy_with_its_calibration_after_it_gets_the_in_process_report(server: str, tmp_path: Path) -> None:
    weights = np.random.default_rng(0).standard_normal((2048, 1024), dtype=np.float32)  # 8 MiB
    activations = np.random.default_rng(1).standard_normal((256, 1024), dtype=np.float32)
    answer = post(server, multipart([("method", b"rtn", False), ("file", npy_bytes(weights), True),
                                     ("calibration", npy_bytes(activations), True)]))
    assert answer.status_code == 200, answer.text
    (tmp_path / "w.npy").write_bytes(npy_bytes(weights))
    (tmp_path / "x.npy").write_bytes(npy_bytes(activations))
    local = quantize_file(QuantizeJob(tmp_path / "w.npy", "npy", tmp_path / "x.npy", ("rtn",), 128, False, None,
                                      LIMITS), "report", None)
    assert figures(answer.json()) == figures(local)


def test_a_safetensors_file_of_several_large_tensors_gets_the_in_process_report(server: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tensors = {"a.weight": rng.standard_normal((1024, 1024), dtype=np.float32),
               "b.weight": rng.standard_normal((512, 2048), dtype=np.float32).astype(np.float16),
               "norm": rng.standard_normal(1024, dtype=np.float32)}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, tensors)
    answer = post(server, multipart([("method", b"rtn", False), ("file", path.read_bytes(), True)]))
    assert answer.status_code == 200, answer.text
    local = quantize_file(QuantizeJob(path, "safetensors", None, ("rtn",), 128, False, None, LIMITS), "report", None)
    assert figures(answer.json()) == figures(local)
    assert [p["name"] for p in answer.json()["passthrough"]] == ["norm"]


def test_a_multipart_delimiter_inside_a_declared_file_past_its_first_mib_is_refused(server: str) -> None:
    raw = bytearray(np.random.default_rng(3).standard_normal((2048, 1024), dtype=np.float32).tobytes())
    delimiter = f"\r\n--{BOUNDARY}".encode()
    raw[3 << 20: (3 << 20) + len(delimiter)] = delimiter  # still a valid array: any 4 bytes are a float32
    weights = np.frombuffer(bytes(raw), dtype=np.float32).reshape(2048, 1024)
    answer = post(server, multipart([("method", b"rtn", False), ("file", npy_bytes(weights), True)]))
    assert answer.status_code == 422, answer.text
    assert "multipart boundary" in answer.json()["detail"]


def test_a_body_cut_off_in_the_diverted_stretch_leaves_the_server_serving_uploads(server: str) -> None:
    content = npy_bytes(np.random.default_rng(4).standard_normal((2048, 1024), dtype=np.float32))
    body = multipart([("method", b"rtn", False), ("file", content, True)])
    address = urlsplit(server)
    with socket.create_connection((address.hostname, address.port), timeout=20) as client:
        client.sendall(f"POST /v1/quantize HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
                       f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
        client.sendall(body[: 3 << 20])
        time.sleep(0.2)
    answer = post(server, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tensors"][0]["shape"] == [2048, 1024]


@pytest.mark.parametrize("short_by", [2, 40])
def test_a_file_a_few_bytes_shorter_than_its_header_is_refused_as_such(server: str, short_by: int) -> None:
    # the delimiter after the file then runs across the declared end, where the diverted stretch stops
    content = npy_bytes(np.random.default_rng(5).standard_normal((2048, 1024), dtype=np.float32))[:-short_by]
    answer = post(server, multipart([("file", content, True), ("method", b"rtn", False)]))
    assert answer.status_code == 422, answer.text
    assert "ends at a multipart boundary before the" in answer.json()["detail"]
