"""The normalized descriptions nibble computes with: model, tensors, KV layers, hardware, workload.

All frozen dataclasses; `hf_config.py` builds a `ModelSpec` from a config.json,
`inventory.py` lists its tensors as `TensorEntry` rows and `kv_cache.py` its
attention layers as `KVLayer` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quant_core.errors import InvalidSpec, MissingConfigKey, UnknownName

# Roles a weight tensor can have. The default quantization policy quantizes the
# 2-D tensors of the decoder's linear layers: QUANTIZED_ROLES.
ROLES: tuple[str, ...] = (
    "embedding",
    "position_embedding",
    "attention",
    "mlp",
    "expert",
    "router",
    "norm",
    "bias",
    "lm_head",
    "vision",
    "other",
)
QUANTIZED_ROLES: frozenset[str] = frozenset({"attention", "mlp", "expert"})


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One weight tensor of a model, or one row standing for `count` identical-shape tensors.

    `name` is a pattern in Hugging Face naming (``model.layers.{i}.mlp.experts.{e}.up_proj.weight``);
    `shape` is ``[out_features, in_features]`` for linear layers; `layers` lists the decoder
    layer indices the row repeats over (empty for tensors outside the layers, like the
    embedding); `per_layer` is how many such tensors one of those layers holds (routed
    experts: the expert count).  `count == per_layer × max(1, len(layers))`.
    `active_per_layer` is how many of them one token uses (top-k of the routed experts).
    """

    name: str
    shape: tuple[int, ...]
    role: str
    layers: tuple[int, ...] = ()
    per_layer: int = 1
    active_per_layer: int | None = None

    @property
    def count(self) -> int:
        return self.per_layer * max(1, len(self.layers))

    @property
    def elements(self) -> int:
        """Elements of one tensor of this row."""
        size = 1
        for dim in self.shape:
            size *= dim
        return size

    @property
    def total_elements(self) -> int:
        return self.elements * self.count


def _check_tower(tower: Any, limits: dict[str, tuple[int, int]], heads_key: str | None = None,
                 square_images: bool = False) -> None:
    """Check a vision tower's sizes against `limits` (each named ``vision_config.<field>``), that its heads divide its
    width (refused naming `heads_key`, the config key they come from) and that its images are whole patches."""
    for field, (low, high) in limits.items():
        object.__setattr__(tower, field, check_int(f"vision_config.{field}", getattr(tower, field), low, high))
    if square_images and tower.image_size % tower.patch_size:
        raise InvalidSpec("vision_config.image_size", tower.image_size,
                          f"is not a multiple of patch_size={tower.patch_size}")
    if heads_key is not None and tower.hidden_size % tower.num_attention_heads:
        raise InvalidSpec(heads_key, tower.num_attention_heads, f"does not divide hidden_size={tower.hidden_size}")


@dataclass(frozen=True, slots=True)
class VisionTower:
    """A multimodal model's SigLIP image encoder and the projector into the language model (Gemma 3's
    ``vision_config``): `num_layers` encoder layers of `hidden_size` with an MLP of `intermediate_size`,
    `image_size` square images cut into `patch_size` patches (one learned position each) of `num_channels`,
    projected by a ``[hidden_size, projection_size]`` matrix (the language model's width)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    image_size: int
    patch_size: int
    projection_size: int
    num_channels: int = 3

    def __post_init__(self) -> None:
        _check_tower(self, _VISION_LIMITS, square_images=True)


@dataclass(frozen=True, slots=True)
class Llama4VisionTower:
    """Llama 4's image encoder and projector (``vision_config`` of a ``llama4`` config, transformers'
    ``Llama4VisionModel`` and ``Llama4MultiModalProjector``): a patch embedding (a linear layer over unfolded
    `patch_size` x `patch_size` x `num_channels` patches), a class embedding and one learned position per patch and
    for the class token, `num_layers` encoder layers of `hidden_size` with `num_attention_heads` heads and an MLP of
    `intermediate_size` (every linear layer with a bias, LayerNorms with one), a pixel-shuffle adapter MLP
    (``vision_adapter.mlp``: `intermediate_size` -> `projector_input_dim` -> `projector_output_dim`, no biases), and
    the ``[projection_size, vision_output_dim]`` projector into the language model (its width)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    projector_input_dim: int
    projector_output_dim: int
    vision_output_dim: int
    projection_size: int
    num_channels: int = 3

    def __post_init__(self) -> None:
        _check_tower(self, _LLAMA4_VISION_LIMITS, "vision_config.num_attention_heads", square_images=True)


@dataclass(frozen=True, slots=True)
class PixtralVisionTower:
    """Mistral 3's image encoder and projector (``vision_config`` of a ``mistral3`` config, model_type ``pixtral``;
    transformers' ``PixtralVisionModel`` and ``Mistral3MultiModalProjector``, vLLM's ``PixtralHFVisionModel`` and
    ``Mistral3MultiModalProjector``): a patch convolution without bias (`num_channels` -> `hidden_size`, `patch_size`
    square), an RMSNorm (``ln_pre``), `num_layers` encoder layers of `hidden_size` with `num_attention_heads` heads
    (q/k/v/o without biases, 2-D RoPE: no position table) and a gated MLP of `intermediate_size`, each with two
    RMSNorms; then the projector: an RMSNorm, a patch merger (``merging_layer`` [hidden, hidden x
    `spatial_merge_size`^2], no bias) and two linear layers into the language model's width `projection_size`
    (``linear_1`` [projection, hidden], ``linear_2`` [projection, projection]), with biases when `projector_bias`
    (``multimodal_projector_bias``).  `image_size` is the largest image side it takes (``vision_config.image_size``,
    transformers' default 1,024; 1,540 in Mistral Small 3.1/3.2): no weight depends on it, vLLM's profiling image
    does."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    projection_size: int
    spatial_merge_size: int = 2
    projector_bias: bool = False
    num_channels: int = 3
    image_size: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.projector_bias, bool):
            raise InvalidSpec("multimodal_projector_bias", self.projector_bias, "must be true or false")
        _check_tower(self, _PIXTRAL_VISION_LIMITS, "vision_config.num_attention_heads")  # PixtralHFAttention asserts it
        merged_patch = self.patch_size * self.spatial_merge_size
        if self.image_size < merged_patch:  # vLLM's profiling image would hold no embedding (and nibble divide by 0)
            raise InvalidSpec("vision_config.image_size", self.image_size,
                              f"is smaller than one merged patch (patch_size x spatial_merge_size = {merged_patch}): "
                              "an image of it has no embedding")


@dataclass(frozen=True, slots=True)
class QwenVisionTower:
    """Qwen2.5-VL's vision transformer and patch merger (``vision_config`` of a ``qwen2_5_vl`` config, transformers'
    ``Qwen2_5_VisionTransformerPretrainedModel``): a bias-free Conv3d patch embedding over `temporal_patch_size` x
    `patch_size` x `patch_size` x `num_channels` pixels, `num_layers` blocks of `hidden_size` with
    `num_attention_heads` heads (a fused ``qkv`` and a ``proj``, both with biases), a SwiGLU MLP of
    `intermediate_size` with biases and two RMSNorms, no learned positions (2-D rotary), and the merger: an RMSNorm,
    then an MLP over `spatial_merge_size`^2 merged patches (hidden x merge^2 -> the same -> `projection_size`, the
    language model's width), with biases.  Window attention (``window_size``, ``fullatt_block_indexes``) changes no
    weight."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    projection_size: int
    num_channels: int = 3

    def __post_init__(self) -> None:
        _check_tower(self, _QWEN_VISION_LIMITS, "vision_config.num_heads")


@dataclass(frozen=True, slots=True)
class Qwen3VisionTower:
    """Qwen3-VL's vision transformer and mergers (``vision_config`` of a ``qwen3_vl`` config, transformers'
    ``Qwen3VLVisionModel``): a Conv3d patch embedding with a bias over `temporal_patch_size` x `patch_size` x
    `patch_size` x `num_channels` pixels, a learned table of `num_position_embeddings` positions, `num_layers` blocks
    of `hidden_size` with `num_attention_heads` heads (``qkv`` and ``proj`` with biases), a GELU MLP
    (``linear_fc1``/``linear_fc2`` of `intermediate_size`, with biases) and two LayerNorms with biases; the merger (a
    LayerNorm of hidden_size, then hidden x merge^2 -> the same -> `projection_size`, with biases) and
    `deepstack_mergers` more mergers (``deepstack_visual_indexes``: their LayerNorm over the merged width) whose rows
    are added to the first decoder layers' hidden states."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    num_position_embeddings: int
    deepstack_mergers: int
    projection_size: int
    num_channels: int = 3

    def __post_init__(self) -> None:
        _check_tower(self, _QWEN3_VISION_LIMITS, "vision_config.num_heads")


#: the vision towers a `ModelSpec` may carry
VISION_TOWERS = (VisionTower, Llama4VisionTower, PixtralVisionTower, QwenVisionTower, Qwen3VisionTower)


#: the state-cache dtypes a linear-attention layer may keep its recurrent state in (None: the model's dtype)
SSM_STATE_DTYPES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True, slots=True)
class GatedDeltaNet:
    """The Gated DeltaNet ("linear_attention") layers of a hybrid model (Qwen3-Next's ``layer_types``): which
    decoder layers they are (`layers`; the others are gated full attention) and their sizes, as transformers'
    ``Qwen3NextGatedDeltaNet`` and vLLM's ``GatedDeltaNetAttention`` read them: `num_key_heads` query/key heads of
    `key_head_dim` (``linear_num_key_heads``, ``linear_key_head_dim``), `num_value_heads` value heads of
    `value_head_dim`, a causal depthwise convolution of `conv_kernel_size` over the ``2 x key + value`` channels.
    Each layer caches a fixed state per sequence, not per token: the convolution's last ``kernel - 1`` inputs and
    a ``[value heads, value_head_dim, key_head_dim]`` recurrent state (`ssm_state_dtype`: the state's dtype when a
    config fixes it, Qwen3.5's ``mamba_ssm_dtype``; None = the model's)."""

    layers: tuple[int, ...]
    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel_size: int
    ssm_state_dtype: str | None = None
    #: the checkpoints hold the projections apart, ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b`` and ``in_proj_a``
    #: (Qwen3.5), not fused as ``in_proj_qkvz`` and ``in_proj_ba`` (Qwen3-Next)
    split_projections: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.split_projections, bool):
            raise InvalidSpec("linear_attention.split_projections", self.split_projections, "must be true or false")
        for field, (low, high) in _LINEAR_ATTENTION_LIMITS.items():
            object.__setattr__(self, field, check_int(f"linear_attention.{field}", getattr(self, field), low, high))
        if not isinstance(self.layers, tuple | list) or not self.layers:
            raise InvalidSpec("layer_types", self.layers, "a hybrid model needs at least one linear_attention layer")
        layers = tuple(check_int(f"layer_types[{i}]", layer, 0, MAX_LAYERS - 1) for i, layer in enumerate(self.layers))
        if list(layers) != sorted(set(layers)):
            raise InvalidSpec("layer_types", list(layers), "layer indices must be increasing, without repeats")
        object.__setattr__(self, "layers", layers)
        if self.num_value_heads % self.num_key_heads:
            raise InvalidSpec("linear_num_value_heads", self.num_value_heads,
                              f"must be a multiple of linear_num_key_heads={self.num_key_heads} (each key head "
                              "serves a whole group of value heads)")
        if self.ssm_state_dtype is not None and self.ssm_state_dtype not in SSM_STATE_DTYPES:
            raise UnknownName("mamba_ssm_dtype", str(self.ssm_state_dtype), list(SSM_STATE_DTYPES),
                              field="mamba_ssm_dtype")

    @property
    def key_dim(self) -> int:
        """Query (and key) width: ``num_key_heads x key_head_dim``."""
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        """Value (and output gate z) width: ``num_value_heads x value_head_dim``."""
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise convolution: ``2 x key_dim + value_dim`` (q, k and v)."""
        return 2 * self.key_dim + self.value_dim


#: the most RoPE scalings a spec keeps (one per layer type of a transformers v5 ``rope_parameters``)
MAX_ROPE_SCALINGS = 8


#: the config keys a RoPE scaling is read from (`RopeScaling.source`)
ROPE_SCALING_SOURCES = ("rope_scaling", "rope_parameters")


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """A RoPE scaling a model's config declares (``rope_scaling``, or ``rope_parameters`` one per layer type), as
    vLLM's ``_get_and_verify_max_len`` reads it to derive the longest context it accepts (`ModelSpec.rope_scalings`).

    `rope_type` is the type after vLLM's renames (``type`` read when ``rope_type`` is absent; ``su`` is ``longrope``,
    ``mrope`` ``default``: patch_rope_scaling_dict in 0.11, patch_rope_parameters_dict in 0.19 and 0.33); `factor`
    its ``factor`` (None: absent or null); `original_max_position_embeddings` the pretraining context a yarn scaling
    is taken from (the scaling's own, else the config's top-level key as Phi-3 keeps it; None: neither).
    `source` is the config key the scaling came from (``rope_scaling`` or ``rope_parameters``), and
    `own_original` whether its original length is the scaling's own rather than the top-level key's: vLLM 0.11 reads
    only ``rope_scaling`` and only a yarn scaling's own original.
    """

    rope_type: str
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    source: str = "rope_scaling"
    own_original: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rope_type, str) or not 0 < len(self.rope_type) <= 100:
            raise InvalidSpec("rope_scaling.rope_type", self.rope_type, "must be a non-empty string")
        factor = self.factor
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int | float)
                                   or not 0 < factor <= MAX_POSITIONS):
            raise InvalidSpec("rope_scaling.factor", factor, f"must be a number in (0, {MAX_POSITIONS}]")
        if factor is not None:
            object.__setattr__(self, "factor", float(factor))
        if self.source not in ROPE_SCALING_SOURCES:
            raise InvalidSpec("rope_scaling.source", self.source, f"must be one of {', '.join(ROPE_SCALING_SOURCES)}")
        if not isinstance(self.own_original, bool):
            raise InvalidSpec("rope_scaling.own_original", self.own_original, "must be true or false")
        if self.original_max_position_embeddings is not None:
            object.__setattr__(self, "original_max_position_embeddings", check_int(
                "rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings, 1,
                MAX_POSITIONS))


@dataclass(frozen=True, slots=True)
class KVLayer:
    """What one attention layer caches per token.

    `kind` is ``full`` (MHA/GQA/MQA), ``sliding`` (holds at most `window` tokens per
    sequence), ``chunked`` (Llama 4's chunked local attention: a token attends to the tokens of its own chunk of
    `window` = ``attention_chunk_size`` tokens, so an engine that frees the chunks behind holds at most one; what
    an engine holds is `kv_cache.kv_layers`'s), ``mla`` (DeepSeek: one latent of `latent_dim` = kv_lora_rank +
    qk_rope_head_dim per token, not per head, replicated on every tensor-parallel rank) or ``dsa``
    (DeepSeek-V3.2: that latent plus the sparse-attention indexer's key, see `rope_dim`).
    For full, sliding and chunked layers each token caches `num_kv_heads` keys of `key_dim` and
    values of `value_dim` elements.
    """

    index: int
    kind: str
    num_kv_heads: int = 0
    key_dim: int = 0
    value_dim: int = 0
    window: int | None = None
    latent_dim: int = 0
    #: ``dsa`` (DeepSeek Sparse Attention, DeepSeek-V3.2): an ``mla`` latent whose last `rope_dim` elements are
    #: the rotary key (kept at 16 bits in DeepSeek's fp8 layout), beside the lightning indexer's own key of
    #: `indexer_dim` elements (vLLM's DeepseekV32IndexerCache: fp8 with one fp32 scale per 128)
    rope_dim: int = 0
    indexer_dim: int = 0


# ---------------------------------------------------------------------------
# ModelSpec: the normalized architecture every other module computes from.
# ---------------------------------------------------------------------------

# How a model names and arranges its tensors (see inventory.py):
#   llama     embed_tokens, q/k/v/o_proj, gate/up/down_proj; MoE as mlp.gate + mlp.experts.{e}.*
#             (llama, mistral, qwen2, qwen3, qwen3_moe, gemma2, gemma3, generic decoders; glm4_moe with
#             its router's e_score_correction_bias and mlp.shared_experts.*)
#   mixtral   llama attention, MoE as block_sparse_moe.gate + experts.{e}.w1/w2/w3 (mixtral; phimoe with
#             LayerNorms with bias, attention biases and an lm_head bias; minimax_m2 with q/k norms over all heads
#             and block_sparse_moe.e_score_correction_bias)
#   phi3      fused qkv_proj and gate_up_proj
#   deepseek  multi-head latent attention (MLA), dense first layers, routed + shared experts (deepseek_v32: plus
#             each layer's lightning indexer, self_attn.indexer.wq_b / wk / k_norm (a LayerNorm) / weights_proj)
#   falcon    fused query_key_value (MQA/GQA), LayerNorm with bias, parallel attention
#   gpt2      learned positions, Conv1D layers with biases, LayerNorm with bias
#   gpt_oss   MoE with fused expert tensors and biases, router bias, attention sinks
#   qwen2_moe llama attention, MoE as mlp.gate + mlp.experts.{e}.* beside one mlp.shared_expert of its own width,
#             scaled per token by mlp.shared_expert_gate ([1, hidden], a sigmoid gate)
#   llama4    llama attention under ``feed_forward``: routed experts fused as [E, in, out] tensors beside a router
#             and one shared expert, dense layers (`dense_layers`) of `intermediate_size`; the multimodal
#             ``llama4`` type names the language model ``language_model.model.*`` beside ``vision_model.*``
#   (mistral3: the llama layout of its ``mistral`` text_config named ``language_model.model.*`` and
#             ``language_model.lm_head``, beside the Pixtral ``vision_tower.*`` and ``multi_modal_projector.*``)
#   (qwen2_5_vl: the llama layout with Qwen2's biases beside a `QwenVisionTower` named ``visual.*``; qwen3_vl: Qwen3's
#   layout under ``model.language_model.*`` beside a `Qwen3VisionTower` under ``model.visual.*``; qwen3_vl_moe:
#   Qwen3-MoE's with each layer's experts fused, ``mlp.experts.gate_up_proj[{e}]`` and ``down_proj[{e}]``)
#   qwen3_next Qwen3-Next's hybrid: `GatedDeltaNet` layers (``linear_attn.*``) and gated full-attention layers
#             (``self_attn.*``, q_proj twice as wide for the output gate, q/k norms), every layer a Qwen2-MoE-style
#             sparse block (router, routed experts, one gated shared expert) or, per mlp_only_layers, a dense MLP
#   (qwen3_5_moe: that layout under ``model.language_model.*``, the DeltaNet projections apart as Qwen3.5's, every
#   layer sparse with its experts fused, ``mlp.experts.gate_up_proj[{e}]`` and ``down_proj[{e}]``, beside a
#   `Qwen3VisionTower` without deepstack mergers under ``model.visual.*``)
LAYOUTS: tuple[str, ...] = ("llama", "mixtral", "phi3", "deepseek", "falcon", "gpt2", "gpt_oss", "qwen2_moe",
                           "llama4", "qwen3_next")
#   glm4      GLM-4-0414: llama attention with q/k/v biases, four RMSNorms a layer (input_layernorm,
#             post_self_attn_layernorm, post_attention_layernorm, post_mlp_layernorm), the MLP's gate and up
#             fused in one ``mlp.gate_up_proj`` [2 x intermediate, hidden] as the checkpoints store it
LAYOUTS += ("glm4",)
#   olmo2     OLMo 2 / Olmo 3: llama attention whose ``q_norm`` / ``k_norm`` RMSNorms span all heads ([heads x
#             head_dim], [kv_heads x head_dim]), and only post-norms (``post_attention_layernorm``,
#             ``post_feedforward_layernorm``) on the attention's and the MLP's outputs; no input_layernorm
LAYOUTS += ("olmo2",)
#   (seed_oss and smollm3: the llama layout; seed_oss with q/k/v biases and a head_dim other than hidden / heads)
NORM_KINDS: tuple[str, ...] = ("rmsnorm", "layernorm")

# Sane maximums: far above any published model (largest today: hidden 25,600, 126 layers,
# vocab 262,208, 384 experts), low enough that a typo like 10^12 layers is refused at once,
# before anything is allocated per layer.
MAX_LAYERS = 4_096
#: the longest model name or type: a Hugging Face repo id is at most 96 characters, a local path a few hundred; every
#: answer about the model echoes its name, so a megabyte name would make each answer megabytes (issue 17)
MAX_NAME_CHARS = 1_000
MAX_HIDDEN_SIZE = 262_144
MAX_HEADS = 8_192
MAX_HEAD_DIM = 8_192
MAX_INTERMEDIATE_SIZE = 4_194_304
MAX_VOCAB_SIZE = 16_777_216
MAX_EXPERTS = 16_384
MAX_POSITIONS = 268_435_456
#: a rotary cos/sin cache's positions (a scaled cache holds max_position_embeddings x factor of them)
MAX_ROTARY_ROWS = 2**32
MAX_RANK = 262_144

_INT_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, MAX_HIDDEN_SIZE),
    "num_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, MAX_HEADS),
    "num_kv_heads": (1, MAX_HEADS),
    "head_dim": (1, MAX_HEAD_DIM),
    "intermediate_size": (1, MAX_INTERMEDIATE_SIZE),
    "vocab_size": (1, MAX_VOCAB_SIZE),
    "norms_per_layer": (1, 4),
    "num_experts": (0, MAX_EXPERTS),
    "experts_per_token": (0, MAX_EXPERTS),
    "moe_intermediate_size": (0, MAX_INTERMEDIATE_SIZE),
    "num_shared_experts": (0, MAX_EXPERTS),
    "shared_expert_intermediate_size": (0, MAX_INTERMEDIATE_SIZE),
    "kv_lora_rank": (0, MAX_RANK),
    "qk_nope_head_dim": (0, MAX_HEAD_DIM),
    "qk_rope_head_dim": (0, MAX_HEAD_DIM),
    "v_head_dim": (0, MAX_HEAD_DIM),
    "rotary_dim": (0, MAX_HEAD_DIM),
    # DeepSeek Sparse Attention's lightning indexer (deepseek_v32); 0 = none
    "index_n_heads": (0, MAX_HEADS),
    "index_head_dim": (0, MAX_HEAD_DIM),
    "index_topk": (0, MAX_POSITIONS),
}
#: a vision tower's sizes (its position table is (image_size / patch_size)^2 rows: at most 2^24 with these)
_VISION_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, MAX_HIDDEN_SIZE),
    "num_layers": (1, MAX_LAYERS),
    "intermediate_size": (1, MAX_INTERMEDIATE_SIZE),
    "image_size": (1, 65_536),
    "patch_size": (1, 65_536),
    "projection_size": (1, MAX_HIDDEN_SIZE),
    "num_channels": (1, 64),
}
#: Llama 4's vision tower (its position table is (image_size / patch_size)^2 + 1 rows)
_LLAMA4_VISION_LIMITS: dict[str, tuple[int, int]] = {
    **_VISION_LIMITS,
    "num_attention_heads": (1, MAX_HEADS),
    "projector_input_dim": (1, MAX_HIDDEN_SIZE),
    "projector_output_dim": (1, MAX_HIDDEN_SIZE),
    "vision_output_dim": (1, MAX_HIDDEN_SIZE),
}
#: Mistral 3's Pixtral tower (no position table: its positions are 2-D rotary)
_PIXTRAL_VISION_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, MAX_HIDDEN_SIZE),
    "num_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, MAX_HEADS),
    "intermediate_size": (1, MAX_INTERMEDIATE_SIZE),
    "patch_size": (1, 65_536),
    "projection_size": (1, MAX_HIDDEN_SIZE),
    "spatial_merge_size": (1, 64),
    "num_channels": (1, 64),
    "image_size": (1, 65_536),
}
#: Qwen2.5-VL's vision tower (its merger's first layer is (hidden x spatial_merge_size^2)^2 elements)
_QWEN_VISION_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, MAX_HIDDEN_SIZE),
    "num_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, MAX_HEADS),
    "intermediate_size": (1, MAX_INTERMEDIATE_SIZE),
    "patch_size": (1, 65_536),
    "temporal_patch_size": (1, 64),
    "spatial_merge_size": (1, 64),
    "projection_size": (1, MAX_HIDDEN_SIZE),
    "num_channels": (1, 64),
}
#: Qwen3-VL's vision tower
_QWEN3_VISION_LIMITS: dict[str, tuple[int, int]] = {
    **_QWEN_VISION_LIMITS,
    "num_position_embeddings": (1, 1 << 24),
    "deepstack_mergers": (0, MAX_LAYERS),
}
#: a hybrid model's Gated DeltaNet sizes
_LINEAR_ATTENTION_LIMITS: dict[str, tuple[int, int]] = {
    "num_key_heads": (1, MAX_HEADS),
    "num_value_heads": (1, MAX_HEADS),
    "key_head_dim": (1, MAX_HEAD_DIM),
    "value_head_dim": (1, MAX_HEAD_DIM),
    "conv_kernel_size": (1, 1_024),
}
_OPTIONAL_INT_LIMITS: dict[str, tuple[int, int]] = {
    "max_position_embeddings": (1, MAX_POSITIONS),
    "sliding_window": (1, MAX_POSITIONS),
    "attention_chunk_size": (1, MAX_POSITIONS),
    "q_lora_rank": (1, MAX_RANK),
}
_BOOL_FIELDS: tuple[str, ...] = (
    "tie_word_embeddings",
    "attention_qkv_bias",
    "attention_output_bias",
    "qk_norm",
    "attention_sinks",
    "mlp_bias",
    "learned_position_embeddings",
    "router_bias",
    "expert_bias",
    "lm_head_bias",
)
_LAYER_TUPLE_FIELDS: tuple[str, ...] = ("sliding_layers", "chunked_layers", "dense_layers")


def check_int(field: str, value: object, minimum: int, maximum: int) -> int:
    """`value` as an int in [minimum, maximum], or `InvalidSpec` naming `field` and the value.

    Bools are refused (JSON ``true`` is not a size); integral floats (``4096.0``) are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(field, value, "must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidSpec(field, value, "must be an integer")
        value = int(value)
    if value < minimum:
        reason = "must be positive" if minimum == 1 else f"must be at least {minimum}"
        raise InvalidSpec(field, value, reason)
    if value > maximum:
        raise InvalidSpec(field, value, f"is over the maximum of {maximum}")
    return value


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder LLM's architecture, normalized across model families.

    Built by `hf_config.model_from_hf_config`, `hf_config.model_from_sizes` or
    `catalog.get_preset`; `inventory.inventory` lists its tensors from these fields alone,
    and `kv_cache.kv_layers` its attention layers.  Every field is validated on
    construction (`InvalidSpec` naming the field and the value), so a spec that exists is
    one nibble can compute with.

    Sizes: `head_dim` is the attention head size (for MLA, qk_nope + qk_rope);
    `intermediate_size` the dense MLP width; `num_kv_heads` the key/value heads (MQA = 1).
    MoE: `num_experts` routed experts (0 = dense), `experts_per_token` top-k,
    `moe_intermediate_size` one expert's width, `num_shared_experts` always-on experts of
    the same width (DeepSeek) or, with `shared_expert_intermediate_size`, of that width together
    (Qwen2-MoE's one gated shared expert), `dense_layers` the layers of a MoE model whose MLP is dense.
    `lm_head_bias`: the lm_head has a bias of vocab_size (Phi-3.5-MoE).
    MLA (DeepSeek, when `kv_lora_rank` > 0): `q_lora_rank` (None = no query compression),
    `kv_lora_rank`, `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`.
    Attention window: `sliding_layers` lists the layers that attend to (and cache) at most
    `sliding_window` tokens; `chunked_layers` the layers of chunked local attention (Llama 4's RoPE layers), each
    token attending to the tokens of its own chunk of `attention_chunk_size` (what they cache depends on the engine:
    `kv_cache.kv_layers`).  `max_position_embeddings` is the trained context (for
    `learned_position_embeddings`, also the rows of the position table).
    Longest context an engine accepts: `config_max_length` is the context the config states as vLLM's
    ``_get_and_verify_max_len`` reads it before RoPE scaling, `config_max_length_key` where it comes from, when
    that is not `max_position_embeddings` (None: it is); `rope_scalings` the config's RoPE scalings a vLLM release
    may scale that context by (`engines.vllm_max_len`).
    """

    name: str
    model_type: str
    layout: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_qkv_bias: bool = False
    attention_output_bias: bool = False
    qk_norm: bool = False
    attention_sinks: bool = False
    mlp_bias: bool = False
    norm: str = "rmsnorm"
    norms_per_layer: int = 2
    max_position_embeddings: int | None = None
    learned_position_embeddings: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    #: chunked local attention (Llama 4): the layers that attend within chunks of `attention_chunk_size` tokens
    attention_chunk_size: int | None = None
    chunked_layers: tuple[int, ...] = ()
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    #: the shared experts' width when it is not ``num_shared_experts × moe_intermediate_size`` (Qwen2-MoE: one
    #: shared expert of ``shared_expert_intermediate_size``); 0 = that product
    shared_expert_intermediate_size: int = 0
    dense_layers: tuple[int, ...] = ()
    router_bias: bool = False
    expert_bias: bool = False
    #: an ``lm_head.bias`` of vocab_size (Phi-3.5-MoE's ``lm_head_bias``), beside the lm_head or the tied embedding
    lm_head_bias: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    #: DeepSeek Sparse Attention (``deepseek_v32``): each layer's lightning indexer scores the cached tokens with
    #: `index_n_heads` heads of `index_head_dim` and keeps the `index_topk` best for MLA (0 = no indexer)
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    #: a multimodal model's image encoder, which engines load beside the language model (None: text only)
    vision: VisionTower | Llama4VisionTower | PixtralVisionTower | QwenVisionTower | Qwen3VisionTower | None = None
    #: a hybrid model's Gated DeltaNet layers (Qwen3-Next); its other layers are full attention (None: none)
    linear_attention: GatedDeltaNet | None = None
    #: the full-attention layers' q_proj is twice as wide: its second half gates the output (Qwen3-Next)
    attention_output_gate: bool = False
    #: the rotary dimensions of a head (``head_dim x partial_rotary_factor``; MLA: ``qk_rope_head_dim``); 0 = no
    #: RoPE (learned positions, ALiBi) or not recorded.  No tensor depends on it: vLLM's cos/sin caches do
    #: (`engines.vllm_encoders.rotary_cache_bytes`)
    rotary_dim: int = 0
    #: the positions (rows) of each distinct cos/sin cache vLLM's ``get_rope`` builds for the model, one entry per
    #: distinct set of arguments (Gemma 3: the local and the global RoPE), as its RotaryEmbedding class sizes it
    #: (yarn: ``original_max_position_embeddings x factor``; longrope: the short and the long cache together)
    rotary_cache_rows: tuple[int, ...] = ()
    #: the caches are multimodal RoPE's (``mrope_section``: Qwen2.5-VL, Qwen3-VL, Qwen3.5), whose rows vLLM
    #: multiplies by its release's positions factor (mrope.py, ``cache_max_position_num``)
    rotary_mrope: bool = False
    #: the context the config states as vLLM's ``_get_and_verify_max_len`` reads it before RoPE scaling, where it
    #: is not `max_position_embeddings`: the smallest of the length keys vLLM reads (``model_max_length`` when
    #: stated), or the transformers config class's default where config.json states none, or vLLM's own 2048 where
    #: no class default is known; None: `max_position_embeddings` is it (or, when that is None too, it is not known:
    #: a spec of explicit sizes)
    config_max_length: int | None = None
    #: the key (or the default) `config_max_length` comes from, in words ("" with it None)
    config_max_length_key: str = ""
    #: the RoPE scalings of the config whose type a vLLM release scales the context by (not ``su``, ``longrope`` or
    #: ``llama3``, nor a ``default`` one without a factor), in the config's order
    rope_scalings: tuple[RopeScaling, ...] = ()

    def __post_init__(self) -> None:
        for field in ("name", "model_type"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise InvalidSpec(field, value, "must be a non-empty string")
            if len(value) > MAX_NAME_CHARS:
                raise InvalidSpec(field, f"{len(value)} characters", f"is longer than {MAX_NAME_CHARS} characters")
        if self.layout not in LAYOUTS:
            raise UnknownName("layout", str(self.layout), list(LAYOUTS), field="layout")
        if self.norm not in NORM_KINDS:
            raise UnknownName("norm", str(self.norm), list(NORM_KINDS), field="norm")
        for field, (low, high) in _INT_LIMITS.items():
            object.__setattr__(self, field, check_int(field, getattr(self, field), low, high))
        for field, (low, high) in _OPTIONAL_INT_LIMITS.items():
            if getattr(self, field) is not None:
                object.__setattr__(self, field, check_int(field, getattr(self, field), low, high))
        for field in _BOOL_FIELDS:
            if not isinstance(getattr(self, field), bool):
                raise InvalidSpec(field, getattr(self, field), "must be true or false")
        for field in _LAYER_TUPLE_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, tuple | list):
                raise InvalidSpec(field, value, "must be a list of layer indices")
            if len(value) > self.num_layers:
                raise InvalidSpec(field, f"{len(value)} entries", f"more than num_layers={self.num_layers}")
            layers = tuple(
                check_int(f"{field}[{i}]", layer, 0, self.num_layers - 1) for i, layer in enumerate(value)
            )
            if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
                raise InvalidSpec(field, list(layers), "layer indices must be increasing, without repeats")
            object.__setattr__(self, field, layers)
        if self.num_attention_heads % self.num_kv_heads:
            raise InvalidSpec("num_kv_heads", self.num_kv_heads,
                              f"must divide num_attention_heads={self.num_attention_heads}")
        if self.sliding_layers and self.sliding_window is None:
            raise InvalidSpec("sliding_window", None, "sliding_layers are given but no window")
        if self.chunked_layers and self.attention_chunk_size is None:
            raise InvalidSpec("attention_chunk_size", None, "chunked_layers are given but no chunk size")
        if self.chunked_layers and (self.sliding_layers or self.is_mla):
            # vLLM's FullAttentionSpec.merge: "Model with both sliding window layers and chunked local attention
            # layers is not supported"
            raise InvalidSpec("chunked_layers", list(self.chunked_layers[:8]),
                              "chunked local attention goes with full attention layers only (no sliding or latent "
                              "attention), as in vLLM")
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise InvalidSpec("experts_per_token", self.experts_per_token,
                                  f"must be between 1 and num_experts={self.num_experts}")
            if self.moe_intermediate_size < 1:
                raise InvalidSpec("moe_intermediate_size", self.moe_intermediate_size,
                                  "must be positive for a mixture-of-experts model")
        elif (self.experts_per_token or self.num_shared_experts or self.shared_expert_intermediate_size
              or self.dense_layers):
            raise InvalidSpec("num_experts", 0, "experts_per_token, num_shared_experts, "
                              "shared_expert_intermediate_size and dense_layers need routed experts")
        if self.is_mla:
            for field in ("qk_rope_head_dim", "v_head_dim"):
                if getattr(self, field) < 1:
                    raise InvalidSpec(field, getattr(self, field), "must be positive for MLA attention")
        self._check_indexer()
        if self.learned_position_embeddings and self.max_position_embeddings is None:
            raise InvalidSpec("max_position_embeddings", None, "learned position embeddings need a size")
        if self.vision is not None and not isinstance(self.vision, VISION_TOWERS):
            raise InvalidSpec("vision", type(self.vision).__name__, "must be a vision tower (or absent)")
        self._check_rotary_caches()
        self._check_linear_attention()
        self._check_context_limit()

    def _check_context_limit(self) -> None:
        """The config's stated context is a length with its key, and the RoPE scalings are `RopeScaling` rows."""
        if self.config_max_length is not None:
            object.__setattr__(self, "config_max_length", check_int("config_max_length", self.config_max_length, 1,
                                                                    MAX_POSITIONS))
        key = self.config_max_length_key
        if not isinstance(key, str) or len(key) > MAX_NAME_CHARS or (self.config_max_length is None) != (not key):
            raise InvalidSpec("config_max_length_key", key, "names where config_max_length comes from, and only "
                              "with it")
        scalings = self.rope_scalings
        if not isinstance(scalings, tuple | list) or len(scalings) > MAX_ROPE_SCALINGS:
            raise InvalidSpec("rope_scalings", scalings, f"must be a list of at most {MAX_ROPE_SCALINGS} scalings")
        try:
            rows = tuple(RopeScaling(**row) if isinstance(row, dict) else row for row in scalings)
        except TypeError as error:  # a key that is not a RopeScaling field
            raise InvalidSpec("rope_scalings", list(scalings)[:4], f"is not a list of whole RoPE scalings: {error}") \
                from None
        if not all(isinstance(row, RopeScaling) for row in rows):
            raise InvalidSpec("rope_scalings", list(scalings)[:4], "must be RoPE scalings (rope_type, factor, "
                              "original_max_position_embeddings)")
        object.__setattr__(self, "rope_scalings", rows)

    def _check_rotary_caches(self) -> None:
        """Each cos/sin cache has 1 to ``MAX_ROTARY_ROWS`` positions, at most four of them, and only with rotary
        dimensions; the mrope flag is a flag."""
        rows = self.rotary_cache_rows
        if not isinstance(rows, tuple | list) or len(rows) > 4:
            raise InvalidSpec("rotary_cache_rows", rows, "must be a list of at most 4 cache sizes")
        object.__setattr__(self, "rotary_cache_rows", tuple(
            check_int(f"rotary_cache_rows[{i}]", value, 1, MAX_ROTARY_ROWS) for i, value in enumerate(rows)))
        if rows and not self.rotary_dim:
            raise InvalidSpec("rotary_cache_rows", list(rows), "needs rotary_dim")
        if not isinstance(self.rotary_mrope, bool):
            raise InvalidSpec("rotary_mrope", self.rotary_mrope, "must be true or false")

    def _check_linear_attention(self) -> None:
        """A hybrid model's Gated DeltaNet block: its layers exist, and the output gate is a flag."""
        if not isinstance(self.attention_output_gate, bool):
            raise InvalidSpec("attention_output_gate", self.attention_output_gate, "must be true or false")
        linear = self.linear_attention
        if (linear is None) != (self.layout != "qwen3_next"):
            raise InvalidSpec("linear_attention", None if linear is None else "a GatedDeltaNet",
                              "the qwen3_next layout, and only it, has Gated DeltaNet layers")
        if linear is None:
            return
        if not isinstance(linear, GatedDeltaNet):
            raise InvalidSpec("linear_attention", type(linear).__name__, "must be a GatedDeltaNet (or absent)")
        if linear.layers[-1] >= self.num_layers:
            raise InvalidSpec("layer_types", f"{len(linear.layers)} linear_attention layers up to layer "
                              f"{linear.layers[-1]}", f"more than num_hidden_layers={self.num_layers}")
        if self.sliding_layers or self.chunked_layers or self.is_mla:
            raise InvalidSpec("linear_attention", "with sliding, chunked or latent attention",
                              "a hybrid model's other layers are full attention")

    def _check_indexer(self) -> None:
        """DeepSeek Sparse Attention's indexer reads the MLA query latent (its ``wq_b`` is [heads x dim,
        q_lora_rank]): it needs MLA with query compression, and all three of its sizes."""
        sizes = (self.index_n_heads, self.index_head_dim, self.index_topk)
        if not any(sizes):
            return
        if not all(sizes):
            missing = next(f for f in ("index_n_heads", "index_head_dim", "index_topk") if not getattr(self, f))
            raise InvalidSpec(missing, 0, "must be positive when the sparse-attention indexer has any size")
        if not self.is_mla or self.q_lora_rank is None:
            raise InvalidSpec("index_n_heads", self.index_n_heads,
                              "a sparse-attention indexer needs MLA attention with q_lora_rank (it reads the "
                              "query latent)")

    @property
    def has_indexer(self) -> bool:
        """True for DeepSeek Sparse Attention (DeepSeek-V3.2): each layer has a lightning indexer and its key cache."""
        return self.index_n_heads > 0

    @property
    def is_moe(self) -> bool:
        """True when the model has routed experts."""
        return self.num_experts > 0

    @property
    def shared_expert_width(self) -> int:
        """The always-on shared experts' intermediate width, all of them together (0 without any)."""
        return self.shared_expert_intermediate_size or self.moe_intermediate_size * self.num_shared_experts

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (DeepSeek-V2/V3): the KV cache holds one latent."""
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the layers whose MLP is a mixture of experts."""
        if not self.is_moe:
            return ()
        dense = set(self.dense_layers)
        return tuple(i for i in range(self.num_layers) if i not in dense)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able dict of every field (tuples as lists); `from_dict` inverts it."""
        out: dict[str, object] = {}
        for field in self.__dataclass_fields__:
            value = getattr(self, field)
            out[field] = list(value) if isinstance(value, tuple) else value
        out["rope_scalings"] = [{"rope_type": row.rope_type, "factor": row.factor,
                                 "original_max_position_embeddings": row.original_max_position_embeddings}
                                for row in self.rope_scalings]
        return out

    @classmethod
    def from_dict(cls, data: object) -> ModelSpec:
        """Build a spec from `to_dict` output (or an equivalent JSON object), validating it."""
        if not isinstance(data, dict):
            raise InvalidSpec("spec", type(data).__name__, "must be a JSON object")
        known = cls.__dataclass_fields__
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise InvalidSpec(unknown[0], data[unknown[0]],
                              f"is not a ModelSpec field (known: {', '.join(known)})")
        for field in ("name", "model_type", "layout", "hidden_size", "num_layers", "num_attention_heads",
                      "num_kv_heads", "head_dim", "intermediate_size", "vocab_size"):
            if field not in data:
                raise MissingConfigKey(field, str(data.get("model_type", "spec")))
        values: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in data.items()
        }
        vision = values.get("vision")
        if isinstance(vision, dict):  # to_dict's tower as JSON: Llama 4's has a vision_output_dim, Qwen3's a
            # num_position_embeddings, Qwen2.5's a temporal_patch_size, Pixtral's (only) a spatial_merge_size
            tower: type[VisionTower | Llama4VisionTower | PixtralVisionTower | QwenVisionTower | Qwen3VisionTower] = (
                Llama4VisionTower if "vision_output_dim" in vision
                else Qwen3VisionTower if "num_position_embeddings" in vision
                else QwenVisionTower if "temporal_patch_size" in vision
                else PixtralVisionTower if "spatial_merge_size" in vision else VisionTower)
            known_fields = tower.__dataclass_fields__
            unknown_fields = sorted(str(key) for key in vision if key not in known_fields)
            if unknown_fields:
                raise InvalidSpec(f"vision.{unknown_fields[0]}", vision[unknown_fields[0]],
                                  f"is not a {tower.__name__} field (known: {', '.join(known_fields)})")
            try:
                values["vision"] = tower(**vision)
            except TypeError as error:  # a field left out
                raise InvalidSpec("vision", sorted(vision), f"is not a whole {tower.__name__}: {error}") from None
        linear = values.get("linear_attention")
        if isinstance(linear, dict):  # to_dict's GatedDeltaNet as JSON
            unknown_fields = sorted(str(key) for key in linear if key not in GatedDeltaNet.__dataclass_fields__)
            if unknown_fields:
                raise InvalidSpec(f"linear_attention.{unknown_fields[0]}", linear[unknown_fields[0]],
                                  "is not a GatedDeltaNet field")
            try:
                values["linear_attention"] = GatedDeltaNet(**linear)
            except TypeError as error:
                raise InvalidSpec("linear_attention", sorted(linear), f"is not a whole GatedDeltaNet: {error}") \
                    from None
        return cls(**values)
