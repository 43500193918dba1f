"""What one rank holds of a MoE model's routed experts under vLLM, beyond the inventory's shapes: the experts' biases
split as FusedMoE splits them, and the widths vLLM's kernels pad the experts to.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* ``w13_bias`` is created ``[E, 2 x intermediate_size_per_partition]`` and ``w2_bias`` ``[E, hidden_size]``
  (0.11 fused_moe/layer.py ``UnquantizedFusedMoEMethod.create_weights``, 0.19/0.33
  fused_moe/unquantized_fused_moe_method.py, quantization/mxfp4.py ``Mxfp4MoEMethod.create_weights`` in all three);
  gpt_oss.py ``load_weights`` copies each rank's ``2 x tp_rank_start : 2 x tp_rank_end`` slice of the checkpoint's
  gate_up_proj_bias and the whole down_proj_bias (zeroed on ranks other than 0, still allocated).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core.catalog import get_preset
from quant_core.formats import float_format
from quant_core.planner import Hardware, PlanOptions, Workload, plan

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
