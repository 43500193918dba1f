"""vLLM's fused-MoE caches, release by release, recomputed here from vLLM's own code.

Read in the wheels from PyPI (vllm 0.11.0, 0.19.0, 0.33.0):

* 0.11 ``model_executor/layers/fused_moe/fused_moe.py``, ``fused_experts_impl`` (the path UnquantizedFusedMoEMethod
  and Fp8MoEMethod take without expert parallelism): ``M = min(num_tokens, VLLM_FUSED_MOE_CHUNK_SIZE)`` (envs.py
  default "32768"), ``cache13 = torch.empty(M * top_k * max(N, K))`` with N = w1.size(1) = 2 x expert width / tp,
  ``intermediate_cache2 = torch.empty((M * top_k, N // 2))``, bf16; freed when the call returns.
* 0.19 ``fused_moe/fused_moe.py`` / 0.33 ``fused_moe/experts/triton_moe.py``, ``TritonExperts.workspace_shapes``:
  workspace13 ``(M, top_k, max(N // 2, K))``, workspace2 ``(M, top_k, max(N, K))``, output ``(M, K)``;
  ``modular_kernel.py`` ``_allocate_buffers`` is handed ``M_full`` as ``M_chunk`` (no chunking) and asks
  ``current_workspace_manager().get_simultaneous((max(workspace13, output),), workspace2)``; ``v1/worker/
  workspace.py`` rounds each view up to 256 bytes and keeps the buffer, so it is still held under the sampler pass.
* 0.11 with block-fp8 experts and the deep_gemm package: ``Fp8MoEMethod`` calls ``deep_gemm_moe_fp8`` on Hopper when
  ``_valid_deep_gemm`` (deep_gemm_moe.py: M, N, K multiples of 128 and w2's N, the expert width a rank, above 512),
  and on compute capability 10.0 always (fused_moe.py ``fused_experts``: ``is_deep_gemm_e8m0_used() or
  _valid_deep_gemm(...)``; utils/deep_gemm.py: E8M0 on ``is_device_capability(100)``, ``VLLM_USE_DEEP_GEMM_E8M0`` "1"),
  a modular kernel whose ``DeepGemmExperts.workspace_shapes`` asks ``(M_sum, max(N, K))`` and ``(M_sum, max(N // 2,
  K))``, ``M_sum = round_up(M * top_k + experts * 127, 128)`` (deep_gemm_utils.py ``compute_aligned_M``), held in
  modular_kernel.py's class-level ``SharedResizableBuffer``s.
* 0.19 / 0.33 ``oracle/mxfp4.py``: gpt-oss's MXFP4 experts on Hopper run ``OAITritonMxfp4ExpertsMonolithic``,
  whose ``triton_kernel_fused_experts`` (gpt_oss_triton_kernels_moe.py) allocates ``(M * top_k, N // 2)`` and
  ``(M, K)`` with torch.empty in each call, outside the workspace manager.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from quant_core.catalog import UNKNOWN_DEVICE, device_facts, get_device, get_preset, get_preset_info
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_encoders import rotary_cache_bytes
from quant_core.engines.vllm_moe_buffers import (
    fused_moe_caches,
    trtllm_candidate_tiles_072,
    trtllm_fp4_moe_bytes,
    trtllm_fp8_block_moe_bytes,
    trtllm_fp8_per_tensor_moe_bytes,
    trtllm_moe_call_bytes_033,
)
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

#: the catalog devices the figures below are charged on
A100_80GB = device_facts("a100-80gb")
H100 = device_facts("h100-80gb")
H200 = device_facts("h200")
B200 = device_facts("b200")

GIB = 1 << 30
LOGS = {log["id"]: log for log in json.loads(
    (Path(__file__).parent / "data" / "vllm_logs.json").read_text(encoding="utf-8"))["logs"]}


def v0_11_caches(*, tokens: int, top_k: int, width: int, hidden: int) -> int:
    """fused_experts_impl's cache13 and intermediate_cache2 (N = 2 x width), bf16."""
    rows = min(tokens, 32768) * top_k
    return rows * max(2 * width, hidden) * 2 + rows * width * 2


def triton_workspace(*, tokens: int, top_k: int, width: int, hidden: int) -> int:
    """TritonExperts' workspace13 (which holds the output) and workspace2, bf16, each rounded up to 256 bytes."""
    views = (max(tokens * top_k * max(width, hidden), tokens * hidden) * 2, tokens * top_k * max(2 * width, hidden) * 2)
    return sum(-(-view // 256) * 256 for view in views)


# (model, tensor parallel, tokens): DeepSeek-V3 at TP 8 with H100/H200's 8192 and A100's 2048 batched tokens,
# Mixtral-8x7B at TP 2, Qwen3-30B-A3B and gpt-oss-120b on one device
CASES = [("deepseek-v3", 8, 8192), ("deepseek-v3", 8, 2048), ("mixtral-8x7b-v0.1", 2, 8192),
         ("qwen3-30b-a3b", 1, 8192), ("gpt-oss-120b", 1, 8192)]


@pytest.mark.parametrize(("model", "tensor_parallel", "tokens"), CASES)
@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
def test_the_caches_are_what_each_releases_kernel_allocates(model: str, tensor_parallel: int, tokens: int,
                                                            version: str) -> None:
    spec = get_preset(model)
    shape = {"tokens": tokens, "top_k": spec.experts_per_token,
             "width": spec.moe_intermediate_size // tensor_parallel, "hidden": spec.hidden_size}
    caches = fused_moe_caches(spec, tensor_parallel, tokens, version)
    expected = v0_11_caches(**shape) if version == "0.11" else triton_workspace(**shape)
    print(f"{model} TP {tensor_parallel}, {tokens} tokens, vLLM {version}: {caches.nbytes:,} bytes "
          f"({caches.nbytes / GIB:.2f} GiB)")
    assert caches.nbytes == expected
    assert caches.persists == (version != "0.11")
    assert ("fused_experts_impl" if version == "0.11" else "TritonExperts") in caches.basis


def test_deepseek_v3_at_tp8_holds_1_75_gib_of_triton_workspace_a_rank_at_8192_tokens() -> None:
    # 8192 x 8 x (max(256, 7168) + max(512, 7168)) x 2 = 1,879,048,192 bytes: the hidden size, not the 256-wide
    # expert slice, sets both views (the 8192 x 8 x (3 x 256 + 7168) x 2 = 1,040,187,392 nibble charged before
    # was 0.78 GiB a rank short); 2048 tokens: a quarter; vLLM 0.11 sizes 8192 x 8 x (7168 + 256) x 2
    spec = get_preset("deepseek-v3")
    assert fused_moe_caches(spec, 8, 8192, "0.19").nbytes == 1_879_048_192
    assert fused_moe_caches(spec, 8, 8192, "0.33").nbytes == 1_879_048_192
    assert fused_moe_caches(spec, 8, 2048, "0.19").nbytes == 469_762_048
    assert fused_moe_caches(spec, 8, 8192, "0.11").nbytes == 973_078_528


def test_only_vllm_0_11_chunks_the_batch() -> None:
    # 0.11: at most VLLM_FUSED_MOE_CHUNK_SIZE = 32,768 tokens a chunk; 0.19's modular kernel passes M_full
    spec = get_preset("qwen3-30b-a3b")
    assert fused_moe_caches(spec, 1, 65536, "0.11").nbytes == fused_moe_caches(spec, 1, 32768, "0.11").nbytes
    assert fused_moe_caches(spec, 1, 65536, "0.19").nbytes == 2 * fused_moe_caches(spec, 1, 32768, "0.19").nbytes


def test_the_workspace_is_held_under_the_sampler_pass_from_0_19_only() -> None:
    # DeepSeek-V3 at TP 8 on H200s, 8192 tokens and 1024 sequences: the sampler pass is the peak; 0.19 adds the
    # workspace.  0.19's pass as its code sizes it: 14 bytes a logit of 1024 x 129,280 (bf16 logits and three
    # float32 copies), the Triton top-k/top-p buffer of the H200's 132 SMs x 129,280 x 4 bytes, beside the dummy
    # run's 8192 hidden states and two copies of its 1024 sampled rows, and the 33 MiB of cuBLAS workspaces; 0.11's
    # PyTorch sort, 38 bytes a logit (bf16 and float32 logits, sorted values, int64 indices and SortStable.cu's
    # buffers), beside the same hidden states and rows and the same workspaces (a device outside the catalog is
    # charged Hopper's)
    spec, limits = get_preset("deepseek-v3"), BatchLimits(8192, 1024)
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True)
    new = VllmProfile("0.19").activation(stage, limits, device=H200)
    rotary = 163_840 * 64 * 2  # the yarn cos/sin cache (original_max_position x factor positions), held throughout
    assert rotary_cache_bytes(spec, "0.19") == rotary_cache_bytes(spec, "0.11") == rotary
    assert new.bytes == (1024 * 129_280 * 14 + 132 * 129_280 * 4 + (8192 + 2 * 1024) * 7168 * 2 + 1_879_048_192
                         + rotary + 33 * 2**20)
    assert "TritonExperts" in new.basis and "fused-MoE caches still held (1.75 GiB)" in new.basis
    old = VllmProfile("0.11").activation(stage, limits)
    assert old.bytes == 1024 * 129_280 * 38 + (8192 + 2 * 1024) * 7168 * 2 + rotary + 33 * 2**20
    assert "fused_experts_impl" in old.basis


def test_gpt_oss_mxfp4_experts_on_hopper_hold_no_workspace_on_0_19() -> None:
    # OAITritonMxfp4ExpertsMonolithic (Hopper) frees its buffers after each layer; MarlinExperts (A100) asks the
    # TritonExperts shapes of the workspace manager.  gpt-oss-20b at TP 2 on H100 (llm-d-planner's vLLM 0.19 log,
    # vllm_logs.json "llmdp-v0.19-gpt-oss-20b-tp2"): 2.87 GiB of activations logged, the sampler pass alone
    log = LOGS["llmdp-v0.19-gpt-oss-20b-tp2"]
    spec = get_preset("gpt-oss-20b")
    stage, limits = Stage(spec, 2, 1, (0, spec.num_layers), True), BatchLimits(8192, 1024)
    hopper = VllmProfile("0.19").activation(stage, limits, "mxfp4", H100)
    a100 = VllmProfile("0.19").activation(stage, limits, "mxfp4", A100_80GB)
    workspace = triton_workspace(tokens=8192, top_k=4, width=1440, hidden=2880)
    # beside the workspace, the A100's sampler buffer has 108 rows of 201,088 float32 logits, not the H100's 132
    # (topk_topp_triton.py: one per SM), and its cuBLAS workspace is 8 MiB + 128 KiB, not 32 MiB (CublasHandlePool.cpp)
    devices = (108 - 132) * 201_088 * 4 + (8 * 2**20 + 128 * 2**10) - 32 * 2**20
    assert a100.bytes - hopper.bytes == workspace + devices
    assert "OAITritonMxfp4ExpertsMonolithic" in hopper.basis and "still held" not in hopper.basis
    # the activation term carries gpt-oss's float32 rotary cache, which vLLM logs inside "Model loading took"
    assert abs((hopper.bytes - rotary_cache_bytes(spec, "0.19")) / GIB - log["activation_gib"]) < 0.03
    assert fused_moe_caches(spec, 2, 8192, "0.19", "mxfp4", H100).persists is False
    # bf16 experts on Hopper, and every format on 0.11, are not affected
    assert fused_moe_caches(spec, 2, 8192, "0.19", "bf16", H100).nbytes == workspace
    assert fused_moe_caches(spec, 2, 8192, "0.11", "mxfp4", H100).basis.startswith("fused_experts_impl")


def test_vllm_0_11_keeps_deep_gemms_workspace_for_block_fp8_experts_wider_than_512_on_hopper() -> None:
    # Qwen3-30B-A3B-FP8 on one H100 at 8192 tokens: M_sum = round_up(8192 x 8 + 128 x 127, 128) = 81,792 rows x
    # (max(1536, 2048) + max(768, 2048)) x 2 = 670,040,064 bytes, held under the sampler pass
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.11", "fp8-block128", H100)
    assert caches.nbytes == 81_792 * (2048 + 2048) * 2 == 670_040_064
    assert caches.persists and "DeepGemmExperts" in caches.basis
    stage, limits = Stage(spec, 1, 1, (0, spec.num_layers), True), BatchLimits(8192, 1024)
    assert (VllmProfile("0.11").activation(stage, limits, "fp8-block128", H100).bytes
            - VllmProfile("0.11").activation(stage, limits, "bf16", H100).bytes) == 670_040_064
    # _valid_deep_gemm: 768 / 4 = 192 and DeepSeek-V3's 2048 / 8 = 256 are not above 512 (Triton's path); A100 has no
    # DeepGEMM; bf16 experts never take it
    assert fused_moe_caches(spec, 4, 8192, "0.11", "fp8-block128", H100).basis.startswith("fused_experts_impl")
    assert not fused_moe_caches(get_preset("deepseek-v3"), 8, 8192, "0.11", "fp8-block128", H200).persists
    assert not fused_moe_caches(spec, 1, 8192, "0.11", "fp8-block128", A100_80GB).persists
    assert not fused_moe_caches(spec, 1, 8192, "0.11", "bf16", H100).persists


def test_vllm_0_11_runs_block_fp8_experts_on_deep_gemm_on_a_b200_whatever_their_width() -> None:
    # Qwen3-30B-A3B-FP8 at 8192 tokens: at TP 2 the expert width a rank is 384, not above 512, so an H100 falls back to
    # fused_experts_impl (8192 x 8 x (max(768, 2048) + 384) x 2 = 318,767,104 bytes, freed after each layer); a B200
    # (10.0) takes DeepGEMM's E8M0 path, which skips _valid_deep_gemm: DeepGemmExperts' workspace, M_sum = 81,792 rows
    # x (max(768, 2048) + max(384, 2048)) x 2 = 670,040,064 bytes, held under the sampler pass.  At TP 1 both run it.
    spec = get_preset("qwen3-30b-a3b")
    hopper, blackwell = (fused_moe_caches(spec, 2, 8192, "0.11", "fp8-block128", device) for device in (H100, B200))
    assert hopper.nbytes == 8192 * 8 * (2048 + 384) * 2 == 318_767_104 and not hopper.persists
    assert blackwell.nbytes == 81_792 * (2048 + 2048) * 2 == 670_040_064 and blackwell.persists
    assert "DeepGemmExperts" in blackwell.basis and "E8M0" in blackwell.basis
    assert fused_moe_caches(spec, 1, 8192, "0.11", "fp8-block128", B200) == \
        replace(fused_moe_caches(spec, 1, 8192, "0.11", "fp8-block128", H100),
                basis=fused_moe_caches(spec, 1, 8192, "0.11", "fp8-block128", B200).basis)
    # the persistent workspace under the sampler pass: the B200's 0.11 activation is the bf16 experts' plus all of it
    stage, limits = Stage(spec, 2, 1, (0, spec.num_layers), True), BatchLimits(8192, 1024)
    assert (VllmProfile("0.11").activation(stage, limits, "fp8-block128", B200).bytes
            - VllmProfile("0.11").activation(stage, limits, "bf16", B200).bytes) == 670_040_064
    # is_device_capability(100) is 10.0 exactly (a 10.3 device is not read as DeepGEMM's); bf16 experts and 0.19
    # never take it
    assert not fused_moe_caches(spec, 2, 8192, "0.11", "fp8-block128", device_facts(None, (10, 3))).persists
    assert fused_moe_caches(spec, 2, 8192, "0.11", "bf16", B200).basis.startswith("fused_experts_impl")
    assert "TritonExperts" in fused_moe_caches(spec, 2, 8192, "0.19", "fp8-block128", B200).basis


def test_vllm_0_11_charges_a_device_of_unknown_capability_deep_gemms_workspace() -> None:
    # A hardware given in bytes may be a B200, whose 10.0 runs block-fp8 experts on DeepGEMM at any width (utils/
    # deep_gemm.py is_deep_gemm_e8m0_used; fused_moe.py fused_experts): Qwen3-30B-A3B-FP8 at TP 2 is charged
    # DeepGemmExperts' 670,040,064 bytes, held (deep_gemm_moe.py workspace_shapes, M_sum = 81,792 rows), not
    # fused_experts_impl's 318,767,104 freed after each layer (what it was charged): M_sum >= M x top_k and
    # max(w, K) >= w, so DeepGEMM's is the larger path row for row, and it stays held
    spec = get_preset("qwen3-30b-a3b")
    unknown = fused_moe_caches(spec, 2, 8192, "0.11", "fp8-block128", UNKNOWN_DEVICE)
    assert unknown.nbytes == 81_792 * (2048 + 2048) * 2 == 670_040_064 and unknown.persists
    assert "DeepGemmExperts" in unknown.basis and "not known" in unknown.basis
    assert unknown.nbytes > fused_moe_caches(spec, 2, 8192, "0.11", "fp8-block128", H100).nbytes == 318_767_104
    assert fused_moe_caches(spec, 2, 8192, "0.11", "bf16", UNKNOWN_DEVICE).basis.startswith("fused_experts_impl")


def test_a_b200_plan_of_block_fp8_qwen3_moe_on_vllm_0_11_charges_deep_gemms_workspace() -> None:
    # The whole plan (Qwen3-30B-A3B-FP8's 128 x 128 block fp8, one B200, 0.11): the activation is the H100's figure
    # for the same layout, both on DeepGEMM, within the devices' cuBLAS workspaces; it was 670,040,064 bytes less
    # (the non-DeepGEMM caches, freed after each layer) before 10.0 was read as DeepGEMM's
    scheme = scheme_from_quantization_config({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                              "weight_block_size": [128, 128]})
    spec = get_preset("qwen3-30b-a3b")
    plans = {device_id: plan(spec, Hardware(get_device(device_id).planning_bytes, 1, device_id), Workload(32_768, 1),
                             PlanOptions(engine_version="0.11", scheme=scheme))
             for device_id in ("h100-80gb", "b200")}
    b200, h100 = plans["b200"].activation, plans["h100-80gb"].activation
    assert b200.bytes == 6_644_170_752  # was 5,974,130,688
    assert abs(b200.bytes - h100.bytes) < 32 * 2**20
    assert "DeepGemmExperts" in b200.basis and "DeepGemmExperts" in h100.basis


def test_deepseek_v3_on_8_b200s_on_vllm_0_11_holds_deep_gemms_2_62_gib_workspace_a_rank() -> None:
    # The shipped checkpoint (128 x 128 block fp8) on 8 x B200 at TP 8 under vLLM 0.11, by hand from 0.11's code:
    # * fused_moe/fused_moe.py fused_experts: deep_gemm_moe_fp8 when "allow_deep_gemm and quant_config.use_fp8_w8a8
    #   and (is_deep_gemm_e8m0_used() or _valid_deep_gemm(...))"; utils/deep_gemm.py is_deep_gemm_e8m0_used is True on
    #   is_device_capability(100) with VLLM_USE_DEEP_GEMM_E8M0 ("1" in envs.py), so the 2048 / 8 = 256-wide expert
    #   slice, which _valid_deep_gemm refuses (not above 512: an H200 stays on fused_experts_impl), runs DeepGEMM.
    # * fused_moe/deep_gemm_moe.py DeepGemmExperts.workspace_shapes: M_sum = compute_aligned_M(M, topk,
    #   local_num_experts, 128) = round_up(M x topk + local_num_experts x 127, 128) (deep_gemm_utils.py), with M =
    #   8192 (the B200's OpenAI-server default: at least 70 GiB and not an A100; VLLM_FUSED_MOE_CHUNK_SIZE = 32,768
    #   leaves one chunk), topk 8 and all 256 experts on every rank (no expert parallelism): 65,536 + 32,512 = 98,048
    #   rows (766 x 128).  workspace1 = (M_sum, max(N, K)), N = w1's 2 x 256 = 512, K = hidden 7168; workspace2 =
    #   (M_sum, max(N // 2, K)); the output (M, K) reuses workspace13 (modular_kernel.py _do_fused_experts); dtype
    #   the bf16 hidden states: 98,048 x (7168 + 7168) x 2 = 2,811,232,256 bytes (2.62 GiB), kept in
    #   modular_kernel.py's class-level SharedResizableBuffers, so held under the sampler pass.
    # * The plan's activation: 0.11's sampler pass, PyTorch's sort at 38 bytes a logit (1024 x 129,280 x 38 =
    #   5,030,543,360) beside the dummy run's 8192 hidden states and two copies of the 1024 sampled rows ((8192 + 2 x
    #   1024) x 7168 x 2 = 146,800,640), with the workspace held: 7,988,576,256 (7.44 GiB, above the forward pass's
    #   3.09 GiB); plus the yarn rotary cache (163,840 x 64 x 2 = 20,971,520) and the B200's cuBLAS and cuBLASLt
    #   workspaces (compute capability 10.0: 8 MiB + 128 KiB + 1 MiB = 9,568,256): 8,019,116,032 bytes a rank.
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    spec = get_preset("deepseek-v3")
    caches = fused_moe_caches(spec, 8, 8192, "0.11", "fp8-block128", B200)
    workspace = 98_048 * (7168 + 7168) * 2
    assert (98_048, workspace) == (-(-(8192 * 8 + 256 * 127) // 128) * 128, 2_811_232_256)
    assert caches.nbytes == workspace and caches.persists and "E8M0" in caches.basis
    result = plan(spec, Hardware(get_device("b200").planning_bytes, 8, "b200"), Workload(32_768, 1),
                  PlanOptions(engine_version="0.11", scheme=scheme))
    assert (result.max_batched_tokens, result.max_num_seqs) == (8192, 1024)
    sampler = 1024 * 129_280 * 38 + (8192 + 2 * 1024) * 7168 * 2 + workspace
    assert result.activation.bytes == sampler + 163_840 * 64 * 2 + (8 * 2**20 + 128 * 2**10 + 2**20) == 8_019_116_032
    assert "DeepGemmExperts" in result.activation.basis and "still held (2.62 GiB)" in result.activation.basis
    # the same layout on 8 x H200 (9.0, the 256-wide slice refused by _valid_deep_gemm): the freed
    # fused_experts_impl caches, no workspace under the sampler pass
    h200 = plan(spec, Hardware(get_device("h200").planning_bytes, 8, "h200"), Workload(32_768, 1),
                PlanOptions(engine_version="0.11", scheme=scheme))
    assert h200.activation.bytes == sampler - workspace + 163_840 * 64 * 2 + 33 * 2**20 == 5_232_918_528
    print(f"DeepSeek-V3 FP8, 8 x B200, TP 8, vLLM 0.11: activation {result.activation.bytes:,} bytes a rank, "
          f"KV tokens {result.primary.kv_capacity_tokens:,} at 32,768")


@pytest.mark.parametrize(("log_id", "logged"), [
    ("llmdp-v0.19-deepseek-v2-lite-tp1", 1.93), ("llmdp-v0.19-qwen3-30b-a3b-tp1", 2.68),
    ("llmdp-v0.19-mixtral-8x7b-tp2", 1.21)])
def test_moe_activations_logged_by_vllm_0_19_on_h100(log_id: str, logged: float) -> None:
    # llm-d-planner's vLLM 0.19.0 H100 logs (URLs in vllm_logs.json): sampler pass (with the batch's hidden states)
    # + TritonExperts' workspace + the cuBLAS workspaces; DeepSeek-V2-Lite 1.46 + 0.45 + 0.03 = 1.93 GiB against
    # 1.93 (the old top_k x (3w + K) figure gave 2.04), Qwen3-30B-A3B 2.14 + 0.50 + 0.03 = 2.67 against 2.68; the
    # rotary cos/sin cache the term carries is in vLLM's weights figure
    log = LOGS[log_id]
    assert log["activation_gib"] == logged
    spec = get_preset(log["model"])
    term = VllmProfile("0.19").activation(Stage(spec, log["tensor_parallel"], 1, (0, spec.num_layers), True),
                                          BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]),
                                          device=device_facts(log["catalog_device"]))
    predicted = (term.bytes - rotary_cache_bytes(spec, "0.19")) / GIB
    print(f"{log_id}: {predicted:.3f} GiB predicted, {logged} logged")
    assert abs(predicted - logged) <= 0.035


def test_deepseek_v3_on_8_h200s_has_the_kv_cache_the_workspace_leaves() -> None:
    # the shipped FP8 checkpoint on 8 x H200 at vLLM 0.19's defaults (8192 tokens, 1024 sequences): the KV pool of
    # each rank is 0.78 GiB smaller than with the old figure (and 20 MiB for the rotary cache), 632,304 tokens
    # instead of 643,984 (631,760 with the fitted 14.4 bytes a logit: the sampler pass as 0.19's code sizes it, with
    # the H200's Triton buffer and cuBLAS workspaces, is 36.5 MiB smaller a rank); 631,664 with 0.19's largest logged
    # non-torch memory at TP=4, charged at TP=8: 2.21 GiB rather than 2.17 (42 MiB more a rank), on an H200 of
    # 139.80 GiB; 630,576 on the catalog's 139.72 (sglang#2895), 0.072 GiB less a rank at 0.9; 619,072 with MLA's
    # q_a_proj and kv_a_proj_with_mqa whole on every rank (ReplicatedLinear: 808,237,556 bytes a rank more weights)
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    result = plan(get_preset("deepseek-v3"), Hardware(get_device("h200").planning_bytes, 8, "h200"),
                  Workload(32768, 1), PlanOptions(engine_version="0.19", scheme=scheme))
    # 615,424 with the bf16 copy of each fp8 kv_b_proj MLA's decode keeps (255,852,544 bytes a rank: 61 x 512 x 16 x
    # 256 x 2, mla_attention.py process_weights_after_loading)
    assert result.primary.kv_capacity_tokens == 615_424
    assert "TritonExperts" in result.activation.basis


def humming_indexed_workspace(*, tokens: int, top_k: int, width: int, hidden: int) -> int:
    """vLLM 0.33's HummingIndexedExperts workspace (fused_moe/experts/fused_humming_moe.py ``get_buffer_metas``,
    ``_workspace_shapes``), 16-bit activations: the five buffers quanted_gate_up_input (T, K), gate_up_output
    (T k, 2w), quanted_down_input (T k, w), down_output (T k, K) and output (T, K) are taken from the output back,
    alternately into workspace1 (output, quanted_down_input, quanted_gate_up_input) and workspace2 (down_output,
    gate_up_output), each the largest of its buffers; modular_kernel.py asks max(workspace1, output) and workspace2
    of the workspace manager, each rounded up to 256 bytes."""
    views = (max(tokens * hidden, tokens * top_k * width) * 2, tokens * top_k * max(hidden, 2 * width) * 2)
    return sum(-(-view // 256) * 256 for view in views)


def test_vllm_0_33_charges_humming_int4_experts_humming_workspace_on_hopper() -> None:
    # Qwen3-30B-A3B (hidden 2048, 768-wide experts, top 8), GPTQ int4 g128 on an H100 at 8192 tokens: vLLM 0.33
    # runs them on HummingIndexedExperts (prioritize_humming, 9.0).  workspace1 8192 x max(2048, 8 x 768) x 2 =
    # 100,663,296, workspace2 8192 x 8 x max(2048, 1536) x 2 = 268,435,456: 369,098,752 bytes, where Triton's
    # workspace13 (8192 x 8 x 2048 x 2) charged 536,870,912 before, 160 MiB too many
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.33", "int4-g128-sym-gptq", H100)
    assert caches.nbytes == humming_indexed_workspace(tokens=8192, top_k=8, width=768, hidden=2048) == 369_098_752
    assert caches.persists and "HummingIndexedExperts" in caches.basis
    assert triton_workspace(tokens=8192, top_k=8, width=768, hidden=2048) == 536_870_912
    # MoeWNA16's layers too (g128 at TP 4: the 192-wide share takes no g128, MoeWNA16 holds g64 on Humming):
    # 8192 x max(2048, 8 x 192) x 2 + 8192 x 8 x max(2048, 384) x 2 = 33,554,432 + 268,435,456
    wna16 = fused_moe_caches(spec, 4, 8192, "0.33", "int4-g128-sym-gptq", H100)
    assert wna16.nbytes == humming_indexed_workspace(tokens=8192, top_k=8, width=192, hidden=2048) == 301_989_888
    assert "HummingIndexedExperts" in wna16.basis
    # AWQ and compressed-tensors alike; Marlin's experts (A100) and 0.19 keep TritonExperts' shapes, as do bf16
    # experts on the H100
    assert fused_moe_caches(spec, 1, 8192, "0.33", "int4-g128-asym-awq", H100).nbytes == 369_098_752
    assert fused_moe_caches(spec, 1, 8192, "0.33", "int4-g128-sym-compressed-tensors", H100).nbytes == 369_098_752
    for version, fmt, device in (("0.33", "int4-g128-sym-gptq", A100_80GB), ("0.19", "int4-g128-sym-gptq", H100),
                                 ("0.33", "bf16", H100)):
        assert fused_moe_caches(spec, 1, 8192, version, fmt, device).nbytes == 536_870_912
    # NVFP4 experts on the H100 too: oracle/nvfp4.py's FlashInfer and CUTLASS backends run on 10.x-12.x only and
    # prioritize_humming puts HUMMING ahead of MARLIN on 9.0; convert_to_humming_moe_kernel_format leaves their
    # activations 16-bit (VLLM_HUMMING_INPUT_QUANT_CONFIG unset).  A B200 keeps the figure nibble charges there
    for label in ("nvfp4", "nvfp4-static"):
        assert fused_moe_caches(spec, 1, 8192, "0.33", label, H100).nbytes == 369_098_752
    assert "HummingIndexedExperts" not in fused_moe_caches(spec, 1, 8192, "0.33", "nvfp4", B200).basis
    # expert parallelism over 2 ranks switches Humming to grouped_contiguous (refused in plans): not this figure
    assert "HummingIndexedExperts" not in fused_moe_caches(spec, 2, 8192, "0.33", "int4-g128-sym-gptq", H100,
                                                           expert_parallel=True).basis


def test_vllm_0_33_profiling_peak_of_humming_experts_is_their_workspace_less() -> None:
    # the activation term of the same stage on the same H100: GPTQ int4 experts (Humming) against bf16 experts
    # (Triton): the workspace is held through the forward pass and the sampler pass alike, so the two differ by
    # the two workspaces' difference alone, 167,772,160 bytes
    spec, limits = get_preset("qwen3-30b-a3b"), BatchLimits(8192, 256)
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    humming = VllmProfile("0.33").activation(stage, limits, "int4-g128-sym-gptq", H100)
    triton = VllmProfile("0.33").activation(stage, limits, "bf16", H100)
    assert triton.bytes - humming.bytes == 536_870_912 - 369_098_752 == 167_772_160
    assert "HummingIndexedExperts" in humming.basis


def test_vllm_0_19_charges_trtllms_block_fp8_buffers_on_a_b200_where_they_pass_tritons_workspace() -> None:
    # On 10.x vLLM 0.19 runs block-fp8 experts on TrtLlmFp8ExpertsModular (oracle/fp8.py: FLASHINFER_TRTLLM first,
    # experts/trtllm_fp8_moe.py; its workspace_shapes asks only the tokens x K output), where nibble charged
    # TritonExperts' workspace "on the safe side".  By hand from flashinfer-python 0.6.6 (vLLM 0.19's pin) for
    # Qwen3-30B-A3B-FP8 on one B200 at 8192 tokens (top 8 of 128 experts, K = 2048, w = 768):
    # * runner.h getMaxNumCtasInBatchDim at tile 128: min(128, 65,536) + (65,536 - 128) // 128 = 639 CTAs, P = 81,792
    # * trtllm_fused_moe_kernel_launcher.cu Fp8BlockScaleLauncher::prepare_moe: GEMM 1 fp8 81,792 x 1536 and scales
    #   12 x 81,792 x 4, activation fp8 81,792 x 768 and scales 6 x 81,792 x 4, GEMM 2 bf16 81,792 x 2048 x 2:
    #   529,357,824; prepare_routing_common and the bf16 expert weights: 990,208
    # * core.py trtllm_fp8_block_scale_moe_op's own bf16 output 8192 x 2048 x 2 = 33,554,432; vLLM's packed ids
    #   (8192 x 8 x 4) and transposed activation scales (16 x 8192 x 4): 786,432
    gemms = 81_792 * 1536 + 12 * 81_792 * 4 + 81_792 * 768 + 6 * 81_792 * 4 + 81_792 * 2048 * 2
    routing = 128 * 4 + 4 + 65_536 * 4 + 81_792 * 4 + 65_536 * 4 + 512 * 4 + 2 * 639 * 4 + 4 + 65_536 * 2
    per_call = gemms + routing + 8192 * 2048 * 2 + 65_536 * 4 + 16 * 8192 * 4
    assert (gemms, routing, per_call) == (529_357_824, 990_208, 564_688_896)
    assert trtllm_fp8_block_moe_bytes(tokens=8192, experts=128, top_k=8, hidden=2048, width=768,
                                      local_experts=128) == per_call
    # with the kept 8192 x 2048 bf16 output, 598,243,328 against Triton's 65,536 x (2048 + 2048) x 2 = 536,870,912
    triton = 65_536 * (2048 + 2048) * 2
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.19", "fp8-block128", B200)
    assert caches.nbytes == triton and caches.persists
    assert caches.transient == 8192 * 2048 * 2 + per_call - triton == 61_372_416
    assert "TrtLlmFp8ExpertsModular" in caches.basis
    # a device of unknown compute capability may be a B200: charged the same
    assert fused_moe_caches(spec, 1, 8192, "0.19", "fp8-block128", UNKNOWN_DEVICE).transient == 61_372_416
    # checked safe (Triton's is the larger, no transient): DeepSeek-V3 at TP 8 (K = 7168: Triton's rows are
    # max(w, K) wide) and Qwen3-30B-A3B at TP 2; an H200 runs Triton's experts
    assert fused_moe_caches(get_preset("deepseek-v3"), 8, 8192, "0.19", "fp8-block128", B200).transient == 0
    assert fused_moe_caches(spec, 2, 8192, "0.19", "fp8-block128", B200).transient == 0
    assert fused_moe_caches(spec, 1, 8192, "0.19", "fp8-block128", H100).transient == 0


def test_vllm_0_19_charges_trtllms_nvfp4_buffers_for_deepseek_v3_on_b200s() -> None:
    # NVFP4 experts on 10.x run on TRT-LLM (oracle/nvfp4.py FLASHINFER_TRTLLM first; experts/trtllm_nvfp4_moe.py,
    # DeepSeek-V3's routing on TrtLlmNvFp4ExpertsMonolithic).  By hand from flashinfer-python 0.6.6 for DeepSeek-V3
    # at TP 8 on B200s at 8192 tokens (top 8 of 256 experts, all on every rank, K = 7168, w = 2048 / 8 = 256):
    # * computeSelectedTileN: 65,536 / 256 = 256 tokens an expert, the largest NVFP4 tile (getSupportedTileNums:
    #   8 to 256 for fp4 activations): 256 + (65,536 - 256) // 256 = 511 CTAs, P = 130,816 rows
    # * FP4BlockScaleLauncher::prepare_moe: GEMM 1 fp4 130,816 x 128 bytes and its swizzled scales 130,816 x 16,
    #   GEMM 2 bf16 130,816 x 7168 x 2; prepare_routing_common 1,054,720; core.py topk_ids and expert_weights
    #   65,536 x (4 + 2); vLLM's fp4 input 8192 x 3584 with scales 8192 x 448, and packed ids 65,536 x 4
    gemms = 130_816 * 128 + 130_816 * 16 + 130_816 * 7168 * 2
    routing = 256 * 4 + 4 + 65_536 * 4 + 130_816 * 4 + 65_536 * 4 + 512 * 4 + 2 * 511 * 4 + 4
    per_call = gemms + routing + 65_536 * 6 + 8192 * 3584 + 8192 * 448 + 65_536 * 4
    assert (routing, per_call) == (1_054_720, 1_928_955_904)
    assert trtllm_fp4_moe_bytes(tokens=8192, experts=256, top_k=8, hidden=7168, width=256, local_experts=256,
                                nvfp4=True) == per_call
    # with the one 8192 x 7168 bf16 output, 167,348,224 bytes more than Triton's 65,536 x (7168 + 7168) x 2
    spec = get_preset("deepseek-v3")
    caches = fused_moe_caches(spec, 8, 8192, "0.19", "nvfp4", B200)
    assert caches.nbytes == 65_536 * 14_336 * 2 == 1_879_048_192
    assert caches.transient == 8192 * 7168 * 2 + per_call - 1_879_048_192 == 167_348_224
    assert "TrtLlmNvFp4Experts" in caches.basis
    # inside the MoE layer beside the shared experts: at 16 sequences (the forward pass the peak) the activation
    # grows by 2 x 8192 x (3 x 7168 + 3 x 2048 / 8) + 167,348,224 - 2 x 8192 x (3 x 7168 + MLA's 9216) = 28,936,192
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True)
    assert VllmProfile("0.19").activation(stage, BatchLimits(8192, 16), "nvfp4", B200).bytes == 2_441_840_640
    assert 2 * 8192 * (21_504 + 768) + 167_348_224 - 2 * 8192 * (21_504 + 9216) == 28_936_192  # was 2,412,904,448


def test_vllm_0_19_charges_trtllms_mxfp4_buffers_for_gpt_oss_120b_at_tp2_on_b200s() -> None:
    # gpt-oss on 10.x runs on TrtLlmMxfp4ExpertsMonolithic (oracle/mxfp4.py FLASHINFER_TRTLLM_MXFP4_BF16), hidden
    # 2880 and width 2880 / 2 = 1440 padded to 256 (3072 and 1536).  At 8192 tokens, top 4 of 128: bf16
    # activations take tiles 8 to 64, so 128 + (32,768 - 128) // 64 = 638 CTAs, P = 40,832; GEMM 1 bf16 40,832 x
    # 1536 x 2, GEMM 2 40,832 x 3072 x 2, routing 433,144, core.py's topk_ids and expert_weights 32,768 x 6, and
    # apply's torch.empty_like output 8192 x 3072 x 2: 427,269,112 against Triton's 2 x 32,768 x 2880 x 2
    gemms = 40_832 * 1536 * 2 + 40_832 * 3072 * 2
    routing = 128 * 4 + 4 + 32_768 * 4 + 40_832 * 4 + 32_768 * 4 + 512 * 4 + 2 * 638 * 4 + 4
    per_call = gemms + routing + 32_768 * 6
    assert (routing, per_call) == (433_144, 376_937_464)
    assert trtllm_fp4_moe_bytes(tokens=8192, experts=128, top_k=4, hidden=3072, width=1536, local_experts=128,
                                nvfp4=False) == per_call
    caches = fused_moe_caches(get_preset("gpt-oss-120b"), 2, 8192, "0.19", "mxfp4", B200)
    assert caches.nbytes == 2 * 32_768 * 2880 * 2 == 377_487_360
    assert caches.transient == 8192 * 3072 * 2 + per_call - 377_487_360 == 49_781_752
    # checked safe: at TP 1 (width 3072) Triton's 566,231,040 is the larger; an H100 runs OpenAI's Triton kernels
    assert fused_moe_caches(get_preset("gpt-oss-120b"), 1, 8192, "0.19", "mxfp4", B200).transient == 0
    assert fused_moe_caches(get_preset("gpt-oss-120b"), 2, 8192, "0.19", "mxfp4", H100).transient == 0


def test_vllm_0_19_charges_per_tensor_fp8_experts_on_a_b200_the_larger_of_trtllm_and_cutlass() -> None:
    # fp8 with static per-tensor scales on 10.x: TrtLlmFp8ExpertsMonolithic for DeepSeek-V3 and Llama 4 routing
    # (experts/trtllm_fp8_moe.py _supports_routing_method; its modular class takes no per-tensor scales), else
    # FlashInferExperts (oracle/fp8.py FLASHINFER_CUTLASS); the routing is not in nibble's model, so the larger.
    # By hand from flashinfer-python 0.6.6 for Qwen3-30B-A3B on one B200 at 8192 tokens (tile 128, P = 81,792):
    # Fp8PerTensorLauncher::prepare_moe: GEMM 1 fp8 (P + 128) x 1536 with scales 12 x 81,920 x 4, activation
    # 81,920 x 768 with scales 6 x 81,920 x 4, GEMM 2 bf16 81,792 x 2048 x 2; routing 859,136; expert weights
    # 65,536 x 2, core.py topk_ids and expert_weights 65,536 x 8, the fp8 input 8192 x 2048, fp32 logits 8192 x 128 x 4
    gemms = 81_920 * 1536 + 12 * 81_920 * 4 + 81_920 * 768 + 6 * 81_920 * 4 + 81_792 * 2048 * 2
    per_call = gemms + 859_136 + 65_536 * 10 + 8192 * 2048 + 8192 * 128 * 4
    assert (gemms, per_call) == (529_661_952, 552_147_968)
    assert trtllm_fp8_per_tensor_moe_bytes(tokens=8192, experts=128, top_k=8, hidden=2048, width=768,
                                           local_experts=128) == per_call
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", B200)
    # above FlashInferExperts' CUTLASS workspace (542,125,184 on an H200, finalize fused) and Triton's 536,870,912
    assert caches.transient == 8192 * 2048 * 2 + per_call - 536_870_912 == 48_831_488
    hopper = fused_moe_caches(spec, 1, 8192, "0.19", "fp8-per-tensor-static", H200)
    assert hopper.transient == 542_125_184 < per_call


def test_a_device_of_unknown_capability_is_charged_the_largest_nvfp4_experts_path() -> None:
    # DeepSeek-V3 NVFP4 at TP 8: a B200 runs TRT-LLM's (167,348,224 beyond Triton's workspace), an RTX PRO 6000
    # (12.0) FlashInferExperts' CUTLASS workspace, the larger here: a hardware given in bytes is charged that
    spec = get_preset("deepseek-v3")
    unknown = fused_moe_caches(spec, 8, 8192, "0.19", "nvfp4", UNKNOWN_DEVICE)
    blackwell_pro = fused_moe_caches(spec, 8, 8192, "0.19", "nvfp4", device_facts(None, (12, 0)))
    assert unknown.nbytes + unknown.transient == blackwell_pro.nbytes + blackwell_pro.transient == 2_049_874_048
    assert unknown.transient == 170_825_856 > fused_moe_caches(spec, 8, 8192, "0.19", "nvfp4", B200).transient


# --- vLLM 0.33 on compute capability 10.x: FlashInfer 0.7.2.post1's TRT-LLM launchers ---------------------------------
# vLLM 0.33.0's METADATA pins flashinfer-python==0.7.2.post1; its csrc/trtllm_fused_moe_kernel_launcher.cu allocates,
# per call, prepare_routing_common's maps (permuted_idx_to_token_idx now P + 1 ints), prepare_moe's GEMM buffers, and
# prepare_moe_common's batched-GEMM workspaces, empty for every MoE config (BatchedGemmInterface asks row-max buffers
# only for DeepSeek fp8 with a fused activation; the MoE runner asks fusedAct = !useDeepSeekFp8).


def test_flashinfer_0_7_2_weighs_the_tiles_around_the_first_one_that_covers_the_average() -> None:
    # computeSelectedTileN: the first supported tile at or above T k / local experts (no longer the next power of
    # two: NVFP4's 192 is a candidate), the two above it and the one below
    nvfp4 = (8, 16, 32, 64, 128, 192, 256)
    assert trtllm_candidate_tiles_072(nvfp4, 8192, 8, 512) == (64, 128, 192, 256)  # average 128
    assert trtllm_candidate_tiles_072(nvfp4, 8192, 8, 384) == (128, 192, 256)  # average 170.7: 192 first
    assert trtllm_candidate_tiles_072(nvfp4, 1, 8, 256) == (8, 16, 32)  # below the smallest: it and two above
    assert trtllm_candidate_tiles_072((8, 16, 32, 64, 128), 8192, 8, 128) == (64, 128)  # beyond the largest


def test_vllm_0_33_charges_trtllms_block_fp8_buffers_for_qwen3_30b_a3b_on_a_b200_not_tritons_workspace() -> None:
    # oracle/fp8.py puts FLASHINFER_TRTLLM first; on 10.x its TrtLlmFp8ExpertsMonolithic (routing from logits, no
    # workspace manager) or, for routings it does not list, TrtLlmFp8ExpertsModular (the workspace manager keeps its
    # tokens x K output only): TritonExperts' 65,536 x (2048 + 2048) x 2 workspace is never asked for.  By hand for
    # Qwen3-30B-A3B-FP8 on one B200 at 8192 tokens (top 8 of 128 experts, K = 2048, w = 768):
    # * tiles 8 to 128, average 512: the last, 128, and 64 below it; at 128, 128 + (65,536 - 128) // 128 = 639 CTAs,
    #   P = 81,792 (at 64: 73,600)
    # * prepare_routing_common: 128 x 4 + 4 + 65,536 x 4 + 81,793 x 4 + 65,536 x 4 + 512 x 4 + 2 x 639 x 4 + 4
    # * Fp8BlockScaleLauncher::prepare_moe: fp8 GEMM 1 81,792 x 1536 with scales 12 x 81,792 x 4, the fp8
    #   activation 81,792 x 768 with scales 6 x 81,792 x 4, bf16 GEMM 2 81,792 x 2048 x 2
    # * vLLM: the fp8 input 8192 x 2048, its scales 8192 x 16 x 4 and their transposed copy, and the larger of the
    #   launcher's bf16 expert weights and the modular class's int32 top-k ids: 65,536 x 4
    routing = 128 * 4 + 4 + 65_536 * 4 + 81_793 * 4 + 65_536 * 4 + 512 * 4 + 2 * 639 * 4 + 4
    gemms = 81_792 * 1536 + 12 * 81_792 * 4 + 81_792 * 768 + 6 * 81_792 * 4 + 81_792 * 2048 * 2
    vllm = 8192 * 2048 + 2 * 8192 * 16 * 4 + 65_536 * 4
    per_call = routing + gemms + vllm
    assert (routing, gemms, vllm, per_call) == (859_140, 529_357_824, 18_087_936, 548_304_900)
    assert trtllm_moe_call_bytes_033("fp8-block128", tokens=8192, experts=128, top_k=8, hidden=2048, width=768,
                                     local_experts=128) == per_call
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-block128", B200)
    # the 8192 x 2048 bf16 output kept (the modular class's workspace; the safe side of the monolithic one's), the
    # launcher's buffers inside each layer: 581,859,332 at the layer, 33,554,432 under the sampler pass (was
    # Triton's 536,870,912 in both)
    assert (caches.nbytes, caches.persists, caches.transient) == (8192 * 2048 * 2, True, per_call)
    assert "TrtLlmFp8ExpertsMonolithic" in caches.basis and "not asked for" in caches.basis
    # a device not known may be a Hopper one, where Triton's workspace is kept: the larger of both, as for 0.19
    unknown = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-block128", UNKNOWN_DEVICE)
    assert (unknown.nbytes, unknown.transient) == (536_870_912, 33_554_432 + per_call - 536_870_912)
    assert fused_moe_caches(spec, 1, 8192, "0.33", "fp8-block128", H100).nbytes == 536_870_912
    # the profiling peak at 1024 sequences: the sampler pass no longer holds Triton's workspace; beside it Model
    # Runner V2's structured-output bitmask, 1024 x (ceil(151,936 / 32) + 1) x 4 = 19,451,904 bytes
    stage = Stage(spec, 1, 1, (0, spec.num_layers), True)
    assert VllmProfile("0.33").activation(stage, BatchLimits(8192, 1024), "fp8-block128", B200).bytes \
        == 3_406_086_144 - 536_870_912 + 33_554_432 + 19_451_904 == 2_922_221_568


def test_vllm_0_33_charges_trtllms_mxfp4_buffers_for_gpt_oss_120b_on_a_b200() -> None:
    # oracle/mxfp4.py _get_priority_backends_for_gpt_oss: FLASHINFER_TRTLLM_MXFP4_BF16 first on 10.x, hidden 2880
    # rounded to 256 (3072), width 2880 to 128 (2944); TrtLlmMxfp4ExpertsMonolithic makes its 8192 x 2880 bf16
    # output with torch.empty and the runner pads the input to 3072 (F.pad: skip_forward_padding is False for the
    # BF16 backend).  At 8192 tokens, top 4 of 128: bf16 activations take tiles 8 to 64, average 256, so 64 (and
    # 32): 128 + (32,768 - 128) // 64 = 638 CTAs, P = 40,832; bf16 GEMM 1 40,832 x 2944 x 2 (the activation fused),
    # GEMM 2 40,832 x 3072 x 2, core.py's topk_ids and topk_weights 32,768 x (4 + 2)
    routing = 128 * 4 + 4 + 32_768 * 4 + 40_833 * 4 + 32_768 * 4 + 512 * 4 + 2 * 638 * 4 + 4
    gemms = 40_832 * 2944 * 2 + 40_832 * 3072 * 2
    per_call = routing + gemms + 32_768 * 6 + 8192 * 3072 * 2
    assert (routing, gemms, per_call) == (433_148, 491_290_624, 542_252_028)
    caches = fused_moe_caches(get_preset("gpt-oss-120b"), 1, 8192, "0.33", "mxfp4", B200)
    assert (caches.nbytes, caches.persists, caches.transient) == (8192 * 2880 * 2, False, per_call)
    assert "TrtLlmMxfp4ExpertsMonolithic" in caches.basis
    # was Triton's 2 x 32,768 x 2880 x 2 = 566,231,040, kept: 589,437,948 in the layer now, nothing kept
    assert caches.nbytes + caches.transient == 589_437_948


def test_vllm_0_33_charges_trtllms_nvfp4_buffers_for_deepseek_v3_on_eight_b200s() -> None:
    # oracle/nvfp4.py: FLASHINFER_TRTLLM first, TrtLlmNvFp4ExpertsMonolithic for DeepSeek-V3's routing.  By hand at
    # TP 8 and 8192 tokens (top 8 of 256 experts on every rank, K = 7168, w = 2048 / 8 = 256):
    # * NVFP4 tiles 8 to 256 with 192: average 256, the last; 256 + (65,536 - 256) // 256 = 511 CTAs, P = 130,816
    #   (at 192: 114,432)
    # * FP4BlockScaleLauncher::prepare_moe: fp4 GEMM 1 130,816 x 128 bytes with its swizzled scales 130,816 x 16,
    #   bf16 GEMM 2 130,816 x 7168 x 2; core.py's topk_ids and topk_weights 65,536 x (4 + 2); vLLM's fp4 input
    #   8192 x 3584 and its scales in the linear layout (is_scale_swizzled False for FLASHINFER_TRTLLM) 8192 x 448
    routing = 256 * 4 + 4 + 65_536 * 4 + 130_817 * 4 + 65_536 * 4 + 512 * 4 + 2 * 511 * 4 + 4
    per_call = (routing + 65_536 * 6 + 8192 * 3584 + 8192 * 448 + 130_816 * 128 + 130_816 * 16
                + 130_816 * 7168 * 2)
    assert (routing, per_call) == (1_054_724, 1_928_693_764)
    assert trtllm_moe_call_bytes_033("nvfp4", tokens=8192, experts=256, top_k=8, hidden=7168, width=256,
                                     local_experts=256) == per_call
    spec = get_preset("deepseek-v3")
    caches = fused_moe_caches(spec, 8, 8192, "0.33", "nvfp4", B200)
    assert (caches.nbytes, caches.persists, caches.transient) == (8192 * 7168 * 2, True, per_call)
    assert "TrtLlmNvFp4ExpertsMonolithic" in caches.basis
    # at 16 sequences the forward pass is the peak: beside the shared experts, 2 x 8192 x (3 x 7168 + 3 x 2048 / 8)
    # + the layer's 2,046,134,276, against MLA's 2 x 8192 x (3 x 7168 + 9216) + Triton's kept 1,879,048,192; beside
    # it Model Runner V2's structured-output bitmask, 16 x (ceil(129,280 / 32) + 1) x 4 = 258,624 bytes
    stage = Stage(spec, 8, 1, (0, spec.num_layers), True)
    profile = VllmProfile("0.33")
    assert profile.activation(stage, BatchLimits(8192, 16), "nvfp4", B200).bytes \
        == 2_411_868_672 + 28_674_052 + 258_624
    assert (2 * 8192 * (21_504 + 768) + 117_440_512 + per_call
            - 2 * 8192 * (21_504 + 9216) - 1_879_048_192) == 28_674_052
    # at 1024 sequences the sampler pass holds the 117,440,512-byte output, not Triton's workspace, beside the
    # bitmask of 1024 x 4,041 x 4 = 16,551,936 bytes (2,978,088,964 before)
    assert profile.activation(stage, BatchLimits(8192, 1024), "nvfp4", B200).bytes \
        == 2_978_088_964 + 16_551_936 == 2_994_640_900


def test_vllm_0_33_per_tensor_fp8_and_bf16_experts_on_a_b200_keep_the_larger_path() -> None:
    # per-tensor fp8: TrtLlmFp8ExpertsMonolithic for the routings it lists, FlashInferExperts (oracle/fp8.py
    # FLASHINFER_CUTLASS next) for the rest, both keeping at most the tokens x K output: the larger per-call figure,
    # here CUTLASS's 542,125,184 (TRT-LLM's launcher holds no activation buffer in 0.7.2: (P + E) x 2w fp8 GEMM 1 with
    # its scales and P x K bf16 GEMM 2)
    spec = get_preset("qwen3-30b-a3b")
    caches = fused_moe_caches(spec, 1, 8192, "0.33", "fp8-per-tensor-static", B200)
    assert (caches.nbytes, caches.transient) == (33_554_432, 542_125_184)
    trtllm = trtllm_moe_call_bytes_033("fp8-per-tensor-static", tokens=8192, experts=128, top_k=8, hidden=2048,
                                       width=768, local_experts=128)
    routing = 128 * 4 + 4 + 65_536 * 4 + 81_793 * 4 + 65_536 * 4 + 512 * 4 + 2 * 639 * 4 + 4
    rows = 81_792 + 128
    assert trtllm == (routing + 65_536 * 2 + rows * 1536 + 12 * rows * 4 + 81_792 * 2048 * 2 + 65_536 * 8
                      + 8192 * 2048) == 483_073_028 < 542_125_184
    # bf16: FLASHINFER_TRTLLM first, but routings its monolithic class does not list fall to FlashInferExperts,
    # charged Triton's figure: Triton's kept, TRT-LLM's excess inside the layer where it passes it (2048 tokens)
    assert fused_moe_caches(spec, 1, 8192, "0.33", "bf16", B200).nbytes == 536_870_912
    short = fused_moe_caches(spec, 1, 2048, "0.33", "bf16", B200)
    assert (short.nbytes, short.transient) == (134_217_728, 58_298_372)
    # gpt-oss's SWIGLUOAI moves FLASHINFER_TRTLLM back: Triton alone
    assert fused_moe_caches(get_preset("gpt-oss-120b"), 1, 2048, "0.33", "bf16", B200).transient == 0
