"""Contiguous transposes of large 2-D arrays, copied in blocks of rows.

NumPy copies ``a.T`` into a C-ordered array by reading one side with a
stride of a whole row; for the power-of-two widths of weight matrices those
reads fall into the same few cache sets, so the copy runs several times
slower than a plain copy.  Copying 64 rows at a time keeps each block's
reads and writes in cache: on the 2-core VM a 4096 × 4096 float32 transpose
took 131 ms as ``a.T.copy()``, 30 ms in blocks (a plain copy: 15 ms), and a
4096 × 4096 uint8 one 107 against 13 ms (BENCHMARKS.md, "Quantizer").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

#: rows of the source per block copy (measured best among 16-256 for float32 and uint8)
BLOCK_ROWS = 64


def transpose_into(source: NDArray[Any], target: NDArray[Any]) -> None:
    """``target[...] = source.T``, block by block (`target` has `source`'s shape reversed)."""
    if target.shape != source.shape[::-1]:
        raise ValueError(f"cannot transpose {source.shape} into {target.shape}")
    for start in range(0, source.shape[0], BLOCK_ROWS):
        target[:, start:start + BLOCK_ROWS] = source[start:start + BLOCK_ROWS].T


def transposed(source: NDArray[Any]) -> NDArray[Any]:
    """A new C-contiguous array holding ``source.T``."""
    target = np.empty(source.shape[::-1], dtype=source.dtype)
    transpose_into(source, target)
    return target
