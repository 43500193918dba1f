"""File fuzzing (issue 6): mutated .npy and .safetensors files are read correctly or refused with a typed error.

Hypothesis (derandomized, no example database, so CI is reproducible) builds 10,000 files in
all: byte-level mutations of valid files (flipped bytes, truncation, inserted bytes, a rewritten
length field) and structurally hostile headers (huge, negative, boolean and overflowing shapes
and offsets, overlapping and gapped offsets, unknown dtypes, bad JSON / Python literals, wrong
versions).  For each, the reader either returns arrays whose every byte can be read, or raises
`TensorFileError` / `LimitExceeded`; any other exception fails the test.  Small limits
(`max_elements`, `max_header_bytes`) keep memory bounded whatever a header claims.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio import read_npy, read_safetensors, sniff_format, write_safetensors
from quant_core.tensorio.safetensors_io import write_safetensors_to

pytestmark = pytest.mark.slow

# Each example is a batch of FILES_PER_EXAMPLE files (Hypothesis' per-example bookkeeping costs more
# than reading a small file), 10,000 files in all.
FILES_PER_EXAMPLE = 5
MUTATED_SAFETENSORS, HOSTILE_SAFETENSORS, MUTATED_NPY, HOSTILE_NPY = 600, 500, 500, 400
MAX_ELEMENTS = 4_096
MAX_HEADER_BYTES = 8_192


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


def _valid_safetensors(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "b": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
        "i": np.arange(3, dtype=np.int64),
        "u": np.array([1, 2], dtype=np.uint8),
    }
    keep = {name: array for k, (name, array) in enumerate(tensors.items()) if (seed >> k) & 1 or k == 0}
    buffer = io.BytesIO()
    write_safetensors_to(buffer, keep, {"k": "v"} if seed % 2 else None)
    return buffer.getvalue()


def _valid_npy(seed: int) -> bytes:
    dtypes = ["<f4", ">f4", "<f2", "<i8", "|u1", "|b1", "<f8", ">i2"]
    values = (np.arange(12).reshape(3, 4) % 7).astype(dtypes[seed % len(dtypes)])
    if seed % 3 == 0:
        values = np.asfortranarray(values)
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


SAFETENSORS_SEEDS = [_valid_safetensors(seed) for seed in range(8)]
NPY_SEEDS = [_valid_npy(seed) for seed in range(8)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid file with 1-4 byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "length", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 16))]
        elif kind == "length" and len(data) >= 8:
            data[0:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, 4096), st.integers(0, 2**64 - 1))))
    return bytes(data)


HOSTILE_INTS = st.one_of(st.integers(-5, 64), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64 - 1, 2**64,
                                                              -2**63, 10**30]))
NAMES = st.text(alphabet="ab_.\u00e9\"\\", max_size=4)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from([0.5, -1.0, 1e300]), NAMES, HOSTILE_INTS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NAMES, inner, max_size=2)),
    max_leaves=4,
)


@st.composite
def hostile_safetensors(draw: st.DrawFn) -> bytes:
    """A structurally generated header (plausible or hostile entries) followed by a data area."""
    header: dict[str, Any] = {}
    position = 0
    for index in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "f32", ""]))
        shape = draw(st.lists(HOSTILE_INTS, max_size=4))
        if draw(st.booleans()):
            size = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}.get(dtype, 1)
            count = int(np.prod([max(d, 0) for d in shape], dtype=object)) if shape else 1
            offsets: Any = [position, position + count * size]
        else:
            offsets = draw(st.one_of(st.lists(HOSTILE_INTS, min_size=0, max_size=3), JSON_VALUE))
        entry: Any = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            entry = draw(JSON_VALUE)
        header[draw(NAMES) or f"t{index}"] = entry
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
            position = max(position, offsets[1]) if offsets[1] < 10**6 else position
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.dictionaries(NAMES, NAMES, max_size=2), JSON_VALUE))
    raw = json.dumps(header).encode()
    if draw(st.integers(0, 7)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    data_size = draw(st.one_of(st.just(min(position, 1 << 16)), st.integers(0, 256)))
    return struct.pack("<Q", len(raw)) + raw + bytes(data_size)


@st.composite
def hostile_npy(draw: st.DrawFn) -> bytes:
    """An .npy header built from hostile pieces, with a data area of plausible or random size."""
    descr = draw(st.sampled_from(["'<f4'", "'>f4'", "'|u1'", "'<f2'", "'|O'", "'<V2'", "'<U3'", "'<c8'",
                                  "[('a', '<f4')]", "'<f4,<i4'", "'garbage'", "3", "'<M8[ns]'", "'<f16'"]))
    shape = draw(st.lists(HOSTILE_INTS, max_size=4))
    dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    shape_text = draw(st.sampled_from(["({})", "[{}]", "{}"])).format(dims)
    fortran = draw(st.sampled_from(["False", "True", "0", "'no'"]))
    keys = [f"'descr': {descr}", f"'fortran_order': {fortran}", f"'shape': {shape_text}"]
    if draw(st.integers(0, 9)) == 0:
        keys.pop(draw(st.integers(0, 2)))
    if draw(st.integers(0, 9)) == 0:
        keys.append("'extra': 1")
    text = "{" + ", ".join(keys) + "}"
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["(" * 200 + ")" * 200, "__import__('os')", "{'a': 1e999}", "9" * 5000,
                                     text[:-1], "{" * 100]))
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (1, 1), (4, 0), (0, 0)]))
    encoded = text.encode("utf-8") + b"\n"
    length = struct.pack("<H" if version[0] == 1 else "<I", min(len(encoded), 0xFFFF))
    data_size = draw(st.integers(0, 512))
    return b"\x93NUMPY" + bytes(version) + length + encoded + bytes(data_size)


def _consume(array: np.ndarray) -> None:
    """Touch every byte of a returned array (a lie in the header would fault or mis-size here)."""
    assert array.size <= MAX_ELEMENTS
    assert np.ascontiguousarray(array).view(np.uint8).size == array.nbytes


def _check_safetensors(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        file = read_safetensors(path, max_tensors=16, max_elements=MAX_ELEMENTS, max_header_bytes=MAX_HEADER_BYTES)
    except (TensorFileError, LimitExceeded):
        return
    total = 0
    for name in file:
        array = file[name]
        _consume(array)
        total += array.nbytes
    assert 8 + total <= len(content)
    if total:
        assert sniff_format(content) == "safetensors"


def _check_npy(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        array = read_npy(path, max_elements=MAX_ELEMENTS)
    except (TensorFileError, LimitExceeded):
        return
    _consume(array)
    assert array.dtype.isnative and array.dtype.kind in "biuf"
    assert sniff_format(content) == "npy"


@fuzz(MUTATED_SAFETENSORS)
@given(contents=st.lists(mutated(SAFETENSORS_SEEDS), min_size=FILES_PER_EXAMPLE, max_size=FILES_PER_EXAMPLE))
def test_mutated_safetensors_files_are_read_or_refused_with_typed_errors(fuzz_dir: Path,
                                                                       contents: list[bytes]) -> None:
    for content in contents:
        _check_safetensors(fuzz_dir / "mutated.safetensors", content)


@fuzz(HOSTILE_SAFETENSORS)
@given(contents=st.lists(hostile_safetensors(), min_size=FILES_PER_EXAMPLE, max_size=FILES_PER_EXAMPLE))
def test_hostile_safetensors_headers_are_read_or_refused_with_typed_errors(fuzz_dir: Path,
                                                                       contents: list[bytes]) -> None:
    for content in contents:
        _check_safetensors(fuzz_dir / "hostile.safetensors", content)


@fuzz(MUTATED_NPY)
@given(contents=st.lists(mutated(NPY_SEEDS), min_size=FILES_PER_EXAMPLE, max_size=FILES_PER_EXAMPLE))
def test_mutated_npy_files_are_read_or_refused_with_typed_errors(fuzz_dir: Path,
                                                                       contents: list[bytes]) -> None:
    for content in contents:
        _check_npy(fuzz_dir / "mutated.npy", content)


@fuzz(HOSTILE_NPY)
@given(contents=st.lists(hostile_npy(), min_size=FILES_PER_EXAMPLE, max_size=FILES_PER_EXAMPLE))
def test_hostile_npy_headers_are_read_or_refused_with_typed_errors(fuzz_dir: Path,
                                                                       contents: list[bytes]) -> None:
    for content in contents:
        _check_npy(fuzz_dir / "hostile.npy", content)


def test_fuzzing_seeds_are_valid_files(tmp_path: Path) -> None:
    """The unmutated seeds must read: otherwise the fuzzing would only exercise refusals."""
    for index, content in enumerate(SAFETENSORS_SEEDS):
        path = tmp_path / f"{index}.safetensors"
        path.write_bytes(content)
        assert len(read_safetensors(path)) >= 1
    for index, content in enumerate(NPY_SEEDS):
        path = tmp_path / f"{index}.npy"
        path.write_bytes(content)
        assert read_npy(path).shape == (3, 4)
    write_safetensors(tmp_path / "x", {"a": np.zeros(1, np.float32)})
