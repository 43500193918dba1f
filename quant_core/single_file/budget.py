"""Importance statistics and per-tensor formats under a byte budget, for the quantize and compare jobs.

A request with a budget (``budget_bytes``, or ``bits_per_weight`` over the
tensors it quantizes) measures every selected tensor in each allowed format
(`budget_formats`: int4 at g128, g64 and g32, asymmetric as the request's scheme
and symmetric; int8 per row, quant_core/quantize/int8.py; and 16-bit),
then lets `quant_core.quantize.allocation.allocate` choose one format per
tensor that minimises the summed importance-weighted relative squared error
within the budget.  The bytes each tensor takes are its format's
``payload_bytes_for(shape)``, so the report's ``allocation.output_bytes`` is what the
file's tensors take.  16-bit tensors are written as float16 (bfloat16 and
float16 inputs keep their own dtype, exactly); int8 ones as nibble's int8 entries
(quant_core/tensorio/nibble_file.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.checkpoint.output import sixteen_bit
from quant_core.errors import ImportanceMismatch, InvalidSpec, LimitExceeded, TensorFileError
from quant_core.formats import WeightFormat, float_format
from quant_core.quantize import QuantizedTensor, quality_report
from quant_core.quantize.allocation import (
    BUDGET_GROUP_SIZES,
    BudgetTooSmall,
    TensorOption,
    allocate,
    allocation_summary,
    budget_formats,
    budget_from_bits,
)
from quant_core.quantize.api import normalised_importance
from quant_core.quantize.int8 import INT8, Int8Tensor, dequantize_int8, quantize_int8
from quant_core.quantize.metrics import weighted_relative_error
from quant_core.single_file import jobs
from quant_core.tensorio import read_importance

#: outputs that can hold a different format per tensor (engine checkpoints declare one group size)
BUDGET_OUTPUTS = ("report", "nibble")

def has_budget(job: jobs.QuantizeJob) -> bool:
    """Whether the job asks for per-tensor formats under a budget."""
    return job.budget_bytes is not None or job.bits_per_weight is not None


def check_output(output: str) -> None:
    """Refuse a budget with an output that stores one format for every tensor."""
    if output not in BUDGET_OUTPUTS:
        raise InvalidSpec("output", output, "a budget mixes formats per tensor; engine checkpoints declare one "
                          f"group size for every tensor: use output {' or '.join(BUDGET_OUTPUTS)}")


def load_importance(job: jobs.QuantizeJob, tensors: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[np.float32]]:
    """The job's importance vectors by tensor name ({} without a file), checked against the tensors to quantize.

    Names match exactly.  A file that matches none of the tensors to quantize,
    or a vector whose width differs from its tensor's in_features, is refused
    naming the tensor (422); tensors without statistics are quantized unweighted.
    """
    if job.importance_path is None:
        return {}
    limits = job.limits
    try:
        vectors = read_importance(job.importance_path, max_tensors=limits.max_tensors,
                                  max_elements=limits.max_elements, max_header_bytes=limits.max_header_bytes)
    except (TensorFileError, LimitExceeded) as exc:
        exc.field = "importance"
        raise
    include = jobs.include_glob(job.include)
    selected = [name for name in tensors if jobs.passthrough_reason(name, tensors[name], include) is None]
    matched = [name for name in selected if name in vectors]
    if selected and not matched:
        raise ImportanceMismatch("", f"name none of the tensors to quantize (e.g. {selected[:3]}); the file "
                                 f"names {sorted(vectors)[:3]}")
    for name in matched:
        normalised_importance(vectors[name], int(tensors[name].shape[1]), name)
    return {name: vectors[name] for name in matched}


def _figures_of(name: str, array: NDArray[Any], back: NDArray[np.float32], importance: NDArray[np.float32] | None,
                stored_format: WeightFormat, output_bytes: int, seconds: float) -> dict[str, Any]:
    """A report entry for a tensor stored as `back` (decoded) in `stored_format` (int8 or 16-bit: no method)."""
    label = stored_format.label()
    original = np.asarray(array, dtype=np.float32)
    report = quality_report(original, back)
    weights_by_column = (normalised_importance(importance, int(array.shape[1]), name)
                         if importance is not None else None)
    weighted = weighted_relative_error(original, back, weights_by_column if weights_by_column is not None
                                       else np.ones(array.shape[1], np.float32))
    elements = int(array.shape[0]) * int(array.shape[1])
    quality = {
        "relative_error": jobs._finite_or_none(report.relative_error),
        "sqnr_db": jobs._finite_or_none(report.sqnr_db), "max_abs_error": report.max_abs_error,
        "cosine_similarity": report.cosine_similarity, "exact": report.max_abs_error == 0.0,
        "output_relative_error": None, "fit_rows": None, "eval_rows": None,
        "weighted_relative_error": jobs._finite_or_none(weighted),
        "weighted_sqnr_db": jobs._finite_or_none(-20.0 * math.log10(weighted) if weighted > 0 else math.inf),
        "importance_used": False,
    }
    return {
        "method": "none", "group_size": None, "symmetric": label == "int8", "format": label,
        "bytes": {"input": int(array.nbytes), "output": output_bytes,
                  "predicted": stored_format.payload_bytes_for(tuple(int(d) for d in array.shape))},
        "bits_per_weight": 8 * output_bytes / elements, "quality": quality, "seconds": seconds,
    }


def _int8_entry(name: str, array: NDArray[Any], importance: NDArray[np.float32] | None
                ) -> tuple[Int8Tensor, dict[str, Any]]:
    started = time.perf_counter()
    q8 = quantize_int8(array)
    back = dequantize_int8(q8)
    output = int(q8.codes.nbytes + q8.scales.nbytes)
    return q8, _figures_of(name, array, back, importance, INT8, output, time.perf_counter() - started)


def _sixteen_bit_entry(name: str, array: NDArray[Any], importance: NDArray[np.float32] | None
                       ) -> tuple[NDArray[Any], dict[str, Any]]:
    started = time.perf_counter()
    stored = sixteen_bit(np.asarray(array))
    with np.errstate(over="ignore"):
        back = np.asarray(stored, dtype=np.float32)
    label = "fp16" if stored.dtype == np.float16 else "bf16"
    return stored, _figures_of(name, array, back, importance, float_format(label), int(stored.nbytes),
                               time.perf_counter() - started)


def _error_of(figures: Mapping[str, Any]) -> float:
    """The allocation's error of one option: the squared weighted relative error (inf when undefined)."""
    quality = figures["quality"]
    value = quality["weighted_relative_error"]
    if value is None:
        value = quality["relative_error"]
    return float("inf") if value is None else float(value) ** 2


Measured = list[tuple[TensorOption, QuantizedTensor | Int8Tensor | NDArray[Any] | None, dict[str, Any]]]


def _measure(name: str, array: NDArray[Any], method: str, scheme: WeightFormat, calibration: NDArray[Any] | None,
             importance: NDArray[np.float32] | None, threads: int | None, keep: bool) -> Measured:
    options: Measured = []
    for candidate in budget_formats(scheme, int(array.shape[1]), method):
        q, figures = jobs._run_method(name, array, candidate, method, calibration, threads, importance=importance)
        options.append((TensorOption(candidate.label(), figures["bytes"]["output"], _error_of(figures)),
                        q if keep else None, figures))
    q8, figures = _int8_entry(name, array, importance)
    options.append((TensorOption("int8", figures["bytes"]["output"], _error_of(figures)), q8 if keep else None,
                    figures))
    stored, figures = _sixteen_bit_entry(name, array, importance)
    options.append((TensorOption(figures["format"], figures["bytes"]["output"], _error_of(figures)),
                    stored if keep else None, figures))
    return options


def _budget(job: jobs.QuantizeJob, elements: int) -> int:
    if job.budget_bytes is not None:
        return job.budget_bytes
    return budget_from_bits(job.bits_per_weight or 0.0, elements)


def _budget_field(job: jobs.QuantizeJob) -> str:
    return "budget_bytes" if job.budget_bytes is not None else "bits_per_weight"


def _check_floor(job: jobs.QuantizeJob, tensors: Mapping[str, NDArray[Any]], names: list[str], method: str,
                 scheme: WeightFormat) -> None:
    """Refuse a budget over more tensors than ``job.limits.max_budget_tensors`` (`LimitExceeded`, 413 naming the
    budget's field), or below the tensors' smallest options (`BudgetTooSmall`, as `allocate` would), before any is
    measured: each option's bytes are its format's ``payload_bytes_for(shape)``, known without quantizing (measuring
    4,096 small tensors in four formats and four methods took 17 s before the same refusal).  The tensor bound is
    there because measuring has a fixed cost of about 2 ms a tensor (quantize's setup, the quality figures and
    the report entry of each option) however small the tensor: 4,096 tensors of 1 x 32, an 800 kB upload, held a
    pool worker 8.5 s, where a real upload's tensors are few and large (256 MiB of 896 x 896 projections is 167)."""
    limit = job.limits.max_budget_tensors
    if limit is not None and len(names) > limit:
        raise LimitExceeded("tensors measured under a budget", len(names), limit, field=_budget_field(job))
    floor = 0
    for name in names:
        shape = (int(tensors[name].shape[0]), int(tensors[name].shape[1]))
        sizes = [candidate.payload_bytes_for(shape) for candidate in budget_formats(scheme, shape[1], method)]
        floor += min(*sizes, INT8.bytes_for(shape), 2 * shape[0] * shape[1])  # the int8 and 16-bit options
    elements = sum(int(tensors[n].shape[0]) * int(tensors[n].shape[1]) for n in names)
    budget_bytes = _budget(job, elements)
    if names and budget_bytes < floor:
        raise BudgetTooSmall(budget_bytes, floor, field=_budget_field(job))


def _allocate(job: jobs.QuantizeJob, measured: list[Measured], elements: int) -> tuple[list[int], dict[str, Any]]:
    budget_bytes = _budget(job, elements)
    tensor_options = [[option for option, _, _ in options] for options in measured]
    try:
        allocation = allocate(tensor_options, budget_bytes)
    except BudgetTooSmall as exc:
        exc.field = _budget_field(job)
        raise
    return list(allocation.choices), allocation_summary(tensor_options, allocation, elements, job.bits_per_weight)


def quantize_under_budget(job: jobs.QuantizeJob, tensors: Mapping[str, NDArray[Any]], method: str,
                          scheme: WeightFormat, calibration: NDArray[Any] | None,
                          importance: Mapping[str, NDArray[np.float32]], report: dict[str, Any],
                          quantized: dict[str, QuantizedTensor], passthrough: dict[str, NDArray[Any]], keep: bool,
                          progress: Callable[[int, int, str, float], None] | None) -> dict[str, Int8Tensor]:
    """Measure, allocate and fill `report`, `quantized` and `passthrough` (16-bit choices are passthrough);
    returns the tensors that chose int8."""
    names: list[str] = []
    measured: list[Measured] = []
    int8: dict[str, Int8Tensor] = {}
    include = jobs.include_glob(job.include)
    selected = [n for n in tensors if jobs.passthrough_reason(n, tensors[n], include) is None]
    _check_floor(job, tensors, selected, method, scheme)
    total = len(selected)
    for name in tensors:
        array = tensors[name]
        reason = jobs.passthrough_reason(name, array, include)
        if reason is not None:
            report["passthrough"].append({"name": name, "shape": list(array.shape),
                                          "dtype": jobs._dtype_name(array), "reason": reason})
            passthrough[name] = array
            continue
        names.append(name)
        measured.append(_measure(name, array, method, scheme, calibration, importance.get(name), job.threads, keep))
        if progress is not None:
            progress(len(names), total, name, sum(f["seconds"] for _, _, f in measured[-1]))
    elements = sum(int(tensors[n].shape[0]) * int(tensors[n].shape[1]) for n in names)
    choices, summary = _allocate(job, measured, elements)
    for name, options, index in zip(names, measured, choices, strict=True):
        _, stored, figures = options[index]
        report["tensors"].append({"name": name, "shape": list(tensors[name].shape), **figures})
        if keep:
            if isinstance(stored, QuantizedTensor):
                quantized[name] = stored
            elif isinstance(stored, Int8Tensor):
                int8[name] = stored
            elif stored is not None:
                passthrough[name] = stored
    report["format"] = "mixed"
    report["allocation"] = summary
    return int8


def compare_under_budget(job: jobs.QuantizeJob, tensors: Mapping[str, NDArray[Any]],
                         calibration: NDArray[Any] | None, importance: Mapping[str, NDArray[np.float32]]
                         ) -> dict[str, Any]:
    """Each method under the same budget: per tensor the format each chose and its figures."""
    include = jobs.include_glob(job.include)
    names = [n for n in tensors if jobs.passthrough_reason(n, tensors[n], include) is None]
    passthrough = [{"name": n, "shape": list(tensors[n].shape), "dtype": jobs._dtype_name(tensors[n]),
                    "reason": jobs.passthrough_reason(n, tensors[n], include)}
                   for n in tensors if n not in names]
    elements = sum(int(tensors[n].shape[0]) * int(tensors[n].shape[1]) for n in names)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    allocations: dict[str, Any] = {}
    for method in job.methods:  # every method's floor before any is measured
        _check_floor(job, tensors, names, method, jobs._scheme(job, method))
    for method in job.methods:
        scheme = jobs._scheme(job, method)
        measured = [_measure(n, tensors[n], method, scheme, calibration, importance.get(n), job.threads, False)
                    for n in names]
        choices, allocations[method] = _allocate(job, measured, elements)
        for name, options, index in zip(names, measured, choices, strict=True):
            results[name].append({**options[index][2], "method": method})
    rows = [{"name": n, "shape": list(tensors[n].shape), "results": results[n],
             "best_method": min(results[n], key=jobs._closeness)["method"]} for n in names]
    return {"format": "mixed", "methods": list(job.methods), "tensors": rows, "passthrough": passthrough,
            "allocations": allocations}


__all__ = ["BUDGET_GROUP_SIZES", "budget_formats", "check_output", "compare_under_budget",
           "has_budget", "load_importance", "quantize_under_budget"]
