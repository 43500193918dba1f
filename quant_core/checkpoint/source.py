"""A safetensors checkpoint directory, read tensor by tensor by byte range, every claim checked.

A Hugging Face checkpoint is either one ``model.safetensors`` or several
shards named by ``model.safetensors.index.json`` (``{"metadata": {...},
"weight_map": {tensor name: shard file name}}``, the layout
``transformers``' ``save_pretrained`` writes), beside ``config.json`` and the
tokenizer files.  The directory may come from anyone, so `open_checkpoint`
trusts none of it: every shard's header is validated against the shard's
size (`read_safetensors_header`: offsets inside the data area, tensors tiling
it, so a truncated shard is refused), the index must name exactly the tensors
its shards hold (a tensor it places in a shard that lacks it, or a shard
tensor it does not name, is an error), shard names are plain file names, and
every file read resolves inside `root` (no symlink leads out).
`read_tensor` then reads one tensor's bytes with ``pread`` and refuses a
short read (a shard truncated after it was opened).  Every refusal is a
`CheckpointError` (a `TensorFileError`) or a `LimitExceeded`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio.limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_TENSORS
from quant_core.tensorio.safetensors_io import SAFETENSORS_DTYPES, read_safetensors_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: the largest JSON file (index, config) read from a checkpoint
MAX_JSON_BYTES = 64 * 1024 * 1024
#: weights in other formats: never copied into a safetensors result, where they would be stale
OTHER_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")


class CheckpointError(TensorFileError):
    """A checkpoint directory nibble refuses: a missing or lying index, a truncated shard, an escaping path."""

    def __init__(self, detail: str, *, field: str = "source.path") -> None:
        super().__init__(detail, field=field)


@dataclass(frozen=True, slots=True)
class CheckpointTensor:
    """One tensor of a checkpoint: where its bytes are (`shard`, byte `offset` in it, `nbytes`), what they hold."""

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A validated checkpoint: its tensors in shard order then byte order, and the other files beside them."""

    directory: Path
    tensors: tuple[CheckpointTensor, ...]
    #: each shard's size in bytes when it was validated
    shard_bytes: dict[str, int]
    #: plain files copied through to a result (tokenizer, generation config...), sorted
    other_files: tuple[str, ...]
    #: config.json as a JSON object, or None when there is none
    config: dict[str, Any] | None

    @property
    def total_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)


def _inside(path: Path, root: Path, what: str) -> Path:
    """`path` resolved (symlinks followed), refused unless it lies inside `root` (already resolved)."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise CheckpointError(f"{what} resolves to {resolved}, outside the data root {root}")
    return resolved


#: the longest file name POSIX file systems hold (NAME_MAX), in bytes
MAX_NAME_BYTES = 255


def _plain_name(name: object, what: str) -> str:
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        raise CheckpointError(f"{what} {name!r} is not a plain file name in the checkpoint directory")
    return name


def _is_utf8(name: str) -> bool:
    """Whether a file name read from the disk is UTF-8 (Python holds other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_json_file(path: Path, what: str) -> Any:
    """A small JSON file (at most `MAX_JSON_BYTES`), parsed; `CheckpointError` when it is not a regular file
    (a directory, or a FIFO whose read would wait for ever) or not JSON."""
    if not path.is_file():
        raise CheckpointError(f"{what} is not a regular file")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise LimitExceeded(f"bytes of {what}", size, MAX_JSON_BYTES, field="source.path")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what} is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None


def _weight_map(directory: Path, root: Path) -> dict[str, str] | None:
    index_path = directory / INDEX_NAME
    if not index_path.exists():
        return None
    index = read_json_file(_inside(index_path, root, INDEX_NAME), INDEX_NAME)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{INDEX_NAME} has no weight_map object naming each tensor's shard")
    return {str(name): _plain_name(shard, f"{INDEX_NAME}: the shard of {name!r}") for name, shard in weight_map.items()}


def open_checkpoint(directory: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                    max_tensors: int = DEFAULT_MAX_TENSORS, max_elements: int = DEFAULT_MAX_ELEMENTS,
                    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> Checkpoint:
    """Validate a checkpoint directory (module docstring) and list its tensors without reading their data.

    `root` (default: the directory itself) is where every file read must
    resolve; `max_tensors` bounds the whole checkpoint's tensor count,
    `max_elements` any one tensor, `max_header_bytes` each shard's header.
    """
    base = Path(directory)
    root_path = Path(root if root is not None else directory).resolve()
    if not base.is_dir():  # named as the caller gave it: relative to `root`, whose own path is not the client's
        shown = base if root is None else base.resolve().relative_to(root_path) if base.resolve().is_relative_to(
            root_path) else base.name
        raise CheckpointError(f"'{shown}' is not a directory")
    folder = _inside(base, root_path, "the checkpoint directory")
    weight_map = _weight_map(folder, root_path)
    if weight_map is None:
        if not (folder / SINGLE_NAME).is_file():
            raise CheckpointError(f"the directory holds neither {INDEX_NAME} nor {SINGLE_NAME}")
        shards = [SINGLE_NAME]
    else:
        shards = sorted(set(weight_map.values()))
    if weight_map is not None and len(weight_map) > max_tensors:
        raise LimitExceeded("tensors in checkpoint", len(weight_map), max_tensors, field="source.path")
    tensors: list[CheckpointTensor] = []
    shard_bytes: dict[str, int] = {}
    for shard in shards:
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard!r} named by {INDEX_NAME} is not a file in the directory")
        real = _inside(shard_path, root_path, f"shard {shard!r}")
        try:
            header = read_safetensors_header(real, max_tensors=max_tensors, max_elements=max_elements,
                                             max_header_bytes=max_header_bytes)
        except TensorFileError as exc:
            raise CheckpointError(f"shard {shard!r}: {exc.detail}") from None
        except LimitExceeded as exc:  # the reader names its `file`: here the file is the source's
            raise LimitExceeded(exc.limit, exc.value, exc.maximum, field="source.path") from None
        shard_bytes[shard] = real.stat().st_size
        for name, entry in header.entries.items():
            if weight_map is not None and weight_map.get(name) != shard:
                where = f"in shard {weight_map[name]!r}" if name in weight_map else "nowhere"
                raise CheckpointError(f"shard {shard!r} holds tensor {name!r}, which {INDEX_NAME} places {where}")
            tensors.append(CheckpointTensor(name, shard, entry.dtype, entry.shape,
                                            header.data_offset + entry.begin, entry.end - entry.begin))
        if len(tensors) > max_tensors:
            raise LimitExceeded("tensors in checkpoint", len(tensors), max_tensors, field="source.path")
    if weight_map is not None:
        found = {tensor.name for tensor in tensors}
        missing = sorted(set(weight_map) - found)
        if missing:
            raise CheckpointError(f"{INDEX_NAME} places tensor {missing[0]!r} in shard {weight_map[missing[0]]!r}, "
                                  f"which does not hold it ({len(missing)} such tensor(s))")
    config = None
    if (folder / CONFIG_NAME).exists():  # a config.json that is not a regular file is refused, not left out
        config = read_json_file(_inside(folder / CONFIG_NAME, root_path, CONFIG_NAME), CONFIG_NAME)
        if not isinstance(config, dict):
            raise CheckpointError(f"{CONFIG_NAME} is a JSON {type(config).__name__}, not an object")
    others = []
    for item in sorted(folder.iterdir(), key=lambda found: found.name):
        name = item.name
        if (name in (INDEX_NAME, CONFIG_NAME) or name.startswith(".") or name.endswith(OTHER_WEIGHT_SUFFIXES)
                or not item.is_file()):
            continue
        _inside(item, root_path, f"file {name!r}")
        if not _is_utf8(name):  # copied through, it would be named in the manifest, which is UTF-8 JSON
            raise CheckpointError(f"file name {name!r} is not UTF-8; rename the file or remove it")
        others.append(name)
    return Checkpoint(folder, tuple(tensors), shard_bytes, tuple(others), config)


def read_tensor_bytes(directory: Path, tensor: CheckpointTensor) -> bytearray:
    """The bytes of one tensor, read with ``pread`` from its shard in `directory`; `CheckpointError` on a
    short read."""
    buffer = bytearray(tensor.nbytes)
    view = memoryview(buffer)
    descriptor = os.open(directory / tensor.shard, os.O_RDONLY)
    try:
        done = 0
        while done < tensor.nbytes:
            count = os.preadv(descriptor, [view[done:]], tensor.offset + done)
            if count == 0:
                raise CheckpointError(
                    f"shard {tensor.shard!r} ends {tensor.offset + done} bytes in, inside tensor {tensor.name!r} "
                    f"(bytes {tensor.offset} to {tensor.offset + tensor.nbytes}): it was truncated")
            done += count
    finally:
        os.close(descriptor)
    return buffer


def read_tensor(directory: Path, tensor: CheckpointTensor) -> NDArray[Any]:
    """One tensor as a NumPy array of its own dtype and shape (BF16 as ``ml_dtypes.bfloat16``)."""
    dtype = SAFETENSORS_DTYPES[tensor.dtype]
    array: NDArray[Any] = np.frombuffer(read_tensor_bytes(directory, tensor), dtype=dtype).reshape(tensor.shape)
    if not array.dtype.isnative:  # only on a big-endian host
        array = array.astype(array.dtype.newbyteorder("="))
    return array
