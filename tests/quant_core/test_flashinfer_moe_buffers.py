"""FlashInfer's CUTLASS MoE buffers under vLLM 0.19 and 0.33, by hand from the code: the profiler workspace kept after
the kernel warm-up (outside the budget) and, inside the profiling run, FlashInferExperts' workspace-manager view and
the CUTLASS workspace each MoE layer allocates (fused_moe_caches).

Read in vllm 0.19.0 (the wheel from PyPI) and flashinfer-python 0.6.6 (the version it pins):

* vllm v1/worker/gpu_worker.py: ``compile_or_warm_up_model`` runs ``kernel_warmup`` after ``initialize_from_config``
  has allocated the KV cache; model_executor/warmup/kernel_warmup.py ``flashinfer_autotune`` (on by default from -O1,
  config/vllm.py ``enable_flashinfer_autotune``, on compute capability 9.0 and up) runs one dummy batch under
  FlashInfer's ``autotune()``.
* vllm fused_moe/oracle/fp8.py: for fp8 weights and static per-tensor activation scales FLASHINFER_CUTLASS comes before
  TRITON; FlashInferExperts (fused_moe/flashinfer_cutlass_moe.py) runs on 9.0 and the 10.x, 11.x, 12.x families and
  passes ``tune_max_num_tokens = max(max_cudagraph_capture_size, 1)`` (512 at the default capture sizes; 0 under
  enforce_eager).
* flashinfer fused_moe/core.py ``cutlass_fused_moe``: ``choose_one`` for GEMM 1 then GEMM 2, the buckets 1 .. 512
  ascending (autotuner.py), each calling ``run_gemm_profile(do_preparation=True)``, which replaces the C++ runner's
  ``mProfileWorkspace`` (flashinfer_cutlass_fused_moe_binding.cu); the runner is kept in ``MoERunner.runner_dict``.
* flashinfer cutlass_fused_moe_kernels.cuh ``GemmProfilerBackend::getProfilerWorkspaces`` for GEMM 2, every buffer
  rounded up to ``kCudaMemAlign`` = 128 bytes (tensorrt_llm/common/workspace.h).
"""

from __future__ import annotations

from dataclasses import replace

from quant_core.catalog import device_facts, get_device, get_preset
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_moe_buffers import (
    cutlass_moe_profiler_workspace_bytes,
    cutlass_moe_runtime_workspace_bytes,
    cutlass_moe_tokens_per_block,
    flashinfer_moe_autotune_buffer,
    flashinfer_tuning_tokens,
    fused_moe_caches,
)
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

H100 = device_facts("h100-80gb")
A100 = device_facts("a100-80gb")
B200 = device_facts("b200")
RTX_PRO_6000 = device_facts("rtx-pro-6000")
DEFAULTS = BatchLimits(8192, 1024)  # the OpenAI server's defaults on an H100 (EngineArgs.get_batch_defaults)


def aligned(size: int) -> int:
    return -(-size // 128) * 128


def test_qwen3_30b_a3b_fp8_static_on_an_h100_keeps_a_20_mib_cutlass_profiler_workspace_on_vllm_0_19() -> None:
    # Qwen3-30B-A3B (128 experts, top 8, hidden 2048, width 768), one H100, max_num_seqs 1024: the largest capture
    # size is min(2 x 1024, 512) = 512, a power of two, so GEMM 2 is prepared last at M = 512 tokens, M x k = 4096.
    # computeNumTokensPerBlock(512, 128): 32 -> 16 x 128 > 32, 64 -> 8 x 128 > 64, 128 -> 4 x 128 > 128,
    # 256 -> 2 x 128 = 256: 256 tokens a block, 2 blocks.
    expanded = 512 * 8
    by_hand = (aligned(129 * 8 * 16)  # expert_first_token_offset, 16 routing samples
               + 3 * aligned(16 * expanded * 4)  # the two row maps and token_selected_experts
               + aligned(expanded * 4)  # permuted_token_selected_experts
               + 2 * aligned(128 * 2 * 4)  # blocked_expert_counts and its cumsum
               + aligned(128 * 512 * 4)  # blocked_row_to_unpermuted_row
               + aligned(expanded * 4)  # token_topk_unpermuted_scales
               + aligned(768 * expanded * 1)  # input: fp8 activations
               + aligned(2048 * 2)  # output: hidden x bf16, no token factor
               + aligned(2048 * expanded * 2)  # intermediate: bf16
               + aligned(128 * 4) + aligned(4) + aligned(128 * 4)  # quant_1..3, fp8 weight scales
               + aligned(128 * 8))  # alpha_scale_ptr_array
    assert by_hand == 21_029_120
    assert cutlass_moe_tokens_per_block(512, 128) == 256
    assert cutlass_moe_profiler_workspace_bytes(tokens=512, experts=128, top_k=8, hidden=2048, width=768,
                                                activation_bytes=1) == by_hand
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", H100)
    assert term is not None and term.bytes == by_hand
    assert "mProfileWorkspace" in term.basis and "after the KV cache is sized" in term.basis
    budget = VllmProfile("0.19").outside_budget(stage, "auto", DEFAULTS, False, H100, "fp8-per-tensor-static")
    without = VllmProfile("0.19").outside_budget(stage, "auto", DEFAULTS, False, H100)
    assert budget.bytes_at(32_768) - without.bytes_at(32_768) == by_hand
    assert "mProfileWorkspace" in budget.basis_at(32_768)


def test_the_tuned_token_count_follows_the_capture_sizes_and_is_one_under_enforce_eager() -> None:
    # max(max_cudagraph_capture_size, 1), then its largest power of two (get_last_power_of_2_num_tokens_buckets)
    assert flashinfer_tuning_tokens("0.19", DEFAULTS, enforce_eager=False) == 512
    assert flashinfer_tuning_tokens("0.19", BatchLimits(2048, 100), enforce_eager=False) == 128  # 200 -> 128
    assert flashinfer_tuning_tokens("0.19", DEFAULTS, enforce_eager=True) == 1
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    eager = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", H100, True)
    # M = 1, k = 8: computeNumTokensPerBlock(1, 128) = 128 (1 block x 128 experts <= 128), so the block counts are
    # 128 x 1 x 4 each; a 128-byte line for each buffer under 128 bytes
    assert eager is not None and eager.bytes == (aligned(129 * 8 * 16)  # expert_first_token_offset
                                                 + 3 * aligned(16 * 8 * 4)  # the maps, token_selected_experts
                                                 + aligned(8 * 4)  # permuted_token_selected_experts
                                                 + 2 * aligned(128 * 1 * 4)  # blocked_expert_counts, cumsum
                                                 + aligned(128 * 1 * 4)  # blocked_row_to_unpermuted_row
                                                 + aligned(8 * 4)  # token_topk_unpermuted_scales
                                                 + aligned(768 * 8) + aligned(2048 * 2) + aligned(2048 * 8 * 2)
                                                 + aligned(128 * 4) + aligned(4) + aligned(128 * 4)
                                                 + aligned(128 * 8)) == 65_024


def test_block_fp8_experts_under_expert_parallelism_on_an_h100_take_the_cutlass_path_with_bf16_activations() -> None:
    # oracle/fp8.py: on 9.0, block fp8 with ep_size > 1 puts FLASHINFER_CUTLASS first; FlashInferExperts hands it
    # bf16 hidden states (expects_unquantized_inputs), the CutlassMoeFCRunner<bf16, fp8> profiler's 2-byte input.
    # Qwen3-30B-A3B over 4 ranks: 32 whole experts a rank at width 768.
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 4, 1, (0, spec.num_layers), True, expert_parallel=True)
    term = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-block128", H100)
    assert term is not None
    assert term.bytes == cutlass_moe_profiler_workspace_bytes(tokens=512, experts=32, top_k=8, hidden=2048, width=768,
                                                              activation_bytes=2)
    # under tensor parallelism Triton comes first on 9.0: nothing kept
    assert flashinfer_moe_autotune_buffer(Stage(spec, 4, 1, (0, spec.num_layers), True), "0.19", DEFAULTS,
                                          "fp8-block128", H100) is None


def test_no_cutlass_profiler_workspace_where_vllm_0_19_runs_other_experts() -> None:
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    # A100: FlashInferExperts runs from 9.0 only; bf16 and dynamic fp8 experts run Triton; other releases not read
    assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", A100) is None
    assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "bf16", H100) is None
    assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor", H100) is None
    assert flashinfer_moe_autotune_buffer(stage, "0.11", DEFAULTS, "fp8-per-tensor-static", H100) is None
    # the 10.x and 12.x families run it too (FlashInferExperts._supports_current_device)
    for device in (B200, RTX_PRO_6000):
        assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", device) is not None
    dense = get_preset("llama-3.1-8b")
    assert flashinfer_moe_autotune_buffer(Stage(dense, 1, 1, (0, dense.num_layers), True), "0.19", DEFAULTS,
                                          "fp8-per-tensor-static", H100) is None


def test_vllm_0_33_keeps_it_at_flashinfer_0_7_2s_8192_token_default_eager_or_not() -> None:
    # vLLM 0.33's FlashInferExperts (fused_moe/experts/flashinfer_cutlass_moe.py apply) passes no tune_max_num_tokens:
    # flashinfer 0.7.2.post1 cutlass_fused_moe's default 8192 is the last hybrid bucket (get_hybrid_num_tokens_buckets
    # appends max_num_tokens), whatever the capture sizes.  Qwen3-30B-A3B on one H100: M x k = 65,536;
    # computeNumTokensPerBlock(8192, 128) = 1024 (8 blocks x 128 experts = 1024), 8 blocks.
    expanded = 8192 * 8
    by_hand = (aligned(129 * 8 * 16) + 3 * aligned(16 * expanded * 4) + aligned(expanded * 4)
               + 2 * aligned(128 * 8 * 4) + aligned(128 * 8192 * 4) + aligned(expanded * 4)
               + aligned(768 * expanded) + aligned(2048 * 2) + aligned(2048 * expanded * 2)
               + aligned(128 * 4) + aligned(4) + aligned(128 * 4) + aligned(128 * 8))
    assert by_hand == 336_099_584  # 320.5 MiB
    assert cutlass_moe_tokens_per_block(8192, 128) == 1024
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    for eager in (False, True):
        term = flashinfer_moe_autotune_buffer(stage, "0.33", DEFAULTS, "fp8-per-tensor-static", H100, eager)
        assert term is not None and term.bytes == by_hand
    # 0.33's FlashInferExperts leaves out the 11.x family (flashinfer#3134); 12.x runs it
    thor = replace(B200, compute_capability=(11, 0))
    assert flashinfer_moe_autotune_buffer(stage, "0.33", DEFAULTS, "fp8-per-tensor-static", thor) is None
    assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", thor) is not None
    assert flashinfer_moe_autotune_buffer(stage, "0.33", DEFAULTS, "fp8-per-tensor-static", RTX_PRO_6000) is not None


def test_a_plan_of_a_static_fp8_moe_checkpoint_on_an_h100_charges_it_outside_the_budget() -> None:
    # {"quant_method": "fp8", "activation_scheme": "static"} (AutoFP8's per-tensor checkpoints): the plan's device
    # needs the 21,029,120 bytes more outside gpu_memory_utilization than with the block-fp8 checkpoint, whose experts
    # run Triton under tensor parallelism on 9.0 (the rest of what lies outside the budget is the same)
    spec = get_preset("qwen3-30b-a3b")
    static = scheme_from_quantization_config({"quant_method": "fp8", "activation_scheme": "static"})
    block = scheme_from_quantization_config({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]})
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    answers = [plan(spec, hardware, Workload(32_768, 1), PlanOptions(engine_version="0.19", scheme=scheme))
               for scheme in (static, block)]
    static_device, block_device = (answer.primary.devices[0] for answer in answers)
    assert static_device.outside_budget_bytes - block_device.outside_budget_bytes == 21_029_120


def cutlass_runtime_by_hand(*, tokens: int, experts: int, top_k: int, hidden: int, width: int, finalize: bool) -> int:
    """getWorkspaceDeviceBufferSizes for fp8 x fp8 -> bf16, gated, plus the binding's src_to_dest_map."""
    expanded, per_block = tokens * top_k, 32
    while per_block < 1024 and -(-tokens // per_block) * experts > per_block:
        per_block *= 2
    blocks = -(-tokens // per_block)
    runner = (2 * aligned(expanded * 4) + 2 * aligned(experts * blocks * 4) + aligned(experts * tokens * 4)
              + aligned((experts + 1) * 8) + (aligned(expanded * 4) if finalize else 0)
              + aligned(expanded * max(2 * hidden, width))  # fp8 permuted rows | bf16 GEMM 2 result | fp8 act output
              + aligned(expanded * max(4 * width, 2 * hidden))  # bf16 GLU input (2 x width) | GEMM 2 result
              + 2 * aligned(experts * 8))
    return runner + aligned(expanded * 4)


def test_flashinfer_experts_hold_one_tokens_x_hidden_view_and_allocate_the_cutlass_workspace_per_layer() -> None:
    # vLLM 0.19 flashinfer_cutlass_moe.py FlashInferExperts.workspace_shapes: workspace1 (M, K), workspace2 (0,),
    # output (M, K); modular_kernel.py _allocate_buffers asks the workspace manager for max(M x K, M x K) bf16 and
    # (0,): 8192 x 2048 x 2 = 33,554,432 bytes, kept.  Inside each MoE layer FlashInfer allocates its CUTLASS
    # workspace: k x M = 65,536 rows, computeNumTokensPerBlock(8192, 128) = 1024 (8 blocks), on 9.0 the finalize is
    # fused (permuted_token_final_scales): 2 x 262,144 + 2 x 4,096 + 4,194,304 + 1,152 + 262,144 + 65,536 x 4,096 +
    # 65,536 x 4,096 + 2 x 1,024, and the src_to_dest_map 262,144.
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", H100)
    assert caches.nbytes == 33_554_432 and caches.persists
    assert caches.transient == cutlass_runtime_by_hand(tokens=8192, experts=128, top_k=8, hidden=2048, width=768,
                                                       finalize=True) == 542_125_184
    assert caches.transient == cutlass_moe_runtime_workspace_bytes(tokens=8192, experts=128, top_k=8, hidden=2048,
                                                                   width=768, finalize_fused=True)
    assert "FlashInferExperts" in caches.basis
    later = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-per-tensor-static", H100)
    assert (later.nbytes, later.transient) == (caches.nbytes, caches.transient)
    # 12.x: the fp8 x fp8 runner has no TMA warp-specialized GEMM there (moe_tma_warp_specialized_traits.h), so no
    # fused finalize and no permuted_token_final_scales
    pro = fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", RTX_PRO_6000)
    assert pro.transient == 542_125_184 - 262_144
    # 10.x: TRT-LLM's per-tensor kernel may run instead (routing not in the model): TritonExperts' figure, kept,
    # and the 48,831,488 bytes TRT-LLM's per-call buffers take beyond it (was 0: Triton's was taken as the safe
    # side; test_fused_moe_caches.py derives TRT-LLM's 552,147,968 from FlashInfer 0.6.6, above the CUTLASS figure)
    assert fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", B200).transient == 48_831_488
    assert "TritonExperts" in fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", B200).basis


def test_the_profiling_peak_of_static_fp8_qwen3_moe_on_an_h100_charges_flashinfers_buffers_not_tritons() -> None:
    # Before, TritonExperts' 536,870,912 bytes (8192 x 8 x (2048 + 2048) x 2) were charged, kept under the sampler
    # pass; FlashInferExperts keeps 33,554,432.  At the default limits the sampler pass over 1024 rows sets the peak
    # in both, so the activation falls by the difference; with one sequence the forward pass sets it, where the MoE
    # layer holds the residual stream (3 x 2048 x 2 bytes a token) beside the CUTLASS workspace: max(8192 x 2 x
    # (6144 + 9216) attention, 8192 x 2 x 6144 + 542,125,184) + 33,554,432 = 676,342,912 against Triton's
    # max(251,658,240, 100,663,296) + 536,870,912 = 788,529,152.
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    profile = VllmProfile("0.19")
    triton, static = (profile.activation(stage, DEFAULTS, expert_format, H100).bytes
                      for expert_format in ("fp8-block128", "fp8-per-tensor-static"))
    assert triton - static == 536_870_912 - 33_554_432
    one = BatchLimits(8192, 1)
    triton, static = (profile.activation(stage, one, expert_format, H100).bytes
                      for expert_format in ("fp8-block128", "fp8-per-tensor-static"))
    assert triton - static == 788_529_152 - 676_342_912


def test_nvfp4_experts_on_an_rtx_pro_6000_run_flashinfers_cutlass_experts_and_keep_its_profiler_workspace() -> None:
    # oracle/nvfp4.py select_nvfp4_moe_backend: FLASHINFER_TRTLLM and FLASHINFER_CUTEDSL need the 10.x family, so on
    # 12.0 FLASHINFER_CUTLASS (FlashInferExperts, NVFP4 from 10.0) runs them.  Profiler workspace (GEMM 2, M = 512,
    # k x M = 4096, fp4 activations half a byte): routing 1,099,904 bytes as for fp8; input 768 x 4096 / 2; output
    # 2048 x 2; intermediate 2048 x 4096 x 2; alpha pointers 1,024; quant_1 4, quant_2 128 x 768 x 2048 / 16 (flashinfer
    # 0.6.6 sizes GEMM 1's scales by the width), quant_3 512, quant_4 4, quant_5 128 x 2048 x 768 / 16, quant_6 512;
    # fp4_act_scale_flat (4096 + 128 x 127 = 20,352 rows, already a multiple of 128) x 2048 / 16.
    routing = (aligned(129 * 8 * 16) + 3 * aligned(16 * 4096 * 4) + aligned(4096 * 4) + 2 * aligned(128 * 2 * 4)
               + aligned(128 * 512 * 4) + aligned(4096 * 4))
    by_hand = (routing + aligned(768 * 4096 // 2) + aligned(2048 * 2) + aligned(2048 * 4096 * 2) + aligned(128 * 8)
               + aligned(4) + aligned(128 * 768 * 2048 // 16) + aligned(128 * 4) + aligned(4)
               + aligned(128 * 2048 * 768 // 16) + aligned(128 * 4) + aligned(20_352 * 2048 // 16))
    assert routing == 1_099_904 and by_hand == 47_227_264
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "nvfp4", RTX_PRO_6000)
    assert term is not None and term.bytes == by_hand
    # 0.7.2.post1 sizes quant_2 by fc1_out_size (2 x 768) and tunes to 8192 tokens on 0.33
    later = flashinfer_moe_autotune_buffer(stage, "0.33", DEFAULTS, "nvfp4", RTX_PRO_6000)
    assert later is not None and later.bytes == cutlass_moe_profiler_workspace_bytes(
        tokens=8192, experts=128, top_k=8, hidden=2048, width=768, activation_bytes=1, nvfp4="0.33")
    assert later.bytes - cutlass_moe_profiler_workspace_bytes(
        tokens=8192, experts=128, top_k=8, hidden=2048, width=768, activation_bytes=1, nvfp4="0.19") == (
        aligned(128 * 1536 * 2048 // 16) - aligned(128 * 768 * 2048 // 16))
    # inside the profiling run: the same kept view; the CUTLASS workspace with packed fp4 rows, their scales
    # ((65,536 + 16,256) rows x 2048 / 16) and the fused finalize of the fp4 x fp4 TMA grouped GEMM on 12.x
    caches = fused_moe_caches(spec, 1, 8192, "0.19", "nvfp4", RTX_PRO_6000)
    expanded = 65_536
    assert caches.nbytes == 33_554_432
    assert caches.transient == (2 * aligned(expanded * 4) + 2 * aligned(128 * 8 * 4) + aligned(128 * 8192 * 4)
                                + aligned(129 * 8) + aligned(expanded * 4) + aligned(expanded * 4096)
                                + aligned(expanded * 4096) + 2 * aligned(128 * 8) + aligned(81_792 * 2048 // 16)
                                + aligned(expanded * 4)) == 552_594_560
    # on the B200 TRT-LLM's or CuTe DSL's kernels take NVFP4 experts: not this path
    assert flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "nvfp4", B200) is None
    assert fused_moe_caches(spec, 1, 8192, "0.19", "nvfp4", B200).transient == 0


def test_a_device_of_unknown_capability_keeps_the_largest_profiler_workspace_any_capability_keeps() -> None:
    # A hardware given in bytes may be any device FlashInferExperts runs on (9.0 and the 10.x, 11.x and 12.x
    # families, FlashInferExperts._supports_current_device): it was charged no profiler workspace (the capability
    # unknown, flashinfer_cutlass_moe_path None), now the largest any keeps: Qwen3-30B-A3B static fp8 on 0.19 keeps
    # the H100's 21,029,120 bytes; DeepSeek-V3 NVFP4 at TP 8 on 0.33 the RTX PRO 6000's (12.x: 0.33 runs NVFP4 on
    # FlashInferExperts there, TRT-LLM's kernels on 10.x keep none: their launchers live for one call,
    # trtllm_fused_moe_kernel_launcher.cu launchers_map)
    unknown = replace(H100, device_id="", compute_capability=None, compute_units=None)
    spec = get_preset("qwen3-30b-a3b")
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    term = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", unknown)
    hopper = flashinfer_moe_autotune_buffer(stage, "0.19", DEFAULTS, "fp8-per-tensor-static", H100)
    assert term is not None and hopper is not None and term.bytes == hopper.bytes == 21_029_120
    assert "not known" in term.basis
    deepseek = get_preset("deepseek-v3")
    tp8 = Stage(deepseek, 8, 1, (0, deepseek.num_layers), True)
    pro = flashinfer_moe_autotune_buffer(tp8, "0.33", DEFAULTS, "nvfp4", RTX_PRO_6000)
    term = flashinfer_moe_autotune_buffer(tp8, "0.33", DEFAULTS, "nvfp4", unknown)
    assert pro is not None and term is not None and term.bytes == pro.bytes
    assert flashinfer_moe_autotune_buffer(tp8, "0.33", DEFAULTS, "nvfp4", B200) is None
    # block fp8 at TP 8 keeps none anywhere: Triton or TRT-LLM experts
    assert flashinfer_moe_autotune_buffer(tp8, "0.19", DEFAULTS, "fp8-block128", unknown) is None


def test_a_device_of_unknown_capability_is_charged_flashinfer_experts_cutlass_workspace_on_vllm_0_33() -> None:
    # 0.33's static fp8 experts on an H100 run FlashInferExperts (held 33,554,432, CUTLASS 542,125,184 in the layer);
    # a device not known was charged Triton's 536,870,912 alone: now the same total as the H100
    spec = get_preset("qwen3-30b-a3b")
    unknown = replace(H100, device_id="", compute_capability=None, compute_units=None)
    hopper = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-per-tensor-static", H100)
    caches = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-per-tensor-static", unknown)
    assert caches.nbytes + caches.transient == hopper.nbytes + hopper.transient == 33_554_432 + 542_125_184
    assert caches.nbytes == 536_870_912 and caches.transient == 38_808_704
