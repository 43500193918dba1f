"""Hugging Face ``config.json`` -> `ModelSpec`, one adapter per model family; and specs from sizes.

Each adapter reads the keys its family's transformers configuration class reads, with
that class's defaults for absent keys (``tie_word_embeddings`` is True for Gemma, GPT-2
and Falcon, False elsewhere), and sets the flags the family's modeling code hard-codes
(Qwen2's q/k/v bias, Gemma's four norms per layer, Qwen3's q/k norms, ...).  The
parameter counts that follow from the spec are those of the model transformers builds
from the config: DeepSeek-V3's (and V3.2's) and GLM-4.5's multi-token-prediction layer (``num_nextn_predict_layers``)
is not built by transformers (nor loaded by vLLM's model classes) and is not counted, nor are MiniMax-M2's
(``num_mtp_modules``); for the multimodal ``gemma3`` type
the language model (``text_config``) is read, and its SigLIP vision tower and projector
(``vision_config``) are counted as role ``vision``: engines load them beside it, at 16 bits; the
multimodal ``llama4`` type likewise (``Llama4VisionModel`` and its projector), its language model
being the ``llama4_text`` type's; and the ``mistral3`` type (Mistral Small 3.1/3.2: a ``mistral`` or
``ministral3`` text_config beside a Pixtral tower and projector); ``qwen2_5_vl`` (a Qwen2 language model, its vision
transformer and merger), ``qwen3_vl`` (a Qwen3 language model, its vision transformer, merger and deepstack mergers)
and ``qwen3_vl_moe`` (the same tower beside a Qwen3-MoE language model).

Every size is checked as it is read: a missing key raises `MissingConfigKey`, a value of
the wrong type (a string, a bool), zero, negative or absurd (over the maximums in
`specs`) raises `InvalidSpec` naming the config key and the value, before anything is
allocated per layer.  An unknown ``model_type`` with the standard llama-style keys is
read as a generic llama-style decoder; without them, `UnsupportedArchitecture` names
the type and the missing keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from quant_core.errors import InvalidSpec, MissingConfigKey, UnsupportedArchitecture
from quant_core.specs import (
    MAX_EXPERTS,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN_SIZE,
    MAX_INTERMEDIATE_SIZE,
    MAX_LAYERS,
    MAX_NAME_CHARS,
    MAX_POSITIONS,
    MAX_RANK,
    MAX_ROTARY_ROWS,
    MAX_VOCAB_SIZE,
    GatedDeltaNet,
    Llama4VisionTower,
    ModelSpec,
    PixtralVisionTower,
    Qwen3VisionTower,
    QwenVisionTower,
    RopeScaling,
    VisionTower,
    check_int,
)

GENERIC_KEYS: tuple[str, ...] = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


class _Reader:
    """Typed access to one config dict; errors name the config key and its value."""

    def __init__(self, config: Mapping[str, object], model_type: str) -> None:
        self.config = config
        self.model_type = model_type

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def required_int(self, key: str, maximum: int, *aliases: str, minimum: int = 1) -> int:
        for name in (key, *aliases):
            if name in self.config:
                return check_int(name, self.config[name], minimum, maximum)
        raise MissingConfigKey(key, self.model_type)

    def optional_int(self, key: str, default: int | None, maximum: int, *aliases: str,
                     minimum: int = 1) -> int | None:
        for name in (key, *aliases):
            value = self.config.get(name)
            if value is not None:
                return check_int(name, value, minimum, maximum)
        return default

    def int_or(self, key: str, default: int, maximum: int, *aliases: str, minimum: int = 1) -> int:
        value = self.optional_int(key, default, maximum, *aliases, minimum=minimum)
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidSpec(key, value, "must be true or false")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidSpec(key, value, "must be a string")
        return value

    def int_list(self, key: str, num_layers: int) -> list[int]:
        value = self.config.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > num_layers:
            raise InvalidSpec(key, value if not isinstance(value, list) else f"{len(value)} entries",
                              f"must be a list of at most num_hidden_layers={num_layers} layer indices")
        return [check_int(f"{key}[{i}]", item, 0, num_layers - 1) for i, item in enumerate(value)]

    def head_dim(self, hidden_size: int, num_heads: int, key: str = "head_dim") -> int:
        """`head_dim` from the config, else hidden_size / num_heads, which must then divide."""
        explicit = self.optional_int(key, None, MAX_HEAD_DIM)
        if explicit is not None:
            return explicit
        if hidden_size % num_heads:
            raise InvalidSpec("num_attention_heads", num_heads,
                              f"does not divide hidden_size={hidden_size} and no head_dim is given")
        return hidden_size // num_heads

    def layer_types(self, num_layers: int) -> tuple[int, ...] | None:
        """Sliding layers from an explicit ``layer_types`` list, or None when the key is absent."""
        value = self.config.get("layer_types")
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != num_layers:
            shown = value if not isinstance(value, list) else f"{len(value)} entries"
            raise InvalidSpec("layer_types", shown, f"must list one type per layer ({num_layers})")
        sliding = []
        for i, kind in enumerate(value):
            if kind == "sliding_attention":
                sliding.append(i)
            elif kind != "full_attention":
                raise InvalidSpec(f"layer_types[{i}]", kind,
                                  "must be 'full_attention' or 'sliding_attention'")
        return tuple(sliding)


def _name(config: Mapping[str, object], model_type: str, name: str | None) -> str:
    """`name`, else ``_name_or_path``, else the first of ``architectures`` (``LlamaForCausalLM``), else the type:
    a pasted config is named after the model it describes before the family it belongs to."""
    if name:
        return name
    path = config.get("_name_or_path")
    if isinstance(path, str) and path:
        return _short_name("_name_or_path", path)
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str) and architectures[0]:
        return _short_name("architectures[0]", architectures[0])
    return model_type


def _short_name(field: str, value: str) -> str:
    """`value` as the model's name, refused where the config holds it when it is too long to be one."""
    if len(value) > MAX_NAME_CHARS:
        raise InvalidSpec(field, f"{len(value)} characters", f"is longer than {MAX_NAME_CHARS} characters")
    return value


def _attention_sizes(r: _Reader) -> dict[str, Any]:
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    kv_heads = r.int_or("num_key_value_heads", heads, MAX_HEADS)
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": r.head_dim(hidden, heads),
        "intermediate_size": r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        "vocab_size": r.required_int("vocab_size", MAX_VOCAB_SIZE),
    }


def _positions(r: _Reader) -> int | None:
    return r.optional_int("max_position_embeddings", None, MAX_POSITIONS)


def _window_all_layers(r: _Reader, num_layers: int) -> tuple[int | None, tuple[int, ...]]:
    """Mistral/Mixtral/Phi-3: a declared ``sliding_window`` applies to every layer."""
    window = r.optional_int("sliding_window", None, MAX_POSITIONS)
    return window, tuple(range(num_layers)) if window else ()


def _window_qwen(r: _Reader, num_layers: int) -> tuple[int | None, tuple[int, ...]]:
    """Qwen2/3: sliding only with ``use_sliding_window``, on layers >= ``max_window_layers``."""
    explicit = r.layer_types(num_layers)
    window = r.optional_int("sliding_window", None, MAX_POSITIONS)
    if explicit is not None:
        return (window, explicit) if explicit and window else (None, ())
    if not r.flag("use_sliding_window", False) or window is None:
        return None, ()
    first = r.int_or("max_window_layers", num_layers, MAX_LAYERS, minimum=0)
    layers = tuple(range(min(first, num_layers), num_layers))
    return (window, layers) if layers else (None, ())


def _window_pattern(r: _Reader, num_layers: int, default_window: int,
                    is_sliding: Callable[[int], bool]) -> tuple[int | None, tuple[int, ...]]:
    """Gemma/gpt-oss: ``layer_types`` when given, else the family's fixed interleaving."""
    window = r.int_or("sliding_window", default_window, MAX_POSITIONS)
    explicit = r.layer_types(num_layers)
    layers = explicit if explicit is not None else tuple(i for i in range(num_layers) if is_sliding(i))
    return (window, layers) if layers else (None, ())


def _llama_family(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma2, gemma3_text and generic decoders."""
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    positions = _positions(r)
    layers = sizes["num_layers"]
    tie_default = model_type in ("gemma2", "gemma3_text", "gemma3")
    attention_bias = r.flag("attention_bias", False)
    extra: dict[str, Any] = {
        "attention_qkv_bias": attention_bias,
        "attention_output_bias": attention_bias,
        "mlp_bias": r.flag("mlp_bias", False),
    }
    window: int | None = None
    sliding: tuple[int, ...] = ()
    layout = "llama"
    if model_type in ("mistral", "mixtral"):
        window, sliding = _window_all_layers(r, layers)
        extra["attention_qkv_bias"] = extra["attention_output_bias"] = extra["mlp_bias"] = False
    elif model_type in ("qwen2", "qwen3", "qwen3_moe"):
        window, sliding = _window_qwen(r, layers)
        if model_type == "qwen2":  # Qwen2Attention: q/k/v with bias, o_proj without; no config flag
            extra.update(attention_qkv_bias=True, attention_output_bias=False)
        else:
            extra["qk_norm"] = True
        extra["mlp_bias"] = False
    elif model_type == "gemma2":
        window, sliding = _window_pattern(r, layers, 4096, lambda i: (i + 1) % 2 == 1)
        extra.update(norms_per_layer=4, mlp_bias=False)
    elif model_type in ("gemma3_text", "gemma3"):
        pattern = r.int_or("sliding_window_pattern", 6, MAX_LAYERS)
        window, sliding = _window_pattern(r, layers, 4096, lambda i: (i + 1) % pattern != 0)
        extra.update(norms_per_layer=4, qk_norm=True, mlp_bias=False)
    elif model_type != "llama":  # generic decoder: only an explicit layer_types list makes sliding layers
        explicit = r.layer_types(layers)
        window = r.optional_int("sliding_window", None, MAX_POSITIONS)
        sliding = explicit if explicit and window else ()
        window = window if sliding else None

    if model_type == "mixtral":
        layout = "mixtral"
        extra.update(
            num_experts=r.required_int("num_local_experts", MAX_EXPERTS),
            experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS),
            moe_intermediate_size=sizes["intermediate_size"],
        )
    elif model_type == "qwen3_moe":
        experts = r.int_or("num_experts", 0, MAX_EXPERTS, minimum=0)
        if experts:
            step = r.int_or("decoder_sparse_step", 1, MAX_LAYERS)
            mlp_only = set(r.int_list("mlp_only_layers", layers))
            extra.update(
                num_experts=experts,
                experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS),
                moe_intermediate_size=r.required_int("moe_intermediate_size", MAX_INTERMEDIATE_SIZE),
                dense_layers=tuple(i for i in range(layers) if i in mlp_only or (i + 1) % step),
            )
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout=layout,
        tie_word_embeddings=r.flag("tie_word_embeddings", tie_default),
        max_position_embeddings=positions,
        sliding_window=window,
        sliding_layers=sliding,
        **sizes,
        **extra,
    )


def _phi3(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Phi-3: fused qkv_proj and gate_up_proj, no biases; a declared window covers every layer."""
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    positions = _positions(r)
    window, sliding = _window_all_layers(r, sizes["num_layers"])
    return ModelSpec(
        name=_name(config, model_type, name), model_type=model_type, layout="phi3",
        tie_word_embeddings=r.flag("tie_word_embeddings", False), max_position_embeddings=positions,
        sliding_window=window, sliding_layers=sliding, **sizes,
    )


def _deepseek(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """DeepSeek-V2/V3: MLA attention, ``first_k_dense_replace`` dense layers, routed + shared experts.

    A layer is MoE when ``i >= first_k_dense_replace and i % moe_layer_freq == 0`` (as
    transformers' DeepseekV2DecoderLayer).  V3 (and ``topk_method: noaux_tc``) routers carry
    an ``e_score_correction_bias`` of one value per expert.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    nope = r.required_int("qk_nope_head_dim", MAX_HEAD_DIM)
    rope = r.required_int("qk_rope_head_dim", MAX_HEAD_DIM)
    experts = r.int_or("n_routed_experts", 0, MAX_EXPERTS, minimum=0)
    moe: dict[str, Any] = {}
    if experts:
        first_dense = r.int_or("first_k_dense_replace", 0, MAX_LAYERS, minimum=0)
        frequency = r.int_or("moe_layer_freq", 1, MAX_LAYERS)
        topk_method = r.string("topk_method",
                               "noaux_tc" if model_type in ("deepseek_v3", "deepseek_v32", "glm_moe_dsa") else "greedy")
        moe = {
            "num_experts": experts,
            "experts_per_token": r.required_int("num_experts_per_tok", MAX_EXPERTS),
            "moe_intermediate_size": r.required_int("moe_intermediate_size", MAX_INTERMEDIATE_SIZE),
            "num_shared_experts": r.int_or("n_shared_experts", 0, MAX_EXPERTS, minimum=0),
            "dense_layers": tuple(i for i in range(layers) if i < first_dense or i % frequency),
            "router_bias": model_type in ("deepseek_v3", "deepseek_v32", "glm_moe_dsa") or topk_method == "noaux_tc",
        }
    attention_bias = r.flag("attention_bias", False)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="deepseek",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=nope + rope,
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=attention_bias,
        attention_output_bias=attention_bias,
        max_position_embeddings=r.optional_int("max_position_embeddings", None, MAX_POSITIONS),
        q_lora_rank=r.optional_int("q_lora_rank", None, MAX_RANK),
        kv_lora_rank=r.required_int("kv_lora_rank", MAX_RANK),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=r.required_int("v_head_dim", MAX_HEAD_DIM),
        **moe,
    )


def _deepseek_v32(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """DeepSeek-V3.2 (-Exp, Speciale; transformers' DeepseekV32ForCausalLM): DeepSeek-V3 (`_deepseek`) plus DeepSeek
    Sparse Attention's lightning indexer in every layer, sized by ``index_n_heads``, ``index_head_dim`` and
    ``index_topk`` (DeepseekV32Config's defaults 64, 128 and 2048 for absent keys; see `_sparse_attention`)."""
    return _sparse_attention(config, model_type, name, index_heads=64)


def _glm_moe_dsa(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """GLM-5 / 5.1 (``glm_moe_dsa``, transformers' GlmMoeDsaForCausalLM): DeepSeek-V3.2's architecture (MLA, DeepSeek
    Sparse Attention's indexer in every layer, routed + shared experts with a sigmoid router and its
    ``e_score_correction_bias``) at GLM's sizes; GlmMoeDsaConfig's default of 32 indexer heads for an absent
    ``index_n_heads`` (see `_sparse_attention`)."""
    return _sparse_attention(config, model_type, name, index_heads=32)


def _sparse_attention(config: Mapping[str, object], model_type: str, name: str | None,
                      index_heads: int) -> ModelSpec:
    """A DeepSeek Sparse Attention model (deepseek_v32, glm_moe_dsa): `_deepseek`'s MLA and experts plus a lightning
    indexer per layer.  The indexer projects the query latent (``wq_b``: [heads x dim, q_lora_rank]), so
    ``q_lora_rank`` is required, and so are the routed experts (their config classes default to 256 experts: a config
    without ``n_routed_experts`` is refused rather than planned dense).  Absent ``first_k_dense_replace`` is 3 (both
    config classes); an explicit ``mlp_layer_types`` ("dense" / "sparse" per layer, what transformers builds from)
    decides the dense layers.  Per-layer ``indexer_types`` other than "full" (GLM-5.2's "shared" layers, also set by
    ``index_topk_freq`` / ``index_topk_pattern``) reuse another layer's top-k with no indexer of their own, which
    nibble does not model: `InvalidSpec` naming the key.  ``head_dim`` and ``qk_head_dim``, when given, must be what
    the config classes derive (qk_rope_head_dim; qk_nope + qk_rope).  The MTP layer (``num_nextn_predict_layers``,
    layer ``num_hidden_layers``) is not counted, as for DeepSeek-V3: transformers does not build it and vLLM's model
    class skips it at load."""
    r = _Reader(config, model_type)
    r.required_int("n_routed_experts", MAX_EXPERTS)
    spec = _deepseek(config, model_type, name)
    if spec.q_lora_rank is None:
        raise MissingConfigKey("q_lora_rank", model_type)
    layers = spec.num_layers
    dense = spec.dense_layers
    if not r.has("first_k_dense_replace"):
        frequency = r.int_or("moe_layer_freq", 1, MAX_LAYERS)
        dense = tuple(i for i in range(layers) if i < 3 or i % frequency)
    kinds = config.get("mlp_layer_types")
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != layers or any(k not in ("dense", "sparse") for k in kinds):
            raise InvalidSpec("mlp_layer_types", kinds if not isinstance(kinds, list) else f"{len(kinds)} entries",
                              f"must list 'dense' or 'sparse' for each of the {layers} layers")
        dense = tuple(i for i, kind in enumerate(kinds) if kind == "dense")
    _check_every_layer_indexed(config, layers)
    for key, derived in (("head_dim", spec.qk_rope_head_dim),
                         ("qk_head_dim", spec.qk_nope_head_dim + spec.qk_rope_head_dim)):
        given = r.optional_int(key, None, MAX_HEAD_DIM)
        if given is not None and given != derived:
            raise InvalidSpec(key, given, f"must be {derived}, as the model's config class derives it")
    return replace(spec, dense_layers=dense, index_n_heads=r.int_or("index_n_heads", index_heads, MAX_HEADS),
                   index_head_dim=r.int_or("index_head_dim", 128, MAX_HEAD_DIM),
                   index_topk=r.int_or("index_topk", 2048, MAX_POSITIONS))


def _check_every_layer_indexed(config: Mapping[str, object], layers: int) -> None:
    """`InvalidSpec` for a config whose layers do not all run their own indexer (``indexer_types``,
    ``index_topk_freq``, ``index_topk_pattern``: GlmMoeDsaConfig's "shared" layers)."""
    types = config.get("indexer_types")
    if types is not None and (not isinstance(types, list) or any(kind != "full" for kind in types)):
        raise InvalidSpec("indexer_types", types if not isinstance(types, list) else f"{len(types)} entries",
                          "layers other than 'full' (shared top-k, no indexer of their own) are not modelled")
    frequency = config.get("index_topk_freq")
    if frequency is not None and frequency != 1:
        raise InvalidSpec("index_topk_freq", frequency,
                          "a frequency over 1 makes layers share another's top-k (no indexer of their own): "
                          "not modelled")
    pattern = config.get("index_topk_pattern")
    if pattern is not None and (not isinstance(pattern, str | list)
                                or any(kind not in ("F", "full") for kind in pattern)):
        raise InvalidSpec("index_topk_pattern", pattern,
                          "layers other than full ('F') share another's top-k (no indexer of their own): not modelled")


def _falcon(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Falcon: fused query_key_value, LayerNorm with bias, MQA or GQA, parallel attention.

    KV heads: ``num_kv_heads`` with ``new_decoder_architecture``, 1 with ``multi_query``,
    else one per query head (transformers' FalconAttention).  Norms per layer:
    ln_attn + ln_mlp for the new architecture (``num_ln_in_parallel_attn`` 2), else
    input_layernorm, plus post_attention_layernorm when attention is not parallel.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE, "n_embed")
    heads = r.required_int("num_attention_heads", MAX_HEADS, "n_head")
    new_architecture = r.flag("new_decoder_architecture", False)
    if new_architecture:
        kv_heads = r.int_or("num_kv_heads", heads, MAX_HEADS, "n_head_kv")
    else:
        kv_heads = 1 if r.flag("multi_query", True) else heads
    parallel = r.flag("parallel_attn", True)
    norms_in_parallel = r.int_or("num_ln_in_parallel_attn", 2 if new_architecture else 1, 2)
    norms = 2 if (new_architecture and norms_in_parallel == 2) or not parallel else 1
    bias = r.flag("bias", False)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="falcon",
        hidden_size=hidden,
        num_layers=r.required_int("num_hidden_layers", MAX_LAYERS, "n_layer"),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=r.head_dim(hidden, heads, key="head_dim"),
        intermediate_size=r.int_or("ffn_hidden_size", 4 * hidden, MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", True),
        attention_qkv_bias=bias,
        attention_output_bias=bias,
        mlp_bias=bias,
        norm="layernorm",
        norms_per_layer=norms,
        max_position_embeddings=r.optional_int("max_position_embeddings", None, MAX_POSITIONS),
    )


def _gpt2(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """GPT-2: learned positions (``n_positions`` rows), Conv1D layers with biases, tied head."""
    r = _Reader(config, model_type)
    hidden = r.required_int("n_embd", MAX_HIDDEN_SIZE, "hidden_size")
    heads = r.required_int("n_head", MAX_HEADS, "num_attention_heads")
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="gpt2",
        hidden_size=hidden,
        num_layers=r.required_int("n_layer", MAX_LAYERS, "num_hidden_layers"),
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=r.head_dim(hidden, heads, key="head_dim"),
        intermediate_size=r.int_or("n_inner", 4 * hidden, MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", True),
        attention_qkv_bias=True,
        attention_output_bias=True,
        mlp_bias=True,
        norm="layernorm",
        max_position_embeddings=r.required_int("n_positions", MAX_POSITIONS, "max_position_embeddings"),
        learned_position_embeddings=True,
    )


def _gpt_oss(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """gpt-oss: MoE with fused, biased experts; router with bias; one attention sink per head."""
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    positions = _positions(r)
    window, sliding = _window_pattern(r, sizes["num_layers"], 128, lambda i: i % 2 == 0)
    attention_bias = r.flag("attention_bias", True)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="gpt_oss",
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=attention_bias,
        attention_output_bias=attention_bias,
        attention_sinks=True,
        max_position_embeddings=positions,
        sliding_window=window,
        sliding_layers=sliding,
        num_experts=r.required_int("num_local_experts", MAX_EXPERTS),
        experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS, "experts_per_token"),
        moe_intermediate_size=sizes["intermediate_size"],
        router_bias=True,
        expert_bias=True,
        **sizes,
    )


def _qwen_sparse_moe(r: _Reader, experts: int, layers: int) -> dict[str, Any]:
    """The `ModelSpec` fields of a Qwen2-MoE-style sparse block (Qwen2-MoE, Qwen3-Next): `experts` routed experts
    of ``moe_intermediate_size`` and one gated shared expert of ``shared_expert_intermediate_size`` (none at 0),
    in every layer but those of ``mlp_only_layers`` and those ``decoder_sparse_step`` skips, which are dense
    (``(i + 1) % step``, as transformers' and vLLM's model files decide); nothing when `experts` is 0."""
    if not experts:
        return {}
    step = r.int_or("decoder_sparse_step", 1, MAX_LAYERS)
    mlp_only = set(r.int_list("mlp_only_layers", layers))
    shared = r.required_int("shared_expert_intermediate_size", MAX_INTERMEDIATE_SIZE, minimum=0)
    return {
        "num_experts": experts,
        "experts_per_token": r.required_int("num_experts_per_tok", MAX_EXPERTS),
        "moe_intermediate_size": r.required_int("moe_intermediate_size", MAX_INTERMEDIATE_SIZE),
        "num_shared_experts": 1 if shared else 0,
        "shared_expert_intermediate_size": shared,
        "dense_layers": tuple(i for i in range(layers) if i in mlp_only or (i + 1) % step),
    }


def _qwen2_moe(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v bias per ``qkv_bias``, default true;
    o_proj without), routed experts of ``moe_intermediate_size`` and one shared expert of
    ``shared_expert_intermediate_size`` with its sigmoid gate.  A layer is MoE when it is not in
    ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0`` (transformers' Qwen2MoeDecoderLayer, vLLM's
    qwen2_moe.py); the others hold a dense MLP of ``intermediate_size``.  Without ``use_sliding_window`` (every
    published Qwen2-MoE) vLLM caches every layer in full (``ModelConfig.get_hf_config_sliding_window`` gives no
    window).  With it, vLLM's qwen2_moe.py, which passes no per-layer window, would slide every layer while
    transformers slides only some (``layer_types``): such a config is refused rather than planned one way.
    ``num_experts`` and, with experts, the expert sizes are required: transformers' defaults for them are
    Qwen1.5-MoE-A2.7B's, which a config that leaves them out need not be."""
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    layers = sizes["num_layers"]
    r.optional_int("sliding_window", None, MAX_POSITIONS)  # checked, and read: without the flag it sizes nothing
    if r.flag("use_sliding_window", False):
        raise InvalidSpec("use_sliding_window", True, "vLLM's qwen2_moe.py would slide every layer and "
                          "transformers only some: nibble does not plan a Qwen2-MoE with sliding windows")
    experts = r.required_int("num_experts", MAX_EXPERTS, minimum=0)
    moe = _qwen_sparse_moe(r, experts, layers)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="qwen2_moe" if experts else "llama",
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=r.flag("qkv_bias", True),
        max_position_embeddings=_positions(r),
        **sizes,
        **moe,
    )


def _phimoe(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Phi-3.5-MoE: Mixtral's tensors (``block_sparse_moe.gate`` and ``experts.{e}.w1/w2/w3`` of
    ``intermediate_size``) with LayerNorms that have a bias, q/k/v/o biases per ``attention_bias`` and an
    ``lm_head.bias`` per ``lm_head_bias`` (both false by default, true in Phi-3.5-MoE; transformers'
    PhimoeConfig).  A declared ``sliding_window`` covers every layer: vLLM's phimoe.py passes no per-layer
    window, so its attention takes the model-level one (``cache_config.sliding_window``), as Mixtral's does."""
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    window, sliding = _window_all_layers(r, sizes["num_layers"])
    attention_bias = r.flag("attention_bias", False)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="mixtral",
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=attention_bias,
        attention_output_bias=attention_bias,
        norm="layernorm",
        max_position_embeddings=_positions(r),
        sliding_window=window,
        sliding_layers=sliding,
        num_experts=r.required_int("num_local_experts", MAX_EXPERTS),
        experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS),
        moe_intermediate_size=sizes["intermediate_size"],
        lm_head_bias=r.flag("lm_head_bias", False),
        **sizes,
    )


def _glm4_moe(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """GLM-4.5 / 4.6 (``glm4_moe``, transformers' Glm4MoeForCausalLM): grouped-query attention with q/k/v biases
    (``attention_bias``; o_proj never has one) and per-head q/k RMSNorms (``use_qk_norm``), the first
    ``first_k_dense_replace`` layers dense, the others ``n_routed_experts`` routed experts plus
    ``n_shared_experts`` shared ones of ``moe_intermediate_size``, and a sigmoid router whose
    ``e_score_correction_bias`` (one fp32 value per expert, a persistent buffer) the checkpoints hold.

    Absent keys take Glm4MoeConfig's defaults (8 key/value heads, one dense layer, one shared expert); the
    expert sizes are required.  Partial rotary (``partial_rotary_factor``) changes no tensor.  The
    multi-token-prediction layer (``num_nextn_predict_layers``, stored as layer ``num_hidden_layers``) is
    neither built by transformers nor loaded by vLLM's Glm4MoeForCausalLM (``skip_spec_layers``): not counted.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    first_dense = r.int_or("first_k_dense_replace", 1, MAX_LAYERS, minimum=0)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="llama",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=r.int_or("num_key_value_heads", 8, MAX_HEADS),
        head_dim=r.head_dim(hidden, heads),
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=r.flag("attention_bias", False),
        qk_norm=r.flag("use_qk_norm", False),
        max_position_embeddings=_positions(r),
        num_experts=r.required_int("n_routed_experts", MAX_EXPERTS, "num_local_experts"),
        experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS),
        moe_intermediate_size=r.required_int("moe_intermediate_size", MAX_INTERMEDIATE_SIZE),
        num_shared_experts=r.int_or("n_shared_experts", 1, MAX_EXPERTS, minimum=0),
        dense_layers=tuple(range(min(first_dense, layers))),
        router_bias=True,
    )


def _glm4(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """GLM-4-0414 and GLM-Z1 (``glm4``, transformers' Glm4ForCausalLM): grouped-query attention with q/k/v biases
    (``attention_bias``; o_proj never has one), four RMSNorms a layer and a fused ``gate_up_proj`` (the ``glm4``
    layout of `specs.LAYOUTS`).

    Absent keys take Glm4Config's defaults (2 key/value heads, head_dim 128, q/k/v biases, untied embeddings); the
    widths, layers, heads and vocabulary are required.  Partial rotary (``partial_rotary_factor``, 0.5) changes no
    tensor and no cached size.
    """
    r = _Reader(config, model_type)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="glm4",
        hidden_size=r.required_int("hidden_size", MAX_HIDDEN_SIZE),
        num_layers=r.required_int("num_hidden_layers", MAX_LAYERS),
        num_attention_heads=r.required_int("num_attention_heads", MAX_HEADS),
        num_kv_heads=r.int_or("num_key_value_heads", 2, MAX_HEADS),
        head_dim=r.int_or("head_dim", 128, MAX_HEAD_DIM),
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=r.flag("attention_bias", True),
        norms_per_layer=4,
        max_position_embeddings=_positions(r),
    )


def _olmo2(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """OLMo 2 (``olmo2``) and Olmo 3 (``olmo3``), transformers' Olmo2ForCausalLM / Olmo3ForCausalLM: q/k RMSNorms
    over all heads, post-norms only (the ``olmo2`` layout of `specs.LAYOUTS`); Olmo 3's ``layer_types`` (default:
    every fourth layer full, the others sliding) attend to ``sliding_window`` tokens (default 4096), as vLLM's
    per-layer sliding window caches them.

    vLLM's olmo2.py and olmo3.py size each head as hidden_size / num_attention_heads and build q/k/v/o without
    biases: a ``head_dim`` other than that, or ``attention_bias`` true, is refused (422 naming the key) rather than
    planned as a model vLLM would not build.  Absent keys take the configs' defaults (key/value heads = heads,
    untied embeddings).
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    head_dim = r.head_dim(hidden, heads)
    if hidden % heads or head_dim != hidden // heads:
        raise InvalidSpec("head_dim", head_dim, f"vLLM's {model_type} model sizes each head as hidden_size / "
                                                f"num_attention_heads ({hidden} / {heads}), which must divide")
    if r.flag("attention_bias", False):
        raise InvalidSpec("attention_bias", True, f"vLLM's {model_type} model builds q/k/v/o without biases")
    window: int | None = None
    sliding: tuple[int, ...] = ()
    if model_type == "olmo3":
        window, sliding = _window_pattern(r, layers, 4096, lambda i: (i + 1) % 4 != 0)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="olmo2",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=r.int_or("num_key_value_heads", heads, MAX_HEADS),
        head_dim=head_dim,
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        qk_norm=True,
        max_position_embeddings=_positions(r),
        sliding_window=window,
        sliding_layers=sliding,
    )


def _seed_oss(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Seed-OSS (``seed_oss``, transformers' SeedOssForCausalLM): a llama whose q/k/v carry biases
    (``attention_bias``) and whose ``head_dim`` (128) is not hidden_size / num_attention_heads (5120 / 80).

    Absent keys take SeedOssConfig's defaults (8 key/value heads, head_dim 128, q/k/v biases, no o_proj or MLP bias,
    untied embeddings).  vLLM's seed_oss.py builds q/k/v with biases, o_proj and the MLP without: a config saying
    otherwise (``attention_bias`` false, ``attention_out_bias`` or ``mlp_bias`` true) is refused naming the key.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    for key, built, what in (("attention_bias", True, "q/k/v with biases"),
                             ("attention_out_bias", False, "o_proj without a bias"),
                             ("mlp_bias", False, "the MLP without biases")):
        if r.flag(key, built) != built:
            raise InvalidSpec(key, not built, f"vLLM's seed_oss.py builds {what}")
    head_dim = r.optional_int("head_dim", 128 if "head_dim" not in config else None, MAX_HEAD_DIM)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="llama",
        hidden_size=hidden,
        num_layers=r.required_int("num_hidden_layers", MAX_LAYERS),
        num_attention_heads=heads,
        num_kv_heads=r.int_or("num_key_value_heads", 8 if "num_key_value_heads" not in config else heads,
                              MAX_HEADS),
        head_dim=head_dim if head_dim is not None else r.head_dim(hidden, heads),
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=True,
        max_position_embeddings=_positions(r),
    )


def _smollm3(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """SmolLM3 (``smollm3``, transformers' SmolLM3ForCausalLM): a llama (tied embeddings by default) whose
    ``no_rope_layers`` (default: every ``no_rope_layer_interval``-th layer, 4) skip rotary embeddings, which changes
    no tensor and no cached size.  Sliding layers as transformers builds them: with ``use_sliding_window`` and a
    ``sliding_window``, the layers ``layer_types`` calls sliding (default: the NoPE layers); vLLM's Transformers
    backend, which serves SmolLM3, reads ``layer_types`` alone, so nibble's reading is the larger cache when they
    disagree.  Absent keys take SmolLM3Config's defaults (4 key/value heads, tied embeddings, no biases).
    """
    r = _Reader(config, model_type)
    sizes = _attention_sizes(r)
    if "num_key_value_heads" not in config:  # SmolLM3Config's default (an explicit null means every head)
        sizes["num_kv_heads"] = 4
    layers = sizes["num_layers"]
    rope_layers = r.int_list("no_rope_layers", layers)
    if config.get("no_rope_layers") is not None and len(rope_layers) != layers:
        raise InvalidSpec("no_rope_layers", f"{len(rope_layers)} entries", f"must list every layer ({layers})")
    interval = r.int_or("no_rope_layer_interval", 4, MAX_LAYERS)
    without_rope = [i for i in range(layers) if (rope_layers[i] == 0 if rope_layers else (i + 1) % interval == 0)]
    window = r.optional_int("sliding_window", None, MAX_POSITIONS)
    explicit = r.layer_types(layers)
    sliding: tuple[int, ...] = ()
    if r.flag("use_sliding_window", False) and window is not None:
        sliding = explicit if explicit is not None else tuple(without_rope)
    attention_bias = r.flag("attention_bias", False)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="llama",
        tie_word_embeddings=r.flag("tie_word_embeddings", True),
        attention_qkv_bias=attention_bias,
        attention_output_bias=attention_bias,
        mlp_bias=r.flag("mlp_bias", False),
        max_position_embeddings=_positions(r),
        sliding_window=window if sliding else None,
        sliding_layers=sliding,
        **sizes,
    )


def _llama4_text(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Llama 4's language model (transformers' ``Llama4TextConfig``; its defaults for the family's own keys).

    Every MoE layer routes each token to ``num_experts_per_tok`` of ``num_local_experts`` experts of width
    ``intermediate_size`` (fused in checkpoints as ``experts.gate_up_proj`` [E, hidden, 2 x width] and
    ``experts.down_proj`` [E, width, hidden]) beside one always-on shared expert of the same width; the other
    layers are dense MLPs of ``intermediate_size_mlp``.  The MoE layers are those vLLM's llama4.py builds,
    ``(i + 1) % interleave_moe_layer_step == 0`` (Scout: every layer; Maverick, step 2: the odd ones); a
    ``moe_layers`` list, which transformers reads instead, must name the same layers.  The qk norm
    (``use_qk_norm``) is a parameter-free L2 norm.  The RoPE layers (``no_rope_layers`` flag 1; an absent or empty
    list is transformers' default, every layer but each ``no_rope_layer_interval``-th, 4) are chunked local
    attention of ``attention_chunk_size`` tokens (default 8192), which vLLM's llama4.py builds as
    ChunkedLocalAttention; the NoPE layers are global.  What each caches per release: `kv_cache.kv_layers`.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    step = r.int_or("interleave_moe_layer_step", 1, MAX_LAYERS)
    moe_layers = tuple(i for i in range(layers) if (i + 1) % step == 0)
    if config.get("moe_layers") is not None:
        listed = tuple(sorted(set(r.int_list("moe_layers", layers))))
        if listed != moe_layers:
            raise InvalidSpec("moe_layers", list(listed)[:8],
                              f"names other layers than interleave_moe_layer_step={step}, which vLLM's llama4.py "
                              f"builds its experts from ({list(moe_layers)[:8]}...): checkpoint and engine disagree")
    attention_bias = r.flag("attention_bias", False)
    r.flag("use_qk_norm", True)  # an L2 norm without weights: no tensor either way
    # Llama4TextConfig's default chunk (8192) when the key is absent; an explicit null turns chunking off
    chunk = (None if "attention_chunk_size" in config and config["attention_chunk_size"] is None
             else r.optional_int("attention_chunk_size", 8192, MAX_POSITIONS))
    rope_flags = config.get("no_rope_layers")  # 1: a RoPE (chunked local) layer, 0: a global NoPE layer
    if rope_flags is not None and (not isinstance(rope_flags, list) or len(rope_flags) > MAX_LAYERS
                                   or any(flag not in (0, 1) or isinstance(flag, bool) for flag in rope_flags)):
        raise InvalidSpec("no_rope_layers", rope_flags if not isinstance(rope_flags, list) else rope_flags[:8],
                          "must be a list of 0 (NoPE) and 1 (RoPE) flags, one per layer")
    if rope_flags and len(rope_flags) != layers:  # vLLM's llama4.py reads config.no_rope_layers[layer_idx]
        raise InvalidSpec("no_rope_layers", f"{len(rope_flags)} entries", f"must list every layer ({layers})")
    if not rope_flags:  # Llama4TextConfig: an absent or empty list takes the default
        interval = r.int_or("no_rope_layer_interval", 4, MAX_LAYERS)
        rope_flags = [int((i + 1) % interval != 0) for i in range(layers)]
    chunked = tuple(i for i, flag in enumerate(rope_flags) if flag) if chunk is not None else ()
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="llama4",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=r.int_or("num_key_value_heads", 8, MAX_HEADS),
        head_dim=r.int_or("head_dim", 128, MAX_HEAD_DIM),
        intermediate_size=r.int_or("intermediate_size_mlp", 16384, MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        attention_qkv_bias=attention_bias,
        attention_output_bias=attention_bias,
        max_position_embeddings=_positions(r),
        num_experts=r.int_or("num_local_experts", 16, MAX_EXPERTS),
        experts_per_token=r.int_or("num_experts_per_tok", 1, MAX_EXPERTS),
        moe_intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        num_shared_experts=1,
        dense_layers=tuple(i for i in range(layers) if i not in set(moe_layers)),
        attention_chunk_size=chunk if chunked else None,
        chunked_layers=chunked,
    )


def _llama4_vision(config: Mapping[str, object], text_hidden_size: int) -> Llama4VisionTower:
    """Llama 4's vision tower from ``vision_config`` (transformers' ``Llama4VisionConfig`` defaults for absent keys,
    and the whole default tower when the key is absent: ``Llama4Config`` always builds one)."""
    vision = config.get("vision_config")
    if vision is None:
        vision = {}
    if not isinstance(vision, Mapping):
        raise InvalidSpec("vision_config", vision, "must be a JSON object")
    defaults = {"hidden_size": 768, "num_hidden_layers": 34, "num_attention_heads": 16, "intermediate_size": 5632,
                "image_size": 448, "patch_size": 14, "projector_input_dim": 4096, "projector_output_dim": 4096,
                "vision_output_dim": 7680, "num_channels": 3}
    sizes: dict[str, Any] = {key: vision.get(key, default) for key, default in defaults.items()}
    return Llama4VisionTower(
        hidden_size=sizes["hidden_size"], num_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"], intermediate_size=sizes["intermediate_size"],
        image_size=sizes["image_size"], patch_size=sizes["patch_size"],
        projector_input_dim=sizes["projector_input_dim"], projector_output_dim=sizes["projector_output_dim"],
        vision_output_dim=sizes["vision_output_dim"], projection_size=text_hidden_size,
        num_channels=sizes["num_channels"])


#: the language models a ``mistral3`` text_config may name: Mistral's (Mistral Small 3.1/3.2, Magistral, Devstral) and
#: Ministral 3's, the same llama tensors (its YaRN rope parameters change no shape)
_MISTRAL3_TEXT_TYPES = ("mistral", "ministral3")


#: ``mistral3`` wrappers whose ``text_config`` is an MLA + MoE language model, refused by name with what nibble found
#: (and did not find) about them: no published config.json (nor safetensors index) of either release was found to
#: check a plan against, and reading their text model as a ``mistral`` decoder, or planning it without its Pixtral
#: tower, would promise memory vLLM does not have
_MISTRAL3_UNPLANNED_TEXT_TYPES: dict[str, str] = {
    "deepseek_v3": (
        "is Mistral Large 3's DeepSeek-V3-style MLA + MoE language model, which nibble does not plan: vLLM (0.19.0 "
        "and 0.33.0) reads a repo holding consolidated*.safetensors and params.json from params.json, not "
        "config.json (transformers_utils/config.py, config_format auto), and builds it as MistralLarge3ForCausalLM, "
        "a DeepseekV3ForCausalLM (mistral_large_3.py), inside PixtralForConditionalGeneration; no published "
        "config.json or safetensors index of it was found to check a plan against"),
    "mistral4": (
        "is Mistral Small 4's MLA + MoE language model, which nibble does not plan: no file of vLLM 0.19.0 or 0.33.0 "
        "names mistral4, so neither builds this config.json's language model; they read the repo's params.json "
        "instead (config_format auto) and build MistralLarge3ForCausalLM, a DeepseekV3ForCausalLM, inside "
        "PixtralForConditionalGeneration; no published config.json or safetensors index of it was found to check a "
        "plan against"),
}


def _mistral3_unplanned_text_refusal(text_type: object) -> None:
    """Raise `InvalidSpec` naming ``text_config.model_type`` for a ``mistral3`` wrapper around a language model
    nibble knows of but does not plan (`_MISTRAL3_UNPLANNED_TEXT_TYPES`), saying why."""
    if isinstance(text_type, str) and text_type in _MISTRAL3_UNPLANNED_TEXT_TYPES:
        raise InvalidSpec("text_config.model_type", text_type, _MISTRAL3_UNPLANNED_TEXT_TYPES[text_type])


def _mistral3(config: Mapping[str, object], name: str | None) -> ModelSpec:
    """Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral Small 3.1 and 3.2, Magistral Small 2509): the
    language model of ``text_config`` (a ``mistral`` decoder, read as that type is) and its Pixtral vision tower and
    projector (`_pixtral_vision`).  vLLM builds the language model from ``text_config`` alone
    (``init_vllm_registered_model(hf_config=config.text_config)``), so its ``tie_word_embeddings`` decides the lm_head;
    a top-level ``tie_word_embeddings`` that says otherwise is refused (transformers 5 ties by the top-level key,
    True by default, and would share the lm_head the published checkpoints store apart)."""
    text = config.get("text_config")
    if not isinstance(text, Mapping):
        raise InvalidSpec("text_config", text, "must be a JSON object")
    text_type = text.get("model_type", "mistral")
    _mistral3_unplanned_text_refusal(text_type)
    if text_type not in _MISTRAL3_TEXT_TYPES:
        raise InvalidSpec("text_config.model_type", text_type,
                          f"is not a language model nibble plans under mistral3 ({', '.join(_MISTRAL3_TEXT_TYPES)})")
    try:
        spec = _llama_family(text, "mistral", name or _name(config, "mistral3", None))
    except InvalidSpec as error:  # a key the adapter read from text_config: name it there
        if error.field.split("[")[0] not in text:
            raise
        raise InvalidSpec(f"text_config.{error.field}", error.value, error.reason) from error
    top = _Reader(config, "mistral3")
    if top.flag("tie_word_embeddings", spec.tie_word_embeddings) != spec.tie_word_embeddings:
        raise InvalidSpec("tie_word_embeddings", config["tie_word_embeddings"],
                          "differs from text_config.tie_word_embeddings: vLLM reads text_config's and transformers 5 "
                          "the top-level one, so whether the lm_head is the embedding would depend on the engine")
    return replace(spec, model_type="mistral3", vision=_pixtral_vision(config, spec.hidden_size))


def _pixtral_vision(config: Mapping[str, object], text_hidden_size: int) -> PixtralVisionTower:
    """Mistral 3's Pixtral tower and projector from ``vision_config`` and the projector's top-level keys
    (transformers' ``PixtralVisionConfig`` and ``Mistral3Config`` defaults for absent keys; the default tower when
    ``vision_config`` is absent, as ``Mistral3Config`` builds one).  ``vision_feature_layer`` must be -1 (the default,
    every published config): vLLM's mistral3.py builds the encoder only up to the feature layer and its projector
    takes one layer's features, while transformers builds every layer and a projector as wide as the layers listed."""
    vision = config.get("vision_config")
    if vision is None:
        vision = {}
    if not isinstance(vision, Mapping):
        raise InvalidSpec("vision_config", vision, "must be a JSON object")
    vision_type = vision.get("model_type", "pixtral")
    if vision_type != "pixtral":
        raise InvalidSpec("vision_config.model_type", vision_type, "is not pixtral, the encoder mistral3 builds")
    feature_layer = config.get("vision_feature_layer", -1)
    if feature_layer != -1 or isinstance(feature_layer, bool):
        raise InvalidSpec("vision_feature_layer", feature_layer,
                          "is not -1: vLLM builds the Pixtral encoder only up to that layer and one layer's features "
                          "into the projector, transformers every layer and a projector per listed layer; nibble "
                          "plans the published -1 (every layer, the last one's features)")
    top = _Reader(config, "mistral3")
    defaults = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                "patch_size": 14, "num_channels": 3, "image_size": 1024}
    sizes: dict[str, Any] = {key: vision.get(key, default) for key, default in defaults.items()}
    return PixtralVisionTower(
        hidden_size=sizes["hidden_size"], num_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"], intermediate_size=sizes["intermediate_size"],
        patch_size=sizes["patch_size"], projection_size=text_hidden_size,
        spatial_merge_size=top.int_or("spatial_merge_size", 2, 64),
        projector_bias=top.flag("multimodal_projector_bias", False), num_channels=sizes["num_channels"],
        image_size=sizes["image_size"])


def _qwen2_5_vl(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): a Qwen2 language model (q/k/v with biases, o_proj
    without; vLLM loads it as ``Qwen2ForCausalLM``) beside its vision transformer and merger (`QwenVisionTower`).

    The published configs hold the language model's keys at the top level beside ``vision_config``; configs saved
    by transformers >= 4.52 may nest them in ``text_config`` (read there, errors named ``text_config.<key>``).
    M-RoPE (``rope_scaling.mrope_section``) rotates the same head dimensions and changes no KV size; sliding windows
    are Qwen2's (``use_sliding_window``, false in every published config)."""
    text = config.get("text_config")
    if text is not None and not isinstance(text, Mapping):
        raise InvalidSpec("text_config", text, "must be a JSON object")
    source = text if text is not None else config
    try:
        spec = _llama_family(source, "qwen2", name or _name(config, model_type, None))
    except InvalidSpec as error:
        if source is config or error.field.split("[")[0] not in source:
            raise
        raise InvalidSpec(f"text_config.{error.field}", error.value, error.reason) from error
    if text is not None and "tie_word_embeddings" in config:
        top = _Reader(config, model_type).flag("tie_word_embeddings", spec.tie_word_embeddings)
        if top != spec.tie_word_embeddings:
            raise InvalidSpec("tie_word_embeddings", config["tie_word_embeddings"],
                              "differs from text_config.tie_word_embeddings: whether the language model's lm_head "
                              "is its embedding would depend on which one an engine reads")
    return replace(spec, model_type=model_type, vision=_qwen2_5_vl_vision(config, spec.hidden_size))


#: the config keys of a Qwen vision tower's fields, to name a bad value by the key it came from
_QWEN_VISION_KEYS = {"num_layers": "depth", "num_attention_heads": "num_heads", "projection_size": "out_hidden_size",
                     "num_channels": "in_channels"}


_QwenTower = TypeVar("_QwenTower", QwenVisionTower, Qwen3VisionTower)


def _qwen_vision_tower(tower: type[_QwenTower], sizes: Mapping[str, Any]) -> _QwenTower:
    """`tower` built from its fields, an `InvalidSpec` renamed to the ``vision_config`` key the value came from."""
    try:
        return tower(**sizes)
    except InvalidSpec as error:
        field = error.field.removeprefix("vision_config.")
        if field not in _QWEN_VISION_KEYS:
            raise
        raise InvalidSpec(f"vision_config.{_QWEN_VISION_KEYS[field]}", error.value, error.reason) from error


def _qwen2_5_vl_vision(config: Mapping[str, object], text_hidden_size: int) -> QwenVisionTower:
    """Qwen2.5-VL's vision tower from ``vision_config`` (transformers' ``Qwen2_5_VLVisionConfig`` defaults for
    absent keys, and the whole default tower when the key is absent: ``Qwen2_5_VLConfig`` always builds one).  The
    merger's output (``out_hidden_size``) must be the language model's width: vLLM puts its rows in place of the
    image tokens' embeddings.  ``in_chans``, which the published configs also hold, is read by neither transformers 5
    nor vLLM (both read ``in_channels``)."""
    vision = config.get("vision_config")
    if vision is None:
        vision = {}
    if not isinstance(vision, Mapping):
        raise InvalidSpec("vision_config", vision, "must be a JSON object")
    defaults = {"depth": 32, "hidden_size": 3584, "num_heads": 16, "intermediate_size": 3420, "patch_size": 14,
                "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 3584, "in_channels": 3}
    sizes: dict[str, Any] = {key: vision.get(key, default) for key, default in defaults.items()}
    tower = _qwen_vision_tower(QwenVisionTower, {
        "hidden_size": sizes["hidden_size"], "num_layers": sizes["depth"], "num_attention_heads": sizes["num_heads"],
        "intermediate_size": sizes["intermediate_size"], "patch_size": sizes["patch_size"],
        "temporal_patch_size": sizes["temporal_patch_size"], "spatial_merge_size": sizes["spatial_merge_size"],
        "projection_size": sizes["out_hidden_size"], "num_channels": sizes["in_channels"]})
    if tower.projection_size != text_hidden_size:
        raise InvalidSpec("vision_config.out_hidden_size", tower.projection_size,
                          f"differs from the language model's hidden_size={text_hidden_size}: the merger's rows "
                          "replace image tokens' embeddings")
    return tower


def _qwen3_vl(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen3-VL (``Qwen3VLForConditionalGeneration``): a Qwen3 language model (``text_config``: q/k norms, an
    explicit ``head_dim``, biases per ``attention_bias``; vLLM loads it as Qwen3) beside its vision transformer,
    merger and deepstack mergers (`Qwen3VisionTower`); for ``qwen3_vl_moe`` (``Qwen3VLMoeForConditionalGeneration``)
    a Qwen3-MoE language model (``num_experts``, ``decoder_sparse_step``, ``mlp_only_layers`` as Qwen3-MoE reads
    them), whose checkpoints hold each layer's experts fused (``mlp.experts.gate_up_proj``, ``down_proj``).
    Interleaved M-RoPE (``mrope_section``) changes no KV size.
    ``tie_word_embeddings`` is read from ``text_config`` (what vLLM's language model reads) or, absent there, from
    the top level (what transformers 5 reads); a config where the two disagree is refused."""
    text = config.get("text_config")
    if not isinstance(text, Mapping):
        raise InvalidSpec("text_config", text, "must be a JSON object")
    source: Mapping[str, object] = text
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
        source = {**text, "tie_word_embeddings": config["tie_word_embeddings"]}
    language_model = "qwen3_moe" if model_type == "qwen3_vl_moe" else "qwen3"
    try:
        spec = _llama_family(source, language_model, name or _name(config, model_type, None))
    except InvalidSpec as error:
        if error.field.split("[")[0] not in text:
            raise
        raise InvalidSpec(f"text_config.{error.field}", error.value, error.reason) from error
    if model_type == "qwen3_vl_moe" and not spec.is_moe:
        raise InvalidSpec("text_config.num_experts", text.get("num_experts"),
                          "must be positive for qwen3_vl_moe (its layers' experts are fused per layer)")
    if "tie_word_embeddings" in config and "tie_word_embeddings" in text:
        top = _Reader(config, model_type).flag("tie_word_embeddings", spec.tie_word_embeddings)
        if top != spec.tie_word_embeddings:
            raise InvalidSpec("tie_word_embeddings", config["tie_word_embeddings"],
                              "differs from text_config.tie_word_embeddings: whether the language model's lm_head "
                              "is its embedding would depend on which one an engine reads")
    return replace(spec, model_type=model_type, vision=_qwen3_vl_vision(config, spec.hidden_size))


def _qwen3_vl_vision(config: Mapping[str, object], text_hidden_size: int) -> Qwen3VisionTower:
    """Qwen3-VL's vision tower from ``vision_config`` (transformers' ``Qwen3VLVisionConfig`` defaults for absent keys,
    the whole default tower when the key is absent); one deepstack merger per ``deepstack_visual_indexes`` entry,
    each naming a block of the tower."""
    vision = config.get("vision_config")
    if vision is None:
        vision = {}
    if not isinstance(vision, Mapping):
        raise InvalidSpec("vision_config", vision, "must be a JSON object")
    defaults = {"depth": 27, "hidden_size": 1152, "num_heads": 16, "intermediate_size": 4304, "patch_size": 16,
                "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 3584, "in_channels": 3,
                "num_position_embeddings": 2304}
    sizes: dict[str, Any] = {key: vision.get(key, default) for key, default in defaults.items()}
    depth = check_int("vision_config.depth", sizes["depth"], 1, MAX_LAYERS)
    deepstack = vision.get("deepstack_visual_indexes", [8, 16, 24])
    if (not isinstance(deepstack, list) or len(deepstack) > depth
            or any(isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < depth
                   for index in deepstack)):
        raise InvalidSpec("vision_config.deepstack_visual_indexes", deepstack if not isinstance(deepstack, list)
                          else deepstack[:8], f"must be a list of block indices below depth={depth}")
    tower = _qwen_vision_tower(Qwen3VisionTower, {
        "hidden_size": sizes["hidden_size"], "num_layers": depth, "num_attention_heads": sizes["num_heads"],
        "intermediate_size": sizes["intermediate_size"], "patch_size": sizes["patch_size"],
        "temporal_patch_size": sizes["temporal_patch_size"], "spatial_merge_size": sizes["spatial_merge_size"],
        "num_position_embeddings": sizes["num_position_embeddings"], "deepstack_mergers": len(deepstack),
        "projection_size": sizes["out_hidden_size"], "num_channels": sizes["in_channels"]})
    if tower.projection_size != text_hidden_size:
        raise InvalidSpec("vision_config.out_hidden_size", tower.projection_size,
                          f"differs from the language model's hidden_size={text_hidden_size}: the merger's rows "
                          "replace image tokens' embeddings")
    return tower


def _minimax_m2(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """MiniMax-M2 / M2.1 / M2.5 (``minimax_m2``; transformers' and vLLM's MiniMaxM2ForCausalLM): Mixtral's tensor
    names (``block_sparse_moe.gate``, ``block_sparse_moe.experts.{e}.w1/w2/w3`` of ``intermediate_size``) in every
    layer, grouped-query attention whose q/k RMSNorms span all heads (``q_norm`` [heads x head_dim], ``k_norm``
    [kv_heads x head_dim]: `inventory` sizes them so for this type), and a sigmoid router whose
    ``e_score_correction_bias`` (``use_routing_bias``) sits beside the gate, as
    ``block_sparse_moe.e_score_correction_bias``.

    Both transformers and vLLM build the q/k norms whatever ``use_qk_norm`` says, and vLLM's RMSNorm of them is
    the full-width one (``MiniMaxText01RMSNormTP``): a ``qk_norm_type`` other than ``per_layer`` is refused.  vLLM
    builds the router bias only with ``use_routing_bias`` (default false there); ties no lm_head (a true
    ``tie_word_embeddings`` is refused); builds every layer as full attention (an ``attn_type_list`` entry other
    than 1, MiniMax-Text-01's linear attention, is refused) and no shared expert (a ``shared_intermediate_size``
    other than 0 is refused).  Absent ``num_key_value_heads`` and ``head_dim`` take MiniMaxM2Config's defaults
    (8 and 128); the other sizes are required.  Partial rotary (``rotary_dim``) changes no tensor.  The
    multi-token-prediction modules (``num_mtp_modules``, stored as layers ``num_hidden_layers`` and on) are
    neither built by transformers nor loaded by vLLM (``get_spec_layer_idx_from_weight_name`` skips them): not
    counted.
    """
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    width = r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE)
    if r.string("qk_norm_type", "per_layer") != "per_layer":
        raise InvalidSpec("qk_norm_type", config.get("qk_norm_type"),
                          "vLLM's minimax_m2.py normalizes q and k over all heads at once ('per_layer') only")
    if r.flag("tie_word_embeddings", False):
        raise InvalidSpec("tie_word_embeddings", True, "vLLM's MiniMaxM2ForCausalLM builds its own lm_head and "
                                                       "never ties it to the embedding")
    if r.int_or("shared_intermediate_size", 0, MAX_INTERMEDIATE_SIZE, minimum=0):
        raise InvalidSpec("shared_intermediate_size", config.get("shared_intermediate_size"),
                          "neither transformers nor vLLM builds a shared expert for minimax_m2: only 0 is planned")
    attention_kinds = config.get("attn_type_list")
    if attention_kinds is not None:
        if not isinstance(attention_kinds, list):
            raise InvalidSpec("attn_type_list", attention_kinds, "must be a list of one attention type per layer")
        for index, kind in enumerate(attention_kinds):
            if kind != 1 or isinstance(kind, bool):
                raise InvalidSpec(f"attn_type_list[{index}]", kind, "vLLM's minimax_m2.py builds every layer as "
                                                                    "full (softmax) attention, type 1")
    for key in ("use_qk_norm", "rotary_dim", "num_mtp_modules", "mtp_transformer_layers", "use_mtp"):
        config.get(key)  # read: no tensor vLLM loads depends on them (see the docstring)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="mixtral",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=r.int_or("num_key_value_heads", 8, MAX_HEADS),
        head_dim=r.int_or("head_dim", 128, MAX_HEAD_DIM),
        intermediate_size=width,
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        attention_qkv_bias=r.flag("attention_bias", False),
        qk_norm=True,
        max_position_embeddings=_positions(r),
        num_experts=r.required_int("num_local_experts", MAX_EXPERTS),
        experts_per_token=r.required_int("num_experts_per_tok", MAX_EXPERTS),
        moe_intermediate_size=width,
        router_bias=r.flag("use_routing_bias", False),
    )


def _linear_attention_layers(r: _Reader, num_layers: int) -> tuple[int, ...]:
    """The ``linear_attention`` layers of a hybrid config: its ``layer_types`` list (each ``linear_attention`` or
    ``full_attention``), else every layer but each ``full_attention_interval``-th (default 4), as Qwen3NextConfig
    derives ``layer_types`` when a config leaves it out (the published Qwen3-Next configs do)."""
    value = r.config.get("layer_types")
    if value is None:
        interval = r.int_or("full_attention_interval", 4, MAX_LAYERS)
        return tuple(i for i in range(num_layers) if (i + 1) % interval)
    r.optional_int("full_attention_interval", None, MAX_LAYERS)  # read: layer_types decides
    if not isinstance(value, list) or len(value) != num_layers:
        shown = value if not isinstance(value, list) else f"{len(value)} entries"
        raise InvalidSpec("layer_types", shown, f"must list one type per layer ({num_layers})")
    for i, kind in enumerate(value):
        if kind not in ("linear_attention", "full_attention"):
            raise InvalidSpec(f"layer_types[{i}]", kind, "must be 'linear_attention' or 'full_attention'")
    return tuple(i for i, kind in enumerate(value) if kind == "linear_attention")


def _qwen3_next(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen3-Next (Qwen3-Next-80B-A3B-Instruct/Thinking): Gated DeltaNet ``linear_attn`` layers and gated full
    attention layers (``layer_types``, by default 3:1), as transformers' Qwen3NextForCausalLM builds them and vLLM's
    qwen3_next.py loads them.  A full-attention layer's q_proj is ``2 x heads x head_dim`` wide (the second half
    gates the output: vLLM's ``attn_output_gate``, default true), with q/k RMSNorms of head_dim and no biases; a
    layer is a Qwen2-MoE-style sparse block (router ``mlp.gate``, routed experts, one ``mlp.shared_expert`` of
    ``shared_expert_intermediate_size`` and its [1, hidden] ``shared_expert_gate``) when it is not in
    ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``, else a dense MLP of ``intermediate_size``.
    Partial rotary changes no tensor (its dimensions are kept as ``rotary_dim``: they size vLLM's cos/sin cache).
    The multi-token-prediction layer the checkpoints ship (``mtp.*``) is neither built by transformers nor loaded
    by vLLM's Qwen3NextForCausalLM (``skip_prefixes=["mtp."]``): not counted.
    Refused, naming the key, where transformers and vLLM would build different tensors: ``attention_bias`` (vLLM
    reads ``qkv_bias`` and gives o_proj none), ``attn_output_gate: false`` (transformers always gates) and
    ``layer_scale`` (only vLLM builds its parameters); ``use_sliding_window`` (neither slides a window)."""
    r = _Reader(config, model_type)
    hidden = r.required_int("hidden_size", MAX_HIDDEN_SIZE)
    layers = r.required_int("num_hidden_layers", MAX_LAYERS)
    heads = r.required_int("num_attention_heads", MAX_HEADS)
    for key, refused in (("attention_bias", True), ("attn_output_gate", False), ("layer_scale", True),
                         ("use_sliding_window", True)):
        if r.flag(key, not refused) is refused:
            raise InvalidSpec(key, refused, "transformers and vLLM's qwen3_next.py would build different tensors "
                                            "for it: nibble does not plan such a Qwen3-Next")
    linear = GatedDeltaNet(
        layers=_linear_attention_layers(r, layers),
        num_key_heads=r.required_int("linear_num_key_heads", MAX_HEADS),
        num_value_heads=r.required_int("linear_num_value_heads", MAX_HEADS),
        key_head_dim=r.required_int("linear_key_head_dim", MAX_HEAD_DIM),
        value_head_dim=r.required_int("linear_value_head_dim", MAX_HEAD_DIM),
        conv_kernel_size=r.required_int("linear_conv_kernel_dim", 1_024),
    )
    if model_type == "qwen3_5":  # a dense Qwen3.5 (Qwen3_5TextConfig has no experts; qwen3_5_moe has its own type)
        experts = r.int_or("num_experts", 0, MAX_EXPERTS, minimum=0)
        if experts:
            raise InvalidSpec("num_experts", experts, "a qwen3_5 model is dense (Qwen3_5TextConfig): a Qwen3.5-MoE "
                                                      "config has model_type qwen3_5_moe")
    else:
        experts = r.required_int("num_experts", MAX_EXPERTS, minimum=0)
    moe = _qwen_sparse_moe(r, experts, layers)
    head_dim = r.required_int("head_dim", MAX_HEAD_DIM)
    return ModelSpec(
        name=_name(config, model_type, name),
        model_type=model_type,
        layout="qwen3_next",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=r.required_int("num_key_value_heads", MAX_HEADS),
        head_dim=head_dim,
        intermediate_size=r.required_int("intermediate_size", MAX_INTERMEDIATE_SIZE),
        vocab_size=r.required_int("vocab_size", MAX_VOCAB_SIZE),
        tie_word_embeddings=r.flag("tie_word_embeddings", False),
        qk_norm=True,
        max_position_embeddings=_positions(r),
        linear_attention=linear,
        attention_output_gate=True,
        rotary_dim=_partial_rotary_dim(config, head_dim),
        **moe,
    )


def _partial_rotary_dim(config: Mapping[str, object], head_dim: int) -> int:
    """The rotary dimensions of a head, ``int(head_dim x partial_rotary_factor)`` as vLLM's ``get_rope`` computes
    them, the factor read at the top level (Qwen3-Next) or in ``rope_parameters`` (Qwen3.5); 1.0 when absent."""
    nested = config.get("rope_parameters")
    factor = config.get("partial_rotary_factor", nested.get("partial_rotary_factor", 1.0)
                        if isinstance(nested, Mapping) else 1.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise InvalidSpec("partial_rotary_factor", factor, "must be a number in (0, 1]")
    return int(head_dim * factor)


#: the rotary types whose cache holds the model's ``max_position`` positions (get_rope in
#: model_executor/layers/rotary_embedding/__init__.py: RotaryEmbedding, Llama3RotaryEmbedding, NTKScaling, the
#: ``alpha`` DynamicNTK, MRotaryEmbedding before its positions factor); "mrope" and "su" are the legacy names vLLM's
#: patch_rope_parameters renames to "default" and "longrope"
_ROPE_AT_MAX_POSITION = frozenset({"default", "mrope", "llama3", "ntk", "llama4"})
#: the positions vLLM's model code builds RoPE over when the config has no max_position_embeddings (llama.py,
#: falcon.py: ``getattr(config, "max_position_embeddings", 8192)``)
_ROPE_DEFAULT_POSITIONS = 8192


def _rope_number(rope: Mapping[str, object], key: str, default: float) -> float:
    value = rope.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_POSITIONS:
        raise InvalidSpec(f"rope_scaling.{key}", value, f"must be a number in (0, {MAX_POSITIONS}]")
    return float(value)


def _rope_cache_rows(rope: Mapping[str, object] | None, positions: int, original: int) -> int:
    """The positions of the cos/sin cache ``get_rope`` builds for one RoPE configuration over ``max_position``
    positions, by its rotary class's ``_compute_cos_sin_cache`` (``torch.arange`` of a float rounds up): linear and
    dynamic ``max_position x factor``; yarn and deepseek_yarn ``original_max_position_embeddings x factor``;
    longrope the short cache (``original_max_position_embeddings``) and the long one (``max_position``) in one
    buffer; every other type ``max_position`` (the same in v0.11, v0.19 and v0.33).  `original` is the
    ``original_max_position_embeddings`` a Phi-3 config keeps at its top level, which llama.py copies into the rope
    scaling, when the scaling has none."""
    if rope is None:
        return positions
    key = "rope_type" if "rope_type" in rope else "type"
    kind = rope.get(key, "default")
    if not isinstance(kind, str):  # a list or object here is unhashable: refused, not a TypeError
        raise InvalidSpec(f"rope_scaling.{key}", kind, "must be a string (default, linear, dynamic, yarn, ...)")
    if kind in _ROPE_AT_MAX_POSITION or (kind == "dynamic" and "alpha" in rope):
        return positions
    if kind in ("linear", "dynamic"):
        return math.ceil(positions * _rope_number(rope, "factor", 1.0))
    original = int(_rope_number(rope, "original_max_position_embeddings", original))
    if kind == "yarn":
        return math.ceil(original * _rope_number(rope, "factor", 1.0))
    if kind in ("longrope", "su"):
        return original + positions
    return positions


def _rope_parameter_sets(config: Mapping[str, object]) -> list[Mapping[str, object] | None]:
    """The RoPE configurations of the model's layers, one per distinct ``get_rope`` key: ``rope_scaling`` (or
    ``rope_parameters``), plus the local layers' own for Gemma 3 (gemma3.py: ``rope_local_base_freq``, no scaling)
    and OLMo 3 (olmo2.py: sliding layers take the default RoPE), or both of transformers v5's per-layer-type sets."""
    rope = config.get("rope_scaling")
    if not isinstance(rope, Mapping):
        rope = config.get("rope_parameters")
    if not isinstance(rope, Mapping):
        rope = None
    if rope is not None and all(isinstance(value, Mapping) for value in rope.values()) and rope:
        sets = [value for value in rope.values() if isinstance(value, Mapping)]
        return [dict(entry) for index, entry in enumerate(sets) if entry not in sets[:index]]
    model_type = config.get("model_type")
    if model_type in ("gemma3_text", "gemma3"):
        if rope is None and config.get("rope_local_base_freq", 10_000) == config.get("rope_theta", 1_000_000):
            return [None]
        return [rope, None]
    if model_type == "olmo3" and rope is not None and rope.get("rope_type", rope.get("type")) != "default":
        return [rope, None]
    return [rope]


_ROPE_KEYS = ("model_type", "rope_scaling", "rope_parameters", "rope_theta", "rope_local_base_freq",
              "partial_rotary_factor", "rotary_dim", "alibi", "original_max_position_embeddings")


def _rope_keys(config: Mapping[str, object]) -> dict[str, object]:
    """The RoPE keys of the language model: ``text_config``'s where it has them, else the top level's (a
    Qwen2.5-VL config may keep ``rope_scaling`` at the top beside a nested ``text_config``)."""
    nested = config.get("text_config")
    text = nested if isinstance(nested, Mapping) else config
    return {key: text[key] if key in text else config[key] for key in _ROPE_KEYS if key in text or key in config}


def _rotary_dim(spec: ModelSpec, config: Mapping[str, object]) -> int:
    """The rotary dimensions of a head as vLLM's model code passes them to ``get_rope``: MLA's
    ``qk_rope_head_dim`` (deepseek_v2.py), MiniMax-M2's ``rotary_dim`` key (minimax_m2.py), else
    ``int(head_dim x partial_rotary_factor)`` (GLM-4 and GLM-4.5 default the factor to 0.5: glm4.py, glm4_moe.py)."""
    if spec.is_mla:
        return spec.qk_rope_head_dim
    if spec.model_type == "minimax_m2" and "rotary_dim" in config:
        value = config["rotary_dim"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= spec.head_dim:
            raise InvalidSpec("rotary_dim", value, f"must be an integer in [1, head_dim={spec.head_dim}]")
        return value
    if spec.model_type in ("glm4", "glm4_moe") and "partial_rotary_factor" not in config:
        nested = config.get("rope_parameters")
        if not (isinstance(nested, Mapping) and "partial_rotary_factor" in nested):
            return spec.head_dim // 2
    return _partial_rotary_dim(config, spec.head_dim)


def _with_rotary_caches(spec: ModelSpec, config: Mapping[str, object]) -> ModelSpec:
    """`spec` with the rotary cos/sin caches vLLM builds for it (`ModelSpec.rotary_dim`, ``rotary_cache_rows``,
    ``rotary_mrope``) from its language model's `config`: none for learned positions (GPT-2) or ALiBi (Falcon with
    ``alibi``), else one per distinct RoPE configuration (`_rope_parameter_sets`) of `_rope_cache_rows` positions."""
    if spec.learned_position_embeddings or (spec.model_type == "falcon" and config.get("alibi") is True):
        return replace(spec, rotary_dim=0, rotary_cache_rows=(), rotary_mrope=False)
    positions = spec.max_position_embeddings or _ROPE_DEFAULT_POSITIONS
    sets = _rope_parameter_sets(config)
    original = config.get("original_max_position_embeddings", positions)
    if isinstance(original, bool) or not isinstance(original, int) or not 0 < original <= MAX_POSITIONS:
        raise InvalidSpec("original_max_position_embeddings", original, f"must be an integer in [1, {MAX_POSITIONS}]")
    rows = tuple(_rope_cache_rows(rope, positions, original) for rope in sets)
    if max(rows) > MAX_ROTARY_ROWS:
        raise InvalidSpec("rope_scaling.factor", max(rows),
                          f"scales the rotary cache past {MAX_ROTARY_ROWS} positions")
    mrope = any(rope is not None and "mrope_section" in rope for rope in sets)
    return replace(spec, rotary_dim=_rotary_dim(spec, config), rotary_cache_rows=rows, rotary_mrope=mrope)


#: the config keys vLLM derives a model's longest context from, in its order: the smallest it finds is taken, and
#: ``model_max_length`` when stated (Command-R) whatever the others say (_get_and_verify_max_len in 0.11,
#: ModelArchConfigConvertorBase.derive_max_model_len_and_key in 0.19 and 0.33: the same keys and rule)
VLLM_LENGTH_KEYS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                                     "model_max_length", "max_target_positions", "max_sequence_length",
                                     "max_seq_length", "seq_len")
#: the ``max_position_embeddings`` a config.json that states none of `VLLM_LENGTH_KEYS` gets from its configuration
#: class, by model type (transformers 5.23's ``configuration_<type>.py`` defaults, the classes' text config for the
#: multimodal types; ``deepseek_v32`` is read by transformers' DeepseekV3Config, vLLM's transformers_utils/config.py
#: _CONFIG_REGISTRY).  Falcon's RefinedWeb types are read by vLLM's own RWConfig, which has none.
CLASS_DEFAULT_LENGTHS: dict[str, int] = {
    "llama": 2048, "mistral": 131_072, "mixtral": 131_072, "qwen2": 32_768, "qwen3": 32_768, "qwen3_moe": 32_768,
    "gemma2": 8192, "gemma3_text": 131_072, "gemma3": 131_072, "phi3": 4096, "deepseek_v2": 2048,
    "deepseek_v3": 4096, "deepseek_v32": 4096, "glm_moe_dsa": 202_752, "falcon": 2048, "gpt2": 1024,
    "gpt_oss": 131_072, "qwen2_moe": 32_768, "phimoe": 131_072, "glm4_moe": 131_072, "glm4": 131_072,
    "olmo2": 2048, "olmo3": 2048, "seed_oss": 524_288, "smollm3": 32_768, "llama4_text": 131_072,
    "llama4": 131_072, "qwen2_5_vl": 32_768, "qwen3_vl": 128_000, "qwen3_vl_moe": 128_000, "qwen3_next": 32_768,
    "qwen3_5": 32_768, "qwen3_5_moe": 32_768, "minimax_m2": 196_608, "mistral3": 131_072,
}
#: the length vLLM assumes when the config states none of its keys ("Assuming the model's maximum length is 2048",
#: _get_and_verify_max_len in 0.11, 0.19 and 0.33)
VLLM_DEFAULT_LENGTH = 2048
#: RoPE types whose scaling vLLM never applies to the derived length (0.11, 0.19 and 0.33 skip these three)
_ROPE_NOT_SCALING_LENGTH = frozenset({"su", "longrope", "llama3"})


def _stated_length(config: Mapping[str, object]) -> tuple[int, str]:
    """The context the language model's config states as vLLM reads it before RoPE scaling, and its key: the
    smallest of `VLLM_LENGTH_KEYS` (``text_config``'s where it has them, else the top level's), ``model_max_length``
    overriding; else the configuration class's default (`CLASS_DEFAULT_LENGTHS`); else vLLM's 2048."""
    nested = config.get("text_config")
    text = nested if isinstance(nested, Mapping) and any(key in nested for key in VLLM_LENGTH_KEYS) else config
    found: tuple[int, str] | None = None
    for key in VLLM_LENGTH_KEYS:
        value = text.get(key)
        if value is None:
            continue
        length = check_int(key, value, 1, MAX_POSITIONS)
        if found is None or length < found[0]:
            found = (length, key)
    model_max_length = text.get("model_max_length")
    if model_max_length:  # vLLM: ``if tmp_max_len := getattr(hf_config, "model_max_length", None)``
        found = (check_int("model_max_length", model_max_length, 1, MAX_POSITIONS), "model_max_length")
    if found is not None:
        return found
    model_type = str(config.get("model_type", ""))
    default = CLASS_DEFAULT_LENGTHS.get(model_type)
    if default is not None:
        return default, (f"max_position_embeddings (the {model_type} configuration class's default: config.json "
                         "states no length)")
    return VLLM_DEFAULT_LENGTH, "vLLM's assumed length (config.json states none of its length keys)"


def _rope_scalings(keys: Mapping[str, object]) -> tuple[RopeScaling, ...]:
    """The RoPE scalings of the language model's config (`_rope_keys`) that a vLLM release may scale the derived
    context by: ``rope_scaling``, else ``rope_parameters`` (one set, or one per layer type, in order), each under its
    renamed type (``su`` -> ``longrope``, ``mrope`` -> ``default``), less the types vLLM never scales by
    (`_ROPE_NOT_SCALING_LENGTH`) and the sets without a factor that are not yarn (they scale by 1); a yarn set's
    ``original_max_position_embeddings`` is its own, else the config's top-level one (Phi-3)."""
    rope, source = keys.get("rope_scaling"), "rope_scaling"
    if not isinstance(rope, Mapping):
        rope, source = keys.get("rope_parameters"), "rope_parameters"
    if not isinstance(rope, Mapping) or not rope:
        return ()
    nested = all(isinstance(value, Mapping) for value in rope.values())
    sets = [value for value in rope.values() if isinstance(value, Mapping)] if nested else [rope]
    top_original = keys.get("original_max_position_embeddings")
    out: list[RopeScaling] = []
    for entry in sets:
        key = "rope_type" if "rope_type" in entry else "type"
        kind = entry.get(key, "default")
        if not isinstance(kind, str):
            raise InvalidSpec(f"rope_scaling.{key}", kind, "must be a string (default, linear, dynamic, yarn, ...)")
        kind = {"su": "longrope", "mrope": "default"}.get(kind, kind)
        factor = entry.get("factor")
        if kind in _ROPE_NOT_SCALING_LENGTH or (factor is None and kind != "yarn"):
            continue
        own = "original_max_position_embeddings" in entry
        original = entry.get("original_max_position_embeddings", top_original)
        out.append(RopeScaling(kind, cast(Any, factor), cast(Any, original), source, own))
    return tuple(out)


def _with_context_limit(spec: ModelSpec, config: Mapping[str, object]) -> ModelSpec:
    """`spec` with the context its config states as vLLM reads it (`ModelSpec.config_max_length`, kept only where
    it is not `max_position_embeddings`) and the RoPE scalings vLLM may scale it by (`ModelSpec.rope_scalings`)."""
    length, key = _stated_length(config)
    scalings = _rope_scalings(_rope_keys(config))
    if key == "max_position_embeddings" and length == spec.max_position_embeddings:
        return replace(spec, rope_scalings=scalings) if scalings else spec
    return replace(spec, config_max_length=length, config_max_length_key=key, rope_scalings=scalings)


def _qwen3_5(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen3.5 (``Qwen3_5ForConditionalGeneration``, dense): Qwen3-Next's hybrid language model under
    ``text_config`` (`_qwen3_next`: Gated DeltaNet and gated full attention; a dense MLP in every layer), its
    checkpoints naming it ``model.language_model.*`` and holding each DeltaNet projection apart (``in_proj_qkv``,
    ``in_proj_z``, ``in_proj_b``, ``in_proj_a``: what vLLM's qwen3_5.py merges into in_proj_qkvz and in_proj_ba),
    beside a Qwen3-VL vision tower and merger without deepstack mergers (``Qwen3_5VisionConfig`` has none:
    `Qwen3VisionTower`).  ``mamba_ssm_dtype`` (float32 in the published configs) is the recurrent state's dtype,
    which vLLM takes for ``mamba_ssm_cache_dtype`` (model_executor/models/config.py,
    ``Qwen3_5ForConditionalGenerationConfig``, February 2026).  The multi-token-prediction layer
    (``mtp_num_hidden_layers``, ``mtp.*``) is neither built by transformers nor loaded by vLLM: not counted."""
    text = config.get("text_config")
    if not isinstance(text, Mapping):
        raise InvalidSpec("text_config", text, "must be a JSON object")
    source: Mapping[str, object] = text
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
        source = {**text, "tie_word_embeddings": config["tie_word_embeddings"]}
    r = _Reader(source, model_type)
    try:
        spec = _qwen3_next(source, model_type, name or _name(config, model_type, None))
        state_dtype = r.string("mamba_ssm_dtype", "")
        r.optional_int("mtp_num_hidden_layers", None, MAX_LAYERS, minimum=0)  # the MTP layer: not planned
        r.flag("mtp_use_dedicated_embeddings", False)
        linear = spec.linear_attention
        if linear is None:  # _qwen3_next always builds one
            raise InvalidSpec("layer_types", None, "a qwen3_5 model needs linear_attention layers")
        linear = replace(linear, split_projections=True, ssm_state_dtype=state_dtype or None)
    except InvalidSpec as error:
        if error.field.split("[")[0] not in text:
            raise
        raise InvalidSpec(f"text_config.{error.field}", error.value, error.reason) from error
    if "tie_word_embeddings" in config and "tie_word_embeddings" in text:
        top = _Reader(config, model_type).flag("tie_word_embeddings", spec.tie_word_embeddings)
        if top != spec.tie_word_embeddings:
            raise InvalidSpec("tie_word_embeddings", config["tie_word_embeddings"],
                              "differs from text_config.tie_word_embeddings: whether the language model's lm_head "
                              "is its embedding would depend on which one an engine reads")
    vision = config.get("vision_config")
    tower_config = config
    if isinstance(vision, Mapping):  # no deepstack mergers, whatever the key says (transformers reads none)
        tower_config = {**config, "vision_config": {**vision, "deepstack_visual_indexes": []}}
    elif vision is None:
        tower_config = {**config, "vision_config": {"deepstack_visual_indexes": []}}
    return replace(spec, model_type=model_type, linear_attention=linear,
                   vision=_qwen3_vl_vision(tower_config, spec.hidden_size))


#: keys of a Qwen3.5-MoE text_config that transformers' Qwen3_5MoeTextConfig does not have and vLLM's qwen3_5.py does
#: not read: every layer is a sparse MoE block (``Qwen3_5MoeDecoderLayer``; ``Qwen3_5DecoderLayer`` for
#: ``qwen3_5_moe_text``), whatever these say
_QWEN3_5_MOE_UNUSED_KEYS = ("intermediate_size", "decoder_sparse_step", "mlp_only_layers")


def _qwen3_5_moe(config: Mapping[str, object], model_type: str, name: str | None) -> ModelSpec:
    """Qwen3.5-MoE (``Qwen3_5MoeForConditionalGeneration``: Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B, Qwen3.6-35B-A3B):
    `_qwen3_5`'s hybrid language model and vision tower, every layer a Qwen3-Next sparse block (router ``mlp.gate``,
    ``num_experts`` routed experts of ``moe_intermediate_size``, one ``shared_expert`` of
    ``shared_expert_intermediate_size`` and its ``shared_expert_gate``), as transformers' Qwen3_5MoeTextConfig
    builds them (it has no ``intermediate_size``, ``decoder_sparse_step`` or ``mlp_only_layers``) and vLLM's
    qwen3_5.py loads them (``Qwen3NextSparseMoeBlock`` in every ``qwen3_5_moe_text`` layer).  The checkpoints hold
    each layer's routed experts fused (`inventory`).  The spec's ``intermediate_size`` is the experts' width: no
    dense MLP uses it."""
    text = config.get("text_config")
    if not isinstance(text, Mapping):
        raise InvalidSpec("text_config", text, "must be a JSON object")
    sparse = {key: value for key, value in text.items() if key not in _QWEN3_5_MOE_UNUSED_KEYS}
    if "moe_intermediate_size" in text:
        sparse.update(intermediate_size=text["moe_intermediate_size"], decoder_sparse_step=1, mlp_only_layers=[])
    return _qwen3_5({**config, "text_config": sparse}, model_type, name)


_Adapter = Callable[[Mapping[str, object], str, "str | None"], ModelSpec]
_ADAPTERS: dict[str, _Adapter] = {
    "llama": _llama_family,
    "mistral": _llama_family,
    "mixtral": _llama_family,
    "qwen2": _llama_family,
    "qwen3": _llama_family,
    "qwen3_moe": _llama_family,
    "gemma2": _llama_family,
    "gemma3_text": _llama_family,
    "phi3": _phi3,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "deepseek_v32": _deepseek_v32,
    "glm_moe_dsa": _glm_moe_dsa,
    "falcon": _falcon,
    "RefinedWeb": _falcon,
    "RefinedWebModel": _falcon,
    "gpt2": _gpt2,
    "gpt_oss": _gpt_oss,
    "qwen2_moe": _qwen2_moe,
    "phimoe": _phimoe,
    "glm4_moe": _glm4_moe,
    "glm4": _glm4,
    "olmo2": _olmo2,
    "olmo3": _olmo2,
    "seed_oss": _seed_oss,
    "smollm3": _smollm3,
    "llama4_text": _llama4_text,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "qwen3_vl_moe": _qwen3_vl,
    "qwen3_next": _qwen3_next,
    "qwen3_5": _qwen3_5,
    "qwen3_5_moe": _qwen3_5_moe,
    "minimax_m2": _minimax_m2,
}
KNOWN_MODEL_TYPES: tuple[str, ...] = (*sorted(_ADAPTERS), "gemma3", "llama4", "mistral3")


#: the config keys a `ModelSpec` field may come from, by family; the first one the config holds names an error
_SPEC_FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "hidden_size": ("hidden_size", "n_embd"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok", "experts_per_token"),
    "moe_intermediate_size": ("moe_intermediate_size", "intermediate_size"),
    "num_shared_experts": ("n_shared_experts", "num_shared_experts"),
    "shared_expert_intermediate_size": ("shared_expert_intermediate_size",),
    "head_dim": ("head_dim", "num_attention_heads"),
    "sliding_window": ("sliding_window",),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
}


def _in_config_terms(error: InvalidSpec, config: Mapping[str, object], prefix: str) -> InvalidSpec:
    """`error` (raised by `ModelSpec` on its own field names) renamed to the config key the value came from."""
    keys = [key for key in _SPEC_FIELD_KEYS.get(error.field, ()) if key in config]
    if not keys:
        return error
    renamed = InvalidSpec(prefix + keys[0], error.value, error.reason)
    renamed.__cause__ = error
    return renamed


def model_from_hf_config(config: Mapping[str, object], *, name: str | None = None) -> ModelSpec:
    """Normalize a Hugging Face ``config.json`` (already parsed) into a `ModelSpec`.

    Dispatches on ``model_type``; `name` defaults to ``_name_or_path`` or the model type.
    Raises `InvalidSpec` for a non-object config or bad values (naming the config key, as
    ``text_config.<key>`` for Gemma 3), `MissingConfigKey` for a missing key, and
    `UnsupportedArchitecture` for an unknown type without the generic keys.
    """
    if not isinstance(config, Mapping):
        raise InvalidSpec("config", type(config).__name__, "must be a JSON object")
    text = (config.get("text_config", config)
            if config.get("model_type") in ("gemma3", "llama4", "mistral3", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
            else config)
    try:
        spec = _model_from_hf_config(config, name)
        return _with_context_limit(_with_rotary_caches(spec, _rope_keys(config)), config)
    except MissingConfigKey:  # names the config key already (renaming moe_intermediate_size would blame another)
        raise
    except InvalidSpec as error:
        if not isinstance(text, Mapping):
            raise
        raise _in_config_terms(error, text, "text_config." if text is not config else "") from None


def _gemma3_vision(config: Mapping[str, object], text_hidden_size: int) -> VisionTower | None:
    """Gemma 3's SigLIP encoder from ``vision_config`` (transformers' ``SiglipVisionConfig`` defaults for absent
    keys), projected to the language model's width; None for a config without one (``gemma3`` text only)."""
    vision = config.get("vision_config")
    if vision is None:
        return None
    if not isinstance(vision, Mapping):
        raise InvalidSpec("vision_config", vision, "must be a JSON object")
    defaults = {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072, "image_size": 224,
                "patch_size": 16, "num_channels": 3}
    sizes: dict[str, Any] = {key: vision.get(key, default) for key, default in defaults.items()}
    return VisionTower(hidden_size=sizes["hidden_size"], num_layers=sizes["num_hidden_layers"],
                       intermediate_size=sizes["intermediate_size"], image_size=sizes["image_size"],
                       patch_size=sizes["patch_size"], projection_size=text_hidden_size,
                       num_channels=sizes["num_channels"])


def _model_from_hf_config(config: Mapping[str, object], name: str | None) -> ModelSpec:
    """`model_from_hf_config` by ``model_type``, errors named by the spec's fields where the spec found them."""
    raw_type = config.get("model_type")
    if raw_type is not None and not isinstance(raw_type, str):
        raise InvalidSpec("model_type", raw_type, "must be a string")
    model_type = raw_type or ""
    if model_type == "gemma3":
        text = config.get("text_config", config)
        if not isinstance(text, Mapping):
            raise InvalidSpec("text_config", text, "must be a JSON object")
        spec = _llama_family(text, "gemma3", name or _name(config, model_type, None))
        return replace(spec, vision=_gemma3_vision(config, spec.hidden_size))
    if model_type == "llama4":  # Llama4ForConditionalGeneration: text_config's language model and its vision tower
        text = config.get("text_config")
        if not isinstance(text, Mapping):
            raise InvalidSpec("text_config", text, "must be a JSON object")
        try:
            spec = _llama4_text(text, "llama4", name or _name(config, model_type, None))
        except InvalidSpec as error:  # a key the adapter read from text_config: name it there
            if error.field.split("[")[0] not in text:
                raise
            raise InvalidSpec(f"text_config.{error.field}", error.value, error.reason) from error
        top = _Reader(config, model_type)
        if top.flag("tie_word_embeddings", spec.tie_word_embeddings) != spec.tie_word_embeddings:
            raise InvalidSpec("tie_word_embeddings", config["tie_word_embeddings"],
                              "differs from text_config.tie_word_embeddings: whether the language model's lm_head "
                              "is its embedding would depend on which one an engine reads")
        return replace(spec, vision=_llama4_vision(config, spec.hidden_size))
    if model_type == "mistral3":
        return _mistral3(config, name)
    adapter = _ADAPTERS.get(model_type)
    if adapter is not None:
        return adapter(config, model_type, name)
    family = architecture_family(config)
    if family is not None:
        return _ADAPTERS[family](config, family, name or _name(config, model_type, None))
    missing = [key for key in GENERIC_KEYS if key not in config]
    if missing:
        raise UnsupportedArchitecture(model_type or "<absent>", KNOWN_MODEL_TYPES, missing)
    recorder = _ReadRecorder(config)
    spec = _llama_family(recorder, model_type or "unknown", name)
    structural = sorted(key for key in config if key not in recorder.read and _STRUCTURAL.search(key))
    if structural:
        raise UnsupportedArchitecture(
            model_type or "<absent>", KNOWN_MODEL_TYPES,
            reason=f"its config sizes experts, dense-layer splits, low-rank attention, state-space layers or an "
                   f"image or audio encoder ({', '.join(structural)}) that a llama-style reading would leave out, "
                   "planning a fraction of its weights")
    return spec


#: the family of each model class a config's ``architectures`` names.  vLLM loads the class its registry has
#: for ``architectures``, not for ``model_type``: Kimi K2 ships ``model_type: kimi_k2`` with
#: ``DeepseekV3ForCausalLM`` and loads as DeepSeek-V3 (its model card: other engines run it with model_type
#: changed to deepseek_v3)
ARCHITECTURE_FAMILIES: dict[str, str] = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text", "Phi3ForCausalLM": "phi3",
    "DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3", "FalconForCausalLM": "falcon",
    "GPT2LMHeadModel": "gpt2", "GptOssForCausalLM": "gpt_oss", "Qwen2MoeForCausalLM": "qwen2_moe",
    "PhiMoEForCausalLM": "phimoe", "Glm4MoeForCausalLM": "glm4_moe", "Llama4ForCausalLM": "llama4_text",
    # Ministral 3 (model_type ministral3): vLLM's registry loads it as mistral.py's MistralForCausalLM
    "Ministral3ForCausalLM": "mistral",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl", "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
    "Qwen3NextForCausalLM": "qwen3_next",
    "Qwen3_5ForConditionalGeneration": "qwen3_5",
    "Qwen3_5MoeForConditionalGeneration": "qwen3_5_moe",
    # DeepSeek-V3.2: vLLM's registry loads it as deepseek_v2.py's DeepseekV3ForCausalLM with the indexer built
    # (its config has index_topk); never read as deepseek_v3, which would leave the indexer and its cache out
    "DeepseekV32ForCausalLM": "deepseek_v32",
    # GLM-5 / 5.1: vLLM 0.19's registry loads it as deepseek_v2.py's GlmMoeDsaForCausalLM (DeepSeek-V3.2's class)
    "GlmMoeDsaForCausalLM": "glm_moe_dsa",
    "MiniMaxM2ForCausalLM": "minimax_m2",
    "Glm4ForCausalLM": "glm4",
    "Olmo2ForCausalLM": "olmo2", "Olmo3ForCausalLM": "olmo3",
    "SeedOssForCausalLM": "seed_oss",
    "SmolLM3ForCausalLM": "smollm3",
}


def architecture_family(config: Mapping[str, object]) -> str | None:
    """The known ``model_type`` a config of an unknown one is read as: the family of its first
    ``architectures`` class, the class vLLM loads (None when its model_type is known, or its class is not)."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in KNOWN_MODEL_TYPES:
        return None
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return ARCHITECTURE_FAMILIES.get(architectures[0])
    return None


#: unread keys that make a llama-style reading of an unknown model_type wrong by a multiple, not a few tensors:
#: GLM-4.5's n_routed_experts (160) read as a dense llama planned 31.5 of its 355 billion parameters (before glm4_moe
#: had an adapter); an encoder of images or sound beside the decoder (Qwen2.5-VL-7B's vision_config: 0.68 billion
#: parameters) was left out
_STRUCTURAL = re.compile(r"expert|moe|lora_rank|dense_replace|mamba|ssm|linear_attn|num_local"
                         r"|vision|visual|image|video|audio|speech|projector")


# Keys of a Hugging Face config that never change a model's tensors or memory (training, tokenizer ids,
# numerics and bookkeeping): `unread_config_keys` does not report them.
NON_SIZING_KEYS = frozenset({
    "_name_or_path", "architectures", "transformers_version", "auto_map", "torch_dtype", "dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "rms_norm_eps", "layer_norm_eps",
    "layer_norm_epsilon", "hidden_act", "hidden_activation", "activation_function", "rope_theta", "rope_scaling",
    "rope_parameters", "attention_dropout", "hidden_dropout", "dropout", "pretraining_tp", "mlp_bias_dropout",
    "tokenizer_class", "output_router_logits", "router_aux_loss_coef", "router_jitter_noise", "id2label",
    "label2id", "task_specific_params", "partial_rotary_factor", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "scale_attn_weights", "quantization_config",
    # routing, scaling and numerics of particular families: they change values, never shapes
    "aux_loss_alpha", "seq_aux", "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor",
    "scoring_func", "ep_size", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
    "cache_implementation", "_attn_implementation", "swiglu_limit", "alibi", "rope_local_base_freq", "use_mrope",
    "apply_residual_connection_post_layernorm", "original_max_position_embeddings", "initial_context_length",
    "max_window_layers",
    "residual_dropout",  # Seed-OSS: training dropout
    "input_jitter_noise",  # Phi-3.5-MoE: training noise on the experts' inputs
    # Llama 4: attention temperature tuning, image token ids, a conversion flag
    "attn_scale", "floor_scale", "attn_temperature_tuning", "for_llm_compressor", "boi_token_index",
    "eoi_token_index", "image_token_index",
    "projector_hidden_act",  # Mistral 3: the projector's activation
    # Qwen2.5-VL: image and video token ids
    "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id",
    # GLM-5: the rotary layout of the attention and of the sparse-attention indexer (interleaved or not)
    "rope_interleave", "indexer_rope_interleave",
})


class _ReadRecorder(Mapping[str, object]):
    """A config mapping that remembers which keys the adapters looked up."""

    def __init__(self, config: Mapping[str, object]) -> None:
        self._config = config
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return self._config[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._config

    def __iter__(self) -> Iterator[str]:
        self.read.update(self._config)  # a full pass reads every key
        return iter(self._config)

    def __len__(self) -> int:
        return len(self._config)


def unread_config_keys(config: Mapping[str, object]) -> tuple[str, ...]:
    """The top-level keys of `config` that `model_from_hf_config` never looks at and that could matter:
    a misspelt ``num_kv_heads`` (for ``num_key_value_heads``) is ignored, so the model it plans has as many
    key/value heads as attention heads.  Keys of `NON_SIZING_KEYS` are left out.  Raises what
    `model_from_hf_config` raises for a config it refuses."""
    recorder = _ReadRecorder(config)
    model_from_hf_config(recorder)
    return tuple(sorted(key for key in config if key not in recorder.read and key not in NON_SIZING_KEYS))


def model_from_sizes(
    *,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    vocab_size: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    tie_word_embeddings: bool = False,
    num_experts: int = 0,
    experts_per_token: int = 0,
    moe_intermediate_size: int | None = None,
    num_shared_experts: int = 0,
    dense_layers: Sequence[int] = (),
    sliding_window: int | None = None,
    sliding_layers: Sequence[int] | None = None,
    max_position_embeddings: int | None = None,
    name: str = "custom",
) -> ModelSpec:
    """A llama-style decoder from explicit sizes (RMSNorm, gated MLP, no biases).

    `num_kv_heads` defaults to `num_attention_heads` (MHA), `head_dim` to
    hidden_size / num_attention_heads (which must then divide).  With `num_experts` > 0
    the MLP of every layer not in `dense_layers` is routed over experts of
    `moe_intermediate_size` (default `intermediate_size`) plus `num_shared_experts`
    always-on ones.  A `sliding_window` applies to `sliding_layers` (default: every layer).
    """
    hidden = check_int("hidden_size", hidden_size, 1, MAX_HIDDEN_SIZE)
    heads = check_int("num_attention_heads", num_attention_heads, 1, MAX_HEADS)
    layers = check_int("num_layers", num_layers, 1, MAX_LAYERS)
    if head_dim is None:
        if hidden % heads:
            raise InvalidSpec("num_attention_heads", heads,
                              f"does not divide hidden_size={hidden} and no head_dim is given")
        head_dim = hidden // heads
    if not num_experts:  # what only a mixture of experts uses would otherwise be dropped without a word
        for field, value in (("moe_intermediate_size", moe_intermediate_size), ("experts_per_token", experts_per_token),
                             ("num_shared_experts", num_shared_experts), ("dense_layers", list(dense_layers))):
            if value:
                raise InvalidSpec(field, value, "applies to a mixture of experts; set num_experts too")
    if sliding_layers is not None and sliding_window is None:
        raise InvalidSpec("sliding_layers", list(sliding_layers)[:8], "needs a sliding_window")
    if sliding_window is not None and sliding_layers is None:
        sliding_layers = range(layers)
    return ModelSpec(
        name=name,
        model_type="custom",
        layout="llama",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=heads if num_kv_heads is None else num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        sliding_window=sliding_window,
        sliding_layers=tuple(sliding_layers or ()),
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        moe_intermediate_size=(intermediate_size if moe_intermediate_size is None else moe_intermediate_size)
        if num_experts else 0,
        num_shared_experts=num_shared_experts,
        dense_layers=tuple(dense_layers),
    )


#: config.json's ``torch_dtype`` (``dtype`` since transformers 4.56) as nibble's float format names
_CONFIG_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def config_float_format(config: Mapping[str, object]) -> str | None:
    """The float format (``bf16``, ``fp16``, ``fp32``) a Hugging Face config names as the model's dtype (``dtype``,
    else ``torch_dtype``, else the same in its ``text_config``), or None when it names none: the dtype vLLM's ``--dtype
    auto`` starts from (config/model.py ``_get_and_verify_dtype``)."""
    for where in (config, config.get("text_config")):
        if not isinstance(where, Mapping):
            continue
        for key in ("dtype", "torch_dtype"):
            name = where.get(key)
            if isinstance(name, str) and name.removeprefix("torch.") in _CONFIG_DTYPES:
                return _CONFIG_DTYPES[name.removeprefix("torch.")]
    return None
