"""Qwen2.5-VL and Qwen3-VL through the API: a pasted config is planned with its vision tower (200, not the 422 an
unknown multimodal type gets), the tower's profiling activations named as not modelled, and a tensor-parallel
degree vLLM cannot split the tower over is refused in the plan's words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data"


def config(family: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / family / f"{name}.json").read_text())
    return loaded


def test_a_pasted_qwen2_5_vl_config_is_planned_with_its_vision_tower(client: TestClient) -> None:
    body = {"model": {"hf_config": config("qwen2_5_vl", "qwen2.5-vl-7b-instruct")},
            "hardware": {"device": "h100-80gb", "count": 1}, "weights": {"format": "bf16"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # transformers 5.23's Qwen2_5_VLForConditionalGeneration for this config: 8,292,166,656 parameters, 676,550,144
    # of them in the vision tower (tests/quant_core/test_qwen2_5_vl.py)
    assert answer["parameters"]["total"] == 8_292_166_656
    assert answer["weights"]["by_role"]["vision"] == 2 * 676_550_144
    assert any("profiling of it: 1 dummy video item(s) of 16384 tokens" in warning for warning in answer["warnings"])
    assert not any("not used to size the model" in warning for warning in answer["warnings"])


def test_a_qwen3_vl_preset_is_inspected_with_its_tower(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"preset": "qwen3-vl-2b-instruct"})
    assert response.status_code == 200, response.text
    rows = {row["format"]: row for row in response.json()["weight_bytes"]}
    assert rows["bf16"]["bytes"] == 2 * 2_127_532_032


def test_a_tensor_parallel_degree_the_tower_cannot_split_over_is_not_deployable(client: TestClient) -> None:
    # the 3B's vision MLP is 3,420 wide: vLLM's qwen2_5_vl.py cannot split it over 8 ranks
    body = {"model": {"preset": "qwen2.5-vl-3b-instruct"}, "hardware": {"device": "h100-80gb", "count": 8},
            "parallel": {"tensor": 8}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["refusal"] == ("vLLM refuses tensor parallel size 8: it does not divide the vision tower's "
                                          "MLP width (3420; vLLM splits the tower's layers over the ranks)")
