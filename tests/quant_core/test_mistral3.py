"""Mistral 3 (``mistral3``: Mistral Small 3.1 / 3.2): a Mistral language model beside a Pixtral vision tower and
projector, planned as the checkpoints hold it and as vLLM's mistral3.py and pixtral.py load it.  Configs and their
sources: data/mistral3/README.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec, UnsupportedArchitecture
from quant_core.formats import float_format, int4
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count, weight_bytes, weight_bytes_by_role
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan
from quant_core.specs import ModelSpec, PixtralVisionTower
from tests.quant_core.meta_models import parameters_by_role

GIB = 1 << 30
DATA = Path(__file__).resolve().parent / "data" / "mistral3"
NAMES = ["mistral-small-3.1-24b-instruct-2503", "mistral-small-3.2-24b-instruct-2506"]
LOGS = {log["id"]: log for log in json.loads((Path(__file__).parent / "data" / "vllm_logs.json").read_text())["logs"]}

#: keras-hub's published count for both models (keras_hub/src/models/mistral3/mistral3_presets.py, "params":
#: 24011361280 for mistral_small_3.1_24b_instruct_2503_en and mistral_small_3.2_24b_instruct_2506_en)
PUBLISHED_TOTAL = 24_011_361_280
#: the Pixtral tower (patch conv 1024 x 3 x 14 x 14, ln_pre, 24 layers of 16,779,264) and the projector (norm,
#: merging_layer 1024 x 4096, linear_1 5120 x 1024, linear_2 5120 x 5120)
VISION = 602_112 + 1_024 + 24 * 16_779_264 + 1_024 + 4_194_304 + 5_242_880 + 26_214_400


def mistral3_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


@pytest.mark.parametrize("name", NAMES)
def test_mistral_small_3_configs_count_their_published_24_011_361_280_parameters(name: str) -> None:
    spec = model_from_hf_config(mistral3_config(name))
    counts = parameter_count(spec)
    assert counts.total == PUBLISHED_TOTAL
    assert counts.by_role["vision"] == VISION == 438_958_080
    # the language model keeps its own lm_head (text_config's tie_word_embeddings is false)
    assert counts.embedding == counts.lm_head == 131_072 * 5_120
    assert spec.model_type == "mistral3" and spec.layout == "llama" and spec.sliding_layers == ()
    assert isinstance(spec.vision, PixtralVisionTower) and spec.vision.num_attention_heads == 16


def test_mistral3_inventory_equals_the_model_transformers_builds_role_by_role() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = mistral3_config(NAMES[0])
    # transformers 5.23's Mistral3Config ties the lm_head by its own top-level tie_word_embeddings, True by default:
    # the published config has no such key, its text_config says false, and the checkpoint stores
    # language_model.lm_head.weight apart, which vLLM loads (it reads text_config).  Built untied, as published.
    hf_config = transformers.Mistral3Config.from_dict({**config, "tie_word_embeddings": False})
    with torch.device("meta"):
        model = transformers.Mistral3ForConditionalGeneration(hf_config)
    by_role = parameters_by_role(model, ("model.vision_tower.", "model.multi_modal_projector."))
    counts = parameter_count(model_from_hf_config(config))
    assert {role: size for role, size in counts.by_role.items() if size} == by_role
    assert sum(by_role.values()) == PUBLISHED_TOTAL
    with torch.device("meta"):  # transformers 5.23 on the config as published: one matrix fewer (tied)
        tied = transformers.Mistral3ForConditionalGeneration(transformers.Mistral3Config.from_dict(config))
    assert sum(parameter.numel() for parameter in tied.parameters()) == PUBLISHED_TOTAL - 131_072 * 5_120


def test_mistral3_tensors_carry_their_checkpoint_names_and_shapes() -> None:
    # the names Mistral-Small-3.1's checkpoint holds (saved by transformers 4.50: language_model.model.*,
    # language_model.lm_head, vision_tower.*, multi_modal_projector.*; vLLM's mistral3.py hf_to_vllm_mapper maps
    # both these and the later model.language_model.* names)
    rows = {entry.name: entry for entry in inventory(model_from_hf_config(mistral3_config(NAMES[0])))}
    assert rows["language_model.model.embed_tokens.weight"].shape == (131_072, 5_120)
    assert rows["language_model.lm_head.weight"].shape == (131_072, 5_120)
    assert rows["language_model.model.layers.{i}.self_attn.k_proj.weight"].shape == (1_024, 5_120)
    assert rows["language_model.model.layers.{i}.mlp.down_proj.weight"].shape == (5_120, 32_768)
    assert rows["vision_tower.patch_conv.weight"].shape == (1_024, 3, 14, 14)
    gate = rows["vision_tower.transformer.layers.{v}.feed_forward.gate_proj.weight"]
    assert gate.shape == (4_096, 1_024) and gate.per_layer == 24 and gate.layers == ()
    assert rows["vision_tower.transformer.layers.{v}.attention.o_proj.weight"].shape == (1_024, 1_024)
    assert rows["multi_modal_projector.patch_merger.merging_layer.weight"].shape == (1_024, 4 * 1_024)
    assert rows["multi_modal_projector.linear_2.weight"].shape == (5_120, 5_120)
    assert not any(name.endswith(".bias") for name in rows)  # multimodal_projector_bias false; Pixtral has none
    assert not any("position" in name for name in rows)  # 2-D RoPE: no position table


def test_a_projector_with_biases_and_a_wider_merge_adds_exactly_those_tensors() -> None:
    config = mistral3_config(NAMES[0])
    base = parameter_count(model_from_hf_config(config)).total
    biased = model_from_hf_config({**config, "multimodal_projector_bias": True})
    assert parameter_count(biased).total == base + 2 * 5_120  # linear_1.bias and linear_2.bias
    merged = model_from_hf_config({**config, "spatial_merge_size": 3})
    assert parameter_count(merged).total == base + 1_024 * 1_024 * (9 - 4)


def test_vllms_model_loading_figure_for_mistral_small_3_2_is_nibbles_weights_and_the_rotary_cache() -> None:
    # llm-d-benchmark's vLLM 0.11 run (vllm_logs.json, llmd-v0.11-mistral-small-3.2-24b): "Model loading took
    # 44.76 GiB" in bf16 at TP 1 = 24,011,361,280 x 2 bytes (vision tower and projector included) + the language
    # model's rotary cos/sin cache, 131,072 positions x 128 x 2 bytes (as the Qwen3-235B PP 4 run's 0.06 GiB)
    log = LOGS["llmd-v0.11-mistral-small-3.2-24b"]
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    weights = weight_bytes(spec, "bf16")
    assert weights == 2 * PUBLISHED_TOTAL == 48_022_722_560
    rotary_cache = 131_072 * 128 * 2
    assert round((weights + rotary_cache) / GIB, 2) == log["weights_gib"] == 44.76
    assert round((weights - 2 * VISION + rotary_cache) / GIB, 2) == 43.94  # without the vision tower: not vLLM's
    # its KV cache: 40 full-attention layers x 8 heads x 128 x 2 (K and V) x 2 bytes; 1,444 blocks of 128 tokens
    assert kv_bytes_per_token(spec, "bf16") == 163_840
    assert round(log["kv_cache_tokens"] * 163_840 / GIB, 2) == 28.2 == log["available_kv_gib"]


def test_a_mistral3_plan_holds_the_16_bit_vision_tower_and_warns_about_image_inputs() -> None:
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"), Workload(16_000, 1),
                  PlanOptions(weight_format=int4(), engine_version="0.11"))
    vision_bytes = weight_bytes_by_role(spec, int4())["vision"]
    assert vision_bytes == 2 * VISION  # a role nibble's INT4 policy never quantizes
    assert any("Pixtral" in warning and "image" in warning for warning in result.warnings)


def test_vllm_shards_the_pixtral_tower_and_projector_as_pixtral_py_and_mistral3_py_build_them() -> None:
    # at TP 2: q/k/v/o and the gated MLP (QKV/MergedColumn/RowParallelLinear), linear_1 (ColumnParallelLinear) and
    # linear_2 (RowParallelLinear) halve; the patch conv, the norms and the patch merger (an nn.Linear) are whole
    spec = get_preset("mistral-small-3.2-24b-instruct-2506")
    options = PlanOptions(weight_format=float_format("bf16"), engine_version="0.11")
    capacity = get_device("h100-80gb").planning_bytes
    one, two = (plan(spec, Hardware(capacity, count, "h100-80gb"), Workload(16_000, 1), options).primary
                for count in (1, 2))
    sharded = 24 * (4 * 1_024 * 1_024 + 3 * 4_096 * 1_024) + 5_120 * 1_024 + 5_120 * 5_120
    whole = 1_024 * 3 * 14 * 14 + 1_024 + 24 * 2 * 1_024 + 1_024 + 1_024 * 4_096
    assert sharded + whole == VISION
    text = 2 * (PUBLISHED_TOTAL - VISION)
    text_norms = 2 * (40 * 2 * 5_120 + 5_120)  # the language model's norms are whole on every rank too
    assert one.devices[0].weights_bytes == 2 * PUBLISHED_TOTAL
    assert two.devices[0].weights_bytes == (text - text_norms) // 2 + text_norms + sharded + 2 * whole


def test_vllm_refuses_a_tensor_parallel_size_that_splits_the_pixtral_towers_16_heads() -> None:
    # pixtral.py, PixtralHFAttention: divide(config.num_attention_heads, tp_size); the text's 32 heads allow TP 32
    spec = get_preset("mistral-small-3.1-24b-instruct-2503")
    assert engine_tensor_parallel_sizes(spec) == (1, 2, 4, 8, 16)
    reason = VllmProfile("0.11").refusal(spec, 32, 1)
    assert reason is not None and "16 attention heads" in reason and "pixtral.py" in reason
    assert VllmProfile("0.11").refusal(spec, 16, 1) is None


def test_mistral3_configs_leave_no_key_unread_and_bad_ones_are_refused_naming_the_key() -> None:
    config = mistral3_config(NAMES[1])
    assert unread_config_keys(config) == ()
    refused = [
        ({**config, "tie_word_embeddings": True}, "tie_word_embeddings"),
        ({**config, "vision_feature_layer": [-1, -2]}, "vision_feature_layer"),
        ({**config, "vision_feature_layer": -2}, "vision_feature_layer"),
        ({**config, "text_config": {**config["text_config"], "model_type": "qwen2"}}, "text_config.model_type"),
        ({**config, "text_config": {**config["text_config"], "num_key_value_heads": "8"}},
         "text_config.num_key_value_heads"),
        ({**config, "text_config": None}, "text_config"),
        ({**config, "vision_config": {**config["vision_config"], "model_type": "siglip_vision_model"}},
         "vision_config.model_type"),
        ({**config, "vision_config": {**config["vision_config"], "num_attention_heads": 15}},
         "vision_config.num_attention_heads"),
        ({**config, "vision_config": {**config["vision_config"], "patch_size": 0}}, "vision_config.patch_size"),
        ({**config, "multimodal_projector_bias": "no"}, "multimodal_projector_bias"),
    ]
    for bad, field in refused:
        with pytest.raises(InvalidSpec) as caught:
            model_from_hf_config(bad)
        assert caught.value.field == field, bad
    # Mistral3Config's defaults: the default Pixtral tower when vision_config is absent, the published one but for
    # the largest image side (PixtralVisionConfig's image_size 1,024; Mistral Small 3.x ship 1,540)
    default = model_from_hf_config({key: value for key, value in config.items() if key != "vision_config"})
    published = model_from_hf_config(config).vision
    assert isinstance(published, PixtralVisionTower) and published.image_size == 1540
    assert default.vision == dataclasses.replace(published, image_size=1024)


@pytest.mark.parametrize("name", NAMES)
def test_the_mistral_small_3_presets_are_their_configs_and_survive_a_json_round_trip(name: str) -> None:
    spec = model_from_hf_config(mistral3_config(name), name=name)
    assert get_preset(name) == spec
    as_json = json.loads(json.dumps(spec.to_dict(), default=dataclasses.asdict))
    assert ModelSpec.from_dict(as_json) == spec
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**as_json, "vision": {**as_json["vision"], "heads": 16}})
    assert caught.value.field == "vision.heads"


def test_a_ministral3_language_model_is_planned_as_the_mistral_decoder_transformers_and_vllm_build() -> None:
    # Devstral Small 2 / Ministral 3 configs ship text_config model_type ministral3 (YaRN rope parameters, no other
    # tensor); vLLM's registry maps Ministral3ForCausalLM to mistral.py's MistralForCausalLM
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    text = {"model_type": "ministral3", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "vocab_size": 512,
            "tie_word_embeddings": False}
    vision = {"model_type": "pixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "patch_size": 14}
    config = {"model_type": "mistral3", "text_config": text, "vision_config": vision}
    hf_config = transformers.Mistral3Config(text_config=text, vision_config=vision, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.Mistral3ForConditionalGeneration(hf_config)
    assert parameter_count(model_from_hf_config(config)).total == sum(p.numel() for p in model.parameters())
    alone = model_from_hf_config({**text, "architectures": ["Ministral3ForCausalLM"]})
    with torch.device("meta"):
        text_model = transformers.AutoModelForCausalLM.from_config(transformers.Ministral3Config(**text))
    assert alone.model_type == "mistral" and alone.vision is None
    assert parameter_count(alone).total == sum(p.numel() for p in text_model.parameters())


#: an MLA + MoE text_config of the shape Mistral Small 4 (mistral4) and Mistral Large 3 (deepseek_v3) wrap: the keys of
#: transformers 5.23's Mistral4Config / DeepseekV3Config, small values (no published config.json of either release was
#: found; the refusal does not depend on the values)
MLA_MOE_TEXT = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                "intermediate_size": 512, "moe_intermediate_size": 64, "n_routed_experts": 8, "n_shared_experts": 1,
                "num_experts_per_tok": 2, "first_k_dense_replace": 0, "q_lora_rank": 64, "kv_lora_rank": 32,
                "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "vocab_size": 512}


@pytest.mark.parametrize(("text_type", "release", "why"), [
    # vLLM 0.19.0 and 0.33.0 (their wheels from PyPI): transformers_utils/config.py reads params.json, not
    # config.json, in a repo holding consolidated*.safetensors; transformers_utils/configs/mistral.py maps a MoE
    # params.json with shared experts to deepseek_v3 / MistralLarge3ForCausalLM (model_executor/models/
    # mistral_large_3.py) inside PixtralForConditionalGeneration; no file of either wheel names mistral4
    ("deepseek_v3", "Mistral Large 3", "MistralLarge3ForCausalLM"),
    ("mistral4", "Mistral Small 4", "names mistral4"),
])
def test_a_mistral3_wrapper_around_an_mla_moe_language_model_is_refused_by_name_not_planned_as_a_mistral_decoder(
        text_type: str, release: str, why: str) -> None:
    config = {**mistral3_config(NAMES[1]), "text_config": {**MLA_MOE_TEXT, "model_type": text_type}}
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "text_config.model_type"
    assert release in caught.value.reason and why in caught.value.reason
    # the same language model on its own is refused as an unread structure too, never read as a llama
    if text_type == "mistral4":
        with pytest.raises(UnsupportedArchitecture) as unsupported:
            model_from_hf_config({**MLA_MOE_TEXT, "model_type": "mistral4"})
        assert "kv_lora_rank" in str(unsupported.value) and "n_routed_experts" in str(unsupported.value)
