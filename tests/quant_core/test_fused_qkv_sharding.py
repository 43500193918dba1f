"""Fused q/k/v projections on more tensor-parallel ranks than key/value heads, as vLLM shards them.

vLLM's QKVParallelLinear (vllm/model_executor/layers/linear.py, v0.11.0 and v0.19.0) gives each rank
``heads / tp`` query heads and ``max(1, kv_heads / tp)`` whole key and value heads: where tp exceeds the key/value
heads a rank holds more than 1 / tp of a fused ``qkv_proj`` (Phi-3, phi3.py through llama.py's attention) or
``query_key_value`` (Falcon, falcon.py), as it does of separate k_proj / v_proj.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device
from quant_core.formats import int4
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import QuantizationPolicy, inventory
from quant_core.planner import Hardware, Workload, engine_tensor_parallel_sizes, plan
from quant_core.schemes import assigned_bytes, scheme_of, with_partial_groups
from quant_core.specs import ModelSpec

MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "models"
needs_fixtures = pytest.mark.skipif(not MODELS.is_dir(), reason=f"fixtures folder {MODELS} is absent")
B200 = get_device("b200").memory_bytes


def fixture(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((MODELS / f"{name}.json").read_text())
    return config


def phi3_medium() -> ModelSpec:
    # Phi-3-medium-4k-instruct's published config.json: the Phi-3-mini fixture's family at 40 layers of hidden 5120,
    # 40 heads over 10 key/value heads, MLP 17,920.  Its 32,064 tokens (2^6 x 501) are no multiple of 10, 20 or 40,
    # so vLLM refuses those ranks (vocab_parallel_embedding.py: divide(num_embeddings_padded, tp_size)); these tests
    # of the fused q/k/v projection take a 32,000-token vocabulary, which they divide
    config = {**fixture("phi-3-mini-4k-instruct"), "hidden_size": 5120, "intermediate_size": 17920,
              "num_attention_heads": 40, "num_key_value_heads": 10, "num_hidden_layers": 40, "vocab_size": 32000}
    return model_from_hf_config(config, name="Phi-3-medium-4k-instruct")


def falcon_40b() -> ModelSpec:
    # Falcon-40B's published config.json: new decoder architecture, 60 layers of hidden 8192, 128 heads, 8 kv heads
    config = {**fixture("falcon-7b"), "hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
              "num_hidden_layers": 60, "new_decoder_architecture": True, "multi_query": True}
    return model_from_hf_config(config, name="Falcon-40B")


def bf16_rank_bytes(spec: ModelSpec, tensor_parallel: int, qkv_rows: int) -> int:
    """One rank's bf16 weights with the fused q/k/v projection at `qkv_rows` output rows: norms and biases whole,
    every other tensor ``ceil(bytes / tp)``."""
    total = 0
    for entry in inventory(spec):
        one = 2 * entry.elements
        if entry.role in ("norm", "bias"):
            share = one
        elif entry.name.endswith((".qkv_proj.weight", ".query_key_value.weight")):
            share = qkv_rows * spec.hidden_size * 2
        else:
            share = -(-one // tensor_parallel)
        total += share * entry.count
    return total


@needs_fixtures
@pytest.mark.parametrize(("tensor_parallel", "query_heads", "qkv_bytes_per_layer"), [
    # 40 / 20 = 2 query heads + 1 key + 1 value head: 4 x 128 rows x 5120 x 2 bytes (an even split: 3 heads)
    (20, 2, 5_242_880),
    # 1 query head + 1 key + 1 value head: 3 x 128 x 5120 x 2 (an even split: 1.5 heads)
    (40, 1, 3_932_160),
])
def test_phi3_medium_past_its_10_kv_heads_holds_whole_key_and_value_heads_of_its_fused_qkv_proj(
        tensor_parallel: int, query_heads: int, qkv_bytes_per_layer: int) -> None:
    spec = phi3_medium()
    assert tensor_parallel in engine_tensor_parallel_sizes(spec)  # vLLM accepts it: 40 heads, 10 kv heads, 17,920
    rows = (query_heads + 2) * 128
    assert rows * 5120 * 2 == qkv_bytes_per_layer
    result = plan(spec, Hardware(B200, tensor_parallel), Workload(4096, 1))
    device = result.comparison["bf16"].devices[0]
    assert result.comparison["bf16"].refusal is None
    assert device.weights_bytes == bf16_rank_bytes(spec, tensor_parallel, rows)
    even = bf16_rank_bytes(spec, tensor_parallel, -(-60 * 128 // tensor_parallel))
    assert device.weights_bytes - even == 40 * (qkv_bytes_per_layer - 60 * 128 * 5120 * 2 // tensor_parallel)


@needs_fixtures
def test_phi3_medium_within_its_kv_heads_splits_the_fused_qkv_proj_evenly() -> None:
    spec = phi3_medium()
    device = plan(spec, Hardware(B200, 10), Workload(4096, 1)).comparison["bf16"].devices[0]
    assert device.weights_bytes == bf16_rank_bytes(spec, 10, 60 * 128 // 10)


@needs_fixtures
def test_falcon_40b_at_16_ranks_holds_one_whole_kv_head_pair_of_its_query_key_value() -> None:
    # falcon.py, FalconAttention: QKVParallelLinear(hidden, head_dim 64, 128 heads, 8 kv heads); at TP 16 a rank
    # holds 8 query heads + 1 key + 1 value head = 640 rows, not (128 + 16) x 64 / 16 = 576
    spec = falcon_40b()
    assert 16 in engine_tensor_parallel_sizes(spec)
    device = plan(spec, Hardware(B200, 16), Workload(2048, 1)).comparison["bf16"].devices[0]
    assert device.weights_bytes == bf16_rank_bytes(spec, 16, 640)


@needs_fixtures
@pytest.mark.parametrize(("tensor_parallel", "rows"), [(2, (36 + 2) * 64), (4, (18 + 2) * 64)])
def test_falcon_7b_multi_query_is_refused_at_2_and_4_ranks_and_its_figures_hold_whole_kv_heads(
        tensor_parallel: int, rows: int) -> None:
    # Falcon-7B: 71 heads, one key/value head (multi_query).  falcon.py asserts total_num_heads % tp_size == 0,
    # so vLLM refuses both; the refused plan still counts a rank's fused projection as ceil(71 / tp) query heads
    # plus the whole key and value head
    spec = model_from_hf_config(fixture("falcon-7b"), name="falcon-7b")
    assert (spec.num_attention_heads, spec.num_kv_heads) == (71, 1)
    assert tensor_parallel not in engine_tensor_parallel_sizes(spec)
    result = plan(spec, Hardware(B200, tensor_parallel), Workload(2048, 1))
    assert result.comparison["bf16"].refusal is not None and "71 attention heads" in result.comparison["bf16"].refusal
    assert result.comparison["bf16"].devices[0].weights_bytes == bf16_rank_bytes(spec, tensor_parallel, rows)


@needs_fixtures
def test_an_int4_fused_qkv_proj_past_the_kv_heads_is_held_by_its_rows_too() -> None:
    # nibble's int4 g128 row of 5120 inputs: 2560 bytes of nibbles + 40 groups x (fp16 scale + 4-bit zero) = 2660
    # bytes; at TP 40 a rank holds 3 of the 60 heads' 128 rows each, not 1.5
    spec = phi3_medium()
    policy = QuantizationPolicy()
    scheme, _ = with_partial_groups(spec, scheme_of(int4(), policy.unquantized_format, policy.quantized_roles))
    total = 0
    for entry, one in assigned_bytes(spec, scheme):
        if entry.name.endswith(".qkv_proj.weight"):
            assert one == 60 * 128 * 2660
            share = 3 * 128 * 2660
        elif entry.role in ("norm", "bias"):
            share = one
        else:
            share = -(-one // 40)
        total += share * entry.count
    device = plan(spec, Hardware(B200, 40), Workload(4096, 1)).comparison["int4"].devices[0]
    assert device.weights_bytes == total
