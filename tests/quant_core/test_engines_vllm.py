"""The vLLM engine profile against real vLLM start-up logs (tests/quant_core/data/vllm_logs.json, each with its URL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset, list_devices
from quant_core.engines import BatchLimits, Stage, get_engine
from quant_core.engines.vllm import VllmProfile
from quant_core.formats import float_format
from quant_core.hf_config import model_from_sizes
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

GIB = 1 << 30
LOGS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "vllm_logs.json").read_text(encoding="utf-8"))["logs"]
BY_ID = {log["id"]: log for log in LOGS}


def _spec(log: dict[str, Any]) -> ModelSpec:
    if log["model"] == "sizes":
        return model_from_sizes(**log["sizes"], name=log["id"])
    return get_preset(log["model"])


def _stage(spec: ModelSpec, tensor_parallel: int = 1) -> Stage:
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


def test_at_least_twelve_public_logs_each_with_its_source() -> None:
    assert len(LOGS) >= 12
    assert all(log["url"].startswith("https://") for log in LOGS)
    assert {1, 2, 4} <= {log["tensor_parallel"] for log in LOGS}
    assert any(log["pipeline_parallel"] == 2 for log in LOGS)
    assert any(log["kv_cache_dtype"] == "fp8" for log in LOGS)


KV_FROM_AVAILABLE = [log["id"] for log in LOGS
                     if log["model"] and log["available_kv_gib"] and log["kv_cache_tokens"]
                     and log["id"] != "vllm-21348-qwen3-235b-fp8-tp4"]


@pytest.mark.parametrize("log_id", KV_FROM_AVAILABLE)
def test_kv_capacity_from_the_logged_available_memory_is_vllms_token_figure(log_id: str) -> None:
    # vLLM prints the available memory to 0.01 GiB: the token count it logs must lie between nibble's
    # count for that figure minus and plus half a hundredth.
    log = BY_ID[log_id]
    spec, profile = _spec(log), VllmProfile("0.19")
    limits = BatchLimits(8192, 256)

    def tokens(gib: float) -> int:
        return profile.kv_capacity(_stage(spec, log["tensor_parallel"]), log["kv_cache_dtype"], int(gib * GIB), 16,
                                   log["max_model_len"], limits).tokens

    assert tokens(log["available_kv_gib"] - 0.005) <= log["kv_cache_tokens"] <= tokens(log["available_kv_gib"] + 0.005)


def test_the_qwen3_235b_log_is_sized_by_its_tightest_worker_not_rank_0() -> None:
    # vllm#21348: rank 0 logs 8.11 GiB, but 178,880 tokens at 48,128 bytes each is 8.02 GiB: vLLM gives
    # every worker the smallest worker's blocks.  nibble's per-token bytes on one TP4 rank confirm it.
    log = BY_ID["vllm-21348-qwen3-235b-fp8-tp4"]
    per_token = kv_bytes_per_token(get_preset("qwen3-235b-a22b"), "bf16", tensor_parallel=4)
    assert per_token == 48128
    assert round(log["kv_cache_tokens"] * per_token / GIB, 2) == 8.02 < log["available_kv_gib"]


@pytest.mark.parametrize("log_id", [log["id"] for log in LOGS if log["kv_cache_tokens"] and log["max_concurrency"]
                                    and log["max_model_len"] and log.get("full_attention", True)])
def test_engine_max_concurrency_is_blocks_over_the_blocks_of_one_full_request(log_id: str) -> None:
    # Every such log is a full-attention model: concurrency = tokens / max_model_len, to the 2 decimals logged.
    log = BY_ID[log_id]
    blocks = log["kv_cache_tokens"] // 16
    per_request = -(-log["max_model_len"] // 16)
    assert round(blocks / per_request, 2) == log["max_concurrency"]


@pytest.mark.parametrize("log_id", ["vllm-10517-3090-llama8b-20k", "vllm-10517-3090-llama8b-29k"])
def test_activation_peak_is_the_profiling_batch_not_the_workload(log_id: str) -> None:
    # V0 profiled one batch of max_model_len tokens: peak torch memory minus weights (2.07 and 2.99 GiB).
    log = BY_ID[log_id]
    spec = _spec(log)
    term = VllmProfile().activation(_stage(spec), BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]))
    logged = log["peak_torch_gib"] - log["weights_gib"]
    assert abs(term.bytes / GIB - logged) / logged < 0.02
    assert "independent of the workload's context" in term.basis


ENGINE_TERMS = [log["id"] for log in LOGS if log["available_kv_gib"] and log["gpu_memory_utilization"]
                and log.get("max_num_batched_tokens")
                and (log["weights_gib"] or log.get("consumed_weights_and_non_torch_gib"))]


@pytest.mark.parametrize("log_id", ENGINE_TERMS)
def test_engine_terms_fill_the_gap_between_logged_weights_and_logged_kv_memory(log_id: str) -> None:
    # available = total x utilization - weights - activation - non-torch (- CUDA graphs from v0.21), each
    # of nibble's engine terms against the figures vLLM logged; the 57047 log reports weights with non-torch.
    log = BY_ID[log_id]
    spec = _spec(log)
    total = (round(log["total_memory_gib"] * GIB) if log["total_memory_gib"]
             else get_device(log["catalog_device"]).planning_bytes)
    version = "0.33" if log.get("cuda_graph_gib") is not None else "0.19"
    profile, stage = VllmProfile(version), _stage(spec, log["tensor_parallel"])
    limits = BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"])
    if log["weights_gib"] is not None:
        loaded = log["weights_gib"] * GIB + profile.non_torch(stage).bytes
    else:
        loaded = log["consumed_weights_and_non_torch_gib"] * GIB
    predicted = (int(total * log["gpu_memory_utilization"]) - loaded - profile.activation(stage, limits).bytes
                 - profile.cuda_graphs(stage, limits).bytes) / GIB
    error = (predicted - log["available_kv_gib"]) / log["available_kv_gib"]
    print(f"{log_id}: available KV {predicted:.2f} GiB predicted, {log['available_kv_gib']} logged ({error:+.2%})")
    assert -0.02 <= error <= 0.01


def _capacity_error(log: dict[str, Any], capacity_bytes: int) -> float:
    spec = _spec(log)
    options = PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype=log["kv_cache_dtype"],
                          memory_utilization=log["gpu_memory_utilization"],
                          max_batched_tokens=log["max_num_batched_tokens"], max_num_seqs=log["max_num_seqs"])
    result = plan(spec, Hardware(capacity_bytes, log["tensor_parallel"]), Workload(log["max_model_len"], 1), options)
    tokens = result.primary.kv_capacity_tokens
    assert tokens is not None
    return (tokens - log["kv_cache_tokens"]) / log["kv_cache_tokens"]


END_TO_END = ["vllm-10517-3090-llama8b-20k", "vllm-10517-3090-llama8b-29k"]


@pytest.mark.parametrize("source", ["logged total", "catalog device"])
def test_capacity_tokens_end_to_end_within_2_percent_and_never_3_percent_above(source: str) -> None:
    errors = []
    for log_id in END_TO_END:
        log = BY_ID[log_id]
        total = (round(log["total_memory_gib"] * GIB) if source == "logged total"
                 else get_device("rtx-3090").planning_bytes)
        errors.append(_capacity_error(log, total))
    print(f"{source}: capacity_tokens errors {[f'{e:+.2%}' for e in errors]}, "
          f"mean absolute {sum(abs(e) for e in errors) / len(errors):.2%}")
    assert sum(abs(e) for e in errors) / len(errors) <= 0.02
    assert max(errors) <= 0.03


def test_batch_limits_follow_vllms_openai_server_defaults() -> None:
    profile = VllmProfile()
    assert profile.batch_limits(get_device("h100-80gb").planning_bytes, "h100-80gb") == BatchLimits(8192, 1024)
    assert profile.batch_limits(get_device("a100-80gb").planning_bytes, "a100-80gb") == BatchLimits(2048, 256)
    assert profile.batch_limits(get_device("l40s").planning_bytes, "l40s") == BatchLimits(2048, 256)


def test_activation_does_not_depend_on_the_workloads_context() -> None:
    spec, hardware = get_preset("llama-3.1-8b"), Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    short = plan(spec, hardware, Workload(4096, 1))
    long = plan(spec, hardware, Workload(65536, 8))
    assert short.activation.bytes == long.activation.bytes > 0
    assert short.max_batched_tokens == 8192 and short.max_num_seqs == 1024


def test_non_torch_memory_grows_with_tensor_parallelism() -> None:
    spec, profile = get_preset("llama-3.1-70b"), VllmProfile()
    one = profile.non_torch(Stage(spec, 1, 1, (0, 80), True)).bytes
    four = profile.non_torch(Stage(spec, 4, 1, (0, 80), True)).bytes
    assert round(one / GIB, 2) == 0.34 and four > 2 * GIB


def test_cuda_graph_memory_is_outside_the_budget_in_0_19_and_inside_in_0_33() -> None:
    spec = get_preset("llama-3.1-8b")
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    old = plan(spec, hardware, Workload(8192, 1), PlanOptions(engine_version="0.19"))
    new = plan(spec, hardware, Workload(8192, 1), PlanOptions(engine_version="0.33"))
    graphs = VllmProfile("0.33").cuda_graphs(_stage(spec), BatchLimits(8192, 1024)).bytes
    assert VllmProfile("0.19").cuda_graphs(_stage(spec), BatchLimits(8192, 1024)).bytes == 0
    assert old.primary.kv_pool_bytes - new.primary.kv_pool_bytes == graphs > 0
    assert new.primary.kv_capacity_tokens is not None and old.primary.kv_capacity_tokens is not None
    assert new.primary.kv_capacity_tokens < old.primary.kv_capacity_tokens


def test_sliding_window_layers_are_grouped_as_vllm_groups_them() -> None:
    # gemma-2-9b: 21 sliding + 21 full layers -> two groups of 21; a block of the pool serves one group,
    # so tokens = num_blocks // 2 x 16, num_blocks = pool // (page x 21).
    spec = get_preset("gemma-2-9b")
    page = 16 * kv_bytes_per_token(spec, "bf16") // spec.num_layers
    pool = 10 * GIB
    capacity = VllmProfile().kv_capacity(_stage(spec), "bf16", pool, 16, 8192, BatchLimits(8192, 1024))
    assert capacity.num_blocks == pool // (page * 21)
    assert capacity.tokens == capacity.num_blocks // 2 * 16


@pytest.mark.parametrize(("model", "tensor_parallel", "reason"), [
    ("llama-3.1-8b", 3, "does not divide the model's 32 attention heads"),
    ("qwen2.5-7b", 7, "4 key/value heads can be neither split evenly nor replicated"),
])
def test_layouts_vllm_refuses_are_not_deployable_with_the_reason(model: str, tensor_parallel: int,
                                                                 reason: str) -> None:
    result = plan(get_preset(model), Hardware(get_device("h100-80gb").planning_bytes, tensor_parallel),
                  Workload(4096, 1))
    assert not result.fits and result.refusal is not None and reason in result.refusal
    generic = plan(get_preset(model), Hardware(get_device("h100-80gb").planning_bytes, tensor_parallel),
                   Workload(4096, 1), PlanOptions(engine="generic"))
    assert generic.refusal is None


def test_devices_carry_the_memory_cuda_reports_below_their_nominal_size() -> None:
    # H100 80GB: 79.22 GiB (vllm PR #10511's log); L40S: 44.42 GiB (Step-Video-T2V#8); RTX 3090: 23.58 GiB (vllm#10517)
    assert round(get_device("h100-80gb").planning_bytes / GIB, 2) == 79.22
    assert round(get_device("l40s").planning_bytes / GIB, 2) == 44.42
    assert round(get_device("rtx-3090").planning_bytes / GIB, 2) == 23.58
    for device in list_devices():
        assert device.reported_source
        if device.reported_memory_bytes is not None:
            assert device.reported_memory_bytes < device.memory_bytes
            assert "https://github.com/" in device.reported_source


def test_unknown_engine_and_version_are_refused_naming_the_field() -> None:
    from quant_core.errors import UnknownName
    with pytest.raises(UnknownName) as engine:
        PlanOptions(engine="tgi")
    assert engine.value.field == "runtime.engine"
    with pytest.raises(UnknownName) as version:
        PlanOptions(engine_version="0.1")
    assert version.value.field == "runtime.engine_version"
    assert get_engine("generic") is None
