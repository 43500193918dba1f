"""GLM-4-0414, OLMo 2 / Olmo 3, Seed-OSS and SmolLM3 through the API: a pasted config is planned as the family it is
(not refused, not read as a plain llama), and their GGUF mixes are planned as llama-quantize writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data"


def config(family: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / family / f"{name}.json").read_text())
    return loaded


@pytest.mark.parametrize(("family", "name", "parameters"), [
    # transformers' own counts on the meta device (tests/quant_core/test_glm4.py, test_olmo.py, test_seed_oss.py,
    # test_smollm3.py)
    ("glm4", "GLM-4-32B-0414", 32_566_487_552),
    ("olmo", "Olmo-3-1025-7B", 7_298_011_136),
    ("seed_oss", "Seed-OSS-36B-Instruct", 36_151_104_512),
    ("smollm3", "SmolLM3-3B", 3_075_098_624),
])
def test_a_pasted_config_is_planned_as_its_family_with_no_unread_key(client: TestClient, family: str, name: str,
                                                                      parameters: int) -> None:
    body = {"model": {"hf_config": config(family, name)}, "hardware": {"device": "h100-80gb", "count": 2},
            "weights": {"format": "bf16"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["parameters"]["total"] == parameters
    assert answer["weights"]["bytes"] == 2 * parameters
    assert not any("were not used to size the model" in warning for warning in answer["warnings"])


def test_a_glm_4_gguf_mix_is_planned(client: TestClient) -> None:
    # llama.cpp's glm4 arch, recorded through llama-quantize (tests/quant_core/data/llama_quantize/recorded.json)
    body = {"model": {"preset": "glm-4-9b-0414"}, "hardware": {"device": "h100-80gb", "count": 1},
            "weights": {"format": "gguf-q4_k_m"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    assert 0 < response.json()["weights"]["bytes"] < 2 * 9_400_279_040 // 3


def test_an_olmo_config_vllm_would_not_build_is_422_naming_the_key(client: TestClient) -> None:
    body = {"model": {"hf_config": {**config("olmo", "OLMo-2-0425-1B"), "attention_bias": True}},
            "hardware": {"device": "h100-80gb", "count": 1}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"].endswith("attention_bias") for error in response.json()["errors"])
