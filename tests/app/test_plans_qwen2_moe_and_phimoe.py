"""POST /v1/plan for the Qwen2-MoE and PhiMoE configs: planned exactly, and refused with a 422 naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

CONFIGS = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "hf_configs"


@pytest.mark.parametrize(("name", "total", "active"), [
    # transformers 5.23's meta-device counts (tests/quant_core/test_qwen2_moe_and_phimoe.py checks them live)
    ("qwen1.5-moe-a2.7b.json", 14_315_784_192, 2_689_173_504),
    ("qwen2-57b-a14b.json", 57_408_658_944, 14_249_270_784),
    ("phi-3.5-moe-instruct.json", 41_873_153_344, 6_640_999_744),
])
def test_a_qwen2_moe_or_phimoe_config_is_planned_with_every_parameter(client: TestClient, name: str, total: int,
                                                                       active: int) -> None:
    config = json.loads((CONFIGS / name).read_text())
    response = client.post("/v1/plan", json={"model": {"hf_config": config},
                                             "hardware": {"device": "h100-80gb", "count": 4}})
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    assert (parameters["total"], parameters["active_per_token"]) == (total, active)


def test_a_qwen2_moe_asking_for_sliding_windows_is_a_422_naming_the_key(client: TestClient) -> None:
    config = {**json.loads((CONFIGS / "qwen1.5-moe-a2.7b.json").read_text()), "use_sliding_window": True}
    response = client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "h100-80gb"}})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "model.hf_config.use_sliding_window"
