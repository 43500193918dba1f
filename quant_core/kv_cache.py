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
per-head scale and zero; vLLM 0.33's int8/int4_per_token_head their fp32 scale).
Tensor parallelism splits KV heads across ranks: a rank holds
``ceil(n_kv / tp)`` heads, which is ``max(1, n_kv // tp)`` whenever tp divides n_kv or
exceeds it (heads are then replicated), the layouts vLLM accepts, and the busiest rank
otherwise.  The MLA latent is replicated on every rank.

Tokens held per sequence: a full layer holds the whole context; a sliding layer at most
``min(context, window)`` tokens.  Engines allocate in blocks (vLLM: 16 tokens), so each
layer's held tokens round up to whole blocks, per sequence: ``ceil(min(context, window) / block) × block``
tokens, the layers' own need.  vLLM holds more (one block more while the window straddles a block boundary, the
tokens of a step in flight, its groups' padding): under vLLM a stage with windowed layers is planned in vLLM's own
groups and blocks (`WindowedKV`).

Llama 4's chunked local attention (``attention_chunk_size`` tokens on its RoPE layers, three of every four;
the fourth is global NoPE attention) is a ``chunked`` layer: a token attends to the tokens of its own chunk only,
so an engine that frees the chunks behind holds at most ``min(context, chunk)`` tokens per sequence, rounded up to
blocks: the sliding window's figure with the chunk as its window, and the steady state of vLLM's decoding sequence
(exact when the chunk is a whole number of blocks, as Llama 4's 8192 is; like a sliding layer, a sequence may hold
the tokens of one scheduler step more while they are in flight, which vLLM's "Maximum concurrency" reserves and
the engine profile reports).  Whether an engine frees them is per release (``chunked_local`` below; the vLLM releases in
`engines.vllm`'s ``CHUNKED_LOCAL_ATTENTION``): vLLM 0.11 turns its hybrid KV cache manager off for a model with
``attention_chunk_size`` (``VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE`` default 0, from PR #21761) and
allocates those layers the whole context like full ones, so nibble plans them full there; from PR #29627 the
variable defaults to 1 (0.19, 0.33) and vLLM's ``ChunkedLocalAttentionManager`` frees every block before the
current chunk, so nibble plans them at one chunk, and the engine's groups and "Maximum concurrency" as vLLM forms
them (`engines.vllm`).  Without an engine nibble plans the chunk too, the attention's own need.

Hybrid models (Qwen3-Next's Gated DeltaNet ``linear_attention`` layers beside full attention) are sized by
`hybrid_kv`, as vLLM's hybrid KV cache manager allocates them (see `HybridKV`): a linear layer holds a fixed
state per sequence, padded to one attention page, and the attention block grows until a page holds that state.  A
sequence takes one such page in each linear group while prefix caching is off (vLLM's ``mamba_cache_mode`` "none")
and two while it is on ("align"); which one a release runs by default is the engine's (`engines.vllm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from quant_core.errors import InvalidSpec
from quant_core.formats import VLLM_PER_TOKEN_HEAD_KV_DTYPES, kv_dtype
from quant_core.specs import MAX_POSITIONS, SSM_STATE_DTYPES, KVLayer, ModelSpec, check_int

MAX_TENSOR_PARALLEL = 4_096
MAX_SEQUENCES = 1 << 40
MAX_BLOCK_SIZE = 1 << 20


@lru_cache(maxsize=512)
def kv_layers(spec: ModelSpec) -> tuple[KVLayer, ...]:
    """One `KVLayer` per attention layer of `spec`: mla, sliding (with its window), chunked (with its chunk) or
    full."""
    if spec.has_indexer:
        return _dsa_layers(spec)
    if spec.is_mla:
        latent = spec.kv_lora_rank + spec.qk_rope_head_dim
        return tuple(KVLayer(i, "mla", latent_dim=latent) for i in range(spec.num_layers))
    sliding = set(spec.sliding_layers)
    chunked = set(spec.chunked_layers)
    linear = set(spec.linear_attention.layers) if spec.linear_attention is not None else set()
    rows = []
    for i in range(spec.num_layers):
        if i in linear:  # a Gated DeltaNet layer: a fixed state per sequence, nothing per token (`hybrid_kv`)
            rows.append(KVLayer(i, "linear"))
        elif i in sliding:
            rows.append(KVLayer(i, "sliding", spec.num_kv_heads, spec.head_dim, spec.head_dim,
                                window=spec.sliding_window))
        elif i in chunked:
            rows.append(KVLayer(i, "chunked", spec.num_kv_heads, spec.head_dim, spec.head_dim,
                                window=spec.attention_chunk_size))
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
    """Bytes one token costs in `layer` on one tensor-parallel rank, at KV dtype `dtype`.

    vLLM 0.33's per-token-head caches (`formats.VLLM_PER_TOKEN_HEAD_KV_DTYPES`) raise `InvalidSpec` naming
    ``kv_cache.dtype`` for an MLA layer: no MLA backend of 0.33 lists them (supported_kv_cache_dtypes of
    mla/*.py), so no MLA cache of that layout exists to size."""
    if layer.kind == "dsa":
        return sum(dsa_layer_bytes_per_token(layer, dtype))
    element = kv_dtype(dtype)
    if layer.kind == "linear":
        return 0
    if layer.kind == "mla":
        if dtype in VLLM_PER_TOKEN_HEAD_KV_DTYPES:
            raise InvalidSpec("kv_cache.dtype", dtype, "vLLM's per-token-head caches have no MLA layout: no MLA "
                                                       "backend of vLLM 0.33 lists them (supported_kv_cache_dtypes) "
                                                       "and earlier releases have none; an MLA latent caches at "
                                                       "bf16, fp16 or fp8")
        return element.bytes_per_vector(layer.latent_dim)
    heads = kv_heads_per_rank(layer.num_kv_heads, tensor_parallel)
    return heads * (element.bytes_per_vector(layer.key_dim) + element.bytes_per_vector(layer.value_dim))


def held_window(layer: KVLayer, chunked_local: bool = True) -> int | None:
    """The most tokens `layer` holds per sequence, None for the whole context: a sliding layer's window; a chunked
    layer's chunk when the engine frees the chunks behind (`chunked_local`, vLLM's hybrid KV cache manager on),
    else None (it is allocated as full attention)."""
    if layer.kind == "sliding" or (layer.kind == "chunked" and chunked_local):
        return layer.window
    return None


def kv_bytes_by_window(spec: ModelSpec, dtype: str = "bf16", tensor_parallel: int = 1,
                       chunked_local: bool = True) -> tuple[tuple[int | None, int], ...]:
    """Bytes per token grouped by window: ``((None, full-layer bytes), (window, bytes), ...)``, chunked layers
    at their chunk when `chunked_local` (`held_window`).

    The planner's solvers evaluate a context or sequence count with this few-row table
    instead of walking the layers.  Raises `UnknownName` for an unknown dtype and
    `InvalidSpec` for a tensor_parallel that is not a positive integer.
    """
    tensor_parallel = check_int("tensor_parallel", tensor_parallel, 1, MAX_TENSOR_PARALLEL)
    if not isinstance(dtype, str):
        raise InvalidSpec("kv_cache.dtype", dtype, "must be a string")
    kv_dtype(dtype)
    return _kv_bytes_by_window(spec, dtype, tensor_parallel, bool(chunked_local))


@lru_cache(maxsize=2048)
def _kv_bytes_by_window(spec: ModelSpec, dtype: str, tensor_parallel: int,
                        chunked_local: bool) -> tuple[tuple[int | None, int], ...]:
    groups: dict[int | None, int] = {}
    for layer in kv_layers(spec):
        window = held_window(layer, chunked_local)
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
                   block_size: int = 16, tensor_parallel: int = 1, mamba_cache_mode: str = "none",
                   chunked_local: bool = True) -> int:
    """KV-cache bytes for `sequences` concurrent sequences of `context_length` tokens (per rank).

    ``Σ_layers bytes_per_token(layer) × held_tokens(context, window, block) × sequences``, chunked local layers at
    their chunk when `chunked_local` (vLLM from PR #29627) and at the whole context otherwise (vLLM 0.11); a hybrid
    model's (`hybrid_kv`) at vLLM's `mamba_cache_mode` (`MAMBA_CACHE_MODE_STATE_BLOCKS`).
    Raises `InvalidSpec` naming the argument for negative or absurd values.
    """
    context_length = check_int("context_length", context_length, 0, MAX_POSITIONS)
    sequences = check_int("sequences", sequences, 0, MAX_SEQUENCES)
    block_size = check_int("block_size", block_size, 1, MAX_BLOCK_SIZE)
    if spec.linear_attention is not None:
        hybrid = hybrid_kv(spec, dtype, tensor_parallel, mamba_cache_mode=mamba_cache_mode)
        return hybrid.bytes_per_sequence(context_length, block_size) * sequences
    per_sequence = sum(size * held_tokens(context_length, window, block_size)
                       for window, size in kv_bytes_by_window(spec, dtype, tensor_parallel, chunked_local))
    return per_sequence * sequences


# ---------------------------------------------------------------------------
# Hybrid models: Gated DeltaNet (Mamba-like) layers beside full attention, as vLLM's hybrid KV cache manager holds
# them.

#: vLLM's default attention block (``CacheConfig.DEFAULT_BLOCK_SIZE``), and the kernel block alignment of its CUDA
#: attention backends (FlashAttention ``MultipleOf(16)``, FlashInfer ``[16, 32, 64]``)
VLLM_BLOCK_ALIGNMENT = 16
#: the bytes of the model's dtype, in which vLLM keeps the convolution state (``mamba_cache_dtype`` "auto": the
#: model's dtype, bf16 for every published Qwen3-Next checkpoint) and, unless the config fixes it, the recurrent state
MODEL_DTYPE_BYTES = 2
#: the fewest times as many layers of one kind as of the other that a hybrid model must have: below it vLLM's
#: grouping of layers changed between the releases nibble models (v0.11: the smaller count; from March 2026, PR
#: #36684, the larger when within 1.5x; in between 1.25x), above it every release groups by the smaller count
HYBRID_GROUP_RATIO = 1.5
#: pages one sequence takes in each linear-attention group, by vLLM's ``mamba_cache_mode`` (kv_cache_interface.py,
#: ``MambaSpec.max_memory_usage_bytes`` with no speculative tokens): "none", prefix caching off, one page for the
#: running state (``1 + num_speculative_blocks``); "align", prefix caching on, two: the running state and the state
#: checkpointed at the last block boundary (``2 + num_speculative_blocks``).  "all" (a state per block) is refused by
#: vLLM's Qwen3-Next and Qwen3.5 classes ("does not support 'all' prefix caching, please use
#: '--mamba-cache-mode=align'").
MAMBA_CACHE_MODE_STATE_BLOCKS: dict[str, int] = {"none": 1, "align": 2}


@dataclass(frozen=True, slots=True)
class HybridKV:
    """One tensor-parallel rank's KV cache of a hybrid model, as vLLM's hybrid KV cache manager holds it.

    `full_layers` full-attention layers cost `attention_bytes_per_token` each per token; `linear_layers` Gated
    DeltaNet layers hold `state_bytes` each per sequence (``MambaSpec.page_size_bytes``, unpadded).  vLLM (v0.11:
    ``HybridAttentionMambaModelConfig.verify_and_update_config`` in model_executor/models/config.py; later
    ``Platform._align_hybrid_block_size`` in platforms/interface.py):

    * raises the attention block to ``block = 16 x ceil(state / (16 x attention bytes per token))`` tokens (from the
      requested block size up when that is larger; later releases align to ``max(16, requested)``), so that one
      attention page holds one state, and pads the state to exactly one page (``mamba_page_size_padded``);
    * groups layers of one kind into groups of ``min(full, linear)`` layers (`group_size`; kv_cache_utils.py,
      ``_get_kv_cache_groups_uniform_page_size``), every group's block costing ``page x group_size`` bytes of the
      one pool;
    * gives a sequence ``ceil(tokens / block)`` blocks in each full-attention group and `state_blocks` blocks in each
      linear group (``MambaSpec.max_memory_usage_bytes``): one with prefix caching off (``mamba_cache_mode``
      "none"), two with it on ("align": the running state and the last block boundary's checkpoint;
      `MAMBA_CACHE_MODE_STATE_BLOCKS`).  The attention block is the same in both modes (``_align_hybrid_block_size``
      sizes it alike for "none" and "align").
    """

    full_layers: int
    linear_layers: int
    attention_bytes_per_token: int
    state_bytes: int
    state_blocks: int = 1

    @property
    def group_size(self) -> int:
        """Layers per KV cache group: the smaller of the two counts."""
        return min(self.full_layers, self.linear_layers)

    @property
    def full_groups(self) -> int:
        return -(-self.full_layers // self.group_size)

    @property
    def linear_groups(self) -> int:
        return -(-self.linear_layers // self.group_size)

    def block_size(self, requested: int = VLLM_BLOCK_ALIGNMENT) -> int:
        """Tokens in one attention block: the smallest multiple of ``max(16, requested)`` whose page holds one
        linear layer's state, or `requested` when that is larger."""
        alignment = max(VLLM_BLOCK_ALIGNMENT, requested)
        aligned = alignment * -(-self.state_bytes // (alignment * self.attention_bytes_per_token))
        return max(requested, aligned)

    def page_bytes(self, requested: int = VLLM_BLOCK_ALIGNMENT) -> int:
        """Bytes of one layer's block, attention or (padded) state: ``block x attention bytes per token``."""
        return self.block_size(requested) * self.attention_bytes_per_token

    def blocks_per_sequence(self, context_length: int, requested: int = VLLM_BLOCK_ALIGNMENT) -> int:
        """Pool blocks one sequence of `context_length` tokens takes: ``ceil(context / block)`` in each full group,
        `state_blocks` in each linear group (none for an empty sequence)."""
        if context_length <= 0:
            return 0
        return (self.full_groups * -(-context_length // self.block_size(requested))
                + self.linear_groups * self.state_blocks)

    def bytes_per_sequence(self, context_length: int, requested: int = VLLM_BLOCK_ALIGNMENT) -> int:
        """Bytes one sequence takes on this rank: its blocks x ``page x group_size``."""
        return self.blocks_per_sequence(context_length, requested) * self.page_bytes(requested) * self.group_size


@dataclass(frozen=True, slots=True)
class WindowedKV:
    """One rank's KV cache of a stage with sliding-window or chunked local layers, as vLLM's hybrid KV cache manager
    holds it: what a workload takes of the one pool, in the blocks vLLM allocates.

    `groups` are ``(kind, window or None, groups of that kind)``: the layers of one kind in groups of `group_size`
    layers (kv_cache_utils.py, ``_get_kv_cache_groups_uniform_page_size``), every group's block costing
    ``page_bytes x group_size`` of the pool however few layers its last group holds (``get_num_blocks``).  Per
    sequence of `context` tokens:

    * decoding, a full group holds ``ceil(context / block)`` blocks; a sliding group the blocks its window spans,
      ``ceil((window - 1 + unsettled) / block) + 1`` (``SlidingWindowManager.remove_skipped_blocks`` frees only whole
      blocks before ``get_num_skipped_tokens = computed - window + 1``, counted from the settled tokens, one step
      behind in releases with async scheduling: `unsettled_tokens`); a chunked group the current chunk's
      (``ChunkedLocalAttentionManager``); never more than the full group's;
    * at its largest prefill step, what vLLM reserves for one request (``SlidingWindowSpec`` /
      ``ChunkedLocalAttentionSpec.max_memory_usage_bytes``: the window less one, or the chunk, plus the tokens in
      flight, `in_flight_tokens`, capped at the context; a sliding group one block more), the figure its start-up
      check (``check_enough_kv_cache_memory``) needs for one request and vLLM 0.33's admission gate reserves.

    The scheduler never has more than `in_flight_tokens` in flight over all sequences together, so `sequences`
    sequences take one request at that peak and the others decoding (`blocks`): vLLM's "Maximum concurrency", which
    reserves the peak for every request, is lower than the sequences the pool holds."""

    groups: tuple[tuple[str, int | None, int], ...]
    group_size: int
    page_bytes: int
    block_size: int
    in_flight_tokens: int
    unsettled_tokens: int = 0
    #: derived once (`__post_init__`), for the solvers' many evaluations: the full groups, and per windowed kind
    #: (groups, blocks it spans decoding, tokens it holds at the peak, the peak's extra block)
    _full_groups: int = field(init=False, repr=False, compare=False)
    _windowed: tuple[tuple[int, int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        block = self.block_size
        windowed = []
        for kind, window, count in self.groups:
            if window is None:
                continue
            if kind == "chunked":  # the current chunk (and the steps in flight behind it), from a chunk boundary
                span = window + self.unsettled_tokens
                decoding = -(-span // block) if window % block == 0 else -(-(span - 1) // block) + 1
                windowed.append((count, decoding, window + self.in_flight_tokens, 0))
            else:  # the window from any position in a block: one block more
                decoding = -(-(window - 1 + self.unsettled_tokens) // block) + 1
                windowed.append((count, decoding, window - 1 + self.in_flight_tokens, 1))
        object.__setattr__(self, "_full_groups", sum(count for _, window, count in self.groups if window is None))
        object.__setattr__(self, "_windowed", tuple(windowed))

    @property
    def group_bytes(self) -> int:
        """Bytes of one block of the pool: ``page x group size``."""
        return self.page_bytes * self.group_size

    def decode_blocks(self, context_length: int) -> int:
        """Pool blocks one decoding sequence of `context_length` tokens holds, over every group."""
        whole = -(-context_length // self.block_size)
        return self._full_groups * whole + sum(count * min(whole, decoding)
                                               for count, decoding, _, _ in self._windowed)

    def peak_blocks(self, context_length: int) -> int:
        """Pool blocks vLLM reserves for one request of `context_length` tokens (``max_memory_usage_bytes`` of each
        group's spec), over every group."""
        block = self.block_size
        return self._full_groups * -(-context_length // block) + sum(
            count * (-(-min(tokens, context_length) // block) + extra) for count, _, tokens, extra in self._windowed)

    def blocks(self, context_length: int, sequences: int) -> int:
        """Pool blocks `sequences` sequences of `context_length` tokens need: one at its peak, the others
        decoding (never fewer than the decoding ones hold).  `decode_blocks` and `peak_blocks` written out in one
        pass: the solvers ask it many times a plan, and the two calls make a windowed model's plan ~20 % slower."""
        if sequences <= 0 or context_length <= 0:
            return 0
        block = self.block_size
        whole = -(-context_length // block)
        decode = peak = self._full_groups * whole
        for count, decoding, tokens, extra in self._windowed:
            decode += count * (whole if whole < decoding else decoding)
            peak += count * (-(-(tokens if tokens < context_length else context_length) // block) + extra)
        return (sequences - 1) * decode + (peak if peak > decode else decode)

    def bytes(self, context_length: int, sequences: int) -> int:
        """Bytes of the pool `sequences` sequences of `context_length` tokens need: `blocks` x ``page x group
        size``."""
        return self.blocks(context_length, sequences) * self.page_bytes * self.group_size

    def most_sequences(self, context_length: int, budget_bytes: int) -> int:
        """The most sequences of `context_length` tokens whose blocks fit in `budget_bytes` (0 if not one)."""
        available = budget_bytes // self.group_bytes
        decode, peak = self.decode_blocks(context_length), self.peak_blocks(context_length)
        peak = max(peak, decode)
        if available < peak:
            return 0
        return 1 + (available - peak) // decode if decode else 1 << 62

    def whole_blocks_within(self, sequences: int, budget_bytes: int) -> int | None:
        """A lower bound on the longest context, in whole blocks, at which `sequences` sequences fit in
        `budget_bytes`: every windowed group at its most, the full groups given the rest; None without full
        groups (the windowed groups bound nothing)."""
        if not self._full_groups or sequences <= 0:
            return None
        windowed = sum(count * ((sequences - 1) * decoding + max(decoding, -(-tokens // self.block_size) + extra))
                       for count, decoding, tokens, extra in self._windowed)
        return (budget_bytes // self.group_bytes - windowed) // (sequences * self._full_groups)


def linear_state_bytes(spec: ModelSpec, tensor_parallel: int = 1) -> int:
    """One Gated DeltaNet layer's state for one sequence on one rank, in bytes: vLLM's
    ``MambaStateShapeCalculator.gated_delta_net_state_shape`` (mamba_utils.py) gives a convolution state of
    ``(kernel - 1) x conv_dim / tp`` and a recurrent state of ``value heads / tp x value_head_dim x key_head_dim``
    (no speculative tokens); ``gated_delta_net_state_dtype`` keeps both at the model's dtype unless the config
    fixes the recurrent state's (Qwen3.5's ``mamba_ssm_dtype``).  ``MambaSpec.page_size_bytes`` is their sum.
    A tensor-parallel degree that does not divide the heads is refused by vLLM (`VllmProfile.refusal`); here the
    busiest rank's share is counted."""
    linear = spec.linear_attention
    if linear is None:
        return 0
    conv = (linear.conv_kernel_size - 1) * -(-linear.conv_dim // tensor_parallel) * MODEL_DTYPE_BYTES
    state_dtype_bytes = (SSM_STATE_DTYPES[linear.ssm_state_dtype] if linear.ssm_state_dtype is not None
                         else MODEL_DTYPE_BYTES)
    recurrent = (-(-linear.num_value_heads // tensor_parallel) * linear.value_head_dim * linear.key_head_dim
                 * state_dtype_bytes)
    return conv + recurrent


def hybrid_kv(spec: ModelSpec, dtype: str = "bf16", tensor_parallel: int = 1,
              layers: tuple[int, int] | None = None, mamba_cache_mode: str = "none") -> HybridKV:
    """The `HybridKV` of `spec`'s layers ``[start, stop)`` (all by default: one pipeline stage) on one rank at KV
    dtype `dtype`, a sequence taking `MAMBA_CACHE_MODE_STATE_BLOCKS[mamba_cache_mode]` blocks in each linear group.

    Raises `InvalidSpec` naming ``layer_types`` when the model holds no full-attention layer (vLLM then forms no
    hybrid groups), or when one kind is less than `HYBRID_GROUP_RATIO` times as many as the other (the releases
    nibble models group such layers differently: not planned rather than guessed); and naming
    ``parallel.pipeline`` for a stage (`layers`) the releases group differently (`_stage_groups_agree`)."""
    tensor_parallel = check_int("tensor_parallel", tensor_parallel, 1, MAX_TENSOR_PARALLEL)
    state_blocks = MAMBA_CACHE_MODE_STATE_BLOCKS.get(mamba_cache_mode)
    if state_blocks is None:
        raise InvalidSpec("mamba_cache_mode", mamba_cache_mode,
                          f"one of {', '.join(MAMBA_CACHE_MODE_STATE_BLOCKS)} (vLLM's Qwen3-Next and Qwen3.5 refuse "
                          "'all')")
    rows = kv_layers(spec)
    full = [layer.index for layer in rows if layer.kind == "full"]
    linear = [layer.index for layer in rows if layer.kind == "linear"]
    if not full or not linear:
        raise InvalidSpec("layer_types", f"{len(full)} full_attention and {len(linear)} linear_attention layers",
                          "a hybrid model's layers need both kinds: vLLM plans other mixes with other KV cache "
                          "groups")
    smaller, larger = sorted((len(full), len(linear)))
    if larger < smaller * HYBRID_GROUP_RATIO:
        raise InvalidSpec("layer_types", f"{len(full)} full_attention and {len(linear)} linear_attention layers",
                          f"one kind must be at least {HYBRID_GROUP_RATIO} times as many as the other: vLLM's "
                          "releases group closer counts differently (kv_cache_utils.py, PR #36684)")
    start, stop = layers if layers is not None else (0, spec.num_layers)
    stage_full = [i for i in full if start <= i < stop]
    stage_linear = [i for i in linear if start <= i < stop]
    if (start, stop) != (0, spec.num_layers) and not _stage_groups_agree(full, linear, start, stop):
        raise InvalidSpec("parallel.pipeline", f"a stage of layers {start}-{stop - 1}",
                          f"holds {len(stage_full)} full_attention and {len(stage_linear)} linear_attention layers, "
                          "which vLLM 0.11 (each worker's own groups) and later releases (the whole model's groups, "
                          "kv_cache_utils.py get_kv_cache_configs) group differently: choose a pipeline size whose "
                          "stages hold whole repeats of the model's layer pattern")
    return HybridKV(len(stage_full), len(stage_linear), layer_bytes_per_token(rows[full[0]], dtype, tensor_parallel),
                    linear_state_bytes(spec, tensor_parallel), state_blocks)


def _stage_groups_agree(full: list[int], linear: list[int], start: int, stop: int) -> bool:
    """Whether a pipeline stage ``[start, stop)`` gets the same KV cache groups from every release nibble models.

    v0.11 (kv_cache_utils.py, ``get_kv_cache_configs``) groups each worker's own layers: groups of ``min(full,
    linear)`` of the stage's layers.  Later releases group the whole model's layers (groups of ``min(full, linear)``,
    the i-th of n groups of a kind holding that kind's layers ``[i::n]``) and give each worker the layers of every
    group it holds, its group size the largest such share.  They agree when every whole-model group has the same
    number of layers in the stage, that number being the stage's smaller count (no padding either way)."""
    size = min(len(full), len(linear))
    shares = []
    for layers in (full, linear):
        groups = -(-len(layers) // size)
        shares += [sum(1 for i in layers[g::groups] if start <= i < stop) for g in range(groups)]
    stage_full = sum(1 for i in full if start <= i < stop)
    stage_linear = sum(1 for i in linear if start <= i < stop)
    stage_size = min(stage_full, stage_linear)
    return stage_size > 0 and all(share == stage_size for share in shares) and \
        stage_full % stage_size == 0 and stage_linear % stage_size == 0
