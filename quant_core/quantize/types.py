"""The result of quantizing one tensor, shared by the methods, the packing and the file writers.

Dequantization convention for every int4 format nibble writes (the one GPTQ,
AWQ, HQQ and llama.cpp's Q4_0 use): ``w = (q - z) × s`` per group, with ``q``
the 4-bit code in [0, 15], ``s`` the fp16 scale and ``z`` the zero point
(an integer in [0, 15] for ``zero="int4"``, an fp16 value for ``zero="fp16"``,
and the constant 8 for symmetric formats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from quant_core.formats import WeightFormat


@dataclass(frozen=True, slots=True)
class QualityReport:
    """How far the dequantized weights are from the originals.

    `relative_error` is ‖W − Ŵ‖_F / ‖W‖_F; `sqnr_db` is −20·log10 of it;
    `max_abs_error` the largest |W − Ŵ|; `cosine_similarity` between W and Ŵ
    flattened.  With calibration activations X, `output_relative_error` is
    ‖XWᵀ − XŴᵀ‖ / ‖XWᵀ‖ over the held-out rows `eval_rows` (half-open ranges
    of X's rows), the other rows (`fit_rows`) having been used for fitting.
    With importance statistics ``h`` (one per input column), `weighted_relative_error`
    is ``sqrt(Σ h_j (W − Ŵ)²_ij / Σ h_j W²_ij)`` and `weighted_sqnr_db` −20·log10 of it;
    `importance_used` says whether the method minimised that error (or only was measured by it).
    """

    relative_error: float
    sqnr_db: float
    max_abs_error: float
    cosine_similarity: float
    output_relative_error: float | None = None
    fit_rows: tuple[int, int] | None = None
    eval_rows: tuple[int, int] | None = None
    weighted_relative_error: float | None = None
    weighted_sqnr_db: float | None = None
    importance_used: bool = False


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """An int4 group-wise quantized 2-D tensor ``[out_features, in_features]``.

    `packed` is nibble's native code layout: the codes of the (padded) rows,
    row-major, two per byte, the first (even-indexed) code in the low nibble.
    `scales` are fp16 ``[out_features, groups]``; `zeros` are ``None``
    (symmetric), uint8 codes in [0, 15] ``[out_features, groups]`` (int4
    zeros, packed two per byte only in the payload), or fp16 (HQQ zeros).
    `g_idx` maps each input column to its group when act-order permuted the
    columns (GPTQ ``desc_act``); ``None`` means column ``j`` is in group
    ``j // group_size``.
    """

    shape: tuple[int, int]
    format: WeightFormat
    method: str
    packed: NDArray[np.uint8]
    scales: NDArray[np.float16]
    zeros: NDArray[np.uint8] | NDArray[np.float16] | None
    quality: QualityReport
    source_dtype: str = "float32"
    g_idx: NDArray[np.int32] | None = None
