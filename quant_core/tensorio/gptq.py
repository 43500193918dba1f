"""GPTQ checkpoint export (the layout AutoGPTQ, GPTQModel, vLLM and TGI load).

Per quantized tensor ``<prefix>.weight`` of shape ``[out, in]`` with ``G``
groups, tensors named ``<prefix>.<part>``:

* ``qweight`` int32 ``[in / 8, out]``: the code of input row ``8k + j`` in
  bits ``4j..4j+3`` of ``qweight[k, o]`` (packed along the input dimension);
* ``qzeros`` int32 ``[G, out / 8]``: the zero of output ``8m + j`` in bits
  ``4j`` of ``qzeros[g, m]`` (packed along the output dimension);
* ``scales`` fp16 ``[G, out]`` (nibble's ``[out, G]`` transposed);
* ``g_idx`` int32 ``[in]``: the group of each input column.

The reference decoder (AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py``,
``QuantLinear.pack`` and the dequantization in ``forward``) computes
``scales[g_idx] × (w − (zeros + 1))``: checkpoint format v1 ("gptq") stores
``zero − 1``.  A zero of 0 would be stored as −1, which the reference packer
smears over the neighbouring nibbles, so nibble refuses it (`InvalidTensor`
naming the tensor and the first place) instead of clamping silently: ask for
``checkpoint_format="gptq_v2"``, which stores zeros as they are (GPTQModel's
v2), or quantize with zeros in [1, 15] (``quantize(..., min_zero=1)``, which
the API's ``output=gptq`` does: a group whose zero would be 0 gets zero 1 and
a scale that still spans it).  Symmetric tensors store 8 − 1 = 7
in v1, as AutoGPTQ does for ``sym=True``.

How this layout was checked: AutoGPTQ's own layers (``qlinear_cuda_old`` and,
for act-order, ``qlinear_cuda``, on their CPU path) decode nibble's exports in
tests/quant_core/tensorio/test_reference_libraries.py, and the result equals
nibble's `dequantize` bit for bit; tests/quant_core/tensorio/reference_decoders.py
transcribes the same unpacking in NumPy for the checks AutoGPTQ cannot make
(GPTQModel's v2 checkpoints, fewer than 32 rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec, InvalidTensor
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio._export_common import (
    add_exported,
    code_matrix,
    group_index,
    has_act_order,
    integer_zeros,
    merge_passthrough,
    module_prefix,
    pack_nibbles_int32,
    require_multiple,
    single_scheme,
)
from quant_core.tensorio.safetensors_io import write_safetensors

CheckpointFormat = Literal["gptq", "gptq_v2"]


def gptq_tensors(name: str, q: QuantizedTensor, checkpoint_format: CheckpointFormat = "gptq"
                 ) -> dict[str, NDArray[Any]]:
    """The four GPTQ tensors of one quantized tensor, keyed ``<prefix>.qweight`` etc."""
    out_features, in_features = q.shape
    require_multiple(in_features, 8, "in_features", name, "GPTQ")
    require_multiple(out_features, 8, "out_features", name, "GPTQ")
    if q.format.padded_columns(in_features) != in_features:
        raise InvalidSpec("format", q.format.label(), f"GPTQ has no padded groups (tensor {name!r})")
    zeros = integer_zeros(q, name, "GPTQ").astype(np.int16)
    if checkpoint_format == "gptq":
        if (zeros == 0).any():
            row, group = (int(i) for i in np.argwhere(zeros == 0)[0])
            raise InvalidTensor(
                f"tensor {name!r} has zero point 0 (first at row {row}, group {group}); GPTQ v1 stores "
                "zero − 1 and cannot hold it: export with checkpoint_format='gptq_v2' or quantize with "
                "min_zero=1 (zeros in [1, 15], what POST /v1/quantize output=gptq does)",
                field="checkpoint_format", name=name)
        zeros -= 1
    prefix = module_prefix(name)
    return {
        f"{prefix}.qweight": pack_nibbles_int32(code_matrix(q).T, axis=0),
        f"{prefix}.qzeros": pack_nibbles_int32(zeros.astype(np.uint8).T, axis=1),
        f"{prefix}.scales": np.ascontiguousarray(q.scales.T, dtype=np.float16),
        f"{prefix}.g_idx": group_index(q),
    }


def gptq_config(tensors: Mapping[str, QuantizedTensor], checkpoint_format: CheckpointFormat = "gptq"
                ) -> dict[str, Any]:
    """The ``quantize_config.json`` of a GPTQ export (the fields AutoGPTQ / transformers read)."""
    group_size, symmetric = single_scheme(tensors, "GPTQ")
    return gptq_scheme_config(group_size, symmetric, any(has_act_order(q) for q in tensors.values()),
                              checkpoint_format)


def gptq_scheme_config(group_size: int | None, symmetric: bool, act_order: bool,
                       checkpoint_format: CheckpointFormat = "gptq") -> dict[str, Any]:
    """`gptq_config` from the scheme itself (a checkpoint written tensor by tensor holds no tensors at the end)."""
    return {
        "bits": 4,
        "group_size": -1 if group_size is None else group_size,
        "desc_act": act_order,
        "sym": symmetric,
        "true_sequential": True,
        "static_groups": False,
        "checkpoint_format": checkpoint_format,
        "quant_method": "gptq",
    }


def export_gptq(
    tensors: Mapping[str, QuantizedTensor],
    passthrough: Mapping[str, NDArray[Any]] | None,
    path: str | os.PathLike[str],
    *,
    checkpoint_format: CheckpointFormat = "gptq",
    config_path: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a GPTQ safetensors checkpoint at `path`; returns its ``quantize_config.json`` dict.

    The config is also written to `config_path` when given; `metadata` joins
    the file's ``__metadata__`` (a loader reads only its own keys).  Raises
    `InvalidSpec` (mixed schemes, fp16 zeros, padded groups, unknown
    checkpoint format) or `InvalidTensor` (dimensions not multiples of 8, a
    zero of 0 in v1).
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise InvalidSpec("checkpoint_format", checkpoint_format, "must be 'gptq' (v1) or 'gptq_v2'")
    config = gptq_config(tensors, checkpoint_format)
    stored: dict[str, NDArray[Any]] = {}
    for name, q in tensors.items():
        add_exported(stored, gptq_tensors(name, q, checkpoint_format), name)
    write_safetensors(path, merge_passthrough(stored, passthrough),
                      {**(metadata or {}), "format": "pt", "quant_method": "gptq"})
    if config_path is not None:
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
    return config
