"""`hqq`: half-quadratic quantization of the zero point (Badri & Shaji 2023), no calibration data.

The scale stays the min/max one (rounded up to fp16); the zero is optimised
by HQQ's proximal loop on ``min_z ‖W − (Q − z)·s‖_p^p`` with ``p = 0.7``:
split ``W − Ŵ`` into a sparse outlier part ``W_e`` by the generalised soft
threshold ``shrink(x) = sign(x)·max(|x| − |x|^(p−1)/β, 0)``, then set
``z = mean(Q − (W − W_e)/s)`` per group; ``β`` starts at 10 and grows by
``κ = 1.01`` each iteration, for up to 20 iterations.  As in HQQ's reference
loop the iterations stop when the error stops falling (here: falls by less than
0.1 % in an iteration, `RELATIVE_TOLERANCE`); nibble tracks the
squared error per group and keeps, for each group, the zero with the lowest
squared error seen (the quantity the quality figures report).

Work is done in scaled units ``r = W/s − (Q − z)``, where the threshold
becomes ``|r| > (s^(p−2)/β)^(1/(2−p))``: only the few residuals above it need
the costly power, so they are gathered and summed per group with
``bincount`` instead of computing ``|x|^(p−1)`` for every weight.

Zero kinds: with ``zero="fp16"`` the optimised float zero is stored as fp16
(HQQ's own format, 4.25 bits per weight at g128).  With ``zero="int4"`` (the
engine exports) the float zero must land on the 4-bit grid, and rounding it
alone gives back RTN's zero in nearly every group (the min/max scale leaves
no room to move it): so each of its two integer neighbours ``floor(z)`` and
``ceil(z)`` is tried with the least-squares scale for its codes,
``s = Σ w(q − z) / Σ (q − z)²``, then one more encode / scale refit on the
winner; per group the lowest squared error wins, RTN's own parameters being a
candidate, so the result is never worse than `rtn` (`int4_zeros`).
Symmetric schemes have no zero to optimise and are refused by `quantize`.

With importance statistics (one weight ``h_j`` per input column) every error
is the weighted ``Σ h·(w − ŵ)²``, the zero update is the ``h``-weighted mean,
and the scale refits are weighted least squares.
"""

from __future__ import annotations

import numpy as np

from quant_core.formats import WeightFormat
from quant_core.quantize._groups import F32, LEVELS, GroupParameters, GroupSearch, fp16_nearest
from quant_core.quantize.rtn import asymmetric_parameters

LP_NORM = 0.7
BETA = 10.0
KAPPA = 1.01
ITERATIONS = 20
# "The error stops falling": an iteration that lowers the total squared error by less than this
# fraction ends the loop.  On a Gaussian 4096 x 4096 the gains shrink from 1.4 % to 0.04 % per
# iteration; stopping below 0.1 % ends after ~12 iterations at 20.28 dB instead of 20.30 dB after
# 20, at 60 % of the time (BENCHMARKS.md); heavy-tailed weights keep improving by more and run longer.
RELATIVE_TOLERANCE = 1e-3


def optimise_zeros(weights: F32, scales: F32, zeros: F32, iterations: int = ITERATIONS,
                   importance: F32 | None = None) -> F32:
    """HQQ's proximal zero-point loop for fixed `scales`; returns each group's best float zero.

    With `importance` (``[groups, group_size]``) the errors and the zero
    update (a mean of ``Q − (W − W_e)/s``) are weighted by each column's ``h``.

    Per iteration: ``r = (W/s + z) − Q`` with ``Q = clip(rint(W/s + z), 0, 15)``;
    its per-group squared error; the residuals above their group's threshold
    gathered (outliers are about a tenth of the weights) and shrunk with ``|r|^(p−1)``
    computed as ``exp((p−1)·log|r|)`` (vectorised, within a few float32 ulps
    of ``pow``) and summed per group by ``bincount``; per-group sums of ``r``
    by ``vecdot`` with ones.  Since an outlier has ``|r|^(2−p) > 1/β·s^(p−2)``,
    its shrunk magnitude is always positive.
    """
    rows, groups, group_size = weights.shape
    count = rows * groups
    # one row per group, [rows · groups, group_size]: NumPy broadcasts a per-group column over this 2-D shape
    # faster than over [rows, groups, group_size] (fewer inner-loop calls; quant_core/quantize/_fused.py)
    scaled = weights.reshape(count, group_size) * (np.float32(1.0) / scales).reshape(count, 1)
    shifted = np.empty_like(scaled)
    residual = np.empty_like(scaled)
    flat = residual.reshape(-1)
    magnitude = np.empty_like(scaled)
    outlier = np.empty(scaled.shape, dtype=np.bool_)
    shift = group_size.bit_length() - 1 if group_size & (group_size - 1) == 0 else None
    ones = np.ones(group_size, dtype=np.float32)
    column_weights: F32 | None = None
    weight_sum: F32 | float = float(group_size)
    if importance is not None:
        column_weights = np.ascontiguousarray(
            np.broadcast_to(importance, weights.shape).reshape(count, group_size), dtype=np.float32)
        sums = np.vecdot(column_weights, ones)
        weight_sum = np.where(sums > 0, sums, np.float32(1.0)).astype(np.float32)
    zero = zeros.astype(np.float32)
    best_zero = zero.copy()
    best_error = np.full(zero.shape, np.inf, dtype=np.float32)
    previous_total = np.inf
    beta = BETA
    scale_power = scales.astype(np.float64) ** (LP_NORM - 2.0)
    for _ in range(iterations):
        np.add(scaled, zero.reshape(count, 1), out=shifted)
        np.rint(shifted, out=residual)
        np.clip(residual, 0.0, LEVELS, out=residual)  # residual holds Q
        np.subtract(shifted, residual, out=residual)  # W/s + z − Q
        if column_weights is None:
            error = np.vecdot(residual, residual).reshape(rows, groups) * scales * scales
        else:
            error = np.vecdot(residual * column_weights, residual).reshape(rows, groups) * scales * scales
        better = error < best_error
        np.copyto(best_error, error, where=better)
        np.copyto(best_zero, zero, where=better)
        total = float(error.sum(dtype=np.float64))
        if total >= previous_total * (1.0 - RELATIVE_TOLERANCE):
            break
        previous_total = total
        weight = (scale_power / beta).astype(np.float32).reshape(-1)
        threshold = (weight ** (1.0 / (2.0 - LP_NORM))).astype(np.float32)
        np.abs(residual, out=magnitude)
        np.greater(magnitude, threshold.reshape(count, 1), out=outlier)
        candidates = np.flatnonzero(outlier)
        group_index = candidates >> shift if shift is not None else candidates // group_size
        values = flat[candidates]
        size = np.abs(values)
        power = np.exp(np.log(size) * np.float32(LP_NORM - 1.0))
        kept = size - weight[group_index] * power
        signed = np.copysign(np.maximum(kept, np.float32(0.0)), values)
        if column_weights is None:
            shrink_sum = np.bincount(group_index, weights=signed, minlength=count)
            residual_sum = np.vecdot(residual, ones)
        else:
            shrink_sum = np.bincount(group_index, weights=signed * column_weights.reshape(-1)[candidates],
                                     minlength=count)
            residual_sum = np.vecdot(residual, column_weights)
        update = (shrink_sum - residual_sum) / weight_sum
        zero = (zero + update.reshape(rows, groups)).astype(np.float32)
        beta *= KAPPA
    return best_zero


def int4_zeros(weights: F32, scales: F32, rtn_zeros: F32, float_zeros: F32,
               importance: F32 | None = None) -> GroupParameters:
    """Integer zeros (and refitted fp16 scales) from HQQ's float zeros, never worse than RTN (module docstring)."""
    search = GroupSearch(weights, "int4", importance)
    search.consider(scales, rtn_zeros)
    for neighbour in (np.floor(float_zeros), np.ceil(float_zeros)):
        candidate = np.clip(neighbour, 0.0, LEVELS).astype(np.float32)
        codes = search.consider(scales, candidate)
        search.consider(search.refit_scale(codes, candidate), candidate)
    zeros = search.zeros.copy()
    codes = search.consider(search.scales.copy(), zeros)
    search.consider(search.refit_scale(codes, zeros), zeros)
    return GroupParameters(search.scales, search.zeros)


def hqq(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat,
        importance: F32 | None = None) -> GroupParameters:
    """HQQ-optimised zeros with the min/max scale (module docstring): fp16 zeros, or projected to int4."""
    if scheme.zero == "fp16":
        scales, zeros = asymmetric_parameters(w_min, w_max, scheme)
        best = optimise_zeros(weights, scales, zeros, importance=importance)
        return GroupParameters(scales, fp16_nearest(best))
    lo = np.minimum(w_min, np.float32(0.0))
    hi = np.maximum(w_max, np.float32(0.0))
    scales, zeros = asymmetric_parameters(lo, hi, scheme)
    best = optimise_zeros(weights, scales, zeros, importance=importance)
    return int4_zeros(weights, scales, zeros, best, importance)
