"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) and PhiMoE (Phi-3.5-MoE) planned as their checkpoints hold them
and vLLM loads them.

The configs under data/hf_configs/ are the published config.json files (sources in that folder's README.md).
Independent counts: transformers 5.23 builds each model from its config on the meta device (no memory), and
the sum of its parameters' element counts is what nibble's inventory must total.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from quant_core.catalog import get_device
from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec, MissingConfigKey
from quant_core.formats import float_format, int4
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import DEFAULT_POLICY, inventory, parameter_count, weight_bytes
from quant_core.kv_cache import kv_bytes_per_token, kv_layers
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec
from quant_core.tensorio import read_safetensors
from quant_core.tensorio.checkpoint_headers import HeaderTensor
from tests.checkpoints import write_llama_checkpoint

CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return config


def spec_of(name: str) -> ModelSpec:
    return model_from_hf_config(load(name), name=name)


def transformers_parameter_count(config: dict[str, Any]) -> dict[str, int]:
    """Elements of every parameter of the model transformers builds from `config`, by parameter name (routed
    experts as transformers 5 holds them: one fused 3-D tensor per projection and layer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that a 0-wide shared expert has nothing to initialize
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return {name: parameter.numel() for name, parameter in model.named_parameters()}


# (config, total, active per token): the totals are what transformers 5.23 builds from each config (checked live
# below); the model cards say "14.3B parameters in total and 2.7B activated" (Qwen/Qwen1.5-MoE-A2.7B) and 57B total,
# 14B active (Qwen/Qwen2-57B-A14B).  Qwen/Qwen1.5-MoE-A2.7B-Chat's model.safetensors.index.json has
# metadata.total_size 28,631,568,384 bytes over 4,659 tensors in 8 shards (bf16: 2 x 14,315,784,192), as a public
# test suite quoting that index asserts (found by code search: `assert_eq!(idx["metadata"]["total_size"],
# 28631568384u64)`, with 4,659 weight_map entries).
QWEN2_MOE_TOTALS = [
    ("qwen1.5-moe-a2.7b", 14_315_784_192, 2_689_173_504),
    ("qwen2-57b-a14b", 57_408_658_944, 14_249_270_784),
]


@pytest.mark.parametrize(("name", "total", "active"), QWEN2_MOE_TOTALS)
def test_qwen2_moe_counts_every_parameter_transformers_builds(name: str, total: int, active: int) -> None:
    count = parameter_count(spec_of(name))
    assert count.total == total
    assert count.active_per_token == active
    print(f"{name}: {count.total:,} parameters, {count.active_per_token:,} active per token")


@pytest.mark.parametrize(("name", "total", "_active"), QWEN2_MOE_TOTALS)
def test_transformers_builds_as_many_qwen2_moe_parameters_role_by_role(name: str, total: int, _active: int) -> None:
    built = transformers_parameter_count(load(name))
    count = parameter_count(spec_of(name))
    assert sum(built.values()) == total == count.total
    assert sum(n for key, n in built.items() if ".mlp.experts." in key) == count.routed_experts == \
        count.by_role["expert"]
    assert sum(n for key, n in built.items() if key.endswith((".mlp.gate.weight", ".shared_expert_gate.weight"))) \
        == count.by_role["router"]
    assert sum(n for key, n in built.items() if ".shared_expert." in key) == count.by_role["mlp"]
    assert sum(n for key, n in built.items() if key.endswith(".bias")) == count.by_role["bias"]


def test_qwen1_5_moe_lists_the_tensors_its_checkpoint_holds() -> None:
    # Qwen/Qwen1.5-MoE-A2.7B-Chat's weight_map: 4,659 tensors; per layer q/k/v with bias and o_proj without, the
    # router mlp.gate, 60 experts x gate/up/down_proj, one mlp.shared_expert (gate/up/down_proj, 5,632 wide) and
    # mlp.shared_expert_gate [1, 2048]; no MLP bias.  vLLM's qwen2_moe.py loads exactly these names
    # (make_expert_params_mapping with ckpt_gate_proj_name="gate_proj", shared_expert_gate a torch.nn.Linear).
    rows = {row.name: row for row in inventory(spec_of("qwen1.5-moe-a2.7b"))}
    assert sum(row.count for row in rows.values()) == 4659
    layer = "model.layers.{i}"
    assert rows[f"{layer}.mlp.gate.weight"].shape == (60, 2048) and rows[f"{layer}.mlp.gate.weight"].role == "router"
    gate = rows[f"{layer}.mlp.shared_expert_gate.weight"]
    assert (gate.shape, gate.role, gate.count) == ((1, 2048), "router", 24)
    up = rows[f"{layer}.mlp.experts.{{e}}.up_proj.weight"]
    assert (up.shape, up.role, up.count, up.active_per_layer) == ((1408, 2048), "expert", 24 * 60, 4)
    for projection, shape in (("gate_proj", (5632, 2048)), ("up_proj", (5632, 2048)), ("down_proj", (2048, 5632))):
        shared = rows[f"{layer}.mlp.shared_expert.{projection}.weight"]
        assert (shared.shape, shared.role, shared.count, shared.active_per_layer) == (shape, "mlp", 24, None)
    assert {name for name in rows if name.endswith(".bias")} == {
        f"{layer}.self_attn.{projection}.bias" for projection in ("q_proj", "k_proj", "v_proj")}
    assert unread_config_keys(load("qwen1.5-moe-a2.7b")) == ()


def test_decoder_sparse_step_and_mlp_only_layers_make_dense_layers_of_intermediate_size() -> None:
    # transformers' Qwen2MoeDecoderLayer and vLLM's qwen2_moe.py: MoE when i not in mlp_only_layers and
    # (i + 1) % decoder_sparse_step == 0, else a dense Qwen2MoeMLP of intermediate_size
    config = {**load("qwen1.5-moe-a2.7b"), "decoder_sparse_step": 2, "mlp_only_layers": [1]}
    spec = model_from_hf_config(config)
    assert spec.moe_layers == (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23)
    rows = {row.name: row for row in inventory(spec)}
    assert rows["model.layers.{i}.mlp.up_proj.weight"].layers == tuple(i for i in range(24) if i not in spec.moe_layers)
    assert rows["model.layers.{i}.mlp.up_proj.weight"].shape == (5632, 2048)
    assert rows["model.layers.{i}.mlp.shared_expert_gate.weight"].layers == spec.moe_layers
    assert parameter_count(spec).total == sum(transformers_parameter_count(config).values())


def test_a_qwen2_moe_without_shared_expert_width_keeps_its_gate_and_one_without_experts_is_dense() -> None:
    no_shared = {**load("qwen1.5-moe-a2.7b"), "shared_expert_intermediate_size": 0}
    rows = {row.name for row in inventory(model_from_hf_config(no_shared))}
    assert "model.layers.{i}.mlp.shared_expert_gate.weight" in rows
    assert not any(".shared_expert." in name for name in rows)
    built = sum(transformers_parameter_count(no_shared).values())
    assert parameter_count(model_from_hf_config(no_shared)).total == built
    dense = model_from_hf_config({**load("qwen1.5-moe-a2.7b"), "num_experts": 0})
    assert not dense.is_moe and dense.attention_qkv_bias and not dense.attention_output_bias
    assert parameter_count(dense).total == sum(transformers_parameter_count({**load("qwen1.5-moe-a2.7b"),
                                                                            "num_experts": 0}).values())


@pytest.mark.parametrize(("change", "field"), [
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"shared_expert_intermediate_size": -1}, "shared_expert_intermediate_size"),
    ({"num_experts_per_tok": 61}, "num_experts_per_tok"),
    ({"mlp_only_layers": [24]}, "mlp_only_layers[0]"),
])
def test_qwen2_moe_configs_nibble_cannot_plan_exactly_are_refused_naming_the_key(change: dict[str, Any],
                                                                                 field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**load("qwen1.5-moe-a2.7b"), **change})
    assert caught.value.field == field


def test_a_qwen2_moe_config_without_its_expert_sizes_is_refused_not_read_as_dense() -> None:
    config = {key: value for key, value in load("qwen2-57b-a14b").items() if key != "shared_expert_intermediate_size"}
    with pytest.raises(MissingConfigKey) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "shared_expert_intermediate_size"


@pytest.mark.parametrize(("name", "per_token"), [
    # vLLM's qwen2_moe.py: full attention in every layer, 2 (K and V) x kv heads x head_dim (hidden / heads) x 2 bytes
    ("qwen1.5-moe-a2.7b", 24 * 2 * 16 * 128 * 2),  # 196,608 bytes
    ("qwen2-57b-a14b", 28 * 2 * 4 * 128 * 2),  # 57,344 bytes
])
def test_qwen2_moe_caches_every_layer_in_full(name: str, per_token: int) -> None:
    spec = spec_of(name)
    assert {layer.kind for layer in kv_layers(spec)} == {"full"}
    assert kv_bytes_per_token(spec) == per_token


def test_tensor_parallel_ranks_split_the_experts_and_each_hold_the_routers_and_shared_expert_gate_whole() -> None:
    # qwen2_moe.py: the router (ReplicatedLinear) and shared_expert_gate (torch.nn.Linear) are whole on every rank;
    # the experts (FusedMoE), the shared expert (Merged/RowParallelLinear), attention with its q/k/v biases
    # (QKVParallelLinear, bias=True: column-parallel; 14,319,030,272 bytes a rank when nibble held them whole) and
    # vocabulary are split
    spec = spec_of("qwen1.5-moe-a2.7b")
    options = {"weight_format": float_format("bf16")}
    device = get_device("h100-80gb").planning_bytes
    one = plan(spec, Hardware(device, 1), Workload(4096, 1), PlanOptions(**options)).primary.devices[0]
    two = plan(spec, Hardware(device, 2), Workload(4096, 1), PlanOptions(tensor_parallel=2, **options)).primary
    by_role = parameter_count(spec).by_role
    whole = 2 * (by_role["router"] + by_role["norm"])
    assert whole == 2 * (2_998_272 + 100_352) and by_role["bias"] == 147_456
    assert one.weights_bytes == 2 * 14_315_784_192
    assert [rank.weights_bytes for rank in two.devices] == [(one.weights_bytes - whole) // 2 + whole] * 2


def test_vllm_refuses_more_tensor_parallel_ranks_than_qwen2_moe_experts() -> None:
    # qwen2_moe.py, Qwen2MoeSparseMoeBlock.__init__: raise ValueError when tp_size > config.num_experts
    spec = model_from_hf_config({**load("qwen1.5-moe-a2.7b"), "num_experts": 4})
    reason = VllmProfile().refusal(spec, 8, 1)
    assert reason is not None and "4 experts" in reason
    assert VllmProfile().refusal(spec, 4, 1) is None


def test_vllm_builds_qwen2_moes_vocabulary_on_every_pipeline_stage() -> None:
    # qwen2_moe.py: Qwen2MoeModel.__init__ builds embed_tokens and norm, Qwen2MoeForCausalLM.__init__ the lm_head,
    # with no get_pp_group() test (no PPMissingLayer)
    note = VllmProfile().vocabulary_on_every_stage(spec_of("qwen2-57b-a14b"))
    assert note is not None and "qwen2_moe.py" in note


def test_int4_quantizes_the_experts_and_shared_expert_and_keeps_the_gates_at_16_bits() -> None:
    spec = spec_of("qwen1.5-moe-a2.7b")
    by_role = parameter_count(spec).by_role
    quantized = weight_bytes(spec, int4(128))
    # 2-D tensors of roles attention, mlp (the shared expert) and expert at 4 bits plus an fp16 scale and a packed
    # 4-bit zero per 128 columns; everything else (embedding, lm_head, routers, norms, biases) 2 bytes each
    linear = by_role["attention"] + by_role["mlp"] + by_role["expert"]
    rest = parameter_count(spec).total - linear
    assert quantized == linear // 2 + (linear // 128) * 2 + (linear // 128) // 2 + 2 * rest


def _checkpoint_headers(spec: ModelSpec) -> list[HeaderTensor]:
    """A bf16 checkpoint's headers: one tensor per layer and expert, named as the inventory names them."""
    headers = []
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                headers.append(HeaderTensor(name, "BF16", entry.shape, 2 * entry.elements))
    return headers


@pytest.mark.parametrize("name", ["qwen1.5-moe-a2.7b", "phi-3.5-moe-instruct"])
def test_a_checkpoints_headers_give_each_tensor_the_role_of_its_inventory_row(name: str) -> None:
    # biased linears (q/k/v here) were planned from headers as role 'bias', whole on every tensor-parallel rank
    spec = spec_of(name)
    scheme, summary = checkpoint_scheme(spec, _checkpoint_headers(spec))
    assert summary.unknown == () and summary.bytes == 2 * parameter_count(spec).total
    roles: dict[str, int] = {}
    for row, one in scheme.checkpoint_rows:
        roles[row.role] = roles.get(row.role, 0) + one * row.count
    assert roles == {role: 2 * count for role, count in parameter_count(spec).by_role.items() if count}


# Phi-3.5-MoE: transformers 5.23 builds 41,873,153,344 parameters from the published config (checked live below);
# the model card says "16x3.8B parameters with 6.6B active parameters" and Hugging Face lists 41.9B params
PHI_TOTAL, PHI_ACTIVE = 41_873_153_344, 6_640_999_744


def test_phi_3_5_moe_counts_every_parameter_transformers_builds() -> None:
    count = parameter_count(spec_of("phi-3.5-moe-instruct"))
    assert (count.total, count.active_per_token) == (PHI_TOTAL, PHI_ACTIVE)
    print(f"phi-3.5-moe-instruct: {count.total:,} parameters, {count.active_per_token:,} active per token")
    built = transformers_parameter_count(load("phi-3.5-moe-instruct"))
    assert sum(built.values()) == PHI_TOTAL
    # transformers 5 names the router mlp.router and fuses the experts; the checkpoint keeps block_sparse_moe
    assert sum(n for key, n in built.items() if ".mlp.experts." in key) == count.routed_experts == \
        count.by_role["expert"] == 32 * 16 * 3 * 6400 * 4096
    assert sum(n for key, n in built.items() if key.endswith(".mlp.router.weight")) == count.by_role["router"]
    assert sum(n for key, n in built.items() if key.endswith(".bias")) == count.by_role["bias"]
    assert sum(n for key, n in built.items() if "norm.weight" in key) == count.by_role["norm"]


def test_phi_3_5_moe_lists_the_tensors_its_checkpoint_holds() -> None:
    # the checkpoint keeps Mixtral's names: vLLM's phimoe.py loads block_sparse_moe.gate and
    # block_sparse_moe.experts.{e}.w1/w2/w3 (make_expert_params_mapping with ckpt_gate_proj_name="w1",
    # ckpt_down_proj_name="w2", ckpt_up_proj_name="w3"), q/k/v/o_proj with bias=True, nn.LayerNorm (weight and bias)
    # for input_layernorm, post_attention_layernorm and model.norm, and ParallelLMHead(..., bias=True)
    spec = spec_of("phi-3.5-moe-instruct")
    rows = {row.name: row for row in inventory(spec)}
    layer = "model.layers.{i}"
    assert rows[f"{layer}.block_sparse_moe.gate.weight"].shape == (16, 4096)
    w1 = rows[f"{layer}.block_sparse_moe.experts.{{e}}.w1.weight"]
    assert (w1.shape, w1.role, w1.count, w1.active_per_layer) == ((6400, 4096), "expert", 32 * 16, 2)
    assert rows[f"{layer}.block_sparse_moe.experts.{{e}}.w2.weight"].shape == (4096, 6400)
    assert {name for name in rows if name.endswith(".bias")} == {
        *(f"{layer}.self_attn.{projection}.bias" for projection in ("q_proj", "k_proj", "v_proj", "o_proj")),
        f"{layer}.input_layernorm.bias", f"{layer}.post_attention_layernorm.bias", "model.norm.bias", "lm_head.bias"}
    assert rows["lm_head.bias"].shape == (32064,) and rows["lm_head.weight"].shape == (32064, 4096)
    assert rows[f"{layer}.self_attn.k_proj.bias"].shape == (1024,)
    assert unread_config_keys(load("phi-3.5-moe-instruct")) == ()


def test_phi_3_5_moe_biases_follow_the_config_flags() -> None:
    config = {**load("phi-3.5-moe-instruct"), "attention_bias": False, "lm_head_bias": False}
    names = {row.name for row in inventory(model_from_hf_config(config))}
    assert not any("self_attn" in name and name.endswith(".bias") for name in names) and "lm_head.bias" not in names
    assert parameter_count(model_from_hf_config(config)).total == \
        PHI_TOTAL - 32 * (4096 + 1024 + 1024 + 4096) - 32064


def test_phi_3_5_moes_declared_window_covers_every_layer_and_equals_its_context() -> None:
    # phimoe.py builds Attention without a per-layer window, so vLLM uses the model-level one (config
    # sliding_window, 131,072 = max_position_embeddings): every layer holds min(context, 131,072) tokens
    spec = spec_of("phi-3.5-moe-instruct")
    assert spec.sliding_window == 131072 and spec.sliding_layers == tuple(range(32))
    assert kv_bytes_per_token(spec) == 32 * 2 * 8 * 128 * 2  # 131,072 bytes
    assert kv_bytes_per_token(spec, tensor_parallel=4) == 32 * 2 * 2 * 128 * 2


def test_vllm_builds_phimoes_vocabulary_on_every_stage_and_routes_top_2_only() -> None:
    spec = spec_of("phi-3.5-moe-instruct")
    note = VllmProfile().vocabulary_on_every_stage(spec)
    assert note is not None and "phimoe.py" in note
    assert VllmProfile().refusal(spec, 8, 1) is None
    top_4 = model_from_hf_config({**load("phi-3.5-moe-instruct"), "num_experts_per_tok": 4})
    reason = VllmProfile().refusal(top_4, 1, 1)
    assert reason is not None and "top-2" in reason
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, weight_format=float_format("bf16"))).primary.devices
    vocabulary = 2 * (2 * 32064 * 4096 + 2 * 4096 + 32064)  # embedding, lm_head, final LayerNorm, lm_head bias
    assert [device.unread_weights_bytes for device in staged] == [vocabulary - 2 * 32064 * 4096,
                                                                   2 * 32064 * 4096]


def test_int4_quantizes_phi_3_5_moes_attention_and_experts_and_keeps_the_rest_at_16_bits() -> None:
    spec = spec_of("phi-3.5-moe-instruct")
    by_role = parameter_count(spec).by_role
    linear = by_role["attention"] + by_role["expert"]
    assert weight_bytes(spec, int4(128)) == linear // 2 + (linear // 128) * 2 + (linear // 128) // 2 + \
        2 * (PHI_TOTAL - linear)


TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 96, "max_position_embeddings": 256, "torch_dtype": "bfloat16"}
TINY_CONFIGS = {
    "qwen2_moe": {**TINY, "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                  "intermediate_size": 256, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                  "shared_expert_intermediate_size": 256, "decoder_sparse_step": 1, "use_sliding_window": False},
    "phimoe": {**TINY, "architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe", "intermediate_size": 128,
               "num_local_experts": 4, "num_experts_per_tok": 2, "attention_bias": True, "lm_head_bias": True},
}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_a_checkpoint_job_quantizes_the_tensors_the_int4_plan_quantizes_and_passes_the_gates_through(
        tmp_path: Path, family: str) -> None:
    # a small random checkpoint named as the family's checkpoints are, through a compressed-tensors job with the
    # default include/exclude: it must quantize what vLLM quantizes (attention, experts, Qwen2-MoE's shared expert)
    # and what nibble's INT4 plan prices as INT4, and pass the routers, shared_expert_gate, norms, biases,
    # embedding and lm_head through at 16 bits
    config = TINY_CONFIGS[family]
    spec = model_from_hf_config(config)
    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {}
    expected = set()
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                tensors[name] = (rng.standard_normal(entry.shape, dtype=np.float32) * 0.05).astype(ml_dtypes.bfloat16)
                if DEFAULT_POLICY.quantizes(entry):
                    expected.add(name.removesuffix(".weight"))
    write_llama_checkpoint(tmp_path / "src", shards=2, tensors=tensors)
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    checkpoint = open_checkpoint(tmp_path / "src")
    options = CheckpointOptions()
    plans = plan_checkpoint(checkpoint, options)
    assert {p.tensor.name.removesuffix(".weight") for p in plans if p.quantized} == expected
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == family
    assert set(written["quantization_config"]["config_groups"]["group_0"]["targets"]) == expected
    stored: dict[str, Any] = {}
    for shard in sorted((tmp_path / "out").glob("model-*.safetensors")):
        stored.update(read_safetensors(shard))
    gates = [name for name in tensors if name.endswith((".gate.weight", "shared_expert_gate.weight"))]
    assert len(gates) == (4 if family == "qwen2_moe" else 2)
    for name in [*gates, "lm_head.weight", "model.embed_tokens.weight"]:
        np.testing.assert_array_equal(stored[name], tensors[name])
