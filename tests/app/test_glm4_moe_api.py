"""GLM-4.5 (``glm4_moe``) through the API: a pasted config is planned with its experts, its GGUF formats are a
422 naming the format, and inspect lists the safetensors formats with bytes and the GGUF ones with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "glm4_moe"


def glm(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


def test_a_pasted_glm_4_5_config_is_planned_with_its_experts(client: TestClient) -> None:
    body = {"model": {"hf_config": glm("GLM-4.5")}, "hardware": {"device": "h200", "count": 8},
            "weights": {"format": "bf16"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # 352,797,829,024 parameters (transformers' count + the 89 x 160 router-bias values, tests/quant_core/
    # test_glm4_moe.py): 705.6 GB at bf16, the MTP layer left out as vLLM leaves it out at load
    assert answer["parameters"]["total"] == 352_797_829_024
    assert answer["weights"]["bytes"] == 2 * 352_797_829_024 == 705_595_658_048
    assert answer["weights"]["by_role"]["expert"] == 2 * 89 * 160 * 3 * 5120 * 1536
    # vLLM's float32 routers, in the device weights; the one key not read is the MTP layer's count, which vLLM's
    # Glm4MoeForCausalLM does not load
    assert answer["warnings"] == [
        "vLLM allocates the MoE routers of a glm4_moe model in float32 (vllm/model_executor/models/glm4_moe.py: "
        "Glm4MoE's gate and its e_score_correction_bias in torch.float32), whatever the model's dtype: the device "
        "weights count them at 4 bytes an element, 0.14 GiB over the weights' format in all (whole on each of the 8 "
        "tensor-parallel rank(s), split by layer over pipeline stages).",
        "These config.json keys were not used to size the model (check the spelling of any that should be): "
        "num_nextn_predict_layers."]
    # per device: an eighth of the split roles and of the q/k/v biases (column-parallel, split with their rows: 8 KV
    # heads over 8 ranks), the norms whole, the routers whole at 4 bytes an element (88,476,925,568 with the biases
    # whole, before the placement audit)
    role = answer["weights"]["by_role"]
    split = sum(role[name] for name in ("embedding", "attention", "mlp", "expert", "lm_head"))
    assert answer["devices"][0]["weights_bytes"] == split // 8 + role["norm"] + role["bias"] // 8 \
        + 2 * role["router"] == 88_474_617_472


def test_a_glm_gguf_format_is_422_naming_the_format(client: TestClient) -> None:
    body = {"model": {"preset": "glm-4.5-air"}, "hardware": {"device": "h100-80gb", "count": 2},
            "weights": {"format": "gguf-q4_k_m"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "multi-token-prediction" in problem["detail"]
    assert any(error["field"].endswith("format") for error in problem["errors"])


def test_inspect_glm_sizes_the_safetensors_formats_and_says_why_not_gguf(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"preset": "glm-4.5-air"})
    assert response.status_code == 200, response.text
    rows = {row["format"]: row for row in response.json()["weight_bytes"]}
    assert rows["bf16"]["bytes"] == 2 * 106_852_251_264
    gguf = [row for name, row in rows.items() if name.startswith("gguf")]
    assert gguf and all(row["bytes"] is None and "multi-token-prediction" in row["error"] for row in gguf)
