"""`clip`: per-group search of a clipping range that minimises squared error.

For each group the candidate ranges are ``[p·lo, p·hi]`` for shrink factors
``p`` on a grid (the GPTQ/AWQ "mse" clipping search, here with the squared
error as the norm), evaluated for all groups of a chunk at once.  Each
candidate's scale is rounded up to fp16 before its codes are computed, so the
error compared is the error stored.  The search is coarse-to-fine: a grid of
`COARSE` factors from 1.0 down to 0.5, then `FINE` factors around each group's
best one; a group keeps ``p = 1`` (plain RTN) unless a shrink lowers its error.
Symmetric schemes shrink the signed-max (Q4_0) range the same way.
"""

from __future__ import annotations

import numpy as np

from quant_core.formats import WeightFormat
from quant_core.quantize._groups import F32, SYMMETRIC_ZERO, GroupParameters, encode_scored
from quant_core.quantize.rtn import asymmetric_parameters, symmetric_scales

COARSE = np.linspace(1.0, 0.5, 11, dtype=np.float32)
FINE = np.array([-0.03, -0.02, -0.01, 0.01, 0.02, 0.03], dtype=np.float32)


def _parameters(lo: F32, hi: F32, factor: F32, scheme: WeightFormat) -> tuple[F32, F32]:
    """Scales and zeros of the range shrunk by `factor` (per group)."""
    if scheme.symmetric:
        scales = symmetric_scales(lo * factor, hi * factor, "q4_0")
        return scales, np.full(scales.shape, SYMMETRIC_ZERO, dtype=np.float32)
    return asymmetric_parameters(lo * factor, hi * factor, scheme)


def clip(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat,
         importance: F32 | None = None) -> GroupParameters:
    """Per-group best shrink factor of the min/max range by squared error (module docstring).

    With `importance` (``[groups, group_size]``) the error ranked is the importance-weighted one.
    """
    if scheme.symmetric or scheme.zero == "fp16":
        lo, hi = w_min, w_max
    else:
        lo = np.minimum(w_min, np.float32(0.0))
        hi = np.maximum(w_max, np.float32(0.0))
    codes = np.empty_like(weights)
    scratch = np.empty_like(weights)
    best_error = np.full(lo.shape, np.inf, dtype=np.float32)
    best_factor = np.ones(lo.shape, dtype=np.float32)

    def consider(factor: F32) -> None:
        scales, zeros = _parameters(lo, hi, factor, scheme)
        error = encode_scored(weights, scales, zeros, codes, scratch, importance)
        better = error < best_error
        np.copyto(best_error, error, where=better)
        np.copyto(best_factor, factor, where=better)

    for coarse in COARSE:
        consider(np.full(lo.shape, coarse, dtype=np.float32))
    for offset in FINE:
        consider(np.clip(best_factor + offset, 0.3, 1.0).astype(np.float32))
    return GroupParameters(*_parameters(lo, hi, best_factor, scheme))
