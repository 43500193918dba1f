"""vLLM 0.33's refinement of fp8 [128, 128] block scales for routed experts split over tensor-parallel ranks.

Read in vLLM 0.33.0 (fused_moe/oracle/fp8.py): ``Fp8MoEMethod.__init__`` (quantization/fp8.py) asks
``resolve_fp8_moe_weight_block_shape``; with ``--moe-backend auto`` (the default) it takes
``refine_fp8_moe_block_shape``: when ``ispp = moe_intermediate_size / tp`` is not a multiple of 128,
``refine = gcd(128, 128, ispp, hidden_size)``, kept when at least 32.  ``create_weights`` then allocates the float32
scales on the refined grid and ``FusedMoE.weight_loader`` (routed_experts.py) upsamples the checkpoint's scales into
it; only ``TritonExperts`` accepts a block other than 128 x 128 (compute capability 8.9 and up).  Where the gcd is
under 32, ``validate_fp8_block_shape_moe`` raises as in 0.19.  ``pad_tp_shard_to_weight_blocks`` (whole 128-blocks
per rank) runs only for an explicit ``--moe-backend`` whose kernels cannot take the refined block, not planned.
vLLM 0.11.0 and 0.19.0 have neither: they refuse.  compressed-tensors' block-fp8 MoE method does not refine.
"""

from __future__ import annotations

from dataclasses import replace

from quant_core.catalog import get_preset, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_expert_layouts import fp8_refined_block, fp8_refined_expert_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import WeightScheme, scheme_from_quantization_config
from quant_core.specs import ModelSpec

GIB = 1 << 30
H100 = 80 * GIB


def _minimax_fp8() -> tuple[ModelSpec, WeightScheme]:
    info = get_preset_info("minimax-m2.5")
    return info.spec, scheme_from_quantization_config(info.quantization_config)


def test_vllm_0_33_refines_minimax_fp8_expert_scales_where_the_slice_is_not_whole_blocks() -> None:
    # MiniMax-M2.5: experts 1536 wide, hidden 3072.  TP 4: 384 = 3 blocks, nothing to refine; TP 8: 192,
    # gcd(128, 192, 3072) = 64; TP 16: 96, gcd(128, 96, 3072) = 32 (the smallest refine_fp8_moe_block_shape keeps)
    spec, _scheme = _minimax_fp8()
    assert [fp8_refined_block(spec, size, "0.33") for size in (1, 2, 4, 8, 16)] == [None, None, None, 64, 32]
    assert [fp8_refined_block(spec, 8, version) for version in ("0.11", "0.19")] == [None, None]
    assert fp8_refined_block(spec, 8, "0.33", "compressed-tensors") is None


def test_minimax_fp8_at_tp_8_plans_on_vllm_0_33_with_the_refined_scales_charged() -> None:
    # One rank at TP 8 holds 192 of each expert's 1536 rows, 256 experts, 62 MoE layers.  By hand, per layer:
    #   vLLM 0.33 (Fp8MoEMethod.create_weights at 64 x 64): w13 256 x 384 x 3072 + w2 256 x 3072 x 192 fp8 bytes
    #   = 452,984,832, float32 scales w13 256 x (2 x 3) x 48 + w2 256 x 48 x 3, x 4 bytes = 442,368: 453,427,200
    #   nibble's weights (each [1536, 3072] w1/w3/w2 with its 12 x 24 fp32 block scales, ceil(bytes / 8)):
    #   (4,718,592 + 1,152) / 8 = 589,968 each; 3 x 589,968 x 256 = 453,095,424
    # 62 layers: 28,112,486,400 held against 28,091,916,288 charged as weights: 20,570,112 bytes more a device
    spec, scheme = _minimax_fp8()
    assert scheme.quant_method == "fp8"
    assert fp8_refined_expert_bytes(spec, 8, 62, 64) == (28_112_486_400, 28_091_916_288)
    stage = Stage(spec, 8, 1, (0, 62), True)
    term = VllmProfile("0.33").expert_layout(stage, "fp8-block128")
    assert term is not None and term.bytes == 20_570_112 and "64 x 64" in term.basis
    assert VllmProfile("0.19").expert_layout(stage, "fp8-block128") is None
    hardware, workload = Hardware(H100, 8, "h100-80gb"), Workload(8192, 1)
    sliced = plan(spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.33"))
    assert sliced.primary.refusal is None and sliced.primary.fits
    assert "refine_fp8_moe_block_shape" in sliced.runtime_overhead.basis
    # no expert parallelism: with it each rank holds 32 whole 1536-wide experts (12 whole blocks, nothing refined),
    # the same weight charge and the same other terms, so the overheads differ by exactly the refined scales
    placed = plan(spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.33", expert_parallel=True))
    assert placed.primary.devices[0].weights_bytes == sliced.primary.devices[0].weights_bytes
    assert sliced.primary.devices[0].overhead_bytes - placed.primary.devices[0].overhead_bytes == 20_570_112


def test_vllm_0_19_and_0_11_still_refuse_minimax_fp8_at_tp_8() -> None:
    spec, scheme = _minimax_fp8()
    for version in ("0.11", "0.19"):
        assert "192" in (VllmProfile(version).format_refusal(spec, "fp8-block128", 8) or "")
    refused = plan(spec, Hardware(H100, 8, "h100-80gb"), Workload(8192, 1),
                   PlanOptions(scheme=scheme, engine_version="0.19"))
    assert "is not a multiple of the 128-wide block" in (refused.primary.refusal or "")


def test_vllm_0_33_refuses_where_no_block_of_32_divides_the_slice_with_its_own_message() -> None:
    # Qwen3-30B-A3B: experts 768 wide, hidden 2048.  TP 8: 96, refined to 32; TP 16: 48, gcd(128, 48, 2048) = 16
    # under 32, so validate_fp8_block_shape_moe raises as 0.19 does
    spec = get_preset("qwen3-30b-a3b")
    profile = VllmProfile("0.33")
    assert profile.format_refusal(spec, "fp8-block128", 8) is None
    refused = profile.format_refusal(spec, "fp8-block128", 16) or ""
    assert ("The output_size of gate's and up's weight = 48 is not divisible by weight quantization block_n = 128."
            in refused and "16, under 32" in refused)


def test_vllm_0_33_refuses_refined_blocks_below_compute_capability_8_9() -> None:
    # only TritonExperts takes a 64 x 64 block, and only where current_platform.supports_fp8() (8.9 and up); an A100
    # runs block fp8 on Marlin, 128 x 128 blocks only: select_fp8_moe_backend finds no backend.  TP 4 needs no
    # refinement and plans there, so the fewest A100s stay 4
    spec, scheme = _minimax_fp8()
    profile = VllmProfile("0.33")
    assert "No FP8 MoE backend supports" in (profile.format_refusal(spec, "fp8-block128", 8, False, (8, 0)) or "")
    assert profile.format_refusal(spec, "fp8-block128", 8, False, (8, 9)) is None
    assert profile.format_refusal(spec, "fp8-block128", 4, False, (8, 0)) is None
    a100 = plan(spec, Hardware(H100, 8, "a100-80gb"), Workload(8192, 1),
                PlanOptions(scheme=scheme, engine_version="0.33"))
    assert "No FP8 MoE backend supports" in (a100.primary.refusal or "")
    assert a100.primary.min_devices == 4


def test_compressed_tensors_block_fp8_experts_are_not_refined() -> None:
    # compressed_tensors_moe_w8a8_fp8.py: CompressedTensorsW8A8Fp8MoEMethod.create_weights validates the 128 blocks
    spec, _scheme = _minimax_fp8()
    config = {"quant_method": "compressed-tensors", "format": "float-quantized",
              "config_groups": {"group_0": {"targets": ["Linear"],
                                            "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                                        "block_structure": [128, 128], "symmetric": True,
                                                        "dynamic": False},
                                            "input_activations": {"num_bits": 8, "type": "float",
                                                                  "strategy": "group", "group_size": 128,
                                                                  "dynamic": True}}}}
    scheme = scheme_from_quantization_config(config)
    assert scheme.label() == "fp8-block128" and scheme.quant_method == "compressed-tensors"
    refused = plan(spec, Hardware(H100, 8, "h100-80gb"), Workload(8192, 1),
                   PlanOptions(scheme=scheme, engine_version="0.33"))
    assert "compressed-tensors MoE method does not refine" in (refused.primary.refusal or "")


def test_an_fp8_checkpoint_read_from_its_headers_is_charged_the_refined_scales_too() -> None:
    # MiniMax-M2.5's FP8 headers at three of its layers (`fp8_release_headers`): nibble charges each rank
    # ceil(4,718,592 / 8) + ceil(12 x 24 x 4 / 8) = 589,824 + 144 = 589,968 bytes of each expert's w1, w3 and w2, as
    # for the configured format, so the refined scales add 331,776 bytes a layer (test above): 3 x 331,776 = 995,328
    from quant_core.checkpoint_rows import checkpoint_scheme
    from tests.quant_core.test_minimax_m2 import fp8_release_headers
    spec, tensors = fp8_release_headers()
    scheme, summary = checkpoint_scheme(spec, tensors)
    assert summary.format == "fp8-block128" and scheme.quant_method == ""
    hardware, workload = Hardware(H100, 8, "h100-80gb"), Workload(8192, 1)
    sliced = plan(spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.33"))
    placed = plan(spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.33", expert_parallel=True))
    assert sliced.primary.refusal is None and "refine_fp8_moe_block_shape" in sliced.runtime_overhead.basis
    assert sliced.primary.devices[0].weights_bytes == placed.primary.devices[0].weights_bytes
    assert sliced.primary.devices[0].overhead_bytes - placed.primary.devices[0].overhead_bytes == 995_328
    refused = plan(spec, hardware, workload, PlanOptions(scheme=scheme, engine_version="0.19"))
    assert "192" in (refused.primary.refusal or "")


def test_expert_parallel_fp8_experts_are_refined_on_their_whole_width() -> None:
    # gpt-oss-120b's 2880-wide experts are not whole 128-blocks even unsplit (2880 = 22.5 x 128): vLLM 0.33 refines
    # them at one rank, and under --enable-expert-parallel too, where FusedMoEParallelConfig.make gives FusedMoE
    # tp_size 1 (ispp = 2880): gcd(128, 128, 2880, 2880) = 64.  At TP 2 with expert parallelism a rank holds 64 whole
    # experts.  By hand, per expert: vLLM holds w13 5760 x 2880 + w2 2880 x 2880 fp8 bytes = 24,883,200 and float32
    # scales (2 x 45 x 45 + 45 x 45) x 4 = 24,300; nibble's weights are the same fp8 bytes with the checkpoint's
    # 128-block scales (45 x 23 + 23 x 23) x 4 = 6,256: 18,044 bytes more an expert, x 64 experts x 36 MoE layers
    # = 41,573,376 a rank.  Expert parallelism left the term out (as if whole experts were never refined), so on one
    # device, where vLLM turns expert parallelism off, the flag changed the plan by 83,146,752 bytes
    from quant_core.formats import fp8
    spec = get_preset("gpt-oss-120b")
    b200 = Hardware(193_273_528_320, 1, "b200")
    options = PlanOptions(weight_format=fp8("block"), engine_version="0.33")
    alone = plan(spec, b200, Workload(8192, 1), options)
    assert "refine_fp8_moe_block_shape" in alone.runtime_overhead.basis
    assert repr(plan(spec, b200, Workload(8192, 1), replace(options, expert_parallel=True)).comparison) \
        == repr(alone.comparison)
    assert fp8_refined_block(spec, 1, "0.33") == 64
    term = VllmProfile("0.33").expert_layout(Stage(spec, 2, 1, (0, 36), True, expert_parallel=True), "fp8-block128")
    assert term is not None and term.bytes == 41_573_376 and "64 whole experts" in term.basis
    assert fp8_refined_expert_bytes(spec, 2, 36, 64, expert_parallel=True) == (
        36 * 64 * (24_883_200 + 24_300), 36 * 64 * (24_883_200 + 6_256))
