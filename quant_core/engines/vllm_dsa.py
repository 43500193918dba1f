"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5): its workspace, block tables and refusals.

The indexer's top-k buffers and the prefill workspace vLLM 0.19 keeps across the profiling run
(``v1/attention/backends/mla/flashmla_sparse.py``, ``indexer.py``, ``v1/worker/workspace.py``: `dsa_workspace`), the
fp8 sparse decode kernel's mixed batch (`dsa_mixed_batch_bytes`), the block tables and block size
(``v1/worker/block_table.py``), and the releases whose KV cache runs it (`dsa_version_refusal`; the compute
capabilities its kernels need are `vllm_refusals.dsa_attention_refusal`'s).
"""

from __future__ import annotations

from dataclasses import dataclass

from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm_moe_buffers import aligned, fused_moe_caches
from quant_core.engines.vllm_parallel import moe_dispatched_tokens
from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, GIB, MIB
from quant_core.errors import InvalidSpec
from quant_core.formats import kv_dtype
from quant_core.specs import ModelSpec


def dsa_topk_buffer_bytes(spec: ModelSpec, tokens: int) -> int:
    """The top-k indices buffer vLLM's deepseek_v2.py allocates when it builds a DeepSeek-V3.2 model (v0.11 and
    v0.19, DeepseekV2Model.__init__): ``torch.empty(max_num_batched_tokens, index_topk, dtype=torch.int32)``."""
    return tokens * spec.index_topk * 4 if spec.has_indexer else 0


#: the dummy allocation each sparse-attention indexer makes in vLLM's profiling run "to simulate the peak logits tensor
#: memory during inference" (v0.19 model_executor/layers/sparse_attn_indexer.py: torch.empty of
#: VLLM_SPARSE_INDEXER_MAX_LOGITS_MB, default 512, bytes), charged on the forward pass's peak (the safe side: it is
#: freed before the layer's MoE runs); v0.11's profiling path allocates only a flattened key buffer of
#: 2 x max_model_len x 132 bytes (86 MB at DeepSeek-V3.2's 163,840), not charged
DSA_PROFILE_LOGITS_BYTES: dict[str, int] = {"0.19": 512 * MIB}
#: v0.19 v1/attention/backends/mla/flashmla_sparse.py, get_prefill_workspace_size: ``max_model_len * 5`` rows of the
#: bf16 latent (kv_lora_rank + rope = 576 values) into which an fp8_ds_mla cache is upconverted for prefill
DSA_PREFILL_LATENT_ROWS = 5
#: v0.19 v1/attention/backends/mla/indexer.py, get_max_prefill_buffer_size: ``max_model_len * 40`` rows of the
#: indexer's fp8 key (index_head_dim bytes) and its 4-byte scale, gathered for prefill
DSA_PREFILL_INDEXER_ROWS = 40
#: the bytes of one row's scale in the indexer's prefill buffer (sparse_attn_indexer.py: ``(total_seq_lens, 4)``
#: uint8)
DSA_INDEXER_SCALE_BYTES = 4


@dataclass(frozen=True, slots=True)
class DsaWorkspace:
    """vLLM 0.19's workspace buffer on one rank of a DeepSeek Sparse Attention model, by ``max_model_len`` L.

    Two requests grow it beyond the fused-MoE caches nibble already charges (`counted_bytes`: TritonExperts'
    workspace13 and workspace2, `fused_moe_caches`, in the forward pass and, where `_Version.moe_workspace_persists`,
    under the sampler pass):

    * `attention_bytes`: ``FlashMLASparseImpl.__init__`` (flashmla_sparse.py), when the model is built (vLLM counts
      it in "Model loading took"): the concatenated query, ``max_num_batched_tokens x heads / tp x (kv_lora_rank +
      rope) x 2`` bytes, and with an fp8 (fp8_ds_mla) KV cache the prefill latent, ``5 x L x (kv_lora_rank + rope)
      x 2`` bytes (2 x 5 x 163,840 x 576 = 0.88 GiB for DeepSeek-V3.2);
    * `indexer_bytes`: ``sparse_attn_indexer`` in the profiling run (attn_metadata is not a dict there): ``40 x L``
      rows of the fp8 key (index_head_dim bytes) and of its 4-byte scale (40 x 163,840 x 132 = 0.81 GiB).

    Both are asked of the one buffer, which keeps the largest: the profiling peak holds ``max(attention, indexer,
    MoE caches)``, so `bytes_at` is what that adds to the MoE caches already charged."""

    query_bytes: int
    latent_row_bytes: int
    latent_rows_per_token: int
    indexer_row_bytes: int
    counted_bytes: int

    def attention_bytes(self, max_model_len: int) -> int:
        """FlashMLASparseImpl's request: the query, and the prefill latent with an fp8_ds_mla cache."""
        if not self.latent_rows_per_token:
            return aligned(self.query_bytes)
        return (aligned(self.query_bytes)
                + aligned(self.latent_rows_per_token * max_model_len * self.latent_row_bytes))

    def indexer_bytes(self, max_model_len: int) -> int:
        """The indexer's profiling-run request: its prefill keys and their scales."""
        rows = DSA_PREFILL_INDEXER_ROWS * max_model_len
        return aligned(rows * self.indexer_row_bytes) + aligned(rows * DSA_INDEXER_SCALE_BYTES)

    def buffer_bytes(self, max_model_len: int) -> int:
        """The workspace buffer vLLM holds: the largest of the three requests."""
        return max(self.attention_bytes(max_model_len), self.indexer_bytes(max_model_len), self.counted_bytes)

    def bytes_at(self, max_model_len: int) -> int:
        return self.buffer_bytes(max_model_len) - self.counted_bytes

    def basis_at(self, max_model_len: int) -> str:
        latent = (f" and the fp8_ds_mla prefill latent, 5 x max_model_len x {self.latent_row_bytes // 2} x 2 bytes"
                  if self.latent_rows_per_token else "")
        return (f"DeepSeek Sparse Attention's workspace at max_model_len={max_model_len}: one buffer of the largest "
                f"of FlashMLA sparse's query{latent} ({self.attention_bytes(max_model_len) / GIB:.2f} GiB, "
                "flashmla_sparse.py), the indexer's prefill keys, 40 x max_model_len x "
                f"({self.indexer_row_bytes} + 4) bytes ({self.indexer_bytes(max_model_len) / GIB:.2f} GiB, "
                "indexer.py get_max_prefill_buffer_size) and the fused-MoE caches counted above "
                f"({self.counted_bytes / GIB:.2f} GiB): {self.bytes_at(max_model_len) / GIB:.2f} GiB more than "
                "those (v1/worker/workspace.py keeps one buffer per rank)")


def dsa_workspace(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str) -> DsaWorkspace | None:
    """`DsaWorkspace` of a DeepSeek Sparse Attention stage on vLLM `version` (None: not such a model, or a release
    without these buffers: v0.11's indexer allocates a transient ``2 x max_model_len x 132``-byte key buffer in its
    profiling path and FlashMLA sparse no workspace)."""
    spec = stage.spec
    if not spec.has_indexer or version != "0.19":
        return None
    tokens = limits.max_batched_tokens
    row = (spec.kv_lora_rank + spec.qk_rope_head_dim) * ACTIVATION_ELEMENT_BYTES
    heads = spec.num_attention_heads // stage.tensor_parallel
    counted = 0
    if spec.is_moe:
        caches = fused_moe_caches(spec, stage.moe_ranks, moe_dispatched_tokens(stage, tokens), version,
                                  expert_parallel=stage.expert_parallel, data_parallel=stage.data_parallel > 1)
        counted = caches.nbytes if caches.persists else 0
    fp8_cache = kv_dtype(kv_cache_dtype).bits == 8
    return DsaWorkspace(query_bytes=tokens * heads * row, latent_row_bytes=row,
                        latent_rows_per_token=DSA_PREFILL_LATENT_ROWS if fp8_cache else 0,
                        indexer_row_bytes=spec.index_head_dim, counted_bytes=counted)


def dsa_block_table_bytes(spec: ModelSpec, version: str, max_model_len: int, limits: BatchLimits) -> int:
    """The indexer's expanded block table vLLM 0.19 allocates when it builds the attention metadata builders
    (indexer.py, DeepseekV32IndexerMetadataBuilder.__init__: ``torch.zeros(max_num_batched_tokens,
    cdiv(max_model_len, block_size))`` int32, the block being the kernel's, `DSA_BLOCK_SIZE`, whatever --block-size
    says: worker/utils.py create_metadata_builders hands the builder ``copy_with_new_block_size(kernel_block_size)``),
    in ``initialize_kv_cache``, after the KV cache has been sized: outside ``gpu_memory_utilization``, like v0.19's
    CUDA graphs (0 for other models and releases)."""
    if not spec.has_indexer or version != "0.19":
        return 0
    return limits.max_batched_tokens * -(-max_model_len // DSA_BLOCK_SIZE) * 4


#: v0.19 flashmla_sparse.py: below this many heads a rank, an fp8_ds_mla cache runs every token of a step, prefill
#: included, through FlashMLA's fp8 sparse decode kernel as one batch ("mixed batch"), heads padded to 64
DSA_MIN_HEADS_FOR_BF16_PREFILL = 32
#: the head count FlashMLA's fp8 sparse decode kernel runs at (flashmla_sparse.py _compute_fp8_decode_padded_heads: 64
#: or 128) and the value width it writes (head_dim_v=512)
DSA_DECODE_PADDED_HEADS = 64
DSA_DECODE_VALUE_DIM = 512
#: streaming multiprocessors of an H100 SXM / H200 (132; B200: 148): FlashMLA splits a step of fewer tokens than this
#: over more parts
HOPPER_SMS = 132


def dsa_mixed_batch_bytes(spec: ModelSpec, version: str, kv_cache_dtype: str, tensor_parallel: int,
                          limits: BatchLimits) -> int:
    """What one attention call of vLLM 0.19's fp8 "mixed batch" sparse attention allocates for a step of
    ``max_num_batched_tokens`` tokens T, which its profiling run never sees (the attention layers return early there
    without metadata: mla_attention.py), so it comes from the memory vLLM leaves outside the KV cache (vllm#53413:
    "not accounted for during startup memory profiling"); 0 where that path does not run (another model or release,
    a 16-bit cache, or at least 32 heads a rank, where prefill runs the bf16 kernel over the fp8_ds_mla workspace).

    flashmla_sparse.py ``_fp8_flash_mla_kernel``: the query padded to 64 heads, ``T x 64 x 576`` bf16 (q.new_zeros);
    FlashMLA's ``sparse_attn_decode_interface`` (csrc/api/sparse_decode.h, batch 1 of T queries): ``out`` ``T x 64 x
    512`` bf16, ``lse`` ``T x 64`` fp32, and for its split-KV pass ``lse_accum`` and ``o_accum`` of ``(1 +
    num_sm_parts) x T x 64 (x 512)`` fp32, ``num_sm_parts = max(num_sms / T, 1)`` (1 once T reaches the SM count).
    At 8192 tokens: 3,294,625,792 bytes (3.07 GiB) a rank."""
    heads = spec.num_attention_heads // tensor_parallel
    if (not spec.has_indexer or version != "0.19" or kv_dtype(kv_cache_dtype).bits != 8
            or heads >= DSA_MIN_HEADS_FOR_BF16_PREFILL):
        return 0
    tokens, padded, value = limits.max_batched_tokens, DSA_DECODE_PADDED_HEADS, DSA_DECODE_VALUE_DIM
    query = tokens * padded * (spec.kv_lora_rank + spec.qk_rope_head_dim) * ACTIVATION_ELEMENT_BYTES
    out = tokens * padded * value * ACTIVATION_ELEMENT_BYTES + tokens * padded * 4
    splits = 1 + max(HOPPER_SMS // tokens, 1)
    accumulators = splits * tokens * padded * (value * 4 + 4)
    return query + out + accumulators


#: the vLLM releases whose DeepSeek Sparse Attention KV cache nibble sizes, by model type: one KV cache group of
#: every layer's MLA latent and indexer key (UniformTypeKVCacheSpecs: the indexer's DeepseekV32IndexerCache is an
#: MLAAttentionSpec of another page size), ``num_blocks = available // sum of the layers' pages``
#: (v1/core/kv_cache_utils.py, get_kv_cache_config_from_groups).  GLM-5's GlmMoeDsaForCausalLM is in the registry
#: from v0.19 (v0.11's has DeepseekV32ForCausalLM only).  v0.33 gives the indexer cache its own role
#: (SparseCacheRole.INDEXER) and group-leader and alignment rules nibble does not model: refused rather than guessed
DSA_KV_VERSIONS: dict[str, tuple[str, ...]] = {"deepseek_v32": ("0.11", "0.19"), "glm_moe_dsa": ("0.19",)}


def dsa_version_refusal(spec: ModelSpec, version: str) -> None:
    """Raise `InvalidSpec` naming ``runtime.engine_version`` for a DeepSeek Sparse Attention model on a vLLM
    release that does not load it or whose KV cache layout for it nibble does not size (`DSA_KV_VERSIONS`)."""
    if not spec.has_indexer:
        return
    versions = DSA_KV_VERSIONS.get(spec.model_type, ("0.19",))
    if version not in versions:
        raise InvalidSpec("runtime.engine_version", version,
                          f"nibble sizes vLLM's DeepSeek Sparse Attention KV cache (MLA latent + indexer keys) of a "
                          f"{spec.model_type} model for vLLM {' and '.join(versions)} only: vLLM {version} does not "
                          "load it or groups the indexer cache by rules nibble does not model")


#: the KV block vLLM gives a DeepSeek Sparse Attention model on CUDA: v0.11's platforms/cuda.py
#: (CudaPlatformBase.check_and_update_config) sets ``cache_config.block_size = 64`` "for FlashMLASparse backend"
#: whatever was asked; v0.19's FlashMLASparseBackend and DeepseekV32IndexerBackend
#: (v1/attention/backends/mla/flashmla_sparse.py, indexer.py) support kernel blocks of [64] only, and
#: platforms/interface.py's update_block_size_for_backend sets the backend's preferred size (64) when
#: --block-size is not given, keeps a given one, which AttentionBackend.supports_block_size then accepts only as a
#: multiple of 64 (else "No valid attention backend found").  On Hopper FlashMLA sparse is v0.19's only sparse MLA
#: backend; on Blackwell with an fp8 cache or at most 16 heads a rank, platforms/cuda.py prefers FlashInfer's sparse
#: MLA (kernel blocks [32, 64]), which nibble does not model
DSA_BLOCK_SIZE = 64


def dsa_block_size(spec: ModelSpec, version: str, requested: int) -> tuple[int, str | None]:
    """(The KV block vLLM `version` runs a DeepSeek Sparse Attention model at, a note when it is not `requested`).

    v0.11 forces `DSA_BLOCK_SIZE` whatever is requested; v0.19 keeps a requested multiple of 64 and sets 64 when
    none is given, which nibble reads from the API's default of 16 (an explicit ``--block-size 16`` would not
    start); any other size is refused naming ``kv_cache.block_size``.  Other models and releases: `requested`."""
    if not spec.has_indexer or version not in ("0.11", "0.19"):
        return requested, None
    if version == "0.19" and requested % DSA_BLOCK_SIZE == 0:
        return requested, None
    if version == "0.19" and requested != 16:
        raise InvalidSpec("kv_cache.block_size", requested,
                          f"vLLM 0.19 runs a {spec.model_type} model's sparse attention (FlashMLA sparse and its "
                          f"indexer) on {DSA_BLOCK_SIZE}-token kernel blocks only and refuses a --block-size that "
                          f"is not a multiple of {DSA_BLOCK_SIZE} (\"No valid attention backend found\"); "
                          f"leave the default or ask for {DSA_BLOCK_SIZE}")
    if version == "0.11" and requested == DSA_BLOCK_SIZE:
        return requested, None
    how = ("forces" if version == "0.11" else "sets, when --block-size is not given,")
    return DSA_BLOCK_SIZE, (f"Planned at {DSA_BLOCK_SIZE}-token KV blocks, not the requested {requested}: vLLM "
                            f"{version} {how} a {DSA_BLOCK_SIZE}-token block for DeepSeek Sparse Attention models "
                            "(its FlashMLA sparse backend's only block size), so the KV capacity and context are "
                            f"counted in {DSA_BLOCK_SIZE}-token blocks.")
