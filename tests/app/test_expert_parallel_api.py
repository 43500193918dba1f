"""runtime.expert_parallel on POST /v1/plan and ``nibble plan --expert-parallel`` (vLLM's --enable-expert-parallel,
data parallel 1; tests/quant_core/test_expert_parallel.py checks the figures)."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from app.cli import run

MINIMAX_TP8 = {"model": {"preset": "minimax-m2.5"}, "hardware": {"device": "h100-80gb", "count": 8},
               "workload": {"context_length": 8192, "concurrent_sequences": 1}}


def test_the_fp8_minimax_release_at_tp_8_plans_with_expert_parallelism_and_is_refused_without(
        client: TestClient) -> None:
    # as shipped (fp8 [128, 128] blocks): 1536 / 8 = 192-wide slices are refused, whole experts are not
    without = client.post("/v1/plan", json=MINIMAX_TP8)
    assert without.status_code == 200 and without.json()["fits"] is False
    placed = client.post("/v1/plan", json={**MINIMAX_TP8, "runtime": {"expert_parallel": True}})
    assert placed.status_code == 200, placed.text[:300]
    answer = placed.json()
    assert answer["fits"] is True
    assert any(note.startswith("Expert parallelism planned") and "32 each" in note for note in answer["warnings"])


@pytest.mark.parametrize(("body", "reason"), [
    ({"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb", "count": 2},
      "runtime": {"expert_parallel": True}}, "routed experts"),
    ({"model": {"preset": "qwen3-30b-a3b"}, "hardware": {"device": "h100-80gb", "count": 2},
      "runtime": {"engine": "generic", "expert_parallel": True}}, "generic engine"),
])
def test_expert_parallelism_for_a_dense_model_or_the_generic_engine_is_a_422_naming_the_field(
        client: TestClient, body: dict[str, object], reason: str) -> None:
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == ["runtime.expert_parallel"]
    assert reason in errors[0]["message"]


def test_the_cli_flag_reaches_the_plan() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = run(["plan", "--model", "minimax-m2.5", "--device", "h100-80gb", "--count", "8", "--context", "8k",
                  "--sequences", "1", "--expert-parallel", "--json"], out, err)
    assert status == 0, err.getvalue()
    assert any(note.startswith("Expert parallelism planned") for note in json.loads(out.getvalue())["warnings"])
