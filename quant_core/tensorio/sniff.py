"""Tell a `.npy` from a `.safetensors` file by its first bytes, never by its name."""

from __future__ import annotations

import os
import struct
from typing import Literal

from quant_core.tensorio.npy import NPY_MAGIC

SNIFF_BYTES = 9
_PLAUSIBLE_HEADER_BYTES = 1 << 32  # safetensors' own reader refuses headers over 100 MB

FileKind = Literal["npy", "safetensors"]


def sniff_format(path_or_first_bytes: str | os.PathLike[str] | bytes) -> FileKind | None:
    """``"npy"``, ``"safetensors"`` or ``None`` from the magic bytes.

    `.npy` starts with ``\\x93NUMPY``; safetensors with a little-endian
    ``u64`` header length (plausible: 2 ≤ N < 2³²) followed by ``{``.  Given
    a path, reads its first 9 bytes; given bytes, looks at them.  This only
    routes a file to a reader, which then validates it fully.
    """
    if isinstance(path_or_first_bytes, bytes):
        head = path_or_first_bytes[:SNIFF_BYTES]
    else:
        with open(path_or_first_bytes, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if len(head) >= SNIFF_BYTES:
        (header_bytes,) = struct.unpack("<Q", head[:8])
        if 2 <= header_bytes < _PLAUSIBLE_HEADER_BYTES and head[8:9] == b"{":
            return "safetensors"
    return None
