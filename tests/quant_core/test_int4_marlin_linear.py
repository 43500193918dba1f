"""AWQ, compressed-tensors W4A16 and NVFP4 linear layers on vLLM's Marlin kernels: what they hold after loading, and
what the int4 layers' rewrite for Marlin holds while loading.

Read in vLLM 0.11.0 (awq_marlin.py ``AWQMarlinLinearMethod``; kernels/mixed_precision/marlin.py), 0.19.0
(awq_marlin.py, kernels/linear/mixed_precision/marlin.py ``MarlinLinearKernel``) and 0.33.0 (auto_awq.py
``AutoAWQMarlinLinearMethod``, the same kernel with ``marlin_padded_nk``); compressed-tensors through
``CompressedTensorsWNA16`` in all three:

* the packed weight is repacked at its size (``awq_marlin_repack`` / ``gptq_marlin_repack``: ``in x out / 2``), the
  16-bit scales permuted at their size, the zero points unpacked and packed again at their size (int32
  ``[G, out / 8]``), g_idx and its sort indices emptied: the checkpoint's bytes;
* 0.11 and 0.19 keep a Marlin workspace on every layer (``marlin_make_workspace_new``: int32 one a streaming
  multiprocessor; the A100 has 108: 432 bytes a layer); 0.33 keeps none;
* compressed-tensors' ``weight_shape`` (int64 [2]) stays, 16 bytes a fused layer, where nibble charges 16 bytes
  a checkpoint tensor (q, k, v, o, gate, up, down: 7) split over the ranks;
* 0.33 pads a layer Marlin's thread tiles do not divide (``marlin_padded_nk``) and keeps it padded; 0.11 and 0.19
  run such an AWQ layer on AWQ's own kernel as loaded (``check_marlin_supports_layer``, AWQLinearMethod).
"""

from __future__ import annotations

import dataclasses

import pytest

from quant_core.catalog import device_facts, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import (
    awq_compressed_tensors_marlin_bytes,
    int4_linear_repack_transient_bytes,
    int4_marlin_linear_repack_bytes,
    int4_zero_point_marlin_held_bytes,
    marlin_linear_workspace_bytes,
    nvfp4_marlin_linear_bytes,
    nvfp4_marlin_padding_bytes,
)
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from quant_core.specs import ModelSpec

GIB = 1 << 30
A100 = device_facts("a100-80gb")
H100 = device_facts("h100-80gb")
AWQ_G128 = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def _stage(spec: ModelSpec, tensor_parallel: int) -> Stage:
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


def _llama_8b() -> ModelSpec:
    return get_preset_info("llama-3.1-8b").spec


def _bytes(term: object) -> int | None:
    return None if term is None else term.bytes  # type: ignore[attr-defined]


def test_marlin_workspace_is_one_int32_a_streaming_multiprocessor_in_011_and_019_only() -> None:
    assert A100.compute_units == 108
    assert marlin_linear_workspace_bytes("0.11", A100) == 432
    assert marlin_linear_workspace_bytes("0.19", A100) == 432
    assert marlin_linear_workspace_bytes("0.33", A100) == 0


def test_one_aligned_awq_layer_holds_its_checkpoint_bytes_and_the_workspace() -> None:
    # gate_up_proj of Llama-3.1-8B at TP 1, g128: in 4096, out 28672, 32 groups
    # qweight 4096 x 28672 / 2 = 58,720,256; scales 2 x 32 x 28672 = 1,835,008; zero points 32 x 28672 / 2 = 458,752
    checkpoint = 58_720_256 + 1_835_008 + 458_752
    assert int4_zero_point_marlin_held_bytes("0.19", 4096, 28672, 128, True, A100) == checkpoint + 432
    assert int4_zero_point_marlin_held_bytes("0.33", 4096, 28672, 128, True, A100) == checkpoint
    # symmetric compressed-tensors: no zero points
    assert int4_zero_point_marlin_held_bytes("0.19", 4096, 28672, 128, False, A100) == 58_720_256 + 1_835_008 + 432


def test_llama_8b_awq_at_tp_1_on_a100_holds_the_marlin_workspaces_in_011_and_019() -> None:
    # 4 fused layers (qkv, o, gate_up, down) x 432 bytes x 32 layers = 55,296; the weights, scales and zero points are
    # the checkpoint's bytes (TP 1: nibble's charge is exact)
    stage = _stage(_llama_8b(), 1)
    for version in ("0.11", "0.19"):
        term = VllmProfile(version).linear_layout(stage, "int4-g128-asym-awq", A100)
        assert _bytes(term) == 55_296
        assert term is not None and "marlin_make_workspace_new" in term.basis


def test_llama_8b_awq_at_tp_1_on_a100_holds_nothing_beyond_the_checkpoint_in_033() -> None:
    # 0.33 keeps no workspace and pads nothing here: the held bytes equal the checkpoint's, no term
    stage = _stage(_llama_8b(), 1)
    assert VllmProfile("0.33").linear_layout(stage, "int4-g128-asym-awq", A100) is None


def test_llama_8b_compressed_tensors_at_tp_1_on_a100_holds_the_workspaces_less_the_weight_shapes() -> None:
    # a layer: 4 x 432 workspace + 4 x 16 weight_shape held - 7 x 16 weight_shape charged = 1,680; x 32 = 53,760
    # (symmetric or not: the zero points keep their size; a whole-row scale too)
    stage = _stage(_llama_8b(), 1)
    for label in ("int4-g128-sym-compressed-tensors", "int4-g128-asym-compressed-tensors",
                  "int4-row-asym-compressed-tensors"):
        assert _bytes(VllmProfile("0.19").linear_layout(stage, label, A100)) == 53_760
    # 0.33: 4 x 16 - 7 x 16 = -48 a layer: smaller than the checkpoint's, no term
    assert awq_compressed_tensors_marlin_bytes(stage, "0.33", "int4-g128-sym-compressed-tensors", A100) is None


def test_qwen2_5_72b_compressed_tensors_row_at_tp_8_on_a100_holds_the_padded_layers_in_033() -> None:
    # int4-row-asym-compressed-tensors (channel scales, zero points), TP 8, per layer.  nibble's charge,
    # ceil(bytes / 8) of each tensor (weight_packed out x in / 2, weight_scale 2 x out, weight_shape 16,
    # weight_zero_point out / 2):
    #   q, o (8192 x 8192): (33,554,432 + 16,384 + 16 + 4,096) / 8 = 4,196,866 (rounded up) each
    #   k, v (1024 x 8192): (4,194,304 + 2,048 + 16 + 512) / 8 = 524,610 each: attention 9,442,952
    #   gate, up (29568 x 8192): (121,110,528 + 59,136 + 16 + 14,784) / 8 = 15,148,058 each
    #   down (8192 x 29568): (121,110,528 + 16,384 + 16 + 4,096) / 8 = 15,141,378: MLP 45,437,494
    # vLLM 0.33 (one group a row; marlin_padded_nk):
    #   qkv_proj (in 8192, out 1280): 5,242,880 + 2,560 + 640 + 16 = 5,246,096; o_proj (in 1024, out 8192):
    #   4,194,304 + 16,384 + 4,096 + 16 = 4,214,800: attention 9,460,896 (+17,944)
    #   gate_up (in 8192, out 7392 -> 7424): 30,408,704 + 14,848 + 3,712 + 16 = 30,427,280; down (in 3696 -> 3712,
    #   out 8192): 15,204,352 + 16,384 + 4,096 + 16 = 15,224,848: MLP 45,652,128 (+214,634)
    #   232,578 a layer x 80 = 18,606,240
    stage = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    term = VllmProfile("0.33").linear_layout(stage, "int4-row-asym-compressed-tensors", A100)
    assert _bytes(term) == 18_606_240
    assert term is not None and "marlin_padded_nk" in term.basis
    # 0.19's Marlin refuses gate_up (7392 % 64): Conch or ExLlama, not read
    assert VllmProfile("0.19").linear_layout(stage, "int4-row-asym-compressed-tensors", A100) is None


def test_a_misaligned_awq_qkv_proj_is_padded_in_033_and_runs_awq_s_own_kernel_before() -> None:
    # a made-up Llama-3.1-8B of head_dim 80, g64, TP 8: qkv_proj in 4096, out (4 + 2) x 80 = 480; o_proj in 320,
    # out 4096; gate_up 4096 -> 3584; down 1792 -> 4096
    spec = dataclasses.replace(_llama_8b(), head_dim=80)
    stage = _stage(spec, 8)
    # 0.33: qkv_proj padded to out 512 (marlin_padded_nk(480, 4096, 64)): 64 groups x (512 - 480) columns:
    # weight 4096 x 32 / 2 = 65,536, scales 2 x 64 x 32 = 4,096, zero points 64 x 32 / 2 = 1,024: 70,656 a layer;
    # o_proj (in 320 % 64, out 4096 % 128) is already a Marlin tile; the rest equals nibble's charge exactly
    # (q, k, v, o, gate, up, down divide by the 8 ranks): 70,656 x 32 = 2,260,992
    term = VllmProfile("0.33").linear_layout(stage, "int4-g64-asym-awq", A100)
    assert _bytes(term) == 2_260_992
    assert term is not None and "4096 x 480 to 4096 x 512" in term.basis
    # 0.19: qkv_proj (480 % 64) and o_proj (320 % 128) run AWQLinearMethod as loaded; gate_up and down on Marlin
    # with a workspace each: 2 x 432 x 32 = 27,648
    term = VllmProfile("0.19").linear_layout(stage, "int4-g64-asym-awq", A100)
    assert _bytes(term) == 27_648
    assert term is not None and "AWQLinearMethod" in term.basis


def test_awq_on_h100_is_marlin_in_011_and_machete_from_019() -> None:
    stage = _stage(_llama_8b(), 1)
    # 0.11's awq_marlin repacks for Marlin on 9.0 too: 132 SMs x 4 bytes x 4 layers x 32 = 67,584
    assert _bytes(awq_compressed_tensors_marlin_bytes(stage, "0.11", "int4-g128-asym-awq", H100)) == 67_584
    # 0.19 and 0.33 take Machete there (machete_zero_point_bytes answers instead)
    for version in ("0.19", "0.33"):
        assert awq_compressed_tensors_marlin_bytes(stage, version, "int4-g128-asym-awq", H100) is None
        assert VllmProfile(version).linear_layout(stage, "int4-g128-asym-awq", H100) is not None


@pytest.mark.parametrize("label", ["int4-g128-sym-gptq", "int4-g128-sym-act-order-compressed-tensors",
                                   "int4-row-asym-awq", "fp8-block128", "bf16"])
def test_other_formats_have_no_awq_or_compressed_tensors_marlin_term(label: str) -> None:
    stage = _stage(_llama_8b(), 1)
    assert awq_compressed_tensors_marlin_bytes(stage, "0.19", label, A100) is None


def test_a_group_straddling_the_rank_s_shard_is_not_planned() -> None:
    # Qwen2.5-72B's down_proj at TP 8 takes 3696 inputs: groups of 128 straddle the shard in every release
    stage = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    for version in ("0.11", "0.19", "0.33"):
        assert awq_compressed_tensors_marlin_bytes(stage, version, "int4-g128-asym-awq", A100) is None


# --- the load transient: rewriting the largest int4 linear layer for Marlin ------------------------------------
# (vLLM runs each module's process_weights_after_loading after every weight is loaded, one at a time: only the
# largest layer's transient counts, beside the loaded weights, before "Model loading took" and the KV cache)


def test_one_layer_s_repack_transient_by_layout_and_release() -> None:
    # Llama-3.1-8B's gate_up_proj at TP 1: in 4096, out 28672; packed 4096 x 28672 / 2 = 58,720,256 bytes
    # GPTQ: gptq_marlin_repack's output beside the loaded qweight (already [in / 8, out], contiguous)
    for version in ("0.11", "0.19", "0.33"):
        assert int4_linear_repack_transient_bytes(version, "gptq", 4096, 28672, 128) == 58_720_256
    # compressed-tensors: the contiguous copy of the transposed weight_packed, then the repack's output
    assert int4_linear_repack_transient_bytes("0.19", "compressed-tensors", 4096, 28672, 128) == 117_440_512
    # AWQ in 0.11: awq_marlin_repack's output
    assert int4_linear_repack_transient_bytes("0.11", "awq", 4096, 28672, 128) == 58_720_256
    # AWQ in 0.19 and 0.33: _convert_awq_to_standard_format holds the reordered int32 values (4 x 4096 x 28672),
    # their shifted copy (the same) and the summed new qweight (58,720,256): 8.5 x 4096 x 28672 = 998,244,352
    # (checked by running the function's weight half under torch.profiler on CPU: peak 8.5000 x in x out)
    for version in ("0.19", "0.33"):
        assert int4_linear_repack_transient_bytes(version, "awq", 4096, 28672, 128) == 998_244_352
    # 0.33 pads a misaligned layer first and repacks the padded copy: Qwen2.5-72B's gate_up_proj at TP 8,
    # out 7392 -> 7424, in 8192: 7424 x 8192 / 2 for the padded copy and as much for the output
    assert int4_linear_repack_transient_bytes("0.33", "gptq", 8192, 7392, -1) == 60_817_408
    assert int4_linear_repack_transient_bytes("0.33", "compressed-tensors", 8192, 7392, -1) == 60_817_408


def test_llama_8b_int4_repack_on_a100_is_the_largest_layer_s() -> None:
    stage = _stage(_llama_8b(), 1)
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.19", "int4-g128-sym-gptq", A100)) == 58_720_256
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.19", "int4-g128-sym-compressed-tensors",
                                                  A100)) == 117_440_512
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.11", "int4-g128-asym-awq", A100)) == 58_720_256
    term = int4_marlin_linear_repack_bytes(stage, "0.19", "int4-g128-asym-awq", A100)
    assert _bytes(term) == 998_244_352
    assert term is not None and "_convert_awq_to_standard_format" in term.basis and "4096 x 28672" in term.basis


def test_awq_is_converted_on_hopper_too_where_gptq_and_compressed_tensors_run_machete() -> None:
    # 0.19/0.33's AWQ method converts the layout before choose_mp_linear_kernel's kernel (Machete on 9.0) sees it;
    # GPTQ and compressed-tensors go straight to Machete's prepack (test_machete_repack.py): gate_up_proj 4096 x
    # 28672, GPTQ's contiguous transposed copy and the prepacked output, 2 x 58,720,256; compressed-tensors' permuted
    # weight_packed needs no copy, the output alone (these were None before Machete's rewrite was read)
    stage = _stage(_llama_8b(), 1)
    for version in ("0.19", "0.33"):
        assert _bytes(int4_marlin_linear_repack_bytes(stage, version, "int4-g128-asym-awq", H100)) == 998_244_352
        assert _bytes(int4_marlin_linear_repack_bytes(stage, version, "int4-g128-sym-gptq", H100)) == 117_440_512
        assert _bytes(int4_marlin_linear_repack_bytes(stage, version, "int4-g128-sym-compressed-tensors",
                                                      H100)) == 58_720_256


def test_qwen2_5_72b_gptq_row_repack_at_tp_8_is_padded_in_033() -> None:
    stage = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    # 0.33: gate_up_proj padded to 7424 x 8192: 60,817,408
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.33", "int4-row-sym-gptq", A100)) == 60_817_408
    # 0.19's Marlin takes only the aligned layers (gate_up 7392 % 64 runs another kernel): qkv_proj 8192 x 1280
    # and o_proj 1024 x 8192 repack 5,242,880 and 4,194,304
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.19", "int4-row-sym-gptq", A100)) == 5_242_880


def test_outside_budget_weighs_the_int4_repack_while_loading() -> None:
    stage = _stage(_llama_8b(), 1)
    profile = VllmProfile("0.19")
    limits = profile.batch_limits(80 * GIB, "a100-80gb")
    budget = profile.outside_budget(stage, "auto", limits, False, A100, "", "int4-g128-asym-awq")
    assert _bytes(budget.repack) == 998_244_352 and budget.loads
    gptq = profile.outside_budget(stage, "auto", limits, False, A100, "", "int4-g128-sym-gptq")
    assert _bytes(gptq.repack) == 58_720_256


def test_llama_8b_awq_plan_on_a_7_gib_a100_does_not_fit_where_the_awq_conversion_has_no_room_to_load() -> None:
    # one 7 GiB device at memory_utilization 0.9, eager, 1024 tokens, one sequence: serving fits (0.42 GiB of
    # headroom), but the budget still free while loading (0.69 GiB: the KV pool and profiling peak allocated later)
    # and what lies outside it beside the start-up memory cannot hold the 0.93 GiB (998,244,352 bytes) that
    # _convert_awq_to_standard_format needs for gate_up_proj
    info = get_preset_info("llama-3.1-8b")
    scheme = scheme_from_quantization_config(AWQ_G128)
    answer = plan(info.spec, Hardware(7 * GIB, 1, "a100-80gb"), Workload(1024, 1),
                  PlanOptions(scheme=scheme, engine_version="0.19", memory_utilization=0.9, enforce_eager=True,
                              max_batched_tokens=1024, max_num_seqs=1))
    device = answer.primary.devices[0]
    assert device.headroom_bytes > 0
    room = device.usable_bytes - device.weights_bytes - device.overhead_bytes
    assert 58_720_256 < room < 998_244_352
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "_convert_awq_to_standard_format"
               in warning for warning in answer.warnings)


# --- NVFP4 linear layers on Marlin (below compute capability 10.0) -------------------------------------------------
# prepare_fp4_layer_for_marlin (quantization/utils/marlin_utils_fp4.py) repacks the uint8 [N, K / 2] weight at its
# size and turns the fp8 [N, K / 16] scales into Marlin's fp8 [K / 16, N] (nvfp4_marlin_process_scales): the
# checkpoint's bytes; 0.11 and 0.19 add a workspace a layer, 0.33 pads misaligned layers (marlin_padded_nk, group 16)


def test_nvfp4_linear_layers_on_a100_keep_a_marlin_workspace_each_in_011_and_019() -> None:
    # Llama-3.1-8B TP 1: 4 fused layers x 432 bytes x 32 layers = 55,296
    stage = _stage(_llama_8b(), 1)
    for version in ("0.11", "0.19"):
        term = VllmProfile(version).linear_layout(stage, "nvfp4", A100)
        assert _bytes(term) == 55_296
        assert term is not None and "prepare_fp4_layer_for_marlin" in term.basis
    # 0.33 keeps no workspace, and nothing is padded here: the checkpoint's bytes, no term
    assert nvfp4_marlin_linear_bytes(stage, "0.33", "nvfp4", A100) is None
    assert VllmProfile("0.33").linear_layout(stage, "nvfp4", A100) is None


def test_qwen2_5_72b_nvfp4_at_tp_8_on_a100_holds_the_padded_layers_in_033() -> None:
    # gate_up_proj out 7392 -> 7424 (in 8192): weight 32 x 8192 / 2 = 131,072, scales 32 x 8192 / 16 = 16,384;
    # down_proj in 3696 -> 3712 (out 8192): 8192 x 16 / 2 = 65,536 and 8192 x 16 / 16 = 8,192; qkv_proj (1280 out,
    # its bias unpadded) and o_proj are aligned: 221,184 a layer x 80 = 17,694,720
    assert nvfp4_marlin_padding_bytes(7392, 8192, "0.33") == 131_072 + 16_384
    assert nvfp4_marlin_padding_bytes(8192, 3696, "0.33") == 65_536 + 8_192
    assert nvfp4_marlin_padding_bytes(7392, 8192, "0.19") == 0
    stage = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    term = VllmProfile("0.33").linear_layout(stage, "nvfp4", A100)
    assert _bytes(term) == 17_694_720
    assert term is not None and "marlin_padded_nk" in term.basis
    # 0.19 does not pad: the workspaces alone, 4 x 432 x 80 = 138,240
    assert _bytes(VllmProfile("0.19").linear_layout(stage, "nvfp4", A100)) == 138_240


def test_nvfp4_linear_layers_run_marlin_only_below_10_0_and_not_on_humming() -> None:
    stage = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    # 10.0: CUTLASS / FlashInfer FP4 natively
    for version in ("0.11", "0.19", "0.33"):
        assert nvfp4_marlin_linear_bytes(stage, version, "nvfp4", device_facts("b200")) is None
    # 9.0: Marlin in 0.19 (132 SMs: 4 x 528 x 80 = 168,960); Humming ahead of Marlin in 0.33 (not read)
    assert _bytes(nvfp4_marlin_linear_bytes(stage, "0.19", "nvfp4", H100)) == 168_960
    assert nvfp4_marlin_linear_bytes(stage, "0.33", "nvfp4", H100) is None
    # 8.9 (L40S) runs Marlin and pads as the A100 does
    assert _bytes(nvfp4_marlin_linear_bytes(stage, "0.33", "nvfp4", device_facts("l40s"))) == 17_694_720


def test_nvfp4_repack_on_marlin_is_the_transposed_copy_and_the_output_of_the_largest_layer() -> None:
    # prepare_fp4_layer_for_marlin: layer.weight.view(int32).T.contiguous() (in x out / 2) and gptq_marlin_repack's
    # output (as much) beside the loaded weight.  Llama-3.1-8B TP 1, gate_up_proj 4096 x 28672: 117,440,512
    stage = _stage(_llama_8b(), 1)
    for version in ("0.11", "0.19", "0.33"):
        term = int4_marlin_linear_repack_bytes(stage, version, "nvfp4", A100)
        assert _bytes(term) == 117_440_512
        assert term is not None and "prepare_fp4_layer_for_marlin" in term.basis
    # Qwen2.5-72B TP 8 on 0.33: gate_up_proj padded to 7424 x 8192 first: 60,817,408
    qwen = _stage(get_preset_info("qwen2.5-72b-instruct").spec, 8)
    assert _bytes(int4_marlin_linear_repack_bytes(qwen, "0.33", "nvfp4", A100)) == 60_817_408
    # natively from 10.0 (no repack for Marlin), Humming on 9.0 in 0.33 (not read)
    assert int4_marlin_linear_repack_bytes(stage, "0.19", "nvfp4", device_facts("b200")) is None
    assert int4_marlin_linear_repack_bytes(stage, "0.33", "nvfp4", H100) is None
    budget = VllmProfile("0.19").outside_budget(stage, "auto", VllmProfile("0.19").batch_limits(80 * GIB, "a100-80gb"),
                                                False, A100, "", "nvfp4")
    assert _bytes(budget.repack) == 117_440_512
