"""vLLM's 16-bit copy of each quantized MLA ``kv_b_proj``, held after loading.

Read in vLLM 0.11.0 (v1/attention/backends/mla/common.py ``MLACommonBaseImpl`` / ``MLACommonImpl``
``process_weights_after_loading``), 0.19.0 (model_executor/layers/attention/mla_attention.py ``MLAAttention
.process_weights_after_loading``) and 0.33.0 (the same, through ``split_kv_b_proj``): model_loader/utils.py calls it
with ``model_config.dtype`` inside ``load_model``, and it asks ``get_and_maybe_dequant_weights(kv_b_proj)``.  A
quantized layer gives a new ``[kv_lora_rank, heads / tp x (qk_nope_head_dim + v_head_dim)]`` tensor of the model's
dtype (``scaled_dequantize``, or the layer applied to an identity matrix), of which ``W_UK_T`` and ``W_UV`` are views,
kept beside ``kv_b_proj`` itself (the prefill runs it); an unquantized one gives its own weight (no copy).  vLLM's
"Model loading took" counts it, so the KV cache is that much smaller.
"""

from __future__ import annotations

from quant_core.catalog import get_device, get_preset, get_preset_info
from quant_core.engines.base import Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_linear import mla_kv_b_copy_bytes
from quant_core.engines.vllm_speculative import SpeculativeDecoding
from quant_core.formats import float_format
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.planner import _quantized_kv_b_layers as quantized_kv_b_layers
from quant_core.schemes import WeightScheme, scheme_from_quantization_config
from quant_core.specs import TensorEntry

#: DeepSeek-V3: kv_lora_rank 512, 128 heads, qk_nope_head_dim 128, v_head_dim 128, 61 layers, bf16
V3_PER_LAYER_TP8 = 512 * 16 * (128 + 128) * 2
V3_PER_LAYER_TP1 = 512 * 128 * (128 + 128) * 2
H200_X8 = Hardware(get_device("h200").planning_bytes, 8, "h200")


def _deepseek_v3(**options: object) -> Plan:
    scheme = scheme_from_quantization_config(get_preset_info("deepseek-v3").quantization_config or {})
    return plan(get_preset("deepseek-v3"), H200_X8, Workload(32_768, 1),
                PlanOptions(engine_version="0.19", scheme=scheme, **options))  # type: ignore[arg-type]


def test_one_deepseek_v3_layer_copy_is_4_mib_a_rank_at_tp_8_and_32_mib_at_tp_1() -> None:
    spec = get_preset("deepseek-v3")
    assert mla_kv_b_copy_bytes(spec, 8) == V3_PER_LAYER_TP8 == 4_194_304
    assert mla_kv_b_copy_bytes(spec, 1) == V3_PER_LAYER_TP1 == 33_554_432
    # a model vLLM runs in float32 copies at 4 bytes an element
    assert mla_kv_b_copy_bytes(spec, 8, 4) == 2 * V3_PER_LAYER_TP8


def test_deepseek_v3_fp8_on_8_h200s_charges_the_61_copies_inside_the_budget_in_every_release() -> None:
    # every kv_b_proj of the block-fp8 checkpoint is quantized (its config lists no module to leave out)
    spec = get_preset("deepseek-v3")
    scheme = scheme_from_quantization_config(get_preset_info("deepseek-v3").quantization_config or {})
    layers = quantized_kv_b_layers(spec, scheme)
    assert layers == frozenset(range(61))
    for release in ("0.11", "0.19", "0.33"):
        term = VllmProfile(release).attention_weight_copy(Stage(spec, 8, 1, (0, 61), True), layers)
        assert term is not None and term.bytes == 61 * V3_PER_LAYER_TP8 == 255_852_544
        assert f"vLLM {release}" in term.basis and "4,194,304 bytes a layer" in term.basis
    answer = _deepseek_v3()
    assert "attention's weight copies" in answer.runtime_overhead.basis
    # 43,503,738,692 bytes of KV pool a rank before (no copy charged): 255,852,544 fewer, 615,424 tokens (38,464
    # blocks of 16 at 70,272 bytes a token: (512 + 64) x 2 x 61 layers), 3,648 fewer
    assert answer.primary.kv_pool_bytes == 43_503_738_692 - 255_852_544 == 43_247_886_148
    assert answer.primary.kv_capacity_tokens == 615_424


def test_deepseek_v3_at_data_parallel_8_holds_every_heads_copy_on_each_rank() -> None:
    # DP 8 with expert parallelism: attention at TP 1, all 128 heads' kv_b_proj on each rank, 2 GiB of copies a rank
    answer = _deepseek_v3(data_parallel=8, expert_parallel=True)
    assert answer.tensor_parallel == 1
    basis = answer.runtime_overhead.basis
    assert "512 x 128 heads x (128 + 128) = 33,554,432 bytes a layer on a rank, for 61 layer(s): 1.91 GiB" in basis
    term = VllmProfile("0.19").attention_weight_copy(Stage(get_preset("deepseek-v3"), 1, 1, (0, 61), True, 2, True, 8),
                                                     frozenset(range(61)))
    assert term is not None and term.bytes == 61 * V3_PER_LAYER_TP1 == 2_046_820_352


def test_each_pipeline_stage_holds_the_copies_of_its_own_layers() -> None:
    spec = get_preset("deepseek-v3")
    profile = VllmProfile("0.19")
    layers = frozenset(range(61))
    first = profile.attention_weight_copy(Stage(spec, 4, 2, (0, 31), False), layers)
    last = profile.attention_weight_copy(Stage(spec, 4, 2, (31, 61), True), layers)
    per_layer = 512 * 32 * 256 * 2
    assert first is not None and last is not None
    assert (first.bytes, last.bytes) == (31 * per_layer, 30 * per_layer)


def test_the_mtp_drafter_layer_holds_its_own_copy_on_the_last_stage() -> None:
    # deepseek_mtp.py builds the MTP layer as a DeepseekV2DecoderLayer with the model's quant_config: fp8, one copy more
    spec = get_preset("deepseek-v3")
    term = VllmProfile("0.19").attention_weight_copy(Stage(spec, 8, 1, (0, 61), True), frozenset(range(61)), 1)
    assert term is not None and term.bytes == 62 * V3_PER_LAYER_TP8
    assert "its 1 MTP layer(s)" in term.basis
    without = _deepseek_v3().primary.devices[0]
    mtp = _deepseek_v3(speculative=SpeculativeDecoding("mtp", 1, 1))
    assert "62 layer(s)" not in mtp.runtime_overhead.basis and "its 1 MTP layer(s)" in mtp.runtime_overhead.basis
    assert mtp.primary.devices[0].overhead_bytes - without.overhead_bytes >= V3_PER_LAYER_TP8


def test_deepseek_v2_lite_at_16_bits_holds_no_copy() -> None:
    # an unquantized kv_b_proj: get_and_maybe_dequant_weights returns its own weight (weight.to(dtype) is a no-op,
    # the parameter being allocated in the model's dtype); the logged 0.19 run (llmdp-v0.19-deepseek-v2-lite-tp1)
    # does not move
    spec = get_preset_info("deepseek-v2-lite").spec
    for name in ("bf16", "fp16"):
        assert quantized_kv_b_layers(spec, WeightScheme(quantized=float_format(name))) == frozenset()
    answer = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"), Workload(4096, 1),
                  PlanOptions(weight_format=float_format("bf16"), engine_version="0.19"))
    assert "kv_b_proj" not in answer.runtime_overhead.basis


def test_deepseek_v2_lite_at_nibble_int4_holds_27_copies() -> None:
    # nibble's INT4 quantizes the attention's linear layers, kv_b_proj among them: vLLM runs it on GPTQ's kernels and
    # dequantizes it through an identity matrix; 512 x 16 heads x (128 + 128) x 2 = 4,194,304 bytes a layer at TP 1
    spec = get_preset_info("deepseek-v2-lite").spec
    assert quantized_kv_b_layers(spec, WeightScheme()) == frozenset(range(27))
    answer = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"), Workload(4096, 1),
                  PlanOptions(engine_version="0.19"))
    assert answer.primary.format.startswith("int4")
    assert "512 x 16 heads x (128 + 128) = 4,194,304 bytes a layer on a rank, for 27 layer(s)" in (
        answer.runtime_overhead.basis)
    # keeping kv_b_proj 16-bit (modules_to_not_convert) leaves no copy
    assert quantized_kv_b_layers(spec, WeightScheme(keep=("kv_b_proj",))) == frozenset()


def test_a_checkpoints_own_rows_say_which_layers_store_kv_b_proj_quantized() -> None:
    spec = get_preset_info("deepseek-v2-lite").spec
    kv_b = "model.layers.{n}.self_attn.kv_b_proj"
    rows = (
        (TensorEntry(f"{kv_b}.weight", (4096, 512), "attention", (0, 1)), 4096 * 512),  # fp8: 1 byte an element
        (TensorEntry(f"{kv_b}.weight_scale_inv", (32, 4), "attention", (0, 1)), 32 * 4 * 4),
        (TensorEntry(f"{kv_b}.weight", (4096, 512), "attention", (2, 3)), 2 * 4096 * 512),  # bf16
        (TensorEntry(f"{kv_b}.qweight", (64, 4096), "attention", (4,)), 4 * 64 * 4096),  # packed int4
        (TensorEntry("blk.{n}.attn_kv_b.weight", (4096, 512), "attention", (5,)), 4096 * 512 * 9 // 16),  # q8_0
        (TensorEntry("blk.{n}.attn_kv_b.weight", (4096, 512), "attention", (6,)), 2 * 4096 * 512),  # F16
    )
    assert quantized_kv_b_layers(spec, WeightScheme(checkpoint_rows=rows)) == frozenset({0, 1, 4, 5})


def test_a_model_without_mla_has_no_copy() -> None:
    spec = get_preset("llama-3.1-8b")
    assert quantized_kv_b_layers(spec, WeightScheme()) == frozenset()
    assert VllmProfile("0.19").attention_weight_copy(Stage(spec, 1, 1, (0, 32), True), frozenset({0})) is None


def test_a_modelopt_nvfp4_checkpoint_that_leaves_the_attention_out_holds_no_copy() -> None:
    # ModelOpt's DeepSeek recipe (examples/deepseek/ptq.py) disables the attention's quantizers unless asked
    # (``quant_cfg["*attn*"] = {"enable": False}``), so its exclude_modules name every layer's self_attn: kv_b_proj
    # stays 16-bit and vLLM keeps no copy; with the attention quantized, every layer's is copied, and a module named
    # alone is left out of its own layer only
    spec = get_preset("deepseek-v3")
    config = {"producer": {"name": "modelopt"},
              "quantization": {"quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]}}
    assert quantized_kv_b_layers(spec, scheme_from_quantization_config(config)) == frozenset(range(61))
    excluded = {"producer": {"name": "modelopt"},
                "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                 "exclude_modules": ["lm_head", "*self_attn*"]}}
    assert quantized_kv_b_layers(spec, scheme_from_quantization_config(excluded)) == frozenset()
    first_only = {"producer": {"name": "modelopt"},
                  "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                   "exclude_modules": ["lm_head", "model.layers.0.self_attn.kv_b_proj"]}}
    assert quantized_kv_b_layers(spec, scheme_from_quantization_config(first_only)) == frozenset(range(1, 61))
