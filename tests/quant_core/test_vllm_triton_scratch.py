"""TRITON_ATTN's split-KV decode scratch in vLLM 0.19 and 0.33, and FlashInfer's attention workspace, charged outside
``gpu_memory_utilization``.

Every figure is worked from v1/attention/backends/triton_attn.py ``TritonAttentionMetadataBuilder.__init__`` (0.19.0,
0.33.0): ``seq_threshold_3D = MIN_LAUNCH_GRID_SIZE_2D (128) // kv heads a rank``, moved to the closest CUDA-graph
capture size unless eager; 0.33 caps it at ``max_num_seqs`` and on 12.0 runs 64 segments; three fp32 tensors,
``softmax_segm_output`` rows x query heads x segments x next_power_of_2(head), ``softmax_segm_max`` and
``softmax_segm_expsum`` rows x query heads x segments.  One builder per KV cache group (gpu_model_runner.py
``initialize_metadata_builders``), made in ``initialize_kv_cache`` after the KV cache is sized."""

from __future__ import annotations

from quant_core.catalog import UNKNOWN_DEVICE, device_facts, get_preset
from quant_core.engines import BatchLimits, Stage
from quant_core.engines.vllm import flashinfer_workspace, outside_budget, triton_decode_scratch
from quant_core.engines.vllm_attention import attention_backend_name

LIMITS = BatchLimits(8192, 256)
MIB = 1 << 20


def _scratch(rows: int, heads_q: int, segments: int, head_padded: int) -> int:
    """The three tensors' bytes: output rows x heads x segments x head, max and expsum rows x heads x segments."""
    return rows * heads_q * segments * head_padded * 4 + 2 * rows * heads_q * segments * 4


def _llama(tp: int = 1) -> Stage:
    spec = get_preset("llama-3.1-8b")
    return Stage(spec, tp, 1, (0, spec.num_layers), True)


def test_llama_int8_per_token_head_on_h100_under_0_33_holds_4_mib_and_64_kib_of_triton_scratch() -> None:
    # 128 // 8 KV heads = 16 rows (a capture size), 32 query heads, 16 segments, head 128: 4 MiB + 2 x 32 KiB
    term = triton_decode_scratch(_llama(), "int8_per_token_head", LIMITS, "0.33", device=device_facts("h100-80gb"))
    assert term is not None and term.bytes == _scratch(16, 32, 16, 128) == 4_259_840
    assert "TRITON_ATTN" in term.basis and "initialize_metadata_builders" in term.basis
    budget = outside_budget(_llama(), "int8_per_token_head", LIMITS, "0.33", device=device_facts("h100-80gb"))
    assert budget.scratch == term
    # beside the start-up memory and what the graphs may take beyond 0.33's estimate (`vllm_graphs.graph_spill`)
    assert budget.graph is not None
    assert budget.bytes_at(4096) == budget.startup.bytes + budget.graph.bytes + 4_259_840


def test_per_rank_heads_keep_llamas_scratch_at_4_mib_under_tensor_parallelism() -> None:
    # TP 2: 16 query heads, 4 KV heads, 128 // 4 = 32 rows; TP 8: 4 and 1, 128 rows
    h100 = device_facts("h100-80gb")
    for tp, rows, heads in ((2, 32, 16), (8, 128, 4)):
        term = triton_decode_scratch(_llama(tp), "int8_per_token_head", LIMITS, "0.33", device=h100)
        assert term is not None and term.bytes == _scratch(rows, heads, 16, 128)


def test_0_33_caps_the_rows_at_max_num_seqs_and_0_19_moves_them_to_a_capture_size() -> None:
    v100 = device_facts("v100-32gb")  # 7.0: neither FlashAttention nor FlashInfer, TRITON_ATTN for a 16-bit cache
    assert attention_backend_name("0.19", _llama().spec, "auto", (7, 0)) == "TRITON_ATTN"
    # 5 sequences: 0.33 min(16, 5) = 5 rows; 0.19's capture sizes up to min(2 x 5, 512) = 10 are 1, 2, 4, 8, and 8 is
    # the closest to 16
    small = BatchLimits(8192, 5)
    term = triton_decode_scratch(_llama(), "fp16", small, "0.33", device=v100)
    assert term is not None and term.bytes == _scratch(5, 32, 16, 128)
    term = triton_decode_scratch(_llama(), "fp16", small, "0.19", device=v100)
    assert term is not None and term.bytes == _scratch(8, 32, 16, 128)
    # --enforce-eager: decode_cudagraph_enabled is False, the threshold stays 16
    term = triton_decode_scratch(_llama(), "fp16", small, "0.19", enforce_eager=True, device=v100)
    assert term is not None and term.bytes == _scratch(16, 32, 16, 128)


def test_sm120_runs_64_segments_under_0_33() -> None:
    # RTX 5090 (12.0, 170 SMs), 4 sequences: (170 - 1) // (16 x 8) = 1 request at 64 segments; rows
    # max(min(1, 4), ceil(4 / 4)) = 1: 1 x 32 x 64 x 128 fp32 (the 16-segment layout would be 4 rows)
    term = triton_decode_scratch(_llama(), "int8_per_token_head", BatchLimits(8192, 4), "0.33",
                                 device=device_facts("rtx-5090"))
    assert term is not None and term.bytes == _scratch(1, 32, 64, 128)
    assert "64 segments" in term.basis


def test_one_builder_per_kv_cache_group_for_sliding_window_models() -> None:
    # Gemma-2-9B: 21 sliding + 21 full layers, two KV cache groups, two builders; 16 query / 8 KV heads of 256
    spec = get_preset("gemma-2-9b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = triton_decode_scratch(stage, "bf16", LIMITS, "0.19", device=device_facts("v100-32gb"))
    assert term is not None and term.bytes == 2 * _scratch(16, 16, 16, 256)


def test_no_scratch_where_flashattention_or_flashinfer_runs_or_under_0_11() -> None:
    h100, l40s = device_facts("h100-80gb"), device_facts("l40s")
    assert triton_decode_scratch(_llama(), "bf16", LIMITS, "0.19", device=h100) is None  # FLASH_ATTN
    assert triton_decode_scratch(_llama(), "fp8", LIMITS, "0.19", device=h100) is None  # FlashAttention 3, fp8
    assert attention_backend_name("0.19", _llama().spec, "fp8_e4m3", (8, 9)) == "FLASHINFER"
    assert triton_decode_scratch(_llama(), "fp8", LIMITS, "0.33", device=l40s) is None  # FlashInfer, heads of 128
    # 0.11's TritonAttentionMetadataBuilder allocates no scratch
    assert triton_decode_scratch(_llama(), "fp8", LIMITS, "0.11", device=l40s) is None


def test_fp8_cache_of_heads_flashinfer_does_not_take_runs_on_triton_from_8_9() -> None:
    # Phi-3-mini: heads of 96 (FlashInfer takes 64/128/256), 32 query = 32 KV heads: 128 // 32 = 4 rows, head padded
    # to 128
    spec = get_preset("phi-3-mini-4k-instruct")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    assert attention_backend_name("0.19", spec, "fp8_e4m3", (8, 9)) == "TRITON_ATTN"
    term = triton_decode_scratch(stage, "fp8", LIMITS, "0.19", device=device_facts("l40s"))
    assert term is not None and term.bytes == _scratch(4, 32, 16, 128)


def test_a_device_not_known_is_charged_the_largest_over_the_devices_vllm_runs() -> None:
    # Llama's 16-bit cache runs on TRITON_ATTN on a V100 (7.0), so a plan for a device given in bytes is charged it
    term = triton_decode_scratch(_llama(), "bf16", LIMITS, "0.19", device=UNKNOWN_DEVICE)
    assert term is not None and term.bytes == _scratch(16, 32, 16, 128)
    assert "not known" in term.basis


# --- FlashInfer's attention workspace (flashinfer.py _get_workspace_buffer), allocated by each builder's first build


def test_flashinfer_workspace_of_llamas_fp8_cache_on_an_l40s_is_394_mib_outside_0_19s_budget() -> None:
    l40s = device_facts("l40s")
    term = flashinfer_workspace(_llama(), "fp8", LIMITS, "0.19", device=l40s)
    assert term is not None and term.bytes == 394 * MIB  # envs.py VLLM_FLASHINFER_WORKSPACE_BUFFER_SIZE
    budget = outside_budget(_llama(), "fp8", LIMITS, "0.19", device=l40s)
    assert budget.workspace == term and budget.scratch is None
    assert budget.graph is not None
    assert budget.bytes_at(4096) == budget.startup.bytes + budget.graph.bytes + 394 * MIB


def test_0_33_holds_the_workspace_in_its_graph_estimate_and_charges_it_outside_only_when_eager() -> None:
    l40s = device_facts("l40s")
    assert flashinfer_workspace(_llama(), "fp8", LIMITS, "0.33", device=l40s) is None
    # eager: max(394 MiB, 8,192 tokens x 32 heads x 128 x 16 bytes = 512 MiB); at TP 2, 16 heads: 256 MiB, so 394
    term = flashinfer_workspace(_llama(), "fp8", LIMITS, "0.33", enforce_eager=True, device=l40s)
    assert term is not None and term.bytes == 8192 * 32 * 128 * 16 == 512 * MIB
    term = flashinfer_workspace(_llama(2), "fp8", LIMITS, "0.33", enforce_eager=True, device=l40s)
    assert term is not None and term.bytes == 394 * MIB


def test_flashinfer_workspace_per_kv_cache_group_and_0_11s_256_mib() -> None:
    spec = get_preset("gemma-2-9b")  # heads of 256: FlashInfer on 8.9 for an fp8 cache; two KV cache groups
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = flashinfer_workspace(stage, "fp8", LIMITS, "0.19", device=device_facts("l40s"))
    assert term is not None and term.bytes == 2 * 394 * MIB
    # 0.11 prefers FlashInfer on 10.0 for an fp8 cache: its FLASHINFER_WORKSPACE_BUFFER_SIZE, 256 MiB
    term = flashinfer_workspace(_llama(), "fp8", LIMITS, "0.11", device=device_facts("b200"))
    assert term is not None and term.bytes == 256 * MIB


def test_no_flashinfer_workspace_where_flashattention_runs_and_the_largest_where_the_device_is_not_known() -> None:
    assert flashinfer_workspace(_llama(), "bf16", LIMITS, "0.19", device=device_facts("h100-80gb")) is None
    # a device not known may be one whose fp8 cache runs on FLASHINFER (8.x, 10.0, 12.0): the safe side, 394 MiB, as
    # Triton's decode scratch is charged (None before: FlashInfer's workspace was charged nowhere)
    term = flashinfer_workspace(_llama(), "fp8", LIMITS, "0.19", device=UNKNOWN_DEVICE)
    assert term is not None and term.bytes == 394 * MIB and "not known" in term.basis
