"""An fp8 KV cache is planned only where vLLM's attention backend runs one, at that backend's block.

The backends and their rules are read from each release's code (`quant_core.engines.vllm_attention`: platforms/cuda.py
``get_attn_backend_cls`` / ``_get_backend_priorities``, each backend's ``supported_kv_cache_dtypes``,
``supports_compute_capability`` and impl checks); the public failures: vllm#26431 (0.11.0 on RTX 3090s, 8.6:
"type fp8e4nv not supported in this architecture" from the Triton reshape-and-cache kernel), vllm#45829 / #49077
(open PRs: "SM75-SM88 have no native fp8e4nv cast; Triton kernels ... fail at compile time"), vllm#24577 (FlashInfer's
fp8 cache on an A100: "the available concurrency doubles"), vllm#47949 (FlashInfer's fp8 cache on SM75 worked until
0.24 raised FlashInfer's floor to 8.0, the floor 0.33 has), vllm#35577 (Triton MLA refusing an fp8 cache), vllm#35720
(0.16.0 on a V100) and vllm#39133 (Gemma 4 on an 8.6 card, April 2026): fp8e4nv again between 0.11 and 0.19.
"""

from __future__ import annotations

from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.engines.vllm_attention import VLLM_FP8_CACHE_DTYPES, kv_backend
from quant_core.engines.vllm_refusals import kv_cache_refusal
from quant_core.errors import UnknownName
from quant_core.formats import KV_DTYPES, float_format
from quant_core.hf_config import model_from_hf_config
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config
from quant_core.specs import ModelSpec

GIB = 1 << 30


def _spec(model: str) -> ModelSpec:
    return get_preset_info(model).spec


def _plan(model: str, device_id: str, release: str, kv_cache_dtype: str = "fp8", block_size: int = 16,
          weight_format: str = "bf16") -> Plan:
    """`model` at 16 bits on one catalog `device_id` under vLLM `release` with a `kv_cache_dtype` cache."""
    device = get_device(device_id)
    hardware = Hardware(device.planning_bytes, 1, device.id, device.name)
    options = PlanOptions(weight_format=float_format(weight_format), kv_cache_dtype=kv_cache_dtype,
                          block_size=block_size, engine_version=release, memory_utilization=0.8)
    return plan(_spec(model), hardware, Workload(4096, 1), options)


# --- the decision, release x capability x model kind x fp8 dtype --------------------------------------------------

DENSE = "qwen3-8b"  # heads of 128, no sinks
MLA = "deepseek-v2-lite"  # qk_nope_head_dim 128


@pytest.mark.parametrize(("release", "capability", "e4m3", "e5m2"), [
    # 0.11: FlexAttention below 8.0; TRITON_ATTN from 8.0 but on 9.0 (FlashAttention 3, e4m3 only) and 10.0
    ("0.11", (7, 0), None, None), ("0.11", (7, 5), None, None), ("0.11", (8, 0), None, None),
    ("0.11", (8, 6), None, None), ("0.11", (8, 9), "TRITON_ATTN", "TRITON_ATTN"),
    ("0.11", (9, 0), "FLASH_ATTN", None), ("0.11", (10, 0), "FLASHINFER", "FLASHINFER"),
    ("0.11", (12, 0), "TRITON_ATTN", "TRITON_ATTN"),
    # 0.19: FLASH_ATTN (fp8 on 9.x, e4m3 only at run time), FLASHINFER from 7.5, TRITON_ATTN from 8.9
    ("0.19", (7, 0), None, None), ("0.19", (7, 5), "FLASHINFER", "FLASHINFER"),
    ("0.19", (8, 0), "FLASHINFER", "FLASHINFER"), ("0.19", (8, 9), "FLASHINFER", "FLASHINFER"),
    ("0.19", (9, 0), "FLASH_ATTN", None), ("0.19", (10, 0), "FLASHINFER", "FLASHINFER"),
    ("0.19", (12, 0), "FLASHINFER", "FLASHINFER"),
    # 0.33: FlashInfer's floor is 8.0, FLASH_ATTN lists no fp8_e5m2, TRITON_ATTN refuses fp8 below 8.9
    ("0.33", (7, 0), None, None), ("0.33", (7, 5), None, None), ("0.33", (8, 0), "FLASHINFER", "FLASHINFER"),
    ("0.33", (9, 0), "FLASH_ATTN", "FLASHINFER"), ("0.33", (10, 0), "FLASHINFER", "FLASHINFER"),
])
def test_a_dense_models_fp8_cache_runs_on_the_backend_vllm_picks(release: str, capability: tuple[int, int],
                                                                  e4m3: str | None, e5m2: str | None) -> None:
    for cache_dtype, expected in (("fp8_e4m3", e4m3), ("fp8_e5m2", e5m2)):
        found = kv_backend(release, _spec(DENSE), cache_dtype, capability)
        assert found is not None and found.backend == expected, (cache_dtype, found)


@pytest.mark.parametrize(("release", "capability", "backend", "block"), [
    ("0.11", (8, 0), None, None), ("0.11", (8, 9), None, None), ("0.11", (12, 0), None, None),
    ("0.11", (9, 0), "FLASHMLA", 64), ("0.11", (10, 0), "CUTLASS_MLA", 128),
    ("0.19", (8, 0), None, None), ("0.19", (8, 9), "TRITON_MLA", None), ("0.19", (9, 0), "FLASHMLA", 64),
    ("0.19", (10, 0), "FLASHINFER_MLA", 32), ("0.19", (12, 0), "TRITON_MLA", None),
    ("0.33", (7, 5), None, None), ("0.33", (8, 6), None, None), ("0.33", (8, 9), "TRITON_MLA", None),
    ("0.33", (9, 0), "FLASHMLA", 64), ("0.33", (10, 0), "FLASHINFER_MLA", 32), ("0.33", (12, 0), "TRITON_MLA", None),
])
def test_an_mla_models_fp8_e4m3_cache_runs_on_the_mla_backend_vllm_picks_at_its_block(
        release: str, capability: tuple[int, int], backend: str | None, block: int | None) -> None:
    found = kv_backend(release, _spec(MLA), "fp8_e4m3", capability)
    assert found is not None and (found.backend, found.block_size) == (backend, block), found


@pytest.mark.parametrize("release", ["0.19", "0.33"])
@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0), (12, 0)])
def test_no_mla_backend_of_0_19_or_0_33_takes_fp8_e5m2(release: str, capability: tuple[int, int]) -> None:
    found = kv_backend(release, _spec(MLA), "fp8_e5m2", capability)
    assert found is not None and found.backend is None
    assert "No valid attention backend found" in found.basis and "fp8_e5m2" in found.basis


def test_fp8_e5m2_on_hopper_fails_in_flashattention_under_0_11_and_0_19_and_runs_on_flashinfer_under_0_33() -> None:
    for release in ("0.11", "0.19"):
        found = kv_backend(release, _spec(DENSE), "fp8_e5m2", (9, 0))
        assert found is not None and found.backend is None
        assert "Unrecognized FP8 dtype: fp8_e5m2" in found.basis
    found = kv_backend("0.33", _spec(DENSE), "fp8_e5m2", (9, 0))
    assert found is not None and found.backend == "FLASHINFER"


def test_a_requested_block_flashmla_cannot_page_sends_0_19_to_triton_mla_at_that_block() -> None:
    # FlashMLA's only kernel block is 64 (supports_block_size: a multiple of it); --block-size 32 leaves TRITON_MLA
    found = kv_backend("0.19", _spec(MLA), "fp8_e4m3", (9, 0), requested_block=32)
    assert found is not None and (found.backend, found.block_size) == ("TRITON_MLA", None)
    kept = kv_backend("0.19", _spec(MLA), "fp8_e4m3", (9, 0), requested_block=128)
    assert kept is not None and (kept.backend, kept.block_size) == ("FLASHMLA", None)


def test_other_dtypes_and_sparse_attention_models_are_not_decided_here() -> None:
    assert kv_backend("0.19", _spec(DENSE), "auto", (7, 5)) is None
    assert kv_backend("0.19", _spec("deepseek-v3.2"), "fp8_e4m3", (8, 0)) is None
    assert kv_cache_refusal("0.19", _spec(DENSE), "bf16", (7, 0), 16).refusal is None


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("capability", [(7, 0), (9, 0), None])
def test_an_integer_kv_cache_is_refused_on_every_device_by_every_release(version: str, dtype: str,
                                                                       capability: tuple[int, int] | None) -> None:
    # 0.11 and 0.19 have no integer --kv-cache-dtype (config/cache.py CacheDType); 0.33's int8/int4_per_token_head
    # keep another layout than nibble's fp16 scale and zero per vector: planned as vLLM's, they promised a cache it
    # does not run (public: vllm#33480, an INT8 cache asked for in 2026-01; vllm#38378 adds 0.33's per-token-head one)
    refusal = kv_cache_refusal(version, _spec(DENSE), dtype, capability, 16).refusal
    assert refusal is not None and f"vLLM {version} cannot run nibble's {dtype} KV cache" in refusal
    assert ("CacheDType" in refusal) and ("runtime.engine generic" in refusal)


# --- plans ------------------------------------------------------------------------------------------------------

def test_fp8_kv_on_a_t4_under_0_11_is_refused_naming_flexattention() -> None:
    refused = _plan(DENSE, "t4", "0.11", weight_format="fp16")
    assert not refused.fits and refused.refusal is not None
    assert "FlexAttention does not support quantized kv-cache" in refused.refusal
    assert "compute capability 7.5" in refused.refusal and "kv_cache.dtype fp16" in refused.refusal


def test_fp8_kv_on_a_t4_under_0_19_is_planned_on_flashinfer_but_refused_under_0_33() -> None:
    # 0.19's FlashInfer takes 7.5 (supports_compute_capability) and heads of 128; 0.33 raised its floor to 8.0
    # ("broken on SM75", flashinfer#3620), which leaves TRITON_ATTN, refusing fp8 below 8.9 when it is built
    assert _plan(DENSE, "t4", "0.19", weight_format="fp16").refusal is None
    refused = _plan(DENSE, "t4", "0.33", weight_format="fp16")
    assert refused.refusal is not None and not refused.fits
    assert "TRITON_ATTN" in refused.refusal and "requires SM89+" in refused.refusal


def test_fp8_kv_on_a_t4_under_0_19_is_refused_where_flashinfer_does_not_take_the_model() -> None:
    # Phi-3-mini's heads of 96 are not FlashInfer's (64, 128, 256): TRITON_ATTN, whose fp8e4nv Triton cannot compile
    refused = _plan("phi-3-mini-4k-instruct", "t4", "0.19", weight_format="fp16")
    assert refused.refusal is not None and "TRITON_ATTN" in refused.refusal
    assert "type fp8e4nv not supported in this architecture" in refused.refusal
    # Gemma 2 runs in float32 on a T4 (no bf16, fp16 refused for it): FlashInfer takes fp16/bf16 only
    gemma = _plan("gemma-2-9b", "t4", "0.19", weight_format="fp16")
    assert gemma.refusal is not None and "fp8e4nv" in gemma.refusal


def test_fp8_kv_on_an_a100_under_0_11_is_refused_with_triton_s_fp8e4nv() -> None:
    refused = _plan(DENSE, "a100-80gb", "0.11")
    assert refused.refusal is not None and "vllm#26431" in refused.refusal
    assert "compute capability 8.0" in refused.refusal and not refused.fits
    assert any(warning.startswith("The model cannot run with its fp8 KV cache on this device, whatever its weights")
               for warning in refused.warnings)
    assert not any("does not fit even at INT4" in warning for warning in refused.warnings)


@pytest.mark.parametrize("release", ["0.19", "0.33"])
@pytest.mark.parametrize("model", [DENSE, "mistral-7b-v0.1", "gemma-2-9b"])
def test_fp8_kv_on_an_a100_under_0_19_and_0_33_is_planned_on_flashinfer_sliding_windows_included(
        release: str, model: str) -> None:
    planned = _plan(model, "a100-80gb", release)
    assert planned.refusal is None and planned.kv_cache_dtype == "fp8"


@pytest.mark.parametrize("release", ["0.19", "0.33"])
def test_fp8_kv_of_a_model_with_attention_sinks_on_an_a100_is_refused(release: str) -> None:
    # gpt-oss's sinks: FlashAttention's only on 9.0+, FlashInfer's only with TRT-LLM attention (not on 8.x)
    refused = _plan("gpt-oss-20b", "a100-80gb", release)
    assert refused.refusal is not None and "TRITON_ATTN" in refused.refusal
    assert _plan("gpt-oss-20b", "h100-80gb", release).refusal is None


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_fp8_kv_on_an_l4_is_planned_at_the_requested_block(release: str) -> None:
    planned = _plan(DENSE, "l4", release)
    assert planned.refusal is None and not any("-token KV blocks" in warning for warning in planned.warnings)


@pytest.mark.parametrize(("release", "reason"), [
    ("0.11", "TritonMLA V1 with FP8 KV cache not yet supported"),
    ("0.19", "type fp8e4nv not supported in this architecture"),
    ("0.33", "FP8 KV cache is not supported by the Triton MLA backend"),
])
def test_an_mla_models_fp8_kv_on_an_a100_is_refused_per_release(release: str, reason: str) -> None:
    refused = _plan(MLA, "a100-80gb", release)
    assert refused.refusal is not None and reason in refused.refusal and not refused.fits
    assert _plan(MLA, "a100-80gb", release, kv_cache_dtype="bf16").refusal is None  # a 16-bit cache runs


@pytest.mark.parametrize(("release", "device_id", "block", "sixteen_bit_block"), [
    ("0.11", "h100-80gb", 64, 64), ("0.19", "h100-80gb", 64, 16), ("0.33", "h100-80gb", 64, 16),
    ("0.11", "b200", 128, 128), ("0.19", "b200", 32, 32), ("0.33", "b200", 32, 32),
])
def test_an_mla_models_fp8_kv_is_planned_at_its_backends_block(release: str, device_id: str, block: int,
                                                               sixteen_bit_block: int) -> None:
    planned = _plan(MLA, device_id, release)
    assert planned.refusal is None
    assert any(warning.startswith(f"Planned at {block}-token KV blocks, not the requested 16")
               for warning in planned.warnings)
    capacity = planned.primary.kv_capacity_tokens
    assert capacity is not None and capacity % block == 0
    # a 16-bit cache: FlashMLA and CUTLASS MLA (0.11) and FlashInfer MLA (10.x) page it in the same blocks, and
    # FlashAttention MLA, which takes no fp8, runs it on Hopper under 0.19 and 0.33 at vLLM's 16
    sixteen = _plan(MLA, device_id, release, kv_cache_dtype="bf16")
    noted = [warning for warning in sixteen.warnings if "-token KV blocks" in warning]
    assert len(noted) == (0 if sixteen_bit_block == 16 else 1)
    assert all(warning.startswith(f"Planned at {sixteen_bit_block}-token KV blocks") for warning in noted)


def test_an_mla_models_fp8_kv_on_an_l4_is_refused_by_0_11_and_planned_by_0_19() -> None:
    assert "TritonMLA V1 with FP8 KV cache" in (_plan(MLA, "l4", "0.11").refusal or "")
    assert _plan(MLA, "l4", "0.19").refusal is None  # TRITON_MLA compiles fp8e4nv from 8.9


def test_a_device_of_unknown_capability_is_not_refused_but_told_where_fp8_runs() -> None:
    hardware = Hardware(16 * GIB, 1, None, "custom GPU", None)
    answer = plan(_spec(DENSE), hardware, Workload(4096, 1),
                  PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype="fp8", engine_version="0.19"))
    assert answer.refusal is None
    assert any("compute capability is not known" in warning and "fp8 KV cache" in warning
               and "does not refuse the fp8 KV cache" in warning for warning in answer.warnings)
    # at 0.85 the 2.4 GiB left free hold the 1.94 GiB vLLM 0.19 takes outside the budget on a device not known (its
    # start-up memory, the graphs and FlashInfer's workspace of a 7.5 device); at 0.9 (1.6 GiB) the answer says they
    # do not fit, which names the device as not known beside the KV cache
    sixteen = plan(_spec(DENSE), hardware, Workload(4096, 1),
                   PlanOptions(weight_format=float_format("bf16"), engine_version="0.19", memory_utilization=0.85))
    assert not any("KV cache" in warning and "not known" in warning for warning in sixteen.warnings)


#: meta-llama/Llama-3.1-8B-Instruct's config.json, and ModelOpt's NVFP4 quantization_config with an FP8 KV cache
#: (kv_cache_scheme), as nvidia/Llama-3.1-8B-Instruct-FP4 ships them
_LLAMA_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
_NVFP4_CONFIG: dict[str, Any] = {
    "config_groups": {"group_0": {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float",
                                                        "group_size": 16},
                                  "weights": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16},
                                  "targets": ["Linear"]}},
    "ignore": ["lm_head"], "quant_algo": "NVFP4", "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"},
    "producer": {"name": "modelopt", "version": "0.33.0"}, "quant_method": "modelopt",
}


def test_a_modelopt_checkpoints_automatic_fp8_cache_is_refused_where_vllm_cannot_run_it() -> None:
    # 0.33 loads ModelOpt NVFP4 from 7.5 (FP4 Marlin), and its kv_cache_dtype auto takes the config's FP8 cache:
    # on a T4 that cache has only TRITON_ATTN, which refuses it; a 16-bit cache asked for runs
    scheme = scheme_from_quantization_config(_NVFP4_CONFIG)
    t4 = get_device("t4")
    hardware = Hardware(t4.planning_bytes, 1, t4.id, t4.name)
    auto = plan(model_from_hf_config(_LLAMA_8B), hardware, Workload(4096, 1),
                PlanOptions(scheme=scheme, shipped=scheme, engine_version="0.33", kv_cache_dtype_auto=True,
                            float_format="fp16"))
    assert auto.kv_cache_dtype == "fp8" and auto.refusal is not None and "TRITON_ATTN" in auto.refusal
    asked = plan(model_from_hf_config(_LLAMA_8B), hardware, Workload(4096, 1),
                 PlanOptions(scheme=scheme, shipped=scheme, engine_version="0.33", kv_cache_dtype="fp16",
                             float_format="fp16"))
    assert asked.kv_cache_dtype == "fp16" and asked.refusal is None


def test_an_mla_models_fp8_context_rounds_to_flashmlas_64_token_blocks_on_hopper() -> None:
    # DeepSeek-V2-Lite: 27 layers x (512 + 64) latent x 1 byte = 15,552 bytes a token; 4,100 tokens hold 65 blocks
    # of 64 (4,160 tokens), where 16-token blocks would hold 4,112
    device = get_device("h100-80gb")
    answer = plan(_spec(MLA), Hardware(device.planning_bytes, 1, device.id, device.name), Workload(4100, 1),
                  PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype="fp8", engine_version="0.19"))
    assert answer.kv_bytes_per_token == 15_552
    assert answer.kv_cache_bytes == 15_552 * 4160 == 64_696_320


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_heads_under_32_have_no_fp8_backend_even_from_8_9(release: str) -> None:
    # TRITON_ATTN takes heads of 32 or more; FlexAttention, left, takes no quantized cache
    small = model_from_hf_config({**_LLAMA_8B, "hidden_size": 512, "num_attention_heads": 32,
                                  "num_key_value_heads": 8, "intermediate_size": 1024})
    assert small.head_dim == 16
    found = kv_backend(release, small, "fp8_e4m3", (8, 9))
    assert found is not None and found.backend is None and "heads of 16" in found.basis


def test_nibble_cannot_be_asked_for_an_fp8_e5m2_cache() -> None:
    # vLLM refuses fp8_e5m2 with a checkpoint whose quantization method gives the attention layers a KV-cache method
    # (fp8, ModelOpt, compressed-tensors...): "fp8_e5m2 kv-cache is not supported with fp8 checkpoints." (0.11
    # attention/layer.py Attention.__init__; 0.19 and 0.33 model_executor/layers/attention/attention.py
    # _init_kv_cache_quant, 0.33 sparing compressed-tensors checkpoints without a kv_cache_scheme).  nibble's only fp8
    # KV dtype is "fp8", vLLM's fp8_e4m3 (VLLM_FP8_CACHE_DTYPES), so no plan meets that refusal; one that adds e5m2
    # must refuse it there as vLLM does
    with pytest.raises(UnknownName) as raised:
        PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype="fp8_e5m2")
    assert raised.value.field == "kv_cache.dtype"
    assert "fp8_e5m2" not in KV_DTYPES and VLLM_FP8_CACHE_DTYPES["fp8"] == "fp8_e4m3"


@pytest.mark.parametrize("release", ["0.19", "0.33"])
def test_a_refused_block_stays_refused_after_a_plan_of_the_model_at_an_accepted_one(release: str) -> None:
    # the model's terms are cached across plans; their refusal cache keyed on the release, capability and model dtype
    # but not the requested block, so a --block-size 8 plan after a block-16 one of the same model came out fitting
    # (vLLM 0.19 and 0.33 page no dense fp8 cache at 8: supports_block_size)
    assert _plan("qwen2.5-7b", "h100-80gb", release).refusal is None
    refused = _plan("qwen2.5-7b", "h100-80gb", release, block_size=8)
    assert not refused.fits and refused.refusal is not None and "--block-size 8" in refused.refusal
