"""Quantize, compare and dequantize one tensor file on disk (.safetensors or .npy): the work behind the upload
endpoints and ``nibble quantize``, for any script too.

Each job is a plain function of file paths and a small parameter record, and
returns a JSON-able dict, so a worker process receives and sends only a few
hundred bytes: the tensors are memory-mapped from the file by the worker
itself, and outputs are written to a file the caller names.  All errors are
`quant_core` typed errors (app/problems.py maps them to HTTP).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.errors import CalibrationError, GroupSizeMismatch, InvalidSpec, LimitExceeded, NibbleError
from quant_core.formats import CHECKPOINT_LAYOUTS, Layout, WeightFormat, ggml_format
from quant_core.globs import Glob, compile_glob
from quant_core.quantize import QuantizedTensor, dequantize, quantize
from quant_core.quantize.int8 import Int8Tensor, dequantize_int8
from quant_core.quantize.packing import payload_size
from quant_core.single_file import budget
from quant_core.tensorio import (
    awq_config,
    compressed_tensors_config,
    export_awq,
    export_compressed_tensors,
    export_gguf,
    export_gptq,
    gptq_config,
    read_nibble_int8,
    read_nibble_safetensors,
    read_npy,
    read_safetensors,
    write_nibble_safetensors,
)
from quant_core.tensorio import write_safetensors as write_plain_safetensors
from quant_core.tensorio.limits import DEFAULT_MAX_NPY_HEADER_BYTES

__all__ = ["EXPORT_CONFIGS", "EXPORT_REPORT_KEY", "FLOAT_KINDS", "NPY_TENSOR_NAME", "OUTPUT_SUFFIXES",
           "DequantizeDtype", "OutputKind", "QuantizeJob", "ReadLimits", "compare_file", "dequantize_file",
           "include_glob", "load_tensors", "output_file_bytes", "passthrough_reason", "quantize_file"]

FLOAT_KINDS = ("float32", "float16", "bfloat16")
#: the name a `.npy` file's one tensor goes by
NPY_TENSOR_NAME = "weight"
OutputKind = Literal["report", "nibble", "gptq", "awq", "compressed-tensors", "gguf"]
#: File name suffix of each downloadable output.
OUTPUT_SUFFIXES: dict[str, str] = {"nibble": ".safetensors", "gptq": ".safetensors", "awq": ".safetensors",
                                   "compressed-tensors": ".safetensors", "gguf": ".gguf"}
DequantizeDtype = Literal["float32", "float16", "bfloat16"]
#: how output=gguf stores a quantized weight (tensorio/gguf_export.py: llama.cpp's Q4_0 blocks)
GGUF_Q4_0 = ggml_format("Q4_0")


#: the metadata key (safetensors ``__metadata__``, or a GGUF string) under which an exported file holds its report
EXPORT_REPORT_KEY = "nibble.report"
#: the ``quantization_config`` of each export that has one (the config.json entry its loaders read)
#: (of the quantized tensors and those passed through: GPTQ's and AWQ's name the linear ones loaders leave as they are)
EXPORT_CONFIGS: dict[str, Callable[[Mapping[str, QuantizedTensor], Mapping[str, NDArray[Any]]], dict[str, Any]]] = {
    "gptq": gptq_config, "awq": awq_config,
    "compressed-tensors": lambda quantized, _: compressed_tensors_config(quantized)}


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """The upload reader limits from settings (tensors per file, elements per tensor, header bytes)."""

    max_tensors: int
    max_elements: int
    max_header_bytes: int
    #: the largest upload accepted, also the most bytes a `/v1/dequantize` download may hold (issue 17 #7)
    max_file_bytes: int | None = None
    #: the most tensors a budget request measures (budget.py: each in every budget format, at a fixed cost of about
    #: 2 ms a tensor however small it is); None: `max_tensors`
    max_budget_tensors: int | None = None

    @property
    def max_npy_header_bytes(self) -> int:
        """A `.npy` header's limit: `max_header_bytes`, at most the npy reader's 64 KiB (a short dict, where a
        safetensors header lists every tensor; issue 17)."""
        return min(self.max_header_bytes, DEFAULT_MAX_NPY_HEADER_BYTES)


@dataclass(frozen=True, slots=True)
class QuantizeJob:
    """One quantize or compare request: the uploaded files and the parameters."""

    path: Path
    kind: Literal["npy", "safetensors"]
    calibration_path: Path | None
    methods: tuple[str, ...]
    group_size: int | None
    symmetric: bool
    include: str | None
    limits: ReadLimits
    zero: Literal["auto", "int4", "fp16"] = "auto"
    #: threads per tensor (`quantize`'s `threads`): None = every core (the CLI); the server's
    #: workers run one job per core and pass 1
    threads: int | None = None
    #: importance statistics (llama.cpp imatrix GGUF or .dat, or safetensors vectors), budget.py
    importance_path: Path | None = None
    #: a byte budget for the quantized tensors (or bits per weight over them): per-tensor formats, budget.py
    budget_bytes: int | None = None
    bits_per_weight: float | None = None


def load_tensors(path: Path, kind: str, limits: ReadLimits) -> Mapping[str, NDArray[Any]]:
    """The uploaded tensors by name (a ``.npy`` holds one, named ``weight``), memory-mapped and validated."""
    if kind == "npy":
        return {NPY_TENSOR_NAME: read_npy(path, max_elements=limits.max_elements,
                                          max_header_bytes=limits.max_npy_header_bytes)}
    return read_safetensors(path, max_tensors=limits.max_tensors, max_elements=limits.max_elements,
                            max_header_bytes=limits.max_header_bytes)


def _dtype_name(array: NDArray[Any]) -> str:
    return "bfloat16" if array.dtype == np.dtype(ml_dtypes.bfloat16) else str(array.dtype)


def include_glob(include: str | None) -> Glob | None:
    """The include pattern, compiled once per job (None: every tensor is included)."""
    return compile_glob(include) if include else None


def passthrough_reason(name: str, array: NDArray[Any], include: Glob | None) -> str | None:
    """Why a tensor is not quantized (``None`` when it is): rank, dtype or the include pattern."""
    if include is not None and not include.matches(name):
        return f"name does not match the include pattern {include.pattern!r}"
    if array.ndim != 2:
        return f"{array.ndim}-D tensor (shape {list(array.shape)}); only 2-D weights are quantized"
    if _dtype_name(array) not in FLOAT_KINDS:
        return f"dtype {_dtype_name(array)} is not float32, float16 or bfloat16"
    return None


def _scheme(job: QuantizeJob, method: str, output: str = "report") -> WeightFormat:
    """The int4 scheme of `job` for `method`: HQQ keeps its float zero (stored fp16, as the HQQ format
    does) unless int4 zeros are asked for or the output is an engine format that stores 4-bit zeros;
    ``gptq-act-order`` takes the GPTQ layout, whose payload stores the g_idx it permutes the groups by."""
    layout: Layout = "gptq" if method == "gptq-act-order" else "nibble"
    if job.symmetric:
        return WeightFormat("int4", job.group_size, True, "none", layout=layout)
    zero = job.zero
    if zero == "auto":
        zero = "fp16" if method == "hqq" and output in ("report", "nibble") else "int4"
    return WeightFormat("int4", job.group_size, False, zero, layout=layout)


def _calibration_for(name: str, array: NDArray[Any], calibration: NDArray[Any] | None, method: str
                     ) -> tuple[NDArray[Any] | None, str | None]:
    """The calibration activations for tensor `name`, and a note for its report when they do not fit it.

    One calibration file serves the tensors whose in_features equal its width;
    the others are quantized without it (their entry says so), except by GPTQ,
    which cannot run without it.
    """
    if calibration is None:
        return None, None
    if calibration.shape[1] == array.shape[1]:
        return calibration, None
    note = (f"calibration not used: its {calibration.shape[1]} columns differ from this tensor's "
            f"{array.shape[1]} in_features")
    if method.startswith("gptq"):
        raise CalibrationError(f"tensor {name!r}: {note}; GPTQ needs activations [n, {array.shape[1]}]")
    return None, note


def _finite_or_none(value: float | None) -> float | None:
    """A figure as strict JSON can hold it: infinity and NaN become null (the report's schema says what null means)."""
    return value if value is not None and math.isfinite(value) else None


def _quality(q: QuantizedTensor) -> dict[str, Any]:
    report = q.quality
    return {
        "relative_error": _finite_or_none(report.relative_error), "sqnr_db": _finite_or_none(report.sqnr_db),
        "max_abs_error": report.max_abs_error, "cosine_similarity": report.cosine_similarity,
        "exact": report.max_abs_error == 0.0,
        "output_relative_error": _finite_or_none(report.output_relative_error),
        "fit_rows": list(report.fit_rows) if report.fit_rows else None,
        "eval_rows": list(report.eval_rows) if report.eval_rows else None,
        "weighted_relative_error": _finite_or_none(report.weighted_relative_error),
        "weighted_sqnr_db": _finite_or_none(report.weighted_sqnr_db),
        "importance_used": report.importance_used,
    }


def _closeness(result: Mapping[str, Any]) -> tuple[bool, float, float]:
    """How a compared method ranks: by relative error (an undefined one last), then by max error."""
    quality = result["quality"]
    return quality["relative_error"] is None, quality["relative_error"] or 0.0, quality["max_abs_error"]


def _run_method(name: str, array: NDArray[Any], scheme: WeightFormat, method: str,
                calibration: NDArray[Any] | None, threads: int | None = None, min_zero: int = 0,
                importance: NDArray[Any] | None = None) -> tuple[QuantizedTensor, dict[str, Any]]:
    """Quantize one tensor and its report entry; `min_zero` as `quantize` takes it."""
    activations, note = _calibration_for(name, array, calibration, method)
    started = time.perf_counter()
    try:
        q = quantize(array, scheme, method, activations, name=name, threads=threads, min_zero=min_zero,
                     importance=importance)
    except GroupSizeMismatch as exc:  # name the tensor of the upload, and the choices its form has (no padding)
        raise GroupSizeMismatch(exc.in_features, exc.group_size, exc.field, tensor=name,
                                hint="; choose a group size that divides it, or 'row' (a whole row per group)"
                                ) from None
    seconds = time.perf_counter() - started
    output = payload_size(q)
    elements = int(array.shape[0]) * int(array.shape[1])
    figures = {
        "method": method, "group_size": scheme.group_size, "symmetric": scheme.symmetric,
        "format": scheme.label(),
        "bytes": {"input": int(array.nbytes), "output": output, "predicted": scheme.payload_bytes_for(array.shape)},
        "bits_per_weight": 8 * output / elements, "quality": _quality(q), "seconds": seconds,
    }
    if method.startswith("rtn-sym") and not scheme.symmetric:
        sym_note = ("symmetric codes on an asymmetric scheme: every group's zero is stored (all 8); send "
                    "symmetric=true to drop them (4.125 bits per weight at g128)")
        note = sym_note if note is None else f"{note}; {sym_note}"
    if note is not None:
        figures["note"] = note
    return q, figures


def _check_calibration_fits(tensors: Mapping[str, NDArray[Any]], include: Glob | None,
                            calibration: NDArray[Any] | None) -> None:
    """Refuse calibration activations that fit none of the tensors to quantize (they would go unused)."""
    if calibration is None:
        return
    widths = sorted({int(tensors[name].shape[1]) for name in tensors
                     if passthrough_reason(name, tensors[name], include) is None})
    if widths and calibration.shape[1] not in widths:
        raise CalibrationError(f"calibration activations have {calibration.shape[1]} columns, but the tensors to "
                               f"quantize have in_features {widths[:8]}: they would fit none of them")


def _check_include(tensors: Mapping[str, NDArray[Any]], include: Glob | None) -> None:
    """Refuse an include pattern that matches no tensor name (the request would quantize nothing)."""
    if include is not None and tensors and not any(map(include.matches, tensors)):
        names = sorted(tensors)
        raise InvalidSpec("include", include.pattern,
                          f"matches none of the {len(names)} tensor names, e.g. {names[:5]}")


def _inputs(job: QuantizeJob) -> tuple[Mapping[str, NDArray[Any]], Glob | None, NDArray[Any] | None,
                                       dict[str, NDArray[np.float32]]]:
    """What a quantize or compare job reads before its work: the tensors, the include pattern, the calibration
    activations and the importance vectors, each checked against the tensors it applies to."""
    tensors = load_tensors(job.path, job.kind, job.limits)
    include = include_glob(job.include)
    _check_include(tensors, include)
    calibration = _load_calibration(job)
    _check_calibration_fits(tensors, include, calibration)
    return tensors, include, calibration, budget.load_importance(job, tensors)


def _load_calibration(job: QuantizeJob) -> NDArray[Any] | None:
    if job.calibration_path is None:
        return None
    try:
        calibration = read_npy(job.calibration_path, max_elements=job.limits.max_elements,
                               max_header_bytes=job.limits.max_npy_header_bytes)
    except NibbleError as exc:  # the reader speaks of "the file": here it is the calibration upload
        if exc.field in ("", "file"):
            exc.field = "calibration"
        raise
    if calibration.ndim != 2:
        raise CalibrationError(f"calibration must be 2-D [samples, in_features], got shape {list(calibration.shape)}")
    return calibration


def quantize_file(job: QuantizeJob, output: OutputKind, output_path: Path | None, *,
                  progress: Callable[[int, int, str, float], None] | None = None) -> dict[str, Any]:
    """Quantize every selected tensor of the upload by ``job.methods[0]``; write `output_path` unless report.

    Returns the report: one entry per quantized tensor (name, shape, method,
    group size, bytes input/output/predicted, bits per weight, quality, seconds)
    and the passthrough tensors with why; plus the output file's size.
    `progress(done, total, name, seconds)` is called after each quantized
    tensor (the ``nibble quantize`` progress bar).
    """
    method = job.methods[0]
    if method == "gptq-act-order" and output in ("awq", "compressed-tensors", "gguf"):
        raise InvalidSpec("method", method, f"permutes the groups by a g_idx, which output {output} cannot store "
                          "(use output gptq or nibble, or method gptq)")
    tensors, include, calibration, importance = _inputs(job)
    scheme = _scheme(job, method, output)
    report: dict[str, Any] = {"method": method, "format": scheme.label(), "tensors": [], "passthrough": []}
    quantized: dict[str, QuantizedTensor] = {}
    passthrough: dict[str, NDArray[Any]] = {}
    int8: dict[str, Int8Tensor] = {}
    if budget.has_budget(job):
        budget.check_output(output)
        int8 = budget.quantize_under_budget(job, tensors, method, scheme, calibration, importance, report, quantized,
                                     passthrough, output != "report", progress)
    total = sum(passthrough_reason(n, tensors[n], include) is None for n in tensors) if progress else 0
    for name in tensors if not budget.has_budget(job) else ():
        array = tensors[name]
        reason = passthrough_reason(name, array, include)
        if reason is not None:
            report["passthrough"].append({"name": name, "shape": list(array.shape), "dtype": _dtype_name(array),
                                          "reason": reason})
            passthrough[name] = array
            continue
        # GPTQ checkpoints (v1) store zero − 1: their zeros are quantized in [1, 15]
        q, figures = _run_method(name, array, scheme, method, calibration, job.threads,
                                 min_zero=1 if output == "gptq" else 0, importance=importance.get(name))
        report["tensors"].append({"name": name, "shape": list(array.shape), **figures})
        if progress is not None:
            progress(len(report["tensors"]), total, name, figures["seconds"])
        if output != "report":
            quantized[name] = q
    report["totals"] = {
        "input_bytes": sum(int(tensors[n].nbytes) for n in tensors),
        "quantized_tensors": len(report["tensors"]),
        "passthrough_tensors": len(report["passthrough"]),
        "output_payload_bytes": sum(t["bytes"]["output"] for t in report["tensors"]),
    }
    if output_path is None or output == "report":
        return report
    for entry in report["tensors"]:  # before the file is written: its report carries them too
        entry["bytes"]["file"] = output_file_bytes(output, scheme, tuple(entry["shape"]), entry["bytes"]["output"])
    report["totals"]["output_file_tensor_bytes"] = sum(entry["bytes"]["file"] for entry in report["tensors"])
    if output in EXPORT_CONFIGS:  # in the file's report too: the X-Nibble-Report header may leave it out
        report["quantization_config"] = EXPORT_CONFIGS[output](quantized, passthrough)
    written_report = json.dumps(report, separators=(",", ":"))  # every file carries the report in its metadata
    if output == "nibble":
        write_nibble_safetensors(output_path, quantized, passthrough, metadata={"report": written_report},
                                 int8=int8)
    elif output == "gptq":
        report["quantization_config"] = export_gptq(quantized, passthrough, output_path,
                                                    metadata={EXPORT_REPORT_KEY: written_report})
    elif output == "awq":
        report["quantization_config"] = export_awq(quantized, passthrough, output_path,
                                                   metadata={EXPORT_REPORT_KEY: written_report})
    elif output == "compressed-tensors":
        report["quantization_config"] = export_compressed_tensors(quantized, passthrough, output_path,
                                                                  metadata={EXPORT_REPORT_KEY: written_report})
    else:
        export_gguf(quantized, passthrough, output_path, metadata={EXPORT_REPORT_KEY: written_report})
    report["totals"]["file_bytes"] = output_path.stat().st_size
    return report


def output_file_bytes(output: OutputKind, scheme: WeightFormat, shape: tuple[int, ...], payload_bytes: int) -> int:
    """Bytes of the tensors the `output` file holds for one weight quantized by `scheme` (its `payload_bytes` in
    nibble's own layout): what that file adds for it, beside the payload a report counts.

    gptq, awq, compressed-tensors: `WeightFormat.bytes_for` in that checkpoint layout, the sum of its
    `WeightFormat.checkpoint_tensors` (a GPTQ file's g_idx, and the qzeros a symmetric GPTQ or AWQ file stores
    too, are not in the payload); gguf: its Q4_0 blocks (``GGML_BLOCKS``); nibble: the payload itself, whose
    sections are the file's tensors (tensorio/nibble_file.py).  Raises `InvalidSpec` where the layout cannot
    hold the scheme (fp16 zeros in a checkpoint layout)."""
    if output in CHECKPOINT_LAYOUTS:
        return replace(scheme, layout=cast(Layout, output)).bytes_for(shape)
    if output == "gguf":
        return GGUF_Q4_0.bytes_for(shape)
    return payload_bytes


def compare_file(job: QuantizeJob) -> dict[str, Any]:
    """Quantize every selected tensor by each of ``job.methods``: figures side by side, best first named."""
    tensors, include, calibration, importance = _inputs(job)
    scheme = _scheme(job, "")
    if budget.has_budget(job):
        return budget.compare_under_budget(job, tensors, calibration, importance)
    rows: list[dict[str, Any]] = []
    passthrough: list[dict[str, Any]] = []
    for name in tensors:
        array = tensors[name]
        reason = passthrough_reason(name, array, include)
        if reason is not None:
            passthrough.append({"name": name, "shape": list(array.shape), "dtype": _dtype_name(array),
                                "reason": reason})
            continue
        results = [_run_method(name, array, _scheme(job, method), method, calibration, job.threads,
                               importance=importance.get(name))[1]
                   for method in job.methods]
        best = min(results, key=_closeness)
        rows.append({"name": name, "shape": list(array.shape), "results": results, "best_method": best["method"]})
    return {"format": scheme.label(), "methods": list(job.methods), "tensors": rows, "passthrough": passthrough}


def dequantize_file(path: Path, dtype: DequantizeDtype, limits: ReadLimits, output_path: Path) -> dict[str, Any]:
    """Read a nibble ``.safetensors`` and write its tensors back as `dtype` (passthrough tensors unchanged)."""
    quantized, passthrough, metadata = read_nibble_safetensors(
        path, max_tensors=limits.max_tensors, max_elements=limits.max_elements,
        max_header_bytes=limits.max_header_bytes)
    target = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    # the download is bounded like an upload, from the declared shapes, before any tensor is built
    tensor_bytes = sum(q.shape[0] * q.shape[1] * target.itemsize for q in quantized.values()) + sum(
        int(np.asarray(array).nbytes) for array in passthrough.values())
    if limits.max_file_bytes is not None and tensor_bytes > limits.max_file_bytes:
        raise LimitExceeded(f"bytes of the dequantized {dtype} tensors (max_upload_bytes)", tensor_bytes,
                            limits.max_file_bytes, field="file")
    out: dict[str, NDArray[Any]] = {name: dequantize(q, target) for name, q in quantized.items()}
    int8 = read_nibble_int8(path, max_tensors=limits.max_tensors, max_elements=limits.max_elements,
                            max_header_bytes=limits.max_header_bytes)
    for name, q8 in int8.items():
        out[name] = dequantize_int8(q8).astype(target)
    for name, array in passthrough.items():
        out[name] = np.asarray(array)
    size = write_plain_safetensors(output_path, out, metadata={**metadata, "dequantized_dtype": dtype})
    return {"tensors": len(quantized) + len(int8), "passthrough": len(passthrough), "dtype": dtype,
            "file_bytes": size}
