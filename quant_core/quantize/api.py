"""`quantize` and `dequantize`: the one entry point to every int4 method.

The driver validates the input, then walks the weights in chunks of rows
(about 2^20 elements, 4 MiB of float32, for RTN; 2^19 for the searching
methods, which keep several chunk-sized scratch buffers), converting each
chunk to float32 exactly (NumPy's cast for float16, ml_dtypes' for bfloat16),
computing the per-group min/max (which also detects NaN/Inf at no extra cost),
and calling the method for the chunk's per-group scales and zeros.
`ChunkEncoder` (quant_core/quantize/_fused.py) then encodes the chunk in
cache-sized blocks, packing the codes straight into the output and feeding
``(code − zero) × scale`` to the quality accumulator while the block is still
in cache, so peak memory stays near the input's size and the weights are read
from DRAM once.  `threads` threads take chunks in row order as each gets free (NumPy
releases the GIL inside its loops), each with its own encoder and buffers;
each chunk's figures are summed in row order at the end, so the result does
not depend on the thread count.  GPTQ, which needs the whole Hessian, has its
own column sweep (quant_core/quantize/gptq.py) and is measured by the same
accumulator afterwards.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import MappingProxyType

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.errors import ImportanceMismatch, InvalidSpec, InvalidTensor, NonFiniteValues, UnknownName
from quant_core.formats import WeightFormat
from quant_core.quantize import clip as clip_method
from quant_core.quantize import hqq as hqq_method
from quant_core.quantize import refit as refit_method
from quant_core.quantize._fused import ChunkEncoder
from quant_core.quantize._groups import F32, FP16_MAX, LEVELS, GroupParameters, within_fp16, zeros_at_least
from quant_core.quantize.metrics import (
    QualityAccumulator,
    WeightedErrorAccumulator,
    held_out_rows,
    validate_calibration,
)
from quant_core.quantize.packing import UNMEASURED, PayloadBuffer, pack_codes, unpack_codes
from quant_core.quantize.rtn import rtn, rtn_symmetric, rtn_weighted
from quant_core.quantize.types import QualityReport, QuantizedTensor

__all__ = ["IMPORTANCE_METHODS", "METHODS", "dequantize", "normalised_importance", "quantize"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
# Chunks of 4 MiB of float32 for the min/max and the per-group parameters (few, so Python's per-call
# cost, during which a thread holds the GIL, stays small; the encode inside works on cache-sized
# blocks, _fused.py); the searching methods keep several chunk-sized buffers, so their chunks are
# smaller: 2^19 measured fastest with two threads (2^17: the threads mostly wait for the GIL).
_CHUNK_ELEMENTS = 1 << 20
_SEARCH_CHUNK_ELEMENTS = 1 << 19
_SEARCHES = frozenset({"clip", "hqq", "refit"})
# below this many elements (8 MiB of float32) a tensor is encoded on the calling thread
_PARALLEL_MIN_ELEMENTS = 1 << 21

GroupMethod = Callable[[F32, F32, F32, WeightFormat], GroupParameters]
#: a method that minimises the importance-weighted error when given importance ``[groups, group_size]``
WeightedGroupMethod = Callable[[F32, F32, F32, WeightFormat, F32], GroupParameters]

_GROUP_METHODS: dict[str, GroupMethod] = {
    "rtn": rtn,
    "rtn-sym": lambda w, lo, hi, s: rtn_symmetric(w, lo, hi, s),
    "rtn-sym-absmax7": lambda w, lo, hi, s: rtn_symmetric(w, lo, hi, s, "absmax/7"),
    "rtn-sym-2absmax15": lambda w, lo, hi, s: rtn_symmetric(w, lo, hi, s, "2absmax/15"),
    "rtn-sym-q4_0": lambda w, lo, hi, s: rtn_symmetric(w, lo, hi, s, "q4_0"),
    "clip": clip_method.clip,
    "hqq": hqq_method.hqq,
    "refit": refit_method.refit,
}
_WEIGHTED_METHODS: dict[str, WeightedGroupMethod] = {
    "rtn": rtn_weighted,
    "clip": clip_method.clip,
    "hqq": hqq_method.hqq,
    "refit": refit_method.refit,
}
#: the methods that use importance statistics (the others are measured with them but ignore them)
IMPORTANCE_METHODS = frozenset(_WEIGHTED_METHODS)

#: Every method id with a one-line description (what the API lists).
METHODS: Mapping[str, str] = MappingProxyType({
    "rtn": "round-to-nearest, asymmetric min/max with an integer zero (symmetric schemes: the q4_0 rule)",
    "rtn-sym": "round-to-nearest, symmetric, llama.cpp Q4_0 scale rule (signed max / -8)",
    "rtn-sym-absmax7": "round-to-nearest, symmetric, scale = absmax / 7",
    "rtn-sym-2absmax15": "round-to-nearest, symmetric, scale = 2 absmax / 15",
    "rtn-sym-q4_0": "round-to-nearest, symmetric, scale = signed max / -8 (llama.cpp Q4_0)",
    "clip": "per-group grid search of a clipping (shrink) factor minimising squared error",
    "refit": "scale grid plus alternating least-squares refit of scale and integer zero (make_qkx2-like)",
    "gptq": "GPTQ (Frantar et al. 2022): Hessian-guided error compensation; needs calibration activations",
    "gptq-act-order": "GPTQ with act-order (columns by decreasing Hessian diagonal), recording g_idx",
    "hqq": "half-quadratic zero-point optimisation (Badri & Shaji 2023); fp16 zero, or projected to int4 with "
           "refitted scales",
})


def _check_method(method: str) -> None:
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=3, cutoff=0.4)
        raise UnknownName("quantization method", method, close or sorted(METHODS), field="method")


def _check_weights(weights: NDArray[np.generic], name: str) -> NDArray[np.generic]:
    array = np.asarray(weights)
    if array.ndim != 2:
        raise InvalidTensor(
            f"quantization needs a 2-D [out_features, in_features] tensor, got shape {list(array.shape)}",
            field="file", name=name,
        )
    if array.dtype.kind != "f" and array.dtype != _BF16:
        raise InvalidTensor(
            f"quantization needs float32, float16 or bfloat16 weights, got dtype {array.dtype}",
            field="file", name=name,
        )
    if 0 in array.shape:
        raise InvalidTensor(f"tensor of shape {list(array.shape)} has no elements", field="file", name=name)
    return array


def _check_scheme(scheme: WeightFormat) -> None:
    if scheme.name != "int4":
        raise InvalidSpec("scheme", scheme.name, "quantize writes int4 group-wise formats")
    if scheme.partial:  # the checkpoints' partial last group is counted by the planner, never written here
        raise InvalidSpec("partial", scheme.partial, "quantize writes whole groups; pad=True pads a row the group "
                          "size does not divide")


def _raise_non_finite(weights: NDArray[np.generic], name: str) -> None:
    """Count every NaN/Inf (a second pass, only on the error path) and raise with the first index."""
    count = 0
    first: tuple[int, ...] | None = None
    step = max(1, _CHUNK_ELEMENTS // weights.shape[1])
    for start in range(0, weights.shape[0], step):
        bad = ~np.isfinite(np.asarray(weights[start: start + step]).astype(np.float32))
        found = int(bad.sum())
        if found and first is None:
            row, column = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
            first = (start + int(row), int(column))
        count += found
    raise NonFiniteValues(count, first if first is not None else (0, 0), name)


def _raise_past_fp16(weights: NDArray[np.generic], columns: int, group_size: int, name: str,
                     error: InvalidTensor) -> None:
    """Raise `error` again saying which group of `weights` no fp16 scale can describe, and what it holds.

    The group math only sees a scale past 65504 (``inf`` when the range
    overflows float32 itself, as weights of ±3e38 do), which tells the user
    nothing about what they sent; this second pass, only on the error path,
    finds the group of widest span ``max(w_max, 0) − min(w_min, 0)`` (in
    float64, so it never overflows) and names its row, group and values.
    """
    reader = _ChunkReader(weights, columns)
    step = _chunk_rows(columns)
    widest = (-1.0, 0, 0, 0.0, 0.0)  # span, row, group, min, max
    for start in range(0, weights.shape[0], step):
        w_min, w_max = _group_extremes(reader.read(start, min(weights.shape[0], start + step)), group_size)
        low, high = w_min.astype(np.float64), w_max.astype(np.float64)
        span = np.maximum(high, 0.0) - np.minimum(low, 0.0)
        row, group = np.unravel_index(int(np.argmax(span)), span.shape)
        if float(span[row, group]) > widest[0]:
            widest = (float(span[row, group]), start + int(row), int(group), float(low[row, group]),
                      float(high[row, group]))
    widest_span, widest_row, widest_group, widest_low, widest_high = widest
    if widest_span > float(np.finfo(np.float32).max):
        reason = f"past float32's largest value, so its 4-bit step exceeds the fp16 maximum {FP16_MAX}"
    else:
        reason = error.detail
    where = f"tensor {name!r}: " if name else ""
    raise InvalidTensor(
        f"{where}row {widest_row}, group {widest_group} holds weights from {widest_low:.6g} to {widest_high:.6g}, a "
        f"range of {widest_span:.6g} too "
        f"wide for 4-bit codes with 16-bit scales ({reason})", field="file", name=name,
    ) from None


class _ChunkReader:
    """Rows of the weights as float32 ``[rows, padded_columns]``, exactly converted, zero-padded."""

    def __init__(self, weights: NDArray[np.generic], padded_columns: int) -> None:
        self.weights = weights
        self.in_features = weights.shape[1]
        self.columns = padded_columns
        self._buffer: F32 | None = None

    def read(self, start: int, stop: int) -> F32:
        source = self.weights[start:stop]
        if source.dtype == np.float32 and self.columns == self.in_features:
            view = np.ascontiguousarray(source)
            view = view.view()
            view.flags.writeable = False
            return view
        rows = stop - start
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = np.zeros((rows, self.columns), dtype=np.float32)
        out = self._buffer[:rows]
        target = out[:, : self.in_features]
        # exact for float16 and bfloat16 (ml_dtypes' cast widens the bits; about twice as fast as
        # shifting the bfloat16 bits into a uint32 view, which NumPy runs through a buffered cast)
        np.copyto(target, source, casting="unsafe")
        return out


def _chunk_rows(columns: int, elements: int = _CHUNK_ELEMENTS) -> int:
    """Rows per chunk: ~`elements` elements, and even so packed bytes never straddle chunks."""
    rows = max(2, elements // max(1, columns))
    return rows + rows % 2


def normalised_importance(importance: NDArray[np.floating], in_features: int, name: str = "") -> F32 | None:
    """Importance statistics for a tensor as float32 with mean 1, or None when they are uniform.

    `importance` holds one non-negative weight per input column (llama.cpp's
    imatrix: the mean of x² over calibration activations).  Uniform statistics
    carry no information: the methods then run unweighted, exactly as without
    them.  Raises `ImportanceMismatch` naming `name` for a wrong width, a
    negative or non-finite value, or all zeros.
    """
    values = np.asarray(importance)
    if values.ndim != 1 or values.shape[0] != in_features:
        raise ImportanceMismatch(name, f"have shape {list(values.shape)}; the tensor has {in_features} input "
                                 "columns (one value per column expected)", expected=in_features,
                                 got=int(values.shape[-1]) if values.ndim else None)
    if values.dtype.kind != "f":
        raise ImportanceMismatch(name, f"must be floats, got dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all() or float(values.min()) < 0.0:
        raise ImportanceMismatch(name, "must be finite and non-negative")
    mean = float(values.mean(dtype=np.float64))
    if mean <= 0.0:
        raise ImportanceMismatch(name, "are all zero")
    if float(values.min()) == float(values.max()):
        return None
    # in float64: a mean below float32's range (values near 1e-45) would divide to inf; the quotients are
    # at most in_features, within float32's
    return (values.astype(np.float64) / mean).astype(np.float32)


def quantize(weights: NDArray[np.generic], scheme: WeightFormat, method: str,
             calibration: NDArray[np.floating] | None = None, *, name: str = "", threads: int | None = None,
             min_zero: int = 0, importance: NDArray[np.floating] | None = None) -> QuantizedTensor:
    """Quantize a 2-D ``[out_features, in_features]`` tensor to int4 by `method`, measuring the result.

    `scheme` is an int4 `WeightFormat` (group size, symmetric or not, int4 or
    fp16 zeros, padding); `method` one of `METHODS`.  Scales (and fp16 zeros)
    are rounded to fp16 before the codes are computed, so `dequantize` gives
    back exactly what the returned `QualityReport` measured.  With
    `calibration` activations ``[n, in_features]`` the report adds the relative
    output error on the held-out last quarter of the rows; `gptq` fits on the
    first three quarters and raises `CalibrationError` without them.

    Raises `InvalidTensor` (rank, dtype, empty), `NonFiniteValues` (NaN/Inf:
    count and first index), `GroupSizeMismatch` (in_features not a multiple of
    the group size without ``pad``), `UnknownName` (method), `InvalidSpec` (a
    method that cannot produce `scheme`, or `threads` < 1).

    `threads` (default: every usable core) encodes chunks of rows in parallel
    (NumPy releases the GIL in its loops); the result, figures included, is
    the same for any count.  A server running one job per core passes 1.
    `min_zero` (0 to 14) raises every 4-bit integer zero to at least that
    value (`zeros_at_least`): 1 for GPTQ checkpoint v1, which stores zero − 1.
    """
    _check_method(method)
    if threads is not None and threads < 1:
        raise InvalidSpec("threads", str(threads), "the thread count must be at least 1")
    if not 0 <= min_zero < LEVELS:
        raise InvalidSpec("min_zero", min_zero, "must be an integer zero point in [0, 14] (15 leaves no positive code)")
    _check_scheme(scheme)
    array = _check_weights(weights, name)
    out_features, in_features = (int(d) for d in array.shape)
    groups = scheme.group_count(in_features)
    columns = scheme.padded_columns(in_features)
    group_size = scheme.group_size if scheme.group_size is not None else in_features
    held_out, split = held_out_rows(calibration, in_features)
    weights_by_column = normalised_importance(importance, in_features, name) if importance is not None else None
    if method == "hqq" and scheme.symmetric:
        raise InvalidSpec("method", method, "hqq optimises a zero point; use an asymmetric scheme")
    if method == "gptq-act-order" and scheme.layout != "gptq":
        raise InvalidSpec("method", method, "act-order needs g_idx, which only the layout='gptq' payload stores")
    if method.startswith("gptq"):
        from quant_core.quantize import gptq

        activations = validate_calibration(calibration, in_features) if calibration is not None else None
        try:
            codes_all, scales_all, zeros_all, g_idx = gptq.gptq(
                array, scheme, activations, act_order=method == "gptq-act-order",
                reader=_ChunkReader(array, columns), min_zero=min_zero,
            )
        except InvalidTensor as exc:  # a scale past fp16: say which group of the weights needs it
            _raise_past_fp16(array, columns, group_size, name, exc)
            raise
        quantized = _assemble(array, scheme, method, pack_codes(codes_all), scales_all, zeros_all, g_idx)
        return _with_quality(quantized, _with_weighted(_measure(array, quantized, held_out, split), array,
                                                       quantized, importance, weights_by_column, False))
    group_method = _GROUP_METHODS[method]
    grouped_importance: F32 | None = None
    if weights_by_column is not None and method in _WEIGHTED_METHODS:
        padded = np.zeros(columns, dtype=np.float32)  # padded columns are dropped: their error weighs nothing
        padded[:in_features] = weights_by_column
        table = padded.reshape(groups, group_size)
        grouped_importance = table
        weighted_method = _WEIGHTED_METHODS[method]
        group_method = lambda w, lo, hi, s: weighted_method(w, lo, hi, s, table)  # noqa: E731
    payload = PayloadBuffer((out_features, in_features), scheme)  # codes and scales are written in place
    packed, scales = payload.packed, payload.scales
    zeros = np.empty((out_features, groups), dtype=np.float32)
    step = _chunk_rows(columns, _SEARCH_CHUNK_ELEMENTS if method in _SEARCHES else _CHUNK_ELEMENTS)
    starts = range(0, out_features, step)
    # one accumulator per chunk, summed in row order at the end: the figures do not depend on `threads`
    accumulators = [QualityAccumulator(held_out, split) for _ in starts]
    failed = threading.Event()

    def encode_chunks(indexes: Iterator[int]) -> None:
        reader = _ChunkReader(array, columns)
        encoder = ChunkEncoder(columns, group_size, in_features, scheme.zero != "fp16", packed)
        for index in indexes:
            if index >= len(starts) or failed.is_set():
                return
            start = starts[index]
            stop = min(out_features, start + step)
            chunk = reader.read(start, stop)
            grouped = chunk.reshape(stop - start, groups, group_size)
            w_min, w_max = _group_extremes(chunk, group_size)
            if not (np.isfinite(w_min).all() and np.isfinite(w_max).all()):
                failed.set()
                _raise_non_finite(array, name)
            try:
                with np.errstate(over="ignore"):  # a range past float32 (±3e38) is refused below, not warned of
                    spans_finite = bool(np.isfinite(w_max - w_min).all())
                if not spans_finite:
                    raise InvalidTensor("a group's range overflows float32")
                parameters = group_method(grouped, w_min, w_max, scheme)
                if scheme.zero == "int4":
                    parameters = zeros_at_least(parameters, w_min, w_max, min_zero)
                parameters = within_fp16(parameters, w_min, w_max, scheme.zero != "fp16")
            except InvalidTensor as exc:  # a scale past fp16: say which group of the weights needs it
                failed.set()
                _raise_past_fp16(array, columns, group_size, name, exc)
                raise
            scales[start:stop] = parameters.scales
            zeros[start:stop] = parameters.zeros
            encoder.encode(start, chunk, w_min, w_max, parameters.scales, parameters.zeros, accumulators[index])

    workers = _worker_threads(threads, len(starts), out_features * columns)
    if workers == 1:
        encode_chunks(iter(range(len(starts))))
    else:
        # Each thread takes the next chunk in row order when it is free (the threads walk the rows together, as
        # an upload arrives, and one that the machine slows down leaves its share to the others instead of
        # holding up the end); `next` on a shared itertools.count is atomic under the GIL.
        shared = itertools.count()
        with ThreadPoolExecutor(workers, thread_name_prefix="nibble-quantize") as executor:
            futures = [executor.submit(encode_chunks, shared) for _ in range(workers)]
            try:
                for future in futures:
                    future.result()
            finally:
                failed.set()
    accumulator = QualityAccumulator(held_out, split)
    for part in accumulators:
        accumulator.absorb(part)
    stored_zeros = payload.finish(_stored_zeros(zeros, scheme))
    quantized = _assemble(array, scheme, method, packed, scales, stored_zeros, None)
    return _with_quality(quantized, _with_weighted(accumulator.report(), array, quantized, importance,
                                                   weights_by_column, grouped_importance is not None))


def _with_weighted(report: QualityReport, array: NDArray[np.generic], q: QuantizedTensor,
                   importance: NDArray[np.floating] | None, weights_by_column: F32 | None,
                   used: bool) -> QualityReport:
    """`report` plus the importance-weighted figures, measured on the stored result, when importance was given."""
    if importance is None:
        return report
    column_weights = weights_by_column if weights_by_column is not None else np.ones(q.shape[1], np.float32)
    accumulator = WeightedErrorAccumulator(column_weights)
    reader = _ChunkReader(array, q.shape[1])
    step = _chunk_rows(q.shape[1])
    for start in range(0, q.shape[0], step):
        stop = min(q.shape[0], start + step)
        accumulator.add(reader.read(start, stop)[:, : q.shape[1]], _dequantize_rows(q, start, stop))
    relative = accumulator.relative_error()
    return replace(report, weighted_relative_error=relative, weighted_sqnr_db=_sqnr_db(relative),
                   importance_used=used)


def _sqnr_db(relative: float) -> float:
    return -20.0 * math.log10(relative) if relative > 0 else math.inf


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_threads(threads: int | None, chunks: int, elements: int) -> int:
    """Threads for `chunks` chunks of a tensor of `elements` elements: `threads`, or the usable cores.

    Small tensors stay on the calling thread: starting threads costs more than they save.
    """
    wanted = usable_cores() if threads is None else threads
    if elements < _PARALLEL_MIN_ELEMENTS:
        return 1
    return max(1, min(wanted, chunks))


def _group_extremes(chunk: F32, group_size: int) -> tuple[F32, F32]:
    """Per-group minimum and maximum ``[rows, groups]`` of a contiguous float32 chunk ``[rows, columns]``.

    By integer ``reduceat`` over the float bits (about twice as fast as the
    float reductions): as int32, the largest value of a group holding any
    non-negative number is its float maximum; as uint32, the largest value of
    a group holding any negative number (sign bit set) is its float minimum.
    NaN and ±Inf come out as themselves (their bits exceed every finite
    value's of the same sign), so the caller's finiteness check still sees
    them.  Groups that are all negative (for the maximum) or all non-negative
    (for the minimum) fall back to the float reduction.
    """
    flat = chunk.reshape(-1)
    starts = np.arange(0, flat.size, group_size)
    shape = (chunk.shape[0], chunk.shape[1] // group_size)
    w_max = np.maximum.reduceat(flat.view(np.int32), starts).view(np.float32)
    w_min = np.maximum.reduceat(flat.view(np.uint32), starts).view(np.float32)
    if np.signbit(w_max).any():
        w_max = np.maximum.reduceat(flat, starts)
    if not np.signbit(w_min).all():
        w_min = np.minimum.reduceat(flat, starts)
    return w_min.reshape(shape), w_max.reshape(shape)


def _stored_zeros(zeros: F32, scheme: WeightFormat) -> NDArray[np.uint8] | NDArray[np.float16] | None:
    if scheme.zero == "int4":
        return zeros.astype(np.uint8)
    if scheme.zero == "fp16":
        return zeros.astype(np.float16)
    return None


def _assemble(array: NDArray[np.generic], scheme: WeightFormat, method: str, packed: NDArray[np.uint8],
              scales: NDArray[np.float16], zeros: NDArray[np.uint8] | NDArray[np.float16] | None,
              g_idx: NDArray[np.int32] | None) -> QuantizedTensor:
    source = "bfloat16" if array.dtype == _BF16 else str(array.dtype)
    return QuantizedTensor(
        shape=(int(array.shape[0]), int(array.shape[1])), format=scheme, method=method, packed=packed,
        scales=scales, zeros=zeros, quality=UNMEASURED, source_dtype=source, g_idx=g_idx,
    )


def _with_quality(q: QuantizedTensor, quality: QualityReport) -> QuantizedTensor:
    return replace(q, quality=quality)


def _measure(array: NDArray[np.generic], q: QuantizedTensor, held_out: F32 | None,
             split: tuple[tuple[int, int], tuple[int, int]] | None) -> QualityReport:
    accumulator = QualityAccumulator(held_out, split)
    reader = _ChunkReader(array, q.shape[1])
    step = _chunk_rows(q.shape[1])
    for start in range(0, q.shape[0], step):
        stop = min(q.shape[0], start + step)
        weights = np.array(reader.read(start, stop)[:, : q.shape[1]], dtype=np.float32, order="C")
        accumulator.add(weights, _dequantize_rows(q, start, stop))
    return accumulator.report()


def _dequantize_rows(q: QuantizedTensor, start: int, stop: int) -> F32:
    """Rows ``[start, stop)`` of ``(code − zero) × scale`` as float32 ``[rows, in_features]``."""
    in_features = q.shape[1]
    columns = q.format.padded_columns(in_features)
    groups = q.format.group_count(in_features)
    group_size = q.format.group_size if q.format.group_size is not None else in_features
    rows = stop - start
    first_code = start * columns
    byte_offset = first_code // 2
    skip = first_code % 2
    count = rows * columns
    codes = unpack_codes(q.packed[byte_offset:], count + skip)[skip:].reshape(rows, columns)
    values = codes.astype(np.float32)
    scales = q.scales[start:stop].astype(np.float32)
    if q.zeros is None:
        zeros = np.full(scales.shape, 8.0, dtype=np.float32)
    else:
        zeros = np.asarray(q.zeros[start:stop], dtype=np.float32)
    if q.g_idx is None:
        grouped = values.reshape(rows, groups, group_size)
        grouped -= zeros[..., None]
        grouped *= scales[..., None]
    else:
        real = values[:, :in_features]
        real -= zeros[:, q.g_idx]
        real *= scales[:, q.g_idx]
    return np.ascontiguousarray(values[:, :in_features])


def dequantize(q: QuantizedTensor, dtype: type[np.generic] | np.dtype[np.generic] = np.float32
               ) -> NDArray[np.generic]:
    """The weights ``(code − zero) × scale`` of `q` as ``[out_features, in_features]`` in `dtype`.

    Computed in float32 row chunks (exact: a 4-bit integer times an fp16 scale
    fits float32's mantissa), then cast to `dtype` (float32, float16 or
    bfloat16; the cast rounds to nearest).  Padded columns are dropped.
    """
    target = np.dtype(dtype)
    if target.kind != "f" and target != _BF16:
        raise InvalidSpec("dtype", str(target), "dequantize returns float32, float16 or bfloat16")
    out_features, in_features = q.shape
    result = np.empty((out_features, in_features), dtype=target)
    step = _chunk_rows(q.format.padded_columns(in_features))
    for start in range(0, out_features, step):
        stop = min(out_features, start + step)
        result[start:stop] = _dequantize_rows(q, start, stop).astype(target)
    return result
