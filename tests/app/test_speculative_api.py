"""runtime.speculative on POST /v1/plan and ``nibble plan --speculative`` (vLLM's --speculative-config;
tests/quant_core/test_speculative_decoding.py checks the figures)."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from app.cli import run

DEEPSEEK_V3 = {"model": {"preset": "deepseek-v3"}, "hardware": {"device": "h200", "count": 8},
               "workload": {"context_length": 32768, "concurrent_sequences": 1}}
MLA_BYTES_PER_TOKEN = (512 + 64) * 2


def test_mtp_on_deepseek_v3_pools_one_more_mla_layer_and_says_what_it_planned(client: TestClient) -> None:
    plain = client.post("/v1/plan", json=DEEPSEEK_V3).json()
    response = client.post("/v1/plan", json={**DEEPSEEK_V3, "runtime": {
        "speculative": {"method": "mtp", "num_speculative_tokens": 1}}})
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert answer["engine"]["speculative"] == {"method": "mtp", "num_speculative_tokens": 1, "draft_layers": 1}
    assert plain["engine"]["speculative"] is None
    assert answer["kv_cache"]["bytes"] == 62 * MLA_BYTES_PER_TOKEN * 32768
    assert plain["kv_cache"]["bytes"] == 61 * MLA_BYTES_PER_TOKEN * 32768
    # the MTP layer's bytes on each rank (the model's weights figure stays the target's); 1,661,047,456 before its
    # router's correction bias was float32 (256 x 2 bytes more)
    assert answer["devices"][0]["weights_bytes"] - plain["devices"][0]["weights_bytes"] == 1_661_047_968
    assert answer["kv_cache"]["capacity_tokens"] < plain["kv_cache"]["capacity_tokens"]
    assert "rejection sampler" in answer["activation"]["basis"]


@pytest.mark.parametrize(("runtime", "field", "words"), [
    ({"speculative": {"method": "eagle3", "num_speculative_tokens": 2}}, "runtime.speculative.method",
     "draft model"),
    ({"speculative": {"method": "mtp", "num_speculative_tokens": 0}}, "runtime.speculative.num_speculative_tokens",
     "greater than or equal to 1"),
    ({"engine_version": "0.33", "speculative": {"method": "ngram", "num_speculative_tokens": 2}},
     "runtime.engine_version", "Model Runner V2"),
    ({"engine": "generic", "speculative": {"method": "ngram", "num_speculative_tokens": 2}}, "runtime.speculative",
     "generic engine"),
])
def test_what_is_not_planned_is_a_422_naming_the_field(client: TestClient, runtime: dict[str, object], field: str,
                                                        words: str) -> None:
    response = client.post("/v1/plan", json={**DEEPSEEK_V3, "runtime": runtime})
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == [field]
    assert words in errors[0]["message"]


def test_ngram_on_0_11_is_planned_and_mtp_on_0_11_is_a_422_naming_the_release(client: TestClient) -> None:
    # tests/quant_core/test_speculative_decoding.py derives 0.11's ngram figures by hand
    body = {"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb", "count": 1},
            "workload": {"context_length": 32768, "concurrent_sequences": 1}}
    response = client.post("/v1/plan", json={**body, "runtime": {
        "engine_version": "0.11", "speculative": {"method": "ngram", "num_speculative_tokens": 3}}})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["engine"]["speculative"] == {"method": "ngram", "num_speculative_tokens": 3,
                                                        "draft_layers": 0}
    assert "rejection sampler" in response.json()["activation"]["basis"]
    refused = client.post("/v1/plan", json={**DEEPSEEK_V3, "runtime": {
        "engine_version": "0.11", "speculative": {"method": "mtp", "num_speculative_tokens": 1}}})
    assert refused.status_code == 422
    assert [error["field"] for error in refused.json()["errors"]] == ["runtime.engine_version"]
    assert "EagleProposer" in refused.json()["errors"][0]["message"]


def test_mtp_for_a_model_without_mtp_layers_is_a_422(client: TestClient) -> None:
    body = {"model": {"preset": "qwen3-30b-a3b"}, "hardware": {"device": "h100-80gb", "count": 1},
            "runtime": {"speculative": {"method": "mtp", "num_speculative_tokens": 1}}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["runtime.speculative.method"]


def test_the_cli_flag_reaches_the_plan() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = run(["plan", "--model", "deepseek-v3", "--device", "h200", "--count", "8", "--context", "32k",
                  "--sequences", "1", "--speculative", "mtp:1", "--json"], out, err)
    assert status == 0, err.getvalue()
    assert json.loads(out.getvalue())["engine"]["speculative"]["draft_layers"] == 1


def test_a_malformed_cli_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["plan", "--model", "deepseek-v3", "--speculative", "mtp"], out, err) == 2
    assert "is not METHOD:K" in err.getvalue() + capsys.readouterr().err
