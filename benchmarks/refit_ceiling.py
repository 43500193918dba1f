"""The best SQNR any (scale, zero) choice can reach at int4-g128 with a 4-bit integer zero, on a row subset.

Run: ``.venv/bin/python benchmarks/refit_ceiling.py [rows]`` (default 256 rows of each matrix).
Matrices (issue 3): ``np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)``
and ``np.random.default_rng(0).standard_t(3, (4096, 4096)).astype(np.float32)``; the first
`rows` rows of each are used.

Why exhaustive is possible.  For one group ``w`` (128 values), a zero ``z`` and a scale ``s``,
the stored codes are ``q = clip(rint(w / s + z), 0, 15)`` and the error is
``E(s) = Σ (w − s·(q − z))²``.  For fixed ``z``, ``E`` is a continuous piecewise quadratic
in ``s``: the codes only change where ``w / s + z`` crosses a half-integer, i.e. at the
breakpoints ``s = |w| / d`` with ``d = j + δ`` (``j = 0, 1, …``, ``δ`` = distance from ``z``
to the first rounding threshold in the direction of ``w``).  Walking the breakpoints from
large ``s`` to small, each one moves one code one step away from ``z``, which adds ``|w|``
to ``A = Σ w·(q − z)`` and ``2d`` to ``B = Σ (q − z)²``; between two breakpoints
``E(s) = Σw² − 2sA + s²B`` is convex, so the best **fp16** scale in that segment is one of
the two fp16 neighbours of the clamped minimiser ``clip(A / B, lo, hi)``.  Sorting the
breakpoints and taking cumulative sums gives every segment at once, so the minimum over
*all* fp16 scales is exact, for each of the 16 integer zeros: the int4-zero ceiling.  (This
subsumes "fine scale grid + alternating least-squares refit until it stops improving":
every fixed point of that iteration is a segment minimiser, and all segments are scanned.)

The free-float-minimum comparison (what make_qkx2's fp16 minimum buys) runs the same sweep
for a grid of non-integer zeros ``z = i/4 + 1/64`` (fp16-exact; ``(q − z)·s`` with a
float ``z`` is ``q·s + m`` with ``m = −z·s``), then a least-squares polish of ``(s, m)``;
it is a lower bound on the float-minimum ceiling (grid-limited), which is all the
comparison needs.  A direct re-implementation of ``make_qkx2_quants`` (unweighted, llama.cpp's
``nstep = 20, rmin = −1, rdelta = 0.1``, fp16 scale and minimum) is printed too, to check the
row subset against the issue's full-matrix 20.64 / 16.33 dB.

Every ceiling is re-measured by encoding the chosen parameters the way the driver does and
computing the SQNR in float64, so the figures are of stored, decodable results.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from numpy.typing import NDArray

from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
GROUP = 128
LEVELS = 15
CHUNK_GROUPS = 512
TOP = 8  # segments per group whose fp16 scales are examined (certified below)
UNCERTIFIED = [0]  # (group, zero) pairs where a segment beyond TOP could hold a better fp16 scale


def sqnr_db(original: NDArray[np.generic], approximate: NDArray[np.generic]) -> float:
    """SQNR in dB, in float64."""
    reference = original.astype(np.float64)
    error = float(np.linalg.norm(approximate.astype(np.float64) - reference))
    return -20.0 * float(np.log10(error / float(np.linalg.norm(reference))))


def fp16_neighbours(values: F64) -> tuple[F64, F64]:
    """Largest fp16 ≤ value and smallest fp16 ≥ value (as float64), for positive finite values."""
    nearest = values.astype(np.float16)
    as64 = nearest.astype(np.float64)
    down = np.where(as64 <= values, nearest, np.nextafter(nearest, np.float16(0)))
    up = np.where(as64 >= values, nearest, np.nextafter(nearest, np.float16(np.inf)))
    return down.astype(np.float64), up.astype(np.float64)


def best_scale_for_zero(groups: F64, zero: float) -> tuple[F64, F64]:
    """Exact minimum over every fp16 scale of the group error for a fixed zero: (error, scale).

    `groups` is ``[n, 128]`` float64; `zero` may be fractional (codes still clip to [0, 15]).
    """
    n, size = groups.shape
    start = float(np.clip(np.rint(zero), 0, LEVELS))
    magnitude = np.abs(groups)
    positive = groups > 0
    # steps available away from the start code, and the first threshold's distance
    steps = np.where(positive, LEVELS - start, start)
    steps = np.where(groups == 0, 0.0, steps)
    offset = np.where(positive, start + 0.5 - zero, zero - start + 0.5)
    j = np.arange(LEVELS, dtype=np.float64)
    d = offset[..., None] + j  # [n, size, 15]
    valid = j < steps[..., None]
    breakpoints = np.where(valid, magnitude[..., None] / np.where(d > 0, d, 1.0), 0.0)
    inc_a = np.where(valid, magnitude[..., None], 0.0).reshape(n, -1)
    inc_b = np.where(valid, 2.0 * d, 0.0).reshape(n, -1)
    breakpoints = breakpoints.reshape(n, -1)
    order = np.argsort(-breakpoints, axis=1, kind="stable")
    s_sorted = np.take_along_axis(breakpoints, order, axis=1)
    q0 = start - zero
    a = np.cumsum(np.take_along_axis(inc_a, order, axis=1), axis=1) + (groups.sum(axis=1) * q0)[:, None]
    b = np.cumsum(np.take_along_axis(inc_b, order, axis=1), axis=1) + size * q0 * q0
    high = s_sorted
    low = np.concatenate([s_sorted[:, 1:], np.zeros((n, 1))], axis=1)
    minimiser = np.clip(a / np.where(b > 0, b, 1.0), low, high)
    total = np.einsum("ij,ij->i", groups, groups)[:, None]
    # continuous minimum of each segment; the fp16 optimum lies in a segment whose continuous
    # minimum is no larger than it, so the TOP best segments are checked and the choice is
    # certified when the next segment's continuous minimum is already worse
    usable = (b > 0) & (high > 0)
    continuous = np.where(usable, total - 2.0 * minimiser * a + minimiser * minimiser * b, np.inf)
    top = np.argpartition(continuous, TOP, axis=1)[:, :TOP + 1]
    top_continuous = np.take_along_axis(continuous, top, axis=1)
    rank = np.argsort(top_continuous, axis=1)
    top = np.take_along_axis(top, rank, axis=1)
    bound = np.take_along_axis(top_continuous, rank, axis=1)[:, TOP]
    top = top[:, :TOP]
    seg_a, seg_b = np.take_along_axis(a, top, axis=1), np.take_along_axis(b, top, axis=1)
    seg_low, seg_high = np.take_along_axis(low, top, axis=1), np.take_along_axis(high, top, axis=1)
    seg_min = np.take_along_axis(minimiser, top, axis=1)
    seg_total = total
    best_error = np.full(n, np.inf)
    best_scale = np.ones(n)
    rows = np.arange(n)
    for candidate in fp16_neighbours(np.maximum(seg_min, 1e-7)):
        inside = (candidate >= seg_low) & (candidate <= seg_high) & (candidate > 0) & (seg_b > 0)
        error = np.where(inside, seg_total - 2.0 * candidate * seg_a + candidate * candidate * seg_b, np.inf)
        pick = np.argmin(error, axis=1)
        chosen = error[rows, pick]
        better = chosen < best_error
        best_error = np.where(better, chosen, best_error)
        best_scale = np.where(better, candidate[rows, pick], best_scale)
    UNCERTIFIED[0] += int(np.count_nonzero(best_error > bound * (1 + 1e-12)))
    return best_error, best_scale


def encode(groups: F64, scales: F64, zeros: F64) -> F64:
    """Dequantized values as the driver stores them (float32 arithmetic, fp16 scale)."""
    w = groups.astype(np.float32)
    s = scales.astype(np.float32)[:, None]
    z = zeros.astype(np.float32)[:, None]
    if np.all(zeros == np.rint(zeros)):
        codes = np.clip(np.rint(w * (np.float32(1) / s)) + z, 0, LEVELS)
    else:
        codes = np.clip(np.rint(w * (np.float32(1) / s) + z), 0, LEVELS)
    return ((codes - z) * s).astype(np.float64)


def sweep(groups: F64, zeros: list[float]) -> tuple[F64, F64, F64]:
    """Per group, the best (scale, zero) over `zeros` with the exact fp16 scale search."""
    best_error = np.full(groups.shape[0], np.inf)
    best_scale = np.ones(groups.shape[0])
    best_zero = np.zeros(groups.shape[0])
    for start in range(0, groups.shape[0], CHUNK_GROUPS):
        part = groups[start:start + CHUNK_GROUPS]
        window = slice(start, start + part.shape[0])
        for zero in zeros:
            error, scale = best_scale_for_zero(part, zero)
            better = error < best_error[window]
            best_error[window] = np.where(better, error, best_error[window])
            best_scale[window] = np.where(better, scale, best_scale[window])
            best_zero[window] = np.where(better, zero, best_zero[window])
    return best_scale, best_zero, best_error


def polish_float_minimum(groups: F64, scales: F64, zeros: F64, rounds: int = 8) -> F64:
    """Least-squares (s, m) refit on the codes, re-encode, keep improvements; returns Ŵ."""
    best = encode(groups, scales, zeros)
    best_error = ((groups - best) ** 2).sum(axis=1)
    size = groups.shape[1]
    for _ in range(rounds):
        w = groups
        codes = np.clip(np.rint(w / scales[:, None] + zeros[:, None]), 0, LEVELS)
        sum_q, sum_qq = codes.sum(axis=1), (codes * codes).sum(axis=1)
        sum_w, sum_wq = w.sum(axis=1), (w * codes).sum(axis=1)
        det = size * sum_qq - sum_q * sum_q
        ok = det > 0
        slope = np.where(ok, (size * sum_wq - sum_q * sum_w) / np.where(ok, det, 1), scales)
        minimum = (sum_w - slope * sum_q) / size
        new_scales = np.abs(slope).astype(np.float16).astype(np.float64)
        new_scales = np.where(new_scales > 0, new_scales, scales)
        new_zeros = (-minimum / new_scales).astype(np.float16).astype(np.float64)
        candidate = encode(groups, new_scales, new_zeros)
        error = ((groups - candidate) ** 2).sum(axis=1)
        better = error < best_error
        best = np.where(better[:, None], candidate, best)
        best_error = np.where(better, error, best_error)
        scales = np.where(better, new_scales, scales)
        zeros = np.where(better, new_zeros, zeros)
    return best


def make_qkx2(groups: F64, nstep: int = 20, rmin: float = -1.0, rdelta: float = 0.1) -> F64:
    """llama.cpp's make_qkx2_quants (unit weights), fp16 scale and minimum; returns Ŵ."""
    size = groups.shape[1]
    lo = np.minimum(groups.min(axis=1), 0.0)
    hi = groups.max(axis=1)

    def dequant(scale: F64, minimum: F64) -> F64:
        s16 = scale.astype(np.float16).astype(np.float64)
        m16 = minimum.astype(np.float16).astype(np.float64)
        inverse = np.where(s16 > 0, 1.0 / np.where(s16 > 0, s16, 1), 0.0)
        codes = np.clip(np.rint((groups - m16[:, None]) * inverse[:, None]), 0, LEVELS)
        return codes * s16[:, None] + m16[:, None]

    span = np.where(hi > lo, hi - lo, 1.0)
    best_scale, best_min = span / LEVELS, lo.copy()
    best = dequant(best_scale, best_min)
    best_error = ((groups - best) ** 2).sum(axis=1)
    sum_w = groups.sum(axis=1)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + LEVELS) / span
        codes = np.clip(np.rint(iscale[:, None] * (groups - lo[:, None])), 0, LEVELS)
        sum_l, sum_l2 = codes.sum(axis=1), (codes * codes).sum(axis=1)
        sum_xl = (codes * groups).sum(axis=1)
        det = size * sum_l2 - sum_l * sum_l
        ok = det > 0
        scale = np.where(ok, (size * sum_xl - sum_l * sum_w) / np.where(ok, det, 1), best_scale)
        minimum = np.where(ok, (sum_l2 * sum_w - sum_l * sum_xl) / np.where(ok, det, 1), best_min)
        fix = minimum > 0
        scale = np.where(fix, np.where(sum_l2 > 0, sum_xl / np.where(sum_l2 > 0, sum_l2, 1), scale), scale)
        minimum = np.where(fix, 0.0, minimum)
        candidate = dequant(scale, minimum)
        error = ((groups - candidate) ** 2).sum(axis=1)
        better = error < best_error
        best = np.where(better[:, None], candidate, best)
        best_error = np.where(better, error, best_error)
    return best


def report(name: str, weights: F32) -> None:
    """Print the refit/rtn figures and the three ceilings for one matrix subset."""
    groups = weights.astype(np.float64).reshape(-1, GROUP)
    figures: list[tuple[str, float, float]] = []
    notes: list[str] = []

    def timed(label: str, action: object) -> None:
        started = time.perf_counter()
        value = action()  # type: ignore[operator]
        figures.append((label, float(value), time.perf_counter() - started))

    timed("rtn (int4 zero)", lambda: quantize(weights, int4(128), "rtn").quality.sqnr_db)
    timed("refit (int4 zero)", lambda: quantize(weights, int4(128), "refit").quality.sqnr_db)
    timed("refit (fp16 zero)", lambda: quantize(weights, int4(128, zero="fp16"), "refit").quality.sqnr_db)
    timed("make_qkx2 re-implementation (fp16 min)", lambda: sqnr_db(groups, make_qkx2(groups)))

    def integer_ceiling() -> float:
        UNCERTIFIED[0] = 0
        scales, zeros, errors = sweep(groups, [float(z) for z in range(16)])
        predicted = -10.0 * float(np.log10(errors.sum() / float((groups * groups).sum())))
        measured = sqnr_db(groups, encode(groups, scales, zeros))
        notes.append(f"(int4 ceiling: {UNCERTIFIED[0]} uncertified (group, zero) pairs; "
                     f"swept {predicted:.4f} dB, re-encoded {measured:.4f} dB)")
        return measured

    def float_ceiling() -> float:
        grid = [i / 4 + 1 / 64 for i in range(-4, 64)]  # z in [-0.98, 15.77]
        scales, zeros, _ = sweep(groups, grid)
        return sqnr_db(groups, polish_float_minimum(groups, scales, zeros))

    timed("CEILING int4 zero (exact over fp16 s, z 0..15)", integer_ceiling)
    timed("free float minimum (z grid 1/4 + exact s + LS)", float_ceiling)
    # the refit result's own value through dequantize, as a cross-check of the quality report
    check = sqnr_db(weights, dequantize(quantize(weights, int4(128), "refit")))
    print(f"{name}, rows [0, {weights.shape[0]}) of 4096x4096 (refit via dequantize: {check:.4f} dB)")
    for label, value, seconds in figures:
        print(f"  {label:50s} {value:8.4f} dB   ({seconds:6.1f} s)")
    for note in notes:
        print(f"  {note}")
    values = {label: value for label, value, _ in figures}
    gap = values["CEILING int4 zero (exact over fp16 s, z 0..15)"] - values["refit (int4 zero)"]
    print(f"  int4-zero ceiling - refit: {gap:.4f} dB", flush=True)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    gaussian = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)[:rows]
    student = np.random.default_rng(0).standard_t(3, (4096, 4096)).astype(np.float32)[:rows]
    report("Gaussian", np.ascontiguousarray(gaussian))
    report("Student-t df=3", np.ascontiguousarray(student))


if __name__ == "__main__":
    main()
