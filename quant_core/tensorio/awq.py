"""AWQ GEMM checkpoint export (the layout AutoAWQ, vLLM and TGI load as ``version: gemm``).

Per quantized tensor ``<prefix>.weight`` ``[out, in]`` with group size ``g``:

* ``qweight`` int32 ``[in, out / 8]``: for input row ``i`` and word ``m``,
  nibble slot ``s`` (bits ``4s``) holds the code of output ``8m + ORDER[s]``
  with ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`` (AutoAWQ ``awq/utils/packing_utils.py``
  ``AWQ_ORDER``; its decoder undoes it with ``AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]``);
* ``qzeros`` int32 ``[in / g, out / 8]``: the integer zeros, same interleave;
* ``scales`` fp16 ``[in / g, out]``.

Dequantization (AutoAWQ ``dequantize_gemm``): ``(w − zero) × scale``, zeros
stored as they are.  AWQ is asymmetric: a symmetric nibble tensor is
exported with every zero equal to 8, which dequantizes to exactly the same
``(q − 8) × s``.  AWQ has no act-order (``g_idx``), no fp16 zeros and no
whole-row groups; those are refused with `InvalidSpec`.

How this layout was checked: AutoAWQ's own ``dequantize_gemm`` decodes nibble's
exports (tests/quant_core/tensorio/test_reference_libraries.py), and
compressed-tensors' port of AutoAWQ's unpacking
(``compressed_tensors/entrypoints/convert/converters/autoawq.py``) converts them
to its own format and decompresses them (test_exports.py); both equal nibble's
`dequantize` bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import (
    FLOAT_DTYPES,
    add_exported,
    code_matrix,
    has_act_order,
    integer_zeros,
    merge_passthrough,
    module_prefix,
    pack_nibbles_int32,
    require_multiple,
    single_scheme,
)
from quant_core.tensorio.safetensors_io import write_safetensors

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def awq_tensors(name: str, q: QuantizedTensor) -> dict[str, NDArray[Any]]:
    """The three AWQ GEMM tensors of one quantized tensor, keyed ``<prefix>.qweight`` etc."""
    out_features, in_features = q.shape
    if q.format.group_size is None:
        raise InvalidSpec("format", q.format.label(), f"AWQ GEMM needs a group size (tensor {name!r})")
    if q.format.padded_columns(in_features) != in_features:
        raise InvalidSpec("format", q.format.label(), f"AWQ has no padded groups (tensor {name!r})")
    if has_act_order(q):
        raise InvalidSpec("format", q.format.label(), f"AWQ has no act-order g_idx (tensor {name!r})")
    require_multiple(out_features, 8, "out_features", name, "AWQ")
    prefix = module_prefix(name)
    return {
        f"{prefix}.qweight": pack_nibbles_int32(code_matrix(q).T, axis=1, order=AWQ_ORDER),
        f"{prefix}.qzeros": pack_nibbles_int32(integer_zeros(q, name, "AWQ").T, axis=1, order=AWQ_ORDER),
        f"{prefix}.scales": np.ascontiguousarray(q.scales.T, dtype=np.float16),
    }


def awq_config(tensors: Mapping[str, QuantizedTensor], passthrough: Mapping[str, NDArray[Any]] | None = None
               ) -> dict[str, Any]:
    """The ``quantization_config`` entry of config.json for an AWQ GEMM export: ``modules_to_not_convert``
    names the 2-D float ``.weight`` tensors of `passthrough` (stored unquantized)."""
    group_size, _ = single_scheme(tensors, "AWQ")
    return awq_scheme_config(group_size, [module_prefix(name) for name, array in (passthrough or {}).items()
                                          if name.endswith(".weight") and np.ndim(array) == 2
                                          and np.asarray(array).dtype in FLOAT_DTYPES])


def awq_scheme_config(group_size: int | None, modules_to_not_convert: Sequence[str] = ()) -> dict[str, Any]:
    """`awq_config` from the group size alone (AWQ GEMM is always asymmetric, zeros stored), and the modules
    stored unquantized by their full names (null when none): transformers leaves a module whose name an entry
    matches from its start (``should_convert_module``), vLLM one whose name holds an entry
    (``is_layer_skipped_awq``)."""
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
            "version": "gemm", "modules_to_not_convert": list(modules_to_not_convert) or None}


def export_awq(
    tensors: Mapping[str, QuantizedTensor],
    passthrough: Mapping[str, NDArray[Any]] | None,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write an AWQ GEMM safetensors checkpoint at `path`; returns its ``quantization_config`` dict.

    `metadata` joins the file's ``__metadata__`` (a loader reads only its own keys).  The config is
    `awq_config`'s (``modules_to_not_convert``: the linear weights among `passthrough`).
    """
    config = awq_config(tensors, passthrough)
    stored: dict[str, NDArray[Any]] = {}
    for name, q in tensors.items():
        add_exported(stored, awq_tensors(name, q), name)
    write_safetensors(path, merge_passthrough(stored, passthrough),
                      {**(metadata or {}), "format": "pt", "quant_method": "awq"})
    return config
