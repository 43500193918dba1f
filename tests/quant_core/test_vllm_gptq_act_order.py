"""GPTQ act order (``desc_act``) and the layout vLLM holds a symmetric 4-bit GPTQ checkpoint in.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* 0.11 / 0.19 gptq_marlin.py ``GPTQMarlinLinearMethod.create_weights``: int32 ``qweight`` [in / 8, out], 16-bit
  ``scales`` and int32 ``qzeros`` [G, out / 8], int32 ``g_idx`` [in]; with act order a row-parallel layer's scales and
  zero points are loaded WHOLE on every rank (utils/marlin_utils.py ``marlin_repeat_scales_on_all_ranks``).  The
  kernel (``choose_mp_linear_kernel``): Machete on compute capability 9.0 (not for act order with a split input),
  else Marlin.  Marlin (kernels mixed_precision/marlin.py) empties the qzeros (``zero_points=False``) and, without
  act order, the g_idx; with act order it keeps the sorted g_idx and int32 ``g_idx_sort_indices``.  Machete keeps
  qzeros and g_idx as loaded and, with act order, its int32 ``argsort(g_idx)``.
* 0.11 / 0.19 ``GPTQMarlinMoEMethod``: qzeros allocated in the model's 16-bit dtype; under act order the down
  projection's scales and zero points whole (``load_full_w2``) and the g_idx with sort indices kept, else emptied.
* 0.33 auto_gptq.py: ``normalize_and_validate_gptq_desc_act`` raises for desc_act true with groups; the linear method
  creates no g_idx.
"""

from __future__ import annotations

import pytest

from quant_core.catalog import device_facts, get_preset
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_refusals import gptq_act_order_refusal, unknown_gptq_symmetry_note
from quant_core.formats import gptq_checkpoint
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from tests.quant_core.test_vllm_gptq_dtype import gptq_headers

GIB = 1 << 30
GPTQ_G128 = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}


def test_desc_act_is_carried_into_the_format_and_its_label() -> None:
    act_order = scheme_from_quantization_config({**GPTQ_G128, "desc_act": True})
    assert act_order.quantized.act_order and act_order.label() == "int4-g128-sym-act-order-gptq"
    assert not scheme_from_quantization_config({**GPTQ_G128, "desc_act": False}).quantized.act_order
    # a whole row is one group: vLLM sets desc_act false (GPTQMarlinConfig.__init__, normalize_and_validate_...)
    row = scheme_from_quantization_config({**GPTQ_G128, "group_size": -1, "desc_act": True})
    assert not row.quantized.act_order and row.label() == "int4-row-sym-gptq"
    # the checkpoint's tensors are the same either way (g_idx is always stored)
    assert gptq_checkpoint(128, True, True).bytes_for((8192, 8192)) == gptq_checkpoint(128).bytes_for((8192, 8192))


def _checkpoint_bytes(out_features: int, in_features: int, group: int) -> int:
    """A GPTQ checkpoint's qweight, qzeros, scales and g_idx for one [out, in] weight."""
    groups = in_features // group
    return in_features * out_features // 2 + groups * out_features // 2 + 2 * groups * out_features + 4 * in_features


def _llama_70b_extra(tensor_parallel: int, group: int, act_order: bool, hopper: bool, workspace: int = 0) -> int:
    """Hand-derived: what one rank of vLLM 0.11/0.19 holds for a Llama-70B's 80 layers of attention and MLP beyond
    nibble's charge (each checkpoint tensor's bytes / tp).  Hidden 8192, 64 heads, 8 KV heads of 128, MLP 28,672.
    `workspace`: the bytes of the workspace each Marlin layer keeps (MarlinLinearKernel ``self.workspace =
    marlin_make_workspace_new(device)``: int32 one a streaming multiprocessor in 0.11/0.19, none in 0.33)."""
    tp = tensor_parallel
    # (in per rank, out per rank, in of the whole layer, row parallel)
    layers = ((8192, (64 // tp + 2 * 8 // tp) * 128, 8192, False), (8192 * 1 // tp, 8192, 8192, True),
              (8192, 2 * 28672 // tp, 8192, False), (28672 // tp, 8192, 28672, True))
    held = 0
    for in_features, out_features, full_in, row_parallel in layers:
        machete = hopper and not (act_order and row_parallel and tp > 1) and group in (64, 128)
        groups = (full_in if act_order and not machete else in_features) // group
        held += in_features * out_features // 2 + 2 * groups * out_features
        if machete:  # qzeros and g_idx kept, plus act_perm's argsort under act order
            held += groups * out_features // 2 + 4 * in_features + (4 * in_features if act_order else 0)
        else:  # Marlin: its workspace; with act order the sorted g_idx and the sort indices; the qzeros emptied
            held += workspace + (8 * in_features if act_order else 0)
    charged = sum(-(-_checkpoint_bytes(out_features, in_features, group) // tp) for out_features, in_features in (
        (8192, 8192), (1024, 8192), (1024, 8192), (8192, 8192), (28672, 8192), (28672, 8192), (8192, 28672)))
    return 80 * (held - charged)


def _dense_term(model: str, version: str, device: str, tensor_parallel: int, label: str) -> int | None:
    spec = get_preset(model)
    term = VllmProfile(version).linear_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                              device_facts(device))
    return None if term is None else term.bytes


@pytest.mark.parametrize("model", ["llama-2-70b", "llama-3.1-70b"])
@pytest.mark.parametrize("version", ["0.11", "0.19"])
@pytest.mark.parametrize("tensor_parallel", [1, 2, 4])
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("device", ["a100-80gb", "h100-80gb"])
def test_a_rank_holds_the_gptq_dense_layers_as_gptq_marlin_lays_them_out(model: str, version: str, tensor_parallel: int,
                                                                          act_order: bool, device: str) -> None:
    label = "int4-g128-sym-act-order-gptq" if act_order else "int4-g128-sym-gptq"
    # the A100's 108 streaming multiprocessors, the H100's 132: 4 bytes each a Marlin layer
    workspace = 4 * (132 if device == "h100-80gb" else 108)
    expected = _llama_70b_extra(tensor_parallel, 128, act_order, device == "h100-80gb", workspace)
    assert _dense_term(model, version, device, tensor_parallel, label) == expected


def test_act_order_at_tp_4_holds_the_row_parallel_scales_whole_a_priority_one_under_charge() -> None:
    # Llama-3.1-70B GPTQ g128 desc_act true at TP 4 on A100 (Marlin everywhere), one layer on one rank:
    # held: qkv 8192 x 2560 / 2 + 64 x 2560 x 2 + 8 x 8192 = 10,878,976; o_proj (in 2048, its scales whole:
    # 8192 / 128 = 64 groups) 8,388,608 + 64 x 8192 x 2 + 8 x 2048 = 9,453,568; gate_up 58,720,256 + 64 x 14,336 x 2
    # + 8 x 8192 = 60,620,800; down (in 7168, 28,672 / 128 = 224 groups) 29,360,128 + 224 x 8192 x 2 + 8 x 7168 =
    # 33,087,488; 114,040,832 in all.  nibble's charge, each tensor / 4: q and o 8,724,480, k and v 1,097,728,
    # gate and up 30,515,200, down 30,535,680: 111,210,496.  80 x 2,830,336 = 226,426,880 bytes (0.21 GiB) more,
    # and each of the 4 Marlin layers keeps a workspace of 108 int32 (marlin_make_workspace_new): 80 x 4 x 432 =
    # 138,240: 226,565,120
    assert _dense_term("llama-3.1-70b", "0.19", "a100-80gb", 4, "int4-g128-sym-act-order-gptq") == 226_565_120
    # without act order Marlin frees the qzeros and g_idx nibble charges: 80 x -913,408, and the same workspaces
    assert _dense_term("llama-3.1-70b", "0.19", "a100-80gb", 4, "int4-g128-sym-gptq") == -73_072_640 + 138_240
    # on H100 Machete runs qkv_proj and gate_up_proj (their inputs whole) and keeps their qzeros: 80 x 540,672 more;
    # o_proj and down_proj stay on Marlin with a workspace of 132 int32 each: 80 x 2 x 528 = 84,480 more
    assert _dense_term("llama-3.1-70b", "0.19", "h100-80gb", 4, "int4-g128-sym-act-order-gptq") == (
        269_680_640 + 84_480)


def test_vllm_0_33_holds_no_g_idx_for_gptq_dense_layers() -> None:
    # AutoGPTQLinearMethod creates no g_idx; Marlin (A100) empties the qzeros, Machete (H100) keeps them
    assert _dense_term("llama-3.1-70b", "0.33", "a100-80gb", 4, "int4-g128-sym-gptq") == _llama_70b_extra(
        4, 128, False, False)
    g_idx = 4 * (3 * 8192 + 8192 + 2 * 8192 + 28672)  # q, k, v, o, gate, up, down at TP 1
    assert _dense_term("llama-3.1-70b", "0.33", "h100-80gb", 1, "int4-g128-sym-gptq") == -80 * g_idx
    # act order is refused there, so no layout; group 32 on H100 runs Humming (Machete takes no group 32), nothing
    # padded at TP 4 (2560, 8192, 14336 out; 8192, 2048, 7168 in): it frees the qzeros and g_idx nibble charges,
    # 4 x (8192 x 6 + 28672) + 256 x (8192 x 2 + 1024 x 2 + 28672 x 2) / 2 + 896 x 8192 / 2 = 13,680,640 bytes a
    # layer over 4 ranks, and adds four lock buffers of 8 x 132 int32 (tests/quant_core/test_vllm_humming_dense.py)
    assert _dense_term("llama-3.1-70b", "0.33", "a100-80gb", 4, "int4-g128-sym-act-order-gptq") is None
    assert _dense_term("llama-3.1-70b", "0.33", "h100-80gb", 4, "int4-g32-sym-gptq") == (
        80 * (4 * 4 * 8 * 132 - 13_680_640 // 4)) == -272_261_120


def test_no_gptq_term_where_vllm_runs_other_kernels() -> None:
    # asymmetric GPTQ runs GPTQConfig's ExLlama kernels in 0.11/0.19; a T4 is below 0.11's gptq_marlin floor (8.0)
    assert _dense_term("llama-3.1-70b", "0.19", "a100-80gb", 4, "int4-g128-asym-gptq") is None
    assert _dense_term("llama-3.1-70b", "0.11", "t4", 4, "int4-g128-sym-gptq") is None


def _moe_extra(spec_name: str, tensor_parallel: int, act_order: bool) -> int:
    """Hand-derived: vLLM 0.11/0.19's GPTQMarlinMoEMethod bytes of all routed experts on one rank less nibble's charge,
    g128 (H hidden, N the rank's width, N_full the whole)."""
    spec = get_preset(spec_name)
    hidden, full = spec.hidden_size, spec.moe_intermediate_size
    width, group = full // tensor_parallel, 128
    down_rows = full if act_order else width
    held = (hidden * 2 * width // 2 + width * hidden // 2  # qweights
            + 2 * (hidden // group * 2 * width + down_rows // group * hidden)  # 16-bit scales
            + 2 * (hidden // group * 2 * width // 8 + down_rows // group * hidden // 8)  # qzeros at 2 bytes
            + (8 * (hidden + width) if act_order else 0))  # g_idx and sort indices of w13 and w2
    gate_and_up = 2 * -(-_checkpoint_bytes(full, hidden, group) // tensor_parallel)
    charged = gate_and_up + -(-_checkpoint_bytes(hidden, full, group) // tensor_parallel)  # + down
    return len(spec.moe_layers) * spec.num_experts * (held - charged)


@pytest.mark.parametrize("spec_name", ["qwen3-30b-a3b", "mixtral-8x7b-v0.1"])
@pytest.mark.parametrize("version", ["0.11", "0.19"])
@pytest.mark.parametrize("tensor_parallel", [1, 2])
@pytest.mark.parametrize("act_order", [True, False])
def test_a_rank_holds_gptq_experts_as_gptq_marlin_moe_lays_them_out(spec_name: str, version: str,
                                                                      tensor_parallel: int, act_order: bool) -> None:
    spec = get_preset(spec_name)
    label = "int4-g128-sym-act-order-gptq" if act_order else "int4-g128-sym-gptq"
    term = VllmProfile(version).expert_layout(Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True), label,
                                              device_facts("a100-80gb"))
    assert term is not None and term.bytes == _moe_extra(spec_name, tensor_parallel, act_order)


def test_qwen3_30b_a3b_gptq_experts_figures() -> None:
    # Qwen3-30B-A3B (48 layers of 128 experts, hidden 2048, width 768) g128, one expert of one layer: nibble charges
    # gate and up 786,432 + 6,144 + 24,576 + 8,192 each and down 786,432 + 6,144 + 24,576 + 3,072: 2,470,912; TP 1
    # without act order vLLM holds 2,359,296 of weights, 73,728 of scales and 9,216 of 16-bit qzeros: -28,672
    assert _moe_extra("qwen3-30b-a3b", 1, False) == 48 * 128 * -28_672 == -176_160_768
    # TP 2 with act order: the down projection's 6 scale groups whole, g_idx and sort indices 8 x (2048 + 384)
    assert _moe_extra("qwen3-30b-a3b", 2, True) == 116_391_936
    # TP 4: a rank's width 192 is no multiple of 128: MoeWNA16, which skips the g_idx (its weight loader returns on
    # "g_idx") and holds the scales at group 64: 626,688 an expert against nibble's 617,728 (tests/quant_core/
    # test_moe_wna16.py), 8,960 x 128 x 48 more
    spec = get_preset("qwen3-30b-a3b")
    term = VllmProfile("0.19").expert_layout(Stage(spec, 4, 1, (0, spec.num_layers), True),
                                             "int4-g128-sym-act-order-gptq", device_facts("a100-80gb"))
    assert term is not None and term.bytes == 48 * 128 * 8_960 == 55_050_240


def test_vllm_0_33_refuses_act_order_gptq_with_its_message() -> None:
    # public: vllm#48148 (RFC removing group activation ordering from vLLM; vllm#54809 removed its kernels)
    stored = gptq_checkpoint(128, True, True)
    refusal = gptq_act_order_refusal("0.33", stored)
    assert refusal is not None and "desc_act=True) is no longer supported" in refusal
    assert gptq_act_order_refusal("0.19", stored) is None and gptq_act_order_refusal("0.33", gptq_checkpoint()) is None
    spec = get_preset("llama-3.1-70b")
    scheme = scheme_from_quantization_config({**GPTQ_G128, "desc_act": True})
    answer = plan(spec, Hardware(80 * GIB, 4, "a100-80gb"), Workload(4096, 1),
                  PlanOptions(scheme=scheme, shipped=scheme, engine_version="0.33", float_format="fp16"))
    assert answer.primary.refusal is not None and "gptq_utils.py" in answer.primary.refusal
    loaded = plan(spec, Hardware(80 * GIB, 4, "a100-80gb"), Workload(4096, 1),
                  PlanOptions(scheme=scheme, shipped=scheme, engine_version="0.19", float_format="fp16"))
    assert loaded.primary.refusal is None


def test_the_plan_charges_act_order_in_the_overhead() -> None:
    # GPTQ configs keep lm_head unquantized (a kept module outside attention and MLP): the layers' format is still one
    spec = get_preset("llama-3.1-70b")
    hardware = Hardware(80 * GIB, 4, "a100-80gb")
    overheads = {}
    for desc_act in (True, False):
        scheme = scheme_from_quantization_config({**GPTQ_G128, "desc_act": desc_act})
        answer = plan(spec, hardware, Workload(4096, 1),
                      PlanOptions(scheme=scheme, shipped=scheme, engine_version="0.19", float_format="fp16"))
        assert answer.primary.refusal is None
        assert ("marlin_repeat_scales_on_all_ranks" in answer.runtime_overhead.basis) is desc_act
        overheads[desc_act] = answer.runtime_overhead.bytes
    assert overheads[True] - overheads[False] == 226_426_880 + 73_072_640


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_headers_alone_say_act_order_is_unknown_and_what_it_costs(version: str) -> None:
    # no header says desc_act either (g_idx is stored either way): the note names the refusal (0.33) or the bytes
    # act order holds that a checkpoint's headers are not charged (0.11/0.19)
    note = unknown_gptq_symmetry_note(version)
    assert "act order (desc_act" in note
    assert ("no longer supported" in note) is (version == "0.33")
    assert ("marlin_repeat_scales_on_all_ranks" in note) is (version != "0.33")


def test_gptq_headers_with_their_config_are_charged_the_layout_of_the_configs_format() -> None:
    # the headers of a Llama-3.1-70B GPTQ g128 checkpoint (qweight, qzeros, scales, g_idx per linear) with config.json's
    # quantization_config: the rows are the format's tensors, so the layout term is the format's (+226,426,880 at
    # TP 4 on A100 with act order); before, a checkpoint read from its headers was charged no kernel layout
    spec = get_preset("llama-3.1-70b")
    headers, _ = checkpoint_scheme(spec, gptq_headers(spec), mtp_layers=0)
    hardware = Hardware(80 * GIB, 4, "a100-80gb")
    overheads = {}
    for desc_act in (True, False):
        shipped = scheme_from_quantization_config({**GPTQ_G128, "desc_act": desc_act})
        answer = plan(spec, hardware, Workload(4096, 1), PlanOptions(scheme=headers, shipped=shipped,
                                                                     engine_version="0.19", float_format="fp16"))
        assert answer.primary.format == "checkpoint-gptq" and answer.primary.refusal is None
        overheads[desc_act] = answer.runtime_overhead.bytes
    assert overheads[True] - overheads[False] == 226_426_880 + 73_072_640
