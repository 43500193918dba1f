"""A plan of a sliding-window model fits only when vLLM's KV pool holds the requested sequences in its own blocks.

vLLM's hybrid KV cache manager holds a model's layers in groups of one attention kind, each group's block costing
``page x group size`` of the pool (kv_cache_utils.py ``get_num_blocks``), and frees a sliding layer's blocks only
whole blocks behind the window (single_type_kv_cache_manager.py ``SlidingWindowManager.get_num_skipped_tokens``:
``computed - window + 1``).  One request at its largest prefill step holds the window less one plus the tokens in
flight (kv_cache_interface.py ``SlidingWindowSpec.max_memory_usage_bytes``), the figure vLLM's start-up check
``check_enough_kv_cache_memory`` asks for and 0.33's admission gate reserves (kv_cache_manager.py
``allocate_slots(full_sequence_must_fit)``).  Counting each sliding layer at ``ceil(window / block)`` blocks per
sequence, the planner said these workloads fit where vLLM refuses to start or holds fewer sequences.  A sweep of
the sliding, chunked and hybrid presets (62,730 fitting plans) found 3,821 below vLLM's "Maximum concurrency" or
"GPU KV cache size"; 48 of them (13 below one request: vLLM refuses to start) beyond what vLLM's blocks hold, which
no longer fit (`kv_cache.WindowedKV`); vLLM's pool holds the rest, whose logged figures are not context x
sequences for such a model (the plan's note says so)."""

from __future__ import annotations

from quant_core.catalog import get_device, get_preset
from quant_core.planner import FormatPlan, Hardware, Plan, PlanOptions, Workload, plan


def _cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


#: the totals CUDA reported on the machines these cases were derived for (the catalog keeps the smallest public
#: figure, which moves): a T4 at 15.83 GiB (a Windows driver's figure, FramePack#608) and an L4 at 22.03 GiB
#: (ArcInstitute/evo2#190)
CASE_TOTALS_GIB = {"t4": 15.83, "l4": 22.03}


def _plan(preset: str, device: str, version: str, context_length: int, sequences: int, kv_cache_dtype: str) -> Plan:
    found = get_device(device)
    return plan(get_preset(preset), Hardware(round(CASE_TOTALS_GIB[device] * 2**30), 1, found.id, found.name,
                                             found.compute_capability, found.compute_units),
                Workload(context_length, sequences),
                PlanOptions(engine="vllm", engine_version=version, kv_cache_dtype=kv_cache_dtype))


def test_mistral_7b_on_a_t4_under_0_19_does_not_fit_one_8192_token_request_vllm_refuses_to_start() -> None:
    # Mistral-7B-v0.1: 32 sliding layers of window 4,096, 8 KV heads x 128, fp8: 2,048 bytes a token a layer, one
    # group of 32 layers (page 32,768 bytes).  On a T4 vLLM 0.19 runs 2,048 batched tokens (arg_utils.py
    # get_batch_defaults), so one request of 8,192 tokens needs cdiv(min(4,095 + 2,048, 8,192), 16) + 1 = 385
    # blocks; the pool left beside the bf16 weights holds 266 (vLLM's "Maximum concurrency" 0.69x): vLLM raises
    # "To serve at least one request with the models's max seq len (8192) ...".  The planner said it fits, holding
    # 256 blocks (the window) a sequence.
    primary = _plan("mistral-7b-v0.1", "t4", "0.19", 8192, 1, "fp8").comparison["bf16"]
    page, layers = 16 * 2048, 32
    num_blocks = primary.kv_pool_bytes // (page * layers)
    assert num_blocks == 266 and 256 <= num_blocks < 385
    assert primary.engine_max_concurrency is not None and primary.engine_max_concurrency < 1
    assert not primary.fits
    # the longest context is vLLM's own estimate_max_model_len for that pool: the largest L with
    # 32 x (cdiv(min(4,095 + 2,048, L), 16) + 1) pages within it
    longest = max(length for length in range(1, 8193)
                  if layers * (_cdiv(min(4095 + 2048, length), 16) + 1) * page <= primary.kv_pool_bytes)
    assert longest == 4240
    # ... but no context fits: the fp8 cache runs on FlashInfer on a T4 (7.5, heads of 128), whose 394 MiB
    # workspace comes after the KV pool is sized (flashinfer.py _get_workspace_buffer), beside the start-up memory
    # (0.51 GiB) and the CUDA graphs (0.97 GiB): 1.87 GiB outside a budget that leaves 1.58 GiB free (it was 4,240
    # tokens before the workspace was charged)
    assert primary.max_context_length is None


def _gpt_oss_blocks(primary: FormatPlan, context_length: int) -> tuple[int, int, int]:
    """(pool blocks, blocks of one decoding sequence, blocks of one request at its peak) of gpt-oss-20b under vLLM
    0.33 at fp8 KV on one L4: 12 sliding layers of window 128 and 12 full, 8 KV heads x 64, 1,024 bytes a token a
    layer; groups of 12 layers, a block 16 x 1,024 x 12 bytes of the pool."""
    num_blocks = primary.kv_pool_bytes // (16 * 1024 * 12)
    full = _cdiv(context_length, 16)
    # decoding: the window spans 128 tokens + the step in flight behind (0.33 frees from the settled tokens)
    decode = full + _cdiv(128 - 1 + 1, 16) + 1
    # one request at its peak: the window less one plus 0.33's two batches of 2,048 in flight (L4), capped at L
    peak = full + _cdiv(min(128 - 1 + 2 * 2048, context_length), 16) + 1
    return num_blocks, decode, peak


def test_gpt_oss_20b_on_an_l4_under_0_33_fits_only_the_sequences_vllm_s_blocks_hold() -> None:
    # 256 sequences of 2,048 tokens: each decoding sequence spans 9 blocks of its sliding group (not the 8 of a
    # window of 128), 137 blocks in all; the pool holds 30,385 blocks, fewer than 255 x 137 + 257 = 35,192.  The
    # planner said 256 fit (8 blocks a window: 256 x 136 = 34,816).  The pool was 34,861 blocks (253 sequences) with
    # a fixed 0.39 GiB graph estimate; 0.33's is 386 MiB + 24 layers x 4.25 MiB + gpt_oss's 745 MiB, 1.20 GiB; then
    # Model Runner V2's structured-output bitmask, 256 x (ceil(201,088 / 32) + 1) x 4 = 6,435,840 bytes: 33 blocks
    # of 196,608 fewer (30,418 and 221 sequences before)
    primary = _plan("gpt-oss-20b", "l4", "0.33", 2048, 256, "fp8").comparison["int4"]
    num_blocks, decode, peak = _gpt_oss_blocks(primary, 2048)
    assert (num_blocks, decode, peak) == (30_385, 137, 257)
    assert not primary.fits
    assert primary.max_concurrent_sequences == 1 + (num_blocks - peak) // decode == 220


def test_a_sliding_window_plan_holds_more_sequences_than_vllm_s_maximum_concurrency_and_says_why() -> None:
    # vLLM's "Maximum concurrency" reserves the peak (4,096 tokens in flight) for every request at once: 118.2x;
    # the scheduler has one step in flight over all sequences, so the pool holds 220 at once.  The plan says so
    # (135.6x and 253 with a fixed 0.39 GiB graph estimate; 118.4x and 221 before the structured-output bitmask)
    result = _plan("gpt-oss-20b", "l4", "0.33", 2048, 128, "fp8")
    primary = result.comparison["int4"]
    num_blocks, decode, peak = _gpt_oss_blocks(primary, 2048)
    assert primary.fits
    assert primary.engine_max_concurrency == num_blocks / peak
    assert 1 <= primary.engine_max_concurrency < 220 == primary.max_concurrent_sequences
    assert primary.devices[0].kv_cache_bytes == (127 * decode + peak) * 16 * 1024 * 12
    note = next(warning for warning in result.warnings if "groups of 12" in warning)
    assert "137 blocks" in note and "257" in note and "Maximum concurrency" in note


def test_a_model_without_windows_fits_only_within_vllm_s_own_maximum_concurrency() -> None:
    # every layer full attention: vLLM's blocks are the layers' own figure, and its concurrency bounds the plan
    result = _plan("llama-3.1-8b", "l4", "0.33", 8192, 4, "bf16")
    for key, format_plan in result.comparison.items():
        if format_plan.fits:
            assert format_plan.engine_max_concurrency is not None, key
            assert format_plan.engine_max_concurrency >= 4, key
        assert format_plan.engine_max_concurrency is not None
        assert format_plan.max_concurrent_sequences == int(format_plan.engine_max_concurrency), key
