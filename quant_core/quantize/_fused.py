"""Encode, pack and measure one chunk of rows in cache-sized blocks: the hot loop of `quantize`.

Given a chunk's weights ``[rows, columns]`` (float32) and its per-group
parameters (the method's output), every block of about `BLOCK_ELEMENTS`
elements (1 MiB of float32, so the dozen passes below hit the caches, not
DRAM; larger than L2 alone would suggest, because each NumPy call holds the
GIL between its loops and `quantize` runs encoders on several threads: with
256 KiB blocks two threads were no faster than one, with 1 MiB blocks they
are ~1.35x faster, and one thread is ~10% faster too; BENCHMARKS.md) goes
through, in order:

1. ``x = rint(w · (1/s))`` (one broadcast multiply, one rint);
2. with integer zeros (int4, or the 8 of symmetric schemes) the code is
   ``q = clip(x + z, 0, 15)``.  Clipping is needed only in groups where
   ``rint(w_min · (1/s)) + z`` or ``rint(w_max · (1/s)) + z`` falls outside
   [0, 15]: the float32 product and rint are monotonic in ``w`` (increasing,
   or decreasing for the negative scales of llama.cpp's ``m / −8`` rule, so
   both ends are checked against both bounds), so the group's extremes bound
   every element, and the check costs a few per-group operations instead
   of a pass over the block.  In those blocks ``x`` is clipped to
   ``[−z, 15 − z]``, so that ``x`` is exactly ``q − z``.  fp16 zeros are added
   before rounding (``q = clip(rint(w·(1/s) + z), 0, 15)``) and subtracted after;
3. ``q`` is written as int8 and packed straight into the payload: two codes
   read as one little-endian uint16 ``c0 | c1 << 8`` give the byte
   ``c0 | c1 << 4`` as the low byte of ``u | u >> 4``;
4. ``Ŵ = (q − z) · s`` (one broadcast multiply of ``x``), exactly the float32
   value `dequantize` computes, and the quality sums (‖W‖², ‖Ŵ‖², ‖Ŵ − W‖²,
   max |Ŵ − W|) by `QualityAccumulator` on the same cache-resident block.
   With integer zeros, a group that needs no clipping has every error within
   ``|s| · (0.5 + 2^-14)``: ``|rint(y) − y| ≤ 1/2`` and ``y = w · fl(1/s)``
   is within ``|w/s| · 2^-22.9 ≤ 15.6 · 2^-22.9`` steps of ``w/s``, ``(q − z) · s``
   is exact, and the final subtraction adds a relative 2^-24: at most
   ``s · (0.5 + 2^-18)`` in all.  Clipped groups get no bound.  The accumulator
   then measures the largest error only in groups whose bound exceeds the
   largest error this encoder has measured so far (which is exact: see
   `QualityAccumulator.add`): most blocks skip the two reductions over the
   whole block (`rtn` g128 on 4096 × 4096, best of 25 alternating rounds:
   54.0 → 50.6 ms on one thread, 42.8 → 41.3 ms on two).

The searching methods rank candidates with `encode_scored`
(quant_core/quantize/_groups.py), the same codes up to how an exact tie is broken.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from quant_core.quantize._groups import F32, LEVELS
from quant_core.quantize.metrics import QualityAccumulator

BLOCK_ELEMENTS = 1 << 18
#: per unit of scale, a bound on |ŵ − w| in an unclipped group with an integer zero (module docstring, 4.)
_UNCLIPPED_REACH = np.float32(0.5 + 2.0 ** -14)


def pack_pairs(codes: NDArray[np.uint8], out: NDArray[np.uint8], scratch: NDArray[np.uint16] | None = None) -> None:
    """Pack an even count of codes in [0, 15] (flat, contiguous) two per byte into `out`, low nibble first.

    `scratch` (at least ``codes.size // 2`` uint16) saves allocating the merged pairs.
    """
    pairs = codes.view("<u2")
    merged = np.right_shift(pairs, 4) if scratch is None else np.right_shift(pairs, 4, out=scratch[: pairs.size])
    np.bitwise_or(merged, pairs, out=out, casting="unsafe")


class ChunkEncoder:
    """Encodes chunks of rows into a payload and a `QualityAccumulator`, reusing its block buffers.

    One encoder per thread: the block buffers are its own, and chunks of
    different threads write disjoint rows of the payload.
    """

    def __init__(self, columns: int, group_size: int, in_features: int, integer_zeros: bool,
                 packed: NDArray[np.uint8]) -> None:
        self.columns = columns
        self.group_size = group_size
        self.groups = columns // group_size
        self.in_features = in_features
        self.integer_zeros = integer_zeros
        self.packed = packed
        rows = max(2, BLOCK_ELEMENTS // columns)
        self.block_rows = rows + rows % 2
        self.values = np.empty(self.block_rows * columns, dtype=np.float32)
        self.codes = np.empty(self.block_rows * columns + 1, dtype=np.int8)
        self.pairs = np.empty((self.block_rows * columns + 1) // 2, dtype=np.uint16)
        #: the largest |ŵ − w| this encoder has measured, in any chunk: groups bounded below it are not searched
        self.largest_error = 0.0

    def encode(self, first_row: int, weights: F32, w_min: F32, w_max: F32, scales: F32, zeros: F32,
               accumulator: QualityAccumulator) -> None:
        """Encode rows ``first_row + [0, len(weights))``: codes into the payload, figures into `accumulator`.

        `weights` is ``[rows, columns]`` float32 (padded columns included),
        `w_min`/`w_max` its per-group extremes, `scales`/`zeros` ``[rows, groups]``
        the fp16-exact parameters (scales non-zero).
        """
        inverse = np.float32(1.0) / scales
        flagged_rows = flagged_groups = np.zeros(0, dtype=np.intp)
        small_zeros: NDArray[np.int8] | None = None
        if self.integer_zeros:
            small_zeros = zeros.astype(np.int8)
            # a negative scale (llama.cpp's m / −8 when m > 0) maps w_min to the higher code: check both ends
            at_min = np.rint(w_min * inverse) + zeros
            at_max = np.rint(w_max * inverse) + zeros
            outside = (np.minimum(at_min, at_max) < 0) | (np.maximum(at_min, at_max) > LEVELS)
            flagged_rows, flagged_groups = np.nonzero(outside)
        reach: F32 | None = None
        if small_zeros is not None and self.columns == self.in_features:
            reach = np.abs(scales) * _UNCLIPPED_REACH
            reach[flagged_rows, flagged_groups] = np.inf
        uniform: bool | None = None  # one zero for every group of the chunk? (asked once, if a block clips)
        for start in range(0, weights.shape[0], self.block_rows):
            stop = min(weights.shape[0], start + self.block_rows)
            rows = stop - start
            count = rows * self.columns
            # one row per group, [rows · groups, group_size]: NumPy broadcasts a per-group column over
            # this 2-D shape ~1.5x faster than over [rows, groups, group_size] (fewer inner-loop calls)
            shape = (rows * self.groups, self.group_size)
            block = weights[start:stop].reshape(shape)
            values = self.values[:count].reshape(shape)
            codes = self.codes[:count].reshape(shape)
            scale = scales[start:stop].reshape(-1, 1)
            zero = zeros[start:stop].reshape(-1, 1)
            np.multiply(block, inverse[start:stop].reshape(-1, 1), out=values)
            if small_zeros is not None:
                np.rint(values, out=values)
                if flagged_rows.size:
                    first, last = np.searchsorted(flagged_rows, (start, stop))
                    if last > first:
                        if uniform is None:
                            uniform = float(zeros.min()) == float(zeros.max())
                        self._clip(values.reshape(rows, self.groups, self.group_size),
                                   flagged_rows[first:last] - start, flagged_groups[first:last], zeros[start:stop],
                                   uniform)
                np.copyto(codes, values, casting="unsafe")
                np.add(codes, small_zeros[start:stop].reshape(-1, 1), out=codes)
            else:
                np.add(values, zero, out=values)
                np.rint(values, out=values)
                np.clip(values, 0.0, LEVELS, out=values)
                np.copyto(codes, values, casting="unsafe")
                np.subtract(values, zero, out=values)
            self._pack(first_row + start, count)
            np.multiply(values, scale, out=values)
            reconstructed = values.reshape(rows, self.columns)
            original = weights[start:stop]
            if self.columns != self.in_features:
                accumulator.add(np.ascontiguousarray(original[:, : self.in_features]),
                                     np.ascontiguousarray(reconstructed[:, : self.in_features]))
            elif reach is None:
                accumulator.add(original, reconstructed)
            else:
                accumulator.add(original, reconstructed, reach[start:stop], self.largest_error)
                self.largest_error = max(self.largest_error, accumulator.max_abs_error)

    @staticmethod
    def _clip(values: F32, rows: NDArray[np.intp], groups: NDArray[np.intp], zeros: F32, uniform: bool) -> None:
        """Clip ``x = rint(w/s)`` to ``[−z, 15 − z]`` in the block's groups ``(rows, groups)`` that need it.

        Symmetric schemes (one zero for all groups) need it in most groups and
        clip the block with scalar bounds; otherwise only the few groups whose
        extreme lands half a step outside (a float32 rounding, or an exact tie
        with bfloat16 inputs) are clipped, by gathering them.
        """
        if uniform:
            only = float(zeros.flat[0])
            np.clip(values, np.float32(-only), np.float32(LEVELS - only), out=values)
            return
        zero = zeros[rows, groups, None]
        values[rows, groups] = np.clip(values[rows, groups], -zero, LEVELS - zero)

    def _pack(self, first_row: int, count: int) -> None:
        """Pack the block's `count` codes (in `self.codes`) at row `first_row` of the payload."""
        first_code = first_row * self.columns
        codes = self.codes.view(np.uint8)
        if first_code % 2 == 0 and count % 2 == 0:
            first_byte = first_code // 2
            pack_pairs(codes[:count], self.packed[first_byte: first_byte + count // 2], self.pairs)
            return
        # odd code counts only occur with an odd number of columns in the last block (rows come in pairs)
        codes[count] = 0
        first_byte = first_code // 2
        stop_byte = min(self.packed.size, first_byte + (count + 1) // 2)
        merged = np.empty((count + 1) // 2, dtype=np.uint8)
        pack_pairs(codes[: count + 1], merged)
        self.packed[first_byte:stop_byte] = merged[: stop_byte - first_byte]
