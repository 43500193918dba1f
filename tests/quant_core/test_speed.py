"""The speed bound: decode reads bytes at the peak bandwidth, prefill does FLOPs at the peak throughput."""

from __future__ import annotations

import pytest

from quant_core.catalog import get_device, get_device_performance, get_preset, list_devices
from quant_core.formats import int4
from quant_core.hf_config import model_from_sizes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.speed import prefill_flops, speed_bounds

H100 = get_device("h100-80gb")
H100_PEAKS = get_device_performance("h100-80gb")


def test_h100_peaks_are_the_datasheets_dense_figures() -> None:
    # NVIDIA H100 datasheet (SXM): 3.35 TB/s; BF16 1,979 TFLOPS and FP8 3,958 TFLOPS with sparsity (dense: half)
    assert H100_PEAKS is not None
    assert H100_PEAKS.memory_bandwidth_bytes_per_second == 3_350_000_000_000
    assert H100_PEAKS.bf16_flops_per_second == 989_400_000_000_000
    assert H100_PEAKS.fp8_flops_per_second == 1_979_000_000_000_000


def test_every_catalogued_device_states_where_its_peaks_come_from() -> None:
    for device in list_devices():
        peaks = get_device_performance(device.id)
        assert peaks is not None and peaks.source, device.id
        if peaks.memory_bandwidth_bytes_per_second is not None:
            assert 1e11 <= peaks.memory_bandwidth_bytes_per_second <= 1e13, device.id
            assert peaks.bf16_flops_per_second or peaks.fp16_flops_per_second, device.id


def test_llama_70b_decode_bound_is_bandwidth_over_weights_and_kv_read_per_rank() -> None:
    assert H100_PEAKS is not None
    result = plan(get_preset("llama-3.1-70b"), Hardware(H100.memory_bytes, 2), Workload(8192, 8), PlanOptions())
    bounds = speed_bounds(get_preset("llama-3.1-70b"), result, H100_PEAKS)
    int4, bf16 = bounds["int4"], bounds["bf16"]
    kv_per_rank = 8192 * 8 * 327_680 // 2  # 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes, split over 2 ranks
    assert int4.kv_bytes_read_per_step == bf16.kv_bytes_read_per_step == kv_per_rank == 10_737_418_240
    assert int4.weight_bytes_read_per_step == result.comparison["int4"].devices[0].weights_bytes
    expected = 3.35e12 / (int4.weight_bytes_read_per_step + kv_per_rank)
    assert int4.decode_tokens_per_second_per_sequence == pytest.approx(expected, rel=1e-12)
    assert int4.decode_tokens_per_second_aggregate == pytest.approx(8 * expected, rel=1e-12)
    # INT4 pays twice: it fits, and each step reads 28% of the bf16 weight bytes
    assert int4.weight_bytes_read_per_step / bf16.weight_bytes_read_per_step == pytest.approx(0.2818, abs=1e-4)
    assert int4.decode_tokens_per_second_per_sequence > 2.6 * (bf16.decode_tokens_per_second_per_sequence or 0)


def test_a_mixture_of_experts_reads_only_the_experts_its_tokens_can_reach() -> None:
    assert H100_PEAKS is not None
    spec = get_preset("qwen3-30b-a3b")  # 128 experts, 8 per token
    one = plan(spec, Hardware(H100.memory_bytes, 1), Workload(4096, 1), PlanOptions())
    device = one.comparison["int4"].devices[0]
    experts = one.comparison["int4"].weights_by_role["expert"]
    expert_fraction = experts / one.comparison["int4"].weights_bytes
    bound = speed_bounds(spec, one, H100_PEAKS)["int4"]
    assert bound.weight_bytes_read_per_step == round(device.weights_bytes * (1 - expert_fraction * (1 - 8 / 128)))
    many = plan(spec, Hardware(H100.memory_bytes, 1), Workload(4096, 16), PlanOptions())  # 16 x 8 = every expert
    assert speed_bounds(spec, many, H100_PEAKS)["int4"].weight_bytes_read_per_step == device.weights_bytes


def test_pipeline_stages_add_up_per_sequence_and_overlap_in_aggregate() -> None:
    assert H100_PEAKS is not None
    spec = get_preset("llama-3.1-8b")
    result = plan(spec, Hardware(H100.memory_bytes, 2), Workload(4096, 4), PlanOptions(pipeline_parallel=2))
    bound = speed_bounds(spec, result, H100_PEAKS)["int4"]
    stage_bytes = [d.weights_bytes + d.kv_cache_bytes for d in result.comparison["int4"].devices]
    assert bound.bytes_read_per_step == sum(stage_bytes)
    assert bound.decode_tokens_per_second_per_sequence == pytest.approx(3.35e12 / sum(stage_bytes))
    assert bound.decode_tokens_per_second_aggregate == pytest.approx(4 * 3.35e12 / max(stage_bytes))


def test_vocabulary_copies_a_stage_holds_but_never_runs_are_not_read_per_step() -> None:
    # vLLM's Qwen3-MoE model builds the embedding and lm_head on every pipeline stage (qwen3_moe.py): they take
    # memory on each stage, but a decode step runs the embedding on the first stage and the lm_head on the last only,
    # so the bytes read per step are those of the plan that puts them there (the generic model's layout).
    assert H100_PEAKS is not None
    spec = get_preset("qwen3-30b-a3b")
    hardware, workload = Hardware(H100.memory_bytes, 4), Workload(4096, 4)
    engine = plan(spec, hardware, workload, PlanOptions(pipeline_parallel=4))
    generic = plan(spec, hardware, workload, PlanOptions(pipeline_parallel=4, engine="generic"))
    first, middle = engine.comparison["int4"].devices[0], engine.comparison["int4"].devices[1]
    assert middle.unread_weights_bytes > 0 and first.unread_weights_bytes < middle.unread_weights_bytes
    assert [d.weights_bytes - d.unread_weights_bytes for d in engine.comparison["int4"].devices] == \
        [d.weights_bytes for d in generic.comparison["int4"].devices]
    for key in ("int4", "bf16"):
        assert speed_bounds(spec, engine, H100_PEAKS)[key].bytes_read_per_step == \
            speed_bounds(spec, generic, H100_PEAKS)[key].bytes_read_per_step


def test_prefill_flops_are_twice_the_matmul_parameters_per_token_plus_causal_attention() -> None:
    spec = model_from_sizes(hidden_size=64, num_layers=2, num_attention_heads=4, intermediate_size=128,
                            vocab_size=100, head_dim=16)
    result = plan(spec, Hardware(H100.memory_bytes, 1), Workload(32, 1),
                  PlanOptions(weight_format=int4(group_size=32)))
    per_layer = 4 * 64 * (4 * 16) + 3 * 64 * 128 + 2 * 64  # q, k, v, o (MHA) + gate/up/down + 2 norms
    matmul = 2 * per_layer + 64  # + final norm (embedding and lm_head excluded)
    assert result.active_parameters_per_token - 2 * 100 * 64 == matmul
    expected = 2 * matmul * 32 + 2 * 100 * 64 + 2 * (2 * 4 * 16 * 32 * 32)
    assert prefill_flops(spec, result, 32) == expected
    assert H100_PEAKS is not None
    bound = speed_bounds(spec, result, H100_PEAKS)["bf16"]
    assert bound.prefill_seconds == pytest.approx(expected / 989.4e12)


def test_prefill_attention_on_windowed_layers_spans_at_most_the_window() -> None:
    spec = get_preset("gemma-2-9b")  # 42 layers, every other one a 4,096-token sliding window (its config.json)
    result = plan(spec, Hardware(H100.memory_bytes, 1), Workload(16384, 1),
                  PlanOptions(weight_format=int4(group_size=32)))
    windowed = set(spec.sliding_layers)
    assert len(windowed) == 21 and spec.sliding_window == 4096
    per_layer = [2 * spec.num_attention_heads * spec.head_dim * 16384 * (4096 if layer in windowed else 16384)
                 for layer in range(spec.num_layers)]
    full_context_only = prefill_flops(spec, result, 16384) - sum(per_layer)
    assert full_context_only == 2 * (result.active_parameters_per_token - result.parameters_by_role["embedding"]
                                     - result.parameters_by_role.get("lm_head", 0)) * 16384 \
        + 2 * spec.vocab_size * spec.hidden_size
