"""vLLM's sampler pass in the profiling run and the sampler state it keeps.

``v1/worker/gpu_model_runner.py`` ``_dummy_sampler_run`` samples ``min(max_num_seqs, max_num_batched_tokens)``
sequences of fp32 logits over the padded vocabulary; ``v1/sample/ops/topk_topp_sampler.py`` (PyTorch's sort, the
Triton and FlashInfer top-k/top-p kernels) sizes the pass (`sampler_pass_bytes`); ``v1/sample/sampler.py`` and the
input batch hold the rest (`sampler_kept_bytes`, `sampler_state_bytes`); 0.33's Model Runner V2 also keeps a
structured-output grammar bitmask on the device (`grammar_bitmask_bytes`).
"""

from __future__ import annotations

from quant_core.catalog import DeviceFacts
from quant_core.engines.torch_cuda import compute_units
from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, MIB
from quant_core.specs import ModelSpec

#: model_executor/layers/vocab_parallel_embedding.py ``DEFAULT_VOCAB_PADDING_SIZE``: the lm_head's rows are the
#: vocabulary padded to a multiple of 64 (``pad_vocab_size``), split over the tensor-parallel ranks
VOCAB_PADDING = 64
#: v1/sample/ops/topk_topp_sampler.py ``apply_top_k_top_p``: the Triton kernel from 8 rows on, PyTorch's sort below
#: (0.19; 0.33's takes the Triton kernel for any row count)
TRITON_TOP_K_TOP_P_MIN_ROWS = 8
#: float32 logits, softmax probabilities and exponential draws, 4 bytes a logit each, beside the model's 16-bit
#: logits (Sampler.forward ``logits.to(torch.float32)``, forward_native ``logits.softmax``, random_sample
#: ``torch.empty_like(probs)``), the Triton kernel masking the float32 logits in place
SAMPLER_FLOAT32_COPIES = 3
#: apply_top_k_top_p_pytorch's working set beyond the float32 logits after the sort, in bytes a logit: the sorted
#: values (4) and their int64 indices (8), the top-k mask (1), the sorted probabilities (4) and the top-p mask (1)
SORT_PATH_BYTES_PER_LOGIT = 4 + 8 + 1 + 4 + 1
#: PyTorch's ``torch.sort`` of a float32 [rows, vocabulary] tensor on CUDA (aten/src/ATen/native/cuda/SortStable.cu,
#: ``launch_stable_sort_kernel``; vLLM 0.11 pins torch 2.8.0), in bytes a logit while CUB sorts, beyond the sorted
#: values (4) and int64 indices (8) it returns: from 128 rows ``segmented_sort_pairs`` fills an int64 index per
#: element (``reverse_indices``, 8) and CUB's ``DeviceSegmentedRadixSort::SortPairs`` takes temporary storage for
#: its alternate key and value buffers (4 + 8); one row, ``segmented_sort_large_segments``: an int64 index of the
#: row (8) and ``radix_sort_pairs``' alternate buffers (4 + 8); 2 to 127 rows, ``segmented_sort_pairs_by_full_sort``:
#: two int2 (index, segment) arrays (8 + 8), the sorted keys ``radix_sort_pairs`` allocates when given none (4) and
#: the alternate key and int2 value buffers (4 + 8)
TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT = 8 + 4 + 8
TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT = 8 + 8 + 4 + 4 + 8
#: SortStable.cu: from this many rows ``segmented_sort_pairs``, below it (and above one row) the full sort
TORCH_SORT_SEGMENTED_MIN_ROWS = 128


def torch_sort_peak_per_logit(rows: int) -> int:
    """Bytes a logit live while PyTorch sorts a float32 ``rows x vocabulary`` tensor, the float32 input included:
    the input (4), the sorted values (4) and int64 indices (8) and the sort's buffers
    (`TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT` for one row or from 128 rows, `TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT`
    between): 36 or 48."""
    buffers = (TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT if 1 < rows < TORCH_SORT_SEGMENTED_MIN_ROWS
               else TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT)
    return 4 + 4 + 8 + buffers
#: FlashInfer's ``top_k_mask_logits`` row-state buffer (flashinfer/sampling.py, ``_get_cache_buf``, kept once made)
FLASHINFER_ROW_STATES_BYTES = 1 * MIB
#: vLLM 0.33's ``flashinfer_sampler_supported`` (v1/sample/ops/topk_topp_sampler.py): CUDA devices from compute
#: capability 8.0 to 12.1 (``FlashInferBackend.supports_compute_capability`` in v1/attention/backends/flashinfer.py)
#: with more than 16 SMs (``num_compute_units``: FlashInfer's multi-CTA top-k masking)
FLASHINFER_SAMPLER_CAPABILITY = ((8, 0), (12, 1))
FLASHINFER_SAMPLER_MIN_SMS = 17


def flashinfer_sampler_supported(device: DeviceFacts) -> bool:
    """vLLM 0.33's ``flashinfer_sampler_supported`` for `device`: not on ROCm, not outside
    `FLASHINFER_SAMPLER_CAPABILITY`, not at 16 SMs or fewer; a device of unknown vendor and capability, or of unknown
    SM count, is taken to run it (its masked logits and softmax outweigh the Triton kernel's buffer at any SM count:
    the safe side).  ``_flashinfer_jit_unsupported_reason`` (FlashInfer unable to compile for the device) is not
    modelled."""
    low, high = FLASHINFER_SAMPLER_CAPABILITY
    capability = device.compute_capability
    if device.vendor == "amd" or (capability is not None and not low <= capability <= high):
        return False
    return device.compute_units is None or device.compute_units >= FLASHINFER_SAMPLER_MIN_SMS


def _triton_buffer(device: DeviceFacts, rows: int, vocabulary: int) -> tuple[int, str]:
    """topk_topp_triton.py's cached float32 buffer: ``min(next_power_of_2(min(SMs, rows)), SMs) x vocabulary``, with
    `torch_cuda.compute_units` of `device` (the basis says when the device's count was not known)."""
    units, known = compute_units(device)
    buffer_rows = min(1 << (min(units, rows) - 1).bit_length(), units)
    counted = f"{units} SMs" if known else (
        f"{units} SMs: the device's count not given, the most of the catalog's NVIDIA devices"
        f"{'' if device.compute_capability is None else f' of compute capability {device.compute_capability[0]}.x'}"
        ", the safe side")
    return buffer_rows * vocabulary * 4, f"the Triton top-k/top-p buffer of {buffer_rows} rows ({counted})"


def sampler_pass_bytes(spec: ModelSpec, rows: int, tokens: int, device: DeviceFacts,
                       version: str = "0.19", element_bytes: int = ACTIVATION_ELEMENT_BYTES) -> tuple[int, str]:
    """The peak of vLLM `version`'s sampler pass in the profiling run (``_dummy_sampler_run``, on the last pipeline
    stage) over `rows` = min(max_num_seqs, max_num_batched_tokens) dummy requests, and its basis.  Every release
    holds the dummy run's hidden states (``tokens x hidden``), the last token of each request gathered from them and
    the model's 16-bit logits (``compute_logits``: the lm_head's ``rows x vocabulary padded to 64``, all-gathered
    over the tensor-parallel ranks) while its sampler runs; what the sampler adds is the release's:

    * 0.19 (v1/worker/gpu_model_runner.py, v1/sample/sampler.py, ops/topk_topp_sampler.py, ops/topk_topp_triton.py):
      the gathered rows' ``torch.rand_like`` copy; three float32 copies of ``rows x vocabulary``
      (`SAMPLER_FLOAT32_COPIES`: the logits, the softmax probabilities, the exponential draws of
      ``random_sample``); the dummy requests ask top-k and top-p, which ``apply_top_k_top_p_triton`` applies in
      place from 8 rows on with a cached buffer (`_triton_buffer`, `torch_cuda.compute_units` of `device`);
      below 8 rows ``apply_top_k_top_p_pytorch`` sorts, and the peak is the sort's (`torch_sort_peak_per_logit`:
      48 bytes a logit from 2 rows, 36 for one, beside the 16-bit logits), above the masks and sorted probabilities
      after it (`SORT_PATH_BYTES_PER_LOGIT` beside the float32 logits) and the probabilities and draws after them.
    * 0.11 (the same files of v0.11.0): the rand_like copy; with no FlashInfer (an extra of the 0.11 wheel, not a
      dependency) ``TopKTopPSampler`` runs ``forward_native``, whose ``apply_top_k_top_p`` sorts the float32
      logits: at ``logits.sort`` the float32 logits, the sorted values and int64 indices and PyTorch's sort
      buffers are live (`TORCH_SORT_SEGMENTED_BYTES_PER_LOGIT`, `TORCH_SORT_BY_FULL_SORT_BYTES_PER_LOGIT`): 38
      bytes a logit with the 16-bit logits, from 128 rows; the masks, sorted probabilities and the scattered logits
      that follow (28 bytes a logit) and the probabilities and draws after them (18) stay below it.
    * 0.33, Model Runner V2 (v1/worker/gpu/model_runner.py, its default: ``VllmConfig.use_v2_model_runner``):
      ``_dummy_sampler_run`` gathers the rows (``hidden_states[logits_indices]``) with no random copy and samples
      twice, the second time with ``SamplingParams.for_sampler_warmup`` (top-k 50, top-p 0.9, min-p, penalties,
      logit bias, logprobs), whose ``apply_sampling_params`` copies the logits to float32 (4 bytes a logit); on a
      CUDA device ``flashinfer_sampler_supported`` admits (`flashinfer_sampler_supported`), FlashInfer's
      ``top_k_top_p_sampling_from_logits`` then holds its masked logits and their softmax (4 + 4,
      ``top_k_mask_logits``, ``torch.softmax``) and a 1 MiB row-state buffer (`FLASHINFER_ROW_STATES_BYTES`);
      elsewhere ``apply_top_k_top_p_triton`` masks in place with its buffer and ``gumbel_sample`` takes per-block
      maxima only.

    The hidden states and the model's logits take `element_bytes` an element: 4 for a model run in float32."""
    if rows == 0:
        return 0, "no sampler pass on this pipeline stage"
    vocabulary, hidden = spec.vocab_size, spec.hidden_size
    padded = -(-vocabulary // VOCAB_PADDING) * VOCAB_PADDING
    logits = rows * padded * element_bytes
    if version == "0.33":
        held = (tokens + rows) * hidden * element_bytes + logits + rows * vocabulary * 4
        if flashinfer_sampler_supported(device):
            extra, how = (rows * vocabulary * 8 + FLASHINFER_ROW_STATES_BYTES,
                          "FlashInfer's top-k-masked logits and their softmax (8 bytes a logit) and its 1 MiB "
                          "row-state buffer" + ("" if device.compute_units is not None else
                                                " (the device's SM count not given: taken above the 16 FlashInfer "
                                                "needs, the larger charge)"))
        else:
            extra, how = _triton_buffer(device, rows, vocabulary)
        return held + extra, (f"sampler over {rows} requests x {vocabulary} vocabulary with the warm-up parameters: "
                              f"{element_bytes}-byte logits and their float32 copy ({element_bytes + 4} bytes a "
                              f"logit), {how}, beside the dummy run's {tokens} hidden states and the sampled rows "
                              "(Model Runner V2: "
                              "gpu/model_runner.py _dummy_sampler_run, gpu/sample/sampler.py, topk_topp_sampler.py)")
    held = (tokens + 2 * rows) * hidden * element_bytes + logits
    if version == "0.11":
        per_logit = torch_sort_peak_per_logit(rows)
        return held + rows * vocabulary * per_logit, (
            f"sampler over {rows} requests x {vocabulary} vocabulary: {element_bytes}-byte logits, and at the "
            f"PyTorch-native top-k/top-p's sort the float32 logits, the sorted values, their int64 indices and "
            f"PyTorch's sort buffers ({element_bytes + per_logit} bytes a logit), beside the dummy run's {tokens} "
            "hidden states and two copies of the sampled rows (gpu_model_runner._dummy_sampler_run, sampler.py, "
            "topk_topp_sampler.py forward_native, torch SortStable.cu)")
    if rows < TRITON_TOP_K_TOP_P_MIN_ROWS:
        per_logit = max(torch_sort_peak_per_logit(rows), 4 + SORT_PATH_BYTES_PER_LOGIT, SAMPLER_FLOAT32_COPIES * 4)
        return held + rows * vocabulary * per_logit, (
            f"sampler over {rows} requests x {vocabulary} vocabulary: {element_bytes}-byte logits, and at "
            f"PyTorch's sort (below 8 rows, apply_top_k_top_p_pytorch) the float32 logits, the sorted values, their "
            f"int64 indices and PyTorch's sort buffers ({element_bytes + per_logit} bytes a logit), beside the dummy "
            f"run's {tokens} hidden states and two copies of the sampled rows (gpu_model_runner._dummy_sampler_run, "
            "sampler.py, topk_topp_sampler.py, torch SortStable.cu)")
    copies = SAMPLER_FLOAT32_COPIES * rows * vocabulary * 4
    top_k_top_p, how = _triton_buffer(device, rows, vocabulary)
    total = held + copies + top_k_top_p
    return total, (f"sampler over {rows} requests x {vocabulary} vocabulary: {element_bytes}-byte logits and three "
                   f"float32 copies ({element_bytes + 12} bytes a logit), {how}, beside the dummy run's {tokens} "
                   "hidden states and two copies of the sampled rows (gpu_model_runner._dummy_sampler_run, sampler.py, "
                   "topk_topp_sampler.py)")


def sampler_kept_bytes(spec: ModelSpec, rows: int, device: DeviceFacts, version: str) -> int:
    """What of the sampler pass (`sampler_pass_bytes`) over `rows` rows stays allocated after it: the Triton
    top-k/top-p buffer (`_triton_buffer`), which topk_topp_triton.py keeps in ``_TRITON_BUFFER_CACHE`` (0.19 from 8
    rows, 0.33 where FlashInfer's sampler does not run; no caller of ``reset_buffer_cache``), and on 0.33 with
    FlashInfer's sampler its 1 MiB row-state buffer (counted as kept: the safe side for what is released).  0.11's sort
    keeps nothing."""
    if not rows or version == "0.11" or (version != "0.33" and rows < TRITON_TOP_K_TOP_P_MIN_ROWS):
        return 0
    if version == "0.33" and flashinfer_sampler_supported(device):
        return FLASHINFER_ROW_STATES_BYTES
    return _triton_buffer(device, rows, spec.vocab_size)[0]


def sampler_state_bytes(spec: ModelSpec, max_num_seqs: int, version: str) -> int:
    """The sampler's per-request state vLLM `version` allocates on the last pipeline stage after the weights are
    measured and keeps: in 0.33's Model Runner V2, ``PenaltiesState`` (v1/worker/gpu/sample/penalties.py) holds
    ``output_bin_counts``, ``max_num_seqs x vocabulary`` int32, and ``prompt_bin_mask``, ``max_num_seqs x
    ceil(vocabulary / 32)`` int32, made with the ``Sampler`` in ``load_model`` after "Model loading took" is
    measured, so charged by 0.33's ``total_consumed`` (free device memory) against the KV cache; none in 0.11 and
    0.19 (the V1 runner applies penalties on the batch's logits)."""
    if version != "0.33":
        return 0
    vocabulary = spec.vocab_size
    return max_num_seqs * (vocabulary + -(-vocabulary // 32)) * 4


def grammar_bitmask_bytes(spec: ModelSpec, max_num_seqs: int, version: str) -> int:
    """The structured-output buffers vLLM `version` allocates on the device of the last pipeline stage after the
    weights are measured and keeps.  0.33's Model Runner V2 makes a ``StructuredOutputsWorker``
    (v1/worker/gpu/structured_outputs.py, ``__init__``) in ``load_model`` (v1/worker/gpu/model_runner.py), after
    "Model loading took" is measured and beside the ``Sampler`` (`sampler_state_bytes`), before the profiling run,
    so 0.33's ``total_consumed`` takes it from the KV cache as it takes the penalty state: a ``grammar_bitmask`` of
    ``max_num_logits x ceil(vocabulary / 32)`` int32 and ``logits_indices`` of ``max_num_logits`` int32, with
    ``max_num_logits = max_num_reqs x decode_query_len``; ``decode_query_len`` is ``num_speculative_steps + 1``
    (``num_new_sampled_tokens_per_step``, 1 in ModelState), so ``max_num_seqs`` rows where nibble plans 0.33 (its
    speculative decoding is refused: `vllm_speculative`).  None in 0.11 and 0.19: the V1 runner's bitmask is the
    scheduler's CPU array (v1/structured_output/__init__.py ``StructuredOutputManager``, the backend's
    ``allocate_token_bitmask``, xgrammar's a CPU tensor), copied to the device per step only when a request asks
    for structured output (v1/structured_output/utils.py ``apply_grammar_bitmask``: ``torch.from_numpy(...).to(
    device)``, 1/8 byte a logit, freed before the sampler's larger float32 copies, which the profiling run's sampler
    pass bounds)."""
    if version != "0.33":
        return 0
    return max_num_seqs * (-(-spec.vocab_size // 32) + 1) * 4
