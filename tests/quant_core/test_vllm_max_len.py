"""vLLM's derived max_model_len, per release, and the plan's refusal of a context above it.

Every figure is derived by hand from vLLM's config/model.py ``_get_and_verify_max_len`` (0.11.0; in 0.19.0 and 0.33.0
with the keys read by transformers_utils/model_arch_config_convertor.py ``derive_max_model_len_and_key``):
the smallest of max_position_embeddings, n_positions, max_seq_len, seq_length, model_max_length,
max_target_positions, max_sequence_length, max_seq_length, seq_len (model_max_length overriding), 2048 when none;
then, unless the model type contains "gemma3", for a rope type other than su/longrope/llama3: yarn resets the length
to original_max_position_embeddings (0.11, 0.19), and the length is multiplied by the factor; 0.33 (PR #56446) also
leaves yarn, deepseek_yarn and deepseek_llama_scaling unscaled.  A --max-model-len above it raises ValueError
unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.engines import get_engine
from quant_core.engines.vllm_max_len import derived_max_model_len, max_model_len_refusal
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config, model_from_sizes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec

RELEASES = ("0.11", "0.19", "0.33")
LOGS = Path(__file__).parent / "data" / "vllm_logs.json"
H100 = get_device("h100-80gb").planning_bytes

QWEN3_0_6B: dict[str, Any] = {  # Qwen/Qwen3-0.6B config.json (the sizes; its context keys below)
    "model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
    "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000,
}
#: Qwen's model cards: "add the rope_scaling fields to config.json" for 131,072 tokens with YaRN
QWEN3_YARN = {**QWEN3_0_6B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 32768}}
LLAMA_3_1_8B: dict[str, Any] = {  # meta-llama/Llama-3.1-8B config.json
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def _tokens(spec: ModelSpec, version: str) -> int:
    limit = derived_max_model_len(spec, version)
    assert limit is not None and limit.error is None
    return limit.tokens


@pytest.mark.parametrize("version", RELEASES)
def test_gpt2_is_started_at_its_1024_positions_at_most(version: str) -> None:
    # gpt2's config: n_positions 1024 (transformers maps max_position_embeddings to it), no RoPE
    spec = get_preset("gpt2")
    assert _tokens(spec, version) == 1024
    assert max_model_len_refusal(spec, version, 1024) is None
    refusal = max_model_len_refusal(spec, version, 1025)
    assert refusal is not None and "n_positions = 1024" in refusal and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in refusal


@pytest.mark.parametrize("version", RELEASES)
def test_llama_3_1_is_131072_its_llama3_rope_not_scaled_again(version: str) -> None:
    # rope_type llama3 is in every release's ("su", "longrope", "llama3"): max_position_embeddings 131072 stands
    spec = model_from_hf_config(LLAMA_3_1_8B)
    assert spec.rope_scalings == ()
    assert _tokens(spec, version) == 131_072
    assert _tokens(get_preset("llama-3.1-8b"), version) == 131_072


@pytest.mark.parametrize(("version", "tokens"), [("0.11", 131_072), ("0.19", 131_072), ("0.33", 40_960)])
def test_qwen3_with_yarn_factor_4_over_32768(version: str, tokens: int) -> None:
    # 0.11 and 0.19: yarn resets to original_max_position_embeddings 32768, times factor 4 = 131072 (above the
    # config's 40960); 0.33 (PR #56446) takes max_position_embeddings as already scaled: 40960
    spec = model_from_hf_config(QWEN3_YARN)
    assert _tokens(spec, version) == tokens
    assert (max_model_len_refusal(spec, version, 131_072) is None) is (tokens == 131_072)


def _llama_4096(**rope: Any) -> ModelSpec:
    base = {key: value for key, value in LLAMA_3_1_8B.items() if key != "rope_scaling"}
    return model_from_hf_config({**base, "max_position_embeddings": 4096, **rope})


def test_0_11_reads_rope_scaling_only_never_rope_parameters() -> None:
    # 0.11's _get_and_verify_max_len reads hf_config.rope_scaling alone (no 0.11 file names rope_parameters): a
    # transformers-5 config's linear x4 in rope_parameters does not stretch 4096 there; 0.19 and 0.33 read it
    spec = _llama_4096(rope_parameters={"rope_type": "linear", "factor": 4.0})
    assert [_tokens(spec, version) for version in RELEASES] == [4096, 16_384, 16_384]
    refusal = max_model_len_refusal(spec, "0.11", 16_384)
    assert refusal is not None and "max_position_embeddings = 4096" in refusal
    # and a yarn set in rope_parameters does not cap 0.11 at original x factor below max_position_embeddings
    wide = _llama_4096(max_position_embeddings=262_144, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32_768})
    assert _tokens(wide, "0.11") == 262_144 and _tokens(wide, "0.19") == 131_072


def test_0_11_fails_on_a_yarn_scaling_without_its_own_original_length() -> None:
    # 0.11: rope_scaling["original_max_position_embeddings"] (a KeyError when only the top level has it); 0.19
    # (patch_rope_parameters copies the top-level key in under transformers 4) derives 4096 x 32
    spec = _llama_4096(max_position_embeddings=131_072, original_max_position_embeddings=4096,
                       rope_scaling={"type": "yarn", "factor": 32.0})
    limit = derived_max_model_len(spec, "0.11")
    assert limit is not None and limit.error is not None and "KeyError" in limit.error
    assert _tokens(spec, "0.19") == 131_072


@pytest.mark.parametrize("version", RELEASES)
def test_a_config_without_a_length_key_takes_its_class_default_or_vllms_2048(version: str) -> None:
    no_length = {key: value for key, value in QWEN3_0_6B.items() if key != "max_position_embeddings"}
    # transformers' Qwen3Config defaults max_position_embeddings to 32768
    assert _tokens(model_from_hf_config(no_length), version) == 32_768
    # Falcon-7B's config.json states no length: FalconConfig's default 2048
    assert _tokens(get_preset("falcon-7b"), version) == 2048
    # a model type no configuration class nibble knows reads: vLLM's "Assuming the model's maximum length is 2048"
    unknown = model_from_hf_config({**no_length, "model_type": "my_decoder"})
    assert (unknown.config_max_length, _tokens(unknown, version)) == (2048, 2048)


@pytest.mark.parametrize("version", RELEASES)
def test_a_sliding_window_does_not_cap_the_length(version: str) -> None:
    # Mistral-7B-v0.1: sliding_window 4096, max_position_embeddings 32768; only --disable-sliding-window (which
    # nibble does not plan) caps the length at the window
    spec = get_preset("mistral-7b-v0.1")
    assert spec.sliding_window == 4096
    assert _tokens(spec, version) == 32_768


@pytest.mark.parametrize("version", RELEASES)
def test_gemma3_linear_rope_factor_is_not_applied_but_a_llama_ones_is(version: str) -> None:
    gemma = model_from_hf_config({"model_type": "gemma3_text", "hidden_size": 2560, "num_hidden_layers": 34,
                                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                                  "intermediate_size": 10240, "vocab_size": 262208,
                                  "max_position_embeddings": 131072, "sliding_window": 1024,
                                  "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert _tokens(gemma, version) == 131_072  # "Gemma3's max_model_len (128K) is already scaled by RoPE scaling"
    linear = model_from_hf_config({**LLAMA_3_1_8B, "max_position_embeddings": 4096,
                                   "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert _tokens(linear, version) == 8192  # 4096 x 2 in every release


@pytest.mark.parametrize(("version", "tokens"), [("0.11", 33_554_432), ("0.19", 33_554_432), ("0.33", 1_048_576)])
def test_deepseek_yarn_is_scaled_again_before_0_33(version: str, tokens: int) -> None:
    # vllm#53634's config: max_position_embeddings 1048576, deepseek_yarn factor 32 over 32768.  Before 0.33 only the
    # exact "yarn" resets the length, so 1048576 x 32; 0.33 leaves deepseek_yarn unscaled
    spec = model_from_hf_config({**QWEN3_0_6B, "max_position_embeddings": 1_048_576,
                                 "rope_scaling": {"rope_type": "deepseek_yarn", "factor": 32,
                                                  "original_max_position_embeddings": 32768}})
    assert _tokens(spec, version) == tokens


def test_a_yarn_scaling_without_its_original_length_fails_before_0_33() -> None:
    # rope_scaling["original_max_position_embeddings"]: a KeyError in 0.11 and 0.19; 0.33 reads no such key
    spec = model_from_hf_config({**QWEN3_0_6B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    for version in ("0.11", "0.19"):
        limit = derived_max_model_len(spec, version)
        assert limit is not None and limit.error is not None and "KeyError" in limit.error
        assert max_model_len_refusal(spec, version, 4096) == limit.error
    assert _tokens(spec, "0.33") == 40_960


@pytest.mark.parametrize("version", RELEASES)
def test_model_max_length_overrides_the_smaller_keys(version: str) -> None:
    # "For Command-R / Cohere ... models": model_max_length is taken whatever max_position_embeddings says
    spec = model_from_hf_config({**QWEN3_0_6B, "max_position_embeddings": 8192, "model_max_length": 131072})
    assert (spec.config_max_length, spec.config_max_length_key) == (131_072, "model_max_length")
    assert _tokens(spec, version) == 131_072


def test_a_spec_of_explicit_sizes_without_a_context_is_not_refused() -> None:
    spec = ModelSpec(name="sizes", model_type="llama", layout="llama", hidden_size=1024, num_layers=2,
                     num_attention_heads=8, num_kv_heads=8, head_dim=128, intermediate_size=4096, vocab_size=1000)
    assert derived_max_model_len(spec, "0.19") is None
    assert max_model_len_refusal(spec, "0.19", 1 << 20) is None


def test_the_spec_keeps_the_length_facts_through_its_dict() -> None:
    spec = model_from_hf_config(QWEN3_YARN)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**spec.to_dict(), "rope_scalings": [{"rope_type": "yarn", "scale": 4}]})
    assert caught.value.field == "rope_scalings"


# --- the plan


def test_gpt2_at_32768_tokens_does_not_fit_vllm_refuses_the_context() -> None:
    # before: fits, max_context_length 1024, and only a warning ("exceeds the model's trained context")
    result = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(32768, 1))
    assert not result.fits
    for format_plan in result.comparison.values():
        assert not format_plan.fits
        refusal = format_plan.refusal
        assert refusal is not None and refusal.startswith("vLLM 0.19 refuses a context (workload.context_length) of "
                                                          "32768 tokens")
        assert "n_positions = 1024" in refusal and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in refusal
        assert (format_plan.max_context_length, format_plan.context_limited_by) == (None, "engine")
        assert (format_plan.max_concurrent_sequences, format_plan.min_devices) == (0, None)


def test_qwen3_235b_at_128k_is_refused_above_its_40960() -> None:
    result = plan(get_preset("qwen3-235b-a22b"), Hardware(H100, 8), Workload(131072, 1))
    assert not result.fits
    assert result.refusal is not None and "max_position_embeddings = 40960" in result.refusal


@pytest.mark.parametrize(("version", "longest"), [("0.19", 131_072), ("0.33", 40_960)])
def test_the_longest_context_is_capped_at_the_derived_length(version: str, longest: int) -> None:
    # Qwen3-0.6B with YaRN on one H100 holds far more than 131072 tokens of one sequence: the engine's length caps it
    result = plan(model_from_hf_config(QWEN3_YARN), Hardware(H100, 1), Workload(4096, 1),
                  PlanOptions(engine_version=version))
    assert (result.primary.max_context_length, result.primary.context_limited_by) == (longest, "model")
    assert plan(model_from_hf_config(QWEN3_YARN), Hardware(H100, 1), Workload(131_072, 1),
                PlanOptions(engine_version=version)).fits is (version == "0.19")


def test_allowing_a_long_max_model_len_plans_it_with_vllms_warning() -> None:
    options = PlanOptions(allow_long_max_model_len=True)
    result = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(32768, 1), options)
    assert result.fits and result.refusal is None
    assert result.primary.context_limited_by != "model"
    assert any("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in warning and "out-of-bounds" in warning
               for warning in result.warnings)
    within = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(1024, 1), options)
    assert not any("VLLM_ALLOW_LONG_MAX_MODEL_LEN" in warning for warning in within.warnings)


def test_the_generic_engine_refuses_no_context_and_has_no_allow_option() -> None:
    generic = PlanOptions(engine="generic")
    result = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(32768, 1), generic)
    assert result.fits and result.refusal is None
    assert (result.primary.max_context_length, result.primary.context_limited_by) == (1024, "model")
    with pytest.raises(InvalidSpec) as caught:
        PlanOptions(engine="generic", allow_long_max_model_len=True)
    assert caught.value.field == "runtime.allow_long_max_model_len"


def test_the_trained_context_warning_gives_way_to_the_engines_own_length() -> None:
    # Qwen3 with YaRN at 131,072 tokens on 0.19: vLLM accepts it (40,960 is the unscaled length), so no warning that
    # it "exceeds the model's trained context"; gpt2 past 1024 under vLLM: the refusal says it, not a second warning;
    # the generic engine, which derives no length, keeps the warning
    def trained_warnings(result_warnings: tuple[str, ...] | list[str]) -> list[str]:
        return [warning for warning in result_warnings if "exceeds the model's trained context" in warning]

    yarn = plan(model_from_hf_config(QWEN3_YARN), Hardware(H100, 1), Workload(131_072, 1), PlanOptions())
    assert yarn.fits and trained_warnings(yarn.warnings) == []
    refused = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(32768, 1))
    assert refused.refusal is not None and trained_warnings(refused.warnings) == []
    generic = plan(get_preset("gpt2"), Hardware(H100, 1), Workload(32768, 1), PlanOptions(engine="generic"))
    assert trained_warnings(generic.warnings) == [
        "The requested context (32768 tokens) exceeds the model's trained context (1024 tokens)."]


def test_the_vllm_profile_says_its_context_limit() -> None:
    engine = get_engine("vllm", "0.11")
    assert engine is not None
    limit = engine.context_limit(model_from_hf_config(QWEN3_YARN))
    assert limit is not None and limit.tokens == 131_072 and "original_max_position_embeddings = 32768" in limit.basis
    assert engine.context_refusal(get_preset("gpt2"), 2048, allow_long=True) is None
    assert engine.context_refusal(get_preset("gpt2"), 2048) is not None


def test_no_public_vllm_start_up_log_ran_a_context_the_rule_refuses() -> None:
    # every logged run started (tests/quant_core/data/vllm_logs.json): its max_model_len is within its release's
    # derived length; gpt2-chinese on 0.11 ran at 1024 (n_positions) and Kimi-K2-Thinking at 262,144 (yarn 4096 x 64)
    runs = next(value for value in json.loads(LOGS.read_text()).values() if isinstance(value, list))
    checked = 0
    for run in runs:
        version, length, model = run["profile_version"], run["max_model_len"], run["model"]
        if not version or not length or not model:
            continue
        spec = (model_from_sizes(**run["sizes"]) if model == "sizes" else model_from_hf_config(run["hf_config"])
                if model == "hf_config" else get_preset(model))
        assert max_model_len_refusal(spec, version, length) is None, run["id"]
        checked += 1
    assert checked >= 50
