"""DeepGEMM's warm-up under vLLM 0.11 and 0.19, by hand from the code: its grouped-GEMM part after the KV cache is
sized, and what of it the memory the profiling peak released does not hold (charged outside the budget).

Read in vllm 0.11.0, 0.19.0 and 0.33.0 (the wheels from PyPI):

* v1/worker/gpu_worker.py ``compile_or_warm_up_model``: ``kernel_warmup(self)`` after ``initialize_from_config`` has
  allocated the KV cache and before ``capture_model`` (which empties PyTorch's cache before capturing).
* model_executor/warmup/kernel_warmup.py: ``deep_gemm_warmup`` first when ``VLLM_USE_DEEP_GEMM`` ("1"),
  ``is_deep_gemm_supported()`` (the deep_gemm package, in no release's wheel METADATA until 0.33 vendors it as
  vllm/third_party/deep_gemm; 0.11: compute capability 9.0 or 10.0, 0.19: 9.0 or 10.x) and the warm-up not skipped
  (0.11 ``VLLM_SKIP_DEEP_GEMM_WARMUP`` "0", 0.19 ``VLLM_DEEP_GEMM_WARMUP`` "relax").
* model_executor/warmup/deep_gemm_warmup.py ``_fused_moe_grouped_gemm_may_use_deep_gemm``: True for a MoE layer with
  fp8 [128, 128] block quantization whose quant method is not modular (0.19 ``FusedMoEModularMethod``; ``Fp8MoEMethod``
  owns its kernel, ``supports_internal_mk``, and is never swapped), whatever kernel serves its experts;
  ``_deepgemm_grouped_fp8_gemm_nt_contiguous_warmup``: ``MAX_M = round_up(T x top_k + E x 127, 128)`` rows of fp8
  input, fp32 scales (one per 128 columns) and bf16 output for w13 then w2, beside ``MAX_M`` int32 expert ids.
* 0.33's check asks the modular kernel's experts to be DeepGEMM's, which oracle/fp8.py does not pick on 9.0 (TRITON
  first under tensor parallelism): no grouped warm-up on an H100 or H200.
"""

from __future__ import annotations

from quant_core.catalog import UNKNOWN_DEVICE, device_facts, get_device, get_preset, get_preset_info
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile, deep_gemm_warmup_excess
from quant_core.engines.vllm_moe_buffers import deep_gemm_moe_warmup
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

H100 = device_facts("h100-80gb")
H200 = device_facts("h200")
A100 = device_facts("a100-80gb")
B200 = device_facts("b200")
DEFAULTS = BatchLimits(8192, 1024)  # EngineArgs.get_batch_defaults on a device of 70 GiB or more, not an A100
FEW_SEQUENCES = BatchLimits(8192, 16)
MIB = 2**20
STARTUP_TP8_MOE_0_19 = (523 + 1065 + 492) * MIB  # one GPU, the TP group, the expert group (engines/vllm.py)

# DeepSeek-V3 at TP 8: hidden K = 7168, top 8 of 256 experts, expert width 2048 / 8 = 256 a rank
MAX_M = -(-(8192 * 8 + 256 * 127) // 128) * 128
W13_STEP = MAX_M * (7168 + 4 * (7168 // 128) + 2 * 2 * 256)  # [256, 512, 7168]: fp8 + fp32 scales + bf16 out
W2_STEP = MAX_M * (256 + 4 * (256 // 128) + 2 * 7168)  # [256, 7168, 256]
PEAK = 4 * MAX_M + max(W13_STEP, W2_STEP)


def deepseek_v3_stage() -> Stage:
    spec = get_preset("deepseek-v3")
    return Stage(spec, 8, 1, (0, spec.num_layers), True)


def test_deepseek_v3_fp8_at_tp8_warms_up_1_431_892_992_bytes_at_the_w2_step() -> None:
    assert MAX_M == 98_048 and W2_STEP > W13_STEP
    assert PEAK == 1_431_892_992
    for version in ("0.11", "0.19"):
        for device in (H100, H200):
            term = deep_gemm_moe_warmup(deepseek_v3_stage(), version, DEFAULTS, "fp8-block128", device)
            assert term is not None and term.bytes == PEAK
            assert "98,048 rows" in term.basis and "w2 step" in term.basis and "deep_gemm_warmup.py" in term.basis


def test_at_the_default_1024_sequences_the_sampler_pass_released_enough_on_vllm_0_19() -> None:
    # the sampler pass over 1024 rows of 129,280 logits on an H200 (132 SMs): (8192 + 2 x 1024) hidden states and
    # the bf16 logits and three float32 copies, beside the Triton buffer of 132 rows, which topk_topp_triton.py keeps
    # cached: 2.00 GB released, more than the warm-up
    released = (8192 + 2 * 1024) * 7168 * 2 + 1024 * 129_280 * 2 + 3 * 1024 * 129_280 * 4
    assert released == 2_000_158_720 > PEAK
    assert VllmProfile("0.19").activation(deepseek_v3_stage(), DEFAULTS, "fp8-block128", H200).bytes > released
    assert deep_gemm_warmup_excess(deepseek_v3_stage(), "0.19", DEFAULTS, "fp8-block128", H200) is None
    budget = VllmProfile("0.19").outside_budget(deepseek_v3_stage(), "auto", DEFAULTS, False, H200, "fp8-block128")
    assert budget.warmup is None


def test_with_16_sequences_vllm_0_19_needs_928_576_512_bytes_beyond_what_the_profiling_peak_released() -> None:
    # the forward pass is the larger pass: 2 bytes x 8192 tokens x (3 x 7168 + MLA's 16 heads x (128 + 64 + 128 +
    # 128 + 128)); TritonExperts' workspace (8192 x 8 x (7168 + 7168) x 2 bytes) stays held, so it is not released
    released = 2 * 8192 * (3 * 7168 + 16 * (128 + 64 + 128 + 128 + 128))
    assert released == 503_316_480
    excess = deep_gemm_warmup_excess(deepseek_v3_stage(), "0.19", FEW_SEQUENCES, "fp8-block128", H200)
    assert excess is not None and excess.bytes == PEAK - released == 928_576_512
    assert "VLLM_DEEP_GEMM_WARMUP=skip" in excess.basis and "max_num_seqs=16" in excess.basis
    budget = VllmProfile("0.19").outside_budget(deepseek_v3_stage(), "auto", FEW_SEQUENCES, False, H200,
                                                "fp8-block128")
    assert budget.warmup == excess
    # transient, before the graphs: the start-up memory plus the larger of it and the graphs
    assert budget.graph is not None and budget.graph.bytes < excess.bytes
    assert budget.bytes_at(32_768) == budget.startup.bytes + excess.bytes
    eager = VllmProfile("0.19").outside_budget(deepseek_v3_stage(), "auto", FEW_SEQUENCES, True, H200,
                                               "fp8-block128")
    assert eager.bytes_at(32_768) == budget.bytes_at(32_768)  # enforce_eager does not skip kernel_warmup


def test_vllm_0_11_releases_its_freed_moe_caches_and_the_graphs_after_cover_the_94_mb_beyond() -> None:
    # 0.11's Triton path frees fused_experts_impl's caches after each layer (width 256 <= 512 a rank: no DeepGEMM
    # experts), so the forward pass releases them too: 2 x 8192 x (3 x 7168 + 3 x 2048 / 8) + 8192 x 8 x (7168 +
    # 256) x 2
    released = 2 * 8192 * (3 * 7168 + 768) + 8192 * 8 * (7168 + 256) * 2
    assert released == 1_337_982_976
    excess = deep_gemm_warmup_excess(deepseek_v3_stage(), "0.11", FEW_SEQUENCES, "fp8-block128", H200)
    assert excess is not None and excess.bytes == PEAK - released == 93_910_016
    assert "VLLM_SKIP_DEEP_GEMM_WARMUP=1" in excess.basis
    budget = VllmProfile("0.11").outside_budget(deepseek_v3_stage(), "auto", FEW_SEQUENCES, False, H200,
                                                "fp8-block128")
    assert budget.graph is not None and budget.graph.bytes > excess.bytes
    assert budget.bytes_at(32_768) == budget.startup.bytes + budget.graph.bytes


def test_vllm_0_11_caps_the_warm_up_at_the_fused_moe_chunk_of_32768_tokens() -> None:
    limits = BatchLimits(65_536, 1024)
    capped = -(-(32_768 * 8 + 256 * 127) // 128) * 128
    term = deep_gemm_moe_warmup(deepseek_v3_stage(), "0.11", limits, "fp8-block128", H200)
    assert term is not None and term.bytes == capped * (4 + 256 + 8 + 2 * 7168)
    uncapped = -(-(65_536 * 8 + 256 * 127) // 128) * 128
    term = deep_gemm_moe_warmup(deepseek_v3_stage(), "0.19", limits, "fp8-block128", H200)
    assert term is not None and term.bytes == uncapped * (4 + 256 + 8 + 2 * 7168)


def test_under_expert_parallelism_the_rank_warms_up_its_32_whole_experts() -> None:
    spec = get_preset("deepseek-v3")
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True, expert_parallel=True)
    rows = -(-(8192 * 8 + 32 * 127) // 128) * 128
    assert rows == 69_632
    term = deep_gemm_moe_warmup(stage, "0.19", DEFAULTS, "fp8-block128", H100)
    # w13 [32, 4096, 7168]: 7168 + 224 + 8192; w2 [32, 7168, 2048]: 2048 + 64 + 14,336
    assert term is not None and term.bytes == rows * (4 + 2048 + 64 + 2 * 7168) == 1_145_585_664


def test_no_grouped_warm_up_where_vllm_does_not_run_it() -> None:
    stage = deepseek_v3_stage()
    assert deep_gemm_moe_warmup(stage, "0.33", FEW_SEQUENCES, "fp8-block128", H200) is None  # Triton's experts
    assert deep_gemm_moe_warmup(stage, "0.19", FEW_SEQUENCES, "fp8-block128", A100) is None  # 8.0: no DeepGEMM
    assert deep_gemm_moe_warmup(stage, "0.19", FEW_SEQUENCES, "bf16", H200) is None
    assert deep_gemm_moe_warmup(stage, "0.19", FEW_SEQUENCES, "fp8-block128", B200) is not None  # the 10.x family
    dense_only = Stage(stage.spec, 8, 2, (0, 3), False)  # DeepSeek-V3's three dense layers
    assert deep_gemm_moe_warmup(dense_only, "0.19", FEW_SEQUENCES, "fp8-block128", H200) is None


def test_a_device_of_unknown_capability_is_charged_the_warm_up_as_on_hopper_and_blackwell() -> None:
    # kernel_warmup.py runs deep_gemm_warmup wherever is_deep_gemm_supported() holds: 0.11 on 9.0 and 10.0
    # (utils/deep_gemm.py is_device_capability(90) or (100)), 0.19 on 9.0 and the 10.x family (platforms/cuda.py
    # support_deep_gemm); its MAX_M rows do not depend on the capability, so a hardware given in bytes, whose device
    # may be any of them, is charged the same 1,431,892,992 bytes (it was charged none: the plan promised memory an
    # H200 or B200 would not have).  0.33 (the modular kernel's experts not DeepGEMM's) still charges none.
    stage = deepseek_v3_stage()
    for version in ("0.11", "0.19"):
        term = deep_gemm_moe_warmup(stage, version, DEFAULTS, "fp8-block128", UNKNOWN_DEVICE)
        assert term is not None and term.bytes == PEAK and "9.0, 10.0" in term.basis
    assert deep_gemm_moe_warmup(stage, "0.33", DEFAULTS, "fp8-block128", UNKNOWN_DEVICE) is None
    # the room is the least the profiling peak released on any of them: on 0.11 a B200 (10.0) holds DeepGemmExperts'
    # workspace (the E8M0 path; fused_moe/deep_gemm_moe.py workspace_shapes, class-level SharedResizableBuffers), so
    # only the forward pass's 503,316,480 bytes are released, where an H200 also released fused_experts_impl's caches
    # (93,910,016 beyond): the unknown device needs the B200's 928,576,512 (it needed none)
    released = 2 * 8192 * (3 * 7168 + 16 * (128 + 64 + 128 + 128 + 128))
    for version in ("0.11", "0.19"):
        excess = deep_gemm_warmup_excess(stage, version, FEW_SEQUENCES, "fp8-block128", UNKNOWN_DEVICE)
        on_b200 = deep_gemm_warmup_excess(stage, version, FEW_SEQUENCES, "fp8-block128", B200)
        assert excess is not None and on_b200 is not None
        assert excess.bytes == on_b200.bytes == PEAK - released == 928_576_512
    hopper = deep_gemm_warmup_excess(stage, "0.11", FEW_SEQUENCES, "fp8-block128", H200)
    assert hopper is not None and hopper.bytes == 93_910_016
    budget = VllmProfile("0.11").outside_budget(stage, "auto", FEW_SEQUENCES, False, UNKNOWN_DEVICE, "fp8-block128")
    assert budget.warmup is not None and budget.warmup.bytes == 928_576_512


def test_a_plan_for_8_h200s_given_in_bytes_charges_the_warm_up_an_h200_needs() -> None:
    # The H200 plan above with its hardware given in bytes (no device: compute capability not known): the same
    # 3,109,614,592 bytes outside the budget a rank, where it was the start-up memory and the graphs alone
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    bytes_only = plan(get_preset("deepseek-v3"), Hardware(get_device("h200").planning_bytes, 8), Workload(32_768, 1),
                      PlanOptions(engine_version="0.19", scheme=scheme, max_num_seqs=16, memory_utilization=0.98))
    device = bytes_only.primary.devices[0]
    assert device.outside_budget_bytes >= STARTUP_TP8_MOE_0_19 + 928_576_512
    assert not bytes_only.fits
    assert any("DeepGEMM's grouped-GEMM warm-up" in w for w in bytes_only.warnings if w.startswith("Does not fit"))


def test_deepseek_v3_fp8_on_8_h200_with_16_sequences_at_0_98_does_not_fit_the_warm_up() -> None:
    # 0.98 of an H200 leaves 2.80 GiB a rank; the start-up memory (2,080 MiB) and the 673,596,998 bytes of graphs
    # (7 capture sizes up to 32) fitted in it before, 2,854,635,078 bytes; the warm-up's 928,576,512 bytes beyond the
    # profiling peak come before the graphs and need more: 3,109,614,592
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    hardware = Hardware(get_device("h200").planning_bytes, 8, "h200")
    tight = plan(get_preset("deepseek-v3"), hardware, Workload(32_768, 1),
                 PlanOptions(engine_version="0.19", scheme=scheme, max_num_seqs=16, memory_utilization=0.98))
    device = tight.primary.devices[0]
    assert device.outside_budget_bytes == STARTUP_TP8_MOE_0_19 + 928_576_512 == 3_109_614_592
    assert not tight.fits
    warning = next(w for w in tight.warnings if w.startswith("Does not fit"))
    assert "DeepGEMM's grouped-GEMM warm-up" in warning and "warming DeepGEMM's kernels up" in warning
    assert "enforce_eager" not in warning  # no graphs leave the warm-up as it is
    roomy = plan(get_preset("deepseek-v3"), hardware, Workload(32_768, 1),
                 PlanOptions(engine_version="0.19", scheme=scheme, max_num_seqs=16))
    assert roomy.fits and roomy.primary.devices[0].outside_budget_bytes == 3_109_614_592
    default = plan(get_preset("deepseek-v3"), hardware, Workload(32_768, 1),
                   PlanOptions(engine_version="0.19", scheme=scheme))
    # at the default 1024 sequences nothing moves: the start-up memory and the graphs, as before
    assert default.primary.devices[0].outside_budget_bytes == 4_544_528_384
