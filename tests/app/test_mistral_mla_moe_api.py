"""Mistral Large 3 and Mistral Small 4 (``mistral3`` wrappers around an MLA + MoE language model) through the API: a
pasted config is a 422 problem naming ``text_config.model_type``, never a plan of a Mistral decoder (see
tests/quant_core/test_mistral3.py for why nibble does not plan them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.quant_core.test_mistral3 import MLA_MOE_TEXT

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "mistral3"


@pytest.mark.parametrize("text_type", ["deepseek_v3", "mistral4"])
def test_a_mistral3_config_around_an_mla_moe_text_model_is_a_422_naming_text_config_model_type(
        client: TestClient, text_type: str) -> None:
    wrapper = json.loads((DATA / "mistral-small-3.2-24b-instruct-2506.json").read_text())
    body = {"model": {"hf_config": {**wrapper, "text_config": {**MLA_MOE_TEXT, "model_type": text_type}}},
            "hardware": {"device": "h100-80gb", "count": 8}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"].endswith("text_config.model_type") for error in response.json()["errors"])
