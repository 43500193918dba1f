"""vLLM's expert parallelism with data parallel 1 (``--enable-expert-parallel``), as nibble plans it.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* ``FusedMoEParallelConfig.make`` (fused_moe/config.py): ``use_ep = dp x tp > 1 and enable_expert_parallel``;
  with it ``ep_size = tp``, ``tp_size = 1``: each rank holds whole experts, ``intermediate_size_per_partition`` is
  the full width.
* ``determine_expert_map`` (fused_moe/layer.py in 0.11/0.19, fused_moe/expert_map_manager.py in 0.33):
  ``base = E // ep``, ``local = base + 1 if ep_rank < E % ep else base`` (the first ranks take the remainder).
* All2all: 0.11/0.19 ``DeviceCommunicatorBase`` sets ``use_all2all`` only when ``data_parallel_size > 1``; 0.33's
  ``ParallelConfig.use_all2all`` needs ``data_parallel_size > 1`` (or sequence-parallel MoE, itself dp > 1, or
  prefill context parallelism): with dp 1 no all2all manager and no DeepEP/pplx buffers.  The EP group is made for
  every MoE model whatever the flag ("Don't create EP group for dense models"), so the start-up memory is unchanged.
* The shared experts and attention stay tensor-parallel (MergedColumnParallelLinear / QKVParallelLinear).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import device_facts, get_preset, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_moe_buffers import fused_moe_caches
from quant_core.engines.vllm_parallel import expert_shard, routed_experts_per_rank
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.inventory import inventory
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
H100 = 80 * GIB
BF16 = float_format("bf16")


@pytest.mark.parametrize(("experts", "ranks", "expected"), [
    (256, 8, [32] * 8),
    (160, 24, [7] * 16 + [6] * 8),  # GLM-4.5 at 24 ranks: 160 = 24 x 6 + 16, the first 16 ranks hold one more
    (60, 8, [8] * 4 + [7] * 4),
    (8, 8, [1] * 8),
])
def test_determine_expert_map_gives_the_remainder_to_the_first_ranks(experts: int, ranks: int,
                                                                       expected: list[int]) -> None:
    placed = [routed_experts_per_rank(experts, ranks, rank) for rank in range(ranks)]
    assert placed == expected and sum(placed) == experts
    assert routed_experts_per_rank(experts, ranks) == max(placed)  # rank 0 is the most loaded


def test_expert_shard_is_whole_experts_under_expert_parallelism_and_a_width_slice_without() -> None:
    spec = get_preset("glm-4.5")
    assert expert_shard(spec, 24) == (160, 1536 // 24)
    assert expert_shard(spec, 24, True) == (7, 1536)
    assert expert_shard(spec, 1, True) == (160, 1536)  # use_ep needs tp x dp > 1


def _expert_bytes_per_layer(spec_name: str) -> tuple[int, int]:
    """(bf16 bytes of one routed expert's three projections, MoE layers), from the inventory."""
    spec = get_preset(spec_name)
    rows = [entry for entry in inventory(spec) if entry.role == "expert"]
    layers = {len(entry.layers) for entry in rows}
    assert len(layers) == 1 and all(entry.per_layer == spec.num_experts for entry in rows)
    return sum(2 * entry.elements for entry in rows), layers.pop()


def test_weights_per_device_are_the_most_loaded_ranks_whole_experts_plus_a_tensor_parallel_share_of_the_rest() -> None:
    # GLM-4.5 bf16 at 24 devices: 160 experts of 3 x 1536 x 5120 x 2 bytes = 47,185,920 bytes each, 89 MoE layers.
    # Tensor parallel: every expert sliced 24 ways, 160 / 24 of an expert a layer; expert parallel: rank 0 holds 7
    # whole experts (determine_expert_map), and the rest (attention, shared experts, dense layers, embedding) is the
    # same tensor-parallel share
    one_expert, layers = _expert_bytes_per_layer("glm-4.5")
    assert one_expert == 3 * 1536 * 5120 * 2 == 47_185_920 and layers == 89
    # GLM-4.5's own 151,552 tokens refuse 24 ranks (vocab_parallel_embedding.py divides them over the ranks): 151,296
    spec = replace(get_preset("glm-4.5"), vocab_size=151_296)
    hardware, workload = Hardware(H100, 24, "h100-80gb"), Workload(8192, 1)
    sliced = plan(spec, hardware, workload, PlanOptions(weight_format=BF16))
    placed = plan(spec, hardware, workload, PlanOptions(weight_format=BF16, expert_parallel=True))
    rest = sliced.primary.devices[0].weights_bytes - layers * 160 * one_expert // 24
    assert placed.primary.devices[0].weights_bytes == rest + layers * 7 * one_expert
    assert placed.primary.devices[0].weights_bytes - sliced.primary.devices[0].weights_bytes == 1_399_848_960
    # every device is charged the most loaded rank; the KV cache is attention's, tensor-parallel either way
    assert {device.weights_bytes for device in placed.primary.devices} == {placed.primary.devices[0].weights_bytes}
    assert placed.primary.devices[0].kv_cache_bytes == sliced.primary.devices[0].kv_cache_bytes
    assert placed.kv_bytes_per_token == sliced.kv_bytes_per_token
    assert placed.primary.refusal is None
    assert any("7 on ranks 0-15 and 6 on ranks 16-23" in note for note in placed.warnings)


def test_minimax_fp8_at_tensor_parallel_8_plans_with_expert_parallelism_where_it_is_refused_without() -> None:
    # fp8.py's Fp8MoEMethod refuses 1536 / 8 = 192-wide expert slices (not whole 128-wide blocks); with
    # --enable-expert-parallel each rank holds 32 whole 1536-wide experts, 12 blocks wide.  256 / 8 is even: the
    # weights per device are the same bytes as the tensor-parallel slices
    info = get_preset_info("minimax-m2.5")
    scheme = scheme_from_quantization_config(info.quantization_config)
    hardware, workload = Hardware(H100, 8, "h100-80gb"), Workload(8192, 1)
    for version in ("0.19", "0.33"):
        sliced = plan(info.spec, hardware, workload, PlanOptions(scheme=scheme, engine_version=version))
        placed = plan(info.spec, hardware, workload, PlanOptions(scheme=scheme, engine_version=version,
                                                                 expert_parallel=True))
        if version == "0.19":  # 0.33 refines the block scales to 64 x 64 instead (test_fp8_refine.py)
            assert "192" in (sliced.primary.refusal or "")
        else:
            assert sliced.primary.refusal is None
        assert placed.primary.refusal is None and placed.primary.fits
        assert placed.primary.devices[0].weights_bytes == sliced.primary.devices[0].weights_bytes
        assert VllmProfile(version).format_refusal(info.spec, "fp8-block128", 8, True) is None
    # vLLM 0.11 has no MiniMax-M2 class, with or without expert parallelism
    refused = plan(info.spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.11",
                                                              expert_parallel=True))
    assert "cannot load a minimax_m2 model" in (refused.primary.refusal or "")


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_the_fused_moe_buffers_take_the_full_expert_width_under_expert_parallelism(version: str) -> None:
    # Mixtral-8x7B at TP 2, 8192 tokens, top-2, hidden 4096: the kernels see w1 [4, 2 x 14336, 4096] instead of
    # [8, 2 x 7168, 4096].  0.11 fused_experts_impl: cache13 M x k x max(2w, K) + cache2 M x k x w; 0.19/0.33
    # TritonExperts: workspace13 M x k x max(w, K) + workspace2 M x k x max(2w, K); bf16
    spec = get_preset("mixtral-8x7b-v0.1")
    rows = 8192 * 2
    for width, expert_parallel in ((7168, False), (14336, True)):
        expected = (rows * (2 * width + width) * 2 if version == "0.11"
                    else rows * (max(width, 4096) + max(2 * width, 4096)) * 2)
        assert fused_moe_caches(spec, 2, 8192, version, expert_parallel=expert_parallel).nbytes == expected
    assert fused_moe_caches(spec, 2, 8192, version, expert_parallel=True).nbytes == 1_409_286_144


def test_the_plans_activation_grows_by_the_wider_moe_workspace_where_it_persists() -> None:
    # vLLM 0.19 keeps the fused-MoE workspace under the sampler pass: the activation grows by exactly the
    # workspace's growth, 1,409,286,144 - 704,643,072 bytes
    spec = get_preset("mixtral-8x7b-v0.1")
    hardware, workload = Hardware(H100, 2, "h100-80gb"), Workload(8192, 1)
    sliced, placed = (plan(spec, hardware, workload, PlanOptions(weight_format=BF16, engine_version="0.19",
                                                                 expert_parallel=flag)) for flag in (False, True))
    assert placed.activation.bytes - sliced.activation.bytes == 1_409_286_144 - 704_643_072
    assert placed.runtime_overhead.bytes == sliced.runtime_overhead.bytes  # no all2all buffers with dp 1
    assert placed.primary.devices[0].weights_bytes == sliced.primary.devices[0].weights_bytes  # 8 / 2 even


def test_deepgemm_on_vllm_0_11_aligns_rows_for_the_local_experts() -> None:
    # deep_gemm_moe.py DeepGemmExperts.workspace_shapes: compute_aligned_M(M, topk, local_num_experts, 128): with
    # expert parallelism the rank's 32 experts of DeepSeek-V3 at TP 8, not 256; N = the full 2048 width
    spec = get_preset("deepseek-v3")
    hopper = device_facts("h100-80gb")
    caches = fused_moe_caches(spec, 8, 8192, "0.11", "fp8-block128", hopper, expert_parallel=True)
    rows = -(-(8192 * 8 + 32 * 127) // 128) * 128
    assert caches.nbytes == rows * (max(2 * 2048, 7168) + max(2048, 7168)) * 2
    assert "DeepGemmExperts" in caches.basis


def test_expert_parallel_false_plans_as_before() -> None:
    spec = get_preset("qwen3-30b-a3b")
    hardware, workload = Hardware(H100, 4, "h100-80gb"), Workload(8192, 4)
    assert plan(spec, hardware, workload) == plan(spec, hardware, workload, PlanOptions(expert_parallel=False))


def test_expert_parallelism_leaves_the_shared_experts_split_over_tensor_parallelism() -> None:
    # GLM-4.5-Air at 24 ranks: 1408 / 24 is not whole for the routed experts (lifted) nor for the shared expert, a
    # MergedColumnParallelLinear still split 24 ways
    refusal = VllmProfile().refusal(get_preset("glm-4.5-air"), 24, 1, True)
    assert refusal is not None and "shared experts' width (1408" in refusal
    assert VllmProfile().refusal(replace(get_preset("glm-4.5"), vocab_size=151_296), 24, 1, True) is None
    assert "vocabulary" in (VllmProfile().refusal(get_preset("glm-4.5"), 24, 1, True) or "")  # 151,552 tokens


def test_what_nibble_does_not_model_of_expert_parallelism_is_refused_naming_the_field() -> None:
    hardware, workload = Hardware(H100, 16, "h100-80gb"), Workload(8192, 1)
    mixtral = get_preset("mixtral-8x7b-v0.1")
    more_ranks = plan(mixtral, hardware, workload, PlanOptions(weight_format=BF16, expert_parallel=True))
    assert "runtime.expert_parallel" in (more_ranks.primary.refusal or "")
    assert more_ranks.primary.min_devices == 2  # the fewest devices skip the refused sizes
    # MXFP4 on a device whose compute capability is not known: no backend nibble read (mxfp4_moe_backend)
    gpt_oss = get_preset_info("gpt-oss-120b")
    mxfp4 = plan(gpt_oss.spec, Hardware(H100, 2), workload,
                 PlanOptions(scheme=scheme_from_quantization_config(gpt_oss.quantization_config),
                             expert_parallel=True))
    assert "mxfp4 experts with vLLM 0.19's expert parallelism" in (mxfp4.primary.refusal or "")
    assert "unknown compute capability" in (mxfp4.primary.refusal or "")
    # vLLM 0.33's int4 MoE on Hopper (Humming) switches GEMM under expert parallelism: not read, refused naming the
    # device; 0.19's Marlin is not
    qwen = get_preset("qwen3-30b-a3b")
    refused = VllmProfile("0.33").format_refusal(qwen, "int4-g128-sym-gptq", 2, True, (9, 0))
    assert refused is not None and "compute capability 9.0" in refused and "vLLM 0.33" in refused
    assert VllmProfile("0.33").format_refusal(qwen, "int4-g128-sym-gptq", 2, True) is not None  # device unknown
    assert VllmProfile("0.19").format_refusal(qwen, "int4-g128-sym-gptq", 2, True) is None
    assert VllmProfile("0.33").format_refusal(qwen, "int4-g128-sym-gptq", 2) is None


@pytest.mark.parametrize(("model", "options", "reason"), [
    ("qwen2.5-0.5b", {"expert_parallel": True}, "has none"),
    ("qwen3-30b-a3b", {"expert_parallel": True, "engine": "generic"}, "generic engine"),
    ("qwen3-30b-a3b", {"expert_parallel": 1}, "true or false"),
])
def test_expert_parallelism_without_experts_or_vllm_is_an_error_naming_the_field(
        model: str, options: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        plan(get_preset(model), Hardware(H100, 2), Workload(), PlanOptions(**options))  # type: ignore[arg-type]
    assert caught.value.field == "runtime.expert_parallel"
    assert reason in str(caught.value)


def test_the_public_expert_parallel_run_is_planned_on_the_safe_side() -> None:
    # kubesimplify's vLLM 0.27.1 run of Qwen3-235B-A22B FP8 at TP 4 with --enable-expert-parallel on RTX PRO 6000
    # cards (vllm_logs.json): 55.19 GiB of weights, 623,696 tokens (621,392 without expert parallelism).  128 / 4 = 32
    # whole experts a rank hold the bytes of the tensor-parallel slices (1536 / 4 = 384, whole 128-wide blocks), and
    # hidden 4096 exceeds 2 x 1536, so the MoE workspace is the same: nibble plans both runs alike, 5.1 % under the
    # logged tokens (the run's "gap": PCIe cards' non-torch memory)
    import json
    from pathlib import Path
    logs = {log["id"]: log for log in json.loads(
        (Path(__file__).parent / "data" / "vllm_logs.json").read_text(encoding="utf-8"))["logs"]}
    log = logs["kubesimplify-v0.27-qwen3-235b-fp8-tp4-ep"]
    assert log["expert_parallel"] is True and log["tensor_parallel"] == 4
    fp8 = scheme_from_quantization_config({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                           "activation_scheme": "dynamic"})
    hardware = Hardware(round(log["total_memory_gib"] * GIB), 4, log["catalog_device"])
    plans = [plan(get_preset(log["model"]), hardware, Workload(log["max_model_len"], 1),
                  PlanOptions(scheme=fp8, memory_utilization=log["gpu_memory_utilization"],
                              engine_version=log["profile_version"], max_batched_tokens=log["max_num_batched_tokens"],
                              max_num_seqs=log["max_num_seqs"], expert_parallel=flag)) for flag in (False, True)]
    sliced, placed = plans
    assert placed.primary.refusal is None
    assert placed.primary.devices[0].weights_bytes == sliced.primary.devices[0].weights_bytes
    assert abs(placed.primary.devices[0].weights_bytes / GIB - log["weights_gib"]) < 0.1
    tokens = placed.primary.kv_capacity_tokens
    assert tokens is not None and tokens == sliced.primary.kv_capacity_tokens
    error = (tokens - log["kv_cache_tokens"]) / log["kv_cache_tokens"]
    assert -0.06 < error <= 0.03


def test_the_tensor_parallel_sizes_under_expert_parallelism_stop_at_the_routed_expert_count() -> None:
    # Mixtral-8x22B's 16,384-wide experts refuse 24 and 48 ranks under tensor parallelism; under expert parallelism
    # the width no longer divides, but no rank may be left without an expert (expert_parallel_refusal), so its 8
    # experts cap the degree at 8 (the "largest degree engines accept" warning reads the same sizes)
    from quant_core.planner import engine_tensor_parallel_sizes

    spec = get_preset("mixtral-8x22b-v0.1")
    assert engine_tensor_parallel_sizes(spec) == (1, 2, 4, 8, 16)
    assert engine_tensor_parallel_sizes(spec, expert_parallel=True) == (1, 2, 4, 8)
    result = plan(spec, Hardware(6 * GIB, 8), Workload(8192, 1), PlanOptions(expert_parallel=True))
    assert any("no tensor-parallel degree engines accept for this model fits (the largest is 8 device(s))" in warning
               for warning in result.warnings)


@pytest.mark.parametrize(("label", "capability"), [
    ("int4-g128-sym-gptq", (8, 0)),  # A100
    ("int4-g128-sym-gptq", (8, 9)),  # L40S
    ("int4-g128-sym-gptq", (10, 0)),  # B200: FLASHINFER_TRTLLM refuses GPTQ (may_have_bias)
    ("int4-g128-asym-awq", (12, 0)),
    ("int4-g32-sym-compressed-tensors", (8, 0)),
    # B200: FLASHINFER_TRTLLM would take kInt4Static32, but only with VLLM_USE_FLASHINFER_MOE_INT4=1 (default "0")
    ("int4-g32-sym-compressed-tensors", (10, 0)),
    ("int4-row-sym-gptq", (8, 0)),
])
def test_vllm_0_33_int4_experts_are_planned_under_expert_parallelism_where_marlin_runs_them(
        label: str, capability: tuple[int, int]) -> None:
    # oracle/int_wna16.py: RDNA3, FLASHINFER_TRTLLM, MARLIN, BATCHED_MARLIN, TRITON, HUMMING; Humming moves ahead of
    # Marlin on 9.0 only (humming/priority.py).  Qwen3-30B-A3B: hidden 2048 (a multiple of 128), experts 768 wide
    # (whole groups of 32, 128 and a row): check_moe_marlin_supports_config takes them, MarlinExperts runs them as at
    # one rank (its choice reads no use_ep)
    qwen = get_preset("qwen3-30b-a3b")
    assert VllmProfile("0.33").format_refusal(qwen, label, 2, True, capability) is None


@pytest.mark.parametrize(("label", "capability", "reason"), [
    ("int4-g128-sym-gptq", (9, 0), "compute capability 9.0 vLLM 0.33 puts Humming's kernels ahead of Marlin"),
    ("int4-g128-sym-gptq", None, "unknown compute capability"),
    ("int4-g128-sym-gptq", (7, 0), "compute capability 7.0"),
    # Marlin's MoE group sizes are -1, 32, 64, 128: g256 falls to Triton (refused for GPTQ: may_have_bias) or Humming
    ("int4-g256-sym-gptq", (8, 0), "Marlin MoE experts do not take gptq int4 g256"),
    ("checkpoint-gptq", (8, 0), "names no group size"),
])
def test_vllm_0_33_int4_experts_under_expert_parallelism_are_refused_naming_device_and_release_elsewhere(
        label: str, capability: tuple[int, int] | None, reason: str) -> None:
    refused = VllmProfile("0.33").format_refusal(get_preset("qwen3-30b-a3b"), label, 2, True, capability)
    assert refused is not None and reason in refused
    assert "vLLM 0.33's expert parallelism (runtime.expert_parallel)" in refused


def test_a_vllm_0_33_gptq_moe_plans_with_expert_parallelism_on_a100s_and_is_refused_on_h100s() -> None:
    # Qwen3-30B-A3B GPTQ g128 at TP 2: on A100s (8.0) Marlin runs the 64 whole 768-wide experts a rank; its workspace
    # (marlin_moe.py workspace_shapes: M x k x max(N, K) + M x k x max(2N, K)) is 8192 x 8 x (2048 + 2048) x 2 bytes
    # with N = 768 as with N = 384 (hidden 2048 is the larger): the activation is the tensor-parallel plan's.  On
    # H100s (9.0) Humming's grouped_contiguous GEMM: refused
    qwen = get_preset("qwen3-30b-a3b")
    gptq = scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True,
                                            "desc_act": False})
    workload = Workload(8192, 1)
    sliced, placed = (plan(qwen, Hardware(80 * GIB, 2, "a100-80gb"), workload,
                           PlanOptions(scheme=gptq, engine_version="0.33", expert_parallel=flag))
                      for flag in (False, True))
    assert placed.primary.refusal is None and placed.primary.fits
    assert placed.activation.bytes == sliced.activation.bytes
    assert fused_moe_caches(qwen, 2, 8192, "0.33", expert_parallel=True).nbytes == 8192 * 8 * (2048 + 2048) * 2
    hopper = plan(qwen, Hardware(H100, 2, "h100-80gb"), workload,
                  PlanOptions(scheme=gptq, engine_version="0.33", expert_parallel=True))
    assert "compute capability 9.0" in (hopper.primary.refusal or "")


@pytest.mark.parametrize(("version", "device", "per_expert"), [
    # gpt-oss-120b at TP 2 with expert parallelism: 64 whole experts a rank, w = 2880, H = 2880, 36 MoE layers.
    # The checkpoint's expert (_mxfp4_checkpoint_bytes): 2w x H/2 + 2w x H/32 + H x w/2 + H x w/32 + (2w + H) x 2
    # = 8,294,400 + 518,400 + 4,147,200 + 259,200 + 17,280 = 13,236,480 bytes
    # 0.19 Triton on Hopper: w' = round_up(2880, 64) = 2880; values 5760 x round_up(1440, 64) + 2880 x 1472 =
    # 12,718,080; scales round_up(5760, 256) x 90 + round_up(2880, 256) x 90 = 806,400; the kept unswizzled scales
    # 777,600; float32 biases (5760 + 2880) x 4 = 34,560: 14,336,640, 1,100,160 more
    ("0.19", "h100-80gb", 1_100_160),
    # Marlin (8.0; 0.11 on Hopper too): w' = round_up(2880, 128) = 2944, H' = round_up(2880, 256) = 3072:
    # 2 x 2944 x 3072 / 2 + / 32 + 3072 x 2944 / 2 + / 32 + (5888 + 3072) x 2 = 14,431,744, 1,195,264 more
    ("0.19", "a100-80gb", 1_195_264),
    ("0.11", "h100-80gb", 1_195_264),
    ("0.33", "a100-80gb", 1_195_264),
    # TRT-LLM on 10.0 (0.19): w' = H' = 3072, float32 biases: 9,437,184 + 589,824 + 4,718,592 + 294,912 + 36,864 =
    # 15,077,376, 1,840,896 more
    ("0.19", "b200", 1_840_896),
    # 0.33 Triton on Hopper (vendored layouts): values 5760 x round_up(1440, 32) + 2880 x 1440 = 12,441,600; scales
    # (90 -> 92 by _swizzle_mxfp4) 5888 x 92 + 3072 x 92 = 824,320; biases 34,560: 13,300,480, 64,000 more
    ("0.33", "h100-80gb", 64_000),
])
def test_mxfp4_experts_under_expert_parallelism_are_held_in_the_layout_of_the_backend_one_rank_gets(
        version: str, device: str, per_expert: int) -> None:
    spec = get_preset("gpt-oss-120b")
    stage = Stage(spec, 2, 1, (0, spec.num_layers), True, expert_parallel=True)
    term = VllmProfile(version).expert_layout(stage, "mxfp4", device_facts(device))
    assert term is not None and term.bytes == 64 * 36 * per_expert
    assert "64 whole experts" in term.basis
    capability = device_facts(device).compute_capability
    assert VllmProfile(version).format_refusal(spec, "mxfp4", 2, True, capability) is None


def test_gpt_oss_on_two_h100s_plans_with_expert_parallelism_on_vllm_0_19() -> None:
    # OAITritonMxfp4ExpertsMonolithic runs the 64 whole experts a rank as it runs the slices (its
    # _supports_parallel_config refuses only all2all, EPLB and data parallel > 1): the runtime overhead carries the
    # Triton layout's 64 x 36 x 1,100,160 = 2,534,768,640 bytes in place of the tensor-parallel slices'
    # 128 x 36 x 762,816 = 3,515,056,128 (w = 1440 -> 1472, values' rows and bytes to 64)
    info = get_preset_info("gpt-oss-120b")
    scheme = scheme_from_quantization_config(info.quantization_config)
    sliced, placed = (plan(info.spec, Hardware(H100, 2, "h100-80gb"), Workload(8192, 1),
                           PlanOptions(scheme=scheme, engine_version="0.19", expert_parallel=flag))
                      for flag in (False, True))
    assert placed.primary.refusal is None and placed.primary.fits
    assert sliced.runtime_overhead.bytes - placed.runtime_overhead.bytes == 3_515_056_128 - 2_534_768_640
    # the fused-MoE caches: OAITritonMxfp4ExpertsMonolithic's tokens x top_k x w and tokens x H at the full width
    assert fused_moe_caches(info.spec, 2, 8192, "0.19", "mxfp4", device_facts("h100-80gb"),
                            expert_parallel=True).nbytes == 8192 * (4 * 2880 + 2880) * 2



@pytest.mark.parametrize(("version", "capability", "reason"), [
    ("0.33", None, "unknown compute capability"),
    # 9.0: FlashInfer's CUTLASS experts take NVFP4 from 10.0, vLLM's from family 100: Humming (ahead of Marlin)
    ("0.33", (9, 0), "compute capability 9.0 neither FlashInfer's nor vLLM's CUTLASS experts take NVFP4"),
    ("0.33", (7, 0), "compute capability 7.0"),
    # 0.19's CutlassExpertsFp4 refuses ep_size > 1: the backend can change under expert parallelism
    ("0.19", (10, 0), "for 0.33 only"),
    ("0.11", (8, 0), "for 0.33 only"),
])
def test_nvfp4_experts_under_expert_parallelism_are_refused_naming_release_and_device(
        version: str, capability: tuple[int, int] | None, reason: str) -> None:
    refused = VllmProfile(version).format_refusal(get_preset("qwen3-30b-a3b"), "nvfp4", 2, True, capability)
    assert refused is not None and reason in refused
    assert f"vLLM {version}'s expert parallelism (runtime.expert_parallel)" in refused


def test_vllm_0_33_nvfp4_experts_plan_under_expert_parallelism_where_the_backend_is_a_single_ranks() -> None:
    # oracle/nvfp4.py (0.33): FlashInfer TRT-LLM / CuTeDSL on 10.x, FlashInfer CUTLASS on 12.x, vLLM CUTLASS on 11.x,
    # Marlin on 8.x: each class's _supports_parallel_config refuses only all2all kernels and EPLB, so with data
    # parallel 1 they run the rank's 64 whole experts of Qwen3-30B-A3B as one rank runs all 128; the fused-MoE
    # buffers are charged at the full 768 width (8192 x 8 x (2048 + 2048) x 2 bytes, as at 384: hidden 2048 wins)
    qwen = get_preset("qwen3-30b-a3b")
    for capability in ((8, 0), (10, 0), (11, 0), (12, 0)):
        assert VllmProfile("0.33").format_refusal(qwen, "nvfp4", 2, True, capability) is None
    weights = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}
    nvfp4 = scheme_from_quantization_config({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                             "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                                                           "input_activations": weights}}})
    sliced, placed = (plan(qwen, Hardware(180 * GIB, 2, "b200"), Workload(8192, 1),
                           PlanOptions(scheme=nvfp4, engine_version="0.33", expert_parallel=flag))
                      for flag in (False, True))
    assert placed.primary.refusal is None and placed.primary.fits
    assert placed.activation.bytes == sliced.activation.bytes
