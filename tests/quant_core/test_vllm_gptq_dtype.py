"""GPTQ and AWQ that vLLM 0.11 / 0.19 load with their float16-only kernels: refused for a bfloat16 model on a device of
8.0 or above with vLLM's message and the remedy (``--dtype half``), planned when the model runs in float16.

vLLM 0.19's config/vllm.py (0.11's config/__init__.py) ``VllmConfig._get_quantization_config`` raises
``f"{model_config.dtype} is not supported for quantization method {model_config.quantization}. Supported dtypes:
{supported_dtypes}"``; gptq.py's and awq.py's ``get_supported_act_dtypes`` are ``[torch.half]``; gptq_marlin.py's
``is_gptq_marlin_compatible`` needs ``(bits, sym)`` in a TYPE_MAP of symmetric types and a group size in
marlin_utils.py's ``MARLIN_SUPPORTED_GROUP_SIZES`` [-1, 32, 64, 128] (awq_marlin.py the same for AWQ)."""

from __future__ import annotations

import pytest

from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm_refusals import (
    ACT_DTYPES,
    bfloat16_refusal,
    float32_refusal,
    gptq_symmetry_refusal,
    unknown_gptq_symmetry_note,
)
from quant_core.formats import WeightFormat, gptq_checkpoint, int4, int8_gptq
from quant_core.hf_config import config_float_format, model_from_sizes
from quant_core.planner import Hardware, Plan, PlanOptions, plan
from quant_core.schemes import scheme_from_quantization_config, scheme_of
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import HeaderTensor
from tests.quant_core.test_checkpoint_formats import LLAMA_2_7B

H100 = Hardware(80 * 2**30, 1, "h100-80gb", "H100", (9, 0))
T4 = Hardware(15 * 2**30, 1, "t4", "T4", (7, 5))
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
REFUSED = "\"torch.bfloat16 is not supported for quantization method {}. Supported dtypes: [torch.float16]\""


def _planned(config: dict[str, object], release: str, hardware: Hardware = H100, float_format: str = "bf16",
             config_dtype: str | None = None) -> Plan:
    """`LLAMA_2_7B` shipped with `config` as its quantization_config, planned on vLLM `release`."""
    scheme = scheme_from_quantization_config(config)
    return plan(model_from_sizes(**LLAMA_2_7B), hardware, None,
                PlanOptions(scheme=scheme, shipped=scheme, engine_version=release, float_format=float_format,
                            config_dtype=config_dtype))


@pytest.mark.parametrize("release", ["0.11", "0.19"])
def test_asymmetric_gptq_of_a_bfloat16_model_is_refused_with_vllms_message_and_the_remedy(release: str) -> None:
    result = _planned({**GPTQ, "sym": False}, release)
    assert not result.fits and result.primary.min_devices is None
    assert result.refusal is not None
    assert REFUSED.format("gptq") in result.refusal and "--dtype half" in result.refusal
    assert ("config/__init__.py" if release == "0.11" else "config/vllm.py") in result.refusal


@pytest.mark.parametrize("release", ["0.11", "0.19"])
def test_asymmetric_gptq_is_planned_at_float16_when_asked_or_when_the_config_says_float16(release: str) -> None:
    refused = _planned({**GPTQ, "sym": False}, release)
    for float_format, config_dtype in (("fp16", None), ("bf16", "fp16")):
        result = _planned({**GPTQ, "sym": False}, release, H100, float_format, config_dtype)
        assert result.fits and result.refusal is None, (float_format, config_dtype)
        # float16 and bfloat16 are both 2 bytes: the same weights, only the refusal goes
        assert result.primary.weights_bytes == refused.primary.weights_bytes


def test_symmetric_gptq_in_marlins_groups_runs_in_bfloat16_and_other_groups_do_not() -> None:
    assert _planned({**GPTQ, "sym": True}, "0.19").fits
    assert _planned({**GPTQ, "sym": True, "group_size": -1}, "0.19").fits  # a whole row: Marlin's -1
    g256 = _planned({**GPTQ, "sym": True, "group_size": 256}, "0.19")
    assert g256.refusal is not None and REFUSED.format("gptq") in g256.refusal and "not 256" in g256.refusal


def test_awq_runs_in_bfloat16_through_awq_marlin_except_in_groups_marlin_does_not_take() -> None:
    awq = {"quant_method": "awq", "bits": 4, "zero_point": True, "version": "gemm"}
    assert _planned({**awq, "group_size": 128}, "0.19").fits
    g256 = _planned({**awq, "group_size": 256}, "0.11")
    assert g256.refusal is not None and REFUSED.format("awq") in g256.refusal


def test_below_8_0_vllm_runs_the_model_in_float16_itself_and_asymmetric_gptq_loads() -> None:
    # config/model.py _resolve_auto_dtype: no bfloat16 on the device, "Falling back to torch.float16"
    assert _planned({**GPTQ, "sym": False}, "0.19", T4).refusal is None


def test_a_device_of_unknown_capability_is_not_refused() -> None:
    assert _planned({**GPTQ, "sym": False}, "0.19", Hardware(80 * 2**30, 1)).refusal is None


def test_vllm_0_33_refuses_asymmetric_gptq_whatever_the_dtype() -> None:
    result = _planned({**GPTQ, "sym": False}, "0.33", H100, "fp16")
    assert result.refusal is not None and "Unsupported quantization config: bits=4, sym=False" in result.refusal


def test_the_refusals_read_the_formats_fields_not_their_labels() -> None:
    asymmetric = gptq_checkpoint(128, False)
    assert gptq_symmetry_refusal("0.33", asymmetric) is not None
    assert gptq_symmetry_refusal("0.33", gptq_checkpoint(128, True)) is None
    assert gptq_symmetry_refusal("0.33", int4(128)) is None  # nibble's own asymmetric INT4: compressed-tensors
    assert gptq_symmetry_refusal("0.33", None) is None  # a checkpoint's headers: symmetry not known
    assert gptq_symmetry_refusal("0.19", asymmetric) is None
    assert bfloat16_refusal("0.19", asymmetric, "bf16", (8, 0)) is not None
    assert bfloat16_refusal("0.19", asymmetric, "fp16", (8, 0)) is None
    assert bfloat16_refusal("0.33", asymmetric, "bf16", (8, 0)) is None
    assert bfloat16_refusal("0.19", int8_gptq(128), "bf16", (9, 0)) is None
    assert bfloat16_refusal("0.19", int8_gptq(256), "bf16", (9, 0)) is not None
    assert bfloat16_refusal("0.19", WeightFormat("int4", 128, False, "int4", layout="compressed-tensors"), "bf16",
                            (9, 0)) is None


def test_requested_asymmetric_gptq_weights_are_refused_the_same_way() -> None:
    spec = model_from_sizes(**LLAMA_2_7B)
    requested = scheme_of(WeightFormat("int4", 128, False, "int4", layout="gptq"))  # weights: {layout: gptq}
    refused = plan(spec, H100, None, PlanOptions(scheme=requested, engine_version="0.19"))
    assert refused.refusal is not None and REFUSED.format("gptq") in refused.refusal
    assert plan(spec, H100, None, PlanOptions(scheme=requested, engine_version="0.19", float_format="fp16")).fits


@pytest.mark.parametrize(("config", "expected"), [
    ({"torch_dtype": "bfloat16"}, "bf16"), ({"torch_dtype": "float16"}, "fp16"), ({"dtype": "float16"}, "fp16"),
    ({"dtype": "float16", "torch_dtype": "bfloat16"}, "fp16"), ({"torch_dtype": "float32"}, "fp32"),
    ({"text_config": {"torch_dtype": "float16"}}, "fp16"), ({}, None), ({"torch_dtype": "int8"}, None),
])
def test_the_config_dtype_is_read_as_transformers_writes_it(config: dict[str, object], expected: str | None) -> None:
    assert config_float_format(config) == expected


def test_eight_bit_gptq_carries_sym_and_asymmetric_is_refused_like_four_bit() -> None:
    """gptq_marlin's TYPE_MAP (0.11, 0.19) and 0.33's AutoGPTQConfig's hold ``(8, True)`` and no ``(8, False)``: an
    asymmetric 8-bit checkpoint is refused by 0.33 ("bits=8, sym=False") and loaded by 0.11/0.19's float16-only
    gptq method; a symmetric one (GPTQModel's default) by Marlin in bfloat16.  The bytes do not move."""
    eight = {**GPTQ, "bits": 8}
    asymmetric = scheme_from_quantization_config({**eight, "sym": False})
    symmetric = scheme_from_quantization_config({**eight, "sym": True})
    assert (asymmetric.label(), symmetric.label()) == ("int8-g128-asym-gptq", "int8-g128-gptq")
    assert asymmetric.quantized.bytes_for((4096, 4096)) == symmetric.quantized.bytes_for((4096, 4096))
    assert scheme_from_quantization_config(eight).quantized.symmetric  # no sym: GPTQModel's default
    refusal = _planned({**eight, "sym": False}, "0.33").refusal
    assert refusal is not None and "bits=8, sym=False" in refusal
    assert _planned({**eight, "sym": True}, "0.33").fits
    for release in ("0.11", "0.19"):
        refused = _planned({**eight, "sym": False}, release).refusal
        assert refused is not None and REFUSED.format("gptq") in refused
        assert _planned({**eight, "sym": False}, release, float_format="fp16").fits
        assert _planned({**eight, "sym": True}, release).fits


@pytest.mark.parametrize(("release", "method", "refuses_bfloat16"), [
    ("0.11", "gptq", True), ("0.19", "gptq", True), ("0.33", "auto_gptq", False),
])
def test_the_float32_and_bfloat16_refusals_name_the_act_dtypes_table_of_the_method(release: str, method: str,
                                                                                   refuses_bfloat16: bool) -> None:
    """Symmetric GPTQ in groups of 256, which Marlin does not take (0.11/0.19 load it with gptq.py's GPTQConfig,
    0.33 with AutoGPTQConfig): a float32 model (gemma2 on a T4) and a bfloat16 one (on an H100) are refused exactly
    when `ACT_DTYPES`' list for the method lacks their dtype, and vLLM's message quotes that list."""
    stored = gptq_checkpoint(256, True)
    dtypes = ACT_DTYPES[release][method]
    listed = "[" + ", ".join(f"torch.{dtype}" for dtype in dtypes) + "]"
    in_float32 = float32_refusal(release, "gemma2", stored.label(), (7, 5), stored)
    in_bfloat16 = bfloat16_refusal(release, stored, "bf16", (9, 0))
    assert (in_float32 is not None, in_bfloat16 is not None) == (True, refuses_bfloat16)
    assert ("float32" in dtypes, "bfloat16" in dtypes) == (False, not refuses_bfloat16)
    for refusal, dtype in ((in_float32, "float32"), (in_bfloat16, "bfloat16")):
        if refusal is not None:
            assert (f"torch.{dtype} is not supported for quantization method {method}. Supported dtypes: {listed}"
                    in refusal)


# --- a GPTQ checkpoint read from its headers alone ------------------------------------------------------------------

#: a small llama (hidden 256, 2 layers, 4 heads of 64, 2 KV heads) whose every linear a GPTQ checkpoint stores
TINY_LLAMA = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 512, "vocab_size": 1000}
UNKNOWN = "do not say whether its GPTQ weights are symmetric"


def gptq_headers(spec: ModelSpec, group_size: int = 128) -> list[HeaderTensor]:
    """The header tensors AutoGPTQ and GPTQModel write for `spec` at 4 bits: per linear (out x in) an int32 qweight
    (in / 8 x out), qzeros (in / g x out / 8), fp16 scales (in / g x out) and an int32 g_idx (in), whatever sym is;
    the embedding, lm_head and norms in fp16."""
    hidden, width, kv = spec.hidden_size, spec.intermediate_size, spec.num_kv_heads * spec.head_dim
    vocabulary = (spec.vocab_size, hidden)
    tensors = [HeaderTensor("model.embed_tokens.weight", "F16", vocabulary, 2 * spec.vocab_size * hidden),
               HeaderTensor("lm_head.weight", "F16", vocabulary, 2 * spec.vocab_size * hidden),
               HeaderTensor("model.norm.weight", "F16", (hidden,), 2 * hidden)]
    linears = (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", kv, hidden), ("self_attn.v_proj", kv, hidden),
               ("self_attn.o_proj", hidden, hidden), ("mlp.gate_proj", width, hidden), ("mlp.up_proj", width, hidden),
               ("mlp.down_proj", hidden, width))
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}."
        for name, rows, columns in linears:
            groups = columns // group_size
            tensors += [HeaderTensor(f"{prefix}{name}.qweight", "I32", (columns // 8, rows), 4 * columns // 8 * rows),
                        HeaderTensor(f"{prefix}{name}.qzeros", "I32", (groups, rows // 8), 4 * groups * rows // 8),
                        HeaderTensor(f"{prefix}{name}.scales", "F16", (groups, rows), 2 * groups * rows),
                        HeaderTensor(f"{prefix}{name}.g_idx", "I32", (columns,), 4 * columns)]
        tensors += [HeaderTensor(f"{prefix}{norm}.weight", "F16", (hidden,), 2 * hidden)
                    for norm in ("input_layernorm", "post_attention_layernorm")]
    return tensors


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_a_gptq_plan_from_headers_alone_warns_that_sym_is_not_known_and_what_vllm_does_if_false(release: str) -> None:
    # No safetensors header names sym: AutoGPTQ's metadata holds gptq_bits, gptq_group_size, gptq_desc_act,
    # gptq_damp_percent, gptq_checkpoint_format and gptq_quant_method (auto_gptq/modeling/_base.py save_quantized),
    # GPTQModel's only "format" (gptqmodel/models/writer.py); both write qzeros for symmetric weights too, so the
    # shapes are the same.  The plan takes the weights as symmetric (nothing refused) and says so.
    spec = model_from_sizes(**TINY_LLAMA)
    scheme, summary = checkpoint_scheme(spec, gptq_headers(spec), mtp_layers=0)
    assert summary.format == "gptq" and scheme.label() == "checkpoint-gptq"
    result = plan(spec, H100, None, PlanOptions(scheme=scheme, engine_version=release))
    assert result.fits and result.refusal is None
    (warning,) = [warning for warning in result.warnings if UNKNOWN in warning]
    assert warning == unknown_gptq_symmetry_note(release)
    assert "planned as symmetric" in warning and "quantization_config" in warning
    if release == "0.33":
        assert "refuses them on any device" in warning and "bits=4, sym=False" in warning
    else:
        assert "\"torch.bfloat16 is not supported for quantization method gptq\"" in warning
        assert "--dtype half" in warning
        assert ("config/__init__.py" if release == "0.11" else "config/vllm.py") in warning


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_a_gptq_plan_from_headers_with_its_quantization_config_knows_sym_and_does_not_warn(release: str) -> None:
    # config.json's quantization_config beside the headers (the API's hf_config, the CLI's --checkpoint directory):
    # sym is known, no warning, and the checkpoint's plan is refused as its as-shipped row is (0.33: any device;
    # 0.11/0.19: a bfloat16 model on the H100), with the headers' bytes
    spec = model_from_sizes(**TINY_LLAMA)
    scheme, _ = checkpoint_scheme(spec, gptq_headers(spec), mtp_layers=0)
    headers_only = plan(spec, H100, None, PlanOptions(scheme=scheme, engine_version=release))
    for sym in (False, True):
        shipped = scheme_from_quantization_config({**GPTQ, "sym": sym})
        result = plan(spec, H100, None, PlanOptions(scheme=scheme, shipped=shipped, engine_version=release))
        assert not any(UNKNOWN in warning for warning in result.warnings)
        assert (result.comparison["as_shipped"].refusal is None) is sym
        assert (result.refusal is None) is sym and result.fits is sym
        assert result.refusal == result.comparison["as_shipped"].refusal
        assert result.primary.format == "checkpoint-gptq"
        assert result.primary.weights_bytes == headers_only.primary.weights_bytes
    # a generic engine (no vLLM kernels to choose), and headers of another format, say nothing of it
    generic = plan(spec, H100, None, PlanOptions(scheme=scheme, engine="generic"))
    assert not any(UNKNOWN in warning for warning in generic.warnings)
    float16 = [HeaderTensor(tensor.name.replace(".qweight", ".weight"), "F16", (1,), 2) for tensor in
               gptq_headers(spec) if not tensor.name.endswith((".qzeros", ".scales", ".g_idx"))]
    f16_scheme, _ = checkpoint_scheme(spec, float16, mtp_layers=0)
    assert f16_scheme.label() == "checkpoint-f16"
    f16_plan = plan(spec, H100, None, PlanOptions(scheme=f16_scheme, engine_version="0.33"))
    assert not any(UNKNOWN in warning for warning in f16_plan.warnings)
