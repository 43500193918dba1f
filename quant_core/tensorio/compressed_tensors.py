"""compressed-tensors ``pack-quantized`` export (the W4A16 layout vLLM and LLM Compressor use).

Matches compressed-tensors 0.20 (``compressors/pack_quantized/base.py`` and
``helpers.py``): compressed-tensors quantizes to signed int4 ``q_ct`` in
[−8, 7] with a signed zero point ``zp_ct`` and dequantizes
``(q_ct − zp_ct) × scale``; ``pack_to_int32`` stores ``q_ct + 8`` and puts
element ``i`` of each run of 8 in bits ``4i`` of an int32.  nibble's codes
are ``q = q_ct + 8`` and zeros ``z = zp_ct + 8``, so the stored nibbles are
nibble's codes and zeros unchanged.  Per tensor ``<prefix>.weight``:

* ``weight_packed`` int32 ``[out, ceil(in / 8)]``, packed along the input
  dimension (a partial last word is padded with 0 nibbles, as the library does);
* ``weight_scale`` fp16 ``[out, groups]``;
* ``weight_zero_point`` int32 ``[ceil(out / 8), groups]`` (packed along the
  output dimension, ``packed_dim=0``), asymmetric tensors only; for a
  symmetric tensor the library drops the zero point (it is 0, i.e. nibble's 8);
* ``weight_shape`` int64 ``[2]``.

Strategy ``group`` with ``group_size`` g, or ``channel`` for a whole-row
group.  Act-order (``g_idx``) and fp16 zeros are refused (`InvalidSpec`).

The library's own ``compress`` writes these int32 words (tests/quant_core/tensorio/test_exports.py).
Its ``decompress`` (0.20) cannot unpack the zero points of a tensor of 8 rows or fewer with several
groups (one int32 row, viewed as bytes after a transpose): it raises, for its own files as for these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import (
    add_exported,
    code_matrix,
    has_act_order,
    integer_zeros,
    merge_passthrough,
    module_prefix,
    pack_nibbles_int32,
    pad_axis,
)
from quant_core.tensorio.safetensors_io import write_safetensors


def compressed_tensors_tensors(name: str, q: QuantizedTensor) -> dict[str, NDArray[Any]]:
    """The pack-quantized tensors of one quantized tensor, keyed ``<prefix>.weight_packed`` etc."""
    out_features, in_features = q.shape
    if q.format.padded_columns(in_features) != in_features:
        raise InvalidSpec("format", q.format.label(), f"compressed-tensors has no padded groups (tensor {name!r})")
    if has_act_order(q):
        raise InvalidSpec("format", q.format.label(),
                          f"act-order g_idx is not exported to compressed-tensors (tensor {name!r})")
    zeros = integer_zeros(q, name, "compressed-tensors")
    prefix = module_prefix(name)
    if in_features % 8 == 0:
        # nibble's payload already is this layout: two codes per byte, the even one in the low nibble, so the
        # little-endian int32 holding bytes 4k..4k+3 of a row has code 8k + i in bits 4i (no copy)
        packed = np.ascontiguousarray(q.packed).view("<i4").reshape(out_features, in_features // 8)
    else:
        packed = pack_nibbles_int32(pad_axis(code_matrix(q), 1, 8), axis=1)
    stored: dict[str, NDArray[Any]] = {
        f"{prefix}.weight_packed": packed,
        f"{prefix}.weight_scale": np.ascontiguousarray(q.scales, dtype=np.float16),
        f"{prefix}.weight_shape": np.array([out_features, in_features], dtype=np.int64),
    }
    if not q.format.symmetric:
        stored[f"{prefix}.weight_zero_point"] = pack_nibbles_int32(pad_axis(zeros, 0, 8), axis=0)
    return stored


def _weights_args(group_size: int | None, symmetric: bool) -> dict[str, Any]:
    return {
        "num_bits": 4, "type": "int", "symmetric": symmetric,
        "strategy": "channel" if group_size is None else "group", "group_size": group_size,
        "dynamic": False, "actorder": None, "observer": "minmax", "block_structure": None,
    }


def compressed_tensors_config(tensors: Mapping[str, QuantizedTensor]) -> dict[str, Any]:
    """The ``quantization_config`` of config.json: one config group per distinct scheme.

    Each group targets its modules by exact name (compressed-tensors'
    ``match_name`` compares plain strings for equality).
    """
    groups: dict[tuple[int | None, bool], list[str]] = {}
    for name, q in tensors.items():
        groups.setdefault((q.format.group_size, q.format.symmetric), []).append(module_prefix(name))
    return compressed_tensors_scheme_config(groups)


def compressed_tensors_scheme_config(groups: Mapping[tuple[int | None, bool], list[str]]) -> dict[str, Any]:
    """The ``quantization_config`` of modules grouped by ``(group_size, symmetric)``: one config group each,
    targeting its modules (names without ``.weight``) by exact name."""
    config_groups = {
        f"group_{index}": {
            "targets": targets,
            "weights": _weights_args(group_size, symmetric),
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
        for index, ((group_size, symmetric), targets) in enumerate(groups.items())
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": [],
        "kv_cache_scheme": None,
    }


def export_compressed_tensors(
    tensors: Mapping[str, QuantizedTensor],
    passthrough: Mapping[str, NDArray[Any]] | None,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a pack-quantized safetensors checkpoint at `path`; returns its ``quantization_config`` dict.

    `metadata` joins the file's ``__metadata__`` (a loader reads only its own keys).
    """
    config = compressed_tensors_config(tensors)
    stored: dict[str, NDArray[Any]] = {}
    for name, q in tensors.items():
        add_exported(stored, compressed_tensors_tensors(name, q), name)
    write_safetensors(path, merge_passthrough(stored, passthrough), {**(metadata or {}), "format": "pt"})
    return config
