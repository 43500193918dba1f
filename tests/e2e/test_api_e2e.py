"""The API over HTTP against a real uvicorn process (process pool, default settings)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize
from tests.tensor_files import load_safetensors, npy_bytes

PLAN_BODY = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
             "workload": {"context_length": 8192, "concurrent_sequences": 4}}


@pytest.fixture(scope="module")
def http(live_server: str) -> httpx.Client:
    with httpx.Client(base_url=live_server, timeout=60.0) as client:
        yield client  # type: ignore[misc]


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((128, 512)).astype(np.float32)


def test_healthz_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert "/v1/plan" in http.get("/openapi.json").json()["paths"]


def test_plan(http: httpx.Client) -> None:
    response = http.post("/v1/plan", json=PLAN_BODY)
    assert response.status_code == 200
    body = response.json()
    assert body["fits"] is True and len(body["devices"]) == 2
    assert body["kv_cache"]["bytes"] == 327_680 * 8192 * 4


def test_sweep(http: httpx.Client) -> None:
    response = http.post("/v1/plan/sweep", json={**PLAN_BODY, "sweep": {"context_lengths": [4096, 65536],
                                                                         "formats": ["bf16", "int4"]}})
    assert response.status_code == 200
    assert len(response.json()["rows"]) == 4


def test_inspect(http: httpx.Client) -> None:
    body = http.post("/v1/models/inspect", json={"preset": "deepseek-v3"}).json()
    assert body["parameters"]["total"] == 671_026_419_200


def test_problem_json_over_http(http: httpx.Client) -> None:
    response = http.post("/v1/plan", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_quantize_report(http: httpx.Client, weights: np.ndarray) -> None:
    response = http.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"method": "clip"})
    assert response.status_code == 200
    entry = response.json()["tensors"][0]
    assert entry["quality"]["relative_error"] == quantize(weights, int4(128), "clip").quality.relative_error


def test_compare(http: httpx.Client, weights: np.ndarray) -> None:
    response = http.post("/v1/quantize/compare", files={"file": ("w.npy", npy_bytes(weights))},
                         data={"methods": "rtn,hqq"})
    assert [r["method"] for r in response.json()["tensors"][0]["results"]] == ["rtn", "hqq"]


@pytest.mark.parametrize("method", ["rtn", "hqq", "refit"])
def test_dequantize_of_quantize_over_http_equals_quant_core_bit_for_bit(http: httpx.Client, weights: np.ndarray,
                                                                        method: str) -> None:
    quantized = http.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))},
                          data={"method": method, "output": "nibble"})
    assert quantized.status_code == 200
    report = json.loads(quantized.headers["x-nibble-report"])
    assert report["file_bytes"] == len(quantized.content)
    restored = http.post("/v1/dequantize", files={"file": ("q.safetensors", quantized.content)})
    assert restored.status_code == 200
    scheme = int4(128, zero="fp16") if method == "hqq" else int4(128)  # HQQ keeps its fp16 zero
    expected = dequantize(quantize(weights, scheme, method), np.float32)
    got = load_safetensors(restored.content)["weight"]
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(("output", "data"), [
    ("report", {}),
    ("nibble", {}),
    ("gptq", {}),
    ("awq", {}),
    ("compressed-tensors", {"symmetric": "true"}),
    ("gguf", {"group_size": "32", "symmetric": "true"}),
])
def test_quantize_each_output(http: httpx.Client, weights: np.ndarray, output: str, data: dict[str, str]) -> None:
    response = http.post("/v1/quantize", files={"file": ("w.npy", npy_bytes(weights))}, data={"output": output, **data})
    assert response.status_code == 200, response.text
    if output == "report":
        assert response.json()["tensors"][0]["bytes"]["output"] == response.json()["tensors"][0]["bytes"]["predicted"]
    else:
        assert json.loads(response.headers["x-nibble-report"])["file_bytes"] == len(response.content)
