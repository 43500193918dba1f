"""vLLM's memory terms, version by version, as its own code computes them.

Where each term comes from (vLLM's repository, ``vllm/v1``):

* ``worker/gpu_worker.py``, ``Worker.determine_available_memory``: the KV pool gets
  ``total × gpu_memory_utilization − (weights + peak activation + non-torch increase)``
  (+ the CUDA-graph estimate from v0.21 on), where *total* is what
  ``torch.cuda.mem_get_info`` reports for the device, not its marketing size.
* ``worker/gpu_worker.py``, ``Worker.init_device``: the budget is asked of the memory free at a snapshot taken
  after NCCL is set up; what is in use then (the CUDA context, the process groups' communicators) lies outside it,
  and vLLM refuses to start when the free memory is below ``total × gpu_memory_utilization`` (`startup_memory`).
* ``worker/gpu_model_runner.py``, ``GPUModelRunner.profile_run``: the peak is measured on
  one dummy batch of ``max_num_batched_tokens`` tokens, then a sampler pass over
  ``min(max_num_seqs, max_num_batched_tokens)`` sequences on the last pipeline stage;
  the workload's context length plays no part, except for a multimodal model, whose
  vision tower first encodes a dummy batch of the processor's largest images or videos
  (``_get_mm_dummy_batch``; `qwen_encoder_profile`, `pixtral_encoder_profile`), sized for
  Qwen2.5-VL (and Qwen3-VL on 0.11) by ``max_model_len``, and for DeepSeek Sparse Attention's
  workspace on 0.19 (`dsa_workspace`).
* ``core/kv_cache_utils.py``: layers are grouped by attention kind (full, sliding window, and
  Llama 4's chunked local attention where the release runs it under the hybrid KV cache
  manager: `CHUNKED_LOCAL_ATTENTION`) into groups of equal size (`_Version.group_size_ratio`);
  ``num_blocks = available // (page_size × layers per group)``; "GPU KV cache size"
  is ``num_blocks // groups × block_size`` tokens (v0.19), or ``max_concurrency ×
  max_model_len`` in later releases; "Maximum concurrency" counts for a sliding or chunked
  group its window plus the tokens in flight (`in_flight_tokens`); with several workers,
  every worker gets the smallest worker's block count.
* ``distributed/utils.py``, ``get_pp_indices``: the layers of each pipeline stage (the
  planner's `_stage_ranges`); ``worker/workspace.py``: buffers kept across the profiling run.
* ``engine/arg_utils.py``, ``EngineArgs.get_batch_defaults``: the OpenAI server's
  ``max_num_batched_tokens`` / ``max_num_seqs`` are 8192 / 1024 on a device of at least
  70 GiB that is not an A100, 2048 / 256 otherwise.
* ``model_executor/models/``: some model classes build the input embedding, the final norm
  and the lm_head on every pipeline stage, not only on the first and last
  (`VOCABULARY_ON_EVERY_STAGE`).

The non-torch memory is not sized by any code of vLLM's (NCCL's and CUDA's buffers): each release's
figure is the one its public start-up logs show, named where it is set, while the sampler pass of
each release is sized from its code (`sampler_pass_bytes`).
PyTorch's own share of vLLM's figures, its cuBLAS workspaces and its allocator's block rounding of
the weights (`weight_allocation_slack`), comes from PyTorch's code (`torch_cuda`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from quant_core.catalog import UNKNOWN_DEVICE, DeviceFacts
from quant_core.engines.base import BatchLimits, ContextLimit, KVCacheBackend, KVCapacity, Stage, Term
from quant_core.engines.torch_cuda import allocated_block_bytes, blas_workspace_bytes, compute_units
from quant_core.engines.vllm_attention import (
    DEFAULT_BLOCK_SIZE,
    TRITON_BUILDER_BACKENDS,
    VLLM_16BIT_CACHE_DTYPES,
    VLLM_FP8_CACHE_DTYPES,
    VLLM_PER_TOKEN_HEAD_CACHE_DTYPES,
    attention_backend_name,
    kv_backend,
)
from quant_core.engines.vllm_dsa import (
    DSA_BLOCK_SIZE,
    DSA_PROFILE_LOGITS_BYTES,
    DsaWorkspace,
    dsa_block_table_bytes,
    dsa_mixed_batch_bytes,
    dsa_topk_buffer_bytes,
    dsa_version_refusal,
    dsa_workspace,
)
from quant_core.engines.vllm_encoders import (
    QWEN2_VL_MAX_DUMMY_FRAMES,
    QWEN_VL_MAX_IMAGE_PIXELS,
    ROTARY_CACHE_FP32,
    deepstack_buffer_bytes,
    encoder_profile,
    qwen3_vl_v011_video_table,
    qwen_encoder_dummy,
    rotary_cache_bytes,
    rotary_cache_positions,
)
from quant_core.engines.vllm_expert_layouts import (
    expert_layout,
    expert_parallel_format_refusal,
    fp8_block_expert_refusal,
    fp8_expert_repack_bytes,
    fp8_marlin_expert_width_refusal,
)
from quant_core.engines.vllm_graphs import cuda_graph_pool, cudagraph_capture_sizes, graph_spill
from quant_core.engines.vllm_linear import (
    FUSED_LINEAR_MODEL_TYPES,
    awq_compressed_tensors_marlin_bytes,
    compressed_tensors_humming_bytes,
    deep_gemm_expert_requant_bytes,
    deep_gemm_requant_bytes,
    deep_gemm_scale_layout_bytes,
    fp8_marlin_linear_bytes,
    fp8_marlin_linear_repack_bytes,
    gptq_marlin_linear_bytes,
    int4_marlin_linear_repack_bytes,
    machete_zero_point_bytes,
    mla_kv_b_copy,
    nvfp4_marlin_linear_bytes,
    weight_allocation_slack,
)
from quant_core.engines.vllm_max_len import derived_max_model_len, max_model_len_refusal
from quant_core.engines.vllm_moe_buffers import (
    FusedMoeCaches,
    deep_gemm_capabilities,
    deep_gemm_moe_warmup,
    flashinfer_moe_autotune_buffer,
    fused_moe_caches,
)
from quant_core.engines.vllm_parallel import (
    expert_parallel_refusal,
    moe_data_parallel_graphs,
    moe_dispatch_bytes,
    moe_dispatched_tokens,
)
from quant_core.engines.vllm_refusals import (
    KV_CACHE_BACKENDS,
    bfloat16_refusal,
    capability_refusal,
    capability_requirement,
    checkpoint_kv_cache_dtype,
    dsa_attention_refusal,
    expert_width_refusal,
    float32_note,
    float32_refusal,
    gguf_bfloat16_refusal,
    gptq_act_order_refusal,
    gptq_symmetry_refusal,
    head_size_refusal,
    int4_expert_refusal,
    kv_cache_refusal,
    linear_attention_refusal,
    mamba_align_refusal,
    mla_prefill_refusal,
    mlp_width_refusal,
    moe_wna16_row_refusal,
    qwen_vision_refusal,
    runs_float32,
    vocabulary_refusal,
)
from quant_core.engines.vllm_releases import (
    ACTIVATION_ELEMENT_BYTES,
    DEFAULT_VERSION,
    GIB,
    LARGE_DEVICE_BYTES,
    MIB,
    MODEL_TYPES_SINCE,
    ROUTERS_AT_FP32,
    VERSIONS,
    VOCABULARY_ON_EVERY_STAGE,
    chunked_local_attention,
    in_flight_tokens,
    mamba_cache_mode,
    startup_memory,
)
from quant_core.engines.vllm_sampler import (
    VOCAB_PADDING,
    grammar_bitmask_bytes,
    sampler_kept_bytes,
    sampler_pass_bytes,
    sampler_state_bytes,
)
from quant_core.engines.vllm_speculative import (
    drafter_buffer_bytes,
    drafter_load_bytes,
    drafter_pass_bytes,
    rejection_warmup,
    serving_rejection,
)
from quant_core.errors import InvalidSpec, UnknownName
from quant_core.formats import WeightFormat
from quant_core.identity_memo import IdentityMemo
from quant_core.kv_cache import (
    VLLM_BLOCK_ALIGNMENT,
    WindowedKV,
    held_window,
    hybrid_kv,
    kv_heads_per_rank,
    kv_layers,
    layer_bytes_per_token,
)
from quant_core.slots import slot_constructor
from quant_core.specs import Llama4VisionTower, ModelSpec, PixtralVisionTower, Qwen3VisionTower, QwenVisionTower


def gdn_forward_bytes_per_token(spec: ModelSpec, tensor_parallel: int) -> int:
    """Peak live bytes per batched token of one Gated DeltaNet layer in the profiling run of the releases that run
    its projections there (model_executor/layers/mamba/gdn_linear_attn.py ``forward`` in v0.19,
    mamba/gdn/qwen_gdn_linear_attn.py ``forward_cuda`` in v0.33; the core returns at ``attn_metadata is None`` after
    warming the chunked kernels up on dummies of at most 64 tokens):
    ``2 bytes x (3 x hidden + (4 x key_dim + 6 x value_dim + 2 x value heads) / tp + hidden)``, the residual stream
    beside in_proj_qkvz's output (``2 x key_dim + 2 x value_dim``) and in_proj_ba's (2 per value
    head), Qwen3-Next's unpacked q, k, v and their concatenation (``2 x (2 x key_dim + value_dim)``, the larger of
    the two at any time being the concatenation plus the copies), the gate z reshaped, the zeroed core output and
    the gated norm's output (``value_dim`` each), then out_proj's ``hidden``.  Qwen3.5's projections need no
    unpacking: the same bound holds, on the safe side."""
    linear = spec.linear_attention
    if linear is None:
        return 0
    key_dim = linear.num_key_heads * linear.key_head_dim
    value_dim = linear.num_value_heads * linear.value_head_dim
    per_rank = (4 * key_dim + 6 * value_dim + 2 * linear.num_value_heads) // tensor_parallel
    return ACTIVATION_ELEMENT_BYTES * (3 * spec.hidden_size + per_rank + spec.hidden_size)


def hybrid_kv_capacity(stage: Stage, kv_cache_dtype: str, available_bytes: int, block_size: int,
                       max_model_len: int, version: str, tokens_from_concurrency: bool,
                       max_batched_tokens: int | None = None) -> KVCapacity:
    """vLLM's KV pool for a hybrid (Gated DeltaNet + full attention) stage (`kv_cache.HybridKV`).

    ``num_blocks = available // (page x group_size)`` (kv_cache_utils.py, ``get_num_blocks``), the page being the
    raised attention block's and the padded state's alike.  "Maximum concurrency for L tokens per request" is
    ``num_blocks / (full groups x ceil(L / block) + linear groups x state blocks)``
    (``get_max_concurrency_for_kv_cache_config``: a linear group's ``MambaSpec.max_memory_usage_bytes`` is one page
    in ``mamba_cache_mode`` "none", two in "align"), the mode being the release's default for hybrid models
    (`mamba_cache_mode`: "none" in v0.11 and v0.19, "align" from PR #50991 on, hence in 0.33).  "GPU KV cache
    size" is ``num_blocks // groups x min(block, L)`` tokens in v0.11 and v0.19 (``get_kv_cache_config_from_groups``:
    every group counted, the linear groups' spec block being ``max_model_len``), ``int(concurrency x L)`` in later
    releases (``_report_kv_cache_config``).  v0.11 raises the block from 16, not from the requested size
    (model_executor/models/config.py, ``HybridAttentionMambaModelConfig``): another requested block size is refused
    there, naming the field.  In "align" mode vLLM refuses to start when the raised block exceeds
    `max_batched_tokens` (config/vllm.py, PR #34445: "In Mamba cache align mode, block_size (N) must be <=
    max_num_batched_tokens (M)"): refused here too, naming ``runtime.max_batched_tokens``."""
    if version == "0.11" and block_size != VLLM_BLOCK_ALIGNMENT:
        raise InvalidSpec("kv_cache.block_size", block_size,
                          f"vLLM 0.11 sizes a hybrid model's attention block from {VLLM_BLOCK_ALIGNMENT}-token "
                          "multiples whatever block size is asked for; nibble plans it there at the default block "
                          f"size {VLLM_BLOCK_ALIGNMENT} only")
    mode = mamba_cache_mode(version)
    hybrid = hybrid_kv(stage.spec, kv_cache_dtype, stage.tensor_parallel, stage.layers, mode)
    block = hybrid.block_size(block_size)
    refused = mamba_align_refusal(hybrid, version, block_size, max_batched_tokens)
    if refused is not None:
        raise InvalidSpec("runtime.max_batched_tokens", max_batched_tokens, refused)
    num_blocks = max(0, available_bytes // (hybrid.page_bytes(block_size) * hybrid.group_size))
    per_request = hybrid.blocks_per_sequence(max_model_len, block_size)
    concurrency = num_blocks / per_request if per_request else 0.0
    if tokens_from_concurrency:
        tokens = int(concurrency * max_model_len)
    else:
        tokens = num_blocks // (hybrid.full_groups + hybrid.linear_groups) * min(block, max_model_len)
    return KVCapacity(num_blocks=num_blocks, tokens=tokens, max_concurrency=concurrency)


#: v0.19 and v0.33 v1/attention/backends/triton_attn.py: ``MIN_LAUNCH_GRID_SIZE_2D`` (the 2D decode kernel's
#: smallest launch grid, sequences x KV heads, below which the 3D split-KV kernel runs) and
#: ``NUM_PAR_SOFTMAX_SEGMENTS`` (the 3D kernel's softmax segments); 0.33 runs 64 segments on compute capability 12.0
TRITON_MIN_LAUNCH_GRID_2D = 128
TRITON_SOFTMAX_SEGMENTS = 16
TRITON_SM120_SOFTMAX_SEGMENTS = 64
TRITON_SM120 = (12, 0)
#: the compute capabilities a plan for a device not known is charged the largest Triton decode scratch over: one of
#: each family vLLM 0.19/0.33 runs (the backend, and on 12.0 the segments, follow the capability)
SCRATCH_CAPABILITIES = ((7, 0), (7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0))


def _next_power_of_2(value: int) -> int:
    """vllm/utils/math_utils.py ``next_power_of_2``: the smallest power of 2 at least `value`."""
    return 1 if value <= 1 else 1 << (value - 1).bit_length()


def _triton_scratch_one(stage: Stage, version: str, limits: BatchLimits, capability: tuple[int, int],
                        units: int, enforce_eager: bool) -> tuple[int, str]:
    """(bytes, rows x segments in words) of one TritonAttentionMetadataBuilder's three scratch tensors on a device of
    `capability` with `units` SMs (`triton_decode_scratch`)."""
    spec = stage.spec
    heads_q = spec.num_attention_heads // stage.tensor_parallel
    heads_kv = kv_heads_per_rank(spec.num_kv_heads, stage.tensor_parallel)
    threshold = TRITON_MIN_LAUNCH_GRID_2D // heads_kv
    if not enforce_eager:
        # decode_cudagraph_enabled (FULL_AND_PIECEWISE, the default): the capture size closest to it, the first of
        # the ascending sizes on a tie (``min(capture_sizes, key=...)``)
        sizes = cudagraph_capture_sizes(version, limits, capability)
        if sizes:
            threshold = min(sizes, key=lambda size: abs(size - threshold))
    rows, segments = threshold, TRITON_SOFTMAX_SEGMENTS
    if version == "0.33":
        rows = min(threshold, limits.max_num_seqs)  # max_num_seqs_3d x max_query_len_3d (1: no speculative decoding)
        most_64 = (units - 1) // (TRITON_SOFTMAX_SEGMENTS * heads_kv) if capability == TRITON_SM120 else 0
        if most_64 > 0:
            segments = TRITON_SM120_SOFTMAX_SEGMENTS
            rows = max(min(most_64, rows), -(-rows // (segments // TRITON_SOFTMAX_SEGMENTS)))
    output = rows * heads_q * segments * _next_power_of_2(spec.head_dim) * 4
    small = rows * heads_q * segments * 4
    nbytes = allocated_block_bytes(output) + 2 * allocated_block_bytes(small)
    return nbytes, f"{rows} rows x {heads_q} query heads x {segments} segments"


def _attention_builders(stage: Stage, kv_cache_dtype: str, version: str) -> int:
    """The attention metadata builders vLLM `version` makes on one device of `stage`: one per KV cache group
    (gpu_model_runner.py ``initialize_metadata_builders``, one attention group per group for one backend), the
    full-attention groups of a hybrid model (`kv_cache.HybridKV`), none where the stage holds no attention layer."""
    spec = stage.spec
    if spec.linear_attention is not None:
        try:
            hybrid = hybrid_kv(spec, kv_cache_dtype, stage.tensor_parallel, stage.layers)
        except InvalidSpec:  # no full-attention layer on the stage
            return 0
        return -(-hybrid.full_layers // hybrid.group_size)
    groups, _size, _page = _kv_cache_groups(spec, stage.layers, kv_cache_dtype, stage.tensor_parallel,
                                            DEFAULT_BLOCK_SIZE, chunked_local_attention(version),
                                            VERSIONS[version].group_size_ratio)
    return sum(count for _kind, _window, count in groups)


def _vllm_cache_dtype(kv_cache_dtype: str) -> str | None:
    """vLLM's ``--kv-cache-dtype`` for nibble's KV dtype name: ``auto`` for a 16-bit cache, ``fp8_e4m3`` /
    ``fp8_e5m2``, 0.33's per-token-head names as they are; None for nibble's own int8/int4."""
    return (VLLM_FP8_CACHE_DTYPES.get(kv_cache_dtype) or VLLM_16BIT_CACHE_DTYPES.get(kv_cache_dtype)
            or (kv_cache_dtype if kv_cache_dtype in VLLM_PER_TOKEN_HEAD_CACHE_DTYPES else None))


#: the workspace each FlashInferMetadataBuilder allocates on its first build (v1/attention/backends/flashinfer.py
#: ``_get_workspace_buffer``): 0.11's ``FLASHINFER_WORKSPACE_BUFFER_SIZE``, 256 MiB; 0.19's and 0.33's
#: ``envs.VLLM_FLASHINFER_WORKSPACE_BUFFER_SIZE``, 394 MiB by default (envs.py)
FLASHINFER_WORKSPACE_BYTES = {"0.11": 256 * MIB, "0.19": 394 * MIB, "0.33": 394 * MIB}
#: 0.33 flashinfer.py ``FLASHINFER_PREFILL_WORKSPACE_BYTES_PER_ELEM``: the workspace grows to max_num_batched_tokens x
#: query heads x head size x 16 bytes when that is more than the default
FLASHINFER_PREFILL_WORKSPACE_BYTES_PER_ELEM = 16
#: the backends whose builder is FlashInfer's or holds one (0.33's TRITON_FLASHINFER composite: its causal builder)
FLASHINFER_BUILDER_BACKENDS = frozenset({"FLASHINFER", "TRITON_FLASHINFER"})


def _flashinfer_workspace_one(stage: Stage, kv_cache_dtype: str, cache_dtype: str, limits: BatchLimits, version: str,
                              capability: tuple[int, int]) -> tuple[int, str] | None:
    """(bytes, how) of FlashInfer's attention workspaces on one device of `stage` of compute `capability` where vLLM
    `version` runs the attention, of nibble's `kv_cache_dtype` (vLLM's `cache_dtype`), on a FlashInfer builder
    (`flashinfer_workspace`), or None."""
    spec = stage.spec
    float32 = runs_float32(version, spec.model_type, capability)
    if version == "0.11":
        found = kv_backend(version, spec, cache_dtype, capability, DEFAULT_BLOCK_SIZE, float32)
        backend = None if found is None else found.backend
    else:
        backend = attention_backend_name(version, spec, cache_dtype, capability, float32=float32)
    builders = _attention_builders(stage, kv_cache_dtype, version)
    if backend not in FLASHINFER_BUILDER_BACKENDS or not builders:
        return None
    size = FLASHINFER_WORKSPACE_BYTES[version]
    grown = ""
    if version == "0.33":
        heads_q = spec.num_attention_heads // stage.tensor_parallel
        prefill = limits.max_batched_tokens * heads_q * spec.head_dim * FLASHINFER_PREFILL_WORKSPACE_BYTES_PER_ELEM
        if prefill > size:
            size = prefill
            grown = (f" (grown to {limits.max_batched_tokens} tokens x {heads_q} query heads x {spec.head_dim} x "
                     f"{FLASHINFER_PREFILL_WORKSPACE_BYTES_PER_ELEM} bytes)")
    nbytes = builders * allocated_block_bytes(size)
    return nbytes, f"{builders} x {size / MIB:.0f} MiB{grown}, one per KV cache group, on {backend}"


def flashinfer_workspace_bytes(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                               device: DeviceFacts = UNKNOWN_DEVICE) -> tuple[int, str] | None:
    """(bytes, how) of the workspaces vLLM `version`'s FlashInfer builders allocate on one `device` of `stage`
    (`flashinfer_workspace`), wherever they are charged; for a device not known, the largest over
    `SCRATCH_CAPABILITIES` (as Triton's decode scratch is); None where FlashInfer does not run the attention."""
    cache_dtype = _vllm_cache_dtype(kv_cache_dtype)
    if cache_dtype is None or version not in FLASHINFER_WORKSPACE_BYTES:
        return None
    known = device.compute_capability
    best: tuple[int, str] | None = None
    for capability in (SCRATCH_CAPABILITIES if known is None else (known,)):
        found = _flashinfer_workspace_one(stage, kv_cache_dtype, cache_dtype, limits, version, capability)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    if best is None or known is not None:
        return best
    return best[0], f"{best[1]} (the largest over the devices vLLM runs, this one not known)"


def flashinfer_workspace(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                         enforce_eager: bool = False, device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
    """FlashInfer's attention workspace on one device of `stage` where vLLM `version` runs the attention on FLASHINFER
    and allocates it after sizing the KV cache, outside ``gpu_memory_utilization``; None elsewhere.

    Each FlashInferMetadataBuilder (one per KV cache group, `_attention_builders`, made in ``initialize_kv_cache``)
    allocates its workspace in its first ``build`` (flashinfer.py ``_get_workspace_buffer``, through the prefill,
    decode or cascade wrapper) and holds it: `FLASHINFER_WORKSPACE_BYTES`, on 0.33 at least max_num_batched_tokens x
    query heads a rank x head size x 16 bytes.  0.11 and 0.19 first build at CUDA-graph capture or the first request,
    after the KV pool is sized (0.19's ``profile_cudagraph_memory`` builds its own, freed with its minimal cache, and
    its estimate is not applied by default); 0.33's graph estimate, charged inside the budget, is measured over a
    capture whose builders allocate it (`VllmProfile.cuda_graphs`), so only with `enforce_eager` does it land here.
    0.11's backend is decided here for an fp8 cache only (`vllm_attention.kv_backend`); for a device not known, the
    largest over the devices vLLM runs (`flashinfer_workspace_bytes`).  On 10.x, where TRT-LLM attention may serve both
    phases (utils/flashinfer.py ``use_trtllm_attention``), the process-wide TRT-LLM workspace of the same 394 MiB
    stands in for the builder's: charged the same."""
    if version == "0.33" and not enforce_eager:
        return None
    found = flashinfer_workspace_bytes(stage, kv_cache_dtype, limits, version, device)
    if found is None:
        return None
    nbytes, how = found
    eager = ", --enforce-eager: no graph estimate holds it" if version == "0.33" else ""
    return Term(nbytes, f"{nbytes / MIB:.0f} MiB for FlashInfer's attention workspace: {how} (vLLM {version} "
                        "flashinfer.py _get_workspace_buffer, allocated by the builder's first build, after the KV "
                        f"cache is sized{eager})")


def triton_decode_scratch(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                          enforce_eager: bool = False, device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
    """The split-KV decode scratch vLLM `version` keeps on one device of `stage` where its attention runs on
    TRITON_ATTN (or a Triton composite: `vllm_attention.TRITON_BUILDER_BACKENDS`), or None.

    v0.19 and v0.33 v1/attention/backends/triton_attn.py ``TritonAttentionMetadataBuilder.__init__`` allocates
    ``softmax_segm_output`` (rows x query heads x segments x next_power_of_2(head size), fp32) and
    ``softmax_segm_max`` and ``softmax_segm_expsum`` (rows x query heads x segments, fp32) for the 3D kernel, per rank
    (``get_num_attention_heads(parallel_config)``: heads / tp), held for the builder's life: rows are
    ``seq_threshold_3D`` = ``MIN_LAUNCH_GRID_SIZE_2D // kv heads a rank``, moved to the closest CUDA-graph capture
    size unless `enforce_eager`; 0.33 caps them at ``max_num_seqs`` and on 12.0 runs 64 segments, rows
    ``max(min((SMs - 1) // (16 x kv heads), rows), ceil(rows / 4))``.  The builders are made by
    v1/worker/gpu_model_runner.py ``initialize_metadata_builders``, one per attention group of each KV cache group,
    from ``initialize_kv_cache`` (``Worker.initialize_from_config``), after ``determine_available_memory`` sized
    the KV cache (the builders of ``profile_cudagraph_memory``'s minimal cache exist before its first reading and
    are freed with it): outside ``gpu_memory_utilization``.  0.11's builder has no such scratch.  For a device not
    known, the largest over `SCRATCH_CAPABILITIES`."""
    if version not in ("0.19", "0.33"):
        return None
    spec = stage.spec
    cache_dtype = _vllm_cache_dtype(kv_cache_dtype)
    if cache_dtype is None:
        return None
    known = device.compute_capability
    best: tuple[int, str, str] | None = None
    for capability in (SCRATCH_CAPABILITIES if known is None else (known,)):
        backend = attention_backend_name(version, spec, cache_dtype, capability,
                                         float32=runs_float32(version, spec.model_type, capability))
        if backend not in TRITON_BUILDER_BACKENDS:
            continue
        units = compute_units(replace(device, compute_capability=capability))[0]
        nbytes, shape = _triton_scratch_one(stage, version, limits, capability, units, enforce_eager)
        if best is None or nbytes > best[0]:
            best = (nbytes, shape, backend)
    builders = _attention_builders(stage, kv_cache_dtype, version)
    if best is None or not builders:
        return None
    nbytes, shape, backend = best
    where = "" if known is not None else " (the largest over the devices vLLM runs, this one not known)"
    return Term(builders * nbytes,
                f"{builders * nbytes / MIB:.1f} MiB for {backend}'s split-KV decode scratch{where}: "
                f"{builders} x TritonAttentionMetadataBuilder (vLLM {version} triton_attn.py __init__: "
                f"softmax_segm_output/max/expsum, {shape}, fp32), one per KV cache group, made by "
                "gpu_model_runner.py initialize_metadata_builders after the KV cache is sized")


def cuda_graph_estimate(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                        device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
    """vLLM `version`'s (0.33's) CUDA-graph estimate, subtracted from ``gpu_memory_utilization`` on one `device` of
    `stage` (gpu_worker.py ``determine_available_memory``): what ``profile_cudagraph_memory`` measures (Model Runner
    V2, 0.33's default: v1/worker/gpu/cudagraph_utils.py) over a capture into a throwaway pool with a minimal KV cache.

    * The graphs: every PIECEWISE graph, captured as the real capture will capture it, and the FULL graphs
      extrapolated from the two largest (``first + (N - 1) x max(second, 1 MiB)``), so the graphs' memory at 0.33's
      capture sizes (`vllm_graphs.cuda_graph_pool`), a function of the layers on the stage, the model type, the batch
      limits and the device (the largest size is 1024 on compute capability family 100).  No code of vLLM's sizes
      the measured part: the figure is the envelope of the public logs of releases after 0.21 (386 MiB + 4.25 MiB a
      layer x sizes / 51, above Qwen3-8B's 0.52 GiB estimate at 36 layers, 51 PIECEWISE and 35 FULL graphs,
      LMCache#3430: 539 MiB charged), with the excess 0.19 logged for MoE, MLA and hybrid families.  The V1
      runner's estimate (both modes extrapolated linearly, logged far above the capture: vllm#45178, vllm#53013)
      would leave a smaller KV cache than nibble plans; 0.33 runs it for no plan of nibble's
      (`vllm_graphs.V1_RUNNER_SWITCHES_033`: config/vllm.py ``use_v2_model_runner``).
    * FlashInfer's attention workspace where its builders run the attention (`flashinfer_workspace_bytes`, a device not
      known charged the largest): they allocate it at their first build, inside the measured capture (flashinfer.py
      ``_get_workspace_buffer``), so the estimate holds it (and 0.33 charges it nowhere else without
      ``--enforce-eager``, `flashinfer_workspace`).
    What the capture takes beyond the estimate comes from the memory the budget leaves free
    (`vllm_graphs.graph_spill` in `outside_budget`)."""
    pool = cuda_graph_pool(stage, limits, version, device.compute_capability)
    workspace = flashinfer_workspace_bytes(stage, kv_cache_dtype, limits, version, device)
    size = pool.bytes + (0 if workspace is None else workspace[0])
    held = "" if workspace is None else (f"; + {workspace[0] / MIB:.0f} MiB of FlashInfer's attention workspace its "
                                         f"builders allocate inside the measured capture ({workspace[1]}, "
                                         "flashinfer.py _get_workspace_buffer)")
    return Term(size, f"{size / GIB:.2f} GiB per device: vLLM {version}'s CUDA-graph estimate, charged inside "
                      "gpu_memory_utilization (gpu_worker.py determine_available_memory; Model Runner V2, which "
                      "0.33 runs for every plan nibble makes (config/vllm.py use_v2_model_runner): its "
                      "cudagraph_utils.py profile_cudagraph_memory measures every PIECEWISE graph and extrapolates "
                      f"the FULL ones): "
                      f"{pool.basis}{held}")


@dataclass(frozen=True, slots=True)
class OutsideBudget:
    """What vLLM takes on one device outside ``gpu_memory_utilization``, from the memory the budget leaves free
    (``total - total x utilization``), by ``max_model_len`` L: the memory already in use at its start-up snapshot
    (`startup`, `startup_memory`: every release, which refuses to start when it is more than that memory), its CUDA
    graphs (`graph`, captured after the KV cache is sized: `vllm_graphs.cuda_graph_pool`; on 0.33 what they may take
    beyond the estimate charged inside the budget, `vllm_graphs.graph_spill`), and for a
    DeepSeek Sparse Attention model on 0.19 the fp8 mixed-batch kernel's buffers (`kernel_bytes`,
    `dsa_mixed_batch_bytes`) and the indexer's expanded block table, ``table_bytes_per_block`` per 64-token block of
    L (`dsa_block_table_bytes`), and on 0.19 and 0.33 the CUTLASS MoE profiler workspace FlashInfer's autotuning
    keeps (`late`, `flashinfer_moe_autotune_buffer`), and on 0.19 and 0.33 TRITON_ATTN's split-KV decode scratch where
    it runs the attention (`scratch`, `triton_decode_scratch`: made with the KV cache, held before the warm-up), and
    FlashInfer's attention workspace where it runs it (`workspace`, `flashinfer_workspace`: on 0.11 and 0.19, and on
    0.33 with --enforce-eager, the budget's graph estimate holding it otherwise).
    `warmup` is the part of DeepGEMM's grouped-GEMM warm-up that the memory the profiling peak left to PyTorch's
    allocator does not hold (`deep_gemm_warmup_excess`): transient, after the block table and the scratch and before
    the rest (kernel_warmup runs DeepGEMM's warm-up first, and capture_model empties PyTorch's cache before
    capturing), so the need is the start-up memory, the table and the scratch plus the larger of it and the rest.
    `load` is what an MTP drafter holds only while it loads (`vllm_speculative.drafter_load_bytes`), before the KV
    cache is sized: the budget beyond the weights is still free then, and what of it that room does not hold comes
    from here, beside the start-up memory and the drafter's buffers alone (`load_bytes`).
    The plan does not fit where this is more than that memory: vLLM would refuse to start, or run out of memory
    loading the drafter, warming its kernels up, capturing its graphs or serving a full batch."""

    version: str
    startup: Term
    graph: Term | None
    kernel_bytes: int
    table_bytes_per_block: int
    late: Term | None = None
    warmup: Term | None = None
    scratch: Term | None = None
    workspace: Term | None = None
    #: the speculative drafter's persistent buffers (`vllm_speculative.drafter_buffer_bytes`), held from before the
    #: profiling run on
    drafter: Term | None = None
    #: what a full speculative decode step's rejection sampler needs beyond the profiling peak
    #: (`speculative_serving_excess`), while serving: after everything else
    serving: Term | None = None
    #: what the MTP drafter holds only while it loads (`vllm_speculative.drafter_load_bytes`: its own embedding and
    #: LM heads), before the KV cache is sized: from the budget still free then, the rest from here (`load_bytes`)
    load: Term | None = None
    #: the part of the release's activation term (`VllmProfile.activation`) that the model allocates when it is
    #: built, so holds while loading: the rotary cos/sin caches and the buffers built with the model (Qwen3-VL's
    #: deepstack inputs, DeepSeek Sparse Attention's top-k indices); the rest of that peak is free at load
    load_held: int = 0
    #: what one module's weights hold only while process_weights_after_loading rewrites them (the largest of a MoE
    #: layer's, `fp8_expert_repack_bytes` or on 0.11 its requant to UE8M0 scales, `deep_gemm_expert_requant_bytes`,
    #: a linear layer's Marlin repack, `fp8_marlin_linear_repack_bytes` or for int4 and NVFP4 layers
    #: `int4_marlin_linear_repack_bytes`, and a block-fp8 linear layer's while DeepGEMM requantizes it,
    #: `deep_gemm_requant_bytes`), before the KV cache is sized: weighed as `load` is (`load_bytes`)
    repack: Term | None = None

    def _load_spill(self, room: int) -> int:
        """What of the larger load transient (`load`, `repack`) the `room` still free in the budget does not hold."""
        largest = max(0 if self.load is None else self.load.bytes, 0 if self.repack is None else self.repack.bytes)
        return max(0, largest - max(room, 0))

    @property
    def loads(self) -> bool:
        """Whether the engine holds anything only while it loads (`load`, `repack`)."""
        return self.load is not None or self.repack is not None

    def load_bytes(self, room: int) -> int:
        """What the engine holds outside the budget while it loads, when `room` bytes of the budget are still free
        then (the planner's: the budget less the weights, the overhead and `load_held`: the KV pool vLLM will size and
        its profiling peak): the start-up memory, the drafter's buffers, and what of the larger load transient (the
        drafter's, `load`, or a repack's, `repack`: one at a time, the drafter loading after the model) the room
        does not hold; 0 without a load transient."""
        if not self.loads:
            return 0
        return self.startup.bytes + (0 if self.drafter is None else self.drafter.bytes) + self._load_spill(room)

    def load_basis(self, room: int) -> str:
        """What `load_bytes` at `room` holds, and why."""
        if not self.loads:
            return ""
        room = max(room, 0)
        spill = self._load_spill(room)
        transient = max((term for term in (self.load, self.repack) if term is not None), key=lambda term: term.bytes)
        return (f"while loading: {transient.basis}, of which the {room / GIB:.2f} GiB of the budget still free then "
                f"(the KV pool and the profiling peak it sizes later) holds all but {spill / GIB:.2f} GiB, beside "
                "the start-up memory" + ("" if self.drafter is None else " and the drafter's buffers"))

    def table_bytes(self, max_model_len: int) -> int:
        """The expanded block table at `max_model_len`: ``max_num_batched_tokens x ceil(L / 64) x 4`` bytes."""
        return self.table_bytes_per_block * -(-max_model_len // DSA_BLOCK_SIZE)

    def bytes_at(self, max_model_len: int) -> int:
        later = ((0 if self.graph is None else self.graph.bytes) + self.kernel_bytes
                 + (0 if self.late is None else self.late.bytes) + (0 if self.serving is None else self.serving.bytes))
        return (self.startup.bytes + self.table_bytes(max_model_len)
                + (0 if self.scratch is None else self.scratch.bytes)
                + (0 if self.workspace is None else self.workspace.bytes)
                + (0 if self.drafter is None else self.drafter.bytes)
                + max(later, 0 if self.warmup is None else self.warmup.bytes))

    def basis_at(self, max_model_len: int) -> str:
        parts = [self.startup.basis] + ([] if self.warmup is None else [self.warmup.basis])
        parts += [] if self.graph is None else [self.graph.basis]
        table = self.table_bytes(max_model_len)
        if table:
            parts.append(f"{table / GIB:.2f} GiB for DeepSeek Sparse Attention's expanded block table at "
                         f"max_model_len={max_model_len} (indexer.py, allocated after the KV cache is sized)")
        if self.kernel_bytes:
            parts.append(f"{self.kernel_bytes / GIB:.2f} GiB for the fp8 mixed-batch sparse attention kernel's buffers "
                         "(flashmla_sparse.py; not seen by the start-up profiling, vllm#53413)")
        if self.late is not None:
            parts.append(self.late.basis)
        if self.scratch is not None:
            parts.append(self.scratch.basis)
        if self.workspace is not None:
            parts.append(self.workspace.basis)
        if self.drafter is not None:
            parts.append(self.drafter.basis)
        if self.serving is not None:
            parts.append(self.serving.basis)
        for transient in (self.load, self.repack):
            if transient is not None:
                parts.append(f"while loading, beside the start-up memory and the drafter's buffers, {transient.basis}: "
                             "from the budget still free then (the KV pool and profiling peak, allocated later), what "
                             "it does not hold from here")
        return "; ".join(parts)


#: `_attention_buffers`' answers by (spec object; release, tp, layers, KV dtype, limits, eager, device): a plan asks
#: `outside_budget` for every layout it weighs
_ATTENTION_BUFFERS: IdentityMemo[tuple[Term | None, Term | None]] = IdentityMemo(1024)


def _attention_buffers(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str, enforce_eager: bool,
                       device: DeviceFacts) -> tuple[Term | None, Term | None]:
    """(`triton_decode_scratch`, `flashinfer_workspace`) of one device of `stage`, answered once per key."""
    objects, values = (stage.spec,), (version, stage.tensor_parallel, stage.layers, kv_cache_dtype, limits,
                                      enforce_eager, device)
    found = _ATTENTION_BUFFERS.get(objects, values)
    if found is not None:
        return found
    if device.compute_capability is None:
        return _ATTENTION_BUFFERS.put(objects, values, _unknown_device_attention_buffers(
            stage, kv_cache_dtype, limits, version, enforce_eager, device))
    return _ATTENTION_BUFFERS.put(objects, values, (
        triton_decode_scratch(stage, kv_cache_dtype, limits, version, enforce_eager, device),
        flashinfer_workspace(stage, kv_cache_dtype, limits, version, enforce_eager, device)))


def _unknown_device_attention_buffers(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                                      enforce_eager: bool, device: DeviceFacts) -> tuple[Term | None, Term | None]:
    """(`triton_decode_scratch`, `flashinfer_workspace`) of one device of `stage` whose compute capability is not
    known: those of the capability in `SCRATCH_CAPABILITIES` whose backend keeps the most (one device runs one
    backend, so the two are not summed over different capabilities)."""
    best: tuple[int, tuple[int, int], Term | None, Term | None] | None = None
    for capability in SCRATCH_CAPABILITIES:
        assumed = replace(device, compute_capability=capability)
        scratch = triton_decode_scratch(stage, kv_cache_dtype, limits, version, enforce_eager, assumed)
        workspace = flashinfer_workspace(stage, kv_cache_dtype, limits, version, enforce_eager, assumed)
        total = (0 if scratch is None else scratch.bytes) + (0 if workspace is None else workspace.bytes)
        if total and (best is None or total > best[0]):
            best = (total, capability, scratch, workspace)
    if best is None:
        return None, None
    _total, (major, minor), scratch, workspace = best
    where = (f" (this device not known: the most the attention buffers take over the compute capabilities vLLM "
             f"runs, {major}.{minor}'s)")
    return (None if scratch is None else Term(scratch.bytes, scratch.basis + where),
            None if workspace is None else Term(workspace.bytes, workspace.basis + where))


def outside_budget(stage: Stage, kv_cache_dtype: str, limits: BatchLimits, version: str,
                   enforce_eager: bool = False, device: DeviceFacts = UNKNOWN_DEVICE,
                   expert_format: str = "", dense_format: str = "") -> OutsideBudget:
    """`OutsideBudget` of one `device` of `stage` on vLLM `version` (`UNKNOWN_DEVICE` when not known): the
    start-up memory always; the CUDA graphs, on 0.33 what they may take beyond the estimate it charged inside the
    budget (`vllm_graphs.graph_spill`), none with `enforce_eager`, which captures none; FlashInfer's CUTLASS MoE
    profiler workspace where the routed experts, stored as `expert_format`, run on FlashInfer's CUTLASS experts
    (`flashinfer_moe_autotune_buffer`); DeepGEMM's warm-up where it needs more than the profiling peak left
    (`deep_gemm_warmup_excess`); TRITON_ATTN's decode scratch where it runs the attention (`triton_decode_scratch`);
    FlashInfer's workspace where it does (`flashinfer_workspace`); for a device not known, the attention buffers of
    the capability that keeps the most (`_unknown_device_attention_buffers`).  A MoE model's data-parallel graphs are
    charged the rows their MoE layers gather (`moe_data_parallel_graphs`).  On the last stage of a plan with an MTP
    drafter, its persistent buffers (`vllm_speculative.drafter_buffer_bytes`) and what it holds only while loading
    (`load`, `vllm_speculative.drafter_load_bytes`), and for fp8 experts on Marlin or FlashInfer's CUTLASS experts
    what their rewrite holds only while loading, or for fp8 linear layers stored as `dense_format` on Marlin what
    the largest one's repack does, or for block-fp8 ones DeepGEMM runs what the largest one's requantization to
    UE8M0 scales does, or on 0.11 a MoE layer's block-fp8 experts', or for int4 (GPTQ, AWQ, compressed-tensors) and
    NVFP4 linear layers what the largest one's rewrite for Marlin does (`repack`: the largest of
    `fp8_expert_repack_bytes`, `fp8_marlin_linear_repack_bytes`, `deep_gemm_requant_bytes`,
    `deep_gemm_expert_requant_bytes` and `int4_marlin_linear_repack_bytes`, one module processed at a time after all
    weights are loaded; Marlin and DeepGEMM never run on one device), which the planner weighs against the budget
    still free then
    (`OutsideBudget.load_bytes`)."""
    if enforce_eager:
        graph = None
    elif VERSIONS[version].cuda_graphs_in_budget:
        graph = graph_spill(stage, limits, device.compute_capability)
    else:
        graph = moe_data_parallel_graphs(stage, cuda_graph_pool(stage, limits, version), limits, version,
                                         device.compute_capability)
    spec = stage.spec
    kernel = dsa_mixed_batch_bytes(spec, version, kv_cache_dtype, stage.tensor_parallel, limits)
    per_block = dsa_block_table_bytes(spec, version, DSA_BLOCK_SIZE, limits)
    late = flashinfer_moe_autotune_buffer(stage, version, limits, expert_format, device, enforce_eager)
    warmup = deep_gemm_warmup_excess(stage, version, limits, expert_format, device)
    scratch, workspace = _attention_buffers(stage, kv_cache_dtype, limits, version, enforce_eager, device)
    drafter = load = None
    if limits.draft_layers and stage.is_last:
        held = drafter_buffer_bytes(spec, limits, stage.element_bytes)
        drafter = Term(held, f"{held / GIB:.2f} GiB for the MTP drafter's persistent buffers (EagleProposer.__init__, "
                             "v1/spec_decode/eagle.py: two max_num_batched_tokens x hidden tensors and its index "
                             "buffers), made with the runner before the profiling run and counted by no term of the "
                             "budget")
        padded = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
        loaded = drafter_load_bytes(spec, stage.tensor_parallel, padded, limits.draft_layers, stage.element_bytes)
        load = Term(loaded, f"{loaded / GIB:.2f} GiB for the MTP drafter's own embed_tokens and "
                            f"{limits.draft_layers} shared_head.head (padded vocabulary / tp rows x hidden each, "
                            "deepseek_mtp.py / glm4_moe_mtp.py), loaded and then replaced by the target's "
                            "(EagleProposer._maybe_share_embeddings / _maybe_share_lm_head, v1/spec_decode/eagle.py) "
                            "and freed before 'Model loading took' is measured (utils/mem_utils.py "
                            "DeviceMemoryProfiler): in no term of the KV budget")
    repack = max((term for term in (fp8_expert_repack_bytes(stage, version, device, expert_format),
                                    fp8_marlin_linear_repack_bytes(stage, version, dense_format, device),
                                    deep_gemm_requant_bytes(stage, version, dense_format, device),
                                    deep_gemm_expert_requant_bytes(stage, version, device, expert_format),
                                    int4_marlin_linear_repack_bytes(stage, version, dense_format, device))
                  if term is not None), key=lambda term: term.bytes, default=None)
    tokens = limits.max_batched_tokens
    held = (rotary_cache_bytes(spec, version, stage.element_bytes) + deepstack_buffer_bytes(spec, tokens)
            + dsa_topk_buffer_bytes(spec, tokens)) if load is not None or repack is not None else 0
    return OutsideBudget(version, startup_memory(stage, version, device), graph, kernel, per_block, late, warmup,
                         scratch, workspace, drafter, speculative_serving_excess(stage, limits, version, expert_format,
                                                                                 device), load, held, repack)


def speculative_serving_excess(stage: Stage, limits: BatchLimits, version: str, expert_format: str,
                               device: DeviceFacts) -> Term | None:
    """On the last stage under speculative decoding, what the rejection sampler of a full decode step needs
    (`vllm_speculative.serving_rejection`, beside the fused-MoE caches the workspace manager keeps) beyond the
    profiling peak, the memory PyTorch's allocator holds from it (the larger of the forward pass with the drafter's and
    the sampler warm-up with the rejection sampler's, `VllmProfile.activation`); None where it needs no more.  vLLM's
    profiling warms the rejection sampler up with one draft a request, so with more drafts the step's logits are
    wider than anything it measured: the excess comes from the memory the budget leaves free."""
    if not limits.speculative_tokens or not stage.is_last:
        return None
    spec, element, tokens = stage.spec, stage.element_bytes, limits.max_batched_tokens
    passes = _profile_passes(version, stage, limits, expert_format, device)
    padded = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    rows = min(limits.max_num_seqs, tokens)
    warmup, _basis = rejection_warmup(spec, version, rows, tokens, padded, element, passes.sampled)
    profiled = max(passes.forward + (drafter_pass_bytes(spec, limits, element) if limits.draft_layers else 0),
                   passes.sampler + warmup)
    serving = serving_rejection(spec, version, limits, padded, element) + passes.workspace
    if serving <= profiled:
        return None
    excess = serving - profiled
    return Term(excess, f"{excess / GIB:.2f} GiB for the rejection sampler of a full decode step of "
                        f"{limits.speculative_tokens} drafts a request ({serving / GIB:.2f} GiB: the logits of "
                        f"min(max_num_seqs, max_num_batched_tokens // {limits.decode_query_len}) requests x "
                        f"{limits.decode_query_len} tokens and the target rows' float32 copies, "
                        "v1/sample/rejection_sampler.py) beyond the profiling peak it reuses "
                        f"({profiled / GIB:.2f} GiB), whose warm-up samples one draft a request")


def deep_gemm_warmup_excess(stage: Stage, version: str, limits: BatchLimits, expert_format: str,
                            device: DeviceFacts) -> Term | None:
    """The part of DeepGEMM's grouped-GEMM warm-up (`deep_gemm_moe_warmup`) that the memory the profiling peak left
    does not hold, which vLLM takes from the memory outside ``gpu_memory_utilization``; None where it fits (or does
    not run).  When it runs, the KV cache fills the budget, so what is free inside it is what the profiling peak
    released to PyTorch's allocator (`_ProfilePasses.released`: the larger pass without the buffers that stay
    allocated; PyTorch frees cached blocks when cudaMalloc fails).  Left out of that room, on the safe side: the
    sparse indexer's logits dummy and, on a multimodal model, the vision pass (the text passes' room is taken).
    For a device of unknown compute capability the room is the least of its own and of each capability DeepGEMM
    runs on (`deep_gemm_capabilities`: the profiling run's caches and sampler differ by capability)."""
    warmup = deep_gemm_moe_warmup(stage, version, limits, expert_format, device)
    if warmup is None:
        return None
    candidates = [device] + ([replace(device, compute_capability=capability)
                              for capability in deep_gemm_capabilities(version)]
                             if device.compute_capability is None else [])
    room = min(_profile_passes(version, stage, limits, expert_format, candidate).released
               for candidate in candidates)
    excess = warmup.bytes - room
    if excess <= 0:
        return None
    return Term(excess, (
        f"{excess / GIB:.2f} GiB for {warmup.basis}, beyond the {room / GIB:.2f} GiB the profiling run's peak "
        f"released (max_num_batched_tokens={limits.max_batched_tokens}, max_num_seqs={limits.max_num_seqs}), which "
        "is all the budget has free once the KV cache fills it"))

def _forward_bytes(spec: ModelSpec, tensor_parallel: int, tokens: int, version: str, expert_format: str = "",
                   device: DeviceFacts = UNKNOWN_DEVICE, element_bytes: int = 2, expert_parallel: bool = False,
                   stage: Stage | None = None) -> int:
    """Peak live activation bytes on one rank during one decoder layer of the dummy forward pass.

    ``tokens x element_bytes (2; 4 for a model run in float32) x (3 x hidden + max(MLP, attention))``: the
    residual stream, the norm output and the layer output, beside the widest intermediate: a dense MLP's gate/up
    output and its activation (``3 × intermediate / tp``); a MoE layer's shared experts (``3 × width / tp``) beside its
    fused-MoE caches (`fused_moe_caches`), which, where they persist (v0.19 on, and 0.11's DeepGEMM workspace), are
    held through every layer's attention as well, and what the MoE kernel allocates only inside the layer
    (`FusedMoeCaches.transient`: FlashInfer's CUTLASS workspace); attention's q/k/v and output (MLA: the per-head
    query and the expanded key/value).  For a MoE model's data-parallel `stage` the fused-MoE caches are sized on the
    rows each MoE layer gathers (`moe_dispatched_tokens`) for the experts of the data x tensor ranks
    (`Stage.moe_ranks`), beside the gathered tensors themselves (`moe_dispatch_bytes`).
    """
    tp = tensor_parallel
    mlp = 3 * spec.intermediate_size // tp if (not spec.is_moe or spec.dense_layers) else 0
    heads = -(-spec.num_attention_heads // tp)
    if spec.is_mla:
        attention = heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim
                             + spec.qk_nope_head_dim + spec.v_head_dim + spec.v_head_dim)
    else:
        kv_heads = -(-spec.num_kv_heads // tp)
        attention = (2 * heads + 2 * kv_heads) * spec.head_dim
    per_token = element_bytes * tokens
    if not spec.is_moe:
        return per_token * (3 * spec.hidden_size + max(mlp, attention))
    dispatched = 0
    if stage is not None and stage.moe_ranks > tp:
        caches = fused_moe_caches(spec, stage.moe_ranks, moe_dispatched_tokens(stage, tokens), version, expert_format,
                                  device, expert_parallel, True)
        dispatched = moe_dispatch_bytes(stage, tokens)
    else:
        caches = fused_moe_caches(spec, tp, tokens, version, expert_format, device, expert_parallel)
    shared = 3 * spec.shared_expert_width // tp
    if caches.persists:
        return max(per_token * (3 * spec.hidden_size + max(mlp, attention)),
                   per_token * (3 * spec.hidden_size + shared) + caches.transient + dispatched) + caches.nbytes
    return max(per_token * (3 * spec.hidden_size + max(mlp, attention)),
               per_token * (3 * spec.hidden_size + shared) + caches.nbytes + caches.transient + dispatched)


@dataclass(frozen=True, slots=True)
class _ProfilePasses:
    """The two passes of vLLM's profiling run on one device (`VllmProfile.activation`), in bytes: `forward`, the dummy
    forward pass's peak (without DeepSeek Sparse Attention's logits dummy, `logits`), and `sampler`, the sampler pass
    (`sampled`) beside what it finds held; both include the stage's receive buffers (`received`) and, where the
    fused-MoE caches persist (`held_by_moe`), those caches (in the sampler pass as `workspace`, on the last stage)."""

    forward: int
    sampler: int
    sampled: int
    sampler_basis: str
    received: int
    held_by_moe: int
    workspace: int
    logits: int
    gdn: int
    caches: FusedMoeCaches | None
    sampler_kept: int = 0

    @property
    def released(self) -> int:
        """What the profiling peak leaves to PyTorch's allocator once it is over: the larger pass without what stays
        allocated (the receive buffers, the fused-MoE caches the workspace manager keeps and the sampler's cached
        buffer, `sampler_kept_bytes`), and without the sparse indexer's logits dummy, which nibble charges on the
        forward pass's peak only to be on the safe side there."""
        return (max(self.forward - self.held_by_moe, self.sampler - self.workspace - self.sampler_kept)
                - self.received)


def _profile_passes(version: str, stage: Stage, limits: BatchLimits, expert_format: str,
                    device: DeviceFacts) -> _ProfilePasses:
    """`_ProfilePasses` of `stage` on vLLM `version` (`VllmProfile.activation` gives their terms)."""
    spec, tokens, element = stage.spec, limits.max_batched_tokens, stage.element_bytes
    received = 2 * tokens * spec.hidden_size * element if stage.layers[0] > 0 else 0
    caches = (fused_moe_caches(spec, stage.moe_ranks, moe_dispatched_tokens(stage, tokens), version, expert_format,
                               device, stage.expert_parallel, stage.data_parallel > 1) if spec.is_moe else None)
    gdn = 0
    if spec.linear_attention is not None and VERSIONS[version].gdn_projections_profiled:
        gdn = gdn_forward_bytes_per_token(spec, stage.tensor_parallel)
    # a Gated DeltaNet layer after the first MoE layer runs beside the fused-MoE caches where they persist
    held_by_moe = caches.nbytes if caches is not None and caches.persists else 0
    forward = max(_forward_bytes(spec, stage.tensor_parallel, tokens, version, expert_format, device,
                                 element, stage.expert_parallel, stage),
                  tokens * gdn + held_by_moe if gdn else 0) + received
    rows = min(limits.max_num_seqs, tokens) if stage.is_last else 0
    workspace = caches.nbytes if rows and caches is not None and caches.persists else 0
    sampled, sampler_basis = sampler_pass_bytes(spec, rows, tokens, device, version, element)
    logits = DSA_PROFILE_LOGITS_BYTES.get(version, 0) if spec.has_indexer else 0
    return _ProfilePasses(forward, sampled + workspace + received, sampled, sampler_basis, received, held_by_moe,
                          workspace, logits, gdn, caches, sampler_kept_bytes(spec, rows, device, version))


@lru_cache(maxsize=4096)
def _activation_of(version: str, stage: Stage, limits: BatchLimits, expert_format: str, device: DeviceFacts) -> Term:
    """`VllmProfile.activation` of release `version`, computed once per set of arguments: a pure function of them
    that every plan asks once per weight format and parallel layout."""
    return VllmProfile(version)._activation(stage, limits, expert_format, device)


class VllmProfile:
    """vLLM's terms for one release (`VERSIONS`); the planner uses it through `EngineProfile`."""

    def __init__(self, version: str = DEFAULT_VERSION) -> None:
        if version not in VERSIONS:
            raise UnknownName("vLLM version", str(version), [], field="runtime.engine_version", known=list(VERSIONS))
        self._version = version
        self._rules = VERSIONS[version]

    @property
    def name(self) -> str:
        return "vllm"

    @property
    def version(self) -> str:
        return self._version

    @property
    def mamba_cache_mode(self) -> str:
        """The ``mamba_cache_mode`` this release runs a hybrid model in by default (`MAMBA_CACHE_MODES`)."""
        return self._rules.mamba_cache_mode

    @property
    def chunked_local_attention(self) -> bool:
        """Whether this release holds only the current chunk in chunked local attention layers
        (`CHUNKED_LOCAL_ATTENTION`)."""
        return self._rules.chunked_local_attention

    def batch_limits(self, device_bytes: int, device_name: str) -> BatchLimits:
        """`EngineArgs.get_batch_defaults` for the OpenAI server: 8192 tokens and 1024 sequences on a
        device of at least 70 GiB that is not an A100 (vLLM PR #17885), else 2048 and 256."""
        if device_bytes >= LARGE_DEVICE_BYTES and "a100" not in device_name.lower():
            return BatchLimits(max_batched_tokens=8192, max_num_seqs=1024)
        return BatchLimits(max_batched_tokens=2048, max_num_seqs=256)

    def activation(self, stage: Stage, limits: BatchLimits, expert_format: str = "",
                   device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
        """The torch peak of `GPUModelRunner.profile_run`: the larger of the dummy forward pass over
        ``max_batched_tokens`` tokens and, on the last stage, the sampler pass over
        ``min(max_num_seqs, max_batched_tokens)`` rows of full-vocabulary logits, during which the
        dummy run's hidden states are still held (as each release's code allocates them, `sampler_pass_bytes`,
        with PyTorch's cuBLAS workspaces beside the peak, `torch_cuda.blas_workspace_bytes` of `device`, except on
        0.33, whose init_device allocates them before the start-up snapshot (`startup_memory`), and in
        0.33 the sampler's penalty state, `sampler_state_bytes`, and the structured-output grammar bitmask,
        `grammar_bitmask_bytes`);
        the forward pass's intermediates are freed before the sampler runs, so the two do not add,
        except, from the releases whose `moe_workspace_persists`, a MoE model's fused-MoE caches
        (`fused_moe_caches`: TritonExperts' ``tokens × top_k × (max(w, hidden) + max(2w, hidden)) × 2 bytes``,
        w the expert width / tp), which the workspace manager keeps (Qwen3-30B-A3B on vLLM 0.19: 2.14 GiB of
        sampler + 0.50 GiB of caches + 0.03 GiB of cuBLAS workspaces against the 2.68 GiB logged).  A pipeline
        stage after the first also holds the
        buffers it receives the previous stage's hidden states and residual in (``IntermediateTensors`` of
        ``max_num_batched_tokens`` rows, allocated once by the dummy run: 2 × tokens × hidden × 2 bytes;
        Llama-3.1-8B's last stage at PP=2 on vLLM 0.19: 1.89 + 0.13 = the 2.01 GiB logged).  `expert_format` (the
        weight format of the routed experts) and `device` (its compute capability) select the fused-MoE kernel class
        as vLLM's oracles do (`fused_moe_caches`).  A hybrid model's Gated DeltaNet layers add nothing in v0.11 (the
        layer returns before its projections) and their projections from v0.19 (`gdn_forward_bytes_per_token`, when
        wider than the other layers'); the rotary cos/sin cache the model is built with is charged beside the peak
        (`rotary_cache_bytes`)."""
        return _activation_of(self._version, stage, limits, expert_format, device)

    def _activation(self, stage: Stage, limits: BatchLimits, expert_format: str, device: DeviceFacts) -> Term:
        """`activation`, uncached."""
        spec, tokens, element = stage.spec, limits.max_batched_tokens, stage.element_bytes
        passes = _profile_passes(self._version, stage, limits, expert_format, device)
        received, caches, gdn, held_by_moe = passes.received, passes.caches, passes.gdn, passes.held_by_moe
        forward, sampler, workspace, sampler_basis = (passes.forward, passes.sampler, passes.workspace,
                                                      passes.sampler_basis)
        # 0.33 allocates them before its start-up snapshot (`_Startup.blas_handles`, charged by `startup_memory`)
        blas = 0 if self._rules.startup.blas_handles else blas_workspace_bytes(device)
        state = sampler_state_bytes(spec, limits.max_num_seqs, self._version) if stage.is_last else 0
        bitmask = grammar_bitmask_bytes(spec, limits.max_num_seqs, self._version) if stage.is_last else 0
        held = f", with the fused-MoE caches still held ({workspace / GIB:.2f} GiB)" if workspace else ""
        if received:
            held += f", beside the stage's receive buffers ({received / GIB:.2f} GiB)"
        basis = (f"vLLM {self._version} profiling run: max(forward pass of max_num_batched_tokens={tokens} tokens "
                 f"at {element} bytes per element ({forward / GIB:.2f} GiB), {sampler_basis}{held} "
                 f"({sampler / GIB:.2f} GiB)); independent of the workload's context (gpu_model_runner.profile_run)")
        if blas:
            basis += (f"; plus PyTorch's cuBLAS and cuBLASLt workspaces ({blas / MIB:.0f} MiB), allocated through "
                      "its caching allocator at the run's first matrix product and kept (CublasHandlePool.cpp)")
        else:
            basis += (f"; PyTorch's cuBLAS and cuBLASLt workspaces are not in it: vLLM {self._version}'s "
                      "Worker.init_device allocates them before its start-up snapshot, where they are charged "
                      "(start-up memory), and the profiling run's matrix products reuse them")
        if state:
            basis += (f"; plus the sampler's penalty state, max_num_seqs={limits.max_num_seqs} x vocabulary int32 "
                      f"output counts and prompt bit masks ({state / GIB:.2f} GiB), allocated with Model Runner V2's "
                      "Sampler after the weights are measured and kept (gpu/sample/penalties.py, PenaltiesState)")
        if bitmask:
            basis += (f"; plus the structured-output grammar bitmask, max_num_seqs={limits.max_num_seqs} x "
                      f"ceil(vocabulary / 32) int32 and the rows' int32 logits indices ({bitmask / MIB:.1f} MiB), "
                      "allocated on the device with Model Runner V2's StructuredOutputsWorker after the weights are "
                      "measured and kept (gpu/structured_outputs.py, gpu/model_runner.py load_model)")
        if spec.linear_attention is not None and gdn:
            basis += (f"; the forward pass is the widest layer's, a Gated DeltaNet layer's being its projections "
                      f"({tokens * gdn / GIB:.2f} GiB: in_proj_qkvz/ba outputs, the unpacked q/k/v, the gate, the "
                      "zeroed core output and the gated norm), which vLLM runs in the profiling run while the core "
                      "returns early (gdn_linear_attn.py, attn_metadata is None)"
                      + (", beside the fused-MoE caches the workspace manager holds from the first MoE layer on"
                         if held_by_moe else ""))
        elif spec.linear_attention is not None:
            basis += ("; the Gated DeltaNet layers add nothing to it: vLLM 0.11's layer returns before its "
                      "projections in the profiling run (qwen3_next.py, _forward: attn_metadata is None)")
        if caches is not None:
            basis += f"; the fused-MoE caches are {caches.basis}"
        deepstack = deepstack_buffer_bytes(spec, tokens)
        if deepstack:
            basis += (f"; plus Qwen3-VL's deepstack input buffers, one of max_num_batched_tokens x hidden_size at "
                      f"2 bytes per deepstack level ({deepstack / GIB:.2f} GiB), "
                      "allocated when the model is built (qwen3_vl.py, deepstack_input_embeds)")
        topk_buffer = dsa_topk_buffer_bytes(spec, tokens)
        if topk_buffer:
            basis += (f"; plus DeepSeek Sparse Attention's top-k indices buffer, max_num_batched_tokens x index_topk "
                      f"int32 ({topk_buffer / GIB:.2f} GiB), allocated when the model is built (deepseek_v2.py, "
                      "topk_indices_buffer)")
        logits = passes.logits
        if logits:
            forward += logits
            basis += (f"; the forward pass includes the indexer's {logits / GIB:.2f} GiB logits dummy of the profiling "
                      "run (sparse_attn_indexer.py, VLLM_SPARSE_INDEXER_MAX_LOGITS_MB)")
        rotary = rotary_cache_bytes(spec, self._version, element)
        if rotary:
            cached = " + ".join(f"{count:,}" for count in rotary_cache_positions(spec, self._version))
            basis += (f"; plus the rotary cos/sin cache{'s' if len(spec.rotary_cache_rows) > 1 else ''}, "
                      f"{cached} positions x {spec.rotary_dim} rotary dimensions at "
                      f"{4 if spec.model_type in ROTARY_CACHE_FP32 else element} bytes ({rotary / GIB:.3f} GiB), "
                      "built with the model and counted in vLLM's 'Model loading took' (rotary_embedding/base.py, "
                      "cos_sin_cache)")
        if stage.is_last and limits.speculative_tokens:
            rows = min(limits.max_num_seqs, tokens)
            padded = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
            rejection, rejection_basis = rejection_warmup(spec, self._version, rows, tokens, padded, element,
                                                          passes.sampled)
            sampler += rejection
            basis += f"; speculative decoding (num_speculative_tokens={limits.speculative_tokens}): {rejection_basis}"
            if limits.draft_layers:
                drafted = drafter_pass_bytes(spec, limits, element)
                forward += drafted
                basis += (f"; the MTP drafter's dummy run after the target's forward (EagleProposer.dummy_run) holds "
                          f"at most {drafted / GIB:.2f} GiB beyond it (3 x max_num_batched_tokens x hidden: the "
                          "target's output and the drafter's embedded and normed inputs; its decoder layer is one of "
                          "the target's), a bound read from the code")
        text = max(forward, sampler) + deepstack + topk_buffer + rotary + blas + state + bitmask
        max_model_len = limits.max_model_len or spec.max_position_embeddings or tokens
        encoder = encoder_profile(spec, self._version, stage.tensor_parallel, tokens, max_model_len)
        if encoder is None:
            return Term(text, basis)
        encoding, kept, encoder_basis = encoder
        total = max(encoding + deepstack + topk_buffer + rotary + blas + state + bitmask, kept + text)
        return Term(total, f"max(the multimodal dummy batch through the vision tower, the text pass beside what it "
                           f"leaves held): {encoder_basis}; the text pass: {basis}")

    def context_activation(self, stage: Stage, kv_cache_dtype: str, limits: BatchLimits) -> DsaWorkspace | None:
        """The part of the profiling peak that grows with ``max_model_len``: a DeepSeek Sparse Attention model's
        workspace on vLLM 0.19 (`DsaWorkspace`); None otherwise."""
        return dsa_workspace(stage, kv_cache_dtype, limits, self._version)

    def activation_context_steps(self, spec: ModelSpec, limits: BatchLimits) -> tuple[int, ...]:
        """The contexts from which vLLM's dummy video changes (`qwen_encoder_dummy`): Qwen2.5-VL's gains a pair of
        frames at ``k x G`` for k = 2 to 7 (G the tokens of one pair); vLLM 0.11's Qwen3-VL one jumps from 2 frames to
        24,576 at 16,200 tokens.  The activation is constant between them.  Other models: none."""
        tower = spec.vision
        pair = qwen_encoder_dummy(spec, self._version, limits.max_batched_tokens, 1)
        if pair is None:
            return ()
        if isinstance(tower, QwenVisionTower):
            most = QWEN2_VL_MAX_DUMMY_FRAMES // tower.temporal_patch_size
            return tuple(groups * pair.tokens_per_item for groups in range(2, most + 1))
        if isinstance(tower, Qwen3VisionTower) and self._version == "0.11":
            side = math.isqrt(QWEN_VL_MAX_IMAGE_PIXELS[spec.model_type])
            return tuple(sorted(set(qwen3_vl_v011_video_table(side, tower.patch_size, tower.spatial_merge_size)[1])))
        return ()

    def non_torch(self, stage: Stage) -> Term:
        """Memory outside PyTorch's allocator that grows during loading and profiling
        (`memory_profiling`'s ``non_torch_increase``), as the release's public logs show it per
        layout (`_NonTorch`): cuBLAS workspaces on one GPU; with tensor parallelism the NCCL and
        custom all-reduce buffers; with pipeline stages the send/receive buffers (a MoE model at data parallel > 1:
        the buffers of tensor parallelism over its MoE layers' data x tensor ranks, `Stage.moe_ranks`, whose
        all-gathers and reduce-scatters run in the profiling run; no log shows them, the safe side).  A model type whose
        runs logged more (`_NonTorch.model_type_excess`: Granite on 0.19 and 0.33) has the excess added."""
        rules = self._rules.non_torch
        tensor = stage.tensor_parallel
        if stage.moe_ranks > tensor:  # the MoE layers' collectives over data x tensor ranks: charged as that TP
            tensor = stage.moe_ranks
        by_degree = [size for degree, size in rules.tensor_parallel if degree <= tensor] or [
            rules.tensor_parallel[0][1]]
        if tensor > 1 and (stage.pipeline_parallel == 1 or rules.pipeline is None):
            size, why = by_degree[-1], f"NCCL and all-reduce buffers of tensor parallelism ({tensor} ranks)"
            if tensor > stage.tensor_parallel:
                why = (f"NCCL buffers of the MoE layers' all-gathers and reduce-scatters over the {tensor} data x "
                       f"tensor ranks, charged as tensor parallelism over {tensor} ranks (no log shows them: the "
                       "safe side)")
        elif tensor > 1:
            size, why = max(by_degree[-1], rules.pipeline or 0), "all-reduce and pipeline send/receive buffers"
        elif stage.pipeline_parallel > 1:
            if rules.pipeline is None:
                size, why = rules.tensor_parallel[0][1], "NCCL send/receive buffers between stages (no log: as TP)"
            else:
                size, why = rules.pipeline, "NCCL send/receive buffers between pipeline stages"
        else:
            size, why = rules.single, ("CUDA's own memory outside PyTorch's allocator (kernel modules loaded on "
                                       "first use, library handles; PyTorch's cuBLAS workspaces are charged with "
                                       "the activations)")
        basis = f"{why}, as {rules.source} show it (gpu_worker.determine_available_memory, non-torch memory)"
        model_type = stage.spec.model_type
        if model_type in rules.model_type_excess:
            excess, source = rules.model_type_excess[model_type]
            size += excess
            basis += (f", plus {excess / MIB:.0f} MiB for a {model_type} model: {source} are that much above the "
                      "figure for one GPU, charged on every layout; those runs show the same attention backend, "
                      "compilation and CUDA-graph profiling as the others, and no vLLM code sizes the excess")
        return Term(size, f"{size / GIB:.2f} GiB per device: {basis}")

    def cuda_graphs(self, stage: Stage, limits: BatchLimits, enforce_eager: bool = False,
                    kv_cache_dtype: str = "bf16", device: DeviceFacts = UNKNOWN_DEVICE) -> Term:
        """CUDA-graph memory charged inside ``gpu_memory_utilization`` on one `device` of `stage`: none in v0.11 and
        v0.19 (graphs are captured after the KV pool is sized and use the memory the budget leaves free:
        `outside_budget`); from v0.21 the profiler's estimate (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1``) is
        subtracted, except with `enforce_eager` (0.33's gpu_worker.determine_available_memory profiles graphs only
        when not enforce_eager): `cuda_graph_estimate`."""
        if enforce_eager:
            return Term(0, f"enforce_eager: vLLM {self._version} captures no CUDA graph")
        if not self._rules.cuda_graphs_in_budget:
            return Term(0, f"vLLM {self._version} captures CUDA graphs after sizing the KV cache, outside "
                           "gpu_memory_utilization: nothing is charged inside the budget (what they take is checked "
                           "against the memory the budget leaves free)")
        estimate = cuda_graph_estimate(stage, kv_cache_dtype, limits, self._version, device)
        return moe_data_parallel_graphs(stage, estimate, limits, self._version, device.compute_capability)

    def outside_budget(self, stage: Stage, kv_cache_dtype: str, limits: BatchLimits,
                       enforce_eager: bool = False, device: DeviceFacts = UNKNOWN_DEVICE,
                       expert_format: str = "", dense_format: str = "") -> OutsideBudget:
        """What this release takes on one device of `stage` outside ``gpu_memory_utilization`` (`OutsideBudget`):
        the memory in use at start-up, and what it allocates after sizing the KV cache (`expert_format`, the routed
        experts' weight format, selects the fused-MoE kernel; `dense_format`, the linear layers', their kernel and
        what its repack holds while loading)."""
        return outside_budget(stage, kv_cache_dtype, limits, self._version, enforce_eager, device, expert_format,
                              dense_format)

    def refusal(self, spec: ModelSpec, tensor_parallel: int, pipeline_parallel: int,
                expert_parallel: bool = False) -> str | None:
        """vLLM's `ModelConfig.verify_with_parallel_config` and the attention layers' head split:
        the tensor-parallel degree must divide the attention heads, and divide the key/value heads
        or be a multiple of them (each rank then holds a replica); MLA has no key/value heads.  Under
        `expert_parallel` the routed experts' width is not split (`expert_width_refusal`), and what nibble does not
        plan of it is refused (`expert_parallel_refusal`)."""
        if expert_parallel and (refused := expert_parallel_refusal(spec, self._version, tensor_parallel)):
            return refused
        heads, kv_heads = spec.num_attention_heads, spec.num_kv_heads
        if heads % tensor_parallel:
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the model's "
                    f"{heads} attention heads")
        if not spec.is_mla and kv_heads % tensor_parallel and tensor_parallel % kv_heads:
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: the model's {kv_heads} key/value heads "
                    "can be neither split evenly nor replicated evenly across the ranks")
        if pipeline_parallel > spec.num_layers:
            return f"vLLM refuses {pipeline_parallel} pipeline stages for {spec.num_layers} layers"
        since = MODEL_TYPES_SINCE.get(spec.model_type)
        if since is not None and tuple(int(part) for part in self._version.split(".")) < since[0]:
            return f"vLLM {self._version} cannot load a {spec.model_type} model: {since[1]}"
        if spec.layout == "qwen2_moe" and tensor_parallel > spec.num_experts:
            # qwen2_moe.py, Qwen2MoeSparseMoeBlock.__init__: "Tensor parallel size ... is greater than the number
            # of experts"
            return (f"vLLM refuses tensor parallel size {tensor_parallel} for a Qwen2-MoE model: it is greater than "
                    f"the model's {spec.num_experts} experts")
        if spec.model_type == "phimoe" and spec.experts_per_token != 2:
            # phimoe.py, phimoe_routing_function: assert topk == 2, "Only top-2 routing is supported"
            return (f"vLLM refuses a PhiMoE model routing each token to {spec.experts_per_token} experts: its "
                    "sparsemixer routing supports top-2 only")
        if isinstance(spec.vision, Llama4VisionTower) and spec.vision.num_attention_heads % tensor_parallel:
            # mllama4.py, Llama4VisionAttention: assert self.num_heads % self.tp_size == 0
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the vision tower's "
                    f"{spec.vision.num_attention_heads} attention heads (mllama4.py splits them over the ranks)")
        if isinstance(spec.vision, PixtralVisionTower) and spec.vision.num_attention_heads % tensor_parallel:
            # pixtral.py, PixtralHFAttention: self.n_heads = divide(config.num_attention_heads, self.tp_size)
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the Pixtral vision "
                    f"tower's {spec.vision.num_attention_heads} attention heads (pixtral.py splits them over the "
                    "ranks)")
        if spec.model_type == "qwen3_5" and self._version == "0.11":
            # vllm/model_executor/models/qwen3_5.py came in February 2026 (vLLM PR #34110), after v0.11
            return "vLLM 0.11 has no Qwen3.5 model class (qwen3_5.py came in February 2026, PR #34110)"
        if spec.model_type == "qwen3_5_moe" and self._version == "0.11":
            # Qwen3_5MoeForConditionalGeneration is in the same qwen3_5.py (PR #34110, February 2026), after v0.11
            return ("vLLM 0.11 has no Qwen3.5-MoE model class (Qwen3_5MoeForConditionalGeneration, qwen3_5.py, came "
                    "in February 2026, PR #34110)")
        if spec.linear_attention is not None and (hybrid := linear_attention_refusal(spec, tensor_parallel)):
            return hybrid
        if isinstance(spec.vision, QwenVisionTower | Qwen3VisionTower):
            return (qwen_vision_refusal(spec.vision, tensor_parallel) or mlp_width_refusal(spec, tensor_parallel)
                    or expert_width_refusal(spec, tensor_parallel, expert_parallel)
                    or vocabulary_refusal(spec, tensor_parallel))
        return (mlp_width_refusal(spec, tensor_parallel) or expert_width_refusal(spec, tensor_parallel, expert_parallel)
                or vocabulary_refusal(spec, tensor_parallel))

    def context_limit(self, spec: ModelSpec) -> ContextLimit | None:
        """The longest ``--max-model-len`` this release starts `spec` with (`vllm_max_len.derived_max_model_len`)."""
        return derived_max_model_len(spec, self.version)

    def context_refusal(self, spec: ModelSpec, context_length: int, allow_long: bool = False) -> str | None:
        """Why this release refuses ``--max-model-len`` `context_length` for `spec` (`vllm_max_len`); none with
        `allow_long` (``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``), unless the release derives no length at all."""
        limit = derived_max_model_len(spec, self.version)
        if allow_long and (limit is None or limit.error is None):
            return None
        return max_model_len_refusal(spec, self.version, context_length)

    def vocabulary_on_every_stage(self, spec: ModelSpec) -> str | None:
        """Why each pipeline stage of `spec` holds the embedding, final norm and lm_head in vLLM: the model
        class builds them on every rank (`VOCABULARY_ON_EVERY_STAGE`); None for the model types whose
        classes build them only on the first and last rank."""
        where = VOCABULARY_ON_EVERY_STAGE.get(spec.model_type)
        if where is None:
            return None
        return (f"vLLM builds the input embedding, final norm and lm_head of a {spec.model_type} model on every "
                f"pipeline stage, not only on the first and last (vllm/model_executor/models/{where}, with no "
                "PPMissingLayer for them), and counts them as each stage's weights")

    def format_refusal(self, spec: ModelSpec, weight_format: str, tensor_parallel: int,
                       expert_parallel: bool = False, compute_capability: tuple[int, int] | None = None,
                       quant_method: str = "") -> str | None:
        """`fp8_block_expert_refusal` for a scheme of fp8 [128, 128] blocks (as configured or read from a
        checkpoint's headers; `quant_method` and `compute_capability` say whether vLLM 0.33 refines its scales and
        runs them there), `int4_expert_refusal` for a GPTQ, AWQ or compressed-tensors int4 format, then for any fp8
        format `fp8_marlin_expert_width_refusal` (0.11 and 0.19's Marlin MoE kernel below 8.9: a rank's expert width
        a multiple of 64); None for other formats.  Under `expert_parallel` (more than one rank) each rank's experts
        are whole: they are asked at one rank (the experts' full width), after `expert_parallel_format_refusal`."""
        if expert_parallel and tensor_parallel > 1 and spec.is_moe:
            refused = expert_parallel_format_refusal(self._version, weight_format, spec, compute_capability)
            if refused is not None:
                return refused
            tensor_parallel = 1  # FusedMoE's intermediate_size_per_partition is the whole width
        if weight_format.removeprefix("checkpoint-") != "fp8-block128":
            return (int4_expert_refusal(spec, weight_format, tensor_parallel, self._version)
                    or fp8_marlin_expert_width_refusal(spec, weight_format, tensor_parallel, self._version,
                                                       compute_capability))
        return (fp8_block_expert_refusal(spec, tensor_parallel, self._version, quant_method, compute_capability)
                or fp8_marlin_expert_width_refusal(spec, weight_format, tensor_parallel, self._version,
                                                   compute_capability))

    def device_refusal(self, spec: ModelSpec, weight_format: str, compute_capability: tuple[int, int] | None,
                       stored: WeightFormat | None = None, model_dtype: str = "bf16",
                       quant_method: str = "") -> str | None:
        """`dsa_attention_refusal` (no attention backend for `spec` on the device), `mla_prefill_refusal` (no MLA
        prefill below 8.0), `head_size_refusal` (none for its heads on any device), then `capability_refusal`: the
        release's floor for `weight_format` (`CAPABILITY_FLOORS`; `MODELOPT_CAPABILITY_FLOORS` for a `quant_method`
        ``modelopt`` checkpoint) against the device's compute capability (None: not
        known; only a format the release loads nowhere is refused), then what the release refuses of the format
        `stored` itself (`gptq_symmetry_refusal`, `moe_wna16_row_refusal`) or at the model's dtype
        (`float32_refusal`, `bfloat16_refusal`, `gguf_bfloat16_refusal`)."""
        return (dsa_attention_refusal(self._version, spec, compute_capability)
                or mla_prefill_refusal(self._version, spec, compute_capability)
                or head_size_refusal(self._version, spec, compute_capability)
                or capability_refusal(self._version, weight_format, compute_capability, quant_method)
                or gptq_symmetry_refusal(self._version, stored)
                or gptq_act_order_refusal(self._version, stored)
                or moe_wna16_row_refusal(self._version, spec, weight_format, compute_capability)
                or float32_refusal(self._version, spec.model_type, weight_format, compute_capability, stored,
                                   quant_method)
                or (None if runs_float32(self._version, spec.model_type, compute_capability)
                    else (bfloat16_refusal(self._version, stored, model_dtype, compute_capability)
                          or gguf_bfloat16_refusal(self._version, weight_format, model_dtype, compute_capability))))

    def capability_requirement(self, weight_format: str, quant_method: str = "") -> str | None:
        """`capability_requirement`: the release's floor for `weight_format` (of a `quant_method` config) in words,
        or None."""
        return capability_requirement(self._version, weight_format, quant_method)

    def checkpoint_kv_cache_dtype(self, kv_cache_quant: str) -> tuple[str | None, str]:
        """`checkpoint_kv_cache_dtype`: the KV dtype this release's ``kv_cache_dtype="auto"`` takes from a
        checkpoint naming `kv_cache_quant`, or None, and the plan's note."""
        return checkpoint_kv_cache_dtype(self._version, kv_cache_quant)

    def kv_cache_backend(self, spec: ModelSpec, kv_cache_dtype: str, compute_capability: tuple[int, int] | None,
                         block_size: int) -> KVCacheBackend:
        """`kv_cache_refusal`: whether this release's attention runs `spec`'s KV cache of `kv_cache_dtype` on the
        device, at which block."""
        values = (self._version, kv_cache_dtype, compute_capability, block_size)
        found = KV_CACHE_BACKENDS.get((spec,), values)
        return found if found is not None else KV_CACHE_BACKENDS.put(
            (spec,), values, kv_cache_refusal(self._version, spec, kv_cache_dtype, compute_capability, block_size))

    def device_dtype_note(self, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> str | None:
        """`float32_note`: the basis of a model vLLM runs in float32 on the device, or None."""
        return float32_note(self._version, spec.model_type, compute_capability)

    def model_dtype_bytes(self, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> int:
        """Bytes of one element of the dtype vLLM runs `spec` in on a device of `compute_capability`: 4 where it
        runs float32 (`runs_float32`), else 2 (bfloat16 or float16)."""
        return 4 if runs_float32(self._version, spec.model_type, compute_capability) else ACTIVATION_ELEMENT_BYTES

    def expert_layout(self, stage: Stage, expert_format: str = "", device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
        """The bytes the routed experts hold beyond the checkpoint's in the layout of the kernel the release runs
        on `device` (`expert_layout`: MXFP4's backends, `mxfp4_moe_backend`; int4 on Marlin, Humming or MoeWNA16;
        fp8 on Marlin or with 0.33's refined blocks)."""
        return expert_layout(stage, self._version, expert_format, device)

    def linear_layout(self, stage: Stage, dense_format: str = "", device: DeviceFacts = UNKNOWN_DEVICE) -> Term | None:
        """The bytes one rank holds for its quantized dense linear layers (stored as `dense_format`) beyond the
        checkpoint's, in the layout this release's kernel for `device` rewrites them to (`machete_zero_point_bytes`:
        AWQ's zero points on Machete; `gptq_marlin_linear_bytes`: symmetric GPTQ on Marlin or Machete, with or
        without act order; 0.33's Humming layers of each, and of symmetric compressed-tensors,
        `compressed_tensors_humming_bytes`; AWQ and compressed-tensors W4A16 on Marlin elsewhere,
        `awq_compressed_tensors_marlin_bytes`; fp8 block or per-tensor weights on Marlin, `fp8_marlin_linear_bytes`;
        fp8 blocks on DeepGEMM, whose scales 10.x and 12.x pack to UE8M0, `deep_gemm_scale_layout_bytes`; NVFP4 on
        Marlin, `nvfp4_marlin_linear_bytes`); None elsewhere."""
        return (machete_zero_point_bytes(stage, self._version, dense_format, device)
                or gptq_marlin_linear_bytes(stage, self._version, dense_format, device)
                or compressed_tensors_humming_bytes(stage, self._version, dense_format, device)
                or awq_compressed_tensors_marlin_bytes(stage, self._version, dense_format, device)
                or fp8_marlin_linear_bytes(stage, self._version, dense_format, device)
                or deep_gemm_scale_layout_bytes(stage, self._version, dense_format, device)
                or nvfp4_marlin_linear_bytes(stage, self._version, dense_format, device))

    def attention_weight_copy(self, stage: Stage, quantized_layers: frozenset[int],
                              draft_layers: int = 0) -> Term | None:
        """The model-dtype copies of the quantized ``kv_b_proj`` of the stage's MLA layers (`quantized_layers`) and of
        `draft_layers` MTP layers that vLLM's MLA attention holds after loading (`mla_kv_b_copy`)."""
        return mla_kv_b_copy(stage, self._version, quantized_layers, draft_layers)

    def weight_allocation(self, stage: Stage, weight_format: str = "") -> Term | None:
        """The bytes PyTorch's caching allocator counts for the rank's weights beyond their size, inside vLLM's
        "Model loading took" (`weight_allocation_slack`); None where nibble does not model it (the model class or
        the format, `weight_format` being the label of the decoder's linear weights)."""
        slack = weight_allocation_slack(stage, weight_format)
        if slack is None:
            return None
        where = FUSED_LINEAR_MODEL_TYPES[stage.spec.model_type]
        return Term(slack, (f"{slack / MIB:.1f} MiB a rank: PyTorch's caching allocator gives each weight of 10 MiB or "
                            "more a segment rounded up to 2 MiB and counts a remainder of 1 MiB or less with it "
                            "(c10/cuda/CUDACachingAllocator.cpp: get_allocation_size, should_split), which vLLM's "
                            "'Model loading took' includes (DeviceMemoryProfiler, max_memory_allocated); the "
                            f"shapes {where} allocates on one rank"))

    def routers_at_fp32(self, spec: ModelSpec) -> str | None:
        """Why vLLM holds the routers of `spec` in float32 (`ROUTERS_AT_FP32`), or None."""
        where = ROUTERS_AT_FP32.get(spec.model_type)
        if where is None:
            return None
        return (f"vLLM allocates the MoE routers of a {spec.model_type} model in float32 "
                f"(vllm/model_executor/models/{where}), whatever the model's dtype")

    def windowed_kv(self, stage: Stage, kv_cache_dtype: str, block_size: int,
                    limits: BatchLimits) -> WindowedKV | None:
        """The stage's KV cache in vLLM's groups and blocks when it has sliding-window or chunked local layers the
        release holds as such (`kv_cache.WindowedKV`; `kv_capacity`'s groups), None otherwise (every layer full
        attention, one group: the planner's per-layer figure is vLLM's; a hybrid model: `kv_cache.HybridKV`).  The
        tokens in flight are `in_flight_tokens`'; in releases with async scheduling (0.33) the blocks behind the
        window are freed from the settled tokens (kv_cache_manager.py ``allocate_slots``: ``remove_skipped_blocks(...,
        total_computed_tokens - request.num_in_flight_tokens)``), the `pipeline_parallel` steps in flight
        behind."""
        if stage.spec.linear_attention is not None or stage.spec.has_indexer:
            return None
        groups, group_size, page = _kv_cache_groups(stage.spec, stage.layers, kv_cache_dtype, stage.tensor_parallel,
                                                    block_size, self._rules.chunked_local_attention,
                                                    self._rules.group_size_ratio)
        if all(window is None for _, window, _ in groups):
            return None
        in_flight = in_flight_tokens(self._version, stage.pipeline_parallel, limits.max_batched_tokens)
        unsettled = stage.pipeline_parallel if self._rules.in_flight_batches else 0
        return WindowedKV(groups, group_size, page, block_size, in_flight, unsettled)

    def kv_capacity(self, stage: Stage, kv_cache_dtype: str, available_bytes: int, block_size: int,
                    max_model_len: int, limits: BatchLimits) -> KVCapacity:
        """`kv_cache_utils`: the stage's layers grouped by kind (full, sliding window w, chunked local of chunk c
        where the release runs them under the hybrid manager, `CHUNKED_LOCAL_ATTENTION`) into groups of one size
        (`_get_kv_cache_groups_uniform_page_size`: the smallest kind's layer count in v0.11; from v0.19 the largest
        when it is under 1.5x the smallest, `_Version.group_size_ratio`); ``num_blocks = available // (page × group
        size)``."""
        if stage.spec.linear_attention is not None:
            return hybrid_kv_capacity(stage, kv_cache_dtype, available_bytes, block_size, max_model_len,
                                      self._version, self._rules.tokens_from_concurrency, limits.max_batched_tokens)
        groups, block_bytes, num_groups, in_flight = self._kv_pool(stage, kv_cache_dtype, block_size, limits)
        num_blocks = max(0, available_bytes // block_bytes)
        # Maximum concurrency (get_max_concurrency_for_kv_cache_config): the blocks one request of max_model_len
        # may hold in every group (each spec's max_memory_usage_bytes): a full group the whole length; a sliding
        # group its window less one plus the tokens in flight, and one block more for a window across a block
        # boundary (SlidingWindowSpec); a chunked group a chunk plus the tokens in flight (ChunkedLocalAttentionSpec)
        blocks_per_request = 0
        for kind, window, n in groups:
            if window is None:
                need = -(-max_model_len // block_size)
            elif kind == "chunked":
                need = -(-min(window + in_flight, max_model_len) // block_size)
            else:
                need = -(-min(window - 1 + in_flight, max_model_len) // block_size) + 1
            blocks_per_request += need * n
        concurrency = num_blocks / blocks_per_request if blocks_per_request else 0.0
        if self._rules.tokens_from_concurrency:
            tokens = int(concurrency * max_model_len)
        else:
            tokens = num_blocks // num_groups * block_size
        return _new_kv_capacity(num_blocks, tokens, concurrency)

    def _kv_pool(self, stage: Stage, kv_cache_dtype: str, block_size: int,
                 limits: BatchLimits) -> tuple[tuple[tuple[str, int | None, int], ...], int, int, int]:
        """`kv_capacity`'s terms of the stage that do not depend on the memory left or the context: its groups
        (`_kv_cache_groups`), the bytes of one block over a group's layers (``page x group size``), the groups in
        all and the tokens in flight (`in_flight_tokens`); found once per stage (`_KV_POOLS`), after
        `dsa_version_refusal` (which refuses the spec at this release before anything is remembered)."""
        draft_layers = limits.draft_layers if stage.is_last else 0
        objects, values = (stage.spec,), (self._version, stage.layers, kv_cache_dtype, stage.tensor_parallel,
                                          stage.pipeline_parallel, block_size, draft_layers, limits.max_batched_tokens)
        found = _KV_POOLS.get(objects, values)
        if found is not None:
            return found
        dsa_version_refusal(stage.spec, self._version)
        groups, group_size, page = _kv_cache_groups(stage.spec, stage.layers, kv_cache_dtype, stage.tensor_parallel,
                                                    block_size, self._rules.chunked_local_attention,
                                                    self._rules.group_size_ratio, draft_layers)
        return _KV_POOLS.put(objects, values, (
            groups, page * group_size, sum(n for _, _, n in groups),
            in_flight_tokens(self._version, stage.pipeline_parallel, limits.max_batched_tokens)))


#: `VllmProfile._kv_pool`'s answers by (spec object; release, layers, KV dtype, tp, pp, block, draft layers, batched
#: tokens): a plan asks `kv_capacity` once per weight format of each stage, and its solvers' layouts
_KV_POOLS: IdentityMemo[tuple[tuple[tuple[str, int | None, int], ...], int, int, int]] = IdentityMemo(1024)
_new_kv_capacity = slot_constructor(KVCapacity)


@lru_cache(maxsize=256)
def _kv_cache_groups(spec: ModelSpec, layers: tuple[int, int], kv_cache_dtype: str, tensor_parallel: int,
                     block_size: int, chunked_local: bool = False, group_size_ratio: float | None = None,
                     draft_layers: int = 0) -> tuple[tuple[tuple[str, int | None, int], ...], int, int]:
    """A stage's KV cache groups as vLLM forms them: ((kind, window or None, groups of that kind), ...), the layers
    in one group, and the page bytes (a pure function of the stage, cached: the solvers ask it many times).  Chunked
    local layers are a kind of their own (window: the chunk) when `chunked_local`, full attention otherwise
    (``unify_hybrid_kv_cache_specs`` with the hybrid manager off).  A group holds the smallest kind's layer count,
    or the largest kind's when that is under `group_size_ratio` times the smallest (`_Version.group_size_ratio`).
    `draft_layers` speculative-decoding layers (vLLM's MTP layers, on the last stage) are layers of the model's last
    layer's kind: their attention specs equal the target's, and ``get_kv_cache_groups`` (v1/core/kv_cache_utils.py)
    groups every layer of the forward context, the drafter's included (`engines.vllm_speculative`)."""
    start, stop = layers
    if spec.has_indexer:
        return _dsa_kv_cache_groups(spec, layers, kv_cache_dtype, tensor_parallel, block_size)
    by_kind: dict[tuple[str, int | None, int], int] = {}
    for layer in kv_layers(spec)[start:stop]:
        window = held_window(layer, chunked_local)
        kind = "full" if window is None else layer.kind
        page = block_size * layer_bytes_per_token(layer, kv_cache_dtype, tensor_parallel)
        by_kind[(kind, window, page)] = by_kind.get((kind, window, page), 0) + 1
    if draft_layers:
        layer = kv_layers(spec)[-1]
        window = held_window(layer, chunked_local)
        key = ("full" if window is None else layer.kind, window,
               block_size * layer_bytes_per_token(layer, kv_cache_dtype, tensor_parallel))
        by_kind[key] = by_kind.get(key, 0) + draft_layers
    counts = list(by_kind.values())
    smallest, largest = min(counts), max(counts)
    group_size = largest if group_size_ratio is not None and largest < smallest * group_size_ratio else smallest
    groups = tuple((kind, window, -(-count // group_size)) for (kind, window, _page), count in by_kind.items())
    page = max(page for _kind, _window, page in by_kind)  # vLLM unifies page sizes; equal for one dtype and head size
    return groups, group_size, page


def _dsa_kv_cache_groups(spec: ModelSpec, layers: tuple[int, int], kv_cache_dtype: str, tensor_parallel: int,
                         block_size: int) -> tuple[tuple[tuple[str, int | None, int], ...], int, int]:
    """DeepSeek Sparse Attention's KV cache in vLLM 0.11 / 0.19: every attention layer's MLA latent and indexer key
    are full-attention specs of two page sizes, so `UniformTypeKVCacheSpecs.from_specs` puts them all in one group
    whose page is the sum of the layers' pages (``block × Σ (latent + indexer key bytes)``); one block of it holds
    `block_size` tokens in every layer, so ``num_blocks = available // page`` and the tokens are
    ``num_blocks × block_size``."""
    start, stop = layers
    page = sum(block_size * layer_bytes_per_token(layer, kv_cache_dtype, tensor_parallel)
               for layer in kv_layers(spec)[start:stop])
    return (("full", None, 1),), 1, page
