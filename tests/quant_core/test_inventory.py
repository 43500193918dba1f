"""The tensor inventory and what derives from it: parameter counts (exact) and weight bytes."""

from __future__ import annotations

from typing import Any

import pytest

from quant_core.errors import GroupSizeMismatch, UnknownName
from quant_core.formats import float_format, int4
from quant_core.hf_config import model_from_sizes
from quant_core.inventory import (
    QuantizationPolicy,
    entries_bytes,
    inventory,
    parameter_count,
    weight_bytes,
    weight_bytes_by_role,
)
from quant_core.specs import ROLES
from tests.shared_fixtures import GROUND_TRUTH, needs_fixtures, spec_of

LLAMA_8B = model_from_sizes(hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8,
                            intermediate_size=14336, vocab_size=128256)


@needs_fixtures
@pytest.mark.parametrize("entry", GROUND_TRUTH, ids=[entry["name"] for entry in GROUND_TRUTH])
def test_parameter_count_equals_ground_truth_exactly(entry: dict[str, Any]) -> None:
    count = parameter_count(spec_of(entry["name"]))
    breakdown = entry["params_breakdown"]
    assert count.total == entry["params_exact"]
    assert count.embedding == breakdown["embedding"]
    assert count.lm_head == breakdown["lm_head"]
    assert count.position_embedding == breakdown["position_embedding"]
    assert count.non_embedding == breakdown["non_embedding"]
    assert count.active_per_token == entry["params_active_per_token"]
    if entry["moe"]:
        assert count.routed_experts == entry["moe"]["routed_expert_params"]


@needs_fixtures
@pytest.mark.parametrize("entry", GROUND_TRUTH, ids=[entry["name"] for entry in GROUND_TRUTH])
def test_by_role_sums_to_total_and_rows_are_consistent(entry: dict[str, Any]) -> None:
    spec = spec_of(entry["name"])
    count = parameter_count(spec)
    assert set(count.by_role) == set(ROLES)
    assert sum(count.by_role.values()) == count.total
    for row in inventory(spec):
        assert row.role in ROLES
        assert row.count == row.per_layer * max(1, len(row.layers))
        assert all(dim > 0 for dim in row.shape), row


@needs_fixtures
def test_deepseek_v3_inventory_is_a_few_dozen_rows_with_experts_folded() -> None:
    rows = inventory(spec_of("deepseek-v3"))
    assert len(rows) < 40
    up = next(row for row in rows if row.name == "model.layers.{i}.mlp.experts.{e}.up_proj.weight")
    assert up.shape == (2048, 7168) and up.role == "expert"
    assert up.layers == tuple(range(3, 61)) and up.per_layer == 256 and up.active_per_layer == 8
    assert up.count == 58 * 256
    roles = {row.name: row.role for row in rows}
    assert roles["model.layers.{i}.mlp.gate.e_score_correction_bias"] == "router"
    assert roles["model.layers.{i}.mlp.shared_experts.up_proj.weight"] == "mlp"
    assert roles["model.layers.{i}.self_attn.q_a_layernorm.weight"] == "norm"


@needs_fixtures
def test_tied_embeddings_have_no_lm_head_row() -> None:
    for model_id in ("llama-3.2-1b-instruct", "gemma-2-9b", "gpt2", "qwen2.5-0.5b"):
        spec = spec_of(model_id)
        assert spec.tie_word_embeddings
        assert not any(row.role == "lm_head" for row in inventory(spec)), model_id


@needs_fixtures
def test_gpt_oss_sinks_router_bias_and_expert_biases_have_their_roles() -> None:
    rows = {row.name: row for row in inventory(spec_of("gpt-oss-20b"))}
    assert rows["model.layers.{i}.self_attn.sinks"].role == "other"
    assert rows["model.layers.{i}.self_attn.sinks"].shape == (64,)
    assert rows["model.layers.{i}.mlp.router.bias"].role == "router"
    gate_up = rows["model.layers.{i}.mlp.experts.gate_up_proj[{e}]"]
    assert gate_up.shape == (5760, 2880) and gate_up.per_layer == 32 and gate_up.active_per_layer == 4
    bias = rows["model.layers.{i}.mlp.experts.gate_up_proj_bias[{e}]"]
    assert bias.role == "bias" and bias.active_per_layer == 4
    assert rows["model.layers.{i}.self_attn.o_proj.bias"].role == "bias"


@needs_fixtures
def test_qwen2_has_qkv_bias_rows_but_no_o_proj_bias() -> None:
    names = {row.name for row in inventory(spec_of("qwen2.5-7b"))}
    assert {f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"} <= names
    assert "model.layers.{i}.self_attn.o_proj.bias" not in names


@needs_fixtures
def test_gpt2_has_learned_positions_and_layernorm_biases() -> None:
    rows = {row.name: row for row in inventory(spec_of("gpt2"))}
    assert rows["transformer.wpe.weight"].shape == (1024, 768)
    assert rows["transformer.wpe.weight"].role == "position_embedding"
    assert rows["transformer.h.{i}.ln_1.bias"].role == "bias"
    assert rows["transformer.h.{i}.attn.c_attn.weight"].shape == (2304, 768)  # logical [out, in]


def test_dense_model_has_no_active_per_token_figure() -> None:
    assert parameter_count(LLAMA_8B).active_per_token is None
    assert parameter_count(LLAMA_8B).routed_experts == 0


def test_bf16_weight_bytes_are_two_per_parameter() -> None:
    assert weight_bytes(LLAMA_8B, float_format("bf16")) == 2 * 8_030_261_248
    assert weight_bytes(LLAMA_8B, "fp32") == 4 * 8_030_261_248


def test_int4_g128_asymmetric_quantizes_linear_layers_and_keeps_the_rest_at_bf16() -> None:
    count = parameter_count(LLAMA_8B)
    linear = count.by_role["attention"] + count.by_role["mlp"]
    rest = count.total - linear
    # every linear input dimension divides by 128: 4 bits + (2-byte scale + 0.5-byte zero) / 128 per weight
    assert weight_bytes(LLAMA_8B, int4(128)) == linear * 133 // 256 + rest * 2
    by_role = weight_bytes_by_role(LLAMA_8B, int4(128))
    assert by_role["embedding"] == 2 * count.embedding
    assert by_role["lm_head"] == 2 * count.lm_head
    assert by_role["norm"] == 2 * count.by_role["norm"]
    assert sum(by_role.values()) == weight_bytes(LLAMA_8B, int4(128))


def test_weight_bytes_sum_format_bytes_for_each_row() -> None:
    fmt = int4(64, symmetric=True)
    expected = sum((fmt if row.role in ("attention", "mlp") else float_format("bf16")).bytes_for(row.shape)
                   * row.count for row in inventory(LLAMA_8B))
    assert weight_bytes(LLAMA_8B, fmt) == expected
    assert entries_bytes(inventory(LLAMA_8B), fmt) == expected


def test_a_symmetric_gptq_llama_3_1_8b_counts_the_qzeros_of_its_files() -> None:
    # the figure the plans gave when the API mapping counted the qzeros (eighteenth session), now the format's own
    symmetric = weight_bytes(LLAMA_8B, int4(128, symmetric=True, layout="gptq"))
    assert symmetric == weight_bytes(LLAMA_8B, int4(128, layout="gptq")) == 5_732_835_328
    # beyond nibble's symmetric payload, per layer: the g_idx (4 bytes an input column) and the int32 qzeros
    # ([in / 128, out / 8]) of q, k, v, o, gate, up (in 4096) and down (in 14336)
    outs_4096 = 4096 + 1024 + 1024 + 4096 + 14336 + 14336
    per_layer = 4 * (6 * 4096 + 14336) + 4 * (4096 // 128 * outs_4096 // 8 + 14336 // 128 * 4096 // 8)
    assert symmetric - weight_bytes(LLAMA_8B, int4(128, symmetric=True)) == 32 * per_layer


def test_policy_can_quantize_embeddings_and_keep_norms_in_fp32() -> None:
    policy = QuantizationPolicy(frozenset({"attention", "mlp", "embedding", "lm_head"}), "fp32")
    count = parameter_count(LLAMA_8B)
    by_role = weight_bytes_by_role(LLAMA_8B, int4(128), policy)
    assert by_role["embedding"] == int4(128).bytes_for((128256, 4096))
    assert by_role["norm"] == 4 * count.by_role["norm"]


def test_policy_rejects_unknown_roles_and_formats() -> None:
    with pytest.raises(UnknownName) as role:
        QuantizationPolicy(frozenset({"attention", "convolution"}))
    assert role.value.name == "convolution"
    with pytest.raises(UnknownName):
        QuantizationPolicy(unquantized_format="int8")


@needs_fixtures
def test_group_size_that_does_not_divide_names_the_tensor_and_both_numbers() -> None:
    spec = spec_of("gpt-oss-20b")  # hidden size 2880 = 22.5 x 128
    with pytest.raises(GroupSizeMismatch) as caught:
        weight_bytes(spec, int4(128))
    assert caught.value.in_features == 2880 and caught.value.group_size == 128
    assert caught.value.tensor.startswith("model.layers.{i}.") and caught.value.field == "group_size"
    # a group that divides (64), or padding asked for, plans the same model
    assert weight_bytes(spec, int4(64)) > 0
    padded = int4(128, pad=True)
    assert weight_bytes(spec, padded) > 0
    assert padded.bytes_for((5760, 2880)) == 5760 * 2944 // 2 + 5760 * 23 * 2 + (5760 * 23 + 1) // 2


def test_unknown_weight_format_name_is_refused() -> None:
    with pytest.raises(UnknownName):
        weight_bytes(LLAMA_8B, "int3")
