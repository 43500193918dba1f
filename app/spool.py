"""Where an upload's main file part is spooled: a temp file reused from an earlier upload, or a new one.

Writing 64 MiB into a new file costs more than copying it: every page of
the page cache is allocated first, and freeing them when the file is
deleted costs again.  On the 2-core machine a new temp file takes ~21 ms per
64 MiB and its deletion ~6 ms, while overwriting a file that already has
its pages takes ~11 ms (BENCHMARKS.md, "API (issue 4)").  So the ``file``
part of an upload goes to an unnamed temp file (Linux ``O_TMPFILE``, in the
temp directory), and when the request is over the file is kept open for the
next upload to overwrite, up to a budget:

* `SpoolFiles` holds at most ``keep_bytes`` in such files, in use and kept
  together, and keeps at most `KEEP_FILES` idle ones.  An upload whose
  Content-Length does not fit the budget, or that has none, is spooled to a
  new named file in the request's temp directory, deleted after it.
* A kept file is reached by path through ``/proc/<server pid>/fd/<n>``, so the
  worker processes open and memory-map it as they would a named file (an
  ``O_TMPFILE`` file maps with a fraction of the page faults of a Linux
  memory file, ``memfd_create``, which was measured too).  It has no name, and
  closing it (at shutdown, or when it leaves the budget) deletes it.
* A kept file still holds the last upload's bytes until the next upload
  overwrites them; the writer cuts it to the new part's exact size when the
  part ends, and an early job sets it to its header's size first
  (app/arrival.py, `resize_to`), so no reader sees an earlier upload's bytes
  (readers use only what the arrival record or the final size says has
  arrived).  Files are kept only when no job can still be reading them: the
  process pool kills a worker whose job it abandons, while the thread pool
  cannot stop a thread, so under ``pool_kind="thread"`` the budget is 0
  (app/main.py).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

KEEP_FILES = 2


@dataclass
class Spool:
    """One file part's spool: the `path` jobs read, the `sink` the receiver writes (from offset 0).

    `kept` is the descriptor of a reusable unnamed file (None for a named
    temp file, deleted with the request's directory) and `reserved` the
    bytes of the budget it holds.
    """

    path: Path
    sink: BinaryIO
    kept: int | None = None
    reserved: int = 0

    def finish(self, size: int) -> None:
        """The part ended after `size` bytes: cut the file to them (a reused file may be longer)."""
        if self.kept is not None:
            self.sink.truncate(size)
        self.sink.close()

    def close(self) -> None:
        if not self.sink.closed:
            self.sink.close()


def _unnamed_file(directory: Path) -> int | None:
    """A new unnamed temp file in `directory` (its descriptor), or None where ``O_TMPFILE`` is not supported."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:  # a file system without O_TMPFILE
        return None


class SpoolFiles:
    """Unnamed temp files for upload spools, reused across requests within a byte budget (module docstring)."""

    def __init__(self, keep_bytes: int, directory: Path | None = None, keep_files: int = KEEP_FILES) -> None:
        self.keep_bytes = keep_bytes
        self.directory = directory if directory is not None else Path(tempfile.gettempdir())
        self.keep_files = keep_files
        self._idle: list[tuple[int, int]] = []  # (descriptor, size) of kept files
        self._held = 0  # bytes reserved by files in use plus the sizes of kept files

    @property
    def held_bytes(self) -> int:
        """Bytes of the budget taken now: reserved by spools in use, plus the size of each kept file."""
        return self._held

    @property
    def idle_files(self) -> int:
        return len(self._idle)

    def open(self, path: Path, expected_bytes: int | None) -> Spool:
        """A spool for a part of at most `expected_bytes`: a reusable file if the budget allows, else `path`."""
        if expected_bytes is not None and 0 <= expected_bytes <= self.keep_bytes:
            taken = self._take(expected_bytes)
            if taken is not None:
                descriptor, reserved = taken
                unnamed = Path(f"/proc/{os.getpid()}/fd/{descriptor}")
                # r+b: from offset 0 without truncating (the kept pages are the point); unbuffered: chunks are large
                return Spool(unnamed, open(unnamed, "r+b", buffering=0), descriptor, reserved)
        return Spool(path, path.open("wb", buffering=0))

    def _take(self, expected_bytes: int) -> tuple[int, int] | None:
        """A kept file (the smallest that holds `expected_bytes`, else the largest) or a new one, within budget."""
        fitting = [item for item in self._idle if item[1] >= expected_bytes]
        chosen = min(fitting, key=lambda item: item[1]) if fitting else (
            max(self._idle, key=lambda item: item[1]) if self._idle else None)
        if chosen is not None:
            self._idle.remove(chosen)
            self._held -= chosen[1]
        reserved = max(expected_bytes, chosen[1] if chosen is not None else 0)
        while self._held + reserved > self.keep_bytes and self._idle:
            descriptor, size = self._idle.pop(0)  # oldest first
            os.close(descriptor)
            self._held -= size
        descriptor = chosen[0] if chosen is not None else None
        if self._held + reserved > self.keep_bytes:
            if descriptor is not None:
                os.close(descriptor)
            return None
        if descriptor is None:
            descriptor = _unnamed_file(self.directory)
            if descriptor is None:
                return None
        self._held += reserved
        return descriptor, reserved

    def release(self, spool: Spool) -> None:
        """The request is over and no job reads `spool`: keep its unnamed file for reuse, or delete it."""
        spool.close()
        if spool.kept is None:
            return
        self._held -= spool.reserved
        size = os.fstat(spool.kept).st_size
        if len(self._idle) < self.keep_files and self._held + size <= self.keep_bytes:
            self._idle.append((spool.kept, size))
            self._held += size
        else:
            os.close(spool.kept)

    def close(self) -> None:
        """Close (and so delete) every kept file (at shutdown)."""
        for descriptor, _ in self._idle:
            os.close(descriptor)
        self._idle.clear()
        self._held = 0
