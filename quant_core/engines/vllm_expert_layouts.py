"""How vLLM lays out a MoE model's expert weights per format and kernel, and what it refuses.

The bytes the experts take once loaded, beside what the checkpoint holds (`expert_layout`): MXFP4
(``quantization/mxfp4.py``, its Marlin, Triton and FlashInfer layouts), int4 on Marlin, Humming and moe_wna16
(``quantization/gptq_marlin.py``, ``moe_wna16.py``, ``compressed_tensors_moe.py``, ``utils/marlin_utils.py``), fp8 on
Marlin and FlashInfer (``utils/marlin_utils_fp8.py``, ``fused_moe/flashinfer_cutlass_moe.py``) and 0.33's refined fp8
blocks (``fused_moe/oracle/fp8.py``); which backend each release picks (`mxfp4_moe_backend`, `moe_wna16_backend`,
`int4_moe_backend_v0_33`) and the formats it refuses under expert parallelism (`expert_parallel_format_refusal`).
"""

from __future__ import annotations

import math
from typing import cast

from quant_core.catalog import DeviceFacts
from quant_core.engines.base import Stage, Term
from quant_core.engines.torch_cuda import compute_units
from quant_core.engines.vllm_linear import (
    FP8_BLOCK,
    FP8_MARLIN_LABELS,
    FP8_MARLIN_PADDING_VERSIONS,
    HUMMING_LOCKS_PER_SM,
    HUMMING_PAD_K,
    HUMMING_PAD_N,
    HUMMING_PREFERRED_CAPABILITY,
    fp8_marlin_device,
    fp8_marlin_scale_bytes,
    fp8_scale_kind,
    round_up,
)
from quant_core.engines.vllm_parallel import EXPERT_PARALLEL_UNREAD_FORMATS, expert_shard
from quant_core.engines.vllm_refusals import (
    GPTQ_MARLIN_FLOORS,
    INT4_CHECKPOINT_LABEL,
    MARLIN_MOE_GROUPS,
    MARLIN_MOE_HIDDEN_ALIGNMENT,
    capability_text,
    marlin_moe_supports,
    moe_wna16_group,
    weight_format_family,
)
from quant_core.engines.vllm_releases import ACTIVATION_ELEMENT_BYTES, DEFAULT_VERSION, GIB
from quant_core.formats import Layout, WeightFormat, fp8, gptq_checkpoint, int4
from quant_core.inventory import inventory
from quant_core.specs import ModelSpec

#: Hopper's compute capability: vLLM 0.11's DeepGEMM runs block-fp8 experts on it (utils/deep_gemm.py
#: ``is_deep_gemm_supported``: ``is_device_capability(90)`` or ``(100)``) where ``_valid_deep_gemm`` accepts the shape
HOPPER_CAPABILITY = (9, 0)
#: the environment switch FlashInfer's TRT-LLM MxInt4 experts need in vLLM 0.33, off by default (envs.py:
#: ``VLLM_USE_FLASHINFER_MOE_INT4`` ``os.getenv(..., "0")``): ``TrtLlmMxint4ExpertsMonolithic._supports_current_device``
#: (fused_moe/experts/trtllm_mxint4_moe.py) asks ``is_flashinfer_mxint4_moe_available`` (quantization/utils/
#: flashinfer_mxint4_moe.py), which reads it first, so with vLLM's default environment ``select_wna16_moe_backend``
#: (oracle/int_wna16.py) passes FLASHINFER_TRTLLM over on 10.x for the kInt4Static32 keys it would take (symmetric,
#: groups of 32, no bias) and walks on to MARLIN (TRITON for a MoeWNA16 layer)
FLASHINFER_MOE_INT4_ENV = "VLLM_USE_FLASHINFER_MOE_INT4"
#: ``MarlinExpertsBase._supports_current_device`` (fused_moe/experts/marlin_moe.py, 0.33): CUDA from 7.5
MARLIN_MOE_MIN_CAPABILITY_033 = (7, 5)


def _capability_words(compute_capability: tuple[int, int] | None) -> str:
    """A device by its compute capability, for a refusal ("compute capability 9.0"; "a device of unknown compute
    capability")."""
    if compute_capability is None:
        return "a device of unknown compute capability"
    return f"compute capability {capability_text(compute_capability[0] * 10 + compute_capability[1])}"


def int4_expert_parallel_refusal_v0_33(spec: ModelSpec, weight_format: str,
                                       compute_capability: tuple[int, int] | None) -> str | None:
    """Why nibble does not plan `spec`'s int4 experts stored as `weight_format` (a GPTQ, AWQ or compressed-tensors
    label) under vLLM 0.33's expert parallelism on a device of `compute_capability`, or None where it does.

    ``select_wna16_moe_backend`` (fused_moe/oracle/int_wna16.py) walks RDNA3 (ROCm gfx1100), FLASHINFER_TRTLLM,
    MARLIN, BATCHED_MARLIN, TRITON, HUMMING, EMULATION, with ``prioritize_humming`` moving HUMMING ahead of MARLIN on
    compute capability 9.0 (`HUMMING_PREFERRED_CAPABILITY`).  The walk reads the layer's ``FusedMoEConfig``, whose
    ``intermediate_size_per_partition_unpadded`` is the whole width under expert parallelism (FusedMoE's tp_size 1)
    and whose activation format stays Standard with data parallel 1 (``use_batched_activation_format`` needs DeepEP
    low-latency or NIXL all2all kernels): the backend is the one a single rank gets.  Of the kernels it can pick only
    Humming's reads ``use_ep``: ``get_humming_moe_gemm_type`` (experts/fused_humming_moe.py) takes
    ``grouped_contiguous`` instead of ``indexed``, and ``HummingGroupedExperts`` keeps a persistent
    ``MoEPermuteScratch`` (moe_permute_unpermute.py) whose CUB sort workspace (``moe_permute_sort_workspace_size``,
    csrc) nibble did not read.  Planned: ``MarlinExperts`` (experts/marlin_moe.py; ``_supports_parallel_config``
    refuses only FlashInfer's two-sided all2all, absent with data parallel 1), whose workspace
    (``M x k x max(N, K)`` and ``M x k x max(2N, K)``) is `fused_moe_caches`' figure at the whole width, on the
    rank's experts (``expert_map``), on 10.x too for the symmetric g32 keys FlashInfer's TRT-LLM MxInt4 experts
    would take first, which vLLM's default environment leaves off (`FLASHINFER_MOE_INT4_ENV`); refused: 9.0
    (Humming), an unknown device, below 7.5, and widths or group sizes Marlin does not take
    (``check_moe_marlin_supports_config`` with ``allow_tile_padding``, as AutoGPTQ, AutoAWQ and compressed-tensors
    ask: hidden a multiple of 128, group -1, 32, 64 or 128 dividing the width), which fall to Triton or Humming."""
    label = weight_format.removeprefix("checkpoint-")
    found = INT4_CHECKPOINT_LABEL.fullmatch(label)
    if found is None:
        return ("its label names no group size and checkpoint layout, so which WNA16 MoE backend vLLM 0.33 picks "
                "(fused_moe/oracle/int_wna16.py select_wna16_moe_backend) is not known")
    device = _capability_words(compute_capability)
    if compute_capability is None:
        return (f"on {device} nibble cannot tell whether vLLM 0.33 runs them on Humming's kernels (preferred on "
                "compute capability 9.0, quantization/utils/humming/priority.py), which switch to a "
                "grouped_contiguous GEMM under expert parallelism, or on Marlin's")
    if compute_capability == HUMMING_PREFERRED_CAPABILITY:
        return (f"on {device} vLLM 0.33 puts Humming's kernels ahead of Marlin (quantization/utils/humming/"
                "priority.py prioritize_humming), and under expert parallelism they switch to a grouped_contiguous "
                "GEMM (experts/fused_humming_moe.py get_humming_moe_gemm_type: use_ep) whose persistent permute "
                "scratch (moe_permute_unpermute.py MoEPermuteScratch, a CUB sort workspace) nibble did not read")
    if compute_capability < MARLIN_MOE_MIN_CAPABILITY_033:
        return (f"on {device} vLLM 0.33's Marlin MoE experts do not run (marlin_moe.py _supports_current_device: "
                "7.5 and up) and the kernel it falls to under expert parallelism was not read")
    group = int(found["group"]) if found["group"] else -1
    layout = found["layout"]
    width, hidden = spec.moe_intermediate_size, spec.hidden_size
    if (hidden % MARLIN_MOE_HIDDEN_ALIGNMENT or group not in MARLIN_MOE_GROUPS
            or (group > 0 and width % group)):
        return (f"vLLM 0.33's Marlin MoE experts do not take {layout} int4 g{group if group > 0 else ' per row'} at "
                f"the experts' whole {width}-wide width and hidden size {hidden} (utils/marlin_utils.py "
                "check_moe_marlin_supports_config), so on "
                f"{device} it falls to Triton's or Humming's experts (grouped_contiguous under expert "
                "parallelism), not read")
    return None


def nvfp4_expert_parallel_refusal(version: str, compute_capability: tuple[int, int] | None) -> str | None:
    """Why nibble does not plan NVFP4 experts under vLLM `version`'s expert parallelism on a device of
    `compute_capability`, or None where it does.

    0.33 (fused_moe/oracle/nvfp4.py ``select_nvfp4_moe_backend``): FLASHINFER_TRTLLM (10.x), FLASHINFER_CUTEDSL
    (10.x), FLASHINFER_CUTEDSL_BATCHED (batched format only), FLASHINFER_CUTLASS (nvfp4 from 10.0, families 100 and
    120), VLLM_CUTLASS (``CutlassExpertsFp4``: families 100, 110, 120), MARLIN, HUMMING, EMULATION, with
    ``prioritize_humming`` moving Humming ahead of Marlin on 9.0.  With data parallel 1 every one of them but Humming
    is picked as at one rank: their ``_supports_parallel_config`` refuse only all2all kernels and EPLB, and the
    activation format stays Standard; FlashInfer's MoE-EP experts (flashinfer_moe_ep.py) are taken only for an
    explicit ``moe_backend`` (config/kernel.py ``FLASHINFER_MOE_EP_BACKENDS``), never by the oracle.  On 9.0 neither
    FlashInfer's CUTLASS nor vLLM's CUTLASS experts take NVFP4, so Humming runs them, in a grouped_contiguous GEMM
    under expert parallelism (`int4_expert_parallel_refusal_v0_33`): refused, as below 7.5 (neither Marlin nor
    Humming) and on a device of unknown capability.  0.19's ``CutlassExpertsFp4._supports_parallel_config`` refuses
    ``ep_size > 1``, so its backend can change under expert parallelism (not read further), and 0.11's NVFP4 MoE
    methods were not read: refused."""
    device = _capability_words(compute_capability)
    if version != "0.33":
        return ("nibble read vLLM's NVFP4 MoE backends under expert parallelism for 0.33 only (in 0.19 the oracle's "
                "VLLM_CUTLASS experts, CutlassExpertsFp4, refuse ep_size > 1, so the backend can change under it)")
    if compute_capability is None:
        return (f"on {device} nibble cannot tell whether vLLM 0.33 runs them on Humming's kernels (compute "
                "capability 9.0), which switch to a grouped_contiguous GEMM under expert parallelism")
    if compute_capability == HUMMING_PREFERRED_CAPABILITY:
        return (f"on {device} neither FlashInfer's nor vLLM's CUTLASS experts take NVFP4 and vLLM 0.33 puts Humming's "
                "kernels ahead of Marlin (fused_moe/oracle/nvfp4.py, humming/priority.py prioritize_humming); under "
                "expert parallelism they switch to a grouped_contiguous GEMM (fused_humming_moe.py "
                "get_humming_moe_gemm_type: use_ep) whose persistent permute scratch nibble did not read")
    if compute_capability < MARLIN_MOE_MIN_CAPABILITY_033:
        return (f"on {device} none of vLLM 0.33's NVFP4 MoE kernels nibble read runs (Marlin's from 7.5), and "
                "the one it falls to under expert parallelism was not read")
    return None


def expert_parallel_format_refusal(version: str, weight_format: str, spec: ModelSpec | None = None,
                                   compute_capability: tuple[int, int] | None = None) -> str | None:
    """Why nibble does not plan experts stored as `weight_format` under vLLM `version`'s expert parallelism on a
    device of `compute_capability` (None: not known), or None where it does: `EXPERT_PARALLEL_UNREAD_FORMATS`; MXFP4
    where `mxfp4_moe_backend` names no backend whose layout was read (every backend it names is picked whatever
    the expert parallelism: 0.11's ``get_mxfp4_backend`` reads no parallel config, and the 0.19 and 0.33 oracles'
    classes it names refuse only all2all kernels, EPLB and data parallel above 1); NVFP4 where
    `nvfp4_expert_parallel_refusal` says so; 0.33's int4 where `int4_expert_parallel_refusal_v0_33` says so (`spec`
    gives the experts' width)."""
    family = weight_format_family(weight_format)
    why = EXPERT_PARALLEL_UNREAD_FORMATS.get(family)
    if family == "nvfp4":
        why = nvfp4_expert_parallel_refusal(version, compute_capability)
    if why is None and family == "mxfp4" and not mxfp4_moe_backend(version, DeviceFacts(
            compute_capability=compute_capability)):
        device = _capability_words(compute_capability)
        why = (f"on {device} nibble does not know which MXFP4 MoE backend vLLM {version} runs gpt-oss's experts on "
               "or did not read its layout (fused_moe/oracle/mxfp4.py; AMD, 11.x on 0.33 and below 8.0 included)")
    if why is None and version == "0.33" and family in ("gptq", "awq", "compressed-tensors", "int4"):
        why = (int4_expert_parallel_refusal_v0_33(spec, weight_format, compute_capability) if spec is not None
               else "the model's expert width is needed to tell which WNA16 MoE backend vLLM 0.33 picks")
    if why is None:
        return None
    return (f"nibble does not plan {weight_format} experts with vLLM {version}'s expert parallelism "
            f"(runtime.expert_parallel): {why}")
#: ``FlashInferExperts._supports_current_device``: 9.0 exactly and these families (vLLM 0.19
#: fused_moe/flashinfer_cutlass_moe.py: 10.x, 11.x and 12.x; 0.33 fused_moe/experts/flashinfer_cutlass_moe.py: 11.x
#: excluded, flashinfer-ai/flashinfer#3134)
FLASHINFER_CUTLASS_MOE_FAMILIES = {"0.19": (10, 11, 12), "0.33": (10, 12)}


def flashinfer_cutlass_moe_path(version: str, expert_format: str, device: DeviceFacts,
                                expert_parallel: bool, tensor_parallel: int) -> str | None:
    """Why vLLM `version` runs a MoE model's routed experts stored as `expert_format` on FlashInfer's CUTLASS experts
    (``FlashInferExperts``) on `device` with its default environment, or None where it does not or nibble did not
    read it.  Read for 0.19 and 0.33 (fused_moe/oracle/fp8.py ``select_fp8_moe_backend``: AITER, FLASHINFER_TRTLLM,
    FLASHINFER_CUTLASS, DEEPGEMM, VLLM_CUTLASS, TRITON, ...):

    * fp8 weights and static activations with a scale per tensor ("fp8-per-tensor-static": kFp8StaticTensorSym for
      both) on compute capability 9.0 and the families of `FLASHINFER_CUTLASS_MOE_FAMILIES`
      (``_supports_current_device``; ``_supports_quant_scheme`` from 9.0).  FLASHINFER_TRTLLM comes first on 10.x:
      its per-tensor class (``TrtLlmFp8ExpertsMonolithic``) takes DeepSeek-V3 and Llama 4 routing in 0.19 and
      Renormalize, sigmoid and MiniMax routing besides in 0.33 (``_supports_routing_method``), its modular one no
      per-tensor scales; the routing method is not in nibble's model, so a 10.x device is charged the CUTLASS path
      whatever the routing (on the safe side where TRT-LLM takes it);
    * [128, 128] block fp8 ("fp8-block128") under expert parallelism on 9.0, where ``_get_priority_backends`` moves
      FLASHINFER_CUTLASS to the front (``ep_size > 1``; FlashInferExperts takes block fp8 on 9.0 only);
    * NVFP4 experts (compressed-tensors W4A4, kNvfp4Static x kNvfp4Dynamic) on the 11.x (0.19) and 12.x families,
      where fused_moe/oracle/nvfp4.py ``select_nvfp4_moe_backend``'s FLASHINFER_TRTLLM and FLASHINFER_CUTEDSL
      (10.x only) do not run and FLASHINFER_CUTLASS (NVFP4 from 10.0) comes next; on 10.x TRT-LLM's or CuTe DSL's
      kernels take them, not read here."""
    capability = device.compute_capability
    families = FLASHINFER_CUTLASS_MOE_FAMILIES.get(version)
    if families is None or capability is None:
        return None
    if weight_format_family(expert_format) == "nvfp4" and capability[0] in families and capability[0] != 10:
        return (f"vLLM {version} runs NVFP4 experts on FlashInfer's CUTLASS experts on compute capability "
                f"{capability_text(capability[0] * 10 + capability[1])} (oracle/nvfp4.py: FLASHINFER_TRTLLM and "
                "FLASHINFER_CUTEDSL run on 10.x only, FLASHINFER_CUTLASS next)")
    if expert_format == "fp8-per-tensor-static" and (capability == HOPPER_CAPABILITY or capability[0] in families):
        return (f"vLLM {version} runs fp8 experts with static per-tensor scales on FlashInfer's CUTLASS experts on "
                f"compute capability {capability_text(capability[0] * 10 + capability[1])} (oracle/fp8.py "
                "FLASHINFER_CUTLASS, FlashInferExperts"
                + ("; charged on 10.x whatever the routing, where TRT-LLM's per-tensor kernel takes some"
                   if capability[0] == 10 else "") + ")")
    if (expert_format == "fp8-block128" and expert_parallel and tensor_parallel > 1
            and capability == HOPPER_CAPABILITY):
        return (f"vLLM {version} runs block-fp8 experts under expert parallelism on FlashInfer's CUTLASS experts on "
                "compute capability 9.0 (oracle/fp8.py moves FLASHINFER_CUTLASS to the front for ep_size > 1)")
    return None


#: MXFP4 (OCP microscaling): 32 e2m1 values share one e8m0 scale byte; two values a byte
MXFP4_BLOCK = 32
#: vLLM 0.19's ``mxfp4_round_up_hidden_size_and_intermediate_size`` (fused_moe/oracle/mxfp4.py) for the Triton
#: backends: the expert width per rank rounded up to 64 (the hidden size is left as it is)
MXFP4_TRITON_WIDTH_ALIGNMENT = 64
#: triton_kernels' ``HopperMXValueLayout.swizzle_data`` (vllm/third_party/triton_kernels, layout_details/
#: hopper_value.py) pads both dimensions of the packed values to multiples of 64 bytes/rows
HOPPER_VALUE_ALIGNMENT = 64
#: ``HopperMXScaleLayout.swizzle_data`` (hopper_scale.py): the output dimension padded to ``2 x num_warps x 2 x 8``
#: (256 with the 8 warps ``_swizzle_mxfp4`` asks), the scales per row to a multiple of 2
HOPPER_SCALE_ROWS = 2 * 8 * 2 * 8
HOPPER_SCALE_COLUMNS = 2
#: vLLM 0.33's vendored triton_kernels (third_party/triton_kernels/tensor_details/layout_details/hopper_value.py,
#: ``HopperMXValueLayout.swizzle_data`` with ``mma_version`` 3) predates the pad-to-64 of 0.19's copy: it pads the
#: packed values' output rows to ``k_tile x warp_tile x threads x scott_trick x contig`` = 1 x 2 x 4 x 2 x 1 = 16
#: and their bytes along the reduction to 4 x 2 x 4 x 1 x 1 = 32
HOPPER_VALUE_ROWS_033 = 16
HOPPER_VALUE_BYTES_033 = 32
#: vLLM 0.33's ``_swizzle_mxfp4`` (quantization/utils/mxfp4_utils.py) on compute capability 9.0 pads the scales
#: per row to a multiple of 4 before ``HopperMXScaleLayout`` ("Patches #47303: pad K (num scale groups) to 0 mod 4")
HOPPER_SCALE_COLUMNS_033 = 4
#: vLLM releases whose MXFP4 expert layouts (`mxfp4_expert_layout_bytes`) are read from their code
MXFP4_LAYOUT_VERSIONS = frozenset({"0.11", "0.19", "0.33"})


#: vLLM 0.19's ``mxfp4_round_up_hidden_size_and_intermediate_size`` for the Marlin backend (CUDA): the expert
#: width per rank rounded up to 128 and the hidden size to 256 (``gptq_marlin_repack`` tiles); 0.11's
#: ``Mxfp4MoEMethod.create_weights`` (quantization/mxfp4.py) rounds the same for ``Mxfp4Backend.MARLIN``
MARLIN_WIDTH_ALIGNMENT = 128
MARLIN_HIDDEN_ALIGNMENT = 256
#: vLLM's MXFP4 quantization (quantization/mxfp4.py ``Mxfp4Config.get_min_capability``: 80 in 0.11, 0.19 and 0.33)
#: refuses a device below 8.0, so no backend is chosen there
MXFP4_MIN_CAPABILITY = (8, 0)
#: fused_moe/experts/gpt_oss_triton_kernels_moe.py ``_triton_kernel_moe_supports_current_device`` (0.33): OpenAI's
#: Triton kernels on CUDA from 9.0 below 13.0 (0.19: below 11.0); only their Hopper (9.x) layouts are read
#: (`mxfp4_expert_layout_bytes`)
TRITON_MXFP4_CAPABILITY_033 = ((9, 0), (13, 0))
#: vLLM 0.11 and 0.19's FlashInfer TRT-LLM-gen backends (0.11 quantization/mxfp4.py ``create_weights`` for
#: SM100_FI_MXFP4_BF16, 0.19 ``mxfp4_round_up_hidden_size_and_intermediate_size`` for TRTLLM_BACKENDS): the width
#: per rank and the hidden size rounded up to 256; vLLM 0.33 rounds the width to 128 only (the hidden size to 256)
TRTLLM_ALIGNMENT = 256
TRTLLM_WIDTH_ALIGNMENT_033 = 128


def mxfp4_moe_backend(version: str, device: DeviceFacts) -> str:
    """The MXFP4 MoE backend vLLM `version` runs gpt-oss's experts on for a device of `device`'s compute capability,
    as `mxfp4_expert_layout_bytes` names it ("triton", "triton-0.33", "marlin", "trtllm", "trtllm-0.33"), or "" where
    none is chosen or it was not read (AMD and capability unknown, below 8.0 where vLLM refuses MXFP4
    (`MXFP4_MIN_CAPABILITY`), other releases), with vLLM's default environment (no
    ``VLLM_USE_FLASHINFER_MOE_MXFP4_*`` or ``VLLM_MXFP4_USE_MARLIN`` override, no LoRA; the same under expert
    parallelism with data parallel 1: 0.11's ``get_mxfp4_backend`` reads no parallel config, and the classes the
    0.19 and 0.33 oracles pick here (``TrtLlmMxfp4ExpertsMonolithic``, ``OAITritonMxfp4ExpertsMonolithic``,
    ``MarlinExperts``) refuse only all2all kernels, EPLB and data parallel above 1 in ``_supports_parallel_config``;
    0.33's FlashInfer MoE-EP megakernels are not among ``_get_priority_backends_for_gpt_oss``'s):

    * 0.11 (quantization/mxfp4.py ``get_mxfp4_backend``): on ``is_device_capability(100)`` (10.0 exactly) with
      FlashInfer installed (vLLM's image installs it; ``vllm[flashinfer]``) SM100_FI_MXFP4_BF16, FlashInfer's
      TRT-LLM-gen kernel ("trtllm"; without FlashInfer it runs Marlin, whose layout holds less for gpt-oss); on every
      other CUDA device ``capability[0] < 9 or not has_triton_kernels()`` picks MARLIN: the triton_kernels package is
      not among vLLM 0.11.0's dependencies nor vendored in it (vLLM PR #27370 and issue #27672, after 0.11.0: "users
      have to install triton_kernels manually"), so Hopper and the RTX PRO 6000 run Marlin too.
    * 0.19 (fused_moe/oracle/mxfp4.py ``select_mxfp4_moe_backend``, ``_get_priority_backends``, each kernel class's
      ``_supports_current_device``): FLASHINFER_TRTLLM_MXFP4_BF16 on ``is_device_capability_family(100)`` (10.x;
      flashinfer-python is a 0.19 dependency), TRITON on ``(9, 0) <= capability < (11, 0)`` (the vendored
      third_party/triton_kernels), FLASHINFER_CUTLASS_MXFP4_BF16 only on ``is_device_capability(90)`` (taken by
      Triton before it), MARLIN (``has_device_capability((7, 5))``) on the rest: 8.x, 11.x and 12.x.
    * 0.33 (``_get_priority_backends_for_gpt_oss``): the same order, with its own TRT-LLM and Triton rounding; its
      Triton kernels run on ``(9, 0) <= capability < (13, 0)`` (`TRITON_MXFP4_CAPABILITY_033`), but family 120 moves
      TRITON after Marlin ("their 99KB shared memory budget caps them at small tiles"), and ``prioritize_humming``
      puts Humming ahead of Marlin only on 9.0, where Triton comes first: Marlin on 8.x and 12.x, Triton on 9.x and
      11.x, whose Triton layout (Blackwell's) is not read: "" there.
    """
    capability = device.compute_capability
    if version not in MXFP4_LAYOUT_VERSIONS or capability is None or capability < MXFP4_MIN_CAPABILITY:
        return ""
    major = capability[0]
    if version == "0.11":
        return "trtllm" if capability == (10, 0) else "marlin"
    if major == 10:
        return "trtllm-0.33" if version == "0.33" else "trtllm"
    if major == 9:
        return "triton-0.33" if version == "0.33" else "triton"
    low, high = TRITON_MXFP4_CAPABILITY_033
    if version == "0.33" and major != 12 and low <= capability < high:
        return ""  # 11.x: OpenAI's Triton kernels in Blackwell's layout, not read
    return "marlin"


def _mxfp4_checkpoint_bytes(experts: int, hidden: int, width: int, bias_bytes: int = ACTIVATION_ELEMENT_BYTES) -> int:
    """One MoE layer's MXFP4 experts on one rank at expert width `width` and hidden size `hidden`: w13 ``2w x H/2``
    and w2 ``H x w/2`` bytes of e2m1 pairs, ``2w x H/32`` and ``H x w/32`` e8m0 scales, biases ``2w`` and ``H`` of
    `bias_bytes` each (bf16 as the checkpoint ships them)."""
    return experts * (2 * width * hidden // 2 + 2 * width * hidden // MXFP4_BLOCK + hidden * width // 2
                      + hidden * width // MXFP4_BLOCK + (2 * width + hidden) * bias_bytes)


def mxfp4_expert_layout_bytes(spec: ModelSpec, tensor_parallel: int, layers: int, backend: str,
                              expert_parallel: bool = False) -> tuple[int, int]:
    """(vLLM's bytes, the checkpoint's bytes) of the MXFP4 routed experts of `layers` MoE layers on one rank,
    with E experts, H = hidden_size and w = moe_intermediate_size / tp (under `expert_parallel`, E the most loaded
    rank's whole experts and w the full width: `expert_shard`; ``Mxfp4MoEMethod.create_weights`` rounds the layer's
    ``intermediate_size_per_partition``, which FusedMoE's tp_size 1 makes the full width), for `backend`
    (`mxfp4_moe_backend`):

    * "triton" (vLLM 0.19 on Hopper; quantization/mxfp4.py ``Mxfp4MoEMethod``, fused_moe/oracle/mxfp4.py): the
      parameters are created at w' = round_up(w, 64) (``maybe_roundup_sizes``: gpt-oss-20b at TP 2, 1,440 ->
      1,472); ``convert_to_mxfp4_moe_kernel_format`` turns the biases into float32 and ``_swizzle_mxfp4`` rewrites
      the values in ``HopperMXValueLayout`` (both dimensions of the transposed ``[H/2, 2w']`` and ``[w'/2, H]``
      packed values padded to 64) and the scales in ``HopperMXScaleLayout`` (output rows padded to 256, scales per
      row to 2), deleting the unswizzled values (``del layer.w13_weight``); ``_setup_kernel`` keeps the swizzled
      scales in ``self.w13_precision_config`` but never removes the ``w13_weight_scale`` / ``w2_weight_scale``
      parameters: the unswizzled scales stay allocated beside them.
    * "marlin" (compute capability 8.x and 12.0 in every release read, Hopper in 0.11): the parameters are created
      at w' = round_up(w, 128) and H' = round_up(H, 256); ``prepare_moe_mxfp4_layer_for_marlin`` (0.11:
      ``prepare_moe_fp4_layer_for_marlin``, utils/marlin_utils_fp4.py) repacks the values (``gptq_marlin_repack``,
      as many bytes), permutes the scales back to e8m0 (``mxfp4_marlin_process_scales``) and the biases in bf16,
      replacing the parameters with them.
    * "triton-0.33": vLLM 0.33's Triton path on Hopper (oracle/mxfp4.py ``select_mxfp4_moe_backend``: TRITON is
      the first of ``_get_priority_backends_for_gpt_oss`` a compute-capability 9.0 device supports; the triton_kernels
      vendored in third_party/ is used unless another is installed; ``GptOssMxfp4MoEMethod``): the width rounded up to
      64 (``mxfp4_round_up_hidden_size_and_intermediate_size``), float32 biases, ``_swizzle_mxfp4`` pads the scales
      per row to 4 and then lays them out in ``HopperMXScaleLayout`` (rows to 256, scales per row to 2) and the
      values in the vendored ``HopperMXValueLayout`` (output rows to 16, packed bytes along the reduction to 32);
      ``convert_gpt_oss_weight_to_mxfp4_moe_kernel_format`` then deletes ``w13_weight``, ``w2_weight`` and both
      unswizzled scales, so no copy of the scales is kept.
    * "trtllm" (FlashInfer's TRT-LLM-gen kernel on capability 10.0: 0.11's SM100_FI_MXFP4_BF16,
      quantization/mxfp4.py ``process_weights_after_loading``; 0.19's FLASHINFER_TRTLLM_MXFP4_BF16,
      ``convert_to_mxfp4_moe_kernel_format`` for TRTLLM_BACKENDS): the parameters are created at w' =
      round_up(w, 256) and H' = round_up(H, 256); the values are row-shuffled (``get_w2_permute_indices_with_cache``,
      as many bytes), the scales shuffled and interleaved (``nvfp4_block_scale_interleave``, whose 128-row and
      4-column padding these sizes already meet, as the ``reshape`` to ``[E, 2w', H'/32]`` requires), the biases
      turned into float32, and the new tensors replace the parameters (``replace_parameter``; 0.11 assigns new
      ``Parameter``s), so nothing of the checkpoint's layout stays; bf16 activations (the MXFP8-activation variants
      need ``VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8``).  The permute indices each layer's method caches
      (``_cache_permute_indices``: one index per row of each tensor shape) are not counted.
    * "trtllm-0.33": vLLM 0.33's FLASHINFER_TRTLLM_MXFP4_BF16 (``convert_gpt_oss_weight_to_mxfp4_moe_kernel_format``,
      the same shuffles and float32 biases), with the width rounded up to 128 only and the hidden size to 256
      (``mxfp4_round_up_hidden_size_and_intermediate_size``).
    """
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    hidden = spec.hidden_size
    shipped = layers * _mxfp4_checkpoint_bytes(experts, hidden, width)
    if backend == "marlin":
        padded, wide = round_up(width, MARLIN_WIDTH_ALIGNMENT), round_up(hidden, MARLIN_HIDDEN_ALIGNMENT)
        return layers * _mxfp4_checkpoint_bytes(experts, wide, padded), shipped
    if backend in ("trtllm", "trtllm-0.33"):
        padded = round_up(width, TRTLLM_WIDTH_ALIGNMENT_033 if backend == "trtllm-0.33" else TRTLLM_ALIGNMENT)
        return layers * _mxfp4_checkpoint_bytes(experts, round_up(hidden, TRTLLM_ALIGNMENT), padded, 4), shipped
    padded = round_up(width, MXFP4_TRITON_WIDTH_ALIGNMENT)
    biases = (2 * padded + hidden) * 4
    if backend == "triton-0.33":
        values = (round_up(2 * padded, HOPPER_VALUE_ROWS_033) * round_up(hidden // 2, HOPPER_VALUE_BYTES_033)
                  + round_up(hidden, HOPPER_VALUE_ROWS_033) * round_up(padded // 2, HOPPER_VALUE_BYTES_033))
        scales = (round_up(2 * padded, HOPPER_SCALE_ROWS)
                  * round_up(round_up(hidden // MXFP4_BLOCK, HOPPER_SCALE_COLUMNS_033), HOPPER_SCALE_COLUMNS)
                  + round_up(hidden, HOPPER_SCALE_ROWS)
                  * round_up(round_up(padded // MXFP4_BLOCK, HOPPER_SCALE_COLUMNS_033), HOPPER_SCALE_COLUMNS))
        return layers * experts * (values + scales + biases), shipped
    kept_scales = 2 * padded * hidden // MXFP4_BLOCK + hidden * padded // MXFP4_BLOCK
    values = (round_up(2 * padded, HOPPER_VALUE_ALIGNMENT) * round_up(hidden // 2, HOPPER_VALUE_ALIGNMENT)
              + round_up(hidden, HOPPER_VALUE_ALIGNMENT) * round_up(padded // 2, HOPPER_VALUE_ALIGNMENT))
    scales = (round_up(2 * padded, HOPPER_SCALE_ROWS) * round_up(hidden // MXFP4_BLOCK, HOPPER_SCALE_COLUMNS)
              + round_up(hidden, HOPPER_SCALE_ROWS) * round_up(padded // MXFP4_BLOCK, HOPPER_SCALE_COLUMNS))
    return layers * experts * (values + scales + kept_scales + biases), shipped


def _mxfp4_layout_basis(version: str, backend: str, width: int, hidden: int) -> str:
    """Which kernel `expert_layout` charged and the layout it holds the experts in, for the answer's basis."""
    triton_width = f"{width} -> {round_up(width, MXFP4_TRITON_WIDTH_ALIGNMENT)}"
    if backend == "marlin":
        why = ("the triton_kernels package OpenAI's Triton kernels need is not among vLLM 0.11.0's dependencies, so "
               "get_mxfp4_backend falls through to MARLIN on Hopper too (with triton_kernels installed it runs "
               "them and holds less); " if version == "0.11" else "")
        return (f"Marlin (Mxfp4MoeBackend.MARLIN; {why}utils/marlin_utils_fp4.py): the expert width per rank rounded "
                f"up to 128 ({width} -> {round_up(width, MARLIN_WIDTH_ALIGNMENT)}) and the hidden size to 256 "
                f"({hidden} -> {round_up(hidden, MARLIN_HIDDEN_ALIGNMENT)}), e8m0 scales and bf16 biases")
    if backend in ("trtllm", "trtllm-0.33"):
        name = "SM100_FI_MXFP4_BF16" if version == "0.11" else "FLASHINFER_TRTLLM_MXFP4_BF16"
        step = TRTLLM_WIDTH_ALIGNMENT_033 if backend == "trtllm-0.33" else TRTLLM_ALIGNMENT
        return (f"FlashInfer's TRT-LLM-gen MoE kernel ({name}, bf16 activations): the expert width per rank rounded "
                f"up to {step} ({width} -> {round_up(width, step)}) and the hidden size to 256 ({hidden} -> "
                f"{round_up(hidden, TRTLLM_ALIGNMENT)}), the values and scales shuffled for its transposed MMA "
                "(nvfp4_block_scale_interleave) and float32 biases, replacing the checkpoint's tensors")
    if backend == "triton-0.33":
        return (f"OpenAI's Triton kernels (Mxfp4MoeBackend.TRITON): the expert width per rank rounded up to 64 "
                f"({triton_width}), the triton_kernels vendored in vllm/third_party (used unless another is "
                "installed): its Hopper value and scale layouts (values' rows to 16 and bytes to 32, scales per row "
                "to 4 by _swizzle_mxfp4, scale rows to 256) and float32 biases; the unswizzled scales are deleted "
                "(convert_gpt_oss_weight_to_mxfp4_moe_kernel_format)")
    return (f"OpenAI's Triton kernels (Mxfp4MoeBackend.TRITON): the expert width per rank rounded up to 64 "
            f"({triton_width}), triton_kernels' Hopper value and scale layouts (padded to 64 and to 256 rows), "
            "float32 biases, and the unswizzled scales Mxfp4MoEMethod._setup_kernel leaves registered")


def expert_layout(stage: Stage, version: str, expert_format: str, device: DeviceFacts) -> Term | None:
    """The bytes one rank's routed experts hold in vLLM `version` beyond the checkpoint's own (nibble's weights):
    MXFP4 experts (`expert_format` "mxfp4", gpt-oss) in the releases of `MXFP4_LAYOUT_VERSIONS`, in the layout of
    the backend `mxfp4_moe_backend` says the release runs on `device` (`mxfp4_expert_layout_bytes`); fp8
    [128, 128]-block experts whose scales vLLM 0.33 refines to the rank's slice of them (`fp8_refined_block`,
    `fp8_refined_expert_bytes`: the tensor-parallel slice, or under expert parallelism the rank's whole experts);
    vLLM 0.33's int4 GPTQ, AWQ and compressed-tensors experts on Marlin or Humming (`int4_moe_backend_v0_33`,
    `int4_expert_layout_bytes`: the padded widths, less the g_idx nibble charges and vLLM does not hold); 0.11 and
    0.19's symmetric GPTQ experts on GPTQMarlinMoEMethod (`gptq_marlin_moe_bytes`: 16-bit qzeros, and under act
    order whole down-projection scales and the g_idx with sort indices); GPTQ and AWQ experts every release hands
    to MoeWNA16 (`moe_wna16_backend`, `moe_wna16_bytes`: its group halved to divide the rank's width, no g_idx);
    fp8 experts where every release runs them on Marlin, below 8.9 (`fp8_marlin_expert_bytes`: block or per-tensor
    scales expanded to a 16-bit one per output row and 128-wide group, or per row; in 0.33 the width padded to
    Marlin's tile, `fp8_marlin_expert_padding_bytes`, for any fp8 scales); None elsewhere (other formats, releases
    and devices: not read)."""
    spec = stage.spec
    if expert_format in FP8_MARLIN_LABELS:
        marlin = fp8_marlin_expert_bytes(stage, version, device, expert_format)
        if marlin is not None or expert_format != "fp8-block128":
            return marlin
        return _fp8_refined_layout(stage, version)
    if weight_format_family(expert_format) == "fp8":
        return fp8_marlin_expert_bytes(stage, version, device, expert_format)
    wna16 = moe_wna16_backend(spec, expert_format, stage.moe_ranks,
                              stage.expert_parallel and stage.moe_ranks > 1, version, device)
    if wna16:
        return _moe_wna16_layout(stage, version, expert_format, wna16, device)
    if version == "0.33" and INT4_CHECKPOINT_LABEL.fullmatch(expert_format.removeprefix("checkpoint-")):
        return _int4_layout(stage, expert_format, device)
    if version in ("0.11", "0.19") and INT4_CHECKPOINT_LABEL.fullmatch(expert_format.removeprefix("checkpoint-")):
        return _gptq_marlin_moe_layout(stage, version, expert_format, device)
    backend = mxfp4_moe_backend(version, device)
    if expert_format != "mxfp4" or not backend or not spec.is_moe:
        return None
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    expert_parallel = stage.expert_parallel and stage.moe_ranks > 1
    held, shipped = mxfp4_expert_layout_bytes(spec, stage.moe_ranks, layers, backend, expert_parallel)
    experts, width = expert_shard(spec, stage.moe_ranks, expert_parallel)
    whole = (f"the {experts} whole experts a rank holds under expert parallelism (the backend is the one a single "
             "rank gets: its choice reads no expert parallelism with data parallel 1), " if expert_parallel else "")
    if stage.moe_ranks > stage.tensor_parallel:
        whole = (f"{'the ' + str(experts) + ' whole experts' if expert_parallel else str(width) + '-wide slices'} "
                 f"over the {stage.moe_ranks} data x tensor ranks (the TRITON backend's modular OAITritonExperts "
                 "under data parallelism, in the same layout), ")
    return Term(held - shipped, (
        f"vLLM {version}'s MXFP4 experts hold {held / GIB:.2f} GiB a rank where the checkpoint's are "
        f"{shipped / GIB:.2f} GiB, {whole}on {_mxfp4_layout_basis(version, backend, width, spec.hidden_size)} "
        "(quantization/mxfp4.py, fused_moe/oracle/mxfp4.py)"))


def _fp8_refined_layout(stage: Stage, version: str) -> Term | None:
    """`expert_layout` of fp8-block experts: the scales vLLM 0.33 holds on the refined grid beyond nibble's charge of
    the checkpoint's blocks, or None where it does not refine them.  Under expert parallelism over more than one rank
    FusedMoE's own tensor-parallel size is 1 (FusedMoEParallelConfig.make), so the refinement is asked of the whole
    expert width, as at one rank, for the rank's whole experts (`expert_shard`)."""
    spec, tensor_parallel = stage.spec, stage.moe_ranks
    expert_parallel = stage.expert_parallel and tensor_parallel > 1
    block = fp8_refined_block(spec, 1 if expert_parallel else tensor_parallel, version)
    if block is None:
        return None
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    held, shipped = fp8_refined_expert_bytes(spec, tensor_parallel, layers, block, expert_parallel)
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    held_experts = (f"the {experts} whole experts a rank holds under expert parallelism" if expert_parallel
                    else f"each rank's {width}-wide share of the {spec.moe_intermediate_size}-wide experts")
    return Term(held - shipped, (
        f"vLLM {version} refines the [128, 128] block scales of the fp8 experts to {block} x {block} for "
        f"{held_experts} (fused_moe/oracle/fp8.py "
        f"refine_fp8_moe_block_shape: gcd(128, {width}, {spec.hidden_size}); quantization/fp8.py "
        f"Fp8MoEMethod.create_weights allocates the float32 scales on that grid, FusedMoE.weight_loader upsamples "
        f"the checkpoint's into them) and runs them on its Triton experts: {held / GIB:.2f} GiB a rank of weights "
        f"and scales where the checkpoint's share is {shipped / GIB:.2f} GiB ({held - shipped:,} bytes more)"))


#: vLLM 0.33's Marlin MoE thread tile for the expert width (utils/marlin_utils.py ``marlin_moe_padded_intermediate``:
#: ``round_up(intermediate_size_per_partition, lcm(64, group_size))``)
MARLIN_MOE_WIDTH_TILE_033 = 64
#: the group sizes nibble read Humming's int4 expert layout for (a per-row scale, group -1, is not read)
_HUMMING_GROUPS: tuple[int, ...] = (32, 64, 128)


def int4_moe_backend_v0_33(spec: ModelSpec, weight_format: str, tensor_parallel: int, expert_parallel: bool,
                           device: DeviceFacts) -> str:
    """The WNA16 MoE kernel vLLM 0.33 runs `spec`'s int4 experts stored as `weight_format` (a GPTQ, AWQ or
    compressed-tensors checkpoint label) on, as `int4_expert_layout_bytes` names it: "humming", "marlin", or "" where
    nibble did not read the layout of the one it picks (a device of unknown capability or vendor, AMD, below 7.5,
    Triton's, a per-row Humming scale, a padded or partial-group label).

    ``select_wna16_moe_backend`` (fused_moe/oracle/int_wna16.py) walks RDNA3, FLASHINFER_TRTLLM, MARLIN,
    BATCHED_MARLIN, TRITON, HUMMING, with ``prioritize_humming`` moving HUMMING ahead of MARLIN on compute capability
    9.0 (`HUMMING_PREFERRED_CAPABILITY`), where ``HummingIndexedExperts`` takes every int4 group scale from 7.5
    (fused_humming_moe.py); elsewhere from 7.5 MARLIN where ``check_moe_marlin_supports_config`` with
    ``allow_tile_padding`` (AutoGPTQ, AutoAWQ and compressed-tensors ask it) passes: hidden a multiple of 128, group
    -1, 32, 64 or 128 dividing the rank's width (``intermediate_size_per_partition_unpadded``; under expert
    parallelism the whole width).  FLASHINFER_TRTLLM (``TrtLlmMxint4ExpertsMonolithic``, 10.x, kInt4Static32) is
    passed over: vLLM's default environment leaves it off (`FLASHINFER_MOE_INT4_ENV`)."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    capability = device.compute_capability
    if (found is None or "-padded" in weight_format or "-partial" in weight_format or found["kind"] == "asym-fp16zero"
            or capability is None or device.vendor == "amd" or capability < MARLIN_MOE_MIN_CAPABILITY_033):
        return ""
    group = int(found["group"]) if found["group"] else -1
    if capability == HUMMING_PREFERRED_CAPABILITY:
        return "humming" if group in _HUMMING_GROUPS else ""
    _, width = expert_shard(spec, tensor_parallel, expert_parallel)
    if (spec.hidden_size % MARLIN_MOE_HIDDEN_ALIGNMENT or group not in MARLIN_MOE_GROUPS
            or (group > 0 and width % group)):
        return ""
    return "marlin"


def humming_indexed_experts_v0_33(spec: ModelSpec, weight_format: str, tensor_parallel: int, expert_parallel: bool,
                                  device: DeviceFacts) -> bool:
    """Whether vLLM 0.33 runs `spec`'s experts stored as `weight_format` on ``HummingIndexedExperts``
    (fused_moe/experts/fused_humming_moe.py), whose workspace `fused_moe_caches` charges: int4 experts where
    nibble's backend for them is "humming" (`moe_wna16_backend` for the GPTQ and AWQ layers MoeWNA16 takes, as
    `expert_layout` asks it first, else `int4_moe_backend_v0_33`), and NVFP4 experts on compute capability 9.0,
    where none of the FlashInfer and CUTLASS backends of oracle/nvfp4.py ``select_nvfp4_moe_backend`` runs (10.x,
    11.x and 12.x only: `nvfp4_expert_parallel_refusal`) and ``prioritize_humming`` puts HUMMING ahead of MARLIN;
    both with their activations unquantized (``convert_to_humming_moe_kernel_format`` builds the input schema from
    ``VLLM_HUMMING_INPUT_QUANT_CONFIG``, unset: 16-bit) and without expert parallelism over several ranks, under
    which ``get_humming_moe_gemm_type`` takes ``grouped_contiguous`` (``HummingGroupedExperts``, whose workspace
    differs and which `int4_expert_parallel_refusal_v0_33` and `nvfp4_expert_parallel_refusal` refuse);
    ``indexed`` is the default with ``VLLM_HUMMING_MOE_GEMM_TYPE`` unset."""
    if expert_parallel and tensor_parallel > 1:
        return False
    if weight_format_family(weight_format) == "nvfp4":
        return device.vendor != "amd" and device.compute_capability == HUMMING_PREFERRED_CAPABILITY
    wna16 = moe_wna16_backend(spec, weight_format, tensor_parallel, False, "0.33", device)
    if wna16:
        return wna16 == "humming"
    return int4_moe_backend_v0_33(spec, weight_format, tensor_parallel, False, device) == "humming"


def _int4_checkpoint_format(weight_format: str) -> WeightFormat:
    """The checkpoint format of an int4 label `int4_moe_backend_v0_33` took (group, symmetry and layout)."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    assert found is not None
    layout = cast(Layout, found["layout"])
    return int4(int(found["group"]) if found["group"] else None, found["kind"] == "sym", layout=layout)


def int4_expert_layout_bytes(spec: ModelSpec, tensor_parallel: int, layers: int, backend: str, weight_format: str,
                             expert_parallel: bool = False) -> tuple[int, int]:
    """(vLLM 0.33's bytes, nibble's charge) of the int4 routed experts of `layers` MoE layers on one rank, stored as
    the checkpoint `weight_format`, on `backend` (`int4_moe_backend_v0_33`), with E the rank's experts, N their width
    per rank and H the hidden size (`expert_shard`), g the group size (one group a row at -1).

    nibble's charge is the planner's for the inventory's expert rows in the checkpoint's format
    (`WeightFormat.checkpoint_tensors`: GPTQ's qweight, qzeros, scales and g_idx; AWQ's qweight, qzeros, scales;
    compressed-tensors' weight_packed, weight_scale, weight_shape and an asymmetric weight_zero_point), each tensor's
    bytes split over the tensor-parallel ranks (``ceil(bytes / tp)``), or the most loaded rank's share of whole
    experts under expert parallelism.  What vLLM 0.33 holds after ``process_weights_after_loading``
    (auto_gptq.py ``AutoGPTQMoEMethod``, auto_awq.py, compressed_tensors_moe_wna16.py: no g_idx parameter is
    created for the experts):

    * "marlin" (fused_moe/oracle/int_wna16.py ``_process_weights_marlin`` / ``_process_awq_weights_marlin``): the width
      padded to N' = round_up(N, lcm(64, g)) (`MARLIN_MOE_WIDTH_TILE_033`, ``marlin_moe_padded_intermediate``);
      ``gptq_marlin_moe_repack`` keeps the bytes: w13 ``H x 2N' / 2``, w2 ``N' x H / 2``; 16-bit scales
      ``H/g x 2N'`` and ``N'/g x H``; packed zero points of the same groups (``G x 2N' / 2`` and ``G x H / 2`` bytes)
      for GPTQ (created and repacked whatever ``sym`` says) and AWQ, and for asymmetric compressed-tensors; the
      compressed-tensors method's two float32 ``weight_shape`` [E, 2] parameters; the gate/up bias padded alike.
    * "humming" (compute capability 9.0; quantization/utils/humming/moe.py ``convert_to_humming_moe_kernel_format``,
      humming-kernels 0.1.19 transform.py): each GEMM padded, N to 256 and K to 128 (`HUMMING_PAD_N`,
      `HUMMING_PAD_K`): w13 ``n13 = round_up(2N, 256)`` by ``k13 = round_up(H, 128)``, w2 ``n2 = round_up(H, 256)``
      by ``k2 = round_up(N, 128)``; the repacked values ``n x k / 2`` bytes, 16-bit scales ``n x k / g``, packed
      zero points ``n x k / g / 2`` bytes only where the checkpoint has them (GPTQ ``sym: false``, AWQ,
      asymmetric compressed-tensors: the schema's ``has_zero_point``); ``_replace_layer_parameters`` deletes every
      other parameter of the sublayer (a symmetric GPTQ checkpoint's qzeros, compressed-tensors' weight_shape).
    """
    stored = _int4_checkpoint_format(weight_format)
    group = stored.group_size or -1
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    hidden = spec.hidden_size
    charged = _expert_checkpoint_charge(spec, stored, tensor_parallel, expert_parallel)
    has_zeros = stored.layout in ("gptq", "awq") or not stored.symmetric
    if backend == "marlin":
        padded = round_up(width, math.lcm(MARLIN_MOE_WIDTH_TILE_033, max(group, 1)))
        gate_groups, down_groups = (hidden // group, padded // group) if group > 0 else (1, 1)
        held = (hidden * padded + padded * hidden // 2 + 2 * (gate_groups * 2 * padded + down_groups * hidden)
                + (gate_groups * padded + down_groups * hidden // 2 if has_zeros else 0)
                + (2 * 2 * 4 if stored.layout == "compressed-tensors" else 0)
                + (2 * 2 * (padded - width) if spec.expert_bias else 0))
    else:
        held = _humming_expert_bytes(spec, width, group, not stored.symmetric or stored.layout == "awq")
    return layers * experts * held, layers * charged


def _humming_expert_bytes(spec: ModelSpec, width: int, group: int, zeros: bool) -> int:
    """Bytes of one `width`-wide expert in Humming's layout (`int4_expert_layout_bytes`, "humming"): each GEMM
    padded, N to 256 and K to 128, the values ``n x k / 2``, 16-bit scales in groups of `group`, packed zero points
    where `zeros`, and a gate/up bias padded alike."""
    hidden = spec.hidden_size
    gate_n, gate_k = round_up(2 * width, HUMMING_PAD_N), round_up(hidden, HUMMING_PAD_K)
    down_n, down_k = round_up(hidden, HUMMING_PAD_N), round_up(width, HUMMING_PAD_K)
    groups = gate_n * (gate_k // group) + down_n * (down_k // group)
    return ((gate_n * gate_k + down_n * down_k) // 2 + 2 * groups + (groups // 2 if zeros else 0)
            + (2 * (gate_n - 2 * width + down_n - hidden) if spec.expert_bias else 0))


def _expert_checkpoint_charge(spec: ModelSpec, stored: WeightFormat, tensor_parallel: int,
                              expert_parallel: bool) -> int:
    """nibble's charge on one rank for one MoE layer's routed experts stored as `stored`: the planner's split of the
    inventory's expert rows (each tensor's bytes ``ceil(bytes / tp)``, or under expert parallelism over more than
    one rank the most loaded rank's share of whole experts)."""
    experts, _ = expert_shard(spec, tensor_parallel, expert_parallel)
    shared = expert_parallel and tensor_parallel > 1
    charged = 0
    for entry in inventory(spec):
        if entry.role != "expert" or not entry.layers:
            continue
        one = stored.bytes_for(entry.shape)
        charged += (-(-one * entry.per_layer * experts // spec.num_experts) if shared
                    else -(-one // tensor_parallel) * entry.per_layer)
    return charged


def gptq_marlin_moe_bytes(spec: ModelSpec, tensor_parallel: int, layers: int, group_size: int, act_order: bool,
                          expert_parallel: bool = False) -> tuple[int, int]:
    """(vLLM 0.11/0.19's bytes, nibble's charge) of the routed experts of `layers` MoE layers on one rank of a
    symmetric 4-bit GPTQ checkpoint in groups of `group_size` (-1: a whole row, where vLLM sets act order off) run by
    gptq_marlin.py's ``GPTQMarlinMoEMethod``, with E the rank's experts, N their width per rank (the whole width
    ``N_full`` under expert parallelism) and H the hidden size (`expert_shard`).  ``create_weights`` allocates int32
    ``w13_qweight`` [E, H / 8, 2N] and ``w2_qweight`` [E, N / 8, H] (the checkpoint's bytes); 16-bit ``w13_scales``
    [E, H / g, 2N] and ``w2_scales`` [E, N' / g, H], with ``N' = N_full`` under act order (``load_full_w2``: a
    rank loads the down projection's scales and zero points whole) else N; ``w13_qzeros`` [E, H / g, 2N / 8] and
    ``w2_qzeros`` [E, N' / g, H / 8] in the model's 16-bit dtype (``dtype=params_dtype``: half the checkpoint's
    int32 bytes), kept after loading; and int32 ``w13_g_idx`` and ``w13_g_idx_sort_indices`` [E, H], ``w2_g_idx``
    and ``w2_g_idx_sort_indices`` [E, N], which ``process_weights_after_loading`` keeps (sorted) under act order and
    replaces by empty tensors without it.  ``gptq_marlin_moe_repack`` and ``marlin_moe_permute_scales`` keep the
    weights' and scales' sizes.  nibble's charge: `_expert_checkpoint_charge` of the checkpoint's qweight, qzeros,
    scales and g_idx."""
    stored = gptq_checkpoint(None if group_size == -1 else group_size, True, act_order)
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    full_width, hidden = spec.moe_intermediate_size, spec.hidden_size
    gate_groups = hidden // group_size if group_size > 0 else 1
    down_rows = full_width if act_order else width
    down_groups = down_rows // group_size if group_size > 0 else 1
    held = (4 * (hidden // 8 * 2 * width + width // 8 * hidden)  # w13_qweight, w2_qweight
            + 2 * (gate_groups * 2 * width + down_groups * hidden)  # w13_scales, w2_scales
            + 2 * (gate_groups * (2 * width // 8) + down_groups * (hidden // 8))  # the qzeros at 16 bits
            + (4 * 2 * (hidden + width) if act_order else 0))  # g_idx and sort indices
    return layers * experts * held, layers * _expert_checkpoint_charge(spec, stored, tensor_parallel, expert_parallel)


def _gptq_marlin_moe_layout(stage: Stage, version: str, expert_format: str, device: DeviceFacts) -> Term | None:
    """`expert_layout` of vLLM 0.11/0.19's symmetric 4-bit GPTQ experts on GPTQMarlinMoEMethod
    (`gptq_marlin_moe_bytes`), where gptq_marlin runs them: a CUDA device of `GPTQ_MARLIN_FLOORS`, and
    ``check_moe_marlin_supports_layer`` (`marlin_moe_supports`; else MoeWNA16: `_moe_wna16_layout`)."""
    spec, tensor_parallel = stage.spec, stage.moe_ranks
    found = INT4_CHECKPOINT_LABEL.fullmatch(expert_format.removeprefix("checkpoint-"))
    capability = device.compute_capability
    if (found is None or found["layout"] != "gptq" or found["kind"] != "sym" or "-padded" in expert_format
            or "-partial" in expert_format or capability is None or device.vendor == "amd"
            or capability < GPTQ_MARLIN_FLOORS[version] or not spec.is_moe):
        return None
    group = int(found["group"]) if found["group"] else -1
    act_order = found["act_order"] is not None and group > 0
    expert_parallel = stage.expert_parallel and tensor_parallel > 1
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    if not marlin_moe_supports(spec.hidden_size, width, group):
        return None
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    held, charged = gptq_marlin_moe_bytes(spec, tensor_parallel, layers, group, act_order, expert_parallel)
    if held == charged:
        return None
    order = (f"under act order the down projection's scales and zero points whole ({spec.moe_intermediate_size} "
             "rows, load_full_w2) and the sorted g_idx with their int32 sort indices" if act_order
             else "without act order no g_idx (emptied in process_weights_after_loading)")
    return Term(held - charged, (
        f"vLLM {version}'s {expert_format} experts on GPTQMarlinMoEMethod (gptq_marlin.py) hold {held / GIB:.2f} GiB "
        f"a rank where nibble's charge of the checkpoint's tensors is {charged / GIB:.2f} GiB ({held - charged:+,} "
        f"bytes): the {experts} experts' qzeros in the model's 16-bit dtype (create_weights dtype=params_dtype), "
        f"{order}"))


def _int4_layout(stage: Stage, weight_format: str, device: DeviceFacts) -> Term | None:
    """`expert_layout` of vLLM 0.33's int4 checkpoint experts (`int4_expert_layout_bytes` on the kernel
    `int4_moe_backend_v0_33` picks), or None where nibble did not read the kernel's layout."""
    spec, tensor_parallel = stage.spec, stage.moe_ranks
    expert_parallel = stage.expert_parallel and tensor_parallel > 1
    backend = int4_moe_backend_v0_33(spec, weight_format, tensor_parallel, expert_parallel, device)
    if not backend or not spec.is_moe:
        return None
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    held, charged = int4_expert_layout_bytes(spec, tensor_parallel, layers, backend, weight_format, expert_parallel)
    held += humming_moe_locks_bytes(layers, device) if backend == "humming" else 0
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    group = _int4_checkpoint_format(weight_format).group_size
    if backend == "marlin":
        padded = round_up(width, math.lcm(MARLIN_MOE_WIDTH_TILE_033, max(group or 1, 1)))
        kernel = (f"Marlin (fused_moe/oracle/int_wna16.py _process_weights_marlin): the {experts} experts' width "
                  f"{width} -> {padded} (utils/marlin_utils.py marlin_moe_padded_intermediate, lcm(64, group)), "
                  "zero points repacked for GPTQ and AWQ"
                  + ("; FlashInfer's TRT-LLM MxInt4 experts, which oracle/int_wna16.py would try first on 10.x, "
                     f"need {FLASHINFER_MOE_INT4_ENV}=1 and vLLM's default environment leaves it off"
                     if device.compute_capability is not None and device.compute_capability[0] == 10
                     and group == 32 and _int4_checkpoint_format(weight_format).symmetric else ""))
    else:
        kernel = (f"Humming (compute capability 9.0, quantization/utils/humming/moe.py: N padded to 256, K to 128, "
                  "and a lock buffer a layer, create_humming_locks): "
                  f"w13 {2 * width} x {spec.hidden_size} -> {round_up(2 * width, HUMMING_PAD_N)} x "
                  f"{round_up(spec.hidden_size, HUMMING_PAD_K)}, w2 {spec.hidden_size} x {width} -> "
                  f"{round_up(spec.hidden_size, HUMMING_PAD_N)} x {round_up(width, HUMMING_PAD_K)} for the "
                  f"{experts} experts, zero points only where the checkpoint is asymmetric")
    return Term(held - charged, (
        f"vLLM 0.33's {weight_format} experts hold {held / GIB:.2f} GiB a rank where nibble's charge of the "
        f"checkpoint's tensors is {charged / GIB:.2f} GiB ({held - charged:+,} bytes): {kernel}; no g_idx is held "
        "for the experts (fused_moe/oracle/int_wna16.py select_wna16_moe_backend)"))


def _moe_wna16_has_zero_points(version: str, layout: str, kind: str) -> bool:
    """Whether MoeWNA16 holds zero points (``MoeWNA16Config.has_zp``) for a GPTQ or AWQ checkpoint: AWQ's
    ``zero_point``, GPTQ's ``not sym``; in 0.11 and 0.19 an asymmetric GPTQ checkpoint reaches MoeWNA16 through
    gptq.py's ``GPTQConfig.get_quant_method``, which passes ``"sym": True`` ("GPTQ typically uses symmetric
    quantization"), so none are held for it."""
    if layout == "awq":
        return kind != "sym"
    return kind != "sym" and version == "0.33"


def moe_wna16_backend(spec: ModelSpec, weight_format: str, tensor_parallel: int, expert_parallel: bool,
                      version: str, device: DeviceFacts) -> str:
    """The layout vLLM `version` holds `spec`'s GPTQ or AWQ int4 experts (`weight_format`, a checkpoint label) in
    where it hands them to MoeWNA16 (quantization/moe_wna16.py ``MoeWNA16Method``): "triton" (its
    ``create_weights`` tensors, which 0.11 and 0.19 run on ``fused_experts`` and 0.33 on the TRITON backend, whose
    ``convert_to_wna16_moe_kernel_format`` only views them as uint8), "humming" (0.33 on compute capability 9.0,
    where ``prioritize_humming`` puts HUMMING ahead of TRITON), or "" where MoeWNA16 does not take them or nibble
    cannot tell (a device of unknown capability where the choice hangs on it; a group Humming was not read for; a
    group MoeWNA16 cannot hold,
    `moe_wna16_group`, which `int4_expert_refusal` refuses).

    * 0.11 and 0.19: gptq_marlin.py and awq_marlin.py's ``get_quant_method`` fall back to MoeWNA16 where
      ``check_moe_marlin_supports_layer`` refuses the rank's width (`marlin_moe_supports`), and awq.py's too; a GPTQ
      checkpoint gptq_marlin does not take (asymmetric, a group Marlin does not run, below `GPTQ_MARLIN_FLOORS`, not
      CUDA: ``is_gptq_marlin_compatible``) loads as ``GPTQConfig``, whose MoE layers are always MoeWNA16.
    * 0.33: auto_gptq.py and auto_awq.py fall back where ``check_moe_marlin_supports_layer(allow_tile_padding=True)``
      refuses: ROCm, a hidden size not a multiple of 128, a group other than -1, 32, 64, 128, or one that does not
      divide the rank's width; ``select_wna16_moe_backend`` then refuses Marlin to a MoeWNA16Config
      (``_backend_incompatibility_reason``: "the MoeWNA16 checkpoint layout is not supported")."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    if (found is None or found["layout"] == "compressed-tensors" or found["kind"] == "asym-fp16zero"
            or "-padded" in weight_format or "-partial" in weight_format or not spec.is_moe
            or version not in ("0.11", "0.19", "0.33")):
        return ""
    group = int(found["group"]) if found["group"] else -1
    _, width = expert_shard(spec, tensor_parallel, expert_parallel)
    hidden, capability, amd = spec.hidden_size, device.compute_capability, device.vendor == "amd"
    effective = moe_wna16_group(hidden, width, group)
    if effective is None:
        return ""
    if version in ("0.11", "0.19"):
        marlin_shape = marlin_moe_supports(hidden, width, group)
        if found["layout"] == "awq" or not marlin_shape:
            return "" if marlin_shape else "triton"
        if found["kind"] != "sym" or amd or (capability is not None and capability < GPTQ_MARLIN_FLOORS[version]):
            return "triton"
        return ""
    if not (amd or hidden % MARLIN_MOE_HIDDEN_ALIGNMENT or group not in MARLIN_MOE_GROUPS or width % group):
        return ""
    if amd:
        return "triton"
    if capability is None:
        return ""
    if capability == HUMMING_PREFERRED_CAPABILITY:
        return "humming" if effective in _HUMMING_GROUPS else ""
    # on 10.x FLASHINFER_TRTLLM would come before TRITON for a symmetric g32 key, but only with
    # VLLM_USE_FLASHINFER_MOE_INT4=1 (`FLASHINFER_MOE_INT4_ENV`)
    return "triton"


def moe_wna16_act_order_note(spec: ModelSpec, weight_format: str, tensor_parallel: int, expert_parallel: bool,
                             version: str, device: DeviceFacts) -> str | None:
    """The plan's warning where vLLM `version` hands `spec`'s act-order GPTQ experts (`weight_format` a GPTQ label
    with ``-act-order-``, ``desc_act: true``, in groups) to MoeWNA16 (`moe_wna16_backend`), or None elsewhere.

    MoeWNA16 loads them but drops their g_idx: in 0.11.0 and 0.19.0 ``MoeWNA16Method.create_weights``
    (quantization/moe_wna16.py) registers ``w13_g_idx`` and ``w2_g_idx`` as empty int32 tensors ("some param are
    unused, but we need to init them in order to load weights") and ``moe_wna16_weight_loader`` returns at once for
    every weight whose name holds ``g_idx``; ``fused_experts`` then reads row k's scale (and zero point) at group
    ``k // group_size``, the stored order, where act order assigned the rows to groups by the permutation the g_idx
    records, so the experts' outputs are wrong, with no error.  (``is_moe_wna16_compatible`` rejects desc_act, but
    only for ``--quantization moe_wna16``; the fallback from gptq_marlin.py and gptq.py ``get_quant_method`` does not
    ask it.)  Marlin's GPTQMarlinMoEMethod honours the g_idx (``marlin_sort_g_idx``).  0.33 refuses act order with
    groups (`gptq_act_order_refusal`), and a whole-row scale has no groups to permute."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    if (found is None or found["act_order"] is None or found["layout"] != "gptq" or not found["group"]
            or version not in ("0.11", "0.19")):
        return None
    if moe_wna16_backend(spec, weight_format, tensor_parallel, expert_parallel, version, device) != "triton":
        return None
    return (f"vLLM {version} loads this act-order GPTQ checkpoint's (desc_act: true) routed experts on MoeWNA16 "
            "(Marlin's MoE method does not take them here: gptq_marlin.py get_quant_method, "
            "check_moe_marlin_supports_layer, or a checkpoint gptq_marlin does not take), which ignores their g_idx: "
            "MoeWNA16Method.create_weights (quantization/moe_wna16.py) registers w13_g_idx and w2_g_idx as empty "
            "tensors and moe_wna16_weight_loader skips every g_idx weight, so each row is scaled by the group of "
            "its stored position, not the group act order gave it, and the experts' outputs are wrong without any "
            "error. The memory figures stand; a checkpoint without act order, or a tensor-parallel degree and "
            "device where Marlin takes the experts (GPTQMarlinMoEMethod sorts by the g_idx), avoids it.")


def moe_wna16_bytes(spec: ModelSpec, tensor_parallel: int, layers: int, weight_format: str, version: str,
                    backend: str, expert_parallel: bool = False) -> tuple[int, int]:
    """(vLLM `version`'s bytes, nibble's charge) of the int4 routed experts of `layers` MoE layers on one rank where
    MoeWNA16 holds them (`moe_wna16_backend` gives `backend`), with E the rank's experts, N their width, H the hidden
    size (`expert_shard`) and g' the group `moe_wna16_group` halves the checkpoint's to.  ``create_weights``
    (quantization/moe_wna16.py, the same tensors in 0.11.0, 0.19.0 and 0.33.0): uint8 ``w13_qweight`` [E, 2N, H / 2]
    and ``w2_qweight`` [E, H, N / 2] (the checkpoint's bytes), scales in the model's 16-bit dtype ``w13_scales``
    [E, 2N, H / g'] and ``w2_scales`` [E, H, N / g'], and only where ``has_zp`` (`_moe_wna16_has_zero_points`) uint8
    ``w13_qzeros`` [E, N, H / g'] and ``w2_qzeros`` [E, H / 2, N / g']; a GPTQ checkpoint's g_idx (and its qzeros
    without ``has_zp``) are empty int32 tensors (0.33 creates no g_idx).  So per expert ``1.5 N H`` bytes of values,
    ``6 N H / g'`` of scales and ``1.5 N H / g'`` of zero points: g' below the checkpoint's group doubles its scales.
    On "humming" (0.33, compute capability 9.0) ``convert_to_humming_moe_kernel_format`` repacks them with
    ``_MoeWNA16HummingWeightSchema(group_size=layer.group_size)``: `_humming_expert_bytes` at g'.  nibble's charge:
    `_expert_checkpoint_charge` (GPTQ's qweight, qzeros, scales and g_idx, AWQ's qweight, qzeros and scales)."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    assert found is not None
    stored = _int4_checkpoint_format(weight_format)
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    hidden = spec.hidden_size
    group = moe_wna16_group(hidden, width, stored.group_size or -1)
    assert group is not None
    zeros = _moe_wna16_has_zero_points(version, found["layout"], found["kind"])
    if backend == "humming":
        held = _humming_expert_bytes(spec, width, group, zeros)
    else:
        held = (3 * width * hidden // 2 + 2 * 3 * width * hidden // group
                + (3 * width * hidden // group // 2 if zeros else 0))
    return (layers * experts * held,
            layers * _expert_checkpoint_charge(spec, stored, tensor_parallel, expert_parallel))


def humming_moe_locks_bytes(layers: int, device: DeviceFacts) -> int:
    """The lock buffers Humming's experts hold on one rank in vLLM 0.33: ``HummingExpertsBase.__init__``
    (fused_moe/experts/fused_humming_moe.py) calls ``create_humming_locks`` once for each MoE layer's kernel, ``8 x
    SMs`` int32 (`HUMMING_LOCKS_PER_SM`, `torch_cuda.compute_units` of `device`)."""
    units, _ = compute_units(device)
    return layers * 4 * HUMMING_LOCKS_PER_SM * units


def _moe_wna16_layout(stage: Stage, version: str, weight_format: str, backend: str,
                      device: DeviceFacts) -> Term | None:
    """`expert_layout` of GPTQ and AWQ experts MoeWNA16 holds (`moe_wna16_bytes`), or None where it holds exactly
    nibble's charge."""
    spec, tensor_parallel = stage.spec, stage.moe_ranks
    expert_parallel = stage.expert_parallel and tensor_parallel > 1
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    held, charged = moe_wna16_bytes(spec, tensor_parallel, layers, weight_format, version, backend, expert_parallel)
    held += humming_moe_locks_bytes(layers, device) if backend == "humming" else 0
    if held == charged:
        return None
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    stored = _int4_checkpoint_format(weight_format).group_size or -1
    group = moe_wna16_group(spec.hidden_size, width, stored)
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    assert found is not None
    zeros = _moe_wna16_has_zero_points(version, found["layout"], found["kind"])
    why = ("Marlin refuses the layer (marlin_utils.check_moe_marlin_supports_layer)" if version == "0.33"
           else "Marlin does not take the layer (gptq_marlin.py / awq_marlin.py get_quant_method: "
                "check_moe_marlin_supports_layer, or a GPTQ checkpoint gptq_marlin does not take)")
    kernel = ("Humming's kernels (compute capability 9.0, prioritize_humming; convert_to_humming_moe_kernel_format "
              "pads N to 256 and K to 128; a lock buffer a layer)" if backend == "humming"
              else ("the TRITON backend (fused_moe/oracle/int_wna16.py)" if version == "0.33"
                    else "Triton's fused_experts"))
    return Term(held - charged, (
        f"vLLM {version}'s {weight_format} experts fall to MoeWNA16 where {why}: MoeWNA16Method.create_weights "
        f"(quantization/moe_wna16.py) holds the {experts} experts' {width}-wide shares with 16-bit scales in groups "
        f"of {group} (the checkpoint's {stored} halved to divide the width and hidden size), "
        f"{'uint8 zero points' if zeros else 'no zero points'} and no g_idx, on {kernel}: {held / GIB:.2f} GiB a "
        f"rank where nibble's charge of the checkpoint's tensors is {charged / GIB:.2f} GiB ({held - charged:+,} "
        "bytes)"))


def fp8_expert_repack_bytes(stage: Stage, version: str, device: DeviceFacts, expert_format: str) -> Term | None:
    """What one rank holds only while vLLM `version` rewrites a MoE layer's fp8 experts (stored as `expert_format`)
    into its kernel's layout, beyond the layer's loaded weights; taken before the KV cache is sized and freed before
    "Model loading took" is measured:

    * on Marlin (`fp8_marlin_device`, any fp8 scales): prepare_fp8_moe_layer_for_marlin's ``repack_weight``
      (quantization/utils/marlin_utils_fp8.py, 0.11, 0.19 and 0.33) collects every expert's repacked w13 in a list
      and ``torch.cat``s it while the loaded w13 is still the layer's (replace_parameter comes after) and the last
      expert's transposed copy (``qweight.T.contiguous()``) is still bound: ``(2 x E + 1) x 2 x width x hidden``
      fp8 bytes for the rank's E experts (`expert_shard`); the w2 repack after it holds less (the loaded w13, still
      bound in Fp8MoEMethod.process_weights_after_loading, and two w2 copies half as wide).  Where 0.33 pads the
      width to ``pn`` (`_fp8_marlin_expert_width`), its padded copies of w13 and w2 (``_moe_pad_shard_rows``,
      ``_moe_pad_last``: ``3 x E x pn x hidden``) come first and stay bound beside the loaded ones, then the w13
      repack's list, its torch.cat and the last transposed copy: ``(7 x E + 2) x pn x hidden`` (the w2 phase,
      the padded w2 and repacked w13 beside w2's list and cat, ``(5 x E + 1) x pn x hidden``);
    * on FlashInfer's CUTLASS experts (`flashinfer_cutlass_moe_path`, 0.19 and 0.33): prepare_fp8_moe_layer_for_fi
      (quantization/utils/flashinfer_utils.py) flips w13's halves into a new tensor (``swap_w13_to_w31``: reshape,
      flip) while the loaded one is still bound: ``E x 2 x width x hidden`` bytes.

    None elsewhere (Triton and DeepGEMM take the experts as loaded; the scales' copies are small).  A DeepGEMM
    backend forced by hand (``VLLM_USE_DEEP_GEMM=1`` or ``VLLM_MOE_USE_DEEP_GEMM=1`` set, ``moe_backend="deep_gemm"``;
    not the default for block fp8 in 0.19 and 0.33, fused_moe/oracle/fp8.py ``_get_priority_backends``) would
    rewrite them in place with ``requant_weight_ue8m0_inplace`` (prepare_fp8_moe_layer_for_deepgemm), one expert at
    a time: not planned; 0.11 does so on 10.0 whatever the backend (`vllm_linear.deep_gemm_expert_requant_bytes`)."""
    spec = stage.spec
    if not spec.is_moe or weight_format_family(expert_format) != "fp8":
        return None
    start, stop = stage.layers
    if not any(start <= layer < stop for layer in spec.moe_layers):
        return None
    expert_parallel = stage.expert_parallel and stage.moe_ranks > 1
    experts, width = expert_shard(spec, stage.moe_ranks, expert_parallel)
    one = 2 * width * spec.hidden_size  # an expert's fp8 w13
    if fp8_marlin_device(version, device, True):
        padded = _fp8_marlin_expert_width(version, width, fp8_scale_kind(expert_format))
        if padded != width:
            transient = (7 * experts + 2) * padded * spec.hidden_size
            return Term(transient, (
                f"{transient / GIB:.2f} GiB while vLLM {version} repacks one MoE layer's fp8 experts for Marlin, "
                f"padded from {width} to {padded} wide (marlin_utils.py marlin_moe_padded_intermediate; "
                "prepare_fp8_moe_layer_for_marlin, quantization/utils/marlin_utils_fp8.py: the padded copies of w13 "
                f"and w2 (_moe_pad_shard_rows, _moe_pad_last, 3 x {padded} x {spec.hidden_size} bytes an expert) "
                f"beside the loaded ones, then the list of the {experts} experts' repacked w13 and its torch.cat, "
                f"2 x {padded} x {spec.hidden_size} bytes an expert each, and the last expert's transposed copy)"))
        transient = (2 * experts + 1) * one
        return Term(transient, (
            f"{transient / GIB:.2f} GiB while vLLM {version} repacks one MoE layer's fp8 experts for Marlin "
            "(prepare_fp8_moe_layer_for_marlin, quantization/utils/marlin_utils_fp8.py: the list of the "
            f"{experts} experts' repacked w13 and its torch.cat beside the loaded w13, 2 x {width} x "
            f"{spec.hidden_size} bytes an expert, and the last expert's transposed copy)"))
    if flashinfer_cutlass_moe_path(version, expert_format, device, expert_parallel, stage.moe_ranks) is None:
        return None
    transient = experts * one
    return Term(transient, (
        f"{transient / GIB:.2f} GiB while vLLM {version} flips one MoE layer's fp8 w13 for FlashInfer's CUTLASS "
        f"experts (prepare_fp8_moe_layer_for_fi, quantization/utils/flashinfer_utils.py swap_w13_to_w31: a copy of "
        f"the {experts} experts' w13, 2 x {width} x {spec.hidden_size} bytes each, beside the loaded one)"))


def fp8_marlin_expert_bytes(stage: Stage, version: str, device: DeviceFacts,
                            expert_format: str = "fp8-block128") -> Term | None:
    """`expert_layout` of fp8 routed experts where vLLM `version` runs them on Marlin (`fp8_marlin_device`):
    `fp8_marlin_scale_bytes` of each of the rank's experts (`expert_shard`: w13 ``2 x width x hidden``, w2
    ``hidden x width``) in each MoE layer of the stage for the labels of `FP8_MARLIN_LABELS`, and for any fp8 label in
    the releases of `FP8_MARLIN_PADDING_VERSIONS` the padded width (`fp8_marlin_expert_padding_bytes`); None
    elsewhere."""
    spec = stage.spec
    if not spec.is_moe or weight_format_family(expert_format) != "fp8":
        return None
    labelled = FP8_MARLIN_LABELS.get(expert_format)
    kind = fp8_scale_kind(expert_format)
    if not fp8_marlin_device(version, device, True, kind == "block"):
        return None
    expert_parallel = stage.expert_parallel and stage.moe_ranks > 1
    experts, width = expert_shard(spec, stage.moe_ranks, expert_parallel)
    start, stop = stage.layers
    layers = sum(1 for layer in spec.moe_layers if start <= layer < stop)
    scales = 0 if labelled is None else layers * experts * (
        fp8_marlin_scale_bytes(2 * width, spec.hidden_size, labelled)
        + fp8_marlin_scale_bytes(spec.hidden_size, width, labelled))
    padded_width = _fp8_marlin_expert_width(version, width, kind)
    padding = layers * experts * fp8_marlin_expert_padding_bytes(width, spec.hidden_size, version, kind)
    extra = scales + padding
    if extra <= 0:
        return None
    replaced = ("float32 block scales by 16-bit scales of one 128-wide group per output row, 64 times their size"
                if labelled else "scale by a 16-bit scale per output row (repeat_interleave)")
    held = (f"replaces each expert's {replaced}" if labelled is not None
            else "holds each expert's scales in 16 bits, no more than the checkpoint's")
    padded = (f", and pads each expert from {width} to {padded_width} wide (marlin_utils.py "
              f"marlin_moe_padded_intermediate: a multiple of 64 and of the group; _moe_pad_shard_rows pads w13's "
              f"gate and up, _moe_pad_last w2, and their scales with them), {padding:,} bytes of it" if padding else "")
    return Term(extra, (
        f"vLLM {version} runs the {expert_format} experts on Marlin below compute capability 8.9 "
        "(Fp8MoeBackend.MARLIN; Fp8MoEMethod.use_marlin in 0.11), whose prepare_fp8_moe_layer_for_marlin "
        f"(quantization/utils/marlin_utils_fp8.py) {held}{padded}, "
        f"for the rank's {experts} experts {width} wide in "
        f"{layers} layers: {extra / GIB:.2f} GiB a rank beyond nibble's charge of the checkpoint's weights and "
        f"scales ({extra:,} bytes)"))


def _fp8_marlin_expert_width(version: str, width: int, scales: str) -> int:
    """The expert width (per rank) vLLM `version`'s prepare_fp8_moe_layer_for_marlin repacks fp8 experts at: in the
    releases of `FP8_MARLIN_PADDING_VERSIONS` ``marlin_moe_padded_intermediate(width, group)`` (marlin_utils.py:
    ``round_up(width, lcm(64, group))``, group 128 for [128, 128] blocks, else -1 taken as 1), else the width."""
    if version not in FP8_MARLIN_PADDING_VERSIONS:
        return width
    return round_up(width, math.lcm(MARLIN_MOE_WIDTH_TILE_033, FP8_BLOCK if scales == "block" else 1))


#: the K of a thread tile of vLLM's Marlin MoE kernel (csrc/moe/marlin_moe_wna16/ops.cu: every
#: ``small_batch_thread_configs`` and ``large_batch_thread_configs`` entry has thread_k 64 or 128, ``min_thread_k``
#: 64): the second GEMM's K, w2's input, is the rank's expert width
MARLIN_MOE_MIN_THREAD_K = 64


def fp8_marlin_expert_width_refusal(spec: ModelSpec, weight_format: str, tensor_parallel: int, version: str,
                                    compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` cannot run `spec`'s fp8 routed experts stored as `weight_format` on Marlin at
    `tensor_parallel` ranks (1 under expert parallelism: whole experts) on a device of `compute_capability`, or None.

    Below compute capability 8.9 the fp8 experts run on Marlin (`fp8_marlin_device`: 0.11's
    ``Fp8MoEMethod.use_marlin`` and ``CompressedTensorsW8A8Fp8MoEMethod.use_marlin``, 0.19's
    ``select_fp8_moe_backend``, whose ``MarlinExperts.is_supported_config`` reads no shape).  0.11's
    ``prepare_moe_fp8_layer_for_marlin`` and 0.19's ``prepare_fp8_moe_layer_for_marlin``
    (quantization/utils/marlin_utils_fp8.py) repack the experts at the rank's width N as they are, and the first
    forward (the profiling run) calls ``moe_wna16_marlin_gemm`` for w2 with K = N: ``determine_exec_config``
    (csrc/moe/marlin_moe_wna16/ops.cu) finds no thread config whose thread_k (64 or 128,
    `MARLIN_MOE_MIN_THREAD_K`) divides it and ``marlin_mm`` fails "Invalid thread config: ... thread_k = -1,
    thread_n = -1" (vllm#32360 for NemotronH's N = 1856 / 128; vllm#42390, Gemma-4 fp8 at TP 2 on RTX 3090s, 0.21).
    0.33 pads the width to a multiple of 64 instead (`FP8_MARLIN_PADDING_VERSIONS`, ``marlin_moe_padded_intermediate``,
    charged by `fp8_marlin_expert_bytes`).  A device of unknown capability is not refused (as `capability_refusal`)."""
    if not spec.is_moe or weight_format_family(weight_format) != "fp8" or version in FP8_MARLIN_PADDING_VERSIONS:
        return None
    device = DeviceFacts(vendor="nvidia", compute_capability=compute_capability)
    if compute_capability is None or not fp8_marlin_device(version, device, True,
                                                           fp8_scale_kind(weight_format) == "block"):
        return None
    width = spec.moe_intermediate_size
    if width % tensor_parallel or (width // tensor_parallel) % MARLIN_MOE_MIN_THREAD_K == 0:
        return None
    per_rank = width // tensor_parallel
    major, minor = compute_capability
    repack = "prepare_moe_fp8_layer_for_marlin" if version == "0.11" else "prepare_fp8_moe_layer_for_marlin"
    return (f"vLLM {version} runs fp8 experts on Marlin on compute capability {major}.{minor} (no native fp8 below "
            f"8.9) and its Marlin MoE kernel needs each rank's expert width to be a multiple of "
            f"{MARLIN_MOE_MIN_THREAD_K}: at tensor parallel size {tensor_parallel} it is {per_rank} ({width} / "
            f"{tensor_parallel}), which {repack} (quantization/utils/marlin_utils_fp8.py) "
            "does not pad, so the profiling run's first MoE layer fails \"Invalid thread config\" (csrc/moe/"
            "marlin_moe_wna16/ops.cu: no thread_k of 64 or 128 divides w2's K); vLLM 0.33 pads it "
            "(marlin_moe_padded_intermediate), and --enable-expert-parallel (runtime.expert_parallel) places "
            "whole experts on each rank")


def fp8_marlin_expert_padding_bytes(width: int, hidden: int, version: str, scales: str = "block") -> int:
    """Bytes one fp8 expert (``width`` per rank, ``hidden``) holds on vLLM `version`'s Marlin beyond its unpadded
    Marlin layout where the width is padded (`_fp8_marlin_expert_width`: ``pn``; 0 where it is not).
    prepare_fp8_moe_layer_for_marlin (quantization/utils/marlin_utils_fp8.py, 0.33) pads w13 to ``2 x pn`` rows and
    w2 to ``pn`` columns before repacking them at that size: ``3 x (pn - width) x hidden`` fp8 bytes; w13's 16-bit
    scales (converted at the unpadded size, then padded) gain ``2 x (pn - width)`` values a group row
    (``ceil(hidden / 128)`` rows for [128, 128] blocks, one a tensor or a channel: a channel's only beyond the
    checkpoint's float32 ``2 x width``), w2's ``(pn - width) // 128`` group rows of ``hidden`` for blocks (none
    where pn rounds the width to its group; a tensor's or channel's scales follow the hidden size)."""
    padded = _fp8_marlin_expert_width(version, width, scales)
    if padded == width:
        return 0
    weights = 3 * (padded - width) * hidden
    if scales == "block":
        rows = -(-hidden // FP8_BLOCK)
        return weights + ACTIVATION_ELEMENT_BYTES * (rows * 2 * (padded - width)
                                                     + (padded - width) // FP8_BLOCK * hidden)
    if scales == "tensor":
        return weights + ACTIVATION_ELEMENT_BYTES * 2 * (padded - width)
    return weights + max(0, ACTIVATION_ELEMENT_BYTES * 2 * padded - 4 * 2 * width)


#: the fp8 weight block's output and input sizes vLLM's block-quantized checkpoints use (weight_block_size)
FP8_BLOCK_N = FP8_BLOCK_K = 128
#: vLLM 0.33's ``refine_fp8_moe_block_shape`` (fused_moe/oracle/fp8.py): the refined square block must be at least
#: 32 wide (``if refine < 32: return None``)
FP8_REFINED_BLOCK_MIN = 32
#: the releases whose fp8 MoE method refines the block scales to the tensor-parallel slice (0.33's oracle/fp8.py
#: ``resolve_fp8_moe_weight_block_shape``, called by quantization/fp8.py ``Fp8MoEMethod.__init__``); 0.11.0 and
#: 0.19.0 have neither it nor ``pad_tp_shard_to_weight_blocks``
FP8_REFINE_VERSIONS = frozenset({"0.33"})
#: vLLM 0.33 runs a refined block only on its Triton experts (fused_moe/experts/triton_moe.py
#: ``TritonExperts._supports_quant_scheme``: any block shape, where ``current_platform.supports_fp8()``, which is
#: compute capability 8.9 and up on CUDA, platforms/cuda.py)
TRITON_FP8_CAPABILITY = (8, 9)


def fp8_refined_block(spec: ModelSpec, tensor_parallel: int, version: str, quant_method: str = "") -> int | None:
    """The square block vLLM `version` refines the fp8 [128, 128] block scales of `spec`'s routed experts to at
    `tensor_parallel` ranks, or None where it does not.  vLLM 0.33 (fused_moe/oracle/fp8.py
    ``refine_fp8_moe_block_shape``, asked by ``resolve_fp8_moe_weight_block_shape`` from quantization/fp8.py
    ``Fp8MoEMethod.__init__``): when the rank's share ``ispp = moe_intermediate_size / tp`` is not a multiple of
    block_n (or, with tp > 1, of block_k), ``refine = gcd(128, 128, ispp, hidden_size)``, kept when at least 32
    (`FP8_REFINED_BLOCK_MIN`); ``create_weights`` then allocates the scales on that grid and ``FusedMoE.weight_loader``
    (routed_experts.py) upsamples the checkpoint's scales to it (``repeat_interleave``: lossless).  Only the ``fp8``
    quant method refines (`quant_method`: "" is taken as it, the ``weight_scale_inv`` layout a ``fp8-block128``
    checkpoint holds); compressed-tensors' ``CompressedTensorsW8A8Fp8MoEMethod`` validates the 128 blocks as before.
    With vLLM's default ``--moe-backend auto``; an explicit backend whose kernels take 128 blocks only would pad the
    slice to whole blocks instead (``pad_tp_shard_to_weight_blocks``), which nibble does not plan (no such option).
    The linear layers are not refined in any release (quantization/utils/fp8_utils.py ``validate_fp8_block_shape``)."""
    if not spec.is_moe or version not in FP8_REFINE_VERSIONS or quant_method == "compressed-tensors":
        return None
    width = spec.moe_intermediate_size
    if width % tensor_parallel:
        return None  # FusedMoEConfig asserts the split (`expert_width_refusal`)
    per_rank = width // tensor_parallel
    if per_rank % FP8_BLOCK_N == 0 and (tensor_parallel == 1 or per_rank % FP8_BLOCK_K == 0):
        return None
    refine = math.gcd(FP8_BLOCK_N, FP8_BLOCK_K, per_rank, spec.hidden_size)
    return refine if refine >= FP8_REFINED_BLOCK_MIN else None


def fp8_block_expert_refusal(spec: ModelSpec, tensor_parallel: int, version: str = DEFAULT_VERSION,
                             quant_method: str = "", compute_capability: tuple[int, int] | None = None) -> str | None:
    """vLLM's refusal of fp8 [128, 128]-block routed experts whose width does not split into whole blocks:
    ``Fp8MoEMethod.create_weights`` (layers/quantization/fp8.py; ``validate_fp8_block_shape_moe`` in
    quantization/utils/fp8_utils.py from 0.19) raises "The output_size of gate's and up's weight = N is not
    divisible by weight quantization block_n = 128" when FusedMoE's ``intermediate_size_per_partition`` (the expert
    width over the tensor-parallel ranks, expert parallelism off) is not a multiple of 128, and the same for block_k
    when tensor parallelism splits w2's input.  MiniMax-M2 at TP 8: 1536 / 8 = 192 (vLLM 0.19.0 on 4 and 8 A100s;
    vllm#17569 for Qwen3's 1536 and 768); the fix there is ``--enable-expert-parallel``, whose ranks hold whole
    experts (`VllmProfile.format_refusal` asks it at one rank then).  vLLM 0.33 refines the scales to a smaller
    block instead where one of at least 32 divides the slice (`fp8_refined_block`; planned, the larger scales
    charged by `fp8_refined_expert_bytes`), which only its Triton experts run: below compute capability 8.9
    (`TRITON_FP8_CAPABILITY`) no backend takes it (oracle/fp8.py ``select_fp8_moe_backend``); where no such block
    exists, or under compressed-tensors, it refuses as 0.19 does.  Models without routed experts: None."""
    if not spec.is_moe:
        return None
    width = spec.moe_intermediate_size
    per_rank = width // tensor_parallel
    if width % tensor_parallel == 0 and per_rank % FP8_BLOCK_N == 0 and per_rank % FP8_BLOCK_K == 0:
        return None
    share = f"{width / tensor_parallel:g}"
    refined = fp8_refined_block(spec, tensor_parallel, version, quant_method)
    if refined is not None:
        if compute_capability is None or compute_capability >= TRITON_FP8_CAPABILITY:
            return None
        major, minor = compute_capability
        return (f"vLLM {version} refuses fp8 [128, 128]-block experts at tensor parallel size {tensor_parallel} on "
                f"compute capability {major}.{minor}: it refines the block scales of each rank's {share}-wide share "
                f"of the {width}-wide experts to {refined} x {refined} (oracle/fp8.py refine_fp8_moe_block_shape), "
                "which only its Triton experts run, from compute capability 8.9 (TritonExperts._supports_quant_scheme,"
                " platforms/cuda.py supports_fp8); Marlin, which runs block fp8 below it, takes 128 x 128 blocks only: "
                "\"No FP8 MoE backend supports the deployment configuration.\" (select_fp8_moe_backend); vLLM serves "
                "it with --enable-expert-parallel (runtime.expert_parallel), which places whole experts on each rank")
    why = ""
    if version in FP8_REFINE_VERSIONS and width % tensor_parallel == 0:
        if quant_method == "compressed-tensors":
            why = (f"; vLLM {version}'s compressed-tensors MoE method does not refine the block scales as its fp8 "
                   "method does (compressed_tensors_moe_w8a8_fp8.py, validate_fp8_block_shape_moe)")
        else:
            gcd = math.gcd(FP8_BLOCK_N, FP8_BLOCK_K, per_rank, spec.hidden_size)
            why = (f"; vLLM {version} would refine the block scales to the largest block dividing 128, the share and "
                   f"the hidden size {spec.hidden_size}, but that is {gcd}, under 32 (oracle/fp8.py "
                   f"refine_fp8_moe_block_shape), so \"The output_size of gate's and up's weight = {per_rank} is not "
                   "divisible by weight quantization block_n = 128.\"")
    return (f"vLLM refuses fp8 [128, 128]-block experts at tensor parallel size {tensor_parallel}: each rank's "
            f"share of the {width}-wide experts, {share}, is not a multiple of the 128-wide "
            f"block (fp8.py, Fp8MoEMethod.create_weights){why}; vLLM serves it with --enable-expert-parallel "
            "(runtime.expert_parallel), which places whole experts on each rank")


def fp8_refined_expert_bytes(spec: ModelSpec, tensor_parallel: int, layers: int, block: int,
                             expert_parallel: bool = False) -> tuple[int, int]:
    """(vLLM's bytes, nibble's weights' bytes) of the fp8-block routed experts of `layers` MoE layers on one rank
    when vLLM 0.33 refines their scales to `block` x `block` (`fp8_refined_block`), with E experts, H = hidden_size,
    w = moe_intermediate_size / tp (under `expert_parallel`, the most loaded rank's whole experts at the full width:
    `expert_shard`): ``Fp8MoEMethod.create_weights`` (quantization/fp8.py) allocates w13 ``E x 2w x H`` and w2 ``E x
    H x w`` fp8 bytes and float32 scales ``E x 2 ceil(w/b) x ceil(H/b)`` and ``E x ceil(H/b) x ceil(w/b)``; the
    Triton experts that run it (`TRITON_FP8_CAPABILITY`) keep them as they are (``convert_to_fp8_moe_kernel_format``
    rewrites nothing for TRITON).  The loader's upsampled copy of one expert's checkpoint scales
    (``repeat_interleave``, a few KiB, freed at once) is not counted.  nibble's weights charge each routed-expert
    tensor of the inventory at ``ceil(bytes / tp)`` of its [128, 128]-block bytes (planner ``_sharded_bytes``), under
    expert parallelism the rank's share of the layer's row, ``ceil(bytes x per_layer x local / E)`` (planner
    ``_expert_parallel_bytes``)."""
    experts, width = expert_shard(spec, tensor_parallel, expert_parallel)
    hidden = spec.hidden_size
    rows, columns = -(-width // block), -(-hidden // block)
    held = experts * (3 * width * hidden + 4 * (2 * rows * columns + columns * rows))
    blocked = fp8("block")
    first = spec.moe_layers[0]
    rows_of_layer = [entry for entry in inventory(spec) if entry.role == "expert" and first in entry.layers]
    if expert_parallel and tensor_parallel > 1:
        shipped = sum(-(-blocked.bytes_for(entry.shape) * entry.per_layer * experts // spec.num_experts)
                      for entry in rows_of_layer)
    else:
        shipped = sum(-(-blocked.bytes_for(entry.shape) // tensor_parallel) * entry.per_layer
                      for entry in rows_of_layer)
    return layers * held, layers * shipped
