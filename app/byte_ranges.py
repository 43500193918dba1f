"""HTTP Range on a file download (RFC 9110 §14): refusals as problem+json, an unknown unit ignored.

Starlette's `FileResponse` serves byte ranges, but answers a Range it
refuses in plain text (400 ``Malformed range header``, an empty 416), answers
400 to a unit it does not know, where RFC 9110 §14.2 has the server ignore
the header and send the whole file, and 416 as soon as one of several ranges
starts past the end, where §15.5.17 keeps 416 for a set none of whose ranges
is satisfiable.  `checked_range` reads the header first: it raises the
problem (400 `MalformedRange` naming ``Range``, 416 `RangeNotSatisfiable`
with ``Content-Range: bytes */<size>``), or returns the header the file
response is then given: the satisfiable ranges alone, as plain
``first-last``, ``first-`` or ``-suffix`` numbers the file's size bounds, or
None to send the whole file.
"""

from __future__ import annotations

import re

from app.problems import ApiProblem

#: one byte-range-spec (RFC 9110 §14.1.1): ``first-last``, ``first-`` or ``-suffix``, ASCII digits
_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


class MalformedRange(ApiProblem):
    """A Range header in the ``bytes`` unit that is not a list of byte ranges, or a range whose last byte comes
    before its first (RFC 9110 §14.1.1: invalid)."""

    status, title, slug = 400, "Malformed Range header", "malformed-range"


class RangeNotSatisfiable(ApiProblem):
    """A Range none of whose ranges overlaps the file (RFC 9110 §15.5.17), with ``Content-Range: bytes */size``."""

    status, title, slug = 416, "Range not satisfiable", "range-not-satisfiable"


def _number(digits: str) -> int:
    """A byte position, capped at 2^63 (past any file; `int` refuses more than 4,300 digits)."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 19 else 1 << 63


def checked_range(header: str, size: int) -> str | None:
    """The Range header to serve a file of `size` bytes by (module docstring); None for the whole file."""
    unit, equals, ranges = header.partition("=")
    if not equals:
        raise MalformedRange(f"Range {header[:100]!r} is not <unit>=<ranges>", field="Range")
    if unit.strip().lower() != "bytes":
        return None  # a unit this server does not know: ignored (RFC 9110 §14.2)
    specs = [spec.strip() for spec in ranges.split(",") if spec.strip()]  # empty list elements are allowed
    if not specs:
        raise MalformedRange("Range names no byte range", field="Range")
    kept = []
    for spec in specs:
        match = _SPEC.fullmatch(spec)
        if match is None or match[0] == "-":
            raise MalformedRange(f"Range {spec[:100]!r} is not first-last, first- or -suffix (bytes, in ASCII "
                                 "digits)", field="Range")
        first, last = match[1], match[2]
        if not first:  # the last `suffix` bytes; a suffix of 0 is not satisfiable
            suffix = min(_number(last), size)
            if suffix:
                kept.append(f"-{suffix}")
            continue
        start = _number(first)
        if last and _number(last) < start:
            raise MalformedRange(f"Range {spec[:100]!r} ends before it starts", field="Range")
        if start < size:
            kept.append(f"{start}-{min(_number(last), size - 1)}" if last else f"{start}-")
    if not kept:
        raise RangeNotSatisfiable(f"no range of {header[:100]!r} lies within the file's {size} bytes", field="Range",
                                  headers={"Content-Range": f"bytes */{size}"})
    return "bytes=" + ",".join(kept)
