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
* the GPTQ export layout adds ``4 × in_features`` bytes of int32 ``g_idx``;
  with out and in multiples of 8 (every published model) this is byte for
  byte a GPTQ checkpoint: int32 ``qweight`` [in/8, out], ``qzeros`` [G, out/8],
  fp16 ``scales`` [G, out] and int32 ``g_idx`` [in].

A group size that does not divide ``in_features`` raises `GroupSizeMismatch`,
unless ``pad=True`` was asked, in which case each row is padded with zero
codes to a whole number of groups (and those padded codes are stored), or
``partial=True``, the way GPTQ and AWQ store such a row: ``ceil(in / g)``
groups, the last one shorter, and no padded codes.

The formats checkpoints ship in (each a name, with its tensors as the tools write them):

* ``int4`` layout ``awq`` (AutoAWQ GEMM): int32 ``qweight`` [in, out/8],
  ``qzeros`` [G, out/8], fp16 ``scales`` [G, out]; no ``g_idx``.
* ``int4`` layout ``compressed-tensors`` (``pack-quantized``): int32
  ``weight_packed`` [out, in/8], 16-bit ``weight_scale`` [out, G], int64
  ``weight_shape`` [2], and when asymmetric int32 ``weight_zero_point``
  [out/8, G].
* ``int8`` layout ``gptq`` (GPTQ 8-bit): int32 ``qweight`` [in/4, out],
  ``qzeros`` [G, out/4], fp16 ``scales`` [G, out], int32 ``g_idx`` [in].
* ``fp8`` (e4m3, one byte a weight) with ``scales`` ``tensor`` (one fp32
  ``weight_scale``), ``channel`` (a 16-bit scale per output row, as
  compressed-tensors' channel strategy stores it) or ``block`` (fp32
  ``weight_scale_inv`` per 128 × 128 block, DeepSeek-V3's
  ``weight_block_size: [128, 128]``); with static activation scales
  (``activation_scheme: static``) one more fp32 ``input_scale`` per tensor.
* ``mxfp4`` (OCP Microscaling): per 32 weights 16 bytes of e2m1 pairs and
  one e8m0 scale byte, gpt-oss's ``_blocks`` [.., in/32, 16] and ``_scales``
  [.., in/32] (4.25 bits per weight).
* ``nvfp4``: e2m1 pairs, one fp8 e4m3 scale per 16 weights, one fp32
  per-tensor (global) scale; with static activation scales (W4A4) one more
  fp32 input scale per tensor.
* ``nf4`` (bitsandbytes, blocks of 64 over the flattened tensor): packed
  codes, the 16-entry fp32 ``quant_map``, and per block an fp32 absmax, or
  with double quantization a uint8 absmax plus per 256 blocks an fp32
  ``nested_absmax`` and the 256-entry fp32 ``nested_quant_map``.  The few
  dozen bytes of JSON bitsandbytes also serializes (``quant_state``) are not
  tensor data and are not counted.
* ``ggml``: a llama.cpp block type (`GGML_BLOCKS`, gguf-py's
  ``GGML_QUANT_SIZES``): ``rows × in/block × bytes per block``; a row that is
  not a whole number of blocks raises `GroupSizeMismatch` (llama-quantize
  falls back to another type first: `quant_core.gguf_mix`).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quant_core.errors import GroupSizeMismatch, InvalidSpec, UnknownName

FLOAT_FORMATS: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
SCALE_BYTES = 2  # fp16 scales everywhere
ZeroKind = Literal["none", "int4", "fp16"]
Layout = Literal["nibble", "gptq", "awq", "compressed-tensors"]
ZERO_KINDS: tuple[str, ...] = get_args(ZeroKind)
LAYOUTS: tuple[str, ...] = get_args(Layout)
Fp8Scales = Literal["tensor", "channel", "block"]
QUANTIZED_NAMES: tuple[str, ...] = ("int8", "int4", "fp8", "mxfp4", "nvfp4", "nf4", "ggml")
FORMAT_NAMES: tuple[str, ...] = (*FLOAT_FORMATS, *QUANTIZED_NAMES)
FP8_BLOCK = 128  # DeepSeek-V3's weight_block_size [128, 128]
MX_BLOCK = 32  # OCP MX v1.0: 32 elements share one e8m0 scale
NVFP4_BLOCK = 16  # NVIDIA's NVFP4: 16 elements share one fp8 e4m3 scale
NF4_BLOCK = 64  # bitsandbytes' default blocksize for 4-bit weights
NF4_NESTED_BLOCK = 256  # bitsandbytes' double quantization: 256 absmax values per fp32 block

# The llama.cpp block types nibble plans, each with (elements per block, bytes per block), read from
# gguf-py's GGML_QUANT_SIZES (gguf/constants.py), itself a copy of ggml's type traits (ggml/src/ggml.c).
GGML_TYPE_NAMES: tuple[str, ...] = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                                    "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4")
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    name: GGML_QUANT_SIZES[GGMLQuantizationType[name]] for name in GGML_TYPE_NAMES}


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
    partial: bool = False
    scales: Fp8Scales = "channel"
    double_quant: bool = True
    ggml_type: str = ""
    input_scale: bool = False

    def __post_init__(self) -> None:
        # Types are checked exactly (a file's metadata reaches here): 128.0 == 128 and True == 1 would pass
        # the membership tests below, then slice with a float; a string pad would be truthy.
        if not isinstance(self.name, str) or self.name not in FORMAT_NAMES:
            raise UnknownName("weight format", str(self.name)[:64], list(FORMAT_NAMES), field="format")
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
        if self.name == "ggml" and self.ggml_type not in GGML_BLOCKS:
            raise UnknownName("ggml type", self.ggml_type, list(GGML_BLOCKS), field="ggml_type")
        if self.layout != "nibble" and not (self.name == "int4" or (self.name == "int8" and self.layout == "gptq")):
            raise InvalidSpec("layout", self.layout, f"applies to int4 (and int8 as gptq), not {self.name}")
        if self.name == "int8" and self.layout == "gptq" and self.group_size is not None \
                and self.group_size not in GROUP_SIZES:
            raise InvalidSpec("group_size", self.group_size, f"must be one of {list(GROUP_SIZES)} or null")
        if self.name == "int4":
            if self.group_size is not None and self.group_size not in GROUP_SIZES:
                raise InvalidSpec("group_size", self.group_size,
                                  f"must be one of {list(GROUP_SIZES)} or a whole row (null in JSON, 'row' in a form)")
            if self.symmetric and self.zero != "none" and not (self.layout == "gptq" and self.zero == "int4"):
                # a symmetric GPTQ checkpoint still stores packed qzeros (`gptq_checkpoint`): its zero stays int4
                object.__setattr__(self, "zero", "none")
            if not self.symmetric and self.zero == "none":
                raise InvalidSpec("zero", self.zero, "an asymmetric format needs int4 or fp16 zeros")

    @property
    def bits(self) -> int:
        """Bits of one stored code (or float)."""
        if self.name in FLOAT_FORMATS:
            return 8 * FLOAT_FORMATS[self.name]
        if self.name == "ggml":
            elements, size = GGML_BLOCKS[self.ggml_type]
            return 8 * size // elements
        return 8 if self.name in ("int8", "fp8") else 4

    @property
    def is_quantized(self) -> bool:
        return self.name in QUANTIZED_NAMES

    def label(self) -> str:
        """A short human label: ``int4-g128-asym``, ``int4-row-sym``, ``bf16``, ``fp8-block128``, ``q4_k``..."""
        if self.name == "ggml":
            return self.ggml_type.lower()
        if self.name == "fp8":
            label = "fp8-block128" if self.scales == "block" else f"fp8-per-{self.scales}"
            return label + ("-static" if self.input_scale else "")
        if self.name == "nvfp4" and self.input_scale:
            return "nvfp4-static"
        if self.name == "nf4":
            return "nf4-dq" if self.double_quant else "nf4"
        if self.name == "int8" and self.layout == "gptq":
            group = f"g{self.group_size}" if self.group_size else "row"
            return f"int8-{group}-gptq" + ("-partial" if self.partial else "")
        if self.name != "int4":
            return self.name
        group = f"g{self.group_size}" if self.group_size else "row"
        kind = "sym" if self.symmetric else ("asym" if self.zero == "int4" else "asym-fp16zero")
        suffix = ("-padded" if self.pad else "") + ("-partial" if self.partial else "") \
            + (f"-{self.layout}" if self.layout != "nibble" else "")
        return f"int4-{group}-{kind}{suffix}"

    def group_count(self, in_features: int) -> int:
        """Groups per row for a row of `in_features` weights (raises if it does not divide, unless
        padding or a partial last group was asked)."""
        if self.group_size is None:
            return 1
        if in_features % self.group_size:
            if not (self.pad or self.partial):
                raise GroupSizeMismatch(in_features, self.group_size)
            return -(-in_features // self.group_size)
        return in_features // self.group_size

    def padded_columns(self, in_features: int) -> int:
        """Columns stored per row: `in_features`, or rounded up to whole groups when padding."""
        if self.group_size is None:
            return in_features
        groups = self.group_count(in_features)  # raises unless it divides, or padding or a partial group was asked
        return groups * self.group_size if self.pad else in_features

    def bytes_for(self, shape: tuple[int, ...]) -> int:
        """Exact bytes a tensor of `shape` takes in this format (payload, no file header)."""
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        if self.name in FLOAT_FORMATS:
            return rows * columns * FLOAT_FORMATS[self.name]
        if self.name == "int8":
            if self.layout == "gptq":  # int32 qweight [in/4, out], qzeros [G, out/4], fp16 scales, g_idx
                groups = self.group_count(columns)
                return 4 * (-(-columns // 4) * rows + groups * -(-rows // 4)) + SCALE_BYTES * groups * rows \
                    + 4 * columns
            return rows * columns + rows * SCALE_BYTES
        if self.name != "int4":
            return _float_block_bytes(self, rows, columns)
        if self.layout == "awq":  # int32 qweight [in, out/8], qzeros [G, out/8], fp16 scales [G, out]
            groups = self.group_count(columns)
            return 4 * (columns + groups) * -(-rows // 8) + SCALE_BYTES * groups * rows
        if self.layout == "compressed-tensors":  # weight_packed [out, in/8], weight_scale [out, G], weight_shape
            groups = self.group_count(columns)
            zeros = 0 if self.symmetric else 4 * -(-rows // 8) * groups
            return 4 * rows * -(-columns // 8) + SCALE_BYTES * rows * groups + 16 + zeros
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


def _float_block_bytes(fmt: WeightFormat, rows: int, columns: int) -> int:
    """fp8, mxfp4, nvfp4, nf4 and ggml blocks: values plus their scales (module docstring), plus the fp32
    ``input_scale`` a checkpoint with static activation scales stores per tensor."""
    return _value_and_scale_bytes(fmt, rows, columns) + (4 if fmt.input_scale else 0)


def _value_and_scale_bytes(fmt: WeightFormat, rows: int, columns: int) -> int:
    if fmt.name == "fp8":
        if fmt.scales == "tensor":
            return rows * columns + 4
        if fmt.scales == "channel":
            return rows * columns + SCALE_BYTES * rows
        return rows * columns + 4 * -(-rows // FP8_BLOCK) * -(-columns // FP8_BLOCK)
    if fmt.name == "mxfp4":
        return rows * -(-columns // MX_BLOCK) * (MX_BLOCK // 2 + 1)
    if fmt.name == "nvfp4":
        return rows * -(-columns // NVFP4_BLOCK) * (NVFP4_BLOCK // 2 + 1) + 4
    if fmt.name == "nf4":
        elements = rows * columns
        blocks = -(-elements // NF4_BLOCK)
        size = (elements + 1) // 2 + 16 * 4
        if not fmt.double_quant:
            return size + 4 * blocks
        return size + blocks + 4 * -(-blocks // NF4_NESTED_BLOCK) + 256 * 4
    elements, block_bytes = GGML_BLOCKS[fmt.ggml_type]
    if columns % elements:
        raise GroupSizeMismatch(columns, elements, field="format")
    return rows * (columns // elements) * block_bytes


def int4(group_size: int | None = 128, symmetric: bool = False, zero: ZeroKind = "int4",
         pad: bool = False, layout: Layout = "nibble", partial: bool = False) -> WeightFormat:
    """The int4 group-wise format (default: g128 asymmetric, 4-bit zeros)."""
    return WeightFormat("int4", group_size, symmetric, "none" if symmetric else zero, pad, layout, partial)


def gptq_checkpoint(group_size: int | None = 128, symmetric: bool = True) -> WeightFormat:
    """A 4-bit GPTQ checkpoint as its ``quantization_config`` ships it: int32 qweight, packed qzeros, fp16 scales and
    g_idx whatever ``sym`` says (AutoGPTQ and GPTQModel write qzeros for symmetric weights too: 8 in every code), so
    the bytes are the same either way; `symmetric` (``sym``) is carried in the label (``int4-g128-sym-gptq``), by
    which an engine that refuses one of them (vLLM 0.33: asymmetric) tells them apart."""
    return WeightFormat("int4", group_size, symmetric, "int4", layout="gptq")


def fp8(scales: Fp8Scales = "channel", input_scale: bool = False) -> WeightFormat:
    """fp8 e4m3 weights with a scale per tensor, per output channel or per 128 × 128 block (and with static
    activation scales, one fp32 ``input_scale`` per tensor)."""
    return WeightFormat("fp8", None, True, "none", scales=scales, input_scale=input_scale)


def int8_gptq(group_size: int | None = 128, partial: bool = False) -> WeightFormat:
    """GPTQ 8-bit: int8 codes packed four to an int32, fp16 scales and packed zeros per group, g_idx."""
    return WeightFormat("int8", group_size, False, "none", layout="gptq", partial=partial)


def block_format(name: str, double_quant: bool = True) -> WeightFormat:
    """``mxfp4``, ``nvfp4`` or ``nf4`` (with or without bitsandbytes' double quantization)."""
    if name not in ("mxfp4", "nvfp4", "nf4"):
        raise UnknownName("block format", name, ["mxfp4", "nvfp4", "nf4"], field="format")
    return WeightFormat(name, None, True, "none", double_quant=double_quant)


def ggml_format(ggml_type: str) -> WeightFormat:
    """One llama.cpp block type (``Q4_K``, ``Q8_0``...) or ``F32``/``F16``/``BF16`` as a format."""
    name = ggml_type.upper()
    if name in ("F32", "F16", "BF16"):
        return float_format({"F32": "fp32", "F16": "fp16", "BF16": "bf16"}[name])
    return WeightFormat("ggml", None, True, "none", ggml_type=name)


@functools.cache  # three names; a plan asks for one several times (formats are frozen, so shared)
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
#: the cache of a model an engine runs in float32 (vLLM's ``kv_cache_dtype="auto"`` takes the model's dtype): the
#: planner's, not a dtype a request names (not in `KV_DTYPES`, whose names the API lists)
FLOAT32_KV_DTYPE = KVCacheDtype("fp32", 32, 0)


def kv_dtype(name: str) -> KVCacheDtype:
    """Look up a KV-cache dtype by name; unknown names list the known ones."""
    if name == FLOAT32_KV_DTYPE.name:
        return FLOAT32_KV_DTYPE
    try:
        return KV_DTYPES[name]
    except KeyError:
        raise UnknownName("kv cache dtype", name, sorted(KV_DTYPES), field="kv_cache.dtype") from None
