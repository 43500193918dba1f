"""vLLM's releases as data: what each one runs and charges, and its start-up check.

The release table (`VERSIONS`: each release's non-torch figure, scheduler defaults, KV cache grouping and CUDA-graph
accounting, from its ``v1/worker/gpu_worker.py`` and ``v1/core/kv_cache_utils.py``), the start-up floor of
``Worker.init_device`` (`startup_memory`, `startup_refusal`), and the per-release tables of model types: Llama 4's
chunked local attention under the hybrid KV cache manager (``envs.py``), the Mamba cache modes
(``config/model.py``), the model classes that build the vocabulary on every pipeline stage
(``model_executor/models/``).  The other ``vllm_*`` modules import it; it imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from quant_core.catalog import UNKNOWN_DEVICE, DeviceFacts
from quant_core.engines.base import Stage, Term
from quant_core.engines.torch_cuda import blas_workspace_bytes
from quant_core.errors import UnknownName

GIB = 1 << 30
MIB = 1 << 20
ACTIVATION_ELEMENT_BYTES = 2  # bf16/fp16 activations
LARGE_DEVICE_BYTES = 70 * GIB
# llm-d-planner's vLLM v0.19.0 sweep on H100 80GB (accuracy/results/v0.19.0/logs, commit d3121e0 of
# github.com/llm-d-incubation/llm-d-planner): 57 start-up logs, each worker's "Actual usage is ... GiB for weight,
# ... for peak activation, ... for non-torch memory" line.
LLMD_PLANNER_V0_19 = "llm-d-planner's vLLM v0.19.0 H100 logs"


@dataclass(frozen=True, slots=True)
class _NonTorch:
    """Memory outside PyTorch's allocator that grows while vLLM loads and profiles (`memory_profiling`'s
    ``non_torch_increase``), per device, by layout.  No vLLM code sizes it (cuBLAS workspaces, NCCL
    communicators and all-reduce buffers), so each figure is the one public logs of the release show,
    named in `source`.  `tensor_parallel` maps a degree to its bytes (a larger degree takes the largest
    measured one below it); `pipeline` is None where no pipeline-parallel log was found (then charged as
    tensor parallelism of the same degree, the larger of the two).  `model_type_excess` maps a model type whose public
    runs of the release logged more than their layout's figure to the bytes added on every layout and their source."""

    single: int
    tensor_parallel: tuple[tuple[int, int], ...]
    pipeline: int | None
    source: str
    model_type_excess: Mapping[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Version:
    """What changes between the vLLM releases nibble models.

    The profiling run's sampler pass is each release's code (`sampler_pass_bytes`, keyed by the
    release), with PyTorch's BLAS workspaces beside it (`torch_cuda.blas_workspace_bytes`).
    `moe_workspace_persists`: the fused-MoE intermediate caches of the dummy forward pass stay
    allocated under the sampler pass (vllm/v1/worker/workspace.py's WorkspaceManager keeps its
    largest buffer until it is locked after profiling).
    `gdn_projections_profiled`: a Gated DeltaNet layer runs its projections in the profiling run
    (`gdn_forward_bytes_per_token`); False where the whole layer returns before them.
    """

    cuda_graphs_in_budget: bool
    tokens_from_concurrency: bool
    moe_workspace_persists: bool
    non_torch: _NonTorch
    gdn_projections_profiled: bool
    #: the ``mamba_cache_mode`` a hybrid (Gated DeltaNet) model runs in when ``vllm serve`` is given no prefix-caching
    #: flag: "none" where the release keeps prefix caching off for hybrid models, "align" where it turns it on
    #: (`MAMBA_CACHE_MODES`; `kv_cache.MAMBA_CACHE_MODE_STATE_BLOCKS` the blocks a sequence takes per linear group)
    mamba_cache_mode: str
    #: memory in use at the worker's start-up snapshot, outside the budget (`_Startup`, `startup_memory`)
    startup: _Startup
    #: whether a model with ``attention_chunk_size`` (Llama 4) runs under the hybrid KV cache manager, its chunked
    #: local layers as ChunkedLocalAttentionSpec holding the current chunk (`CHUNKED_LOCAL_ATTENTION` says why)
    chunked_local_attention: bool = False
    #: whether the tokens a sliding or chunked group reserves per request beyond its window are ``max_in_flight_tokens``
    #: (config/vllm.py: ``max_concurrent_batches x max_num_batched_tokens``, two batches or more under the default
    #: async scheduling) rather than one batch of ``max_num_batched_tokens``
    in_flight_batches: bool = False
    #: `_get_kv_cache_groups_uniform_page_size`'s layers per group when a model has attention layers of several
    #: kinds: the larger kind's count when it is less than this many times the smaller's, else the smaller's (None:
    #: always the smaller's, v0.11)
    group_size_ratio: float | None = None


# v0.11 (llm-d-benchmark's H100 logs, config_explorer/empirical-vllm-memory-results.md): 0.13-0.14 GiB on one GPU,
# 0.54 and 0.55 GiB at TP=2 (Qwen3-32B bf16, Llama-3.3-70B FP8), each charged as the largest logged figure rounded up
# to the MiB (0.14 and 0.55 GiB: 0.13 on one GPU left Qwen3-32B's and Mistral-Small-3.2's runs 10 MiB short).  That is
# what grows after 0.11's start-up snapshot: Worker.init_device takes MemorySnapshot after
# init_worker_distributed_environment has set up NCCL and the custom all-reduce (v1/worker/gpu_worker.py, "Initialize
# the distributed environment BEFORE taking memory snapshot"), and memory_profiling's non_torch_increase is measured
# from that snapshot (utils/__init__.py), so the communicators are charged outside the budget (`STARTUP_V0_11`: those
# workers started with 1.54 GiB in use against 0.61 GiB on one GPU).  A vLLM 0.10.2 TP=2 log (Qwen3-Next-80B-A3B on
# two H200s) shows 1.38 GiB: 0.10.2's init_device takes the snapshot before init_worker_distributed_environment (read
# in the 0.10.2 wheel), so its figure holds the communicators too (it started with 0.60 GiB in use), and it is not
# 0.11's figure.  No pipeline-parallel log: charged as tensor parallelism.
#
# From 8 ranks, 1,989 MiB (1.94 GiB): vLLM's Kimi-K2-Thinking recipe (vllm-project/recipes, moonshotai/Kimi-K2-Think.md
# @0d218d1, a 0.11.1 nightly whose gpu_worker.determine_available_memory and memory_profiling are 0.11.0's) on eight
# H200s at TP=8 logs 715,072 tokens, 11,173 FlashMLA blocks of 64 x 61 layers x 576 x 2 bytes (46.80 GiB), with nothing
# but defaults; what the largest public H200 total (139.81 GiB, vllm_logs.json's 0.10.2 run) x 0.9 less the smallest
# pool holding those blocks leaves beyond the weights vLLM builds (70.95 GiB a rank) and the profiling run's torch peak
# (6.14 GiB: 1024 x 163,840 logits through the PyTorch-native sort, 38 bytes a logit, the dummy run's hidden states, the
# rotary cache and the cuBLAS workspaces), rounded up to the MiB, so that run has no less left for its KV cache than the
# plan says on any H200 (the catalog's 139.72 GiB total leaves 1,906).  It is NCCL's, set up inside the profiling run:
# vLLM passes no device_id to init_process_group, so PyTorch creates the tensor-parallel group's NCCL communicator at
# its first collective, the sampler warm-up's logits all-gather (LogitsProcessor._gather_logits ->
# DeviceCommunicatorBase.all_gather -> dist.all_gather_into_tensor on the device group; CudaCommunicator does not
# override it), after the start-up snapshot (at TP=2 it is in llm-d's 0.55 GiB); and above two GPUs, where 8 ranks hold
# 1.39 GiB more than 2, NCCL turns on NVLink SHARP (src/transport/nvls.cc, ncclNvlsInit: "gpuCount <= 2" returns without
# it), whose buffer each communicator allocates at its first NVLS collective (NCCL_RUNTIME_CONNECT=1): 16 channels x 2 x
# (128 KiB x 8 steps) x 8 heads = 256 MiB at 8 ranks ("NVLS comm ... nHeads 8 ... nvlsTotalSize 268435456" in an 8 x
# H100 NCCL log), for vLLM's PyNccl all-reduces of 8192 x 7168 x 2 bytes and PyTorch's all-gather alike: 512 MiB of the
# 1.39 GiB from NCCL's code; the rest (the communicator's own state and its ring and tree connections at 8 ranks) no
# code here sizes.  vllm#9699 measured the mechanism on 8 x H200 (Llama-3.1-405B at TP=8, vLLM 0.6): 17,595 KV blocks
# with NVLS on against 227.. with NCCL_NVLS_ENABLE=0 (the public copy is cut there), about 5 GiB a rank of its ~1 MiB
# blocks, when NCCL's NVLS buffer was 2.25 GiB a communicator ("nvlsTotalSize 2415919104").  No 0.11 log at TP=4: both
# mechanisms are at work there too (the communicator made inside the profiling run; NVLS on above two GPUs), and what
# four ranks hold between TP=2's 564 MiB and eight's 1,989 is not known, so TP=4 to 7 take the 8-rank figure, the
# safe side (at most 1,425 MiB a rank more than they may hold).
_NON_TORCH_V0_11 = _NonTorch(144 * MIB, ((2, 564 * MIB), (4, 1989 * MIB), (8, 1989 * MIB)), None,
                             "llm-d-benchmark's vLLM v0.11 H100 logs (0.13-0.14 GiB on one GPU, 0.54-0.55 GiB at "
                             "TP=2) and vLLM's Kimi-K2-Thinking recipe run on eight H200s (1.94 GiB at TP=8, what its "
                             "logged KV cache leaves beside its weights and profiling peak: NCCL's NVLink SHARP "
                             "buffers and PyTorch's communicator, set up inside the profiling run)")
# v0.19 (llm-d-planner's sweep, logs at commit d3121e0 not counting the failed starts): 0.24-0.27 GiB on one GPU (39
# runs besides Granite's, below), 2.06-2.11 GiB at TP=2 (10 runs), 2.13-2.21 GiB at TP=4 (5 runs), 0.07 GiB per stage
# at PP=2 and PP=4 (Llama-3.1-8B): the TP figure is NCCL's and vLLM's all-reduce buffers.  Each layout is charged its
# largest logged figure rounded up to the MiB, as 0.11's are (0.27 GiB: Qwen3-30B-A3B; 2.11: Llama-3.3-70B w8a8;
# 2.21: Llama-3.3-70B fp8 and Kimi-Dev-72B; 0.07), so none of those runs had less left for its KV cache than the plan
# says.  No rule in what nibble knows of a model gives the figures: the growth is CUDA's own (lazily loaded kernel
# modules, cuBLAS and NCCL state), which no vLLM code sizes, and the runs follow neither weights bytes, layers, tensors,
# MoE nor fp8 (one GPU: Qwen2.5-7B's int8 w8a8 run 0.25 GiB against its fp8-dynamic run's 0.24, with the same layers,
# tensors and weights bytes, 8.14 GiB; Llama-3.1-8B's 5.38 GiB of int4 weights 0.25 against Qwen2.5-7B's 14.25 GiB of
# bf16 0.24; TP=2: dense Qwen2.5-72B 2.09 against MoE Mixtral-8x7B 2.07 and dense Llama-3.3-70B 2.10-2.11).  The
# sweep's three Granite 3.1/3.3 runs logged 0.46 GiB on one GPU: one family's figure, charged to that model type only
# (`_NON_TORCH_EXCESS_V0_19`).  0.33 charges these figures too (`VERSIONS`).
#
# Granite (model_type granite, GraniteForCausalLM): Granite-3.1-2B, 3.1-8B and 3.3-8B Instruct each logged "non-torch
# forward increase memory: 0.46GiB" on one H100, the sweep's other one-GPU runs 0.24-0.27.  The family's largest
# figure rounded up to the MiB (472 MiB) less the one-GPU figure (277 MiB) is added on every layout, on the safe side:
# no Granite run with TP or PP was logged.  The logs point at no cause: the runs select the same FLASH_ATTN backend
# (FlashAttention 3), compile one Inductor graph for the 1-8192 range and profile the same PIECEWISE=51 and FULL=51
# CUDA graphs inside memory_profiling as the others, and Granite-Vision-3.3-2B (LlavaNextForConditionalGeneration),
# whose language model is the same GraniteModel compiled from granite.py, logged 0.25.  No vLLM code sizes the excess.
_NON_TORCH_EXCESS_V0_19: dict[str, tuple[int, str]] = {
    "granite": ((472 - 277) * MIB, "llm-d-planner's vLLM v0.19.0 H100 logs of Granite-3.1-2B, Granite-3.1-8B and "
                                   "Granite-3.3-8B Instruct (0.46 GiB each on one GPU)"),
}
_NON_TORCH_V0_19 = _NonTorch(277 * MIB, ((2, 2161 * MIB), (4, 2264 * MIB)), 72 * MIB, LLMD_PLANNER_V0_19,
                             _NON_TORCH_EXCESS_V0_19)


@dataclass(frozen=True, slots=True)
class _Startup:
    """Device memory already in use when a vLLM worker takes its start-up snapshot, outside
    ``gpu_memory_utilization``.

    ``Worker.init_device`` (v1/worker/gpu_worker.py in 0.11, 0.19 and 0.33) first runs
    ``init_worker_distributed_environment`` ("Initialize the distributed environment BEFORE taking memory snapshot
    ... This ensures NCCL buffers are allocated before we measure available memory"), then takes ``MemorySnapshot``
    and asks for ``total x gpu_memory_utilization``: 0.11 in init_device itself, 0.19 and 0.33 in
    ``request_memory`` (v1/worker/utils.py), which raise "Free memory on device ... on startup is less than desired
    GPU memory utilization" when the snapshot's free memory is below it.  What is in use then is the CUDA context and
    PyTorch's (`single`), one NCCL communicator per process group of more than one rank (``initialize_model_parallel``
    in distributed/parallel_state.py): the tensor-parallel group's with vLLM's custom all-reduce buffers
    (`tensor_parallel`), the pipeline group's (`pipeline`; None where no log shows it: charged as `tensor_parallel`),
    and the expert group's (`expert_parallel`, over the tensor-parallel ranks) where the release creates it only for
    MoE models ("Don't create EP group for dense models", 0.19 and 0.33; 0.11 creates it for every model, so its
    tensor-parallel figure holds it).  0.33's init_device also creates the cuBLAS and cuBLASLt handles before the
    snapshot ("Create the handles now, before the snapshot, so they count as baseline"): `blas_handles`, their
    workspaces (`torch_cuda.blas_workspace_bytes`), which PyTorch keeps per (handle, stream) through
    ``torch.accelerator.empty_cache()``; the profiling run's matrix products on the same thread and stream reuse them,
    and 0.33's ``memory_profiling`` (utils/mem_utils.py) charges only what the free memory lost from this snapshot
    (``total_consumed``) and the peak above what stays allocated (``transient_peak_headroom``), so they are in
    neither and the activation term leaves them out (0.11 and 0.19 allocate them in the profiling run, inside
    its torch peak, and charge them there).  The KV pool is sized from the budget alone, so this memory comes
    from the ``total - total x utilization`` it leaves free, beside the CUDA graphs 0.11 and 0.19 capture after it
    (`OutsideBudget`).  No vLLM code sizes it: the figures are the public logs' "Free memory on device (free/total
    GiB) on startup", total - free rounded up to the MiB, named in `source`; the logs are H100 runs, charged on
    every device."""

    single: int
    tensor_parallel: int
    pipeline: int | None
    expert_parallel: int
    blas_handles: bool
    source: str


# v0.11: llm-d-benchmark's H100 runs (config_explorer/empirical-vllm-memory-results.md): "Free memory on device:
# 78.57/79.18 GiB" on one GPU (0.61 GiB), 77.64/79.18 at TP=2 (Llama-3.3-70B FP8: 1.54 GiB, 0.93 above one GPU).
STARTUP_V0_11 = _Startup(625 * MIB, 953 * MIB, None, 0, False,
                         "llm-d-benchmark's vLLM v0.11 H100 logs' (78.57/79.18 GiB free on one GPU, 77.64/79.18 at "
                         "TP=2)")
# v0.19: llm-d-planner's sweep as tests' vllm_logs.json holds it, "Free memory on device (free/79.19 GiB) on startup":
# 78.68 on one GPU (0.51 GiB, 15 runs, dense and MoE alike), 77.66 at TP=2 (1.53 GiB, five dense runs), 77.64 at TP=4
# (1.55 GiB, three runs: 1.04 above one GPU), 77.76 and 77.71 at PP=2 and PP=4 (1.43 and 1.48 GiB: 0.97 above one
# GPU), 77.18 for the two MoE runs at TP=2 (Mixtral-8x7B, gpt-oss-20b: 2.01 GiB, 0.48 above the dense runs: the
# expert group's communicator).
STARTUP_V0_19 = _Startup(523 * MIB, 1065 * MIB, 994 * MIB, 492 * MIB, False,
                         "llm-d-planner's vLLM v0.19.0 H100 logs' (78.68/79.19 GiB free on one GPU, 77.64-77.76 with "
                         "TP or PP, 77.18 for MoE models at TP=2)")
# v0.33: no public log of a release after 0.19 on an H100 gives the figure; 0.33's init_device is 0.19's plus the
# cuBLAS handles created before the snapshot, so 0.19's figures stand in with them.  The one later log, vLLM 0.27.1
# on four RTX PRO 6000 (no NVLink) serving Qwen3-235B-A22B-FP8 at TP=4, started with 0.96 GiB in use ("Free memory
# on device (94.05/95.01 GiB) on startup", vllm_logs.json's kubesimplify-v0.27-qwen3-235b-fp8-tp4), under the 2.04
# GiB charged for that layout.
STARTUP_V0_33 = replace(STARTUP_V0_19, blas_handles=True,
                        source=f"{STARTUP_V0_19.source} and the cuBLAS workspaces 0.33 creates before it")

VERSIONS: dict[str, _Version] = {
    # v0.11: 4.76-7.38 GiB of activations for five models on H100 (llm-d-benchmark, config_explorer/
    # empirical-vllm-memory-results.md): the PyTorch-native top-k/top-p's sort as its code allocates it
    # (`sampler_pass_bytes`: 38 bytes a logit over 1024 rows, beside the dummy run's hidden states) and the cuBLAS
    # workspaces, each within 0.02 GiB.
    "0.11": _Version(cuda_graphs_in_budget=False, tokens_from_concurrency=False,
                     moe_workspace_persists=False, non_torch=_NON_TORCH_V0_11, gdn_projections_profiled=False,
                     mamba_cache_mode="none", startup=STARTUP_V0_11, chunked_local_attention=False,
                     group_size_ratio=None),
    # v0.19 (llm-d-planner's sweep): 1.89-3.66 GiB of activations for dense models from 128,256 to 256,000
    # vocabulary entries, the sampler pass as its code sizes it (`sampler_pass_bytes`: 14 bytes a logit and the
    # Triton top-k/top-p buffer, beside the dummy run's hidden states) and the cuBLAS workspaces: Llama-3.1-8B 1.89,
    # Qwen2.5-7B 2.21, gemma-2-9b 3.65, Qwen2.5-72B at TP 2 2.29 GiB, each within 0.006 GiB.  CUDA graphs are
    # captured after the KV pool is sized, outside gpu_memory_utilization (75.23 - 14.99 - 1.89 - 0.25 = 58.11 GiB
    # logged for Llama-3.1-8B).
    "0.19": _Version(cuda_graphs_in_budget=False, tokens_from_concurrency=False,
                     moe_workspace_persists=True, non_torch=_NON_TORCH_V0_19, gdn_projections_profiled=True,
                     mamba_cache_mode="none", startup=STARTUP_V0_19, chunked_local_attention=True,
                     group_size_ratio=1.5),
    # v0.21 made VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS the default: the estimate is charged inside the
    # budget; the KV size is logged as max_concurrency x max_model_len.  The sampler pass is Model Runner V2's
    # (`sampler_pass_bytes`: 14 bytes a logit with FlashInfer's sampler, beside the rows' penalty state,
    # `sampler_state_bytes`); vllm#57047 (0.29 era) logs 0.57 GiB of peak activation for 256 x 151,936 logits,
    # 0.05 GiB above that pass (0.52 GiB).  No multi-GPU H100 log of a release after 0.19 gives its non-torch
    # memory: 0.19's figures stand in.
    "0.33": _Version(cuda_graphs_in_budget=True, tokens_from_concurrency=True,
                     moe_workspace_persists=True, non_torch=_NON_TORCH_V0_19, gdn_projections_profiled=True,
                     mamba_cache_mode="align", startup=STARTUP_V0_33, chunked_local_attention=True,
                     in_flight_batches=True, group_size_ratio=1.5),
}

# Why each release does or does not run Llama 4's chunked local attention layers (a model whose text config has
# ``attention_chunk_size``) under its hybrid KV cache manager when ``vllm serve`` is given no flag about it.
CHUNKED_LOCAL_ATTENTION: dict[str, str] = {
    "0.11": "vLLM 0.11 turns the hybrid KV cache manager off for a model with attention_chunk_size "
            "(config/__init__.py: "
            "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE defaults to 0 in envs.py, PR #21761, \"There is a "
            "latency regression when using chunked local attention with the hybrid KV cache manager. Disabling it, by "
            "default\"), and unify_hybrid_kv_cache_specs makes every chunked layer a FullAttentionSpec: they hold the "
            "whole context, as full layers do",
    "0.19": "vLLM 0.19 keeps the hybrid KV cache manager on for Llama 4 (envs.py: "
            "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE defaults to 1 from PR #29627): the chunked layers are "
            "ChunkedLocalAttentionSpec groups whose ChunkedLocalAttentionManager frees every block before the current "
            "chunk (get_num_skipped_tokens: computed tokens // chunk x chunk)",
    "0.33": "vLLM 0.33 keeps the hybrid KV cache manager on for Llama 4 (envs.py: "
            "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE defaults to 1, as from PR #29627): the chunked layers "
            "are ChunkedLocalAttentionSpec groups whose ChunkedLocalAttentionManager frees every block before the "
            "current chunk",
}


def chunked_local_attention(version: str) -> bool:
    """Whether vLLM `version` holds only the current chunk in Llama 4's chunked local attention layers by default
    (`CHUNKED_LOCAL_ATTENTION` says why); False: it allocates them the whole context, as full attention."""
    if version not in VERSIONS:
        raise UnknownName("vLLM version", str(version), [], field="runtime.engine_version", known=list(VERSIONS))
    return VERSIONS[version].chunked_local_attention


def in_flight_tokens(version: str, pipeline_parallel: int, max_batched_tokens: int) -> int:
    """The tokens a sliding-window or chunked-local group reserves per request beyond its window in vLLM `version`'s
    "Maximum concurrency" (``max_memory_usage_bytes``): one batch of `max_batched_tokens` up to v0.19
    (kv_cache_interface.py, ``SlidingWindowSpec`` / ``ChunkedLocalAttentionSpec``); in v0.33
    ``VllmConfig.max_in_flight_tokens`` = ``max_concurrent_batches x max_num_batched_tokens``, where async scheduling
    (on by default, config/vllm.py) with the default V2 model runner keeps ``pipeline_parallel + 1`` batches in
    flight."""
    if not VERSIONS[version].in_flight_batches:
        return max_batched_tokens
    return (pipeline_parallel + 1) * max_batched_tokens

# Why each release runs a hybrid Gated DeltaNet model (Qwen3NextForCausalLM, Qwen3_5ForConditionalGeneration) in its
# `_Version.mamba_cache_mode` when ``vllm serve`` is given neither --enable-prefix-caching nor
# --no-enable-prefix-caching.  nibble's plan options have no prefix-caching field: plans take the release's default
# and their note says so.
MAMBA_CACHE_MODES: dict[str, str] = {
    "0.11": "prefix caching off: engine/arg_utils.py _set_default_args leaves it off for a hybrid model (PR #23716, "
            "\"Disable prefix caching default for hybrid models since the feature is still experimental\"), and "
            "model_executor/models/config.py MambaModelConfig turns it off even when asked (\"Hybrid or mamba-based "
            "model detected without support for prefix caching: disabling\", vLLM 0.11.2 logs): one state block per "
            "sequence",
    "0.19": "prefix caching off unless --enable-prefix-caching is passed: config/model.py is_prefix_caching_supported "
            "answers False for a hybrid model in the releases after 0.11, and engine/arg_utils.py keeps it "
            "\"opt-in for now\" (default_prefix_caching = is_prefix_caching_supported and not is_hybrid) until PR "
            "#50991 (August 2026): one state block per sequence (with --enable-prefix-caching vLLM runs the 'align' "
            "mode and a sequence takes two)",
    "0.33": "prefix caching on: PR #50991 (\"[Mamba] enable prefix cache by default\", merged 2026-08-04) made "
            "default_prefix_caching = is_prefix_caching_supported for hybrid models too, and "
            "HybridAttentionMambaModelConfig.verify_and_update_config then sets mamba_cache_mode 'align' (\"Mamba "
            "cache mode is set to 'align' for Qwen3_5ForConditionalGeneration by default when prefix caching is "
            "enabled\", vLLM 0.29.0): two state blocks per sequence, the running state and the last block "
            "boundary's checkpoint (with --no-enable-prefix-caching a sequence takes one)",
}


def mamba_cache_mode(version: str) -> str:
    """The ``mamba_cache_mode`` vLLM `version` runs a hybrid model in by default (`MAMBA_CACHE_MODES` says why)."""
    if version not in VERSIONS:
        raise UnknownName("vLLM version", str(version), [], field="runtime.engine_version", known=list(VERSIONS))
    return VERSIONS[version].mamba_cache_mode
DEFAULT_VERSION = "0.19"

# Model types whose vLLM model class builds the input embedding, the final norm and the lm_head (tied or not) on
# every pipeline rank: their constructors create them with no `get_pp_group()` test, where llama.py (and the Llama-
# based mistral.py, phi3.py), qwen2.py, qwen3.py and deepseek_v2.py put a `PPMissingLayer` on the ranks that do not
# run them.  The allocated parameters are weights to vLLM ("Model loading took"): Qwen3-235B-A22B-FP8 at PP=4 logs
# 55.70 GiB for a 23-layer stage, which is 23 layers + embedding + lm_head (kubesimplify's vLLM 0.27.1 run).  Read
# in vllm/model_executor/models/ of the v0.27.1 and v0.33.0 wheels and of vLLM's main branch in October 2025 (v0.11)
# and May 2026 (after v0.19): the same in all four, so the rule holds for every release nibble models.
VOCABULARY_ON_EVERY_STAGE: dict[str, str] = {
    "qwen3_moe": "qwen3_moe.py: Qwen3MoeModel.__init__ (embed_tokens, norm), Qwen3MoeForCausalLM.__init__ (lm_head)",
    "qwen2_moe": "qwen2_moe.py: Qwen2MoeModel.__init__ (embed_tokens, norm), Qwen2MoeForCausalLM.__init__ (lm_head)",
    "mixtral": "mixtral.py: MixtralModel.__init__ (embed_tokens, norm), MixtralForCausalLM.__init__ (lm_head)",
    "phimoe": "phimoe.py: PhiMoEModel.__init__ (embed_tokens, norm), PhiMoEForCausalLM.__init__ (lm_head and its bias)",
    "gpt_oss": "gpt_oss.py: GptOssModel.__init__ (embedding, norm), GptOssForCausalLM.__init__ (lm_head)",
    "gemma2": "gemma2.py: Gemma2Model.__init__ (embed_tokens, which is also the tied lm_head, and norm)",
    "gemma3_text": "gemma3.py: Gemma3Model.__init__ (embed_tokens, norm), Gemma3ForCausalLM.__init__ (lm_head)",
    "gemma3": "gemma3.py (the language model of gemma3_mm.py): Gemma3Model.__init__, Gemma3ForCausalLM.__init__",
    "falcon": "falcon.py: FalconModel.__init__ (word_embeddings, ln_f), FalconForCausalLM.__init__ (lm_head)",
    "gpt2": "gpt2.py: GPT2Model.__init__ (wte, wpe, ln_f), GPT2LMHeadModel.__init__ (lm_head)",
    # the final norm is a PPMissingLayer off the last rank: counted on every stage here, 2 x hidden bytes to spare
    "qwen3_next": "qwen3_next.py: Qwen3NextModel.__init__ (embed_tokens), Qwen3NextForCausalLM.__init__ (lm_head), "
                  "v0.11 and May 2026 alike",
    # OLMo 2 / Olmo 3: read in olmo2.py of v0.11 and of May 2026's main (which loads both) and in olmo3.py (Olmo 3's
    # own class on main from 2026): no get_pp_group() test around embed_tokens, norm or lm_head in either
    "olmo2": "olmo2.py: Olmo2Model.__init__ (embed_tokens, norm), Olmo2ForCausalLM.__init__ (lm_head)",
    "olmo3": "olmo3.py (olmo2.py before it): Olmo3Model.__init__ (embed_tokens, norm), Olmo3ForCausalLM.__init__ "
             "(lm_head)",
}


# Model types whose vLLM model class builds the input embedding on every pipeline rank but the final norm and an
# untied lm_head on the last only: qwen3_5.py's Qwen3_5Model.__init__ creates embed_tokens with no get_pp_group()
# test, and puts a PPMissingLayer for the norm (Qwen3_5Model) and the lm_head (Qwen3_5ForCausalLMBase) off the last
# rank; a tied lm_head is that rank's embed_tokens.  Qwen3_5MoeForConditionalGeneration is built from the same classes.
EMBEDDING_ON_EVERY_STAGE: dict[str, str] = {
    "qwen3_5": "qwen3_5.py: Qwen3_5Model.__init__ (embed_tokens); the norm and lm_head on the last rank only",
    "qwen3_5_moe": "qwen3_5.py: Qwen3_5Model.__init__ (embed_tokens); the norm and lm_head on the last rank only",
}


# Model types whose vLLM model class allocates the MoE router (gate weight and e_score_correction_bias) in float32
# whatever the model's dtype, on every tensor-parallel rank (replicated): 4 bytes per router element, not 2.
ROUTERS_AT_FP32: dict[str, str] = {
    # Glm4MoE.gate = nn.Linear(hidden_size, n_routed_experts, dtype=torch.float32) and gate.e_score_correction_bias =
    # nn.Parameter(torch.empty(n_routed_experts, dtype=torch.float32)): vLLM pull requests #22143 and #22203
    # (August 2025, before v0.11), unchanged on vLLM's main branch in 2026
    "glm4_moe": "glm4_moe.py: Glm4MoE's gate and its e_score_correction_bias in torch.float32",
    # MiniMaxM2MoE.gate = ReplicatedLinear(hidden_size, num_local_experts, params_dtype=torch.float32,
    # quant_config=None) and e_score_correction_bias = nn.Parameter(torch.empty(num_local_experts,
    # dtype=torch.float32)), in minimax_m2.py since vLLM first shipped it (v0.11.1) and on its main branch in 2026
    "minimax_m2": "minimax_m2.py: MiniMaxM2MoE's gate (params_dtype torch.float32) and its e_score_correction_bias",
}


# Model types a vLLM release nibble models cannot load: its model registry has no class for their architecture
# ("Model architectures [...] are not supported"), by the (major, minor) of the first release after nibble's profile
# of the one before that has it (nibble's "0.11" profile is v0.11.0).
MODEL_TYPES_SINCE: dict[str, tuple[tuple[int, int], str]] = {
    # minimax_m2.py (MiniMaxM2ForCausalLM) landed on vLLM's main branch for MiniMax-M2's release (26 October 2025,
    # vllm-project/recipes#95 installs a nightly build for it), after v0.11.0 (2 October 2025): first in v0.11.1
    "minimax_m2": ((0, 12), "MiniMaxM2ForCausalLM (minimax_m2.py) first shipped in vLLM v0.11.1"),
}


#: the releases whose MoE data parallelism nibble plans (`moe_dispatched_tokens`); 0.11's FusedMoE.forward_impl picks
#: its kernels before the oracles and routes FlashInfer CUTLASS at dp > 1 to forward_impl_chunked: not read
MOE_DATA_PARALLEL_VERSIONS: tuple[str, ...] = ("0.19", "0.33")


def data_parallel_groups(stage: Stage, version: str) -> tuple[str, ...]:
    """The process groups of more than one rank that vLLM `version` creates on a device of `stage` because of data
    parallelism, beside the tensor and pipeline groups `startup_memory` counts (empty at data parallel 1).

    0.19 and 0.33 start the data-parallel ranks of a model without routed experts as independent engines:
    ``run_engine_core`` (v1/engine/core.py) sets ``data_parallel_size = 1`` for them ("Non-MoE DP ranks are
    completely independent, so treat like DP=1") before the workers start, so no group spans the replicas; a MoE
    model's ranks stay one engine (`MOE_DATA_PARALLEL_VERSIONS`), and ``initialize_model_parallel`` builds the
    data-parallel group and the expert group over data x tensor ranks (which replaces the tensor-parallel ranks'
    expert group `_Startup.expert_parallel` charges), each charged here.  0.11's ``run_engine_core`` starts every
    rank of data parallel > 1 as a ``DPEngineCoreProc`` and keeps the size, so ``initialize_model_parallel``
    (distributed/parallel_state.py) builds the data-parallel group (``data_parallel_size`` ranks) and the expert group
    (``data_parallel_size x tensor_parallel_size`` ranks, for every model in 0.11), each with its device
    communicator; at tensor parallel > 1 the expert group's communicator is already in the tensor-parallel figure
    (`_Startup`), so only the data-parallel group's is added."""
    if stage.data_parallel > 1 and stage.spec.is_moe and version in MOE_DATA_PARALLEL_VERSIONS:
        # a MoE model's ranks stay one engine (run_engine_core keeps data_parallel_size): initialize_model_parallel
        # builds the data-parallel group and the expert group over data x tensor ranks
        return (f"data-parallel group's ({stage.data_parallel} ranks)",
                f"expert group's ({stage.moe_ranks} ranks, replacing the tensor-parallel ranks' own)")
    if stage.data_parallel <= 1 or version != "0.11":
        return ()
    data = f"data-parallel group's ({stage.data_parallel} ranks)"
    if stage.tensor_parallel > 1:
        return (data,)
    return (data, f"expert group's ({stage.data_parallel} ranks)")


def startup_memory(stage: Stage, version: str, device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
    """The memory in use on one device of `stage` when vLLM `version`'s worker takes its start-up snapshot, outside
    ``gpu_memory_utilization`` (`_Startup`): the CUDA context, plus a communicator for each process group of more
    than one rank (tensor, pipeline, and a MoE model's expert group where the release creates it only for MoE
    models), plus on 0.33 the cuBLAS workspaces of `device` (`torch_cuda.blas_workspace_bytes`)."""
    rules = VERSIONS[version].startup
    size, parts = rules.single, ["the CUDA context"]
    if stage.tensor_parallel > 1:
        size += rules.tensor_parallel
        parts.append(f"the tensor-parallel group's NCCL communicator and custom all-reduce ({stage.tensor_parallel} "
                     "ranks)")
        if stage.spec.is_moe and rules.expert_parallel and stage.moe_ranks == stage.tensor_parallel:
            size += rules.expert_parallel
            parts.append("the expert group's NCCL communicator (a MoE model)")
    groups = data_parallel_groups(stage, version)
    if groups:
        size += len(groups) * rules.tensor_parallel
        parts.append(f"the {' and '.join(groups)} NCCL communicator(s), each charged the tensor-parallel group's "
                     "figure (no log shows one alone: the safe side, as the pipeline group where none does)")
    if stage.pipeline_parallel > 1:
        size += rules.tensor_parallel if rules.pipeline is None else rules.pipeline
        parts.append("the pipeline group's NCCL communicator" + (" (no log: as tensor parallelism)"
                                                                  if rules.pipeline is None else ""))
    if rules.blas_handles:
        size += blas_workspace_bytes(device)
        parts.append("the cuBLAS workspaces")
    where = "gpu_worker.py Worker.init_device" if version == "0.11" else "v1/worker/utils.py request_memory"
    return Term(size, f"{size / GIB:.2f} GiB per device in use at vLLM {version}'s start-up snapshot "
                      f"({', '.join(parts)}), outside gpu_memory_utilization: the budget, total x utilization, must "
                      f"be free then ({where}); the figure is {rules.source}")


def startup_refusal(version: str, capacity_bytes: int, startup_bytes: int, utilization: float) -> str:
    """The error vLLM `version` raises at start when the free memory of its start-up snapshot, ``capacity -
    startup``, is below ``total x utilization`` (0.11's Worker.init_device; 0.19's and 0.33's request_memory, which
    rounds the request up to a byte and names the device), with the figures it would print (to 0.01 GiB)."""
    requested = capacity_bytes * utilization if version == "0.11" else math.ceil(capacity_bytes * utilization)
    device = "" if version == "0.11" else " cuda:0"
    return (f"Free memory on device{device} ({round((capacity_bytes - startup_bytes) / GIB, 2)}/"
            f"{round(capacity_bytes / GIB, 2)} GiB) on startup is less than desired GPU memory utilization "
            f"({utilization}, {round(requested / GIB, 2)} GiB). Decrease GPU memory utilization or reduce GPU memory "
            "used by other processes.")
