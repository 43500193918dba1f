"""parallel.data on POST /v1/plan and /v1/plan/sweep and ``nibble plan --data`` (vLLM's --data-parallel-size;
tests/quant_core/test_data_parallel.py checks the figures from vLLM's code)."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from app.cli import run

LLAMA_8B = {"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb", "count": 4},
            "workload": {"context_length": 8192, "concurrent_sequences": 40}}


def test_data_parallel_4_answers_one_replicas_devices_and_the_deployments_sequences(client: TestClient) -> None:
    replica = client.post("/v1/plan", json={**LLAMA_8B, "hardware": {"device": "h100-80gb", "count": 1},
                                            "workload": {"context_length": 8192, "concurrent_sequences": 10}})
    four = client.post("/v1/plan", json={**LLAMA_8B, "parallel": {"data": 4}})
    assert replica.status_code == 200 and four.status_code == 200, four.text[:300]
    one, answer = replica.json(), four.json()
    assert answer["parallel"] == {"tensor": 1, "pipeline": 1, "data": 4}
    assert answer["workload"] == {"context_length": 8192, "concurrent_sequences": 40}
    assert answer["devices"] == one["devices"] and len(answer["devices"]) == 1
    assert answer["kv_cache"]["capacity_tokens"] == one["kv_cache"]["capacity_tokens"]
    assert answer["max_concurrent_sequences"] == 4 * one["max_concurrent_sequences"]
    assert answer["min_devices"] == 4 * one["min_devices"]
    assert answer["fits"] is True
    assert any(note.startswith("Data parallel 4: 4 replicas") for note in answer["warnings"])


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({**LLAMA_8B, "parallel": {"data": 0}}, "parallel.data", "[1, 1024]"),
    ({**LLAMA_8B, "parallel": {"data": "2"}}, "parallel.data", ""),
    ({**LLAMA_8B, "parallel": {"data": 3}}, "hardware.count", "data (3) x pipeline (1) = 3"),
    ({**LLAMA_8B, "parallel": {"data": 2, "tensor": 4}}, "parallel.tensor",
     "data (2) x tensor (4) x pipeline (1) must equal the device count (4)"),
    ({"model": {"preset": "deepseek-v3"}, "hardware": {"device": "h200", "count": 8}, "parallel": {"data": 8},
      "runtime": {"expert_parallel": True, "engine_version": "0.11"}}, "parallel.data", "32 of the 256 routed experts"),
])
def test_a_bad_data_degree_or_a_moe_model_at_data_parallel_is_a_422_naming_the_field(
        client: TestClient, body: dict[str, object], field: str, reason: str) -> None:
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [error["field"] for error in errors] == [field]
    assert reason in errors[0]["message"]


def test_deepseek_v3_at_data_8_with_expert_parallelism_is_planned_per_rank(client: TestClient) -> None:
    # vllm serve deepseek-ai/DeepSeek-V3 --data-parallel-size 8 --enable-expert-parallel on 8 H200s (vLLM 0.19):
    # each rank holds 32 of the 256 experts and the whole attention (tests/quant_core/test_moe_data_parallel.py
    # derives the figures), its own KV pool for its 64 / 8 sequences
    body = {"model": {"preset": "deepseek-v3"}, "hardware": {"device": "h200", "count": 8}, "parallel": {"data": 8},
            "runtime": {"expert_parallel": True, "engine_version": "0.19"},
            "workload": {"context_length": 8192, "concurrent_sequences": 64}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert answer["parallel"] == {"tensor": 1, "pipeline": 1, "data": 8}
    assert len(answer["devices"]) == 1 and answer["fits"] is True
    note = next(note for note in answer["warnings"] if note.startswith("Data parallel 8"))
    assert "32 of the 256 on the most loaded rank" in note and "65,536 rows" in note
    assert answer["max_concurrent_sequences"] % 8 == 0 and answer["min_devices"] == 8


def test_a_sweep_over_device_types_refuses_a_data_degree(client: TestClient) -> None:
    refused = client.post("/v1/plan/sweep", json={**LLAMA_8B, "parallel": {"data": 2},
                                                  "sweep": {"devices": ["h200"]}})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "parallel.data"


def test_a_sweep_over_device_counts_splits_each_count_into_replicas(client: TestClient) -> None:
    # at data 2, 2 devices are two tensor-1 replicas and 4 devices two tensor-2 replicas
    answer = client.post("/v1/plan/sweep", json={**LLAMA_8B, "parallel": {"data": 2},
                                                 "sweep": {"device_counts": [2, 4]}})
    assert answer.status_code == 200, answer.text[:300]
    rows = answer.json()["rows"]
    assert [row["device_count"] for row in rows] == [2, 4]
    odd = client.post("/v1/plan/sweep", json={**LLAMA_8B, "parallel": {"data": 2},
                                              "sweep": {"device_counts": [2, 3]}})
    assert odd.status_code == 422 and odd.json()["errors"][0]["field"] == "sweep.device_counts[1]"


def test_the_cli_flag_reaches_the_plan() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = run(["plan", "--model", "llama-3.1-8b", "--device", "h100-80gb", "--count", "4", "--context", "8k",
                  "--sequences", "40", "--data", "4", "--json"], out, err)
    assert status == 0, err.getvalue()
    assert json.loads(out.getvalue())["parallel"] == {"tensor": 1, "pipeline": 1, "data": 4}
    text = io.StringIO()
    assert run(["plan", "--model", "llama-3.1-8b", "--device", "h100-80gb", "--count", "4", "--data", "4"],
               text, err) == 0
    assert "tensor x pipeline = 1 x 1, data parallel 4 (devices: one replica's)" in text.getvalue()
