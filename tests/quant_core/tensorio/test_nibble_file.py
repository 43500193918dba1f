"""nibble's own safetensors file: exact round trip of quantized and passthrough tensors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from quant_core.errors import LimitExceeded, TensorFileError
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


def _tampered(tmp_path: Path, change: Callable[[dict[str, Any]], None], group_size: int | None = 32) -> Path:
    """A valid nibble file of one 4 x 64 tensor ``w`` (groups of `group_size`) whose description `change` edits
    in place."""
    q = random_quantized(np.random.default_rng(0), 4, 64, group_size, False)
    write_nibble_safetensors(tmp_path / "ok", {"w": q})
    file = read_safetensors(tmp_path / "ok")
    descriptions = json.loads(file.metadata["nibble.tensors"])
    change(descriptions["w"])
    path = tmp_path / "tampered"
    write_safetensors(path, {name: np.array(file[name]) for name in file},
                      {**file.metadata, "nibble.tensors": json.dumps(descriptions)})
    return path


# issue 17 #9 and #14: each was read (a 500 or a silent 200); each must name its field
@pytest.mark.parametrize(("field", "value", "message"), [
    ("group_size", 32.0, "format.group_size of quantized tensor 'w': group_size=32.0: must be an integer or null"),
    ("group_size", True, "format.group_size of quantized tensor 'w': group_size=True: must be an integer or null"),
    ("layout", "bogus", "format.layout of quantized tensor 'w': layout='bogus': "
                        "must be one of ['nibble', 'gptq', 'awq', 'compressed-tensors']"),
    ("pad", "no", "format.pad of quantized tensor 'w': pad='no': must be true or false"),
    ("symmetric", 0, "format.symmetric of quantized tensor 'w': symmetric=0: must be true or false"),
    ("zero", "int8", "format.zero of quantized tensor 'w': zero='int8': must be one of ['none', 'int4', 'fp16']"),
    ("name", ["int4"], "format.name of quantized tensor 'w': unknown weight format \"['int4']\""),
], ids=lambda value: repr(value)[:24])
def test_a_format_field_of_the_wrong_type_or_outside_its_set_is_refused_naming_it(
        tmp_path: Path, field: str, value: object, message: str) -> None:
    path = _tampered(tmp_path, lambda description: description["format"].__setitem__(field, value))
    with pytest.raises(TensorFileError) as raised:
        read_nibble_safetensors(path)
    assert str(raised.value).startswith(message)


def test_a_partial_last_group_which_nibble_never_writes_is_refused_naming_it(tmp_path: Path) -> None:
    # whole-row groups redescribed as groups of 128 with a partial last one: every stored tensor has the size
    # the description implies (one group per row), so the file was read, then dequantize split 64 codes into
    # groups of 128: a ValueError, a 500 on POST /v1/dequantize.  nibble writes whole groups (pad=True pads them).
    def partial_group(description: dict[str, Any]) -> None:
        description["format"].update(group_size=128, partial=True)

    path = _tampered(tmp_path, partial_group, group_size=None)
    with pytest.raises(TensorFileError) as raised:
        read_nibble_safetensors(path)
    assert str(raised.value).startswith("format.partial of quantized tensor 'w': ")
    assert raised.value.field == "file"


@pytest.mark.parametrize(("value", "message"), [
    (10 ** 400, "quality.relative_error of quantized tensor 'w' is an integer too large for a float (1329 bits)"),
    (True, "quality.relative_error of quantized tensor 'w' is a bool, not a number"),
    ("0.5", "quality.relative_error of quantized tensor 'w' is a str, not a number"),
], ids=["400-digit integer", "bool", "string"])
def test_a_quality_figure_that_is_not_a_float_is_refused_naming_it(tmp_path: Path, value: object,
                                                                  message: str) -> None:
    path = _tampered(tmp_path, lambda description: description["quality"].__setitem__("relative_error", value))
    with pytest.raises(TensorFileError) as raised:
        read_nibble_safetensors(path)
    assert str(raised.value).startswith(message)


def test_a_declared_shape_over_the_element_limit_is_refused_before_its_payload_is_read(tmp_path: Path) -> None:
    # the probe's file: 256 MiB of codes declaring 16384 x 32768 = 536,870,912 elements, 2 GiB as float32;
    # here the codes are 128 bytes: the declared shape alone is refused, before any payload is compared with it
    path = _tampered(tmp_path, lambda description: description.__setitem__("shape", [16384, 32768]))
    with pytest.raises(LimitExceeded) as raised:
        read_nibble_safetensors(path, max_elements=256 * 2 ** 20)
    assert (raised.value.value, raised.value.maximum, raised.value.field) == (536_870_912, 268_435_456, "file")
    # under the limit, the same file is refused for its stored tensors, which do not fit the shape
    with pytest.raises(TensorFileError, match=r"w.scales has shape \[4, 2\], expected \[16384, 1024\]"):
        read_nibble_safetensors(path, max_elements=1 << 30)
