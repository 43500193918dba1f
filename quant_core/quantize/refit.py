"""`refit`: nibble's best calibration-free method at 4.156 bits per weight (g128, int4 zero, fp16 scale).

llama.cpp's ``make_qkx2`` reaches its quality by trying several scales and
refitting ``scale`` and ``min`` by least squares on each candidate's codes; it
stores a float minimum (4.25 bits per weight at g128).  nibble stores an
integer zero, so the refit is adapted:

1. for each candidate scale ``s_k = f_k · (hi − lo) / 15`` (a grid of
   `FACTORS`), centre the 16-level grid on the group's range,
   ``z_k = clip(rint(7.5 − (lo + hi) / (2 s_k)), 0, 15)``, and encode;
2. fit ``w ≈ a·q + b`` by least squares on those codes (the make_qkx2 step),
   turn it into an integer zero ``z = clip(rint(−b / a), 0, 15)``, and refit
   the scale for that zero, ``s = Σ w(q − z) / Σ (q − z)²``, rounded to fp16;
3. re-encode with ``(s, z)`` and keep, per group, the candidate with the
   lowest squared error (RTN's own parameters are a candidate too, so the
   result is never worse than `rtn`);
4. alternate encode / least-squares refit for `REFINE_STEPS` more rounds on
   the winner, the first round also trying the neighbouring zeros ``z ± 1``
   (each with its least-squares scale), keeping only improvements.

With ``zero="fp16"`` step 2 keeps the float zero ``−b / a`` (rounded to fp16),
the make_qkx2 setting; symmetric schemes refit the scale alone with zero 8.
Everything is vectorised over the groups of a chunk.

How close this is to the best the format allows: benchmarks/refit_ceiling.py finds,
exactly, the best fp16 scale for each of the 16 integer zeros of every group (the error
is a piecewise quadratic in the scale; it scans every piece).  On the first 256 rows of
issue 3's matrices that ceiling is 20.470 dB (Gaussian) and 16.028 dB (Student-t df=3);
this search reaches 20.465 and 16.027 dB.  make_qkx2's 20.64 / 16.33 dB are out of reach
of any 4-bit integer zero; a search over three zeros around the centred one for each of
the 11 scales, with two least-squares steps each, closes 80 % of the remaining 0.005 dB
at 2.2x the time, so the cheaper search is kept.
"""

from __future__ import annotations

import numpy as np

from quant_core.formats import WeightFormat
from quant_core.quantize._groups import (
    F32,
    LEVELS,
    SYMMETRIC_ZERO,
    GroupParameters,
    encode_scored,
    fp16_nearest,
    nonzero_scale,
)
from quant_core.quantize.rtn import asymmetric_parameters, symmetric_scales

FACTORS = np.linspace(0.80, 1.05, 11, dtype=np.float32)
REFINE_STEPS = 3


class _Search:
    """Per-group best (scale, zero) with its squared error, updated candidate by candidate."""

    def __init__(self, weights: F32, scheme: WeightFormat) -> None:
        self.weights = weights
        self.scheme = scheme
        self.codes = np.empty_like(weights)
        self.scratch = np.empty_like(weights)
        shape = weights.shape[:2]
        self.error = np.full(shape, np.inf, dtype=np.float32)
        self.scales = np.ones(shape, dtype=np.float32)
        self.zeros = np.zeros(shape, dtype=np.float32)
        self.sum_w = weights.sum(axis=-1, dtype=np.float32)
        # code sums by a dot with ones (a gufunc, ~3x faster than sum(axis=-1)); exact, as sums of
        # at most a few thousand integers ≤ 15 are in float32
        self.ones = np.ones(weights.shape[-1], dtype=np.float32)

    def consider(self, scales: F32, zeros: F32) -> F32:
        """Encode with (scales, zeros), keep improvements; returns the codes (scratch, reused)."""
        error = encode_scored(self.weights, scales, zeros, self.codes, self.scratch)
        better = error < self.error
        np.copyto(self.error, error, where=better)
        np.copyto(self.scales, scales, where=better)
        np.copyto(self.zeros, zeros, where=better)
        return self.codes

    def refit(self, codes: F32, zeros: F32 | None) -> tuple[F32, F32]:
        """Least-squares (scale, zero) for `codes`: the scale alone when `zeros` is given."""
        group_size = np.float32(codes.shape[-1])
        sum_wq = np.vecdot(self.weights, codes)
        sum_q = np.vecdot(codes, self.ones)
        sum_qq = np.vecdot(codes, codes)
        if zeros is None:
            # w ≈ a·q + b: the make_qkx2 least-squares step
            determinant = group_size * sum_qq - sum_q * sum_q
            safe = np.where(determinant > 0, determinant, np.float32(1.0))
            slope = np.where(determinant > 0, (group_size * sum_wq - sum_q * self.sum_w) / safe, 0.0)
            intercept = (self.sum_w - slope * sum_q) / group_size
            scales = nonzero_scale(fp16_nearest(np.abs(slope).astype(np.float32)))
            raw = (-intercept / scales).astype(np.float32)
            if self.scheme.zero == "fp16":
                return scales, fp16_nearest(raw)
            zeros = np.clip(np.rint(raw), 0.0, LEVELS).astype(np.float32)
        # fixed zero: s = Σ w(q − z) / Σ (q − z)²
        numerator = sum_wq - zeros * self.sum_w
        denominator = sum_qq - 2 * zeros * sum_q + group_size * zeros * zeros
        fitted = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)
        return nonzero_scale(fp16_nearest(np.abs(fitted).astype(np.float32))), zeros


def refit(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat) -> GroupParameters:
    """Scale grid + least-squares refit of scale and zero, best per group (module docstring)."""
    search = _Search(weights, scheme)
    if scheme.symmetric:
        base = symmetric_scales(w_min, w_max, "2absmax/15")
        eight = np.full(base.shape, SYMMETRIC_ZERO, dtype=np.float32)
        search.consider(symmetric_scales(w_min, w_max, "q4_0"), eight)
        for factor in FACTORS:
            codes = search.consider(nonzero_scale(fp16_nearest(base * factor)), eight)
            search.consider(*search.refit(codes, eight))
    else:
        if scheme.zero == "fp16":
            lo, hi = w_min, w_max
        else:
            lo = np.minimum(w_min, np.float32(0.0))
            hi = np.maximum(w_max, np.float32(0.0))
        search.consider(*asymmetric_parameters(lo, hi, scheme))
        middle = (lo + hi) * np.float32(0.5)
        for factor in FACTORS:
            scales = nonzero_scale(fp16_nearest(((hi - lo) * (factor / LEVELS)).astype(np.float32)))
            raw = (np.float32(7.5) - middle / scales).astype(np.float32)
            zeros = fp16_nearest(raw) if scheme.zero == "fp16" else np.clip(np.rint(raw), 0.0, LEVELS)
            codes = search.consider(scales, zeros.astype(np.float32))
            search.consider(*search.refit(codes, None))
    for step in range(REFINE_STEPS):
        zeros = search.zeros.copy()
        codes = search.consider(search.scales.copy(), zeros)
        search.consider(*search.refit(codes, None if not scheme.symmetric else zeros))
        # neighbouring zeros only in the first round: in the second and third they improved 1 of
        # 8192 groups on 256 Gaussian rows (by < 1e-4 of the error) and cost 4 of 41 encodes each
        if step == 0 and not scheme.symmetric and scheme.zero == "int4":
            for shift in (-1.0, 1.0):
                shifted = np.clip(search.zeros + np.float32(shift), 0.0, LEVELS).astype(np.float32)
                codes = search.consider(search.scales.copy(), shifted)
                search.consider(*search.refit(codes, shifted))
    return GroupParameters(search.scales, search.zeros)
