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
SUB_BLOCK = 16
CHOLESKY_BLOCK = 256
# The sub-block products are small (≤ 112 × 16 × rows); done on slices of 128 rows each stays under
# OpenBLAS's multithreading threshold (m·n·k < 2^18), where waking a second thread costs more than it
# saves, and on a shared 2-core machine can cost milliseconds per product.
_SMALL_PRODUCT_ROWS = 128
_TRIANGULAR_LEAF = 512
DAMPENING = 0.01
MAX_DAMPENING = 1e4
_CHUNK_ELEMENTS = 1 << 23


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
    """Inverse of a lower-triangular matrix by 2 × 2 block recursion (about n³/3 flops).

    Leaves of up to `_TRIANGULAR_LEAF` rows are inverted by LAPACK; larger
    leaves mean fewer, larger matrix products (measured faster on 4096 × 4096).
    """
    size = lower.shape[0]
    if size <= _TRIANGULAR_LEAF:
        return np.linalg.inv(lower).astype(np.float32)
    half = size // 2
    top = _lower_triangular_inverse(lower[:half, :half])
    bottom = _lower_triangular_inverse(lower[half:, half:])
    result = np.zeros_like(lower)
    result[:half, :half] = top
    result[half:, half:] = bottom
    result[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return result


def blocked_cholesky(matrix: F32) -> F32:
    """Lower Cholesky factor ``L`` (``matrix = L Lᵀ``) by right-looking blocks of `CHOLESKY_BLOCK` in float32.

    Each diagonal block is factored by LAPACK; the panel below it is
    ``A_ik · L_kk⁻ᵀ`` and the trailing lower triangle is updated block column by
    block column (``A_ij −= L_ik L_jkᵀ``), all matrix products, so the whole
    factorisation costs about n³/3 flops at matmul speed: on this project's
    machine several times faster than ``np.linalg.cholesky`` on the 4096 × 4096
    matrix (BENCHMARKS.md).  Raises ``np.linalg.LinAlgError`` when a diagonal
    block is not positive definite, like LAPACK.
    """
    size = matrix.shape[0]
    work = np.array(matrix, dtype=np.float32, copy=True)
    lower = np.zeros_like(work)
    for start in range(0, size, CHOLESKY_BLOCK):
        stop = min(size, start + CHOLESKY_BLOCK)
        diagonal_block = np.linalg.cholesky(work[start:stop, start:stop])
        lower[start:stop, start:stop] = diagonal_block
        if stop == size:
            break
        panel = work[stop:, start:stop] @ np.linalg.inv(diagonal_block).T.astype(np.float32)
        lower[stop:, start:stop] = panel
        for column in range(stop, size, CHOLESKY_BLOCK):
            column_stop = min(size, column + CHOLESKY_BLOCK)
            work[column:, column:column_stop] -= panel[column - stop:] @ panel[column - stop: column_stop - stop].T
    return lower


def inverse_cholesky_upper(h: F32) -> tuple[F32, float]:
    """Upper ``U`` with ``(H + λI)⁻¹ = UᵀU``, and the λ used (raised ×10 while Cholesky fails)."""
    mean_diagonal = float(np.mean(np.diag(h)))
    damp = DAMPENING * mean_diagonal
    reversed_h = np.ascontiguousarray(h[::-1, ::-1], dtype=np.float32)
    diagonal = np.arange(h.shape[0])
    while True:
        damped = reversed_h.copy()
        damped[diagonal, diagonal] += np.float32(damp)
        try:
            lower = blocked_cholesky(damped)
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
        rows = reader.read(start, stop)
        transposed = np.ascontiguousarray((rows[:, permutation] if act_order else rows).T)
        transposed[dead_permuted] = 0.0
        chunk_codes, chunk_scales, chunk_zeros = _sweep(transposed, upper, scheme, group_size)
        if act_order:
            codes[start:stop, permutation] = chunk_codes.T
        else:
            codes[start:stop] = chunk_codes.T
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
    """Quantize ``W^T [columns, rows]`` in place column by column; codes ``[columns, rows]``.

    Lazy batch updates on two levels: a column's error is spread eagerly only
    over the rest of its `SUB_BLOCK` (a few rank-1 updates of short height);
    each finished sub-block reaches the rest of its `BLOCK_SIZE` block, and each
    finished block every later column, by one matrix product.  The arithmetic
    is GPTQ's, the order of the float32 additions differs.  Codes follow
    `encode`'s rule (``rint(w·(1/s)) + z`` for integer zeros).
    """
    columns, rows = transposed.shape
    codes = np.empty((columns, rows), dtype=np.uint8)
    scales = np.empty((max(1, columns // group_size), rows), dtype=np.float32)
    zeros = np.empty_like(scales)
    integer_zeros = scheme.zero != "fp16"
    scale = inverse = zero = np.zeros(rows, dtype=np.float32)
    quantized = np.empty(rows, dtype=np.float32)
    for block_start in range(0, columns, BLOCK_SIZE):
        block_stop = min(columns, block_start + BLOCK_SIZE)
        errors = np.empty((block_stop - block_start, rows), dtype=np.float32)
        for sub_start in range(block_start, block_stop, SUB_BLOCK):
            sub_stop = min(block_stop, sub_start + SUB_BLOCK)
            for column in range(sub_start, sub_stop):
                if column % group_size == 0:
                    group = column // group_size
                    scale, zero = _group_parameters(transposed[column: column + group_size], scheme)
                    inverse = np.float32(1.0) / scale
                    scales[group] = scale
                    zeros[group] = zero
                weight = transposed[column]
                np.multiply(weight, inverse, out=quantized)
                if integer_zeros:
                    np.rint(quantized, out=quantized)
                    quantized += zero
                else:
                    quantized += zero
                    np.rint(quantized, out=quantized)
                np.maximum(quantized, np.float32(0.0), out=quantized)
                np.minimum(quantized, np.float32(LEVELS), out=quantized)
                codes[column] = quantized
                quantized -= zero
                quantized *= scale
                error = errors[column - block_start]
                np.subtract(weight, quantized, out=error)
                error /= upper[column, column]
                if column + 1 < sub_stop:
                    transposed[column + 1: sub_stop] -= upper[column, column + 1: sub_stop, None] * error
            if sub_stop < block_stop:
                spread = upper[sub_start:sub_stop, sub_stop:block_stop].T
                sub_errors = errors[sub_start - block_start: sub_stop - block_start]
                for row in range(0, rows, _SMALL_PRODUCT_ROWS):
                    row_stop = row + _SMALL_PRODUCT_ROWS
                    transposed[sub_stop:block_stop, row:row_stop] -= spread @ sub_errors[:, row:row_stop]
        if block_stop < columns:
            transposed[block_stop:] -= upper[block_start:block_stop, block_stop:].T @ errors
    return codes, scales, zeros
