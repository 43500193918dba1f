"""Safetensors reading (validated, lazy, memory-mapped) and writing.

The format (huggingface/safetensors, docs "Format"): 8 bytes little-endian
``u64`` N, then N bytes of a UTF-8 JSON object mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
data area that follows the header) plus an optional ``"__metadata__"``
string-to-string map; then the data area, which the tensors must cover
exactly, without gaps or overlap, little-endian, row-major.

nibble validates every one of those rules itself, with Python integers and
before mapping any data, because the header comes from whoever uploaded the
file: length within the limit and the file, a JSON object with no duplicate
keys, known dtypes, non-negative integer shapes whose element count is within
`max_elements`, ``dtype size × elements == end − begin``, offsets inside the
data area, and contiguous coverage.  Every refusal is a `TensorFileError`
(or `LimitExceeded` for a limit), never another exception type.

Reading is lazy: `read_safetensors` returns a `SafetensorsFile`, a mapping
whose values are read-only NumPy views of one ``np.memmap`` of the file, so a
file of many tensors is paged in as each tensor is used.  The ``safetensors``
package's NumPy API cannot represent BF16 (NumPy has no bfloat16) and loads
whole files, so it serves as an independent decoder in the tests instead.
BF16 comes back as ``ml_dtypes.bfloat16``, the F8 types as ml_dtypes' float8
types; integer and bool tensors are passed through as NumPy arrays.
"""

from __future__ import annotations

import json
import math
import operator
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio.limits import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_TENSORS,
    checked_element_count,
)

METADATA_KEY = "__metadata__"
HEADER_ALIGNMENT = 8  # the writer pads the header with spaces, as the reference writer does

SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


def safetensors_dtype_name(dtype: np.dtype[Any]) -> str:
    """The safetensors dtype string (``F32``, ``BF16``, ``U8``...) of a NumPy dtype."""
    native = dtype.newbyteorder("<") if dtype.byteorder in "=>" else dtype
    for name, candidate in SAFETENSORS_DTYPES.items():
        if candidate == native:
            return name
    raise TensorFileError(f"dtype {dtype} has no safetensors equivalent", field="tensors")


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor's header entry: dtype name, shape and byte range in the data area."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return SAFETENSORS_DTYPES[self.dtype]


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A validated header: the entries in file order, the metadata, and where the data starts."""

    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_offset: int


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members (an ``object_pairs_hook``), refusing a key given twice: ``json.loads`` keeps
    the last value without a word, and which one the file meant is not ours to guess."""
    members = dict(pairs)  # in C: a header's hundred thousand entries each make one call
    if len(members) != len(pairs):  # a key given twice: name the first, as the pairs give them
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise TensorFileError(f"gives the key {key!r} twice in one JSON object; send it once")
            seen.add(key)
    return members


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass and is not a length


def _check_unicode(text: str) -> None:
    """Refuse a tensor name or metadata string holding a lone UTF-16 surrogate (JSON can spell one, ``"\\ud800"``):
    it is not Unicode text, the UTF-8 header the format requires cannot hold it, and no answer could echo it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TensorFileError(
            f"safetensors header holds a string with a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at "
            f"character {exc.start}: not Unicode text (the format's header is UTF-8 JSON)") from None


def _parse_entry(name: str, raw: object, max_elements: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise TensorFileError(f"safetensors entry {name!r} is {type(raw).__name__}, not an object")
    if set(raw) != {"dtype", "shape", "data_offsets"}:
        raise TensorFileError(
            f"safetensors entry {name!r} has keys {sorted(raw)}, expected dtype, shape, data_offsets"
        )
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise TensorFileError(
            f"safetensors entry {name!r} has dtype {dtype!r}; supported: {', '.join(SAFETENSORS_DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise TensorFileError(f"safetensors entry {name!r} has shape {shape!r}, not a list of integers ≥ 0")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(offset) and offset >= 0 for offset in offsets)
            or offsets[0] > offsets[1]):
        raise TensorFileError(
            f"safetensors entry {name!r} has data_offsets {offsets!r}, not [begin, end] with 0 ≤ begin ≤ end"
        )
    count = checked_element_count(shape, max_elements, repr(name))
    expected = count * SAFETENSORS_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        raise TensorFileError(
            f"safetensors entry {name!r}: {dtype} shape {shape} needs {expected} bytes, "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


#: (name, dtype, shape, begin, end) of one validated entry
Entry = tuple[str, str, tuple[int, ...], int, int]
_OFFSETS = operator.itemgetter(3, 4)
#: (dtype, repr(shape)) -> (shape, bytes) of the entries validated so far in one header: ``[1, 5]``, ``[True, 5]``
#: and ``[1.0, 5]`` are equal lists, but their reprs differ and only the first is a shape
_Sizes = dict[tuple[str, str], tuple[tuple[int, ...], int]]


class _CompactEntries:
    """A ``json.loads`` object hook (`unique_keys` for every other object) that turns an object spelt as a valid
    entry, ``{"dtype": ..., "shape": [...], "data_offsets": [begin, end]}`` in that order (as the safetensors
    writers spell it), into the tuple ``(dtype, shape, begin, end)`` as it is parsed.

    A checkpoint's header holds a hundred thousand entries (DeepSeek-V3: 92,000 in 163 headers) over a few dozen
    shapes.  Each entry parsed as a dict of two lists keeps three containers alive until the whole header is
    parsed, and the cyclic garbage collector walks them again at each full collection: two thirds of the CPU
    of four 16 MiB headers.  A tuple of a string, a shared shape and two integers is dropped from the
    collector's lists at its first collection, and a shape already validated (with its dtype) costs a lookup.
    An object it cannot vouch for is left a dict, for `_parse_entry` to check and word the refusal; a tuple
    anywhere but as a top-level value makes the header refused, and `parse_safetensors_entries` then parses it
    again without this hook, so every refusal is worded from the header as written.
    """

    def __init__(self, max_elements: int, sizes: _Sizes) -> None:
        self.max_elements = max_elements
        self.sizes = sizes

    def __call__(self, pairs: list[tuple[str, Any]]) -> object:
        if len(pairs) == 3:
            (first, dtype), (second, shape), (third, offsets) = pairs
            if (first == "dtype" and second == "shape" and third == "data_offsets" and type(dtype) is str
                    and type(shape) is list and type(offsets) is list and len(offsets) == 2):
                key = (dtype, repr(shape))
                known = self.sizes.get(key)
                if known is None:
                    try:
                        entry = _parse_entry("", dict(pairs), self.max_elements)
                    except (TensorFileError, LimitExceeded):  # left a dict, refused by name later
                        return unique_keys(pairs)
                    known = self.sizes[key] = (entry.shape, entry.end - entry.begin)
                begin, end = offsets
                if type(begin) is int and type(end) is int and 0 <= begin <= end and end - begin == known[1]:
                    return (dtype, known[0], begin, end)
        return unique_keys(pairs)


def _parse_entries(header: dict[str, Any], max_elements: int, sizes: _Sizes) -> list[Entry]:
    """Every entry of `header` validated as `_parse_entry` does, in the header's order.

    A tuple is an entry `_CompactEntries` validated as it was parsed.  A dict
    whose dtype and shape were already validated, with the same element
    limit, is checked for its offsets alone; anything else, and every
    refusal, goes through `_parse_entry`, so an entry is refused with the
    same message whichever way it came.
    """
    entries: list[Entry] = []
    append = entries.append
    for name, raw in header.items():
        if type(raw) is tuple:
            append((name, *raw))
            continue
        if type(raw) is dict and len(raw) == 3:
            dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
            if type(shape) is list and type(offsets) is list and len(offsets) == 2 and type(dtype) is str:
                begin, end = offsets
                try:
                    known = sizes.get((dtype, repr(shape)))
                except RecursionError:  # a shape nested past repr's depth: _parse_entry refuses it
                    known = None
                if (known is not None and type(begin) is int and type(end) is int and 0 <= begin <= end
                        and end - begin == known[1]):
                    append((name, dtype, known[0], begin, end))
                    continue
        entry = _parse_entry(name, raw, max_elements)
        sizes[(entry.dtype, repr(list(entry.shape)))] = (entry.shape, entry.end - entry.begin)
        append((name, entry.dtype, entry.shape, entry.begin, entry.end))
    return entries


def parse_safetensors_header(
    prefix: bytes,
    file_bytes: int | None,
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> SafetensorsHeader:
    """Validate a safetensors header given the file's first ``8 + N`` bytes and its total size.

    `prefix` may be longer than the header (it is cut at ``8 + N``).  Raises
    `TensorFileError` or `LimitExceeded`; returns the entries sorted by
    offset.  `file_bytes` None (a file still arriving) takes the data area to
    end where the entries do; the entries must still tile it without gaps.
    """
    ordered, metadata, data_offset = parse_safetensors_entries(
        prefix, file_bytes, max_tensors=max_tensors, max_elements=max_elements, max_header_bytes=max_header_bytes)
    entries = {name: TensorEntry(dtype, shape, begin, end) for name, dtype, shape, begin, end in ordered}
    return SafetensorsHeader(entries, metadata, data_offset)


def parse_safetensors_entries(
    prefix: bytes,
    file_bytes: int | None,
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> tuple[list[Entry], dict[str, str], int]:
    """`parse_safetensors_header` as plain tuples: the entries ``(name, dtype, shape, begin, end)`` sorted by
    offset, the metadata, and where the data starts (``8 + N``).  The same checks and refusals; a reader of
    headers alone (`quant_core.tensorio.checkpoint_headers`) makes its own records from them, without a
    `TensorEntry` per tensor in between.

    The header is parsed with `_CompactEntries`; a header it refuses is parsed again as plain JSON objects
    and refused from those (at most twice the work, for a refusal), so the answer is the plain parse's.
    """
    if len(prefix) < 8 or (file_bytes is not None and file_bytes < 8):
        raise TensorFileError(f"safetensors file of {file_bytes if file_bytes is not None else len(prefix)} bytes "
                              "is shorter than its 8-byte header length")
    (header_bytes,) = struct.unpack("<Q", prefix[:8])
    if header_bytes > max_header_bytes:
        raise LimitExceeded("safetensors header bytes", header_bytes, max_header_bytes, field="file")
    if file_bytes is not None and header_bytes > file_bytes - 8:
        raise TensorFileError(
            f"safetensors header length {header_bytes} runs past the end of a {file_bytes}-byte file"
        )
    if len(prefix) < 8 + header_bytes:
        raise TensorFileError(f"safetensors header truncated: {len(prefix) - 8} of {header_bytes} bytes")
    sizes: _Sizes = {}
    try:
        return _checked_entries(prefix, header_bytes, file_bytes, max_tensors, max_elements, sizes,
                                _CompactEntries(max_elements, sizes))
    except (TensorFileError, LimitExceeded):
        pass
    return _checked_entries(prefix, header_bytes, file_bytes, max_tensors, max_elements, {}, unique_keys)


def _checked_entries(prefix: bytes, header_bytes: int, file_bytes: int | None, max_tensors: int, max_elements: int,
                     sizes: _Sizes, hook: Callable[[list[tuple[str, Any]]], object],
                     ) -> tuple[list[Entry], dict[str, str], int]:
    """`parse_safetensors_entries` once the header's length is known to be in the prefix, its JSON parsed with
    `hook`."""
    try:
        text = prefix[8:8 + header_bytes].decode("utf-8")
        header = json.loads(text, object_pairs_hook=hook)
    except TensorFileError as exc:
        raise TensorFileError(f"safetensors header {exc.detail}") from None
    except UnicodeDecodeError as exc:
        raise TensorFileError(f"safetensors header is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, deep nesting
        raise TensorFileError(f"safetensors header is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
    del text
    if not isinstance(header, dict):
        raise TensorFileError(f"safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise TensorFileError("safetensors __metadata__ must be an object of string values")
    strings = (*header, *metadata, *metadata.values())
    try:
        "".join(strings).encode("utf-8")  # every string at once; the one to name only when one fails
    except UnicodeEncodeError:
        for string in strings:
            _check_unicode(string)
    if len(header) > max_tensors:
        raise LimitExceeded("tensors in file", len(header), max_tensors, field="file")
    ordered = _parse_entries(header, max_elements, sizes)
    del header
    ordered.sort(key=_OFFSETS)  # stable: entries of one range (empty tensors) keep the header's order
    position = 0
    for name, _, _, begin, end in ordered:
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise TensorFileError(
                f"safetensors entry {name!r} starts at {begin} but the previous tensor ends at "
                f"{position}: it {problem}"
            )
        position = end
    data_bytes = position if file_bytes is None else file_bytes - 8 - header_bytes
    if position != data_bytes:
        raise TensorFileError(f"safetensors tensors cover {position} bytes but the data area holds {data_bytes}")
    return ordered, dict(metadata), 8 + header_bytes


def read_safetensors_header(
    path: str | os.PathLike[str],
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> SafetensorsHeader:
    """Read and validate only the header of a safetensors file (no tensor data is touched)."""
    file_bytes = Path(path).stat().st_size
    with open(path, "rb") as handle:
        length = handle.read(8)
        if len(length) < 8:
            raise TensorFileError(f"safetensors file of {file_bytes} bytes is shorter than its 8-byte header length")
        (header_bytes,) = struct.unpack("<Q", length)
        # Refuse before reading N bytes, so a hostile N is never allocated.
        if header_bytes > max_header_bytes:
            raise LimitExceeded("safetensors header bytes", header_bytes, max_header_bytes, field="file")
        prefix = length + handle.read(min(header_bytes, max(file_bytes - 8, 0)))
    return parse_safetensors_header(
        prefix, file_bytes, max_tensors=max_tensors, max_elements=max_elements, max_header_bytes=max_header_bytes
    )


class SafetensorsFile(Mapping[str, NDArray[Any]]):
    """A validated safetensors file: a lazy mapping from tensor name to a read-only array.

    Each access returns a view of one read-only memory map of the file, so
    only the tensors used are paged in.  `entries` gives dtypes and shapes
    without touching data; `metadata` is the ``__metadata__`` map.
    """

    def __init__(self, path: str | os.PathLike[str], header: SafetensorsHeader) -> None:
        self.path = Path(path)
        self.entries = header.entries
        self.metadata = header.metadata
        self._data_offset = header.data_offset
        self._map: np.memmap[Any, np.dtype[np.uint8]] | None = None

    def _data(self) -> np.memmap[Any, np.dtype[np.uint8]]:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def __getitem__(self, name: str) -> NDArray[Any]:
        entry = self.entries[name]
        if entry.begin == entry.end:
            return np.zeros(entry.shape, dtype=entry.numpy_dtype)
        start = self._data_offset + entry.begin
        raw = self._data()[start:self._data_offset + entry.end]
        array: NDArray[Any] = raw.view(entry.numpy_dtype).reshape(entry.shape)
        if not array.dtype.isnative:  # only on a big-endian host
            array = array.astype(array.dtype.newbyteorder("="))
        array.flags.writeable = False
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def read_safetensors(
    path: str | os.PathLike[str],
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> SafetensorsFile:
    """Validate a safetensors file's header and return a lazy mapping of its tensors.

    Limits: at most `max_tensors` tensors, `max_elements` elements in any one
    tensor, a JSON header of at most `max_header_bytes` (each a
    `LimitExceeded`).  Every other problem is a `TensorFileError`.
    """
    header = read_safetensors_header(
        path, max_tensors=max_tensors, max_elements=max_elements, max_header_bytes=max_header_bytes
    )
    return SafetensorsFile(path, header)


def encode_safetensors_header(entries: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str]
                              ) -> bytes:
    """The JSON header (without its 8-byte length) of tensors laid out back to back in `entries`' order.

    Each entry is ``(name, safetensors dtype, shape)``; the header is padded
    with spaces to a multiple of 8 bytes, as the reference writer does.
    """
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    position = 0
    for name, dtype, shape in entries:
        if name == METADATA_KEY:
            raise TensorFileError(f"a tensor cannot be named {METADATA_KEY!r}", field="tensors")
        nbytes = math.prod(int(dim) for dim in shape) * SAFETENSORS_DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": [int(dim) for dim in shape],
                        "data_offsets": [position, position + nbytes]}
        position += nbytes
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encoded + b" " * (-len(encoded) % HEADER_ALIGNMENT)


def _header_bytes(tensors: Mapping[str, NDArray[Any]], metadata: Mapping[str, str]) -> bytes:
    return encode_safetensors_header(
        [(name, safetensors_dtype_name(array.dtype), array.shape) for name, array in tensors.items()], metadata)


def write_safetensors_to(
    handle: IO[bytes], tensors: Mapping[str, NDArray[Any]], metadata: Mapping[str, str] | None = None
) -> int:
    """Write `tensors` (in the mapping's order) and `metadata` as safetensors to an open binary file.

    Arrays are written little-endian and row-major whatever their layout.
    Returns the number of bytes written.
    """
    if metadata is not None and not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise TensorFileError("safetensors metadata must map strings to strings", field="metadata")
    header = _header_bytes(tensors, metadata or {})
    handle.write(struct.pack("<Q", len(header)))
    handle.write(header)
    written = 8 + len(header)
    for array in tensors.values():
        little = array.astype(array.dtype.newbyteorder("<"), copy=False) if array.dtype.byteorder == ">" else array
        contiguous = np.ascontiguousarray(little)
        handle.write(contiguous.reshape(-1).view(np.uint8).data)
        written += contiguous.nbytes
    return written


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, NDArray[Any]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a safetensors file at `path`; see `write_safetensors_to`.  Returns the file size."""
    with open(path, "wb") as handle:
        return write_safetensors_to(handle, tensors, metadata)
