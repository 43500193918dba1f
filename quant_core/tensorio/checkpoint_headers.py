"""The tensor list of a checkpoint from its headers alone: safetensors JSON headers and GGUF headers.

A safetensors file starts with an 8-byte length and a JSON object naming every tensor's dtype,
shape and byte range; a GGUF file with its key/value metadata and one record per tensor (name,
dimensions, ggml type, offset), before any tensor data (gguf-py ``gguf_reader.py`` reads the
same fields).  Either way the weights are never read: a plan from headers costs the headers.
Each tensor comes back as a `HeaderTensor` with its stored bytes (for GGUF, the ggml type's
blocks from gguf-py's ``GGML_QUANT_SIZES``; the file's metadata and alignment padding are not
tensor bytes).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio.limits import DEFAULT_MAX_HEADER_BYTES
from quant_core.tensorio.safetensors_io import parse_safetensors_entries, unique_keys

GGUF_MAGIC = b"GGUF"
HEADER_MAX_ELEMENTS = 1 << 48  # header-only: the largest published tensors pass, nothing is allocated
# gguf value types (gguf-py GGUFValueType): fixed sizes; 8 = string, 9 = array
_GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4  # ggml.h; gguf.cpp refuses a tensor of more dimensions
GGUF_MAX_ARRAY_NESTING = 8  # arrays of arrays: none in published files; deeper would recurse without bound


@dataclass(frozen=True, slots=True)
class HeaderTensor:
    """One tensor a checkpoint header declares: its name, dtype (safetensors or ggml name), shape in
    row-major order (the last dimension is a row), and stored bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int


def safetensors_header_tensors(prefix: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                               max_tensors: int = 1 << 20) -> list[HeaderTensor]:
    """The tensors of a safetensors file from its first ``8 + N`` bytes (the header; more is ignored)."""
    entries, _, _ = parse_safetensors_entries(prefix, None, max_tensors=max_tensors, max_elements=HEADER_MAX_ELEMENTS,
                                              max_header_bytes=max_header_bytes)
    return [HeaderTensor(name, dtype, shape, end - begin) for name, dtype, shape, begin, end in entries]


class TruncatedHeader(TensorFileError):
    """A GGUF header that runs past the bytes given: a truncated file, or a prefix shorter than its header."""


class _Cursor:
    """Reads little-endian GGUF fields from a header prefix; running out is a `TruncatedHeader`, walking more
    than `max_values` metadata values (array items included) a `LimitExceeded`."""

    def __init__(self, data: bytes, max_values: int | None = None) -> None:
        self.data = data
        self.position = 0
        self.max_values = max_values
        self.values = 0

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise TruncatedHeader(f"gguf header truncated: needs byte {end}, the prefix holds {len(self.data)}")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", errors="replace")

    def skip_value(self, value_type: int, depth: int = 0) -> None:
        self.values += 1
        if self.max_values is not None and self.values > self.max_values:
            raise LimitExceeded("gguf metadata values", self.values, self.max_values, field="file")
        if depth > GGUF_MAX_ARRAY_NESTING:
            raise TensorFileError(f"gguf metadata arrays nested more than {GGUF_MAX_ARRAY_NESTING} deep")
        if value_type in _GGUF_SCALAR_BYTES:
            self.take(_GGUF_SCALAR_BYTES[value_type])
        elif value_type == _GGUF_STRING:
            self.take(self.u64())
        elif value_type == _GGUF_ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _GGUF_SCALAR_BYTES:
                self.take(_GGUF_SCALAR_BYTES[item_type] * count)
            else:
                for _ in range(count):
                    self.skip_value(item_type, depth + 1)
        else:
            raise TensorFileError(f"gguf metadata value type {value_type} is unknown")


def _gguf_header(prefix: bytes, max_tensors: int,
                 max_metadata_values: int | None = None) -> tuple[list[HeaderTensor], int]:
    """The tensors of a GGUF header prefix, and where the file's data area starts: after the last tensor
    record, rounded up to ``general.alignment`` (32 when absent; gguf-py ``GGUF_DEFAULT_ALIGNMENT``)."""
    cursor = _Cursor(prefix, max_metadata_values)
    if cursor.take(4) != GGUF_MAGIC:
        raise TensorFileError("not a gguf file: it does not start with GGUF")
    version = cursor.u32()
    if version not in (2, 3):
        raise TensorFileError(f"gguf version {version} is not 2 or 3")
    tensor_count, kv_count = cursor.u64(), cursor.u64()
    if tensor_count > max_tensors:
        raise LimitExceeded("tensors in file", tensor_count, max_tensors, field="file")
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = cursor.string()
        value_type = cursor.u32()
        if key == "general.alignment" and value_type == _GGUF_UINT32:
            alignment = cursor.u32()
            if alignment == 0 or alignment & (alignment - 1):  # gguf.cpp refuses it too
                raise TensorFileError(f"gguf general.alignment {alignment} is not a power of 2")
        else:
            cursor.skip_value(value_type)
    tensors, end = _tensor_records(prefix, cursor.position, tensor_count)
    return tensors, -(-end // alignment) * alignment


_U32, _U64 = struct.Struct("<I").unpack_from, struct.Struct("<Q").unpack_from
_DIMS = [struct.Struct(f"<{count}Q").unpack_from for count in range(GGML_MAX_DIMS + 1)]


def _truncated(needs: int, holds: int) -> TruncatedHeader:
    return TruncatedHeader(f"gguf header truncated: needs byte {needs}, the prefix holds {holds}")


def _tensor_records(data: bytes, position: int, tensor_count: int) -> tuple[list[HeaderTensor], int]:
    """The `tensor_count` tensor records of a GGUF header from `position`, and where they end.

    Each record is read with `struct` straight from `data`, bounds checked as `_Cursor.take` checks them (the
    same refusal, naming the first byte missing): a header may hold a million records (16 MiB of short names),
    and the cursor's method calls were 6 us a record.  A ggml type's name and block sizes are looked up once.
    """
    size = len(data)
    tensors: list[HeaderTensor] = []
    names: set[str] = set()
    types: dict[int, tuple[str, int, int]] = {}  # ggml type id -> its name, elements and bytes a block
    for _ in range(tensor_count):
        if position + 8 > size:
            raise _truncated(position + 8, size)
        end = position + 8 + _U64(data, position)[0]
        if end > size:
            raise _truncated(end, size)
        name = data[position + 8:end].decode("utf-8", errors="replace")
        position = end
        if name in names:  # gguf.cpp refuses a duplicate tensor name too
            raise TensorFileError(f"gguf header names tensor {name!r} twice")
        names.add(name)
        if position + 4 > size:
            raise _truncated(position + 4, size)
        dim_count = _U32(data, position)[0]
        position += 4
        if dim_count > GGML_MAX_DIMS:
            raise TensorFileError(f"gguf tensor {name!r} has {dim_count} dimensions; "
                                  f"ggml's are at most {GGML_MAX_DIMS}")
        if position + 8 * dim_count > size:  # the first dimension missing
            raise _truncated(position + 8 * ((size - position) // 8 + 1), size)
        dims = _DIMS[dim_count](data, position)
        position += 8 * dim_count
        if position + 4 > size:
            raise _truncated(position + 4, size)
        type_id = _U32(data, position)[0]
        if position + 12 > size:  # the offset in the data area (unread: a plan never reads the data)
            raise _truncated(position + 12, size)
        position += 12
        known = types.get(type_id)
        if known is None:
            try:
                ggml_type = GGMLQuantizationType(type_id)
            except ValueError:
                raise TensorFileError(f"gguf tensor {name!r} has ggml type {type_id}, unknown to gguf-py") from None
            known = types[type_id] = (ggml_type.name, *GGML_QUANT_SIZES[ggml_type])
        type_name, block, block_bytes = known
        elements = 1
        for dim in dims:
            elements *= dim
        if elements > HEADER_MAX_ELEMENTS:
            raise LimitExceeded(f"elements of tensor {name!r}", elements, HEADER_MAX_ELEMENTS, field="file")
        if dims and dims[0] % block:
            raise TensorFileError(f"gguf tensor {name!r}: row of {dims[0]} is not whole {type_name} blocks")
        tensors.append(HeaderTensor(name, type_name, dims[::-1], elements // block * block_bytes))
    return tensors, position


def gguf_header_tensors(prefix: bytes, *, max_tensors: int = 1 << 20,
                        max_metadata_values: int | None = None) -> list[HeaderTensor]:
    """The tensors of a GGUF file (versions 2 and 3) from a prefix holding its metadata and tensor records;
    `max_metadata_values` bounds the metadata's values, array items included (None: the prefix bounds them)."""
    return _gguf_header(prefix, max_tensors, max_metadata_values)[0]


def header_length(prefix: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> int:
    """How many bytes the file's header takes, from a prefix holding it: ``8 + N`` for safetensors (its
    length field and JSON), and for GGUF where the data area starts (metadata, tensor records and the
    alignment padding after them).  Bytes past it are tensor data."""
    if prefix[:4] == GGUF_MAGIC:
        return _gguf_header(prefix, 1 << 20)[1]
    if len(prefix) < 8:
        raise TensorFileError(f"{len(prefix)} bytes is shorter than a safetensors header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > max_header_bytes:
        raise LimitExceeded("safetensors header bytes", length, max_header_bytes, field="checkpoint")
    return 8 + int(length)


def index_weight_map(index: bytes) -> dict[str, str]:
    """``weight_map`` of a ``model.safetensors.index.json`` (tensor name -> shard file name)."""
    try:
        document = json.loads(index, object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TensorFileError(f"not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise TensorFileError("no weight_map object naming each tensor's shard file")
    return {str(name): shard for name, shard in weight_map.items()}


def check_against_index(weight_map: dict[str, str], files: dict[str, list[HeaderTensor]]) -> None:
    """Refuse headers (file name -> its tensors) that are not the checkpoint the index describes: a shard
    the index names that is absent, a file it does not name, a tensor it places in a file that lacks it."""
    named = sorted(set(weight_map.values()))
    missing = [name for name in named if name not in files]
    if missing:
        raise TensorFileError(f"the index names {len(named)} shard(s); {len(missing)} not given: "
                              f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    extra = sorted(set(files) - set(named))
    if extra:
        raise TensorFileError(f"{extra[0]} is not a shard the index names ({len(extra)} such file(s))")
    held = {(tensor.name, file) for file, tensors in files.items() for tensor in tensors}
    absent = [(name, shard) for name, shard in weight_map.items() if (name, shard) not in held]
    if absent:
        name, shard = absent[0]
        raise TensorFileError(f"the index places tensor {name!r} in {shard}, whose header does not hold it "
                              f"({len(absent)} such tensor(s))")


def header_only_tensors(prefix: bytes, file: str, *,
                        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> list[HeaderTensor]:
    """`header_tensors` of `file`'s header, which `prefix` must hold and nothing past it (`header_length`): bytes
    of tensor data are refused (`LimitExceeded` naming the file), as `header_length` then `header_tensors` refuse
    them, but a GGUF header's records are walked once, not once for its length and again for its tensors (400,000
    records: 2.4 s each walk)."""
    if prefix[:4] == GGUF_MAGIC:
        tensors, length = _gguf_header(prefix, 1 << 20)
    else:
        length = header_length(prefix, max_header_bytes=max_header_bytes)
    if len(prefix) > length:
        raise LimitExceeded(f"bytes of {file} (its header only: no tensor data)", len(prefix), length)
    if len(prefix) > max_header_bytes + 8:
        raise LimitExceeded("checkpoint header bytes", len(prefix), max_header_bytes, field="checkpoint")
    if prefix[:4] == GGUF_MAGIC:
        return tensors
    return safetensors_header_tensors(prefix, max_header_bytes=max_header_bytes)


def header_tensors(prefix: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> list[HeaderTensor]:
    """The tensors of a safetensors or GGUF header prefix (told apart by GGUF's magic)."""
    if len(prefix) > max_header_bytes + 8:
        raise LimitExceeded("checkpoint header bytes", len(prefix), max_header_bytes, field="checkpoint")
    if prefix[:4] == GGUF_MAGIC:
        return gguf_header_tensors(prefix)
    return safetensors_header_tensors(prefix, max_header_bytes=max_header_bytes)


def read_header_prefix(path: Path, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> bytes:
    """The header bytes of one checkpoint file, and not one byte of its tensor data.

    For GGUF, whose header has no length field, up to `max_header_bytes` are read and cut where
    the data area starts (`header_length`).
    """
    with open(path, "rb") as handle:
        start = handle.read(8)
        if start[:4] == GGUF_MAGIC:
            prefix = start + handle.read(max_header_bytes)
            return prefix[:header_length(prefix)]
        if len(start) < 8:
            raise TensorFileError(f"{path.name}: {len(start)} bytes is shorter than a safetensors header length")
        (length,) = struct.unpack("<Q", start)
        if length > max_header_bytes:
            raise LimitExceeded("safetensors header bytes", length, max_header_bytes, field="checkpoint")
        return start + handle.read(length)


def checkpoint_files(path: Path) -> list[Path]:
    """The files of a checkpoint: the file itself, or a directory's shards (the index's, when it has one)."""
    if not path.is_dir():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        if not isinstance(weight_map, dict):
            raise TensorFileError(f"{index}: weight_map is not an object")
        return [path / name for name in sorted(set(map(str, weight_map.values())))]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.gguf"))
    if not files:
        raise TensorFileError(f"{path} holds no .safetensors or .gguf file")
    return files


def read_checkpoint_headers(path: str | Path,
                            max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> list[HeaderTensor]:
    """Every tensor of a local checkpoint (a file, or a directory of shards), reading only headers."""
    tensors: list[HeaderTensor] = []
    for file in checkpoint_files(Path(path)):
        tensors.extend(header_tensors(read_header_prefix(file, max_header_bytes), max_header_bytes=max_header_bytes))
    return tensors
