"""Planning from a checkpoint's headers: files written here by safetensors and gguf, read back by header only."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import quantize
from safetensors.numpy import save_file

from quant_core.catalog import get_preset
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.errors import InvalidSpec, LimitExceeded, TensorFileError
from quant_core.formats import GGML_BLOCKS, float_format, ggml_format, int4
from quant_core.gguf_mix import ModelFacts, tensor_type
from quant_core.hf_config import model_from_sizes
from quant_core.inventory import inventory
from quant_core.planner import Hardware, PlanOptions, plan
from quant_core.schemes import assign, gguf_scheme, scheme_bytes, scheme_from_quantization_config, scheme_of
from quant_core.specs import ModelSpec
from quant_core.tensorio import export_awq, export_compressed_tensors, export_gguf, export_gptq
from quant_core.tensorio.checkpoint_headers import (
    HeaderTensor,
    check_against_index,
    header_length,
    header_tensors,
    index_weight_map,
    read_checkpoint_headers,
    read_header_prefix,
)
from tests.quant_core.tensorio.helpers import random_quantized

TINY = model_from_sizes(hidden_size=256, num_layers=3, num_attention_heads=4, num_kv_heads=2,
                        intermediate_size=512, vocab_size=1000)


def _hf_tensors(spec: ModelSpec, dtype: type = np.float16) -> dict[str, np.ndarray]:
    out = {}
    for entry in inventory(spec):
        for layer in entry.layers or (None,):
            name = entry.name if layer is None else entry.name.replace("{i}", str(layer))
            out[name] = np.zeros(entry.shape, dtype=dtype)
    return out


def test_a_safetensors_checkpoint_is_planned_from_its_header_to_the_byte(tmp_path: Path) -> None:
    tensors = _hf_tensors(TINY)
    tensors["model.layers.3.mlp.down_proj.weight"] = np.zeros((256, 512), np.float16)  # an MTP layer (past 3)
    tensors["model.rotary_emb.inv_freq"] = np.zeros((32,), np.float16)  # no module of the model
    save_file(dict(list(tensors.items())[:12]), str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(dict(list(tensors.items())[12:]), str(tmp_path / "model-00002-of-00002.safetensors"))
    read = read_checkpoint_headers(tmp_path)
    assert len(read) == len(tensors)
    data_bytes = sum(os.path.getsize(f) - len(read_header_prefix(f)) for f in tmp_path.iterdir())
    assert sum(tensor.bytes for tensor in read) == data_bytes
    scheme, summary = checkpoint_scheme(TINY, read)
    # every tensor of the model, at 2 bytes, plus the unknown one; the MTP layer set apart
    assert scheme_bytes(TINY, scheme) == scheme_bytes(TINY, scheme_of(float_format("fp16"))) + 64
    assert summary.mtp_tensors == 1 and summary.mtp_bytes == 256 * 512 * 2
    assert summary.unknown == ("model.rotary_emb.inv_freq",)
    assert scheme.label() == "checkpoint-f16"
    assert any("multi-token-prediction" in note for note in scheme.notes)


def _header_tensors(spec: ModelSpec) -> list[HeaderTensor]:
    return [HeaderTensor(name, "F16", tuple(array.shape), array.size * 2) for name, array in _hf_tensors(spec).items()]


@pytest.mark.parametrize(("left_out", "says"), [
    (lambda name: ".layers.1." in name, "no tensor of layers 1 of"),
    (lambda name: ".layers.0." in name or ".layers.2." in name, "no tensor of layers 0, 2 of"),
    (lambda name: ".layers." in name, "no tensor of layers 0-2 of"),
    (lambda name: name == "model.embed_tokens.weight", "no tensor of the embedding of"),
    (lambda name: name == "lm_head.weight", "no tensor of the lm_head of"),
])
def test_headers_that_leave_part_of_the_model_out_are_refused_not_planned_as_the_whole(
        left_out: Callable[[str], bool], says: str) -> None:
    # a plan counts the headers' bytes as the weights: one shard's headers of four would promise the engine the
    # memory the other three take (Llama-2-7B with its embedding's header alone "fit" an L4 at 0.26 GB)
    with pytest.raises(InvalidSpec, match=re.escape(says)) as refused:
        checkpoint_scheme(TINY, [tensor for tensor in _header_tensors(TINY) if not left_out(tensor.name)])
    assert refused.value.field == "checkpoint" and "(3 layers): send every file's header" in refused.value.detail


def test_layers_past_the_model_and_its_multi_token_prediction_layers_are_another_models() -> None:
    # TINY has 3 layers; a config with num_nextn_predict_layers 1 allows layer 3 (DeepSeek-V3's layer 61), and
    # layers past it are refused: Llama-3.1-8B's config (32 layers) with 70B's headers (80) planned 32 of them
    extra = [HeaderTensor(f"model.layers.{layer}.mlp.down_proj.weight", "F16", (256, 512), 262_144)
             for layer in (3, 4, 5)]
    tensors = _header_tensors(TINY)
    _, summary = checkpoint_scheme(TINY, [*tensors, extra[0]], mtp_layers=1)
    assert summary.mtp_tensors == 1
    with pytest.raises(InvalidSpec, match=re.escape("the headers hold layers 4-5, past the 3 layers")):
        checkpoint_scheme(TINY, [*tensors, *extra], mtp_layers=1)
    with pytest.raises(InvalidSpec, match=re.escape("the headers hold layers 3, past the 3 layers")):
        checkpoint_scheme(TINY, [*tensors, extra[0]], mtp_layers=0)
    _, summary = checkpoint_scheme(TINY, [*tensors, *extra])  # a model given by its sizes does not say
    assert summary.mtp_tensors == 3
    # a vision tower's deeper layers are no module of the model: set apart as before, not taken for its layers
    tower = [HeaderTensor(f"vision_tower.encoder.layers.{layer}.mlp.fc1.weight", "F16", (64, 64), 8192)
             for layer in range(6)]
    _, summary = checkpoint_scheme(TINY, [*tensors, *tower], mtp_layers=0)
    assert summary.mtp_tensors == 3 and len(summary.unknown) == 3


def test_a_tied_model_needs_no_lm_head_and_unknown_names_may_hold_the_embedding() -> None:
    tied = model_from_sizes(hidden_size=256, num_layers=3, num_attention_heads=4, num_kv_heads=2,
                            intermediate_size=512, vocab_size=1000, tie_word_embeddings=True)
    tensors = _header_tensors(tied)
    assert not any(tensor.name == "lm_head.weight" for tensor in tensors)
    checkpoint_scheme(tied, tensors)
    # a multimodal checkpoint's prefixed names are no module of the model: the roles cannot be told, so only
    # the layers (found by their number wherever they sit in the name) are checked
    prefixed = [HeaderTensor(f"language_model.{tensor.name}", tensor.dtype, tensor.shape, tensor.bytes)
                for tensor in _header_tensors(TINY) if "embed_tokens" not in tensor.name]
    _, summary = checkpoint_scheme(TINY, prefixed)
    assert len(summary.unknown) == len(prefixed)


def test_an_mxfp4_checkpoint_in_gpt_oss_layout_is_what_the_mxfp4_format_predicts(tmp_path: Path) -> None:
    # gpt-oss stores each expert projection as _blocks [E, out, in/32, 16] and _scales [E, out, in/32] (uint8)
    spec = get_preset("gpt-oss-20b")  # its layout (fused experts with biases, sinks), at a tiny size
    layout = {**spec.to_dict(), "name": "tiny-gpt-oss", "hidden_size": 64, "num_layers": 2,
              "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 96,
              "vocab_size": 100, "num_experts": 4, "experts_per_token": 2, "moe_intermediate_size": 96,
              "sliding_layers": [0]}
    tiny = ModelSpec.from_dict(layout)
    shipped = scheme_from_quantization_config(
        {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                             "model.embed_tokens", "lm_head"]})
    tensors: dict[str, np.ndarray] = {}
    for entry, fmt in assign(tiny, shipped):
        for layer in entry.layers or (None,):
            name = entry.name if layer is None else entry.name.replace("{i}", str(layer))
            if fmt.name == "mxfp4":
                base = name[: name.index("[")]
                out, width = entry.shape
                tensors[base + "_blocks"] = np.zeros((4, out, width // 32, 16), np.uint8)
                tensors[base + "_scales"] = np.zeros((4, out, width // 32), np.uint8)
            elif "[" in name:  # expert biases, fused over experts
                tensors[name[: name.index("[")]] = np.zeros((4, *entry.shape), np.float32).astype(np.float16)
            else:
                tensors[name] = np.zeros(entry.shape, np.float16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    read = read_checkpoint_headers(tmp_path / "model.safetensors")
    scheme, summary = checkpoint_scheme(tiny, read)
    assert summary.format == "mxfp4" and summary.unknown == ()
    assert scheme_bytes(tiny, scheme) == scheme_bytes(tiny, shipped)


def _gguf_name(hf_name: str) -> str:
    table = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight", "input_layernorm": "attn_norm", "q_proj": "attn_q",
             "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    if hf_name in table:
        return table[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.self_attn.q_proj.weight
    return f"blk.{{i}}.{table[parts[-2]]}.weight"


@pytest.mark.parametrize("file_type", ["gguf-q4_k_m", "gguf-q8_0", "gguf-q4_0"])
def test_a_gguf_file_written_by_gguf_py_is_read_from_its_header(tmp_path: Path, file_type: str) -> None:
    # a file with the per-tensor types llama-quantize picks for `file_type` (quant_core.gguf_mix), written
    # by gguf-py: the header gives each tensor's bytes, and they sum to what the mix predicts
    spec = TINY
    facts = ModelFacts.of(spec)
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(spec.num_layers)
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            ggml_type = tensor_type(file_type, entry, layer, facts)
            name = _gguf_name(entry.name).replace("{i}", str(layer))
            data = np.zeros(entry.shape, np.float32)
            if ggml_type == "F32":
                writer.add_tensor(name, data)
            elif ggml_type in ("Q8_0", "Q4_0"):
                kind = gguf.GGMLQuantizationType[ggml_type]
                packed = quantize(data, kind)
                writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
            else:  # k-quants: gguf-py has no quantizer for them; the bytes are zero blocks
                block, size = GGML_BLOCKS[ggml_type]
                raw = np.zeros((entry.shape[0], entry.shape[1] // block * size), np.uint8)
                writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[ggml_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    read = read_checkpoint_headers(path)
    reader = gguf.GGUFReader(str(path))
    assert {t.name: t.bytes for t in read} == {t.name: int(t.n_bytes) for t in reader.tensors}
    scheme, summary = checkpoint_scheme(spec, read)
    assert summary.unknown == () and summary.format.startswith("gguf-")
    assert scheme_bytes(spec, scheme) == scheme_bytes(spec, gguf_scheme(file_type))
    # the header ends where gguf-py's reader finds the data area; read_header_prefix stops there
    whole = path.read_bytes()
    assert header_length(whole) == reader.data_offset == len(read_header_prefix(path))


def test_a_plan_from_headers_keeps_16_bit_and_int4_beside_it(tmp_path: Path) -> None:
    save_file(_hf_tensors(TINY), str(tmp_path / "model.safetensors"))
    scheme, _ = checkpoint_scheme(TINY, read_checkpoint_headers(tmp_path))
    result = plan(TINY, Hardware(1 << 30), None, PlanOptions(scheme=scheme))
    assert result.primary.format == "checkpoint-f16"
    assert result.primary.weights_bytes == result.comparison["bf16"].weights_bytes  # 2 bytes a weight both
    assert set(result.comparison) == {"bf16", "int4", "checkpoint"}
    assert result.comparison["checkpoint"] is result.primary


def test_a_header_past_the_limit_or_truncated_is_refused() -> None:
    with pytest.raises(LimitExceeded):
        header_tensors((10_000).to_bytes(8, "little") + b" " * 10_000, max_header_bytes=1000)
    with pytest.raises(TensorFileError):
        header_tensors((100).to_bytes(8, "little") + b"{")
    with pytest.raises(TensorFileError):
        header_tensors(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little"))


@pytest.mark.parametrize(("exporter", "weight_format", "group_size", "symmetric"), [
    ("gptq", "gptq", 128, False), ("gptq", "gptq", 32, True), ("awq", "awq", 128, False),
    ("awq", "awq", 64, False), ("awq", "awq", 128, True),
    ("ct", "compressed-tensors", 128, True), ("ct", "compressed-tensors", 32, False),
    ("gguf", "Q4_0", 32, True),
])
def test_nibbles_own_exports_are_what_the_formats_count(tmp_path: Path, exporter: str, weight_format: str,
                                                        group_size: int, symmetric: bool) -> None:
    # nibble's exporters write the layouts the engines load (each checked bit for bit against the reference
    # decoders in test_exports.py); the header bytes of one [48, 512] tensor equal the format's bytes_for, and its
    # tensors the format's checkpoint_tensors (a symmetric GPTQ or AWQ export holds qzeros, compressed-tensors none)
    q = random_quantized(np.random.default_rng(3), 48, 512, group_size, symmetric, zero_range=(1, 16))
    name, path = "model.layers.0.mlp.up_proj.weight", tmp_path / ("m.gguf" if exporter == "gguf" else "m.safetensors")
    {"gptq": export_gptq, "awq": export_awq, "ct": export_compressed_tensors,
     "gguf": export_gguf}[exporter]({name: q}, None, path)
    stored = sum(tensor.bytes for tensor in read_checkpoint_headers(path) if tensor.name.startswith(name[:-7]))
    fmt = ggml_format(weight_format) if exporter == "gguf" else \
        int4(group_size, symmetric=symmetric, layout=weight_format)  # type: ignore[arg-type]
    assert stored == fmt.bytes_for((48, 512))
    if exporter != "gguf":  # the layout's tensors, by name, dtype and shape, are what the format lists
        listed = {f"{name[:-7]}.{t.suffix}": (t.dtype, t.shape) for t in fmt.checkpoint_tensors((48, 512))}
        assert {t.name: (t.dtype, t.shape) for t in read_checkpoint_headers(path)} == listed


def test_the_header_length_is_8_plus_n_for_safetensors(tmp_path: Path) -> None:
    save_file({"w": np.zeros((4, 4), np.float16)}, str(tmp_path / "m.safetensors"))
    whole = (tmp_path / "m.safetensors").read_bytes()
    assert header_length(whole) == 8 + int.from_bytes(whole[:8], "little") == len(whole) - 32
    with pytest.raises(LimitExceeded):
        header_length(whole, max_header_bytes=8)


def _tensor(name: str) -> HeaderTensor:
    return HeaderTensor(name, "BF16", (2,), 4)


def test_headers_must_be_the_checkpoint_their_index_describes() -> None:
    weight_map = index_weight_map(b'{"metadata": {"total_size": 8}, "weight_map": {"a": "one.safetensors", '
                                  b'"b": "two.safetensors"}}')
    check_against_index(weight_map, {"one.safetensors": [_tensor("a")], "two.safetensors": [_tensor("b")]})
    for files, reason in (
            ({"one.safetensors": [_tensor("a")]}, "the index names 2 shard(s); 1 not given: two.safetensors"),
            ({"one.safetensors": [_tensor("a")], "two.safetensors": [_tensor("b")], "x.safetensors": []},
             "x.safetensors is not a shard the index names"),
            ({"one.safetensors": [_tensor("a"), _tensor("b")], "two.safetensors": []},
             "the index places tensor 'b' in two.safetensors, whose header does not hold it")):
        with pytest.raises(TensorFileError, match=re.escape(reason)):
            check_against_index(weight_map, files)
    for index in (b"[1]", b"{", b'{"weight_map": {"a": 3}}'):
        with pytest.raises(TensorFileError):
            index_weight_map(index)


def _gguf_prefix(records: list[tuple[str, list[int], int]], metadata: bytes = b"", metadata_count: int = 0) -> bytes:
    """A GGUF v3 header written field by field (gguf-py ``gguf_reader.py``'s layout): records of name, dims
    (innermost first), ggml type; the offsets are 0, as a planner never reads them."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(records), metadata_count) + metadata
    for name, dims, ggml_type in records:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", dim) for dim in dims) + struct.pack("<IQ", ggml_type, 0)
    return out + b"\0" * (-len(out) % 32)


@pytest.mark.parametrize(("prefix", "error", "says"), [
    # an array of arrays 5,000 deep: it was a RecursionError (500)
    (_gguf_prefix([("w", [256], 1)], struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
                  + struct.pack("<IQ", 9, 1) * 5_000 + struct.pack("<IQ", 4, 0), 1),
     TensorFileError, "nested"),
    # ggml tensors have at most GGML_MAX_DIMS = 4 dimensions (ggml.h; gguf.cpp refuses more): 200 was a 500
    (_gguf_prefix([("w", [2] * 200, 1)]), TensorFileError, "200 dimensions"),
    # 2^64 x 2^64 elements: was planned as a 2^129-byte tensor
    (_gguf_prefix([("w", [2**63, 2**63], 1)]), LimitExceeded, "elements"),
], ids=["arrays-nested-5000-deep", "200-dimensions", "2^126-elements"])
def test_a_hostile_gguf_header_is_a_typed_error(prefix: bytes, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        header_tensors(prefix)
    with pytest.raises(error):
        header_length(prefix)


def test_a_gguf_header_naming_a_tensor_twice_is_refused() -> None:
    # gguf.cpp refuses a file whose tensor records repeat a name; counted twice, the plan would double it
    with pytest.raises(TensorFileError, match=re.escape("'token_embd.weight' twice")):
        header_tensors(_gguf_prefix([("token_embd.weight", [256, 1000], 1), ("token_embd.weight", [256, 1000], 1)]))


@pytest.mark.parametrize("alignment", [0, 3, 2**32 - 1])
def test_a_gguf_alignment_that_is_not_a_power_of_two_is_refused(alignment: int) -> None:
    # gguf.cpp refuses it; 2^32 - 1 made the whole part "header" up to 4 GiB: tensor data passed as padding
    metadata = struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, alignment)
    prefix = _gguf_prefix([("token_embd.weight", [256, 1000], 1)], metadata, 1)
    with pytest.raises(TensorFileError, match=f"alignment {alignment} is not a power of 2"):
        header_length(prefix)


def test_a_header_only_prefix_is_read_as_header_length_and_header_tensors_read_it_and_a_gguf_walked_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a multipart plan's header part must be its file's header and nothing more: its GGUF records were walked twice,
    # once for header_length and again for header_tensors (400,000 records: 2.4 s a walk)
    from quant_core.tensorio import checkpoint_headers

    gguf = _gguf_prefix([("token_embd.weight", [256, 1000], 1), ("blk.0.attn_q.weight", [256, 256], 1)])
    text = b'{"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}'
    safetensors = struct.pack("<Q", len(text)) + text
    walks: list[int] = []
    walk = checkpoint_headers._gguf_header

    def counted(prefix: bytes, max_tensors: int, max_metadata_values: int | None = None) -> tuple[
            list[HeaderTensor], int]:
        walks.append(len(prefix))
        return walk(prefix, max_tensors, max_metadata_values)

    monkeypatch.setattr(checkpoint_headers, "_gguf_header", counted)
    for prefix in (gguf, safetensors):
        walks.clear()
        assert checkpoint_headers.header_only_tensors(prefix, "f") == header_tensors(prefix)
        assert len(walks) == (2 if prefix is gguf else 0)  # once here, once by header_tensors
        with pytest.raises(LimitExceeded) as past:  # a byte of tensor data, refused naming the file and its header
            checkpoint_headers.header_only_tensors(prefix + b"\0" * 33, "model.gguf")
        assert past.value.limit == "bytes of model.gguf (its header only: no tensor data)"
        assert (past.value.value, past.value.maximum) == (len(prefix) + 33, header_length(prefix))
    with pytest.raises(TensorFileError, match="truncated"):
        checkpoint_headers.header_only_tensors(gguf[:40], "f")


def _records_as_main_read_them(prefix: bytes) -> tuple[list[HeaderTensor], int]:
    """main 9e51ef3's reading of a GGUF header without metadata, one `_Cursor` call a field (the reference)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from quant_core.tensorio.checkpoint_headers import GGML_MAX_DIMS, HEADER_MAX_ELEMENTS, _Cursor

    cursor = _Cursor(prefix)
    cursor.take(4)
    cursor.u32()
    tensor_count, _ = cursor.u64(), cursor.u64()
    tensors, names = [], set()
    for _ in range(tensor_count):
        name = cursor.string()
        if name in names:
            raise TensorFileError(f"gguf header names tensor {name!r} twice")
        names.add(name)
        dim_count = cursor.u32()
        if dim_count > GGML_MAX_DIMS:
            raise TensorFileError(f"gguf tensor {name!r} has {dim_count} dimensions; "
                                  f"ggml's are at most {GGML_MAX_DIMS}")
        dims = [cursor.u64() for _ in range(dim_count)]
        type_id = cursor.u32()
        cursor.u64()
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise TensorFileError(f"gguf tensor {name!r} has ggml type {type_id}, unknown to gguf-py") from None
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        elements = 1
        for dim in dims:
            elements *= dim
        if elements > HEADER_MAX_ELEMENTS:
            raise LimitExceeded(f"elements of tensor {name!r}", elements, HEADER_MAX_ELEMENTS, field="file")
        if dims and dims[0] % block:
            raise TensorFileError(f"gguf tensor {name!r}: row of {dims[0]} is not whole {ggml_type.name} blocks")
        tensors.append(HeaderTensor(name, ggml_type.name, tuple(reversed(dims)), elements // block * block_bytes))
    return tensors, -(-cursor.position // 32) * 32


def _outcome(read: Callable[[bytes], object], prefix: bytes) -> object:
    try:
        return read(prefix)
    except (TensorFileError, LimitExceeded) as exc:
        return type(exc).__name__, exc.detail


@pytest.mark.parametrize("records", [
    [("token_embd.weight", [256, 1000], 1), ("blk.0.attn_norm.weight", [256], 0), ("scalar", [], 0),
     ("blk.0.ffn_down_exps.weight", [256, 512, 4, 2], 12), ("blk.0.attn_q.weight", [256, 256], 8)],
    [("w", [256], 1), ("w", [256], 1)],  # a name twice
    [("w", [2, 2, 2, 2, 2], 0)],  # five dimensions
    [("w", [256], 9999)],  # an unknown ggml type
    [("w", [100, 2], 12)],  # a row of Q4_K not whole blocks
    [("w", [2**40, 2**20], 0)],  # past HEADER_MAX_ELEMENTS
], ids=["five-tensors", "name-twice", "five-dims", "unknown-type", "partial-block", "too-many-elements"])
def test_gguf_tensor_records_read_as_main_read_them_at_every_truncation(records: list[tuple[str, list[int], int]]
                                                                        ) -> None:
    # the records are read with struct.unpack_from now, not a _Cursor call a field: the same tensors, the same
    # refusals, and a prefix cut anywhere refused naming the same first byte missing
    from quant_core.tensorio.checkpoint_headers import _gguf_header

    prefix = _gguf_prefix(records)
    for end in range(24, len(prefix) + 1):
        assert _outcome(lambda data: _gguf_header(data, 1 << 20), prefix[:end]) == _outcome(
            _records_as_main_read_them, prefix[:end]), end
