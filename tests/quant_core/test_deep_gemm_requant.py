"""What vLLM's DeepGEMM post-processing of fp8 [128, 128]-block linear layers holds while loading, and after.

Read in vLLM 0.11.0, 0.19.0 and 0.33.0 and DeepGEMM's csrc/apis/layout.hpp (spec: /work/wt/tasks25/ue8m0_spec.md A).

Where it runs (the deep_gemm package importable: vLLM's Docker images for 0.11 and 0.19, the wheel's vendored copy in
0.33, utils/import_utils.py ``has_deep_gemm``): ``is_deep_gemm_supported`` (utils/deep_gemm.py) on 9.0 and 10.0 in
0.11, on 9.0 and the 10.x family in 0.19 (platforms/cuda.py ``support_deep_gemm``), and the 12.x family too in 0.33;
the layer's quant method takes DeepGEMM (0.19 Fp8LinearMethod ``use_deep_gemm`` ->
quantization/utils/fp8_utils.py ``maybe_post_process_fp8_weight_block``; 0.33 kernels/linear/scaled_mm/deep_gemm.py
``DeepGemmFp8BlockScaledMMKernel.process_weights_after_loading``) for a bf16 layer whose rows N and columns K
``should_use_deepgemm_for_fp8_linear`` takes: N % 64 and K % 128 (0.11: N % 128).  With the default
``VLLM_USE_DEEP_GEMM_E8M0=1`` ``is_deep_gemm_e8m0_used()`` holds on every capability in 0.19 and 0.33 (0.11: on 10.0
only, Hopper behind ``VLLM_USE_DEEP_GEMM_E8M0_HOPPER``, off), so ``requant_weight_ue8m0_inplace`` rewrites each such
layer's weight and scales in place:

    s_exp_r = repeat_interleave(scales, 128, dim=0)         float32 [Np, Ks]        4 x Np x Ks
    s_exp = repeat_interleave(s_exp_r, 128, dim=1)          float32 [Np, K]         4 x Np x K
    w_dq = w_q.to(torch.float32) * s_exp                    a float32 copy and the product, 4 x N x K each
    per_block_cast_to_fp8(w_dq, ..., use_ue8m0=True)        torch.compile(inductor): ~2 x N x K more, below the above

(Np = N rounded up to 128, Ks = K / 128): ``4 Np Ks + 4 Np K + 8 N K`` bytes at once beside the loaded weights, one
layer at a time (model_loader/utils.py ``process_weights_after_loading``), freed before "Model loading took".  Then
(0.19, 0.33) DeepGEMM's ``transform_sf_into_required_layout`` keeps the float32 scales on 9.0 and on 10.x / 12.x
replaces them by UE8M0 exponents packed four to an int32, one row per output row: ``4 x ceil(Ks / 4) x N`` bytes
held for the model's life where the checkpoint held ``4 x ceil(N / 128) x Ks``.
"""

from __future__ import annotations

import pytest

from quant_core.catalog import UNKNOWN_DEVICE, device_facts, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import (
    DEEP_GEMM_EXCLUDED_MODEL_TYPES,
    deep_gemm_expert_requant_bytes,
    deep_gemm_expert_requant_peak_bytes,
    deep_gemm_layout_peak_bytes,
    deep_gemm_requant_bytes,
    deep_gemm_requant_peak_bytes,
    deep_gemm_scale_layout_bytes,
    deep_gemm_takes_linear,
    deep_gemm_ue8m0_scale_bytes,
    fp8_marlin_linear_repack_bytes,
)
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
H200 = device_facts("h200")
H100 = device_facts("h100-80gb")
B200 = device_facts("b200")
A100 = device_facts("a100-80gb")
#: DeepSeek-V3's largest linear layer a rank holds at TP 8, the dense MLP's gate_up_proj (layers 0-2):
#: N = 2 x 18432 / 8 = 4608, K = 7168 (56 groups); 4 x 4608 x 56 + 4 x 4608 x 7168 + 8 x 4608 x 7168 =
#: 1,032,192 + 132,120,576 + 264,241,152
DEEPSEEK_V3_TP8_REQUANT = 397_393_920
#: the packed scales DeepSeek-V3's linear layers hold at TP 8 on 10.x beyond nibble's charge of the checkpoint's
#: (N x K // 4096 a layer), 4 x ceil(Ks / 4) x N each (`_deepseek_v3_held` below)
DEEPSEEK_V3_TP8_HELD = 21_329_040


def _stage(name: str, tensor_parallel: int, expert_parallel: bool = False) -> Stage:
    spec = get_preset_info(name).spec
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True, expert_parallel=expert_parallel)


def test_one_layers_requant_holds_the_expanded_scales_the_float32_copy_and_the_product_at_once() -> None:
    # gate_up_proj of DeepSeek-V3 at TP 8: every tensor a multiple of 2 MiB or under 10 MiB, so PyTorch's allocator
    # counts them as asked (torch_cuda.allocated_block_bytes)
    assert deep_gemm_requant_peak_bytes(4608, 7168) == DEEPSEEK_V3_TP8_REQUANT
    # Qwen3-235B-A22B's qkv_proj at TP 4: N = (64 + 2 x 4) x 128 / 4 = 2304, K = 4096 (32 groups):
    # 4 x 2304 x 32 + 4 x 2304 x 4096 + 8 x 2304 x 4096 = 294,912 + 37,748,736 + 75,497,472
    assert deep_gemm_requant_peak_bytes(2304, 4096) == 113_541_120
    # DeepSeek-V3's replicated fused_qkv_a_proj, N = 1536 + 512 + 64 = 2112 (Np = 17 x 128 = 2176), K = 7168:
    # 4 x 2176 x 56 = 487,424; s_exp 4 x 2176 x 7168 = 62,390,272 (59.5 MiB) and the float32 copy and product
    # 4 x 2112 x 7168 = 60,555,264 (57.75 MiB) each get a 2 MiB-rounded segment whose remainder (0.5 and 0.25 MiB)
    # stays in the block: 62,914,560 and 2 x 60,817,408.  As asked: 183,988,224; as PyTorch counts: 185,036,800
    assert deep_gemm_requant_peak_bytes(2112, 7168) == 487_424 + 62_914_560 + 2 * 60_817_408 == 185_036_800
    # the eager per_block_cast_to_fp8 (a zero-padded float32 copy, its abs() and the scaled product, 9 x Np x K beside
    # s_exp and w_dq: 17 x N x K + 4 x Np x Ks + 3 x 4 x Ns x Ks = 562,568,832) is not what runs: vLLM compiles it
    # (utils/deep_gemm.py: @torch.compile(dynamic=True, backend="inductor"), which fuses those away)
    assert 17 * 4608 * 7168 + 4 * 4608 * 56 + 3 * 4 * 36 * 56 == 562_568_832 != deep_gemm_requant_peak_bytes(4608, 7168)


def test_deep_gemm_takes_linear_layers_by_should_use_deepgemm_for_fp8_linears_shape_rule() -> None:
    # 0.19 and 0.33: N % 64 and K % 128 (utils/deep_gemm.py N_MULTIPLE, K_MULTIPLE); 0.11: N % 128
    for version in ("0.19", "0.33"):
        assert deep_gemm_takes_linear(version, 2112, 7168)
        assert not deep_gemm_takes_linear(version, 2112 + 32, 7168)
        assert not deep_gemm_takes_linear(version, 4096, 2736)
    assert not deep_gemm_takes_linear("0.11", 2112, 7168)
    assert deep_gemm_takes_linear("0.11", 4608, 7168)


def _deepseek_v3_held() -> int:
    # (count, N, K) at TP 8 (quant_core.engines's _fp8_linear_layers) and 4 x ceil(ceil(K / 128) / 4) x N less
    # N x K // 4096:
    #   fused_qkv_a_proj (61) 2112 x 7168: 4 x 14 x 2112 = 118,272 - 3,696 = 114,576
    #   q_b_proj (61) 3072 x 1536: 4 x 3 x 3072 = 36,864 - 1,152 = 35,712
    #   kv_b_proj (61) 4096 x 512: 4 x 1 x 4096 = 16,384 - 512 = 15,872
    #   o_proj (61) 7168 x 2048: 4 x 4 x 7168 = 114,688 - 3,584 = 111,104
    #   dense gate_up_proj (3) 4608 x 7168: 258,048 - 8,064 = 249,984; down_proj (3) 7168 x 2304: 4 x 5 x 7168 =
    #   143,360 - 4,032 = 139,328
    #   shared gate_up_proj (58) 512 x 7168: 28,672 - 896 = 27,776; down_proj (58) 7168 x 256: 28,672 - 448 = 28,224
    # 61 x 277,264 + 3 x 389,312 + 58 x 56,000 = 16,913,104 + 1,167,936 + 3,248,000
    return 61 * 277_264 + 3 * 389_312 + 58 * 56_000


def test_packed_ue8m0_scales_of_a_layer_are_four_exponents_an_int32_per_output_row() -> None:
    # get_mn_major_tma_aligned_packed_ue8m0_tensor (DeepGEMM smxx_layout.hpp): int32 [1, N, ceil(Ks / 4)] with
    # strides (ceil(Ks / 4) x tm, 1, tm), tm = N rounded up to 4; the storage of empty_strided ends at the last row
    assert deep_gemm_ue8m0_scale_bytes(4608, 7168) == 4 * 14 * 4608 == 258_048
    assert deep_gemm_ue8m0_scale_bytes(7168, 256) == 4 * 1 * 7168
    # N not a multiple of 4 (not a layer DeepGEMM takes, the formula's edge): tm = 132, 2 x 132 + 130 int32
    assert deep_gemm_ue8m0_scale_bytes(130, 5 * 128) == 4 * (2 * 132 - 2)
    assert _deepseek_v3_held() == DEEPSEEK_V3_TP8_HELD


def test_the_layout_step_stays_below_the_requant_for_every_deepseek_v3_layer() -> None:
    # transform_sf_into_required_layout on 10.x: the int64 arange (8 N, freed after index_select), the float32
    # broadcast [N, Ks] and the packed output: max(8 N + 4 N Ks, 4 N Ks + packed), after the requant's locals are
    # freed; gate_up_proj: max(36,864 + 1,032,192, 1,032,192 + 258,048) = 1,290,240
    assert deep_gemm_layout_peak_bytes(4608, 7168) == 1_290_240
    stage = _stage("deepseek-v3", 8)
    for _count, out_features, in_features in ((61, 2112, 7168), (61, 3072, 1536), (61, 4096, 512), (61, 7168, 2048),
                                               (3, 4608, 7168), (3, 7168, 2304), (58, 512, 7168), (58, 7168, 256)):
        assert deep_gemm_layout_peak_bytes(out_features, in_features) < deep_gemm_requant_peak_bytes(
            out_features, in_features)
    term = deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", B200)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_REQUANT


@pytest.mark.parametrize("version", ["0.19", "0.33"])
@pytest.mark.parametrize("device_id", ["h200", "h100-80gb", "b200", "b300", "gb200"])
def test_deepseek_v3_tp8_requantizes_its_gate_up_proj_while_loading_on_hopper_and_blackwell(
        version: str, device_id: str) -> None:
    term = deep_gemm_requant_bytes(_stage("deepseek-v3", 8), version, "fp8-block128", device_facts(device_id))
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_REQUANT
    assert "requant_weight_ue8m0_inplace" in term.basis and "4608 x 7168" in term.basis
    # the checkpoint's own block-fp8 label is the same format
    checkpoint = deep_gemm_requant_bytes(_stage("deepseek-v3", 8), version, "checkpoint-fp8-block128",
                                         device_facts(device_id))
    assert checkpoint is not None and checkpoint.bytes == DEEPSEEK_V3_TP8_REQUANT


def test_vllm_011_requantizes_only_on_10_0_and_only_rows_of_128() -> None:
    # 0.11 utils/deep_gemm.py is_deep_gemm_e8m0_used: 10.0 with VLLM_USE_DEEP_GEMM_E8M0 (on), 9.0 only with
    # VLLM_USE_DEEP_GEMM_E8M0_HOPPER (off); maybe_post_process_fp8_weight_block requantizes where
    # should_use_deepgemm_for_fp8_linear (N % 128, K % 128): fused_qkv_a_proj (2112) is not, gate_up_proj is
    stage = _stage("deepseek-v3", 8)
    term = deep_gemm_requant_bytes(stage, "0.11", "fp8-block128", B200)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_REQUANT
    assert deep_gemm_requant_bytes(stage, "0.11", "fp8-block128", H200) is None
    # 0.11's is_deep_gemm_supported: 9.0 or 10.0 exactly, not the family
    assert deep_gemm_requant_bytes(stage, "0.11", "fp8-block128", device_facts("b300")) is None
    # 0.11 keeps the float32 scales (no transform_sf_into_required_layout for linear layers)
    assert deep_gemm_scale_layout_bytes(stage, "0.11", "fp8-block128", B200) is None


def test_qwen3_235b_tp4_requantizes_its_qkv_proj_while_loading() -> None:
    stage = _stage("qwen3-235b-a22b", 4)
    term = deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", H200)
    assert term is not None and term.bytes == 113_541_120 and "2304 x 4096" in term.basis


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_on_10x_the_linear_layers_hold_packed_ue8m0_scales_after_loading(version: str) -> None:
    term = deep_gemm_scale_layout_bytes(_stage("deepseek-v3", 8), version, "fp8-block128", B200)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_HELD
    assert "transform_sf_into_required_layout" in term.basis
    # Qwen3-235B-A22B TP 4, 94 layers: qkv_proj 4 x 8 x 2304 - 2304 = 71,424, o_proj (4096 x 2048)
    # 4 x 4 x 4096 - 2048 = 63,488: 134,912 x 94 = 12,681,728
    qwen = deep_gemm_scale_layout_bytes(_stage("qwen3-235b-a22b", 4), version, "fp8-block128", B200)
    assert qwen is not None and qwen.bytes == 12_681_728
    # 9.0 keeps the float32 scales (layout.hpp: check_sf_layout returns the same tensor)
    assert deep_gemm_scale_layout_bytes(_stage("deepseek-v3", 8), version, "fp8-block128", H200) is None
    assert deep_gemm_scale_layout_bytes(_stage("qwen3-235b-a22b", 4), version, "fp8-block128", H200) is None


def test_vllm_033_runs_deep_gemm_on_12x_and_0_19_does_not() -> None:
    # platforms/cuda.py support_deep_gemm: 0.33 adds is_device_capability_family(120)
    stage, rtx = _stage("deepseek-v3", 8), device_facts("rtx-pro-6000")
    held = deep_gemm_scale_layout_bytes(stage, "0.33", "fp8-block128", rtx)
    assert held is not None and held.bytes == DEEPSEEK_V3_TP8_HELD
    term = deep_gemm_requant_bytes(stage, "0.33", "fp8-block128", rtx)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_REQUANT
    assert deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", rtx) is None
    assert deep_gemm_scale_layout_bytes(stage, "0.19", "fp8-block128", rtx) is None


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_linear_layout_charges_the_packed_scales_on_10x_and_the_marlin_scales_below_9_0(version: str) -> None:
    stage = _stage("deepseek-v3", 8)
    term = VllmProfile(version).linear_layout(stage, "fp8-block128", B200)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_HELD
    # A100 keeps the Marlin term (test_fp8_marlin_layout: 41,568,912 for DeepSeek-V3 at TP 8)
    marlin = VllmProfile(version).linear_layout(stage, "fp8-block128", A100)
    assert marlin is not None and marlin.bytes == 41_568_912 and "prepare_fp8_layer_for_marlin" in marlin.basis
    assert VllmProfile(version).linear_layout(stage, "fp8-block128", H200) is None


def test_outside_budget_weighs_the_requant_as_a_load_transient() -> None:
    stage = _stage("deepseek-v3", 8)
    profile = VllmProfile("0.19")
    limits = profile.batch_limits(141 * GIB, "h200")
    budget = profile.outside_budget(stage, "bf16", limits, False, H200, "fp8-block128", "fp8-block128")
    # Triton takes the experts as loaded on 9.0 without expert parallelism: the linear requant is the one transient
    assert budget.repack is not None and budget.repack.bytes == DEEPSEEK_V3_TP8_REQUANT
    assert "requant_weight_ue8m0_inplace" in budget.repack.basis and budget.loads
    h100 = profile.outside_budget(stage, "bf16", profile.batch_limits(80 * GIB, "h100-80gb"), False, H100,
                                  "fp8-block128", "fp8-block128")
    assert h100.repack is not None and h100.repack.bytes == DEEPSEEK_V3_TP8_REQUANT
    # without the linear layers' format nothing is known of their kernel (the EP test of test_fp8_marlin_layout)
    assert profile.outside_budget(stage, "bf16", limits, False, H200, "fp8-block128").repack is None
    # under expert parallelism FlashInfer's w13 flip, 32 x 2 x 2048 x 7168 = 939,524,096, is the larger
    expert = profile.outside_budget(_stage("deepseek-v3", 8, expert_parallel=True), "bf16", limits, False, H200,
                                    "fp8-block128", "fp8-block128")
    assert expert.repack is not None and expert.repack.bytes == 939_524_096


def test_no_requant_where_deep_gemm_does_not_run_the_linear_layers() -> None:
    stage = _stage("deepseek-v3", 8)
    # A100: Marlin's repack is the one charged (2 x 4608 x 7168), not DeepGEMM's
    assert deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", A100) is None
    marlin = fp8_marlin_linear_repack_bytes(stage, "0.19", "fp8-block128", A100)
    assert marlin is not None and marlin.bytes == 2 * 4608 * 7168
    limits = VllmProfile("0.19").batch_limits(80 * GIB, "a100-80gb")
    budget = VllmProfile("0.19").outside_budget(stage, "bf16", limits, False, A100, "", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == 2 * 4608 * 7168
    # other formats: one scale a tensor or a channel runs on CUTLASS, without a requant
    for label in ("fp8-per-tensor", "fp8-per-channel", "bf16", ""):
        assert deep_gemm_requant_bytes(stage, "0.19", label, H200) is None
    # AMD: no DeepGEMM
    mi300x = device_facts("mi300x")
    assert deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", mi300x) is None
    assert deep_gemm_scale_layout_bytes(stage, "0.33", "fp8-block128", mi300x) is None
    # 8.9: not a DeepGEMM capability
    assert deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", device_facts("l40s")) is None


def test_a_device_of_unknown_capability_is_charged_as_a_blackwell_one() -> None:
    # the safe side: it may run DeepGEMM (every capability requantizes in 0.19), and 10.x packs the scales
    stage = _stage("deepseek-v3", 8)
    term = deep_gemm_requant_bytes(stage, "0.19", "fp8-block128", UNKNOWN_DEVICE)
    assert term is not None and term.bytes == DEEPSEEK_V3_TP8_REQUANT and "not known" in term.basis
    held = deep_gemm_scale_layout_bytes(stage, "0.19", "fp8-block128", UNKNOWN_DEVICE)
    assert held is not None and held.bytes == DEEPSEEK_V3_TP8_HELD and "not known" in held.basis


def test_blackwell_excluded_model_types_follow_should_auto_disable_deep_gemm() -> None:
    # utils/deep_gemm.py _DEEPGEMM_BLACKWELL_EXCLUDED_MODEL_TYPES (vLLM reads hf_text_config.model_type): 0.19 the
    # 10.x family; 0.33 10.x and 12.x, kolibri1 on 12.x only
    assert DEEP_GEMM_EXCLUDED_MODEL_TYPES["0.19"]["qwen3_5_text"] == (10,)
    assert DEEP_GEMM_EXCLUDED_MODEL_TYPES["0.33"]["qwen3_5_moe_text"] == (10, 12)
    assert DEEP_GEMM_EXCLUDED_MODEL_TYPES["0.33"]["kolibri1"] == (12,)


#: Qwen3-Next-80B-A3B at TP 1 (hidden 2048; Gated DeltaNet: 16 key and 32 value heads of 128, in 36 of its 48
#: layers; gated full attention: 16 heads (x 2 with the output gate) and 2 KV heads of 256 in the other 12; every
#: layer a sparse block with one shared expert of width 512).  The rank's block-fp8 linear layers (count, N x K):
#:   in_proj_qkvz (36) (2 x 2048 + 2 x 4096) = 12288 x 2048; in_proj_ba (36) 2 x 32 = 64 x 2048;
#:   out_proj (36) 2048 x 4096; qkv_proj (12) (32 + 2 x 2) x 256 = 9216 x 2048; o_proj (12) 2048 x 4096;
#:   shared expert gate_up_proj (48) 1024 x 2048, down_proj (48) 2048 x 512
#: the largest requant, in_proj_qkvz's (Ks = 16, Np = N): 4 x 12288 x 16 + 4 x 12288 x 2048 + 8 x 12288 x 2048 =
#: 786,432 + 100,663,296 + 201,326,592 (qkv_proj's: 589,824 + 75,497,472 + 150,994,944 = 227,082,240)
QWEN3_NEXT_TP1_REQUANT = 302_776_320
#: held on 10.x, 4 x ceil(Ks / 4) x N - N x K // 4096 a layer:
#:   in_proj_qkvz 4 x 4 x 12288 - 6,144 = 190,464 (x 36 = 6,856,704); in_proj_ba 4 x 4 x 64 - 32 = 992 (35,712);
#:   out_proj 4 x 8 x 2048 - 2,048 = 63,488 (x 36 = 2,285,568); qkv_proj 4 x 4 x 9216 - 4,608 = 142,848
#:   (x 12 = 1,714,176); o_proj 63,488 (x 12 = 761,856); gate_up 4 x 4 x 1024 - 512 = 15,872 and down
#:   4 x 1 x 2048 - 256 = 7,936 (x 48 = 1,142,784)
QWEN3_NEXT_TP1_HELD = 6_856_704 + 35_712 + 2_285_568 + 1_714_176 + 761_856 + 1_142_784


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_qwen3_next_fp8_requantizes_its_gated_delta_net_in_proj_qkvz_on_hopper_and_blackwell(version: str) -> None:
    # Fp8LinearMethod (0.19) and DeepGemmFp8BlockScaledMMKernel (0.33) post-process every block-fp8 linear layer
    # should_use_deepgemm_for_fp8_linear takes, whatever the model: GatedDeltaNetAttention's projections too
    stage = _stage("qwen3-next-80b-a3b-instruct", 1)
    for device in (H100, B200):
        term = deep_gemm_requant_bytes(stage, version, "fp8-block128", device)
        assert term is not None and term.bytes == QWEN3_NEXT_TP1_REQUANT and "12288 x 2048" in term.basis
    assert QWEN3_NEXT_TP1_HELD == 12_796_800
    held = deep_gemm_scale_layout_bytes(stage, version, "fp8-block128", B200)
    assert held is not None and held.bytes == QWEN3_NEXT_TP1_HELD
    assert deep_gemm_scale_layout_bytes(stage, version, "fp8-block128", H100) is None
    linear = VllmProfile(version).linear_layout(stage, "fp8-block128", B200)
    assert linear is not None and linear.bytes == QWEN3_NEXT_TP1_HELD
    # at TP 2 every N halves: in_proj_qkvz 6144 x 2048, 4 x 6144 x 16 + 12 x 6144 x 2048 = 393,216 + 150,994,944
    term = deep_gemm_requant_bytes(_stage("qwen3-next-80b-a3b-instruct", 2), version, "fp8-block128", H100)
    assert term is not None and term.bytes == 151_388_160


def test_qwen3_next_fp8_requant_is_the_load_transient_on_hopper_without_expert_parallelism() -> None:
    # 9.0 without expert parallelism: Triton takes the block-fp8 experts as loaded, so in_proj_qkvz's requant is the
    # one load transient
    stage, profile = _stage("qwen3-next-80b-a3b-instruct", 1), VllmProfile("0.19")
    budget = profile.outside_budget(stage, "bf16", profile.batch_limits(80 * GIB, "h100-80gb"), False, H100,
                                    "fp8-block128", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == QWEN3_NEXT_TP1_REQUANT


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_qwen3_5_moe_fp8_is_requantized_on_9_0_but_not_where_vllm_turns_deep_gemm_off(version: str) -> None:
    # Qwen3.6-35B-A3B (qwen3_5_moe; vLLM reads hf_text_config.model_type "qwen3_5_moe_text"): the same Gated DeltaNet
    # and attention sizes as Qwen3-Next (in_proj_qkvz 12288 x 2048 at TP 1: 302,776,320), 40 layers.
    # should_auto_disable_deep_gemm turns DeepGEMM off for it on the 10.x family (0.33: and 12.x) only, so on 9.0
    # every qualifying layer is rewritten, float32 scales kept
    stage = _stage("qwen3.6-35b-a3b", 1)
    term = deep_gemm_requant_bytes(stage, version, "fp8-block128", H100)
    assert term is not None and term.bytes == QWEN3_NEXT_TP1_REQUANT
    assert deep_gemm_scale_layout_bytes(stage, version, "fp8-block128", H100) is None
    for device_id in ("b200", "b300", "rtx-pro-6000"):
        assert deep_gemm_requant_bytes(stage, version, "fp8-block128", device_facts(device_id)) is None
        assert deep_gemm_scale_layout_bytes(stage, version, "fp8-block128", device_facts(device_id)) is None
    # Qwen3-Next (qwen3_next) is not in the list: rewritten on Blackwell as on Hopper
    assert deep_gemm_requant_bytes(_stage("qwen3-next-80b-a3b-instruct", 1), version, "fp8-block128", B200)


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_llama_4_and_gpt_oss_block_fp8_linear_layers_are_requantized_too(version: str) -> None:
    # Llama 4 Maverick at TP 8 (llama4.py: qkv_proj, o_proj, the dense layers' LlamaMLP of intermediate_size_mlp
    # 16384, the shared expert's of 8192): the dense gate_up_proj, 2 x 16384 / 8 = 4096 x 5120 (40 groups), is the
    # largest: 4 x 4096 x 40 + 4 x 4096 x 5120 + 8 x 4096 x 5120 = 655,360 + 83,886,080 + 167,772,160
    term = deep_gemm_requant_bytes(_stage("llama-4-maverick-17b-128e-instruct", 8), version, "fp8-block128", H100)
    assert term is not None and term.bytes == 252_313_600 and "4096 x 5120" in term.basis
    # gpt-oss-20b at TP 1 (gpt_oss.py: qkv_proj and o_proj with the quant_config): hidden 2880 is no multiple of 128,
    # so qkv_proj (K 2880) is not DeepGEMM's; o_proj, 2880 x 64 x 64 = 2880 x 4096, is (2880 % 64 == 0): Np = 2944,
    # 4 x 2944 x 32 = 376,832, s_exp 4 x 2944 x 4096 = 48,234,496, and the float32 copy and product 4 x 2880 x 4096 =
    # 47,185,920 (45 MiB) each in a 2 MiB-rounded segment of 48,234,496 (torch_cuda.allocated_block_bytes)
    gpt = deep_gemm_requant_bytes(_stage("gpt-oss-20b", 1), version, "fp8-block128", H100)
    assert gpt is not None and gpt.bytes == 376_832 + 3 * 48_234_496 == 145_080_320 and "2880 x 4096" in gpt.basis


def test_one_moe_layers_expert_requant_keeps_the_previous_experts_results_beside_the_next_ones() -> None:
    # requant_weight_ue8m0_inplace's loop over [E, N, K]: from the second expert on, the previous w_dq (4 N K),
    # w_requant (N K) and s_requant (4 Ns Ks) are still bound while the next w_dq is computed.  DeepSeek-V3 TP 8, w13
    # of 2 x 256 = 512 rows and K 7168: 4 x 512 x 56 = 114,688, s_exp 4 x 512 x 7168 = 14,680,064, 3 x 14,680,064
    # float32 (the previous w_dq, the copy, the product), 512 x 7168 = 3,670,016 fp8, 4 x 4 x 56 = 896 scale bytes
    # counted as the allocator's 1,024: 62,505,984
    assert deep_gemm_expert_requant_peak_bytes(512, 7168, 256) == 62_505_984
    # w2, 7168 x 256: 57,344 + 7,340,032 + 3 x 7,340,032 + 1,835,008 + 448 -> 512 = 31,252,992
    assert deep_gemm_expert_requant_peak_bytes(7168, 256, 256) == 31_252_992
    # one expert alone is a linear layer's figure
    assert deep_gemm_expert_requant_peak_bytes(512, 7168, 1) == deep_gemm_requant_peak_bytes(512, 7168) == 44_154_880


def test_vllm_011_requantizes_block_fp8_experts_on_10_0_whatever_their_kernel() -> None:
    # 0.11 quantization/fp8.py Fp8MoEMethod.process_weights_after_loading: ``if is_deep_gemm_e8m0_used() and
    # self.block_quant`` requant_weight_ue8m0_inplace(w13), then (w2): every backend, on 10.0
    stage = _stage("deepseek-v3", 8)
    term = deep_gemm_expert_requant_bytes(stage, "0.11", B200, "fp8-block128")
    assert term is not None and term.bytes == 62_505_984 and "512 x 7168" in term.basis
    # the dense gate_up_proj's requant (397,393,920) is the larger at TP 8; under expert parallelism each rank
    # requantizes 32 whole experts, w13 4096 x 7168: 917,504 + 117,440,512 + 3 x 117,440,512 + 29,360,128 + 7,168
    limits = VllmProfile("0.11").batch_limits(180 * GIB, "b200")
    budget = VllmProfile("0.11").outside_budget(stage, "bf16", limits, False, B200, "fp8-block128", "fp8-block128")
    assert budget.repack is not None and budget.repack.bytes == DEEPSEEK_V3_TP8_REQUANT
    expert = VllmProfile("0.11").outside_budget(_stage("deepseek-v3", 8, expert_parallel=True), "bf16", limits,
                                                False, B200, "fp8-block128", "fp8-block128")
    assert expert.repack is not None and expert.repack.bytes == 500_046_848
    assert "requant_weight_ue8m0_inplace" in expert.repack.basis and "32 experts' w13" in expert.repack.basis
    # Qwen3-235B-A22B at TP 4 under expert parallelism: 32 experts, w13 3072 x 4096 (214,305,792) over the qkv_proj's
    # 113,541,120
    qwen = VllmProfile("0.11").outside_budget(_stage("qwen3-235b-a22b", 4, expert_parallel=True), "bf16", limits,
                                              False, B200, "fp8-block128", "fp8-block128")
    assert qwen.repack is not None and qwen.repack.bytes == 214_305_792
    # not on 9.0 (VLLM_USE_DEEP_GEMM_E8M0_HOPPER off), nor in 0.19 and 0.33 (only a DeepGEMM expert backend, not their
    # default for block fp8), nor for experts of another format
    assert deep_gemm_expert_requant_bytes(stage, "0.11", H200, "fp8-block128") is None
    for version in ("0.19", "0.33"):
        assert deep_gemm_expert_requant_bytes(stage, version, B200, "fp8-block128") is None
    assert deep_gemm_expert_requant_bytes(stage, "0.11", B200, "fp8-per-tensor") is None
    assert deep_gemm_expert_requant_bytes(_stage("llama-3.1-70b", 2), "0.11", B200, "fp8-block128") is None

def test_deepseek_v3_fp8_plan_on_h200_does_not_fit_where_the_requant_has_no_room_to_load() -> None:
    # 8 devices of 84.1 GiB at memory_utilization 0.975, eager, 512 tokens, vLLM 0.33 (no DeepGEMM warm-up on 9.0,
    # whose excess would bind first on 0.19): serving fits (82.00 GiB usable, 79.29 of weights, 2.45 of overhead,
    # 68 MB headroom), but while loading the budget still free (0.24 GiB: the KV pool and profiling peak, sized later)
    # and the 2.10 GiB outside it beside the 2.06 GiB start-up memory cannot hold the 0.37 GiB (397,393,920 bytes)
    # gate_up_proj's requant needs at once: 2.20 GiB needed outside.  Without the requant the plan fits.
    info = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(info.quantization_config)
    answer = plan(info.spec, Hardware(int(84.1 * GIB), 8, "h200"), Workload(512, 1),
                  PlanOptions(scheme=scheme, engine_version="0.33", memory_utilization=0.975, enforce_eager=True,
                              tensor_parallel=8, max_batched_tokens=512, max_num_seqs=1))
    device = answer.primary.devices[0]
    assert device.used_bytes <= device.usable_bytes
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "requant_weight_ue8m0_inplace"
               in warning for warning in answer.warnings)
