"""Bit-layout helpers shared by the exports: codes as a matrix, zeros, int32 nibble packing, names.

No quantization math here: only rearranging nibble's stored integers into
other engines' layouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from quant_core.errors import InvalidSpec, InvalidTensor, TensorFileError
from quant_core.quantize.packing import default_g_idx, unpack_codes
from quant_core.quantize.types import QuantizedTensor

SYMMETRIC_ZERO = 8  # the implicit zero of nibble's symmetric formats (types.py)
NIBBLES_PER_INT32 = 8
#: the float dtypes a linear weight stored unquantized has (safetensors F32, F16, BF16)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
#: names of the tensors no INT4 checkpoint quantizes and no engine's loader makes a quantized layer of unless its
#: config asks: token embeddings, the LM head, norms, MoE routers, learned positions (the checkpoint jobs' default
#: ``exclude``, quant_core/checkpoint/plan.py)
#: (a module named ``gate`` is a router in every family: Qwen-MoE and DeepSeek's ``mlp.gate``, Mixtral's and
#: Phi-3.5-MoE's ``block_sparse_moe.gate``, which vLLM builds with ``quant_config=None``; Qwen2-MoE's
#: ``shared_expert_gate`` is a plain ``torch.nn.Linear`` in vLLM and transformers; the multi-token-prediction
#: layer's ``eh_proj`` is a plain ``nn.Linear`` and its ``shared_head.head`` a ``ParallelLMHead`` in vLLM's
#: glm4_moe_mtp.py and deepseek_mtp.py, which load them unquantized as the LM head)
UNQUANTIZED_NAME_GLOBS: tuple[str, ...] = ("*embed*", "*lm_head*", "*norm*", "*.gate.weight", "*shared_expert_gate*",
                                           "*router*", "*wte*", "*wpe*", "*eh_proj*", "*shared_head.head*")
#: ... and DeepSeek Sparse Attention's indexer.weights_proj, which vLLM's deepseek_v2.py Indexer builds with
#: ``quant_config=None`` (DeepSeek-V3.2's fp8 checkpoints store it in bf16; its k_norm is a norm above)
UNQUANTIZED_NAME_GLOBS += ("*indexer.weights_proj*",)


def module_prefix(name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` → ``model.layers.0.mlp.up_proj`` (names without ``.weight`` kept)."""
    return name.removesuffix(".weight")


def code_matrix(q: QuantizedTensor) -> NDArray[np.uint8]:
    """The codes of `q` as ``[out_features, in_features]`` uint8 (padded columns dropped)."""
    out_features, in_features = q.shape
    columns = q.format.padded_columns(in_features)
    codes = unpack_codes(q.packed, out_features * columns).reshape(out_features, columns)
    return np.ascontiguousarray(codes[:, :in_features])


def integer_zeros(q: QuantizedTensor, name: str, export: str) -> NDArray[np.uint8]:
    """Zeros ``[out, groups]`` as uint8: the int4 zeros, or 8 everywhere for a symmetric tensor.

    fp16 zeros (HQQ) have no integer representation in the int4 exports and
    are refused with `InvalidSpec`.
    """
    if q.format.zero == "fp16" or (q.zeros is not None and q.zeros.dtype != np.uint8):
        raise InvalidSpec("format", q.format.label(),
                          f"{export} stores 4-bit integer zeros; tensor {name!r} has fp16 (HQQ) zeros")
    if q.zeros is None:
        return np.full(q.scales.shape, SYMMETRIC_ZERO, dtype=np.uint8)
    return np.asarray(q.zeros, dtype=np.uint8)


def group_index(q: QuantizedTensor) -> NDArray[np.int32]:
    """Group of each input column: `q.g_idx`, or ``j // group_size``."""
    if q.g_idx is not None:
        return np.asarray(q.g_idx, dtype=np.int32)
    return default_g_idx(q.shape[1], q.format.group_size)


def has_act_order(q: QuantizedTensor) -> bool:
    """True when `q.g_idx` is not the trivial ``j // group_size`` map."""
    return q.g_idx is not None and not np.array_equal(q.g_idx, default_g_idx(q.shape[1], q.format.group_size))


def require_multiple(value: int, divisor: int, what: str, name: str, export: str) -> None:
    """Refuse (`InvalidTensor`) a dimension the export's int32 packing cannot hold."""
    if value % divisor:
        raise InvalidTensor(f"{export} packs 8 codes per int32: {what} of tensor {name!r} is {value}, "
                            f"not a multiple of {divisor}", field="tensors", name=name)


def pack_nibbles_int32(nibbles: NDArray[np.uint8], axis: int, order: Sequence[int] = range(8)
                       ) -> NDArray[np.int32]:
    """Pack 4-bit values 8 per int32 along `axis`: slot ``i`` (bits ``4i..4i+3``) holds element ``order[i]``.

    The length along `axis` must be a multiple of 8.  The result is the
    little-endian int32 word reinterpreted from the uint32 bit pattern.
    """
    moved = np.moveaxis(np.asarray(nibbles, dtype=np.uint8), axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // NIBBLES_PER_INT32, NIBBLES_PER_INT32)
    blocks = blocks[..., list(order)].astype(np.uint32)
    shifts = (4 * np.arange(NIBBLES_PER_INT32, dtype=np.uint32))
    words = np.bitwise_or.reduce(blocks << shifts, axis=-1).astype(np.uint32)
    return np.ascontiguousarray(np.moveaxis(words, -1, axis)).view(np.int32)


def pad_axis(values: NDArray[np.uint8], axis: int, multiple: int) -> NDArray[np.uint8]:
    """`values` padded with zeros along `axis` to a multiple of `multiple`."""
    missing = -values.shape[axis] % multiple
    if not missing:
        return values
    widths = [(0, 0)] * values.ndim
    widths[axis] = (0, missing)
    return np.pad(values, widths)


def add_exported(stored: dict[str, NDArray[Any]], parts: Mapping[str, NDArray[Any]], name: str) -> None:
    """Add one quantized tensor's exported `parts` to `stored`, refusing (`TensorFileError`) a name taken
    by another quantized tensor (``a.weight`` and ``a`` both export as ``a.qweight``)."""
    taken = sorted(set(parts) & set(stored))
    if taken:
        raise TensorFileError(f"quantized tensor {name!r} would be stored as {taken}, names another quantized "
                              "tensor of this export already uses", field="tensors")
    stored.update(parts)


def merge_passthrough(stored: dict[str, NDArray[Any]], passthrough: Mapping[str, NDArray[Any]] | None
                      ) -> dict[str, NDArray[Any]]:
    """Add passthrough tensors to `stored`, refusing (`TensorFileError`) a name used twice."""
    for name, array in (passthrough or {}).items():
        if name in stored:
            raise TensorFileError(f"passthrough tensor {name!r} collides with an exported tensor", field="tensors")
        stored[name] = np.asarray(array)
    return stored


def single_scheme(tensors: Mapping[str, QuantizedTensor], export: str) -> tuple[int | None, bool]:
    """The one ``(group_size, symmetric)`` all tensors share (a GPTQ/AWQ config describes one scheme)."""
    schemes = {(q.format.group_size, q.format.symmetric) for q in tensors.values()}
    if len(schemes) > 1:
        described = sorted(f"group_size={g} symmetric={s}" for g, s in schemes)
        raise InvalidSpec("format", described, f"one {export} checkpoint holds one scheme")
    if not schemes:
        raise InvalidSpec("tensors", 0, f"a {export} export needs at least one quantized tensor")
    group_size, symmetric = schemes.pop()
    return group_size, symmetric
