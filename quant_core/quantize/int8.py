"""int8 per output row, symmetric: the middle option between int4 and 16-bit in a byte budget.

Each row ``i`` has one fp16 scale ``s_i = max|W_i·| / 127`` rounded up to fp16
(so no weight is clipped) and codes ``q = rint(w / s)`` in [−127, 127];
``Ŵ = q · s``.  Storage is `WeightFormat("int8").bytes_for(shape)`: one byte
per weight plus two per row (bitsandbytes' LLM.int8 and vLLM's W8A16
per-channel weights use the same per-row absmax rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidTensor
from quant_core.formats import WeightFormat
from quant_core.quantize._groups import fp16_ceil, nonzero_scale

__all__ = ["INT8", "Int8Tensor", "dequantize_int8", "quantize_int8"]

INT8 = WeightFormat("int8", None)
_LEVELS = 127.0
_ROWS_PER_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True, slots=True)
class Int8Tensor:
    """Codes ``[out, in]`` int8 and fp16 scales ``[out]``: ``Ŵ = codes × scales[:, None]``."""

    codes: NDArray[np.int8]
    scales: NDArray[np.float16]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])


def quantize_int8(weights: NDArray[np.generic]) -> Int8Tensor:
    """Per-row symmetric int8 of a 2-D float tensor (module docstring), in row chunks."""
    array = np.asarray(weights)
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidTensor(f"int8 quantization needs a non-empty 2-D tensor, got shape {list(array.shape)}")
    rows, columns = (int(d) for d in array.shape)
    codes = np.empty((rows, columns), dtype=np.int8)
    scales = np.empty(rows, dtype=np.float16)
    step = max(1, _ROWS_PER_CHUNK_ELEMENTS // columns)
    for start in range(0, rows, step):
        chunk = np.asarray(array[start: start + step], dtype=np.float32)
        absmax = np.abs(chunk).max(axis=1)
        scale = nonzero_scale(fp16_ceil((absmax / np.float32(_LEVELS)).astype(np.float32)))
        scaled = np.rint(chunk * (np.float32(1.0) / scale)[:, None])
        codes[start: start + step] = np.clip(scaled, -_LEVELS, _LEVELS).astype(np.int8)
        scales[start: start + step] = scale.astype(np.float16)
    return Int8Tensor(codes, scales)


def dequantize_int8(q: Int8Tensor) -> NDArray[np.float32]:
    """``codes × scales`` as float32 ``[out, in]`` (exact: an 8-bit integer times an fp16 fits float32)."""
    return (q.codes.astype(np.float32) * q.scales.astype(np.float32)[:, None]).astype(np.float32)
