"""vLLM's speculative decoding as nibble plans it: ``--speculative-config '{"method": m, "num_speculative_tokens":
k}'`` with the two methods that need no second model config: ``mtp`` on vLLM 0.19, ``ngram`` on 0.11 and 0.19
(`PLANNED_RELEASES`; `UNPLANNED_RELEASES` says why not elsewhere).

* ``mtp`` runs the checkpoint's own multi-token-prediction layers (``num_nextn_predict_layers``) as the drafter:
  ``SpeculativeConfig.hf_config_override`` (config/speculative.py) turns a ``deepseek_v3`` config into
  ``DeepSeekMTPModel`` (model_executor/models/deepseek_mtp.py) and a ``glm4_moe`` one into ``Glm4MoeMTP``
  (glm4_moe_mtp.py), both an ``EagleProposer`` (v1/spec_decode/eagle.py).  Each MTP layer is the model's own decoder
  layer (``DeepseekV2DecoderLayer`` / ``Glm4MoeDecoderLayer`` built with the target's ``quant_config``, split over
  the tensor-parallel ranks like the target's layers: planned as the model's last decoder layer under the deployed
  scheme), plus ``enorm``, ``hnorm`` and ``shared_head.norm`` (``RMSNorm``) and ``eh_proj``, a plain
  ``nn.Linear(2 x hidden, hidden)``: neither quantized nor split, so every rank holds it whole in the model's dtype
  (`mtp_front_bytes`).  Its own ``embed_tokens`` and each MTP layer's ``shared_head.head`` are built and loaded,
  then replaced by the target's (``EagleProposer._maybe_share_embeddings`` / ``_maybe_share_lm_head``: "Detected MTP
  model. Sharing target model ... weights"), all inside the runner's ``DeviceMemoryProfiler`` (gpu_model_runner.py
  ``load_model``).  Each parameter's ``weight_loader`` is a bound method of its module, a reference cycle, so they are
  freed at the ``gc.collect()`` of that profiler's exit, whose ``torch.cuda.empty_cache()``
  (platforms/cuda.py ``get_current_memory_usage``) then hands their blocks back before "Model loading took" is
  measured; ``memory_profiling`` (utils/mem_utils.py) collects and empties the cache again before the profiling run,
  so neither the weights, the torch peak nor the non-torch term of the KV budget holds them
  (v1/worker/gpu_worker.py ``determine_available_memory``).  They are a transient of the load alone
  (`drafter_load_bytes`), before the KV cache is sized: the device then holds the start-up memory, the drafter's
  buffers and the weights, and the budget beyond them is still free (`engines.vllm.OutsideBudget.load_bytes`).
  ``empty_cache`` returns only segments that hold nothing else: where the fp8 experts keep their tensors (DeepGEMM and
  Triton: fused_moe/oracle/fp8.py ``convert_to_fp8_moe_kernel_format`` re-lays only the scales) no freed block of
  their size is cached when they are built, so each takes its own segment; a backend that replaces the expert weights
  (FlashInfer, Marlin) could leave their blocks reserved inside a shared segment, which nibble does not model.  The
  MTP layers'
  attention joins the KV cache: their MLA specs equal the target's, so ``get_kv_cache_groups`` (v1/core/
  kv_cache_utils.py) puts them in the one group and ``num_blocks = available // (page x (layers + MTP layers))``.
  The runner's ``profile_run`` runs ``drafter.dummy_run`` after the target's dummy forward (gpu_model_runner.py
  ``_dummy_run``), and captures the drafter's PIECEWISE graphs beside the target's (``capture_model``).
* ``ngram`` runs no model: ``NgramProposer`` (v1/spec_decode/ngram_proposer.py) matches on the CPU, its buffers
  NumPy arrays; the runner builds no other device buffer for it (0.11 and 0.19 gpu_model_runner.py ``__init__``: the
  draft-count buffers are made with or without a speculative config), runs no drafter in ``_dummy_run`` and
  captures no drafter graph.

On 0.19 both make a decode step ``1 + k`` tokens a sequence (``uniform_decode_query_len``), which sets the largest
CUDA-graph capture size (config/vllm.py ``_set_cudagraph_sizes``: ``min(max_num_seqs x (1 + k) x 2, 512)``) and
rounds the sizes up to multiples of ``1 + k`` under FULL decode graphs (``CompilationConfig.adjust_cudagraph_sizes_
for_spec_decode``), and make the sampler warm-up also run the rejection sampler (``_dummy_sampler_run``), with one
draft a request: a full decode step of k drafts needs more (`serving_rejection_bytes`).  Neither adds a slot for
drafting (``SpeculativeConfig.max_num_new_slots_for_drafting``: 0 for serial methods), so
``max_num_batched_tokens`` is unchanged.

On 0.11 (``ngram``) the capture sizes stay ``min(max_num_seqs x 2, 512)`` and unrounded (config/scheduler.py,
config/__init__.py ``_set_cudagraph_sizes``), the FULL decode graphs start at ``1 + k`` tokens
(gpu_model_runner.py ``capture_model``), ``max_num_batched_tokens`` is unchanged and the scheduler reserves no
lookahead slot (v1/core/sched/scheduler.py: only for EAGLE-style methods).  Its rejection sampler differs from
0.19's: the bonus tokens are sampled by the sampler beforehand (``_sample``), and ``compute_probs`` scales and sorts
the target logits in the model's dtype for top-k/top-p before a float32 softmax: the warm-up's peak
(`rejection_warmup_0_11_bytes`) and a full decode step's (`serving_rejection_0_11_bytes`).

Not planned, and refused naming why: vLLM 0.33 (Model Runner V2 drafts through v1/worker/gpu/spec_decode: ngram as
the GPU ``NgramGPUSpeculator``, mtp as ``MTPSpeculator``, with their own buffers, rejection sampler, warm-up and
graphs, not charged yet) and ``mtp`` on 0.11 (its ``EagleProposer`` is not 0.19's); the methods that need a draft model
(``eagle``, ``eagle3``, ``draft_model``, ...), whose config nibble does not take yet; ``mtp`` on other model types
(Qwen3-Next's hybrid layers, DeepSeek-V3.2's indexer); any method on a model with linear-attention layers (vLLM
gives each request ``1 + k`` recurrent-state blocks, ``MambaSpec.num_speculative_blocks``, which nibble's state
paging does not charge); and under pipeline parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass

from quant_core.engines.base import BatchLimits
from quant_core.engines.torch_cuda import allocated_block_bytes
from quant_core.engines.vllm_sampler import (
    TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT,
    TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT,
    TORCH_SORT_SEGMENTED_MIN_ROWS,
    torch_sort_peak_per_logit,
)
from quant_core.errors import InvalidSpec
from quant_core.specs import ModelSpec

#: the methods nibble plans (vLLM's ``SpeculativeMethod`` literals it has read the costs of)
SPECULATIVE_METHODS = ("mtp", "ngram")
#: vLLM's other methods (config/speculative.py ``SpeculativeMethod``): each needs a draft model or config
DRAFT_MODEL_METHODS = ("eagle", "eagle3", "draft_model", "medusa", "mlp_speculator", "suffix", "ngram_gpu")
#: the model types whose MTP drafter nibble has read, and the vLLM class that runs it
MTP_MODEL_TYPES = {"deepseek_v3": "DeepSeekMTP (model_executor/models/deepseek_mtp.py)",
                   "glm4_moe": "Glm4MoeMTP (model_executor/models/glm4_moe_mtp.py)"}
#: the releases nibble plans each method on: ``ngram`` on 0.11 and 0.19 (the V1 runner's ``NgramProposer``, which
#: matches on the CPU), ``mtp`` on 0.19 (its ``EagleProposer``); `UNPLANNED_RELEASES` says why not elsewhere
PLANNED_RELEASES: dict[str, tuple[str, ...]] = {"ngram": ("0.11", "0.19"), "mtp": ("0.19",)}
#: why a (release, method) nibble does not plan is refused: what of that release's drafting nibble has not charged
UNPLANNED_RELEASES: dict[tuple[str, str], str] = {
    ("0.33", "ngram"): (
        "0.33 runs it on Model Runner V2 (config/vllm.py use_v2_model_runner: ngram is not among "
        "_get_v2_model_runner_unsupported_features) as NgramGPUSpeculator (v1/worker/gpu/spec_decode/ngram/"
        "speculator.py: a GPU scan holding max_num_seqs x ceil(max_model_len / block) int64 scores and max_num_seqs "
        "x k int64 drafts), verified by v1/worker/gpu/spec_decode/rejection_sampler.py, which the profiling run's "
        "_dummy_sampler_run never runs (gpu/model_runner.py: it samples only; the speculative top-k/top-p warm-ups, "
        "register_top_k_top_p_warmups, run after the KV cache is sized), while load_model sizes the structured-output "
        "bitmask by max_num_seqs x (1 + k) rows; these, the capture sizes and the CUDA-graph estimate under "
        "speculative decoding nibble has not charged"),
    ("0.33", "mtp"): (
        "0.33 runs it on Model Runner V2 as MTPSpeculator or MultiModuleMTPSpeculator (v1/worker/gpu/spec_decode/mtp, "
        "multi_module_mtp: a TargetDependentARSpeculator with its own buffers, load, dummy runs and CUDA graphs), "
        "verified by v1/worker/gpu/spec_decode/rejection_sampler.py, whose terms nibble has not charged"),
    ("0.11", "mtp"): (
        "0.11's EagleProposer (v1/spec_decode/eagle.py) is not 0.19's: its buffers, load_model's sharing of the "
        "target's embedding and lm_head and its dummy_run differ, and nibble has not charged them"),
}
#: nibble's bound on num_speculative_tokens (vLLM sets none; past it a plan is not a deployment anyone runs)
MAX_SPECULATIVE_TOKENS = 32


@dataclass(frozen=True, slots=True)
class SpeculativeDecoding:
    """vLLM's ``--speculative-config``: `method` (``mtp`` or ``ngram``) proposing `num_speculative_tokens` tokens a
    step; `mtp_layers` is the model's ``num_nextn_predict_layers`` (0 when it has none), the drafter of ``mtp``."""

    method: str
    num_speculative_tokens: int
    mtp_layers: int = 0

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            why = ("needs a draft model, whose config nibble does not take yet"
                   if self.method in DRAFT_MODEL_METHODS else "is not a vLLM speculative method nibble knows")
            raise InvalidSpec("runtime.speculative.method", self.method,
                              f"{why}; nibble plans {', '.join(SPECULATIVE_METHODS)}")
        tokens = self.num_speculative_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_SPECULATIVE_TOKENS:
            raise InvalidSpec("runtime.speculative.num_speculative_tokens", tokens,
                              f"must be an integer from 1 to {MAX_SPECULATIVE_TOKENS}")
        if isinstance(self.mtp_layers, bool) or not isinstance(self.mtp_layers, int) or self.mtp_layers < 0:
            raise InvalidSpec("runtime.speculative.mtp_layers", self.mtp_layers, "must be a non-negative integer")

    @property
    def draft_layers(self) -> int:
        """The decoder layers the drafter runs beside the model's: the MTP layers for ``mtp``, none for ``ngram``."""
        return self.mtp_layers if self.method == "mtp" else 0


def speculative_refusal(spec: ModelSpec, version: str, speculative: SpeculativeDecoding,
                        pipeline_parallel: int) -> tuple[str, str] | None:
    """(field, reason) for why vLLM `version` cannot run `speculative` on `spec`, or nibble does not plan it; None
    when planned."""
    method, tokens = speculative.method, speculative.num_speculative_tokens
    planned = PLANNED_RELEASES[method]
    if version not in planned:
        return "runtime.engine_version", (
            f"nibble plans vLLM's {method} speculative decoding on {' and '.join(planned)} only: "
            + UNPLANNED_RELEASES.get((version, method), f"{version}'s runner and drafter were not read"))
    if pipeline_parallel > 1:
        return "parallel.pipeline", ("speculative decoding under pipeline parallelism is not planned: where vLLM "
                                     "places the drafter across stages was not read")
    if spec.linear_attention is not None:
        return "runtime.speculative.method", (
            "speculative decoding on a model with linear-attention layers is not planned: vLLM gives each request "
            f"1 + num_speculative_tokens = {1 + tokens} recurrent-state blocks a linear-attention group "
            "(MambaSpec.num_speculative_blocks: model_executor/layers/mamba/abstract.py get_kv_cache_spec on 0.19, "
            "gpu_model_runner.py get_kv_cache_spec on 0.11; single_type_kv_cache_manager.py MambaManager), which "
            "nibble's state paging (kv_cache.MAMBA_CACHE_MODE_STATE_BLOCKS) does not charge yet")
    if method != "mtp":
        return None
    if spec.model_type not in MTP_MODEL_TYPES:
        return "runtime.speculative.method", (
            f"nibble plans the mtp method for {', '.join(sorted(MTP_MODEL_TYPES))} models (vLLM's "
            f"{'; '.join(MTP_MODEL_TYPES.values())}), not model type {spec.model_type!r}")
    layers = speculative.mtp_layers
    if layers == 0:
        return "runtime.speculative.method", (
            "the model has no multi-token-prediction layers (num_nextn_predict_layers is 0 or absent): vLLM's "
            "mtp drafter would load none (DeepSeekMTP.load_weights: 'MTP speculative decoding layer ... weights "
            "missing from checkpoint')")
    if tokens > layers and tokens % layers:
        return "runtime.speculative.num_speculative_tokens", (
            f"{tokens} is more than the model's {layers} MTP layers and not a multiple of them: vLLM refuses it "
            "(config/speculative.py SpeculativeConfig.__post_init__: 'must be divisible by n_predict')")
    return None


def mtp_front_bytes(spec: ModelSpec, element_bytes: int) -> int:
    """Bytes on every rank of one MTP layer's parts outside its decoder layer: ``eh_proj``, an ``nn.Linear(2 x
    hidden, hidden, bias=False)``, and ``enorm``, ``hnorm`` and ``shared_head.norm`` (``RMSNorm(hidden)``), all in
    the model's dtype (`element_bytes`) and whole on each rank: no parallel layer and no quant_config
    (deepseek_mtp.py ``DeepSeekMultiTokenPredictorLayer``, glm4_moe_mtp.py likewise)."""
    hidden = spec.hidden_size
    return (2 * hidden * hidden + 3 * hidden) * element_bytes


def drafter_buffer_bytes(spec: ModelSpec, limits: BatchLimits, element_bytes: int) -> int:
    """The persistent buffers ``EagleProposer.__init__`` (v1/spec_decode/eagle.py, 0.19) allocates on the device for
    T = max_num_batched_tokens and S = max_num_seqs: ``input_ids`` (T int32), ``positions`` (T int64),
    ``hidden_states`` and ``inputs_embeds`` (T x hidden in the model's dtype), ``arange`` (max(S + 1, T) int32),
    ``backup_next_token_ids`` (S int32) and ``_slot_mapping_buffer`` (T int64), each as PyTorch's caching allocator
    holds it (`torch_cuda.allocated_block_bytes`).  The runner builds the proposer in its ``__init__``, after the
    worker's start-up snapshot and before the
    profiling run measures its baseline: no term of vLLM's budget counts them (``memory_profiling``, utils/mem_utils.py:
    weights from the load, the peak above the allocated memory at the run's start), so they come from the memory the
    budget leaves free."""
    tokens, seqs = limits.max_batched_tokens, limits.max_num_seqs
    hidden = tokens * spec.hidden_size * element_bytes
    held = allocated_block_bytes
    return (held(tokens * 4) + 2 * held(tokens * 8) + 2 * held(hidden) + held(max(seqs + 1, tokens) * 4)
            + held(seqs * 4))


def drafter_load_bytes(spec: ModelSpec, tensor_parallel: int, padded_vocabulary: int, draft_layers: int,
                       element_bytes: int) -> int:
    """What the MTP drafter holds on one rank only while it loads (`draft_layers` MTP layers, vLLM 0.19): its own
    ``embed_tokens`` (deepseek_mtp.py ``DeepSeekMultiTokenPredictor``, glm4_moe_mtp.py likewise: a
    ``VocabParallelEmbedding`` with no quant_config, in the model's dtype, `element_bytes`) and each MTP layer's
    ``shared_head.head`` (a ``ParallelLMHead``), each ``padded_vocabulary / tp`` rows of ``hidden`` as PyTorch's
    caching allocator holds them (`torch_cuda.allocated_block_bytes`), loaded from the checkpoint and then dropped
    for the target's (``EagleProposer._maybe_share_embeddings`` and ``_maybe_share_lm_head``, v1/spec_decode/eagle.py)
    before "Model loading took" is measured.  A head is charged in the model's dtype: the target's quant_config
    quantizes a ``ParallelLMHead`` only for GPTQ/AWQ checkpoints with ``lm_head: true``, which hold it smaller (the
    safe side)."""
    rows = -(-padded_vocabulary // tensor_parallel)
    return (1 + draft_layers) * allocated_block_bytes(rows * spec.hidden_size * element_bytes)


def drafter_pass_bytes(spec: ModelSpec, limits: BatchLimits, element_bytes: int) -> int:
    """What the drafter's dummy run in the profiling run (``EagleProposer.dummy_run`` after the target's forward,
    gpu_model_runner.py ``_dummy_run``) may hold beyond the target's forward pass of the same T =
    max_num_batched_tokens tokens, a bound read from the code, not a measurement: its MTP layer is one of the target's
    decoder layers at T tokens (no higher transient than the target pass's widest layer), run while the target's
    output hidden states stay held and, before it, the front's embedded and normed inputs (``inputs_embeds``,
    ``enorm``, ``hnorm``, their concatenation into ``eh_proj``: deepseek_mtp.py ``forward``); three T x hidden tensors
    in the model's dtype bound what is live beyond the target pass's own hidden states and residual."""
    return 3 * limits.max_batched_tokens * spec.hidden_size * element_bytes


def rejection_sampler_bytes(spec: ModelSpec, rows: int, padded_vocabulary: int, element_bytes: int) -> int:
    """What the rejection sampler's warm-up (``_dummy_sampler_run`` with a speculative config, 0.19) holds beyond the
    sampler pass over the same `rows` requests, a bound read from the code: one draft token a request, so
    ``torch.randn`` logits of ``2 x rows`` rows in the logits' dtype (the first pass's logits are released when the
    name is rebound).  The bonus tokens then sample ``rows`` of them (an indexed copy in place of the first pass's
    logits) through the same sampler (its copies as the first pass's); after it the target logits take a float32
    copy, its clone and their softmax (``RejectionSampler.forward``, ``rejection_sample``) and the recovered tokens
    two float32 ``rows x vocabulary`` draws (``sample_recovered_tokens``: ``q`` and ``q.reciprocal()``), five where
    the sampler held three: ``rows x (2 x padded vocabulary x element bytes + 8 x vocabulary)`` above the sampler
    pass."""
    return rows * (2 * padded_vocabulary * element_bytes + 8 * spec.vocab_size)


def serving_rejection_bytes(spec: ModelSpec, limits: BatchLimits, padded_vocabulary: int, element_bytes: int) -> int:
    """The rejection sampler's peak while serving a full decode step, which the warm-up (one draft a request) does
    not reach for k = num_speculative_tokens drafts: R = min(max_num_seqs, max_num_batched_tokens // (1 + k))
    requests of ``1 + k`` tokens; beside the step's T = max_num_batched_tokens hidden states and the ``R x (1 + k)``
    gathered rows, the ``R x (1 + k)`` logits and the bonus rows' copy in the logits' dtype, and then (the larger
    phase for any k) the ``R x k`` target rows' float32 copy, clone and softmax and the recovered tokens' two
    float32 ``R x vocabulary`` draws (v1/sample/rejection_sampler.py ``RejectionSampler.forward``,
    ``rejection_sample``, ``sample_recovered_tokens``), a bound read from the code."""
    tokens, drafts = limits.max_batched_tokens, limits.speculative_tokens
    query = 1 + drafts
    requests = min(limits.max_num_seqs, tokens // query)
    hidden = (tokens + requests * query) * spec.hidden_size * element_bytes
    logits = requests * (query + 1) * padded_vocabulary * element_bytes
    return hidden + logits + requests * spec.vocab_size * (12 * drafts + 8)


#: the small tensors live at the peak of vLLM 0.11's rejection sampler, each at most 8 bytes a row (a request's, or a
#: token's of the step: ``rows x (1 + k)`` rows at most): SpecDecodeMetadata.make_dummy's or
#: _calc_spec_decode_metadata's five (draft ids, cumulative draft counts, target, bonus and logits indices), the bonus
#: token ids, compute_probs' expanded temperature, top-k and top-p (``expand_batch_to_tokens``), apply_top_k_top_p's
#: top-k positions and their gathered values, and the sampler's output token ids (v1/spec_decode/metadata.py,
#: v1/sample/rejection_sampler.py, v1/sample/ops/topk_topp_sampler.py, 0.11)
REJECTION_0_11_SMALL_TENSORS = 12


def _sort_buffer_bytes_per_logit(rows: int, key_bytes: int) -> int:
    """PyTorch's sort buffers a logit (`vllm_sampler.torch_sort_peak_per_logit`'s, there for float32 keys) when it
    sorts `rows` rows of `key_bytes`-byte keys: torch's SortStable.cu dispatches bf16 and fp16 keys natively
    (``AT_DISPATCH_ALL_TYPES_AND3(kBool, kHalf, kBFloat16)``), so the alternate keys, and below 128 rows also the
    sorted keys ``radix_sort_pairs`` allocates, take `key_bytes` each instead of 4."""
    if 1 < rows < TORCH_SORT_SEGMENTED_MIN_ROWS:
        return TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT - 2 * (4 - key_bytes)
    return TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT - (4 - key_bytes)


def compute_probs_0_11_bytes_per_logit(rows: int, element_bytes: int) -> int:
    """Bytes a logit that vLLM 0.11's ``compute_probs`` (v1/sample/rejection_sampler.py) holds over `rows` target
    rows beyond the target logits themselves, which it scales in place in the model's dtype (`element_bytes`, e):
    the dummy and serving requests ask top-k and top-p, so ``apply_top_k_top_p`` (v1/sample/ops/topk_topp_sampler.py)
    sorts them, holding the sorted values (e), their int64 indices (8) and PyTorch's sort buffers
    (`_sort_buffer_bytes_per_logit`), then the top-k mask (1), the sorted probabilities (e, ``logits_sort.softmax``,
    the cumulative sum written over them), the top-p mask (1) and the re-scattered logits (e); after it returns, the
    scattered logits and their float32 softmax (e + 4).  The largest of the three phases."""
    element = element_bytes
    sort = element + 8 + _sort_buffer_bytes_per_logit(rows, element)
    masks = element + 8 + 1 + element + 1 + element
    return max(sort, masks, element + 4)


def rejection_warmup_0_11_bytes(spec: ModelSpec, rows: int, tokens: int, padded_vocabulary: int,
                                element_bytes: int) -> int:
    """The peak of vLLM 0.11's rejection-sampler warm-up (gpu_model_runner.py ``_dummy_sampler_run`` with a
    speculative config), after the sampler pass over the same `rows` = min(max_num_seqs, max_num_batched_tokens)
    requests, read from the code: still held, the dummy run's T = `tokens` hidden states, the gathered rows and their
    ``rand_like`` copy and the model's logits (``rows x padded vocabulary``, as `vllm_sampler.sampler_pass_bytes`
    holds them); then one draft a request: ``torch.randn`` target logits of ``rows x vocabulary`` in the logits' dtype
    (the bonus token ids are zeros, not sampled: 0.11's ``RejectionSampler.forward`` takes them), ``compute_probs``
    over them (`compute_probs_0_11_bytes_per_logit`), and after it the float32 probabilities beside the
    ``sample_recovered_tokens`` draw ``q`` (``rows x vocabulary`` float32: 8 bytes a logit in all), with
    `REJECTION_0_11_SMALL_TENSORS` small tensors of at most 8 bytes a row, each as PyTorch's caching allocator holds
    it."""
    vocabulary, element = spec.vocab_size, element_bytes
    held = (tokens + 2 * rows) * spec.hidden_size * element + rows * padded_vocabulary * element
    working = rows * vocabulary * (element + max(compute_probs_0_11_bytes_per_logit(rows, element), 8))
    return held + working + REJECTION_0_11_SMALL_TENSORS * allocated_block_bytes(8 * rows)


def serving_rejection_0_11_bytes(spec: ModelSpec, limits: BatchLimits, padded_vocabulary: int,
                                 element_bytes: int) -> int:
    """vLLM 0.11's peak at the sampling of a full decode step of k = num_speculative_tokens drafts, read from the
    code (gpu_model_runner.py ``execute_model``, ``_sample``; v1/sample/rejection_sampler.py): R =
    min(max_num_seqs, max_num_batched_tokens // (1 + k)) requests of ``1 + k`` tokens; held throughout, the step's T
    hidden states, the ``R x (1 + k)`` gathered rows and their logits (``compute_logits``, padded vocabulary, model
    dtype) and the bonus rows' indexed copy (``R x vocabulary``, bound until ``_sample`` returns); then the larger of
    the sampler over the R bonus rows (`vllm_sampler.torch_sort_peak_per_logit`: its float32 copy, PyTorch's sort of
    it and the sort's buffers, as `vllm_sampler.sampler_pass_bytes` charges the warm-up's), ``compute_probs`` over
    the ``R x k`` target rows' indexed copy (`compute_probs_0_11_bytes_per_logit`), and the target rows beside their
    float32 probabilities and the ``R x vocabulary`` float32 draw ``q``; with `REJECTION_0_11_SMALL_TENSORS` small
    tensors of at most 8 bytes a token."""
    tokens, drafts = limits.max_batched_tokens, limits.speculative_tokens
    query = 1 + drafts
    requests = min(limits.max_num_seqs, tokens // query)
    targets = requests * drafts
    vocabulary, element = spec.vocab_size, element_bytes
    held = ((tokens + requests * query) * spec.hidden_size * element + requests * query * padded_vocabulary * element
            + requests * vocabulary * element)
    bonus = requests * vocabulary * torch_sort_peak_per_logit(requests)
    verify = targets * vocabulary * (element + compute_probs_0_11_bytes_per_logit(targets, element))
    recovered = targets * vocabulary * (element + 4) + requests * vocabulary * 4
    return (held + max(bonus, verify, recovered)
            + REJECTION_0_11_SMALL_TENSORS * allocated_block_bytes(8 * requests * query))


def rejection_warmup(spec: ModelSpec, version: str, rows: int, tokens: int, padded_vocabulary: int,
                     element_bytes: int, sampled: int) -> tuple[int, str]:
    """(Bytes the rejection sampler's warm-up adds to the sampler pass of `sampled` bytes over `rows` requests in
    vLLM `version`'s profiling run, its basis): 0.19's bound above the sampler pass (`rejection_sampler_bytes`);
    0.11's warm-up peak beyond the sampler pass's (`rejection_warmup_0_11_bytes`, 0 where the sampler's is higher)."""
    if version == "0.11":
        peak = rejection_warmup_0_11_bytes(spec, rows, tokens, padded_vocabulary, element_bytes)
        extra = max(0, peak - sampled)
        return extra, (f"the sampler warm-up also runs the rejection sampler with one draft a request, "
                       f"{peak / 2**30:.2f} GiB at its peak: the dummy run's hidden states and the model's logits "
                       "still held, randn target logits in the model's dtype and compute_probs' PyTorch sort of them "
                       f"for top-k/top-p (gpu_model_runner.py _dummy_sampler_run, v1/sample/rejection_sampler.py, "
                       f"0.11), {extra / 2**30:.2f} GiB above the sampler pass")
    rejection = rejection_sampler_bytes(spec, rows, padded_vocabulary, element_bytes)
    return rejection, (f"the sampler warm-up also runs the rejection sampler, at most {rejection / 2**30:.2f} GiB "
                       "above the sampler pass (2 x rows of random logits and a fourth float32 copy of the target "
                       "logits: gpu_model_runner.py _dummy_sampler_run, v1/sample/rejection_sampler.py)")


def serving_rejection(spec: ModelSpec, version: str, limits: BatchLimits, padded_vocabulary: int,
                      element_bytes: int) -> int:
    """The sampling peak of a full decode step of ``limits.speculative_tokens`` drafts a request on vLLM `version`
    (`serving_rejection_0_11_bytes` on 0.11, `serving_rejection_bytes` on 0.19)."""
    if version == "0.11":
        return serving_rejection_0_11_bytes(spec, limits, padded_vocabulary, element_bytes)
    return serving_rejection_bytes(spec, limits, padded_vocabulary, element_bytes)
