"""Hostile config.json values the fuzzing hunt of session 18 found answered 500: each is now a 4xx naming its key.

The hunt (every key of the published configs in /work/shared/fixtures and tests/quant_core/data set to 0, -1,
10**30, NaN, booleans, lists, objects ...) sent each as ``POST /v1/plan`` with the config inline.  Every case here
was an unhandled exception (a 500) before its fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.quant_core.test_hf_config import LLAMA_8B

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data"


def _plan(client: TestClient, config: dict[str, Any], **extra: Any) -> Any:
    return client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "h100-80gb"},
                                         **extra})


def _problem_fields(response: Any, status: int = 422) -> list[str]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    return [error["field"] for error in response.json()["errors"]]


@pytest.mark.parametrize("kind", [[], ["yarn"], {}, {"a": 1}])
@pytest.mark.parametrize(("section", "key"), [("rope_scaling", "rope_type"), ("rope_scaling", "type"),
                                              ("rope_parameters", "rope_type")])
def test_a_rope_type_that_is_a_list_or_object_is_a_422_naming_it(client: TestClient, section: str, key: str,
                                                                   kind: object) -> None:
    # was a TypeError (unhashable) in hf_config._rope_cache_rows: a 500
    config = {**LLAMA_8B, section: {key: kind, "factor": 8.0, "original_max_position_embeddings": 8192}}
    fields = _problem_fields(_plan(client, config))
    assert fields == [f"model.hf_config.rope_scaling.{key}"]


@pytest.mark.parametrize("method", [[], ["gptq"], {}, {"gptq": 1}, 4, True])
def test_a_quant_method_that_is_not_a_string_is_a_422_naming_it(client: TestClient, method: object) -> None:
    # was a TypeError (unhashable) in schemes.scheme_from_quantization_config: a 500; then (session 18) planned
    # at nibble's INT4 with a note, as an unknown quant_method string is.  No real config has a list or object
    # there: it is a broken request, refused naming the field.
    config = {**LLAMA_8B, "quantization_config": {"quant_method": method, "bits": 4}}
    fields = _problem_fields(_plan(client, config))
    assert fields == ["model.hf_config.quantization_config.quant_method"]


def test_an_unknown_quant_method_string_gets_the_same_note(client: TestClient) -> None:
    config = {**LLAMA_8B, "quantization_config": {"quant_method": "hqq", "bits": 4}}
    response = _plan(client, config)
    assert response.status_code == 200
    assert any("quantization_config.quant_method" in note for note in response.json()["warnings"])


@pytest.mark.parametrize("image_size", [1, 14, 27])  # patch 14 x merge 2 = 28: less than one merged patch
def test_a_pixtral_image_smaller_than_one_merged_patch_is_a_422_naming_image_size(client: TestClient,
                                                                                    image_size: int) -> None:
    # was a ZeroDivisionError in engines/vllm.py pixtral_encoder_dummy (no embedding per image): a 500
    config = json.loads((DATA / "mistral3" / "mistral-small-3.1-24b-instruct-2503.json").read_text())
    config["vision_config"] = {**config["vision_config"], "image_size": image_size}
    fields = _problem_fields(_plan(client, config))
    assert fields == ["model.hf_config.vision_config.image_size"]


def test_a_pixtral_image_of_one_merged_patch_is_planned(client: TestClient) -> None:
    config = json.loads((DATA / "mistral3" / "mistral-small-3.1-24b-instruct-2503.json").read_text())
    config["vision_config"] = {**config["vision_config"], "image_size": 28}
    assert _plan(client, config).status_code == 200


@pytest.mark.parametrize("head_dim", [1, 3, 15])
def test_a_llama_head_no_vllm_attention_backend_runs_is_planned_as_refused_not_fitting(client: TestClient,
                                                                                        head_dim: int) -> None:
    # the fuzzing hunt: head_dim 3 answered 200 fits=true; vLLM's backends fall back to FlexAttention, whose
    # PyTorch kernel refuses heads below 16 elements
    response = _plan(client, {**LLAMA_8B, "head_dim": head_dim})
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert answer["fits"] is False
    assert f"heads of {head_dim} elements" in answer["refusal"]


@pytest.mark.parametrize("head_dim", [0, -1, 2.5, "8", True, 10**9])
def test_an_absurd_head_dim_is_a_422_naming_it(client: TestClient, head_dim: object) -> None:
    assert _problem_fields(_plan(client, {**LLAMA_8B, "head_dim": head_dim})) == ["model.hf_config.head_dim"]
