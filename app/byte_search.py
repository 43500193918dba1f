"""Finding a multipart delimiter in a MiB of upload bytes, with the C library's ``memmem`` where there is one.

An upload's file bytes skip the multipart parser (app/uploads.py), but each
read of them is still searched for the delimiter (``CRLF--boundary``), so the
answer does not depend on how the client cut its body.  CPython's
``bytes.find`` runs its two-way search for a needle that long; glibc's
``memmem`` (glibc 2.36 here) is 3 to 4 times
faster on float data: 5.6-8.2 against 19.5-30.1 ms per 64 MiB on this
machine, for the boundaries curl, browsers and the benchmark send
(BENCHMARKS.md, "API (issue 4)").  The delimiter search was the largest single
item of the server's CPU time per upload.

`find` gives exactly what ``bytes.find(needle, start, end)`` gives; where
``memmem`` cannot be loaded it is ``bytes.find``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: below this many bytes the call into C costs more than it saves
MEMMEM_MIN_BYTES = 4096


def _load_memmem() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C library's ``memmem``, typed, or None where it cannot be found."""
    try:
        library = ctypes.CDLL(ctypes.util.find_library("c") or None)
        function = library.memmem
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_void_p
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return function


_memmem = _load_memmem()


def find(haystack: bytes | bytearray, needle: bytes, start: int = 0, end: int | None = None) -> int:
    """The lowest index of `needle` wholly inside ``haystack[start:end]``, or -1: ``haystack.find(...)``.

    `start` and `end` are taken as slice bounds are (clipped to the
    haystack; negative ones count from its end).
    """
    start, end, _ = slice(start, end).indices(len(haystack))
    if _memmem is None or not needle or end - start < MEMMEM_MIN_BYTES:
        return haystack.find(needle, start, end)
    anchor: ctypes.c_char_p | ctypes.c_char
    if isinstance(haystack, bytes):
        anchor = ctypes.c_char_p(haystack)  # points into the immutable object's own buffer
        base = ctypes.cast(anchor, ctypes.c_void_p).value or 0
    else:  # held exported (not resizable) until the search is over
        anchor = ctypes.c_char.from_buffer(haystack)
        base = ctypes.addressof(anchor)
    found = _memmem(base + start, end - start, needle, len(needle))
    del anchor
    return -1 if found is None else int(found) - base
