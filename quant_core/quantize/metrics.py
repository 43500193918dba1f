"""Quality figures of a quantized tensor, accumulated chunk by chunk.

Sums of squares are taken per chunk in float32 (BLAS dot products) and added
up in float64, so measuring a 4096 × 4096 tensor needs no float64 copy of it.
Cosine similarity uses ``W·Ŵ = (‖W‖² + ‖Ŵ‖² − ‖W − Ŵ‖²) / 2``.

With calibration activations ``X [n, in_features]`` the rows split into a fit
range ``[0, n − n_eval)`` and a held-out range ``[n − n_eval, n)`` with
``n_eval = max(1, n // 4)``; the relative output error
``‖X_e Wᵀ − X_e Ŵᵀ‖_F / ‖X_e Wᵀ‖_F`` is measured on the held-out rows only,
so a method that fits on X (GPTQ) is not graded on the rows it saw.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import CalibrationError, InvalidTensor
from quant_core.quantize.types import QualityReport

__all__ = ["QualityAccumulator", "WeightedErrorAccumulator", "calibration_split", "quality_report",
           "weighted_relative_error"]

_CHUNK_ELEMENTS = 1 << 18
#: a float32 sum of squares below this may have lost terms to underflow (float32's smallest normal is 1.2e-38)
_FLOAT32_SQUARES_FLOOR = 1e-20
#: a bounded chunk measures its largest error by gathering candidate groups only while they are under
#: 1/_GATHER_FRACTION of its groups; past that, two passes over the whole chunk are cheaper
_GATHER_FRACTION = 8


def calibration_split(rows: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(fit rows, held-out rows) as half-open ranges of a calibration matrix with `rows` rows."""
    if rows < 2:
        raise CalibrationError(f"calibration needs at least 2 rows (fit and held-out), got {rows}")
    held_out = max(1, rows // 4)
    return (0, rows - held_out), (rows - held_out, rows)


class QualityAccumulator:
    """Running sums for a `QualityReport`, fed row chunks of W and Ŵ (both float32)."""

    def __init__(self, held_out: NDArray[np.float32] | None = None,
                 split: tuple[tuple[int, int], tuple[int, int]] | None = None) -> None:
        self._weights_sq = 0.0
        self._reconstructed_sq = 0.0
        self._error_sq = 0.0
        self._max_abs_error = 0.0
        self._held_out = held_out
        self._split = split
        self._output_sq = 0.0
        self._output_error_sq = 0.0

    @property
    def max_abs_error(self) -> float:
        """The largest |Ŵ − W| measured so far (see `add` for what a bounded chunk leaves unmeasured)."""
        return self._max_abs_error

    def add(self, weights: NDArray[np.float32], reconstructed: NDArray[np.float32],
            reach: NDArray[np.float32] | None = None, floor: float = 0.0) -> None:
        """Add a chunk of rows; `reconstructed` is overwritten with Ŵ − W (it is scratch).

        `reach`, when given, is an upper bound on |Ŵ − W| for each group of the
        chunk, ``[groups in the chunk]`` in row order (groups being equal runs
        of each row), and `floor` a |Ŵ − W| already measured elsewhere in the
        same tensor.  The largest error is then measured only in the groups
        whose bound exceeds both this accumulator's maximum and `floor`: a
        group bounded below a measured error cannot hold the tensor's largest
        one, so the maximum over all accumulators of a tensor is still exact,
        while most chunks skip the two reductions a full measurement takes.
        """
        flat_w = weights.reshape(-1)
        flat_r = reconstructed.reshape(-1)
        weights_sq = float(np.dot(flat_w, flat_w))
        reconstructed_sq = float(np.dot(flat_r, flat_r))
        np.subtract(reconstructed, weights, out=reconstructed)
        error_sq = float(np.dot(flat_r, flat_r))
        if min(weights_sq, reconstructed_sq, error_sq) < _FLOAT32_SQUARES_FLOOR:
            # squares of values under ~1e-19 fall below float32's normal range and vanish: such a chunk (tiny
            # weights, or an exact or nearly exact one) is summed again in float64
            wide_w = flat_w.astype(np.float64)
            wide_e = flat_r.astype(np.float64)
            wide_r = wide_w + wide_e
            weights_sq, reconstructed_sq, error_sq = (float(np.dot(wide_w, wide_w)), float(np.dot(wide_r, wide_r)),
                                                      float(np.dot(wide_e, wide_e)))
        self._weights_sq += weights_sq
        self._reconstructed_sq += reconstructed_sq
        self._error_sq += error_sq
        if not flat_r.size:
            pass
        elif reach is None:
            self._max_abs_error = max(self._max_abs_error, float(flat_r.max()), -float(flat_r.min()))
        else:
            bounds = reach.reshape(-1)
            candidates = np.flatnonzero(bounds > max(self._max_abs_error, floor))
            if candidates.size * _GATHER_FRACTION > bounds.size:  # gathering most groups costs more than one pass
                self._max_abs_error = max(self._max_abs_error, float(flat_r.max()), -float(flat_r.min()))
            elif candidates.size:
                errors = flat_r.reshape(bounds.size, -1)[candidates]
                self._max_abs_error = max(self._max_abs_error, float(errors.max()), -float(errors.min()))
        if self._held_out is not None:
            output = self._held_out @ weights.T
            output_error = self._held_out @ reconstructed.T
            self._output_sq += float(np.vdot(output, output))
            self._output_error_sq += float(np.vdot(output_error, output_error))

    def absorb(self, other: QualityAccumulator) -> None:
        """Add the sums of `other` (the rows it saw) to this accumulator's, as if its chunks were added here."""
        self._weights_sq += other._weights_sq
        self._reconstructed_sq += other._reconstructed_sq
        self._error_sq += other._error_sq
        self._max_abs_error = max(self._max_abs_error, other._max_abs_error)
        self._output_sq += other._output_sq
        self._output_error_sq += other._output_error_sq

    def report(self) -> QualityReport:
        """The figures over every chunk added so far."""
        weights_norm = math.sqrt(self._weights_sq)
        error_norm = math.sqrt(self._error_sq)
        relative = error_norm / weights_norm if weights_norm > 0 else (0.0 if error_norm == 0 else math.inf)
        sqnr = -20.0 * math.log10(relative) if relative > 0 else math.inf
        denominator = weights_norm * math.sqrt(self._reconstructed_sq)
        if denominator > 0:
            dot = (self._weights_sq + self._reconstructed_sq - self._error_sq) / 2.0
            cosine = max(-1.0, min(1.0, dot / denominator))
        else:
            cosine = 1.0 if self._error_sq == 0 else 0.0
        output_error: float | None = None
        fit_rows: tuple[int, int] | None = None
        eval_rows: tuple[int, int] | None = None
        if self._held_out is not None and self._split is not None:
            fit_rows, eval_rows = self._split
            output_norm = math.sqrt(self._output_sq)
            output_error_norm = math.sqrt(self._output_error_sq)
            output_error = output_error_norm / output_norm if output_norm > 0 else (
                0.0 if output_error_norm == 0 else math.inf)
        return QualityReport(
            relative_error=relative, sqnr_db=sqnr, max_abs_error=self._max_abs_error,
            cosine_similarity=cosine, output_relative_error=output_error,
            fit_rows=fit_rows, eval_rows=eval_rows,
        )


class WeightedErrorAccumulator:
    """Sums for the importance-weighted relative error ``sqrt(Σ h_j (W − Ŵ)²_ij / Σ h_j W²_ij)``.

    `importance` holds one weight per input column (llama.cpp's imatrix:
    the mean of x² over calibration activations, so ``Σ_j h_j (W − Ŵ)²_ij`` is
    the expected squared output error of row i for inputs with those second
    moments and uncorrelated columns).  Fed row chunks, summed in float64.
    """

    def __init__(self, importance: NDArray[np.float32]) -> None:
        self._importance = np.asarray(importance, dtype=np.float32)
        self._weights_sq = 0.0
        self._error_sq = 0.0

    def add(self, weights: NDArray[np.float32], reconstructed: NDArray[np.float32]) -> None:
        """Add a chunk of rows ``[rows, in_features]`` of W and Ŵ (neither is modified)."""
        error = reconstructed - weights
        self._error_sq += float(np.dot(np.einsum("ij,ij->j", error, error), self._importance))
        self._weights_sq += float(np.dot(np.einsum("ij,ij->j", weights, weights), self._importance))

    def relative_error(self) -> float:
        """The weighted relative error of the rows added so far (0 for an exact result, inf past a zero W)."""
        if self._weights_sq > 0:
            return math.sqrt(self._error_sq / self._weights_sq)
        return 0.0 if self._error_sq == 0 else math.inf


def weighted_relative_error(weights: NDArray[np.generic], reconstructed: NDArray[np.generic],
                            importance: NDArray[np.floating]) -> float:
    """``sqrt(Σ h_j (W − Ŵ)²_ij / Σ h_j W²_ij)`` of two 2-D arrays of one shape, `importance` per column."""
    original = np.asarray(weights)
    approximate = np.asarray(reconstructed)
    if original.shape != approximate.shape or original.ndim != 2 or np.shape(importance) != (original.shape[1],):
        raise InvalidTensor(
            f"the weighted error needs two 2-D arrays of one shape and one importance per column, got "
            f"{list(original.shape)}, {list(approximate.shape)} and {list(np.shape(importance))}"
        )
    accumulator = WeightedErrorAccumulator(np.asarray(importance, dtype=np.float32))
    step = max(1, _CHUNK_ELEMENTS // max(1, original.shape[1]))
    for start in range(0, original.shape[0], step):
        accumulator.add(np.asarray(original[start: start + step], dtype=np.float32),
                        np.asarray(approximate[start: start + step], dtype=np.float32))
    return accumulator.relative_error()


def held_out_rows(calibration: NDArray[np.floating] | None, in_features: int
                  ) -> tuple[NDArray[np.float32] | None, tuple[tuple[int, int], tuple[int, int]] | None]:
    """Validate calibration activations and return (held-out rows as float32, the split)."""
    if calibration is None:
        return None, None
    activations = validate_calibration(calibration, in_features)
    split = calibration_split(activations.shape[0])
    start, stop = split[1]
    return np.ascontiguousarray(activations[start:stop], dtype=np.float32), split


def validate_calibration(calibration: NDArray[np.floating], in_features: int) -> NDArray[np.floating]:
    """Calibration activations as a 2-D ``[n, in_features]`` float array (leading dims flattened)."""
    activations = np.asarray(calibration)
    if activations.ndim < 2 or activations.shape[-1] != in_features:
        raise CalibrationError(
            f"calibration activations must be [n, {in_features}] (in_features of the weights), "
            f"got shape {list(activations.shape)}"
        )
    if activations.dtype.kind not in "f" and activations.dtype.name != "bfloat16":
        raise CalibrationError(f"calibration activations must be floats, got dtype {activations.dtype}")
    activations = activations.reshape(-1, in_features)
    finite = np.isfinite(activations.astype(np.float32, copy=False))
    if not finite.all():
        first = np.unravel_index(int(np.flatnonzero(~finite)[0]), activations.shape)
        raise CalibrationError(
            f"calibration activations hold {int((~finite).sum())} NaN/Inf value(s); "
            f"first at index {[int(i) for i in first]}"
        )
    return activations


def quality_report(weights: NDArray[np.generic], reconstructed: NDArray[np.generic],
                   calibration: NDArray[np.floating] | None = None) -> QualityReport:
    """Quality figures of `reconstructed` against `weights` (same 2-D shape), computed in row chunks.

    Figures are those of `QualityReport`: relative Frobenius error, SQNR in dB
    (−20·log10 of it), max absolute error, cosine similarity, and with
    `calibration` activations the held-out relative output error (module docstring).
    """
    original = np.asarray(weights)
    approximate = np.asarray(reconstructed)
    if original.shape != approximate.shape or original.ndim != 2:
        raise InvalidTensor(
            f"quality needs two 2-D arrays of one shape, got {list(original.shape)} and "
            f"{list(approximate.shape)}"
        )
    held_out, split = held_out_rows(calibration, original.shape[1])
    accumulator = QualityAccumulator(held_out, split)
    step = max(1, _CHUNK_ELEMENTS // max(1, original.shape[1]))
    for start in range(0, original.shape[0], step):
        chunk = np.ascontiguousarray(original[start: start + step], dtype=np.float32)
        approx = np.array(approximate[start: start + step], dtype=np.float32, order="C")
        accumulator.add(chunk, approx)
    return accumulator.report()
