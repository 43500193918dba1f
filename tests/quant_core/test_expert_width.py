"""vLLM's limits on the routed experts' width per tensor-parallel rank, by weight format.

Sources, vLLM v0.19.0 (the same lines in v0.11.0): ``FusedMoE.__init__`` asserts ``intermediate_size % tp_size == 0``
(model_executor/layers/fused_moe/layer.py); GPTQ and AWQ experts run on Marlin where
``check_moe_marlin_supports_layer`` (layers/quantization/utils/marlin_utils.py: ``hidden % 128 == 0`` and
``intermediate_size_per_partition % max(64, group_size) == 0``) allows it, else on MoeWNA16
(moe_wna16.py, ``MoeWNA16Method.create_weights``: halves the group size until it divides, asserts ``>= 32``);
compressed-tensors' int4 MoE methods assert symmetric weights and, off Marlin, hold ``width // group_size`` scale
groups per rank (compressed_tensors_moe.py, ``CompressedTensorsWNA16MoEMethod.create_weights``).
"""

from __future__ import annotations

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_refusals import expert_width_refusal, int4_expert_refusal
from quant_core.formats import WeightFormat, float_format, int4
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan

H100 = get_device("h100-80gb").memory_bytes


@pytest.mark.parametrize(("tensor_parallel", "refused"), [(16, False), (24, True), (32, False), (48, True),
                                                         (96, True)])
def test_glm_4_5_air_1408_wide_experts_refuse_the_ranks_that_do_not_divide_them(tensor_parallel: int,
                                                                              refused: bool) -> None:
    # 96 heads and 8 key/value heads accept 24, 48 and 96 ranks; 1408 / 24 = 58.7, / 48 = 29.3, / 96 = 14.7
    spec = get_preset("glm-4.5-air")
    assert spec.moe_intermediate_size == 1408
    reason = VllmProfile().refusal(spec, tensor_parallel, 1)
    assert (reason is not None) == refused
    assert (tensor_parallel in engine_tensor_parallel_sizes(spec)) != refused
    if refused:
        assert reason is not None and "routed experts' width (1408" in reason
        result = plan(spec, Hardware(H100, tensor_parallel), Workload(4096, 1))
        assert not result.primary.fits and result.primary.refusal == reason


def test_the_fewest_devices_for_glm_4_5_air_skip_24_ranks() -> None:
    # at 155,648 tokens x 16 sequences on H100s, bf16 does not fit on 16 ranks; 24 would have the room but vLLM
    # refuses it (1408 % 24): the fewest devices are 32
    spec = get_preset("glm-4.5-air")
    workload = Workload(155_648, 16)
    bf16 = PlanOptions(weight_format=float_format("bf16"))
    assert not plan(spec, Hardware(H100, 16), workload, bf16).primary.fits
    on_24 = plan(spec, Hardware(H100, 24), workload, bf16).primary
    assert on_24.refusal is not None and all(device.headroom_bytes > 0 for device in on_24.devices)
    assert plan(spec, Hardware(H100, 32), workload, bf16).primary.fits
    assert plan(spec, Hardware(H100, 1), workload).comparison["bf16"].min_devices == 32


def test_models_without_routed_experts_have_no_expert_width_refusal() -> None:
    assert expert_width_refusal(get_preset("llama-3.1-8b"), 3) is None


GPTQ_G128 = int4(128, True, layout="gptq")
AWQ_G128 = int4(128, False, layout="awq")
CT_G128_SYM = int4(128, True, layout="compressed-tensors")
CT_G128_ASYM = int4(128, False, layout="compressed-tensors")


@pytest.mark.parametrize(("weight_format", "accepted"), [
    # Qwen3-30B-A3B: 768-wide experts, hidden 2048; per rank 768, 384, 192, 96, 48, 24 at TP 1..32.
    # GPTQ / AWQ g128: Marlin to TP 2 (384 % 128), MoeWNA16 at g64 (192) and g32 (96); 48 and 24 have no 32-group
    (GPTQ_G128, (1, 2, 4, 8)),
    (AWQ_G128, (1, 2, 4, 8)),
    (int4(32, True, layout="gptq"), (1, 2, 4, 8)),
    # compressed-tensors sym g128: whole 128-groups per rank only at 768 and 384
    (CT_G128_SYM, (1, 2)),
    # asymmetric compressed-tensors MoE: "Only symmetric quantization is supported for MoE" at any size
    (CT_G128_ASYM, ()),
])
def test_qwen3_30b_int4_experts_run_at_the_ranks_vllms_moe_kernels_accept(weight_format: WeightFormat,
                                                                         accepted: tuple[int, ...]) -> None:
    spec = get_preset("qwen3-30b-a3b")
    sizes = engine_tensor_parallel_sizes(spec)
    assert sizes == (1, 2, 4, 8, 16, 32)  # bf16 splits 768 every way
    runs = tuple(size for size in sizes if VllmProfile().format_refusal(spec, weight_format.label(), size) is None)
    assert runs == accepted
    for size in sizes:
        result = plan(spec, Hardware(H100, size), Workload(4096, 1), PlanOptions(weight_format=weight_format))
        assert (result.primary.refusal is None) == (size in accepted)


def test_int4_expert_refusal_leaves_nibbles_own_layout_other_releases_and_dense_models_alone() -> None:
    spec = get_preset("qwen3-30b-a3b")
    assert int4_expert_refusal(spec, int4(128).label(), 32, "0.19") is None  # nibble's layout: no vLLM loader
    # 0.33: 24 wide at TP 32, no 128-group divides it, so MoeWNA16 takes the experts and cannot halve to a group
    # of at least 32 dividing 24; 96 wide at TP 8 it holds them in groups of 32
    refusal = int4_expert_refusal(spec, GPTQ_G128.label(), 32, "0.33")
    assert refusal is not None and "MoeWNA16" in refusal
    assert int4_expert_refusal(spec, GPTQ_G128.label(), 8, "0.33") is None
    assert int4_expert_refusal(spec, GPTQ_G128.label(), 32, "0.11") is not None
    assert int4_expert_refusal(get_preset("llama-3.1-8b"), CT_G128_ASYM.label(), 8, "0.19") is None
