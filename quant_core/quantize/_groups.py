"""Shared pieces of the group-wise methods: the per-chunk contract and fp16-exact parameters.

Every calibration-free method works on one chunk of rows reshaped to
``w [rows, groups, group_size]`` (float32, read-only) with the per-group
minimum and maximum the driver already computed, and returns
`GroupParameters`: per-group scales and zeros that are exactly representable
in what the payload stores (fp16 scales; integer zeros, fp16 zeros, or the
implicit 8 of symmetric schemes).  The driver then encodes the codes with
`encode`'s rule (quant_core/quantize/_fused.py, the same rule the searches
use), packs them and measures ``(code − zero) × scale`` against ``w``, so the
figures describe exactly what `dequantize` gives back.
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


@dataclass(frozen=True, slots=True)
class GroupParameters:
    """Per-group scales (fp16-exact, non-zero) and zeros ``[rows, groups]``, as float32."""

    scales: F32
    zeros: F32


def fp16_ceil(values: F32) -> F32:
    """Round non-negative values up to the next fp16 (as float32), so a range never outgrows 15 steps.

    Zero stays zero; values that overflow fp16 raise `InvalidTensor` (an fp16
    scale cannot describe weights beyond about 15 × 65504 / 2).
    """
    if values.size and float(values.max()) > FP16_MAX:
        raise InvalidTensor(
            f"a group's scale {float(values.max()):.6g} exceeds the fp16 maximum {FP16_MAX}; "
            "weights this large cannot be stored with fp16 scales"
        )
    half = values.astype(np.float16)
    low = half.astype(np.float32) < values
    if low.any():
        half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half.astype(np.float32)


def fp16_nearest(values: F32) -> F32:
    """Round to the nearest fp16 (as float32); overflow raises `InvalidTensor`."""
    if values.size and float(np.abs(values).max()) > FP16_MAX:
        raise InvalidTensor(
            f"a value {float(np.abs(values).max()):.6g} to store as fp16 exceeds the fp16 maximum {FP16_MAX}"
        )
    return values.astype(np.float16).astype(np.float32)


def nonzero_scale(scales: F32) -> F32:
    """Scales with zeros (constant-zero groups) replaced by 1, so codes stay defined."""
    return np.where(scales == 0, np.float32(1.0), scales).astype(np.float32)


def encode(weights: F32, scales: F32, zeros: F32, out: F32 | None = None, *, integer_zeros: bool = True) -> F32:
    """Codes ``clip(rint(w / s + z), 0, 15)`` as float32, for per-group `scales` and `zeros`.

    `scales` must be non-zero.  Division by the stored scale is done as a
    multiplication by its float32 reciprocal, which can move a value lying
    within one float32 ulp of a rounding boundary to the neighbouring code.
    With `integer_zeros` (int4 zeros, and the 8 of symmetric schemes) the code
    is computed as ``clip(rint(w·(1/s)) + z, 0, 15)``: the same integer as
    ``rint(w·(1/s) + z)`` save that ``w·(1/s)`` is not rounded a second time
    by the addition, and the form the fast driver (quant_core/quantize/_fused.py)
    uses, so a search and the stored codes always agree.  fp16 zeros are added
    before rounding.
    """
    inverse = (np.float32(1.0) / scales)[..., None]
    result: F32 = np.multiply(weights, inverse, out=out)
    if not integer_zeros:
        result += zeros[..., None]
    np.rint(result, out=result)
    if integer_zeros:
        result += zeros[..., None]
    np.clip(result, 0.0, LEVELS, out=result)
    return result


def squared_error(weights: F32, codes: F32, scales: F32, zeros: F32, scratch: F32 | None = None) -> F32:
    """Per-group sum of ``(w − (code − z) × s)²``; `scratch` (same shape as w) avoids an allocation."""
    diff: F32 = np.subtract(codes, zeros[..., None], out=scratch)
    diff *= scales[..., None]
    diff -= weights
    return cast(F32, np.vecdot(diff, diff))
