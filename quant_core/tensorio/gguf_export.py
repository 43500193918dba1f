"""GGUF export with Q4_0 tensors, written through the ``gguf`` package (llama.cpp's gguf-py).

Q4_0 (ggml ``block_q4_0``): blocks of 32 consecutive weights of a row, each
18 bytes: the fp16 scale ``d`` then 16 bytes ``qs`` with
``qs[j] = code[j] | code[j + 16] << 4``; a weight is ``(code − 8) × d``
(gguf-py ``quants.py``, ``Q4_0.dequantize_blocks``).  That is nibble's
int4 group-32 symmetric format exactly (implicit zero 8, fp16 scale), so only
such tensors are exported (`InvalidSpec` for any other scheme: converting
would re-quantize, which is not an export).

Tensors keep the names they are given (llama.cpp's own names, such as
``blk.0.ffn_up.weight``, are an architecture mapping the caller chooses);
passthrough tensors are written as F32, F16, BF16 or the integer types GGUF
has.  ``general.architecture`` is `architecture`; the quantized tensors'
scheme, method and quality figures go into the string key ``nibble.tensors`` (JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import gguf
import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec, TensorFileError
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import code_matrix, has_act_order
from quant_core.tensorio.nibble_file import describe_quantized

Q4_0_BLOCK = 32
_HALF_BLOCK = Q4_0_BLOCK // 2
_GGUF_INTEGERS = {np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)}


def q4_0_blocks(name: str, q: QuantizedTensor) -> NDArray[np.uint8]:
    """The Q4_0 bytes of `q`: uint8 ``[out, in / 32 × 18]`` (one row of blocks per output row)."""
    fmt = q.format
    if not (fmt.name == "int4" and fmt.group_size == Q4_0_BLOCK and fmt.symmetric
            and fmt.padded_columns(q.shape[1]) == q.shape[1] and not has_act_order(q)):
        # name the setting to change: the group size, then the symmetry, else the format as a whole
        field = "group_size" if fmt.group_size != Q4_0_BLOCK else "symmetric" if not fmt.symmetric else "format"
        raise InvalidSpec(field, fmt.label(),
                          "GGUF Q4_0 holds int4 group-32 symmetric tensors, in_features a multiple of 32 "
                          f"(tensor {name!r})")
    out_features, in_features = q.shape
    blocks = in_features // Q4_0_BLOCK
    codes = code_matrix(q).reshape(out_features, blocks, Q4_0_BLOCK)
    quants = codes[..., :_HALF_BLOCK] | (codes[..., _HALF_BLOCK:] << np.uint8(4))
    scales = np.ascontiguousarray(q.scales, dtype="<f2").view(np.uint8).reshape(out_features, blocks, 2)
    return np.ascontiguousarray(np.concatenate([scales, quants], axis=-1).reshape(out_features, blocks * 18))


def _add_passthrough(writer: gguf.GGUFWriter, name: str, array: NDArray[Any]) -> None:
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        raw = np.ascontiguousarray(array).view(np.uint8)
        writer.add_tensor(name, raw.reshape(*array.shape[:-1], -1) if array.ndim else raw,
                          raw_dtype=gguf.GGMLQuantizationType.BF16)
    elif array.dtype in (np.dtype(np.float32), np.dtype(np.float16)) or array.dtype in _GGUF_INTEGERS:
        writer.add_tensor(name, np.ascontiguousarray(array))
    else:
        raise TensorFileError(f"GGUF has no tensor type for {array.dtype} (passthrough tensor {name!r})",
                              field="tensors")


def export_gguf(
    tensors: Mapping[str, QuantizedTensor],
    passthrough: Mapping[str, NDArray[Any]] | None,
    path: str | os.PathLike[str],
    *,
    architecture: str = "nibble",
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a GGUF file at `path`: quantized tensors as Q4_0, passthrough tensors unchanged.

    Each `metadata` item becomes a string key/value pair of the file.
    """
    blocks = {name: q4_0_blocks(name, q) for name, q in tensors.items()}
    clash = sorted(set(blocks) & set(passthrough or {}))
    if clash:
        raise TensorFileError(f"passthrough tensors {clash} collide with quantized tensors", field="tensors")
    writer = gguf.GGUFWriter(path, architecture)
    try:
        if blocks:  # required by the GGUF spec whenever a tensor is quantized
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("nibble.tensors", json.dumps({n: describe_quantized(q) for n, q in tensors.items()}))
        for key, value in (metadata or {}).items():
            writer.add_string(key, value)
        for name, data in blocks.items():
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        for name, array in (passthrough or {}).items():
            _add_passthrough(writer, name, np.asarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
