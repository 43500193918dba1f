"""Below compute capability 8.0 vLLM runs Gemma 2/3 and GLM-4 (plamo2 too in 0.11/0.19) in float32, and the plan
charges it.

vLLM's ``_FLOAT16_NOT_SUPPORTED_MODELS`` (config/model.py) and ``_resolve_auto_dtype``: on a device without bfloat16
(below 8.0) such a model runs float32.  Its 16-bit checkpoint tensors load as float32, ``kv_cache_dtype="auto"``
takes the model's dtype, the profiling run's hidden states and logits are float32, and the quantization methods whose
``get_supported_act_dtypes`` lack float32 refuse it (``VllmConfig._get_quantization_config``).
"""

from __future__ import annotations

import pytest

from quant_core.catalog import device_facts, get_device, get_preset_info
from quant_core.engines.vllm import _forward_bytes
from quant_core.engines.vllm_refusals import FLOAT16_UNSUPPORTED_MODEL_TYPES, float32_refusal, runs_float32
from quant_core.engines.vllm_sampler import sampler_pass_bytes
from quant_core.errors import UnknownName
from quant_core.formats import WeightFormat, float_format, fp8, gptq_checkpoint, int4
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan

#: the catalog devices the figures below are charged on
T4 = device_facts("t4")

RELEASES = ("0.11", "0.19", "0.33")


def _on(device_id: str, release: str, weight_format: WeightFormat, model: str = "gemma-2-9b", count: int = 4) -> Plan:
    info = get_preset_info(model)
    device = get_device(device_id)
    hardware = Hardware(device.planning_bytes, count, device.id, device.name)
    return plan(info.spec, hardware, Workload(4096, 1), PlanOptions(weight_format=weight_format,
                                                                      engine_version=release))


@pytest.mark.parametrize("release", RELEASES)
def test_gemma_2_9b_on_a_t4_at_bf16_holds_twice_the_weights_and_kv_per_token_of_an_l4_plan(release: str) -> None:
    on_t4 = _on("t4", release, float_format("bf16"))
    on_l4 = _on("l4", release, float_format("bf16"))
    assert on_t4.primary.format == "fp32" and on_l4.primary.format == "bf16"
    assert on_t4.primary.weights_bytes == 2 * on_l4.primary.weights_bytes
    assert on_t4.kv_cache_dtype == "fp32" and on_l4.kv_cache_dtype == "bf16"
    assert on_t4.kv_bytes_per_token == 2 * on_l4.kv_bytes_per_token
    assert on_t4.primary.kv_cache_bytes == 2 * on_l4.primary.kv_cache_bytes
    assert "tokens at 4 bytes" in on_t4.activation.basis and "tokens at 2 bytes" in on_l4.activation.basis
    if release != "0.33":  # 0.33 samples with FlashInfer on the L4 (8 bytes a logit more), not on the T4 (7.5)
        assert on_t4.activation.bytes > on_l4.activation.bytes
    assert any("charged here at 4 bytes an element" in warning for warning in on_t4.warnings)
    assert not any("float32" in warning for warning in on_l4.warnings)


@pytest.mark.parametrize("release", RELEASES)
def test_gemma_2_9b_on_an_l4_keeps_its_16_bit_figures(release: str) -> None:
    """18,483,411,968 bytes: gemma-2-9b's 9.24 B parameters at 2 bytes (tied embedding), unchanged by the fallback."""
    on_l4 = _on("l4", release, float_format("bf16"))
    assert on_l4.primary.weights_bytes == 18_483_411_968
    assert on_l4.kv_bytes_per_token == 344_064  # 42 layers x 2 x 8 heads x 256 x 2 bytes


def test_an_fp8_kv_cache_is_not_widened_by_the_float32_model() -> None:
    info = get_preset_info("gemma-2-9b")
    device = get_device("t4")
    hardware = Hardware(device.planning_bytes, 4, device.id, device.name)
    result = plan(info.spec, hardware, Workload(4096, 1), PlanOptions(weight_format=float_format("bf16"),
                                                                        kv_cache_dtype="fp8", engine_version="0.19"))
    assert result.kv_cache_dtype == "fp8" and result.kv_bytes_per_token == 344_064 // 2


def test_hardware_in_bytes_below_8_0_is_charged_like_the_catalog_device() -> None:
    info = get_preset_info("gemma-2-9b")
    device = get_device("t4")
    given = plan(info.spec, Hardware(device.planning_bytes, 4, compute_capability=(7, 5)), Workload(4096, 1),
                 PlanOptions(weight_format=float_format("bf16"), engine_version="0.19"))
    unknown = plan(info.spec, Hardware(device.planning_bytes, 4), Workload(4096, 1),
                   PlanOptions(weight_format=float_format("bf16"), engine_version="0.19"))
    assert given.primary.weights_bytes == 2 * unknown.primary.weights_bytes


@pytest.mark.parametrize(("release", "weight_format", "supported"), [
    ("0.11", int4(128, symmetric=True, layout="gptq"), "gptq. Supported dtypes: [torch.float16]"),
    ("0.19", int4(128, symmetric=True, layout="gptq"),
     "gptq_marlin. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.33", int4(128, symmetric=True, layout="gptq"),
     "auto_gptq. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.11", int4(128, layout="awq"), "awq. Supported dtypes: [torch.float16]"),
    ("0.19", int4(128, layout="awq"), "awq_marlin. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.33", int4(128, layout="awq"), "auto_awq. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.19", fp8("channel"), "fp8. Supported dtypes: [torch.bfloat16, torch.float16]"),
    ("0.33", fp8("channel"), "fp8. Supported dtypes: [torch.bfloat16, torch.float16]"),
])
def test_gptq_awq_and_fp8_refuse_gemma_2_on_a_t4_with_vllms_message(release: str, weight_format: WeightFormat,
                                                                    supported: str) -> None:
    on_t4 = _on("t4", release, weight_format)
    assert not on_t4.fits and on_t4.primary.min_devices is None
    assert on_t4.refusal is not None
    assert f"torch.float32 is not supported for quantization method {supported}" in on_t4.refusal
    assert _on("l4", release, weight_format).refusal is None
    llama = _on("t4", release, weight_format, model="llama-3.1-8b").refusal  # runs float16 on a T4
    assert llama is None or "float32" not in llama


@pytest.mark.parametrize(("release", "device_id", "weight_format", "supported"), [
    ("0.19", "t4", gptq_checkpoint(128, True), "gptq_marlin. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.19", "t4", int4(128, layout="awq"), "awq_marlin. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.19", "t4", gptq_checkpoint(128, False), "gptq. Supported dtypes: [torch.float16]"),
    ("0.19", "t4", gptq_checkpoint(256, True), "gptq. Supported dtypes: [torch.float16]"),
    ("0.19", "v100-32gb", gptq_checkpoint(128, True), "gptq. Supported dtypes: [torch.float16]"),
    ("0.11", "t4", gptq_checkpoint(128, True), "gptq. Supported dtypes: [torch.float16]"),
    ("0.33", "t4", gptq_checkpoint(128, True), "auto_gptq. Supported dtypes: [torch.float16, torch.bfloat16]"),
    ("0.33", "t4", int4(128, layout="awq"), "auto_awq. Supported dtypes: [torch.float16, torch.bfloat16]"),
])
def test_the_float32_refusal_names_the_method_vllm_settles_on_below_8_0(release: str, device_id: str,
                                                                      weight_format: WeightFormat,
                                                                      supported: str) -> None:
    """``model_config.quantization`` as ModelConfig._verify_quantization leaves it: 0.19 converts a GPTQ or AWQ
    checkpoint Marlin takes to gptq_marlin / awq_marlin from 7.5 (marlin_utils.py query_marlin_supported_quant_types:
    no type below 75; 0.11: below 80), whose get_supported_act_dtypes is [torch.half, torch.bfloat16]; the others,
    and every one on a V100, load as gptq (gptq.py, [torch.half]); 0.33's AutoGPTQConfig / AutoAWQConfig
    override_quantization_method names every GPTQ / AWQ checkpoint auto_gptq / auto_awq."""
    # public: vllm#28857 (0.11.0, Gemma 3 AWQ: "torch.float32 is not supported for quantization method awq")
    refusal = _on(device_id, release, weight_format).refusal
    assert refusal is not None
    assert f"torch.float32 is not supported for quantization method {supported}\"" in refusal


def test_fp8_on_a_t4_in_0_11_is_refused_by_its_capability_first() -> None:
    """vLLM checks get_min_capability() before the activation dtypes: 0.11's Fp8Config needs 8.0."""
    refusal = _on("t4", "0.11", fp8("channel")).refusal
    assert refusal is not None and "minimum is 8.0" in refusal and "float32" not in refusal


@pytest.mark.parametrize("release", ("0.19", "0.33"))
def test_compressed_tensors_int4_lists_float32_and_is_not_refused_for_it(release: str) -> None:
    assert float32_refusal(release, "gemma2", "int4-g128-sym-compressed-tensors", (7, 5)) is None


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(("model_type", "capability", "expected"), [
    ("gemma2", (7, 5), True), ("gemma3_text", (7, 0), True), ("glm4", (7, 5), True), ("gemma2", (8, 0), False),
    ("llama", (7, 5), False), ("gemma2", None, False),
])
def test_the_float32_model_types_below_8_0(release: str, model_type: str, capability: tuple[int, int] | None,
                                           expected: bool) -> None:
    assert runs_float32(release, model_type, capability) is expected


def test_plamo2_runs_float32_in_0_11_and_0_19_only() -> None:
    assert "plamo2" in FLOAT16_UNSUPPORTED_MODEL_TYPES["0.11"] and "plamo2" in FLOAT16_UNSUPPORTED_MODEL_TYPES["0.19"]
    assert runs_float32("0.19", "plamo2", (7, 5)) and not runs_float32("0.33", "plamo2", (7, 5))


def test_the_forward_pass_and_the_sampled_hidden_states_take_4_bytes_an_element_in_float32() -> None:
    spec = get_preset_info("gemma-2-9b").spec
    assert _forward_bytes(spec, 1, 2048, "0.19", element_bytes=4) == 2 * _forward_bytes(spec, 1, 2048, "0.19")
    wide, _ = sampler_pass_bytes(spec, 256, 2048, T4, element_bytes=4)
    narrow, _ = sampler_pass_bytes(spec, 256, 2048, T4)
    padded = -(-spec.vocab_size // 64) * 64
    assert wide - narrow == 2 * ((2048 + 2 * 256) * spec.hidden_size + 256 * padded)


def test_a_request_cannot_name_the_float32_kv_cache_the_planner_derives() -> None:
    with pytest.raises(UnknownName):
        PlanOptions(kv_cache_dtype="fp32")


@pytest.mark.parametrize("release", RELEASES)
def test_glm_4_on_v100s_holds_its_kv_pool_in_float32_pages(release: str) -> None:
    """GLM-4-9B-0414: 40 layers x 2 x 2 KV heads x 128 x 2 bytes = 40,960 bytes a token at 16 bits, 81,920 at
    float32; on 4 devices each holds one replicated KV head, 40,960 bytes a token, and the pool holds whole
    16-token blocks of them (half the tokens 16-bit pages would give)."""
    on_v100 = _on("v100-32gb", release, float_format("bf16"), model="glm-4-9b-0414")
    assert on_v100.primary.format == "fp32" and on_v100.kv_bytes_per_token == 81_920
    assert on_v100.primary.kv_capacity_tokens == on_v100.primary.kv_pool_bytes // 40_960 // 16 * 16
