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
    GroupSearch,
    fp16_nearest,
    nonzero_scale,
)
from quant_core.quantize.rtn import asymmetric_parameters, symmetric_scales

FACTORS = np.linspace(0.80, 1.05, 11, dtype=np.float32)
REFINE_STEPS = 3


def refit(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat,
          importance: F32 | None = None) -> GroupParameters:
    """Scale grid + least-squares refit of scale and zero, best per group (module docstring).

    With `importance` every error and least-squares fit is importance-weighted.
    """
    search = GroupSearch(weights, scheme.zero, importance)
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
