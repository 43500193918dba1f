"""GGUF on Blackwell under vLLM 0.19: refused for a model run in bfloat16, with vLLM's message and the remedy.

vLLM 0.19.0's model_executor/layers/quantization/gguf.py ``GGUFConfig.get_supported_act_dtypes`` returns
``[torch.half, torch.float32]`` when ``current_platform.has_device_capability(100)`` ("GGUF has precision issues with
bfloat16 on Blackwell") and ``[torch.half, torch.bfloat16, torch.float32]`` below; config/vllm.py
``VllmConfig._get_quantization_config`` raises ``f"{model_config.dtype} is not supported for quantization method
{model_config.quantization}. Supported dtypes: {supported_dtypes}"``.  vLLM 0.11.0's GGUFConfig lists bfloat16 on every
device; 0.33 has no GGUF (refused by its capability table already)."""

from __future__ import annotations

import pytest

from quant_core.catalog import get_preset
from quant_core.engines.vllm_refusals import act_dtypes, gguf_bfloat16_refusal
from quant_core.planner import Hardware, Plan, PlanOptions, plan
from quant_core.schemes import WeightScheme

B200 = Hardware(178 * 2**30, 1, "b200", "B200", (10, 0))
H100 = Hardware(80 * 2**30, 1, "h100-80gb", "H100", (9, 0))
MESSAGE = ("\"torch.bfloat16 is not supported for quantization method gguf. Supported dtypes: [torch.float16, "
           "torch.float32]\"")


def _gguf_plan(hardware: Hardware, release: str, float_format: str = "bf16") -> Plan:
    return plan(get_preset("llama-3.1-8b"), hardware, None,
                PlanOptions(scheme=WeightScheme(gguf_file_type="gguf-q4_k_m"), engine_version=release,
                            float_format=float_format))


def test_gguf_of_a_bfloat16_model_on_a_b200_under_0_19_is_refused_with_vllms_message_and_the_remedy() -> None:
    result = _gguf_plan(B200, "0.19")
    assert not result.fits and result.primary.min_devices is None
    assert result.refusal is not None
    assert MESSAGE in result.refusal and "--dtype half" in result.refusal and "float_format fp16" in result.refusal


def test_gguf_on_a_b200_under_0_19_plans_when_the_model_runs_in_float16() -> None:
    assert _gguf_plan(B200, "0.19", "fp16").fits


@pytest.mark.parametrize(("hardware", "release"), [(H100, "0.19"), (B200, "0.11")])
def test_gguf_keeps_bfloat16_below_blackwell_and_in_0_11(hardware: Hardware, release: str) -> None:
    result = _gguf_plan(hardware, release)
    assert result.fits and result.refusal is None


def test_gguf_act_dtypes_drop_bfloat16_from_compute_capability_10_in_0_19_only() -> None:
    assert act_dtypes("0.19", "gguf", (9, 0)) == ("float16", "bfloat16", "float32")
    assert act_dtypes("0.19", "gguf", (10, 0)) == act_dtypes("0.19", "gguf", (12, 0)) == ("float16", "float32")
    assert act_dtypes("0.11", "gguf", (10, 0)) == ("float16", "bfloat16", "float32")
    assert gguf_bfloat16_refusal("0.19", "gguf-q4_k_m", "bf16", None) is None  # a capability not known
    assert gguf_bfloat16_refusal("0.19", "int4-g128-asym", "bf16", (10, 0)) is None
