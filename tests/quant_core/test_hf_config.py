"""config.json -> ModelSpec: every fixture parses, family traps are read right, bad configs raise typed errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.errors import InvalidSpec, MissingConfigKey, UnknownName, UnsupportedArchitecture
from quant_core.hf_config import architecture_family, model_from_hf_config, model_from_sizes, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.specs import MAX_LAYERS, ModelSpec
from tests.quant_core.meta_models import parameters_by_role

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
MODELS = FIXTURES / "models"
needs_fixtures = pytest.mark.skipif(not MODELS.is_dir(), reason=f"fixtures folder {FIXTURES} is absent")
FIXTURE_IDS = sorted(path.stem for path in MODELS.glob("*.json")) if MODELS.is_dir() else []


def load(model_id: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((MODELS / f"{model_id}.json").read_text())
    return config


def ground_truth() -> dict[str, dict[str, Any]]:
    data = json.loads((FIXTURES / "ground_truth.json").read_text())
    return {entry["name"]: entry for entry in data["models"]}


LLAMA_8B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@needs_fixtures
def test_fixture_folder_holds_the_27_models() -> None:
    assert len(FIXTURE_IDS) >= 27


@needs_fixtures
@pytest.mark.parametrize("model_id", FIXTURE_IDS)
def test_every_fixture_config_parses_and_round_trips_through_to_dict(model_id: str) -> None:
    spec = model_from_hf_config(load(model_id), name=model_id)
    assert spec.name == model_id
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@needs_fixtures
def test_sliding_layers_match_the_ground_truth_for_every_entry() -> None:
    for name, entry in ground_truth().items():
        spec = model_from_hf_config(load(name))
        info = entry["sliding_window_info"]
        if info is None:
            assert spec.sliding_layers == (), name
        else:
            assert spec.sliding_window == info["window"], name
            assert list(spec.sliding_layers) == info["sliding_layers"], name


@needs_fixtures
def test_qwen2_sliding_window_is_ignored_without_use_sliding_window() -> None:
    config = load("qwen2.5-7b")
    assert config["sliding_window"] and config["use_sliding_window"] is False
    assert model_from_hf_config(config).sliding_layers == ()


def test_qwen2_use_sliding_window_applies_from_max_window_layers_on() -> None:
    config = {**LLAMA_8B, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096,
              "max_window_layers": 28}
    spec = model_from_hf_config(config)
    assert spec.sliding_layers == (28, 29, 30, 31)
    assert spec.attention_qkv_bias and not spec.attention_output_bias


@needs_fixtures
def test_mixtral_null_sliding_window_means_full_attention() -> None:
    assert model_from_hf_config(load("mixtral-8x7b-v0.1")).sliding_layers == ()


@needs_fixtures
def test_gemma3_five_local_layers_per_global_layer() -> None:
    spec = model_from_hf_config(load("gemma-3-1b-it"))
    full = [i for i in range(spec.num_layers) if i not in spec.sliding_layers]
    assert full == [5, 11, 17, 23]
    assert spec.sliding_window == 512 and spec.tie_word_embeddings and spec.qk_norm


@needs_fixtures
def test_gemma3_multimodal_config_reads_its_text_config() -> None:
    text = load("gemma-3-1b-it")
    spec = model_from_hf_config({"model_type": "gemma3", "text_config": text}, name="g")
    assert parameter_count(spec).total == parameter_count(model_from_hf_config(text)).total


def test_layer_types_key_overrides_the_family_pattern() -> None:
    config = {**LLAMA_8B, "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 1024,
              "layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"]}
    assert model_from_hf_config(config).sliding_layers == (2,)


@needs_fixtures
def test_deepseek_v3_mtp_layer_is_not_counted_as_transformers_does_not_build_it() -> None:
    # 671,026,419,200: DeepSeek-V3's published main-model size; the MTP module (~14B) is extra.
    spec = model_from_hf_config(load("deepseek-v3"))
    assert parameter_count(spec).total == 671_026_419_200
    assert spec.dense_layers == (0, 1, 2) and spec.router_bias


@needs_fixtures
def test_deepseek_v2_lite_without_query_compression_has_a_plain_q_proj() -> None:
    names = {entry.name for entry in inventory(model_from_hf_config(load("deepseek-v2-lite")))}
    assert "model.layers.{i}.self_attn.q_proj.weight" in names
    assert not any("q_a_proj" in name for name in names)


@needs_fixtures
def test_falcon_7b_is_multi_query_with_one_norm_per_parallel_block() -> None:
    spec = model_from_hf_config(load("falcon-7b"))
    assert spec.num_kv_heads == 1 and spec.norms_per_layer == 1 and spec.norm == "layernorm"
    assert parameter_count(spec).total == 6_921_720_704  # tiiuae/falcon-7b model card: 6.92B


def test_falcon_new_decoder_architecture_reads_num_kv_heads() -> None:
    config = {"model_type": "falcon", "hidden_size": 8192, "num_hidden_layers": 60, "num_attention_heads": 128,
              "num_kv_heads": 8, "new_decoder_architecture": True, "vocab_size": 65024}
    spec = model_from_hf_config(config)
    assert spec.num_kv_heads == 8 and spec.norms_per_layer == 2
    assert parameter_count(spec).total == 41_303_293_952  # tiiuae/falcon-40b


def test_unknown_model_type_with_llama_keys_reads_as_a_generic_decoder() -> None:
    spec = model_from_hf_config({**LLAMA_8B, "model_type": "my_new_llm"})
    assert spec.model_type == "my_new_llm" and spec.layout == "llama"
    assert parameter_count(spec).total == 8_030_261_248


def test_unknown_model_type_without_llama_keys_names_type_and_missing_keys() -> None:
    with pytest.raises(UnsupportedArchitecture) as caught:
        model_from_hf_config({"model_type": "mamba", "hidden_size": 768, "vocab_size": 50280})
    assert caught.value.model_type == "mamba"
    assert caught.value.missing == ["num_hidden_layers", "num_attention_heads", "intermediate_size"]
    assert "mamba" in str(caught.value) and "num_hidden_layers" in str(caught.value)


# zai-org/GLM-4.5's config.json (355B parameters, 32B active, in its model card): DeepSeek-style experts on
# grouped-query attention; glm4_moe has an adapter now, so the refusal is shown on a made-up type with its keys
GLM_4_5 = {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": 5120,
           "intermediate_size": 12288, "moe_intermediate_size": 1536, "n_routed_experts": 160, "n_shared_experts": 1,
           "num_experts_per_tok": 8, "first_k_dense_replace": 3, "num_attention_heads": 96, "num_key_value_heads": 8,
           "head_dim": 128, "num_hidden_layers": 92, "vocab_size": 151552, "max_position_embeddings": 131072,
           "tie_word_embeddings": False, "num_nextn_predict_layers": 1, "use_qk_norm": True, "attention_bias": True}


@pytest.mark.parametrize(("config", "keys"), [
    ({**GLM_4_5, "model_type": "made_up_moe", "architectures": ["MadeUpMoeForCausalLM"]},
     "first_k_dense_replace, moe_intermediate_size, n_routed_experts, n_shared_experts, num_experts_per_tok"),
    # a Qwen2-MoE-like config under a type nibble has no adapter for (qwen2_moe itself has one since): read as a
    # dense llama, its 64 experts and shared expert were left out
    ({**LLAMA_8B, "model_type": "qwen2_moe_like", "architectures": ["Qwen2MoeLikeForCausalLM"], "num_experts": 64,
      "num_experts_per_tok": 8, "moe_intermediate_size": 2560, "shared_expert_intermediate_size": 20480},
     "moe_intermediate_size, num_experts, num_experts_per_tok, shared_expert_intermediate_size"),
])
def test_an_unknown_model_type_whose_config_sizes_what_a_llama_reading_leaves_out_is_refused(
        config: dict[str, Any], keys: str) -> None:
    # GLM-4.5 was read as a dense llama of 31.5 billion parameters and planned "fits" on 8 x H100, with a warning
    with pytest.raises(UnsupportedArchitecture) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "model_type" and f"({keys})" in str(caught.value)
    assert "planning a fraction of its weights" in str(caught.value)
    # a multi-token-prediction layer alone does not change what engines load: still read, as a llama
    spec = model_from_hf_config({**LLAMA_8B, "model_type": "mimo", "num_nextn_predict_layers": 1})
    assert parameter_count(spec).total == 8_030_261_248


def test_glm_4_5_is_no_longer_refused_but_planned_with_its_experts() -> None:
    # the config the refusal above was first written for: read by the glm4_moe adapter, its 160 experts counted
    # (352,797,829,024 = transformers' 352,797,814,784 parameters + 89 x 160 router-bias values; see test_glm4_moe)
    spec = model_from_hf_config(GLM_4_5)
    assert spec.model_type == "glm4_moe" and spec.num_experts == 160 and spec.dense_layers == (0, 1, 2)
    assert parameter_count(spec).total == 352_797_829_024


def test_missing_key_raises_missing_config_key_naming_it() -> None:
    config = dict(LLAMA_8B)
    del config["vocab_size"]
    with pytest.raises(MissingConfigKey) as caught:
        model_from_hf_config(config)
    assert caught.value.key == "vocab_size" and caught.value.field == "vocab_size"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_size", 0),
        ("num_hidden_layers", -1),
        ("vocab_size", 0),
        ("intermediate_size", -4096),
        ("num_hidden_layers", 10**12),
        ("vocab_size", 10**9),
        ("hidden_size", 10**7),
        ("hidden_size", "4096"),
        ("num_hidden_layers", True),
        ("num_attention_heads", 32.5),
        ("num_key_value_heads", [8]),
        ("tie_word_embeddings", "yes"),
    ],
)
def test_bad_sizes_raise_invalid_spec_naming_field_and_value(key: str, value: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**LLAMA_8B, key: value})
    assert caught.value.field == key
    assert caught.value.value == value
    assert key in str(caught.value)


def test_absurd_layer_count_is_refused_before_any_per_layer_work() -> None:
    config = {**LLAMA_8B, "model_type": "qwen3_moe", "num_hidden_layers": 10**12, "num_experts": 8,
              "num_experts_per_tok": 2, "moe_intermediate_size": 64}
    with pytest.raises(InvalidSpec, match="num_hidden_layers") as caught:
        model_from_hf_config(config)
    assert f"maximum of {MAX_LAYERS}" in str(caught.value)


def test_heads_that_do_not_divide_hidden_without_head_dim_raise() -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**LLAMA_8B, "num_attention_heads": 30, "num_key_value_heads": 10})
    assert caught.value.field == "num_attention_heads" and caught.value.value == 30
    assert "hidden_size=4096" in str(caught.value)


def test_explicit_head_dim_allows_heads_that_do_not_divide_hidden() -> None:
    spec = model_from_hf_config({**LLAMA_8B, "num_attention_heads": 30, "num_key_value_heads": 10,
                                 "head_dim": 128})
    assert spec.head_dim == 128


def test_kv_heads_must_divide_query_heads() -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**LLAMA_8B, "num_key_value_heads": 5})
    assert caught.value.field == "num_key_value_heads" and caught.value.value == 5


@pytest.mark.parametrize("config", [None, [], "llama", 42])
def test_non_object_config_raises_invalid_spec(config: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config(config)  # type: ignore[arg-type]
    assert caught.value.field == "config"


def test_non_string_model_type_raises_invalid_spec() -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**LLAMA_8B, "model_type": 7})
    assert caught.value.field == "model_type"


def test_bad_layer_types_entry_is_named() -> None:
    config = {**LLAMA_8B, "model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 4,
              "num_experts_per_tok": 2, "layer_types": ["full_attention", "linear_attention"]}
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "layer_types[1]" and caught.value.value == "linear_attention"


def test_model_from_sizes_equals_the_parsed_llama_config() -> None:
    from_sizes = model_from_sizes(hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8,
                                  intermediate_size=14336, vocab_size=128256)
    assert parameter_count(from_sizes).total == 8_030_261_248
    assert inventory(from_sizes) == inventory(model_from_hf_config(LLAMA_8B))


def test_model_from_sizes_builds_a_moe_with_shared_experts_and_dense_layers() -> None:
    spec = model_from_sizes(hidden_size=1024, num_layers=4, num_attention_heads=8, intermediate_size=4096,
                            vocab_size=1000, num_experts=8, experts_per_token=2, moe_intermediate_size=512,
                            num_shared_experts=1, dense_layers=[0])
    count = parameter_count(spec)
    routed = 3 * 3 * 8 * 1024 * 512  # 3 MoE layers x 3 projections x 8 experts
    assert count.routed_experts == routed
    assert count.active_per_token == count.total - routed + routed // 4


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": "32"}, "num_layers"),
        ({"num_attention_heads": 30}, "num_attention_heads"),
        ({"num_experts": 8, "experts_per_token": 9}, "experts_per_token"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"tie_word_embeddings": 1}, "tie_word_embeddings"),
    ],
)
def test_model_from_sizes_rejects_bad_values_naming_the_field(override: dict[str, Any], field: str) -> None:
    sizes: dict[str, Any] = {"hidden_size": 4096, "num_layers": 32, "num_attention_heads": 32,
                             "intermediate_size": 14336, "vocab_size": 128256, **override}
    with pytest.raises(InvalidSpec) as caught:
        model_from_sizes(**sizes)
    assert caught.value.field == field


def test_from_dict_rejects_unknown_fields_missing_fields_and_bad_layouts() -> None:
    good = model_from_hf_config(LLAMA_8B).to_dict()
    with pytest.raises(InvalidSpec) as unknown:
        ModelSpec.from_dict({**good, "colour": "blue"})
    assert unknown.value.field == "colour"
    partial = dict(good)
    del partial["vocab_size"]
    with pytest.raises(MissingConfigKey):
        ModelSpec.from_dict(partial)
    with pytest.raises(UnknownName):
        ModelSpec.from_dict({**good, "layout": "transformer-xl"})
    with pytest.raises(InvalidSpec) as layers:
        ModelSpec.from_dict({**good, "sliding_window": 16, "sliding_layers": [3, 99]})
    assert layers.value.field == "sliding_layers[1]" and layers.value.value == 99
    with pytest.raises(InvalidSpec):
        ModelSpec.from_dict(["not", "a", "dict"])


BAD_VALUES: list[object] = ["x", True, [], {}, -1, 0, 3, 1e30, 10**13, None, 2.5, [1, "a"]]


@needs_fixtures
@pytest.mark.parametrize("model_id", FIXTURE_IDS)
def test_any_single_bad_or_missing_value_gives_a_typed_error_or_a_usable_spec(model_id: str) -> None:
    """Every key of the real config, replaced by each bad value or removed: never a bare TypeError."""
    from quant_core.errors import NibbleError
    from quant_core.kv_cache import kv_cache_bytes

    config = load(model_id)
    variants = [{**config, key: value} for key in config for value in BAD_VALUES]
    variants += [{k: v for k, v in config.items() if k != key} for key in config]
    for variant in variants:
        try:
            spec = model_from_hf_config(variant)
            parameter_count(spec)
            kv_cache_bytes(spec, "int8", context_length=1000, sequences=3, tensor_parallel=3)
        except NibbleError:
            pass


@pytest.mark.parametrize(("config", "key"), [
    ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 5, "intermediate_size": 11008, "vocab_size": 32000}, "num_key_value_heads"),
    ({"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000, "num_local_experts": 8,
      "num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 1152,
      "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 3, "head_dim": 256,
      "intermediate_size": 6912, "vocab_size": 262144}}, "text_config.num_key_value_heads"),
])
def test_an_inconsistent_config_is_refused_naming_its_own_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        model_from_hf_config(config)
    assert refused.value.field == key
    assert refused.value.detail.startswith(key + "=")


@pytest.mark.parametrize(("extra", "field"), [
    ({"moe_intermediate_size": 1024}, "moe_intermediate_size"),
    ({"experts_per_token": 2}, "experts_per_token"),
    ({"num_shared_experts": 1}, "num_shared_experts"),
    ({"sliding_layers": [0, 2]}, "sliding_layers"),
])
def test_explicit_sizes_that_would_go_unused_are_refused(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        model_from_sizes(hidden_size=4096, num_layers=4, num_attention_heads=32, intermediate_size=11008,
                         vocab_size=32000, **extra)
    assert refused.value.field == field


def test_a_pasted_config_is_named_after_its_model_before_its_family() -> None:
    assert model_from_hf_config({**LLAMA_8B, "_name_or_path": "meta-llama/Llama-3.1-8B"}).name == \
        "meta-llama/Llama-3.1-8B"
    assert model_from_hf_config({**LLAMA_8B, "architectures": ["LlamaForCausalLM"]}).name == "LlamaForCausalLM"
    assert model_from_hf_config(LLAMA_8B).name == "llama"


def test_unread_keys_name_a_misspelt_key_and_leave_out_bookkeeping() -> None:
    config = {**LLAMA_8B, "num_kv_heads": 8, "architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0,
              "torch_dtype": "bfloat16"}
    del config["num_key_value_heads"]
    assert unread_config_keys(config) == ("num_kv_heads",)
    assert model_from_hf_config(config).num_kv_heads == 32  # the misspelling made it MHA: why the note matters
    assert unread_config_keys(LLAMA_8B) == ()


@needs_fixtures
def test_unread_keys_of_the_fixtures_are_the_keys_the_memory_model_deliberately_skips() -> None:
    assert unread_config_keys(load("llama-3.1-70b")) == ()
    assert unread_config_keys(load("deepseek-v3")) == ("num_key_value_heads", "num_nextn_predict_layers")  # MLA; MTP


# google/gemma-3-27b-it's config.json: the language model in text_config, SigLIP in vision_config
GEMMA_3_27B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                    "query_pre_attn_scalar": 168, "sliding_window": 1024, "vocab_size": 262208},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type":
                      "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                      "vision_use_head": False}}


def test_gemma_3s_vision_tower_and_projector_are_counted_as_engines_load_them() -> None:
    # google/medgemma-27b-it (Gemma 3 27B's architecture) lists metadata.total_size 54,864,813,280 bytes of bf16
    # tensors in its model.safetensors.index.json: 27,432,406,640 parameters.  The language model alone is
    # 27,009,346,304; SigLIP (27 layers of 1152, 4096 patch positions) and the 1152 x 5376 projector the rest
    counts = parameter_count(model_from_hf_config(GEMMA_3_27B_IT))
    assert counts.total * 2 == 54_864_813_280
    assert counts.by_role["vision"] == 27_432_406_640 - 27_009_346_304 == 423_060_336
    text_only = parameter_count(model_from_hf_config({**GEMMA_3_27B_IT, "vision_config": None}))
    assert text_only.total == 27_009_346_304 and text_only.by_role["vision"] == 0
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**GEMMA_3_27B_IT, "vision_config": {**GEMMA_3_27B_IT["vision_config"],
                                                                  "patch_size": 0}})
    assert caught.value.field == "vision_config.patch_size"


# Qwen/Qwen2-VL-7B-Instruct's config.json (model_type qwen2_vl, keys abridged): a Qwen2 decoder beside a 32-block
# vision transformer (vision_config: LayerNorms, an fc1/fc2 MLP of mlp_ratio 4, unlike Qwen2.5-VL's), a type nibble
# has no adapter for
QWEN2_VL_7B = {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
               "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
               "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
               "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
               "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                                 "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                                 "temporal_patch_size": 2}}


def test_an_unknown_model_type_with_an_image_encoder_is_refused_not_planned_without_it() -> None:
    # read as a generic decoder, Qwen2.5-VL-7B was planned at 7.6 billion parameters, its vision tower left out
    # (before qwen2_5_vl had an adapter); Qwen2-VL's is as large and would be left out the same way
    with pytest.raises(UnsupportedArchitecture) as caught:
        model_from_hf_config(QWEN2_VL_7B)
    assert caught.value.field == "model_type" and "vision_config" in str(caught.value)
    assert "image or audio encoder" in str(caught.value)


# moonshotai/Kimi-K2-Instruct's config.json (keys that size it; its quantization_config left out): DeepSeek-V3's
# architecture at 384 experts, shipped as model_type "kimi_k2" with architectures ["DeepseekV3ForCausalLM"]
KIMI_K2 = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
           "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 384, "n_shared_experts": 1,
           "num_experts_per_tok": 8, "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_hidden_layers": 61,
           "num_attention_heads": 64, "num_key_value_heads": 64, "q_lora_rank": 1536, "kv_lora_rank": 512,
           "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 163840,
           "max_position_embeddings": 131072, "tie_word_embeddings": False, "topk_method": "noaux_tc",
           "n_group": 1, "topk_group": 1, "num_nextn_predict_layers": 0, "scoring_func": "sigmoid",
           "routed_scaling_factor": 2.827, "norm_topk_prob": True}


def test_an_unknown_model_type_is_read_as_the_family_of_the_architecture_vllm_loads_it_with() -> None:
    # vLLM picks its model class by "architectures": Kimi K2 loads as DeepSeek-V3 (its model card tells other
    # engines to set model_type to deepseek_v3).  It was refused as an unknown type.
    assert architecture_family(KIMI_K2) == "deepseek_v3"
    spec = model_from_hf_config({**KIMI_K2, "_name_or_path": "moonshotai/Kimi-K2-Instruct"})
    assert spec.layout == "deepseek" and spec.num_experts == 384 and spec.name == "moonshotai/Kimi-K2-Instruct"
    # transformers 5.23's DeepseekV3ForCausalLM built for this config on the meta device holds 1,026,408,209,408
    # parameters (test below); the checkpoint adds each MoE layer's router bias (e_score_correction_bias, a buffer
    # in transformers): 60 x 384
    assert parameter_count(spec).total == 1_026_408_209_408 + 60 * 384
    assert architecture_family(LLAMA_8B) is None  # a known model_type is read as itself
    assert architecture_family({**KIMI_K2, "architectures": ["KimiForCausalLM"]}) is None
    assert unread_config_keys(KIMI_K2) == ("num_key_value_heads", "num_nextn_predict_layers")


def test_kimi_k2s_parameter_count_is_what_transformers_builds_for_its_config() -> None:
    import torch
    import transformers
    keys = {key: value for key, value in KIMI_K2.items()
            if key not in ("architectures", "model_type", "topk_method", "scoring_func", "num_nextn_predict_layers")}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.DeepseekV3Config(**keys))
    assert sum(parameter.numel() for parameter in model.parameters()) == 1_026_408_209_408


def test_every_architecture_nibble_reads_by_its_class_is_a_family_it_has_a_reader_for() -> None:
    from quant_core.hf_config import ARCHITECTURE_FAMILIES, KNOWN_MODEL_TYPES
    assert set(ARCHITECTURE_FAMILIES.values()) <= set(KNOWN_MODEL_TYPES)


# --- Llama 4 -------------------------------------------------------------------------------------------------------
LLAMA4_DATA = Path(__file__).resolve().parent / "data" / "llama4"  # sources: data/llama4/README.md


def llama4_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((LLAMA4_DATA / f"{name}.json").read_text())
    return config


@pytest.mark.parametrize(("name", "total", "experts", "dense_layers"), [
    # meta-llama/Llama-4-Scout-17B-16E-Instruct: 108,641,793,536 parameters, the Hugging Face Hub API's
    # safetensors.total for the repo (every tensor bf16: 217,283,587,072 bytes); "17B active, 109B total"
    ("llama-4-scout-17b-16e-instruct", 108_641_793_536, 16, 0),
    # meta-llama/Llama-4-Maverick-17B-128E-Instruct: 401,583,781,376 parameters, the parameter_count Fireworks'
    # billing export shows for llama4-maverick-instruct-basic (docs.fireworks.ai, firectl billing export-metrics);
    # "17B active, 400B total"
    ("llama-4-maverick-17b-128e-instruct", 401_583_781_376, 128, 24),
])
def test_llama4_configs_count_their_published_parameters(name: str, total: int, experts: int,
                                                         dense_layers: int) -> None:
    spec = model_from_hf_config(llama4_config(name))
    counts = parameter_count(spec)
    assert counts.total == total
    assert spec.num_experts == experts and spec.num_shared_experts == 1 and spec.experts_per_token == 1
    assert len(spec.dense_layers) == dense_layers
    # Llama4VisionModel (34 layers of 1408) and the 4096 -> 5120 projector: 871,932,416, the same in both
    assert counts.by_role["vision"] == 871_932_416
    assert counts.active_per_token is not None and 17_000_000_000 < counts.active_per_token < 17_500_000_000


@pytest.mark.parametrize("name", ["llama-4-scout-17b-16e-instruct", "llama-4-maverick-17b-128e-instruct"])
def test_llama4_inventory_equals_the_model_transformers_builds_role_by_role(name: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = llama4_config(name)
    # transformers 5's strict Llama4TextConfig wants a bool where the published files hold 4
    text = {**config["text_config"], "attn_temperature_tuning": True}
    hf_config = transformers.Llama4Config(**{**config, "text_config": text})
    with torch.device("meta"):
        model = transformers.Llama4ForConditionalGeneration(hf_config)
    by_role = parameters_by_role(model, ("model.vision_model.", "model.multi_modal_projector.", "vision_model.",
                                                       "multi_modal_projector."))
    counts = parameter_count(model_from_hf_config(config))
    assert {role: size for role, size in counts.by_role.items() if size} == by_role
    text_only = parameter_count(model_from_hf_config(config["text_config"]))  # llama4_text: Llama4ForCausalLM
    with torch.device("meta"):
        text_model = transformers.AutoModelForCausalLM.from_config(transformers.Llama4TextConfig(**text))
    assert text_only.total == sum(parameter.numel() for parameter in text_model.parameters())
    assert text_only.by_role["vision"] == 0


def test_llama4_tensors_carry_their_checkpoint_names_and_shapes() -> None:
    # the names of meta-llama/Llama-4-Scout-17B-16E-Instruct's model.safetensors.index.json (vLLM's llama4.py
    # load_moe_expert_weights reads the fused "experts.gate_up_proj" [E, hidden, 2 x width] and splits it in two)
    spec = model_from_hf_config(llama4_config("llama-4-scout-17b-16e-instruct"))
    rows = {entry.name: entry for entry in inventory(spec)}
    gate_up = rows["language_model.model.layers.{i}.feed_forward.experts.gate_up_proj[{e}]"]
    assert gate_up.shape == (2 * 8192, 5120) and gate_up.per_layer == 16 and len(gate_up.layers) == 48
    assert rows["language_model.model.layers.{i}.feed_forward.experts.down_proj[{e}]"].shape == (5120, 8192)
    assert rows["language_model.model.layers.{i}.feed_forward.router.weight"].shape == (16, 5120)
    assert rows["language_model.model.layers.{i}.feed_forward.shared_expert.up_proj.weight"].shape == (8192, 5120)
    assert "language_model.lm_head.weight" in rows and "vision_model.positional_embedding_vlm" in rows
    assert rows["vision_model.positional_embedding_vlm"].shape == (24 * 24 + 1, 1408)
    assert rows["multi_modal_projector.linear_1.weight"].shape == (5120, 4096)
    assert not any("q_norm" in name or "k_norm" in name for name in rows)  # use_qk_norm: an L2 norm, no weights
    text = model_from_hf_config(llama4_config("llama-4-scout-17b-16e-instruct")["text_config"])
    assert text.model_type == "llama4_text" and text.vision is None
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= {entry.name for entry in inventory(text)}


def test_maverick_interleaves_dense_and_moe_layers_as_vllm_builds_them() -> None:
    # vllm/model_executor/models/llama4.py: is_moe_layer = (layer_idx + 1) % interleave_moe_layer_step == 0
    config = llama4_config("llama-4-maverick-17b-128e-instruct")
    spec = model_from_hf_config(config)
    assert spec.moe_layers == tuple(range(1, 48, 2)) and spec.dense_layers == tuple(range(0, 48, 2))
    rows = {entry.name: entry for entry in inventory(spec)}
    dense = rows["language_model.model.layers.{i}.feed_forward.gate_proj.weight"]
    assert dense.shape == (16384, 5120) and dense.layers == tuple(range(0, 48, 2))
    listed = {**config, "text_config": {**config["text_config"], "moe_layers": list(range(1, 48, 2))}}
    assert model_from_hf_config(listed) == spec
    other = {**config, "text_config": {**config["text_config"], "moe_layers": list(range(0, 48, 2))}}
    with pytest.raises(InvalidSpec) as caught:  # transformers would build one model, vLLM another
        model_from_hf_config(other)
    assert caught.value.field == "text_config.moe_layers"


def test_llama4_bad_sizes_are_refused_naming_the_key() -> None:
    config = llama4_config("llama-4-scout-17b-16e-instruct")
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "vision_config": {**config["vision_config"], "patch_size": 0}})
    assert caught.value.field == "vision_config.patch_size"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": {**config["text_config"], "num_local_experts": "16"}})
    assert caught.value.field == "text_config.num_local_experts"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": [1]})
    assert caught.value.field == "text_config"


def test_llama4_configs_leave_no_key_unread_and_refuse_a_tie_the_two_configs_disagree_on() -> None:
    config = llama4_config("llama-4-maverick-17b-128e-instruct")
    assert unread_config_keys(config) == () and unread_config_keys(config["text_config"]) == ()
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "tie_word_embeddings": True})
    assert caught.value.field == "tie_word_embeddings"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": {**config["text_config"], "no_rope_layers": [2]}})
    assert caught.value.field == "text_config.no_rope_layers"


def test_a_llama4_spec_with_its_vision_tower_survives_a_json_round_trip() -> None:
    import dataclasses

    spec = model_from_hf_config(llama4_config("llama-4-maverick-17b-128e-instruct"))
    as_json = json.loads(json.dumps(spec.to_dict(), default=dataclasses.asdict))
    assert ModelSpec.from_dict(as_json) == spec
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**as_json, "vision": {**as_json["vision"], "heads": 16}})
    assert caught.value.field == "vision.heads"
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**as_json, "vision": "siglip"})
    assert caught.value.field == "vision"


@pytest.mark.parametrize("name", ["llama-4-scout-17b-16e-instruct", "llama-4-maverick-17b-128e-instruct"])
def test_the_llama4_presets_are_their_parsed_configs(name: str) -> None:
    from quant_core.catalog import get_preset

    assert get_preset(name) == model_from_hf_config(llama4_config(name), name=name)
