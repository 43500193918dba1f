"""Exports to GPTQ, AWQ GEMM, compressed-tensors pack-quantized and GGUF Q4_0, decoded independently.

Independent decoders: gguf-py (GGUFReader + gguf.quants.dequantize) for GGUF; compressed-tensors
(CPU torch: PackedQuantizationCompressor.decompress) for pack-quantized; compressed-tensors' port of
AutoAWQ's unpacking (AutoAWQConverter) for AWQ; and for GPTQ a NumPy transcription of AutoGPTQ's
dequantization (reference_decoders.py; AutoGPTQ's and AutoAWQ's own code decode the exports in
test_reference_libraries.py).  Each decoded weight must equal nibble's `dequantize` bit for bit: in float32 when the
decoder computes in float32, in float16 when it multiplies in fp16 (the product ``(q − z) × s`` is
exact in float32, so both round the same exact value to nearest fp16).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from quant_core.errors import InvalidSpec, InvalidTensor, TensorFileError
from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize
from quant_core.quantize.types import QuantizedTensor
from quant_core.tensorio import (
    export_awq,
    export_compressed_tensors,
    export_gguf,
    export_gptq,
    read_safetensors,
)
from tests.quant_core.tensorio.gptq_loader_rules import gptqmodel_quantizes, optimum_quantizes, vllm_quantizes
from tests.quant_core.tensorio.helpers import hand_built, quantized_gaussian, random_quantized
from tests.quant_core.tensorio.reference_decoders import decode_gptq

NAME = "model.layers.0.mlp.up_proj.weight"
PREFIX = "model.layers.0.mlp.up_proj"


def _bits(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint32 if values.dtype == np.float32 else np.uint16)


def _assert_bit_equal(decoded: np.ndarray, q: QuantizedTensor, dtype: type = np.float32) -> None:
    expected = dequantize(q, dtype)
    assert decoded.shape == expected.shape
    np.testing.assert_array_equal(_bits(np.ascontiguousarray(decoded, dtype=dtype)), _bits(expected))


# ---------------------------------------------------------------- GPTQ

@pytest.mark.parametrize(("group_size", "symmetric"), [(128, False), (32, False), (None, False), (64, True)])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_gptq_export_decodes_with_autogptq_unpacking_to_nibbles_values(
        tmp_path: Path, group_size: int | None, symmetric: bool, checkpoint_format: str) -> None:
    q = random_quantized(np.random.default_rng(5), 24, 256, group_size, symmetric, zero_range=(1, 16))
    config = export_gptq({NAME: q}, {"model.norm.weight": np.ones(8, np.float16)}, tmp_path / "m.safetensors",
                         checkpoint_format=checkpoint_format,  # type: ignore[arg-type]
                         config_path=tmp_path / "quantize_config.json")
    file = read_safetensors(tmp_path / "m.safetensors")
    groups = 1 if group_size is None else 256 // group_size
    assert file.entries[f"{PREFIX}.qweight"].shape == (256 // 8, 24)
    assert file.entries[f"{PREFIX}.qzeros"].shape == (groups, 24 // 8)
    assert file.entries[f"{PREFIX}.scales"].shape == (groups, 24)
    assert file.entries[f"{PREFIX}.g_idx"].shape == (256,)
    decoded = decode_gptq(file[f"{PREFIX}.qweight"], file[f"{PREFIX}.qzeros"], file[f"{PREFIX}.scales"],
                          file[f"{PREFIX}.g_idx"], checkpoint_format)
    _assert_bit_equal(decoded, q)
    assert config == json.loads((tmp_path / "quantize_config.json").read_text())
    assert config["group_size"] == (-1 if group_size is None else group_size)
    assert config["sym"] is symmetric and config["desc_act"] is False
    assert config["checkpoint_format"] == checkpoint_format and config["quant_method"] == "gptq"


def test_gptq_export_tells_the_loaders_which_linear_weights_it_passes_through(tmp_path: Path) -> None:
    # a 2-D float weight stored unquantized (here: left out by the include pattern) must not become a GPTQ layer
    # in GPTQModel, vLLM or transformers (transcriptions in gptq_loader_rules.py); the embedding, norms and other
    # dtypes need no rule (no loader quantizes them)
    passthrough = {"model.layers.0.mlp.down_proj.weight": np.ones((8, 64), ml_dtypes.bfloat16),
                   "model.embed_tokens.weight": np.ones((16, 64), np.float16),
                   "model.norm.weight": np.ones(64, np.float32), "model.layers.0.ids": np.ones((2, 2), np.int64)}
    config = export_gptq({NAME: quantized_gaussian(0, 8, 64, int4(32))}, passthrough, tmp_path / "g.safetensors",
                         config_path=tmp_path / "quantize_config.json")
    assert config == json.loads((tmp_path / "quantize_config.json").read_text())
    assert config["dynamic"] == {r"-:^model\.layers\.\d+\.mlp\.down_proj$": {}}
    assert config["modules_in_block_to_quantize"] == [["mlp.up_proj"]]
    for loader_quantizes in (gptqmodel_quantizes, optimum_quantizes, vllm_quantizes):
        assert loader_quantizes(config, PREFIX)
        assert not loader_quantizes(config, "model.layers.0.mlp.down_proj")
    # with the linear weights all quantized, the config is the scheme alone, as before
    plain = export_gptq({NAME: quantized_gaussian(0, 8, 64, int4(32))},
                        {name: array for name, array in passthrough.items() if "down_proj" not in name},
                        tmp_path / "h.safetensors")
    assert "dynamic" not in plain and "modules_in_block_to_quantize" not in plain


def test_gptq_qweight_bit_layout_matches_the_documented_packing(tmp_path: Path) -> None:
    codes = np.zeros((8, 8), dtype=np.uint8)
    codes[3, :] = np.arange(1, 9)  # output row 3: input rows 0..7 hold codes 1..8
    q = hand_built(codes, np.ones((8, 1), np.float16), np.full((8, 1), 9, np.uint8), int4(None))
    export_gptq({NAME: q}, None, tmp_path / "m")
    file = read_safetensors(tmp_path / "m")
    assert file[f"{PREFIX}.qweight"].view(np.uint32)[0, 3] == 0x87654321
    assert file[f"{PREFIX}.qzeros"].view(np.uint32)[0, 0] == 0x88888888  # zero 9 stored as 9 - 1


def test_gptq_act_order_g_idx_is_exported_and_decoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g_idx = rng.permutation(np.arange(64, dtype=np.int32) // 32).astype(np.int32)
    q = hand_built(rng.integers(0, 16, (16, 64), dtype=np.uint8), rng.random((16, 2)).astype(np.float16),
                   rng.integers(1, 16, (16, 2), dtype=np.uint8), int4(32), g_idx=g_idx)
    config = export_gptq({NAME: q}, None, tmp_path / "m")
    file = read_safetensors(tmp_path / "m")
    np.testing.assert_array_equal(file[f"{PREFIX}.g_idx"], g_idx)
    decoded = decode_gptq(file[f"{PREFIX}.qweight"], file[f"{PREFIX}.qzeros"], file[f"{PREFIX}.scales"],
                          file[f"{PREFIX}.g_idx"])
    _assert_bit_equal(decoded, q)
    assert config["desc_act"] is True


def test_gptq_v1_refuses_a_zero_point_of_zero_naming_the_tensor(tmp_path: Path) -> None:
    zeros = np.full((8, 1), 5, np.uint8)
    zeros[6, 0] = 0
    q = hand_built(np.zeros((8, 32), np.uint8), np.ones((8, 1), np.float16), zeros, int4(32))
    with pytest.raises(InvalidTensor, match=r"'model.layers.0.mlp.up_proj.weight'.*row 6, group 0") as caught:
        export_gptq({NAME: q}, None, tmp_path / "m")
    assert caught.value.name == NAME
    export_gptq({NAME: q}, None, tmp_path / "m", checkpoint_format="gptq_v2")


@pytest.mark.parametrize("method", ["rtn", "clip", "gptq"])
def test_zeros_quantized_at_least_1_make_all_positive_and_zero_rows_exportable_to_gptq_v1(
        tmp_path: Path, method: str) -> None:
    # all-positive groups get zero 0 from min/max (0 is in every range), which v1 cannot store: min_zero=1
    weights = np.abs(np.random.default_rng(6).standard_normal((16, 256))).astype(np.float32)
    weights[3] = 0.0
    weights[5, :128] *= -1.0  # one all-negative group: its zero is 15 already
    calibration = np.random.default_rng(7).standard_normal((128, 256)).astype(np.float32)
    q = quantize(weights, int4(128), method, calibration if method == "gptq" else None, min_zero=1)
    assert q.zeros is not None and int(q.zeros.min()) >= 1
    if method == "rtn":  # still round-to-nearest on the shifted grid: every error within half a step
        step = np.repeat(q.scales.astype(np.float32), 128, axis=1)
        assert (np.abs(dequantize(q) - weights) <= step * (0.5 + 2.0 ** -14)).all()
    export_gptq({NAME: q}, None, tmp_path / "m.safetensors")
    file = read_safetensors(tmp_path / "m.safetensors")
    decoded = decode_gptq(file[f"{PREFIX}.qweight"], file[f"{PREFIX}.qzeros"], file[f"{PREFIX}.scales"],
                          file[f"{PREFIX}.g_idx"], "gptq")
    _assert_bit_equal(decoded, q)


def test_gptq_refuses_shapes_it_cannot_pack_and_mixed_schemes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidTensor, match="out_features of tensor 'w' is 12"):
        export_gptq({"w": random_quantized(rng, 12, 64, 32, True)}, None, tmp_path / "m")
    with pytest.raises(InvalidSpec, match="one GPTQ checkpoint holds one scheme"):
        export_gptq({"a": random_quantized(rng, 8, 64, 32, True), "b": random_quantized(rng, 8, 64, 64, True)},
                    None, tmp_path / "m")
    with pytest.raises(InvalidSpec, match="fp16"):
        export_gptq({"w": random_quantized(rng, 8, 64, 32, False, zero="fp16")}, None, tmp_path / "m")


# ---------------------------------------------------------------- compressed-tensors

def _ct_decompress(path: Path, config: dict, prefix: str, scale_dtype: torch.dtype | None = None) -> np.ndarray:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    loaded = safetensors.torch.load_file(path)
    group = next(g for g in config["config_groups"].values() if prefix in g["targets"])
    scheme = QuantizationScheme(**group)
    local = {key.removeprefix(prefix + "."): value for key, value in loaded.items() if key.startswith(prefix + ".")}
    if scale_dtype is not None:
        local["weight_scale"] = local["weight_scale"].to(scale_dtype)
    return PackedQuantizationCompressor.decompress(local, scheme)["weight"].numpy()


@pytest.mark.parametrize(("group_size", "symmetric", "shape"), [
    (128, False, (24, 256)), (32, True, (20, 96)), (None, False, (13, 100)), (None, True, (8, 36)),
])
def test_compressed_tensors_decompresses_nibbles_pack_quantized_export_exactly(
        tmp_path: Path, group_size: int | None, symmetric: bool, shape: tuple[int, int]) -> None:
    q = random_quantized(np.random.default_rng(2), *shape, group_size, symmetric)
    path = tmp_path / "ct.safetensors"
    config = export_compressed_tensors({NAME: q}, None, path)
    # fp16 scales as stored: compressed-tensors multiplies in fp16, i.e. rounds the exact product once.
    _assert_bit_equal(_ct_decompress(path, config, PREFIX), q, np.float16)
    # float32 scales (same values): the product is exact, so float32 agrees bit for bit.
    _assert_bit_equal(_ct_decompress(path, config, PREFIX, torch.float32), q, np.float32)


def test_compressed_tensors_decodes_nibbles_own_quantizer_output(tmp_path: Path) -> None:
    q = quantized_gaussian(0, 64, 256, int4(128))
    path = tmp_path / "ct.safetensors"
    config = export_compressed_tensors({NAME: q}, None, path)
    assert config["config_groups"]["group_0"]["weights"]["strategy"] == "group"
    _assert_bit_equal(_ct_decompress(path, config, PREFIX, torch.float32), q)


@pytest.mark.parametrize(("shape", "group_size", "symmetric"), [
    ((1, 128), 32, False), ((8, 256), 64, False), ((7, 96), 32, True), ((13, 100), None, False), ((9, 64), 32, False),
])
def test_compressed_tensors_own_compressor_writes_the_bytes_of_nibbles_export(
        tmp_path: Path, shape: tuple[int, int], group_size: int | None, symmetric: bool) -> None:
    # The library packs nibble's weights, scales and signed zeros (z - 8) itself: it must write the same int32
    # words.  Beyond decompress's reach too: with 8 rows or fewer and more than one group, the zero points are
    # one int32 row, which compressed-tensors 0.20's own decompress cannot unpack (it views a transposed [G, 1]
    # word tensor as bytes: "self.stride(-1) must be 1"), whether nibble or the library wrote the file.
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    q = random_quantized(np.random.default_rng(3), *shape, group_size, symmetric)
    config = export_compressed_tensors({NAME: q}, None, tmp_path / "ct.safetensors")
    exported = safetensors.torch.load_file(tmp_path / "ct.safetensors")
    state = {"weight": torch.from_numpy(dequantize(q)), "weight_scale": torch.from_numpy(q.scales.astype(np.float32))}
    if q.zeros is not None:
        state["weight_zero_point"] = torch.from_numpy(q.zeros.astype(np.int8) - np.int8(8))
    compressed = PackedQuantizationCompressor.compress(state, QuantizationScheme(**config["config_groups"]["group_0"]))
    assert sorted(compressed) == sorted(key.removeprefix(PREFIX + ".") for key in exported)
    for part in ("weight_packed", "weight_shape", *(("weight_zero_point",) if q.zeros is not None else ())):
        assert torch.equal(compressed[part], exported[f"{PREFIX}.{part}"]), part


# ---------------------------------------------------------------- AWQ

@pytest.mark.parametrize(("group_size", "symmetric"), [(128, False), (64, True), (32, False)])
def test_awq_export_decodes_with_autoawq_unpacking_to_nibbles_values(
        tmp_path: Path, group_size: int, symmetric: bool) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
    from compressed_tensors.quantization import QuantizationScheme

    q = random_quantized(np.random.default_rng(4), 32, 256, group_size, symmetric)
    path = tmp_path / "awq.safetensors"
    config = export_awq({NAME: q}, None, path)
    assert config == {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                      "version": "gemm", "modules_to_not_convert": None}
    loaded = safetensors.torch.load_file(path)
    assert tuple(loaded[f"{PREFIX}.qweight"].shape) == (256, 32 // 8)
    converter = AutoAWQConverter.from_autoawq_config(config)
    converted = converter.process(dict(loaded))
    scheme = converter._build_quant_config().config_groups["config_group_0"]
    local = {key.removeprefix(PREFIX + "."): value.to(torch.float32) if key.endswith("weight_scale") else value
             for key, value in converted.items()}
    decoded = PackedQuantizationCompressor.decompress(local, scheme)["weight"].numpy()
    _assert_bit_equal(decoded, q)
    assert isinstance(scheme, QuantizationScheme)


def test_awq_export_names_the_linear_weights_it_passes_through_in_modules_to_not_convert(tmp_path: Path) -> None:
    # a 2-D float weight stored unquantized (here: left out by the include pattern) must not become an AWQ layer
    # in the loaders (transformers' replace_with_awq_linear, vLLM): the config said null
    passthrough = {"model.layers.0.mlp.down_proj.weight": np.ones((8, 64), ml_dtypes.bfloat16),
                   "model.norm.weight": np.ones(64, np.float32), "model.layers.0.ids": np.ones((2, 2), np.int64)}
    config = export_awq({NAME: quantized_gaussian(0, 8, 64, int4(32))}, passthrough, tmp_path / "a.safetensors")
    assert config["modules_to_not_convert"] == ["model.layers.0.mlp.down_proj"]


def test_awq_interleaves_nibbles_in_the_0_2_4_6_1_3_5_7_order(tmp_path: Path) -> None:
    codes = np.tile(np.arange(8, dtype=np.uint8)[:, None], (1, 32))  # output row o holds code o
    q = hand_built(codes, np.ones((8, 1), np.float16), np.zeros((8, 1), np.uint8), int4(32))
    export_awq({NAME: q}, None, tmp_path / "a")
    assert read_safetensors(tmp_path / "a")[f"{PREFIX}.qweight"].view(np.uint32)[0, 0] == 0x75316420


def test_awq_refuses_whole_row_groups_act_order_and_rows_it_cannot_pack(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # qweight packs 8 output rows per int32 (AWQ_ORDER interleave): 12 rows leave half a word
    with pytest.raises(InvalidTensor, match="AWQ packs 8 codes per int32: out_features of tensor 'w' is 12"):
        export_awq({"w": random_quantized(rng, 12, 64, 32, False)}, None, tmp_path / "a")
    with pytest.raises(InvalidSpec, match="needs a group size"):
        export_awq({"w": random_quantized(rng, 8, 64, None, False)}, None, tmp_path / "a")
    q = random_quantized(rng, 8, 64, 32, False)
    from dataclasses import replace
    with pytest.raises(InvalidSpec, match="act-order"):
        export_awq({"w": replace(q, g_idx=np.array([1] * 32 + [0] * 32, np.int32))}, None, tmp_path / "a")


# ---------------------------------------------------------------- all int4 exports

@pytest.mark.parametrize("export", [export_gptq, export_awq, export_compressed_tensors],
                         ids=["gptq", "awq", "compressed-tensors"])
def test_two_quantized_tensors_exported_under_one_name_are_refused_not_overwritten(
        tmp_path: Path, export: object) -> None:
    first, second = quantized_gaussian(0, 8, 128, int4(128)), quantized_gaussian(1, 8, 128, int4(128))
    with pytest.raises(TensorFileError, match=r"'a'.*already uses"):
        export({"a.weight": first, "a": second}, None, tmp_path / "m.safetensors")  # type: ignore[operator]
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------- GGUF

@pytest.mark.parametrize("method", ["rtn-sym", "rtn-sym-absmax7"])
def test_gguf_reads_back_nibbles_q4_0_bit_exactly(tmp_path: Path, method: str) -> None:
    q = quantized_gaussian(0, 48, 256, int4(32, symmetric=True), method)
    bias = np.linspace(-1, 1, 48).astype(np.float32)
    path = tmp_path / "m.gguf"
    export_gguf({"blk.0.ffn_up.weight": q}, {"blk.0.ffn_up.bias": bias}, path)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    tensor = tensors["blk.0.ffn_up.weight"]
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert [int(d) for d in tensor.shape] == [256, 48]  # GGUF lists ne0 (columns) first
    assert tensor.data.nbytes == 48 * 256 // 32 * 18
    decoded = gguf.quants.dequantize(tensor.data, gguf.GGMLQuantizationType.Q4_0).reshape(48, 256)
    _assert_bit_equal(decoded, q)
    np.testing.assert_array_equal(tensors["blk.0.ffn_up.bias"].data, bias)
    described = json.loads(bytes(reader.fields["nibble.tensors"].parts[-1]).decode())
    assert described["blk.0.ffn_up.weight"]["method"] == method
    # the GGUF spec requires general.quantization_version in any file holding quantized tensors
    assert int(reader.fields["general.quantization_version"].parts[-1][0]) == gguf.GGML_QUANT_VERSION


def test_gguf_takes_a_padded_scheme_whose_rows_need_no_padding(tmp_path: Path) -> None:
    q = quantized_gaussian(0, 8, 96, int4(32, symmetric=True, pad=True), "rtn-sym")
    export_gguf({"w": q}, None, tmp_path / "m.gguf")
    tensor = gguf.GGUFReader(tmp_path / "m.gguf").tensors[0]
    _assert_bit_equal(gguf.quants.dequantize(tensor.data, gguf.GGMLQuantizationType.Q4_0).reshape(8, 96), q)


def test_gguf_q4_0_block_layout_puts_code_j_and_j_plus_16_in_one_byte(tmp_path: Path) -> None:
    codes = np.arange(32, dtype=np.uint8)[None, :] % 16
    q = hand_built(codes, np.array([[0.5]], np.float16), None, int4(32, symmetric=True))
    export_gguf({"w": q}, None, tmp_path / "m.gguf")
    block = bytes(gguf.GGUFReader(tmp_path / "m.gguf").tensors[0].data.reshape(-1))
    assert block[:2] == np.float16(0.5).tobytes()
    assert block[2:] == bytes(j | (j << 4) for j in range(16))


@pytest.mark.parametrize("fmt", [int4(32), int4(64, symmetric=True), int4(32, zero="fp16")], ids=lambda f: f.label())
def test_gguf_refuses_schemes_q4_0_cannot_hold(tmp_path: Path, fmt: object) -> None:
    q = quantized_gaussian(0, 4, 64, fmt)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match="group-32 symmetric"):
        export_gguf({"w": q}, None, tmp_path / "m.gguf")
