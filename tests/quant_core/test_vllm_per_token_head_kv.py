"""vLLM 0.33's own per-token-head KV caches, ``int8_per_token_head``, ``int4_per_token_head`` and
``fp8_per_token_head``, planned at vLLM's bytes where 0.33 runs them, refused where it does not.

The bytes, from vLLM 0.33's code: ``TritonAttentionBackend.customize_spec`` (v1/attention/backends/triton_attn.py)
sets a head's content to ``(head_size_k + head_size_v) x 1 + 2 x 4`` bytes (int8 or uint8 codes,
utils/torch_utils.py ``STR_DTYPE_TO_TORCH_DTYPE``: int8 for int8, uint8 for int4 and fp8; for int4 both halves
halved, two codes a byte; one fp32 scale for
K and one for V, inline; int4's zero point is in the scale's low mantissa bits, v1/attention/ops/
int4_per_token_head.py), and ``AttentionSpec.page_size_bytes`` (v1/kv_cache_interface.py) is ``num_kv_heads x
block_size x content``: per token and layer, ``kv_heads x ((2 x head_dim) / (1 or 2) + 8)``.  Which backends take
them: only TRITON_ATTN lists them in ``supported_kv_cache_dtypes``; 0.11's and 0.19's ``CacheDType`` has none.  Where:
``TritonAttentionImpl.__init__`` raises for a cache dtype starting "fp8" below 8.9 (fp8_per_token_head's codes are
read as float8_e4m3fn, Triton's fp8e4nv) and refuses nothing else by device but a "bfloat16" cache below 8.0.
Public: vllm#38378, #38854, #39074, #40391 (the per-token-head caches), vllm#33480 (an INT8 cache asked for).
"""

from __future__ import annotations

import dataclasses

import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.engines.vllm_attention import kv_backend
from quant_core.engines.vllm_refusals import kv_cache_refusal
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

INT8 = "int8_per_token_head"
INT4 = "int4_per_token_head"
FP8 = "fp8_per_token_head"


def _spec(model: str) -> ModelSpec:
    return get_preset_info(model).spec


def _plan(model: str, release: str, kv_cache_dtype: str, block_size: int = 16, engine: str = "vllm",
          device_id: str = "h100-80gb") -> Plan:
    """`model` at bf16 on one `device_id` (an H100 80GB) under vLLM `release` with a `kv_cache_dtype` cache, 4096
    tokens, one sequence, 80 % of the memory."""
    device = get_device(device_id)
    hardware = Hardware(device.planning_bytes, 1, device.id, device.name)
    options = PlanOptions(weight_format=float_format("bf16"), kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                          engine=engine, engine_version=release if engine == "vllm" else None,
                          memory_utilization=0.8)
    return plan(_spec(model), hardware, Workload(4096, 1), options)


@pytest.mark.parametrize(("model", "tensor_parallel", "int8_bytes", "int4_bytes"), [
    # Llama-3.1-8B: 32 layers x 8 KV heads x (2 x 128 + 8) = 67,584; int4: 32 x 8 x (128 + 8) = 34,816
    ("llama-3.1-8b", 1, 67_584, 34_816),
    # Qwen3-8B: 36 layers x 8 x 264 = 76,032; int4: 36 x 8 x 136 = 39,168
    ("qwen3-8b", 1, 76_032, 39_168),
    # Qwen2.5-7B, GQA 28 query heads on 4 KV heads: 28 x 4 x 264 = 29,568; int4 28 x 4 x 136 = 15,232
    ("qwen2.5-7b", 1, 29_568, 15_232),
    # the same at tensor parallel 2: two KV heads a rank, each with its own scales
    ("qwen2.5-7b", 2, 14_784, 7_616),
    # Gemma 2 9B, heads of 256 (uncapped by its window): 42 x 8 x (512 + 8) = 174,720; int4 42 x 8 x (256 + 8)
    ("gemma-2-9b", 1, 174_720, 88_704),
])
def test_per_token_head_bytes_per_token_are_vllm_0_33_page_size(model: str, tensor_parallel: int, int8_bytes: int,
                                                                  int4_bytes: int) -> None:
    spec = _spec(model)
    assert kv_bytes_per_token(spec, INT8, tensor_parallel) == int8_bytes
    assert kv_bytes_per_token(spec, INT4, tensor_parallel) == int4_bytes
    # fp8: one uint8 code an element (STR_DTYPE_TO_TORCH_DTYPE), the same two fp32 scales: int8's bytes
    assert kv_bytes_per_token(spec, FP8, tensor_parallel) == int8_bytes


@pytest.mark.parametrize(("dtype", "bytes_per_token", "capacity_tokens"), [
    # the pool 0.33 leaves Llama-3.1-8B at bf16 weights on an H100 at 80 % (48,549,685,133 bytes, the same pool as
    # its bf16 cache's) in 16-token blocks of 16 x 67,584 bytes: 44,897 blocks; int4: 87,154 blocks of 16 x 34,816;
    # fp8 on the H100 (9.0, from 8.9): int8's pages.  48,694,032,269 bytes, 45,031 and 87,413 blocks (720,496 and
    # 1,398,608 tokens) with a fixed 400 MiB graph estimate, 522 MiB now (51 capture sizes, 386 MiB + 32 layers x
    # 4.25 MiB); 48,566,105,997 bytes, 44,912 and 87,183 blocks (718,592 and 1,394,928 tokens) before Model Runner
    # V2's structured-output bitmask, 1024 x (ceil(128,256 / 32) + 1) x 4 = 16,420,864 bytes
    (INT8, 67_584, 718_352),
    (INT4, 34_816, 1_394_464),
    (FP8, 67_584, 718_352),
])
def test_a_0_33_plan_on_an_h100_holds_the_tokens_of_vllm_pages(dtype: str, bytes_per_token: int,
                                                               capacity_tokens: int) -> None:
    planned = _plan("llama-3.1-8b", "0.33", dtype)
    sixteen_bit = _plan("llama-3.1-8b", "0.33", "bf16")
    assert planned.fits and planned.refusal is None
    assert planned.kv_bytes_per_token == bytes_per_token
    pool = planned.primary.kv_pool_bytes
    assert pool == sixteen_bit.primary.kv_pool_bytes
    assert planned.primary.kv_capacity_tokens == pool // (16 * bytes_per_token) * 16 == capacity_tokens


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0), None])
@pytest.mark.parametrize("dtype", [INT8, INT4])
def test_0_33_runs_the_integer_ones_on_triton_attention_on_every_device(capability: tuple[int, int] | None,
                                                                        dtype: str) -> None:
    decided = kv_cache_refusal("0.33", _spec("qwen3-8b"), dtype, capability, 16)
    assert decided.refusal is None and decided.block_size is None and decided.requirement is None
    assert "TRITON_ATTN" in decided.basis and "customize_spec" in decided.basis
    found = kv_backend("0.33", _spec("qwen3-8b"), dtype, (9, 0), 32)
    assert found is not None and (found.backend, found.block_size) == ("TRITON_ATTN", None)


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
@pytest.mark.parametrize("dtype", [INT8, INT4])
def test_the_integer_ones_run_on_a_v100_and_a_t4_saying_why(capability: tuple[int, int], dtype: str) -> None:
    # TritonAttentionImpl.__init__ refuses nothing but fp8-named caches (below 8.9) and a "bfloat16" one (below 8.0);
    # the kernels cast int8 codes to the query's dtype (_cast_kv_tile) and int4's to float32, and Triton's
    # AccelerateMatmul.cpp BlockedToMMA sends every tl.dot below 8.0 to its FMA path: nothing a V100 or T4 lacks
    decided = kv_cache_refusal("0.33", _spec("qwen3-8b"), dtype, capability, 16)
    assert decided.refusal is None and "FMA path" in decided.basis and "_cast_kv_tile" in decided.basis
    found = kv_backend("0.33", _spec("qwen3-8b"), dtype, capability)
    assert found is not None and found.backend == "TRITON_ATTN"


def test_a_t4_plan_takes_int8_per_token_head_at_its_pages_and_refuses_fp8s() -> None:
    planned = _plan("qwen2.5-0.5b", "0.33", INT8, device_id="t4")
    assert planned.fits and planned.refusal is None
    # Qwen2.5-0.5B: 24 layers x 2 KV heads x (2 x 64 + 8) = 6,528 bytes a token
    assert planned.kv_bytes_per_token == 6_528
    assert planned.primary.kv_capacity_tokens == planned.primary.kv_pool_bytes // (16 * 6_528) * 16 > 0
    # fp8_per_token_head, the same bytes, is refused there (7.5)
    refused = _plan("qwen2.5-0.5b", "0.33", FP8, device_id="t4")
    assert not refused.fits and refused.refusal is not None and "SM89+" in refused.refusal


@pytest.mark.parametrize(("capability", "runs"), [
    ((7, 0), False), ((7, 5), False), ((8, 0), False), ((8, 6), False), ((8, 7), False),
    ((8, 9), True), ((9, 0), True), ((10, 0), True), ((12, 0), True),
])
def test_0_33_runs_fp8_per_token_head_from_8_9_only(capability: tuple[int, int], runs: bool) -> None:
    # triton_attn.py TritonAttentionImpl.__init__: kv_cache_dtype.startswith("fp8") and not
    # has_device_capability(89) raises "FP8 KV cache is not supported by the Triton attention backend ... native FP8
    # (fp8e4nv) requires SM89+", and TRITON_ATTN is the only backend listing fp8_per_token_head
    decided = kv_cache_refusal("0.33", _spec("qwen3-8b"), FP8, capability, 16)
    found = kv_backend("0.33", _spec("qwen3-8b"), FP8, capability)
    assert found is not None
    if runs:
        assert decided.refusal is None and found.backend == "TRITON_ATTN"
    else:
        assert found.backend is None
        assert decided.refusal is not None and "TritonAttentionImpl.__init__" in decided.refusal
        assert "SM89+" in decided.refusal and "int8_per_token_head (kv_cache.dtype), the same bytes" in decided.refusal


def test_fp8_per_token_head_on_a_device_of_unknown_capability_names_the_floor() -> None:
    decided = kv_cache_refusal("0.33", _spec("qwen3-8b"), FP8, None, 16)
    assert decided.refusal is None
    assert decided.requirement is not None and "from compute capability 8.9 only" in decided.requirement


def test_an_a100_plan_refuses_fp8_per_token_head_and_takes_int8s() -> None:
    refused = _plan("llama-3.1-8b", "0.33", FP8, device_id="a100-80gb")
    assert not refused.fits and refused.refusal is not None and "SM89+" in refused.refusal
    assert _plan("llama-3.1-8b", "0.33", INT8, device_id="a100-80gb").refusal is None


@pytest.mark.parametrize("release", ["0.11", "0.19"])
@pytest.mark.parametrize("dtype", [INT8, INT4, FP8])
def test_0_11_and_0_19_refuse_them_naming_their_cache_dtypes(release: str, dtype: str) -> None:
    refused = _plan("llama-3.1-8b", release, dtype)
    assert not refused.fits and refused.refusal is not None
    assert f"vLLM {release}'s --kv-cache-dtype has no {dtype}" in refused.refusal
    assert "CacheDType" in refused.refusal and "0.33" in refused.refusal
    for capability in ((9, 0), None):
        assert kv_cache_refusal(release, _spec("qwen3-8b"), dtype, capability, 16).refusal is not None


@pytest.mark.parametrize("dtype", [INT8, INT4, FP8])
def test_0_33_refuses_them_for_an_mla_model_no_mla_backend_lists_them(dtype: str) -> None:
    # MLACommonBackend.customize_spec (mla_attention.py) sizes a latent page with the two fp32 scales, but no MLA
    # backend lists a per-token-head dtype (supported_kv_cache_dtypes of mla/*.py; MLACommonBackend keeps
    # AttentionBackend's auto / float16 / bfloat16): "No valid attention backend found", on every device
    for capability in ((8, 0), (9, 0), (10, 0), (12, 0), None):
        refusal = kv_cache_refusal("0.33", _spec("deepseek-v2-lite"), dtype, capability, 16).refusal
        assert refusal is not None and "no MLA backend" in refusal and "TRITON_MLA" in refusal
        assert "customize_spec" in refusal
    # nor is there an MLA page of that layout to size: the plan names the field
    with pytest.raises(InvalidSpec) as raised:
        _plan("deepseek-v2-lite", "0.33", dtype)
    assert raised.value.field == "kv_cache.dtype"


@pytest.mark.parametrize("block_size", [8, 24])
def test_0_33_refuses_a_block_triton_attention_does_not_page(block_size: int) -> None:
    refused = _plan("llama-3.1-8b", "0.33", INT8, block_size=block_size)
    assert refused.refusal is not None and "supports_block_size" in refused.refusal
    assert _plan("llama-3.1-8b", "0.33", INT8, block_size=32).refusal is None


def test_0_33_refuses_heads_under_32_and_int4_of_odd_heads() -> None:
    narrow = dataclasses.replace(_spec("qwen3-8b"), head_dim=16)
    for dtype in (INT8, INT4):
        refusal = kv_cache_refusal("0.33", narrow, dtype, (9, 0), 16).refusal
        assert refusal is not None and "heads of 32 or more" in refusal
    odd = dataclasses.replace(_spec("qwen3-8b"), head_dim=33)
    assert kv_cache_refusal("0.33", odd, INT8, (9, 0), 16).refusal is None
    refusal = kv_cache_refusal("0.33", odd, INT4, (9, 0), 16).refusal
    assert refusal is not None and "reshape_and_cache_int4" in refusal


def test_nibbles_own_int8_stays_refused_under_0_33_pointing_at_vllms() -> None:
    refusal = kv_cache_refusal("0.33", _spec("qwen3-8b"), "int8", (9, 0), 16).refusal
    assert refusal is not None and "cannot run nibble's int8 KV cache" in refusal
    assert "kv_cache.dtype int8_per_token_head" in refusal


@pytest.mark.parametrize("dtype", [INT8, INT4, FP8])
def test_the_generic_engine_refuses_vllms_caches_naming_the_field(dtype: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        PlanOptions(kv_cache_dtype=dtype, engine="generic")
    assert raised.value.field == "kv_cache.dtype" and "runtime.engine_version 0.33" in str(raised.value)


def test_a_refused_block_stays_refused_after_a_plan_of_the_model_at_an_accepted_one() -> None:
    # the model's terms are cached across plans (their refusal cache keys on the requested block too)
    assert _plan("qwen2.5-7b", "0.33", INT8).refusal is None
    refused = _plan("qwen2.5-7b", "0.33", INT8, block_size=8)
    assert not refused.fits and refused.refusal is not None and "not --block-size 8" in refused.refusal
