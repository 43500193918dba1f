"""What one rank holds of a MoE model's routed experts under vLLM, beyond the inventory's shapes: the experts' biases
split as FusedMoE splits them, and the widths vLLM's kernels pad the experts to.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* ``w13_bias`` is created ``[E, 2 x intermediate_size_per_partition]`` and ``w2_bias`` ``[E, hidden_size]``
  (0.11 fused_moe/layer.py ``UnquantizedFusedMoEMethod.create_weights``, 0.19/0.33
  fused_moe/unquantized_fused_moe_method.py, quantization/mxfp4.py ``Mxfp4MoEMethod.create_weights`` in all three);
  gpt_oss.py ``load_weights`` copies each rank's ``2 x tp_rank_start : 2 x tp_rank_end`` slice of the checkpoint's
  gate_up_proj_bias and the whole down_proj_bias (zeroed on ranks other than 0, still allocated).
* vLLM 0.33's int4 (WNA16) experts (auto_gptq.py ``AutoGPTQMoEMethod``, fused_moe/oracle/int_wna16.py): Marlin pads
  the width per rank to ``round_up(N, lcm(64, group))`` (utils/marlin_utils.py ``marlin_moe_padded_intermediate``)
  and keeps GPTQ's qzeros, Humming (preferred on compute capability 9.0) pads each GEMM's N to 256 and K to 128
  (quantization/utils/humming/moe.py; humming-kernels 0.1.19 transform.py) and keeps zero points only where the
  checkpoint is asymmetric; neither holds the checkpoint's g_idx for the experts.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import device_facts, get_preset
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_expert_layouts import int4_moe_backend_v0_33
from quant_core.engines.vllm_linear import machete_zero_point_bytes
from quant_core.formats import float_format
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

GIB = 1 << 30
H100 = 80 * GIB
BF16 = float_format("bf16")


def _rank_weights(spec_name: str, tensor_parallel: int, expert_bias: bool) -> int:
    spec = get_preset(spec_name)
    spec = spec if expert_bias else replace(spec, expert_bias=False)
    answer = plan(spec, Hardware(H100, tensor_parallel, "h100-80gb"), Workload(4096, 1),
                  PlanOptions(weight_format=BF16))
    return answer.primary.devices[0].weights_bytes


@pytest.mark.parametrize("tensor_parallel", [1, 2, 4, 8])
def test_a_rank_holds_its_slice_of_the_experts_gate_up_biases_and_the_whole_down_biases(tensor_parallel: int) -> None:
    # gpt-oss-120b: 36 MoE layers of 128 experts, intermediate 2880, hidden 2880, bf16 biases.  Per rank vLLM holds
    # w13_bias [128, 2 x 2880 / tp] and w2_bias [128, 2880] per layer: at TP 4, 36 x 128 x (1,440 + 2,880) x 2 =
    # 39,813,120 bytes, where counting both whole on each rank (nibble before) charged 79,626,240, 39.8 MB more
    layers, experts, width, hidden = 36, 128, 2880, 2880
    expected = layers * experts * (2 * width // tensor_parallel + hidden) * 2
    biases = (_rank_weights("gpt-oss-120b", tensor_parallel, True)
              - _rank_weights("gpt-oss-120b", tensor_parallel, False))
    assert biases == expected
    if tensor_parallel == 4:
        assert biases == 39_813_120


def test_expert_parallelism_still_holds_the_ranks_whole_experts_biases() -> None:
    # with --enable-expert-parallel FusedMoE's tp_size is 1: a rank holds its 128 / 4 = 32 experts' whole biases
    spec = get_preset("gpt-oss-120b")
    answers = [plan(s, Hardware(H100, 4, "h100-80gb"), Workload(4096, 1),
                    PlanOptions(weight_format=BF16, expert_parallel=True, engine_version="0.33"))
               for s in (spec, replace(spec, expert_bias=False))]
    assert answers[0].primary.devices[0].weights_bytes - answers[1].primary.devices[0].weights_bytes == (
        36 * 32 * (2 * 2880 + 2880) * 2)


# Qwen3-30B-A3B: hidden 2048, 128 experts 768 wide, 48 MoE layers.  nibble's charge per expert and rank of a GPTQ
# checkpoint (int32 qweight [in/8, out], int32 qzeros [G, out/8], fp16 scales [G, out], int32 g_idx [in]; each
# tensor's bytes / tp): gate and up [768, 2048], down [2048, 768].
QWEN3_LAYERS, QWEN3_EXPERTS, HIDDEN, WIDTH = 48, 128, 2048, 768


def _gptq_bytes(out_features: int, in_features: int, group: int) -> int:
    groups = in_features // group
    return in_features * out_features // 2 + groups * out_features // 2 + 2 * groups * out_features + 4 * in_features


def _gptq_charge(group: int, tensor_parallel: int) -> int:
    return (2 * -(-_gptq_bytes(WIDTH, HIDDEN, group) // tensor_parallel)
            + -(-_gptq_bytes(HIDDEN, WIDTH, group) // tensor_parallel))


def _qwen3_term(label: str, tensor_parallel: int, device: str) -> int:
    spec = get_preset("qwen3-30b-a3b")
    term = VllmProfile("0.33").expert_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                             device_facts(device))
    assert term is not None
    return term.bytes


def test_vllm_0_33_marlin_pads_the_experts_width_per_rank_to_lcm_64_group_and_drops_g_idx() -> None:
    # A100 (8.0), GPTQ g32 symmetric at TP 8: N = 768 / 8 = 96 -> round_up(96, lcm(64, 32)) = 128.  Per expert vLLM
    # holds w13 2048 x 2 x 128 / 2 + w2 128 x 2048 / 2 = 393,216 bytes of values, scales (64 x 256 + 4 x 2048) x 2 =
    # 49,152 and qzeros 64 x 128 + 4 x 2048 / 2 = 12,288 (kept for symmetric GPTQ too): 454,656, where nibble
    # charged 343,424 (with g_idx).  111,232 x 128 x 48 = 683,409,408 bytes (0.64 GiB) a rank more
    assert int4_moe_backend_v0_33(get_preset("qwen3-30b-a3b"), "int4-g32-sym-gptq", 8, False,
                                  device_facts("a100-80gb")) == "marlin"
    held = 393_216 + 49_152 + 12_288
    assert _gptq_charge(32, 8) == 343_424
    assert _qwen3_term("int4-g32-sym-gptq", 8, "a100-80gb") == QWEN3_LAYERS * QWEN3_EXPERTS * (held - 343_424)
    assert _qwen3_term("int4-g32-sym-gptq", 8, "a100-80gb") == 683_409_408
    # g128 at TP 2 (N = 384, a multiple of 128): nothing padded, vLLM holds the checkpoint less its g_idx,
    # 4 x (2048 + 2048 + 768) / 2 = 9,728 bytes an expert
    assert _qwen3_term("int4-g128-sym-gptq", 2, "a100-80gb") == -QWEN3_LAYERS * QWEN3_EXPERTS * 9_728


def test_vllm_0_33_humming_pads_each_expert_gemm_n_to_256_and_k_to_128_on_hopper() -> None:
    # H100 (9.0), GPTQ g64 symmetric at TP 4: N = 192; w13 384 x 2048 -> 512 x 2048, w2 2048 x 192 -> 2048 x 256.
    # Values (512 x 2048 + 2048 x 256) / 2 = 786,432, scales (512 x 32 + 2048 x 4) x 2 = 49,152, no zero points
    # (sym: Humming deletes the checkpoint's qzeros): 835,584 an expert against nibble's 640,768
    assert int4_moe_backend_v0_33(get_preset("qwen3-30b-a3b"), "int4-g64-sym-gptq", 4, False,
                                  device_facts("h100-80gb")) == "humming"
    held = 786_432 + 49_152
    assert _gptq_charge(64, 4) == 640_768
    # and each layer's HummingExpertsBase a lock buffer of 8 x 132 int32 (create_humming_locks): 48 x 4,224 bytes
    locks = QWEN3_LAYERS * 4 * 8 * 132
    assert _qwen3_term("int4-g64-sym-gptq", 4, "h100-80gb") == (QWEN3_LAYERS * QWEN3_EXPERTS * (held - 640_768)
                                                                 + locks)
    assert _qwen3_term("int4-g64-sym-gptq", 4, "h100-80gb") == 1_197_152_256
    # AWQ keeps its zero points: (512 x 32 + 2048 x 4) / 2 = 12,288 bytes an expert more than GPTQ's sym layout
    awq = _qwen3_term("int4-g64-asym-awq", 4, "h100-80gb")
    awq_charge = 3 * (WIDTH * HIDDEN // 2 + (HIDDEN // 64) * WIDTH // 2 + 2 * (HIDDEN // 64) * WIDTH) // 4
    assert awq == QWEN3_LAYERS * QWEN3_EXPERTS * (held + 12_288 - awq_charge) + locks


def test_vllm_0_33_int4_expert_padding_is_charged_in_the_plan() -> None:
    spec = get_preset("qwen3-30b-a3b")
    scheme = scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True,
                                             "desc_act": False})
    answers = {version: plan(spec, Hardware(80 * GIB, 8, "a100-80gb"), Workload(4096, 1),
                             PlanOptions(scheme=scheme, engine_version=version)) for version in ("0.19", "0.33")}
    assert "marlin_moe_padded_intermediate" in answers["0.33"].runtime_overhead.basis
    assert "marlin_moe_padded_intermediate" not in answers["0.19"].runtime_overhead.basis
    assert answers["0.33"].primary.devices[0].weights_bytes == answers["0.19"].primary.devices[0].weights_bytes


@pytest.mark.parametrize(("label", "tensor_parallel", "device"), [
    ("int4-g32-sym-gptq", 8, None),  # capability unknown
    ("int4-row-sym-gptq", 4, "h100-80gb"),  # Humming with a per-row scale, not read
])
def test_vllm_0_33_int4_experts_on_a_kernel_not_read_get_no_layout_term(label: str, tensor_parallel: int,
                                                                         device: str | None) -> None:
    spec = get_preset("qwen3-30b-a3b")
    facts = device_facts(device)
    assert int4_moe_backend_v0_33(spec, label, tensor_parallel, False, facts) == ""
    assert VllmProfile("0.33").expert_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                             facts) is None


AWQ_G128 = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def _awq_term(version: str, device: str, tensor_parallel: int = 2, label: str = "int4-g128-asym-awq") -> int | None:
    spec = get_preset("llama-3.1-70b")
    term = VllmProfile(version).linear_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                              device_facts(device))
    return None if term is None else term.bytes


def test_machete_holds_awq_zero_points_as_16_bit_values_pre_multiplied_by_the_scales_on_hopper() -> None:
    # Llama-3.1-70B AWQ g128 at TP 2 on H100: Machete (kernels/linear/mixed_precision/machete.py transform_w_zp)
    # replaces each layer's qzeros [G, out / 8] int32 (G x out / 2 bytes, the checkpoint's) with -scales x zeros
    # [G, out] at 2 bytes: 1.5 x G x out more.  One rank's layer: the fused qkv_proj holds 64 / 2 = 32 query heads
    # and 8 / 2 = 4 key and value heads each, (32 + 8) x 128 = 5,120 out of 8,192 in (G 64); o_proj 4,096 in (G 32),
    # 8,192 out; gate_up 8,192 in (G 64), 2 x 14,336 out; down 14,336 in (G 112), 8,192 out: 0.37 GiB a rank
    groups_by_out = 64 * 5_120 + 32 * 8_192 + 64 * 28_672 + 112 * 8_192
    expected = 80 * 3 * groups_by_out // 2
    assert _awq_term("0.19", "h100-80gb") == expected == 401_080_320
    assert _awq_term("0.33", "h100-80gb") == expected
    # Marlin elsewhere (A100) and in 0.11 repacks the zero points at their size, and keeps a workspace of one int32 a
    # streaming multiprocessor on each of the 4 fused layers (awq_compressed_tensors_marlin_bytes,
    # test_int4_marlin_linear.py): 80 x 4 x 4 x 108 = 138,240 on A100, 80 x 4 x 4 x 132 = 168,960 on H100 in 0.11
    assert _awq_term("0.19", "a100-80gb") == 138_240
    assert _awq_term("0.11", "h100-80gb") == 168_960
    # GPTQ has none to rewrite: its term is gptq_marlin_linear_bytes' (Machete keeps the qzeros; 0.33 creates no
    # g_idx, so the layer holds 4 x in bytes less than nibble's charge: test_vllm_gptq_act_order.py)
    spec = get_preset("llama-3.1-70b")
    assert machete_zero_point_bytes(Stage(spec, 2, 1, (0, spec.num_layers), True), "0.33", "int4-g128-sym-gptq",
                                    device_facts("h100-80gb")) is None
    # asymmetric compressed-tensors asks the same kernel with zero points (CompressedTensorsWNA16), symmetric none
    assert _awq_term("0.19", "h100-80gb", label="int4-g128-asym-compressed-tensors") == expected
    assert _awq_term("0.19", "h100-80gb", label="int4-g128-sym-compressed-tensors") is None
    # group 32: not a Machete group size, so 0.19 runs Marlin (no term) and 0.33 Humming's kernels (not read)
    assert _awq_term("0.19", "h100-80gb", label="int4-g32-asym-awq") is None


def test_the_plan_charges_machete_awq_zero_points_in_the_overhead() -> None:
    spec = get_preset("llama-3.1-70b")
    scheme = scheme_from_quantization_config(AWQ_G128)
    answer = plan(spec, Hardware(80 * GIB, 2, "h100-80gb"), Workload(4096, 1),
                  PlanOptions(scheme=scheme, engine_version="0.19"))
    assert answer.primary.refusal is None
    assert "transform_w_zp" in answer.runtime_overhead.basis


def test_vllm_0_33_symmetric_g32_compressed_tensors_experts_run_marlin_on_a_b200_by_default() -> None:
    # oracle/int_wna16.py tries FLASHINFER_TRTLLM first, but TrtLlmMxint4ExpertsMonolithic._supports_current_device
    # asks is_flashinfer_mxint4_moe_available (quantization/utils/flashinfer_mxint4_moe.py), which needs
    # VLLM_USE_FLASHINFER_MOE_INT4=1 (envs.py default "0"): with vLLM's default environment MARLIN runs them, as on
    # an A100 (nibble left the B200 "not read" before: no term).  Qwen3-30B-A3B at TP 8: N = 96 -> 128
    # (lcm(64, 32)); an expert holds w13 2048 x 256 / 2 = 262,144, w2 128 x 2048 / 2 = 131,072, 16-bit scales
    # 2 x (64 x 256 + 4 x 2048) = 49,152 and its two float32 weight_shape rows 2 x 2 x 4 = 16: 442,384 bytes,
    # against nibble's charge of the checkpoint's weight_packed, weight_scale and weight_shape split over 8 ranks
    # (98,304 + 12,288 + 2 a projection), 3 x 110,594 = 331,782: 110,602 x 128 x 48 = 679,538,688
    spec = get_preset("qwen3-30b-a3b")
    assert int4_moe_backend_v0_33(spec, "int4-g32-sym-compressed-tensors", 8, False, device_facts("b200")) == "marlin"
    assert _qwen3_term("int4-g32-sym-compressed-tensors", 8, "b200") == QWEN3_LAYERS * QWEN3_EXPERTS * (
        442_384 - 331_782) == 679_538_688
    assert _qwen3_term("int4-g32-sym-compressed-tensors", 8, "a100-80gb") == 679_538_688
    term = VllmProfile("0.33").expert_layout(Stage(spec, 8, 1, (0, spec.num_layers), True),
                                             "int4-g32-sym-compressed-tensors", device_facts("b200"))
    assert term is not None and "VLLM_USE_FLASHINFER_MOE_INT4=1" in term.basis
