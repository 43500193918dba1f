"""The `.npy` header parser (issue 17, items 2 and 3): exactly numpy's dict, in linear time and bounded memory."""

from __future__ import annotations

import ast
import io
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio import read_npy
from quant_core.tensorio.limits import DEFAULT_MAX_NPY_HEADER_BYTES
from quant_core.tensorio.npy import parse_header_dict, read_npy_header

DTYPES = ["<f4", ">f4", "<f2", "<f8", "|b1", "|i1", "<i8", ">u2"]


def _header_text(array: np.ndarray) -> str:
    """The header dict np.save writes for `array` (whatever the format version)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    length_format = "<H" if data[6] == 1 else "<I"
    start = 8 + struct.calcsize(length_format)
    (length,) = struct.unpack(length_format, data[8:start])
    return data[start:start + length].decode("latin-1")


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 3), max_size=5), dtype=st.sampled_from(DTYPES), fortran=st.booleans())
def test_every_header_np_save_writes_parses_as_literal_eval_reads_it(shape: list[int], dtype: str,
                                                                     fortran: bool) -> None:
    array = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    text = _header_text(array)
    expected = ast.literal_eval(text)
    assert parse_header_dict(text) == (expected["descr"], expected["fortran_order"], expected["shape"])


HEADER_PIECES = ["{", "}", "(", ")", ",", ":", " ", "'descr'", "'fortran_order'", "'shape'", "'<f4'", "True",
                 "False", "0", "3", "12", "[", "]", "None", "1.5", "-1", "'x'", '"shape"', "\n", "#"]


@settings(max_examples=2000, deadline=None)
@given(pieces=st.lists(st.sampled_from(HEADER_PIECES), max_size=24))
def test_whatever_the_parser_accepts_literal_eval_reads_the_same(pieces: list[str]) -> None:
    # the parser is never more permissive than the Python literal it stands for
    text = "".join(pieces)
    try:
        parsed = parse_header_dict(text)
    except TensorFileError:
        return
    literal = ast.literal_eval(text)
    assert parsed == (literal["descr"], literal["fortran_order"], literal["shape"])


@pytest.mark.parametrize("text", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }",  # (3) is an int, not a tuple
    "{'descr': '<f4', 'fortran_order': False, 'shape': [3, 4], }",
    "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'extra': 1}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (03,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 65 + "), }",  # NumPy holds 64 dimensions
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 65 + ",), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), } x",
    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '" + "f" * 65 + "', 'fortran_order': False, 'shape': (3,), }",
])
def test_anything_but_numpys_dict_is_refused(text: str) -> None:
    with pytest.raises(TensorFileError):
        parse_header_dict(text)


def _v2_npy(header: str, data: bytes = b"") -> bytes:
    encoded = header.encode("latin-1")
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(encoded)) + encoded + data


def test_issue_17_nested_tuple_header_is_refused_in_linear_time_and_bounded_memory(tmp_path: Path) -> None:
    # issue 17, item 2: "(1,2)," × 174,000 (1 MiB) took ast.literal_eval 1.3-1.9 s and ~380 MB.  Here a header at
    # the 64 KiB limit of the same shape is refused at its first nested "(", and a 1 MiB one by its length field.
    at_the_limit = "{'descr':'<f4','fortran_order':False,'shape':(" + "(1,2)," * 10_900 + ")}"
    assert len(at_the_limit) <= DEFAULT_MAX_NPY_HEADER_BYTES
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(TensorFileError, match=r"shape holds '\('"):
        (tmp_path / "limit.npy").write_bytes(_v2_npy(at_the_limit))
        read_npy_header(tmp_path / "limit.npy")
    seconds = time.perf_counter() - started
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"64 KiB hostile header: refused in {seconds * 1000:.2f} ms, peak {peak_bytes} bytes traced")
    assert seconds < 0.5
    assert peak_bytes < 1 << 20
    huge = "{'descr':'<f4','fortran_order':False,'shape':(" + "(1,2)," * 174_000 + ")}"
    with pytest.raises(LimitExceeded) as refused:
        (tmp_path / "huge.npy").write_bytes(_v2_npy(huge))
        read_npy_header(tmp_path / "huge.npy")  # the reader's 64 KiB, not the 16 MiB safetensors limit
    assert refused.value.maximum == DEFAULT_MAX_NPY_HEADER_BYTES


@pytest.mark.parametrize("header", [
    "{'descr':'<f4','fortran_order':False,'shape':(" + "1," * 32_000,  # a long run of dimensions, unclosed
    "{" + " " * 65_000,  # white space to the end of the limit
    "{'descr':'" + "<" * 65_000,  # an unterminated string
    "{'descr':'<f4','fortran_order':False,'shape':(" + "9" * 65_000,  # a huge integer
])
def test_long_hostile_headers_within_the_limit_cost_milliseconds(tmp_path: Path, header: str) -> None:
    path = tmp_path / "hostile.npy"
    path.write_bytes(_v2_npy(header, b"\0" * 8))
    started = time.perf_counter()
    with pytest.raises(TensorFileError):
        read_npy(path)
    assert time.perf_counter() - started < 0.5
