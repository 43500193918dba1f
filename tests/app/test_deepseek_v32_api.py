"""DeepSeek-V3.2 (``deepseek_v32``) through the API: a pasted config is planned with its sparse-attention indexer and
its KV cache as vLLM sizes it; what nibble does not model (vLLM 0.33's indexer cache, GGUF files, an int8 KV cache)
is a 422 naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "deepseek_v32"


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / "DeepSeek-V3.2.json").read_text())
    return loaded


def test_a_pasted_deepseek_v32_config_is_planned_with_its_indexer_and_its_kv_cache(client: TestClient) -> None:
    body = {"model": {"hf_config": config()}, "hardware": {"device": "h200", "count": 8},
            "kv_cache": {"dtype": "fp8", "block_size": 64}, "runtime": {"engine_version": "0.19"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # transformers 5.23's DeepseekV32ForCausalLM (671,877,929,216) + 58 x 256 router-bias values
    assert answer["parameters"]["total"] == 671_877_944_064
    # 61 layers x (656-byte fp8_ds_mla latent + 132-byte indexer key) per token (tests/quant_core/test_deepseek_v32.py)
    assert answer["kv_cache"]["bytes_per_token"] == 48_068


def test_vllm_0_33_and_an_int8_kv_cache_are_422_naming_the_field(client: TestClient) -> None:
    base = {"model": {"preset": "deepseek-v3.2"}, "hardware": {"device": "h200", "count": 8}}
    for extra, field in (({"runtime": {"engine_version": "0.33"}}, "engine_version"),
                         ({"kv_cache": {"dtype": "int8"}}, "dtype"),
                         ({"weights": {"format": "gguf-q4_k_m"}}, "format")):
        response = client.post("/v1/plan", json={**base, **extra})
        assert response.status_code == 422, (extra, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert any(error["field"].endswith(field) for error in response.json()["errors"]), response.json()


def test_inspect_lists_the_kv_dtypes_vllm_can_cache_and_why_not_gguf(client: TestClient) -> None:
    for preset, layers in (("deepseek-v3.2", 61), ("glm-5.1", 78)):
        response = client.post("/v1/models/inspect", json={"preset": preset})
        assert response.status_code == 200, response.text
        answer = response.json()
        # no int8 / int4: vLLM's sparse MLA caches bf16, fp16 or DeepSeek's fp8_ds_mla only
        assert answer["kv_bytes_per_token"] == {"bf16": layers * 1284, "fp16": layers * 1284, "fp8": layers * 788}
        gguf = [row for row in answer["weight_bytes"] if row["format"].startswith("gguf")]
        assert gguf and all(row["bytes"] is None and "multi-token-prediction" in row["error"] for row in gguf)


def test_the_api_default_block_is_planned_at_vllms_64_and_an_explicit_32_is_422_naming_the_field(
        client: TestClient) -> None:
    # vLLM 0.19 sets a 64-token block for DeepSeek Sparse Attention when --block-size is not given
    # (FlashMLASparseBackend.get_supported_kernel_block_sizes: [64]) and refuses a size that is not a multiple of 64
    base = {"model": {"preset": "deepseek-v3.2"}, "hardware": {"device": "h200", "count": 8},
            "kv_cache": {"dtype": "fp8"}, "runtime": {"engine_version": "0.19"}}
    response = client.post("/v1/plan", json=base)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["kv_cache"]["block_size"] == 64
    assert answer["kv_cache"]["capacity_tokens"] % 64 == 0
    assert any("64-token KV blocks, not the requested 16" in warning for warning in answer["warnings"])
    refused = client.post("/v1/plan", json={**base, "kv_cache": {"dtype": "fp8", "block_size": 32}})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "block_size" in refused.text
