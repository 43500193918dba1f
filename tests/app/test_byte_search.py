"""`app.byte_search.find` answers exactly as ``bytes.find`` does, through ``memmem`` where the C library has it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import byte_search

DELIMITER = b"\r\n--------------------------d74496d66958873e"  # curl's boundary, as the delimiter before a part


def _float_bytes(count: int, seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(count).astype(np.float32).tobytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's memmem")
def test_the_c_librarys_memmem_is_used_on_linux() -> None:
    assert byte_search._memmem is not None


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("position", [0, 1, 4095, 4096, 100_000, (1 << 20) - len(DELIMITER)])
def test_a_delimiter_planted_in_a_mib_of_floats_is_found_where_bytes_find_finds_it(
        kind: type, position: int) -> None:
    data = bytearray(_float_bytes(1 << 18, position))
    data[position: position + len(DELIMITER)] = DELIMITER
    haystack = kind(data)
    assert byte_search.find(haystack, DELIMITER) == haystack.find(DELIMITER) == position


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_delimiter_cut_by_the_search_bounds_is_not_found(kind: type) -> None:
    data = bytearray(_float_bytes(1 << 16, 7))
    data[50_000: 50_000 + len(DELIMITER)] = DELIMITER
    haystack = kind(data)
    assert byte_search.find(haystack, DELIMITER, 0, 50_000 + len(DELIMITER) - 1) == -1
    assert byte_search.find(haystack, DELIMITER, 50_001) == -1
    assert byte_search.find(haystack, DELIMITER, 50_000, 50_000 + len(DELIMITER)) == 50_000
    assert byte_search.find(haystack, DELIMITER, 10, -10) == 50_000


def test_the_first_of_two_delimiters_is_the_one_found() -> None:
    data = bytearray(_float_bytes(1 << 16, 3))
    data[9_000: 9_000 + len(DELIMITER)] = DELIMITER
    data[200_000: 200_000 + len(DELIMITER)] = DELIMITER
    assert byte_search.find(data, DELIMITER) == 9_000
    assert byte_search.find(data, DELIMITER, 9_001) == 200_000


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=12_000), needle=st.binary(min_size=1, max_size=6),
       start=st.integers(-13_000, 13_000), end=st.none() | st.integers(-13_000, 13_000),
       plant=st.integers(0, 12_000))
def test_find_answers_as_bytes_find_for_any_bounds(data: bytes, needle: bytes, start: int, end: int | None,
                                                   plant: int) -> None:
    haystack = bytearray(data)
    haystack[plant: plant + len(needle)] = needle  # often a match, near the bounds or not
    for candidate in (bytes(haystack), haystack):
        assert byte_search.find(candidate, needle, start, end) == candidate.find(needle, start, end)


def test_without_memmem_find_is_bytes_find(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(_float_bytes(1 << 14, 11))
    data[30_000: 30_000 + len(DELIMITER)] = DELIMITER
    monkeypatch.setattr(byte_search, "_memmem", None)
    assert byte_search.find(data, DELIMITER) == 30_000
    assert byte_search.find(data, DELIMITER, 30_001) == -1
