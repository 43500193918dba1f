"""`gptq`: Frantar et al. 2022 (GPTQ), error-compensating quantization guided by calibration activations.

From activations ``X [n, in_features]`` (the fit rows, see metrics.py) the
Hessian of the layer's squared output error is ``H = 2/n · XᵀX``.  Input
columns that never fire (``H_jj = 0``) are dead: their weights are set to 0
and ``H_jj`` to 1.  Dampening adds ``λ = 1%`` of the mean diagonal to the
diagonal, and ×10 more each time the Cholesky factorisation fails (up to 1e4 ×
the mean diagonal, then `CalibrationError`: at most `DAMPENING_ATTEMPTS`
factorisations).  A Hessian that overflows float32 (activations of about 1e19
and more) is refused as `CalibrationError` before any factorisation.

Columns are then quantized left to right (or, with act-order, by decreasing
``H_jj``, recording ``g_idx``): each column's codes use its group's scale and
zero, computed (min/max, fp16 scale, as `rtn`) from the *updated* weights when
the sweep enters the group, and the column's quantization error is spread on
the columns not yet quantized.  In the paper's form, with ``U`` the upper
Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``), column ``j``'s scaled error
``e_j = (w_j − ŵ_j) / U_jj`` is subtracted from every later column ``k`` as
``e_j U_jk``.

nibble runs the same recurrence without inverting anything.  Write
``H = R Rᵀ`` with ``R`` upper triangular (from the lower Cholesky factor of
the index-reversed matrix: ``J H J = L Lᵀ`` gives ``R = J L J``), so that
``U = R⁻¹``.  Unrolling the updates gives ``W − Ŵ = E U`` (``W`` the original
weights, ``E`` the scaled errors), and since ``R U = I`` the weight column
``k`` holds, when the sweep reaches it,

    ``w_k = W_k + Σ_{j<k} (W_j − ŵ_j) · S_kj``,  with ``S_kj = R_jk / R_kk``

(``S = Rᵀ`` with unit diagonal: lower triangular).  So each quantized column
contributes its plain difference ``d_j = W_j − ŵ_j`` to later columns through
``S``, which costs one Cholesky factorisation and no triangular inverse; the
codes are those of the paper's recurrence up to float32 rounding (the tests
compare with a float64 transcription of the paper's algorithm).

The updates are applied lazily, by recursive halving of the column range:
the left half is swept, its differences reach the right half in one matrix
product ``W_right += S[right, left] · D_left``, then the right half is swept,
down to leaves of `LEAF_COLUMNS` columns swept column by column.  This is the
paper's "lazy batch" update (blocks of 128 columns) applied at every scale,
so most of the work is a few large matrix products.  Ranges spanning several
groups are split on group boundaries, so a group's columns have every earlier
column's update when the sweep enters it; their values then are
``W + Σ_{j<m} d_j S_kj``, which is the paper's state only for the group's first
column ``m``: the paper's values, from which the scale and zero are taken, are
``W_G + (S_GG)⁻¹ (that − W_G)`` (``S_GG`` the group's diagonal block).  Rows are
independent given ``S``, so the
sweep runs on chunks of rows (weights kept transposed, so each column is a
contiguous vector).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import CalibrationError
from quant_core.formats import WeightFormat
from quant_core.quantize._groups import F32, LEVELS, SYMMETRIC_ZERO, GroupParameters, within_fp16, zeros_at_least
from quant_core.quantize._transpose import transpose_into, transposed
from quant_core.quantize.metrics import calibration_split
from quant_core.quantize.rtn import asymmetric_parameters, symmetric_scales

LEAF_COLUMNS = 16
_TRIANGULAR_LEAF = 512
# Products of at most m·n·k = 2^18 run on one OpenBLAS thread (its threading threshold); a threaded call
# waits for its second thread, which on a shared 2-core machine can be descheduled for milliseconds.
# So the many mid-sized products are cut into single-threaded pieces, and only large ones
# (≥ `_THREADED_PRODUCT`, where the wait is amortised) are issued whole.
_SINGLE_THREAD_PRODUCT = 1 << 18
_THREADED_PRODUCT = 1 << 25
_MIN_SLICE_COLUMNS = 32
_FACTOR_LEAF = 64
DAMPENING = 0.01
MAX_DAMPENING = 1e4
#: factorisations tried at most: λ = DAMPENING, ×10, ... up to MAX_DAMPENING times the mean diagonal
DAMPENING_ATTEMPTS = round(math.log10(MAX_DAMPENING / DAMPENING)) + 1
_CHUNK_ELEMENTS = 1 << 24


class RowReader(Protocol):
    """Reads rows ``[start, stop)`` of the weights as float32 ``[rows, padded_columns]``."""

    def read(self, start: int, stop: int) -> F32: ...


def hessian(activations: NDArray[np.floating], columns: int) -> F32:
    """``H = 2/n · XᵀX`` over the fit rows of `activations`, zero-padded to `columns` (float32).

    Raises `CalibrationError` when ``H`` is not finite: finite activations whose
    products overflow float32 (|x| of about 1e19 and more) leave nothing to factorise.
    """
    (fit_start, fit_stop), _ = calibration_split(activations.shape[0])
    fit = np.ascontiguousarray(activations[fit_start:fit_stop], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, not warned about
        # ``fit.T @ fit`` of one buffer is computed by NumPy as a symmetric rank-k update (half the flops)
        product = fit.T @ fit
        product *= np.float32(2.0 / fit.shape[0])
    if not np.isfinite(product).all():
        largest = float(np.max(np.abs(fit))) if fit.size else 0.0
        raise CalibrationError(
            f"the calibration activations' Hessian 2/n·XᵀX overflows float32 (largest |x| is {largest:.3g}); "
            "GPTQ needs activations whose squares sum below 3.4e38: scale them down")
    in_features = fit.shape[1]
    if in_features == columns:
        return product
    result = np.zeros((columns, columns), dtype=np.float32)
    result[:in_features, :in_features] = product
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


def _upper_cholesky(matrix: F32) -> F32:
    """Upper ``U`` with ``matrix = UᵀU`` (float32) by 2 × 2 block recursion.

    ``U₁₁ = chol(A₁₁)``, ``U₁₂ = U₁₁⁻ᵀ A₁₂``, ``U₂₂ = chol(A₂₂ − U₁₂ᵀU₁₂)`` (a symmetric
    product NumPy computes as a rank-k update): a few large matrix products,
    leaves of `_FACTOR_LEAF` rows by LAPACK.  Raises `numpy.linalg.LinAlgError`
    when `matrix` is not positive definite.
    """
    if matrix.shape[0] <= _FACTOR_LEAF:
        return np.ascontiguousarray(np.linalg.cholesky(matrix).T, dtype=np.float32)
    return _upper_cholesky_and_inverse(matrix, with_inverse=False)[0]


def _upper_cholesky_and_inverse(matrix: F32, with_inverse: bool = True) -> tuple[F32, F32]:
    """`_upper_cholesky` and, if `with_inverse`, ``U⁻¹`` (else an empty array): ``(U⁻¹)₁₂ = −U₁₁⁻¹ U₁₂ U₂₂⁻¹``."""
    size = matrix.shape[0]
    if size <= _FACTOR_LEAF:
        upper = np.ascontiguousarray(np.linalg.cholesky(matrix).T, dtype=np.float32)
        return upper, np.linalg.inv(upper).astype(np.float32)
    half = max(_FACTOR_LEAF, size // 2 // _FACTOR_LEAF * _FACTOR_LEAF)
    top, top_inverse = _upper_cholesky_and_inverse(matrix[:half, :half])
    coupling = _product(top_inverse.T, matrix[:half, half:])
    trailing = matrix[half:, half:] - _product(coupling.T, coupling)
    result = np.zeros((size, size), dtype=np.float32)
    result[:half, :half] = top
    result[:half, half:] = coupling
    if not with_inverse:
        result[half:, half:] = _upper_cholesky(trailing)
        return result, np.empty((0, 0), dtype=np.float32)
    bottom, bottom_inverse = _upper_cholesky_and_inverse(trailing)
    result[half:, half:] = bottom
    inverse = np.zeros((size, size), dtype=np.float32)
    inverse[:half, :half] = top_inverse
    inverse[half:, half:] = bottom_inverse
    inverse[:half, half:] = _product(_product(top_inverse, coupling), -bottom_inverse)
    return result, inverse


def _damped_reversed_upper(h: F32) -> tuple[F32, float]:
    """Upper ``V`` with ``J (H + λI) J = VᵀV`` (``J`` the index reversal), and the λ used.

    λ starts at `DAMPENING` × the mean diagonal and grows ×10 while the
    factorisation fails or is not finite, `DAMPENING_ATTEMPTS` times at most
    (up to `MAX_DAMPENING` × the mean diagonal); then, or at once for a
    non-finite `h` or a mean diagonal that is not positive, `CalibrationError`.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean_diagonal = float(np.mean(np.diag(h), dtype=np.float64))
    if not (np.isfinite(h).all() and math.isfinite(mean_diagonal) and mean_diagonal > 0):
        raise CalibrationError(f"the Hessian is not finite and positive (mean diagonal {mean_diagonal:.3g})")
    damp = DAMPENING * mean_diagonal
    diagonal = np.arange(h.shape[0])
    for _ in range(DAMPENING_ATTEMPTS):
        work = h[::-1, ::-1].copy()
        work[diagonal, diagonal] += np.float32(damp)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflowed factor is refused below
                upper = _upper_cholesky(work)
            if np.isfinite(upper).all() and bool(np.all(np.diag(upper) > 0)):
                return upper, damp
        except np.linalg.LinAlgError:
            pass
        damp *= 10.0
    raise CalibrationError(f"the Hessian is not positive definite even with dampening {damp / 10.0:.3g} "
                           f"({DAMPENING_ATTEMPTS} factorisations tried)")


def error_feedback_factor(h: F32) -> tuple[F32, float]:
    """Unit lower-triangular ``S`` driving the sweep (module docstring), and the dampening λ used.

    With ``H + λI = R Rᵀ``, ``R`` upper triangular, ``S_kj = R_jk / R_kk``.
    From ``J (H + λI) J = VᵀV``: ``Rᵀ = J V J``, a reversed copy (no transpose).
    """
    upper, damp = _damped_reversed_upper(h)
    transposed = upper[::-1, ::-1].copy()  # = Rᵀ
    transposed /= np.diag(transposed)[:, None]
    return transposed, damp


def inverse_cholesky_upper(h: F32) -> tuple[F32, float]:
    """Upper ``U`` with ``(H + λI)⁻¹ = UᵀU`` (the paper's factor), and the λ used (raised ×10 while Cholesky fails).

    The sweep does not need it (it uses `error_feedback_factor`); it is the
    factor of the paper's formulation, kept to check that the two agree.
    """
    upper, damp = _damped_reversed_upper(h)
    lower = np.ascontiguousarray(upper.T)
    inverse = np.ascontiguousarray(_lower_triangular_inverse(lower)[::-1, ::-1])
    if not np.isfinite(inverse).all():
        raise CalibrationError(f"the inverse Cholesky factor overflowed with dampening {damp:.3g}")
    return inverse, damp


def _group_parameters(group: F32, scheme: WeightFormat, originals: F32, min_zero: int = 0) -> tuple[F32, F32]:
    """Scales and zeros of one group, `group` being ``[columns, rows]`` (transposed weights, as updated).

    `originals` (the group's weights before any update) decide which groups
    must decode within fp16 (`within_fp16`).
    """
    w_min = group.min(axis=0)
    w_max = group.max(axis=0)
    if scheme.symmetric:
        scales = symmetric_scales(w_min, w_max, "q4_0")
        zeros = np.full(scales.shape, SYMMETRIC_ZERO, dtype=np.float32)
    else:
        lo, hi = w_min, w_max
        if scheme.zero == "int4":
            lo, hi = np.minimum(w_min, np.float32(0.0)), np.maximum(w_max, np.float32(0.0))
        scales, zeros = asymmetric_parameters(lo, hi, scheme)
    parameters = GroupParameters(scales, zeros)
    if scheme.zero == "int4":
        parameters = zeros_at_least(parameters, w_min, w_max, min_zero)
    fitted = within_fp16(parameters, originals.min(axis=0), originals.max(axis=0),
                         scheme.zero != "fp16", every_code=True)
    return fitted.scales, fitted.zeros


def gptq(
    weights: NDArray[np.generic], scheme: WeightFormat, activations: NDArray[np.floating] | None, *,
    act_order: bool, reader: RowReader, min_zero: int = 0,
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
    position = np.empty(columns, dtype=np.int64)  # where each original column is swept: the inverse permutation
    position[permutation] = np.arange(columns)
    factor, _ = error_feedback_factor(h)
    del h
    group_inverses = _group_block_inverses(factor, group_size)
    dead_permuted = dead[permutation]
    codes = np.empty((out_features, columns), dtype=np.uint8)
    scales = np.empty((out_features, groups), dtype=np.float16)
    zeros = np.empty((out_features, groups), dtype=np.float32)
    step = max(2, _CHUNK_ELEMENTS // columns)
    for start in range(0, out_features, step):
        stop = min(out_features, start + step)
        rows = reader.read(start, stop)
        originals = rows[:, permutation] if act_order else rows
        if dead_permuted.any():
            originals = originals.copy()
            originals[:, dead_permuted] = 0.0
        sweep = _Sweep(originals, factor, group_inverses, scheme, group_size, min_zero)
        sweep.run(0, columns)
        # sweep.codes is [swept column, row]: its rows back in original column order, then transposed
        transpose_into(sweep.codes[position] if act_order else sweep.codes, codes[start:stop])
        scales[start:stop] = sweep.scales.T
        zeros[start:stop] = sweep.zeros.T
    stored: NDArray[np.uint8] | NDArray[np.float16] | None = None
    if scheme.zero == "int4":
        stored = zeros.astype(np.uint8)
    elif scheme.zero == "fp16":
        stored = zeros.astype(np.float16)
    g_idx: NDArray[np.int32] | None = None
    if act_order:
        g_idx = (position[:in_features] // group_size).astype(np.int32)
    return codes, scales, stored, g_idx


def _group_block_inverses(factor: F32, group_size: int) -> F32:
    """``(S_GG)⁻¹`` for every group but the first, ``[groups − 1, group_size, group_size]`` (float32)."""
    columns = factor.shape[0]
    blocks = np.array([factor[start:start + group_size, start:start + group_size]
                       for start in range(group_size, columns, group_size)], dtype=np.float64)
    if blocks.size == 0:
        return np.zeros((0, group_size, group_size), dtype=np.float32)
    return _lower_inverses(blocks).astype(np.float32)


def _lower_inverses(blocks: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverses of a stack of lower-triangular matrices by 2 × 2 block recursion, in small products.

    Leaves of `_FACTOR_LEAF` rows go to LAPACK, which runs matrices that small on one thread.
    """
    size = blocks.shape[-1]
    if size <= _FACTOR_LEAF:
        return np.linalg.inv(blocks).astype(np.float64)
    half = size // 2
    top = _lower_inverses(blocks[:, :half, :half])
    bottom = _lower_inverses(blocks[:, half:, half:])
    result = np.zeros_like(blocks)
    result[:, :half, :half] = top
    result[:, half:, half:] = bottom
    result[:, half:, :half] = -(bottom @ (blocks[:, half:, :half] @ top))
    return result


def _slice_columns(left: F32, right: F32) -> int:
    """Columns of `right` per piece of ``left @ right``: all of them, or few enough for one BLAS thread.

    Products too large (≥ `_THREADED_PRODUCT`) or whose pieces would be
    narrower than `_MIN_SLICE_COLUMNS` (inefficient kernels) are not cut.
    """
    columns = int(right.shape[1])
    inner = int(left.shape[0]) * int(left.shape[1])
    work = inner * columns
    if work >= _THREADED_PRODUCT or work <= _SINGLE_THREAD_PRODUCT:
        return columns
    width = _SINGLE_THREAD_PRODUCT // max(1, inner)
    return width if width >= _MIN_SLICE_COLUMNS else columns


def _product(left: F32, right: F32) -> F32:
    """``left @ right``; mid-sized products cut along `right`'s columns to run single-threaded."""
    width = _slice_columns(left, right)
    if width >= right.shape[1]:
        return left @ right
    result = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    for start in range(0, right.shape[1], width):
        np.matmul(left, right[:, start:start + width], out=result[:, start:start + width])
    return result


def _add_product(target: F32, left: F32, right: F32) -> None:
    """``target += left @ right``; mid-sized products cut along `right`'s columns to run single-threaded."""
    width = _slice_columns(left, right)
    if width >= right.shape[1]:
        target += left @ right
        return
    for start in range(0, right.shape[1], width):
        target[:, start:start + width] += left @ right[:, start:start + width]


class _Sweep:
    """The column sweep of one chunk of rows (module docstring), codes ``[columns, rows]``.

    `transposed` starts as ``Wᵀ`` and is updated in place; once column ``j`` is
    quantized its row is overwritten with ``d_j = W_j − ŵ_j``, which later
    columns receive through `factor`.  Codes follow `encode`'s rule
    (``rint(w·(1/s)) + z`` for integer zeros, ``rint(w·(1/s) + z)`` for fp16 zeros).
    """

    def __init__(self, originals: F32, factor: F32, group_inverses: F32, scheme: WeightFormat,
                 group_size: int, min_zero: int = 0) -> None:
        rows, columns = originals.shape
        self.min_zero = min_zero
        self.originals = originals
        self.transposed: F32 = transposed(originals)  # a copy: the sweep writes to it
        self.factor = factor
        self.group_inverses = group_inverses
        self.scheme = scheme
        self.group_size = group_size
        self.codes = np.empty((columns, rows), dtype=np.uint8)
        self.scales = np.empty((max(1, columns // group_size), rows), dtype=np.float32)
        self.zeros = np.empty_like(self.scales)
        self._scale = self._inverse = self._zero = np.zeros(rows, dtype=np.float32)
        self._quantized = np.empty(rows, dtype=np.float32)
        self._group_start = 0
        self._group_originals: F32 = np.empty((0, rows), dtype=np.float32)

    def run(self, start: int, stop: int) -> None:
        """Sweep columns ``[start, stop)``, which already hold every update from columns before `start`."""
        size = stop - start
        if size <= LEAF_COLUMNS:
            self._leaf(start, stop)
            return
        if size > self.group_size:
            middle = start + (size // self.group_size // 2) * self.group_size
        else:
            middle = start + max(LEAF_COLUMNS, size // 2 // LEAF_COLUMNS * LEAF_COLUMNS)
        self.run(start, middle)
        _add_product(self.transposed[middle:stop], self.factor[middle:stop, start:middle],
                     self.transposed[start:middle])
        self.run(middle, stop)

    def _enter_group(self, column: int) -> None:
        """Scales and zeros of the group starting at `column`, from the paper's weights at that point.

        `transposed` holds ``W_k + Σ_{j<column} d_j S_kj`` for the group's
        columns, which equals the paper's updated weights only for the first
        one; the paper's values are ``W_G + (S_GG)⁻¹ (that − W_G)`` (``S_GG`` the
        group's diagonal block of `factor`; module docstring).
        """
        group = column // self.group_size
        stop = column + self.group_size
        self._group_start = column
        self._group_originals = transposed(self.originals[:, column:stop])
        current = self.transposed[column:stop]
        if group == 0:
            paper = current
        else:
            paper = self._group_originals.copy()
            _add_product(paper, self.group_inverses[group - 1], current - self._group_originals)
        self._scale, self._zero = _group_parameters(paper, self.scheme, self._group_originals, self.min_zero)
        self._inverse = np.float32(1.0) / self._scale
        self.scales[group] = self._scale
        self.zeros[group] = self._zero

    def _leaf(self, start: int, stop: int) -> None:
        """Quantize columns ``[start, stop)`` one by one, each difference reaching the rest of the leaf at once."""
        block = self.transposed[start:stop]
        quantized = self._quantized
        integer_zeros = self.scheme.zero != "fp16"
        for offset in range(stop - start):
            column = start + offset
            if column % self.group_size == 0:
                self._enter_group(column)
            weight = block[offset]
            np.multiply(weight, self._inverse, out=quantized)
            if integer_zeros:
                np.rint(quantized, out=quantized)
                quantized += self._zero
            else:
                quantized += self._zero
                np.rint(quantized, out=quantized)
            np.clip(quantized, np.float32(0.0), np.float32(LEVELS), out=quantized)
            self.codes[column] = quantized
            quantized -= self._zero
            quantized *= self._scale
            np.subtract(self._group_originals[column - self._group_start], quantized, out=weight)
            if offset + 1 < stop - start:
                block[offset + 1:] += self.factor[column + 1: stop, column, None] * weight
