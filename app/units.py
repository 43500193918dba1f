"""Human units for the command line: byte sizes ("80GB", "80GiB") and token counts ("8k", "128K").

Byte suffixes follow IEC 80000-13: decimal ``kB/KB, MB, GB, TB`` are powers of
1000, binary ``KiB, MiB, GiB, TiB`` powers of 1024; a bare number is bytes.
Token counts take ``k``/``K`` and ``m``/``M`` as powers of 1024, as model cards
speak of context: Llama 3.1's "128K" context is ``max_position_embeddings`` =
131,072 tokens, Llama 3's "8K" is 8,192.  The page (``app/static/app.js``)
reads the same spellings with the same meaning.
"""

from __future__ import annotations

import re

BYTE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
TOKEN_UNITS: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def _parse(text: str, units: dict[str, int], what: str, examples: str) -> int:
    match = _NUMBER.match(text)
    if match is None or match.group(2).lower() not in units:
        raise ValueError(f"{text!r} is not {what} (examples: {examples})")
    number, unit = match.groups()
    value = float(number) * units[unit.lower()]
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of {'bytes' if what.startswith('a size') else 'tokens'}")
    return int(value)


def parse_bytes(text: str) -> int:
    """Bytes for a size: ``"80GB"`` = 80 × 10^9, ``"80GiB"`` = 80 × 2^30, ``"85899345920"`` as written."""
    return _parse(text, BYTE_UNITS, "a size in bytes", "80GB, 80GiB, 1.5TiB, 85899345920")


def parse_tokens(text: str) -> int:
    """Tokens for a count: ``"8k"`` = 8,192, ``"128K"`` = 131,072, ``"1M"`` = 1,048,576, ``"4096"`` as written."""
    return _parse(text, TOKEN_UNITS, "a token count", "4096, 8k, 128K, 1M")
