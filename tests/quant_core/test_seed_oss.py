"""Seed-OSS (``seed_oss``): planned as transformers builds it and vLLM loads it.

The config is the published one (tests/quant_core/data/seed_oss/, source in its README.md).  The exact count comes
from transformers itself: the model the config describes, built on the meta device (no memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan
from quant_core.specs import ModelSpec
from tests.quant_core.meta_models import built_on_meta, parameters_by_role, planned_job, saved_by_transformers

DATA = Path(__file__).resolve().parent / "data" / "seed_oss"
NAME = "Seed-OSS-36B-Instruct"


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{NAME}.json").read_text())
    return config


def spec_of(config: dict[str, Any] | None = None) -> ModelSpec:
    return model_from_hf_config(config or load(), name=NAME)



def test_seed_oss_counts_what_transformers_builds_role_by_role() -> None:
    # transformers 5.23's SeedOssForCausalLM on the meta device: 36,151,104,512 parameters (the "36B")
    model = built_on_meta(load())
    assert sum(parameter.numel() for parameter in model.parameters()) == 36_151_104_512
    counts = parameter_count(spec_of())
    assert counts.total == 36_151_104_512
    by_role = parameters_by_role(model, ())
    by_role["bias"] = sum(p.numel() for n, p in model.named_parameters() if n.endswith("_proj.bias"))
    by_role["attention"] -= by_role["bias"]
    assert {role: size for role, size in counts.by_role.items() if size} == by_role
    assert by_role["bias"] == 64 * (80 + 8 + 8) * 128  # q/k/v biases of head_dim 128, none on o_proj


def test_seed_oss_tensor_names_and_its_head_dim_are_the_checkpoints_own() -> None:
    spec = spec_of()
    assert spec.head_dim == 128 and spec.hidden_size // spec.num_attention_heads == 64
    names = {entry.name.replace("{i}", str(layer)) for entry in inventory(spec) for layer in entry.layers or (-1,)}
    assert names == set(built_on_meta(load()).state_dict())
    shapes = {entry.name: entry.shape for entry in inventory(spec)}
    assert shapes["model.layers.{i}.self_attn.q_proj.weight"] == (80 * 128, 5120)
    assert shapes["model.layers.{i}.self_attn.o_proj.weight"] == (5120, 80 * 128)
    assert "model.layers.{i}.self_attn.o_proj.bias" not in shapes
    assert unread_config_keys(load()) == ()


def test_seed_oss_absent_keys_take_seedossconfigs_defaults() -> None:
    config = {key: value for key, value in load().items()
              if key not in ("num_key_value_heads", "head_dim", "attention_bias", "attention_out_bias", "mlp_bias")}
    spec = spec_of(config)
    assert (spec.num_kv_heads, spec.head_dim, spec.attention_qkv_bias, spec.attention_output_bias) == \
        (8, 128, True, False)
    assert parameter_count(spec).total == sum(p.numel() for p in built_on_meta(config).parameters())


@pytest.mark.parametrize(("key", "value"), [("attention_bias", False), ("attention_out_bias", True),
                                            ("mlp_bias", True)])
def test_biases_vllms_seed_oss_does_not_build_are_refused_naming_the_key(key: str, value: bool) -> None:
    # seed_oss.py: QKVParallelLinear(bias=True), RowParallelLinear o_proj and the MLP with bias=False
    with pytest.raises(InvalidSpec) as refused:
        spec_of({**load(), key: value})
    assert refused.value.field == key


def test_seed_oss_kv_cache_is_eight_heads_of_128_on_every_layer() -> None:
    # seed_oss.py: Attention(80 heads, head_dim 128, 8 KV heads) on all 64 layers: 2 x 64 x 8 x 128 x 2 bytes
    assert kv_bytes_per_token(spec_of()) == 262_144
    assert kv_bytes_per_token(spec_of(), tensor_parallel=8) == 2 * 64 * 1 * 128 * 2


def test_vllms_tensor_parallel_refusals_for_seed_oss() -> None:
    # 80 heads and 8 KV heads allow 1, 2, 4, 8, 16, 40, 80; the MLP's MergedColumnParallelLinear divides 27,648 by
    # the ranks (divide asserts): 40 and 80 refused
    spec = spec_of()
    assert engine_tensor_parallel_sizes(spec) == (1, 2, 4, 8, 16)
    reason = VllmProfile().refusal(spec, 40, 1)
    assert reason is not None and "27648" in reason
    assert "key/value heads" in (VllmProfile().refusal(spec, 5, 1) or "")


def test_vllm_puts_seed_osss_vocabulary_only_on_the_first_and_last_stage() -> None:
    # seed_oss.py: embed_tokens on the first rank (and the last when tied), norm and lm_head on the last
    spec = spec_of()
    assert VllmProfile().vocabulary_on_every_stage(spec) is None
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, weight_format=float_format("bf16"))).primary.devices
    assert [device.unread_weights_bytes for device in staged] == [0, 0]


TINY_SEED_OSS = {**load(), "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": 2, "vocab_size": 96}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-seed-oss"), "SeedOssConfig", "SeedOssForCausalLM",
                                 TINY_SEED_OSS)


def test_a_seed_oss_job_quantizes_the_linear_layers_and_passes_the_qkv_biases_through(tiny_checkpoint: Path) -> None:
    _checkpoint, _options, _plans, reasons = planned_job(tiny_checkpoint, "compressed-tensors")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert quantized == sorted(f"model.layers.{layer}.{module}.weight" for layer in range(2) for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"))
    assert reasons["model.layers.0.self_attn.q_proj.bias"]


def test_the_seed_oss_preset_is_its_parsed_config() -> None:
    info = get_preset_info("seed-oss-36b-instruct")
    assert info.spec == model_from_hf_config(load(), name="seed-oss-36b-instruct")
    assert info.quantization_config is None and info.mtp_layers == 0
