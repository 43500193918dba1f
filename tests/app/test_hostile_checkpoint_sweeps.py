"""Session 22's hostile probe of /v1/plan/sweep with checkpoint headers: each repro as the probe sent it.

A plan from checkpoint headers sums the checkpoint's rows (`quant_core.checkpoint_rows`: repeated
tensors fold into one, so DeepSeek-V3's 90,427 tensors are 37 rows) at every call; tensors of no module of
the model fold only when their names differ by numbers, so a header of 8,000 distinctly named tensors is
8,000 rows, and a 4,096-row sweep over it planned them 4,096 times: 18.5 s of CPU from a 986 KB JSON body
(a multipart form of 16 MiB headers: minutes), where the sweep limits bound a sweep to about 5 s; and a
plan from a JSON body of headers ran on the event loop.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import client_with, safetensors_header

PROBLEM = "application/problem+json"
LLAMA = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "tie_word_embeddings": False}
#: every module of LLAMA's inventory that `_check_coverage` asks for: the embedding, the lm_head, each layer
MODEL_TENSORS: dict[str, tuple[str, list[int], int]] = {
    "model.embed_tokens.weight": ("BF16", [1000, 256], 512_000), "lm_head.weight": ("BF16", [1000, 256], 512_000),
    **{f"model.layers.{layer}.self_attn.q_proj.weight": ("BF16", [256, 256], 131_072) for layer in range(2)},
}


def _headers_b64(unknown_tensors: int) -> str:
    """LLAMA's tensors and `unknown_tensors` of no module of it, each named apart (one checkpoint row each)."""
    tensors = {**MODEL_TENSORS, **{f"extra_{index}": ("BF16", [8, 8], 128) for index in range(unknown_tensors)}}
    return base64.b64encode(safetensors_header(tensors)).decode()


def _sweep(headers_b64: str, contexts: int, sequences: int) -> dict[str, Any]:
    return {"model": {"hf_config": LLAMA}, "hardware": {"device": "h100-80gb"},
            "checkpoint": {"headers": [{"file": "model.safetensors", "header_base64": headers_b64}]},
            "sweep": {"context_lengths": [1024 * (i + 1) for i in range(contexts)],
                      "concurrent_sequences": list(range(1, sequences + 1))}}


def test_a_maximum_sweep_over_8000_checkpoint_rows_is_413_naming_the_sweep_at_once(client: TestClient) -> None:
    # the probe: 200 after 18.5 s of CPU (4,096 plans of 4.5 ms, each summing the 8,003 rows)
    body = _sweep(_headers_b64(8000), 64, 64)
    started = time.perf_counter()
    response = client.post("/v1/plan/sweep", json=body)
    seconds = time.perf_counter() - started
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM, response.text[:300]
    problem = response.json()
    assert [error["field"] for error in problem["errors"]] == ["sweep"]
    assert problem["limit"] == "max_sweep_device_rows"
    # 4,096 rows of one device, each plan counted as ceil(8,003 / 32) = 251 devices more
    assert problem["value"] == 4096 * (1 + 251)
    assert "8003 checkpoint rows" in problem["detail"]
    assert seconds < 5, "a bound to catch the old 18 s, not a speed target"


def test_checkpoint_rows_count_toward_the_sweep_device_rows_limit() -> None:
    # 64 rows of one device; 1,003 rows count as ceil(1003 / 32) = 32 devices a plan: 64 x 33 = 2,112
    with client_with(max_sweep_device_rows=2111) as limited:
        refused = limited.post("/v1/plan/sweep", json=_sweep(_headers_b64(1000), 8, 8))
        assert refused.status_code == 413, refused.text[:300]
        assert (refused.json()["limit"], refused.json()["value"]) == ("max_sweep_device_rows", 2112)
    with client_with(max_sweep_device_rows=2112) as limited:
        assert limited.post("/v1/plan/sweep", json=_sweep(_headers_b64(1000), 8, 8)).status_code == 200


def test_a_checkpoint_that_folds_into_a_few_rows_costs_a_sweep_one_device_a_plan() -> None:
    # a real checkpoint's rows are tens (DeepSeek-V3: 37): these 3 count as one device, so 64 x (1 + 1) = 128
    with client_with(max_sweep_device_rows=128) as limited:
        response = limited.post("/v1/plan/sweep", json=_sweep(_headers_b64(0), 8, 8))
        assert response.status_code == 200, response.text[:300]
        assert len(response.json()["rows"]) == 64
    with client_with(max_sweep_device_rows=127) as limited:
        assert limited.post("/v1/plan/sweep", json=_sweep(_headers_b64(0), 8, 8)).status_code == 413


def test_a_sweeps_devices_axis_counts_its_plans_over_the_checkpoint_rows() -> None:
    # sweep.devices plans each device up to four times (one plan, then each format at its fewest devices)
    body = {**_sweep(_headers_b64(1000), 1, 1), "sweep": {"devices": ["h100-80gb", "l4"]}}
    with client_with(max_sweep_device_rows=1 + (1 + 2 * 4) * 32 - 1) as limited:
        refused = limited.post("/v1/plan/sweep", json=body)
        assert refused.status_code == 413, refused.text[:300]
        assert refused.json()["value"] == 1 + (1 + 2 * 4) * 32


def test_a_json_plan_from_checkpoint_headers_is_planned_off_the_event_loop(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # the probe: a 1 MiB JSON body of headers (9,000 tensors, or 4,096 files, or 50,000 GGUF metadata values) is
    # 0.1-0.25 s of decoding and folding, which ran on the event loop and held every other request meanwhile
    import app.routers.plans as route

    threads: list[str] = []
    plan_to_core = route.plan_to_core

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return plan_to_core(*args)

    monkeypatch.setattr(route, "plan_to_core", recorded)
    plain = {"model": {"hf_config": LLAMA}, "hardware": {"device": "h100-80gb"}}
    assert client.post("/v1/plan", json=plain).status_code == 200  # microseconds: on the event loop
    body = {**plain, "checkpoint": {"headers": [{"file": "model.safetensors", "header_base64": _headers_b64(9000)}]}}
    assert client.post("/v1/plan", json=body).status_code == 200
    assert len(threads) == 2 and threads[0] != threads[1], threads


def test_a_plan_of_more_layers_than_any_published_model_is_planned_off_the_event_loop(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # the probe: a 10 KB config of 4,096 layers, every other one dense (Qwen3-MoE's mlp_only_layers) or sliding
    # (Gemma 2's layer_types), is 0.07-0.25 s of planning the first time it is seen, on the event loop; the
    # catalog's deepest model has 126 layers
    import app.routers.plans as route

    threads: list[str] = []
    answer_plan_json = route.answer_plan_json

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return answer_plan_json(*args)

    monkeypatch.setattr(route, "answer_plan_json", recorded)
    for layers in (126, route.THREADED_PLAN_LAYERS + 1):
        config = {**LLAMA, "num_hidden_layers": layers}
        assert client.post("/v1/plan", json={"model": {"hf_config": config},
                                             "hardware": {"device": "h100-80gb"}}).status_code == 200
    assert len(threads) == 2 and threads[0] != threads[1], threads


def test_an_inspection_of_more_layers_than_any_published_model_is_made_off_the_event_loop(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # the probe: inspecting 4,096 layers (their inventory, its bytes per format) was 0.3-0.45 s on the event loop
    import app.routers.models as route

    threads: list[str] = []
    inspect_from_core = route.inspect_from_core

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return inspect_from_core(*args)

    monkeypatch.setattr(route, "inspect_from_core", recorded)
    for layers in (126, route.THREADED_PLAN_LAYERS + 1):
        response = client.post("/v1/models/inspect", json={"hf_config": {**LLAMA, "num_hidden_layers": layers}})
        assert response.status_code == 200, response.text[:300]
    assert len(threads) == 2 and threads[0] != threads[1], threads


def _pipeline_sweep(stages: int, devices: int, contexts: int, sequences: int) -> dict[str, Any]:
    return {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": devices},
            "parallel": {"pipeline": stages},
            "sweep": {"context_lengths": [1024 * (i + 1) for i in range(contexts)],
                      "concurrent_sequences": list(range(1, sequences + 1))}}


def test_a_maximum_sweep_over_64_pipeline_stages_is_413_naming_the_sweep_at_once(client: TestClient) -> None:
    # the probe: 4,096 rows of 64 devices is the sweep limit's maximum, 1.5 s of CPU when the 64 devices are one
    # tensor-parallel stage (planned once); as 64 pipeline stages each is planned apart: 7 s for Llama-3.1-70B's 80
    # layers, 16-19 s for a config of 4,096 layers, every other one dense or sliding
    started = time.perf_counter()
    response = client.post("/v1/plan/sweep", json=_pipeline_sweep(64, 64, 64, 64))
    seconds = time.perf_counter() - started
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM, response.text[:300]
    problem = response.json()
    assert [error["field"] for error in problem["errors"]] == ["sweep"]
    assert (problem["limit"], problem["value"]) == ("max_sweep_device_rows", 4096 * 64 * 4)
    assert "pipeline stage" in problem["detail"]
    assert seconds < 5, "a bound to catch the old 7 s, not a speed target"


def test_a_pipeline_stage_counts_as_four_devices_toward_the_sweep_device_rows_limit() -> None:
    # 16 rows of 8 devices in 8 stages: 16 x max(8, 4 x 8) = 512 device rows (128 before the stages were counted)
    with client_with(max_sweep_device_rows=511) as limited:
        refused = limited.post("/v1/plan/sweep", json=_pipeline_sweep(8, 8, 4, 4))
        assert refused.status_code == 413, refused.text[:300]
        assert refused.json()["value"] == 512
    with client_with(max_sweep_device_rows=512) as limited:
        assert limited.post("/v1/plan/sweep", json=_pipeline_sweep(8, 8, 4, 4)).status_code == 200
        # tensor parallelism alone counts each device once: 16 rows of 32 devices in one stage are 512
        assert limited.post("/v1/plan/sweep", json=_pipeline_sweep(1, 32, 4, 4)).status_code == 200
