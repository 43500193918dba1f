"""Weight storage formats and KV-cache dtypes, with their exact byte counts.

This is the one place that knows how many bytes a tensor takes in a format.
The planner sums `WeightFormat.bytes_for` over the tensor inventory: the bytes
a checkpoint in the format holds.  nibble's quantizer writes exactly
`WeightFormat.payload_bytes_for` bytes of payload for a tensor (its own packed
layout, quant_core/quantize/packing.py); the two are one figure except where a
checkpoint layout stores what the payload does not need
(`WeightFormat.checkpoint_tensors`: a symmetric GPTQ or AWQ file's qzeros, a
compressed-tensors file's ``weight_shape``).

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

A group size that does not divide ``in_features`` raises `GroupSizeMismatch`,
unless ``pad=True`` was asked, in which case each row is padded with zero
codes to a whole number of groups (and those padded codes are stored), or
``partial=True``, the way GPTQ and AWQ store such a row: ``ceil(in / g)``
groups, the last one shorter, and no padded codes.

The formats checkpoints ship in (each a name, with its tensors as the tools write them;
`WeightFormat.checkpoint_tensors` lists them, and ``bytes_for`` is their sum):

* ``int4`` layout ``gptq``: int32 ``qweight`` [in/8, out], int32 ``qzeros``
  [G, out/8], fp16 ``scales`` [G, out], int32 ``g_idx`` [in], the qzeros
  whether or not the weights are symmetric (AutoGPTQ's and GPTQModel's
  ``QuantLinear`` allocate them for ``sym=True`` too and pack 8, stored 7 in
  checkpoint format v1; nibble's export, tensorio/gptq.py, does the same).
  nibble's own payload in this layout (for act-order's ``g_idx``) keeps no
  zeros for symmetric weights: `payload_bytes_for`.
* ``int4`` layout ``awq`` (AutoAWQ GEMM): int32 ``qweight`` [in, out/8],
  ``qzeros`` [G, out/8], fp16 ``scales`` [G, out]; no ``g_idx``.  AWQ is
  asymmetric: symmetric weights are stored with every zero 8 (tensorio/awq.py).
* ``int4`` layout ``compressed-tensors`` (``pack-quantized``): int32
  ``weight_packed`` [out, in/8], 16-bit ``weight_scale`` [out, G], int64
  ``weight_shape`` [2], and only when asymmetric int32 ``weight_zero_point``
  [out/8, G] (the library drops a symmetric tensor's zero point:
  tensorio/compressed_tensors.py).
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

A dimension that is not a multiple of the packing (8 nibbles or 4 bytes to an
int32) is rounded up, as compressed-tensors pads a partial word; GPTQ and AWQ
exporters refuse such a tensor.  A checkpoint layout stores integer zeros
only: ``checkpoint_tensors`` (and so ``bytes_for``) refuses fp16 zeros there.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quant_core.errors import GroupSizeMismatch, InvalidSpec, UnknownName

FLOAT_FORMATS: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
SCALE_BYTES = 2  # fp16 scales everywhere
ZeroKind = Literal["none", "int4", "fp16"]
Layout = Literal["nibble", "gptq", "awq", "compressed-tensors"]
ZERO_KINDS: tuple[str, ...] = get_args(ZeroKind)
LAYOUTS: tuple[str, ...] = get_args(Layout)
#: the layouts that are a checkpoint's tensors (`WeightFormat.checkpoint_tensors`), not nibble's own payload
CHECKPOINT_LAYOUTS: tuple[str, ...] = ("gptq", "awq", "compressed-tensors")
#: bytes of one element of the safetensors dtypes a checkpoint layout's tensors take
STORED_DTYPE_BYTES: dict[str, int] = {"I32": 4, "I64": 8, "F16": 2}
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


class StoredTensor(NamedTuple):
    """One tensor a checkpoint file holds for a quantized weight: the last part of its name (``qweight`` for
    ``<module>.qweight``), its safetensors dtype and its shape.  (A named tuple: a plan lists a few per tensor
    row, and one is built in a third of a frozen dataclass's time.)"""

    suffix: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data (its header entry not counted)."""
        return math.prod(self.shape) * STORED_DTYPE_BYTES[self.dtype]


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How one tensor's weights are stored.

    `name` is ``fp32``, ``fp16``, ``bf16``, ``int8`` or ``int4``.  For int4,
    `group_size` is the number of consecutive input columns sharing a scale
    (``None`` = the whole row is one group), `symmetric` drops the zero point,
    `zero` says how an asymmetric zero is stored, `pad` allows rows that do not
    divide by the group size, and `layout` names a checkpoint layout
    (``gptq``, ``awq``, ``compressed-tensors``: `checkpoint_tensors`) or
    nibble's own (``nibble``).  `bytes_for` counts what a file in the format
    holds; `payload_bytes_for` what nibble's quantizer packs (they differ
    where a checkpoint stores more, e.g. a symmetric GPTQ file's qzeros).
    `act_order` (``gptq`` layout only) is GPTQ's ``desc_act``: the groups
    follow the columns in the order act-order quantized them, which
    ``g_idx`` records.  The checkpoint holds the same tensors either way
    (``g_idx`` is always stored); an engine holds more or refuses it
    (vLLM: `quant_core.engines.vllm_linear.gptq_marlin_linear_bytes`).
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
    act_order: bool = False

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
        for flag in ("symmetric", "pad", "act_order"):
            if type(getattr(self, flag)) is not bool:
                raise InvalidSpec(flag, _short(getattr(self, flag)), "must be true or false")
        if not isinstance(self.zero, str) or self.zero not in ZERO_KINDS:
            raise InvalidSpec("zero", _short(self.zero), f"must be one of {list(ZERO_KINDS)}")
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise InvalidSpec("layout", _short(self.layout), f"must be one of {list(LAYOUTS)}")
        if self.name == "ggml" and self.ggml_type not in GGML_BLOCKS:
            raise UnknownName("ggml type", self.ggml_type, list(GGML_BLOCKS), field="ggml_type")
        if self.act_order and self.layout != "gptq":
            raise InvalidSpec("act_order", self.act_order,
                              f"is GPTQ's desc_act: the gptq layout's, not {self.layout}'s")
        if self.layout != "nibble" and not (self.name == "int4" or (self.name == "int8" and self.layout == "gptq")):
            raise InvalidSpec("layout", self.layout, f"applies to int4 (and int8 as gptq), not {self.name}")
        if self.name == "int8" and self.layout == "gptq" and self.group_size is not None \
                and self.group_size not in GROUP_SIZES:
            raise InvalidSpec("group_size", self.group_size, f"must be one of {list(GROUP_SIZES)} or null")
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
        if self.name == "ggml":
            elements, size = GGML_BLOCKS[self.ggml_type]
            return 8 * size // elements
        return 8 if self.name in ("int8", "fp8") else 4

    @property
    def is_quantized(self) -> bool:
        return self.name in QUANTIZED_NAMES

    def label(self) -> str:
        """A short human label: ``int4-g128-asym``, ``int4-row-sym``, ``bf16``, ``fp8-block128``, ``q4_k``...; a GPTQ
        checkpoint with act order says so before its layout (``int4-g128-sym-act-order-gptq``)."""
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
            return (f"int8-{group}-{'' if self.symmetric else 'asym-'}{'act-order-' if self.act_order else ''}gptq"
                    + ("-partial" if self.partial else ""))
        if self.name != "int4":
            return self.name
        group = f"g{self.group_size}" if self.group_size else "row"
        kind = "sym" if self.symmetric else ("asym" if self.zero == "int4" else "asym-fp16zero")
        suffix = ("-padded" if self.pad else "") + ("-partial" if self.partial else "") \
            + ("-act-order" if self.act_order else "") + (f"-{self.layout}" if self.layout != "nibble" else "")
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
        """Exact bytes a tensor of `shape` takes in this format (tensor data, no file header): in a checkpoint
        layout the sum of its `checkpoint_tensors`, in nibble's own layout its `payload_bytes_for`."""
        if self.layout in CHECKPOINT_LAYOUTS:
            return _checkpoint_bytes(self, tuple(int(d) for d in shape))
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        if self.name in FLOAT_FORMATS:
            return rows * columns * FLOAT_FORMATS[self.name]
        if self.name == "int8":
            return rows * columns + rows * SCALE_BYTES
        if self.name != "int4":
            return _float_block_bytes(self, rows, columns)
        return sum(self.payload_sections(shape))

    def payload_sections(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Bytes of the sections of nibble's own int4 payload for a tensor of `shape`: (codes, scales, zeros,
        g_idx), in that order (quant_core/quantize/packing.py writes them).

        codes ``ceil(rows × C / 2)`` (``C`` the stored columns, padded to whole groups with `pad`), one fp16 scale
        per group, zeros by `zero` (none, 4-bit packed two to a byte, or fp16), and in the ``gptq`` layout one
        int32 ``g_idx`` per input column (act-order's permutation).  A symmetric tensor's payload has no zeros
        in any layout: the implicit zero is 8.
        """
        if self.name != "int4":
            raise InvalidSpec("format", self.label(), "only int4 has nibble's sectioned payload")
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        groups = rows * self.group_count(columns)
        codes = (rows * self.padded_columns(columns) + 1) // 2
        zeros = {"none": 0, "int4": (groups + 1) // 2, "fp16": 2 * groups}[self.zero]
        g_idx = 4 * columns if self.layout == "gptq" else 0
        return codes, SCALE_BYTES * groups, zeros, g_idx

    def payload_bytes_for(self, shape: tuple[int, ...]) -> int:
        """Exact bytes of the payload nibble's quantizer writes for a tensor of `shape` (`payload_sections`
        summed for int4; every other format's payload is what it stores, `bytes_for`).  This is what the
        quantizer's own checks and nibble's file count; `bytes_for` is what the planner counts."""
        if self.name == "int4":
            return sum(self.payload_sections(shape))
        return self.bytes_for(shape)

    def checkpoint_tensors(self, shape: tuple[int, ...]) -> tuple[StoredTensor, ...]:
        """The tensors a checkpoint in this format's `layout` holds for a weight of `shape` ``[..., out, in]``
        (module docstring), one set per leading index, as the engines' loaders allocate them:

        * ``gptq`` (int4, and int8 at 4 codes an int32): ``qweight``, ``qzeros``, ``scales``, ``g_idx``, the
          qzeros whatever ``sym`` says: vLLM 0.11.0 ``quantization/gptq.py``, ``GPTQLinearMethod.create_weights``
          registers all four (AutoGPTQ's and GPTQModel's ``QuantLinear`` too), and nibble's export writes them;
        * ``awq``: ``qweight``, ``qzeros``, ``scales``, qzeros always (``awq.py``,
          ``AWQLinearMethod.create_weights``);
        * ``compressed-tensors``: ``weight_packed``, ``weight_scale``, ``weight_shape`` and, only when
          asymmetric, ``weight_zero_point`` (``compressed_tensors_wNa16.py``, ``CompressedTensorsWNA16
          .create_weights``).

        Scales are 16-bit (the model's dtype; written fp16 here).  Raises `InvalidSpec` for nibble's own layout
        (a payload: `payload_sections`) and for fp16 zeros, which no checkpoint layout stores.
        """
        if self.layout not in CHECKPOINT_LAYOUTS:
            raise InvalidSpec("layout", self.layout, "nibble's own layout is a payload (payload_sections), not the "
                              f"tensors of a checkpoint: one of {list(CHECKPOINT_LAYOUTS)} is")
        if self.zero == "fp16":
            raise InvalidSpec("zero", self.zero, f"the {self.layout} layout stores its zero points as packed "
                              "integers; fp16 zeros have no tensor there")
        dims = tuple(int(d) for d in shape)
        _, columns = _rows_and_columns(dims)
        lead, out = dims[:-2], (dims[-2] if len(dims) >= 2 else 1)
        groups = self.group_count(columns)
        per_word = 8 if self.name == "int4" else 4  # codes in one int32
        out_words = -(-out // per_word)
        if self.layout == "gptq":
            return (StoredTensor("qweight", "I32", (*lead, -(-self.padded_columns(columns) // per_word), out)),
                    StoredTensor("qzeros", "I32", (*lead, groups, out_words)),
                    StoredTensor("scales", "F16", (*lead, groups, out)),
                    StoredTensor("g_idx", "I32", (*lead, columns)))
        if self.layout == "awq":
            return (StoredTensor("qweight", "I32", (*lead, columns, out_words)),
                    StoredTensor("qzeros", "I32", (*lead, groups, out_words)),
                    StoredTensor("scales", "F16", (*lead, groups, out)))
        stored = (StoredTensor("weight_packed", "I32", (*lead, out, -(-columns // per_word))),
                  StoredTensor("weight_scale", "F16", (*lead, out, groups)),
                  StoredTensor("weight_shape", "I64", (*lead, 2)))
        if self.symmetric:
            return stored
        return (*stored, StoredTensor("weight_zero_point", "I32", (*lead, out_words, groups)))

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        """Stored bits divided by the tensor's element count."""
        rows, columns = _rows_and_columns(tuple(int(d) for d in shape))
        return 8 * self.bytes_for(shape) / (rows * columns)


@functools.lru_cache(maxsize=4096)  # a plan asks for the same few shapes again and again; listing them costs ~10 us
def _checkpoint_bytes(fmt: WeightFormat, shape: tuple[int, ...]) -> int:
    """The sum of `fmt`'s `WeightFormat.checkpoint_tensors` for `shape`."""
    return sum(tensor.nbytes for tensor in fmt.checkpoint_tensors(shape))


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


def gptq_checkpoint(group_size: int | None = 128, symmetric: bool = True, act_order: bool = False) -> WeightFormat:
    """A 4-bit GPTQ checkpoint as its ``quantization_config`` ships it: int32 qweight, packed qzeros, fp16 scales and
    g_idx whatever ``sym`` says (`WeightFormat.checkpoint_tensors`), so the bytes are the same either way;
    `symmetric` (``sym``) is the format's own field (and shows in the label, ``int4-g128-sym-gptq``): an engine that
    refuses one of them (vLLM 0.33: asymmetric; 0.11/0.19 run it float16 only) reads it there; so is `act_order`
    (``desc_act``, ``int4-g128-sym-act-order-gptq``), by which vLLM holds more or refuses the checkpoint."""
    return WeightFormat("int4", group_size, symmetric, "none" if symmetric else "int4", layout="gptq",
                        act_order=act_order)


def fp8(scales: Fp8Scales = "channel", input_scale: bool = False) -> WeightFormat:
    """fp8 e4m3 weights with a scale per tensor, per output channel or per 128 × 128 block (and with static
    activation scales, one fp32 ``input_scale`` per tensor)."""
    return WeightFormat("fp8", None, True, "none", scales=scales, input_scale=input_scale)


def int8_gptq(group_size: int | None = 128, partial: bool = False, symmetric: bool = True,
              act_order: bool = False) -> WeightFormat:
    """GPTQ 8-bit: int8 codes packed four to an int32, fp16 scales and packed zeros per group, g_idx, whatever
    ``sym`` says (so the bytes are the same either way); `symmetric` (``sym``, GPTQModel's default true) is carried
    for the engines that refuse or slow down one of them (vLLM: Marlin's TYPE_MAP holds ``(8, True)`` only), and
    `act_order` (``desc_act``) as `gptq_checkpoint` carries it."""
    return WeightFormat("int8", group_size, symmetric, "none", layout="gptq", partial=partial, act_order=act_order)


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

    vLLM 0.33's own per-token-head caches (`VLLM_PER_TOKEN_HEAD_KV_DTYPES`, named as its
    ``--kv-cache-dtype`` spells them) keep one fp32 scale per token, KV head and K/V
    inline in the page after that head's codes (v1/attention/backends/triton_attn.py
    ``TritonAttentionBackend.customize_spec``: ``state_content_bytes = (head_size_k +
    head_size_v) x 1 + 2 x 4``, the K and V halves halved for int4, two codes a byte;
    ``AttentionSpec.page_size_bytes`` = KV heads x block x that): int8 codes, fp8 codes
    (a uint8 page, utils/torch_utils.py ``STR_DTYPE_TO_TORCH_DTYPE``, read as
    float8_e4m3fn) and packed int4; int4's asymmetric zero point is hidden in the
    scale's low 4 mantissa bits (v1/attention/ops/int4_per_token_head.py), so it costs
    no byte.
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
    "int8_per_token_head": KVCacheDtype("int8_per_token_head", 8, 4),
    "int4_per_token_head": KVCacheDtype("int4_per_token_head", 4, 4),
    "fp8_per_token_head": KVCacheDtype("fp8_per_token_head", 8, 4),
}
#: vLLM 0.33's own per-token-head KV caches (config/cache.py ``CacheDType``; v1/kv_cache_interface.py
#: ``KVQuantMode.is_per_token_head``; vllm#38378, #38854, #39074, #40391): an int8, fp8 (e4m3) or packed int4 code per
#: element and an fp32 scale per token, KV head and K/V inline in the page (`KVCacheDtype`).  Only vLLM 0.33 runs them
#: (`engines.vllm_refusals.kv_cache_refusal`); nibble's own int8 / int4 are LMDeploy's layout, its fp8 vLLM's
#: per-tensor one
VLLM_PER_TOKEN_HEAD_KV_DTYPES = frozenset({"int8_per_token_head", "int4_per_token_head", "fp8_per_token_head"})
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
