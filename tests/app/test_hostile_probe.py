"""Repros from issue 17's hostile probe, each sent as the probe sent it, with the answer it must now get.

#4 GPTQ calibration that overflows the Hessian, and a job past its time
limit; #7 a nibble file declaring a tensor over the element limit, and a
dequantized download over the byte limit; #9 and #14 nibble metadata of the
wrong types; #15 the X-Nibble-Report header's size; #16 the Host header in a
trailing-slash redirect; and a 500 that closed the keep-alive connection.
Pool workers dying with their server (#17) are
tests/e2e/test_worker_lifetime.py and tests/app/test_pool_lifetime.py.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors

from app.main import create_app
from app.routers.quantizations import REPORT_HEADER_MAX_BYTES
from quant_core.single_file import EXPORT_REPORT_KEY
from tests.app.conftest import client_with, make_settings
from tests.tensor_files import npy_bytes
from tests.threaded_server import uvicorn_in_thread

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)


def _fields(response: Any) -> list[str]:
    return [error["field"] for error in response.json()["errors"]]


# --- #4: GPTQ with calibration values that overflow the Hessian; a job past the time limit


@pytest.mark.parametrize("fields_first", [True, False], ids=["fields before the file", "fields after the file"])
def test_gptq_calibration_of_1e30_is_a_422_naming_calibration_at_once(client: TestClient, weights: np.ndarray,
                                                                      fields_first: bool) -> None:
    # the probe: np.full((64, 128), 1e30) as calibration spun the dampening loop until the 300 s job limit
    calibration = np.full((64, 256), 1e30, dtype=np.float32)
    files = {"file": ("w.npy", npy_bytes(weights)), "calibration": ("c.npy", npy_bytes(calibration))}
    started = time.perf_counter()
    if fields_first:
        response = client.post("/v1/quantize", data={"method": "gptq"}, files=files)
    else:
        response = client.post("/v1/quantize", files={**files, "method": (None, "gptq")})
    seconds = time.perf_counter() - started
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert _fields(response) == ["calibration"]
    assert "overflows float32" in response.json()["detail"]
    assert seconds < 30, "a bound to catch the old spin, not a speed target"


def test_a_job_past_the_time_limit_answers_504_once_at_the_limit(
        weights: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # it was swallowed and the job run again from the start: 504 after twice the limit, two workers killed
    import app.routers.quantizations as route

    runs: list[str] = []

    def slow_job(*args: Any) -> Any:
        runs.append("quantize_file")
        time.sleep(3.0)  # far past the 0.5 s limit; a thread cannot be stopped, so it only ends later

    monkeypatch.setattr(route, "quantize_file", slow_job)
    with client_with(request_time_limit_seconds=0.5) as limited:
        started = time.perf_counter()
        response = limited.post("/v1/quantize", data={"method": "rtn"}, files={"file": ("w.npy", npy_bytes(weights))})
        seconds = time.perf_counter() - started
    assert response.status_code == 504 and response.headers["content-type"] == PROBLEM
    assert runs == ["quantize_file"]
    assert seconds < 2 * 0.5 + 0.5, f"answered after {seconds:.2f} s: the job ran twice"


# --- #7, #9, #14: /v1/dequantize of hostile nibble files


def _nibble_file(client: TestClient, weights: np.ndarray, change: Callable[[dict[str, Any]], None] | None = None
                 ) -> bytes:
    """A nibble file of `weights` (tensor ``weight``, rtn g128) whose description `change` edits."""
    content = client.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                          data={"output": "nibble"}).content
    if change is None:
        return content
    header_size = int.from_bytes(content[:8], "little")
    header = json.loads(content[8: 8 + header_size])
    descriptions = json.loads(header["__metadata__"]["nibble.tensors"])
    change(descriptions["weight"])
    header["__metadata__"]["nibble.tensors"] = json.dumps(descriptions)
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + content[8 + header_size:]


def test_a_nibble_file_declaring_536_million_elements_is_413_from_its_metadata(client: TestClient,
                                                                              weights: np.ndarray) -> None:
    # the probe's 256 MiB file declared 16384 x 32768 and got a 2.1 GB download; the limit is 256 Mi elements,
    # and a file of a few KiB declaring that shape is refused from its metadata alone
    content = _nibble_file(client, weights, lambda description: description.__setitem__("shape", [16384, 32768]))
    response = client.post("/v1/dequantize", files={"file": ("q.safetensors", content)})
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["value"], body["maximum"]) == (536_870_912, 256 * 2 ** 20)
    assert _fields(response) == ["file"]


@pytest.mark.parametrize(("dtype", "status"), [("float32", 413), ("float16", 200)])
def test_a_dequantized_download_is_bounded_by_the_upload_byte_limit(client: TestClient, weights: np.ndarray,
                                                                   dtype: str, status: int) -> None:
    # 64 x 256 comes back as 65,536 bytes of float32 or 32,768 of float16, from an 8.7 KB nibble file
    content = _nibble_file(client, weights)
    with client_with(max_upload_bytes=32768) as small:
        response = small.post("/v1/dequantize", files={"file": ("q.safetensors", content)}, data={"dtype": dtype})
    assert len(content) < 32768
    assert response.status_code == status, response.text
    if status == 413:
        body = response.json()
        assert (body["value"], body["maximum"]) == (65536, 32768)
        assert "max_upload_bytes" in body["limit"] and _fields(response) == ["file"]


@pytest.mark.parametrize(("where", "key", "value", "named"), [
    ("format", "group_size", 128.0, "format.group_size"),  # #9: passed the membership test, sliced with a float
    ("quality", "relative_error", 10 ** 400, "quality.relative_error"),  # #9: OverflowError, a 500
    ("format", "layout", "bogus", "format.layout"),  # #14: accepted, 200
    ("format", "pad", "no", "format.pad"),  # #14: accepted (a truthy string), 200
], ids=["group_size 128.0", "400-digit relative_error", "layout bogus", "pad no"])
def test_hostile_nibble_metadata_is_a_422_naming_the_field(client: TestClient, weights: np.ndarray, where: str,
                                                          key: str, value: object, named: str) -> None:
    content = _nibble_file(client, weights, lambda description: description[where].__setitem__(key, value))
    response = client.post("/v1/dequantize", files={"file": ("q.safetensors", content)})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert _fields(response) == ["file"]
    assert response.json()["detail"].startswith(f"{named} of quantized tensor 'weight'")


# --- #15: the X-Nibble-Report header's size


def _head_bytes(response: Any) -> int:
    """Bytes of the answer's header lines as sent (``name: value\\r\\n`` each)."""
    return sum(len(name) + 2 + len(value) + 2 for name, value in response.headers.raw)


@pytest.mark.parametrize("tensors", [
    {"model." + "a" * 70_000 + ".up_proj.weight": (64, 256)},  # one 70 KB tensor name
    {f"model.layers.{layer}.mlp.up_proj.weight": (8, 32) for layer in range(224)},  # 224 layers
], ids=["70 KB name", "224 layers"])
def test_the_report_header_stays_under_4_kib_and_the_file_holds_the_whole_report(
        client: TestClient, tensors: dict[str, tuple[int, int]]) -> None:
    rng = np.random.default_rng(3)
    payload = save_safetensors({name: rng.standard_normal(shape).astype(np.float32)
                                for name, shape in tensors.items()})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                           data={"output": "compressed-tensors", "group_size": "32"})
    assert response.status_code == 200, response.text
    value = response.headers["x-nibble-report"]
    print(f"\nX-Nibble-Report: {len(value)} bytes; the whole head {_head_bytes(response)} bytes")
    assert len(value) <= REPORT_HEADER_MAX_BYTES and _head_bytes(response) < 4096
    summary = json.loads(value)
    assert summary["truncated"] == ["quantization_config"] and "quantization_config" not in summary
    assert summary["quantized_tensors"] == len(tensors) and summary["file_bytes"] == len(response.content)
    header_size = int.from_bytes(response.content[:8], "little")
    metadata = json.loads(response.content[8: 8 + header_size])["__metadata__"]
    full = json.loads(metadata[summary["full_report"]])
    assert summary["full_report"] == EXPORT_REPORT_KEY
    (group,) = full["quantization_config"]["config_groups"].values()
    assert sorted(group["targets"]) == sorted(name.removesuffix(".weight") for name in tensors)


def test_a_report_header_that_fits_keeps_its_quantization_config(client: TestClient, weights: np.ndarray) -> None:
    payload = save_safetensors({"model.layers.0.mlp.up_proj.weight": weights})
    response = client.post("/v1/quantize", files={"file": ("m.safetensors", payload)},
                           data={"output": "compressed-tensors"})
    summary = json.loads(response.headers["x-nibble-report"])
    assert "truncated" not in summary
    assert summary["quantization_config"]["config_groups"]["group_0"]["targets"] == ["model.layers.0.mlp.up_proj"]


# --- #16: the Host header must not reach a Location


@pytest.mark.parametrize("path", ["/v1/devices/", "/v1/models/", "/healthz/"])
def test_a_trailing_slash_is_a_404_problem_not_a_redirect_to_the_clients_host(client: TestClient, path: str) -> None:
    # Starlette's redirect answered 307 with Location: http://evil.example/v1/devices
    response = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    assert "location" not in response.headers
    assert client.get(path.rstrip("/"), headers={"Host": "evil.example"}).status_code == 200


# --- a 500 closed the client's keep-alive connection (Starlette re-raises after answering; uvicorn then closes)


def _read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length from `connection`: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_500_is_a_problem_with_its_request_id_and_the_connection_serves_the_next_request() -> None:
    app = create_app(make_settings())

    @app.get("/v1/fault")
    async def fault() -> None:
        raise RuntimeError("an unforeseen fault")

    with uvicorn_in_thread(app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /v1/fault HTTP/1.1\r\nHost: nibble\r\n\r\n")
        status, headers, body = _read_answer(connection)
        assert status == 500 and headers["content-type"] == PROBLEM
        assert json.loads(body)["detail"] == "an unexpected error occurred; it has been logged"
        assert headers["x-request-id"]  # set by the outer middleware, which now sees the answer
        assert headers.get("connection") != "close"
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: nibble\r\n\r\n")
        status, _, body = _read_answer(connection)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


# --- twenty concurrent maximum sweeps held /healthz for seconds: large sweeps run one at a time, a few wait


LARGE_SWEEP = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb"},
               "sweep": {"context_lengths": [1024 * (i + 1) for i in range(64)],
                         "concurrent_sequences": list(range(1, 65)), "device_counts": [64]}}  # the maximum: 2^18


def test_large_sweeps_past_the_running_and_waiting_places_are_503_with_retry_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import app.routers.plans as route

    entered, release = threading.Event(), threading.Event()
    real_sweep_rows = route.sweep_rows

    def held_sweep_rows(*args: Any) -> Any:
        if len(args[0].sweep.context_lengths or []) == 64:  # the large one waits until released
            entered.set()
            assert release.wait(30)
        return real_sweep_rows(*args)

    monkeypatch.setattr(route, "sweep_rows", held_sweep_rows)
    answers: list[Any] = []
    with client_with(sweep_concurrency=1, sweep_queue=1, retry_after_seconds=9) as limited:
        first = threading.Thread(target=lambda: answers.append(limited.post("/v1/plan/sweep", json=LARGE_SWEEP)))
        first.start()
        assert entered.wait(30)
        entered.clear()
        waiting = threading.Thread(target=lambda: answers.append(limited.post("/v1/plan/sweep", json=LARGE_SWEEP)))
        waiting.start()
        deadline = time.monotonic() + 30
        while limited.app.state.sweep_gate.admitted < 2:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = limited.post("/v1/plan/sweep", json=LARGE_SWEEP)
        small = limited.post("/v1/plan/sweep", json={**LARGE_SWEEP, "sweep": {"context_lengths": [4096, 8192]}})
        # a sweep past max_sweep_rows is refused from its request, not after waiting for a place (a 503 when full)
        over = limited.post("/v1/plan/sweep", json={**LARGE_SWEEP, "sweep": {
            **LARGE_SWEEP["sweep"], "context_lengths": [1024 * (i + 1) for i in range(65)]}})
        release.set()
        first.join(60)
        waiting.join(60)
    assert refused.status_code == 503 and refused.headers["content-type"] == PROBLEM
    assert refused.headers["retry-after"] == "9"
    assert small.status_code == 200 and len(small.json()["rows"]) == 2  # a small sweep is not counted
    assert over.status_code == 413 and over.json()["limit"] == "max_sweep_rows"
    assert (over.json()["value"], over.json()["maximum"]) == (65 * 64, 4096)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(len(answer.json()["rows"]) == 4096 for answer in answers)
