"""POST /v1/plan with vLLM 0.33's own per-token-head KV caches (``kv_cache.dtype`` int8_per_token_head,
int4_per_token_head, fp8_per_token_head): planned at vLLM's page bytes under 0.33, a refusal under another release and
for fp8 below compute capability 8.9, a 422 with the generic engine or an MLA model
(`quant_core.engines.vllm_attention.per_token_head_backend`)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

H100 = {"device": "h100-80gb", "count": 1}


@pytest.mark.parametrize(("dtype", "bytes_per_token"), [
    # Llama-3.1-8B: 32 layers x 8 KV heads x (2 x 128 + 2 x 4) (int8), x (128 + 8) (int4): vLLM 0.33's
    # TritonAttentionBackend.customize_spec and AttentionSpec.page_size_bytes; fp8 (uint8 codes): int8's bytes, on an
    # H100 (9.0: from 8.9)
    ("int8_per_token_head", 67_584), ("int4_per_token_head", 34_816), ("fp8_per_token_head", 67_584),
])
def test_a_0_33_plan_takes_vllms_per_token_head_caches(client: TestClient, dtype: str, bytes_per_token: int) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"}, "hardware": H100,
                                             "runtime": {"engine_version": "0.33"}, "kv_cache": {"dtype": dtype}})
    assert response.status_code == 200
    body = response.json()
    assert body["kv_cache"]["dtype"] == dtype and body["kv_cache"]["bytes_per_token"] == bytes_per_token
    assert body["fits"] is True
    capacity, pool = body["kv_cache"]["capacity_tokens"], body["kv_cache"]["pool_bytes"]
    assert capacity == pool // (16 * bytes_per_token) * 16


def test_a_0_19_plan_refuses_them(client: TestClient) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"}, "hardware": H100,
                                             "runtime": {"engine_version": "0.19"},
                                             "kv_cache": {"dtype": "int8_per_token_head"}})
    assert response.status_code == 200
    body = response.json()
    assert body["fits"] is False and "--kv-cache-dtype has no int8_per_token_head" in body["refusal"]


def test_an_a100_plan_refuses_fp8_per_token_head_below_8_9(client: TestClient) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"},
                                             "hardware": {"device": "a100-80gb", "count": 1},
                                             "runtime": {"engine_version": "0.33"},
                                             "kv_cache": {"dtype": "fp8_per_token_head"}})
    assert response.status_code == 200
    body = response.json()
    assert body["fits"] is False and "SM89+" in body["refusal"] and "int8_per_token_head" in body["refusal"]


@pytest.mark.parametrize("dtype", ["int4_per_token_head", "fp8_per_token_head"])
@pytest.mark.parametrize(("model", "runtime"), [
    ("llama-3.1-8b", {"engine": "generic"}),  # only vLLM 0.33 runs them
    ("deepseek-v2-lite", {"engine_version": "0.33"}),  # no MLA backend lists them
])
def test_them_in_a_bad_place_is_422_problem_naming_the_field(client: TestClient, model: str,
                                                             runtime: dict[str, str], dtype: str) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": model}, "hardware": H100, "runtime": runtime,
                                             "kv_cache": {"dtype": dtype}})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "kv_cache.dtype" in [error["field"] for error in response.json()["errors"]]
