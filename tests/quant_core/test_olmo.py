"""OLMo 2 (``olmo2``) and Olmo 3 (``olmo3``): planned as transformers builds them and vLLM loads them.

The configs are the published ones (tests/quant_core/data/olmo/, sources in its README.md).  The exact counts come
from transformers itself: the model each config describes, built on the meta device (no memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_by_window, kv_cache_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import read_checkpoint_headers
from tests.quant_core.meta_models import (
    built_on_meta,
    parameters_by_role,
    planned_job,
    saved_by_transformers,
    tensor_names,
)

DATA = Path(__file__).resolve().parent / "data" / "olmo"
GIB = 1 << 30


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


def spec_of(name: str) -> ModelSpec:
    return model_from_hf_config(load(name), name=name)




@pytest.mark.parametrize(("name", "parameters"), [
    # transformers 5.23's Olmo2ForCausalLM / Olmo3ForCausalLM on the meta device, for the published configs
    ("OLMo-2-0425-1B", 1_484_916_736),
    ("OLMo-2-0325-32B", 32_234_279_936),
    ("Olmo-3-1025-7B", 7_298_011_136),
    ("Olmo-3-1125-32B", 32_233_522_176),
])
def test_olmo_counts_what_transformers_builds_role_by_role(name: str, parameters: int) -> None:
    model = built_on_meta(load(name))
    assert sum(parameter.numel() for parameter in model.parameters()) == parameters
    counts = parameter_count(spec_of(name))
    assert counts.total == parameters
    assert {role: size for role, size in counts.by_role.items() if size} == parameters_by_role(model, ())


@pytest.mark.parametrize("name", ["OLMo-2-0425-1B", "OLMo-2-0325-32B", "Olmo-3-1025-7B", "Olmo-3-1125-32B"])
def test_olmo_tensor_names_are_the_checkpoints_own(name: str) -> None:
    # q_norm / k_norm over all heads (not per head as Qwen3's), post_attention_layernorm and
    # post_feedforward_layernorm only: the names and shapes of transformers' state dict, which the checkpoints hold
    spec = spec_of(name)
    model = built_on_meta(load(name))
    assert tensor_names(spec) == set(model.state_dict())
    shapes = {entry.name: entry.shape for entry in inventory(spec)}
    assert shapes["model.layers.{i}.self_attn.q_norm.weight"] == (spec.num_attention_heads * spec.head_dim,)
    assert shapes["model.layers.{i}.self_attn.k_norm.weight"] == (spec.num_kv_heads * spec.head_dim,)
    assert "model.layers.{i}.input_layernorm.weight" not in shapes


def test_olmo_reads_its_layout_and_olmo_3s_sliding_layers() -> None:
    one = spec_of("OLMo-2-0425-1B")
    assert (one.layout, one.qk_norm, one.sliding_layers, one.tie_word_embeddings) == ("olmo2", True, (), False)
    seven = spec_of("Olmo-3-1025-7B")
    assert seven.sliding_window == 4096 and len(seven.sliding_layers) == 24
    assert [i for i in range(32) if i not in seven.sliding_layers] == [3, 7, 11, 15, 19, 23, 27, 31]
    # without layer_types, Olmo3Config's default: every fourth layer full (and convert_hf_to_gguf.py's)
    config = {key: value for key, value in load("Olmo-3-1025-7B").items() if key != "layer_types"}
    assert model_from_hf_config(config).sliding_layers == seven.sliding_layers
    # rope_scaling (YaRN on the full layers) changes no tensor and no cached size
    assert unread_config_keys(load("Olmo-3-1025-7B")) == ()


def test_configs_vllms_olmo_classes_would_build_otherwise_are_refused_naming_the_key() -> None:
    # olmo2.py / olmo3.py: head_dim = hidden_size // num_attention_heads and q/k/v/o built with bias=False
    with pytest.raises(InvalidSpec) as head_dim:
        model_from_hf_config({**load("OLMo-2-0425-1B"), "head_dim": 256})
    assert head_dim.value.field == "head_dim"
    with pytest.raises(InvalidSpec) as bias:
        model_from_hf_config({**load("Olmo-3-1025-7B"), "attention_bias": True})
    assert bias.value.field == "attention_bias"


def test_olmo_3s_sliding_layers_hold_at_most_their_window() -> None:
    # olmo3.py: Attention(per_layer_sliding_window=4096) on the 24 sliding layers; 32 heads of 128 on all 32 layers:
    # 2 x 32 x 128 x 2 = 16,384 bytes a token a layer, 8 full layers hold the whole context
    spec = spec_of("Olmo-3-1025-7B")
    assert kv_bytes_by_window(spec) == ((None, 8 * 16_384), (4096, 24 * 16_384))
    assert kv_cache_bytes(spec, context_length=32768) == 8 * 16_384 * 32768 + 24 * 16_384 * 4096
    assert kv_bytes_by_window(spec_of("OLMo-2-0425-1B")) == ((None, 16 * 2 * 16 * 128 * 2),)
    assert kv_bytes_by_window(spec_of("OLMo-2-0325-32B")) == ((None, 64 * 2 * 8 * 128 * 2),)  # 8 KV heads
    assert kv_bytes_by_window(spec_of("Olmo-3-1125-32B")) == ((None, 16 * 4096), (4096, 48 * 4096))  # 8 KV heads


def test_vllm_groups_olmo_3s_sliding_and_full_layers_as_it_groups_them() -> None:
    # 24 sliding + 8 full layers: vLLM's groups of the smaller count (8; 24 is over 8 x 1.25), 3 sliding groups and
    # one full; a block serves one group, so the pool's tokens are num_blocks // 4 x 16
    spec = spec_of("Olmo-3-1025-7B")
    page = 16 * 16_384
    pool = 10 * GIB
    capacity = VllmProfile().kv_capacity(Stage(spec, 1, 1, (0, 32), True), "bf16", pool, 16, 65536,
                                         BatchLimits(8192, 1024))
    assert capacity.num_blocks == pool // (page * 8)
    assert capacity.tokens == capacity.num_blocks // 4 * 16


def test_vllm_builds_olmos_vocabulary_on_every_stage() -> None:
    # olmo2.py / olmo3.py build embed_tokens, norm and lm_head with no get_pp_group() test: each stage holds them
    for name in ("OLMo-2-0425-1B", "Olmo-3-1025-7B"):
        note = VllmProfile().vocabulary_on_every_stage(spec_of(name))
        assert note is not None and "olmo" in note
    spec = spec_of("Olmo-3-1025-7B")
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, weight_format=float_format("bf16"))).primary.devices
    # each stage's embed_tokens / lm_head: 100,278 tokens padded to 100,288 rows (vocab_parallel_embedding.py
    # pad_vocab_size, a multiple of 64), 2 bytes x 4096 each: 821,567,488 bytes (821,485,568 unpadded before)
    vocabulary = 2 * 100_288 * 4096
    assert [device.unread_weights_bytes for device in staged] == [vocabulary + 2 * 4096, vocabulary]


def test_vllms_tensor_parallel_refusals_for_olmo() -> None:
    # Olmo2Attention: heads % tp == 0, KV heads split or replicated; 32 heads and 32 KV heads
    profile = VllmProfile()
    spec = spec_of("Olmo-3-1025-7B")
    assert all(profile.refusal(spec, tp, 1) is None for tp in (1, 2, 4, 8, 16, 32))
    assert "attention heads" in (profile.refusal(spec, 3, 1) or "")


def test_tensor_parallel_ranks_hold_the_all_head_q_and_k_norms_whole() -> None:
    # olmo2.py all-gathers q and k and applies q_norm / k_norm over every head on each rank: whole on every rank
    spec = spec_of("OLMo-2-0425-1B")
    options = {"weight_format": float_format("bf16")}
    device = get_device("h100-80gb").planning_bytes
    one = plan(spec, Hardware(device, 1), Workload(4096, 1), PlanOptions(**options)).primary.devices[0]
    two = plan(spec, Hardware(device, 2), Workload(4096, 1), PlanOptions(tensor_parallel=2, **options)).primary
    whole = 2 * parameter_count(spec).by_role["norm"]
    assert whole == 2 * (16 * (2048 + 2048 + 2 * 2048) + 2048)
    assert [rank.weights_bytes for rank in two.devices] == [(one.weights_bytes - whole) // 2 + whole] * 2


TINY_OLMO3 = {**load("Olmo-3-1025-7B"), "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 96, "pad_token_id": 0,
              "eos_token_id": 2, "layer_types": None}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-olmo3"), "Olmo3Config", "Olmo3ForCausalLM",
                                 {key: value for key, value in TINY_OLMO3.items() if value is not None})


def test_an_olmo_checkpoint_written_by_transformers_is_planned_from_its_headers(tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config({key: value for key, value in TINY_OLMO3.items() if value is not None})
    headers = read_checkpoint_headers(tiny_checkpoint)
    assert {tensor.name for tensor in headers} == tensor_names(spec)
    _scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total  # fp32


def test_an_olmo_job_quantizes_the_linear_layers_and_passes_the_qk_norms_through(tiny_checkpoint: Path) -> None:
    _checkpoint, _options, _plans, reasons = planned_job(tiny_checkpoint, "gptq")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert quantized == sorted(f"model.layers.{layer}.{module}.weight" for layer in range(4) for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"))
    assert reasons["model.layers.0.self_attn.q_norm.weight"]
    assert reasons["model.layers.3.post_feedforward_layernorm.weight"]


@pytest.mark.parametrize(("preset", "name"), [("olmo-2-0425-1b", "OLMo-2-0425-1B"),
                                              ("olmo-2-0325-32b", "OLMo-2-0325-32B"),
                                              ("olmo-3-1025-7b", "Olmo-3-1025-7B"),
                                              ("olmo-3-1125-32b", "Olmo-3-1125-32B")])
def test_the_olmo_presets_are_their_parsed_configs(preset: str, name: str) -> None:
    info = get_preset_info(preset)
    assert info.spec == model_from_hf_config(load(name), name=preset)
    assert info.quantization_config is None and info.mtp_layers == 0
