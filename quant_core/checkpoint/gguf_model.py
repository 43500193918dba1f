"""What a checkpoint's GGUF file needs so llama.cpp loads it: architecture, hyper-parameters, tokenizer, tensor names.

llama.cpp reads a model from GGUF metadata and tensor names, not from
config.json: ``general.architecture``, the architecture's hyper-parameter
keys (``llama.block_count``, ``llama.attention.head_count``...), the
tokenizer (``tokenizer.ggml.*``) and tensors named as its loader expects
(``blk.0.attn_q.weight``).  This module reproduces what llama.cpp's own
converter, ``convert_hf_to_gguf.py`` (llama.cpp 0c1e570, 2026-10-01, vendored
by llama-cpp-python 0.3.36; ``conversion/base.py`` and ``conversion/llama.py``,
``conversion/qwen.py``), writes for the architectures in `ARCHITECTURES`:

- ``TextModel.set_gguf_parameters`` (and ``LlamaModel``'s vocabulary size and
  rope dimension) for the hyper-parameters, from config.json with the
  defaults transformers' config classes fill in (the converter reads the
  config through ``AutoConfig``);
- gguf-py's public ``get_tensor_name_map`` for the names;
- for llama, the Q/K row permutation (``LlamaModel.permute``), which turns
  Hugging Face's rotate-half layout into llama.cpp's interleaved one; it
  permutes whole rows, so it applies to a quantized tensor's rows of Q4_0
  blocks as to the weight itself (each row is quantized on its own);
- 1-D tensors, norms and biases as F32 (the converter's ``prepare_tensors``);
- the SentencePiece vocabulary (``_create_vocab_sentencepiece``: tokens,
  scores, types, ``added_tokens.json`` and ``added_tokens_decoder``
  overrides), read from ``tokenizer.model`` by a protobuf reader of our own;
  or, without one, the byte-level BPE vocabulary of ``tokenizer.json``
  (``get_vocab_base``, read with the ``tokenizers`` library), its
  pre-tokenizer named by the converter's table of check hashes; then gguf-py's
  public ``SpecialVocab`` for the special token ids, the add-BOS/EOS flags,
  the merges and the chat template;
- ``general.*`` through gguf-py's public ``Metadata`` (name, size label...);
- linear RoPE scaling keys, and for llama's llama3 scaling the
  ``rope_freqs.weight`` tensor ``LlamaModel.generate_extra_tensors`` makes.

A checkpoint this cannot describe (another architecture, no tokenizer, a BPE
pre-tokenizer the converter does not know, a RoPE scaling not written here, a
tensor llama.cpp has no name for) is refused before any work, as `InvalidSpec`
naming ``output``: a job never writes a GGUF file no engine loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
import ml_dtypes
import numpy as np
import yaml
from numpy.typing import NDArray
from tokenizers import Tokenizer

from quant_core.checkpoint.source import Checkpoint
from quant_core.errors import InvalidSpec, LimitExceeded

#: Hugging Face ``architectures[0]`` → the converter's GGUF architecture (``@ModelBase.register`` on
#: ``LlamaModel``, ``Qwen2Model``, ``Qwen3Model``); llama's Q/K rows are permuted, the others' are not
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
}
_PERMUTED = (gguf.MODEL_ARCH.LLAMA,)
#: what transformers' config classes fill in when config.json omits a key (``LlamaConfig``, ``MistralConfig``,
#: ``Qwen2Config``, ``Qwen3Config`` of transformers 5; ``RotaryEmbeddingConfigMixin.default_theta``)
_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}
_QWEN3_HEAD_DIM = 128
_DEFAULT_RMS_EPS = 1e-6
_DEFAULT_ROPE_THETA = 10_000.0
#: tensors the converter drops (``prepare_tensors``: "we don't need these")
DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
#: the converter's BPE pre-tokenizer table (``get_vocab_base_pre``): the SHA-256 of the token ids a tokenizer
#: gives its check text → the ``tokenizer.ggml.pre`` llama.cpp implements; transcribed with its source
_BPE_TABLE = json.loads((Path(__file__).resolve().parents[1] / "data" / "llama_cpp_bpe_pre_tokenizers.json")
                        .read_text(encoding="utf-8"))
BPE_CHECK_TEXT: str = _BPE_TABLE["chktxt"]
BPE_PRE_TOKENIZERS: dict[str, str] = {digest: entry["pre"] for digest, entry in _BPE_TABLE["pre_tokenizers"].items()}
#: the largest tokenizer file read (real SentencePiece models are under 5 MB)
MAX_TOKENIZER_BYTES = 64 << 20
#: SentencePiece piece types (sentencepiece_model.proto) and what the converter makes of them
#: (``SentencePieceTokenTypes``: a USER_DEFINED piece of the model is written NORMAL)
_SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL, _SPM_USER_DEFINED, _SPM_UNUSED, _SPM_BYTE = 1, 2, 3, 4, 5, 6
_TOKEN_TYPE = {_SPM_UNKNOWN: gguf.TokenType.UNKNOWN, _SPM_CONTROL: gguf.TokenType.CONTROL,
               _SPM_UNUSED: gguf.TokenType.UNUSED, _SPM_BYTE: gguf.TokenType.BYTE}
_SPIECE_UNDERLINE = "\u2581"
_FLOAT_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I8": np.dtype(np.int8), "I16": np.dtype(np.int16), "I32": np.dtype(np.int32), "I64": np.dtype(np.int64)}


class _Sized(Protocol):
    @property
    def dtype(self) -> str: ...

    @property
    def nbytes(self) -> int: ...


def _refuse(reason: str) -> InvalidSpec:
    return InvalidSpec("output", "gguf", reason)


@dataclass(frozen=True, slots=True)
class SentencePiece:
    """One piece of a SentencePiece model: its text, score and type (1 normal ... 6 byte)."""

    piece: str
    score: float
    type: int


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a varint runs past the end")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """The (field number, wire type, value) of a protobuf message: ints for varints and fixed widths, bytes for
    length-delimited fields."""
    fields: list[tuple[int, int, Any]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, position = _varint(data, position)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, position = data[position:position + width], position + width
            if len(value) != width:
                raise ValueError("a fixed-width field runs past the end")
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
            if len(value) != length:
                raise ValueError("a length-delimited field runs past the end")
        else:
            raise ValueError(f"wire type {wire} (field {number})")
        fields.append((number, wire, value))
    return fields


def sentencepiece_pieces(data: bytes) -> list[SentencePiece]:
    """The pieces of a SentencePiece ``ModelProto`` (``tokenizer.model``), in id order.

    ``ModelProto.pieces`` is field 1; each ``SentencePiece`` holds ``piece``
    (1, string), ``score`` (2, float) and ``type`` (3, enum, NORMAL when
    absent).  Raises `InvalidSpec` (field ``source.path``) for bytes that are
    not such a message.
    """
    pieces = []
    try:
        for number, wire, value in _fields(data):
            if number != 1 or wire != 2:
                continue
            piece, score, kind = "", 0.0, _SPM_NORMAL
            for inner, inner_wire, inner_value in _fields(value):
                if inner == 1 and inner_wire == 2:
                    piece = inner_value.decode("utf-8")
                elif inner == 2 and inner_wire == 5:
                    score = struct.unpack("<f", inner_value)[0]
                elif inner == 3 and inner_wire == 0:
                    kind = inner_value
            pieces.append(SentencePiece(piece, score, kind))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpec("source.path", TOKENIZER_MODEL, f"is not a SentencePiece model: {exc}") from None
    if not pieces:
        raise InvalidSpec("source.path", TOKENIZER_MODEL, "is not a SentencePiece model: it holds no pieces")
    return pieces


def _looks_special(token: str) -> bool:
    """The converter's ``does_token_look_special``: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _read_limited(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise LimitExceeded(f"bytes in {path.name}", size, MAX_TOKENIZER_BYTES, field="source.path")
    return path.read_bytes()


def _json_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(_read_limited(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpec("source.path", path.name, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidSpec("source.path", path.name, f"is a JSON {type(value).__name__}, not an object")
    return value


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The tokenizer as the converter writes it: ``tokenizer.ggml.model`` (``llama`` for SentencePiece, ``gpt2``
    for byte-level BPE) and ``pre``, then tokens, scores (SentencePiece only) and types, one per id."""

    model: str
    pre: str
    tokens: tuple[bytes, ...]
    scores: tuple[float, ...] | None
    types: tuple[int, ...]


def sentencepiece_vocabulary(directory: Path, vocab_size: int | None) -> Vocabulary:
    """The converter's ``_create_vocab_sentencepiece`` for the checkpoint in `directory`.

    ``vocab_size`` slots (config.json's, else the model's piece count): the
    model's pieces, then ``added_tokens.json`` (score -1000, user-defined),
    then ``tokenizer_config.json``'s ``added_tokens_decoder`` (score -1000,
    control when special or special-looking, else user-defined with ``▁``
    written as a space); slots nothing fills are ``[PAD<id>]``, score -10000,
    unused.
    """
    pieces = sentencepiece_pieces(_read_limited(directory / TOKENIZER_MODEL))
    size = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [int(gguf.TokenType.UNUSED)] * size
    for token_id, piece in enumerate(pieces[:size]):
        tokens[token_id] = piece.piece.encode("utf-8")
        scores[token_id] = piece.score
        types[token_id] = int(_TOKEN_TYPE.get(piece.type, gguf.TokenType.NORMAL))

    def added(token_id: object, content: object) -> int | None:
        if not isinstance(token_id, int) or not isinstance(content, str):
            raise InvalidSpec("source.path", "tokenizer", f"added token {content!r} has id {token_id!r}")
        if not 0 <= token_id < size:
            return None  # the converter skips it ("id is out of range")
        scores[token_id] = -1000.0
        return token_id

    added_tokens = _json_object(directory / "added_tokens.json") or {}
    for content, token_id in added_tokens.items():
        if (slot := added(token_id, content)) is not None:
            tokens[slot] = content.encode("utf-8")
            types[slot] = int(gguf.TokenType.USER_DEFINED)
    tokenizer_config = _json_object(directory / "tokenizer_config.json") or {}
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise InvalidSpec("source.path", "tokenizer_config.json", "added_tokens_decoder is not an object")
    for key, data in decoder.items():
        if not isinstance(data, dict) or not str(key).isdecimal():
            raise InvalidSpec("source.path", "tokenizer_config.json", f"added_tokens_decoder entry {key!r}")
        text = data.get("content")
        if (slot := added(int(key), text)) is None:
            continue
        text = str(text)
        if data.get("special") or _looks_special(text):
            types[slot] = int(gguf.TokenType.CONTROL)
        else:
            text = text.replace(_SPIECE_UNDERLINE, " ")
            types[slot] = int(gguf.TokenType.USER_DEFINED)
        tokens[slot] = text.encode("utf-8")
    return Vocabulary("llama", "default", tuple(tokens), tuple(scores), tuple(types))


def _load_tokenizer(directory: Path) -> Tokenizer:
    try:
        return Tokenizer.from_str(_read_limited(directory / TOKENIZER_JSON).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidSpec("source.path", TOKENIZER_JSON, f"is not UTF-8: {exc}") from None
    except Exception as exc:  # the tokenizers library raises a bare Exception for a file it cannot read
        raise InvalidSpec("source.path", TOKENIZER_JSON, f"is not a tokenizer: {exc}") from None


def bpe_vocabulary(directory: Path, vocab_size: int | None) -> Vocabulary:
    """The converter's ``get_vocab_base`` for a byte-level BPE ``tokenizer.json`` (``_set_vocab_gpt2``).

    The pre-tokenizer is identified as the converter does, by the SHA-256 of
    the token ids the tokenizer gives `BPE_CHECK_TEXT`; one it does not know
    is refused (llama.cpp would not split text as the model was trained to).
    ``vocab_size`` slots (config.json's, else the vocabulary's): added tokens
    are control tokens when special or special-looking, else user-defined with
    ``▁`` written as a space (a non-normalized one encoded and decoded first);
    ids nothing fills are ``[PAD<id>]``, unused.
    """
    tokenizer = _load_tokenizer(directory)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = vocab_size or len(vocab)
    if vocab and max(vocab.values()) >= size:
        raise _refuse(f"{TOKENIZER_JSON} has token id {max(vocab.values())}, past vocab_size {size}")
    digest = hashlib.sha256(str(tokenizer.encode(BPE_CHECK_TEXT).ids).encode()).hexdigest()
    pre = BPE_PRE_TOKENIZERS.get(digest)
    if pre is None:
        raise _refuse(f"{TOKENIZER_JSON}'s BPE pre-tokenizer (check hash {digest}) is not one llama.cpp's converter "
                      "recognizes; choose another output")
    reverse = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.get_added_tokens_decoder()
    added_contents = {token.content for token in added.values()}
    tokens: list[bytes] = []
    types: list[int] = []
    for token_id in range(size):
        if token_id not in reverse:
            tokens.append(f"[PAD{token_id}]".encode())
            types.append(int(gguf.TokenType.UNUSED))
            continue
        token = reverse[token_id]
        kind = gguf.TokenType.NORMAL
        if token in added_contents and token_id in added:
            if not added[token_id].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False).ids,
                                         skip_special_tokens=False)
            if added[token_id].special or _looks_special(token):
                kind = gguf.TokenType.CONTROL
            else:
                token = token.replace(_SPIECE_UNDERLINE, " ")
                kind = gguf.TokenType.USER_DEFINED
        tokens.append(token.encode("utf-8"))
        types.append(int(kind))
    return Vocabulary("gpt2", pre, tuple(tokens), None, tuple(types))


def _special_additions(directory: Path, special: gguf.SpecialVocab) -> tuple[tuple[str, bool], ...]:
    """What the converter's gguf-py (llama.cpp 0c1e570, newer than PyPI's gguf 0.19.0) reads from
    ``tokenizer.json`` beyond the pinned ``SpecialVocab``: a byte-level post-processor means no BOS/EOS is added
    unless the files say otherwise (applied to `special`), and the normalizer's lower-casing and accent
    stripping, returned as ``tokenizer.ggml.normalizer.*`` keys."""
    data = _json_object(directory / TOKENIZER_JSON) or {}
    post = data.get("post_processor")
    if isinstance(post, dict):
        processors = post.get("processors", [post])
        if isinstance(processors, list) and any(isinstance(item, dict) and item.get("type") == "ByteLevel"
                                                for item in processors):
            special.add_special_token.setdefault("bos", False)
            special.add_special_token.setdefault("eos", False)
    flags: dict[str, bool] = {}

    def parse(normalizer: object) -> None:
        if not isinstance(normalizer, dict):
            return
        kind = normalizer.get("type")
        if kind == "Lowercase":
            flags["lowercase"] = True
        elif kind == "StripAccents":
            flags["strip_accents"] = True
        elif kind == "BertNormalizer":
            for key in ("lowercase", "strip_accents"):
                if key in normalizer:
                    flags[key] = bool(normalizer[key])
        elif kind == "Sequence" and isinstance(normalizer.get("normalizers"), list):
            for item in normalizer["normalizers"]:
                parse(item)

    parse(data.get("normalizer"))
    return tuple((f"tokenizer.ggml.normalizer.{key}", flags[key]) for key in ("lowercase", "strip_accents")
                 if key in flags)


def _llama_hf_tokenizer(directory: Path) -> bool:
    """Whether ``tokenizer.json`` is a Llama-2 style BPE with byte fallback, which the converter reads through
    gguf-py's ``LlamaHfVocab`` (and transformers) rather than as byte-level BPE."""
    data = _json_object(directory / TOKENIZER_JSON) or {}
    model, decoder = data.get("model"), data.get("decoder")
    if not isinstance(model, dict) or not isinstance(decoder, dict):
        return False
    return bool(model.get("type") == "BPE" and model.get("byte_fallback", False) and decoder.get("type") == "Sequence")


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidSpec("output", "gguf", f"config.json's {key} is {value!r}, not a positive integer")
    return value


def _float(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidSpec("output", "gguf", f"config.json's {key} is {value!r}, not a number")
    return float(value)


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    """One tensor of the GGUF file: its llama.cpp name, the head count its rows are permuted by (or None),
    and whether it is stored as F32 (1-D tensors, norms and biases)."""

    name: str
    permute_heads: int | None
    as_f32: bool

    def dtype(self, dtype: str) -> str:
        """The safetensors dtype the tensor is stored with in the file, given the source's."""
        return "F32" if self.as_f32 else dtype

    def nbytes(self, tensor: _Sized) -> int:
        """How many bytes the tensor takes in the file, given its `dtype` and `nbytes` in the source."""
        return tensor.nbytes // _FLOAT_DTYPES[tensor.dtype].itemsize * 4 if self.as_f32 else tensor.nbytes

    def data(self, raw: NDArray[np.uint8], dtype: str, shape: Sequence[int]) -> NDArray[Any]:
        """The bytes to write for a tensor whose bytes in the source or its part are `raw`, rows permuted
        and converted to F32 as this tensor needs (`dtype` and `shape` are the bytes', a Q4_0 part's shape
        counts bytes)."""
        if self.permute_heads is None and not self.as_f32:
            return raw
        rows = shape[0] if shape else 1
        array = np.asarray(raw).reshape(rows, -1)
        if self.permute_heads is not None:
            array = permute_rows(array, self.permute_heads)
        if self.as_f32:
            return np.ascontiguousarray(array).view(_FLOAT_DTYPES[dtype]).astype(np.float32).reshape(-1)
        return np.ascontiguousarray(array).reshape(-1)


def permute_rows(rows: NDArray[Any], heads: int) -> NDArray[Any]:
    """The converter's ``LlamaModel.permute``: within each of `heads` heads, rows ``0, h/2, 1, h/2+1, ...``
    (Hugging Face's rotate-half order to llama.cpp's interleaved pairs); `rows` may be rows of any bytes."""
    count = rows.shape[0]
    if count % (2 * heads):
        raise _refuse(f"{count} rows do not split into {heads} heads of pairs")
    return rows.reshape(heads, 2, count // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@dataclass(frozen=True, slots=True)
class GGUFModel:
    """What the GGUF file of one checkpoint holds besides its tensors' bytes."""

    arch: gguf.MODEL_ARCH
    directory: Path
    config: Mapping[str, Any]
    vocabulary: Vocabulary
    tensor_map: gguf.TensorNameMap
    #: ``general.*`` as the converter finds it (model card, config.json, the directory's name)
    metadata: gguf.Metadata
    #: special token ids, add-BOS/EOS flags, chat template (gguf-py's reading of the tokenizer files)
    special: gguf.SpecialVocab
    #: ``tokenizer.ggml.normalizer.*`` flags (`_special_additions`)
    normalizer: tuple[tuple[str, bool], ...]

    @property
    def arch_name(self) -> str:
        """``general.architecture``: ``llama``, ``qwen2``."""
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def tensor(self, name: str, ndim: int) -> GGUFTensor | None:
        """How Hugging Face tensor `name` (with `ndim` dimensions) is written, or None when the converter
        drops it.  Raises `InvalidSpec` (``output``) for a tensor llama.cpp has no name for."""
        if name.endswith(DROPPED_SUFFIXES):
            return None
        new_name = self.tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise _refuse(f"llama.cpp's {self.arch_name} architecture has no tensor for {name!r}")
        permute = None
        if self.arch in _PERMUTED:
            heads = _int(self.config, "num_attention_heads")
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                permute = heads
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                permute = _int(self.config, "num_key_value_heads", heads)
        as_f32 = ndim <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight")
        return GGUFTensor(new_name, permute, as_f32)

    def extra_tensors(self) -> list[tuple[str, NDArray[np.float32]]]:
        """Tensors the converter generates, written before the checkpoint's: llama's ``rope_freqs.weight``
        under llama3 rope scaling."""
        rope = _rope_parameters(self.config, self.arch)
        if rope["rope_type"] != "llama3":
            return []
        heads = _int(self.config, "num_attention_heads")
        dim = _int(self.config, "head_dim", _int(self.config, "hidden_size") // heads)
        return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(rope, dim))]

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        """Add the converter's key-value pairs to `writer` (after its tensor infos: ``general.size_label``
        counts their parameters): ``general.*``, the hyper-parameters, ``general.file_type`` (Q4_0), the
        quantization version and the tokenizer."""
        config = self.config
        writer.add_type(gguf.GGUFType.MODEL)
        total, shared, expert, experts = writer.get_total_parameter_count()
        metadata = dataclasses.replace(self.metadata)
        if metadata.size_label is None and total > 0:
            metadata.size_label = gguf.size_label(total, shared, expert, experts)
        metadata.set_gguf_meta_model(writer)

        heads = _int(config, "num_attention_heads")
        writer.add_block_count(_int(config, "num_hidden_layers"))
        model_type = str(config.get("model_type"))
        writer.add_context_length(_int(config, "max_position_embeddings", _MAX_POSITIONS.get(model_type)))
        writer.add_embedding_length(_int(config, "hidden_size"))
        writer.add_feed_forward_length(_int(config, "intermediate_size"))
        writer.add_head_count(heads)
        writer.add_head_count_kv(_int(config, "num_key_value_heads", heads))
        rope = _rope_parameters(config, self.arch)
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(_float(rope, "factor", 1.0))
        writer.add_rope_freq_base(_float(rope, "rope_theta", _DEFAULT_ROPE_THETA))
        writer.add_layer_norm_rms_eps(_float(config, "rms_norm_eps", _DEFAULT_RMS_EPS))
        # LlamaConfig and MistralConfig fill head_dim in (hidden / heads), Qwen3Config has 128, Qwen2Config none
        default_head_dim = {gguf.MODEL_ARCH.LLAMA: _int(config, "hidden_size") // heads,
                            gguf.MODEL_ARCH.QWEN3: _QWEN3_HEAD_DIM}.get(self.arch)
        head_dim = None
        if config.get("head_dim") is not None or default_head_dim is not None:
            head_dim = _int(config, "head_dim", default_head_dim)
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
        if self.arch == gguf.MODEL_ARCH.LLAMA:
            assert head_dim is not None
            writer.add_vocab_size(_int(config, "vocab_size"))
            writer.add_rope_dimension_count(head_dim)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        self._add_vocabulary(writer)

    def _add_vocabulary(self, writer: gguf.GGUFWriter) -> None:
        if self.arch == gguf.MODEL_ARCH.LLAMA:  # LlamaModel.set_vocab
            tokenizer_config = _json_object(self.directory / "tokenizer_config.json") or {}
            if (prefix := tokenizer_config.get("add_prefix_space")) is not None:
                writer.add_add_space_prefix(bool(prefix))
        vocabulary = self.vocabulary
        writer.add_tokenizer_model(vocabulary.model)
        writer.add_tokenizer_pre(vocabulary.pre)
        writer.add_token_list(list(vocabulary.tokens))
        if vocabulary.scores is not None:
            writer.add_token_scores(list(vocabulary.scores))
        writer.add_token_types(list(vocabulary.types))
        self.special.add_to_gguf(writer, quiet=True)
        for key, value in self.normalizer:
            writer.add_bool(key, value)


def _rope_parameters(config: Mapping[str, Any], arch: gguf.MODEL_ARCH) -> dict[str, Any]:
    """config.json's rope settings as the converter reads them (``rope_parameters``, else ``rope_scaling``,
    with a top-level ``rope_theta``, ``type`` read as ``rope_type``); refuses a rope scaling this module does
    not write: it writes none, linear, and llama's llama3 (``rope_freqs``)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise _refuse(f"config.json's rope_parameters is {rope!r}, not an object")
    rope = dict(rope.get("full_attention", rope))
    kind = rope.get("rope_type", rope.get("type"))
    written = (None, "default", "linear", *(("llama3",) if arch == gguf.MODEL_ARCH.LLAMA else ()))
    if kind not in written:
        raise _refuse(f"rope scaling {kind!r} is not written to GGUF by nibble for {gguf.MODEL_ARCH_NAMES[arch]} "
                      f"(it writes {', '.join(str(k) for k in written[2:])} or none)")
    rope["rope_type"] = kind
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if key in rope:
            _float(rope, key, 0.0)
    if kind == "linear" and rope.get("factor") is None:
        raise _refuse("linear rope scaling without a factor")
    return rope


def llama3_rope_factors(rope: Mapping[str, Any], dim: int) -> NDArray[np.float32]:
    """``rope_freqs`` of a llama3-scaled RoPE, as the converter's ``LlamaModel.generate_extra_tensors`` computes
    it in torch float32: per frequency 1 (short wavelengths), ``factor`` (long ones), or the smooth blend
    between.  torch divides a scalar by a tensor as a reciprocal times the scalar, reproduced here; its float32
    power is taken as the correctly rounded one (torch's may differ by one unit in the last place)."""
    f32 = np.float32
    base = _float(rope, "rope_theta", _DEFAULT_ROPE_THETA)
    factor = _float(rope, "factor", 8.0)
    low, high = _float(rope, "low_freq_factor", 1.0), _float(rope, "high_freq_factor", 4.0)
    old = _float(rope, "original_max_position_embeddings", 8192)
    if high == low:
        raise _refuse("llama3 rope scaling with high_freq_factor equal to low_freq_factor")
    exponents = np.arange(0, dim, 2, dtype=f32) / f32(dim)
    power = np.power(np.float64(base), exponents.astype(np.float64)).astype(f32)
    freqs = (f32(1) / power) * f32(1.0)
    wavelength = (f32(1) / freqs) * f32(2 * math.pi)
    smooth = ((f32(1) / wavelength) * f32(old) - f32(low)) / f32(high - low)
    blended = f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)
    factors = np.where(wavelength < old / high, f32(1), np.where(wavelength > old / low, f32(factor), blended))
    return np.ascontiguousarray(factors, dtype=f32)


def _qwen3_reranker(directory: Path, config: Mapping[str, Any], other_files: Sequence[str]) -> bool:
    """The converter's ``Qwen3Model._is_qwen3_reranker``: a reranker by its model card's title or its names."""
    hints = [directory.name, str(config.get("_name_or_path", "")), str(config.get("model_type", ""))]
    if any("qwen3-reranker" in hint.lower() or "qwen3-vl-reranker" in hint.lower() for hint in hints):
        return True
    if "README.md" not in other_files:
        return False
    card = _read_limited(directory / "README.md").decode("utf-8", errors="replace").lower()
    return "# qwen3-reranker" in card or "# qwen3-vl-reranker" in card


def gguf_model(checkpoint: Checkpoint) -> GGUFModel:
    """Describe `checkpoint` (its config.json, tokenizer files, model card, tensor shapes) for a GGUF file
    llama.cpp loads, or refuse it (`InvalidSpec` on ``output``): an architecture not in `ARCHITECTURES`, no
    ``tokenizer.model``, hyper-parameters missing or not numbers; unreadable tokenizer files or model card are
    refused on ``source.path``."""
    directory, config, other_files = checkpoint.directory, checkpoint.config, checkpoint.other_files
    if config is None:
        raise _refuse("the checkpoint has no config.json, and a GGUF file needs its hyper-parameters")
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if architecture not in ARCHITECTURES:
        raise _refuse(f"architecture {architecture!r} is not one nibble writes as GGUF for llama.cpp "
                      f"(supported: {', '.join(sorted(ARCHITECTURES))}); choose another output")
    arch = ARCHITECTURES[architecture]
    if arch == gguf.MODEL_ARCH.QWEN3 and _qwen3_reranker(directory, config, other_files):
        raise _refuse("a Qwen3 reranker (the converter writes it with a classifier head) is not written as GGUF "
                      "by nibble; choose another output")
    sentencepiece = TOKENIZER_MODEL in other_files
    if not sentencepiece and TOKENIZER_JSON not in other_files:
        raise _refuse(f"the checkpoint has neither {TOKENIZER_MODEL} (SentencePiece) nor {TOKENIZER_JSON} (BPE), "
                      "and a GGUF file carries its tokenizer; choose another output")
    if not sentencepiece and arch == gguf.MODEL_ARCH.LLAMA and _llama_hf_tokenizer(directory):
        raise _refuse(f"a Llama-2 style {TOKENIZER_JSON} (BPE with byte fallback) without {TOKENIZER_MODEL} is "
                      "not written as GGUF by nibble; choose another output")
    blocks = _int(config, "num_hidden_layers")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        _int(config, key)
    _rope_parameters(config, arch)
    vocab_size = config.get("vocab_size")
    size = vocab_size if isinstance(vocab_size, int) else None
    vocabulary = sentencepiece_vocabulary(directory, size) if sentencepiece else bpe_vocabulary(directory, size)
    # the converter's prepare_metadata, with the parameters its writer counts (every tensor it writes)
    parameters = sum(math.prod(tensor.shape) for tensor in checkpoint.tensors
                     if not tensor.name.endswith(DROPPED_SUFFIXES))
    if _rope_parameters(config, arch)["rope_type"] == "llama3":
        parameters += _int(config, "head_dim", _int(config, "hidden_size") // _int(config, "num_attention_heads")) // 2
    try:
        metadata = gguf.Metadata.load(None, directory, None, parameters)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, yaml.YAMLError) as exc:
        raise InvalidSpec("source.path", "README.md", f"model card metadata unreadable: {exc}") from None
    if metadata.name is None:
        metadata.name = directory.name
    try:
        special = (gguf.SpecialVocab(directory, n_vocab=len(vocabulary.tokens)) if sentencepiece  # as the converter
                   else gguf.SpecialVocab(directory, load_merges=True))
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise InvalidSpec("source.path", "tokenizer", f"tokenizer files unreadable: {exc}") from None
    normalizer = _special_additions(directory, special)
    return GGUFModel(arch, directory, dict(config), vocabulary, gguf.get_tensor_name_map(arch, blocks), metadata,
                     special, normalizer)


def check_gguf_tensors(model: GGUFModel, tensors: Sequence[tuple[str, Sequence[int], bool]]) -> None:
    """Refuse (`InvalidSpec` on ``output``) a checkpoint with a tensor llama.cpp has no name for, a quantized
    tensor llama.cpp keeps in F32, or Q/K rows that do not split into the heads' pairs; `tensors` are
    (name, shape, quantized)."""
    for name, shape, quantized in tensors:
        tensor = model.tensor(name, len(shape))
        if tensor is None:
            continue
        if quantized and tensor.as_f32:
            raise _refuse(f"llama.cpp keeps {name!r} ({tensor.name}) in F32; exclude it from quantization")
        if tensor.permute_heads is not None and (not shape or shape[0] % (2 * tensor.permute_heads)):
            raise _refuse(f"{name!r} (shape {list(shape)}) does not split into {tensor.permute_heads} heads "
                          "of row pairs")
