"""Shared test helpers: hand-built quantized tensors and small file builders."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.formats import WeightFormat, int4
from quant_core.quantize import quantize
from quant_core.quantize.packing import pack_codes
from quant_core.quantize.types import QualityReport, QuantizedTensor

QUALITY = QualityReport(relative_error=0.1, sqnr_db=20.0, max_abs_error=0.5, cosine_similarity=0.99)


def hand_built(codes: NDArray[np.uint8], scales: NDArray[np.float16],
               zeros: NDArray[np.uint8] | NDArray[np.float16] | None, fmt: WeightFormat,
               g_idx: NDArray[np.int32] | None = None) -> QuantizedTensor:
    """A QuantizedTensor from explicit codes [out, columns], without the quantizer."""
    out_features, columns = codes.shape
    return QuantizedTensor(shape=(out_features, columns), format=fmt, method="hand", packed=pack_codes(
        codes.reshape(-1)), scales=scales, zeros=zeros, quality=QUALITY, g_idx=g_idx)


def random_quantized(rng: np.random.Generator, out_features: int, in_features: int,
                     group_size: int | None, symmetric: bool, zero: str = "int4",
                     zero_range: tuple[int, int] = (0, 16)) -> QuantizedTensor:
    """Random codes, positive/negative fp16 scales and zeros: every nibble and sign exercised."""
    fmt = int4(group_size, symmetric=symmetric, zero=zero)  # type: ignore[arg-type]
    groups = fmt.group_count(in_features)
    codes = rng.integers(0, 16, size=(out_features, in_features), dtype=np.uint8)
    scales = (rng.standard_normal((out_features, groups)) * 0.01).astype(np.float16)
    zeros: NDArray[Any] | None
    if symmetric:
        zeros = None
    elif zero == "fp16":
        zeros = (rng.random((out_features, groups)) * 15).astype(np.float16)
    else:
        zeros = rng.integers(zero_range[0], zero_range[1], size=(out_features, groups), dtype=np.uint8)
    return hand_built(codes, scales, zeros, fmt)


def quantized_gaussian(seed: int, out_features: int, in_features: int, fmt: WeightFormat,
                       method: str = "rtn") -> QuantizedTensor:
    """nibble's quantizer on a seeded Gaussian (numpy default_rng(seed).standard_normal, float32)."""
    weights = np.random.default_rng(seed).standard_normal((out_features, in_features), dtype=np.float32)
    return quantize(weights, fmt, method)


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    """A raw safetensors file from a header (dict or raw JSON bytes) and a data area."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data
