"""What vLLM refuses to run, and the notes beside what it runs differently than asked.

Compute capability floors per quantization method (each ``get_min_capability``: `CAPABILITY_FLOORS`), the
quantization method a checkpoint resolves to and its activation dtypes (``quantization/__init__.py``,
``config/model.py`` ``_verify_quantization``: `quantization_method`, `act_dtypes`), float16/bfloat16/float32
rules (``config/model.py`` ``_get_and_verify_dtype``), GPTQ symmetry and act-order (``gptq_marlin.py``,
``utils/marlin_utils.py``), head sizes and KV cache dtypes per attention backend (`head_size_refusal`,
`kv_cache_refusal`), widths the kernels cannot split (`mlp_width_refusal`, `expert_width_refusal`,
`int4_expert_refusal`) and hybrid models' cache modes (`linear_attention_refusal`, `mamba_align_refusal`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from quant_core.engines.base import KVCacheBackend
from quant_core.engines.vllm_attention import (
    VLLM_16BIT_CACHE_DTYPES,
    VLLM_FP8_CACHE_DTYPES,
    VLLM_PER_TOKEN_HEAD_CACHE_DTYPES,
    kv_backend,
    kv_requirement,
    mla_latent_refusal,
    per_token_head_backend,
)
from quant_core.engines.vllm_releases import mamba_cache_mode
from quant_core.engines.vllm_sampler import VOCAB_PADDING
from quant_core.formats import GGML_TYPE_NAMES, WeightFormat
from quant_core.identity_memo import IdentityMemo
from quant_core.kv_cache import HybridKV
from quant_core.specs import ModelSpec, Qwen3VisionTower, QwenVisionTower


def linear_attention_refusal(spec: ModelSpec, tensor_parallel: int) -> str | None:
    """Why vLLM cannot split a hybrid (Qwen3-Next) model's Gated DeltaNet layers or experts over `tensor_parallel`
    ranks (None: it can).  gdn_linear_attn.py (qwen3_next.py in v0.11), ``GatedDeltaNetAttention``: ``dt_bias`` and
    ``A_log`` hold ``divide(num_v_heads, tp_size)`` heads and the projections are reshaped per ``num_k_heads //
    tp_size`` key heads (mamba_utils.py's state shapes ``divide`` the same); qwen3_next.py,
    ``Qwen3NextSparseMoeBlock``: "Tensor parallel size ... is greater than the number of experts"."""
    linear = spec.linear_attention
    if linear is None:
        return None
    for what, size in (("linear_num_key_heads", linear.num_key_heads),
                       ("linear_num_value_heads", linear.num_value_heads)):
        if size % tensor_parallel:
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the Gated DeltaNet "
                    f"layers' {size} {what.removeprefix('linear_num_').replace('_', ' ')} ({what}; vLLM splits "
                    "them over the ranks)")
    if spec.is_moe and tensor_parallel > spec.num_experts:
        return (f"vLLM refuses tensor parallel size {tensor_parallel} for a {spec.model_type} model: it is greater "
                f"than the model's {spec.num_experts} experts")
    return None


def mamba_align_refusal(hybrid: HybridKV, version: str, block_size: int, max_batched_tokens: int | None) -> str | None:
    """Why vLLM `version` refuses to start a hybrid model whose stage on one rank is `hybrid` (held in the release's
    `mamba_cache_mode`) at the requested `block_size` and `max_batched_tokens`, or None: in "align" mode the raised
    attention block must not exceed the batched tokens (config/vllm.py, PR #34445: "In Mamba cache align mode,
    block_size (N) must be <= max_num_batched_tokens (M)").  The block depends on the tensor-parallel degree (one
    rank's state and attention bytes), so a degree may be refused where another is not."""
    block = hybrid.block_size(block_size)
    if mamba_cache_mode(version) != "align" or max_batched_tokens is None or block <= max_batched_tokens:
        return None
    return (f"vLLM {version} runs this hybrid model with prefix caching on (mamba_cache_mode 'align') and then "
            f"refuses to start: \"In Mamba cache align mode, block_size ({block}) must be <= max_num_batched_tokens "
            f"({max_batched_tokens})\"; plan at least {block} batched tokens")
#: utils/marlin_utils.py ``check_moe_marlin_supports_config`` (0.33): the hidden size a multiple of 128
MARLIN_MOE_HIDDEN_ALIGNMENT = 128


#: the smallest group MoeWNA16Method.create_weights halves a checkpoint's group size to (quantization/moe_wna16.py,
#: 0.11.0, 0.19.0 and 0.33.0: ``assert group_size >= 32``)
MOE_WNA16_MIN_GROUP = 32


def moe_wna16_group(hidden_size: int, width_per_rank: int, group_size: int) -> int | None:
    """The group size vLLM's ``MoeWNA16Method.create_weights`` (quantization/moe_wna16.py, 0.11.0, 0.19.0, 0.33.0)
    holds a rank's experts in: the checkpoint's `group_size` halved until it divides both the rank's width and the
    hidden size (the weight loader repeats each scale and zero point ``group_size_div_factor`` times); None where
    vLLM cannot load them: a group below 32 (``assert group_size >= 32``), or a whole-row scale (-1, where Python's
    ``x % -1 == 0`` ends the loop at once and ``hidden_size // -1`` gives the scales a negative dimension, which
    ``torch.zeros`` refuses)."""
    if group_size <= 0:
        return None
    group = group_size
    while width_per_rank % group or hidden_size % group:
        group //= 2
        if group < MOE_WNA16_MIN_GROUP:
            return None
    return group


#: the lowest compute capability at which each release runs a symmetric GPTQ checkpoint's dense layers on its
#: Marlin or Machete kernels: 0.11 and 0.19 convert it to gptq_marlin from GPTQMarlinConfig.get_min_capability (80,
#: 75; below, GPTQConfig's ExLlama kernels, not read), whose MarlinLinearKernel asks the same; 0.33's AutoGPTQConfig
#: asks 60, but its MarlinLinearKernel 75 (below, Conch, ExLlama or Triton: not read)
GPTQ_MARLIN_FLOORS: dict[str, tuple[int, int]] = {"0.11": (8, 0), "0.19": (7, 5), "0.33": (7, 5)}


def qwen_vision_refusal(tower: QwenVisionTower | Qwen3VisionTower, tensor_parallel: int) -> str | None:
    """Why vLLM's qwen2_5_vl.py cannot split Qwen2.5-VL's vision tower over `tensor_parallel` ranks (None: it can);
    likewise Qwen3-VL's in qwen3_vl.py (the same attention; ``linear_fc1`` a ColumnParallelLinear and ``linear_fc2``
    a RowParallelLinear of `intermediate_size`).

    With ``mm_encoder_tp_mode`` "weights" (the default) each block's ``qkv`` is a QKVParallelLinear of `heads`
    heads (``dist_utils.divide(num_heads, tp_size)``), ``proj`` and the MLP's ``down_proj`` RowParallelLinears over
    `hidden_size` and `intermediate_size` inputs, ``gate_up_proj`` a MergedColumnParallelLinear of two
    `intermediate_size` outputs: vLLM's ``divide`` asserts each of them is a multiple of the ranks (Qwen2.5-VL-3B and
    7B's 3,420-wide MLP refuses 8 ranks; the merger's hidden x merge^2 widths follow from hidden_size)."""
    for what, size in (("attention heads", tower.num_attention_heads), ("MLP width", tower.intermediate_size),
                       ("hidden size", tower.hidden_size)):
        if size % tensor_parallel:
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the vision tower's "
                    f"{what} ({size}; vLLM splits the tower's layers over the ranks)")
    return None


def vocabulary_refusal(spec: ModelSpec, tensor_parallel: int) -> str | None:
    """Why vLLM cannot split the vocabulary of `spec` over `tensor_parallel` ranks (None: it can):
    VocabParallelEmbedding and ParallelLMHead (model_executor/layers/vocab_parallel_embedding.py, v0.11, v0.19 and
    v0.33) pad the vocabulary to a multiple of 64 (``pad_vocab_size``) and give each rank
    ``divide(num_embeddings_padded, tp_size)`` rows, which asserts the padded vocabulary is a multiple of the ranks
    (distributed/utils.py ``ensure_divisibility``):
    GLM-4-32B's and GLM-4.5's 151,552 tokens (2^12 x 37) refuse 6, 12, 24, 48 and 96 ranks, which their heads would
    accept; Falcon-7B's 65,024 refuse its 71."""
    padded = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    if spec.vocab_size > 0 and padded % tensor_parallel:
        return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the vocabulary padded to "
                f"a multiple of {VOCAB_PADDING} ({padded}; vLLM splits the embedding and lm_head rows over the ranks)")
    return None


def mlp_width_refusal(spec: ModelSpec, tensor_parallel: int) -> str | None:
    """Why vLLM cannot split the dense MLP of `spec` over `tensor_parallel` ranks (None: it can): the MLP's
    column-parallel input layer (``MergedColumnParallelLinear`` of ``[intermediate_size] * 2`` in llama.py and the
    families built like it, ``ColumnParallelLinear`` in falcon.py and gpt2.py) gives each rank
    ``divide(intermediate_size, tp)`` rows, which asserts the width is a multiple of the ranks (Seed-OSS-36B's 27,648
    refuses 40 ranks, which its 80 heads and 8 key/value heads would accept).  MoE models without dense layers
    have no such MLP."""
    if spec.is_moe and not spec.dense_layers:
        return None
    if spec.intermediate_size % tensor_parallel:
        return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the MLP's width "
                f"({spec.intermediate_size}; vLLM splits the MLP's rows over the ranks)")
    return None


def expert_width_refusal(spec: ModelSpec, tensor_parallel: int, expert_parallel: bool = False) -> str | None:
    """Why vLLM cannot split the experts of `spec` over `tensor_parallel` ranks, in any weight format (None: it can).
    Under `expert_parallel` the routed experts are whole on each rank (FusedMoEParallelConfig.make: tp_size = 1 for
    them) and only the shared experts' width is split.

    ``FusedMoE.__init__`` (model_executor/layers/fused_moe/layer.py, v0.11.0 and v0.19.0; fused_moe/config.py in
    v0.33.0) asserts ``intermediate_size % self.tp_size == 0`` of the routed experts' width (expert parallelism off;
    with it ``tp_size`` is 1 for the experts); the shared experts are a dense MLP (``MergedColumnParallelLinear``,
    whose ``divide`` asserts the same of their width).  GLM-4.5-Air's 1,408-wide experts refuse 24, 48 and 96
    ranks, which its 96 heads and 8 key/value heads would accept."""
    if not spec.is_moe:
        return None
    for what, width in (("routed experts' width", 0 if expert_parallel else spec.moe_intermediate_size),
                        ("shared experts' width", spec.shared_expert_width)):
        if width and width % tensor_parallel:
            return (f"vLLM refuses tensor parallel size {tensor_parallel}: it does not divide the {what} ({width}; "
                    + ("the shared experts are a tensor-parallel MLP even under expert parallelism)"
                       if expert_parallel else "FusedMoE splits each expert's rows over the ranks); vLLM serves it "
                       "with --enable-expert-parallel (runtime.expert_parallel)"))
    return None


#: a label of an int4 format vLLM loads as a GPTQ, AWQ or compressed-tensors checkpoint (`WeightFormat.label`)
INT4_CHECKPOINT_LABEL = re.compile(
    r"int4-(?:g(?P<group>\d+)|row)-(?P<kind>sym|asym|asym-fp16zero)(?:-padded)?(?:-partial)?"
    r"(?P<act_order>-act-order)?-(?P<layout>gptq|awq|compressed-tensors)")

#: the int4 MoE group sizes Marlin runs (marlin_utils.check_moe_marlin_supports_layer: -1, 32, 64, 128)
MARLIN_MOE_GROUPS: tuple[int, ...] = (-1, 32, 64, 128)


def marlin_moe_supports(hidden_size: int, width_per_rank: int, group_size: int) -> bool:
    """vLLM's ``check_moe_marlin_supports_layer`` (layers/quantization/utils/marlin_utils.py, v0.11.0 and v0.19.0):
    ``hidden % 128 == 0 and intermediate_size_per_partition % max(64, group_size) == 0`` and a group size Marlin
    runs (the router-weight-on-input condition is the model's, not the format's)."""
    return (hidden_size % 128 == 0 and width_per_rank % max(64, group_size) == 0
            and group_size in MARLIN_MOE_GROUPS)


def int4_expert_refusal(spec: ModelSpec, weight_format: str, tensor_parallel: int, version: str) -> str | None:
    """Why vLLM `version` cannot run the routed experts of `spec` as the int4 checkpoint `weight_format` (a
    `WeightFormat.label` ending in -gptq, -awq or -compressed-tensors) split over `tensor_parallel` ranks (None: it
    can, or the label names no group size: a checkpoint's headers, nibble's own layout).  Each rank's experts are
    ``moe_intermediate_size / tp`` wide (`expert_width_refusal` refuses a width the ranks do not divide).

    GPTQ and AWQ (gptq_marlin.py's and awq_marlin.py's ``get_quant_method``, v0.11.0 and v0.19.0): Marlin where
    `marlin_moe_supports`, else MoeWNA16 (moe_wna16.py, ``MoeWNA16Method.create_weights``), which halves the group
    size until it divides the rank's width and the hidden size and asserts ``group_size >= 32``.
    compressed-tensors (compressed_tensors_moe.py): both its int4 MoE methods assert ``weight_quant.symmetric``
    ("Only symmetric quantization is supported for MoE"); where Marlin does not run it,
    ``CompressedTensorsWNA16MoEMethod.create_weights`` holds ``width_per_rank // group_size`` scale groups of w2, so
    a rank's width must be whole groups.  vLLM 0.33 pads the experts' tiles instead (`int4_expert_layout_bytes`,
    charged by `expert_layout`) where its GPTQ and AWQ methods' ``check_moe_marlin_supports_layer(allow_tile_padding=
    True)`` passes (a group dividing the rank's width, hidden a multiple of 128), and falls back to MoeWNA16
    elsewhere, which refuses what it refuses in 0.11 and 0.19 (`moe_wna16_group`); its compressed-tensors methods
    are not read: None."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format)
    if not spec.is_moe or found is None or version not in ("0.11", "0.19", "0.33") \
            or spec.moe_intermediate_size % tensor_parallel:
        return None
    group = int(found["group"]) if found["group"] else -1
    width, hidden = spec.moe_intermediate_size // tensor_parallel, spec.hidden_size
    layout = found["layout"]
    where = (f"each rank's share of the {spec.moe_intermediate_size}-wide experts at tensor parallel size "
             f"{tensor_parallel} is {width} wide")
    if version == "0.33":
        if (layout == "compressed-tensors" or "-padded" in weight_format or "-partial" in weight_format
                or (hidden % MARLIN_MOE_HIDDEN_ALIGNMENT == 0 and group in MARLIN_MOE_GROUPS
                    and (group < 0 or width % group == 0))
                or moe_wna16_group(hidden, width, group) is not None):
            return None
        return (f"vLLM 0.33 cannot load {layout.upper()} int4 {'row' if group < 0 else f'g{group}'} experts at tensor "
                f"parallel size {tensor_parallel}: {where}, which Marlin refuses (marlin_utils."
                "check_moe_marlin_supports_layer with allow_tile_padding: a group dividing the width), and MoeWNA16, "
                "which takes them, cannot group them (moe_wna16.py, MoeWNA16Method.create_weights asserts a group "
                "size of at least 32 dividing the width; a whole-row scale gets a negative dimension)")
    if layout == "compressed-tensors":
        if found["kind"] != "sym":
            return (f"vLLM {version} refuses asymmetric compressed-tensors int4 experts: both its int4 MoE methods "
                    "assert symmetric weights (compressed_tensors_moe.py, \"Only symmetric quantization is supported "
                    "for MoE\")")
        if group == -1 or width % group == 0:  # Marlin's condition implies whole groups too
            return None
        return (f"vLLM {version} cannot split compressed-tensors int4 g{group} experts: {where}, not whole "
                f"{group}-wide groups, and Marlin does not run it (marlin_utils.check_moe_marlin_supports_layer), so "
                f"CompressedTensorsWNA16MoEMethod holds {width // group} scale group(s) of each rank's w2 for "
                f"{width / group:g} groups of the checkpoint")
    if marlin_moe_supports(hidden, width, group):
        return None
    if group == -1:
        return (f"vLLM {version} cannot load {layout.upper()} int4 experts with a whole-row scale (group -1) at "
                f"tensor parallel size {tensor_parallel}: {where}, which Marlin does not run "
                "(marlin_utils.check_moe_marlin_supports_layer: a multiple of 64), and MoeWNA16, which takes them, "
                "keeps group -1 (moe_wna16.py, MoeWNA16Method.create_weights: x % -1 == 0) and sizes the scales "
                "hidden_size // -1, a negative dimension torch.zeros refuses")
    if moe_wna16_group(hidden, width, group) is None:
        return (f"vLLM {version} refuses {layout.upper()} int4 g{group} experts at tensor parallel size "
                f"{tensor_parallel}: {where}, which Marlin does not run "
                "(marlin_utils.check_moe_marlin_supports_layer) and MoeWNA16 cannot group "
                "(moe_wna16.py, MoeWNA16Method.create_weights asserts a group size of at least 32 dividing it)")
    return None


def moe_wna16_row_refusal(version: str, spec: ModelSpec, weight_format: str,
                          compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM 0.11 or 0.19 cannot load `spec`'s routed experts of a whole-row (group -1) GPTQ checkpoint
    `weight_format` on a device of `compute_capability`, whatever the ranks' width (`int4_expert_refusal` refuses by
    width): where gptq_marlin does not take the checkpoint, an asymmetric one (``is_gptq_marlin_compatible``: 4-bit
    ``sym`` only) or below `GPTQ_MARLIN_FLOORS`, it loads as ``GPTQConfig``, whose MoE layers are always MoeWNA16
    (gptq.py ``get_quant_method``), and ``MoeWNA16Method.create_weights`` keeps group -1 and sizes its scales
    ``hidden_size // -1`` (`moe_wna16_group`); None elsewhere (a device of unknown capability included)."""
    found = INT4_CHECKPOINT_LABEL.fullmatch(weight_format.removeprefix("checkpoint-"))
    if (not spec.is_moe or found is None or found["group"] or found["layout"] != "gptq"
            or version not in ("0.11", "0.19") or "-padded" in weight_format or "-partial" in weight_format):
        return None
    floor = GPTQ_MARLIN_FLOORS[version]
    if found["kind"] != "sym":
        why = "an asymmetric checkpoint gptq_marlin does not take"
    elif compute_capability is not None and compute_capability < floor:
        why = (f"on compute capability {compute_capability[0]}.{compute_capability[1]}, below gptq_marlin's "
               f"{floor[0]}.{floor[1]}, the checkpoint")
    else:
        return None
    return (f"vLLM {version} cannot load the {weight_format} experts: {why} loads as GPTQConfig, whose MoE layers are "
            "MoeWNA16 (gptq.py get_quant_method), and MoeWNA16Method.create_weights keeps a whole-row group -1 "
            "(x % -1 == 0) and sizes the scales hidden_size // -1, a negative dimension torch.zeros refuses "
            "(moe_wna16.py)")


#: The releases whose ``kv_cache_dtype="auto"`` takes a ModelOpt checkpoint's KV-cache quantization
#: (engine/arg_utils.py ``create_engine_config`` -> utils/torch_utils.py ``resolve_kv_cache_dtype_string`` and
#: ``get_kv_cache_quant_algo_string``, for a quant_method starting "modelopt"), with the KV dtypes each maps
#: (``MODELOPT_TO_VLLM_KV_CACHE_DTYPE_MAP``: "fp8" -> fp8_e4m3 in 0.19; 0.33 adds "nvfp4").  0.11 has neither: its
#: ModelOpt configs keep ``kv_cache_quant_algo`` for the checkpoint's k/v scales (ModelOptFp8KVCacheMethod), and its
#: cache stays the model's dtype unless ``--kv-cache-dtype fp8`` is given
MODELOPT_AUTO_KV_DTYPES: dict[str, dict[str, str]] = {"0.19": {"fp8": "fp8_e4m3"},
                                                      "0.33": {"fp8": "fp8_e4m3", "nvfp4": "nvfp4"}}
#: the vLLM cache dtypes of `MODELOPT_AUTO_KV_DTYPES` nibble plans, by its own KV dtype names (`formats.KV_DTYPES`)
_PLANNED_KV_DTYPES: dict[str, str] = {"fp8_e4m3": "fp8"}


def checkpoint_kv_cache_dtype(version: str, kv_cache_quant: str) -> tuple[str | None, str]:
    """The KV dtype vLLM `version` runs for ``kv_cache_dtype="auto"`` (nibble's default 16-bit cache) on a checkpoint
    whose ModelOpt config names `kv_cache_quant` (``fp8``, ``nvfp4``: `WeightScheme.kv_cache_quant`), as a name of
    `formats.KV_DTYPES`, or None where the plan keeps the requested dtype; with the plan's note ("" for no
    `kv_cache_quant`).  An nvfp4 cache (0.33), which nibble does not plan, keeps the 16-bit cache: more bytes per
    token than vLLM's, so fewer tokens promised, never more."""
    if not kv_cache_quant:
        return None, ""
    algo = kv_cache_quant.upper()
    vllm_dtype = MODELOPT_AUTO_KV_DTYPES.get(version, {}).get(kv_cache_quant)
    if vllm_dtype is None:
        return None, (f"The checkpoint's ModelOpt config quantizes the KV cache ({algo}), but vLLM {version}'s "
                      "kv_cache_dtype auto keeps the model's dtype (it maps "
                      + (", ".join(MODELOPT_AUTO_KV_DTYPES[version]).upper() if version in MODELOPT_AUTO_KV_DTYPES
                         else "no ModelOpt KV algorithm: resolve_kv_cache_dtype_string came in 0.19")
                      + "): planned with its 16-bit cache; --kv-cache-dtype fp8 (kv_cache.dtype fp8 here) "
                      "gives an fp8 cache, half the bytes, scaled by the checkpoint's k/v scales")
    planned = _PLANNED_KV_DTYPES.get(vllm_dtype)
    if planned is None:
        return None, (f"vLLM {version}'s kv_cache_dtype auto takes the checkpoint's ModelOpt KV algorithm {algo} and "
                      f"runs its cache as {vllm_dtype} (utils/torch_utils.py resolve_kv_cache_dtype_string), which "
                      "nibble does not plan: planned with the 16-bit cache, more bytes per token than vLLM's (its KV "
                      "capacity is higher than this plan's)")
    return planned, (f"vLLM {version}'s kv_cache_dtype auto takes the checkpoint's ModelOpt KV algorithm {algo}: "
                     f"its cache is {vllm_dtype} (engine/arg_utils.py create_engine_config, utils/torch_utils.py "
                     "resolve_kv_cache_dtype_string): planned at fp8, 1 byte an element; ask kv_cache.dtype (vLLM's "
                     "--kv-cache-dtype) to plan another")


#: vLLM's check of a quantization method against the device (``VllmConfig._get_quantization_config``, config/vllm.py
#: in 0.19 and 0.33, config/__init__.py in 0.11): ``if capability < quant_config.get_min_capability(): raise
#: ValueError("The quantization method ... is not supported for the current GPU. Minimum capability: ... Current
#: capability: ...")``, capability written ``major * 10 + minor``
_CONFIG_CHECK = "VllmConfig._get_quantization_config raises \"not supported for the current GPU\""
#: compressed-tensors' own check of the scheme it picks for a layer (``CompressedTensorsConfig.get_scheme`` ->
#: ``_check_scheme_supported``): RuntimeError "Quantization scheme is not supported for the current GPU"
_SCHEME_CHECK = "CompressedTensorsConfig._check_scheme_supported raises \"Quantization scheme is not supported\""

#: The lowest compute capability (vLLM's ``major * 10 + minor``) at which vLLM runs each weight-format family, per
#: release, with the code that decides it; None where the release has no quantization method for the family at all.
#: Between the floor and a faster kernel's own floor vLLM falls back to a slower kernel on the checkpoint's own tensors
#: (GPTQ's ExLlama, AWQ's GEMM, fp8 and nvfp4 weight-only Marlin): the weights' bytes are the checkpoint's either way
#: (fp8 Marlin's larger scales: `fp8_marlin_scale_bytes`).  A family several methods load (nibble's own INT4, exported
#: as GPTQ, AWQ or compressed-tensors; a plain ``int8``, which is bitsandbytes 8-bit or compressed-tensors W8A8 / W8A16)
#: takes the lowest of their floors: nibble refuses only what no way of loading it runs.  Below 8.0 vLLM also runs a
#: bf16 model as fp16 with dtype auto (``_resolve_auto_dtype``: "Falling back to float16", the same bytes), and every
#: release starts there: V1 attention below 8.0 is FlexAttention in 0.11 (platforms/cuda.py ``get_attn_backend_cls``)
#: and TRITON_ATTN, whose ``supports_compute_capability`` is True for any device, in 0.19 and 0.33.
CAPABILITY_FLOORS: dict[str, dict[str, tuple[int | None, str]]] = {
    "mxfp4": {version: (80, f"Mxfp4Config.get_min_capability() is 80 (quantization/mxfp4.py); {_CONFIG_CHECK}")
              for version in ("0.11", "0.19", "0.33")},
    "fp8": {
        "0.11": (80, "Fp8Config.get_min_capability() is 80 (quantization/fp8.py; fp8 Marlin weight-only below 8.9), "
                     "and a compressed-tensors fp8 checkpoint falls back below 8.9 from CompressedTensorsW8A8Fp8 to "
                     "CompressedTensorsW8A16Fp8, whose floor is 80 (\"ampere and up\"); " + _CONFIG_CHECK),
        "0.19": (75, "Fp8Config.get_min_capability() is 75 (quantization/fp8.py), as is compressed-tensors' "
                     "weight-only fallback CompressedTensorsW8A16Fp8 (\"turing and up\"); " + _CONFIG_CHECK),
        "0.33": (75, "Fp8Config.get_min_capability() is 75 (quantization/fp8.py), as is compressed-tensors' "
                     "weight-only fallback CompressedTensorsW8A16Fp8 (\"turing and up\"); " + _CONFIG_CHECK),
    },
    "nvfp4": {
        "0.11": (80, "compressed-tensors nvfp4 runs CompressedTensorsW4A4Fp4 only where cutlass_fp4_supported() "
                     "(10.0), else CompressedTensorsW4A16Fp4 (Marlin), whose get_min_capability() is 80; "
                     + _SCHEME_CHECK),
        "0.19": (75, "CompressedTensorsW4A4Fp4.get_min_capability() is 75; " + _SCHEME_CHECK),
        "0.33": (75, "CompressedTensorsW4A4Fp4.get_min_capability() is 75; " + _SCHEME_CHECK),
    },
    "compressed-tensors": {
        "0.11": (80, "CompressedTensorsWNA16.get_min_capability() is 80 (\"ampere and up\", "
                     "schemes/compressed_tensors_wNa16.py); " + _SCHEME_CHECK),
        "0.19": (75, "CompressedTensorsWNA16.get_min_capability() is 75 (\"Turing and up\"); " + _SCHEME_CHECK),
        "0.33": (75, "CompressedTensorsWNA16.get_min_capability() is 75 (\"Turing and up\"); " + _SCHEME_CHECK),
    },
    "gptq": {
        "0.11": (60, "GPTQMarlinConfig takes a GPTQ checkpoint from 8.0 (check_marlin_supported), GPTQConfig "
                     "(ExLlama kernels, the same tensors) below, whose get_min_capability() is 60"),
        "0.19": (60, "GPTQMarlinConfig takes a GPTQ checkpoint from 7.5 (check_marlin_supported), GPTQConfig "
                     "(ExLlama kernels, the same tensors) below, whose get_min_capability() is 60"),
        "0.33": (75, "AutoGPTQConfig (quantization/auto_gptq.py) runs Marlin only: AutoGPTQLinearMethod calls "
                     "verify_marlin_supported, and query_marlin_supported_quant_types returns no type below 75, "
                     "so it raises \"Marlin does not support weight_bits = uint4b8\""),
    },
    "awq": {
        "0.11": (75, "AWQMarlinConfig takes an AWQ checkpoint from 8.0, AWQConfig below, whose "
                     "get_min_capability() is 75; " + _CONFIG_CHECK),
        "0.19": (75, "AWQMarlinConfig.get_min_capability() and AWQConfig.get_min_capability() are 75; "
                     + _CONFIG_CHECK),
        "0.33": (75, "AutoAWQConfig.get_min_capability() is 75 (quantization/auto_awq.py); " + _CONFIG_CHECK),
    },
    "int4": {
        "0.11": (60, "nibble's INT4 loads as GPTQ, AWQ or compressed-tensors; the lowest floor is GPTQConfig's 60 "
                     "(ExLlama kernels)"),
        "0.19": (60, "nibble's INT4 loads as GPTQ, AWQ or compressed-tensors; the lowest floor is GPTQConfig's 60 "
                     "(ExLlama kernels)"),
        "0.33": (75, "nibble's INT4 loads as GPTQ, AWQ or compressed-tensors, and each needs 7.5: AutoGPTQ runs "
                     "Marlin only (verify_marlin_supported), AutoAWQConfig and CompressedTensorsWNA16 "
                     "get_min_capability() are 75"),
    },
    "int8": {
        "0.11": (70, "int8 weights load as bitsandbytes 8-bit (BitsAndBytesConfig.get_min_capability() 70) or "
                     "compressed-tensors W8A8 (75) / W8A16 (80): the lowest floor is 70"),
        "0.19": (70, "int8 weights load as bitsandbytes 8-bit (BitsAndBytesConfig.get_min_capability() 70) or "
                     "compressed-tensors W8A8 / W8A16 (75): the lowest floor is 70"),
        "0.33": (75, "vLLM 0.33 has no bitsandbytes; compressed-tensors W8A8 int8 and W8A16 get_min_capability() "
                     "are 75; " + _SCHEME_CHECK),
    },
    "nf4": {
        "0.11": (70, "BitsAndBytesConfig.get_min_capability() is 70; " + _CONFIG_CHECK),
        "0.19": (70, "BitsAndBytesConfig.get_min_capability() is 70; " + _CONFIG_CHECK),
        "0.33": (None, "vLLM 0.33 has no bitsandbytes: no such method in QUANTIZATION_METHODS (get_quantization_"
                       "config raises \"Invalid quantization method\") and no bitsandbytes_loader.py"),
    },
    "gguf": {
        "0.11": (60, "GGUFConfig.get_min_capability() is 60; " + _CONFIG_CHECK),
        "0.19": (60, "GGUFConfig.get_min_capability() is 60; " + _CONFIG_CHECK),
        "0.33": (None, "vLLM 0.33 has no GGUF: no gguf.py under layers/quantization and no gguf_loader.py under "
                       "model_executor/model_loader"),
    },
}

#: The floors of ModelOpt checkpoints (a quantization_config of quant_method ``modelopt``), which vLLM loads with its
#: own configs, not Fp8Config or compressed-tensors: quantization/modelopt.py ``get_min_capability`` of
#: ModelOptFp8Config (``model_config.quantization`` "modelopt") and ModelOptNvFp4Config ("modelopt_fp4"), checked by
#: VllmConfig._get_quantization_config.  Between the NVFP4 floor and 10.0 the linears run FP4 Marlin
#: (``is_fp4_marlin_supported``: ``has_device_capability(80)`` in 0.11, 75 in 0.19 and 0.33) on the checkpoint's
#: tensors, repacked; 0.33's ModelOpt FP8 below 8.9 runs fp8 Marlin weight-only
MODELOPT_CAPABILITY_FLOORS: dict[str, dict[str, tuple[int | None, str]]] = {
    "fp8": {
        "0.11": (89, "ModelOptFp8Config.get_min_capability() is 89 (quantization/modelopt.py); " + _CONFIG_CHECK),
        "0.19": (89, "ModelOptFp8Config.get_min_capability() is 89 (quantization/modelopt.py); " + _CONFIG_CHECK),
        "0.33": (80, "ModelOptFp8Config.get_min_capability() is 80 (quantization/modelopt.py); " + _CONFIG_CHECK),
    },
    "nvfp4": {
        "0.11": (80, "ModelOptNvFp4Config.get_min_capability() is 80 (quantization/modelopt.py); " + _CONFIG_CHECK),
        "0.19": (75, "ModelOptNvFp4Config.get_min_capability() is 75 (quantization/modelopt.py); " + _CONFIG_CHECK),
        "0.33": (75, "ModelOptNvFp4Config.get_min_capability() is 75 (quantization/modelopt.py); " + _CONFIG_CHECK),
    },
}


def _capability_rule(version: str, weight_format: str, quant_method: str = "") -> tuple[int | None, str] | None:
    """The (floor, where) of `weight_format` in vLLM `version`: `MODELOPT_CAPABILITY_FLOORS` for a checkpoint read
    from a quantization_config of `quant_method` ``modelopt``, else `CAPABILITY_FLOORS`; None when no floor applies."""
    floors = MODELOPT_CAPABILITY_FLOORS if quant_method == "modelopt" else CAPABILITY_FLOORS
    return floors.get(weight_format_family(weight_format), {}).get(version)


#: The model types vLLM will not run in float16 (config/model.py ``_FLOAT16_NOT_SUPPORTED_MODELS``, "Numerical
#: instability. Please use bfloat16 or float32 instead."), per release: on a device without bf16 (below 8.0,
#: ``CudaPlatform.supported_dtypes`` is [float16, float32]) ``_resolve_auto_dtype`` drops float16 for them and runs
#: float32, and ``--dtype half`` raises in ``_check_valid_dtype``
FLOAT16_UNSUPPORTED_MODEL_TYPES: dict[str, frozenset[str]] = {
    "0.11": frozenset({"gemma2", "gemma3", "gemma3_text", "plamo2", "glm4"}),
    "0.19": frozenset({"gemma2", "gemma3", "gemma3_text", "plamo2", "glm4"}),
    "0.33": frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"}),
}


def runs_float32(version: str, model_type: str, compute_capability: tuple[int, int] | None) -> bool:
    """Whether vLLM `version` runs a `model_type` model in float32 on a device of `compute_capability`: a model type it
    will not run in float16 (`FLOAT16_UNSUPPORTED_MODEL_TYPES`) on a device without bfloat16 (below 8.0), where
    ``_resolve_auto_dtype`` (config/model.py) is left with float32 among the platform's supported dtypes."""
    return (compute_capability is not None and compute_capability < (8, 0)
            and model_type in FLOAT16_UNSUPPORTED_MODEL_TYPES.get(version, frozenset()))


#: The file of ``VllmConfig._get_quantization_config`` per release, which checks the model's dtype against the
#: quantization method's activation dtypes (`ACT_DTYPES`) after its capability check and raises
#: ``f"{model_config.dtype} is not supported for quantization method {model_config.quantization}. Supported dtypes:
#: {supported_dtypes}"``
QUANTIZATION_CONFIG_FILE: dict[str, str] = {"0.11": "config/__init__.py", "0.19": "config/vllm.py",
                                            "0.33": "config/vllm.py"}

#: Per release, per vLLM quantization method (by the name ``model_config.quantization`` holds, which the message of
#: `QUANTIZATION_CONFIG_FILE` names): the activation dtypes its config's ``get_supported_act_dtypes`` returns, in
#: its order (``torch.half`` prints as torch.float16), each with the file:class under model_executor/layers/
#: quantization/ it is read from (compressed-tensors: compressed_tensors/compressed_tensors.py:
#: CompressedTensorsConfig).  The methods nibble's format families load with (`quantization_method`); 0.33 has no
#: bitsandbytes and no GGUF, and maps ``gptq``, ``gptq_marlin`` and ``auto_gptq`` to AutoGPTQConfig (``awq`` alike to
#: AutoAWQConfig: quantization/__init__.py ``get_quantization_config``), whose ``override_quantization_method``
#: leaves ``auto_gptq`` / ``auto_awq`` in ``model_config.quantization`` for every GPTQ / AWQ checkpoint.  mxfp4
#: (Mxfp4Config: bfloat16 only) and nvfp4 are refused below 8.0 by their capability floors already
#: (`CAPABILITY_FLOORS`)
ACT_DTYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "0.11": {
        "gptq": ("float16",),  # gptq.py:GPTQConfig
        "gptq_marlin": ("float16", "bfloat16"),  # gptq_marlin.py:GPTQMarlinConfig
        "awq": ("float16",),  # awq.py:AWQConfig
        "awq_marlin": ("float16", "bfloat16"),  # awq_marlin.py:AWQMarlinConfig
        "fp8": ("bfloat16", "float16"),  # fp8.py:Fp8Config
        "compressed-tensors": ("float32", "float16", "bfloat16"),  # CompressedTensorsConfig
        "bitsandbytes": ("float32", "float16", "bfloat16"),  # bitsandbytes.py:BitsAndBytesConfig
        "gguf": ("float16", "bfloat16", "float32"),  # gguf.py:GGUFConfig
        "modelopt": ("bfloat16", "float16"),  # modelopt.py:ModelOptFp8Config
        "modelopt_fp4": ("bfloat16", "float16", "float8_e4m3fn"),  # modelopt.py:ModelOptNvFp4Config
    },
    "0.19": {
        "gptq": ("float16",),  # gptq.py:GPTQConfig
        "gptq_marlin": ("float16", "bfloat16"),  # gptq_marlin.py:GPTQMarlinConfig
        "awq": ("float16",),  # awq.py:AWQConfig
        "awq_marlin": ("float16", "bfloat16"),  # awq_marlin.py:AWQMarlinConfig
        "fp8": ("bfloat16", "float16"),  # fp8.py:Fp8Config
        "compressed-tensors": ("float32", "float16", "bfloat16"),  # CompressedTensorsConfig
        "bitsandbytes": ("float32", "float16", "bfloat16"),  # bitsandbytes.py:BitsAndBytesConfig
        # below 10.0; from 10.0 `ACT_DTYPES_FROM_CAPABILITY`
        "gguf": ("float16", "bfloat16", "float32"),  # gguf.py:GGUFConfig
        "modelopt": ("bfloat16", "float16"),  # modelopt.py:ModelOptFp8Config
        "modelopt_fp4": ("bfloat16", "float16", "float8_e4m3fn"),  # modelopt.py:ModelOptNvFp4Config
    },
    "0.33": {
        "auto_gptq": ("float16", "bfloat16"),  # auto_gptq.py:AutoGPTQConfig
        "auto_awq": ("float16", "bfloat16"),  # auto_awq.py:AutoAWQConfig
        "fp8": ("bfloat16", "float16"),  # fp8.py:Fp8Config
        "compressed-tensors": ("float32", "float16", "bfloat16"),  # CompressedTensorsConfig
        "modelopt": ("bfloat16", "float16"),  # modelopt.py:ModelOptFp8Config
        "modelopt_fp4": ("bfloat16", "float16", "float8_e4m3fn"),  # modelopt.py:ModelOptNvFp4Config
    },
}

#: The quantization method vLLM loads each format family (`weight_format_family`) with, but GPTQ and AWQ
#: (`quantization_method`): nibble's own INT4 and a plain int8 as compressed-tensors (an int8 as bitsandbytes 8-bit
#: lists the same dtypes), nf4 as bitsandbytes, a ggml type as GGUF
_FAMILY_METHODS: dict[str, str] = {"fp8": "fp8", "compressed-tensors": "compressed-tensors",
                                   "int4": "compressed-tensors", "int8": "compressed-tensors", "nf4": "bitsandbytes",
                                   "gguf": "gguf"}


#: The lowest compute capability at which vLLM 0.11 / 0.19 convert a GPTQ or AWQ checkpoint to Marlin
#: (utils/marlin_utils.py ``query_marlin_supported_quant_types`` returns no type below 80 in 0.11, 75 in 0.19, so
#: ``is_gptq_marlin_compatible`` / ``is_awq_marlin_compatible`` are false there)
MARLIN_FLOORS: dict[str, tuple[int, int]] = {"0.11": (8, 0), "0.19": (7, 5)}


def quantization_method(version: str, family: str, stored: WeightFormat | None,
                        compute_capability: tuple[int, int], quant_method: str = "") -> str | None:
    """The `ACT_DTYPES` method vLLM `version` loads weights of `family` (`weight_format_family`, `stored` the format
    when known) with on a device of `compute_capability`, or None for a family with none there.  GPTQ and AWQ:
    auto_gptq / auto_awq in a release that has them (0.33); in 0.11 and 0.19 gptq_marlin / awq_marlin (the overrides
    ModelConfig._verify_quantization tries first) from the release's `MARLIN_FLOORS` where Marlin takes `stored`
    (`float16_only_method`; a format not known is taken as Marlin's, as `bfloat16_refusal` takes it), else the
    gptq / awq fallback.  A ModelOpt checkpoint (`quant_method` ``modelopt``): modelopt (FP8) or modelopt_fp4
    (NVFP4), the names quantization/__init__.py gives ModelOptFp8Config and ModelOptNvFp4Config."""
    if quant_method == "modelopt" and family in ("fp8", "nvfp4"):
        return "modelopt" if family == "fp8" else "modelopt_fp4"
    if family in ("gptq", "awq"):
        if f"auto_{family}" in ACT_DTYPES.get(version, {}):
            return f"auto_{family}"
        floor = MARLIN_FLOORS.get(version)
        marlin = (floor is not None and compute_capability >= floor
                  and (stored is None or float16_only_method(stored) is None))
        return f"{family}_marlin" if marlin else family
    return _FAMILY_METHODS.get(family)


#: (release, method): from which compute capability the method's ``get_supported_act_dtypes`` returns another list
#: than `ACT_DTYPES`' (0.19's gguf.py GGUFConfig: ``has_device_capability(100)`` -> ``[torch.half, torch.float32]``,
#: "GGUF has precision issues with bfloat16 on Blackwell"; 0.11's lists bfloat16 on every device)
ACT_DTYPES_FROM_CAPABILITY: dict[tuple[str, str], tuple[tuple[int, int], tuple[str, ...]]] = {
    ("0.19", "gguf"): ((10, 0), ("float16", "float32")),
}


def act_dtypes(version: str, method: str | None,
               compute_capability: tuple[int, int] | None = None) -> tuple[str, ...] | None:
    """The activation dtypes of vLLM `version`'s quantization `method` on a device of `compute_capability`
    (`ACT_DTYPES`, `ACT_DTYPES_FROM_CAPABILITY`), or None for a method not listed (no check of the model's dtype is
    charged for it)."""
    above = ACT_DTYPES_FROM_CAPABILITY.get((version, method or ""))
    if above is not None and compute_capability is not None and compute_capability >= above[0]:
        return above[1]
    return ACT_DTYPES.get(version, {}).get(method or "")


def act_dtypes_text(dtypes: tuple[str, ...]) -> str:
    """`dtypes` as vLLM's message prints the list: ``[torch.float16, torch.bfloat16]``."""
    return "[" + ", ".join(f"torch.{dtype}" for dtype in dtypes) + "]"


@lru_cache(maxsize=1024)
def float32_refusal(version: str, model_type: str, weight_format: str,
                    compute_capability: tuple[int, int] | None, stored: WeightFormat | None = None,
                    quant_method: str = "") -> str | None:
    """Why vLLM `version` refuses weights stored as `weight_format` (the format `stored`, when known) for a
    `model_type` model it runs in float32 on the device (`runs_float32`): the activation dtypes (`ACT_DTYPES`) of the
    quantization method that loads them (`quantization_method`, by the config's `quant_method`) lack float32, with
    vLLM's message; None otherwise.  Cached: the planner asks it for every format of every plan."""
    if compute_capability is None or not runs_float32(version, model_type, compute_capability):
        return None
    method = quantization_method(version, weight_format_family(weight_format), stored, compute_capability,
                                 quant_method)
    dtypes = act_dtypes(version, method, compute_capability)
    if dtypes is None or "float32" in dtypes:
        return None
    return (f"vLLM {version} runs a {model_type} model in float32 on this device (_FLOAT16_NOT_SUPPORTED_MODELS, "
            f"no bfloat16 below 8.0) and refuses {weight_format} weights there: \"torch.float32 is not supported for "
            f"quantization method {method}. Supported dtypes: {act_dtypes_text(dtypes)}\" (_get_quantization_config, "
            "get_supported_act_dtypes)")


#: vLLM 0.33 loads every GPTQ checkpoint as AutoGPTQConfig (quantization/__init__.py maps "gptq" to it; Marlin
#: kernels only), whose ``TYPE_MAP`` holds ``(4, True)`` and ``(8, True)``: ``__init__`` raises ``f"Unsupported
#: quantization config: bits={weight_bits}, sym={is_sym}"`` for asymmetric weights (auto_gptq.py; gptq_utils.py's
#: ``override_config`` the same for a dynamic rule).  0.11 and 0.19 load them through GPTQConfig (gptq.py, the
#: ExLlama/GPTQ kernels, which read the qzeros) where gptq_marlin's ``is_gptq_marlin_compatible`` finds no
#: ``(bits, sym)`` in its TYPE_MAP: not refused, but float16 activations only (`bfloat16_refusal`)
ASYMMETRIC_GPTQ_REFUSED: frozenset[str] = frozenset({"0.33"})


def is_asymmetric_gptq(stored: WeightFormat) -> bool:
    """Whether `stored` is 4- or 8-bit GPTQ with a zero point (``sym: false``): gptq_marlin's and 0.33's
    AutoGPTQConfig's TYPE_MAP hold ``(4, True)`` and ``(8, True)`` only."""
    return stored.name in ("int4", "int8") and stored.layout == "gptq" and not stored.symmetric


def gptq_symmetry_refusal(version: str, stored: WeightFormat | None) -> str | None:
    """Why vLLM `version` refuses the asymmetric 4- or 8-bit GPTQ weights `stored` on every device
    (`ASYMMETRIC_GPTQ_REFUSED`, with vLLM's message), or None (no format: a checkpoint's headers or a GGUF mix)."""
    if version not in ASYMMETRIC_GPTQ_REFUSED or stored is None or not is_asymmetric_gptq(stored):
        return None
    return (f"vLLM {version} cannot load {stored.label()} weights on any device: it loads GPTQ as AutoGPTQConfig, "
            "Marlin kernels only, whose TYPE_MAP holds symmetric 4- and 8-bit weights, and raises \"Unsupported "
            f"quantization config: bits={stored.bits}, sym=False\" (auto_gptq.py); vLLM 0.11 and 0.19 load it with "
            "their GPTQ kernels, in float16")


#: vLLM releases that refuse GPTQ act order (``desc_act: true``) with groups: 0.33's AutoGPTQConfig.__init__ calls
#: gptq_utils.py ``normalize_and_validate_gptq_desc_act``, which raises "GPTQ group activation ordering (desc_act=True)
#: is no longer supported" unless the group is -1 (a whole row, where it sets desc_act false)
GPTQ_ACT_ORDER_REFUSED: frozenset[str] = frozenset({"0.33"})


def gptq_act_order_refusal(version: str, stored: WeightFormat | None) -> str | None:
    """Why vLLM `version` refuses the GPTQ weights `stored` quantized with act order on every device
    (`GPTQ_ACT_ORDER_REFUSED`, with vLLM's message), or None."""
    if (version not in GPTQ_ACT_ORDER_REFUSED or stored is None or stored.layout != "gptq" or not stored.act_order
            or stored.group_size is None):  # a whole row: normalize_and_validate_gptq_desc_act turns it off
        return None
    return (f"vLLM {version} cannot load {stored.label()} weights on any device: the checkpoint's config has "
            "desc_act true (act order) with groups, and AutoGPTQConfig raises \"GPTQ group activation ordering "
            "(desc_act=True) is no longer supported. Use a checkpoint with static activation ordering or "
            "desc_act=False.\" (gptq_utils.py normalize_and_validate_gptq_desc_act); vLLM 0.11 and 0.19 load it "
            "with gptq_marlin")


#: Marlin's group sizes in vLLM 0.11 and 0.19 (utils/marlin_utils.py ``MARLIN_SUPPORTED_GROUP_SIZES`` [-1, 32, 64,
#: 128]; -1, a whole row, is None here): GPTQ or AWQ in groups of another size (nibble's 256) is not Marlin-compatible
MARLIN_GROUP_SIZES: frozenset[int | None] = frozenset({None, 32, 64, 128})

def not_marlin_reason(method: str, bits: int, group_size: int | None, symmetric: bool) -> str | None:
    """Why vLLM 0.11/0.19 do not convert a `method` (``gptq`` or ``awq``) config of `bits`, `group_size` (None: a
    whole row) and `symmetric` weights (for AWQ: ``zero_point`` false) to Marlin on a device of 8.0 or above, or None
    when they do.  gptq_marlin.py ``is_gptq_marlin_compatible``: ``(bits, sym)`` in its TYPE_MAP, ``(4, True)`` and
    ``(8, True)`` only; awq_marlin.py ``is_awq_marlin_compatible``: 4 bits with zero points (marlin_utils.py
    ``query_marlin_supported_quant_types``: uint4 is the zero-point type); both a group size of
    `MARLIN_GROUP_SIZES` (``check_marlin_supported``)."""
    if method == "gptq" and (bits, symmetric) not in ((4, True), (8, True)):
        return (f"gptq_marlin's TYPE_MAP holds symmetric types only, not bits={bits}, sym={symmetric}: "
                "is_gptq_marlin_compatible")
    if method == "awq" and (bits != 4 or symmetric):
        return "awq_marlin takes 4-bit weights with zero points only: is_awq_marlin_compatible"
    if group_size not in MARLIN_GROUP_SIZES:
        return (f"Marlin takes groups of 32, 64 or 128 columns or a whole row, not {group_size}: "
                f"MARLIN_SUPPORTED_GROUP_SIZES, is_{method}_marlin_compatible")
    return None


def float16_only_method(stored: WeightFormat) -> tuple[str, str] | None:
    """The method vLLM 0.11/0.19 load `stored` with when it is GPTQ or AWQ that is not Marlin-compatible on a device
    of 8.0 or above (``gptq`` or ``awq``, with `not_marlin_reason`), or None (gptq_marlin / awq_marlin take it, or
    it is neither)."""
    if stored.layout not in ("gptq", "awq") or stored.name not in ("int4", "int8"):
        return None
    why = not_marlin_reason(stored.layout, stored.bits, stored.group_size, stored.symmetric)
    return None if why is None else (stored.layout, why)


def float16_only_config(quantization_config: Mapping[str, object]) -> tuple[str, str] | None:
    """`float16_only_method` of a checkpoint's ``quantization_config`` as vLLM 0.11/0.19 read it
    (``override_quantization_method``: a config missing one of the fields Marlin's check needs is not converted
    either), or None for a config of another method or one Marlin takes."""
    method = str(quantization_config.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        return None
    needed = ("bits", "group_size", "sym", "desc_act") if method == "gptq" else ("bits", "group_size", "zero_point")
    missing = [name for name in needed if quantization_config.get(name) is None]
    if missing:
        return method, f"its config lacks {', '.join(missing)}: is_{method}_marlin_compatible"
    bits, group_size = quantization_config["bits"], quantization_config["group_size"]
    symmetric = quantization_config["sym"] if method == "gptq" else not quantization_config["zero_point"]
    if not isinstance(bits, int) or not isinstance(group_size, int) or not isinstance(symmetric, bool):
        return None
    why = not_marlin_reason(method, bits, None if group_size == -1 else group_size, symmetric)
    return None if why is None else (method, why)


def unknown_gptq_symmetry_note(version: str) -> str:
    """The plan's warning for GPTQ weights read from a checkpoint's headers alone (``checkpoint-gptq``), without the
    config.json ``quantization_config`` that names ``sym``: no header does (AutoGPTQ's safetensors metadata names
    ``gptq_bits``, ``gptq_group_size``, ``gptq_desc_act``, ``gptq_damp_percent``, ``gptq_checkpoint_format`` and
    ``gptq_quant_method``; GPTQModel's only ``format``; both store qzeros whatever ``sym`` is, so the shapes are the
    same), and the plan takes them as symmetric.  Says what vLLM `version` does with asymmetric ones
    (`gptq_symmetry_refusal` on 0.33; on 0.11 and 0.19 `bfloat16_refusal` of the float16-only gptq method)."""
    unknown = ("The checkpoint's headers do not say whether its GPTQ weights are symmetric (sym is in config.json's "
               "quantization_config and quantize_config.json; no safetensors header names it, and qzeros are stored "
               "either way): planned as symmetric. ")
    known = (" Give config.json with its quantization_config beside the headers and the plan reads sym (and "
             "desc_act) from it.")
    act_order = (" Nor do they say whether it was quantized with act order (desc_act: nibble does not read "
                 "AutoGPTQ's gptq_desc_act metadata, GPTQModel writes none, and g_idx is stored either way).")
    if version in ASYMMETRIC_GPTQ_REFUSED:
        return (unknown + f"If they are asymmetric (sym: false), vLLM {version} refuses them on any device: it loads "
                "GPTQ as AutoGPTQConfig, Marlin kernels only, whose TYPE_MAP holds symmetric 4- and 8-bit weights, "
                "and raises \"Unsupported quantization config: bits=4, sym=False\" (auto_gptq.py)." + act_order
                + f" With desc_act true and groups vLLM {version} refuses them too (\"GPTQ group activation ordering "
                "(desc_act=True) is no longer supported\", gptq_utils.py normalize_and_validate_gptq_desc_act)."
                + known)
    return (unknown + f"If they are asymmetric (sym: false), vLLM {version} loads them with its gptq kernels, not "
            "Marlin (gptq_marlin's TYPE_MAP holds symmetric types only: is_gptq_marlin_compatible), whose activations "
            "are float16 only: it refuses a model run in bfloat16 on a device of compute capability 8.0 or above "
            "(\"torch.bfloat16 is not supported for quantization method gptq\", "
            f"{QUANTIZATION_CONFIG_FILE.get(version, 'config/vllm.py')} _get_quantization_config): serve it with "
            "--dtype half (plan it with float_format fp16)." + act_order
            + f" With act order vLLM {version} holds each row-parallel layer's (o_proj, down_proj) scales whole on "
            "every rank and each layer's g_idx with int32 sort indices (gptq_marlin.py, "
            "marlin_repeat_scales_on_all_ranks; about 0.2 GiB a rank for a 70B model at tensor parallel 4): not "
            "charged here, as no kernel layout is charged for a checkpoint read from its headers alone (the layout "
            "terms read the group size, sym and desc_act of the config's format)." + known)


def bfloat16_refusal(version: str, stored: WeightFormat | None, model_dtype: str,
                     compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` refuses the GPTQ or AWQ weights `stored` for a model it runs in bfloat16 (`model_dtype`
    ``bf16``: vLLM's ``--dtype auto`` on a config whose torch_dtype is bfloat16, float32 or absent) on a device of
    `compute_capability` 8.0 or above: the method it falls back to (`float16_only_method`, `quantization_method`)
    lacks bfloat16 among its activation dtypes (`ACT_DTYPES`: gptq.py's and awq.py's float16 only in 0.11 and 0.19),
    with vLLM's message and the remedy, ``--dtype half``.  None otherwise: below 8.0 ``_resolve_auto_dtype``
    (config/model.py) falls back to float16 itself, and a capability not known is not refused (the plan's convention
    for device checks)."""
    if stored is None or model_dtype != "bf16" or compute_capability is None or compute_capability < (8, 0):
        return None
    found = float16_only_method(stored)
    if found is None:
        return None
    family, why = found
    method = quantization_method(version, family, stored, compute_capability)
    dtypes = act_dtypes(version, method, compute_capability)
    if dtypes is None or "bfloat16" in dtypes:
        return None
    return (f"vLLM {version} loads {stored.label()} weights with its {method} kernels, not Marlin ({why}), whose "
            f"activations are float16 only, and refuses a model run in bfloat16: \"torch.bfloat16 is not supported "
            f"for quantization method {method}. Supported dtypes: {act_dtypes_text(dtypes)}\" "
            f"({QUANTIZATION_CONFIG_FILE[version]} _get_quantization_config, {method}.py get_supported_act_dtypes). "
            "Serve it with --dtype half (plan it with float_format fp16), or from a checkpoint whose config.json says "
            "torch_dtype float16")


@lru_cache(maxsize=1024)
def gguf_bfloat16_refusal(version: str, weight_format: str, model_dtype: str,
                          compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` refuses GGUF weights (`weight_format` of the gguf family) for a model it runs in bfloat16
    (`model_dtype` ``bf16``: ``--dtype auto`` on a config whose torch_dtype is bfloat16, float32 or absent, as a
    GGUF file's config usually is) on a device whose GGUF act dtypes lack bfloat16 (`act_dtypes`: 0.19 from 10.0),
    with vLLM's message and the remedy, ``--dtype half``; None otherwise.  Cached: the planner asks it for every
    format of every plan."""
    if model_dtype != "bf16" or weight_format_family(weight_format) != "gguf":
        return None
    dtypes = act_dtypes(version, "gguf", compute_capability)
    if dtypes is None or "bfloat16" in dtypes:
        return None
    return (f"vLLM {version} refuses GGUF weights for a model run in bfloat16 on a device of compute capability 10.0 "
            "or above (\"GGUF has precision issues with bfloat16 on Blackwell\"): \"torch.bfloat16 is not supported "
            f"for quantization method gguf. Supported dtypes: {act_dtypes_text(dtypes)}\" "
            f"({QUANTIZATION_CONFIG_FILE[version]} _get_quantization_config, gguf.py get_supported_act_dtypes). Serve "
            "it with --dtype half (plan it with float_format fp16)")


def float32_note(version: str, model_type: str, compute_capability: tuple[int, int] | None) -> str | None:
    """The plan's basis for a model vLLM `version` runs in float32 on the device (`runs_float32`), or None."""
    if compute_capability is None or not runs_float32(version, model_type, compute_capability):
        return None
    major, minor = compute_capability
    return (f"vLLM {version} runs a {model_type} model in float32 on a device of compute capability {major}.{minor} "
            "(no bfloat16 below 8.0, and float16 refused for it: config/model.py _FLOAT16_NOT_SUPPORTED_MODELS, "
            "_resolve_auto_dtype): charged here at 4 bytes an element: its 16-bit checkpoint tensors load as "
            "float32 (the weights' unquantized tensors), the KV cache of a 16-bit kv_cache_dtype (vLLM's \"auto\" "
            "takes the model's dtype: its pages are twice the bytes), and the profiling run's hidden states and "
            "the model's logits; GPTQ, AWQ and fp8 refuse float32 activations (get_supported_act_dtypes), "
            "compressed-tensors, bitsandbytes and GGUF list it (their kernels' float32 support is not checked); a "
            "vision tower's profiling run is still planned at 2 bytes")


#: The compute-capability majors on which vLLM 0.19 has a sparse MLA attention backend for a DeepSeek Sparse Attention
#: model (``supports_compute_capability`` in v1/attention/backends/mla/: FlashMLASparseBackend 9 and 10,
#: FlashInferMLASparseBackend 10; the dense MLA backends fail ``validate_configuration``'s ``use_sparse !=
#: cls.is_sparse()``), elsewhere platforms/cuda.py ``get_attn_backend_cls`` raises "No valid attention backend found"
DSA_ATTENTION_MAJORS: dict[str, frozenset[int]] = {"0.19": frozenset({9, 10})}


def dsa_attention_refusal(version: str, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` has no attention backend for DeepSeek Sparse Attention model `spec` on a device of
    `compute_capability` (`DSA_ATTENTION_MAJORS`), or None (not such a model, the capability unknown, or a release
    whose rule was not read: 0.11 picks FlashMLASparseBackend on any device without a capability check)."""
    majors = DSA_ATTENTION_MAJORS.get(version)
    if not spec.has_indexer or compute_capability is None or majors is None or compute_capability[0] in majors:
        return None
    major, minor = compute_capability
    return (f"vLLM {version} has no sparse MLA attention backend for a {spec.model_type} model on a device of compute "
            f"capability {major}.{minor}: FlashMLASparseBackend runs on 9.x and 10.x, FlashInferMLASparseBackend on "
            "10.x (supports_compute_capability), and platforms/cuda.py get_attn_backend_cls raises \"No valid "
            "attention backend found\"")


#: where each release sends an MLA model's prefill below 10.x: FlashAttention's varlen kernel (vllm_flash_attn), its
#: other prefill kernels (FlashInfer, cuDNN, TRT-LLM ragged) running on 10.x only
MLA_PREFILL_CODE: dict[str, str] = {
    "0.11": "v1/attention/backends/mla/common.py MLACommonImpl: FlashInfer and cuDNN prefill on 10.0 only",
    "0.19": ("model_executor/layers/attention/mla_attention.py MLACommonImpl: TRT-LLM ragged, FlashInfer and cuDNN "
             "prefill on 10.x only"),
    "0.33": ("platforms/interface.py get_mla_prefill_backend_cls: FLASH_ATTN alone below 10.x, a prefill backend "
             "that takes any capability (v1/attention/backends/mla/prefill/)"),
}
#: the lowest compute capability vLLM's FlashAttention build runs on (its FA2 kernels: "FlashAttention only supports
#: Ampere GPUs or newer", vllm#8189 from vllm/vllm_flash_attn/flash_attn_interface.py)
FLASH_ATTENTION_MIN_CAPABILITY = (8, 0)


def mla_prefill_refusal(version: str, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` cannot run MLA model `spec` on a device of `compute_capability`, or None (not MLA, the
    capability unknown or 8.0 and up, or a release not read): whatever backend decodes it (Triton MLA below 8.0,
    `vllm_attention.kv_backend`), its prefill runs FlashAttention's varlen kernel (`MLA_PREFILL_CODE`), which raises
    below `FLASH_ATTENTION_MIN_CAPABILITY` on the first prompt."""
    where = MLA_PREFILL_CODE.get(version)
    if (not spec.is_mla or compute_capability is None or where is None
            or compute_capability >= FLASH_ATTENTION_MIN_CAPABILITY):
        return None
    major, minor = compute_capability
    return (f"vLLM {version} cannot run an MLA model on a device of compute capability {major}.{minor}: its MLA "
            f"prefill runs FlashAttention's varlen kernel there ({where}), whose vllm_flash_attn build raises "
            "\"FlashAttention only supports Ampere GPUs or newer\" below 8.0 (vllm#8189) on the first prompt")


#: the smallest head PyTorch's FlexAttention kernel takes (torch/nn/attention/flex_attention.py, PyTorch 2.8:
#: "embedding dimension of the query, key, and value must be at least 16"), vLLM's last attention backend on CUDA
FLEX_ATTENTION_MIN_HEAD_DIM = 16
#: releases whose FlashAttention takes any multiple of 8 up to 256 on compute capability 8.0 or more
#: (v1/attention/backends/flash_attn.py supports_head_size, supports_compute_capability); 0.11 lists 32 to 256
FLASH_ATTENTION_MULTIPLE_OF_8 = frozenset({"0.19", "0.33"})


def head_size_refusal(version: str, spec: ModelSpec, compute_capability: tuple[int, int] | None) -> str | None:
    """Why vLLM `version` runs no attention kernel on the heads of `spec` (on a device of `compute_capability`,
    None: not known), or None (MLA models: their own backends).

    On CUDA, platforms/cuda.py tries FlashAttention (v1/attention/backends/flash_attn.py: 0.11's
    get_supported_head_sizes 32, 64, ..., 256; 0.19 and 0.33's supports_head_size, a multiple of 8 up to 256, on
    8.0 or more), FlashInfer (flashinfer.py get_supported_head_sizes: 64, 128, 256, and 512 in 0.33) and Triton
    (triton_attn.py: 32 or more), and then falls back to FlexAttention, which vLLM lets take any head size
    (flex_attention.py: 0.11's validate_head_size returns, 0.19 and 0.33's get_supported_head_sizes is empty).
    vLLM itself refuses none, but PyTorch's FlexAttention kernel raises NotImplementedError on the first request
    for a head below `FLEX_ATTENTION_MIN_HEAD_DIM` elements (a public vLLM 0.10.2 log of a head of 1: "embedding
    dimension of the query, key, and value must be at least 16 but got E=1 and Ev=1"): such a head runs only where
    FlashAttention takes it (8, from 0.19, on 8.0 or more).
    """
    if spec.is_mla:
        return None
    smallest = min(spec.head_dim, spec.v_head_dim or spec.head_dim)
    if smallest >= FLEX_ATTENTION_MIN_HEAD_DIM:
        return None
    flash_attention = (version in FLASH_ATTENTION_MULTIPLE_OF_8 and spec.head_dim % 8 == 0
                       and (spec.v_head_dim or spec.head_dim) % 8 == 0
                       and (compute_capability is None or compute_capability >= (8, 0)))
    if flash_attention:
        return None
    return (f"vLLM {version} runs no attention kernel on heads of {smallest} elements: FlashInfer and Triton take 32 "
            "or more and FlashAttention "
            + ("a multiple of 8 on compute capability 8.0 or more" if version in FLASH_ATTENTION_MULTIPLE_OF_8
               else "32 or more")
            + " (v1/attention/backends/flash_attn.py, flashinfer.py, triton_attn.py), so platforms/cuda.py falls back "
            "to FlexAttention, whose PyTorch kernel raises \"embedding dimension of the query, key, and value must be "
            f"at least {FLEX_ATTENTION_MIN_HEAD_DIM}\" on the first request")


_GGML_LABELS = frozenset(name.lower() for name in GGML_TYPE_NAMES)


def weight_format_family(weight_format: str) -> str:
    """The `CAPABILITY_FLOORS` family of `weight_format` (a scheme's label, a checkpoint's ``checkpoint-<format>``),
    or "" for float weights and a per-tensor mix: formats no vLLM floor applies to.  A single ggml type's label
    (``q4_k``) is GGUF; ggml's ``MXFP4`` labels as ``mxfp4`` and is taken for the safetensors MXFP4 it reads as."""
    label = weight_format.removeprefix("checkpoint-")
    if label == "mxfp4":
        return "mxfp4"
    if label.startswith("fp8"):
        return "fp8"
    if label.startswith("nvfp4"):
        return "nvfp4"
    if label.startswith("nf4"):
        return "nf4"
    if label.startswith("gguf") or label in _GGML_LABELS - {"f32", "f16", "bf16"}:
        return "gguf"
    for layout in ("compressed-tensors", "gptq", "awq"):
        if label == layout or label.endswith(f"-{layout}") or label.endswith(f"-{layout}-partial"):
            return layout
    if label.startswith("int4-"):
        return "int4"
    if label == "int8":
        return "int8"
    return ""


def capability_text(capability: int) -> str:
    return f"{capability // 10}.{capability % 10}"


@lru_cache(maxsize=1024)
def capability_refusal(version: str, weight_format: str, compute_capability: tuple[int, int] | None,
                       quant_method: str = "") -> str | None:
    """Why vLLM `version` refuses weights stored as `weight_format` (read from a quantization_config of
    `quant_method`, "" when not) on a device of `compute_capability` (None: not known, when only a release without
    the format at all is refused), by `CAPABILITY_FLOORS` (`MODELOPT_CAPABILITY_FLOORS` for ModelOpt's); None when it
    runs them.  Cached: the planner asks it for every format of every plan."""
    rule = _capability_rule(version, weight_format, quant_method)
    if rule is None:
        return None
    floor, where = rule
    if floor is None:
        return f"vLLM {version} cannot load {weight_format} weights on any device: {where}"
    if compute_capability is None:
        return None
    major, minor = compute_capability
    if major * 10 + minor >= floor:
        return None
    stored = f"ModelOpt {weight_format}" if quant_method == "modelopt" else weight_format
    return (f"vLLM {version} refuses {stored} weights on a device of compute capability {major}.{minor} "
            f"(its minimum is {capability_text(floor)}): {where}")


#: nibble's integer KV caches: per token, KV head and K/V an fp16 scale and zero beside the codes (formats.KV_DTYPES,
#: LMDeploy's asymmetric layout)
INTEGER_KV_DTYPES = frozenset({"int8", "int4"})
#: why each vLLM release cannot run them: 0.11's and 0.19's ``--kv-cache-dtype`` has no integer cache (config/cache.py
#: ``CacheDType``, which the engine arguments validate), and 0.33's ``int8_per_token_head`` / ``int4_per_token_head``
#: (Triton attention only, triton_attn.py ``supported_kv_cache_dtypes``) keep one fp32 scale per vector, and for int4
#: a Hadamard rotation (v1/kv_cache_interface.py ``KVQuantMode.INT4_PER_TOKEN_HEAD``): nibble plans those under their
#: own names (`formats.VLLM_PER_TOKEN_HEAD_KV_DTYPES`, `vllm_attention.per_token_head_backend`)
INTEGER_KV_REFUSALS: dict[str, str] = {
    "0.11": ("its --kv-cache-dtype takes auto, bfloat16, fp8, fp8_e4m3, fp8_e5m2 and fp8_inc only (config/cache.py "
             "CacheDType), no integer cache"),
    "0.19": ("its --kv-cache-dtype takes auto, float16, bfloat16 and the fp8 caches only (config/cache.py CacheDType), "
             "no integer cache"),
    "0.33": ("its integer caches, int8_per_token_head and int4_per_token_head (config/cache.py CacheDType, Triton "
             "attention only), keep an fp32 scale per token and head (int4 with a Hadamard rotation and a zero point "
             "in the scale's low bits, v1/kv_cache_interface.py KVQuantMode), not nibble's fp16 scale and zero per "
             "vector: kv_cache.dtype int8_per_token_head / int4_per_token_head plans them"),
}


#: `VllmProfile.kv_cache_backend`'s answers by (spec object; release, KV dtype, capability, block): a plan asks up to
#: four times (its block, the device refusal, two warnings)
KV_CACHE_BACKENDS: IdentityMemo[KVCacheBackend] = IdentityMemo(1024)


def kv_cache_refusal(version: str, spec: ModelSpec, kv_cache_dtype: str, compute_capability: tuple[int, int] | None,
                     block_size: int) -> KVCacheBackend:
    """Whether vLLM `version` runs `spec`'s KV cache of nibble's `kv_cache_dtype` (``fp8``: vLLM's fp8_e4m3,
    `vllm_attention.VLLM_FP8_CACHE_DTYPES`; bf16 and fp16: vLLM's ``auto``, `vllm_attention.VLLM_16BIT_CACHE_DTYPES`)
    on a device of `compute_capability` at a requested `block_size`: the refusal where no attention backend it picks
    runs it (`vllm_attention.kv_backend`, with the model in float32 where `runs_float32`), the block of the backend
    that does when vLLM sets another (an MLA model's cache, 16-bit or fp8: FlashMLA's 64 tokens on Hopper under 0.11),
    or for an unknown device where an fp8 cache runs and in which blocks an MLA cache is paged
    (`vllm_attention.kv_requirement`).  nibble's int8 and int4 caches (`INTEGER_KV_REFUSALS`) are refused on every
    device; vLLM 0.33's own int8/int4/fp8_per_token_head run where `vllm_attention.per_token_head_backend` says, the
    integer ones the same on every device (so decided for an unknown one too), the fp8 one from 8.9 (for an unknown
    device a requirement, `vllm_attention.kv_requirement`)."""
    integer = INTEGER_KV_REFUSALS.get(version) if kv_cache_dtype in INTEGER_KV_DTYPES else None
    if integer is not None:
        return KVCacheBackend(refusal=f"vLLM {version} cannot run nibble's {kv_cache_dtype} KV cache: {integer}; "
                                      "a 16-bit or fp8 cache (kv_cache.dtype bf16 / fp8) runs on vLLM, and "
                                      "runtime.engine generic plans the int8/int4 layout without an engine")
    if kv_cache_dtype in VLLM_PER_TOKEN_HEAD_CACHE_DTYPES:
        per_token = per_token_head_backend(version, spec, kv_cache_dtype, block_size, compute_capability)
        if per_token.backend is None:
            remedy = f"; {per_token.remedy}" if per_token.remedy is not None else ""
            return KVCacheBackend(refusal=f"vLLM {version} cannot run the {kv_cache_dtype} KV cache of {spec.name}: "
                                          f"{per_token.basis}{remedy}")
        return KVCacheBackend(basis=per_token.basis, requirement=(
            kv_requirement(version, spec, kv_cache_dtype) if compute_capability is None else None))
    latent = mla_latent_refusal(version, spec)
    if latent is not None:
        return KVCacheBackend(refusal=f"{latent}; vLLM 0.19 and 0.33 run it on TRITON_MLA (runtime.engine_version)")
    cache_dtype = VLLM_FP8_CACHE_DTYPES.get(kv_cache_dtype) or VLLM_16BIT_CACHE_DTYPES.get(kv_cache_dtype)
    if cache_dtype is None:
        return KVCacheBackend()
    if compute_capability is None:
        return KVCacheBackend(requirement=kv_requirement(version, spec, cache_dtype))
    found = kv_backend(version, spec, cache_dtype, compute_capability, block_size,
                       runs_float32(version, spec.model_type, compute_capability))
    if found is None:
        return KVCacheBackend()
    major, minor = compute_capability
    if found.backend is None:
        if found.remedy is not None:
            remedy = found.remedy
        elif cache_dtype == "auto" and spec.is_mla:
            remedy = "a --block-size that is a multiple of 16 (kv_cache.block_size) runs there"
        elif cache_dtype == "auto":
            remedy = ("an fp8 cache (kv_cache.dtype fp8) runs there on FLASHINFER or TRITON_ATTN, and vLLM 0.19 "
                      "(runtime.engine_version) runs a 16-bit one on TRITON_ATTN")
        else:
            remedy = f"a 16-bit cache (kv_cache.dtype {'bf16' if compute_capability >= (8, 0) else 'fp16'}) runs there"
        return KVCacheBackend(refusal=f"vLLM {version} cannot run the {kv_cache_dtype} KV cache ({cache_dtype}) of "
                                      f"{spec.name} on a device of compute capability {major}.{minor}: {found.basis}; "
                                      f"{remedy}")
    if found.block_size is None or found.block_size == block_size:
        return KVCacheBackend(basis=found.basis)
    return KVCacheBackend(block_size=found.block_size, basis=found.basis)


@lru_cache(maxsize=1024)
def capability_requirement(version: str, weight_format: str, quant_method: str = "") -> str | None:
    """The compute capability vLLM `version` needs for `weight_format` (of a quantization_config of `quant_method`)
    in words, or None when it needs none that a CUDA device vLLM runs on lacks (floats, a mix) or runs it nowhere
    (`capability_refusal` says so)."""
    rule = _capability_rule(version, weight_format, quant_method)
    if rule is None:
        return None
    floor, where = rule
    if floor is None:
        return None
    stored = f"ModelOpt {weight_format}" if quant_method == "modelopt" else weight_format
    return f"vLLM {version} runs {stored} weights from compute capability {capability_text(floor)} ({where})"
