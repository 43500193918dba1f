"""nibble's own safetensors file: exact round trip of quantized and passthrough tensors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from quant_core.errors import TensorFileError
from quant_core.formats import int4
from quant_core.quantize import dequantize, quantize
from quant_core.tensorio import read_nibble_safetensors, read_safetensors, write_nibble_safetensors, write_safetensors
from tests.quant_core.tensorio.helpers import hand_built, quantized_gaussian, random_quantized

SCHEMES = [
    int4(128), int4(32), int4(None), int4(64, symmetric=True), int4(128, zero="fp16"),
    int4(32, pad=True), int4(None, symmetric=True),
]


@pytest.mark.parametrize("fmt", SCHEMES, ids=lambda f: f.label() + ("-pad" if f.pad else ""))
def test_nibble_file_round_trips_dequantized_values_bit_for_bit(tmp_path: Path, fmt: object) -> None:
    in_features = 200 if getattr(fmt, "pad", False) else 256
    q = quantized_gaussian(0, 24, in_features, fmt)  # type: ignore[arg-type]
    passthrough = {"model.norm.weight": np.linspace(0, 1, 256).astype(ml_dtypes.bfloat16),
                   "ids": np.arange(4, dtype=np.int64)}
    path = tmp_path / "q.safetensors"
    write_nibble_safetensors(path, {"layer.weight": q}, passthrough, {"source": "unit test"})
    quantized, kept, metadata = read_nibble_safetensors(path)
    back = quantized["layer.weight"]
    assert back.format == q.format and back.shape == q.shape and back.method == q.method
    assert back.quality == q.quality and back.source_dtype == q.source_dtype
    np.testing.assert_array_equal(dequantize(back).view(np.uint32), dequantize(q).view(np.uint32))
    assert metadata == {"source": "unit test"}
    assert set(kept) == set(passthrough)
    for name, values in passthrough.items():
        assert kept[name].dtype == values.dtype
        np.testing.assert_array_equal(kept[name], values)


@pytest.mark.parametrize("fmt", SCHEMES[:5], ids=lambda f: f.label())
def test_quantized_entries_take_exactly_the_planners_bytes(tmp_path: Path, fmt: object) -> None:
    q = quantized_gaussian(1, 16, 256, fmt)  # type: ignore[arg-type]
    path = tmp_path / "q.safetensors"
    write_nibble_safetensors(path, {"w": q})
    entries = read_safetensors(path).entries
    assert sum(e.end - e.begin for e in entries.values()) == q.format.bytes_for(q.shape)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_a_gptq_layout_tensor_without_act_order_round_trips_with_its_planned_bytes(
        tmp_path: Path, method: str) -> None:
    weights = np.random.default_rng(5).standard_normal((16, 256), dtype=np.float32)
    calibration = np.random.default_rng(6).standard_normal((64, 256), dtype=np.float32) if method == "gptq" else None
    q = quantize(weights, replace(int4(128), layout="gptq"), method, calibration)
    write_nibble_safetensors(tmp_path / "g.safetensors", {"w": q})
    entries = read_safetensors(tmp_path / "g.safetensors").entries
    assert sum(e.end - e.begin for e in entries.values()) == q.format.bytes_for(q.shape)
    back = read_nibble_safetensors(tmp_path / "g.safetensors")[0]["w"]
    np.testing.assert_array_equal(dequantize(back).view(np.uint32), dequantize(q).view(np.uint32))


def test_act_order_g_idx_survives_the_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fmt = int4(32)
    codes = rng.integers(0, 16, (8, 64), dtype=np.uint8)
    g_idx = rng.permutation(np.arange(64, dtype=np.int32) // 32).astype(np.int32)
    q = hand_built(codes, rng.random((8, 2)).astype(np.float16), rng.integers(0, 16, (8, 2), dtype=np.uint8),
                   fmt, g_idx=g_idx)
    write_nibble_safetensors(tmp_path / "g.safetensors", {"w": q})
    back = read_nibble_safetensors(tmp_path / "g.safetensors")[0]["w"]
    assert back.g_idx is not None
    np.testing.assert_array_equal(back.g_idx, g_idx)
    np.testing.assert_array_equal(dequantize(back), dequantize(q))


def test_infinite_sqnr_and_unmeasured_figures_are_stored_as_strict_json(tmp_path: Path) -> None:
    from dataclasses import replace

    from quant_core.quantize.types import QualityReport
    q = random_quantized(np.random.default_rng(0), 4, 32, 32, False)
    exact = replace(q, quality=QualityReport(0.0, float("inf"), 0.0, 1.0))
    unmeasured = replace(q, quality=QualityReport(*(float("nan"),) * 4))
    path = tmp_path / "x.safetensors"
    write_nibble_safetensors(path, {"a": exact, "b": unmeasured})
    json.loads(read_safetensors(path).metadata["nibble.tensors"], parse_constant=lambda c: pytest.fail(c))
    back = read_nibble_safetensors(path)[0]
    assert back["a"].quality.sqnr_db == float("inf")
    assert np.isnan(back["b"].quality.relative_error)


def test_reserved_metadata_and_colliding_names_are_refused(tmp_path: Path) -> None:
    q = random_quantized(np.random.default_rng(0), 4, 32, 32, False)
    with pytest.raises(TensorFileError, match="reserved prefix"):
        write_nibble_safetensors(tmp_path / "a", {"w": q}, {}, {"nibble.tensors": "x"})
    with pytest.raises(TensorFileError, match="collides"):
        write_nibble_safetensors(tmp_path / "a", {"w": q}, {"w.scales": np.zeros(2, np.float16)})


def test_plain_safetensors_is_not_a_nibble_file(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "p", {"a": np.zeros(2, np.float32)})
    with pytest.raises(TensorFileError, match="not a nibble quantized file"):
        read_nibble_safetensors(tmp_path / "p")


def test_tampered_component_shapes_are_refused(tmp_path: Path) -> None:
    q = random_quantized(np.random.default_rng(0), 4, 64, 32, False)
    write_nibble_safetensors(tmp_path / "ok", {"w": q})
    file = read_safetensors(tmp_path / "ok")
    tensors = {name: np.array(file[name]) for name in file}
    tensors["w.qweight"] = tensors["w.qweight"][:-1]
    write_safetensors(tmp_path / "bad", tensors, file.metadata)
    with pytest.raises(TensorFileError, match="payload of"):
        read_nibble_safetensors(tmp_path / "bad")
    tensors = {name: np.array(file[name]) for name in file}
    tensors["w.scales"] = tensors["w.scales"].astype(np.float32)
    write_safetensors(tmp_path / "bad2", tensors, file.metadata)
    with pytest.raises(TensorFileError, match="is F32, expected F16"):
        read_nibble_safetensors(tmp_path / "bad2")
