"""What a tensor file declares about itself in its first bytes: its total size and where each tensor's rows lie.

A `.npy` file is its header plus ``count × itemsize`` data bytes; a
safetensors file is its 8-byte header length, the JSON header, and the data
area its entries cover, which must end exactly where the file does (the
readers refuse any other size).  So once the header has arrived, the whole
file's length is known.  An upload still on the wire uses this twice: the
server writes the file's body straight to its spool without searching it for
a multipart boundary (app/uploads.py), and a job quantizes rows as they
arrive (app/jobs.py).  A file that turns out shorter or longer than its
header declares is refused either way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quant_core.tensorio.limits import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_NPY_HEADER_BYTES,
    DEFAULT_MAX_TENSORS,
    checked_element_count,
)
from quant_core.tensorio.npy import npy_header_end, npy_header_from_prefix
from quant_core.tensorio.safetensors_io import parse_safetensors_header
from quant_core.tensorio.sniff import FileKind

#: the name a `.npy` file's one tensor goes by
NPY_TENSOR_NAME = "weight"


@dataclass(frozen=True, slots=True)
class DeclaredLayout:
    """A tensor file's size and tensor positions, from its header alone."""

    file_bytes: int
    #: tensor name -> (file offset of its first byte, bytes per row of a C-order 2-D tensor; None otherwise)
    rows: dict[str, tuple[int, int | None]]


def header_end(prefix: bytes, kind: FileKind) -> int | None:
    """How many leading bytes the file's header takes, from its length field; None until that has arrived.

    The count is as declared, unchecked against any limit (`declared_layout` checks).
    """
    if kind == "safetensors":
        return 8 + int(struct.unpack("<Q", prefix[:8])[0]) if len(prefix) >= 8 else None
    return npy_header_end(prefix)


def declared_layout(prefix: bytes, kind: FileKind, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                    max_elements: int = DEFAULT_MAX_ELEMENTS, max_tensors: int = DEFAULT_MAX_TENSORS,
                    max_npy_header_bytes: int = DEFAULT_MAX_NPY_HEADER_BYTES) -> DeclaredLayout | None:
    """The layout the header at the start of `prefix` declares; None while `prefix` ends inside the header.

    `prefix` is the file's first bytes (any number of them).  Raises
    `TensorFileError` for a malformed header and `LimitExceeded` for one over
    the limits (or for a tensor over `max_elements`), as the full readers would.
    A `.npy` header is held to the smaller of `max_header_bytes` and
    `max_npy_header_bytes` (64 KiB: a `.npy` header is a short dict, where a
    safetensors header lists every tensor).
    """
    if kind == "npy":
        header = npy_header_from_prefix(prefix, max_header_bytes=min(max_header_bytes, max_npy_header_bytes))
        if header is None:
            return None
        shape, fortran_order, dtype, offset = header
        count = checked_element_count(shape, max_elements, "in .npy file")
        row_bytes = shape[1] * dtype.itemsize if len(shape) == 2 and not fortran_order else None
        return DeclaredLayout(offset + count * dtype.itemsize, {NPY_TENSOR_NAME: (offset, row_bytes)})
    end = header_end(prefix, kind)
    if end is None or (end - 8 <= max_header_bytes and len(prefix) < end):
        return None
    parsed = parse_safetensors_header(prefix, None, max_tensors=max_tensors, max_elements=max_elements,
                                      max_header_bytes=max_header_bytes)
    file_bytes = parsed.data_offset + max((entry.end for entry in parsed.entries.values()), default=0)
    rows = {name: (parsed.data_offset + entry.begin,
                   entry.shape[1] * entry.numpy_dtype.itemsize if len(entry.shape) == 2 else None)
            for name, entry in parsed.entries.items()}
    return DeclaredLayout(file_bytes, rows)
