"""A tensor file's declared size and row positions, read from its first bytes as they arrive."""

from __future__ import annotations

import io
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio import read_npy_header, read_safetensors_header, write_safetensors
from quant_core.tensorio.declared import NPY_TENSOR_NAME, declared_layout, header_end
from quant_core.tensorio.npy import npy_header_from_prefix


def npy_file(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


ARRAYS = [np.zeros((3, 5), dtype=np.float32), np.ones((7,), dtype=np.float16), np.zeros((2, 3, 4), dtype="<i8"),
          np.asfortranarray(np.zeros((4, 6), dtype=np.float32)), np.zeros((0, 9), dtype=np.float64)]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_an_npy_header_declares_the_whole_file_length(array: np.ndarray) -> None:
    content = npy_file(array)
    layout = declared_layout(content, "npy")
    assert layout is not None and layout.file_bytes == len(content)
    offset, row_bytes = layout.rows[NPY_TENSOR_NAME]
    assert offset == len(content) - array.nbytes
    c_order_matrix = array.ndim == 2 and not np.isfortran(array)
    assert row_bytes == (array.shape[1] * array.itemsize if c_order_matrix else None)


def test_an_npy_header_is_unknown_until_its_last_byte_arrives_then_matches_the_file_reader(tmp_path: Path) -> None:
    content = npy_file(np.zeros((10, 4), dtype=np.float32))
    path = tmp_path / "w.npy"
    path.write_bytes(content)
    whole = read_npy_header(path)
    end = len(content) - 160
    assert header_end(content[:12], "npy") == end
    for size in range(end):
        assert npy_header_from_prefix(content[:size]) is None, size
    assert npy_header_from_prefix(content[:end]) == whole
    assert npy_header_from_prefix(content) == whole


def test_a_version_2_npy_header_is_read_from_its_four_byte_length() -> None:
    content = npy_file(np.zeros((2, 2), dtype=np.float32))
    body = content[10:]
    v2 = b"\x93NUMPY\x02\x00" + (len(body) - 16).to_bytes(4, "little") + body
    assert header_end(v2, "npy") == len(v2) - 16
    layout = declared_layout(v2, "npy")
    assert layout is not None and layout.file_bytes == len(v2)


def test_what_is_not_an_npy_header_is_refused_as_soon_as_it_shows() -> None:
    with pytest.raises(TensorFileError, match=r"not a \.npy file"):
        npy_header_from_prefix(b"\x93NUMPX")
    with pytest.raises(TensorFileError, match="must be a dict with keys descr, fortran_order, shape"):
        declared_layout(b"\x93NUMPY\x01\x00\x08\x00{'a': }" + bytes(100), "npy")
    with pytest.raises(LimitExceeded):
        declared_layout(b"\x93NUMPY\x01\x00\xff\xff", "npy", max_header_bytes=1024)
    with pytest.raises(LimitExceeded):
        declared_layout(npy_file(np.zeros((1000, 1000), dtype=np.float32)), "npy", max_elements=10)


def test_a_safetensors_header_declares_the_data_its_entries_cover(tmp_path: Path) -> None:
    tensors = {"b": np.ones((3, 8), dtype=np.float16), "a": np.zeros((5, 4), dtype=np.float32),
               "c": np.zeros((6,), dtype=ml_dtypes.bfloat16)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors)
    content = path.read_bytes()
    header = read_safetensors_header(path)
    assert header_end(content, "safetensors") == header.data_offset
    for size in range(header.data_offset):
        assert declared_layout(content[:size], "safetensors") is None, size
    layout = declared_layout(content[: header.data_offset], "safetensors")
    assert layout is not None and layout.file_bytes == len(content)
    for name, entry in header.entries.items():
        offset, row_bytes = layout.rows[name]
        assert offset == header.data_offset + entry.begin
        assert row_bytes == (tensors[name].shape[1] * tensors[name].itemsize if tensors[name].ndim == 2 else None)


def test_a_safetensors_header_with_a_gap_between_tensors_is_refused_before_the_data_arrives() -> None:
    raw = (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
           b'"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}')
    prefix = len(raw).to_bytes(8, "little") + raw
    with pytest.raises(TensorFileError, match="gap"):
        declared_layout(prefix, "safetensors")
    with pytest.raises(LimitExceeded):
        declared_layout((1 << 40).to_bytes(8, "little") + b"{", "safetensors", max_header_bytes=1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["npy", "safetensors"]), st.binary(max_size=300),
       st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x30\x00\x00\x00\x00\x00\x00\x00{"]))
def test_any_bytes_give_a_layout_none_or_a_typed_error(kind: str, tail: bytes, start: bytes) -> None:
    try:
        layout = declared_layout(start + tail, kind, max_header_bytes=4096)  # type: ignore[arg-type]
    except (TensorFileError, LimitExceeded):
        return
    assert layout is None or layout.file_bytes >= 0
