"""The KV cache: what each attention layer caches per token, and what a workload's cache costs.

A budget separate from the weights (quantizing weights never changes it).  Per layer
and per token, by attention kind (`KVLayer`):

* full / sliding (MHA, GQA, MQA): ``n_kv_heads × (bytes(key_dim) + bytes(value_dim))``,
  i.e. ``2 × n_kv_heads × head_dim × bytes`` at bf16, the figure vLLM allocates;
* mla (DeepSeek-V2/V3): one latent of ``kv_lora_rank + qk_rope_head_dim`` elements,
  not per head;
* dsa (DeepSeek Sparse Attention, DeepSeek-V3.2): that latent (at fp8 in DeepSeek's 656-byte
  fp8_ds_mla layout) plus the lightning indexer's fp8 key with its scales (132 bytes), as vLLM
  caches them (`dsa_layer_bytes_per_token`);

where ``bytes(d)`` is `KVCacheDtype.bytes_per_vector` (int8/int4 add their per-token,
per-head scale and zero).  Tensor parallelism splits KV heads across ranks: a rank holds
``ceil(n_kv / tp)`` heads, which is ``max(1, n_kv // tp)`` whenever tp divides n_kv or
exceeds it (heads are then replicated), the layouts vLLM accepts, and the busiest rank
otherwise.  The MLA latent is replicated on every rank.

Tokens held per sequence: a full layer holds the whole context; a sliding layer at most
``min(context, window)`` tokens.  Engines allocate in blocks (vLLM: 16 tokens), so each
layer's held tokens round up to whole blocks, per sequence.  (vLLM may hold one more
block for a sliding layer while the window straddles a block boundary; nibble counts
``ceil(min(context, window) / block) × block`` tokens, the steady-state figure.)

Llama 4's chunked local attention (``attention_chunk_size`` on its RoPE layers) is planned as full
attention, the safe side: vLLM allocates those layers the full context whenever its hybrid KV cache
manager is off, which it is by default for a model with ``attention_chunk_size`` from vLLM PR #21761
(July 2025, ``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE`` default off: v0.11 among the releases
nibble models) until PR #29627 turned the variable on; later releases may hold only ``chunk + batch``
tokens in them (``ChunkedLocalAttentionSpec``), so nibble's figure is their upper bound.
"""

from __future__ import annotations

from functools import lru_cache

from quant_core.errors import InvalidSpec
from quant_core.formats import kv_dtype
from quant_core.specs import MAX_POSITIONS, KVLayer, ModelSpec, check_int

MAX_TENSOR_PARALLEL = 4_096
MAX_SEQUENCES = 1 << 40
MAX_BLOCK_SIZE = 1 << 20


@lru_cache(maxsize=512)
def kv_layers(spec: ModelSpec) -> tuple[KVLayer, ...]:
    """One `KVLayer` per attention layer of `spec`: mla, sliding (with its window) or full."""
    if spec.has_indexer:
        return _dsa_layers(spec)
    if spec.is_mla:
        latent = spec.kv_lora_rank + spec.qk_rope_head_dim
        return tuple(KVLayer(i, "mla", latent_dim=latent) for i in range(spec.num_layers))
    sliding = set(spec.sliding_layers)
    rows = []
    for i in range(spec.num_layers):
        if i in sliding:
            rows.append(KVLayer(i, "sliding", spec.num_kv_heads, spec.head_dim, spec.head_dim,
                                window=spec.sliding_window))
        else:
            rows.append(KVLayer(i, "full", spec.num_kv_heads, spec.head_dim, spec.head_dim))
    return tuple(rows)


# DeepSeek Sparse Attention (DeepSeek-V3.2), as vLLM caches it (v0.11 and v0.19: vllm/v1/kv_cache_interface.py
# MLAAttentionSpec, v1/attention/backends/mla/flashmla_sparse.py, model_executor/models/deepseek_v2.py):
#: the indexer's key: fp8 values with one fp32 scale per block of this many (Indexer.quant_block_size)
DSA_INDEXER_QUANT_BLOCK = 128
#: the bytes of one fp32 scale of the fp8 layouts
DSA_SCALE_BYTES = 4
#: DeepSeek's "fp8_ds_mla" layout, the one vLLM's FlashMLA sparse kernel reads when the KV dtype is fp8: the
#: kv_lora_rank latent in fp8 with an fp32 scale per 128 values, the rotary key kept in bf16 (512 + 4 x 4 + 64 x 2
#: = 656 bytes, the size vLLM hard-codes for every layer): only for this latent
DSA_FP8_LAYOUT = (512, 64)


def _dsa_layers(spec: ModelSpec) -> tuple[KVLayer, ...]:
    """DeepSeek Sparse Attention's layers: each caches the MLA latent and the lightning indexer's key."""
    latent = spec.kv_lora_rank + spec.qk_rope_head_dim
    return tuple(KVLayer(i, "dsa", latent_dim=latent, rope_dim=spec.qk_rope_head_dim,
                         indexer_dim=spec.index_head_dim) for i in range(spec.num_layers))


def dsa_layer_bytes_per_token(layer: KVLayer, dtype: str) -> tuple[int, int]:
    """(MLA latent, indexer key) bytes one token costs in a DeepSeek Sparse Attention layer, on every rank (both
    replicated), at KV dtype `dtype`.

    The latent: ``(kv_lora_rank + rope) x 2`` at bf16/fp16 (vLLM's MLAAttentionSpec, 1,152 bytes for DeepSeek-V3.2);
    at fp8 DeepSeek's fp8_ds_mla layout, 656 bytes (``kv_lora_rank`` fp8 values, one fp32 scale per 128 of them and
    the rotary key in bf16), which vLLM picks for any fp8 KV dtype with the FlashMLA sparse backend.  The indexer
    key (vLLM's DeepseekV32IndexerCache, uint8 whatever the KV dtype): ``dim + dim // 128 x 4`` bytes (132).
    vLLM's sparse MLA caches no int8 or int4 KV: those raise `InvalidSpec` naming ``kv_cache.dtype``."""
    indexer = layer.indexer_dim + layer.indexer_dim // DSA_INDEXER_QUANT_BLOCK * DSA_SCALE_BYTES
    element = kv_dtype(dtype)
    if element.scale_bytes_per_vector:
        raise InvalidSpec("kv_cache.dtype", dtype, "vLLM's sparse MLA (DeepSeek Sparse Attention) caches bf16, "
                                                   "fp16 or fp8 (DeepSeek's fp8_ds_mla layout) only")
    if element.bits == 16:
        return element.bytes_per_vector(layer.latent_dim), indexer
    nope = layer.latent_dim - layer.rope_dim
    if (nope, layer.rope_dim) != DSA_FP8_LAYOUT:
        raise InvalidSpec("kv_cache.dtype", dtype,
                          f"vLLM's fp8_ds_mla layout holds a {DSA_FP8_LAYOUT[0]} + {DSA_FP8_LAYOUT[1]} latent; this "
                          f"model's is {nope} + {layer.rope_dim}: plan a bf16 KV cache")
    scales = -(-nope // DSA_INDEXER_QUANT_BLOCK) * DSA_SCALE_BYTES
    return nope + scales + 2 * layer.rope_dim, indexer


def kv_heads_per_rank(num_kv_heads: int, tensor_parallel: int) -> int:
    """KV heads one tensor-parallel rank caches: ``ceil(n_kv / tp)`` (replicated when tp > n_kv)."""
    return -(-num_kv_heads // tensor_parallel)


def layer_bytes_per_token(layer: KVLayer, dtype: str = "bf16", tensor_parallel: int = 1) -> int:
    """Bytes one token costs in `layer` on one tensor-parallel rank, at KV dtype `dtype`."""
    if layer.kind == "dsa":
        return sum(dsa_layer_bytes_per_token(layer, dtype))
    element = kv_dtype(dtype)
    if layer.kind == "mla":
        return element.bytes_per_vector(layer.latent_dim)
    heads = kv_heads_per_rank(layer.num_kv_heads, tensor_parallel)
    return heads * (element.bytes_per_vector(layer.key_dim) + element.bytes_per_vector(layer.value_dim))


def kv_bytes_by_window(spec: ModelSpec, dtype: str = "bf16",
                       tensor_parallel: int = 1) -> tuple[tuple[int | None, int], ...]:
    """Bytes per token grouped by window: ``((None, full-layer bytes), (window, bytes), ...)``.

    The planner's solvers evaluate a context or sequence count with this few-row table
    instead of walking the layers.  Raises `UnknownName` for an unknown dtype and
    `InvalidSpec` for a tensor_parallel that is not a positive integer.
    """
    tensor_parallel = check_int("tensor_parallel", tensor_parallel, 1, MAX_TENSOR_PARALLEL)
    if not isinstance(dtype, str):
        raise InvalidSpec("kv_cache.dtype", dtype, "must be a string")
    kv_dtype(dtype)
    return _kv_bytes_by_window(spec, dtype, tensor_parallel)


@lru_cache(maxsize=2048)
def _kv_bytes_by_window(spec: ModelSpec, dtype: str,
                        tensor_parallel: int) -> tuple[tuple[int | None, int], ...]:
    groups: dict[int | None, int] = {}
    for layer in kv_layers(spec):
        window = layer.window if layer.kind == "sliding" else None
        groups[window] = groups.get(window, 0) + layer_bytes_per_token(layer, dtype, tensor_parallel)
    return tuple(sorted(groups.items(), key=lambda item: -1 if item[0] is None else item[0]))


def kv_bytes_per_token(spec: ModelSpec, dtype: str = "bf16", tensor_parallel: int = 1) -> int:
    """Bytes one token adds to the KV cache over all layers, uncapped by any window (per rank).

    At bf16 and tensor_parallel 1 this is vLLM's ``2 × layers × n_kv × head_dim × 2`` (MLA:
    ``layers × (kv_lora_rank + qk_rope_head_dim) × 2``).
    """
    return sum(size for _, size in kv_bytes_by_window(spec, dtype, tensor_parallel))


def held_tokens(context_length: int, window: int | None, block_size: int = 16) -> int:
    """Tokens a layer holds for one sequence: ``min(context, window)`` rounded up to whole blocks."""
    tokens = context_length if window is None else min(context_length, window)
    return -(-tokens // block_size) * block_size


def kv_cache_bytes(spec: ModelSpec, dtype: str = "bf16", context_length: int = 4096, sequences: int = 1,
                   block_size: int = 16, tensor_parallel: int = 1) -> int:
    """KV-cache bytes for `sequences` concurrent sequences of `context_length` tokens (per rank).

    ``Σ_layers bytes_per_token(layer) × held_tokens(context, window, block) × sequences``.
    Raises `InvalidSpec` naming the argument for negative or absurd values.
    """
    context_length = check_int("context_length", context_length, 0, MAX_POSITIONS)
    sequences = check_int("sequences", sequences, 0, MAX_SEQUENCES)
    block_size = check_int("block_size", block_size, 1, MAX_BLOCK_SIZE)
    per_sequence = sum(size * held_tokens(context_length, window, block_size)
                       for window, size in kv_bytes_by_window(spec, dtype, tensor_parallel))
    return per_sequence * sequences
