"""nibble's native int4 payload: packing codes and zeros, and the exact byte layout.

The payload of a quantized tensor ``[out_features, in_features]`` in a scheme
with ``G`` groups per row and ``C`` stored columns per row (``C`` is
``in_features`` rounded up to whole groups when ``scheme.pad``) is, in order:

1. **codes**: the ``out_features × C`` 4-bit codes, row-major over the padded
   rows, two per byte, the even-indexed code in the low nibble and the next one
   in the high nibble: ``byte[k] = code[2k] | code[2k+1] << 4``.  The stream is
   flat, so when ``out_features × C`` is odd the last byte's high nibble is 0
   (and with an odd ``C`` a byte may straddle two rows).  ``ceil(out × C / 2)``
   bytes.  Padded columns hold the code nearest the zero point: it dequantizes
   to 0.0 with integer zeros, and to within half a step of 0 with fp16 zeros
   (``rint(z)``); `dequantize` drops them either way.
2. **scales**: ``out_features × G`` fp16 values, little-endian, row-major
   ``[out, groups]``.  ``2 × out × G`` bytes.
3. **zeros**, by ``scheme.zero``: ``"none"`` (symmetric, the implicit zero is 8):
   nothing; ``"int4"``: the ``out × G`` integer zeros in [0, 15] packed like the
   codes, ``ceil(out × G / 2)`` bytes; ``"fp16"``: ``out × G`` little-endian fp16.
4. **g_idx**, only when ``scheme.layout == "gptq"``: ``in_features`` little-endian
   int32 group indices, one per input column (``j // group_size`` unless GPTQ's
   act-order permuted the columns).

The total is exactly ``scheme.payload_bytes_for((out_features, in_features))``
(quant_core/formats.py, ``WeightFormat.payload_sections``, is the one definition
of it): the planner's ``bytes_for`` in nibble's layout, and less than a GPTQ
file of symmetric weights, which also stores qzeros (``checkpoint_tensors``).
Dequantization is ``w = (code - zero) × scale`` (quant_core/quantize/types.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import TensorFileError
from quant_core.formats import WeightFormat
from quant_core.quantize.types import QualityReport, QuantizedTensor

__all__ = [
    "UNMEASURED",
    "PayloadBuffer",
    "default_g_idx",
    "pack_codes",
    "payload_array",
    "payload_bytes",
    "payload_size",
    "quantized_from_payload",
    "unpack_codes",
]

#: The quality of a tensor rebuilt from a payload alone, with no originals to compare to.
UNMEASURED = QualityReport(
    relative_error=float("nan"), sqnr_db=float("nan"), max_abs_error=float("nan"),
    cosine_similarity=float("nan"),
)


def pack_codes(codes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Pack 4-bit codes (any shape, read flat in C order) two per byte, low nibble first.

    Returns ``ceil(codes.size / 2)`` bytes; an odd count leaves the last high nibble 0.
    Values above 15 are not checked here: only their low nibble is kept.
    """
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=np.uint8)])
    packed = np.left_shift(flat[1::2], 4)
    np.bitwise_or(packed, flat[0::2] & np.uint8(0x0F), out=packed)
    return packed


def unpack_codes(packed: NDArray[np.uint8], count: int) -> NDArray[np.uint8]:
    """The inverse of `pack_codes`: the first `count` codes of a packed byte stream (flat)."""
    if count < 0 or (count + 1) // 2 > packed.size:
        raise TensorFileError(f"{packed.size} packed bytes cannot hold {count} 4-bit codes")
    data = np.asarray(packed, dtype=np.uint8).reshape(-1)[: (count + 1) // 2]
    codes = np.empty(2 * data.size, dtype=np.uint8)
    np.bitwise_and(data, np.uint8(0x0F), out=codes[0::2])
    np.right_shift(data, 4, out=codes[1::2])
    return codes[:count]


def default_g_idx(in_features: int, group_size: int | None) -> NDArray[np.int32]:
    """Group index of each input column without act-order: ``j // group_size`` (all 0 for whole rows)."""
    if group_size is None:
        return np.zeros(in_features, dtype=np.int32)
    return (np.arange(in_features, dtype=np.int32) // np.int32(group_size)).astype(np.int32)


class PayloadBuffer:
    """One tensor's payload, allocated whole before quantizing, with its code and scale sections as views.

    The quantizer writes codes and scales straight into `packed` and `scales`
    and calls `finish` with the zeros (and g_idx) once they are known; the
    resulting tensor's sections then already lie in `data` in payload order,
    so `payload_array` hands `data` out instead of joining a copy (one 8 MiB
    copy, and as many fresh pages, less per 4096 × 4096 tensor).
    """

    def __init__(self, shape: tuple[int, int], scheme: WeightFormat) -> None:
        self.shape = shape
        self.scheme = scheme
        codes, scales, self._zeros_bytes, self._g_idx_bytes = scheme.payload_sections(shape)
        self.data = np.empty(codes + scales + self._zeros_bytes + self._g_idx_bytes, dtype=np.uint8)
        self.packed: NDArray[np.uint8] = self.data[:codes]
        groups = scheme.group_count(shape[1])
        self.scales: NDArray[np.float16] = self.data[codes: codes + scales].view("<f2").reshape(shape[0], groups)
        self._tail = codes + scales

    def finish(self, zeros: NDArray[np.uint8] | NDArray[np.float16] | None,
               g_idx: NDArray[np.int32] | None = None) -> NDArray[np.uint8] | NDArray[np.float16] | None:
        """Write the zeros and g_idx sections; return the zeros to keep in the tensor (fp16 ones as a view)."""
        zeros_section = self.data[self._tail: self._tail + self._zeros_bytes]
        if self.scheme.zero == "int4" and zeros is not None:
            zeros_section[:] = pack_codes(np.asarray(zeros, dtype=np.uint8))
        elif self.scheme.zero == "fp16" and zeros is not None:
            stored = zeros_section.view("<f2").reshape(np.shape(zeros))
            stored[...] = zeros
            zeros = stored
        if self.scheme.layout == "gptq":
            index = g_idx if g_idx is not None else default_g_idx(self.shape[1], self.scheme.group_size)
            self.data[self._tail + self._zeros_bytes:].view("<i4")[:] = index
        return zeros


def _address(array: NDArray[np.generic]) -> int:
    return int(array.__array_interface__["data"][0])


def _laid_out(q: QuantizedTensor, parts: list[NDArray[np.uint8]]) -> NDArray[np.uint8] | None:
    """The buffer `q`'s payload sections already form in order (a `PayloadBuffer`'s data), or None.

    Codes and scales (and fp16 zeros) must be views at their offsets in one
    buffer of exactly the payload's size; the int4 zeros and g_idx sections,
    which the tensor keeps in another form, must hold the bytes `parts` gives.
    """
    base = q.packed.base
    if not (isinstance(base, np.ndarray) and base.dtype == np.uint8 and base.ndim == 1
            and base.flags.c_contiguous and base.size == q.format.payload_bytes_for(q.shape)):
        return None
    start = _address(base)
    offset = 0
    for index, part in enumerate(parts):
        section = base[offset: offset + part.size]
        viewed = index < 2 or (index == 2 and q.format.zero == "fp16")
        if viewed and not (part.base is base and _address(part) == start + offset):
            return None
        if not viewed and not np.array_equal(section, part):
            return None
        offset += part.size
    return base


def _payload_parts(q: QuantizedTensor) -> list[NDArray[np.uint8]]:
    """The payload's sections (module docstring) as flat uint8 arrays, views where `q` already holds them."""
    parts = [
        np.ascontiguousarray(q.packed, dtype=np.uint8).reshape(-1),
        np.ascontiguousarray(q.scales, dtype="<f2").reshape(-1).view(np.uint8),
    ]
    if q.format.zero == "int4":
        if q.zeros is None:
            raise TensorFileError(f"scheme {q.format.label()} needs int4 zeros but the tensor has none")
        parts.append(pack_codes(np.asarray(q.zeros, dtype=np.uint8)))
    elif q.format.zero == "fp16":
        if q.zeros is None:
            raise TensorFileError(f"scheme {q.format.label()} needs fp16 zeros but the tensor has none")
        parts.append(np.ascontiguousarray(q.zeros, dtype="<f2").reshape(-1).view(np.uint8))
    if q.format.layout == "gptq":
        g_idx = q.g_idx if q.g_idx is not None else default_g_idx(q.shape[1], q.format.group_size)
        parts.append(np.ascontiguousarray(g_idx, dtype="<i4").reshape(-1).view(np.uint8))
    return parts


def payload_bytes(q: QuantizedTensor) -> bytes:
    """Serialize `q` in nibble's native layout (module docstring); length == ``q.format.payload_bytes_for(q.shape)``."""
    # the join of the sections' buffers is the only copy of the (large) code section
    return b"".join(part.data for part in _payload_parts(q))


def payload_size(q: QuantizedTensor) -> int:
    """``len(payload_bytes(q))``, from the arrays' sizes, without joining a copy of the payload.

    The payload is the packed codes, the fp16 scales, the zeros (int4 codes
    packed two per byte, or fp16) and, in the GPTQ layout, the int32 g_idx
    (module docstring); joining them costs 3 to 10 ms for a
    4096 x 4096 tensor only to take the length.  A test checks it equals the
    joined length for every method and scheme.
    """
    size = int(np.asarray(q.packed).size) + 2 * int(np.asarray(q.scales).size)
    if q.zeros is not None and q.format.zero == "int4":
        size += (int(np.asarray(q.zeros).size) + 1) // 2
    elif q.zeros is not None and q.format.zero == "fp16":
        size += 2 * int(np.asarray(q.zeros).size)
    if q.format.layout == "gptq":
        size += 4 * (int(np.asarray(q.g_idx).size) if q.g_idx is not None else q.shape[1])
    return size


def payload_array(q: QuantizedTensor) -> NDArray[np.uint8]:
    """`payload_bytes` as one uint8 array (the same bytes), for callers that keep working in NumPy.

    A tensor from `quantize` already holds its sections in payload order in
    one buffer (`PayloadBuffer`): that buffer is returned, read-only, without
    a copy.  Otherwise the sections are joined into a new array, which is
    still cheaper than `payload_bytes` for a large tensor: glibc serves a
    ``bytes`` object of a few MiB from freshly mapped 4 KiB pages on every
    call (~2,000 page faults for the 8.6 MiB payload of a 4096 × 4096 tensor
    at g128), where NumPy asks the kernel for huge pages (BENCHMARKS.md,
    "Quantizer (issue 3)").
    """
    parts = _payload_parts(q)
    laid_out = _laid_out(q, parts)
    if laid_out is None:
        return np.concatenate(parts)
    view = laid_out.view()
    view.flags.writeable = False
    return view


def quantized_from_payload(
    data: bytes, shape: tuple[int, int], format: WeightFormat, method: str, *,
    quality: QualityReport | None = None, source_dtype: str = "float32",
) -> QuantizedTensor:
    """Rebuild a `QuantizedTensor` from `payload_bytes` output (the file reader's inverse).

    Checks the length against ``format.payload_bytes_for(shape)``, that scales (and fp16
    zeros) are finite, and that every g_idx is a valid group; raises
    `TensorFileError` naming the offending value otherwise.  `quality` is the
    report stored beside the payload (e.g. in a file's metadata); without it the
    tensor carries `UNMEASURED` (NaN figures), since the originals are gone.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise TensorFileError(f"quantized tensors are 2-D with positive dimensions, got shape {list(shape)}")
    out_features, in_features = int(shape[0]), int(shape[1])
    expected = format.payload_bytes_for((out_features, in_features))
    if len(data) != expected:
        raise TensorFileError(
            f"payload of {len(data)} bytes for shape {[out_features, in_features]} in {format.label()}; "
            f"expected {expected}"
        )
    codes_len, scales_len, zeros_len, g_idx_len = format.payload_sections((out_features, in_features))
    groups = format.group_count(in_features)
    buffer = memoryview(data)
    offset = 0
    packed = np.frombuffer(buffer[offset: offset + codes_len], dtype=np.uint8).copy()
    offset += codes_len
    scales = np.frombuffer(buffer[offset: offset + scales_len], dtype="<f2").astype(np.float16)
    scales = scales.reshape(out_features, groups)
    offset += scales_len
    if not np.isfinite(scales).all():
        bad = int(np.flatnonzero(~np.isfinite(scales))[0])
        raise TensorFileError(f"scale {bad} (row {bad // groups}) is not finite: {scales.reshape(-1)[bad]}")
    zeros: NDArray[np.uint8] | NDArray[np.float16] | None = None
    if format.zero == "int4":
        raw = np.frombuffer(buffer[offset: offset + zeros_len], dtype=np.uint8)
        zeros = unpack_codes(raw, out_features * groups).reshape(out_features, groups)
    elif format.zero == "fp16":
        float_zeros = np.frombuffer(buffer[offset: offset + zeros_len], dtype="<f2").astype(np.float16)
        if not np.isfinite(float_zeros).all():
            raise TensorFileError("an fp16 zero point is not finite")
        zeros = float_zeros.reshape(out_features, groups)
    offset += zeros_len
    g_idx: NDArray[np.int32] | None = None
    if format.layout == "gptq":
        g_idx = np.frombuffer(buffer[offset: offset + g_idx_len], dtype="<i4").astype(np.int32)
        if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups):
            bad = int(np.flatnonzero((g_idx < 0) | (g_idx >= groups))[0])
            raise TensorFileError(f"g_idx[{bad}] = {int(g_idx[bad])} is not a group in [0, {groups})")
        if np.array_equal(g_idx, default_g_idx(in_features, format.group_size)):
            g_idx = None
    return QuantizedTensor(
        shape=(out_features, in_features), format=format, method=method, packed=packed,
        scales=scales, zeros=zeros, quality=quality if quality is not None else UNMEASURED,
        source_dtype=source_dtype, g_idx=g_idx,
    )
