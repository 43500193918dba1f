"""vLLM's MoeWNA16 fallback for GPTQ and AWQ int4 experts that Marlin does not take.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* 0.11/0.19 gptq_marlin.py and awq_marlin.py ``get_quant_method`` (and awq.py, gptq.py) hand a FusedMoE layer to
  ``MoeWNA16Config`` where ``check_moe_marlin_supports_layer`` fails: hidden % 128 or the rank's width not a multiple
  of ``max(64, group)``; 0.33 auto_gptq.py / auto_awq.py with ``allow_tile_padding=True``: the group must divide the
  rank's width.  0.33's ``select_wna16_moe_backend`` refuses Marlin to MoeWNA16 and takes TRITON (HUMMING first on
  compute capability 9.0, ``prioritize_humming``).
* quantization/moe_wna16.py ``MoeWNA16Method.create_weights``: the group halved until it divides the rank's width
  and the hidden size (asserting at least 32); uint8 ``w13_qweight`` [E, 2N, H/2] and ``w2_qweight`` [E, H, N/2],
  16-bit ``w13_scales`` [E, 2N, H/g'] and ``w2_scales`` [E, H, N/g'], uint8 qzeros [E, N, H/g'] and [E, H/2, N/g']
  only with ``has_zp``; GPTQ's g_idx are empty tensors.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import device_facts, get_preset
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_expert_layouts import moe_wna16_act_order_note, moe_wna16_backend
from quant_core.engines.vllm_moe_buffers import fused_moe_caches
from quant_core.engines.vllm_refusals import int4_expert_refusal, moe_wna16_group
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
# Qwen3-30B-A3B: hidden 2048, 128 experts 768 wide, 48 MoE layers
LAYERS, EXPERTS, HIDDEN, WIDTH = 48, 128, 2048, 768


def _gptq_tensor(out_features: int, in_features: int, group: int) -> int:
    """A GPTQ checkpoint's bytes for one projection: int32 qweight [in/8, out], int32 qzeros [G, out/8], fp16 scales
    [G, out], int32 g_idx [in]."""
    groups = in_features // group
    return in_features * out_features // 2 + groups * out_features // 2 + 2 * groups * out_features + 4 * in_features


def _awq_tensor(out_features: int, in_features: int, group: int) -> int:
    """An AWQ checkpoint's bytes for one projection: int32 qweight [in, out/8], qzeros [G, out/8], fp16 scales."""
    groups = in_features // group
    return in_features * out_features // 2 + groups * out_features // 2 + 2 * groups * out_features


def _charge(tensor_bytes: int, down_bytes: int, tensor_parallel: int) -> int:
    """nibble's charge of one expert on one rank: gate and up [768 x 2048], down [2048 x 768], each ceil(/tp)."""
    return 2 * -(-tensor_bytes // tensor_parallel) + -(-down_bytes // tensor_parallel)


def _term(version: str, label: str, tensor_parallel: int, device: str) -> int | None:
    spec = get_preset("qwen3-30b-a3b")
    term = VllmProfile(version).expert_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                              device_facts(device))
    return None if term is None else term.bytes


@pytest.mark.parametrize(("hidden", "width", "group", "expected"), [
    (2048, 768, 128, 128), (2048, 192, 128, 64), (2048, 96, 128, 32), (2048, 48, 128, None), (2048, 96, -1, None),
])
def test_moe_wna16_halves_the_group_until_it_divides_the_width_and_refuses_below_32(
        hidden: int, width: int, group: int, expected: int | None) -> None:
    assert moe_wna16_group(hidden, width, group) == expected


@pytest.mark.parametrize("version", ["0.11", "0.19"])
@pytest.mark.parametrize(("tensor_parallel", "expected"), [(4, 55_050_240), (8, 140_771_328)])
def test_qwen3_30b_gptq_g128_experts_marlin_refuses_are_charged_moe_wna16s_halved_groups(
        version: str, tensor_parallel: int, expected: int) -> None:
    # A100, GPTQ g128 symmetric.  TP 4: N = 192, not a multiple of 128, so MoeWNA16 holds them at g' = 64:
    # values 1.5 x 192 x 2048 = 589,824, scales 2 x 3 x 192 x 2048 / 64 = 36,864, no qzeros, no g_idx: 626,688 an
    # expert, where nibble charged the checkpoint's 2 x 206,336 + 205,056 = 617,728.  8,960 x 128 x 48 = 55,050,240
    # bytes a rank more (nibble charged nothing more before: the layout was "not read").  TP 8: N = 96, g' = 32:
    # 294,912 + 36,864 = 331,776 against 308,864: 22,912 x 6,144 = 140,771,328.
    width = WIDTH // tensor_parallel
    group = 64 if tensor_parallel == 4 else 32
    held = 3 * width * HIDDEN // 2 + 2 * 3 * width * HIDDEN // group
    charged = _charge(_gptq_tensor(WIDTH, HIDDEN, 128), _gptq_tensor(HIDDEN, WIDTH, 128), tensor_parallel)
    assert LAYERS * EXPERTS * (held - charged) == expected
    if tensor_parallel == 4:
        assert (held, charged) == (626_688, 617_728)
    assert moe_wna16_backend(get_preset("qwen3-30b-a3b"), "int4-g128-sym-gptq", tensor_parallel, False, version,
                             device_facts("a100-80gb")) == "triton"
    assert _term(version, "int4-g128-sym-gptq", tensor_parallel, "a100-80gb") == expected


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
@pytest.mark.parametrize("tensor_parallel", [1, 2])
def test_qwen3_30b_gptq_g128_at_tp_1_and_2_stays_on_marlin(version: str, tensor_parallel: int) -> None:
    # N = 768 and 384, multiples of 128: Marlin takes them (the GPTQMarlinMoEMethod / 0.33 Marlin terms apply)
    assert moe_wna16_backend(get_preset("qwen3-30b-a3b"), "int4-g128-sym-gptq", tensor_parallel, False, version,
                             device_facts("a100-80gb")) == ""


def test_awq_experts_on_moe_wna16_keep_uint8_zero_points_at_the_halved_group() -> None:
    # AWQ g128 (zero_point) at TP 4 on vLLM 0.19: 626,688 + zero points 1.5 x 192 x 2048 / 64 = 9,216 -> 635,904
    # an expert against the checkpoint's (817,152 x 3) / 4 = 612,864: 23,040 x 6,144 = 141,557,760
    held = 626_688 + 9_216
    charged = _charge(_awq_tensor(WIDTH, HIDDEN, 128), _awq_tensor(HIDDEN, WIDTH, 128), 4)
    assert charged == 612_864
    assert _term("0.19", "int4-g128-asym-awq", 4, "a100-80gb") == LAYERS * EXPERTS * (held - charged) == 141_557_760


def test_asymmetric_gptq_on_0_19_reaches_moe_wna16_without_zero_points() -> None:
    # gptq.py GPTQConfig.get_quant_method passes "sym": True to MoeWNA16, so an asymmetric GPTQ checkpoint's experts
    # hold no qzeros even where Marlin's shape would fit (TP 2: N = 384): 1.5 x 384 x 2048 + 6 x 384 x 2048 / 128
    # = 1,216,512 an expert against the checkpoint's 2 x 412,672 + 410,112 = 1,235,456: 18,944 less
    charged = _charge(_gptq_tensor(WIDTH, HIDDEN, 128), _gptq_tensor(HIDDEN, WIDTH, 128), 2)
    assert charged == 1_235_456
    assert moe_wna16_backend(get_preset("qwen3-30b-a3b"), "int4-g128-asym-gptq", 2, False, "0.19",
                             device_facts("a100-80gb")) == "triton"
    assert _term("0.19", "int4-g128-asym-gptq", 2, "a100-80gb") == LAYERS * EXPERTS * (1_216_512 - charged)


def test_vllm_0_33_moe_wna16_runs_triton_on_ampere_and_humming_at_the_halved_group_on_hopper() -> None:
    # TP 4, g128: 192 % 128 != 0, so 0.33's check_moe_marlin_supports_layer(allow_tile_padding=True) refuses and
    # MoeWNA16 takes them.  A100: the TRITON backend keeps create_weights' tensors (55,050,240 as in 0.19).  H100:
    # Humming at g' = 64: w13 384 x 2048 -> 512 x 2048, w2 2048 x 192 -> 2048 x 256; values 786,432, scales
    # (512 x 32 + 2048 x 4) x 2 = 49,152: 835,584 against 617,728, 217,856 x 6,144 = 1,338,507,264, and 48 lock
    # buffers of 8 x 132 int32 (create_humming_locks, one a layer's HummingExpertsBase): 1,338,710,016 (nibble
    # charged AutoGPTQ's Humming layout at g128 before, 811,008 an expert: 1,187,512,320, 151 MB a rank short)
    assert _term("0.33", "int4-g128-sym-gptq", 4, "a100-80gb") == 55_050_240
    assert moe_wna16_backend(get_preset("qwen3-30b-a3b"), "int4-g128-sym-gptq", 4, False, "0.33",
                             device_facts("h100-80gb")) == "humming"
    assert _term("0.33", "int4-g128-sym-gptq", 4, "h100-80gb") == (LAYERS * EXPERTS * (835_584 - 617_728)
                                                                    + LAYERS * 4 * 8 * 132)
    assert _term("0.33", "int4-g128-sym-gptq", 4, "h100-80gb") == 1_338_710_016


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_a_whole_row_scale_that_marlin_refuses_is_refused_moe_wna16_cannot_size_it(version: str) -> None:
    # TP 8: N = 96, not a multiple of 64; MoeWNA16 keeps group -1 and sizes its scales hidden // -1
    spec = get_preset("qwen3-30b-a3b")
    reason = int4_expert_refusal(spec, "int4-row-sym-gptq", 8, version)
    assert reason is not None and "negative dimension" in reason
    assert int4_expert_refusal(spec, "int4-row-sym-gptq", 4, version) is None  # 192: Marlin takes it


@pytest.mark.parametrize("version", ["0.11", "0.19"])
@pytest.mark.parametrize("tensor_parallel", [1, 2, 4, 8])
def test_mixtral_8x7b_awq_stays_on_marlin_which_holds_the_checkpoints_bytes(version: str,
                                                                            tensor_parallel: int) -> None:
    # Mixtral-8x7B: hidden 4096, 8 experts 14336 wide.  14336 / tp is a multiple of 128 at TP 1-8, so awq_marlin's
    # AWQMoEMethod runs them: int32 qweight [E, H, 2N/8], qzeros [E, H/g, 2N/8], fp16 scales [E, H/g, 2N] and the
    # down projection's alike, repacked at the same sizes (awq_marlin_moe_repack, marlin_moe_permute_scales,
    # moe_awq_to_marlin_zero_points): the checkpoint's bytes, no layout term.  Per expert and rank at TP 2:
    # values 1.5 x 7168 x 4096 = 44,040,192, scales 2 x 3 x 7168 x 32 = 1,376,256, zeros 3 x 7168 x 32 / 2 = 344,064
    spec = get_preset("mixtral-8x7b-v0.1")
    assert moe_wna16_backend(spec, "int4-g128-asym-awq", tensor_parallel, False, version,
                             device_facts("a100-80gb")) == ""
    term = VllmProfile(version).expert_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True),
                                              "int4-g128-asym-awq", device_facts("a100-80gb"))
    assert term is None
    width = 14336 // tensor_parallel
    per_expert = 3 * width * 4096 // 2 + 2 * 3 * width * 4096 // 128 + 3 * width * 4096 // 128 // 2
    if tensor_parallel == 2:
        assert per_expert == 44_040_192 + 1_376_256 + 344_064


def test_the_plan_charges_moe_wna16_and_says_so() -> None:
    spec = get_preset("qwen3-30b-a3b")
    scheme = scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True,
                                             "desc_act": False})
    answers = {tp: plan(spec, Hardware(80 * GIB, tp, "a100-80gb"), Workload(4096, 1),
                        PlanOptions(scheme=scheme, engine_version="0.19")) for tp in (2, 4)}
    assert "MoeWNA16" in answers[4].runtime_overhead.basis
    assert "MoeWNA16" not in answers[2].runtime_overhead.basis


def test_vllm_0_19_moe_wna16_runs_fused_experts_impl_whose_caches_are_freed_after_each_layer() -> None:
    # MoeWNA16Method.apply calls fused_experts (not the modular kernel): fused_experts_impl's cache13 of
    # T x k x max(2N, H), intermediate_cache2 of T x k x N, unchunked, and outplace_fused_experts' T x H output
    # (disable_inplace: torch 2.10).  TP 4, 8192 tokens, top 8, N = 192: (65,536 x (2048 + 192) + 8192 x 2048) x 2 =
    # 327,155,712 bytes, transient, where TritonExperts' kept workspace was charged before (2 x 65,536 x 2048 x 2 =
    # 536,870,912, persistent)
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 4, 8192, "0.19", "int4-g128-sym-gptq", device_facts("a100-80gb"))
    assert (caches.nbytes, caches.persists) == ((8192 * 8 * (2048 + 192) + 8192 * 2048) * 2, False)
    assert caches.nbytes == 327_155_712
    on_marlin = fused_moe_caches(spec, 2, 8192, "0.19", "int4-g128-sym-gptq", device_facts("a100-80gb"))
    assert on_marlin.persists  # TP 2: GPTQMarlinMoEMethod's MarlinExperts in the workspace manager
    # 0.33's MoeWNA16 runs TritonWNA16Experts in the modular kernel: the workspace figure stays
    assert fused_moe_caches(spec, 4, 8192, "0.33", "int4-g128-sym-gptq", device_facts("a100-80gb")).persists


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_whole_row_gptq_experts_gptq_marlin_does_not_take_are_refused_on_moe_wna16(version: str) -> None:
    # an asymmetric checkpoint (GPTQConfig, MoeWNA16 at any width) and a symmetric one below gptq_marlin's floor
    # (0.11: 8.0, 0.19: 7.5) reach MoeWNA16 with group -1, whose scales get a negative dimension (reported from the
    # code as vllm#52715: group_size -1 crashes MoeWNA16Method.create_weights)
    spec, profile = get_preset("qwen3-30b-a3b"), VllmProfile(version)
    asym = profile.device_refusal(spec, "int4-row-asym-gptq", (8, 0))
    assert asym is not None and "negative dimension" in asym
    assert profile.device_refusal(spec, "int4-row-sym-gptq", (8, 0)) is None  # gptq_marlin's Marlin MoE
    below = profile.device_refusal(spec, "int4-row-sym-gptq", (7, 0))
    assert below is not None and "below gptq_marlin's" in below
    assert profile.device_refusal(spec, "int4-row-sym-gptq", None) is None  # capability unknown
    assert profile.device_refusal(get_preset("llama-3.1-8b"), "int4-row-asym-gptq", (8, 0)) is None  # no experts


def test_vllm_0_33_moe_wna16_runs_triton_for_a_symmetric_g32_checkpoint_on_a_b200() -> None:
    # a hidden size of 2112 (not a multiple of 128): auto_gptq.py hands the layer to MoeWNA16, which keeps g32
    # (it divides 768 and 2112).  oracle/int_wna16.py would try FLASHINFER_TRTLLM before TRITON for its
    # kInt4Static32 key on 10.x, but TrtLlmMxint4ExpertsMonolithic needs VLLM_USE_FLASHINFER_MOE_INT4=1 (envs.py
    # default "0", flashinfer_mxint4_moe.py is_flashinfer_mxint4_moe_available): TRITON runs them, as on an A100
    # (nibble answered "" before, no layout read)
    spec = replace(get_preset("qwen3-30b-a3b"), hidden_size=2112)
    for device in ("b200", "a100-80gb"):
        assert moe_wna16_backend(spec, "int4-g32-sym-gptq", 1, False, "0.33", device_facts(device)) == "triton"


ACT_ORDER_G128 = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": True}


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_an_act_order_gptq_moe_on_moe_wna16_is_planned_with_a_warning_that_its_g_idx_is_ignored(
        version: str) -> None:
    # Qwen3-30B-A3B GPTQ g128 desc_act at TP 4 on A100s: the rank's 192-wide share takes no g128, so gptq_marlin.py
    # hands the experts to MoeWNA16, whose create_weights registers w13_g_idx / w2_g_idx empty and whose
    # moe_wna16_weight_loader skips every g_idx weight (quantization/moe_wna16.py, 0.11.0 and 0.19.0): loaded, but
    # scaled by the stored order's groups.  A warning, not a refusal; at TP 2 (384 wide) Marlin takes them
    # (GPTQMarlinMoEMethod sorts by the g_idx): no warning
    spec = get_preset("qwen3-30b-a3b")
    scheme = scheme_from_quantization_config(ACT_ORDER_G128)
    assert scheme.quantized.label() == "int4-g128-sym-act-order-gptq"
    options = PlanOptions(scheme=scheme, engine_version=version)
    answer = plan(spec, Hardware(80 * GIB, 4, "a100-80gb"), Workload(4096, 1), options)
    assert answer.primary.refusal is None
    warned = [warning for warning in answer.warnings if "ignores their g_idx" in warning]
    assert len(warned) == 1 and f"vLLM {version}" in warned[0] and "moe_wna16_weight_loader" in warned[0]
    marlin = plan(spec, Hardware(80 * GIB, 2, "a100-80gb"), Workload(4096, 1), options)
    assert not any("ignores their g_idx" in warning for warning in marlin.warnings)
    # without act order, no warning
    plain = plan(spec, Hardware(80 * GIB, 4, "a100-80gb"), Workload(4096, 1),
                 PlanOptions(scheme=scheme_from_quantization_config({**ACT_ORDER_G128, "desc_act": False}),
                             engine_version=version))
    assert not any("ignores their g_idx" in warning for warning in plain.warnings)


def test_the_act_order_warning_names_moe_wna16_only_where_the_plan_lands_there() -> None:
    spec = get_preset("qwen3-30b-a3b")
    a100, h100 = device_facts("a100-80gb"), device_facts("h100-80gb")
    label = "int4-g128-sym-act-order-gptq"
    assert moe_wna16_act_order_note(spec, label, 4, False, "0.19", a100) is not None
    # an asymmetric act-order checkpoint loads as GPTQConfig (gptq_marlin takes 4-bit sym only), whose MoE layers
    # are always MoeWNA16: even where Marlin's shape fits (TP 2)
    assert moe_wna16_act_order_note(spec, "int4-g128-asym-act-order-gptq", 2, False, "0.19", a100) is not None
    assert moe_wna16_act_order_note(spec, label, 2, False, "0.19", a100) is None  # Marlin
    assert moe_wna16_act_order_note(spec, "int4-g128-sym-gptq", 4, False, "0.19", a100) is None  # no act order
    assert moe_wna16_act_order_note(spec, label, 4, False, "0.33", h100) is None  # 0.33 refuses act order
    assert moe_wna16_act_order_note(spec, "int4-g128-asym-awq", 4, False, "0.19", a100) is None
