"""KV cache: bytes per token by layer kind (exact against vLLM's figures), TP split, windows, paging, dtypes."""

from __future__ import annotations

from typing import Any

import pytest

from quant_core.errors import InvalidSpec, UnknownName
from quant_core.hf_config import model_from_sizes
from quant_core.kv_cache import kv_bytes_by_window, kv_bytes_per_token, kv_cache_bytes, kv_layers
from tests.shared_fixtures import GROUND_TRUTH, needs_fixtures, spec_of

# Llama-3.1-8B's attention: 32 layers, 8 KV heads of 128
LLAMA_8B = model_from_sizes(hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8,
                            intermediate_size=14336, vocab_size=128256)


@needs_fixtures
@pytest.mark.parametrize("entry", GROUND_TRUTH, ids=[entry["name"] for entry in GROUND_TRUTH])
def test_kv_bytes_per_token_bf16_equals_ground_truth_exactly(entry: dict[str, Any]) -> None:
    spec = spec_of(entry["name"])
    assert kv_bytes_per_token(spec) == entry["kv_bytes_per_token_bf16"]
    assert len(kv_layers(spec)) == entry["kv_cache"]["num_kv_layers"]
    info = entry["sliding_window_info"]
    if info:
        groups = dict(kv_bytes_by_window(spec))
        assert groups.get(None, 0) == info["kv_bytes_per_token_full_layers"]
        assert groups[info["window"]] == info["kv_bytes_per_token_sliding_layers"]


def test_full_attention_is_two_times_layers_heads_head_dim_bytes() -> None:
    assert kv_bytes_per_token(LLAMA_8B) == 2 * 32 * 8 * 128 * 2
    assert kv_bytes_per_token(LLAMA_8B, "fp8") == 2 * 32 * 8 * 128


def test_int8_and_int4_kv_include_per_token_head_scale_and_zero() -> None:
    # per vector: codes + fp16 scale + fp16 zero (4 bytes), for K and V of each head
    assert kv_bytes_per_token(LLAMA_8B, "int8") == 32 * 8 * 2 * (128 + 4)
    assert kv_bytes_per_token(LLAMA_8B, "int4") == 32 * 8 * 2 * (64 + 4)


def test_tensor_parallel_splits_kv_heads_across_ranks() -> None:
    assert kv_bytes_per_token(LLAMA_8B, tensor_parallel=2) == kv_bytes_per_token(LLAMA_8B) // 2
    assert kv_bytes_per_token(LLAMA_8B, tensor_parallel=8) == kv_bytes_per_token(LLAMA_8B) // 8


def test_tensor_parallel_beyond_kv_heads_replicates_one_head_per_rank() -> None:
    one_head = 2 * 32 * 1 * 128 * 2
    assert kv_bytes_per_token(LLAMA_8B, tensor_parallel=16) == one_head
    assert kv_bytes_per_token(LLAMA_8B, tensor_parallel=64) == one_head


@needs_fixtures
def test_mla_latent_is_one_vector_per_layer_replicated_on_every_rank() -> None:
    spec = spec_of("deepseek-v3")
    assert kv_bytes_per_token(spec) == 61 * (512 + 64) * 2
    assert kv_bytes_per_token(spec, tensor_parallel=8) == kv_bytes_per_token(spec)
    assert kv_bytes_per_token(spec, "int8") == 61 * (576 + 4)
    assert {layer.kind for layer in kv_layers(spec)} == {"mla"}


@needs_fixtures
def test_mistral_sliding_window_caps_every_layer_at_4096_tokens() -> None:
    spec = spec_of("mistral-7b-v0.1")
    per_token = kv_bytes_per_token(spec)
    assert kv_cache_bytes(spec, "bf16", context_length=32768, sequences=1) == per_token * 4096
    assert kv_cache_bytes(spec, "bf16", context_length=1000, sequences=1) == per_token * 1008


@needs_fixtures
def test_gemma2_holds_the_full_context_on_global_layers_and_the_window_on_local_ones() -> None:
    spec = spec_of("gemma-2-9b")
    kinds = [layer.kind for layer in kv_layers(spec)]
    assert kinds[:4] == ["sliding", "full", "sliding", "full"]
    assert kv_cache_bytes(spec, "bf16", context_length=8192, sequences=2) == 2 * (172032 * 8192 + 172032 * 4096)


def test_paging_rounds_each_sequence_up_to_whole_blocks() -> None:
    per_token = kv_bytes_per_token(LLAMA_8B)
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=17, sequences=3) == 3 * 32 * per_token
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=16, sequences=3) == 3 * 16 * per_token
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=17, sequences=3, block_size=1) == 3 * 17 * per_token


def test_sliding_window_cap_is_rounded_to_blocks_too() -> None:
    spec = model_from_sizes(hidden_size=1024, num_layers=2, num_attention_heads=8, intermediate_size=4096,
                            vocab_size=1000, sliding_window=100)
    per_token = kv_bytes_per_token(spec)
    assert kv_cache_bytes(spec, "bf16", context_length=1000, sequences=1) == per_token * 112


def test_kv_cache_bytes_is_per_rank_under_tensor_parallel() -> None:
    full = kv_cache_bytes(LLAMA_8B, "bf16", context_length=4096, sequences=4)
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=4096, sequences=4, tensor_parallel=4) == full // 4


def test_zero_context_or_sequences_cost_nothing() -> None:
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=0, sequences=8) == 0
    assert kv_cache_bytes(LLAMA_8B, "bf16", context_length=4096, sequences=0) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"context_length": -1}, "context_length"),
        ({"sequences": -2}, "sequences"),
        ({"block_size": 0}, "block_size"),
        ({"tensor_parallel": 0}, "tensor_parallel"),
        ({"tensor_parallel": "2"}, "tensor_parallel"),
        ({"context_length": 10**15}, "context_length"),
    ],
)
def test_bad_workload_values_raise_invalid_spec_naming_them(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"dtype": "bf16", "context_length": 4096, "sequences": 1, **kwargs}
    with pytest.raises(InvalidSpec) as caught:
        kv_cache_bytes(LLAMA_8B, **arguments)
    assert caught.value.field == field


def test_unknown_kv_dtype_lists_the_known_ones() -> None:
    with pytest.raises(UnknownName) as caught:
        kv_bytes_per_token(LLAMA_8B, "int2")
    assert "bf16" in caught.value.close
