"""The .npy and .safetensors readers: correct values, laziness, and typed refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio import (
    read_npy,
    read_safetensors,
    read_safetensors_header,
    sniff_format,
    write_safetensors,
)
from tests.quant_core.tensorio.helpers import safetensors_bytes

# ---------------------------------------------------------------- .npy


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<f8", ">f4", ">f2", "<i4", ">i8", "|u1", "|i1", "|b1", "<u2"])
@pytest.mark.parametrize("fortran", [False, True])
def test_read_npy_returns_the_values_np_save_wrote_in_native_order(tmp_path: Path, dtype: str,
                                                                   fortran: bool) -> None:
    values = (np.arange(24).reshape(4, 6) % 5).astype(dtype)
    if fortran:
        values = np.asfortranarray(values)
    path = tmp_path / "a.npy"
    np.save(path, values)
    read = read_npy(path)
    assert read.dtype == np.dtype(dtype).newbyteorder("=")
    assert read.dtype.isnative
    np.testing.assert_array_equal(read, values)
    assert not read.flags.writeable


def test_read_npy_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.ones((64, 64), dtype=np.float32))
    assert isinstance(read_npy(path), np.memmap)


def test_read_npy_empty_and_scalar_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((0, 5), dtype=np.float32))
    np.save(tmp_path / "s.npy", np.float32(3.5))
    assert read_npy(tmp_path / "e.npy").shape == (0, 5)
    assert float(read_npy(tmp_path / "s.npy")) == 3.5


@pytest.mark.parametrize("values", [
    np.array([{"a": 1}, None], dtype=object),
    np.zeros(3, dtype=[("x", "<f4"), ("y", "<i4")]),
    np.array(["abc"]),
    np.zeros(2, dtype=np.complex64),
    np.zeros(2, dtype=ml_dtypes.bfloat16),
])
def test_read_npy_refuses_object_structured_string_complex_and_void(tmp_path: Path, values: np.ndarray) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, values, allow_pickle=True)
    with pytest.raises(TensorFileError, match=r"dtype|descr"):
        read_npy(path)


def test_read_npy_refuses_truncated_data_and_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.ones((8, 8), dtype=np.float32))
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    with pytest.raises(TensorFileError, match=r"255 data bytes.*needs 256"):
        read_npy(path)
    path.write_bytes(whole + b"\0")
    with pytest.raises(TensorFileError, match="257 data bytes"):
        read_npy(path)


def test_read_npy_refuses_huge_shape_before_reading_data(tmp_path: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"
    header = header.ljust(118) + "\n"
    path = tmp_path / "huge.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    with pytest.raises(LimitExceeded) as caught:
        read_npy(path, max_elements=1000)
    assert caught.value.maximum == 1000


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }",
    "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
    "{'descr': '<f4', 'shape': (2,), }",
    "[1, 2, 3]",
    "__import__('os').system('true')",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }",
])
def test_read_npy_refuses_malformed_headers(tmp_path: Path, header: str) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 8)
    with pytest.raises(TensorFileError):
        read_npy(path)


def test_read_npy_refuses_header_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30))
    with pytest.raises(LimitExceeded, match="npy header bytes is 1073741824"):
        read_npy(path)


# ---------------------------------------------------------------- .safetensors


def _mixed_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w32": rng.standard_normal((3, 5)).astype(np.float32),
        "w16": rng.standard_normal((4,)).astype(np.float16),
        "wbf": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([1, 0, 255], dtype=np.uint8),
        "count": np.array(7, dtype=np.int32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_safetensors_round_trip_every_dtype_lazily(tmp_path: Path) -> None:
    tensors = _mixed_tensors()
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors, {"who": "test"})
    file = read_safetensors(path)
    assert file.metadata == {"who": "test"}
    assert sorted(file) == sorted(tensors)
    for name, values in tensors.items():
        assert file[name].dtype == values.dtype, name
        np.testing.assert_array_equal(file[name], values)
    assert file["wbf"].dtype == np.dtype(ml_dtypes.bfloat16)


def test_nibble_written_safetensors_loads_in_the_safetensors_package(tmp_path: Path) -> None:
    tensors = _mixed_tensors()
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors)
    loaded = safetensors.torch.load_file(path)
    for name, values in tensors.items():
        got = loaded[name]
        if values.dtype == np.dtype(ml_dtypes.bfloat16):
            np.testing.assert_array_equal(got.view(torch.int16).numpy(), values.view(np.int16))
        else:
            np.testing.assert_array_equal(got.numpy(), values)


def test_files_written_by_the_safetensors_package_read_identically(tmp_path: Path) -> None:
    tensors = {k: v for k, v in _mixed_tensors().items() if k != "wbf"}
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "np"})
    file = read_safetensors(path)
    assert file.metadata == {"format": "np"}
    for name, values in tensors.items():
        np.testing.assert_array_equal(file[name], values)
    torch_path = tmp_path / "bf.safetensors"
    bf = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 3
    safetensors.torch.save_file({"x": bf}, str(torch_path))
    np.testing.assert_array_equal(read_safetensors(torch_path)["x"].view(np.int16), bf.view(torch.int16).numpy())


def _write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "t.safetensors"
    path.write_bytes(content)
    return path


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes"),
    ({"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlaps"),
    ({"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20), "gap"),
    ({"a": F32_2}, bytes(12), "cover 8 bytes but the data area holds 12"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "cover 16"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "dtype 'Q4'"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "shape"),
    ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8), "shape"),
    ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8), "shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, bytes(8), "keys"),
    ({"a": [1, 2]}, b"", "not an object"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ([1, 2], b"", "not an object"),
])
def test_read_safetensors_refuses_inconsistent_headers(tmp_path: Path, header: object, data: bytes,
                                                       message: str) -> None:
    path = _write(tmp_path, safetensors_bytes(json.dumps(header).encode(), data))
    with pytest.raises(TensorFileError, match=message):
        read_safetensors(path)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"a": ', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a": 1, "a": 2}', "safetensors header gives the key 'a' twice"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}', "not valid JSON"),
])
def test_read_safetensors_refuses_bad_json(tmp_path: Path, raw: bytes, message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        read_safetensors(_write(tmp_path, safetensors_bytes(raw)))


def test_read_safetensors_refuses_header_length_past_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(TensorFileError, match="header length 1000 runs past the end of a 10-byte file"):
        read_safetensors(path)
    with pytest.raises(TensorFileError, match="shorter than its 8-byte"):
        read_safetensors(_write(tmp_path, b"\x01\x02"))


def test_read_safetensors_limits_are_typed_and_name_the_values(tmp_path: Path) -> None:
    huge = {"a": {"dtype": "F32", "shape": [2**62, 2**62, 2**62], "data_offsets": [0, 0]}}
    with pytest.raises(LimitExceeded) as caught:
        read_safetensors(_write(tmp_path, safetensors_bytes(huge)), max_elements=10**6)
    assert caught.value.value == 2**186 and caught.value.maximum == 10**6
    many = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(5)}
    with pytest.raises(LimitExceeded, match="tensors in file is 5, over the limit of 4"):
        read_safetensors(_write(tmp_path, safetensors_bytes(many, bytes(5))), max_tensors=4)
    with pytest.raises(LimitExceeded, match="safetensors header bytes is 1099511627776"):
        read_safetensors(_write(tmp_path, struct.pack("<Q", 1 << 40) + b"{}"))


def test_empty_tensors_read_but_their_other_dimensions_still_count_against_the_limit(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [0, 10], "data_offsets": [0, 0]}}
    assert read_safetensors(_write(tmp_path, safetensors_bytes(header)), max_elements=10)["a"].shape == (0, 10)
    header = {"a": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}
    with pytest.raises(LimitExceeded):
        read_safetensors(_write(tmp_path, safetensors_bytes(header)), max_elements=10)


def test_header_only_read_touches_no_data(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": np.zeros((3, 4), dtype=np.float16)})
    header = read_safetensors_header(path)
    assert header.entries["a"].shape == (3, 4) and header.entries["a"].dtype == "F16"


# ---------------------------------------------------------------- sniffing


def test_sniff_format_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros(2))
    write_safetensors(tmp_path / "y.bin", {"a": np.zeros(2, dtype=np.float32)})
    assert sniff_format(tmp_path / "x.npy") == "npy"
    assert sniff_format(tmp_path / "y.bin") == "safetensors"
    assert sniff_format(b"PK\x03\x04 zip file") is None
    assert sniff_format(struct.pack("<Q", 2) + b"[") is None
    assert sniff_format(b"") is None
