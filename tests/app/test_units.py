"""Human units on the command line: sizes in decimal or binary bytes, token counts in k = 1024."""

from __future__ import annotations

import pytest

from app.units import parse_bytes, parse_tokens


@pytest.mark.parametrize(("text", "expected"), [
    ("85899345920", 85899345920),
    ("80GB", 80 * 10**9),
    ("80gb", 80 * 10**9),
    ("80 GB", 80 * 10**9),
    ("80GiB", 80 * 2**30),
    ("1.5TiB", 3 * 2**39),
    ("512MiB", 2**29),
    ("141GB", 141 * 10**9),
    ("10B", 10),
])
def test_sizes_in_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096), ("8k", 8192), ("8K", 8192), ("128K", 131072), ("1M", 1048576), ("1.5k", 1536),
])
def test_token_counts_take_k_as_1024(text: str, expected: int) -> None:
    assert parse_tokens(text) == expected


@pytest.mark.parametrize("text", ["", "-80GiB", "80GiBs", "eighty", "80XB", "0.5", "1.1B"])
def test_sizes_that_are_not_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"size in bytes|whole number"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["8 kib", "8GB", "0.3k", "k"])
def test_token_counts_refuse_byte_units_and_fractions(text: str) -> None:
    with pytest.raises(ValueError, match=r"token count|whole number"):
        parse_tokens(text)
