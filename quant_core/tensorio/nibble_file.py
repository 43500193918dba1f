"""nibble's own ``.safetensors`` file: quantized tensors, passthrough tensors, and their description.

Layout, per quantized tensor named ``N`` (the full input name, e.g.
``model.layers.0.mlp.up_proj.weight``):

* ``N.qweight`` U8 ``[ceil(out × C / 2)]``: the packed codes exactly as in
  nibble's payload (quant_core/quantize/packing.py: row-major over the padded
  rows, low nibble first);
* ``N.scales`` F16 ``[out, groups]``;
* ``N.zeros``: absent when symmetric; U8 ``[ceil(out × groups / 2)]`` holding
  the int4 zeros packed like the codes; or F16 ``[out, groups]`` (HQQ zeros);
* ``N.g_idx`` I32 ``[in]``, when act-order permuted the columns, and always in the GPTQ layout.

An int8 tensor (a per-tensor format chosen under a byte budget) is stored
as ``N.int8_codes`` I8 ``[out, in]`` and ``N.int8_scales`` F16 ``[out]``
(quant_core/quantize/int8.py), named in ``__metadata__`` ``nibble.int8``
(a JSON list of names); `read_nibble_int8` reads them back.

So the tensor bytes of a quantized entry are exactly nibble's payload,
``format.payload_bytes_for(shape)`` (plus ``4 × in`` for a g_idx outside the GPTQ
layout): the planner's ``bytes_for`` in nibble's own layout.  Passthrough
tensors (norms, biases, embeddings, integer buffers) are stored under their
own names, unchanged.

``__metadata__`` holds ``nibble.format`` (``"nibble-int4/1"``) and
``nibble.tensors``, a JSON string mapping each quantized name to its scheme
(name, group_size, symmetric, zero, pad, layout), method, shape, source dtype
and quality figures (NaN written as null); any other string metadata the
caller passes is kept as is (keys starting with ``nibble.`` are reserved).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quant_core.errors import NibbleError, TensorFileError, UnknownName
from quant_core.formats import WeightFormat
from quant_core.quantize.int8 import Int8Tensor
from quant_core.quantize.packing import default_g_idx, pack_codes, quantized_from_payload
from quant_core.quantize.types import QualityReport, QuantizedTensor
from quant_core.tensorio.limits import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_TENSORS,
    checked_element_count,
)
from quant_core.tensorio.safetensors_io import SafetensorsFile, read_safetensors, write_safetensors

FILE_FORMAT = "nibble-int4/1"
FORMAT_KEY = "nibble.format"
TENSORS_KEY = "nibble.tensors"
INT8_KEY = "nibble.int8"
INT8_COMPONENTS = ("int8_codes", "int8_scales")
RESERVED_PREFIX = "nibble."
COMPONENTS = ("qweight", "scales", "zeros", "g_idx")


def _json_figure(value: float) -> float | str | None:
    """Strict JSON has no NaN or infinity: NaN (unmeasured) is null, ±inf (exact) the strings "inf"/"-inf"."""
    if math.isnan(value):
        return None
    return str(value) if math.isinf(value) else value


def describe_quantized(q: QuantizedTensor) -> dict[str, Any]:
    """Scheme, method, shape, source dtype and quality of `q` as strict-JSON-ready values."""
    quality = {key: _json_figure(value) if isinstance(value, float) else value
               for key, value in asdict(q.quality).items()}
    return {
        "format": asdict(q.format),
        "method": q.method,
        "shape": list(q.shape),
        "source_dtype": q.source_dtype,
        "quality": quality,
    }


def quantized_components(q: QuantizedTensor) -> dict[str, NDArray[Any]]:
    """The arrays stored for `q`, keyed by component (``qweight``, ``scales``, ``zeros``, ``g_idx``)."""
    parts: dict[str, NDArray[Any]] = {
        "qweight": np.ascontiguousarray(q.packed, dtype=np.uint8).reshape(-1),
        "scales": np.ascontiguousarray(q.scales, dtype=np.float16),
    }
    if q.format.zero == "int4":
        if q.zeros is None:
            raise TensorFileError(f"scheme {q.format.label()} needs int4 zeros but the tensor has none",
                                  field="tensors")
        parts["zeros"] = pack_codes(np.asarray(q.zeros, dtype=np.uint8).reshape(-1))
    elif q.format.zero == "fp16":
        if q.zeros is None:
            raise TensorFileError(f"scheme {q.format.label()} needs fp16 zeros but the tensor has none",
                                  field="tensors")
        parts["zeros"] = np.ascontiguousarray(q.zeros, dtype=np.float16)
    if q.g_idx is not None:
        parts["g_idx"] = np.ascontiguousarray(q.g_idx, dtype=np.int32)
    elif q.format.layout == "gptq":  # the layout's payload holds one, act-order or not
        parts["g_idx"] = default_g_idx(q.shape[1], q.format.group_size)
    return parts


def write_nibble_safetensors(
    path: str | os.PathLike[str],
    tensors: dict[str, QuantizedTensor],
    passthrough: dict[str, NDArray[Any]] | None = None,
    metadata: dict[str, str] | None = None,
    int8: dict[str, Int8Tensor] | None = None,
) -> int:
    """Write quantized and passthrough tensors as nibble's own safetensors file; returns its size in bytes.

    Raises `TensorFileError` when two stored names collide (a passthrough
    tensor named like a quantized component) or a metadata key is reserved.
    """
    stored: dict[str, NDArray[Any]] = {}
    for name, q in tensors.items():
        for component, array in quantized_components(q).items():
            stored[f"{name}.{component}"] = array
    for name, q8 in (int8 or {}).items():
        stored[f"{name}.int8_codes"] = np.ascontiguousarray(q8.codes, dtype=np.int8)
        stored[f"{name}.int8_scales"] = np.ascontiguousarray(q8.scales, dtype=np.float16)
    for name, array in (passthrough or {}).items():
        if name in stored:
            raise TensorFileError(f"passthrough tensor {name!r} collides with a quantized tensor's component",
                                  field="tensors")
        stored[name] = np.asarray(array)
    user = dict(metadata or {})
    reserved = sorted(key for key in user if key.startswith(RESERVED_PREFIX))
    if reserved:
        raise TensorFileError(f"metadata keys {reserved} use the reserved prefix {RESERVED_PREFIX!r}",
                              field="metadata")
    user[FORMAT_KEY] = FILE_FORMAT
    user[TENSORS_KEY] = json.dumps({name: describe_quantized(q) for name, q in tensors.items()}, allow_nan=False)
    if int8:
        user[INT8_KEY] = json.dumps(sorted(int8))
    return write_safetensors(path, stored, user)


def _figure(raw: dict[str, Any], key: str, name: str) -> float | None:
    """One stored quality figure: a JSON number, null (None) or ``"inf"``/``"-inf"``; anything else refused.

    A bool is not a number here, and an integer too large for a float (JSON
    allows 400 digits) is refused rather than overflowing.
    """
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if type(value) not in (int, float):
        raise TensorFileError(f"quality.{key} of quantized tensor {name!r} is a {type(value).__name__}, "
                              "not a number, null, \"inf\" or \"-inf\"")
    try:
        return float(value)
    except OverflowError:
        raise TensorFileError(f"quality.{key} of quantized tensor {name!r} is an integer too large for a float "
                              f"({value.bit_length()} bits)") from None


def _rows(raw: dict[str, Any], key: str, name: str) -> tuple[int, int] | None:
    """A stored ``[start, stop)`` row range (two non-negative integers), or None."""
    value = raw.get(key)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)):
        raise TensorFileError(f"quality.{key} of quantized tensor {name!r} must be two non-negative integers "
                              "[start, stop] or null")
    return int(value[0]), int(value[1])


def _quality(raw: Any, name: str) -> QualityReport:
    """Rebuild the figures written by `describe_quantized` (null → NaN for the four figures, None for the rest)."""
    if not isinstance(raw, dict):
        raise TensorFileError(f"quality figures of {name!r} are not an object")
    figures = {key: _figure(raw, key, name)
               for key in ("relative_error", "sqnr_db", "max_abs_error", "cosine_similarity")}
    return QualityReport(
        **{key: float("nan") if value is None else value for key, value in figures.items()},
        output_relative_error=_figure(raw, "output_relative_error", name),
        fit_rows=_rows(raw, "fit_rows", name), eval_rows=_rows(raw, "eval_rows", name),
        weighted_relative_error=_figure(raw, "weighted_relative_error", name),
        weighted_sqnr_db=_figure(raw, "weighted_sqnr_db", name),
        importance_used=_flag(raw, "importance_used", name),
    )


def _flag(raw: dict[str, Any], key: str, name: str) -> bool:
    """A stored true/false (absent: false, as files written before importance statistics)."""
    value = raw.get(key, False)
    if type(value) is not bool:
        raise TensorFileError(f"quality.{key} of quantized tensor {name!r} must be true or false")
    return value


def _weight_format(raw: Any, name: str) -> WeightFormat:
    """The stored scheme, its fields typed exactly as `WeightFormat` checks them; errors name the field."""
    known = [field.name for field in fields(WeightFormat)]
    if not isinstance(raw, dict) or not set(raw) <= set(known):
        extra = sorted(map(str, set(raw) - set(known)))[:4] if isinstance(raw, dict) else []
        raise TensorFileError(f"format of quantized tensor {name!r} must be an object with keys among {known}"
                              + (f"; it has {extra}" if extra else ""))
    try:
        fmt = WeightFormat(**raw)
    except NibbleError as exc:
        field = "name" if isinstance(exc, UnknownName) else exc.field  # its own field is the API's "format"
        raise TensorFileError(f"format.{field} of quantized tensor {name!r}: {exc.detail}") from None
    if fmt.partial:  # nibble's payload holds whole groups (quantize refuses partial ones; pad pads them)
        raise TensorFileError(f"format.partial of quantized tensor {name!r}: nibble files hold whole groups "
                              "(pad pads a row); a partial last group is not a payload nibble writes")
    return fmt


def _text(description: dict[str, Any], key: str, name: str) -> str:
    value = description.get(key)
    if not isinstance(value, str):
        raise TensorFileError(f"{key} of quantized tensor {name!r} must be a string, not {type(value).__name__}")
    return value


def _component(file: SafetensorsFile, name: str, component: str, dtype: str) -> NDArray[Any]:
    key = f"{name}.{component}"
    entry = file.entries.get(key)
    if entry is None:
        raise TensorFileError(f"nibble file lacks tensor {key!r}")
    if entry.dtype != dtype:
        raise TensorFileError(f"nibble file tensor {key!r} is {entry.dtype}, expected {dtype}")
    return np.array(file[key])


def _read_one(file: SafetensorsFile, name: str, description: Any, max_elements: int) -> QuantizedTensor:
    if not isinstance(description, dict):
        raise TensorFileError(f"description of quantized tensor {name!r} is not an object")
    fmt = _weight_format(description.get("format"), name)
    shape_list = description.get("shape")
    if not (isinstance(shape_list, list) and len(shape_list) == 2
            and all(type(d) is int and d > 0 for d in shape_list)):
        raise TensorFileError(f"quantized tensor {name!r} has shape {str(shape_list)[:64]}, not [out, in] > 0")
    shape = (shape_list[0], shape_list[1])
    # the tensor dequantize builds: its declared size is refused before any of its bytes are read
    checked_element_count(shape, max_elements, repr(name))
    method, source_dtype = _text(description, "method", name), _text(description, "source_dtype", name)
    quality = _quality(description.get("quality"), name)
    try:
        groups = fmt.group_count(shape[1])
    except NibbleError as exc:
        raise TensorFileError(f"quantized tensor {name!r}: {exc.detail}") from None
    if not fmt.is_quantized or fmt.name != "int4":
        raise TensorFileError(f"quantized tensor {name!r} has format {fmt.name!r}; nibble files hold int4")
    qweight = _component(file, name, "qweight", "U8")
    scales = _component(file, name, "scales", "F16")
    if scales.shape != (shape[0], groups):
        raise TensorFileError(f"{name}.scales has shape {list(scales.shape)}, expected {[shape[0], groups]}")
    parts = [qweight.tobytes(), scales.astype("<f2").tobytes()]
    if fmt.zero == "int4":
        parts.append(_component(file, name, "zeros", "U8").tobytes())
    elif fmt.zero == "fp16":
        zeros = _component(file, name, "zeros", "F16")
        if zeros.shape != (shape[0], groups):
            raise TensorFileError(f"{name}.zeros has shape {list(zeros.shape)}, expected {[shape[0], groups]}")
        parts.append(zeros.astype("<f2").tobytes())
    elif f"{name}.zeros" in file.entries:
        raise TensorFileError(f"symmetric tensor {name!r} has a zeros tensor")
    g_idx: NDArray[np.int32] | None = None
    if f"{name}.g_idx" in file.entries:
        g_idx = _component(file, name, "g_idx", "I32")
        if g_idx.shape != (shape[1],) or (g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups)):
            raise TensorFileError(f"{name}.g_idx must be [{shape[1]}] group indices in [0, {groups})")
        if fmt.layout == "gptq":
            parts.append(g_idx.astype("<i4").tobytes())
    elif fmt.layout == "gptq":
        raise TensorFileError(f"nibble file lacks tensor {name + '.g_idx'!r} required by the GPTQ layout")
    q = quantized_from_payload(b"".join(parts), shape, fmt, method, quality=quality, source_dtype=source_dtype)
    return replace(q, g_idx=g_idx) if g_idx is not None else q


#: tensor name endings of the engine formats nibble also writes, which their own loaders read
_ENGINE_FORMATS = ((".weight_packed", "compressed-tensors"), (".qweight", "GPTQ or AWQ"))


def _engine_format_hint(names: Iterable[str]) -> str:
    """Why a file of an engine format is not read here, when its tensor names show it is one."""
    for ending, kind in _ENGINE_FORMATS:
        if any(name.endswith(ending) for name in names):
            return (f"; it holds a {kind} checkpoint ({ending[1:]} tensors), which its engine's loader reads: "
                    "this reads the files written with output=nibble")
    return ""


def read_nibble_safetensors(
    path: str | os.PathLike[str],
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> tuple[dict[str, QuantizedTensor], dict[str, NDArray[Any]], dict[str, str]]:
    """Read a file written by `write_nibble_safetensors`: ``(quantized, passthrough, metadata)``.

    The quantized tensors are rebuilt through `quantized_from_payload` (the
    same checks as any payload: lengths, finite scales, valid g_idx), so
    ``dequantize`` of what is read equals ``dequantize`` of what was written
    bit for bit.  Passthrough tensors are lazy read-only views; `metadata` is
    the caller's own metadata (the ``nibble.*`` keys removed).  Anything
    malformed is a `TensorFileError`, each description's fields typed exactly
    (a float group size, a string flag or an out-of-range figure is refused).
    `max_elements` bounds the stored tensors and also each quantized tensor's
    declared ``[out, in]``, the tensor ``dequantize`` would build: past it,
    `LimitExceeded` before any of its payload is read.
    """
    file = read_safetensors(path, max_tensors=max_tensors, max_elements=max_elements,
                            max_header_bytes=max_header_bytes)
    if file.metadata.get(FORMAT_KEY) != FILE_FORMAT:
        raise TensorFileError(
            f"not a nibble quantized file: __metadata__ {FORMAT_KEY} is {file.metadata.get(FORMAT_KEY)!r}, "
            f"expected {FILE_FORMAT!r}{_engine_format_hint(file)}"
        )
    try:
        descriptions = json.loads(file.metadata.get(TENSORS_KEY, ""))
    except (ValueError, RecursionError) as exc:
        raise TensorFileError(f"__metadata__ {TENSORS_KEY} is not JSON: {exc}") from None
    if not isinstance(descriptions, dict):
        raise TensorFileError(f"__metadata__ {TENSORS_KEY} must be a JSON object")
    quantized = {name: _read_one(file, name, description, max_elements)
                 for name, description in descriptions.items()}
    components = {f"{name}.{part}" for name in quantized for part in COMPONENTS}
    components |= {f"{name}.{part}" for name in _int8_names(file.metadata) for part in INT8_COMPONENTS}
    passthrough = {name: file[name] for name in file if name not in components}
    metadata = {key: value for key, value in file.metadata.items() if not key.startswith(RESERVED_PREFIX)}
    return quantized, passthrough, metadata


def _int8_names(metadata: dict[str, str]) -> list[str]:
    raw = metadata.get(INT8_KEY)
    if raw is None:
        return []
    try:
        names = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TensorFileError(f"__metadata__ {INT8_KEY} is not JSON: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise TensorFileError(f"__metadata__ {INT8_KEY} must be a JSON list of tensor names")
    return names


def read_nibble_int8(
    path: str | os.PathLike[str],
    *,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> dict[str, Int8Tensor]:
    """The int8 tensors of a nibble file (module docstring), checked: I8 codes ``[out, in]``, F16 scales ``[out]``."""
    file = read_safetensors(path, max_tensors=max_tensors, max_elements=max_elements,
                            max_header_bytes=max_header_bytes)
    out: dict[str, Int8Tensor] = {}
    for name in _int8_names(file.metadata):
        codes_name, scales_name = (f"{name}.{part}" for part in INT8_COMPONENTS)
        if codes_name not in file or scales_name not in file:
            raise TensorFileError(f"int8 tensor {name!r} lacks {codes_name!r} or {scales_name!r}")
        codes, scales = file[codes_name], file[scales_name]
        if (codes.dtype != np.int8 or codes.ndim != 2 or scales.dtype != np.float16
                or scales.shape != (codes.shape[0],)):
            raise TensorFileError(f"int8 tensor {name!r}: codes {codes.dtype} {list(codes.shape)} and scales "
                                  f"{scales.dtype} {list(scales.shape)} do not make I8 [out, in] and F16 [out]")
        if not np.isfinite(np.asarray(scales, dtype=np.float32)).all():
            raise TensorFileError(f"int8 tensor {name!r} has non-finite scales")
        out[name] = Int8Tensor(np.asarray(codes), np.asarray(scales))
    return out
