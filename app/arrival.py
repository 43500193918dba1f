"""How much of an upload has arrived, shared between the event loop that receives it and the job reading it.

Quantizing a 64 MiB upload takes about as long as receiving it, so a job may
start as soon as the file part begins and work through the rows that have
arrived while the rest is still on the wire (app/routers/quantizations.py).
The two sides share a 16-byte *arrival* file next to the upload, memory-mapped
by both (worker processes included): the byte count received so far and a
state, each one aligned 8-byte word written by the receiving side only.

The reading side (`ArrivalWaiter`, in the job) blocks in `wait_bytes(n)`
until ``n`` bytes have arrived, polling every `POLL_SECONDS` (a job waits
only while the client is still sending).  When the upload ends short, or is
abandoned (client gone, limit passed, or the job is no longer wanted), the
waiter raises `UploadIncomplete` and the job stops; the request then answers
as if no early job had run.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

from quant_core.errors import NibbleError

POLL_SECONDS = 0.0005
#: longest a job waits for the next bytes before giving up on the arriving upload (its worker is freed,
#: and the job runs once the upload is complete): a slow client cannot hold a worker for long
PATIENCE_SECONDS = 1.0
_ARRIVING, _COMPLETE, _ABANDONED = 0, 1, 2


class UploadIncomplete(NibbleError):
    """The upload a job was reading ended short or was abandoned; the job's result is not wanted."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, field="file")


def _map(path: Path, writable: bool) -> tuple[mmap.mmap, np.ndarray]:
    with open(path, "r+b" if writable else "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 16, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    return mapping, np.frombuffer(mapping, dtype=np.int64, count=2)


class ArrivalRecorder:
    """The receiving side: records bytes received and how the upload ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "wb") as handle:
            handle.write(bytes(16))
        self._mapping, self._words = _map(path, writable=True)

    def advance(self, received: int) -> None:
        """`received` bytes of the file have been written to it."""
        self._words[0] = received

    def complete(self, received: int) -> None:
        """The file part ended with `received` bytes in all."""
        self._words[0] = received
        self._words[1] = _COMPLETE

    def abandon(self) -> None:
        """The upload failed or the job reading it is no longer wanted: its waiter raises."""
        self._words[1] = _ABANDONED

    @property
    def ended(self) -> bool:
        return int(self._words[1]) != _ARRIVING

    def close(self) -> None:
        """Unmap the record (its file is about to be deleted; a deleted file stays open while mapped)."""
        _unmap(self)


class ArrivalWaiter:
    """The job's side: blocks until bytes have arrived (see the module docstring)."""

    def __init__(self, path: Path, patience_seconds: float = PATIENCE_SECONDS) -> None:
        self._mapping, self._words = _map(path, writable=False)
        self.patience_seconds = patience_seconds
        self._lock = threading.Lock()
        #: seconds spent waiting for bytes (a job's figures leave them out of its own time)
        self.waited_seconds = 0.0

    def close(self) -> None:
        """Unmap the record, once the job is done with it."""
        _unmap(self)

    def wait_bytes(self, needed: int) -> int:
        """Block until `needed` bytes have arrived; return the count so far.

        Raises `UploadIncomplete` when the upload was abandoned, completed
        with fewer than `needed` bytes, or brought nothing new for
        `patience_seconds`.  Safe to call from several threads.
        """
        return self._wait(needed)

    def final_size(self) -> int:
        """Block until the upload has ended; its size in bytes (`UploadIncomplete` as for `wait_bytes`)."""
        return self._wait(None)

    def _wait(self, needed: int | None) -> int:
        """Poll until `needed` bytes have arrived (None: until the upload has ended), counting the time waited."""
        started = time.perf_counter()
        last, since = -1, time.monotonic()
        try:
            while True:
                state = int(self._words[1])
                received = int(self._words[0])
                if state == _ABANDONED:
                    raise UploadIncomplete("the upload this job was reading was abandoned")
                if needed is not None and received >= needed:
                    return received
                if state == _COMPLETE:
                    if needed is None:
                        return received
                    raise UploadIncomplete(f"the upload ended after {received} bytes; {needed} were expected")
                if received != last:
                    last, since = received, time.monotonic()
                elif time.monotonic() - since > self.patience_seconds:
                    raise UploadIncomplete(
                        f"no bytes arrived for {self.patience_seconds:g} s; the job waits no longer")
                time.sleep(POLL_SECONDS)
        finally:
            with self._lock:
                self.waited_seconds += time.perf_counter() - started


def _unmap(side: ArrivalRecorder | ArrivalWaiter) -> None:
    """Drop `side`'s view of the record and close its mapping (idempotent)."""
    mapping = side.__dict__.pop("_mapping", None)
    side.__dict__.pop("_words", None)
    if mapping is not None:
        mapping.close()


def resize_to(path: Path, size: int) -> None:
    """Make the file exactly `size` bytes long, so it can be memory-mapped whole while it arrives.

    Zeros fill what has not arrived yet; the receiving side keeps writing at
    its own offset, over them.  A reused spool file (app/spool.py) can be
    longer than the header declares, holding an earlier upload's bytes: they
    are cut off.  (If the upload itself runs past its header, this may cut
    bytes already written there; such a file is refused whatever those bytes
    hold, since its size disagrees with its header.)
    """
    if os.stat(path).st_size != size:
        os.truncate(path, size)
