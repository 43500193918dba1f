"""Importance statistics files: one non-negative float per input column of each weight tensor.

Three forms are read, each into ``{tensor name: float32 vector}``:

* llama.cpp's imatrix in GGUF form (``llama-imatrix -o imatrix.gguf``,
  tools/imatrix/imatrix.cpp, ``save_imatrix``): for each weight ``<name>`` a
  tensor ``<name>.in_sum2`` (ggml shape ``[in_features, n_mat]``: the sums of
  x² over the activations seen, per matrix) and ``<name>.counts`` (``[1, n_mat]``:
  how many activation rows were summed); ``<name>.in_sum`` (sums of x) may be
  present and is not used.  The statistic is ``in_sum2 / counts``, the mean of
  x²; a tensor with several matrices (experts) gets the mean over all of them,
  ``Σ in_sum2 / Σ counts``, as nibble quantizes 2-D tensors.
* llama.cpp's legacy ``.dat`` (``--output-format dat``, ``save_imatrix_legacy``):
  int32 entry count, then per entry int32 name length, the name's bytes,
  int32 ``ncall``, int32 ``nval`` and ``nval`` float32 values (the mean of x²
  times ``ncall``: a per-tensor constant factor, which nibble's use of the
  statistics, normalised per tensor, does not see); trailing fields (the chunk
  count and the dataset name) are ignored.  All little-endian.
* a ``.safetensors`` file of 1-D float32 vectors named by tensor.

Widths are checked against each tensor when it is quantized
(`quant_core.quantize.api.normalised_importance`, which names the tensor).  A
file nibble cannot read raises `TensorFileError` with ``field="importance"``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import LimitExceeded, NibbleError, TensorFileError
from quant_core.tensorio.checkpoint_headers import TruncatedHeader, gguf_header_tensors
from quant_core.tensorio.limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_TENSORS
from quant_core.tensorio.safetensors_io import read_safetensors

__all__ = ["read_importance", "write_importance_dat"]

FIELD = "importance"
GGUF_MAGIC = b"GGUF"
IN_SUM2 = ".in_sum2"
COUNTS = ".counts"
_MAX_NAME_BYTES = 1 << 16
#: metadata values (array items included) of a GGUF imatrix: imatrix.cpp writes a handful (general.type,
#: imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size); gguf-py parses each at ~50 us, so an 8 MB
#: array of a million empty strings held a pool worker for a minute
MAX_GGUF_METADATA_VALUES = 4096


def read_importance(path: Path, *, max_tensors: int = DEFAULT_MAX_TENSORS,
                    max_elements: int = DEFAULT_MAX_ELEMENTS,
                    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, NDArray[np.float32]]:
    """The importance vectors of a statistics file (GGUF imatrix, legacy .dat or safetensors), by tensor name.

    The form is told by the first bytes: ``GGUF``, then a safetensors header
    (an 8-byte length followed by ``{``), else the legacy ``.dat`` layout.
    """
    with path.open("rb") as handle:
        head = handle.read(9)
    try:
        if head[:4] == GGUF_MAGIC:
            vectors = _read_gguf(path, max_tensors, max_elements, max_header_bytes)
        elif len(head) == 9 and head[8:9] == b"{":
            vectors = _read_safetensors(path, max_tensors, max_elements, max_header_bytes)
        else:
            vectors = _read_dat(path, max_tensors, max_elements)
    except NibbleError as exc:
        exc.field = FIELD
        raise
    if not vectors:
        raise TensorFileError("the importance file holds no statistics", field=FIELD)
    return vectors


def _check_gguf_header(path: Path, max_tensors: int, max_header_bytes: int) -> None:
    """Walk the file's GGUF header with nibble's own bounded reader before gguf-py parses it: gguf-py builds
    Python objects for every metadata value and tensor record first, at ~50 us each, and only then could the
    counts be refused.  At most `max_tensors` tensor records, `MAX_GGUF_METADATA_VALUES` metadata values,
    and a header within `max_header_bytes`."""
    with path.open("rb") as handle:
        prefix = handle.read(max_header_bytes)
        longer = bool(handle.read(1))
    try:
        gguf_header_tensors(prefix, max_tensors=max_tensors, max_metadata_values=MAX_GGUF_METADATA_VALUES)
    except TruncatedHeader:
        if longer:  # the header runs past the bytes nibble reads of it
            raise LimitExceeded("GGUF imatrix header bytes", len(prefix) + 1, max_header_bytes, field=FIELD) from None
        raise


def _read_gguf(path: Path, max_tensors: int, max_elements: int,
               max_header_bytes: int) -> dict[str, NDArray[np.float32]]:
    import gguf

    _check_gguf_header(path, 3 * max_tensors, max_header_bytes)
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, struct.error, OverflowError, MemoryError) as exc:
        raise TensorFileError(f"not a readable GGUF imatrix: {exc}", field=FIELD) from None
    if len(reader.tensors) > 3 * max_tensors:
        raise LimitExceeded("importance tensors", len(reader.tensors), 3 * max_tensors, field=FIELD)
    sums: dict[str, NDArray[Any]] = {}
    counts: dict[str, NDArray[Any]] = {}
    for tensor in reader.tensors:
        if not tensor.name.endswith((IN_SUM2, COUNTS)):
            continue  # in_sum (sums of x), unused
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:  # as imatrix.cpp writes them
            raise TensorFileError(f"GGUF imatrix: {tensor.name!r} is {tensor.tensor_type.name}, not F32",
                                  field=FIELD)
        if int(tensor.n_elements) > max_elements:
            raise LimitExceeded("elements per tensor", int(tensor.n_elements), max_elements, field=FIELD)
        if tensor.name.endswith(IN_SUM2):
            sums[tensor.name[: -len(IN_SUM2)]] = np.asarray(tensor.data, dtype=np.float64)
        elif tensor.name.endswith(COUNTS):
            counts[tensor.name[: -len(COUNTS)]] = np.asarray(tensor.data, dtype=np.float64)
    vectors: dict[str, NDArray[np.float32]] = {}
    for name, in_sum2 in sums.items():
        if name not in counts:
            raise TensorFileError(f"GGUF imatrix: {name + IN_SUM2!r} has no {name + COUNTS!r}", field=FIELD)
        count = counts[name].reshape(-1)
        if in_sum2.ndim > 2:  # imatrix.cpp writes [in_features, n_mat]: one row of sums per matrix
            raise TensorFileError(f"GGUF imatrix: {name + IN_SUM2!r} has {in_sum2.ndim} dimensions; "
                                  "expected [in_features, n_mat]", field=FIELD)
        matrices = in_sum2.reshape(-1, in_sum2.shape[-1]) if in_sum2.ndim else in_sum2.reshape(1, 1)
        if matrices.shape[0] != count.size or count.size == 0:
            raise TensorFileError(f"GGUF imatrix: {name!r} has {matrices.shape[0]} matrices for {count.size} counts",
                                  field=FIELD)
        if not np.isfinite(count).all() or float(count.min()) < 0:
            raise TensorFileError(f"GGUF imatrix: {name!r}: counts must be finite and non-negative (rows of "
                                  f"activations), got {count[:4].tolist()}", field=FIELD)
        total = float(count.sum())
        if total <= 0:
            raise TensorFileError(f"GGUF imatrix: {name!r} was computed from no activations (counts 0)",
                                  field=FIELD)
        vectors[name] = (matrices.sum(axis=0) / total).astype(np.float32)
    return vectors


#: the least bytes one legacy .dat entry takes: its name length, a one-byte name, ncall, nval and one float32
_DAT_MIN_ENTRY_BYTES = 4 + 1 + 4 + 4 + 4


def _read_dat(path: Path, max_tensors: int, max_elements: int) -> dict[str, NDArray[np.float32]]:
    data = path.read_bytes()
    offset = 0

    def take(count: int, what: str) -> bytes:
        nonlocal offset
        if offset + count > len(data):
            raise TensorFileError(f"imatrix .dat truncated: expected {count} bytes of {what} at byte {offset}, "
                                  f"the file has {len(data)}", field=FIELD)
        chunk = data[offset: offset + count]
        offset += count
        return chunk

    def int32(what: str) -> int:
        value: int = struct.unpack("<i", take(4, what))[0]
        return value

    entries = int32("the entry count")
    if entries < 1:
        raise TensorFileError(f"imatrix .dat declares {entries} entries; not an imatrix file", field=FIELD)
    if 4 + entries * _DAT_MIN_ENTRY_BYTES > len(data):  # a JSON or text file read as a count: not a limit passed
        raise TensorFileError(f"imatrix .dat declares {entries} entries, which need at least "
                              f"{4 + entries * _DAT_MIN_ENTRY_BYTES} bytes; the file has {len(data)}: not an "
                              "imatrix file", field=FIELD)
    if entries > max_tensors:
        raise LimitExceeded("importance tensors", entries, max_tensors, field=FIELD)
    vectors: dict[str, NDArray[np.float32]] = {}
    for index in range(entries):
        length = int32(f"entry {index}'s name length")
        if not 0 < length <= _MAX_NAME_BYTES:
            raise TensorFileError(f"imatrix .dat entry {index}: name length {length}", field=FIELD)
        try:
            name = take(length, f"entry {index}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise TensorFileError(f"imatrix .dat entry {index}: the name is not UTF-8", field=FIELD) from None
        int32(f"{name!r}'s ncall")
        values = int32(f"{name!r}'s value count")
        if values < 1:
            raise TensorFileError(f"imatrix .dat entry {name!r} has {values} values", field=FIELD)
        if values > max_elements:
            raise LimitExceeded("elements per tensor", values, max_elements, field=FIELD)
        if name in vectors:
            raise TensorFileError(f"imatrix .dat holds {name!r} twice", field=FIELD)
        vectors[name] = np.frombuffer(take(4 * values, f"{name!r}'s values"), dtype="<f4").astype(np.float32)
    return vectors


def _read_safetensors(path: Path, max_tensors: int, max_elements: int,
                      max_header_bytes: int) -> dict[str, NDArray[np.float32]]:
    tensors = read_safetensors(path, max_tensors=max_tensors, max_elements=max_elements,
                               max_header_bytes=max_header_bytes)
    vectors: dict[str, NDArray[np.float32]] = {}
    for name in tensors:
        array = tensors[name]
        if array.ndim != 1 or array.dtype != np.float32:
            raise TensorFileError(f"importance tensor {name!r} is {array.dtype} of shape {list(array.shape)}; "
                                  "expected a 1-D float32 vector (one value per input column)", field=FIELD)
        vectors[name] = np.array(array, dtype=np.float32)
    return vectors


def write_importance_dat(path: Path, vectors: dict[str, NDArray[np.floating]], ncall: int = 1) -> None:
    """Write `vectors` in llama.cpp's legacy imatrix ``.dat`` layout (module docstring), values times `ncall`."""
    parts = [struct.pack("<i", len(vectors))]
    for name, vector in vectors.items():
        encoded = name.encode("utf-8")
        values = np.ascontiguousarray(vector, dtype="<f4") * np.float32(ncall)
        parts += [struct.pack("<i", len(encoded)), encoded, struct.pack("<ii", ncall, values.size), values.tobytes()]
    parts += [struct.pack("<i", ncall), struct.pack("<i", 0)]  # chunk count, empty dataset name
    path.write_bytes(b"".join(parts))
