"""POST /v1/plan and /v1/plan/sweep: defaults, agreement with quant_core, and errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.routing import _keys_all_differ, refuse_duplicate_keys
from app.schemas.plans import PlanRequest, plan_from_core, plan_to_core, request_notes, speed_dict
from quant_core.catalog import list_presets
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import parameter_count
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import plan
from tests.app.conftest import FIXTURES, client_with, safetensors_header

BODY_70B: dict[str, Any] = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2}}


def test_plan_defaults_int4_g128_and_bf16_kv(client: TestClient) -> None:
    response = client.post("/v1/plan", json=BODY_70B)
    assert response.status_code == 200
    body = response.json()
    assert body["weights"]["format"] == "int4-g128-asym"
    assert body["kv_cache"]["dtype"] == "bf16"
    assert body["workload"] == {"context_length": 4096, "concurrent_sequences": 1}
    assert body["parallel"] == {"tensor": 2, "pipeline": 1, "data": 1}
    assert body["memory_utilization"] == 0.9
    assert set(body["comparison"]) == {"bf16", "int4"}
    assert len(body["devices"]) == 2
    assert body["activation"]["basis"] and body["runtime_overhead"]["basis"]


def test_plan_device_terms_add_up(client: TestClient) -> None:
    body = client.post("/v1/plan", json=BODY_70B).json()
    for device in body["devices"]:
        parts = device["weights_bytes"] + device["kv_cache_bytes"] + device["activation_bytes"] \
            + device["overhead_bytes"]
        assert device["used_bytes"] == parts
        assert device["headroom_bytes"] == device["usable_bytes"] - device["used_bytes"]
        # H100 80GB as CUDA reports it (79.11 GiB, vllm#27508, the smallest public total), 90 % usable, floored.
        assert device["usable_bytes"] == int(round(79.11 * 2**30) * 0.9)


def test_plan_70b_on_one_h100_fits_only_at_int4(client: TestClient) -> None:
    body = client.post("/v1/plan", json={**BODY_70B, "hardware": {"device": "h100-80gb", "count": 1}}).json()
    assert body["comparison"]["int4"]["fits"] is True
    assert body["comparison"]["bf16"]["fits"] is False
    assert body["warnings"]


def test_plan_kv_cache_is_the_same_at_bf16_and_int4(client: TestClient) -> None:
    body = client.post("/v1/plan", json={**BODY_70B, "workload": {"context_length": 32768,
                                                                   "concurrent_sequences": 8}}).json()
    assert body["comparison"]["bf16"]["kv_cache_bytes"] == body["comparison"]["int4"]["kv_cache_bytes"]
    # Llama-3.1-70B at bf16: 2 x 80 layers x 8 KV heads x 128 x 2 B = 327,680 bytes per token.
    assert body["kv_cache"]["bytes_per_token"] == 327_680
    assert body["kv_cache"]["bytes"] == 327_680 * 32768 * 8


def test_plan_raw_memory_bytes_hardware(client: TestClient) -> None:
    body = client.post("/v1/plan", json={"model": {"preset": "qwen2.5-0.5b"},
                                         "hardware": {"memory_bytes": 8 * 2**30}}).json()
    assert body["hardware"]["capacity_bytes"] == 8 * 2**30
    assert body["hardware"]["device"] is None
    # vLLM 0.19 captures Qwen2.5-0.5B's CUDA graphs (386 MiB + 24 layers x 19 MiB = 0.82 GiB) after sizing its KV
    # cache, beside the 0.51 GiB in use at start-up, from the 0.80 GiB a 0.9 budget leaves free on 8 GiB: it does not
    # fit, and says why.  A device given in bytes may run the 16-bit cache on FLASHINFER (compute capability 7.5),
    # whose 394 MiB workspace its builder allocates after the KV cache too (flashinfer.py _get_workspace_buffer): the
    # most any capability's attention buffers take (7.0's TRITON_ATTN decode scratch, 3,784,704 bytes, was charged
    # before, 1.34 GiB in all; FlashInfer's workspace nowhere): 1.72 GiB.  0.78 (1.76 GiB free) holds them all, and
    # without graphs 0.88 holds the start-up memory and the workspace (0.8 and 0.9 did before)
    assert body["fits"] is False
    assert body["devices"][0]["outside_budget_bytes"] == (842 + 523 + 394) * 2**20
    assert any(w.startswith("Does not fit") and "1.72 GiB" in w and "0.80 GiB" in w for w in body["warnings"])
    for runtime in ({"memory_utilization": 0.78}, {"enforce_eager": True, "memory_utilization": 0.88}):
        fixed = client.post("/v1/plan", json={"model": {"preset": "qwen2.5-0.5b"}, "runtime": runtime,
                                              "hardware": {"memory_bytes": 8 * 2**30}}).json()
        assert fixed["fits"] is True, runtime


@pytest.mark.parametrize("content", [b'{"model": ', b"not json", b'{"model": {"preset": "gpt2"},}'])
def test_malformed_json_is_400_problem(client: TestClient, content: bytes) -> None:
    response = client.post("/v1/plan", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "body"


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests arrays or objects too deeply"),
    (b'{"hardware": {"count": ' + b"9" * 5000 + b"}}", "an integer with too many digits"),
    (b'{"model": "\xff\xfe"}', "not UTF-8 text"),
])
@pytest.mark.parametrize("path", ["/v1/plan", "/v1/models/inspect"])
def test_an_undecodable_body_is_400_saying_why(client: TestClient, content: bytes, reason: str, path: str) -> None:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["field"] == "body" and reason in error["message"]


@pytest.mark.parametrize("path", ["/v1/plan", "/v1/plan/sweep", "/v1/models/inspect"])
def test_json_sent_as_another_media_type_is_415(client: TestClient, path: str) -> None:
    response = client.post(path, content=json.dumps({**BODY_70B, "sweep": {}} if "sweep" in path else BODY_70B),
                           headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["errors"][0]["field"] == "Content-Type"


@pytest.mark.parametrize(("path", "content", "field"), [
    ("/v1/plan", b'{"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb"},'
                 b' "workload": {"context_length": -1, "context_length": 4096}}', "workload.context_length"),
    ("/v1/plan/sweep", b'{"model": {"preset": "llama-3.1-70b"}, "model": {"preset": "llama-3.1-8b"},'
                       b' "hardware": {"device": "h100-80gb"}, "sweep": {}}', "model"),
    ("/v1/models/inspect", b'{"preset": "llama-3.1-8b", "preset": "qwen3-8b"}', "preset"),
    ("/v1/plan", b'\xef\xbb\xbf{"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"},'
                 b' "hardware": {"device": "h100-80gb", "count": 8}}', "hardware"),  # a BOM: only the slow parser
    ("/v1/plan", b'{"model": {"hf_config": {"architectures": ["A", {"x": 1, "x": 2}]}},'
                 b' "hardware": {"device": "h100-80gb"}}', "model.hf_config.architectures[1].x"),
    # the byte scan that spares most bodies the second parse (`routing._keys_all_differ`) must not pass these:
    # the same key escaped, spaced before its colon, or after a value string that holds '":'
    ("/v1/plan", b'{"model": {"preset": "llama-3.1-8b", "pres\\u0065t": "qwen3-8b"},'
                 b' "hardware": {"device": "h100-80gb"}}', "model.preset"),
    ("/v1/plan", b'{"model": {"preset": "llama-3.1-8b"}, "hardware" \n\t: {"device": "h100-80gb"},'
                 b' "hardware":{"device": "t4"}}', "hardware"),
    ("/v1/plan", b'{"model": {"preset": ": a", "preset": "llama-3.1-8b"}, "hardware": {"device": "t4"}}',
     "model.preset"),
])
def test_a_key_sent_twice_in_one_object_is_422_naming_its_path(client: TestClient, path: str, content: bytes,
                                                               field: str) -> None:
    # JSON parsers keep one of the two values without a word; which one was meant is not ours to guess
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert "appears twice" in error["message"] and error["field"] == field


def test_the_same_key_in_two_objects_is_no_repeated_key() -> None:
    # the byte scan finds "x" twice in the document and leaves the answer to the parse, which accepts it
    assert not _keys_all_differ(b'{"a": {"x": 1}, "b": {"x": 2}}')
    refuse_duplicate_keys(b'{"a": {"x": 1}, "b": {"x": 2}}')
    assert _keys_all_differ(b'{"a": {"x": ":"}, "b" : {"y": "x"}}')
    assert not _keys_all_differ(b'{"a": 1, "a" :2}')


def test_missing_hardware_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": "gpt2"}})
    assert response.status_code == 422
    assert "hardware" in [e["field"] for e in response.json()["errors"]]


def test_unknown_preset_lists_close_names(client: TestClient) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "model": {"preset": "llama-3.1-7b"}})
    assert response.status_code == 422
    body = response.json()
    assert "llama-3.1-70b" in body["close"]
    assert body["errors"][0]["field"] == "model.preset"


def test_unknown_device_lists_close_names(client: TestClient) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "hardware": {"device": "h10-80gb"}})
    assert response.status_code == 422
    body = response.json()
    assert "h100-80gb" in body["close"]
    assert body["errors"][0]["field"] == "hardware.device"


def test_config_missing_a_key_names_it(client: TestClient) -> None:
    config = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32}
    response = client.post("/v1/plan", json={**BODY_70B, "model": {"hf_config": config}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("model.hf_config.")


@pytest.mark.parametrize(("patch", "field"), [
    ({"workload": {"context_length": -1}}, "workload.context_length"),
    ({"workload": {"concurrent_sequences": 0}}, "workload.concurrent_sequences"),
    ({"hardware": {"memory_bytes": -5}}, "hardware.memory_bytes"),
    ({"hardware": {"device": "h100-80gb", "count": -2}}, "hardware.count"),
    ({"runtime": {"memory_utilization": 1.5}}, "runtime.memory_utilization"),
    ({"runtime": {"overhead_bytes": 10**30}}, "runtime.overhead_bytes"),
    ({"runtime": {"activation_bytes": 2**51}}, "runtime.activation_bytes"),
])
def test_negative_or_out_of_range_values_name_the_field(client: TestClient, patch: dict[str, Any],
                                                        field: str) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, **patch})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize(("patch", "field"), [
    ({"workload": {"context_length": True}}, "workload.context_length"),
    ({"hardware": {"device": "h100-80gb", "count": True}}, "hardware.count"),
    ({"weights": {"symmetric": 1}}, "weights.symmetric"),
    ({"workload": {"concurrent_sequences": "4"}}, "workload.concurrent_sequences"),
    ({"model": {"spec": {"hidden_size": 4096, "num_layers": True, "num_attention_heads": 32,
                         "intermediate_size": 11008, "vocab_size": 32000}}}, "model.spec.num_layers"),
])
def test_values_of_another_json_type_are_refused_not_converted(client: TestClient, patch: dict[str, Any],
                                                               field: str) -> None:
    # true is not the integer 1, nor "4" the number 4: converting them would change what the user sent
    response = client.post("/v1/plan", json={**BODY_70B, **patch})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize(("patch", "field"), [
    ({"weights": {"format": "bf16", "group_size": 64}}, "weights.group_size"),
    ({"weights": {"format": "fp16", "symmetric": True}}, "weights.symmetric"),
    ({"weights": {"format": "int8", "symmetric": False}}, "weights.symmetric"),
    ({"weights": {"format": "int4", "symmetric": True, "zero": "fp16"}}, "weights.zero"),
    ({"weights": {"format": "bf16", "pad": True}}, "weights.pad"),
])
def test_a_value_the_plan_would_not_use_is_refused_not_dropped(client: TestClient, patch: dict[str, Any],
                                                               field: str) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, **patch})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


def test_int4_settings_on_a_16_bit_sweep_with_int4_rows_are_used(client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "weights": {"format": "bf16", "group_size": 64},
                                                   "sweep": {"formats": ["bf16", "int4"]}})
    assert response.status_code == 200
    assert [row["format"] for row in response.json()["rows"]] == ["bf16", "int4-g64-asym"]


@pytest.mark.parametrize(("sweep", "field"), [
    ({"context_lengths": [1024, -5]}, "sweep.context_lengths[1]"),
    ({"device_counts": [1, 0]}, "sweep.device_counts[1]"),
    ({"concurrent_sequences": [0, 2]}, "sweep.concurrent_sequences[0]"),
    ({"context_lengths": []}, "sweep.context_lengths"),  # was the request's own context, silently
])
def test_a_bad_swept_value_is_named_where_it_was_written(client: TestClient, sweep: dict[str, Any],
                                                         field: str) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "sweep": sweep})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


def test_a_sweep_over_device_counts_refuses_an_explicit_tensor_degree(client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "parallel": {"tensor": 2},
                                                   "sweep": {"device_counts": [2, 4]}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "parallel.tensor"


def test_a_model_the_default_group_size_does_not_divide_is_planned_and_told_which_sizes_do(
        client: TestClient) -> None:
    body = {**BODY_70B, "model": {"preset": "gpt-oss-20b"}, "weights": {"format": "int4"}}  # 2880 wide
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["weights"]["format"] == "int4-g128-asym-partial"
    (note,) = [w for w in answer["warnings"] if "partial last group" in w]
    assert "2880" in note and "group sizes that divide every quantized tensor: 32, 64" in note
    for fix, label in (({"group_size": 64}, "int4-g64-asym"), ({"pad": True}, "int4-g128-asym-padded")):
        fixed = client.post("/v1/plan", json={**body, "weights": fix}).json()
        assert fixed["weights"]["format"] == label
        assert not any("partial last group" in w for w in fixed["warnings"])


def test_group_size_that_is_not_allowed_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "weights": {"group_size": 100}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "weights.group_size"


def test_group_size_that_does_not_divide_a_custom_width_is_planned_with_a_partial_last_group(
        client: TestClient) -> None:
    spec = {"hidden_size": 4032, "num_layers": 2, "num_attention_heads": 32, "intermediate_size": 8192,
            "vocab_size": 1000}  # 4032 = 31.5 x 128
    response = client.post("/v1/plan", json={"model": {"spec": spec}, "hardware": {"device": "l4"}})
    assert response.status_code == 200
    assert any("4032" in w and "group_size 128" in w for w in response.json()["warnings"])


def test_sweep_rows_are_the_product_of_the_axes(client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {
        "context_lengths": [4096, 131072], "formats": ["bf16", "int4"], "device_counts": [1, 2, 4]}})
    assert response.status_code == 200
    rows = response.json()["rows"]
    assert len(rows) == 12
    by_key = {(r["device_count"], r["format"], r["context_length"]): r for r in rows}
    assert by_key[(1, "bf16", 4096)]["fits"] is False
    assert by_key[(2, "int4-g128-asym", 4096)]["fits"] is True
    assert by_key[(4, "bf16", 4096)]["kv_cache_bytes"] == by_key[(4, "int4-g128-asym", 4096)]["kv_cache_bytes"]


def test_sweep_row_matches_the_plan_endpoint(client: TestClient) -> None:
    plan = client.post("/v1/plan", json={**BODY_70B, "workload": {"context_length": 8192}}).json()
    rows = client.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {"context_lengths": [8192]}}).json()["rows"]
    assert rows[0]["used_bytes"] == sum(d["used_bytes"] for d in plan["devices"])
    assert rows[0]["fits"] == plan["fits"]


def test_sweep_over_the_row_limit_is_413() -> None:
    with client_with(max_sweep_rows=3) as small:
        response = small.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {"context_lengths": [1, 2, 3, 4]}})
    assert response.status_code == 413
    assert (response.json()["limit"], response.json()["value"]) == ("max_sweep_rows", 4)


def test_sweep_over_the_device_budget_is_413_before_planning() -> None:
    # 4 rows of 1,024 devices each: every device of every row would be planned
    with client_with(max_sweep_device_rows=2000) as small:
        response = small.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {
            "context_lengths": [1024, 2048], "device_counts": [1024, 8]}})
    assert response.status_code == 413
    assert (response.json()["limit"], response.json()["value"]) == ("max_sweep_device_rows", 2 * (1024 + 8))
    assert response.json()["errors"][0]["field"] == "sweep"


def _fixture_configs() -> list[str]:
    folder = FIXTURES / "models"
    return sorted(path.name for path in folder.glob("*.json")) if folder.is_dir() else []


@pytest.mark.skipif(not (FIXTURES / "models").is_dir(), reason="../shared/fixtures/models is absent")
@pytest.mark.parametrize("name", _fixture_configs())
def test_plan_hf_config_agrees_with_quant_core(client: TestClient, name: str) -> None:
    config = json.loads((FIXTURES / "models" / name).read_text())
    spec = model_from_hf_config(config)
    # Group size 32 divides every fixture's widths (gpt-oss 2880, falcon 4544, deepseek-v2-lite 10944 do
    # not divide by the default 128; that refusal is tested above).
    request = {"model": {"hf_config": config}, "weights": {"group_size": 32},
               "hardware": {"device": "h100-80gb", "count": 8}}
    response = client.post("/v1/plan", json=request)
    assert response.status_code == 200, response.text
    assert response.content == _bytes_of_the_model_path(request)
    body = response.json()
    assert body["parameters"]["total"] == parameter_count(spec).total
    assert body["kv_cache"]["bytes_per_token"] == kv_bytes_per_token(spec, "bf16")


FIXTURE_CONFIGS = sorted((FIXTURES / "models").glob("*.json"))


@pytest.mark.skipif(not FIXTURE_CONFIGS, reason="../shared/fixtures/models is absent")
def test_the_fixture_folder_holds_the_27_real_configs() -> None:
    assert len(FIXTURE_CONFIGS) == 27


@pytest.mark.parametrize("config_path", FIXTURE_CONFIGS, ids=lambda path: path.stem)
def test_every_fixture_config_answers_a_plan_with_the_defaults(client: TestClient, config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    response = client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "h100-80gb"}})
    assert response.status_code == 200, response.text
    answer = response.json()
    shipped = config.get("quantization_config")
    # as shipped when the config says how (gpt-oss: mxfp4, DeepSeek-V3: fp8 blocks), else nibble's INT4,
    # with a partial last group (and a warning) where 128 does not divide a width (gpt-oss, Falcon, DeepSeek-V2-Lite)
    expected = {None: "int4-g128-asym", "mxfp4": "mxfp4", "fp8": "fp8-block128"}[
        shipped and shipped["quant_method"]]
    assert answer["weights"]["format"] in (expected, f"{expected}-partial")
    if answer["weights"]["format"].endswith("-partial"):
        assert any("partial last group" in warning for warning in answer["warnings"])
    assert {"bf16", "int4"} <= set(answer["comparison"])
    assert answer["weights"]["format"] in {plan["format"] for plan in answer["comparison"].values()}


def test_padding_asked_for_plans_a_width_the_group_does_not_divide(client: TestClient) -> None:
    body = {"model": {"preset": "gpt-oss-20b"}, "hardware": {"device": "h100-80gb"}, "weights": {"pad": True}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200
    assert response.json()["weights"]["format"] == "int4-g128-asym-padded"


PLAN_VARIANTS: list[dict[str, Any]] = [
    {},
    {"weights": {"format": "int8"}, "kv_cache": {"dtype": "fp8"}},
    {"weights": {"format": "bf16"}, "runtime": {"float_format": "fp16", "memory_utilization": 1}},
    {"weights": {"group_size": None, "symmetric": True}, "runtime": {"activation_bytes": 0, "overhead_bytes": 1}},
    {"workload": {"context_length": 131072, "concurrent_sequences": 64}, "parallel": {"tensor": 1, "pipeline": 2}},
]


def _bytes_of_the_model_path(body: dict[str, Any]) -> bytes:
    request = PlanRequest.model_validate(body)
    spec, hardware, workload, options = plan_to_core(request, 16)
    result = plan(spec, hardware, workload, options)
    return plan_from_core(result, request_notes(request), speed_dict(spec, result)).model_dump_json().encode()


@pytest.mark.parametrize("preset", [preset.id for preset in list_presets()])
@pytest.mark.parametrize("variant", range(len(PLAN_VARIANTS)))
def test_plan_answer_bytes_equal_the_plan_response_model_serialized(client: TestClient, preset: str,
                                                                     variant: int) -> None:
    body = {"model": {"preset": preset}, "hardware": {"device": "h100-80gb", "count": 2}, **PLAN_VARIANTS[variant]}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == _bytes_of_the_model_path(body)


def test_plan_answer_bytes_equal_the_model_path_on_raw_memory_that_does_not_fit(client: TestClient) -> None:
    body = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"memory_bytes": 2**30, "count": 1}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200
    assert response.json()["fits"] is False
    assert response.content == _bytes_of_the_model_path(body)


def test_a_swept_device_count_that_the_pipeline_stages_do_not_divide_is_named_in_the_sweep(
        client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={
        "model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"}, "parallel": {"pipeline": 2},
        "sweep": {"device_counts": [2, 3, 4]}})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "sweep.device_counts[1]"
    assert "not a multiple of the 2 pipeline stages" in error["message"]


def test_readme_vllm_example_predicts_the_token_figure_it_shows(client: TestClient) -> None:
    # README "Planning a vLLM deployment": vllm serve Llama-3.1-70B --tensor-parallel-size 4
    # --gpu-memory-utilization 0.90 --max-model-len 32768 on H100 80GB.
    body = client.post("/v1/plan", json={
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 4},
        "workload": {"context_length": 32768}, "weights": {"format": "bf16"},
        "runtime": {"engine": "vllm", "memory_utilization": 0.90}}).json()
    assert body["fits"] and body["refusal"] is None
    assert body["kv_cache"]["capacity_tokens"] == 447408
    assert body["kv_cache"]["engine_max_concurrency"] == 13.65380859375
    assert body["max_concurrent_sequences"] == 13


def test_a_pasted_config_with_a_misspelt_key_gets_a_note_naming_it(client: TestClient) -> None:
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_kv_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16"}
    body = client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "h100-80gb"}}).json()
    assert body["warnings"][-1] == ("These config.json keys were not used to size the model (check the spelling "
                                    "of any that should be): num_kv_heads.")
    preset = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"},
                                           "hardware": {"device": "h100-80gb"}}).json()
    assert not any("config.json keys" in warning for warning in preset["warnings"])


def test_a_plan_on_a_catalogued_device_carries_its_speed_bound(client: TestClient) -> None:
    body = client.post("/v1/plan", json={**BODY_70B, "workload": {"context_length": 8192,
                                                                  "concurrent_sequences": 8}}).json()
    speed = body["speed"]
    assert speed["device"] == "h100-80gb" and speed["memory_bandwidth_bytes_per_second"] == 3_350_000_000_000
    int4 = speed["formats"]["int4"]
    # 2 ranks: 18.52 GiB of INT4 weights plus 10 GiB of KV cache each, read once per step at 3.35 TB/s
    assert int4["bytes_read_per_step"] == body["comparison"]["int4"]["devices"][0]["weights_bytes"] + 10 * 2**30
    assert int4["decode_tokens_per_second_per_sequence"] == pytest.approx(3.35e12 / int4["bytes_read_per_step"])
    assert "Upper bounds" in speed["basis"] and "datasheet" in speed["basis"]
    raw = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"},
                                        "hardware": {"memory_bytes": 80 * 2**30}}).json()
    assert raw["speed"] is None  # a bare memory size has no bandwidth


def test_devices_side_by_side_give_the_fewest_of_each_type_per_format(client: TestClient) -> None:
    request = {"model": {"preset": "qwen3-235b-a22b"}, "hardware": {"device": "h100-80gb"},
               "workload": {"context_length": 32768, "concurrent_sequences": 8},
               "sweep": {"devices": ["h100-80gb", "h200", "a10g"]}}
    response = client.post("/v1/plan/sweep", json=request)
    assert response.status_code == 200, response.text
    devices = {entry["device"]: entry for entry in response.json()["devices"]}
    assert list(devices) == ["h100-80gb", "h200", "a10g"]
    h100 = devices["h100-80gb"]["formats"]
    # bf16 on 8 ranks: 54.82 GiB of weights, 11.75 GiB of KV, vLLM 0.19's 2.78 GiB profiling peak and 2.17 GiB of
    # non-torch memory per rank do not fit in 71.20 GiB; the next degree vLLM accepts is 16
    assert (h100["bf16"]["min_devices"], h100["int4"]["min_devices"]) == (16, 4)
    # at the 139.72 GiB torch reports for an H200, not the nominal 141 GiB (on which 4 fit with 0.58 GiB headroom);
    # at the A10G's 21.99 GiB bf16 fits on no tensor degree Qwen3-235B's 64 heads allow (64 fit at nominal 24 GiB),
    # nor at 64 once each rank holds one whole key and value head of the 4, as vLLM's QKVParallelLinear replicates them;
    # nor int4 (32 A10Gs before vLLM 0.19's CUDA graphs were counted): every rank captures graphs for all 94 layers,
    # 386 MiB + 94 x 19 MiB + 146 MiB (Qwen3-MoE's logged excess) = 2.26 GiB, more than the 2.20 GiB a 0.9 budget
    # leaves free, whatever the device count
    assert [devices["h200"]["formats"][f]["min_devices"] for f in ("bf16", "int4")] == [8, 2]
    assert [devices["a10g"]["formats"][f]["min_devices"] for f in ("bf16", "int4")] == [None, None]
    for device_id, entry in devices.items():
        for result in entry["formats"].values():
            count = result["min_devices"] or 64  # none fits: the plan on the most devices vLLM accepts refuses too
            at = client.post("/v1/plan", json={"model": request["model"], "workload": request["workload"],
                                               "hardware": {"device": device_id, "count": count}}).json()
            planned = at["comparison"][result["format"].split("-")[0]]
            assert planned["min_devices"] == result["min_devices"]  # the same solver, the same answer
            if result["min_devices"] is None:
                assert not planned["fits"] and result["min_headroom_bytes"] is None
                continue
            assert planned["fits"]
            assert result["min_headroom_bytes"] == min(d["headroom_bytes"] for d in planned["devices"])
    assert devices["a10g"]["formats"]["int4"]["decode_tokens_per_second_per_sequence"] is None  # no datasheet


def test_devices_side_by_side_refuse_a_parallel_layout_and_name_an_unknown_device(client: TestClient) -> None:
    base = {"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"}}
    refused = client.post("/v1/plan/sweep", json={**base, "parallel": {"pipeline": 2},
                                                  "sweep": {"devices": ["h200"]}})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "parallel.pipeline"
    unknown = client.post("/v1/plan/sweep", json={**base, "sweep": {"devices": ["h200", "h300"]}})
    assert unknown.status_code in (404, 422) and unknown.json()["errors"][0]["field"] == "sweep.devices[1]"


def _safetensors_header_b64(tensors: dict[str, tuple[str, list[int], int]]) -> str:
    """`safetensors_header` as the JSON route's ``header_base64`` takes it."""
    return base64.b64encode(safetensors_header(tensors)).decode()


def test_a_plan_from_checkpoint_headers_sums_the_files_own_tensors(client: TestClient) -> None:
    spec = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
            "vocab_size": 1000}
    tensors: dict[str, tuple[str, list[int], int]] = {}
    for layer in range(2):
        for name, shape in (("self_attn.q_proj", [256, 256]), ("self_attn.k_proj", [256, 256]),
                            ("self_attn.v_proj", [256, 256]), ("self_attn.o_proj", [256, 256]),
                            ("mlp.gate_proj", [512, 256]), ("mlp.up_proj", [512, 256]), ("mlp.down_proj", [256, 512])):
            tensors[f"model.layers.{layer}.{name}.weight"] = ("F8_E4M3", shape, shape[0] * shape[1])
            tensors[f"model.layers.{layer}.{name}.weight_scale"] = ("F32", [], 4)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = ("BF16", [256], 512)
    tensors["model.embed_tokens.weight"] = ("BF16", [1000, 256], 512_000)
    tensors["model.norm.weight"] = ("BF16", [256], 512)
    tensors["lm_head.weight"] = ("BF16", [1000, 256], 512_000)
    tensors["model.layers.2.eh_proj.weight"] = ("BF16", [256, 512], 262_144)  # an MTP layer
    tensors["model.vision_tower.patch.weight"] = ("BF16", [16], 32)
    header = {"file": "model.safetensors", "header_base64": _safetensors_header_b64(tensors)}
    body = {"model": {"spec": spec}, "hardware": {"device": "l4"}, "checkpoint": {"headers": [header]}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    planned = sum(size for name, (_, _, size) in tensors.items() if ".layers.2." not in name)
    assert answer["weights"]["format"] == "checkpoint-fp8"
    assert answer["weights"]["bytes"] == planned
    assert answer["checkpoint"] == {"format": "fp8", "tensors": len(tensors) - 1, "bytes": planned, "mtp_tensors": 1,
                                    "mtp_bytes": 262_144, "unknown_tensors": ["model.vision_tower.patch.weight"]}
    assert {"bf16", "int4"} <= set(answer["comparison"])


def test_a_gptq_plan_from_headers_alone_warns_that_sym_is_not_known_unless_its_config_says(
        client: TestClient) -> None:
    # the headers of a GPTQ checkpoint (qweight, qzeros, scales, g_idx) name no sym: planned as symmetric, with the
    # warning; the same headers beside a config.json whose quantization_config says sym are planned without it
    from quant_core.hf_config import model_from_sizes
    from tests.quant_core.test_vllm_gptq_dtype import TINY_LLAMA, UNKNOWN, gptq_headers

    tensors = {tensor.name: (tensor.dtype, list(tensor.shape), tensor.bytes)
               for tensor in gptq_headers(model_from_sizes(**TINY_LLAMA))}
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000, "torch_dtype": "bfloat16",
              "max_position_embeddings": 4096}  # the context planned (LlamaConfig's default 2048 is below it)
    header = {"file": "model.safetensors", "header_base64": _safetensors_header_b64(tensors)}
    body = {"model": {"hf_config": config}, "hardware": {"device": "h100-80gb"},
            "runtime": {"engine_version": "0.33"}, "checkpoint": {"headers": [header]}}
    answer = client.post("/v1/plan", json=body).json()
    assert answer["weights"]["format"] == "checkpoint-gptq" and answer["fits"]
    (warning,) = [warning for warning in answer["warnings"] if UNKNOWN in warning]
    assert "Unsupported quantization config: bits=4, sym=False" in warning
    quantization = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False}
    known = client.post("/v1/plan", json={**body, "model": {"hf_config": {**config,
                                                                         "quantization_config": quantization}}})
    assert known.status_code == 200, known.text
    assert not any(UNKNOWN in warning for warning in known.json()["warnings"])
    # known asymmetric: the checkpoint's plan carries vLLM 0.33's refusal
    assert not known.json()["fits"] and "bits=4, sym=False" in known.json()["refusal"]


@pytest.mark.parametrize(("header", "status", "field"), [
    ("not base64!", 422, "checkpoint.headers[0].header_base64"),
    ("AAAA", 422, "checkpoint.headers[0]"),  # three zero bytes: shorter than a header length
])
def test_a_bad_checkpoint_header_is_refused_naming_it(client: TestClient, header: str, status: int,
                                                      field: str) -> None:
    body = {"model": {"preset": "qwen3-0.6b"}, "hardware": {"device": "l4"},
            "checkpoint": {"headers": [{"file": "x.safetensors", "header_base64": header}]}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == status
    assert response.json()["errors"][0]["field"] == field


def test_checkpoint_headers_past_the_header_limit_are_413() -> None:
    import base64
    with client_with(max_header_bytes=64) as small:
        body = {"model": {"preset": "qwen3-0.6b"}, "hardware": {"device": "l4"},
                "checkpoint": {"headers": [{"file": "x.safetensors",
                                            "header_base64": base64.b64encode(b"\0" * 100).decode()}]}}
        assert small.post("/v1/plan", json=body).status_code == 413


def test_checkpoint_and_weights_together_are_refused(client: TestClient) -> None:
    body = {"model": {"preset": "qwen3-0.6b"}, "hardware": {"device": "l4"}, "weights": {"format": "int8"},
            "checkpoint": {"headers": [{"file": "x.safetensors", "header_base64": "AAAA"}]}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "weights"


@pytest.mark.parametrize(("weights", "label"), [
    ({"format": "fp8"}, "fp8-per-channel"),
    ({"format": "fp8", "scales": "block"}, "fp8-block128"),
    ({"format": "int8"}, "int8"),
    ({"format": "int8", "layout": "gptq", "group_size": 128}, "int8-g128-gptq"),
    ({"format": "int4", "group_size": 32, "symmetric": True}, "int4-g32-sym"),
    ({"format": "int4", "layout": "awq"}, "int4-g128-asym-awq"),
    ({"format": "mxfp4"}, "mxfp4"),
    ({"format": "nvfp4"}, "nvfp4"),
    ({"format": "nf4"}, "nf4-dq"),
    ({"format": "nf4", "double_quant": False}, "nf4"),
    *(({"format": name}, name) for name in ("gguf-q4_0", "gguf-q4_k_s", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q6_k",
                                            "gguf-q8_0")),
])
def test_every_weight_format_name_plans(client: TestClient, weights: dict[str, Any], label: str) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "weights": weights})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["weights"]["format"] == label
    assert {"bf16", "int4"} <= set(answer["comparison"])


@pytest.mark.parametrize(("weights", "field"), [
    ({"format": "mxfp4", "scales": "block"}, "weights.scales"),
    ({"format": "int4", "double_quant": False}, "weights.double_quant"),
    ({"format": "fp8", "layout": "gptq"}, "weights.layout"),
])
def test_a_weights_field_the_format_does_not_use_is_refused(client: TestClient, weights: dict[str, Any],
                                                            field: str) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "weights": weights})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == field


def test_a_sweep_over_checkpoint_formats(client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {
        "formats": ["bf16", "fp8", "gguf-q4_k_m", "mxfp4"]}})
    assert response.status_code == 200, response.text
    assert [row["format"] for row in response.json()["rows"]] == ["bf16", "fp8-per-channel", "gguf-q4_k_m", "mxfp4"]


def test_gpt_oss_120b_on_one_h100_answers_as_shipped(client: TestClient) -> None:
    answer = client.post("/v1/plan", json={"model": {"preset": "gpt-oss-120b"},
                                           "hardware": {"device": "h100-80gb"}}).json()
    # openai/gpt-oss-120b model.safetensors.index.json: "total_size": 65248815744
    assert answer["weights"] == {**answer["weights"], "format": "mxfp4", "bytes": 65_248_815_744}
    assert answer["fits"] is True and answer["comparison"]["bf16"]["fits"] is False


def test_deepseek_v3_on_8_h200_fits_as_shipped(client: TestClient) -> None:
    h200 = 143_771 * 2**20  # nvidia-smi's 143771 MiB
    answer = client.post("/v1/plan", json={"model": {"preset": "deepseek-v3"},
                                           "hardware": {"memory_bytes": h200, "count": 8}}).json()
    assert answer["weights"]["format"] == "fp8-block128" and answer["fits"] is True
    assert answer["comparison"]["bf16"]["fits"] is False
    # the checkpoint's MTP layer (num_nextn_predict_layers: 1) is not loaded by engines, and the answer says so
    assert any("1 multi-token-prediction layer(s)" in warning for warning in answer["warnings"])


@pytest.mark.parametrize(("quantization_config", "named"), [
    ({"quant_method": "hqq", "nbits": 4}, "quantization_config.quant_method"),
    ({"quant_method": "fp8", "weight_block_size": [64, 64]}, "quantization_config.weight_block_size"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "quantization_config.bits"),
])
def test_a_quantization_config_nibble_cannot_read_still_plans_at_the_defaults_and_says_why(
        client: TestClient, quantization_config: dict[str, Any], named: str) -> None:
    config = {**json.loads((FIXTURES / "models" / "llama-3.1-8b.json").read_text()),
              "quantization_config": quantization_config} if FIXTURE_CONFIGS else None
    if config is None:
        pytest.skip("../shared/fixtures/models is absent")
    response = client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "l4"}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["weights"]["format"] == "int4-g128-asym"
    assert any(named in warning and "cannot be planned as shipped" in warning for warning in answer["warnings"])


def test_an_unread_quantization_config_field_is_a_warning_in_the_plan(client: TestClient) -> None:
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512, "vocab_size": 1000,
              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                      "version": "gemm", "new_knob": 3}}
    answer = client.post("/v1/plan", json={"model": {"hf_config": config}, "hardware": {"device": "l4"}}).json()
    assert answer["weights"]["format"] == "int4-g128-asym-awq"
    assert "quantization_config.new_knob is not understood by nibble and was ignored" in answer["warnings"]


def test_the_comparison_keys_are_names_a_sweep_takes(client: TestClient) -> None:
    # the page sweeps Object.keys(answer.comparison): every key must be a format the sweep accepts
    for body in ({"model": {"preset": "deepseek-v3"}, "hardware": {"device": "h100-80gb", "count": 8}},
                 {"model": {"preset": "deepseek-v3"}, "hardware": {"device": "h100-80gb", "count": 8},
                  "weights": {"format": "gguf-q4_k_m"}},
                 {"model": {"preset": "gpt-oss-20b"}, "hardware": {"device": "h100-80gb"},
                  "weights": {"format": "fp8", "scales": "block"}}):
        answer = client.post("/v1/plan", json=body).json()
        assert "as_shipped" in answer["comparison"]
        assert answer["comparison"]["as_shipped"]["format"] in ("fp8-block128", "mxfp4")
        sweep = client.post("/v1/plan/sweep", json={**body, "sweep": {"formats": list(answer["comparison"])}})
        assert sweep.status_code == 200, sweep.text
        assert [row["format"] for row in sweep.json()["rows"]] == \
            [plan["format"] for plan in answer["comparison"].values()]


def test_a_sweep_as_shipped_for_a_model_that_ships_none_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/plan/sweep", json={**BODY_70B, "sweep": {"formats": ["as_shipped"]}})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "sweep.formats"


def test_a_sweep_over_a_checkpoint_and_its_header_limit() -> None:
    tensors = {"model.embed_tokens.weight": ("BF16", [1000, 256], 512_000),
               "lm_head.weight": ("BF16", [1000, 256], 512_000),
               **{f"model.layers.{i}.mlp.down_proj.weight": ("BF16", [256, 512], 262_144) for i in range(2)}}
    header = {"file": "model.safetensors", "header_base64": _safetensors_header_b64(tensors)}
    spec = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
            "vocab_size": 1000}
    body = {"model": {"spec": spec}, "hardware": {"device": "l4"}, "checkpoint": {"headers": [header]},
            "sweep": {"formats": ["checkpoint", "bf16"]}}
    with client_with() as client:
        rows = client.post("/v1/plan/sweep", json=body).json()["rows"]
        assert [row["format"] for row in rows] == ["checkpoint-bf16", "bf16"]
        assert rows[0]["weights_bytes"] == 1_548_288  # the checkpoint's four tensors, not the model's inventory
    with client_with(max_header_bytes=64) as small:
        assert small.post("/v1/plan/sweep", json=body).status_code == 413


def test_a_quantization_config_whose_index_naming_globs_cost_too_much_matching_is_refused_naming_it(
        client: TestClient) -> None:
    # each glob naming a layer is tried on every layer's module (quant_core.schemes.MAX_KEEP_STEPS)
    config = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                      "modules_to_not_convert": [f"model.layers.{i}.*.k_proj" for i in range(2000)]}}
    response = client.post("/v1/plan", json={**BODY_70B, "model": {"hf_config": config}})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    error = response.json()["errors"][0]
    assert error["field"].endswith("quantization_config") and "steps" in error["message"]


def test_a_config_of_an_unknown_model_type_is_planned_as_its_architecture_with_a_note_saying_so(
        client: TestClient) -> None:
    # moonshotai/Kimi-K2-Instruct: model_type kimi_k2, architectures ["DeepseekV3ForCausalLM"]
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
              "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 384,
              "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1, "num_hidden_layers": 61,
              "num_attention_heads": 64, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
              "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 163840, "topk_method": "noaux_tc"}
    response = client.post("/v1/plan", json={"model": {"hf_config": config},
                                             "hardware": {"device": "h200", "count": 8}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["total"] == 1_026_408_232_448
    assert any("'kimi_k2'" in note and "'deepseek_v3'" in note and "DeepseekV3ForCausalLM" in note
               for note in body["warnings"])


@pytest.mark.parametrize(("patch", "field"), [
    ({"attention_chunk_size": 0}, "attention_chunk_size"),
    ({"attention_chunk_size": "8192"}, "attention_chunk_size"),
    ({"no_rope_layers": [1, 1, 1, 0]}, "no_rope_layers"),  # vLLM's llama4.py reads one flag per layer
    ({"no_rope_layers": [2] * 48}, "no_rope_layers"),
])
def test_hostile_llama4_chunk_fields_are_refused_naming_the_key(client: TestClient, patch: dict[str, Any],
                                                                field: str) -> None:
    from tests.quant_core.test_hf_config import llama4_config

    config = llama4_config("llama-4-scout-17b-16e-instruct")
    config = {**config, "text_config": {**config["text_config"], **patch}}
    response = client.post("/v1/plan", json={"model": {"hf_config": config},
                                             "hardware": {"device": "h100-80gb", "count": 8}})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"].endswith(field)


def test_llama_3_1_8b_on_an_l4_at_0_99_on_vllm_0_19_does_not_fit_its_cuda_graphs(client: TestClient) -> None:
    # 0.97 GiB of graphs (quant_core/engines/vllm_graphs.py) and 0.51 GiB in use at start-up against the 0.22 GiB a
    # 0.99 budget leaves on an L4's 21.96 GiB: vLLM refuses to start, with or without graphs; enforce_eager at 0.97
    # (0.66 GiB free) fits, and so does the default 0.9
    request = {"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "l4", "count": 1},
               "weights": {"format": "bf16"},
               "runtime": {"engine": "vllm", "engine_version": "0.19", "memory_utilization": 0.99}}
    body = client.post("/v1/plan", json=request).json()
    assert body["fits"] is False and body["devices"][0]["fits"] is False
    assert body["devices"][0]["outside_budget_bytes"] == (994 + 523) * 2**20
    assert (body["max_context_length"], body["max_concurrent_sequences"], body["min_devices"]) == (None, 0, None)
    warning = next(w for w in body["warnings"] if w.startswith("Does not fit"))
    assert "vLLM 0.19 would refuse to start" in warning and "Free memory on device" in warning
    assert "0.97 GiB" in warning and "0.22 GiB" in warning and "enforce_eager" not in warning
    eager = client.post("/v1/plan", json={**request, "runtime": {**request["runtime"], "enforce_eager": True,
                                                                 "memory_utilization": 0.97}}).json()
    assert eager["fits"] is True and eager["devices"][0]["outside_budget_bytes"] == 523 * 2**20
    default = client.post("/v1/plan", json={**request, "runtime": {"engine": "vllm", "engine_version": "0.19"}}).json()
    assert default["fits"] is True


def test_a_symmetric_gptq_plan_counts_the_qzeros_gptq_files_hold(client: TestClient) -> None:
    # GPTQ files hold packed 4-bit qzeros for symmetric weights too (all 8: tensorio/gptq.py, AutoGPTQ, GPTQModel;
    # WeightFormat.checkpoint_tensors lists them, test_nibbles_own_exports_are_what_the_formats_count reads them back
    # from nibble's own export), so symmetric and asymmetric GPTQ take the same bytes; only the label (and vLLM
    # 0.33's refusal of asym) tells them apart
    weights = {name: client.post("/v1/plan", json={**BODY_70B, "weights": {
        "format": "int4", "layout": "gptq", "symmetric": symmetric}}).json()["weights"] for name, symmetric in
        (("sym", True), ("asym", False))}
    assert weights["sym"]["format"] == "int4-g128-sym-gptq" and weights["asym"]["format"] == "int4-g128-asym-gptq"
    assert weights["sym"]["bytes"] == weights["asym"]["bytes"]
    nibble_sym = client.post("/v1/plan", json={**BODY_70B, "weights": {"format": "int4", "symmetric": True}}).json()
    assert weights["sym"]["bytes"] > nibble_sym["weights"]["bytes"]  # nibble's own symmetric layout stores no zeros


@pytest.mark.parametrize("layout", ["gptq", "awq", "compressed-tensors"])
def test_fp16_zeros_in_a_checkpoint_layout_are_refused_naming_the_field(client: TestClient, layout: str) -> None:
    response = client.post("/v1/plan", json={**BODY_70B, "weights": {"format": "int4", "zero": "fp16",
                                                                     "layout": layout}})
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == "weights.zero" and "packed 4-bit" in problem["errors"][0]["message"]


@pytest.mark.parametrize(("runtime", "field"), [
    ({"engine": "generic", "enforce_eager": True}, "runtime.enforce_eager"),
    ({"engine": "generic", "engine_version": "0.11"}, "runtime.engine_version"),
])
def test_a_vllm_only_option_with_the_generic_engine_is_a_422_naming_it_not_ignored(
        client: TestClient, runtime: dict[str, object], field: str) -> None:
    # the fuzzing hunt: both were planned with the generic engine as if they had not been sent
    response = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"},
                                             "runtime": runtime})
    assert response.status_code == 422, response.text[:300]
    assert [error["field"] for error in response.json()["errors"]] == [field]


def test_the_generic_engine_without_vllm_options_is_planned(client: TestClient) -> None:
    response = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"},
                                             "runtime": {"engine": "generic", "enforce_eager": False}})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["engine"]["name"] == "generic"


def test_gpt2_at_32768_tokens_does_not_fit_vllm_refuses_the_context(client: TestClient) -> None:
    # vLLM derives gpt2's max_model_len from n_positions, 1024, and refuses --max-model-len 32768 (config/model.py
    # _get_and_verify_max_len); the plan answered fits with a warning before
    body = client.post("/v1/plan", json={"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb"},
                                         "workload": {"context_length": 32768}}).json()
    assert body["fits"] is False
    assert body["refusal"].startswith("vLLM 0.19 refuses a context (workload.context_length) of 32768 tokens")
    assert "n_positions = 1024" in body["refusal"] and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in body["refusal"]
    for result in body["comparison"].values():
        assert (result["fits"], result["refusal"], result["max_context_length"]) == (False, body["refusal"], None)
    at_1024 = client.post("/v1/plan", json={"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb"},
                                            "workload": {"context_length": 1024}}).json()
    assert at_1024["fits"] is True and at_1024["refusal"] is None
    assert at_1024["comparison"]["int4"]["max_context_length"] == 1024


def test_allow_long_max_model_len_plans_past_the_derived_length_with_vllms_warning(client: TestClient) -> None:
    request = {"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb"},
               "workload": {"context_length": 32768}, "runtime": {"allow_long_max_model_len": True}}
    body = client.post("/v1/plan", json=request).json()
    assert body["fits"] is True and body["refusal"] is None
    assert any("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in warning for warning in body["warnings"])
    generic = client.post("/v1/plan", json={**request, "runtime": {"engine": "generic",
                                                                   "allow_long_max_model_len": True}})
    assert generic.status_code == 422
    assert generic.json()["errors"][0]["field"] == "runtime.allow_long_max_model_len"
