"""What a checkpoint job does to each tensor: its options, and for each tensor quantize or pass through (and why).

The default selection is the policy GPTQ / AWQ / compressed-tensors
checkpoints ship with (docs/DESIGN.md, "Formats"): the 2-D float ``*.weight``
tensors of the linear layers are quantized; embeddings, the LM head, norms,
biases and MoE routers stay as they are.  `include` narrows the selection to
names matching any of its globs, `exclude` removes names matching any of
its own (the defaults are `DEFAULT_EXCLUDE`).  A tensor the output format
cannot hold (a width that is not a multiple of the group size, or of the 8
codes an int32 packs) is passed through with that reason rather than failing
the whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from quant_core.checkpoint.gguf_model import check_gguf_tensors, gguf_model
from quant_core.checkpoint.source import Checkpoint, CheckpointTensor
from quant_core.errors import InvalidSpec, UnknownName
from quant_core.formats import WeightFormat
from quant_core.globs import Glob, compile_glob
from quant_core.quantize import METHODS
from quant_core.tensorio._export_common import UNQUANTIZED_NAME_GLOBS

CheckpointOutput = Literal["compressed-tensors", "gptq", "awq", "gguf"]
OUTPUTS: tuple[CheckpointOutput, ...] = ("compressed-tensors", "gptq", "awq", "gguf")
#: names no INT4 checkpoint quantizes: token embeddings, LM head, norms, MoE routers, learned positions
DEFAULT_EXCLUDE: tuple[str, ...] = UNQUANTIZED_NAME_GLOBS
#: transformers' default ``max_shard_size="5GB"``, which it reads as 5 × 10^9 bytes (``convert_file_size_to_int``)
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
_FLOAT_DTYPES = ("F32", "F16", "BF16")
#: GGUF has no tensor type for these safetensors dtypes (gguf-py ``GGMLQuantizationType``)
_GGUF_PASSTHROUGH_DTYPES = ("F32", "F16", "BF16", "I8", "I16", "I32", "I64")
_NEEDS_CALIBRATION = ("gptq", "gptq-act-order")
#: outputs that cannot carry per-tensor formats, and why (a budget is refused for them)
BUDGET_REFUSED: dict[str, str] = {
    "gptq": ("a budget mixes formats per tensor, and AutoGPTQ's quantize_config (the reference nibble's GPTQ "
             "output is checked against) has one bits/group_size for every module; vLLM's per-module `dynamic` "
             "override is read by vLLM and GPTQModel only. Use output compressed-tensors (one config group per "
             "format) or gguf (a ggml type per tensor)"),
    "awq": ("a budget mixes formats per tensor, and AWQ's quantization_config has one w_bit/q_group_size for "
            "every module. Use output compressed-tensors (one config group per format) or gguf (a ggml type "
            "per tensor)"),
}


@dataclass(frozen=True, slots=True)
class CheckpointOptions:
    """A checkpoint job's parameters (the same names as ``POST /v1/quantize``'s fields)."""

    method: str = "rtn"
    output: CheckpointOutput = "compressed-tensors"
    group_size: int | None = 128
    symmetric: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    #: threads per tensor (`quantize`'s `threads`); the result does not depend on it
    threads: int | None = 1
    #: a budget for the quantized tensors' stored bytes (or bits per weight over them): per-tensor formats
    #: chosen by measured error (quant_core/checkpoint/budget.py); one of the two at most
    budget_bytes: int | None = None
    bits_per_weight: float | None = None

    @property
    def has_budget(self) -> bool:
        return self.budget_bytes is not None or self.bits_per_weight is not None

    @property
    def scheme(self) -> WeightFormat:
        """The int4 format every quantized tensor gets (engine formats store 4-bit integer zeros)."""
        return WeightFormat("int4", self.group_size, self.symmetric, "none" if self.symmetric else "int4")

    @property
    def min_zero(self) -> int:
        """GPTQ checkpoint v1 stores zero − 1, so its zeros are kept in [1, 15] (quant_core/tensorio/gptq.py)."""
        return 1 if self.output == "gptq" and not self.symmetric else 0


def check_options(options: CheckpointOptions) -> None:
    """Refuse options no checkpoint could be written with (`UnknownName`, `InvalidSpec`), before any work."""
    if options.output not in OUTPUTS:
        raise UnknownName("checkpoint output", options.output, list(OUTPUTS), field="output")
    if options.method not in METHODS:
        raise UnknownName("quantization method", options.method, sorted(METHODS), field="method")
    if options.method in _NEEDS_CALIBRATION:
        raise InvalidSpec("method", options.method, "needs calibration activations, which checkpoint jobs do not take")
    if options.method == "hqq" and options.symmetric:
        raise InvalidSpec("method", options.method, "hqq optimises a zero point; use an asymmetric scheme")
    if options.group_size is not None and (options.group_size < 8 or options.group_size % 8):
        raise InvalidSpec("group_size", options.group_size, "must be a multiple of 8 (32, 64, 128, 256), or null")
    if options.output == "awq" and options.group_size is None:
        raise InvalidSpec("group_size", None, "AWQ GEMM needs a group size")
    if options.output == "gguf" and (options.group_size != 32 or not options.symmetric):
        field = "group_size" if options.group_size != 32 else "symmetric"
        raise InvalidSpec(field, options.group_size if field == "group_size" else options.symmetric,
                          "GGUF Q4_0 holds int4 group-32 symmetric tensors")
    if options.max_shard_bytes < 1:
        raise InvalidSpec("max_shard_bytes", options.max_shard_bytes, "must be at least 1")
    if options.threads is not None and options.threads < 1:
        raise InvalidSpec("threads", options.threads, "must be at least 1")
    _check_budget(options)


def _check_budget(options: CheckpointOptions) -> None:
    """Refuse a budget the output cannot carry, or that is not one positive number."""
    if options.budget_bytes is not None and options.bits_per_weight is not None:
        raise InvalidSpec("budget_bytes", options.budget_bytes, "give bits_per_weight or budget_bytes, not both")
    if options.budget_bytes is not None and options.budget_bytes < 1:
        raise InvalidSpec("budget_bytes", options.budget_bytes, "must be at least 1")
    if options.bits_per_weight is not None and not 0 < options.bits_per_weight <= 16:
        raise InvalidSpec("bits_per_weight", options.bits_per_weight, "must be above 0 and at most 16")
    if options.has_budget and options.output in BUDGET_REFUSED:
        raise InvalidSpec("output", options.output, BUDGET_REFUSED[options.output])


@dataclass(frozen=True, slots=True)
class TensorPlan:
    """One tensor's fate: its position in the job (`index`), and None or the reason it passes through."""

    index: int
    tensor: CheckpointTensor
    reason: str | None
    #: under a budget, the format chosen for this tensor (quant_core/checkpoint/budget.py); else the options' scheme
    format: WeightFormat | None = None
    #: the tensor's importance statistics (one per input column), when the job has them
    importance: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)

    @property
    def quantized(self) -> bool:
        return self.reason is None

    def stored_format(self, options: CheckpointOptions) -> WeightFormat:
        """The format this tensor is written in: the chosen one under a budget, else the options' scheme."""
        return self.format if self.format is not None else options.scheme


def _with_family_reason(reason: str | None, tensor: CheckpointTensor, checkpoint: Checkpoint) -> str | None:
    """`reason`, or the family's own when the generic rules would quantize the tensor or call it only 3-D."""
    if reason is None or reason.startswith("3-D tensor"):
        return _family_reason(tensor, checkpoint) or reason
    return reason


def _group_size_reason(in_features: int, group_size: int) -> str:
    return f"in_features {in_features} is not a multiple of group_size {group_size}"


def _reason(tensor: CheckpointTensor, options: CheckpointOptions, include: Sequence[Glob],
            exclude: Sequence[Glob]) -> str | None:
    """Why `tensor` passes through, or None; `include` and `exclude` are the options' globs, compiled
    (quant_core/globs.py: linear time, where fnmatch is quadratic in a pattern's unclosed ``[``)."""
    name = tensor.name
    if include and not any(glob.matches(name) for glob in include):
        return f"name matches none of the include patterns {list(options.include)}"
    excluded = [glob.pattern for glob in exclude if glob.matches(name)]
    if excluded:
        return f"name matches the exclude pattern {excluded[0]!r}"
    if len(tensor.shape) != 2:
        return f"{len(tensor.shape)}-D tensor (shape {list(tensor.shape)}); only 2-D linear weights are quantized"
    if not name.endswith(".weight"):
        return "not a .weight tensor"
    if tensor.dtype not in _FLOAT_DTYPES:
        return f"dtype {tensor.dtype} is not F32, F16 or BF16"
    out_features, in_features = tensor.shape
    if 0 in tensor.shape:
        return "an empty tensor"
    group = options.group_size
    if group is not None and in_features % group:
        return _group_size_reason(in_features, group)
    if options.output in ("gptq", "awq") and out_features % 8:
        return f"out_features {out_features} is not a multiple of 8 ({options.output} packs 8 codes per int32)"
    if options.output == "gptq" and in_features % 8:
        return f"in_features {in_features} is not a multiple of 8 (GPTQ packs 8 codes per int32)"
    return None


#: the modules of a multimodal Llama 4 checkpoint that vLLM builds with no quantization config (mllama4.py:
#: ``Llama4VisionModel(config.vision_config, None, ...)``, ``Llama4MultiModalProjector(self.config, None, ...)``):
#: stored quantized, they would not load
_LLAMA4_UNQUANTIZED_PREFIXES = ("vision_model.", "multi_modal_projector.")
#: a Mistral 3 checkpoint's Pixtral tower and projector (vLLM's mistral3.py builds them with the checkpoint's
#: quantization config, so a quantized copy must say so: compressed-tensors config groups do not target them, AWQ's
#: modules_to_not_convert and GPTQ's dynamic rules name them, as llm-compressor's Mistral 3 checkpoints ignore them)
_MISTRAL3_UNQUANTIZED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                                  "model.multi_modal_projector.")
#: Qwen2.5-VL's vision tower and merger, as published checkpoints name them (``visual.``) and as transformers >= 4.52
#: saves them (``model.visual.``): vLLM's qwen2_5_vl.py maps both to ``visual.``
QWEN_VL_UNQUANTIZED_PREFIXES = ("visual.", "model.visual.")
#: Qwen3-Next's multi-token-prediction layer as its checkpoints name it: vLLM's Qwen3NextForCausalLM skips it
#: (``skip_prefixes=["mtp."]``) and nibble does not plan it
QWEN3_NEXT_MTP_PREFIX = "mtp."
#: routed experts fused into one [experts, in, out] tensor per projection (Llama 4; gpt-oss in bf16)
FUSED_EXPERT_SUFFIXES = ("experts.gate_up_proj", "experts.down_proj")


def fused_expert_module(name: str, ndim: int) -> str | None:
    """The fused-MoE module (``...feed_forward.experts``) a fused 3-D expert tensor belongs to, else None."""
    if ndim == 3 and name.endswith(FUSED_EXPERT_SUFFIXES):
        return name.rsplit(".", 1)[0]
    return None


def _family_reason(tensor: CheckpointTensor, checkpoint: Checkpoint) -> str | None:
    """Why a tensor the name and shape rules would quantize (or refuse as 3-D) passes through for its family."""
    config = checkpoint.config or {}
    if config.get("model_type") == "llama4" and tensor.name.startswith(_LLAMA4_UNQUANTIZED_PREFIXES):
        return ("Llama 4's vision tower and projector: vLLM's mllama4.py builds them without a quantization "
                "config, so they stay as stored")
    if config.get("model_type") == "mistral3" and tensor.name.startswith(_MISTRAL3_UNQUANTIZED_PREFIXES):
        return ("Mistral 3's Pixtral vision tower and projector stay as stored, as the published quantized "
                "checkpoints keep them (llm-compressor ignores vision_tower and multi_modal_projector); vLLM's "
                "mistral3.py builds them with the checkpoint's quantization_config, which marks them unquantized")
    if config.get("model_type") == "qwen2_5_vl" and tensor.name.startswith(QWEN_VL_UNQUANTIZED_PREFIXES):
        return ("Qwen2.5-VL's vision tower and merger: published quantized checkpoints keep them as stored (Qwen's "
                "AWQ releases: modules_to_not_convert [\"visual\"]), and nibble plans them at 16 bits")
    if (config.get("model_type") in ("qwen3_vl", "qwen3_vl_moe")
            and tensor.name.startswith(QWEN_VL_UNQUANTIZED_PREFIXES)):
        return ("Qwen3-VL's vision tower and mergers: kept as stored, as nibble plans them at 16 bits (vLLM's "
                "qwen3_vl.py reads them with the checkpoint's quant_config, whose ignore list names them)")
    if config.get("model_type") in ("qwen3_next", "qwen3_5") and tensor.name.startswith(QWEN3_NEXT_MTP_PREFIX):
        return ("Qwen3-Next's and Qwen3.5's multi-token-prediction layer (mtp.*): vLLM's model classes skip it at "
                "load and nibble does not plan it, so it stays as stored (the quantization_config marks it "
                "unquantized for the MTP drafter, qwen3_next_mtp.py / qwen3_5_mtp.py)")
    if config.get("model_type") == "qwen3_5" and tensor.name.startswith(QWEN_VL_UNQUANTIZED_PREFIXES):
        return ("Qwen3.5's vision tower and merger: kept as stored, as nibble plans them at 16 bits (vLLM's "
                "qwen3_5.py reads them with the checkpoint's quant_config, whose ignore list names them)")
    if config.get("model_type") == "qwen3_5_moe":  # Qwen3.5-MoE: the same MTP layer and tower as Qwen3.5
        if tensor.name.startswith(QWEN3_NEXT_MTP_PREFIX):
            return ("Qwen3.5-MoE's multi-token-prediction layer (mtp.*): vLLM's qwen3_5.py skips it at load and "
                    "nibble does not plan it, so it stays as stored (qwen3_5_mtp.py reads it for the MTP drafter)")
        if tensor.name.startswith(QWEN_VL_UNQUANTIZED_PREFIXES):
            return ("Qwen3.5-MoE's vision tower and merger: kept as stored, as nibble plans them at 16 bits (vLLM's "
                    "qwen3_5.py reads them with the checkpoint's quant_config, whose ignore list names them)")
    if fused_expert_module(tensor.name, len(tensor.shape)) is not None:
        return (f"routed experts fused as one [experts, in, out] tensor (shape {list(tensor.shape)}): nibble "
                "quantizes 2-D linear weights only, so they stay as stored, and the quantization_config marks "
                "their fused-MoE module unquantized (compressed-tensors ignore, AWQ modules_to_not_convert, GPTQ "
                "dynamic) for vLLM to load them as they are")
    return None


def plan_checkpoint(checkpoint: Checkpoint, options: CheckpointOptions) -> tuple[TensorPlan, ...]:
    """Every tensor of `checkpoint` in order with its fate under `options` (checked first: `check_options`).

    Raises `InvalidSpec` when nothing would be quantized, or (GGUF) when a
    passthrough tensor has a dtype GGUF cannot store or the checkpoint is not
    one llama.cpp would load (`gguf_model`, `check_gguf_tensors`).
    """
    check_options(options)
    include = [compile_glob(pattern) for pattern in options.include]
    exclude = [compile_glob(pattern) for pattern in options.exclude]
    plans = tuple(TensorPlan(index, tensor, _with_family_reason(_reason(tensor, options, include, exclude),
                                                                tensor, checkpoint))
                  for index, tensor in enumerate(checkpoint.tensors))
    if not any(plan.quantized for plan in plans):
        reasons = sorted({plan.reason or "" for plan in plans})
        group = options.group_size
        if group is not None and any(len(plan.tensor.shape) == 2
                                     and plan.reason == _group_size_reason(plan.tensor.shape[1], group)
                                     for plan in plans):
            # the weights the selection picks are there: the group size is what no one of them can take
            raise InvalidSpec("group_size", group, f"divides the width of no tensor selected to quantize among "
                              f"{len(plans)}; reasons: {reasons[:3]}")
        raise InvalidSpec("include", list(options.include),
                          f"selects no tensor to quantize among {len(plans)}; reasons: {reasons[:3]}")
    if options.output == "gguf":
        model = gguf_model(checkpoint)
        check_gguf_tensors(model, [(plan.tensor.name, plan.tensor.shape, plan.quantized) for plan in plans])
        for plan in plans:
            if not plan.quantized and plan.tensor.dtype not in _GGUF_PASSTHROUGH_DTYPES:
                raise InvalidSpec("output", "gguf", f"GGUF has no tensor type for {plan.tensor.dtype} "
                                  f"(tensor {plan.tensor.name!r}, passed through)")
    return plans
