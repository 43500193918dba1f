"""SmolLM3 (``smollm3``): planned as transformers builds it and vLLM loads it.

The config is the published one (tests/quant_core/data/smollm3/, source in its README.md).  The exact count comes
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
from quant_core.kv_cache import kv_bytes_by_window
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

DATA = Path(__file__).resolve().parent / "data" / "smollm3"


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / "SmolLM3-3B.json").read_text())
    return config


def spec_of(config: dict[str, Any] | None = None) -> ModelSpec:
    return model_from_hf_config(config or load(), name="SmolLM3-3B")




def test_smollm3_counts_what_transformers_builds_role_by_role() -> None:
    # transformers 5.23's SmolLM3ForCausalLM on the meta device: 3,075,098,624 parameters, the tied lm_head once
    model = built_on_meta(load())
    assert sum(parameter.numel() for parameter in model.parameters()) == 3_075_098_624
    counts = parameter_count(spec_of())
    assert counts.total == 3_075_098_624 and counts.lm_head == 0
    assert {role: size for role, size in counts.by_role.items() if size} == parameters_by_role(model, ())


def test_smollm3_tensor_names_are_the_checkpoints_own() -> None:
    # llama's names; the tied lm_head is the embedding (safetensors checkpoints do not store it twice)
    model = built_on_meta(load())
    assert tensor_names(spec_of()) == {name for name, _ in model.named_parameters()}
    assert tensor_names(spec_of()) == set(model.state_dict()) - {"lm_head.weight"}


def test_smollm3_reads_its_nope_layers_as_changing_no_tensor_or_cache() -> None:
    spec = spec_of()
    assert (spec.layout, spec.tie_word_embeddings, spec.num_kv_heads, spec.head_dim) == ("llama", True, 4, 128)
    assert spec.sliding_layers == () and spec.max_position_embeddings == 65536
    assert kv_bytes_by_window(spec) == ((None, 36 * 2 * 4 * 128 * 2),)  # NoPE layers cache as the others
    assert unread_config_keys(load()) == ()
    with pytest.raises(InvalidSpec) as short:
        spec_of({**load(), "no_rope_layers": [1, 1, 1, 0]})
    assert short.value.field == "no_rope_layers"


def test_smollm3_absent_keys_take_smollm3configs_defaults() -> None:
    config = {key: value for key, value in load().items()
              if key not in ("num_key_value_heads", "tie_word_embeddings", "no_rope_layers", "layer_types")}
    spec = spec_of(config)
    assert (spec.num_kv_heads, spec.tie_word_embeddings) == (4, True)
    assert parameter_count(spec).total == sum(p.numel() for p in built_on_meta(config).parameters())


def test_smollm3_sliding_layers_are_the_nope_layers_transformers_builds_with_a_window() -> None:
    # SmolLM3Config: with use_sliding_window and a sliding_window, layer_types defaults to sliding on the NoPE layers
    config = {key: value for key, value in load().items() if key != "layer_types"}
    config.update(use_sliding_window=True, sliding_window=4096)
    spec = spec_of(config)
    assert spec.sliding_window == 4096 and spec.sliding_layers == tuple(range(3, 36, 4))
    assert spec_of({**load(), "sliding_window": 4096}).sliding_layers == ()  # use_sliding_window false


def test_vllm_holds_smollm3s_vocabulary_on_the_first_stage_and_its_tied_copy_on_the_last() -> None:
    # vLLM serves SmolLM3ForCausalLM through its Transformers backend (registry: _TRANSFORMERS_SUPPORTED_MODELS):
    # embed_tokens on the first rank (and the last, tied), norm and lm_head on the last
    spec = spec_of()
    assert VllmProfile().vocabulary_on_every_stage(spec) is None
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, weight_format=float_format("bf16"))).primary.devices
    layer = sum(2 * entry.elements * entry.per_layer for entry in inventory(spec) if entry.layers)
    embedding = 2 * 128_256 * 2048
    assert [device.weights_bytes for device in staged] == [18 * layer + embedding,
                                                            18 * layer + embedding + 2 * 2048]


TINY_SMOLLM3 = {**load(), "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 96, "layer_types": None,
                "no_rope_layers": None, "eos_token_id": 2, "pad_token_id": 0}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-smollm3"), "SmolLM3Config", "SmolLM3ForCausalLM",
                                 {key: value for key, value in TINY_SMOLLM3.items() if value is not None})


def test_a_smollm3_checkpoint_holds_the_tied_embedding_once_and_a_job_leaves_it_at_16_bits(
        tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config({key: value for key, value in TINY_SMOLLM3.items() if value is not None})
    assert {tensor.name for tensor in read_checkpoint_headers(tiny_checkpoint)} == tensor_names(spec)
    _checkpoint, _options, _plans, reasons = planned_job(tiny_checkpoint, "awq")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert quantized == sorted(f"model.layers.{layer}.{module}.weight" for layer in range(4) for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"))
    assert reasons["model.embed_tokens.weight"]


def test_the_smollm3_preset_is_its_parsed_config() -> None:
    info = get_preset_info("smollm3-3b")
    assert info.spec == model_from_hf_config(load(), name="smollm3-3b")
    assert info.quantization_config is None and info.mtp_layers == 0
