"""`hqq`: half-quadratic quantization of the zero point (Badri & Shaji 2023), no calibration data.

The scale stays the min/max one (rounded up to fp16); the zero is optimised
by HQQ's proximal loop on ``min_z ‖W − (Q − z)·s‖_p^p`` with ``p = 0.7``:
split ``W − Ŵ`` into a sparse outlier part ``W_e`` by the generalised soft
threshold ``shrink(x) = sign(x)·max(|x| − |x|^(p−1)/β, 0)``, then set
``z = mean(Q − (W − W_e)/s)`` per group; ``β`` starts at 10 and grows by
``κ = 1.01`` each iteration, for up to 20 iterations.  As in HQQ's reference
loop the iterations stop when the error stops falling; nibble tracks the
squared error per group and keeps, for each group, the zero with the lowest
squared error seen (the quantity the quality figures report).

Work is done in scaled units ``r = W/s − (Q − z)``, where the threshold
becomes ``|r| > (s^(p−2)/β)^(1/(2−p))``: only the few residuals above it need
the costly power, so they are gathered and summed per group with
``bincount`` instead of computing ``|x|^(p−1)`` for every weight.

Zero kinds: with ``zero="fp16"`` the optimised float zero is stored as fp16
(HQQ's own format, 4.25 bits per weight at g128).  With ``zero="int4"`` the
optimised zero is rounded to the nearest integer in [0, 15] and the codes are
recomputed: the variant that shows what a 4-bit zero costs HQQ.  Symmetric
schemes have no zero to optimise and are refused by `quantize`.
"""

from __future__ import annotations

import numpy as np

from quant_core.formats import WeightFormat
from quant_core.quantize._groups import F32, LEVELS, GroupParameters, fp16_nearest
from quant_core.quantize.rtn import asymmetric_parameters

LP_NORM = 0.7
BETA = 10.0
KAPPA = 1.01
ITERATIONS = 20


def optimise_zeros(weights: F32, scales: F32, zeros: F32, iterations: int = ITERATIONS) -> F32:
    """HQQ's proximal zero-point loop for fixed `scales`; returns each group's best float zero."""
    rows, groups, group_size = weights.shape
    scaled = weights * (np.float32(1.0) / scales)[..., None]
    residual = np.empty_like(scaled)
    zero = zeros.astype(np.float32)
    best_zero = zero.copy()
    best_error = np.full(zero.shape, np.inf, dtype=np.float32)
    previous_total = np.inf
    beta = BETA
    scale_power = scales.astype(np.float64) ** (LP_NORM - 2.0)
    group_of = None
    for _ in range(iterations):
        np.add(scaled, zero[..., None], out=residual)
        np.rint(residual, out=residual)
        np.clip(residual, 0.0, LEVELS, out=residual)  # residual holds Q
        np.subtract(scaled, residual, out=residual)
        residual += zero[..., None]  # W/s − (Q − z)
        error = np.vecdot(residual, residual) * scales * scales
        better = error < best_error
        np.copyto(best_error, error, where=better)
        np.copyto(best_zero, zero, where=better)
        total = float(error.sum(dtype=np.float64))
        if total >= previous_total:
            break
        previous_total = total
        weight = (scale_power / beta).astype(np.float32)
        threshold = (weight ** (1.0 / (2.0 - LP_NORM))).astype(np.float32)
        magnitude = np.abs(residual)
        outliers = np.flatnonzero(magnitude > threshold[..., None])
        shrink_sum = np.zeros(rows * groups, dtype=np.float64)
        if outliers.size:
            if group_of is None:
                group_of = np.arange(rows * groups, dtype=np.int64)
            group_index = outliers // group_size
            size = magnitude.reshape(-1)[outliers]
            kept = size - weight.reshape(-1)[group_index] * size ** np.float32(LP_NORM - 1.0)
            signed = np.copysign(np.maximum(kept, 0.0), residual.reshape(-1)[outliers])
            shrink_sum = np.bincount(group_index, weights=signed, minlength=rows * groups)
        mean_residual = residual.mean(axis=-1, dtype=np.float32)
        zero = (zero - mean_residual + (shrink_sum / group_size).reshape(rows, groups)).astype(np.float32)
        beta *= KAPPA
    return best_zero


def hqq(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat) -> GroupParameters:
    """HQQ-optimised zeros with the min/max scale (module docstring); fp16 or rounded int4 zeros."""
    if scheme.zero == "fp16":
        scales, zeros = asymmetric_parameters(w_min, w_max, scheme)
    else:
        lo = np.minimum(w_min, np.float32(0.0))
        hi = np.maximum(w_max, np.float32(0.0))
        scales, zeros = asymmetric_parameters(lo, hi, scheme)
    best = optimise_zeros(weights, scales, zeros)
    rounded = np.clip(np.rint(best), 0.0, LEVELS).astype(np.float32)
    stored = fp16_nearest(best) if scheme.zero == "fp16" else rounded
    return GroupParameters(scales, stored)
