"""A quantized checkpoint written tensor by tensor: one part file per quantized tensor, then the result assembled.

`quantize_tensor_part` reads one tensor by byte range, quantizes it and
writes its exported tensors (``weight_packed``/``weight_scale``... for
compressed-tensors, ``qweight``/``qzeros``/``scales``/``g_idx`` for GPTQ,
``qweight``/``qzeros``/``scales`` for AWQ, the Q4_0 blocks for GGUF) to a
part file, atomically (written beside, synced, renamed), and returns its
report entry.  Each part depends only on its tensor and the options, so parts
can be made in any order, on any machine, and a part made twice is the same
bytes.  Once every part exists, `output_shards` lays the result out (the
source's tensor order, each quantized tensor's parts in its place, shards
filled in order up to ``max_shard_bytes`` of data), `write_output_shard`
writes one shard by copying byte ranges (memory: one copy buffer), and
`write_checkpoint_files` adds ``model.safetensors.index.json``,
``config.json`` with its ``quantization_config`` (and ``quantize_config.json``
for GPTQ), the copied-through files and ``nibble_report.json``.  GGUF is one
file, `write_gguf_output`.  Nothing written depends on time, order of work or
thread count: the same input gives byte-identical output.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.checkpoint.fused_groups import (
    PASSED_THROUGH,
    QUANTIZED,
    SIXTEEN_BIT,
    split_fused_groups,
    split_group_notes,
)
from quant_core.checkpoint.gguf_model import gguf_model
from quant_core.checkpoint.plan import (
    CheckpointOptions,
    TensorPlan,
    fused_expert_module,
)
from quant_core.checkpoint.source import (
    CONFIG_NAME,
    INDEX_NAME,
    Checkpoint,
    CheckpointError,
    CheckpointTensor,
    read_tensor,
)
from quant_core.engines.vllm_refusals import float16_only_config
from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.formats import FLOAT_FORMATS, WeightFormat
from quant_core.hf_config import architecture_family, config_float_format
from quant_core.quantize import quality_report, quantize
from quant_core.quantize.api import normalised_importance
from quant_core.quantize.metrics import weighted_relative_error
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import module_prefix
from quant_core.tensorio.awq import awq_scheme_config, awq_tensors
from quant_core.tensorio.compressed_tensors import compressed_tensors_scheme_config, compressed_tensors_tensors
from quant_core.tensorio.gguf_export import q4_0_blocks
from quant_core.tensorio.gptq import (
    VLLM_FUSED_SHARDS,
    gptq_scheme_config,
    gptq_tensors,
    module_of,
    needs_skip_rule,
    skipped_modules_config,
    with_vllm_shards,
)
from quant_core.tensorio.nibble_file import _json_figure, describe_quantized
from quant_core.tensorio.safetensors_io import (
    encode_safetensors_header,
    read_safetensors_header,
    write_safetensors_to,
)

REPORT_NAME = "nibble_report.json"
GGUF_NAME = "model.gguf"
GPTQ_CONFIG_NAME = "quantize_config.json"
COPY_BYTES = 8 << 20
_GGUF_TYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "I32": np.dtype(np.int32), "I64": np.dtype(np.int64)}
_BF16 = np.dtype(ml_dtypes.bfloat16)
_FLOAT_DTYPES = ("F32", "F16", "BF16")
#: the ggml type of each format a GGUF result stores a quantized tensor in (by format label)
_GGML_TYPES = {"int4-g32-sym": gguf.GGMLQuantizationType.Q4_0, "q8_0": gguf.GGMLQuantizationType.Q8_0,
               "fp16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}


def _write_atomically(path: Path, write: Callable[[Path], object], *, sync: bool = True) -> None:
    """Call ``write(temporary)`` beside `path`, sync the file (unless `sync` is false), and rename it to `path`:
    a reader (or a process killed at any moment) sees the whole file or none."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    if sync:
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    os.replace(temporary, path)


def _write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda temporary: temporary.write_bytes(data))


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def exported_parts(name: str, q: QuantizedTensor, options: CheckpointOptions) -> dict[str, NDArray[Any]]:
    """The tensors `options.output` stores for quantized tensor `name` (GGUF: the Q4_0 blocks under `name`)."""
    if options.output == "compressed-tensors":
        return compressed_tensors_tensors(name, q)
    if options.output == "gptq":
        return gptq_tensors(name, q)
    if options.output == "awq":
        return awq_tensors(name, q)
    return {name: q4_0_blocks(name, q)}


def sixteen_bit(weights: NDArray[Any]) -> NDArray[Any]:
    """A tensor's 16-bit copy: its own dtype when bfloat16 or float16 already, else float16."""
    if weights.dtype in (np.dtype(np.float16), _BF16):
        return weights
    return np.asarray(weights, dtype=np.float32).astype(np.float16)


def _decoded_quality(name: str, weights: NDArray[Any], decoded: NDArray[np.float32],
                     importance: NDArray[np.float32] | None) -> dict[str, Any]:
    """The quality figures of a tensor stored without a method (Q8_0 blocks, 16-bit), as `quantize` gives them."""
    original = np.asarray(weights, dtype=np.float32)
    report = quality_report(original, decoded)
    if importance is not None:
        columns = normalised_importance(importance, original.shape[1], name)
        relative = weighted_relative_error(original, decoded, columns if columns is not None
                                           else np.ones(original.shape[1], np.float32))
        report = replace(report, weighted_relative_error=relative,
                         weighted_sqnr_db=-20.0 * math.log10(relative) if relative > 0 else math.inf)
    return {key: _json_figure(value) if isinstance(value, float) else value for key, value in asdict(report).items()}


def encode_tensor(name: str, weights: NDArray[Any], stored: WeightFormat, options: CheckpointOptions,
                  importance: NDArray[np.float32] | None = None) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """`weights` stored in format `stored`: the output's tensors for it and its report entry (without name/dtype).

    int4 formats are quantized by the job's method (importance-weighted when
    `importance` is given and the method uses it) and exported as
    `options.output` stores them; ``q8_0`` (GGUF) is gguf-py's
    ``quants.quantize``; 16-bit keeps the name (`sixteen_bit`).
    """
    method, used = "none", False
    if stored.name == "int4":
        q = quantize(weights, stored, options.method, name=name, threads=options.threads,
                     min_zero=options.min_zero, importance=importance)
        parts = exported_parts(name, q, options)
        quality, method, used = describe_quantized(q)["quality"], options.method, q.quality.importance_used
    elif stored.ggml_type == "Q8_0":
        blocks = gguf.quants.quantize(np.asarray(weights, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
        decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0).reshape(weights.shape)
        parts, quality = {name: blocks}, _decoded_quality(name, weights, decoded, importance)
    else:
        copy = sixteen_bit(weights)
        with np.errstate(over="ignore"):
            decoded = np.asarray(copy, dtype=np.float32)
        parts, quality = {name: copy}, _decoded_quality(name, weights, decoded, importance)
    output_bytes = sum(int(array.nbytes) for array in parts.values())
    return parts, {
        "method": method, "format": stored.label(), "bytes": {"input": int(weights.nbytes), "output": output_bytes},
        "bits_per_weight": 8 * output_bytes / math.prod(weights.shape), "quality": quality,
        "importance_used": used,
    }


def _quantized_parts(directory: Path, plan: TensorPlan, options: CheckpointOptions
                     ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """One planned tensor read, encoded in its format and exported: its part's tensors and its report entry."""
    tensor = plan.tensor
    weights = read_tensor(directory, tensor)
    parts, figures = encode_tensor(tensor.name, weights, plan.stored_format(options), options, plan.importance)
    del weights
    return parts, {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype, **figures}


def quantize_tensor_bytes(directory: Path, plan: TensorPlan, options: CheckpointOptions
                          ) -> tuple[bytes, dict[str, Any]]:
    """Quantize one planned tensor of the checkpoint in `directory`: its part file's bytes and its report entry.

    The entry has the name, shape, dtype, method, format, bytes in and out,
    bits per weight and quality figures.  Both are the same for the same
    input, whatever machine or thread count computed them, so a part may be
    made anywhere (a Ray task returns these bytes) and written where the job's
    parts are (`write_part`).
    """
    parts, entry = _quantized_parts(directory, plan, options)
    buffer = io.BytesIO()
    write_safetensors_to(buffer, parts)
    return buffer.getvalue(), entry


def write_part(part_path: Path, data: bytes) -> None:
    """Write a part file atomically (beside, then renamed): it exists whole or not at all.

    Not synced: a killed process leaves the page cache to the kernel, and after
    a power loss `valid_parts` finds any part that did not reach the disk whole.
    """
    _write_atomically(part_path, lambda temporary: temporary.write_bytes(data), sync=False)


def quantize_tensor_part(directory: Path, plan: TensorPlan, options: CheckpointOptions, part_path: Path
                         ) -> dict[str, Any]:
    """`quantize_tensor_bytes`, its part written straight to `part_path` (atomically); returns the report entry."""
    parts, entry = _quantized_parts(directory, plan, options)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            write_safetensors_to(handle, parts)

    _write_atomically(part_path, write, sync=False)  # as `write_part`
    return entry


def valid_parts(part_dir: Path, plans: Sequence[TensorPlan], indexes: Sequence[int]) -> list[int]:
    """Which of the parts `indexes` (plan indexes) exist whole: a readable header whose tensors tile the file.

    A resumed job redoes the others (a part a power loss left short or empty).
    """
    valid = []
    for index in indexes:
        try:
            read_safetensors_header(part_path(part_dir, plans[index]))
        except (OSError, TensorFileError, LimitExceeded):
            continue
        valid.append(index)
    return valid


def passthrough_entry(plan: TensorPlan) -> dict[str, Any]:
    """The report entry of a tensor passed through unchanged: name, shape, dtype and why."""
    tensor = plan.tensor
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype, "reason": plan.reason}


def _ggml_type(plan: TensorPlan) -> gguf.GGMLQuantizationType:
    """The ggml type a quantized tensor of a GGUF result is written in (Q4_0 unless a budget chose another)."""
    return gguf.GGMLQuantizationType.Q4_0 if plan.format is None else _GGML_TYPES[plan.format.label()]


def unquantized_modules(plans: Sequence[TensorPlan]) -> list[str]:
    """The modules whose 2-D float ``.weight`` passes through (embeddings, the LM head, routers, and linear layers
    the output cannot hold or the globs leave out), in order: the ones an AWQ loader must not make AWQ layers of."""
    return [module_prefix(plan.tensor.name) for plan in plans
            if not plan.quantized and len(plan.tensor.shape) == 2 and plan.tensor.name.endswith(".weight")
            and plan.tensor.dtype in _FLOAT_DTYPES]


def fused_expert_modules(plans: Sequence[TensorPlan]) -> list[str]:
    """The fused-MoE modules (``...feed_forward.experts``) whose fused 3-D expert tensors pass through, in order:
    the quantization_config names them so vLLM builds those layers unquantized (`quantization_config`)."""
    modules: dict[str, None] = {}
    for plan in plans:
        module = fused_expert_module(plan.tensor.name, len(plan.tensor.shape))
        if module is not None and not plan.quantized:
            modules[module] = None
    return list(modules)


def checkpoint_family(config: Mapping[str, Any] | None) -> str | None:
    """The model family vLLM loads a checkpoint as: that of its config's ``architectures`` class when nibble knows
    the class and not the ``model_type``, else the ``model_type`` (None without a config)."""
    if not config:
        return None
    model_type = config.get("model_type")
    return architecture_family(config) or (model_type if isinstance(model_type, str) else None)


def quantization_config(options: CheckpointOptions, plans: Sequence[TensorPlan],
                        family: str | None = None) -> dict[str, Any]:
    """The ``quantization_config`` config.json gets for this job.

    compressed-tensors: one config group per distinct int4 scheme, each
    targeting its modules by name; a budget's 16-bit tensors are in none and
    in ``ignore`` with the modules passed through (vLLM refuses a linear layer
    neither targeted nor ignored); GGUF: the ggml type of each quantized
    tensor (``Q4_0`` for every one without a budget); AWQ: ``modules_to_not_convert`` lists the
    `unquantized_modules`; GPTQ: the scheme, and the rules that tell loaders which linear modules passed
    through (`skipped_modules_config`, quant_core/tensorio/gptq.py; none when every one is quantized).
    For a `family` whose fused modules vLLM splits into shards of other names (`VLLM_FUSED_SHARDS`: GLM-4-0414's
    gate_up_proj), the GPTQ list and AWQ's ``modules_to_not_convert`` also name those shards, as vLLM reads them.
    """
    shards = VLLM_FUSED_SHARDS.get(family or "", {})
    group_size, symmetric = options.group_size, options.symmetric
    if options.output == "compressed-tensors":
        groups: dict[tuple[int | None, bool], list[str]] = {}
        for plan in plans:
            stored = plan.stored_format(options)
            if plan.quantized and stored.name == "int4":
                groups.setdefault((stored.group_size, stored.symmetric), []).append(module_prefix(plan.tensor.name))
        config = compressed_tensors_scheme_config(groups)
        # vLLM's CompressedTensorsMoEMethod.get_moe_method: a fused-MoE layer the ignore list names is unquantized;
        # CompressedTensorsConfig.get_scheme: a linear layer neither targeted nor ignored is refused at load
        # ("Unable to find matching target"), so every module whose 2-D weight passes through is ignored too
        kept_16_bit = [module_prefix(plan.tensor.name) for plan in plans
                       if plan.quantized and plan.stored_format(options).name in FLOAT_FORMATS]
        ignored = [*config["ignore"], *fused_expert_modules(plans), *unquantized_modules(plans), *kept_16_bit]
        config["ignore"] = list(dict.fromkeys(ignored))
        return config
    if options.output == "gptq":
        quantized = [module_prefix(plan.tensor.name) for plan in plans if plan.quantized]
        skipped = [module_prefix(plan.tensor.name) for plan in plans if not plan.quantized
                   and needs_skip_rule(plan.tensor.name, len(plan.tensor.shape), plan.tensor.dtype in _FLOAT_DTYPES)]
        skipped += fused_expert_modules(plans)  # gptq_marlin's get_moe_quant_method: a negative dynamic rule
        unquantized = [module_of(plan.tensor.name) for plan in plans if not plan.quantized]
        return {**gptq_scheme_config(group_size, symmetric, act_order=False),
                **skipped_modules_config(quantized, skipped, unquantized, shards)}
    if options.output == "awq":  # awq_marlin: a fused-MoE layer modules_to_not_convert names is unquantized
        return awq_scheme_config(group_size, [*with_vllm_shards(unquantized_modules(plans), shards),
                                              *fused_expert_modules(plans)])
    if not options.has_budget:
        return {"quant_method": "gguf", "type": "Q4_0"}
    types = {plan.tensor.name: _ggml_type(plan).name for plan in plans if plan.quantized}
    return {"quant_method": "gguf", "type": "mixed", "types": types}


#: a routed expert's own linear layer (``mlp.experts.3.up_proj``, ``block_sparse_moe.experts.0.w1``): vLLM's FusedMoE
_ROUTED_EXPERT = re.compile(r"\.experts\.\d+\.")


def stored_kinds(options: CheckpointOptions, plans: Sequence[TensorPlan]) -> dict[str, str]:
    """How the result stores each tensor, as vLLM's loader for `options.output` tells them apart
    (quant_core/checkpoint/fused_groups.py): passed through, quantized, or a budget's 16-bit choice (stored in
    no config group, or as an F16/BF16 GGUF tensor: for vLLM as unquantized as a tensor passed through); under a
    compressed-tensors budget each int4 format is its own kind (a config group of its own)."""
    return {plan.tensor.name: stored_kind(options, plan.stored_format(options) if plan.quantized else None)
            for plan in plans}


def stored_kind(options: CheckpointOptions, stored: WeightFormat | None) -> str:
    """How vLLM's loader for `options.output` tells a tensor stored in `stored` (None: passed through) apart
    from the other parts of a layer it fuses (`stored_kinds`; a budget keeps each fused layer to one kind)."""
    if stored is None:
        return PASSED_THROUGH
    if stored.name in FLOAT_FORMATS:
        return SIXTEEN_BIT
    if options.has_budget and options.output == "compressed-tensors":
        return stored.label()
    return QUANTIZED


def engine_notes(options: CheckpointOptions, plans: Sequence[TensorPlan],
                 config: Mapping[str, Any] | None = None) -> list[str]:
    """What an engine will refuse in this job's result, said rather than left to fail at load.

    vLLM 0.11's and 0.19's compressed-tensors int4 MoE methods (compressed_tensors_moe.py) assert symmetric
    weights ("Only symmetric quantization is supported for MoE"); 0.33's (compressed_tensors_moe_wna16.py) take
    zero points.  Every output vLLM loads (compressed-tensors, GPTQ, AWQ, and GGUF through vLLM's GGUF loader)
    is refused when a layer vLLM fuses (q/k/v, gate/up, a layer's experts: `split_fused_groups` of the
    checkpoint's `config`) is stored in part: one note per kind of split, layers compacted (a budget's formats
    split none: quant_core/checkpoint/budget.py chooses each such layer's quantized parts as one).  vLLM 0.33
    refuses an asymmetric GPTQ result (`engines.vllm_refusals.ASYMMETRIC_GPTQ_REFUSED`: AutoGPTQConfig's TYPE_MAP is
    symmetric only), said after the other notes, with `float16_dtype_note` when the result's config.json is written
    float16 (`output_config`; that note alone for a GPTQ or AWQ result Marlin does not take for its group size).
    The job writes what was asked (nibble's INT4 has an offset by default; globs are never widened); the notes
    name the way out."""
    notes: list[str] = []
    if options.output == "compressed-tensors" and not options.symmetric and any(
            plan.quantized and _ROUTED_EXPERT.search(plan.tensor.name) for plan in plans):
        notes.append("vLLM 0.11 and 0.19 refuse asymmetric compressed-tensors int4 routed experts "
                     "(compressed_tensors_moe.py: \"Only symmetric quantization is supported for MoE\"); vLLM 0.33 "
                     "and transformers load this result. For those releases quantize with symmetric=true, or write "
                     "awq or gptq, whose MoE kernels take zero points")
    notes.extend(split_group_notes(split_fused_groups(config, stored_kinds(options, plans)), options.output))
    dtype_note = float16_dtype_note(config, _scheme_config(options)) if any(plan.quantized for plan in plans) \
        else None
    if options.output == "gptq" and not options.symmetric and any(plan.quantized for plan in plans):
        notes.append("vLLM 0.33 will not load this result: it loads GPTQ as AutoGPTQConfig (Marlin kernels only), "
                     "which holds symmetric weights only and raises \"Unsupported quantization config: bits=4, "
                     "sym=False\" (auto_gptq.py); vLLM 0.11 and 0.19 load it with their GPTQ kernels (gptq.py, "
                     "float16 activations only), as do transformers. For vLLM 0.33 quantize with symmetric=true, or "
                     "write awq or compressed-tensors, which take zero points"
                     + (f". {dtype_note}" if dtype_note else ""))
    elif dtype_note is not None:
        notes.append(dtype_note)
    return notes


def _scheme_config(options: CheckpointOptions) -> dict[str, Any]:
    """The scheme fields of the result's ``quantization_config`` by which vLLM picks its kernels (GPTQ, AWQ), or
    an empty dict for the other outputs."""
    if options.output == "gptq":
        return gptq_scheme_config(options.group_size, options.symmetric, act_order=False)
    if options.output == "awq":
        return awq_scheme_config(options.group_size)
    return {}


#: the dtype a result's config.json names when vLLM 0.11/0.19 would load it with float16-only kernels (`output_config`)
FLOAT16_TORCH_DTYPE = "float16"


def _float16_rewrite(config: Mapping[str, Any] | None,
                     quantization_config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(method, why not Marlin) when the result's config.json must name float16 (`output_config`), else None."""
    if not config or config_float_format(config) == "fp16":
        return None
    return float16_only_config(quantization_config)


def output_config(config: Mapping[str, Any] | None, quantization_config: Mapping[str, Any]) -> dict[str, Any]:
    """The result's config.json: the source's with `quantization_config`, and its dtype (``torch_dtype``, and
    ``dtype`` where transformers 4.56+ wrote it) float16 when vLLM 0.11 and 0.19 load the result with their
    float16-only GPTQ or AWQ kernels (`engines.vllm_refusals.float16_only_config`: asymmetric GPTQ, or groups Marlin
    does not take) and the source names another dtype or none.  ``--dtype auto`` runs the config's dtype, and a bfloat16
    one is refused ("torch.bfloat16 is not supported for quantization method gptq", _get_quantization_config);
    AutoGPTQ writes float16 models for the same kernels.  The 16-bit tensors stay as the source stores them: vLLM
    and transformers cast them to the model's dtype as they load them."""
    out = dict(config or {})
    out["quantization_config"] = dict(quantization_config)
    if _float16_rewrite(config, quantization_config) is not None:
        for key in [key for key in ("torch_dtype", "dtype") if key in out] or ["torch_dtype"]:
            out[key] = FLOAT16_TORCH_DTYPE
    return out


def float16_dtype_note(config: Mapping[str, Any] | None, quantization_config: Mapping[str, Any]) -> str | None:
    """The engine note of a result whose config.json `output_config` writes float16, or None."""
    found = _float16_rewrite(config, quantization_config)
    if found is None or config is None:
        return None
    method, why = found
    source = config.get("dtype", config.get("torch_dtype"))
    return (f"config.json says torch_dtype float16 (the source's: {source or 'none'}): vLLM 0.11 and 0.19 load "
            f"this result with their {method} kernels, not Marlin ({why}), which take float16 activations only and "
            f"refuse a model run in bfloat16 (\"torch.bfloat16 is not supported for quantization method {method}\", "
            "_get_quantization_config), as --dtype auto would run the source's dtype. The 16-bit tensors are stored "
            "as in the source; vLLM and transformers cast them to float16 as they load them")


def build_report(options: CheckpointOptions, plans: Sequence[TensorPlan], entries: Mapping[int, dict[str, Any]],
                 checkpoint: Checkpoint, allocation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """nibble's report of the whole job: each quantized tensor's entry (by plan index), the passthrough
    tensors with why, the files copied through, totals and the quantization config; under a budget,
    ``format`` is ``mixed`` and ``allocation`` the budget's summary (quant_core/checkpoint/budget.py)."""
    quantized = [entries[plan.index] for plan in plans if plan.quantized]
    passthrough = [passthrough_entry(plan) for plan in plans if not plan.quantized]
    report = {
        "method": options.method, "format": "mixed" if options.has_budget else options.scheme.label(),
        "output": options.output,
        "tensors": quantized, "passthrough": passthrough,
        "files_copied": list(checkpoint.other_files) if options.output != "gguf" else [],
        "totals": {
            "input_bytes": checkpoint.total_bytes,
            "quantized_tensors": len(quantized), "passthrough_tensors": len(passthrough),
            "quantized_input_bytes": sum(entry["bytes"]["input"] for entry in quantized),
            "quantized_output_bytes": sum(entry["bytes"]["output"] for entry in quantized),
        },
        "quantization_config": quantization_config(options, plans, checkpoint_family(checkpoint.config)),
        "engine_notes": engine_notes(options, plans, checkpoint.config),
    }
    if allocation is not None:
        report["allocation"] = dict(allocation)
    return report


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """A tensor of the result and where its bytes are now: `nbytes` at `offset` of `path` (a part or a shard)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class OutputShard:
    """One safetensors shard of the result: its file name and its tensors in order."""

    name: str
    tensors: tuple[OutputTensor, ...]

    @property
    def data_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)


def part_path(part_dir: Path, plan: TensorPlan) -> Path:
    """Where the part of planned tensor `plan` lives."""
    return part_dir / f"{plan.index:07d}.safetensors"


def _part_tensors(path: Path) -> list[OutputTensor]:
    header = read_safetensors_header(path)
    return [OutputTensor(name, entry.dtype, entry.shape, path, header.data_offset + entry.begin,
                         entry.end - entry.begin)
            for name, entry in header.entries.items()]


def _source_tensor(checkpoint: Checkpoint, tensor: CheckpointTensor) -> OutputTensor:
    return OutputTensor(tensor.name, tensor.dtype, tensor.shape, checkpoint.directory / tensor.shard,
                        tensor.offset, tensor.nbytes)


def output_tensors(checkpoint: Checkpoint, plans: Sequence[TensorPlan], part_dir: Path) -> list[OutputTensor]:
    """Every tensor of the result in order: passthrough tensors from the source, quantized ones from their parts.

    Raises `CheckpointError` when two tensors of the result share a name
    (``a.weight`` quantized beside a source tensor already named ``a.qweight``).
    """
    result: list[OutputTensor] = []
    for plan in plans:
        if plan.quantized:
            result.extend(_part_tensors(part_path(part_dir, plan)))
        else:
            result.append(_source_tensor(checkpoint, plan.tensor))
    seen: set[str] = set()
    for tensor in result:
        if tensor.name in seen:
            raise CheckpointError(f"the result would hold two tensors named {tensor.name!r}", field="include")
        seen.add(tensor.name)
    return result


def output_shards(checkpoint: Checkpoint, plans: Sequence[TensorPlan], part_dir: Path,
                  options: CheckpointOptions) -> list[OutputShard]:
    """The result's shards: tensors in order, a new shard whenever the next would pass ``max_shard_bytes``
    of data (a tensor larger than that gets a shard of its own), named ``model-0000i-of-0000n.safetensors``
    as transformers names them."""
    groups: list[list[OutputTensor]] = [[]]
    filled = 0
    for tensor in output_tensors(checkpoint, plans, part_dir):
        if groups[-1] and filled + tensor.nbytes > options.max_shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(tensor)
        filled += tensor.nbytes
    count = len(groups)
    return [OutputShard(f"model-{number:05d}-of-{count:05d}.safetensors", tuple(group))
            for number, group in enumerate(groups, start=1)]


def _copy_range(source: Path, offset: int, nbytes: int, handle: Any) -> None:
    """Append bytes ``[offset, offset + nbytes)`` of `source` to the open file `handle`, in the kernel
    (``copy_file_range``) where it can, else through a buffer of `COPY_BYTES`."""
    handle.flush()
    target = handle.fileno()
    descriptor = os.open(source, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            try:
                count = os.copy_file_range(descriptor, target, min(COPY_BYTES, nbytes - done), offset + done)
            except OSError:  # another filesystem or an old kernel: copy through a buffer
                chunk = os.pread(descriptor, min(COPY_BYTES, nbytes - done), offset + done)
                count = os.write(target, chunk) if chunk else 0
            if count == 0:
                raise CheckpointError(f"{source.name} ends inside the bytes {offset} to {offset + nbytes} "
                                      "being copied: it was truncated")
            done += count
    finally:
        os.close(descriptor)


def write_output_shard(shard: OutputShard, out_dir: Path) -> int:
    """Write one shard into `out_dir` by copying each tensor's byte range; returns the file's size."""
    header = encode_safetensors_header([(t.name, t.dtype, t.shape) for t in shard.tensors], {"format": "pt"})

    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)))
            handle.write(header)
            for tensor in shard.tensors:
                _copy_range(tensor.path, tensor.offset, tensor.nbytes, handle)

    target = out_dir / shard.name
    _write_atomically(target, write)
    return target.stat().st_size


def _copier(source: Path) -> Callable[[Path], object]:
    def copy(target: Path) -> object:
        return shutil.copyfile(source, target)
    return copy


def write_checkpoint_files(checkpoint: Checkpoint, shards: Sequence[OutputShard], report: Mapping[str, Any],
                           out_dir: Path) -> None:
    """The files beside the shards: the index, config.json with ``quantization_config`` (GPTQ also
    ``quantize_config.json``), the copied-through files and ``nibble_report.json``."""
    index = {"metadata": {"total_size": sum(shard.data_bytes for shard in shards)},
             "weight_map": {tensor.name: shard.name for shard in shards for tensor in shard.tensors}}
    _write_bytes(out_dir / INDEX_NAME, _json_bytes(index))
    config = output_config(checkpoint.config, report["quantization_config"])
    _write_bytes(out_dir / CONFIG_NAME, _json_bytes(config))
    if report["output"] == "gptq":
        _write_bytes(out_dir / GPTQ_CONFIG_NAME, _json_bytes(report["quantization_config"]))
    for name in checkpoint.other_files:
        _write_atomically(out_dir / name, _copier(checkpoint.directory / name))
    _write_bytes(out_dir / REPORT_NAME, _json_bytes(report))


def write_gguf_output(checkpoint: Checkpoint, plans: Sequence[TensorPlan], part_dir: Path,
                      report: Mapping[str, Any], out_dir: Path) -> None:
    """The GGUF result: ``model.gguf`` (each quantized tensor in its ggml type, Q4_0 without a budget, and the
    passthrough tensors, named, permuted and typed as llama.cpp's converter writes them, its metadata and
    tokenizer: `gguf_model`; the report in ``nibble.report``) and ``nibble_report.json``; written a tensor at a
    time through gguf-py's writer."""
    model = gguf_model(checkpoint)
    extra = model.extra_tensors()
    quantized = {plan.tensor.name: _ggml_type(plan) for plan in plans if plan.quantized}
    tensors = [(tensor, gguf_tensor) for tensor in output_tensors(checkpoint, plans, part_dir)
               if (gguf_tensor := model.tensor(tensor.name, len(tensor.shape))) is not None]

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(path, model.arch_name)
        try:
            for name, array in extra:
                writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
            for tensor, gguf_tensor in tensors:
                name, dtype, nbytes = gguf_tensor.name, gguf_tensor.dtype(tensor.dtype), gguf_tensor.nbytes(tensor)
                ggml_type = quantized.get(tensor.name)
                if ggml_type in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q8_0):
                    writer.add_tensor_info(name, tensor.shape, np.dtype(np.uint8), tensor.nbytes,
                                           raw_dtype=ggml_type)
                elif dtype == "BF16":
                    byte_shape = (*tensor.shape[:-1], 2 * tensor.shape[-1]) if tensor.shape else (2,)
                    writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes,
                                           raw_dtype=gguf.GGMLQuantizationType.BF16)
                else:
                    writer.add_tensor_info(name, tensor.shape, _GGUF_TYPES[dtype], nbytes)
            model.add_metadata(writer)
            writer.add_string("nibble.report", json.dumps(report, separators=(",", ":")))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _, array in extra:
                writer.write_tensor_data(array)
            for tensor, gguf_tensor in tensors:
                data = np.memmap(tensor.path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.nbytes,))
                writer.write_tensor_data(gguf_tensor.data(data, tensor.dtype, tensor.shape))
                del data
        finally:
            writer.close()

    _write_atomically(out_dir / GGUF_NAME, write)
    _write_bytes(out_dir / REPORT_NAME, _json_bytes(report))


def quantize_checkpoint(checkpoint: Checkpoint, plans: Sequence[TensorPlan], options: CheckpointOptions,
                        out_dir: Path, part_dir: Path,
                        progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole job in this process, one tensor at a time: parts into `part_dir`, the result into `out_dir`.

    `progress(done, total, entry)` is called after each quantized tensor.
    Returns the report.  Parts already present are made again (the same bytes).
    Under a budget, each tensor is first measured in every allowed format and
    the formats chosen (`quant_core.checkpoint.budget.choose_formats`), unless
    `plans` already carry their formats.
    """
    allocation = None
    if options.has_budget:
        from quant_core.checkpoint.budget import measure_and_choose

        plans, allocation = measure_and_choose(checkpoint, plans, options)
    part_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[int, dict[str, Any]] = {}
    todo = [plan for plan in plans if plan.quantized]
    for plan in todo:
        entries[plan.index] = quantize_tensor_part(checkpoint.directory, plan, options, part_path(part_dir, plan))
        if progress is not None:
            progress(len(entries), len(todo), entries[plan.index])
    report = build_report(options, plans, entries, checkpoint, allocation)
    if options.output == "gguf":
        write_gguf_output(checkpoint, plans, part_dir, report, out_dir)
        return report
    shards = output_shards(checkpoint, plans, part_dir, options)
    for shard in shards:
        write_output_shard(shard, out_dir)
    write_checkpoint_files(checkpoint, shards, report, out_dir)
    return report

