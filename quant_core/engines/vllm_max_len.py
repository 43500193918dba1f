"""The longest context vLLM starts a model with: the ``max_model_len`` it derives from the config, per release.

vLLM's ``ModelConfig.get_and_verify_max_len`` (config/model.py, ``_get_and_verify_max_len`` in 0.11, 0.19 and 0.33)
takes the smallest of the config's length keys (``model_max_length`` overriding: `hf_config.VLLM_LENGTH_KEYS`,
read into `ModelSpec.config_max_length`; 2048 when there is none), scales it by the config's RoPE scaling unless the
model is a Gemma 3 (its 128K "is already scaled"), and raises ``ValueError`` ("User-specified max_model_len (N) is
greater than the derived max_model_len ...") for a ``--max-model-len`` above the result, unless the environment sets
``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``.  The releases differ in the scaling:

- 0.11 reads ``rope_scaling`` (one dict): every type but ``su``, ``longrope`` and ``llama3`` multiplies by its
  ``factor`` (1.0 when absent), and ``yarn`` first resets the length to its ``original_max_position_embeddings``;
- 0.19 reads ``rope_parameters`` (``rope_scaling`` under transformers 4, one set or one per layer type): the same,
  over each set, the last set's factor applied once (a null factor taken as 1.0);
- 0.33 (PR #56446, "Align vLLM YaRN with Transformers and stop re-scaling max_model_len") leaves ``yarn``,
  ``deepseek_yarn`` and ``deepseek_llama_scaling`` unscaled: their ``max_position_embeddings`` is already the scaled
  context, as transformers' ``_compute_yarn_parameters`` assumes.

``--disable-sliding-window`` would cap the length at the window (every release); nibble plans no such option, so a
sliding window never caps it.  Pooling models' tokenizer limit and sentence-transformers' ``max_seq_length`` are not
for the generative models nibble plans.
"""

from __future__ import annotations

import math

from quant_core.engines.base import ContextLimit
from quant_core.identity_memo import IdentityMemo
from quant_core.specs import ModelSpec

#: the environment variable that lets vLLM start above the derived length (envs.py), and what vLLM says of it
ALLOW_LONG_ENV = "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
ALLOW_LONG_WARNING = ("vLLM says to use with extreme caution: with RoPE, positions past the derived length lead to "
                      "nan; with learned (absolute) positions, to a CUDA out-of-bounds error")
#: the RoPE types 0.33 no longer scales the length by (config/model.py ``_get_and_verify_max_len``)
_YARN_TYPES_033 = frozenset({"yarn", "deepseek_yarn", "deepseek_llama_scaling"})


def _stated(spec: ModelSpec) -> tuple[int, str] | None:
    """The config's stated length before scaling and its key (None: not known, a spec of explicit sizes)."""
    if spec.config_max_length is not None:
        return spec.config_max_length, spec.config_max_length_key
    if spec.max_position_embeddings is not None:
        return spec.max_position_embeddings, "max_position_embeddings"
    return None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


#: each spec's derived length per release, asked several times a plan (its refusal, its longest context, warnings)
_DERIVED: IdentityMemo[tuple[ContextLimit | None]] = IdentityMemo(256)


def derived_max_model_len(spec: ModelSpec, version: str) -> ContextLimit | None:
    """The longest ``--max-model-len`` vLLM `version` starts `spec` with without ``VLLM_ALLOW_LONG_MAX_MODEL_LEN``:
    its derived ``max_model_len`` (or the config's ``model_max_length`` when that is more: vLLM accepts up to it), or
    None when the spec does not say what its config states (explicit sizes without ``max_position_embeddings``):
    nothing is then refused."""
    known = _DERIVED.get((spec,), version)
    if known is None:
        known = _DERIVED.put((spec,), version, (_derive(spec, version),))
    return known[0]


def _derive(spec: ModelSpec, version: str) -> ContextLimit | None:
    stated = _stated(spec)
    if stated is None:
        return None
    length, key = stated
    derived, factor = float(length), 1.0
    steps = [f"{key} = {length}"]
    scalings = spec.rope_scalings
    if version == "0.11":  # 0.11 reads one rope_scaling dict, never rope_parameters (config/model.py)
        scalings = tuple(scaling for scaling in scalings if scaling.source == "rope_scaling")[:1]
    if scalings and "gemma3" in spec.model_type:
        steps.append("Gemma 3's RoPE scaling not applied (vLLM takes its length as already scaled)")
        scalings = ()
    for scaling in scalings:
        if version == "0.33" and scaling.rope_type in _YARN_TYPES_033:
            steps.append(f"its {scaling.rope_type} RoPE scaling not applied (0.33 takes max_position_embeddings as "
                         "the scaled context, PR #56446)")
            continue
        if scaling.factor is not None:
            factor = scaling.factor
        if scaling.rope_type == "yarn":
            original = scaling.original_max_position_embeddings
            if original is None or (version == "0.11" and not scaling.own_original):  # 0.11: rope_scaling[key]
                return ContextLimit(0, steps[0], (
                    f"vLLM {version} fails to derive the model's length: its yarn RoPE scaling has no "
                    "original_max_position_embeddings (a KeyError in config/model.py _get_and_verify_max_len)"))
            derived = float(original)
            steps.append(f"yarn RoPE scaling from original_max_position_embeddings = {original}")
    if factor != 1.0:
        steps.append(f"times the RoPE factor {_number(factor)}")
    tokens = math.floor(derived * factor)
    accepted = ""
    if key == "model_max_length" and length > tokens:
        tokens, accepted = length, f" (model_max_length = {length} accepted above it)"
    derivation = f"{', '.join(steps)}: {tokens} tokens" if len(steps) > 1 else steps[0]
    return ContextLimit(tokens, f"{derivation}{accepted}; vLLM {version}, config/model.py _get_and_verify_max_len")


def max_model_len_refusal(spec: ModelSpec, version: str, context_length: int) -> str | None:
    """Why vLLM `version` refuses to start `spec` with ``--max-model-len`` `context_length` (the plan's
    ``workload.context_length``), or None: above the derived length it raises ``ValueError`` unless
    ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` is set (config/model.py ``_get_and_verify_max_len``)."""
    limit = derived_max_model_len(spec, version)
    if limit is None:
        return None
    if limit.error is not None:
        return limit.error
    if context_length <= limit.tokens:
        return None
    return (f"vLLM {version} refuses a context (workload.context_length) of {context_length} tokens for this model: "
            f"it derives at most {limit.tokens} tokens from the config ({limit.basis}) and raises \"User-specified "
            f"max_model_len ({context_length}) is greater than the derived max_model_len\". A context of at most "
            f"{limit.tokens} tokens starts; or {ALLOW_LONG_ENV} (runtime.allow_long_max_model_len) lets it start "
            f"longer, which {ALLOW_LONG_WARNING}")
