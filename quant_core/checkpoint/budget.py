"""A checkpoint's tensors in per-tensor formats under a byte budget, and its importance statistics.

Under a budget (``budget_bytes``, or ``bits_per_weight`` over the tensors the
job quantizes) each quantized tensor may take the formats its output kind can
carry (`candidate_formats`):

* compressed-tensors: int4 at g128, g64 and g32 (`budget_formats`: the
  request's scheme and, when asymmetric, the symmetric one), each distinct
  scheme one config group targeting its modules; or 16-bit, the module left out
  of every group (a plain linear layer);
* GGUF: a ggml type per tensor, Q4_0 (int4 g32 symmetric), Q8_0 or F16/BF16.

GPTQ and AWQ refuse a budget (`quant_core.checkpoint.plan.BUDGET_REFUSED`).
The quantized parts of each layer vLLM fuses (q/k/v, gate/up, a layer's routed
experts, the family's other groups: `fused_layers` of the checkpoint's
config, quant_core/checkpoint/fused_groups.py, which cites vLLM's files and
lines) are chosen as one unit of the allocation (`allocation_groups`), since
vLLM refuses such a layer stored in different schemes: in compressed-tensors
they share one format, in GGUF one kind (all 16-bit, or all quantized, Q4_0
and Q8_0 free per part: vLLM's GGUF linear method multiplies each shard in its
own type, as llama.cpp's own Q4_K_M files need).
`measure_tensor` stores a tensor in each candidate and measures the bytes the
output holds for it and its error (the squared importance-weighted relative
error, the plain one without statistics: what the single-file budget of
quant_core/single_file/budget.py minimises); `choose_formats` hands those numbers to
`quant_core.quantize.allocation.allocate` and returns the plans with their
formats.  Measuring is deterministic, and so is the allocation of the same
numbers: a resumed job chooses the same formats, and the bytes written for the
quantized tensors are the allocation's ``output_bytes``, at most the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.checkpoint.fused_groups import fused_layers
from quant_core.checkpoint.output import encode_tensor, stored_kind
from quant_core.checkpoint.plan import CheckpointOptions, TensorPlan
from quant_core.checkpoint.source import Checkpoint, read_tensor
from quant_core.errors import BudgetTooSmall, ImportanceMismatch
from quant_core.formats import WeightFormat, float_format, ggml_format, int4
from quant_core.quantize.allocation import (
    TensorOption,
    allocate,
    allocation_summary,
    allocation_units,
    budget_formats,
    budget_from_bits,
)
from quant_core.quantize.api import normalised_importance

__all__ = ["allocation_groups", "attach_importance", "candidate_formats", "check_budget", "choose_formats",
           "lower_bound_bytes", "measure_and_choose", "measure_tensor", "without_statistics"]


def candidate_formats(plan: TensorPlan, options: CheckpointOptions) -> list[WeightFormat]:
    """The formats a budget may give `plan`'s tensor in `options.output` (module docstring), in a fixed order."""
    tensor = plan.tensor
    sixteen = float_format("bf16" if tensor.dtype == "BF16" else "fp16")
    if options.output == "gguf":
        return [int4(32, symmetric=True, zero="none"), ggml_format("Q8_0"), sixteen]
    return [*budget_formats(options.scheme, tensor.shape[1], options.method), sixteen]


def _error(entry: Mapping[str, Any]) -> float:
    """The allocation's error of one stored option: the squared (weighted) relative error, inf when undefined."""
    quality = entry["quality"]
    value = quality.get("weighted_relative_error")
    if value is None:
        value = quality["relative_error"]
    return math.inf if value is None or isinstance(value, str) else float(value) ** 2


def measure_tensor(directory: Any, plan: TensorPlan, options: CheckpointOptions) -> list[TensorOption]:
    """`plan`'s tensor stored in each of its `candidate_formats`: the output's bytes for it and the error."""
    weights = read_tensor(directory, plan.tensor)
    measured = []
    for stored in candidate_formats(plan, options):
        _, entry = encode_tensor(plan.tensor.name, weights, stored, options, plan.importance)
        measured.append(TensorOption(stored.label(), entry["bytes"]["output"], _error(entry)))
    return measured


def allocation_groups(plans: Sequence[TensorPlan], options: CheckpointOptions, config: Mapping[str, Any] | None
                      ) -> tuple[list[list[int]], list[list[str]]]:
    """For `allocate` over the quantized plans (in plan order): the positions of each fused layer's parts
    (`fused_layers` of `config`) and the kind of each candidate format (`stored_kind`: what vLLM's loader for
    `options.output` tells apart)."""
    quantized = [plan for plan in plans if plan.quantized]
    position = {plan.tensor.name: index for index, plan in enumerate(quantized)}
    groups = [[position[name] for name in layer] for layer in fused_layers(config, position)]
    kinds = [[stored_kind(options, stored) for stored in candidate_formats(plan, options)] for plan in quantized]
    return groups, kinds


def lower_bound_bytes(plans: Sequence[TensorPlan], options: CheckpointOptions,
                      config: Mapping[str, Any] | None = None) -> int:
    """The fewest bytes any allocation can take (each unit's smallest payload: a tensor's smallest format, a
    fused layer's smallest format all its parts offer, `allocation_groups`): a budget below it is refused
    before any tensor is measured (the exact floor, with the output's own headers, comes after)."""
    quantized = [plan for plan in plans if plan.quantized]
    payloads = [[TensorOption(stored.label(), stored.payload_bytes_for(plan.tensor.shape), 0.0)
                 for stored in candidate_formats(plan, options)] for plan in quantized]
    groups, kinds = allocation_groups(plans, options, config)
    return sum(min(option.bytes for option in unit.options) for unit in allocation_units(payloads, groups, kinds))


def _budget_bytes(plans: Sequence[TensorPlan], options: CheckpointOptions) -> tuple[int, int]:
    """(the budget in bytes, the weights it covers)."""
    elements = sum(math.prod(plan.tensor.shape) for plan in plans if plan.quantized)
    if options.budget_bytes is not None:
        return options.budget_bytes, elements
    return budget_from_bits(options.bits_per_weight or 0.0, elements), elements


def check_budget(plans: Sequence[TensorPlan], options: CheckpointOptions,
                 config: Mapping[str, Any] | None = None) -> None:
    """Refuse (`BudgetTooSmall`, naming the field sent) a budget below `lower_bound_bytes`."""
    budget, _ = _budget_bytes(plans, options)
    floor = lower_bound_bytes(plans, options, config)
    if budget < floor:
        raise BudgetTooSmall(budget, floor, field=_field(options))


def _field(options: CheckpointOptions) -> str:
    return "budget_bytes" if options.budget_bytes is not None else "bits_per_weight"


def choose_formats(plans: Sequence[TensorPlan], options: CheckpointOptions,
                   measured: Mapping[int, Sequence[TensorOption]], config: Mapping[str, Any] | None
                   ) -> tuple[tuple[TensorPlan, ...], dict[str, Any]]:
    """Each quantized plan with the format `allocate` chooses from its measured options (by plan index), the
    parts of each layer vLLM fuses (`config`'s, `allocation_groups`) chosen as one, and the allocation's
    summary: budget, bytes, bits per weight, error, formats chosen and allowed."""
    quantized = [plan for plan in plans if plan.quantized]
    budget, elements = _budget_bytes(plans, options)
    groups, kinds = allocation_groups(plans, options, config)
    try:
        allocation = allocate([measured[plan.index] for plan in quantized], budget, groups, kinds)
    except BudgetTooSmall as exc:
        exc.field = _field(options)
        raise
    chosen = {plan.index: candidate_formats(plan, options)[choice]
              for plan, choice in zip(quantized, allocation.choices, strict=True)}
    summary = allocation_summary([measured[plan.index] for plan in quantized], allocation, elements,
                                 options.bits_per_weight)
    return tuple(replace(plan, format=chosen[plan.index]) if plan.quantized else plan for plan in plans), summary


def measure_and_choose(checkpoint: Checkpoint, plans: Sequence[TensorPlan], options: CheckpointOptions
                       ) -> tuple[tuple[TensorPlan, ...], dict[str, Any]]:
    """`measure_tensor` for every quantized plan in this process, then `choose_formats`."""
    check_budget(plans, options, checkpoint.config)
    measured = {plan.index: measure_tensor(checkpoint.directory, plan, options) for plan in plans if plan.quantized}
    return choose_formats(plans, options, measured, checkpoint.config)


def attach_importance(plans: Sequence[TensorPlan], vectors: Mapping[str, NDArray[np.float32]]
                      ) -> tuple[TensorPlan, ...]:
    """The plans with the importance vector of each quantized tensor the statistics name (by exact name).

    Raises `ImportanceMismatch` (field ``importance``) naming the tensor whose
    vector does not fit it (width, sign, all zero), or when the statistics
    name none of the tensors to quantize.  Tensors without a vector are
    quantized unweighted.
    """
    quantized = [plan for plan in plans if plan.quantized]
    matched = [plan for plan in quantized if plan.tensor.name in vectors]
    if quantized and not matched:
        raise ImportanceMismatch("", f"name none of the tensors to quantize (e.g. "
                                 f"{[plan.tensor.name for plan in quantized[:3]]}); the file names "
                                 f"{sorted(vectors)[:3]}")
    for plan in matched:
        normalised_importance(vectors[plan.tensor.name], plan.tensor.shape[1], plan.tensor.name)
    return tuple(replace(plan, importance=np.asarray(vectors[plan.tensor.name], dtype=np.float32))
                 if plan.quantized and plan.tensor.name in vectors else plan for plan in plans)


def without_statistics(checkpoint: Checkpoint, statistics: Path) -> Checkpoint:
    """`checkpoint` without the statistics file among the files copied through, when it lies beside the shards
    (importance statistics are an input of the job, not a file an engine loads)."""
    directory = checkpoint.directory.resolve()
    if statistics.resolve().parent != directory:
        return checkpoint
    return replace(checkpoint, other_files=tuple(name for name in checkpoint.other_files
                                                 if name != statistics.resolve().name))
