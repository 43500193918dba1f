"""The fused-MoE kernels' buffers: the caches, workspaces and warm-ups vLLM's MoE layers allocate.

``model_executor/layers/fused_moe/fused_moe.py`` and ``modular_kernel.py`` (the intermediate caches and their chunking,
`fused_moe_caches`), FlashInfer's TRT-LLM MoE (``trtllm_moe.py``, ``flashinfer_trtllm_moe.py``: `trtllm_moe_bytes`),
FlashInfer's CUTLASS MoE and its autotuner (``flashinfer_cutlass_moe.py``, ``v1/worker/gpu_model_runner.py``
``_dummy_run`` autotune: `cutlass_moe_profiler_workspace_bytes`, `flashinfer_moe_autotune_buffer`), DeepGEMM's
workspace and warm-up (``deep_gemm_moe.py``, ``model_executor/warmup/deep_gemm_warmup.py``: `deep_gemm_moe_warmup`),
and the workspace manager's alignment (``v1/worker/workspace.py``: `aligned`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quant_core.catalog import UNKNOWN_DEVICE, DeviceFacts
from quant_core.engines.base import BatchLimits, Stage, Term
from quant_core.engines.vllm_expert_layouts import (
    FLASHINFER_CUTLASS_MOE_FAMILIES,
    HOPPER_CAPABILITY,
    TRTLLM_ALIGNMENT,
    TRTLLM_WIDTH_ALIGNMENT_033,
    flashinfer_cutlass_moe_path,
    humming_indexed_experts_v0_33,
    moe_wna16_backend,
    mxfp4_moe_backend,
)
from quant_core.engines.vllm_graphs import cudagraph_capture_sizes
from quant_core.engines.vllm_linear import round_up
from quant_core.engines.vllm_parallel import expert_shard
from quant_core.engines.vllm_refusals import weight_format_family
from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, GIB, MIB, VERSIONS
from quant_core.specs import ModelSpec

#: v0.19's WorkspaceManager (v1/worker/workspace.py) rounds every view of a ``get_simultaneous`` request up to this
#: many bytes and holds one buffer per rank, grown to the largest request any caller has made until it is locked
#: after the profiling run: the fused-MoE caches (fused_moe/modular_kernel.py, _allocate_buffers), FlashMLA sparse's
#: buffers and the indexer's prefill buffers are views of the same allocation, not three
WORKSPACE_ALIGNMENT = 256


def aligned(size: int) -> int:
    """`size` rounded up to `WORKSPACE_ALIGNMENT` (workspace.py, get_simultaneous: ``round_up(actual, 256)``)."""
    return -(-size // WORKSPACE_ALIGNMENT) * WORKSPACE_ALIGNMENT


#: vLLM 0.11's default VLLM_FUSED_MOE_CHUNK_SIZE (envs.py: ``os.getenv("VLLM_FUSED_MOE_CHUNK_SIZE", "32768")``; the
#: ``64 * 1024`` of its type annotation is not the default): fused_experts_impl sizes its caches for at most this many
#: tokens and runs a longer batch in chunks of it
FUSED_MOE_CHUNK_TOKENS_V0_11 = 32768


@dataclass(frozen=True, slots=True)
class FusedMoeCaches:
    """The fused-MoE caches one rank allocates for a batch of `tokens` tokens on vLLM `version`
    (`fused_moe_caches`): `nbytes` in all, `persists` when they stay allocated after the forward pass (the
    workspace manager's buffer, under the sampler pass and every later layer), `basis` the kernel class and file;
    `transient` what the kernel allocates and frees inside each MoE layer beside `nbytes` (FlashInfer's CUTLASS
    workspace: `cutlass_moe_runtime_workspace_bytes`)."""

    nbytes: int
    persists: bool
    basis: str
    transient: int = 0
#: Blackwell's (B200, GB200): vLLM 0.11 runs block-fp8 experts on DeepGEMM there whatever their shape, its E8M0 path
#: (utils/deep_gemm.py ``is_deep_gemm_e8m0_used``: ``is_device_capability(100)`` and ``VLLM_USE_DEEP_GEMM_E8M0``,
#: "1" by default in envs.py; fused_moe.py ``fused_experts`` takes ``deep_gemm_moe_fp8`` when ``is_deep_gemm_e8m0_used()
#: or _valid_deep_gemm(...)``: "on B200, we use DeepGemm for all cases because they only support E8M0 scale")
DEEP_GEMM_E8M0_CAPABILITY = (10, 0)


#: vLLM 0.11's DeepGEMM fused-MoE path (fused_moe/deep_gemm_moe.py, ``_valid_deep_gemm``): M, N and K aligned to
#: DeepGEMM's 128-row block and the expert width per rank (w2's N) above 512, else it falls back to Triton
DEEP_GEMM_ALIGNMENT = 128
DEEP_GEMM_MIN_WIDTH_V0_11 = 512


def fused_moe_caches(spec: ModelSpec, tensor_parallel: int, tokens: int, version: str, expert_format: str = "",
                     device: DeviceFacts = UNKNOWN_DEVICE, expert_parallel: bool = False,
                     data_parallel: bool = False) -> FusedMoeCaches:
    """The fused-MoE intermediate caches of a MoE layer over `tokens` tokens on one rank, as vLLM `version`'s code
    sizes them, with ``k`` = top_k, ``w`` = moe_intermediate_size / tp, ``K`` = hidden_size, bf16 (2 bytes).
    With `data_parallel` (a MoE model's data-parallel ranks: `tensor_parallel` is then the data x tensor ranks of
    the MoE layers and `tokens` the rows they gather, `moe_dispatched_tokens`) MXFP4 experts on OpenAI's Triton
    kernels run on the modular OAITritonExperts, whose buffers the workspace manager keeps.
    With `expert_parallel` (``--enable-expert-parallel``, data parallel 1) the same kernels run on the rank's whole
    experts (`expert_shard`: ``w`` = moe_intermediate_size, ``experts`` the rank's local count), the tokens not
    dispatched (no all2all manager: `EXPERT_PARALLEL_PATH`); in 0.33 on Hopper block fp8 then prefers FlashInfer's
    CUTLASS experts (oracle/fp8.py ``select_fp8_moe_backend``: ``ep_size > 1`` moves FLASHINFER_CUTLASS to the
    front), whose ``T x K`` workspace is charged the Triton figure, on the safe side, as for per-tensor fp8.

    * v0.11 with block-fp8 experts (`expert_format` "fp8-block128") wider than 512 a rank on Hopper
      (`HOPPER_CAPABILITY`), or of any width on compute capability 10.0 (`DEEP_GEMM_E8M0_CAPABILITY`, the E8M0 path
      that skips ``_valid_deep_gemm``; its ``allow_cutlass_block_scaled_grouped_gemm`` comes second in
      ``fused_experts``): ``Fp8MoEMethod`` calls ``deep_gemm_moe_fp8`` (``allow_deep_gemm`` when the deep_gemm
      package is present), a modular kernel whose ``DeepGemmExperts.workspace_shapes`` asks ``M_sum x max(2w, K)``
      and ``M_sum x max(w, K)`` with ``M_sum = round_up(M x k + experts x 127, 128)`` (``compute_aligned_M``),
      ``M = min(tokens, 32768)`` (the kernel chunks), kept in class-level ``SharedResizableBuffer``s: they persist.
      A device of unknown compute capability is charged this (at least ``fused_experts_impl``'s caches, row for row,
      and held: the most either path takes).
    * v0.11 otherwise, and v0.19's GPTQ and AWQ experts on MoeWNA16 (`moe_wna16_backend` "triton": its ``apply``
      calls ``fused_experts``, unchunked in 0.19 and out of place, with a ``T x K`` output) (fused_moe/fused_moe.py,
      ``fused_experts_impl``, the default path without expert parallelism: ``UnquantizedFusedMoEMethod`` and
      ``Fp8MoEMethod`` call ``fused_experts`` in place): ``cache13`` of
      ``M x k x max(2w, K)`` (intermediate_cache1 and 3 share it) and ``intermediate_cache2`` of ``M x k x w``,
      ``M = min(tokens, VLLM_FUSED_MOE_CHUNK_SIZE = 32768)``; torch.empty in each call, freed after the layer.
    * v0.19 and v0.33 (the modular kernel, ``FusedMoEKernel._allocate_buffers`` in fused_moe/modular_kernel.py, not
      chunked: it passes ``M_full`` as ``M_chunk``): ``TritonExperts.workspace_shapes`` (fused_moe/fused_moe.py in
      0.19, fused_moe/experts/triton_moe.py in 0.33) asks workspace13 ``T x k x max(w, K)`` (which also holds the
      ``T x K`` output) and workspace2 ``T x k x max(2w, K)`` of ``current_workspace_manager().get_simultaneous``
      (v1/worker/workspace.py: each rounded up to 256 bytes, one buffer per rank kept until it is locked after
      profiling).  TritonExperts is what the oracles pick for bf16 MoE on H100/H200/A100/L40S (oracle/unquantized.py)
      and for block fp8 on Hopper under tensor parallelism (oracle/fp8.py moves TRITON to the front);
      ``MarlinExperts`` (fused_marlin_moe.py: ``M x k x max(w, K)`` and ``M x k x max(2w, K)``, the same bytes)
      runs int4 (GPTQ/AWQ Marlin) and fp8/mxfp4 experts on A100.  The other classes are charged this figure, on the
      safe side, except:

      - 0.19's block-fp8, MXFP4 and NVFP4 experts on 10.x (and on a device of unknown capability), which run on
        FlashInfer's TRT-LLM kernels (`trtllm_moe_bytes`): where their ``T x K`` output and FlashInfer's per-call
        buffers come to more than Triton's workspace, the difference is charged inside the layer
        (`FusedMoeCaches.transient`) beside Triton's held figure, the larger of both in either pass; so are 0.33's
        (FlashInfer 0.7.2's launchers) on a device of unknown capability and its bf16 experts on 10.x, while on a
        known 10.x device 0.33's block-fp8, per-tensor fp8, NVFP4 and gpt-oss MXFP4 experts are charged their own
        figure alone (`_trtllm_caches_v0_33`: Triton's workspace is not asked for there);

      - MXFP4 experts (`expert_format` "mxfp4", gpt-oss) where `mxfp4_moe_backend` is OpenAI's Triton kernels
        (compute capability 9.x): ``OAITritonMxfp4ExpertsMonolithic`` bypasses the workspace manager and
        ``triton_kernel_fused_experts`` (gpt_oss_triton_kernels_moe.py) allocates its ``T x k x w`` intermediate (the
        activation fused into the first matmul) and ``T x K`` output with torch.empty in each call, freed after the
        layer (gpt-oss-20b at TP 2 on vLLM 0.19, H100: 2.87 GiB logged, the sampler pass alone);
      - fp8 experts with static per-tensor scales ("fp8-per-tensor-static") and NVFP4 experts where
        `flashinfer_cutlass_moe_path` runs them on ``FlashInferExperts`` outside the 10.x family (where TRT-LLM's
        kernels may take them, charged this figure): its ``workspace_shapes`` asks workspace13 ``(T, K)``,
        workspace2 ``(0,)`` and output ``(T, K)``, one ``T x K`` bf16 view of the workspace manager's buffer, kept,
        and FlashInfer's ``cutlass_fused_moe`` allocates its CUTLASS workspace in each layer and frees it
        (`cutlass_moe_runtime_workspace_bytes`, `FusedMoeCaches.transient`);
      - 0.33's int4 and NVFP4 experts on ``HummingIndexedExperts`` (compute capability 9.0,
        `humming_indexed_experts_v0_33`):
        ``get_buffer_metas`` chains five 16-bit buffers (activations unquantized, ``HummingInputSchema()``: the
        layer's dtype), the w13 input ``T x K``, gate/up output ``T x k x 2w``, w2 input ``T x k x w``, down output
        ``T x k x K`` and output ``T x K``, and ``_workspace_shapes`` lays them alternately, from the output back,
        into workspace1 ``max(T x K, T x k x w)`` and workspace2 ``T x k x max(K, 2w)``: workspace1 holds no
        ``k x K`` rows, so it is ``T x (k x max(w, K) - max(K, k x w))`` elements under Triton's.
    """
    k, hidden = spec.experts_per_token, spec.hidden_size
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    if data_parallel and expert_format == "mxfp4" and mxfp4_moe_backend(version, device).startswith("triton"):
        nbytes = (aligned(tokens * k * width * ACTIVATION_ELEMENT_BYTES)
                  + aligned(tokens * hidden * ACTIVATION_ELEMENT_BYTES))
        return FusedMoeCaches(nbytes, True, (
            f"OAITritonExperts' workspace (gpt_oss_triton_kernels_moe.py workspace_shapes: workspace2 tokens x top_k "
            f"x {width}, the activation fused into the first matmul_ogs, and the tokens x {hidden} output, bf16, "
            f"{nbytes / GIB:.2f} GiB, in v1/worker/workspace.py's buffer, kept: under data parallelism "
            "OAITritonMxfp4ExpertsMonolithic refuses dp_size > 1 and the TRITON backend's next class runs them)"))
    if expert_format == "mxfp4" and mxfp4_moe_backend(version, device).startswith("triton"):
        nbytes = tokens * (k * width + hidden) * ACTIVATION_ELEMENT_BYTES
        return FusedMoeCaches(nbytes, False, (
            f"OAITritonMxfp4ExpertsMonolithic's buffers (gpt_oss_triton_kernels_moe.py, triton_kernel_fused_experts: "
            f"tokens x top_k x {width} and tokens x {hidden}, bf16, {nbytes / GIB:.2f} GiB, freed after each layer; "
            "oracle/mxfp4.py picks OpenAI's Triton kernels for MXFP4 experts on Hopper, outside the workspace "
            "manager)"))
    hopper_shape = (device.compute_capability == HOPPER_CAPABILITY and width > DEEP_GEMM_MIN_WIDTH_V0_11
                    and width % DEEP_GEMM_ALIGNMENT == 0 and hidden % DEEP_GEMM_ALIGNMENT == 0)
    if (version == "0.11" and expert_format == "fp8-block128"
            and (hopper_shape or device.compute_capability in (DEEP_GEMM_E8M0_CAPABILITY, None))):
        where = ("on Hopper, wider than 512 a rank and 128-aligned (_valid_deep_gemm)" if hopper_shape
                 else "on compute capability 10.0 whatever the width (the E8M0 path, is_deep_gemm_e8m0_used)"
                 + ("; this device's capability not known, so the most any capability keeps (more than "
                    "fused_experts_impl's caches, and held)" if device.compute_capability is None else ""))
        chunk = min(tokens, FUSED_MOE_CHUNK_TOKENS_V0_11)
        rows = -(-(chunk * k + experts * (DEEP_GEMM_ALIGNMENT - 1)) // DEEP_GEMM_ALIGNMENT) \
            * DEEP_GEMM_ALIGNMENT
        nbytes = rows * (max(2 * width, hidden) + max(width, hidden)) * ACTIVATION_ELEMENT_BYTES
        return FusedMoeCaches(nbytes, True, (
            f"DeepGemmExperts' workspace (deep_gemm_moe.py workspace_shapes: {rows} aligned rows, compute_aligned_M, "
            f"x (max(2 x {width}, {hidden}) + max({width}, {hidden})), bf16, {nbytes / GIB:.2f} GiB, kept in "
            f"modular_kernel.py's class-level SharedResizableBuffers; vLLM 0.11 runs block-fp8 experts on DeepGEMM "
            f"{where} when the deep_gemm package is installed, as vLLM's Docker builds install it, and the charge is "
            "the safe side when it is not)"))
    if version == "0.19" and moe_wna16_backend(spec, expert_format, tensor_parallel, expert_parallel, version,
                                               device) == "triton":
        rows = tokens * k
        nbytes = (rows * (max(2 * width, hidden) + width) + tokens * hidden) * ACTIVATION_ELEMENT_BYTES
        return FusedMoeCaches(nbytes, False, (
            f"fused_experts_impl's caches (vLLM 0.19's MoeWNA16Method.apply calls fused_experts, outside the modular "
            f"kernel and its workspace manager: fused_moe/fused_moe.py cache13 of tokens x top_k x max(2 x {width}, "
            f"{hidden}) and intermediate_cache2 of tokens x top_k x {width}, unchunked, and the tokens x {hidden} "
            "output outplace_fused_experts allocates (fused_moe/utils.py disable_inplace: torch 2.10, which 0.19 "
            f"pins, is past 2.9), bf16, {nbytes / GIB:.2f} GiB, freed after each layer)"))
    if version == "0.11":
        rows = min(tokens, FUSED_MOE_CHUNK_TOKENS_V0_11) * k
        nbytes = rows * (max(2 * width, hidden) + width) * ACTIVATION_ELEMENT_BYTES
        return FusedMoeCaches(nbytes, False, (
            f"fused_experts_impl's caches (fused_moe/fused_moe.py: cache13 of min(tokens, 32768) x top_k x "
            f"max(2 x {width}, {hidden}) and intermediate_cache2 of min(tokens, 32768) x top_k x {width}, bf16, "
            f"{nbytes / GIB:.2f} GiB, freed after each layer)"))
    capability = device.compute_capability
    nvfp4 = weight_format_family(expert_format) == "nvfp4"
    if ((expert_format == "fp8-per-tensor-static" or nvfp4) and capability is not None and capability[0] != 10
            and flashinfer_cutlass_moe_path(version, expert_format, device, expert_parallel, tensor_parallel)):
        held = aligned(tokens * hidden * ACTIVATION_ELEMENT_BYTES)
        # the TMA warp-specialized grouped GEMM fuses the finalize: fp8 x fp8 on 9.0 and 11.x, not 12.x; fp4 x fp4
        # on 11.x and 12.x (moe_gemm_template_dispatch.h supportsTmaWarpSpecialized, moe_tma_warp_specialized_traits.h)
        finalize = nvfp4 or capability[0] != 12
        transient = cutlass_moe_runtime_workspace_bytes(tokens=tokens, experts=experts, top_k=k, hidden=hidden,
                                                        width=width, finalize_fused=finalize, nvfp4=nvfp4)
        held_rows = "packed fp4 rows and their scales" if nvfp4 else "permuted fp8 rows"
        return FusedMoeCaches(held, True, (
            f"FlashInferExperts' (flashinfer_cutlass_moe.py workspace_shapes: workspace13 and the output tokens x "
            f"{hidden}, bf16, one {held / GIB:.2f} GiB view of v1/worker/workspace.py's buffer, kept) and, inside each "
            f"MoE layer, FlashInfer's CUTLASS workspace ({transient / GIB:.2f} GiB: {held_rows}, the bf16 GLU "
            "and GEMM 2 results, routing maps; cutlass_fused_moe_kernels.cuh getWorkspaceDeviceBufferSizes, its TMA "
            "argument arrays and CUTLASS GEMM workspace not counted): "
            f"{flashinfer_cutlass_moe_path(version, expert_format, device, expert_parallel, tensor_parallel)}"),
            transient)
    if version == "0.33" and humming_indexed_experts_v0_33(spec, expert_format, tensor_parallel, expert_parallel,
                                                            device):
        first = aligned(tokens * max(hidden, k * width) * ACTIVATION_ELEMENT_BYTES)
        second = aligned(tokens * k * max(hidden, 2 * width) * ACTIVATION_ELEMENT_BYTES)
        return FusedMoeCaches(first + second, VERSIONS[version].moe_workspace_persists, (
            f"HummingIndexedExperts' workspace (fused_moe/experts/fused_humming_moe.py get_buffer_metas and "
            f"_workspace_shapes: workspace1 holds the output, the tokens x {hidden} w13 input and the tokens x "
            f"top_k x {width} w2 input, workspace2 the tokens x top_k x {2 * width} gate/up and tokens x top_k x "
            f"{hidden} down outputs, bf16, {(first + second) / GIB:.2f} GiB, in v1/worker/workspace.py's buffer, "
            "modular_kernel.py _allocate_buffers; vLLM 0.33 runs these experts on Humming's indexed GEMM on "
            "compute capability 9.0)"))
    rows = tokens * k
    nbytes = (aligned(rows * max(width, hidden) * ACTIVATION_ELEMENT_BYTES)
              + aligned(rows * max(2 * width, hidden) * ACTIVATION_ELEMENT_BYTES))
    flashinfer = flashinfer_cutlass_moe_path(version, expert_format, device, expert_parallel, tensor_parallel)
    if data_parallel and expert_format == "fp8-block128" and flashinfer:
        held = aligned(tokens * hidden * ACTIVATION_ELEMENT_BYTES)
        transient = cutlass_moe_runtime_workspace_bytes(tokens=tokens, experts=experts, top_k=k, hidden=hidden,
                                                        width=width, finalize_fused=True, nvfp4=False)
        if held + transient > nbytes:
            return FusedMoeCaches(held, True, (
                f"FlashInferExperts' tokens x {hidden} bf16 view of v1/worker/workspace.py's buffer "
                f"({held / GIB:.2f} GiB, kept) and, inside each MoE layer, a CUTLASS workspace sized as for fp8 "
                f"experts ({transient / GIB:.2f} GiB, cutlass_fused_moe_kernels.cuh getWorkspaceDeviceBufferSizes): "
                f"{flashinfer}; the block-scale path's own workspace was not read, so on the gathered rows of data "
                f"parallelism the larger of this and TritonExperts' {nbytes / GIB:.2f} GiB is charged, the safe "
                "side"), transient)
    basis = (f"TritonExperts' workspace (workspace_shapes: workspace13 tokens x top_k x max({width}, {hidden}) and "
             f"workspace2 tokens x top_k x max(2 x {width}, {hidden}), bf16, {nbytes / GIB:.2f} GiB, in "
             "v1/worker/workspace.py's buffer, modular_kernel.py _allocate_buffers; MarlinExperts asks the same)")
    trtllm_runs = not data_parallel and (capability is None or capability[0] == 10) and (
        version != "0.33" or trtllm_runs_v0_33(spec, expert_format))
    if trtllm_runs and version == "0.33" and capability is not None and expert_format != "bf16":
        return _trtllm_caches_v0_33(spec, expert_format, tokens, experts, width, capability)
    # a device of unknown compute capability may be a 10.x one (or, for FlashInferExperts, 9.0, 11.x or 12.x): the
    # larger of the paths, as there; so are 0.33's bf16 experts on 10.x, whose routing may leave TRT-LLM's monolithic
    # class for FlashInferExperts (charged Triton's figure, on the safe side)
    candidates: list[tuple[int, int, str]] = []
    if trtllm_runs:
        trtllm = trtllm_moe_bytes(version, expert_format, tokens=tokens, experts=spec.num_experts, top_k=k,
                                  hidden=hidden, width=width, local_experts=experts)
        candidates += [] if trtllm is None else [trtllm]
        if ((expert_format == "fp8-per-tensor-static" or (nvfp4 and capability is None))
                and version in FLASHINFER_CUTLASS_MOE_FAMILIES):
            # FlashInferExperts takes per-tensor fp8 where TRT-LLM's monolithic kernel does not take the routing
            # (its modular one no per-tensor scales), and both formats on 9.0, 11.x and 12.x for a device not
            # known: its CUTLASS workspace, finalize fused or not
            cutlass = max(cutlass_moe_runtime_workspace_bytes(tokens=tokens, experts=experts, top_k=k, hidden=hidden,
                                                              width=width, finalize_fused=fused, nvfp4=nvfp4)
                          for fused in (True, False))
            candidates.append((cutlass, hidden, (
                f"them on FlashInferExperts (oracle/{'nvfp4' if nvfp4 else 'fp8'}.py FLASHINFER_CUTLASS, where "
                "TRT-LLM's kernel does not take the routing or the device is not 10.x; "
                "cutlass_moe_runtime_workspace_bytes)")))
    if candidates:
        per_call, output_hidden, runs = max(candidates, key=lambda c: aligned(tokens * c[1] * 2) + c[0])
        held = aligned(tokens * output_hidden * ACTIVATION_ELEMENT_BYTES)
        if held + per_call > nbytes:
            extra = held + per_call - nbytes
            return FusedMoeCaches(nbytes, VERSIONS[version].moe_workspace_persists, (
                f"{basis}, and {extra / GIB:.2f} GiB more inside each MoE layer: on compute capability 10.x"
                f"{' (this device not known)' if capability is None else ''} vLLM {version} runs {runs}, whose "
                f"tokens x {output_hidden} bf16 output ({held / GIB:.2f} GiB) and FlashInfer's per-call buffers "
                f"({per_call / GIB:.2f} GiB) come to more than Triton's workspace; charged Triton's held and the "
                "difference within the layer, the larger of the paths in either pass"), extra)
    return FusedMoeCaches(nbytes, VERSIONS[version].moe_workspace_persists, basis)


def trtllm_runs_v0_33(spec: ModelSpec, expert_format: str) -> bool:
    """Whether vLLM 0.33 on compute capability 10.x runs `spec`'s routed experts, stored as `expert_format`, on
    FlashInfer's TRT-LLM kernels (`trtllm_moe_bytes_033`) without data parallelism: block fp8, per-tensor fp8 (for
    the routings its monolithic class lists), NVFP4, gpt-oss's MXFP4 (other MXFP4 models take oracle/mxfp4.py
    ``_get_priority_backends``' MXFP8-activation kernel first, not read) and bf16 other than gpt-oss's (oracle/
    unquantized.py moves FLASHINFER_TRTLLM back for the SWIGLUOAI activation)."""
    if expert_format == "mxfp4":
        return spec.model_type == "gpt_oss"
    if expert_format == "bf16":
        return spec.model_type != "gpt_oss"
    return expert_format in TRTLLM_TILES_072 or weight_format_family(expert_format) == "nvfp4"


def _trtllm_caches_v0_33(spec: ModelSpec, expert_format: str, tokens: int, experts: int, width: int,
                         capability: tuple[int, int]) -> FusedMoeCaches:
    """`fused_moe_caches` where vLLM 0.33 runs the experts on FlashInfer's TRT-LLM kernels on compute capability
    10.x (`trtllm_runs_v0_33`, no data parallelism): TritonExperts' workspace is not asked for there.

    * Block fp8 and NVFP4: the monolithic class (router and experts in one call, no workspace manager:
      modular_kernel.py ``FusedMoEKernelMonolithicImpl``) returns core.py's ``tokens x K`` bf16 output; where the
      routing is not one it lists the modular class asks the workspace manager for that output alone
      (``workspace_shapes``: workspace1 and workspace2 ``(0,)``), which keeps it: charged kept, the safe side of
      both, with the larger class's per-call buffers inside each layer (`trtllm_moe_call_bytes_033`).
    * Per-tensor fp8: the monolithic class or, for other routings, FlashInferExperts (its ``tokens x K`` view of
      the workspace manager's buffer, kept, and FlashInfer's CUTLASS workspace in each call,
      `cutlass_moe_runtime_workspace_bytes`): the output kept and the larger per-call figure.
    * gpt-oss's MXFP4: ``TrtLlmMxfp4ExpertsMonolithic`` (Renormalize routing) makes its ``tokens x hidden_dim_unpadded``
      output with torch.empty in each call: nothing kept."""
    k, hidden = spec.experts_per_token, spec.hidden_size
    result = trtllm_moe_bytes_033(expert_format, tokens=tokens, experts=spec.num_experts, top_k=k, hidden=hidden,
                                  width=width, local_experts=experts)
    assert result is not None  # trtllm_runs_v0_33
    per_call, output_hidden, runs = result
    cutlass = ""
    if expert_format == "fp8-per-tensor-static":
        workspace = cutlass_moe_runtime_workspace_bytes(tokens=tokens, experts=experts, top_k=k, hidden=hidden,
                                                        width=width, finalize_fused=capability[0] != 12)
        if workspace > per_call:
            cutlass = (f": FlashInferExperts' CUTLASS workspace, which runs the routings TRT-LLM's class does not "
                       f"list (oracle/fp8.py FLASHINFER_CUTLASS next; cutlass_moe_runtime_workspace_bytes), larger "
                       f"than TRT-LLM's {per_call / GIB:.2f} GiB")
            per_call = workspace
    if expert_format == "mxfp4":
        held = tokens * output_hidden * ACTIVATION_ELEMENT_BYTES
        return FusedMoeCaches(held, False, (
            f"FlashInfer's TRT-LLM buffers (vLLM 0.33 on compute capability 10.x runs {runs}: its tokens x "
            f"{output_hidden} bf16 output, {held / GIB:.2f} GiB, torch.empty in apply, and FlashInfer's per-call "
            f"buffers, {per_call / GIB:.2f} GiB, freed after each layer; TritonExperts' workspace is not asked for)"),
            per_call)
    held = aligned(tokens * output_hidden * ACTIVATION_ELEMENT_BYTES)
    return FusedMoeCaches(held, True, (
        f"FlashInfer's TRT-LLM buffers (vLLM 0.33 on compute capability 10.x runs {runs}: the tokens x "
        f"{output_hidden} bf16 output, {held / GIB:.2f} GiB, kept in v1/worker/workspace.py's buffer where the modular "
        f"class or FlashInferExperts runs, the safe side, and inside each MoE layer FlashInfer's per-call buffers, "
        f"{per_call / GIB:.2f} GiB{cutlass}; TritonExperts' workspace is not asked for)"), per_call)


#: flashinfer-python 0.6.6 (vLLM 0.19's pin) csrc/trtllm_fused_moe_kernel_launcher.cu: the token tiles of the
#: DeepSeek-fp8 block-scale kernels (``Fp8BlockScaleLauncher::mBaseSupportedTileNums``; 256 is MxFP8's)
TRTLLM_FP8_BLOCK_TILES = (8, 16, 32, 64, 128)
#: include/flashinfer/trtllm/fused_moe/runner.h ``maybeGetMinTokenCount``: each GEMM output padded to at least 128 KiB
TRTLLM_MIN_OUTPUT_BYTES = 128 * 1024
#: ``FP4BlockScaleLauncher::getSupportedTileNums``: 8 to 64 with bf16 activations (gpt-oss's MXFP4 x bf16), up to
#: 256 with fp4 or fp8 ones (NVFP4)
TRTLLM_FP4_BF16_TILES = (8, 16, 32, 64)
TRTLLM_FP4_TILES = (8, 16, 32, 64, 128, 256)


def trtllm_largest_tile(tiles: tuple[int, ...], tokens: int, top_k: int, local_experts: int) -> int:
    """The largest token tile FlashInfer 0.6.6's TRT-LLM MoE may run `tokens` tokens at: ``computeSelectedTileN``
    (csrc/trtllm_fused_moe_kernel_launcher.cu) takes the power of two at or above ``T k / local experts``, clamped
    to `tiles`, with the two tiles above it and the one below; the tactic (autotuned or default) picks among them,
    so the largest is the safe side."""
    average = -(-tokens * top_k // local_experts)
    wanted = 1 if average <= 1 else 1 << (average - 1).bit_length()
    index = tiles.index(min(max(wanted, tiles[0]), tiles[-1]))
    return tiles[min(index + 2, len(tiles) - 1)]
#: NVFP4: one e4m3 scale per 16 values (``sf_vec_size``), laid out swizzled in 128-row x 4-column blocks
#: (csrc/nv_internal/tensorrt_llm/kernels/quantization.h ``computeSwizzledLayoutSFSize``)
NVFP4_SCALE_BLOCK = 16


def _trtllm_routing_bytes(tokens: int, experts: int, top_k: int, tile: int) -> tuple[int, int]:
    """(``P``, the bytes of ``prepare_routing_common``) of FlashInfer 0.6.6's TRT-LLM MoE launcher
    (csrc/trtllm_fused_moe_kernel_launcher.cu) at token tile `tile`: ``P = maxCtas x tile``, runner.h
    ``getMaxNumCtasInBatchDim``: ``min(E, T k) + (T k - min(E, T k)) // tile``; the per-expert counts, the expanded
    and permuted index maps, the expert indexes, the histogram of ``max(2E, 512)`` and two CTA maps, int32."""
    expanded = tokens * top_k
    ctas = min(experts, expanded) + (expanded - min(experts, expanded)) // tile
    padded = ctas * tile
    return padded, (experts * 4 + 4 + expanded * 4 + padded * 4 + expanded * 4 + max(2 * experts, 512) * 4
                    + 2 * ctas * 4 + 4)


def trtllm_fp4_moe_bytes(*, tokens: int, experts: int, top_k: int, hidden: int, width: int, local_experts: int,
                         nvfp4: bool) -> int:
    """The bytes vLLM 0.19's TRT-LLM FP4 experts and FlashInfer 0.6.6's ``trtllm_fp4_block_scale_moe`` /
    ``..._routed_moe`` hold at once inside one MoE layer of `tokens` tokens (`experts` the routing's global count,
    `hidden` and `width` as the kernel sees them: gpt-oss's padded to 256).  MXFP4 x bf16 (`nvfp4` False:
    experts/trtllm_mxfp4_moe.py ``TrtLlmMxfp4ExpertsMonolithic``, whose ``apply`` makes the ``torch.empty_like``
    output): tiles up to 64, GEMM 1 output ``P1 x w`` bf16.  NVFP4 (experts/trtllm_nvfp4_moe.py): tiles up to 256,
    GEMM 1 output ``P1 x w / 2`` fp4 with its swizzled e4m3 scales, beside the fp4 input and its scales the modular
    kernel quantizes and vLLM's packed top-k ids.  Both: core.py's ``topk_ids`` (int32) and ``expert_weights``
    (bf16), and ``FP4BlockScaleLauncher::prepare_moe``'s bf16 GEMM 2 output ``P2 x K``, ``P1``, ``P2`` at least
    128 KiB of their row (runner.h ``maybeGetMinTokenCount``), at the largest tile the tactic may pick
    (`trtllm_largest_tile`).  The one bf16 ``tokens x hidden`` output (the workspace manager's, vLLM's or core.py's)
    is the caller's.  Not counted: the batched GEMMs' ``workspace_fc1`` / ``workspace_fc2`` (not read)."""
    expanded = tokens * top_k
    tile = trtllm_largest_tile(TRTLLM_FP4_TILES if nvfp4 else TRTLLM_FP4_BF16_TILES, tokens, top_k, local_experts)
    padded, routing = _trtllm_routing_bytes(tokens, experts, top_k, tile)
    wrapper = expanded * 4 + expanded * 2
    gemm2_rows = max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES // (hidden * 2)))
    if not nvfp4:
        gemm1_rows = max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES // (width * 2)))
        return routing + wrapper + gemm1_rows * width * 2 + gemm2_rows * hidden * 2
    gemm1_rows = max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES * 2 // width))  # 4-bit activations
    gemm1_scales = round_up(gemm1_rows, 128) * round_up(width // NVFP4_SCALE_BLOCK, 4)
    quantized = tokens * hidden // 2 + round_up(tokens, 128) * round_up(hidden // NVFP4_SCALE_BLOCK, 4)
    return (routing + wrapper + expanded * 4 + quantized + gemm1_rows * width // 2 + gemm1_scales
            + gemm2_rows * hidden * 2)


def trtllm_fp8_per_tensor_moe_bytes(*, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                                    local_experts: int) -> int:
    """The bytes vLLM 0.19's ``TrtLlmFp8ExpertsMonolithic._apply_per_tensor`` (fused_moe/experts/trtllm_fp8_moe.py;
    DeepSeek-V3 and Llama 4 routing, ``_supports_routing_method``) and FlashInfer 0.6.6's
    ``trtllm_fp8_per_tensor_scale_moe`` hold at once inside one MoE layer of `tokens` tokens beyond the one bf16
    ``tokens x hidden`` output (the caller's): the fp8 input the modular kernel quantizes (``T x K``), the float32
    router logits DeepSeek-V3's routing asks (``T x E``), core.py's ``topk_ids`` and ``expert_weights`` (``T x k``,
    4 bytes each, the safe side of the logits' dtype); csrc/trtllm_fused_moe_kernel_launcher.cu
    ``Fp8PerTensorLauncher``: the routing (`_trtllm_routing_bytes`, tiles 8 to 128 by `trtllm_largest_tile`), bf16
    expert weights ``T x k``, and ``prepare_moe``'s fp8 GEMM 1 output ``(P + E) x 2w`` with fp32 scales ``2w / 128 x
    (P + E)``, the fp8 activation ``(P + E) x w`` with scales ``w / 128 x (P + E)`` and the bf16 GEMM 2 output
    ``P x K``.  Not counted: the batched GEMMs' ``workspace_fc1`` / ``workspace_fc2`` (not read)."""
    expanded = tokens * top_k
    tile = trtllm_largest_tile(TRTLLM_FP8_BLOCK_TILES, tokens, top_k, local_experts)
    padded, routing = _trtllm_routing_bytes(tokens, experts, top_k, tile)
    rows = padded + experts
    gemms = (rows * 2 * width + (2 * width // 128) * rows * 4 + rows * width + (width // 128) * rows * 4
             + padded * hidden * 2)
    return routing + expanded * 2 + expanded * 8 + tokens * hidden + tokens * experts * 4 + gemms


def trtllm_moe_bytes(version: str, expert_format: str, *, tokens: int, experts: int, top_k: int, hidden: int,
                     width: int, local_experts: int) -> tuple[int, int, str] | None:
    """(bytes, the output's hidden size, what runs) of the TRT-LLM experts vLLM `version` runs `expert_format` on
    with compute capability 10.x (`trtllm_fp8_block_moe_bytes`, `trtllm_fp8_per_tensor_moe_bytes`,
    `trtllm_fp4_moe_bytes`), or None where nibble did not read them: read for 0.19 (FlashInfer 0.6.6), block fp8
    (oracle/fp8.py FLASHINFER_TRTLLM first: ``TrtLlmFp8ExpertsModular``, whose figure bounds the monolithic
    class's), fp8 with static per-tensor scales (``TrtLlmFp8ExpertsMonolithic``), MXFP4 (oracle/mxfp4.py
    FLASHINFER_TRTLLM_MXFP4_BF16, hidden size and width padded to 256,
    ``mxfp4_round_up_hidden_size_and_intermediate_size``) and NVFP4 (oracle/nvfp4.py FLASHINFER_TRTLLM first); for
    0.33 (FlashInfer 0.7.2.post1) by `trtllm_moe_bytes_033`."""
    if version == "0.33":
        return trtllm_moe_bytes_033(expert_format, tokens=tokens, experts=experts, top_k=top_k, hidden=hidden,
                                    width=width, local_experts=local_experts)
    if version != "0.19":
        return None
    if expert_format == "fp8-block128":
        return (trtllm_fp8_block_moe_bytes(tokens=tokens, experts=experts, top_k=top_k, hidden=hidden, width=width,
                                           local_experts=local_experts), hidden,
                "block-fp8 experts on TrtLlmFp8ExpertsModular (oracle/fp8.py FLASHINFER_TRTLLM first, "
                "experts/trtllm_fp8_moe.py)")
    if expert_format == "fp8-per-tensor-static":
        return (trtllm_fp8_per_tensor_moe_bytes(tokens=tokens, experts=experts, top_k=top_k, hidden=hidden,
                                                width=width, local_experts=local_experts), hidden,
                "per-tensor fp8 experts on TrtLlmFp8ExpertsMonolithic for DeepSeek-V3 and Llama 4 routing "
                "(oracle/fp8.py FLASHINFER_TRTLLM first)")
    if expert_format == "mxfp4":
        padded_hidden = round_up(hidden, TRTLLM_ALIGNMENT)
        return (trtllm_fp4_moe_bytes(tokens=tokens, experts=experts, top_k=top_k, hidden=padded_hidden,
                                     width=round_up(width, TRTLLM_ALIGNMENT), local_experts=local_experts,
                                     nvfp4=False), padded_hidden,
                "MXFP4 experts on TrtLlmMxfp4ExpertsMonolithic (oracle/mxfp4.py FLASHINFER_TRTLLM_MXFP4_BF16)")
    if weight_format_family(expert_format) == "nvfp4":
        return (trtllm_fp4_moe_bytes(tokens=tokens, experts=experts, top_k=top_k, hidden=hidden, width=width,
                                     local_experts=local_experts, nvfp4=True), hidden,
                "NVFP4 experts on TrtLlmNvFp4Experts (oracle/nvfp4.py FLASHINFER_TRTLLM first)")
    return None


def trtllm_moe_bytes_033(expert_format: str, *, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                         local_experts: int) -> tuple[int, int, str] | None:
    """(bytes, the output's hidden size, what runs) of the TRT-LLM experts vLLM 0.33 runs `expert_format` on with
    compute capability 10.x (`trtllm_moe_call_bytes_033`), or None where its oracle does not pick them:

    * fp8 in [128, 128] blocks and NVFP4 (fused_moe/oracle/fp8.py and nvfp4.py: FLASHINFER_TRTLLM first, its
      monolithic class before its modular one; ``_supports_current_device``: ``is_device_capability_family(100)``);
    * fp8 with static per-tensor scales: ``TrtLlmFp8ExpertsMonolithic`` for the routings it lists (no modular class
      takes per-tensor scales: FLASHINFER_CUTLASS next, which `fused_moe_caches` weighs beside it);
    * MXFP4 (gpt-oss: oracle/mxfp4.py ``_get_priority_backends_for_gpt_oss``, FLASHINFER_TRTLLM_MXFP4_BF16 first),
      the hidden size rounded to 256 and the width to 128 (``mxfp4_round_up_hidden_size_and_intermediate_size``),
      the runner's ``F.pad`` copy of the input to the padded hidden size (runner/moe_runner.py: the quant method's
      ``skip_forward_padding`` is False for the BF16 backend) counted, the output vLLM's unpadded
      ``finalized_output`` (``hidden_dim_unpadded``);
    * bf16 (oracle/unquantized.py: FLASHINFER_TRTLLM first on CUDA outside the 9.x family; `fused_moe_caches` leaves
      gpt-oss, whose SWIGLUOAI moves it back, and the routings its monolithic class does not list, which fall to
      FLASHINFER_CUTLASS, to Triton's figure beside it).

    The nvfp4 family's labels all run the NVFP4 launcher.  Int4 experts (oracle/int_wna16.py) take TRT-LLM's MxInt4
    kernel only with ``VLLM_USE_FLASHINFER_MOE_INT4`` (`FLASHINFER_MOE_INT4_ENV`): None."""
    if weight_format_family(expert_format) == "nvfp4":
        expert_format = "nvfp4"
    if expert_format not in TRTLLM_TILES_072:
        return None
    padded_hidden, padded_width = hidden, width
    if expert_format == "mxfp4":
        padded_hidden, padded_width = round_up(hidden, TRTLLM_ALIGNMENT), round_up(width, TRTLLM_WIDTH_ALIGNMENT_033)
    nbytes = trtllm_moe_call_bytes_033(expert_format, tokens=tokens, experts=experts, top_k=top_k,
                                       hidden=padded_hidden, width=padded_width, local_experts=local_experts)
    if padded_hidden != hidden:
        nbytes += tokens * padded_hidden * ACTIVATION_ELEMENT_BYTES
    runs = {
        "fp8-block128": "block-fp8 experts on TrtLlmFp8ExpertsMonolithic or TrtLlmFp8ExpertsModular (oracle/fp8.py "
                        "FLASHINFER_TRTLLM first, experts/trtllm_fp8_moe.py)",
        "fp8-per-tensor-static": "per-tensor fp8 experts on TrtLlmFp8ExpertsMonolithic for the routings it lists "
                                 "(oracle/fp8.py FLASHINFER_TRTLLM first)",
        "mxfp4": f"MXFP4 experts on TrtLlmMxfp4ExpertsMonolithic (oracle/mxfp4.py FLASHINFER_TRTLLM_MXFP4_BF16; "
                 f"hidden {padded_hidden}, width {padded_width})",
        "nvfp4": "NVFP4 experts on TrtLlmNvFp4ExpertsMonolithic or TrtLlmNvFp4ExpertsModular (oracle/nvfp4.py "
                 "FLASHINFER_TRTLLM first)",
        "bf16": "bf16 experts on TrtLlmBf16ExpertsMonolithic for the routings it lists (oracle/unquantized.py "
                "FLASHINFER_TRTLLM first)",
    }[expert_format]
    return nbytes, hidden, runs + " with FlashInfer 0.7.2.post1's launchers (trtllm_moe_call_bytes_033)"


def trtllm_fp8_block_moe_bytes(*, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                               local_experts: int) -> int:
    """The bytes vLLM 0.19's ``TrtLlmFp8ExpertsModular.apply`` (fused_moe/experts/trtllm_fp8_moe.py) and FlashInfer
    0.6.6's ``trtllm_fp8_block_scale_routed_moe`` hold at once inside one MoE layer of `tokens` tokens, beyond the
    layer's inputs and the modular kernel's kept output, `experts` the model's routed experts (the routing's
    ``num_experts`` is the global count), `width` the expert width a rank.  vLLM: the packed top-k ids (int32, utils.py
    ``trtllm_moe_pack_topk_ids_weights``) and the transposed activation scales (``a1q_scale.t().contiguous()``,
    fp32, one per 128 columns); flashinfer/fused_moe/core.py ``trtllm_fp8_block_scale_moe_op``: its own ``tokens x
    hidden`` bf16 output (copied into vLLM's, flashinfer#2703).  csrc/trtllm_fused_moe_kernel_launcher.cu, the
    launcher's tensors, live until it returns: ``prepare_routing_common`` (per-expert counts, the expanded and
    permuted index maps, the expert indexes, the histogram of ``max(2E, 512)``, two CTA maps of ``maxCtas``), the
    bf16 expert weights (``Fp8BlockScaleLauncher::prepare_routing``), and ``prepare_moe``'s fp8 GEMM 1 output
    ``P1 x 2w`` with fp32 scales ``2w / 128 x P``, the fp8 activation ``P1 x w`` with scales ``w / 128 x P1``, and the
    bf16 GEMM 2 output ``P2 x K``, where ``P = maxCtas x tile`` (runner.h ``getMaxPermutedPaddedCount``: ``maxCtas =
    min(E, T k) + (T k - min(E, T k)) // tile``) at the largest tile the tactic may pick (`trtllm_largest_tile`,
    `local_experts` the rank's) and ``P1``, ``P2`` at least 128 KiB of their row (``maybeGetMinTokenCount``).
    Not counted: the batched GEMMs' ``workspace_fc1`` / ``workspace_fc2`` (``getWorkspaceSizeInBytes`` of the
    tactic's cubin config, not read)."""
    expanded = tokens * top_k
    tile = trtllm_largest_tile(TRTLLM_FP8_BLOCK_TILES, tokens, top_k, local_experts)
    ctas = min(experts, expanded) + (expanded - min(experts, expanded)) // tile
    padded = ctas * tile
    gemm1_rows = max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES // width))  # fp8 (8-bit) GEMM 1 input
    gemm2_rows = max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES // (hidden * 2)))  # bf16 output
    vllm = expanded * 4 + (hidden // 128) * tokens * 4
    python = tokens * hidden * 2
    routing = (experts * 4 + 4 + expanded * 4 + padded * 4 + expanded * 4 + max(2 * experts, 512) * 4 + 2 * ctas * 4
               + 4 + expanded * 2)
    gemms = (gemm1_rows * 2 * width + (2 * width // 128) * padded * 4 + gemm1_rows * width
             + (width // 128) * gemm1_rows * 4 + gemm2_rows * hidden * 2)
    return vllm + python + routing + gemms


#: flashinfer-python 0.7.2.post1, the FlashInfer vLLM 0.33.0 pins (``flashinfer-python==0.7.2.post1``),
#: csrc/trtllm_fused_moe_kernel_launcher.cu: the token tiles of the TRT-LLM MoE launchers vLLM 0.33 runs, by the
#: experts' format: ``Fp8BlockScaleLauncher::getSupportedTileNums`` (DeepSeek fp8; 256 is MxFP8's),
#: ``Fp8PerTensorLauncher::mSupportedTileNums``, ``FP4BlockScaleLauncher::getSupportedTileNums`` (bf16 activations,
#: gpt-oss's MXFP4: 8 to 64; NVFP4 x NVFP4: 128, 192 and 256 more, 192 outside ``TLLM_RUBIN_FEATURES``) and
#: ``Bf16MoeLauncher::mSupportedTileNums``
TRTLLM_TILES_072: dict[str, tuple[int, ...]] = {
    "fp8-block128": (8, 16, 32, 64, 128),
    "fp8-per-tensor-static": (8, 16, 32, 64, 128),
    "mxfp4": (8, 16, 32, 64),
    "nvfp4": (8, 16, 32, 64, 128, 192, 256),
    "bf16": (8, 16, 32, 64, 128),
}


def trtllm_candidate_tiles_072(tiles: tuple[int, ...], tokens: int, top_k: int, local_experts: int) -> tuple[int, ...]:
    """The token tiles FlashInfer 0.7.2's TRT-LLM MoE may run `tokens` tokens at: ``computeSelectedTileN``
    (csrc/trtllm_fused_moe_kernel_launcher.cu) takes the first of `tiles` at or above the average ``T k / local
    experts`` (a double, no longer rounded to a power of two as 0.6.6 did: `trtllm_largest_tile`), the last where none
    is, with the two tiles above it and the one below; the autotuned tactic picks among them, the untuned fallback
    (``selectDefaultTileN``) the smallest, so every one is weighed."""
    index = next((i for i, tile in enumerate(tiles) if tile * local_experts >= tokens * top_k), len(tiles) - 1)
    return tiles[max(index - 1, 0):index + 3]


def _trtllm_call_bytes_072(expert_format: str, tile: int, *, tokens: int, experts: int, top_k: int, hidden: int,
                           width: int) -> int:
    """`trtllm_moe_call_bytes_033` at token tile `tile`."""
    expanded = tokens * top_k
    padded, routing = _trtllm_routing_bytes(tokens, experts, top_k, tile)
    routing += 4  # permuted_idx_to_token_idx holds maxPadded + 1 ints in 0.7.2 (the kernels read one past its end)

    def min_rows(row_elements: int, bits: int) -> int:  # runner.h maybeGetMinTokenCount: at least 128 KiB a buffer
        return max(padded, -(-TRTLLM_MIN_OUTPUT_BYTES * 8 // (row_elements * bits)))

    if expert_format == "fp8-block128":
        gemm1_rows, gemm2_rows = min_rows(width, 8), min_rows(hidden, 16)
        gemms = (gemm1_rows * 2 * width + (2 * width // 128) * padded * 4 + gemm1_rows * width
                 + (width // 128) * gemm1_rows * 4 + gemm2_rows * hidden * 2)
        vllm = tokens * hidden + 2 * (hidden // 128) * tokens * 4 + expanded * 4
        return routing + gemms + vllm
    if expert_format == "fp8-per-tensor-static":
        rows = padded + experts
        gemms = rows * 2 * width + (2 * width // 128) * rows * 4 + padded * hidden * 2
        return routing + expanded * 2 + gemms + expanded * (4 + 4) + tokens * hidden
    if expert_format == "bf16":
        gemms = min_rows(width, 16) * width * 2 + min_rows(hidden, 16) * hidden * 2
        return routing + expanded * 2 + gemms
    if expert_format == "mxfp4":
        gemms = min_rows(width, 16) * width * 2 + min_rows(hidden, 16) * hidden * 2
        return routing + expanded * (4 + 2) + gemms
    gemm1_rows = min_rows(width, 4)
    gemm1 = gemm1_rows * width // 2 + round_up(gemm1_rows, 128) * round_up(width // NVFP4_SCALE_BLOCK, 4)
    quantized = tokens * hidden // 2 + tokens * hidden // NVFP4_SCALE_BLOCK
    return routing + expanded * (4 + 2) + quantized + gemm1 + min_rows(hidden, 16) * hidden * 2


def trtllm_moe_call_bytes_033(expert_format: str, *, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                              local_experts: int) -> int:
    """The bytes vLLM 0.33's TRT-LLM experts and FlashInfer 0.7.2.post1's launcher hold at once inside one MoE layer
    of `tokens` tokens, beyond the one bf16 ``tokens x hidden`` output (the caller's: core.py's
    ``alloc_trtllm_moe_output``, the workspace manager's or vLLM's), `experts` the routing's global count, `hidden`
    and `width` as the kernel sees them (gpt-oss's padded: hidden to 256, width to 128), at the candidate tile
    (`trtllm_candidate_tiles_072`) that needs the most.  Every launcher (csrc/trtllm_fused_moe_kernel_launcher.cu)
    runs ``prepare_routing_common`` (`_trtllm_routing_bytes`, with ``permuted_idx_to_token_idx`` one int32 longer)
    and ``prepare_moe_common``, whose batched-GEMM workspaces ``workspace_fc1`` / ``workspace_fc2``
    (trtllm_fused_moe_runner.cu ``getWorkspaceSizeInBytes``) are empty: ``BatchedGemmInterface::
    getWorkspaceSizesInBytes`` asks for row-max buffers only where a config uses DeepSeek fp8 and fuses the
    activation, and the MoE runner asks ``fusedAct = !useDeepSeekFp8`` of GEMM 1 and no fused activation of GEMM 2
    (trtllm_fused_moe_runner.cu; the interface as flashinfer-ai/flashinfer last published it,
    include/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export/BatchedGemmInterface.h: 0.7.2's cubin artifact
    ships its own copy at JIT time, not read).  ``P`` = `_trtllm_routing_bytes`'s padded rows, ``P1``, ``P2`` at
    least 128 KiB of their row (runner.h ``maybeGetMinTokenCount``):

    * "fp8-block128" (experts/trtllm_fp8_moe.py ``TrtLlmFp8ExpertsMonolithic._apply_block_scale``, else the modular
      class): the fp8 input and its fp32 ``K / 128`` scales (prepare_finalize/no_dp_ep.py ``_quantize_input``), their
      transposed copy (``a1q_scale.t().contiguous()``), the larger of the launcher's bf16 expert weights (``T x k``,
      routing from logits) and the modular class's int32 top-k ids (``topk_ids.to(torch.int32)``);
      ``Fp8BlockScaleLauncher::prepare_moe``: fp8 GEMM 1 ``P1 x 2w`` with fp32 scales ``2w / 128 x P``, the fp8
      activation ``P1 x w`` with scales ``w / 128 x P1``, bf16 GEMM 2 ``P2 x K``;
    * "fp8-per-tensor-static" (``TrtLlmFp8ExpertsMonolithic._apply_per_tensor``): the fp8 input, core.py
      ``trtllm_fp8_per_tensor_scale_moe_op``'s ``topk_ids`` (int32) and ``topk_weights`` (the logits' dtype, 4 bytes
      the safe side); ``Fp8PerTensorLauncher``: bf16 expert weights ``T x k``, fp8 GEMM 1 ``(P + E) x 2w`` with fp32
      scales ``2w / 128 x (P + E)``, bf16 GEMM 2 ``P x K`` (no 128 KiB floor there);
    * "nvfp4" (experts/trtllm_nvfp4_moe.py ``TrtLlmNvFp4ExpertsMonolithic``, whose figure bounds the modular
      class's): the fp4 input ``T x K / 2`` and its scales in the linear layout (oracle/nvfp4.py
      ``is_scale_swizzled`` is False for FLASHINFER_TRTLLM: ``T x K / 16``), core.py's ``topk_ids`` (int32) and
      ``topk_weights`` (bf16); ``FP4BlockScaleLauncher::prepare_moe``: fp4 GEMM 1 ``P1 x w / 2`` with its swizzled
      e4m3 scales (``computeSwizzledLayoutSFSize``), bf16 GEMM 2 ``P2 x K``;
    * "mxfp4" (gpt-oss, experts/trtllm_mxfp4_moe.py ``TrtLlmMxfp4ExpertsMonolithic``, bf16 activations): core.py's
      ``topk_ids`` and ``topk_weights``; bf16 GEMM 1 ``P1 x w`` (the activation fused) and GEMM 2 ``P2 x K``;
    * "bf16" (experts/trtllm_bf16_moe.py ``TrtLlmBf16ExpertsMonolithic``; the modular class takes all2all kernels
      only, ``_supports_parallel_config``): the launcher's bf16 expert weights, bf16 GEMM 1 ``P1 x w`` and GEMM 2
      ``P2 x K`` (``Bf16MoeLauncher::prepare_moe``)."""
    tiles = trtllm_candidate_tiles_072(TRTLLM_TILES_072[expert_format], tokens, top_k, local_experts)
    return max(_trtllm_call_bytes_072(expert_format, tile, tokens=tokens, experts=experts, top_k=top_k,
                                      hidden=hidden, width=width) for tile in tiles)


#: flashinfer-python 0.6.6, the FlashInfer vLLM 0.19.0 pins (``flashinfer-python==0.6.6``): each buffer of a CUTLASS
#: MoE workspace is rounded up to ``kCudaMemAlign`` bytes (tensorrt_llm/common/workspace.h, ``alignSize`` and
#: ``calculateTotalWorkspaceSize``)
FLASHINFER_WORKSPACE_ALIGNMENT = 128
#: moe_kernels.h ``GemmProfilerBackend::NUM_ROUTING_SAMPLES``: the MoE GEMM profiler keeps 16 random routings
CUTLASS_MOE_PROFILER_ROUTING_SAMPLES = 16
#: flashinfer-python 0.7.2.post1 (vLLM 0.33.0's pin) fused_moe/core.py ``cutlass_fused_moe``: ``tune_max_num_tokens``
#: defaults to 8192, which vLLM 0.33's FlashInferExperts does not pass, and ``get_hybrid_num_tokens_buckets`` ends on it
FLASHINFER_MOE_TUNE_MAX_TOKENS_033 = 8192


def _flashinfer_aligned(size: int) -> int:
    return -(-size // FLASHINFER_WORKSPACE_ALIGNMENT) * FLASHINFER_WORKSPACE_ALIGNMENT


def cutlass_moe_tokens_per_block(tokens: int, experts: int) -> int:
    """FlashInfer's ``computeNumTokensPerBlock`` (cutlass_fused_moe_kernels.cuh): the least power of two from 32 to
    1024 whose ``ceil(tokens / it) x experts`` is not above it, else 1024."""
    per_block = 32
    while per_block <= 1024:
        if -(-tokens // per_block) * experts <= per_block:
            return per_block
        per_block *= 2
    return 1024


def nvfp4_weight_scale_bytes(experts: int, rows: int, columns: int) -> int:
    """FlashInfer's ``getOffsetWeightSF`` for NVFP4 (cutlass_fused_moe_kernels.cuh): one fp8 scale per 16 weights of
    `experts` ``rows x columns`` matrices, the rows padded to 128 and the columns to 64 (``MinNDimAlignmentNVFP4``,
    ``MinKDimAlignmentNVFP4``: the 32 x 4 by 16 x 4 ``SfAtom`` of CUTLASS's ``Sm1xxBlockScaledConfig<16>``)."""
    return experts * round_up(rows, 128) * round_up(columns, 64) // 16


def nvfp4_activation_scale_bytes(experts: int, rows: int, columns: int) -> int:
    """FlashInfer's ``getOffsetActivationSF`` for NVFP4: the scales of `rows` permuted rows of `columns` values, each
    expert's rows starting on a 128-row boundary (``rows + experts x 127`` rounded up to 128), the columns to 64."""
    return round_up(rows + experts * 127, 128) * round_up(columns, 64) // 16


def cutlass_moe_profiler_workspace_bytes(*, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                                         activation_bytes: int, bias: bool = False, nvfp4: str = "") -> int:
    """The bytes of FlashInfer's CUTLASS MoE profiler workspace for its second GEMM over `tokens` tokens
    (``GemmProfilerBackend::getWorkspaceSize`` over ``getProfilerWorkspaces(maxM=tokens)`` with ``mGemmToProfile``
    GEMM_2, fused_moe/cutlass_backend/cutlass_fused_moe_kernels.cuh; the same buffers for fp8 weights in 0.6.6 and
    0.7.2.post1, whose additions are all 0 there), for fp8 weights (e4m3), bf16 output, `experts`
    experts on the rank, `width` the expert width on the rank and `activation_bytes` 1 (fp8 activations) or 2 (bf16
    activations: DeepSeek-style block fp8), each buffer rounded up to 128 bytes, E = `experts`, k = `top_k`,
    M = `tokens`:

    * routing, 16 samples: ``expert_first_token_offset`` (E + 1) x 8 x 16, ``unpermuted_row_to_permuted_row``,
      ``permuted_row_to_unpermuted_row`` and ``token_selected_experts`` 16 x M x k x 4 each,
      ``permuted_token_selected_experts`` and ``token_topk_unpermuted_scales`` M x k x 4 each, ``blocked_expert_counts``
      and its cumsum E x ceil(M / `cutlass_moe_tokens_per_block`) x 4 each, ``blocked_row_to_unpermuted_row`` E x M x 4;
    * the GEMM's ``input`` width x M x k x `activation_bytes`, ``output`` hidden x 2 (no token factor in the code),
      ``intermediate`` hidden x M x k x 2, ``bias`` hidden x E x `activation_bytes` where the experts have biases;
    * fp8 weight scales ``quant_1`` E x 4, ``quant_2`` 4, ``quant_3`` E x 4, and ``alpha_scale_ptr_array`` E x 8.

    With `nvfp4` (NVFP4 weights and activations, the runner's int64-packed dtypes: 4-bit activations, so the
    ``input`` is half a byte a value and `activation_bytes` is not read) the quantization buffers are ``quant_1`` 4,
    ``quant_2`` the GEMM 1 weight scales (`nvfp4_weight_scale_bytes` of E matrices of width x hidden in flashinfer
    0.6.6, `nvfp4` "0.19"; of 2 x width x hidden in 0.7.2.post1, "0.33", which sizes them by ``fc1_out_size``),
    ``quant_3`` E x 4, ``quant_4`` 4, ``quant_5`` the GEMM 2 weight scales (hidden x width), ``quant_6`` E x 4, and
    ``fp4_act_scale_flat`` the larger activation scales of k x M rows of hidden or width values
    (`nvfp4_activation_scale_bytes`).

    Not counted, for want of a figure the source gives: ``tma_ws_input_workspace`` (65 copies of the per-expert TMA
    grouped-GEMM argument arrays, ``TmaWarpSpecializedGroupedGemmInput::workspaceSize``, whose sizes are ``sizeof`` of
    CUTLASS stride and layout types) and ``gemm_workspace`` (the largest CUTLASS kernel ``get_workspace_size`` over
    the grouped GEMM configs, ``MoeGemmRunner::calcMaxWorkspaceSize``)."""
    expanded = tokens * top_k
    blocks = -(-tokens // cutlass_moe_tokens_per_block(tokens, experts))
    samples = CUTLASS_MOE_PROFILER_ROUTING_SAMPLES
    sizes: tuple[int, ...] = (
        (experts + 1) * 8 * samples,  # expert_first_token_offset
        samples * expanded * 4, samples * expanded * 4, samples * expanded * 4,  # the two maps, token_selected_experts
        expanded * 4,  # permuted_token_selected_experts
        experts * blocks * 4, experts * blocks * 4,  # blocked_expert_counts and its cumsum
        experts * tokens * 4,  # blocked_row_to_unpermuted_row
        expanded * 4,  # token_topk_unpermuted_scales
        width * expanded // 2 if nvfp4 else width * expanded * activation_bytes,  # input
        hidden * ACTIVATION_ELEMENT_BYTES,  # output
        hidden * expanded * ACTIVATION_ELEMENT_BYTES,  # intermediate
        hidden * experts * activation_bytes if bias and not nvfp4 else 0,  # bias
        experts * 8,  # alpha_scale_ptr_array
    )
    if nvfp4:
        fc1_rows = 2 * width if nvfp4 == "0.33" else width
        sizes += (4, nvfp4_weight_scale_bytes(experts, fc1_rows, hidden), experts * 4, 4,  # quant_1 .. quant_4
                  nvfp4_weight_scale_bytes(experts, hidden, width), experts * 4,  # quant_5, quant_6
                  max(nvfp4_activation_scale_bytes(experts, expanded, hidden),
                      nvfp4_activation_scale_bytes(experts, expanded, width)))  # fp4_act_scale_flat
    else:
        sizes += (experts * 4, 4, experts * 4)  # quant_1, quant_2, quant_3 (fp8 weights)
    return sum(_flashinfer_aligned(size) for size in sizes)


def cutlass_moe_runtime_workspace_bytes(*, tokens: int, experts: int, top_k: int, hidden: int, width: int,
                                        finalize_fused: bool, nvfp4: bool = False) -> int:
    """The workspace FlashInfer's CUTLASS MoE allocates in each call over `tokens` tokens for fp8 activations and
    weights with a bf16 output and a gated activation (flashinfer_cutlass_fused_moe_binding.cu ``getWorkspaceInfo``:
    ``CutlassMoeFCRunner::getWorkspaceSize`` plus the ``src_to_dest_map`` of k x M ints, through ``alloc_tensor``,
    freed when the call returns; cutlass_fused_moe_kernels.cuh ``getWorkspaceDeviceBufferSizes``, the same for these
    types in flashinfer 0.6.6 and 0.7.2.post1), each buffer rounded up to 128 bytes, k x M = kM:

    * ``permuted_row_to_unpermuted_row`` and ``permuted_token_selected_experts`` kM x 4 each,
      ``blocked_expert_counts`` and its cumsum E x ceil(M / `cutlass_moe_tokens_per_block`) x 4 each,
      ``blocked_row_to_unpermuted_row`` E x M x 4, ``expert_first_token_offset`` (E + 1) x 8,
      ``permuted_token_final_scales`` kM x 4 where the finalize is fused (`finalize_fused`: ``mayHaveFinalizeFused``,
      the TMA warp-specialized grouped GEMM, which the fp8 x fp8 runner has on 9.0, 10.x and 11.x, not on 12.x:
      moe_tma_warp_specialized_traits.h);
    * ``overlapped_gemm1_gemm2_inputs`` kM x max(2 x hidden, width) (the fp8 permuted rows, the bf16 GEMM 2 result,
      the fp8 activation output) and ``overlapped_gemm1_gemm2_outputs`` kM x max(4 x width, 2 x hidden) (the bf16
      GLU input of 2 x width, the GEMM 2 result);
    * the two ``alpha_scale_ptr_array`` E x 8.

    With `nvfp4` (NVFP4 weights and activations: ``CutlassMoeFCRunner<__nv_fp4_e2m1, __nv_fp4_e2m1>``) the permuted
    rows and the activation output are half a byte a value (inputs kM x max(2 x hidden, width / 2)) and
    ``fp4_act_scale`` holds the larger activation scales of kM rows of hidden or width values
    (`nvfp4_activation_scale_bytes`).

    Not counted, for want of a figure the source gives: the two ``tma_ws_gemm*_workspace`` (``sizeof`` of CUTLASS
    types per expert) and ``gemm_workspace`` (the CUTLASS kernels' ``get_workspace_size``)."""
    expanded = tokens * top_k
    blocks = -(-tokens // cutlass_moe_tokens_per_block(tokens, experts))
    sizes = (
        expanded * 4, expanded * 4,  # permuted_row_to_unpermuted_row, permuted_token_selected_experts
        experts * blocks * 4, experts * blocks * 4,  # blocked_expert_counts and its cumsum
        experts * tokens * 4,  # blocked_row_to_unpermuted_row
        (experts + 1) * 8,  # expert_first_token_offset
        expanded * 4 if finalize_fused else 0,  # permuted_token_final_scales
        expanded * max(2 * hidden, width // 2 if nvfp4 else width),  # overlapped_gemm1_gemm2_inputs
        expanded * max(4 * width, 2 * hidden),  # overlapped_gemm1_gemm2_outputs
        experts * 8, experts * 8,  # alpha_scale_ptr_array_fc1, _fc2
        max(nvfp4_activation_scale_bytes(experts, expanded, hidden),
            nvfp4_activation_scale_bytes(experts, expanded, width)) if nvfp4 else 0,  # fp4_act_scale
    )
    runner = sum(_flashinfer_aligned(size) for size in sizes)
    return runner + _flashinfer_aligned(expanded * 4)  # src_to_dest_map


def flashinfer_tuning_tokens(version: str, limits: BatchLimits, enforce_eager: bool) -> int:
    """The largest token count FlashInfer's autotuner profiles vLLM `version`'s CUTLASS MoE at.  0.19:
    FlashInferExperts passes ``tune_max_num_tokens = max(max_cudagraph_capture_size, 1)`` (flashinfer_cutlass_moe.py,
    ``apply``), the largest capture size (`vllm_graphs.cudagraph_capture_sizes`; 0 under ``enforce_eager``,
    config/vllm.py), and FlashInfer 0.6.6 tunes the powers of two up to its largest power of two (fused_moe/core.py
    ``refine_tuning_config``, ``get_last_power_of_2_num_tokens_buckets``).  0.33: none is passed and FlashInfer
    0.7.2's default, 8192, is its last bucket (`FLASHINFER_MOE_TUNE_MAX_TOKENS_033`), eager or not."""
    if version == "0.33":
        return FLASHINFER_MOE_TUNE_MAX_TOKENS_033
    sizes = () if enforce_eager else cudagraph_capture_sizes(version, limits)
    largest = max(max(sizes, default=0), 1)
    return 1 << (largest.bit_length() - 1)


#: one compute capability of each family FlashInferExperts runs on (9.0 and `FLASHINFER_CUTLASS_MOE_FAMILIES`),
#: weighed for a device of unknown capability
FLASHINFER_AUTOTUNE_CAPABILITIES = ((9, 0), (10, 0), (11, 0), (12, 0))


def flashinfer_moe_autotune_buffer(stage: Stage, version: str, limits: BatchLimits, expert_format: str,
                                   device: DeviceFacts, enforce_eager: bool = False) -> Term | None:
    """The CUTLASS MoE profiler workspace vLLM `version` keeps on one device of `stage` after FlashInfer's autotuning,
    or None where its experts do not run on FlashInfer's CUTLASS experts (`flashinfer_cutlass_moe_path`).

    vLLM 0.19 and 0.33 autotune FlashInfer in ``kernel_warmup`` (model_executor/warmup/kernel_warmup.py
    ``flashinfer_autotune``, on by default from -O1, on compute capability 9.0 and up), which
    ``compile_or_warm_up_model`` runs after ``initialize_from_config`` has allocated the KV cache
    (v1/worker/gpu_worker.py): a dummy run whose first MoE layer tunes ``cutlass_fused_moe`` (flashinfer
    fused_moe/core.py), GEMM 1 then GEMM 2, each over the token buckets ascending (``choose_one``,
    ``_generate_optimization_profiles`` sorts them), calling ``run_gemm_profile(do_preparation=True)`` once per
    bucket.  Each preparation replaces the C++ runner's ``mProfileWorkspace`` with an ``alloc_tensor`` of the
    profiler's workspace for that bucket (flashinfer_cutlass_fused_moe_binding.cu; through tvm-ffi's environment
    allocator, PyTorch's caching allocator for a call with torch tensors), and the runner lives in the class-level
    ``MoERunner.runner_dict``: the last one, GEMM 2 at the largest bucket (`flashinfer_tuning_tokens`), is held for
    the life of the process.  vLLM's profiling run never sees it (it was sized before), so it comes out of the memory
    the budget leaves free: `cutlass_moe_profiler_workspace_bytes` with the rank's experts and width (`expert_shard`).
    On 0.33 a start that finds its autotune results cached (vLLM's per-rank file or FlashInfer's managed store) tunes
    nothing and keeps none: the first start, which a plan must fit, does.  A device of unknown compute capability is
    charged the most any capability FlashInferExperts runs on keeps (`FLASHINFER_AUTOTUNE_CAPABILITIES`).  On 10.x
    FlashInfer's TRT-LLM MoE kernels keep none: their launchers live for one call (csrc/
    trtllm_fused_moe_kernel_launcher.cu ``launchers_map``, a local).  Their tuning may need more than the profiling
    run held, and is not charged: vLLM 0.33's TRT-LLM classes pass ``tune_max_num_tokens = max(max_num_batched_tokens
    x dp, 8192)`` (fused_moe/utils.py ``fi_moe_largest_bucket``), and FlashInfer 0.7.2 synthesizes the inputs and
    runs the launcher (`trtllm_moe_call_bytes_033`) at every bucket up to it (fused_moe/shared/tuning.py
    ``make_moe_tuning_config``, ``get_hybrid_num_tokens_buckets``; cold-L2 input copies beside), so below 8192
    batched tokens it runs larger calls than the profiling run; an OOM there is caught by ``AutoTuner.choose_one``
    (autotuner/autotuner.py: the tactic skipped, or the default tactic taken), so vLLM starts with less tuning."""
    if device.compute_capability is None:
        terms = [flashinfer_moe_autotune_buffer(stage, version, limits, expert_format,
                                                replace(device, compute_capability=capability), enforce_eager)
                 for capability in FLASHINFER_AUTOTUNE_CAPABILITIES]
        best = max((term for term in terms if term is not None), key=lambda term: term.bytes, default=None)
        return None if best is None else Term(best.bytes, best.basis + " (this device not known: the most any "
                                                                      "compute capability keeps)")
    why = flashinfer_cutlass_moe_path(version, expert_format, device, stage.expert_parallel, stage.moe_ranks)
    spec = stage.spec
    if why is None or not spec.is_moe:
        return None
    experts, width = expert_shard(spec, stage.moe_ranks, stage.expert_parallel)
    tokens = flashinfer_tuning_tokens(version, limits, enforce_eager)
    activation_bytes = 2 if expert_format == "fp8-block128" else 1
    nvfp4 = version if weight_format_family(expert_format) == "nvfp4" else ""
    nbytes = cutlass_moe_profiler_workspace_bytes(tokens=tokens, experts=experts, top_k=spec.experts_per_token,
                                                  hidden=spec.hidden_size, width=width,
                                                  activation_bytes=activation_bytes, bias=spec.expert_bias,
                                                  nvfp4=nvfp4)
    return Term(nbytes, (
        f"{nbytes / MIB:.1f} MiB for FlashInfer's CUTLASS MoE profiler workspace (GEMM 2 at {tokens} tokens, "
        f"{experts} experts of width {width} a rank), which its autotuning in kernel_warmup allocates after the KV "
        "cache is sized and keeps (flashinfer_cutlass_fused_moe_binding.cu mProfileWorkspace, fused_moe/core.py "
        f"MoERunner.runner_dict; its TMA argument arrays and CUTLASS GEMM workspace not counted): {why}"))


#: the compute capabilities on which each release's ``is_deep_gemm_supported`` (utils/deep_gemm.py) holds, as exact
#: (major, minor) pairs or a major alone for a family: 0.11 ``is_device_capability(90)`` or ``(100)``; 0.19
#: platforms/cuda.py ``support_deep_gemm``: 9.0 or the 10.x family
DEEP_GEMM_CAPABILITIES: dict[str, tuple[tuple[int, int] | int, ...]] = {
    "0.11": ((9, 0), (10, 0)),
    "0.19": ((9, 0), 10),
}


#: the environment setting that turns each release's DeepGEMM warm-up off (envs.py)
DEEP_GEMM_WARMUP_OFF = {"0.11": "VLLM_SKIP_DEEP_GEMM_WARMUP=1", "0.19": "VLLM_DEEP_GEMM_WARMUP=skip"}


def _deep_gemm_supported(version: str, capability: tuple[int, int] | None) -> bool:
    """Whether vLLM `version`'s ``is_deep_gemm_supported`` holds on `capability`; for a capability not known,
    whether it holds on any (the warm-up's size does not depend on the capability: the safe side)."""
    rules = DEEP_GEMM_CAPABILITIES.get(version, ())
    if capability is None:
        return bool(rules)
    return any(rule == capability or rule == capability[0] for rule in rules)


def deep_gemm_capabilities(version: str) -> tuple[tuple[int, int], ...]:
    """One compute capability of each of `DEEP_GEMM_CAPABILITIES`' rules for `version` (a family's x.0)."""
    return tuple(rule if isinstance(rule, tuple) else (rule, 0) for rule in DEEP_GEMM_CAPABILITIES.get(version, ()))


def deep_gemm_moe_warmup(stage: Stage, version: str, limits: BatchLimits, expert_format: str,
                         device: DeviceFacts) -> Term | None:
    """The transient peak of the grouped-GEMM part of vLLM `version`'s DeepGEMM warm-up on one device of `stage`, or
    None where it does not run.

    ``kernel_warmup`` (model_executor/warmup/kernel_warmup.py), which ``compile_or_warm_up_model`` runs after
    ``initialize_from_config`` has allocated the KV cache and before ``capture_model`` (v1/worker/gpu_worker.py),
    calls ``deep_gemm_warmup`` when ``VLLM_USE_DEEP_GEMM`` ("1" by default), ``is_deep_gemm_supported()`` (the
    ``deep_gemm`` package importable, which no release's wheel requires but vLLM's Docker images install, on
    `DEEP_GEMM_CAPABILITIES`) and the warm-up is not turned off (0.11 ``VLLM_SKIP_DEEP_GEMM_WARMUP`` "0", 0.19
    ``VLLM_DEEP_GEMM_WARMUP`` "relax").  deep_gemm_warmup.py ``_fused_moe_grouped_gemm_may_use_deep_gemm`` takes
    every MoE layer whose quant config is fp8 in 128 x 128 blocks (`expert_format` "fp8-block128") and whose quant
    method is not a modular one (0.19: ``FusedMoEModularMethod``, 0.11: ``fused_experts`` a ``FusedMoEModularKernel``)
    or runs DeepGEMM: ``Fp8MoEMethod`` keeps its own kernel (0.19 ``supports_internal_mk``; 0.11 ``fused_experts``
    None without all2all), so the warm-up runs whichever kernel serves the experts (Triton's on Hopper under tensor
    parallelism).  ``_deepgemm_grouped_fp8_gemm_nt_contiguous_warmup`` sizes ``MAX_M = compute_aligned_M(T, top_k,
    E, 128) = round_up(T x k + E x 127, 128)`` with ``T`` = max_num_batched_tokens (0.11: at most
    ``VLLM_FUSED_MOE_CHUNK_SIZE``, 32768) and ``E`` the rank's experts, holds ``expert_ids`` (``MAX_M`` int32) and, for
    w13 ``[E, 2w, K]`` then w2 ``[E, K, w]``, ``torch.empty``s of ``MAX_M x k`` fp8, ``MAX_M x k // 128`` fp32 and
    ``MAX_M x n`` bf16, freed after each: the peak is ``4 MAX_M + MAX_M x max(K + 4 (K // 128) + 4w, w + 4 (w // 128)
    + 2K)``, once per process (``GROUPED_FP8_GEMM_NT_CONTIGUOUS_WARMUP_CACHE``).

    vLLM 0.33 (``_fused_moe_grouped_gemm_may_use_deep_gemm`` asks the modular kernel's experts to be
    ``DeepGemmExperts`` or ``TritonOrDeepGemmExperts``): none on 9.0, where oracle/fp8.py puts TRITON (tensor
    parallelism) or FLASHINFER_CUTLASS (expert parallelism) first for block fp8; on 10.x and 12.x its choice is not
    read (None).  The dense part, ``_deepgemm_fp8_gemm_nt_warmup``, ``T x (K + 4 K / 128 + 2N)`` bytes for the
    largest block-fp8 ``[N, K]`` linear layer of a rank (T not multiplied nor capped), is below what the profiling
    run's forward pass holds at that layer (`_forward_bytes`: ``2T x (3 hidden + 3 x the MLP's width per rank)``,
    or attention's q/k/v and output, more than ``T x (1.03 K + 2N)`` for each of qkv, o, gate_up and down), so the
    memory the profiling peak released holds it: not charged.  A device of unknown compute capability is charged
    the warm-up where the release runs it on any capability (0.11 and 0.19: 9.0 and 10.x)."""
    spec = stage.spec
    start, stop = stage.layers
    if (expert_format != "fp8-block128" or not spec.is_moe
            or not _deep_gemm_supported(version, device.compute_capability)
            or all(layer in spec.dense_layers for layer in range(start, stop))):
        return None
    experts, width = expert_shard(spec, stage.moe_ranks, stage.expert_parallel)
    hidden, top_k, block = spec.hidden_size, spec.experts_per_token, DEEP_GEMM_ALIGNMENT
    tokens = min(limits.max_batched_tokens, FUSED_MOE_CHUNK_TOKENS_V0_11) if version == "0.11" \
        else limits.max_batched_tokens
    rows = round_up(tokens * top_k + experts * (block - 1), block)
    w13 = hidden + 4 * (hidden // block) + 2 * (2 * width)
    w2 = width + 4 * (width // block) + 2 * hidden
    nbytes = rows * (4 + max(w13, w2))
    step = "w2" if w2 >= w13 else "w13"
    return Term(nbytes, (
        f"DeepGEMM's grouped-GEMM warm-up ({nbytes / GIB:.2f} GiB at its {step} step: MAX_M = {rows:,} rows, "
        f"round_up({tokens} tokens x top_k {top_k} + {experts} experts x 127, 128), of fp8 input, fp32 scales and "
        f"bf16 output, beside the int32 expert ids; deep_gemm_warmup.py, which vLLM {version}'s kernel_warmup runs "
        "for block-fp8 experts after the KV cache is sized, whatever kernel serves them, where the deep_gemm package "
        f"is installed, as vLLM's Docker images install it; {DEEP_GEMM_WARMUP_OFF[version]} turns it off"
        + ("; this device's compute capability not known: charged as on the capabilities DeepGEMM runs on, "
           f"{', '.join(f'{major}.{minor}' for major, minor in deep_gemm_capabilities(version))}"
           if device.compute_capability is None else "") + ")"))
