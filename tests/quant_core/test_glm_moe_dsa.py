"""GLM-5.1 (``glm_moe_dsa``): DeepSeek-V3.2's sparse-attention architecture at GLM's sizes, planned as transformers
builds it and vLLM 0.19 loads it (deepseek_v2.py's GlmMoeDsaForCausalLM).

The config is the published one (tests/quant_core/data/glm_moe_dsa/, its source in README.md); exact counts from
transformers 5.23's meta-device model and from the checkpoint's own tensor listing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec, MissingConfigKey
from quant_core.hf_config import architecture_family, model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count, weight_bytes
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme
from quant_core.specs import ModelSpec

DATA = Path(__file__).resolve().parent / "data" / "glm_moe_dsa"
GIB = 1 << 30


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / "GLM-5.1.json").read_text())
    return config


def spec_of(config: dict[str, Any] | None = None) -> ModelSpec:
    return model_from_hf_config(load() if config is None else config, name="GLM-5.1")


def transformers_count(config: dict[str, Any]) -> tuple[int, int, set[str]]:
    """Parameters, router-bias buffer elements and state-dict names of the model transformers builds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    assert type(model).__name__ == "GlmMoeDsaForCausalLM"
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for name, buffer in model.named_buffers() if name.endswith("e_score_correction_bias"))
    return parameters, buffers, set(model.state_dict())


def test_glm_5_1_counts_what_transformers_builds_plus_the_router_bias() -> None:
    # transformers 5.23's GlmMoeDsaForCausalLM on the meta device: 743,911,199,232 parameters and 75 MoE layers x 256
    # router-bias values
    built, buffers, state = transformers_count(load())
    assert (built, buffers) == (743_911_199_232, 75 * 256)
    spec = spec_of()
    assert parameter_count(spec).total == built + buffers == 743_911_218_432
    assert (spec.index_n_heads, spec.index_head_dim, spec.index_topk) == (32, 128, 2048)
    assert spec.dense_layers == (0, 1, 2) and (spec.qk_nope_head_dim, spec.v_head_dim) == (192, 256)
    ours = set()
    for entry in inventory(spec):
        if entry.active_per_layer is None:
            ours.update(entry.name.replace("{i}", str(layer)) for layer in entry.layers or (-1,))
    assert ours == {key for key in state if ".mlp.experts." not in key}


def test_glm_5_1_plus_its_mtp_layer_is_the_published_checkpoint() -> None:
    # The GLM-5.1 checkpoint's listing (282 files): 753,864,139,008 elements in 59,870 tensors.  That is the 78
    # layers nibble plans plus the MTP layer 78: one more MoE layer with its indexer, eh_proj [6144, 12288] and
    # enorm, hnorm, shared_head.norm (this checkpoint's MTP layer has no embed_tokens or shared_head.head of its own)
    spec = spec_of()
    one_layer = sum(entry.elements * entry.per_layer for entry in inventory(spec) if 77 in entry.layers)
    assert parameter_count(spec).total + one_layer + 6144 * 12288 + 3 * 6144 == 753_864_139_008
    # its "1404.18 GB" (GiB) of bf16 tensors, the router bias in fp32: a rounded figure, a sanity bound
    stored = 2 * 753_864_139_008 + 2 * 76 * 256
    assert round(stored / GIB, 2) == 1404.18
    assert weight_bytes(spec, "bf16") == 2 * parameter_count(spec).total


def test_glm_5_1_unread_keys_are_mla_kv_heads_and_the_mtp_layer() -> None:
    # head_dim (64 = qk_rope_head_dim) and qk_head_dim (256 = 192 + 64) are read and checked; the rope layouts
    # (rope_interleave, indexer_rope_interleave) change no tensor
    assert unread_config_keys(load()) == ("num_key_value_heads", "num_nextn_predict_layers")
    for key, value in (("head_dim", 128), ("qk_head_dim", 192)):
        with pytest.raises(InvalidSpec) as caught:
            spec_of({**load(), key: value})
        assert caught.value.field == key


def test_an_unknown_type_of_the_glm_dsa_class_is_planned_with_its_indexer() -> None:
    config = {**load(), "model_type": "glm_moe_dsa_fork"}
    assert architecture_family(config) == "glm_moe_dsa"
    assert parameter_count(model_from_hf_config(config)).total == 743_911_218_432


def test_layers_sharing_another_layers_top_k_are_refused_naming_the_key() -> None:
    # GLM-5.2's indexer_types ("shared" layers run no indexer of their own) and the keys that set them
    for key, value in (("indexer_types", ["full", "full", "full", "shared"] + ["full"] * 74),
                       ("index_topk_freq", 4), ("index_topk_pattern", "FFFS" + "F" * 74)):
        with pytest.raises(InvalidSpec) as caught:
            spec_of({**load(), key: value})
        assert caught.value.field == key
    assert spec_of({**load(), "indexer_types": ["full"] * 78, "index_topk_freq": 1}) == spec_of()


def test_mlp_layer_types_decide_the_dense_layers_as_transformers_reads_them() -> None:
    kinds = ["dense"] * 5 + ["sparse"] * 73
    config = {**load(), "mlp_layer_types": kinds}
    built, buffers, _ = transformers_count(config)
    spec = spec_of(config)
    assert spec.dense_layers == (0, 1, 2, 3, 4) and parameter_count(spec).total == built + buffers
    with pytest.raises(InvalidSpec) as caught:
        spec_of({**load(), "mlp_layer_types": ["dense"] * 3})
    assert caught.value.field == "mlp_layer_types"
    with pytest.raises(MissingConfigKey):
        spec_of({key: value for key, value in load().items() if key != "n_routed_experts"})


def test_glm_5_1_kv_cache_and_vllm_0_19s_capacity() -> None:
    # 78 layers x (the 512 + 64 latent: 1,152 bytes at bf16, 656 in fp8_ds_mla; + the indexer's 132-byte key)
    spec = spec_of()
    assert kv_bytes_per_token(spec, "bf16") == 78 * 1284 == 100_152
    assert kv_bytes_per_token(spec, "fp8") == 78 * 788 == 61_464
    capacity = VllmProfile("0.19").kv_capacity(Stage(spec, 8, 1, (0, 78), True), "fp8", 30 * GIB, 64, 202_752,
                                               BatchLimits(8192, 1024))
    assert capacity.tokens == 30 * GIB // (64 * 61_464) * 64 == 8_188 * 64


@pytest.mark.parametrize("version", ["0.11", "0.33"])
def test_vllm_releases_that_do_not_load_glm_5_or_whose_cache_nibble_does_not_size_are_422(version: str) -> None:
    # v0.11's registry has no GlmMoeDsaForCausalLM; v0.33's indexer cache has its own grouping rules
    with pytest.raises(InvalidSpec) as caught:
        plan(spec_of(), Hardware(141 * GIB, 16), Workload(4096, 1), PlanOptions(engine_version=version))
    assert caught.value.field == "runtime.engine_version"


def test_glm_5_1_gguf_formats_are_refused_naming_the_format() -> None:
    with pytest.raises(InvalidSpec) as caught:
        plan(spec_of(), Hardware(141 * GIB, 16), Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format" and "glm-dsa" in str(caught.value)


def test_the_glm_5_1_preset_is_its_parsed_config_with_one_mtp_layer() -> None:
    from quant_core.catalog import get_preset_info
    info = get_preset_info("glm-5.1")
    assert info.spec == model_from_hf_config(load(), name="glm-5.1")
    assert info.mtp_layers == load()["num_nextn_predict_layers"] == 1
    assert info.quantization_config is None  # the bf16 checkpoint
