"""A `.npy` reader that never unpickles and checks the header before touching the data.

The `.npy` format (NEP 1, numpy.lib.format): the magic ``\\x93NUMPY``, a
major and minor version byte, a little-endian header length (``u2`` in
version 1.0, ``u4`` in 2.0 and 3.0), then a Python dict literal with the keys
``descr``, ``fortran_order`` and ``shape``, padded with spaces and a newline,
then the raw array bytes.

nibble parses that framing itself rather than calling ``np.load`` on an
untrusted file: numpy's own parser can warn (the Python 2 header filter) or
raise several exception types, and accepts structured and object dtypes.
Here the header is read with a size limit and `ast.literal_eval` (literals
only, never code), the dtype must be a plain numeric one (bool, signed and
unsigned integers, float16/32/64), the shape is checked against
`max_elements` with Python integers, and the file size must equal header plus
data exactly.  Only then is the data memory-mapped (``np.memmap``, read-only),
so a large tensor is paged in as it is used instead of copied.

Byte order: a big-endian array is converted to native order, which copies it
into memory (bounded by `max_elements`).  Fortran order is honoured: the
returned array is an F-contiguous view with the right values.
"""

from __future__ import annotations

import ast
import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio.limits import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_NPY_HEADER_BYTES,
    checked_element_count,
)

NPY_MAGIC = b"\x93NUMPY"
_HEADER_LENGTH_FORMAT = {1: "<H", 2: "<I", 3: "<I"}
_DESCR = re.compile(r"([<>|=])([biuf])(\d{1,2})")
_ALLOWED_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


def _read_exactly(handle: Any, count: int, what: str) -> bytes:
    data: bytes = handle.read(count)
    if len(data) != count:
        raise TensorFileError(f".npy file truncated: expected {count} bytes of {what}, found {len(data)}")
    return data


def _parse_dtype(descr: object) -> np.dtype[Any]:
    if not isinstance(descr, str):
        raise TensorFileError(
            f".npy descr {descr!r} is not a plain dtype string (structured dtypes are not supported)"
        )
    match = _DESCR.fullmatch(descr)
    if match is None or f"{match.group(2)}{match.group(3)}" not in _ALLOWED_DTYPES:
        hint = (" (ml_dtypes.bfloat16 saved with np.save looks like this; send bfloat16 as .safetensors)"
                if descr.lstrip("<>|=").startswith("V") else "")
        raise TensorFileError(
            f".npy dtype {descr!r} is not supported: only bool, int8-64, uint8-64 and "
            f"float16/32/64 are read{hint}"
        )
    return np.dtype(descr)


def read_npy_header(
    path: str | os.PathLike[str], *, max_header_bytes: int = DEFAULT_MAX_NPY_HEADER_BYTES
) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Parse and check a `.npy` header: ``(shape, fortran_order, dtype, data_offset)``.

    Raises `TensorFileError` for anything that is not a well-formed header of
    a plain numeric array, `LimitExceeded` when the header is longer than
    `max_header_bytes`.  Reads no array data.
    """
    with open(path, "rb") as handle:
        return _parse_header(handle, max_header_bytes)


def npy_header_from_prefix(
    prefix: bytes, *, max_header_bytes: int = DEFAULT_MAX_NPY_HEADER_BYTES
) -> tuple[tuple[int, ...], bool, np.dtype[Any], int] | None:
    """`read_npy_header` on a file's first bytes, as they arrive; None while `prefix` ends inside the header.

    Raises as `read_npy_header` as soon as what has arrived is wrong (bad
    magic or version, a header length over `max_header_bytes`, a malformed header).
    """
    if not prefix[:6] == NPY_MAGIC[: len(prefix)]:
        raise TensorFileError(f"not a .npy file: starts with {prefix[:6]!r}, expected {NPY_MAGIC!r}")
    if len(prefix) < 8:
        return None
    if prefix[6] in _HEADER_LENGTH_FORMAT:  # an unknown version is refused by the parser at once
        end = npy_header_end(prefix)
        start = 8 + struct.calcsize(_HEADER_LENGTH_FORMAT[prefix[6]])
        if end is None or (end - start <= max_header_bytes and len(prefix) < end):
            return None
    with io.BytesIO(prefix) as handle:
        return _parse_header(handle, max_header_bytes)


def npy_header_end(prefix: bytes) -> int | None:
    """The data offset a `.npy` file's length field declares (magic, version, length, header), unchecked;
    None until the length field has arrived.  An unknown version is read as 2.0's (the parser refuses it)."""
    if len(prefix) < 8:
        return None
    length_format = _HEADER_LENGTH_FORMAT.get(prefix[6], "<I")
    start = 8 + struct.calcsize(length_format)
    if len(prefix) < start:
        return None
    return start + int(struct.unpack(length_format, prefix[8:start])[0])


def _parse_header(handle: Any, max_header_bytes: int) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """The checks of `read_npy_header` on an open binary handle positioned at the file's start."""
    magic = _read_exactly(handle, 8, "magic and version")
    if magic[:6] != NPY_MAGIC:
        raise TensorFileError(f"not a .npy file: starts with {magic[:6]!r}, expected {NPY_MAGIC!r}")
    major, minor = magic[6], magic[7]
    if major not in _HEADER_LENGTH_FORMAT or minor != 0:
        raise TensorFileError(f".npy format version {major}.{minor} is not supported (1.0, 2.0, 3.0)")
    length_format = _HEADER_LENGTH_FORMAT[major]
    (header_length,) = struct.unpack(
        length_format, _read_exactly(handle, struct.calcsize(length_format), "header length")
    )
    if header_length > max_header_bytes:
        raise LimitExceeded("npy header bytes", header_length, max_header_bytes, field="file")
    raw_header = _read_exactly(handle, header_length, "header")
    data_offset = 8 + struct.calcsize(length_format) + header_length
    try:
        text = raw_header.decode("utf-8" if major == 3 else "latin-1")
    except UnicodeDecodeError as exc:
        raise TensorFileError(f".npy header is not valid UTF-8: {exc}") from None
    try:
        with warnings.catch_warnings():
            # literal_eval can warn (e.g. SyntaxWarning on odd escapes); a header is data, not code.
            warnings.simplefilter("ignore")
            header = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise TensorFileError(f".npy header is not a Python literal: {type(exc).__name__}") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        keys = sorted(map(repr, header)) if isinstance(header, dict) else type(header).__name__
        raise TensorFileError(
            f".npy header must be a dict with keys descr, fortran_order, shape; found {keys}"
        )
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise TensorFileError(f".npy shape {shape!r} is not a tuple of non-negative integers")
    fortran_order = header["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise TensorFileError(f".npy fortran_order {fortran_order!r} is not a bool")
    return shape, fortran_order, _parse_dtype(header["descr"]), data_offset


def read_npy(
    path: str | os.PathLike[str],
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_NPY_HEADER_BYTES,
) -> NDArray[Any]:
    """Read a `.npy` file as a read-only, memory-mapped, native-byte-order array.

    The header is validated first (`read_npy_header`); the element count must
    be at most `max_elements` (`LimitExceeded` otherwise) and the file must
    hold exactly the header plus ``count × itemsize`` bytes (`TensorFileError`
    for a truncated file or trailing bytes).  Object, structured, string,
    complex and void dtypes are refused; nothing is ever unpickled.
    """
    shape, fortran_order, dtype, data_offset = read_npy_header(path, max_header_bytes=max_header_bytes)
    count = checked_element_count(shape, max_elements, "in .npy file")
    data_bytes = count * dtype.itemsize
    file_bytes = Path(path).stat().st_size
    if file_bytes != data_offset + data_bytes:
        raise TensorFileError(
            f".npy file has {file_bytes - data_offset} data bytes, but shape {list(shape)} "
            f"of {dtype.str} needs {data_bytes}",
        )
    native = dtype.newbyteorder("=")
    if count == 0:
        return np.zeros(shape, dtype=native, order="F" if fortran_order else "C")
    array: NDArray[Any] = np.memmap(
        path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran_order else "C"
    )
    if not dtype.isnative:
        array = array.astype(native, order="K")
        array.flags.writeable = False
    return array
