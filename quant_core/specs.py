"""The normalized descriptions nibble computes with: model, tensors, KV layers, hardware, workload.

All frozen dataclasses; `hf_config.py` builds a `ModelSpec` from a config.json,
`inventory.py` lists its tensors as `TensorEntry` rows and `kv_cache.py` its
attention layers as `KVLayer` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class KVLayer:
    """What one attention layer caches per token.

    `kind` is ``full`` (MHA/GQA/MQA), ``sliding`` (holds at most `window` tokens per
    sequence) or ``mla`` (DeepSeek: one latent of `latent_dim` = kv_lora_rank +
    qk_rope_head_dim per token, not per head, replicated on every tensor-parallel rank).
    For full and sliding layers each token caches `num_kv_heads` keys of `key_dim` and
    values of `value_dim` elements.
    """

    index: int
    kind: str
    num_kv_heads: int = 0
    key_dim: int = 0
    value_dim: int = 0
    window: int | None = None
    latent_dim: int = 0
