"""The rotary cos/sin caches vLLM builds with every RoPE model, recomputed from vLLM's own code in each test.

vLLM's ``get_rope`` (model_executor/layers/rotary_embedding/__init__.py) builds one RotaryEmbedding per distinct set
of arguments (``_ROPE_DICT``) and the layers share it; its ``cos_sin_cache`` buffer (base.py,
``register_buffer(..., persistent=False)``) holds ``positions x rotary_dim`` values (cos and sin concatenated on
the last dimension) cast to the model's dtype (``cache.to(dtype)``), on every rank, inside "Model loading took".
Read in the v0.11.0, v0.19.0 and v0.33.0 sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_preset
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_encoders import rotary_cache_bytes, rotary_cache_positions
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import weight_bytes

GIB = 1 << 30
MIB = 1 << 20
BF16 = 2  # bytes: the cache is cast to the model's dtype (base.py: cache = cache.to(dtype))
LOGS = {log["id"]: log for log in json.loads((Path(__file__).parent / "data" / "vllm_logs.json").read_text())["logs"]}
DATA = Path(__file__).parent / "data"


def _config(path: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / path).read_text())
    return config


def test_llama_3_1_8b_holds_one_32_mib_cache_and_vllms_model_loading_figure_is_weights_plus_it() -> None:
    # llama3_rope.py, Llama3RotaryEmbedding: the base class's cache over max_position (131,072), 128 dims
    spec = get_preset("llama-3.1-8b")
    assert rotary_cache_bytes(spec, "0.11") == rotary_cache_bytes(spec, "0.19") == 131_072 * 128 * BF16 == 32 * MIB
    weights = weight_bytes(spec, "bf16")
    # vllm#10517 (vllm_logs.json, vllm-10517-3090-llama8b-20k): "Loading model weights took 14.9888 GB";
    # llm-d-benchmark's vLLM 0.11 and llm-d-planner's vLLM 0.19 runs: "Model loading took 14.99 GiB"
    assert round((weights + rotary_cache_bytes(spec)) / GIB, 4) == LOGS["vllm-10517-3090-llama8b-20k"]["weights_gib"]
    assert round((weights + rotary_cache_bytes(spec)) / GIB, 2) == LOGS["llmd-v0.11-llama-3.1-8b"]["weights_gib"]
    assert round(weights / GIB, 2) == 14.96  # without the cache: the 32 MiB short
    term = VllmProfile("0.11").activation(Stage(spec, 1, 1, (0, 32), True), BatchLimits(8192, 1024))
    assert "131,072 positions x 128 rotary dimensions" in term.basis


@pytest.mark.parametrize(("model", "log_id"), [("qwen3-8b", "llmdp-v0.19-qwen3-8b-tp1"),
                                               ("qwen3-30b-a3b", "llmdp-v0.19-qwen3-30b-a3b-tp1"),
                                               ("gemma-2-9b", "llmdp-v0.19-gemma-2-9b-tp1"),
                                               ("gemma-2-27b", "llmdp-v0.19-gemma-2-27b-tp1")])
def test_vllm_0_19_model_loading_figures_are_weights_plus_the_rotary_cache(model: str, log_id: str) -> None:
    # llm-d-planner's vLLM 0.19.0 sweep (vllm_logs.json): Qwen3 40,960 x 128 (10 MiB), Gemma 2 8,192 x 256 / 128
    spec = get_preset(model)
    assert round((weight_bytes(spec, "bf16") + rotary_cache_bytes(spec, "0.19")) / GIB, 2) == LOGS[log_id][
        "weights_gib"]


def test_deepseek_v3_yarn_cache_is_original_positions_times_the_factor_over_the_rope_head() -> None:
    # deepseek_v2.py turns rope_scaling "yarn" into "deepseek_yarn"; deepseek_scaling_rope.py,
    # DeepseekScalingRotaryEmbedding._compute_cos_sin_cache: torch.arange(original_max_position_embeddings (4,096)
    # x scaling_factor (40)) positions over qk_rope_head_dim (64), cast to bf16 (its fp32 flashinfer path needs the
    # rotary custom op enabled, off under torch.compile's default custom_ops "none")
    spec = get_preset("deepseek-v3")
    assert (spec.rotary_dim, spec.rotary_cache_rows) == (64, (163_840,))
    assert rotary_cache_bytes(spec, "0.19") == 163_840 * 64 * BF16 == 20 * MIB


def test_gemma_3_holds_two_caches_the_local_and_the_global_rope() -> None:
    # gemma3.py, Gemma3Attention: sliding layers get_rope(rope_theta=rope_local_base_freq, no scaling), global ones
    # the config's rope; different arguments, two RotaryEmbedding instances (32,768 x 256 each for Gemma 3 1B)
    spec = get_preset("gemma-3-1b-it")
    assert spec.rotary_cache_rows == (32_768, 32_768)
    assert rotary_cache_bytes(spec) == 2 * 32_768 * 256 * BF16
    # Gemma 3 27B (huggingface.co/google/gemma-3-27b-it config.json): linear factor 8 on the global layers;
    # linear_scaling_rope.py caches max_position x factor positions, the local cache max_position
    config = {"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504, "num_attention_heads": 32,
        "num_hidden_layers": 62, "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 262208,
        "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0, "sliding_window": 1024}}
    big = model_from_hf_config(config)
    assert big.rotary_cache_rows == (1_048_576, 131_072)
    assert rotary_cache_bytes(big) == (1_048_576 + 131_072) * 128 * BF16 == 288 * MIB


def test_phi_3_longrope_holds_its_short_and_long_caches_in_one_buffer() -> None:
    # phi3_long_rope_scaled_rope.py, Phi3LongRoPEScaledRotaryEmbedding: short cache over
    # original_max_position_embeddings, long cache over max_position, each .to(dtype), concatenated into
    # long_short_cos_sin_cache.  Phi-3-mini-128k-instruct's config (96-dim heads, 4,096 and 131,072 positions)
    config = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32064,
              "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.5] * 48}}
    spec = model_from_hf_config(config)
    assert (spec.rotary_dim, spec.rotary_cache_rows) == (96, (4096 + 131_072,))
    assert rotary_cache_bytes(spec) == 135_168 * 96 * BF16
    # Phi-3-mini-4k (no rope_scaling): the base class over its 4,096 positions
    assert rotary_cache_bytes(get_preset("phi-3-mini-4k-instruct")) == 4096 * 96 * BF16


def test_gpt_oss_yarn_cache_is_4096_times_32_positions_of_64_dims_in_float32() -> None:
    # gpt_oss.py passes rope_type "yarn"; yarn_scaling_rope.py, YaRNScalingRotaryEmbedding._compute_cos_sin_cache:
    # torch.arange(original_max_position_embeddings x factor) = 4,096 x 32 positions over head_dim 64.
    # OAIAttention.__init__ asks get_rope(..., dtype=torch.float32) (gpt_oss.py in v0.11, v0.19 and v0.33), so
    # base.py's cache.to(dtype) keeps it at 4 bytes a value
    for model in ("gpt-oss-20b", "gpt-oss-120b"):
        for version in ("0.11", "0.19", "0.33"):
            assert rotary_cache_bytes(get_preset(model), version) == 131_072 * 64 * 4 == 32 * MIB


def test_multimodal_rope_is_four_times_max_position_except_qwen3_vl_from_0_33() -> None:
    # mrope.py, MRotaryEmbedding: cache_max_position_num = max_position_embeddings x 4 in v0.11 and v0.19; in v0.33
    # x positions_factor, which qwen3_vl.py's mrope_positions_factor sets to 1 without video pruning (Qwen3-VL,
    # Qwen3-VL-MoE, Qwen3.5) and Qwen2.5-VL leaves at 4
    qwen2_5 = get_preset("qwen2.5-vl-7b-instruct")
    assert qwen2_5.rotary_mrope and qwen2_5.rotary_cache_rows == (128_000,)
    for version in ("0.11", "0.19", "0.33"):
        assert rotary_cache_bytes(qwen2_5, version) == 4 * 128_000 * 128 * BF16
    qwen3 = get_preset("qwen3-vl-4b-instruct")
    assert rotary_cache_positions(qwen3, "0.19") == (4 * 262_144,)
    assert rotary_cache_bytes(qwen3, "0.19") == 4 * 262_144 * 128 * BF16 == 256 * MIB
    assert rotary_cache_bytes(qwen3, "0.33") == 262_144 * 128 * BF16 == 64 * MIB
    qwen3_6 = get_preset("qwen3.6-35b-a3b")  # Qwen3.5's mrope over a quarter of its 256-dim heads
    assert rotary_cache_bytes(qwen3_6, "0.19") == 4 * 262_144 * 64 * BF16
    assert rotary_cache_bytes(qwen3_6, "0.33") == 262_144 * 64 * BF16


def test_qwen3_next_keeps_its_single_partial_rotary_cache() -> None:
    # qwen3_next.py: get_rope over max_position_embeddings with partial_rotary_factor 0.25 of 256 = 64 dims, no mrope
    spec = get_preset("qwen3-next-80b-a3b-instruct")
    for version in ("0.11", "0.19", "0.33"):
        assert rotary_cache_bytes(spec, version) == 262_144 * 64 * BF16


def test_partial_rotary_glm_and_minimax_and_the_mla_rope_head() -> None:
    # glm4_moe.py: partial_rotary_factor 0.5 of 128 = 64; minimax_m2.py: the config's rotary_dim (64 of 128);
    # GLM-5.1 (deepseek_v2.py, MLA): qk_rope_head_dim 64 over max_position (no rope scaling)
    assert rotary_cache_bytes(get_preset("glm-4.5")) == 131_072 * 64 * BF16
    assert rotary_cache_bytes(get_preset("glm-4-9b-0414")) == 32_768 * 64 * BF16
    assert rotary_cache_bytes(get_preset("minimax-m2.5")) == 196_608 * 64 * BF16
    assert rotary_cache_bytes(get_preset("glm-5.1")) == 202_752 * 64 * BF16


def test_llama_4_scout_builds_its_llama3_rope_over_ten_million_positions() -> None:
    # llama4.py, Llama4Attention: get_rope(max_position=max_position_embeddings (10,485,760), rope_type llama3) on
    # the RoPE layers (NoPE layers build none); Llama3RotaryEmbedding caches every position: 2.5 GiB a rank
    spec = get_preset("llama-4-scout-17b-16e-instruct")
    assert rotary_cache_bytes(spec) == 10_485_760 * 128 * BF16 == 2.5 * GIB
    assert rotary_cache_bytes(get_preset("llama-4-maverick-17b-128e-instruct")) == 1_048_576 * 128 * BF16


def test_olmo_3_holds_a_yarn_cache_for_full_layers_and_a_default_one_for_sliding_layers() -> None:
    # olmo2.py (Olmo3 too): sliding layers get_rope(rope_type "default"), full layers the config's yarn
    spec = get_preset("olmo-3-1025-7b")
    assert spec.rotary_cache_rows == (8192 * 8, 65_536)
    assert rotary_cache_bytes(spec) == 2 * 65_536 * 128 * BF16


def test_models_without_rope_charge_nothing() -> None:
    # gpt2.py: learned positions; falcon.py builds RoPE only without alibi (falcon-7b: alibi false, 8,192 positions,
    # falcon.py's getattr(config, "max_position_embeddings", 8192))
    gpt2 = get_preset("gpt2")
    assert (gpt2.rotary_dim, gpt2.rotary_cache_rows, rotary_cache_bytes(gpt2)) == (0, (), 0)
    assert rotary_cache_bytes(get_preset("falcon-7b")) == 8192 * 64 * BF16
    alibi = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71, "num_hidden_layers": 32,
             "vocab_size": 65024, "alibi": True, "multi_query": True, "parallel_attn": True}
    assert rotary_cache_bytes(model_from_hf_config(alibi)) == 0


def test_a_rope_scaling_factor_that_is_not_a_number_is_refused_naming_it() -> None:
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 4096,
              "rope_scaling": {"rope_type": "linear", "factor": "eight"}}
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "rope_scaling.factor"
    config["rope_scaling"] = {"rope_type": "linear", "factor": 268_435_456}  # 4,096 x 2^28 positions
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config(config)
    assert caught.value.field == "rope_scaling.factor"
