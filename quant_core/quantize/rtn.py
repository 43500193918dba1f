"""Round-to-nearest: asymmetric min/max and the symmetric scale rules.

Asymmetric (`rtn`), as GPTQ's quantizer without search: the group range is
``[lo, hi] = [min(w_min, 0), max(w_max, 0)]`` (0 is always representable, as
with an integer zero), the scale ``s = (hi − lo) / 15`` rounded **up** to fp16,
the zero ``z = clip(rint(−lo / s), 0, 15)`` (or, for ``zero="fp16"`` schemes,
``−lo / s`` rounded to fp16), and the codes ``clip(rint(w / s + z), 0, 15)``.
Rounding the scale up keeps ``hi`` within 15 steps of ``lo``, so every weight
lands within half a step of its code's value: ``|w − ŵ| ≤ s / 2`` (up to
float32 rounding of ``w / s``, about 1e-6 of a step).  One exception: a
group whose weights reach within a step of ±65504 and whose extreme code
would decode past the largest fp16 gets the largest scale that keeps it
inside (`within_fp16`), so that fp16 engines do not read ``inf``; its
extreme weights may then lose a little more than half a step.

Symmetric rules (dequantize ``(q − 8) × s``, no stored zero), measured on the
seeded 4096 × 4096 Gaussian and Student-t (df=3) at g128 (BENCHMARKS.md,
"Quantizer (issue 3)"):

* ``absmax/7``: ``s = max|w| / 7``, codes in [1, 15]; wastes the code 0.
* ``2absmax/15``: ``s = 2·max|w| / 15``; ±max|w| sits at ±7.5 steps.
* ``q4_0``: llama.cpp's Q4_0 rule ``s = m / −8`` with ``m`` the signed value of
  largest magnitude, which maps exactly to code 0; uses all 16 levels.

``q4_0`` measured best on both distributions and is the default of `rtn`
on symmetric schemes and of `rtn-sym` (the others stay available as
``rtn-sym-absmax7`` and ``rtn-sym-2absmax15``).

With importance statistics (one weight ``h_j`` per input column) `rtn` keeps
its codes' grid but refits each group's scale, for its zero, by weighted least
squares, ``s = Σ h·w(q − z) / Σ h·(q − z)²``, re-encoding and refitting
`WEIGHTED_REFITS` times and keeping, per group, whichever of these and the plain
RTN parameters has the lowest importance-weighted error (`rtn_weighted`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from quant_core.formats import WeightFormat
from quant_core.quantize._groups import (
    F32,
    LEVELS,
    SYMMETRIC_ZERO,
    GroupParameters,
    GroupSearch,
    fp16_ceil,
    fp16_nearest,
    nonzero_scale,
)

WEIGHTED_REFITS = 2
SymmetricRule = Literal["absmax/7", "2absmax/15", "q4_0"]
DEFAULT_SYMMETRIC_RULE: SymmetricRule = "q4_0"


def asymmetric_parameters(lo: F32, hi: F32, scheme: WeightFormat) -> tuple[F32, F32]:
    """fp16-exact scales and zeros (integer or fp16 by `scheme.zero`) for group ranges ``[lo, hi]``.

    `lo` must be ≤ 0 ≤ `hi` when the zero is an integer in [0, 15].  A range past float32 (±3e38) gives
    an infinite step, which `fp16_ceil` refuses like any step past fp16.
    """
    with np.errstate(over="ignore"):
        steps = ((hi - lo) / np.float32(LEVELS)).astype(np.float32)
    scales = nonzero_scale(fp16_ceil(steps))
    raw_zeros = (-lo / scales).astype(np.float32)
    if scheme.zero == "fp16":
        zeros = fp16_nearest(raw_zeros)
    else:
        zeros = np.clip(np.rint(raw_zeros), 0.0, LEVELS).astype(np.float32)
    return scales, zeros


def rtn_asymmetric(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat) -> GroupParameters:
    """Round-to-nearest with min/max range (module docstring); `scheme` picks int4 or fp16 zeros."""
    lo = np.minimum(w_min, np.float32(0.0))
    hi = np.maximum(w_max, np.float32(0.0))
    if scheme.zero == "fp16":
        lo, hi = w_min, w_max
    scales, zeros = asymmetric_parameters(lo, hi, scheme)
    return GroupParameters(scales, zeros)


def symmetric_scales(w_min: F32, w_max: F32, rule: SymmetricRule) -> F32:
    """The fp16-exact symmetric scale of each group under `rule` (module docstring)."""
    absmax = np.maximum(-w_min, w_max)
    if rule == "absmax/7":
        return nonzero_scale(fp16_ceil((absmax / np.float32(7.0)).astype(np.float32)))
    if rule == "2absmax/15":
        return nonzero_scale(fp16_ceil((absmax * np.float32(2.0 / 15.0)).astype(np.float32)))
    signed_max = np.where(-w_min > w_max, w_min, w_max)
    return nonzero_scale(fp16_nearest((signed_max / np.float32(-8.0)).astype(np.float32)))


def rtn_symmetric(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat,
                  rule: SymmetricRule = DEFAULT_SYMMETRIC_RULE) -> GroupParameters:
    """Symmetric round-to-nearest: codes ``clip(rint(w / s) + 8, 0, 15)``, zero 8.

    On an asymmetric scheme the stored zeros are all 8 (a valid, if wasteful, encoding).
    """
    del scheme, weights
    scales = symmetric_scales(w_min, w_max, rule)
    zeros = np.full(scales.shape, SYMMETRIC_ZERO, dtype=np.float32)
    return GroupParameters(scales, zeros)


def rtn(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat) -> GroupParameters:
    """`rtn`: asymmetric min/max, or the default symmetric rule when `scheme` is symmetric."""
    if scheme.symmetric:
        return rtn_symmetric(weights, w_min, w_max, scheme)
    return rtn_asymmetric(weights, w_min, w_max, scheme)


def rtn_weighted(weights: F32, w_min: F32, w_max: F32, scheme: WeightFormat, importance: F32) -> GroupParameters:
    """`rtn`, then weighted least-squares refits of each group's scale for its zero (module docstring).

    Never worse than `rtn` on the importance-weighted error of a group: the
    plain parameters are the first candidate.
    """
    base = rtn(weights, w_min, w_max, scheme)
    search = GroupSearch(weights, scheme.zero, importance)
    search.consider(base.scales, base.zeros)
    for _ in range(WEIGHTED_REFITS):
        zeros = search.zeros.copy()
        current = search.scales.copy()
        codes = search.consider(current, zeros)
        # the q4_0 rule's scale may be negative (it maps the signed max to code 0): keep its sign
        search.consider(np.copysign(search.refit_scale(codes, zeros), current).astype(np.float32), zeros)
    return GroupParameters(search.scales, search.zeros)
