"""`gptq`: Frantar et al. 2022 (GPTQ), error-compensating quantization guided by calibration activations.

From activations ``X [n, in_features]`` (the fit rows, see metrics.py) the
Hessian of the layer's squared output error is ``H = 2/n · XᵀX``.  Input
columns that never fire (``H_jj = 0``) are dead: their weights are set to 0
and ``H_jj`` to 1.  Dampening adds ``λ = 1%`` of the mean diagonal to the
diagonal, and ×10 more each time the Cholesky factorisation fails (up to 1e4 ×
the mean diagonal, then `CalibrationError`).  GPTQ needs the upper Cholesky
factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``); it is computed without forming ``H⁻¹``:
with ``J`` the index reversal, ``J H J = L Lᵀ`` gives ``H = R Rᵀ`` with ``R = J L J``
upper triangular, so ``H⁻¹ = R⁻ᵀ R⁻¹`` and ``U = R⁻¹ = J L⁻¹ J``.

Columns are then quantized left to right (or, with act-order, by decreasing
``H_jj``, recording ``g_idx``): each column's codes use its group's scale and
zero, computed (min/max, fp16 scale, as `rtn`) from the *updated* weights when
the sweep enters the group; the column's error ``(w − ŵ) / U_jj`` is spread on
the not-yet-quantized columns of the block through row ``j`` of ``U``, and the
block's accumulated errors are applied to the later columns in one matrix
product (the "lazy batch" update, blocks of 128 columns).  Rows are
independent given ``U``, so the sweep runs on chunks of rows (weights kept
transposed, so each column is a contiguous vector).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import CalibrationError
from quant_core.formats import WeightFormat
from quant_core.quantize._groups import F32, LEVELS, SYMMETRIC_ZERO
from quant_core.quantize.metrics import calibration_split
from quant_core.quantize.rtn import asymmetric_parameters, symmetric_scales

BLOCK_SIZE = 128
DAMPENING = 0.01
MAX_DAMPENING = 1e4
_CHUNK_ELEMENTS = 1 << 22


class RowReader(Protocol):
    """Reads rows ``[start, stop)`` of the weights as float32 ``[rows, padded_columns]``."""

    def read(self, start: int, stop: int) -> F32: ...


def hessian(activations: NDArray[np.floating], columns: int) -> F32:
    """``H = 2/n · XᵀX`` over the fit rows of `activations`, zero-padded to `columns` (float32)."""
    (fit_start, fit_stop), _ = calibration_split(activations.shape[0])
    fit = np.ascontiguousarray(activations[fit_start:fit_stop], dtype=np.float32)
    result = np.zeros((columns, columns), dtype=np.float32)
    in_features = fit.shape[1]
    result[:in_features, :in_features] = (fit.T @ fit) * np.float32(2.0 / fit.shape[0])
    return result


def _lower_triangular_inverse(lower: F32) -> F32:
    """Inverse of a lower-triangular matrix by 2 × 2 block recursion (about n³/3 flops)."""
    size = lower.shape[0]
    if size <= 128:
        return np.linalg.inv(lower).astype(np.float32)
    half = size // 2
    top = _lower_triangular_inverse(lower[:half, :half])
    bottom = _lower_triangular_inverse(lower[half:, half:])
    result = np.zeros_like(lower)
    result[:half, :half] = top
    result[half:, half:] = bottom
    result[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return result


def inverse_cholesky_upper(h: F32) -> tuple[F32, float]:
    """Upper ``U`` with ``(H + λI)⁻¹ = UᵀU``, and the λ used (raised ×10 while Cholesky fails)."""
    mean_diagonal = float(np.mean(np.diag(h)))
    damp = DAMPENING * mean_diagonal
    reversed_h = np.ascontiguousarray(h[::-1, ::-1])
    while True:
        damped = reversed_h + np.float32(damp) * np.eye(h.shape[0], dtype=np.float32)
        try:
            lower = np.linalg.cholesky(damped).astype(np.float32, copy=False)
        except np.linalg.LinAlgError:
            damp *= 10.0
            if damp > MAX_DAMPENING * max(mean_diagonal, 1e-30):
                raise CalibrationError(
                    f"the Hessian is not positive definite even with dampening {damp:.3g}"
                ) from None
            continue
        upper = np.ascontiguousarray(_lower_triangular_inverse(lower)[::-1, ::-1])
        if np.isfinite(upper).all():
            return upper, damp
        damp *= 10.0


def _group_parameters(group: F32, scheme: WeightFormat) -> tuple[F32, F32]:
    """Scales and zeros of one group, `group` being ``[columns, rows]`` (transposed weights)."""
    w_min = group.min(axis=0)
    w_max = group.max(axis=0)
    if scheme.symmetric:
        scales = symmetric_scales(w_min, w_max, "q4_0")
        return scales, np.full(scales.shape, SYMMETRIC_ZERO, dtype=np.float32)
    if scheme.zero == "int4":
        w_min = np.minimum(w_min, np.float32(0.0))
        w_max = np.maximum(w_max, np.float32(0.0))
    return asymmetric_parameters(w_min, w_max, scheme)


def gptq(
    weights: NDArray[np.generic], scheme: WeightFormat, activations: NDArray[np.floating] | None, *,
    act_order: bool, reader: RowReader,
) -> tuple[NDArray[np.uint8], NDArray[np.float16], NDArray[np.uint8] | NDArray[np.float16] | None,
           NDArray[np.int32] | None]:
    """GPTQ codes ``[out, padded_columns]`` (original column order), scales, zeros and g_idx.

    Raises `CalibrationError` without activations.  `g_idx` is ``None`` unless
    `act_order` permuted the columns.
    """
    if activations is None:
        raise CalibrationError("gptq needs calibration activations X [n, in_features]; none were given")
    out_features, in_features = (int(d) for d in weights.shape)
    columns = scheme.padded_columns(in_features)
    group_size = scheme.group_size if scheme.group_size is not None else columns
    groups = scheme.group_count(in_features)
    h = hessian(activations, columns)
    diagonal = np.diag(h).copy()
    dead = diagonal == 0
    h[dead, dead] = 1.0
    if act_order:
        order = np.argsort(-diagonal[:in_features], kind="stable")
        permutation = np.concatenate([order, np.arange(in_features, columns)])
        h = np.ascontiguousarray(h[permutation][:, permutation])
    else:
        permutation = np.arange(columns)
    upper, _ = inverse_cholesky_upper(h)
    dead_permuted = dead[permutation]
    codes = np.empty((out_features, columns), dtype=np.uint8)
    scales = np.empty((out_features, groups), dtype=np.float16)
    zeros = np.empty((out_features, groups), dtype=np.float32)
    step = max(2, _CHUNK_ELEMENTS // columns)
    for start in range(0, out_features, step):
        stop = min(out_features, start + step)
        transposed = np.ascontiguousarray(reader.read(start, stop)[:, permutation].T)
        transposed[dead_permuted] = 0.0
        chunk_codes, chunk_scales, chunk_zeros = _sweep(transposed, upper, scheme, group_size)
        codes[start:stop, permutation] = chunk_codes.T
        scales[start:stop] = chunk_scales.T
        zeros[start:stop] = chunk_zeros.T
    stored: NDArray[np.uint8] | NDArray[np.float16] | None = None
    if scheme.zero == "int4":
        stored = zeros.astype(np.uint8)
    elif scheme.zero == "fp16":
        stored = zeros.astype(np.float16)
    g_idx: NDArray[np.int32] | None = None
    if act_order:
        position = np.empty(columns, dtype=np.int64)
        position[permutation] = np.arange(columns)
        g_idx = (position[:in_features] // group_size).astype(np.int32)
    return codes, scales, stored, g_idx


def _sweep(transposed: F32, upper: F32, scheme: WeightFormat, group_size: int
           ) -> tuple[NDArray[np.uint8], F32, F32]:
    """Quantize ``W^T [columns, rows]`` in place column by column; codes ``[columns, rows]``."""
    columns, rows = transposed.shape
    codes = np.empty((columns, rows), dtype=np.uint8)
    scales = np.empty((columns // group_size, rows), dtype=np.float32)
    zeros = np.empty_like(scales)
    scale = inverse = zero = np.zeros(rows, dtype=np.float32)
    quantized = np.empty(rows, dtype=np.float32)
    for block_start in range(0, columns, BLOCK_SIZE):
        block_stop = min(columns, block_start + BLOCK_SIZE)
        block = transposed[block_start:block_stop]
        block_upper = upper[block_start:block_stop, block_start:block_stop]
        errors = np.empty((block_stop - block_start, rows), dtype=np.float32)
        for i in range(block_stop - block_start):
            column = block_start + i
            if column % group_size == 0:
                group = column // group_size
                scale, zero = _group_parameters(transposed[column: column + group_size], scheme)
                inverse = np.float32(1.0) / scale
                scales[group] = scale
                zeros[group] = zero
            weight = block[i]
            np.multiply(weight, inverse, out=quantized)
            quantized += zero
            np.rint(quantized, out=quantized)
            np.clip(quantized, 0.0, LEVELS, out=quantized)
            codes[column] = quantized
            quantized -= zero
            quantized *= scale
            error = errors[i]
            np.subtract(weight, quantized, out=error)
            error /= block_upper[i, i]
            if i + 1 < block.shape[0]:
                block[i + 1:] -= block_upper[i, i + 1:, None] * error[None, :]
        if block_stop < columns:
            transposed[block_stop:] -= upper[block_start:block_stop, block_stop:].T @ errors
    return codes, scales, zeros
