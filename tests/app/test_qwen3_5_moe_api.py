"""Qwen3.5-MoE (``qwen3_5_moe``) through the API: a pasted Qwen3.6-35B-A3B config (refused with a 422 before) is
planned with its fused experts, vision tower and hybrid KV cache; vLLM 0.11 (no Qwen3_5MoeForConditionalGeneration)
refuses it; inspect refuses no safetensors format and lists no GGUF size it cannot make exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "qwen3_5_moe"


def qwen3_6() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / "qwen3.6-35b-a3b.json").read_text())
    return config


def test_a_pasted_qwen3_6_35b_a3b_config_is_planned_with_its_experts(client: TestClient) -> None:
    body = {"model": {"hf_config": qwen3_6()}, "hardware": {"device": "h100-80gb", "count": 2},
            "weights": {"format": "bf16"}, "workload": {"context_length": 32768, "concurrent_sequences": 4}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # transformers 5.23's count for the config (tests/quant_core/test_qwen3_5_moe.py); every key read
    assert answer["parameters"]["total"] == 35_107_181_936
    assert answer["weights"]["by_role"]["expert"] == 2 * 40 * 256 * 3 * 2048 * 512
    assert answer["weights"]["by_role"]["vision"] == 2 * 446_571_248
    assert not any("not used to size" in warning for warning in answer["warnings"])
    assert any("Gated DeltaNet" in warning and "1056 tokens" in warning and "tensor parallel 2" in warning
               for warning in answer["warnings"])
    assert answer["fits"]


def test_vllm_0_11_refuses_qwen3_5_moe_and_gguf_is_refused_naming_the_format(client: TestClient) -> None:
    body = {"model": {"preset": "qwen3.6-35b-a3b"}, "hardware": {"device": "h100-80gb", "count": 1},
            "runtime": {"engine_version": "0.11"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    assert not response.json()["fits"] and "Qwen3.5-MoE" in response.json()["refusal"]
    body = {"model": {"preset": "qwen3.6-35b-a3b"}, "hardware": {"device": "h100-80gb", "count": 1},
            "weights": {"format": "gguf-q4_k_m"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "qwen35moe" in response.text and response.json()["errors"][0]["field"] == "format"
