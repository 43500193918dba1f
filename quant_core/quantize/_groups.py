"""Shared pieces of the group-wise methods: the per-chunk contract and fp16-exact parameters.

Every calibration-free method works on one chunk of rows reshaped to
``w [rows, groups, group_size]`` (float32, read-only) with the per-group
minimum and maximum the driver already computed, and returns
`GroupParameters`: per-group scales and zeros that are exactly representable
in what the payload stores (fp16 scales; integer zeros, fp16 zeros, or the
implicit 8 of symmetric schemes).  The driver then encodes the codes
(quant_core/quantize/_fused.py: ``clip(rint(w·(1/s)) + z, 0, 15)`` for integer
zeros, ``clip(rint(w·(1/s) + z), 0, 15)`` for fp16 zeros), packs them and
measures ``(code − zero) × scale`` against ``w``, so the figures describe
exactly what `dequantize` gives back.  The searches rank their candidates
with `encode_scored`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidTensor

F32 = NDArray[np.float32]

FP16_MAX = 65504.0
LEVELS = 15.0  # largest 4-bit code
SYMMETRIC_ZERO = 8.0
_FP16_MIN_NORMAL = 2.0 ** -14
_FP16_DROPPED_BITS = (1 << 13) - 1  # float32 keeps 23 mantissa bits, fp16 10


@dataclass(frozen=True, slots=True)
class GroupParameters:
    """Per-group scales (fp16-exact, non-zero) and zeros ``[rows, groups]``, as float32."""

    scales: F32
    zeros: F32


def fp16_ceil(values: F32) -> F32:
    """Round non-negative values up to the next fp16 (as float32), so a range never outgrows 15 steps.

    Zero stays zero; values that overflow fp16 raise `InvalidTensor` (an fp16
    scale cannot describe weights beyond about 15 × 65504 / 2).  In fp16's
    normal range (≥ 2^-14) this is integer arithmetic on the float32 bits,
    ``(bits + 0x1FFF) & ~0x1FFF``: it keeps the 10 mantissa bits fp16 has and
    carries into them (and on into the exponent) when any dropped bit is set,
    which is rounding up; about ten times faster than NumPy's float16 casts.
    Smaller values (fp16 subnormals, where the spacing is fixed at 2^-24) go
    through the casts.
    """
    if values.size and float(values.max()) > FP16_MAX:
        raise InvalidTensor(
            f"a group's scale {float(values.max()):.6g} exceeds the fp16 maximum {FP16_MAX}; "
            "weights this large cannot be stored with fp16 scales", field="file"
        )
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = np.bitwise_and(bits + np.uint32(_FP16_DROPPED_BITS), np.uint32(~_FP16_DROPPED_BITS & 0xFFFFFFFF))
    result = rounded.view(np.float32)
    subnormal = ~(values >= np.float32(_FP16_MIN_NORMAL))  # NaN too: the casts keep it NaN
    if subnormal.any():
        result[subnormal] = _fp16_ceil_by_casts(values[subnormal])
    return cast(F32, result)


def _fp16_ceil_by_casts(values: F32) -> F32:
    """`fp16_ceil` through NumPy's float16 casts and ``nextafter`` (any magnitude fp16 can hold)."""
    half = values.astype(np.float16)
    low = half.astype(np.float32) < values
    if low.any():
        half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half.astype(np.float32)


def fp16_nearest(values: F32) -> F32:
    """Round to the nearest fp16 (as float32); overflow raises `InvalidTensor`."""
    if values.size and float(np.abs(values).max()) > FP16_MAX:
        raise InvalidTensor(
            f"a value {float(np.abs(values).max()):.6g} to store as fp16 exceeds the fp16 maximum {FP16_MAX}",
            field="file",
        )
    return values.astype(np.float16).astype(np.float32)


def fp16_floor(values: F32) -> F32:
    """Round positive fp16-normal values (≥ 2^-14, as float32) down to an fp16: drop the 13 mantissa bits fp16 lacks."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return cast(F32, np.bitwise_and(bits, np.uint32(~_FP16_DROPPED_BITS & 0xFFFFFFFF)).view(np.float32))


def within_fp16(parameters: GroupParameters, w_min: F32, w_max: F32, integer_zeros: bool,
                every_code: bool = False) -> GroupParameters:
    """`parameters` with smaller scales where a group's weights fit fp16 but their codes would not decode in it.

    Engines dequantize ``(q − z) · s`` in fp16, and a scale rounded up (or
    llama.cpp's ``m / −8``) can push an extreme code past 65504: a group
    holding 65504 got ``s = 4368``, ``15 · s = 65520``, which is ``inf`` in
    fp16.  Such a group (weights within ±65504) gets the largest fp16 scale
    at which the codes its extremes map to (by the encoder's rounding; or,
    with `every_code`, all 16 codes, for GPTQ, whose error feedback can
    reach any of them) decode within ±65504; its zero stays, and the driver
    clips the codes, so the extreme weights may lose a little more than half
    a step.  Groups beyond fp16's range (bfloat16 or float32 sources) are
    left as they are: no fp16 decode can hold them.  Returns `parameters`
    itself when no group needs it, which one comparison decides for every
    tensor whose scales are under 65504 / 15.
    """
    scales, zeros = parameters.scales, parameters.zeros  # scales may be negative (llama.cpp's m / −8)
    if scales.size == 0 or (integer_zeros and max(float(scales.max()), -float(scales.min())) * LEVELS <= FP16_MAX):
        return parameters
    inside = (w_min >= np.float32(-FP16_MAX)) & (w_max <= np.float32(FP16_MAX))
    scales = scales.copy()
    for _ in range(4):  # each pass only shrinks scales; one is enough unless rounding lands on the edge again
        if every_code:
            reach = np.maximum(np.abs(zeros), np.abs(np.float32(LEVELS) - zeros))
        else:
            inverse = np.float32(1.0) / scales
            if integer_zeros:
                low, high = np.rint(w_min * inverse) + zeros, np.rint(w_max * inverse) + zeros
            else:
                low, high = np.rint(w_min * inverse + zeros), np.rint(w_max * inverse + zeros)
            low, high = np.clip(low, 0.0, LEVELS), np.clip(high, 0.0, LEVELS)
            reach = np.maximum(np.abs(low - zeros), np.abs(high - zeros))
        over = inside & (reach * np.abs(scales) > np.float32(FP16_MAX))
        if not over.any():
            break
        largest = fp16_floor((np.float32(FP16_MAX) / reach[over]).astype(np.float32))
        scales[over] = np.copysign(np.minimum(np.abs(scales[over]), largest), scales[over])
    return GroupParameters(scales, zeros)


def zeros_at_least(parameters: GroupParameters, w_min: F32, w_max: F32, minimum: int) -> GroupParameters:
    """`parameters` with every integer zero at least `minimum` (GPTQ checkpoint v1 stores zero − 1, so needs 1).

    A group whose zero is lower gets zero `minimum` and the smallest fp16
    scale whose grid still spans its range ``[min(w_min, 0), max(w_max, 0)]``:
    ``s = max(hi / (15 − minimum), −lo / minimum)`` rounded up.  For `rtn` that
    is the same round-to-nearest on a grid shifted by `minimum` codes (every
    error within half a step); the searching methods fall back to it for those
    groups.  Returns `parameters` itself when no zero is below `minimum`.
    """
    if minimum <= 0:
        return parameters
    low = parameters.zeros < minimum
    if not low.any():
        return parameters
    scales, zeros = parameters.scales.copy(), parameters.zeros.copy()
    lo = np.minimum(w_min[low], np.float32(0.0))
    hi = np.maximum(w_max[low], np.float32(0.0))
    needed = np.maximum(hi / np.float32(LEVELS - minimum), -lo / np.float32(minimum)).astype(np.float32)
    scales[low] = nonzero_scale(fp16_ceil(needed))
    zeros[low] = np.float32(minimum)
    return GroupParameters(scales, zeros)


def nonzero_scale(scales: F32) -> F32:
    """Scales with zeros (constant-zero groups) replaced by 1, so codes stay defined (`scales` when none is 0)."""
    zero = scales == 0
    if not zero.any():
        return scales
    return np.where(zero, np.float32(1.0), scales).astype(np.float32)


def encode_scored(weights: F32, scales: F32, zeros: F32, codes: F32, scratch: F32,
                  importance: F32 | None = None) -> F32:
    """Codes ``clip(rint(w·(1/s) + z), 0, 15)`` into `codes`, returning each group's squared error.

    With `importance` (``[groups, group_size]``, one weight per input column,
    broadcast over the rows) the error is the importance-weighted one,
    ``s² · Σ h · (w·(1/s) + z − q)²``.

    The error is taken in scaled units, ``s² · Σ (w·(1/s) + z − q)²``: six
    passes with two broadcasts, against eight with four for encoding and then
    measuring ``w − (q − z)·s``.  It is the stored error up to float32 rounding (about
    1e-7 relative), which is all a search needs to rank candidates; the
    figures reported are always measured on the stored result.  (For integer
    zeros ``rint(a + z)`` can break an exact tie differently from the
    driver's ``rint(a) + z``; the driver encodes the winner itself.)
    """
    inverse = (np.float32(1.0) / scales)[..., None]
    np.multiply(weights, inverse, out=scratch)
    scratch += zeros[..., None]
    np.rint(scratch, out=codes)
    np.clip(codes, 0.0, LEVELS, out=codes)
    scratch -= codes
    if importance is not None:
        return cast(F32, np.vecdot(scratch * importance, scratch) * (scales * scales))
    return cast(F32, np.vecdot(scratch, scratch) * (scales * scales))


class GroupSearch:
    """Per-group best (scale, zero) with its (importance-weighted) squared error, updated candidate by candidate.

    `importance` (``[groups, group_size]`` or None) weights each column's squared
    error by ``h_j``; the least-squares refits then solve the weighted problems
    (``Σ h·w·q`` for ``Σ w·q`` and so on).  Without it every sum is the plain one.
    """

    def __init__(self, weights: F32, zero_kind: str, importance: F32 | None = None) -> None:
        self.weights = weights
        self.zero_kind = zero_kind
        self.importance = importance
        self.codes = np.empty_like(weights)
        self.scratch = np.empty_like(weights)
        shape = weights.shape[:2]
        self.error = np.full(shape, np.inf, dtype=np.float32)
        self.scales = np.ones(shape, dtype=np.float32)
        self.zeros = np.zeros(shape, dtype=np.float32)
        # code sums by a dot with ones (a gufunc, ~3x faster than sum(axis=-1)); exact, as sums of
        # at most a few thousand integers ≤ 15 are in float32
        self.ones = np.ones(weights.shape[-1], dtype=np.float32)
        if importance is None:
            self.weighted = weights
            self.sum_w = weights.sum(axis=-1, dtype=np.float32)
            self.total: F32 | np.float32 = np.float32(weights.shape[-1])
        else:
            self.weighted = (weights * importance).astype(np.float32)
            self.sum_w = self.weighted.sum(axis=-1, dtype=np.float32)
            self.total = np.broadcast_to(np.vecdot(importance, self.ones), shape).astype(np.float32)

    def consider(self, scales: F32, zeros: F32) -> F32:
        """Encode with (scales, zeros), keep improvements; returns the codes (scratch, reused)."""
        error = encode_scored(self.weights, scales, zeros, self.codes, self.scratch, self.importance)
        better = error < self.error
        np.copyto(self.error, error, where=better)
        np.copyto(self.scales, scales, where=better)
        np.copyto(self.zeros, zeros, where=better)
        return self.codes

    def refit(self, codes: F32, zeros: F32 | None) -> tuple[F32, F32]:
        """Least-squares (scale, zero) for `codes`: the scale alone when `zeros` is given."""
        total = self.total
        sum_wq = np.vecdot(self.weighted, codes)
        if self.importance is None:
            sum_q = np.vecdot(codes, self.ones)
            sum_qq = np.vecdot(codes, codes)
        else:
            sum_q = np.vecdot(codes, np.broadcast_to(self.importance, codes.shape))
            sum_qq = np.vecdot(codes * self.importance, codes)
        if zeros is None:
            # w ≈ a·q + b: the make_qkx2 least-squares step
            determinant = total * sum_qq - sum_q * sum_q
            safe = np.where(determinant > 0, determinant, np.float32(1.0))
            slope = np.where(determinant > 0, (total * sum_wq - sum_q * self.sum_w) / safe, 0.0)
            safe_total = np.where(total > 0, total, np.float32(1.0))
            intercept = (self.sum_w - slope * sum_q) / safe_total
            scales = nonzero_scale(fp16_nearest(np.abs(slope).astype(np.float32)))
            raw = (-intercept / scales).astype(np.float32)
            if self.zero_kind == "fp16":
                return scales, fp16_nearest(raw)
            zeros = np.clip(np.rint(raw), 0.0, LEVELS).astype(np.float32)
        return self.scale_for(sum_wq, sum_q, sum_qq, zeros), zeros

    def scale_for(self, sum_wq: F32, sum_q: F32, sum_qq: F32, zeros: F32) -> F32:
        """The least-squares scale for a fixed zero, ``s = Σ h·w(q − z) / Σ h·(q − z)²``, as fp16."""
        numerator = sum_wq - zeros * self.sum_w
        denominator = sum_qq - 2 * zeros * sum_q + self.total * zeros * zeros
        fitted = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)
        return nonzero_scale(fp16_nearest(np.abs(fitted).astype(np.float32)))

    def refit_scale(self, codes: F32, zeros: F32) -> F32:
        """The least-squares fp16 scale of `codes` for fixed `zeros`."""
        return self.refit(codes, zeros)[0]
