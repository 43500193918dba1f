"""NVIDIA ModelOpt checkpoints (quant_method ``modelopt``): their bytes, the devices vLLM loads them on, their KV cache.

The configs are written as ModelOpt writes them.  config.json's quantization_config (ModelOpt 0.31+) is what
Model-Optimizer's ``convert_hf_quant_config_format`` returns
(https://github.com/NVIDIA/Model-Optimizer/blob/main/modelopt/torch/export/convert_hf_config.py: ``config_groups``,
``ignore``, ``quant_algo``, ``kv_cache_scheme`` ``{"dynamic": false, "num_bits": 8, "type": "float"}`` for FP8,
``producer``, ``quant_method: "modelopt"``); hf_quant_config.json (ModelOpt 0.29 and before) is the input of the same
function, its docstring's example ``{"producer": {"name": "modelopt", "version": "0.19.0"}, "quantization":
{"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}``, with NVFP4's ``group_size``
16, as nvidia/Llama-3.1-8B-Instruct-FP4 ships it (https://huggingface.co/nvidia/Llama-3.1-8B-Instruct-FP4: NVFP4
weights and activations, FP8 KV cache).  vLLM reads both (quantization/modelopt.py ``from_config``) and stores per
quantized linear: FP8 an e4m3 ``weight``, an fp32 ``weight_scale`` and an fp32 ``input_scale``; NVFP4 a uint8
``weight`` [out, in/2], an e4m3 ``weight_scale`` [out, in/16], fp32 ``weight_scale_2`` and ``input_scale``
(``create_weights`` of ModelOptFp8LinearMethod and ModelOptNvFp4LinearMethod, 0.11, 0.19 and 0.33).
"""

from __future__ import annotations

from typing import Any

import pytest

from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_refusals import capability_refusal, checkpoint_kv_cache_dtype, float32_refusal
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config
from quant_core.planner import Hardware, Plan, PlanOptions, plan
from quant_core.schemes import scheme_bytes, scheme_from_quantization_config, shipped_scheme_of
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import HeaderTensor

#: meta-llama/Llama-3.1-8B-Instruct's config.json (https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct), which
#: nvidia/Llama-3.1-8B-Instruct-FP8 and -FP4 keep, but its rope_scaling
LLAMA_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
}
#: ModelOpt 0.31+'s config.json quantization_config for FP8 (convert_hf_quant_config_format's output)
FP8_CONFIG_JSON: dict[str, Any] = {
    "config_groups": {"group_0": {"input_activations": {"dynamic": False, "num_bits": 8, "type": "float"},
                                  "weights": {"dynamic": False, "num_bits": 8, "type": "float"},
                                  "targets": ["Linear"]}},
    "ignore": ["lm_head"], "quant_algo": "FP8",
    "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"},
    "producer": {"name": "modelopt", "version": "0.33.0"}, "quant_method": "modelopt",
}
#: the same for NVFP4 (group_size 16 in the config group, as convert_hf_quant_config_format writes it)
NVFP4_CONFIG_JSON: dict[str, Any] = {
    **FP8_CONFIG_JSON, "quant_algo": "NVFP4",
    "config_groups": {"group_0": {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float",
                                                        "group_size": 16},
                                  "weights": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16},
                                  "targets": ["Linear"]}},
}
#: ModelOpt 0.29 and before: hf_quant_config.json beside a config.json without quantization_config
NVFP4_HF_QUANT_CONFIG: dict[str, Any] = {
    "producer": {"name": "modelopt", "version": "0.29.0"},
    "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
                     "exclude_modules": ["lm_head"]},
}

# Llama 3.1 8B by hand: per layer q and o [4096, 4096], k and v [1024, 4096], gate and up [14336, 4096], down
# [4096, 14336]: 7 linears, 41,943,040 attention and 176,160,768 MLP weights; 32 layers
LINEARS = 7 * 32
LINEAR_WEIGHTS = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096)  # 6,979,321,856
# 16-bit: embed_tokens and lm_head [128256, 4096] each, two RMSNorms per layer and the final one
BF16_BYTES = 2 * (2 * 128256 * 4096 + (2 * 32 + 1) * 4096)  # 2,101,878,784


def _llama() -> ModelSpec:
    return model_from_hf_config(LLAMA_8B)


def test_a_modelopt_fp8_checkpoint_is_one_byte_a_weight_and_two_fp32_scales_a_linear() -> None:
    scheme = scheme_from_quantization_config(FP8_CONFIG_JSON)
    assert scheme.label() == "fp8-per-tensor-static" and scheme.quant_method == "modelopt"
    assert scheme.keep == ("lm_head",) and scheme.kv_cache_quant == "fp8" and scheme.notes == ()
    # e4m3 weight (1 B), fp32 weight_scale and input_scale (8 B) per linear: 6,979,323,648 + 2,101,878,784
    assert scheme_bytes(_llama(), scheme) == LINEAR_WEIGHTS + 8 * LINEARS + BF16_BYTES == 9_081_202_432


def test_a_modelopt_nvfp4_checkpoint_is_half_a_byte_a_weight_a_byte_per_16_and_two_fp32_scales_a_linear() -> None:
    scheme = scheme_from_quantization_config(NVFP4_CONFIG_JSON)
    assert scheme.label() == "nvfp4-static" and scheme.kv_cache_quant == "fp8"
    # uint8 weight [out, in/2], e4m3 weight_scale [out, in/16], fp32 weight_scale_2 and input_scale
    expected = LINEAR_WEIGHTS // 2 + LINEAR_WEIGHTS // 16 + 8 * LINEARS + BF16_BYTES
    assert scheme_bytes(_llama(), scheme) == expected == 6_027_749_120


def test_hf_quant_config_json_without_quant_method_reads_as_the_config_json_form() -> None:
    # vLLM names it modelopt from producer.name (0.19/0.33 _normalize_quantization_config, 0.11
    # _parse_quant_hf_config) and reads the "quantization" object (ModelOptQuantConfigBase.from_config)
    nested = scheme_from_quantization_config(NVFP4_HF_QUANT_CONFIG)
    flat = scheme_from_quantization_config(NVFP4_CONFIG_JSON)
    assert nested.quant_method == "modelopt" and nested.keep == flat.keep == ("lm_head",)
    assert nested.quantized == flat.quantized and nested.kv_cache_quant == flat.kv_cache_quant == "fp8"
    assert scheme_bytes(_llama(), nested) == scheme_bytes(_llama(), flat)


def test_a_modelopt_wildcard_exclusion_keeps_those_modules_16_bit() -> None:
    # DeepSeek-R1-FP4's kind of entry: a module path with a trailing * (vLLM's is_layer_excluded: fnmatch)
    config = {**FP8_CONFIG_JSON, "ignore": ["lm_head", "model.layers.0.self_attn*"]}
    kept = scheme_bytes(_llama(), scheme_from_quantization_config(config))
    attention_0 = 2 * 4096 * 4096 + 2 * 1024 * 4096  # layer 0's q, k, v, o at 2 bytes instead of 1 + 8 per linear
    assert kept - scheme_bytes(_llama(), scheme_from_quantization_config(FP8_CONFIG_JSON)) == attention_0 - 4 * 8


@pytest.mark.parametrize("algo", ["W4A8_AWQ", "MIXED_PRECISION", "FP8_PB_WO", "MXFP8", "FP8_PER_CHANNEL_PER_TOKEN",
                                  "W4A16_NVFP4"])
def test_a_modelopt_algorithm_nibble_does_not_plan_is_refused_naming_it_and_what_nibble_reads(algo: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        scheme_from_quantization_config({**FP8_CONFIG_JSON, "quant_algo": algo})
    assert caught.value.field == "quantization_config.quant_algo" and algo in str(caught.value)
    assert "FP8" in caught.value.reason and "NVFP4" in caught.value.reason
    # as shipped: planned at nibble's INT4, with the reason (an unknown quant_method string is treated the same)
    fallback = shipped_scheme_of({**FP8_CONFIG_JSON, "quant_algo": algo})
    assert fallback.origin == "" and "quantization_config.quant_algo" in fallback.notes[0]


@pytest.mark.parametrize(("config", "field"), [
    ({**FP8_CONFIG_JSON, "quant_algo": ["FP8"]}, "quantization_config.quant_algo"),
    ({**FP8_CONFIG_JSON, "ignore": "lm_head"}, "quantization_config.ignore"),
    ({**FP8_CONFIG_JSON, "kv_cache_scheme": 8}, "quantization_config.kv_cache_scheme"),
    ({**FP8_CONFIG_JSON, "group_size": "16"}, "quantization_config.group_size"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": ["NVFP4"]}, "quantization_config.quantization"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"], "exclude_modules": "x"}},
     "quantization_config.quantization.exclude_modules"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"], "kv_cache_quant_algo": 8}},
     "quantization_config.quantization.kv_cache_quant_algo"),
])
def test_a_modelopt_field_of_the_wrong_type_is_refused_naming_it(config: dict[str, Any], field: str) -> None:
    # no ModelOpt export writes these: a broken request (the app answers 422), not a checkpoint planned at INT4
    with pytest.raises(InvalidSpec) as caught:
        shipped_scheme_of(config)
    assert caught.value.field == field


def test_nvfp4_in_blocks_other_than_16_is_refused_naming_the_field() -> None:
    config = {**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"], "group_size": 32}}
    with pytest.raises(InvalidSpec) as caught:
        scheme_from_quantization_config(config)
    assert caught.value.field == "quantization_config.quantization.group_size"


def test_an_unread_field_of_hf_quant_config_json_is_named_in_a_note() -> None:
    config = {**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"], "awq_block": 1}}
    assert ("quantization_config.quantization.awq_block is not understood by nibble and was ignored"
            in scheme_from_quantization_config(config).notes)


# vLLM's floors: ModelOptFp8Config.get_min_capability() 89 (0.11, 0.19), 80 (0.33); ModelOptNvFp4Config 80 (0.11),
# 75 (0.19, 0.33) (quantization/modelopt.py), checked by VllmConfig._get_quantization_config
@pytest.mark.parametrize(("config", "release", "refused", "accepted"), [
    (FP8_CONFIG_JSON, "0.11", (8, 6), (8, 9)),
    (FP8_CONFIG_JSON, "0.19", (8, 6), (8, 9)),
    (FP8_CONFIG_JSON, "0.33", (7, 5), (8, 0)),
    (NVFP4_CONFIG_JSON, "0.11", (7, 5), (8, 0)),
    (NVFP4_CONFIG_JSON, "0.19", (7, 0), (7, 5)),
    (NVFP4_CONFIG_JSON, "0.33", (7, 0), (7, 5)),
])
def test_vllm_refuses_a_modelopt_checkpoint_below_its_configs_minimum_capability(
        config: dict[str, Any], release: str, refused: tuple[int, int], accepted: tuple[int, int]) -> None:
    scheme = scheme_from_quantization_config(config)
    profile = VllmProfile(release)
    why = profile.device_refusal(_llama(), scheme.label(), refused, scheme.quantized, "bf16", "modelopt")
    name = "ModelOptFp8Config" if scheme.quantized.name == "fp8" else "ModelOptNvFp4Config"
    assert why is not None and f"{name}.get_min_capability() is {accepted[0] * 10 + accepted[1]}" in why
    assert profile.device_refusal(_llama(), scheme.label(), accepted, scheme.quantized, "bf16", "modelopt") is None


def test_the_floor_is_the_loaders_not_the_formats() -> None:
    # the same fp8 per-tensor bytes from compressed-tensors load on 8.0 in 0.11 (W8A16 Marlin); ModelOpt's do not
    assert capability_refusal("0.11", "fp8-per-tensor-static", (8, 0), "compressed-tensors") is None
    assert capability_refusal("0.11", "fp8-per-tensor-static", (8, 0), "modelopt") is not None


def test_modelopt_nvfp4_is_refused_for_a_model_vllm_runs_in_float32() -> None:
    # ModelOptNvFp4Config.get_supported_act_dtypes: [bfloat16, half, float8_e4m3fn]; a gemma2 model on a 7.5 device
    # runs float32 (_FLOAT16_NOT_SUPPORTED_MODELS), which 0.19's floor of 75 lets through to this check
    stored = scheme_from_quantization_config(NVFP4_CONFIG_JSON).quantized
    why = float32_refusal("0.19", "gemma2", "nvfp4-static", (7, 5), stored, "modelopt")
    assert why is not None and "quantization method modelopt_fp4" in why
    assert "[torch.bfloat16, torch.float16, torch.float8_e4m3fn]" in why


def _plan(config: dict[str, Any], release: str, hardware: Hardware, **options: Any) -> Plan:
    scheme = scheme_from_quantization_config(config)
    return plan(_llama(), hardware, None, PlanOptions(scheme=scheme, shipped=scheme, engine_version=release,
                                                      **options))


H100 = Hardware(80 * 2**30, 1, "h100-80gb", "H100", (9, 0))
A100 = Hardware(80 * 2**30, 1, "a100-80gb", "A100", (8, 0))


def test_a_plan_on_a_device_vllm_refuses_says_why_and_the_devices_requirement_when_unknown() -> None:
    refused = _plan(FP8_CONFIG_JSON, "0.19", A100)
    assert not refused.fits and "ModelOptFp8Config.get_min_capability() is 89" in (refused.refusal or "")
    assert _plan(FP8_CONFIG_JSON, "0.33", A100).refusal is None
    unknown = _plan(FP8_CONFIG_JSON, "0.19", Hardware(80 * 2**30, 1, None, "GPU", None))
    assert any("runs ModelOpt fp8-per-tensor-static weights from compute capability 8.9" in warning
               for warning in unknown.warnings)


@pytest.mark.parametrize(("release", "planned"), [("0.11", "bf16"), ("0.19", "fp8"), ("0.33", "fp8")])
def test_vllms_auto_kv_cache_takes_the_checkpoints_fp8_from_0_19(release: str, planned: str) -> None:
    # 0.19/0.33: create_engine_config -> resolve_kv_cache_dtype_string maps kv_cache_quant_algo FP8 to fp8_e4m3;
    # 0.11 has no such step: its cache stays the model's dtype unless --kv-cache-dtype fp8 is given
    auto = _plan(FP8_CONFIG_JSON, release, H100, kv_cache_dtype_auto=True)
    assert auto.kv_cache_dtype == planned
    assert auto.kv_bytes_per_token == 32 * 2 * 8 * 128 * (1 if planned == "fp8" else 2)
    note = checkpoint_kv_cache_dtype(release, "fp8")[1]
    assert f"{note}." in auto.warnings
    asked = _plan(FP8_CONFIG_JSON, release, H100, kv_cache_dtype="bf16")  # the caller's dtype is kept
    assert asked.kv_cache_dtype == "bf16" and f"{note}." not in asked.warnings


def test_an_nvfp4_kv_cache_is_planned_16_bit_with_a_note() -> None:
    # 0.33 maps nvfp4 too (MODELOPT_TO_VLLM_KV_CACHE_DTYPE_MAP), which nibble does not plan: more bytes, never fewer
    config = {**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"],
                                                        "kv_cache_quant_algo": "NVFP4"}}
    answer = _plan(config, "0.33", H100, kv_cache_dtype_auto=True)
    assert answer.kv_cache_dtype == "bf16"
    assert any("runs its cache as nvfp4" in warning and "does not plan" in warning for warning in answer.warnings)


def test_a_format_asked_instead_of_the_checkpoint_keeps_the_engines_16_bit_cache() -> None:
    scheme = scheme_from_quantization_config(FP8_CONFIG_JSON)
    answer = plan(_llama(), H100, None, PlanOptions(shipped=scheme, engine_version="0.19", kv_cache_dtype_auto=True))
    assert answer.kv_cache_dtype == "bf16"  # nibble's INT4 is another checkpoint, whose config names no KV cache


def _nvfp4_headers(spec: ModelSpec) -> list[HeaderTensor]:
    """A ModelOpt NVFP4 export's tensors for `spec`: the linears as uint8 ``weight``, e4m3 ``weight_scale``, f32
    scalar ``weight_scale_2`` and ``input_scale``; the k/v projections' f32 ``k_scale`` / ``v_scale`` of the FP8 KV
    cache (``self_attn.k_proj.k_scale``, the name vLLM's mllama4.py maps for ModelOpt); the rest bf16."""
    linears = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096), "self_attn.v_proj": (1024, 4096),
               "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096),
               "mlp.down_proj": (4096, 14336)}
    out = [HeaderTensor("model.embed_tokens.weight", "BF16", (128256, 4096), 2 * 128256 * 4096),
           HeaderTensor("lm_head.weight", "BF16", (128256, 4096), 2 * 128256 * 4096),
           HeaderTensor("model.norm.weight", "BF16", (4096,), 2 * 4096)]
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out.append(HeaderTensor(f"{prefix}.{norm}.weight", "BF16", (4096,), 2 * 4096))
        for module, (rows, columns) in linears.items():
            out += [HeaderTensor(f"{prefix}.{module}.weight", "U8", (rows, columns // 2), rows * columns // 2),
                    HeaderTensor(f"{prefix}.{module}.weight_scale", "F8_E4M3", (rows, columns // 16),
                                 rows * columns // 16),
                    HeaderTensor(f"{prefix}.{module}.weight_scale_2", "F32", (), 4),
                    HeaderTensor(f"{prefix}.{module}.input_scale", "F32", (), 4)]
        out += [HeaderTensor(f"{prefix}.self_attn.k_proj.k_scale", "F32", (), 4),
                HeaderTensor(f"{prefix}.self_attn.v_proj.v_scale", "F32", (), 4)]
    return out


def test_modelopt_nvfp4_headers_read_as_nvfp4_not_fp8_and_take_the_configs_floor() -> None:
    # the e4m3 block scales made the headers read as fp8 (checkpoint_rows._format_of): fp8's floor, not nvfp4's
    spec = _llama()
    scheme, summary = checkpoint_scheme(spec, _nvfp4_headers(spec))
    assert summary.format == "nvfp4" and summary.unknown == ()
    # the inventory's NVFP4 bytes, plus the 8 bytes of k_scale and v_scale per layer
    assert summary.bytes == 6_027_749_120 + 32 * 8
    shipped = scheme_from_quantization_config(NVFP4_HF_QUANT_CONFIG)
    on_t4 = plan(spec, Hardware(15 * 2**30, 1, "t4", "T4", (7, 5)), None,
                 PlanOptions(scheme=scheme, shipped=shipped, engine_version="0.11", kv_cache_dtype_auto=True))
    assert "ModelOptNvFp4Config.get_min_capability() is 80" in (on_t4.refusal or "")
    on_h100 = plan(spec, H100, None, PlanOptions(scheme=scheme, shipped=shipped, engine_version="0.19",
                                                 kv_cache_dtype_auto=True))
    assert on_h100.refusal is None and on_h100.kv_cache_dtype == "fp8"  # the headers' config quantizes the KV cache


def test_modelopt_fp8_headers_take_modelopts_floor_when_the_config_names_modelopt() -> None:
    # the same e4m3 + f32 scale tensors: an fp8 checkpoint (Fp8Config, 8.0 in 0.11) unless config.json names modelopt
    spec = _llama()
    headers = [HeaderTensor(tensor.name.replace(".weight_scale_2", ".weight_scale"), "F32", (), 4)
               if tensor.name.endswith(".weight_scale_2") else tensor
               for tensor in _nvfp4_headers(spec) if not tensor.name.endswith(".weight_scale")]
    headers = [HeaderTensor(tensor.name, "F8_E4M3", (tensor.shape[0], 2 * tensor.shape[1]), 2 * tensor.bytes)
               if tensor.dtype == "U8" else tensor for tensor in headers]
    scheme, summary = checkpoint_scheme(spec, headers)
    assert summary.format == "fp8" and summary.bytes == 9_081_202_432 + 32 * 8
    shipped = scheme_from_quantization_config(FP8_CONFIG_JSON)
    as_modelopt = plan(spec, A100, None, PlanOptions(scheme=scheme, shipped=shipped, engine_version="0.11"))
    assert "ModelOptFp8Config.get_min_capability() is 89" in (as_modelopt.refusal or "")
    assert plan(spec, A100, None, PlanOptions(scheme=scheme, engine_version="0.11")).refusal is None


#: a compressed-tensors ``nvfp4-pack-quantized`` config (llm-compressor's NVFP4 preset): float 4-bit weights in groups
#: of 16 with a static global input scale
CT_NVFP4_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "ignore": ["lm_head"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True},
        "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                              "dynamic": "local", "symmetric": True}}}}


def _compressed_tensors_nvfp4_headers(spec: ModelSpec) -> list[HeaderTensor]:
    """The same NVFP4 linears as compressed-tensors stores them (compressed_tensors' NVFP4PackedCompressor): uint8
    ``weight_packed`` [out, in/2], e4m3 ``weight_scale`` [out, in/16], f32 ``weight_global_scale`` and
    ``input_global_scale`` of shape [1]."""
    renamed = {"weight": "weight_packed", "weight_scale_2": "weight_global_scale", "input_scale": "input_global_scale"}
    out = []
    for tensor in _nvfp4_headers(spec):
        prefix, _, leaf = tensor.name.rpartition(".")
        if tensor.dtype == "U8" or leaf in ("weight_scale_2", "input_scale"):
            shape = tensor.shape if tensor.shape else (1,)
            out.append(HeaderTensor(f"{prefix}.{renamed[leaf]}", tensor.dtype, shape, tensor.bytes))
        elif leaf not in ("k_scale", "v_scale"):
            out.append(tensor)
    return out


def test_compressed_tensors_nvfp4_headers_read_as_nvfp4_as_their_config_does() -> None:
    # weight_packed named every compressed-tensors checkpoint int4 pack-quantized (checkpoint_rows._format_of), so an
    # NVFP4 one took the int4 family's floors and expert-parallel rules instead of NVFP4's, which its config row takes
    spec = _llama()
    scheme, summary = checkpoint_scheme(spec, _compressed_tensors_nvfp4_headers(spec))
    assert summary.format == "nvfp4" and summary.unknown == ()
    assert summary.bytes == 6_027_749_120
    shipped = scheme_from_quantization_config(CT_NVFP4_CONFIG)
    assert shipped.quantized.label().startswith("nvfp4")
    t4 = Hardware(15 * 2**30, 1, "t4", "T4", (7, 5))
    for version in ("0.11", "0.19", "0.33"):
        from_headers = plan(spec, t4, None, PlanOptions(scheme=scheme, shipped=shipped, engine_version=version))
        from_config = plan(spec, t4, None, PlanOptions(scheme=shipped, engine_version=version))
        # the same refusal, the row named as the checkpoint's
        refusal = from_headers.refusal and from_headers.refusal.replace("checkpoint-nvfp4", "nvfp4")
        assert refusal == from_config.refusal, version
    assert "its minimum is 8.0" in (plan(spec, t4, None, PlanOptions(scheme=scheme, shipped=shipped,
                                                                     engine_version="0.11")).refusal or "")
