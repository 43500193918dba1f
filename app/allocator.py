"""glibc's allocator, tuned for a server that moves large uploads through short-lived buffers.

Two processes, two needs:

* The server process receives an upload as a stream of network reads of up
  to 256 KiB, each a new ``bytes`` object freed a moment later.  glibc's
  default (a dynamic threshold that starts serving such blocks with fresh
  ``mmap``, and a trim threshold of twice that) gives the freed memory back to
  the kernel almost every time, so every read's pages are faulted in anew:
  ~13,600 minor faults per 64 MiB upload, and about a third more CPU per upload
  (BENCHMARKS.md, API).  `keep_receive_buffers` fixes the thresholds so blocks
  under `MMAP_THRESHOLD_BYTES` come from the heap and up to
  `TRIM_THRESHOLD_BYTES` of free memory may stay at its top: the same few
  pages serve every read.  The threshold is above the ~4 MiB of reads an
  upload holds while its spool thread writes them (app/uploads.py).  Larger
  blocks (NumPy arrays) are still mapped and unmapped, so the server keeps at
  most a few MiB more than it uses.
* A worker process allocates and frees tens of MiB of NumPy scratch per job;
  `heap_trimmer` returns a function that hands the freed heap back once the
  worker is idle, so it does not keep its last job's high-water mark.

On a C library other than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 8 << 20
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc
    return libc


def keep_receive_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (module docstring); False where not glibc."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def heap_trimmer() -> Callable[[], None]:
    """A function returning this process's freed heap memory to the OS (glibc's ``malloc_trim``), or a no-op."""
    libc = _libc()
    if libc is None:
        return lambda: None
    trim = libc.malloc_trim

    def release() -> None:
        trim(0)

    return release
