"""A `.npy` reader that never unpickles and checks the header before touching the data.

The `.npy` format (NEP 1, numpy.lib.format): the magic ``\\x93NUMPY``, a
major and minor version byte, a little-endian header length (``u2`` in
version 1.0, ``u4`` in 2.0 and 3.0), then a Python dict literal with the keys
``descr``, ``fortran_order`` and ``shape``, padded with spaces and a newline,
then the raw array bytes.

nibble parses that framing itself rather than calling ``np.load`` on an
untrusted file: numpy's own parser can warn (the Python 2 header filter) or
raise several exception types, and accepts structured and object dtypes.
Here the header is read with a size limit (64 KiB by default; numpy's own
is 10,000 bytes) and parsed by `parse_header_dict`, a parser of exactly the
dict numpy writes (the three keys, a dtype string, a bool, a tuple of at most
64 integers) in one left-to-right pass that stops at the first token out of
place: its time is linear in the header and its memory a few hundred bytes,
where `ast.literal_eval` builds a syntax tree of the whole text (a 1 MiB
header of nested tuples took 1.3-1.9 s and ~380 MB; a 16 MiB one 67 s and
8.3 GB, issue 17).  The dtype must be a plain numeric one (bool, signed and
unsigned integers, float16/32/64), the shape is checked against
`max_elements` with Python integers, and the file size must equal header plus
data exactly.  Only then is the data memory-mapped (``np.memmap``, read-only),
so a large tensor is paged in as it is used instead of copied.

Byte order: a big-endian array is converted to native order, which copies it
into memory (bounded by `max_elements`).  Fortran order is honoured: the
returned array is an F-contiguous view with the right values.
"""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio.limits import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_NPY_HEADER_BYTES,
    MAX_RANK,
    checked_element_count,
)

NPY_MAGIC = b"\x93NUMPY"
_HEADER_LENGTH_FORMAT = {1: "<H", 2: "<I", 3: "<I"}
_DESCR = re.compile(r"([<>|=])([biuf])(\d{1,2})")
_ALLOWED_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
#: the longest string and the most digits of an integer the header parser reads (a dtype string is 3-4
#: characters, a key 5-13; 2**64 has 20 digits: longer ones are refused as soon as they are seen)
_MAX_STRING_CHARS = 64
_MAX_DIGITS = 64
#: one token of a header dict, after optional white space; each alternative is bounded or a plain character
#: class, so a match costs time linear in what it reads (Python's `re` cannot backtrack into these)
_TOKEN = re.compile(
    r"[ \t\r\n\f\v]*(?:"
    rf"'(?P<single>[^'\\\n]{{0,{_MAX_STRING_CHARS}}})'"
    rf'|"(?P<double>[^"\\\n]{{0,{_MAX_STRING_CHARS}}})"'
    rf"|(?P<integer>[0-9]{{1,{_MAX_DIGITS}}})(?![0-9])"
    r"|(?P<word>True|False)(?![A-Za-z0-9_])"
    r"|(?P<mark>[{}():,]))"
)
_HEADER_KEYS = ("descr", "fortran_order", "shape")


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
    descr, fortran_order, shape = parse_header_dict(text)
    return shape, fortran_order, _parse_dtype(descr), data_offset


class _HeaderTokens:
    """The tokens of a header dict, read left to right; every error names what was found where."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def next(self) -> tuple[str, str | int | bool]:
        """The next token as (kind, value): ``("string", s)``, ``("integer", n)``, ``("bool", b)``, ``("mark", c)``."""
        match = _TOKEN.match(self.text, self.position)
        if match is None:
            rest = self.text[self.position:].lstrip()
            found = repr(rest[:20]) + ("..." if len(rest) > 20 else "") if rest else "the end of the header"
            raise TensorFileError(f".npy header is not the dict numpy writes: {found} at character "
                                  f"{len(self.text) - len(rest)} (expected a key, a dtype string, a bool, "
                                  f"a tuple of integers, or one of {{}}():,)")
        self.position = match.end()
        if match["single"] is not None or match["double"] is not None:
            return "string", match["single"] if match["single"] is not None else match["double"]
        if match["integer"] is not None:
            if len(match["integer"]) > 1 and match["integer"].startswith("0"):
                raise TensorFileError(f".npy header holds the integer {match['integer']!r} with a leading zero")
            return "integer", int(match["integer"])
        if match["word"] is not None:
            return "bool", match["word"] == "True"
        return "mark", match["mark"]

    def expect(self, mark: str) -> None:
        kind, value = self.next()
        if (kind, value) != ("mark", mark):
            raise TensorFileError(f".npy header is not the dict numpy writes: expected {mark!r}, found {value!r}")


def parse_header_dict(text: str) -> tuple[object, bool, tuple[int, ...]]:
    """``(descr, fortran_order, shape)`` of a `.npy` header's text, a Python dict literal as numpy writes it.

    Accepts exactly ``{'descr': <str>, 'fortran_order': <bool>, 'shape':
    <tuple of ints>}`` (keys in any order, each once, quoted either way,
    white space and a trailing comma anywhere Python allows them), with at
    most `MAX_RANK` dimensions, then only white space.  Refuses anything
    else with `TensorFileError` at the first token out of place, so the time
    is linear in the text and the memory bounded whatever the text holds.
    ``descr`` is returned as the string it is, for `_parse_dtype` to check.
    """
    tokens = _HeaderTokens(text)
    tokens.expect("{")
    values: dict[str, object] = {}
    while True:
        kind, key = tokens.next()
        if (kind, key) == ("mark", "}"):
            break
        if kind != "string" or key not in _HEADER_KEYS:
            raise TensorFileError(f".npy header must be a dict with keys descr, fortran_order, shape; "
                                  f"found the key {key!r}")
        if key in values:
            raise TensorFileError(f".npy header holds the key {key!r} twice")
        tokens.expect(":")
        values[str(key)] = _header_value(tokens, str(key))
        kind, mark = tokens.next()
        if (kind, mark) == ("mark", "}"):
            break
        if (kind, mark) != ("mark", ","):
            raise TensorFileError(f".npy header is not the dict numpy writes: expected ',' or '}}', found {mark!r}")
    if text[tokens.position:].strip(" \t\r\n\f\v"):
        raise TensorFileError(f".npy header has text after its dict, at character {tokens.position}")
    if set(values) != set(_HEADER_KEYS):
        raise TensorFileError(f".npy header must be a dict with keys descr, fortran_order, shape; "
                              f"found {sorted(map(repr, values))}")
    fortran_order = values["fortran_order"]
    shape = values["shape"]
    assert isinstance(fortran_order, bool) and isinstance(shape, tuple)  # as `_header_value` read them
    return values["descr"], fortran_order, shape


def _header_value(tokens: _HeaderTokens, key: str) -> object:
    """The value of `key` in a header dict: a string for descr, a bool for fortran_order, a tuple for shape."""
    kind, value = tokens.next()
    if key == "descr":
        if kind == "string":
            return value
        raise TensorFileError(f".npy descr starting with {value!r} is not a plain dtype string (structured "
                              "dtypes are not supported)")
    if key == "fortran_order":
        if kind != "bool":
            raise TensorFileError(f".npy fortran_order {value!r} is not a bool")
        return value
    if (kind, value) != ("mark", "("):
        raise TensorFileError(f".npy shape starting with {value!r} is not a tuple of non-negative integers")
    dims: list[int] = []
    while True:
        kind, value = tokens.next()
        if (kind, value) == ("mark", ")"):  # () or a trailing comma
            return tuple(dims)
        if kind != "integer":
            raise TensorFileError(f".npy shape holds {value!r}, not a non-negative integer")
        assert isinstance(value, int)
        if len(dims) == MAX_RANK:
            raise TensorFileError(f".npy shape has more than {MAX_RANK} dimensions; NumPy holds at most {MAX_RANK}")
        dims.append(value)
        kind, value = tokens.next()
        if (kind, value) == ("mark", ")"):
            if len(dims) == 1:
                raise TensorFileError(".npy shape (n) is an integer, not a tuple (numpy writes (n,))")
            return tuple(dims)
        if (kind, value) != ("mark", ","):
            raise TensorFileError(f".npy shape holds {value!r} where ',' or ')' belongs")


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
