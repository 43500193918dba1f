"""vLLM 0.33 zero-pads the weights Marlin's thread tiles do not divide, and keeps the padded copies after loading.

Read in vLLM 0.33.0 (model_executor/layers/quantization/utils/marlin_utils.py, marlin_utils_fp8.py,
model_executor/kernels/linear/mixed_precision/marlin.py); 0.11 and 0.19 have none of it:

* ``marlin_padded_nk(size_n, size_k, group_size)``: the smaller (by area, then n + k) of
  ``(round_up(n, 64), round_up(k, lcm(128, g)))`` and ``(round_up(n, 128), round_up(k, lcm(64, g)))``.
* fp8 linear layers (``prepare_fp8_layer_for_marlin``): ``marlin_pad_qweight`` then ``gptq_marlin_repack`` at the
  padded size: the weight held is ``Np x Kp`` fp8 bytes where the checkpoint's is ``N x K``; the scales are padded
  too (``marlin_pad_scales``: ``[Kp / g, Np]`` of the model's 16-bit dtype; per tensor ``[1, Np]``), and a bias
  (``marlin_pad_dim``).
* fp8 experts (``prepare_fp8_moe_layer_for_marlin``): the width ``n`` of each expert (per rank) padded to
  ``marlin_moe_padded_intermediate(n, g) = round_up(n, lcm(64, g))``: w13 ``[E, 2 pn, k]`` (``_moe_pad_shard_rows``,
  each of gate and up padded) and w2 ``[E, k, pn]`` (``_moe_pad_last``), repacked at that size and put in place
  of the loaded ones; w13's 16-bit scales are padded to ``2 pn`` per group row, w2's gain whole groups only
  (``(pn - n) // g``: none where pn rounds n to its group).  While loading, the padded copies of w13 and w2 exist
  beside the loaded ones (the caller's locals and the layer's parameters), then ``repack_weight("w13")`` holds
  its list of E repacked experts, their ``torch.cat`` and the last expert's transposed copy:
  ``(2 E pn + E pn) + 2 E pn + 2 E pn + 2 pn`` = ``(7 E + 2) x pn x k`` bytes beyond the loaded weights.
* int4 GPTQ linear layers on Marlin (``MarlinLinearKernel``): ``can_implement`` accepts a misaligned layer ("Tile
  misalignment is fixed by zero-padding at weight prep") and refuses only a group straddling the rank's shard;
  ``process_weights_after_loading`` repacks ``marlin_pad_qweight`` to ``Np x Kp / 2`` bytes and permutes
  ``marlin_pad_scales`` to ``[Kp / g, Np]`` 16-bit (one row for a whole-row scale), the zero points emptied
  (symmetric).
"""

from __future__ import annotations

import dataclasses

import pytest

from quant_core.catalog import device_facts, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_expert_layouts import fp8_expert_repack_bytes, fp8_marlin_expert_padding_bytes
from quant_core.engines.vllm_linear import (
    _marlin_padded_nk,
    fp8_marlin_linear_repack_bytes,
    fp8_marlin_padding_bytes,
    gptq_dense_kernel,
)
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
A100 = device_facts("a100-80gb")
#: AutoFP8's layout: fp8 weights with one float32 scale a tensor (no weight_block_size)
PER_TENSOR = {"quant_method": "fp8", "activation_scheme": "dynamic"}


def _stage(name: str, tensor_parallel: int, layers: tuple[int, int] | None = None,
           expert_parallel: bool = False) -> Stage:
    spec = get_preset_info(name).spec
    return Stage(spec, tensor_parallel, 1, layers or (0, spec.num_layers), True, expert_parallel=expert_parallel)


def _bytes(term: object) -> int | None:
    return None if term is None else term.bytes  # type: ignore[attr-defined]


# --- Qwen3-30B-A3B, fp8 experts at TP 8 on A100 ------------------------------------------------------------------
# 128 experts of width 768 / 8 = 96 a rank, hidden 2048, 48 MoE layers.  96 is no multiple of 64:
# marlin_moe_padded_intermediate(96, -1) = round_up(96, lcm(64, 1)) = 128 (fp8_utils.py's validate_fp8_block_shape
# checks block checkpoints only; a scale a tensor or a channel has no such check, so vLLM 0.33 pads and runs it).


def test_qwen3_30b_fp8_expert_repack_at_tp_8_on_a100_holds_the_padded_copies_in_vllm_033() -> None:
    stage = _stage("qwen3-30b-a3b", 8)
    # 0.33: (7 x 128 + 2) x 128 x 2048 = 898 x 262,144 = 235,405,312 bytes while one MoE layer is repacked
    padded = fp8_expert_repack_bytes(stage, "0.33", A100, "fp8-per-tensor")
    assert _bytes(padded) == 235_405_312
    assert padded is not None and "marlin_moe_padded_intermediate" in padded.basis
    # 0.19 repacks the 96-wide experts as loaded: (2 x 128 + 1) x 2 x 96 x 2048 = 101,056,512
    assert _bytes(fp8_expert_repack_bytes(stage, "0.19", A100, "fp8-per-tensor")) == 101_056_512
    # the same weights with a scale a channel pad the same way
    assert _bytes(fp8_expert_repack_bytes(stage, "0.33", A100, "fp8-per-channel")) == 235_405_312
    # the load transient the budget weighs is that repack (the linear layers, qkv_proj 768 x 2048 and o_proj
    # 2048 x 512, are aligned and run on CUTLASS from 8.9, on Marlin below: 2 x 768 x 2048 at most)
    limits = VllmProfile("0.33").batch_limits(80 * GIB, "a100-80gb")
    budget = VllmProfile("0.33").outside_budget(stage, "auto", limits, False, A100, "fp8-per-tensor",
                                                "fp8-per-tensor")
    assert _bytes(budget.repack) == 235_405_312 and budget.loads


def test_qwen3_30b_fp8_per_tensor_experts_at_tp_8_on_a100_hold_the_padded_weights_in_vllm_033() -> None:
    stage = _stage("qwen3-30b-a3b", 8)
    # 0.19 (no padding): the per-tensor scales repeated to a 16-bit one per output row, as charged today:
    # 48 x 128 x (2 x 2 x 96 + 2 x 2048) = 27,525,120
    assert _bytes(VllmProfile("0.19").expert_layout(stage, "fp8-per-tensor", A100)) == 27_525_120
    # 0.33: the same, plus the padded weights 3 x 128 x (128 - 96) x 2048 = 25,165,824 a layer (w13's 2 x 32 rows
    # and w2's 32 columns of every expert) x 48 = 1,207,959,552, plus w13's scales padded from 2 x 96 to 2 x 128
    # 16-bit values: 2 x 2 x 32 x 128 x 48 = 786,432 (w2's, one per hidden row, unchanged)
    # 27,525,120 + 1,207,959,552 + 786,432 = 1,236,271,104 (1.15 GiB a rank)
    term = VllmProfile("0.33").expert_layout(stage, "fp8-per-tensor", A100)
    assert _bytes(term) == 1_236_271_104
    assert term is not None and "marlin_moe_padded_intermediate" in term.basis


def test_qwen3_30b_fp8_per_channel_experts_at_tp_8_on_a100_hold_only_the_padded_weights() -> None:
    # a scale a channel: Marlin holds 16-bit scales where the checkpoint's are float32 (2 x 2 x 128 < 4 x 2 x 96
    # for w13, 2 x 2048 < 4 x 2048 for w2): nothing to charge for them, but the weights are padded all the same
    stage = _stage("qwen3-30b-a3b", 8)
    assert VllmProfile("0.19").expert_layout(stage, "fp8-per-channel", A100) is None
    assert _bytes(VllmProfile("0.33").expert_layout(stage, "fp8-per-channel", A100)) == 1_207_959_552


def test_qwen3_30b_fp8_experts_whole_under_expert_parallelism_are_not_padded() -> None:
    # EP 8: 16 whole experts a rank, 768 wide (12 x 64): marlin_moe_padded_intermediate leaves them, so 0.33 holds
    # what 0.19 does: 48 x 16 x (2 x 2 x 768 + 2 x 2048) = 5,505,024, and repacks (2 x 16 + 1) x 2 x 768 x 2048
    stage = _stage("qwen3-30b-a3b", 8, expert_parallel=True)
    for version in ("0.19", "0.33"):
        assert _bytes(VllmProfile(version).expert_layout(stage, "fp8-per-tensor", A100)) == 5_505_024
        assert _bytes(fp8_expert_repack_bytes(stage, version, A100, "fp8-per-tensor")) == 103_809_024


def test_fp8_experts_are_padded_only_where_vllm_033_runs_them_on_marlin() -> None:
    stage = _stage("qwen3-30b-a3b", 8)
    # 8.9 and up run fp8 experts on Triton/CUTLASS/FlashInfer, which take them as loaded
    for device in ("l40s", "h100-80gb"):
        assert VllmProfile("0.33").expert_layout(stage, "fp8-per-tensor", device_facts(device)) is None
        assert fp8_expert_repack_bytes(stage, "0.33", device_facts(device), "fp8-per-tensor") is None


def test_qwen3_30b_fp8_per_tensor_plan_on_a100_charges_the_padded_experts() -> None:
    # the plan's per-device overhead grows by the padded weights and scales, 1,208,745,984 bytes, from 0.19's
    # figure to 0.33's in the experts' term alone: the term's basis says why
    info = get_preset_info("qwen3-30b-a3b")
    scheme = scheme_from_quantization_config(PER_TENSOR)
    answer = plan(info.spec, Hardware(80 * GIB, 8, "a100-80gb"), Workload(8192, 1),
                  PlanOptions(scheme=scheme, engine_version="0.33", tensor_parallel=8))
    assert "marlin_moe_padded_intermediate" in answer.runtime_overhead.basis


def test_qwen3_30b_fp8_per_tensor_plan_on_a100_does_not_fit_where_the_padded_repack_has_no_room_to_load() -> None:
    # 8 devices of 9.25 GiB at memory_utilization 0.7735, eager, 1024 tokens, one sequence: serving fits (22 MB of
    # headroom), and the budget still free while loading (usable less weights and overhead, 0.12 GiB: the KV pool
    # and profiling peak allocated later) would hold the 101,056,512 bytes of an unpadded repack; the padded one's
    # 235,405,312 leaves 0.10 GiB beside the 2.04 GiB start-up memory, more than the 2.10 GiB the budget leaves free
    info = get_preset_info("qwen3-30b-a3b")
    scheme = scheme_from_quantization_config(PER_TENSOR)
    answer = plan(info.spec, Hardware(int(9.25 * GIB), 8, "a100-80gb"), Workload(1024, 1),
                  PlanOptions(scheme=scheme, engine_version="0.33", memory_utilization=0.7735, enforce_eager=True,
                              tensor_parallel=8, max_batched_tokens=1024, max_num_seqs=1))
    device = answer.primary.devices[0]
    assert device.headroom_bytes >= 0
    room = device.usable_bytes - device.weights_bytes - device.overhead_bytes
    assert 101_056_512 < room < 235_405_312
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "marlin_moe_padded_intermediate"
               in warning for warning in answer.warnings)


# --- Qwen2.5-72B, fp8 linear layers at TP 8 on A100 --------------------------------------------------------------
# Per rank: qkv_proj (N (8 + 2) x 128 = 1280, K 8192) and o_proj (N 8192, K 1024) aligned; gate_up_proj
# N 2 x 29568 / 8 = 7392 (115.5 x 64), K 8192 and down_proj N 8192, K 3696 (28.875 x 128, 57.75 x 64).


def test_marlin_padded_nk_of_qwen2_5_72b_mlp_at_tp_8() -> None:
    # gate_up: (round_up(7392, 64), 8192) = (7424, 8192) = (round_up(7392, 128), 8192)
    assert _marlin_padded_nk(7392, 8192, -1) == (7424, 8192)
    # down: (8192, round_up(3696, 128) = 3712) = (8192, round_up(3696, 64) = 3712)
    assert _marlin_padded_nk(8192, 3696, -1) == (8192, 3712)


def test_qwen2_5_72b_fp8_linear_layers_at_tp_8_on_a100_hold_the_padded_weights_in_vllm_033() -> None:
    stage = _stage("qwen2.5-72b-instruct", 8)
    # padded weights: gate_up (7424 - 7392) x 8192 = 262,144, down 8192 x (3712 - 3696) = 131,072: 393,216 a layer
    # x 80 = 31,457,280.  A scale a channel: 16-bit [1, Np] below the checkpoint's float32 [N]: nothing more
    assert VllmProfile("0.19").linear_layout(stage, "fp8-per-channel", A100) is None
    per_channel = VllmProfile("0.33").linear_layout(stage, "fp8-per-channel", A100)
    assert _bytes(per_channel) == 31_457_280
    assert per_channel is not None and "marlin_padded_nk" in per_channel.basis
    # a scale a tensor, repeated to a 16-bit one an output row: (1280 + 8192 + 7392 + 8192) x 2 x 80 = 4,008,960 in
    # every release, and in 0.33 the padded weights and the 32 more scales of gate_up (2 x 32 x 80 = 5,120):
    # 4,008,960 + 31,457,280 + 5,120 = 35,471,360
    assert _bytes(VllmProfile("0.19").linear_layout(stage, "fp8-per-tensor", A100)) == 4_008_960
    assert _bytes(VllmProfile("0.33").linear_layout(stage, "fp8-per-tensor", A100)) == 35_471_360
    # the load transient was already padded: 2 x 7424 x 8192 (0.19: 2 x 7392 x 8192)
    assert _bytes(fp8_marlin_linear_repack_bytes(stage, "0.33", "fp8-per-channel", A100)) == 121_634_816
    assert _bytes(fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-per-channel", A100)) == 121_110_528


def test_aligned_fp8_layers_are_not_padded() -> None:
    # Llama-3.1-70B block fp8 at TP 2 (N and K multiples of 128 throughout): 0.33 holds what 0.19 does
    spec = get_preset_info("llama-3.1-70b").spec
    stage = Stage(spec, 2, 1, (0, spec.num_layers), True)
    old = VllmProfile("0.19").linear_layout(stage, "fp8-block128", A100)
    assert old is not None and _bytes(VllmProfile("0.33").linear_layout(stage, "fp8-block128", A100)) == old.bytes
    # MiniMax-M2.5's experts at TP 4 are 384 wide (6 x 64): unpadded, 863,944,704 in every release
    assert _bytes(VllmProfile("0.33").expert_layout(_stage("minimax-m2.5", 4), "fp8-block128", A100)) == 863_944_704


def test_glm_45_air_block_fp8_at_tp_1_pads_the_dense_down_proj_on_the_stage_holding_it() -> None:
    # TP 1 (fp8_utils.py validate_fp8_block_shape checks only split layers): the first layer's dense down_proj,
    # N 4096, K 10944 (85.5 x 128) -> marlin_padded_nk(4096, 10944, 128) = (4096, 11008): 4096 x 64 = 262,144 more
    # weight bytes; its scales keep ceil(10944 / 128) = 86 groups = 11008 / 128.  Every other layer is aligned
    # (qkv_proj 14336 x 4096, o_proj 4096 x 12288, dense gate_up 21888 x 4096, shared gate_up 2816 x 4096 and
    # down 4096 x 1408, experts 1408 wide)
    first = _stage("glm-4.5-air", 1, (0, 23))
    old = VllmProfile("0.19").linear_layout(first, "fp8-block128", A100)
    new = VllmProfile("0.33").linear_layout(first, "fp8-block128", A100)
    assert old is not None and new is not None and new.bytes - old.bytes == 262_144
    # the second pipeline stage holds no dense MLP: nothing padded
    second = _stage("glm-4.5-air", 1, (23, 46))
    assert (_bytes(VllmProfile("0.33").linear_layout(second, "fp8-block128", A100))
            == _bytes(VllmProfile("0.19").linear_layout(second, "fp8-block128", A100)))


def test_fp8_linear_padding_of_one_layer_by_its_scales() -> None:
    # GLM-4.5-Air's down_proj at TP 1 (N 4096, K 10944 -> 11008): 4096 x 64 weight bytes, its block scales
    # [11008 / 128 = 86, 4096] as unpadded (ceil(10944 / 128) = 86): 262,144; none before 0.33
    assert fp8_marlin_padding_bytes(4096, 10944, "0.33", "block") == 262_144
    assert fp8_marlin_padding_bytes(4096, 10944, "0.19", "block") == 0
    # a block layer whose N pads: (2144, 7168) -> (2176, 7168): 32 x 7168 = 229,376 weight bytes and 32 more
    # columns of 56 16-bit group scales, 2 x 32 x 56 = 3,584
    assert fp8_marlin_padding_bytes(2144, 7168, "0.33", "block") == 229_376 + 3_584
    # Qwen2.5-72B's gate_up at TP 8 (7392 -> 7424 rows of 8192): 262,144 weight bytes; a scale a tensor adds 32
    # 16-bit values; a scale a channel, 2 x 7424 bytes held, stays below the checkpoint's 4 x 7392
    assert fp8_marlin_padding_bytes(7392, 8192, "0.33", "tensor") == 262_144 + 64
    assert fp8_marlin_padding_bytes(7392, 8192, "0.33", "channel") == 262_144


def test_fp8_expert_padding_of_one_expert_by_its_scales() -> None:
    # width 96 -> 128 (lcm(64, 128) = 128 for blocks as well), hidden 2048: 3 x 32 x 2048 = 196,608 weight bytes;
    # w13's 16-bit scales gain 2 x 32 columns: 16 group rows for blocks (2 x 16 x 64 = 2,048 bytes), one for a
    # tensor (128 bytes), none beyond the checkpoint's float32 for a channel (2 x 2 x 128 < 4 x 2 x 96); w2's keep
    # ceil(96 / 128) = 1 group = 128 / 128
    assert fp8_marlin_expert_padding_bytes(96, 2048, "0.33", "block") == 196_608 + 2_048
    assert fp8_marlin_expert_padding_bytes(96, 2048, "0.33", "tensor") == 196_608 + 128
    assert fp8_marlin_expert_padding_bytes(96, 2048, "0.33", "channel") == 196_608
    assert fp8_marlin_expert_padding_bytes(96, 2048, "0.19", "tensor") == 0
    assert fp8_marlin_expert_padding_bytes(768, 2048, "0.33", "tensor") == 0


def test_a_padded_qkv_proj_pads_its_bias_too() -> None:
    # Qwen2.5-72B with a head_dim of 80 (a made-up shape: no catalog model pads its qkv_proj) at TP 8: qkv_proj
    # N (8 + 2) x 80 = 800 -> 832 with K 8192, its bias 2 x 32 = 64 bytes more (marlin_pad_dim); o_proj N 8192,
    # K 640 (5 x 128) aligned.  Per layer 32 x 8192 + the MLP's 393,216 = 655,360, + 64 of bias:
    # 80 x 655,424 = 52,433,920 with a scale a channel
    spec = dataclasses.replace(get_preset_info("qwen2.5-72b-instruct").spec, head_dim=80)
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True)
    assert _bytes(VllmProfile("0.33").linear_layout(stage, "fp8-per-channel", A100)) == 52_433_920


# --- misaligned int4 GPTQ linear layers -------------------------------------------------------------------------


def test_vllm_033_runs_a_misaligned_int4_layer_on_marlin_padded() -> None:
    # Qwen2.5-72B's gate_up_proj at TP 8 (in 8192, out 7392): 0.11/0.19's verify_marlin_supports_shape refuses
    # 7392 % 64; 0.33's MarlinLinearKernel.can_implement takes it and pads it
    assert gptq_dense_kernel("0.19", (8, 0), 8192, 7392, -1, False, False) == ""
    assert gptq_dense_kernel("0.33", (8, 0), 8192, 7392, -1, False, False) == "marlin"
    # its down_proj (in 3696): a whole-row scale pads it; groups of 128 straddle the rank's shard (3696 % 128),
    # which padding cannot fix: refused
    assert gptq_dense_kernel("0.33", (8, 0), 3696, 8192, -1, False, True) == "marlin"
    assert gptq_dense_kernel("0.33", (8, 0), 3696, 8192, 128, False, True) == ""


def test_qwen2_5_72b_gptq_row_at_tp_8_on_a100_holds_the_padded_layers_in_vllm_033() -> None:
    # int4-row-sym-gptq (group -1), TP 8, per layer.  nibble's charge, ceil(bytes / 8) of each checkpoint tensor
    # (qweight in x out / 2, qzeros out / 2, fp16 scales 2 x out, g_idx 4 x in):
    #   q, o (8192 x 8192): (33,554,432 + 4,096 + 16,384 + 32,768) / 8 = 4,200,960 each
    #   k, v (1024 x 8192): (4,194,304 + 512 + 2,048 + 32,768) / 8 = 528,704 each: attention 9,459,328
    #   gate, up (29568 x 8192): (121,110,528 + 14,784 + 59,136 + 32,768) / 8 = 15,152,152 each
    #   down (8192 x 29568): (121,110,528 + 4,096 + 16,384 + 118,272) / 8 = 15,156,160: MLP 45,460,464
    # vLLM 0.33 (AutoGPTQ creates no g_idx, Marlin empties the qzeros), padded with marlin_padded_nk:
    #   qkv_proj (in 8192, out 1280): 5,242,880 + 2 x 1280 = 5,245,440; o_proj (in 1024, out 8192): 4,194,304 +
    #   16,384 = 4,210,688: attention 9,456,128 (-3,200)
    #   gate_up (in 8192, out 7392 -> 7424): 30,408,704 + 14,848 = 30,423,552; down (in 3696 -> 3712, out 8192):
    #   15,204,352 + 16,384 = 15,220,736: MLP 45,644,288 (+183,824)
    #   180,624 a layer x 80 = 14,449,920
    stage = _stage("qwen2.5-72b-instruct", 8)
    assert VllmProfile("0.19").linear_layout(stage, "int4-row-sym-gptq", A100) is None
    term = VllmProfile("0.33").linear_layout(stage, "int4-row-sym-gptq", A100)
    assert _bytes(term) == 14_449_920
    assert term is not None and "marlin_padded_nk" in term.basis


def test_aligned_int4_layers_in_vllm_033_are_unchanged() -> None:
    # Llama-3.1-8B int4-row-sym-gptq at TP 1 on A100 (test_vllm_gptq_row.py): -32 x 177,152 in every release
    spec = get_preset_info("llama-3.1-8b").spec
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    assert _bytes(VllmProfile("0.33").linear_layout(stage, "int4-row-sym-gptq", A100)) == -5_668_864


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_releases_before_033_pad_nothing(version: str) -> None:
    stage = _stage("qwen3-30b-a3b", 8)
    assert _bytes(VllmProfile(version).expert_layout(stage, "fp8-per-tensor", A100)) == 27_525_120
