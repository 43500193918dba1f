"""vLLM's Machete rewrite of int4 linear layers at load (compute capability 9.0): what it holds beside the loaded
weight while it rewrites the largest layer, charged as a candidate of the int4 repack term
(`int4_marlin_linear_repack_bytes`, `machete_linear_repack_transient_bytes`).

Read in vLLM 0.11.0 (model_executor/layers/quantization/kernels/mixed_precision/machete.py), 0.19.0 and 0.33.0
(model_executor/kernels/linear/mixed_precision/machete.py), ``MacheteLinearKernel.process_weights_after_loading``'s
``transform_w_q``:

* without act order ``machete_prepack_B(x.data.t().contiguous().t())``: GPTQ's qweight (and AWQ's after
  ``_convert_awq_to_standard_format``) is ``[in / 8, out]`` contiguous, so ``.contiguous()`` copies it
  (``in x out / 2``) and the prepack writes as much (``_custom_ops.py machete_prepack_B_fake``: ``empty_like``),
  the loaded one bound;
  compressed-tensors' weight_packed ``[out, in / 8]`` is permuted to a view whose ``.t()`` is contiguous: no copy;
* with act order (0.11, 0.19; 0.33's Machete dropped it): ``unpack_quantized_values_into_int32`` makes an int32
  ``[in, out]`` (4 bytes a weight), ``x_unpacked[perm, :]`` a second, and ``pack_quantized_values_into_int32`` writes
  the packed ``[out, in / 8]`` int32 result from two ``[out, in / 8]`` int32 temporaries at once
  (``(w[..., i::8] & mask) << shift``), both unpacked copies and the loaded qweight bound: ``2 x 4 x in x out +
  3 x in x out / 2``.  The result's ``.t()`` is contiguous, so the prepack copies nothing; its output comes after
  the loaded qweight is replaced, below that step.

Each tensor as PyTorch's caching allocator counts it (`torch_cuda.allocated_block_bytes`).
"""

from __future__ import annotations

from quant_core.catalog import device_facts, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm_linear import int4_marlin_linear_repack_bytes, machete_linear_repack_transient_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from quant_core.specs import ModelSpec

GIB = 1 << 30
H100 = device_facts("h100-80gb")
A100 = device_facts("a100-80gb")
GPTQ_ACT_ORDER = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True}


def _stage(spec: ModelSpec, tensor_parallel: int) -> Stage:
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


def _bytes(term: object) -> int | None:
    return None if term is None else term.bytes  # type: ignore[attr-defined]


def test_machete_transient_of_one_layer_by_layout_and_act_order() -> None:
    # Llama-3.1-70B gate_up_proj at TP 4: in 8192, out 2 x 28672 / 4 = 14336; packed 8192 x 14336 / 2 = 58,720,256
    # bytes (28 x 2 MiB: no rounding), its int32 unpacked copy 4 x 8192 x 14336 = 469,762,048 (224 x 2 MiB)
    # GPTQ without act order: the contiguous transposed copy and the prepacked output
    assert machete_linear_repack_transient_bytes("gptq", 8192, 14336, False) == 2 * 58_720_256 == 117_440_512
    # compressed-tensors: the permuted weight_packed is not copied, the prepacked output alone
    assert machete_linear_repack_transient_bytes("compressed-tensors", 8192, 14336, False) == 58_720_256
    # act order: two int32 copies and three packed-size int32 tensors (the pack's result and its two temporaries)
    assert 2 * 469_762_048 + 3 * 58_720_256 == 1_115_684_864
    assert machete_linear_repack_transient_bytes("gptq", 8192, 14336, True) == 1_115_684_864


def test_machete_transient_counts_each_tensor_as_the_allocator_rounds_it() -> None:
    # in 5120, out 4608: packed 11,796,480 bytes (11.25 MiB): from 10 MiB on a block leaving 1 MiB or less of its
    # 2 MiB-rounded segment takes the whole 12,582,912; the int32 copy 4 x 5120 x 4608 = 94,371,840 (90 MiB) is
    # already rounded
    assert machete_linear_repack_transient_bytes("gptq", 5120, 4608, False) == 2 * 12_582_912
    assert machete_linear_repack_transient_bytes("compressed-tensors", 5120, 4608, False) == 12_582_912
    assert machete_linear_repack_transient_bytes("gptq", 5120, 4608, True) == 2 * 94_371_840 + 3 * 12_582_912


def test_llama_70b_act_order_gptq_tp4_on_h100_charges_machete_s_gate_up_rewrite() -> None:
    # qkv_proj (8192 x 2560) and gate_up_proj (8192 x 14336) are column-parallel, whole input: Machete with act
    # order in 0.11 and 0.19; o_proj and down_proj split their input (Machete refuses act order there): Marlin, whose
    # largest (down_proj 7168 x 8192) was the whole charge before, 29,360,128
    stage = _stage(get_preset_info("llama-3.1-70b").spec, 4)
    for version in ("0.11", "0.19"):
        term = int4_marlin_linear_repack_bytes(stage, version, "int4-g128-sym-act-order-gptq", H100)
        assert _bytes(term) == 1_115_684_864
        assert term is not None and "8192 x 14336" in term.basis and "x_unpacked[perm, :]" in term.basis
        # the same checkpoint on an A100 runs Marlin throughout: gate_up's repack output, unchanged
        assert _bytes(int4_marlin_linear_repack_bytes(stage, version, "int4-g128-sym-act-order-gptq",
                                                      A100)) == 58_720_256
    # 0.33 refuses GPTQ act order (as before): no term
    assert int4_marlin_linear_repack_bytes(stage, "0.33", "int4-g128-sym-act-order-gptq", H100) is None


def test_llama_70b_gptq_and_compressed_tensors_tp4_on_h100_charge_machete_s_prepack() -> None:
    # without act order every layer runs Machete on 9.0 (groups of 128, aligned): the largest, gate_up_proj; these
    # were None before (the GPTQ branch skipped Machete's layers, compressed-tensors skipped 9.0)
    stage = _stage(get_preset_info("llama-3.1-70b").spec, 4)
    for version in ("0.11", "0.19", "0.33"):
        term = int4_marlin_linear_repack_bytes(stage, version, "int4-g128-sym-gptq", H100)
        assert _bytes(term) == 117_440_512
        assert term is not None and "for Machete" in term.basis and "machete_prepack_B" in term.basis
        for kind in ("sym", "asym"):
            assert _bytes(int4_marlin_linear_repack_bytes(stage, version, f"int4-g128-{kind}-compressed-tensors",
                                                          H100)) == 58_720_256


def test_awq_on_machete_keeps_the_conversion_as_its_larger_step() -> None:
    # 0.19/0.33 convert AWQ (8.5 x 8192 x 14336 = 998,244,352) and free it before Machete's prepack (2 x 58,720,256):
    # the conversion stays the figure; 0.11's awq_marlin.py repacks for Marlin on 9.0 too (58,720,256)
    stage = _stage(get_preset_info("llama-3.1-70b").spec, 4)
    for version in ("0.19", "0.33"):
        term = int4_marlin_linear_repack_bytes(stage, version, "int4-g128-asym-awq", H100)
        assert _bytes(term) == 998_244_352
        assert term is not None and "_convert_awq_to_standard_format" in term.basis
    assert _bytes(int4_marlin_linear_repack_bytes(stage, "0.11", "int4-g128-asym-awq", H100)) == 58_720_256


def test_llama_8b_act_order_gptq_plan_on_a_6_8_gib_h100_fits_serving_but_not_machete_s_rewrite() -> None:
    # one 6.8 GiB H100 at memory_utilization 0.9, eager, 1024 tokens, one sequence: serving fits (0.21 GiB of
    # headroom), but the room left while loading cannot hold the 1.04 GiB (1,115,684,864 bytes: 2 x 469,762,048 +
    # 3 x 58,720,256) Machete's act-order rewrite of gate_up_proj (4096 x 28672) takes; nibble charged nothing for
    # it before, every layer being on Machete at TP 1, and said the plan fits
    info = get_preset_info("llama-3.1-8b")
    scheme = scheme_from_quantization_config(GPTQ_ACT_ORDER)
    options = PlanOptions(scheme=scheme, engine_version="0.19", memory_utilization=0.9, enforce_eager=True,
                          max_batched_tokens=1024, max_num_seqs=1)
    answer = plan(info.spec, Hardware(68 * GIB // 10, 1, "h100-80gb"), Workload(1024, 1), options)
    assert answer.primary.devices[0].headroom_bytes > 0
    assert not answer.primary.fits
    assert any("would run out of memory loading the model" in warning and "x_unpacked[perm, :]" in warning
               for warning in answer.warnings)
    # with 0.4 GiB more the rewrite has its room and the plan fits
    assert plan(info.spec, Hardware(72 * GIB // 10, 1, "h100-80gb"), Workload(1024, 1), options).primary.fits
