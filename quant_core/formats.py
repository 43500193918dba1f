"""Weight storage formats and KV-cache dtypes, with their exact byte counts.

This is the one place that knows how many bytes a tensor takes in a format.
The planner sums `WeightFormat.bytes_for` over the tensor inventory, and the
quantizer writes exactly `bytes_for(shape)` bytes of payload for a tensor, so
the two can never disagree.

Conventions (a tensor of shape ``[..., in_features]`` is ``rows × in_features``
with ``rows`` the product of the leading dimensions; groups run along the last,
input, dimension, as in GPTQ, AWQ and llama.cpp):

* fp32 / fp16 / bf16: ``n × 4`` or ``n × 2`` bytes.
* int8 per channel: ``n`` bytes of codes + one fp16 scale per row.
* int4 group-wise (nibble's native layout): ``ceil(n_codes / 2)`` bytes of
  packed nibbles (two codes per byte, low nibble first, row-major), one fp16
  scale per group (2 bytes), and per group a zero point: none when symmetric,
  a 4-bit integer packed two per byte (``ceil(n_groups / 2)`` bytes) when
  asymmetric, or an fp16 value (2 bytes) when asymmetric with float zeros as
  HQQ stores them.  At g = 128 asymmetric that is 4 + 20/128 = 4.15625 bits
  per weight, the GPTQ/AWQ figure; symmetric 4.125.
* the GPTQ export layout adds ``4 × in_features`` bytes of int32 ``g_idx``.

A group size that does not divide ``in_features`` raises `GroupSizeMismatch`,
unless ``pad=True`` was asked, in which case each row is padded with zero
codes to a whole number of groups (and those padded codes are stored).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from quant_core.errors import GroupSizeMismatch, InvalidSpec, UnknownName

FLOAT_FORMATS: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
SCALE_BYTES = 2  # fp16 scales everywhere
ZeroKind = Literal["none", "int4", "fp16"]
Layout = Literal["nibble", "gptq"]
ZERO_KINDS: tuple[str, ...] = get_args(ZeroKind)
LAYOUTS: tuple[str, ...] = get_args(Layout)


def _short(value: object) -> object:
    """`value` for an error message: itself, or its repr cut to 64 characters (a file may hold anything)."""
    text = repr(value)
    return value if len(text) <= 64 else text[:61] + "..."


def _rows_and_columns(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    for i, dim in enumerate(shape):
        if dim <= 0:
            raise InvalidSpec(f"shape[{i}]", dim, "every dimension must be positive")
    return math.prod(shape[:-1]), shape[-1]


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How one tensor's weights are stored.

    `name` is ``fp32``, ``fp16``, ``bf16``, ``int8`` or ``int4``.  For int4,
    `group_size` is the number of consecutive input columns sharing a scale
    (``None`` = the whole row is one group), `symmetric` drops the zero point,
    `zero` says how an asymmetric zero is stored, `pad` allows rows that do not
    divide by the group size, and `layout` adds the GPTQ export's ``g_idx``.
    """

    name: str = "int4"
    group_size: int | None = 128
    symmetric: bool = False
    zero: ZeroKind = "int4"
    pad: bool = False
    layout: Layout = "nibble"

    def __post_init__(self) -> None:
        # Types are checked exactly (a file's metadata reaches here): 128.0 == 128 and True == 1 would pass
        # the membership tests below, then slice with a float; a string pad would be truthy.
        if not isinstance(self.name, str) or (self.name not in FLOAT_FORMATS and self.name not in ("int8", "int4")):
            raise UnknownName("weight format", str(self.name)[:64], ["bf16", "fp16", "fp32", "int8", "int4"],
                              field="format")
        if self.group_size is not None:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, numbers.Integral):
                raise InvalidSpec("group_size", _short(self.group_size),
                                  f"must be an integer or null, not {type(self.group_size).__name__}")
            object.__setattr__(self, "group_size", int(self.group_size))  # a NumPy integer becomes an int
        for flag in ("symmetric", "pad"):
            if type(getattr(self, flag)) is not bool:
                raise InvalidSpec(flag, _short(getattr(self, flag)), "must be true or false")
        if not isinstance(self.zero, str) or self.zero not in ZERO_KINDS:
            raise InvalidSpec("zero", _short(self.zero), f"must be one of {list(ZERO_KINDS)}")
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise InvalidSpec("layout", _short(self.layout), f"must be one of {list(LAYOUTS)}")
        if self.name == "int4":
            if self.group_size is not None and self.group_size not in GROUP_SIZES:
                raise InvalidSpec("group_size", self.group_size,
                                  f"must be one of {list(GROUP_SIZES)} or a whole row (null in JSON, 'row' in a form)")
            if self.symmetric and self.zero != "none":
                object.__setattr__(self, "zero", "none")
            if not self.symmetric and self.zero == "none":
                raise InvalidSpec("zero", self.zero, "an asymmetric format needs int4 or fp16 zeros")

    @property
    def bits(self) -> int:
        """Bits of one stored code (or float)."""
        if self.name in FLOAT_FORMATS:
            return 8 * FLOAT_FORMATS[self.name]
        return 8 if self.name == "int8" else 4

    @property
    def is_quantized(self) -> bool:
        return self.name in ("int8", "int4")

    def label(self) -> str:
        """A short human label: ``int4-g128-asym``, ``int4-row-sym``, ``bf16``..."""
        if self.name != "int4":
            return self.name
        group = f"g{self.group_size}" if self.group_size else "row"
        kind = "sym" if self.symmetric else ("asym" if self.zero == "int4" else "asym-fp16zero")
        suffix = ("-padded" if self.pad else "") + ("-gptq" if self.layout == "gptq" else "")
        return f"int4-{group}-{kind}{suffix}"

    def group_count(self, in_features: int) -> int:
        """Groups per row for a row of `in_features` weights (raises if it does not divide)."""
        if self.group_size is None:
            return 1
        if in_features % self.group_size:
            if not self.pad:
                raise GroupSizeMismatch(in_features, self.group_size)
            return -(-in_features // self.group_size)
        return in_features // self.group_size

    def padded_columns(self, in_features: int) -> int:
        """Columns stored per row: `in_features`, or rounded up to whole groups when padding."""
        if self.group_size is None:
            return in_features
        return self.group_count(in_features) * self.group_size

    def bytes_for(self, shape: tuple[int, ...]) -> int:
        """Exact bytes a tensor of `shape` takes in this format (payload, no file header)."""
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        if self.name in FLOAT_FORMATS:
            return rows * columns * FLOAT_FORMATS[self.name]
        if self.name == "int8":
            return rows * columns + rows * SCALE_BYTES
        groups = rows * self.group_count(columns)
        codes = rows * self.padded_columns(columns)
        size = (codes + 1) // 2 + groups * SCALE_BYTES
        if self.zero == "int4":
            size += (groups + 1) // 2
        elif self.zero == "fp16":
            size += groups * 2
        if self.layout == "gptq":
            size += 4 * columns
        return size

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Stored bits divided by the tensor's element count."""
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        return 8 * self.bytes_for(shape) / (rows * columns)


def int4(group_size: int | None = 128, symmetric: bool = False, zero: ZeroKind = "int4",
         pad: bool = False) -> WeightFormat:
    """The int4 group-wise format (default: g128 asymmetric, 4-bit zeros)."""
    return WeightFormat("int4", group_size, symmetric, "none" if symmetric else zero, pad)


def float_format(name: str) -> WeightFormat:
    """A 16- or 32-bit float format by name (``bf16``, ``fp16``, ``fp32``)."""
    if name not in FLOAT_FORMATS:
        raise UnknownName("float format", name, sorted(FLOAT_FORMATS), field="format")
    return WeightFormat(name, None, True, "none")


@dataclass(frozen=True, slots=True)
class KVCacheDtype:
    """A KV-cache element type: bits per element plus per-vector scale bytes.

    For int8 and int4 the cache keeps, per token, per KV head, and for K and V
    separately, an fp16 scale and an fp16 zero (4 bytes), the asymmetric
    per-token-head layout of LMDeploy's quantized KV cache.  fp8 (e4m3) uses
    per-tensor scales, which cost nothing per token.
    """

    name: str
    bits: int
    scale_bytes_per_vector: int

    def bytes_per_vector(self, head_dim: int) -> int:
        """Bytes of one cached K or V vector of `head_dim` elements."""
        payload_bits = head_dim * self.bits
        return (payload_bits + 7) // 8 + self.scale_bytes_per_vector


KV_DTYPES: dict[str, KVCacheDtype] = {
    "bf16": KVCacheDtype("bf16", 16, 0),
    "fp16": KVCacheDtype("fp16", 16, 0),
    "fp8": KVCacheDtype("fp8", 8, 0),
    "int8": KVCacheDtype("int8", 8, 4),
    "int4": KVCacheDtype("int4", 4, 4),
}


def kv_dtype(name: str) -> KVCacheDtype:
    """Look up a KV-cache dtype by name; unknown names list the known ones."""
    try:
        return KV_DTYPES[name]
    except KeyError:
        raise UnknownName("kv cache dtype", name, sorted(KV_DTYPES), field="kv_cache.dtype") from None
