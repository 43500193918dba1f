"""Multipart uploads streamed to temporary files, with the size limit enforced as the bytes arrive.

Starlette's own form parsing reads the whole body before the handler runs; an
upload endpoint that must refuse a 10 GiB body with 413 after the first few
hundred MiB (and before that, from its Content-Length alone) has to parse the
stream itself.  `receive_upload` feeds ``request.stream()`` chunk by chunk to
python-multipart's streaming `MultipartParser` (its public API), writes file
parts to files in a private temporary directory (under names it chooses, never
the client's), keeps small text fields in memory, and in ``finally`` (on
success, on error, and when the client disconnects mid-upload) removes the
directory.

A file's bytes are written by a thread (`SpoolWriter`), in batches of a few
MiB handed to ``os.writev`` as slices of the network chunks (no copy): the
copy into the page cache then runs beside the event loop, which receives and
parses the next bytes meanwhile, instead of after it.

Every byte goes through the parser, so the answer does not depend on how the
client's body was cut into network reads; a body that ends without its closing
delimiter (``--boundary--``) is refused (400), whatever came before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.problems import MalformedUpload, UnsupportedMediaType, UploadStalled
from app.settings import Settings
from quant_core.errors import LimitExceeded
from quant_core.tensorio import sniff_format

TensorFileKind = Literal["npy", "safetensors"]
SNIFF_BYTES = 16
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers, boundaries and text fields on top of the files
#: a part's delimiter and headers (Content-Disposition with its file name, Content-Type), at most
PART_OVERHEAD_BYTES = 1024
#: RFC 2046: a boundary is 1 to 70 characters
MAX_BOUNDARY_BYTES = 70
#: the most parts one body may hold (a form has a dozen fields): parts cost Python work however small they are
MAX_PARTS = 100
#: file bytes gathered before they are handed to the spool's writer thread (one os.writev; each hand-off wakes
#: the thread, so fewer is faster).  With one batch being written and one gathering, about 4 MiB of network chunks
#: stay alive: under glibc's trim threshold (app/allocator.py), so their heap pages are reused rather than
#: faulted in anew every batch
SPOOL_BATCH_BYTES = 2 << 20
#: slices per os.writev call (POSIX's IOV_MAX, 1024 on Linux)
_MAX_SLICES = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
#: a batch is handed over at this many slices too: a client sending tiny network reads (within the upload rate)
#: must not pile up millions of slice objects, each a few hundred bytes, before 2 MiB of them are in
MAX_PENDING_SLICES = 1024
#: file bytes one form may keep in memory rather than spool (`FormLimits.in_memory`): a spool file costs an
#: open, a close and an unlink however small it is (4,096 header parts of 250 bytes: 0.5-2 s of the event loop's CPU
#: in os.open alone on this container's overlay file system), and a plan reads every header part into memory anyway
IN_MEMORY_FILE_BYTES = 2 << 20
#: the threads writing spool files, shared by every upload (each has at most one batch in flight)
_SPOOL_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nibble-spool")
#: pending writes: (file descriptor, bytes) in the order they arrived
Writes = list[tuple[int, memoryview]]


@dataclass
class UploadedFile:
    """One file part, spooled to `path` (or kept in `data`): its form field, the client's file name (shown
    only), size, kind."""

    field: str
    filename: str
    path: Path
    size: int
    #: None for a field in UNTYPED_FILE_FIELDS whose file is not .npy or .safetensors (its own reader checks it)
    kind: TensorFileKind | None
    #: the file's bytes when its form keeps small files in memory (`FormLimits.in_memory`): then `path` is not written
    data: bytes | None = None

    def read_bytes(self) -> bytes:
        """The file's bytes, from memory or from its spool file."""
        return self.data if self.data is not None else self.path.read_bytes()


#: file fields that may hold files other than .npy / .safetensors: importance statistics (llama.cpp's GGUF or
#: .dat imatrix), read and validated by quant_core.tensorio.read_importance
UNTYPED_FILE_FIELDS = ("importance",)


@dataclass
class Upload:
    """A parsed multipart body: its files (by field name; a repeated field's in `repeated`, in order) and its
    text fields."""

    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)
    directory: Path = Path()
    repeated: dict[str, list[UploadedFile]] = field(default_factory=dict)


@dataclass(frozen=True)
class FormLimits:
    """What one route's multipart body may hold: its file fields (those in `repeated` may hold several
    files, those in `untyped` files other than .npy / .safetensors), the file bytes in all (`limit`
    names the setting), the bytes of any one file of `part_fields` (`part_limit` names it), the parts, and the
    files of each repeated field (`max_repeated`, 413 naming `repeated_limit` at the first part past it).
    `in_memory`: files are kept in memory, up to `IN_MEMORY_FILE_BYTES` of them in all (the rest spooled), for
    a form of many small files its handler reads whole."""

    file_fields: tuple[str, ...] = ("file", "calibration")
    repeated: tuple[str, ...] = ()
    untyped: tuple[str, ...] = UNTYPED_FILE_FIELDS
    max_file_bytes: int | None = None  # None: settings.max_upload_bytes
    limit: str = "max_upload_bytes"
    max_part_bytes: int | None = None  # for the files of `part_fields`
    part_limit: str = ""
    part_fields: tuple[str, ...] = ()
    max_parts: int = 0  # 0: MAX_PARTS
    max_repeated: int = 0  # 0: a repeated field's files are bounded by max_parts only
    repeated_limit: str = ""
    in_memory: bool = False


class _Collector:
    """python-multipart callbacks: route each part's bytes to a temp file or a text buffer.

    A callback cannot stop the parser, so a refusal is kept in `error` and
    raised by `feed` after the chunk.
    """

    def __init__(self, directory: Path, limits: FormLimits, settings: Settings) -> None:
        self.directory = directory
        self.limits = limits
        self.file_fields = limits.file_fields
        self.max_file_bytes = limits.max_file_bytes or settings.max_upload_bytes
        self.max_parts = limits.max_parts or MAX_PARTS
        self.max_text_bytes = settings.max_json_bytes
        self.file_bytes = 0
        self.text_bytes = 0
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[str, bytes] = {}
        self.part_name = ""
        #: the open spool file of the current file part; its writes wait in `writes`, then go to `SpoolWriter`
        self.sink: int | None = None
        #: the current file part's bytes while it is kept in memory (`FormLimits.in_memory`), and every such part's
        self.memory: bytearray | None = None
        self.memory_bytes = 0
        self.in_memory: dict[int, bytes] = {}  # index in raw_files -> its bytes
        self.writes: Writes = []
        self.batch_bytes = 0
        #: spool files whose part has ended, closed once their pending writes are done
        self.closing: list[int] = []
        self.text: bytearray | None = None
        #: (field, the client's file name, path, bytes written), in the body's order
        self.raw_files: list[tuple[str, str, Path, int]] = []
        self.files_in: dict[str, int] = {}  # field -> files so far
        self.fields: dict[str, list[str]] = {}
        self.error: Exception | None = None
        self.ended = False
        self.parts = 0

    def on_part_begin(self) -> None:
        self.headers = {}
        self.parts += 1
        if self.parts > self.max_parts and self.error is None:
            self.error = MalformedUpload(f"the multipart body holds more than {self.max_parts} parts", field="body")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        self.part_name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None and self.part_name not in self.file_fields:
            self.error = MalformedUpload(
                f"the form holds a file in field {self.part_name!r}; this route reads files from "
                f"{list(self.file_fields)} only", field=self.part_name)
        elif filename is not None or self.part_name in self.file_fields:
            if self.part_name not in self.limits.repeated and self.files_in.get(self.part_name):
                self.error = MalformedUpload(f"the field {self.part_name!r} holds more than one file",
                                             field=self.part_name)
                return
            count = self.files_in.get(self.part_name, 0) + 1
            if self.limits.max_repeated and self.part_name in self.limits.repeated and count > self.limits.max_repeated:
                self.error = LimitExceeded(self.limits.repeated_limit, count, self.limits.max_repeated,
                                           field=self.part_name)
                return
            path = self.directory / f"part-{len(self.raw_files)}"
            if self.limits.in_memory and self.memory_bytes < IN_MEMORY_FILE_BYTES:
                self.memory = bytearray()
            else:
                self.sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            self.raw_files.append((self.part_name, (filename or b"").decode("utf-8", "replace"), path, 0))
            self.files_in[self.part_name] = count
        else:
            self.text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        size = end - start
        if self.sink is not None or self.memory is not None:
            self.file_bytes += size
            if self.file_bytes > self.max_file_bytes:
                self.error = LimitExceeded(self.limits.limit, self.file_bytes, self.max_file_bytes,
                                           field=self.part_name)
                return
            part, name, path, written = self.raw_files[-1]
            if (self.limits.max_part_bytes is not None and part in self.limits.part_fields
                    and written + size > self.limits.max_part_bytes):
                self.error = LimitExceeded(self.limits.part_limit, written + size, self.limits.max_part_bytes,
                                           field=self._where())
                return
            self.raw_files[-1] = (part, name, path, written + size)
            if self.memory is not None:
                if self.memory_bytes + size <= IN_MEMORY_FILE_BYTES:
                    self.memory += data[start:end]
                    self.memory_bytes += size
                    return
                self._spill(path)
            assert self.sink is not None
            # a slice of the network chunk (immutable bytes), not a copy; python-multipart's own buffers are copied
            view = memoryview(data)[start:end] if type(data) is bytes else memoryview(bytes(data[start:end]))
            self.writes.append((self.sink, view))
            self.batch_bytes += size
        elif self.text is not None:
            self.text_bytes += size
            if self.text_bytes > self.max_text_bytes:
                self.error = LimitExceeded("max_json_bytes", self.text_bytes, self.max_text_bytes,
                                           field=self.part_name)
                return
            self.text += data[start:end]

    def _where(self) -> str:
        """The current file part as the problem names it: ``header[3]`` for a repeated field's fourth file."""
        if self.part_name not in self.limits.repeated:
            return self.part_name
        return f"{self.part_name}[{self.files_in[self.part_name] - 1}]"

    def on_part_end(self) -> None:
        self.close()
        if self.text is not None:
            self.fields.setdefault(self.part_name, []).append(self.text.decode("utf-8", "replace"))
            self.text = None

    def on_end(self) -> None:
        self.ended = True

    def _spill(self, path: Path) -> None:
        """The current part has outgrown the form's memory (`IN_MEMORY_FILE_BYTES`): spool it from here on, its bytes
        so far first."""
        assert self.memory is not None
        self.sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        if self.memory:
            self.writes.append((self.sink, memoryview(bytes(self.memory))))
            self.batch_bytes += len(self.memory)
            self.memory_bytes -= len(self.memory)
        self.memory = None

    def close(self) -> None:
        """End the current file part: its spool file is closed after its pending writes (a part kept in memory is
        kept as bytes)."""
        if self.memory is not None:
            self.in_memory[len(self.raw_files) - 1] = bytes(self.memory)
            self.memory = None
        if self.sink is not None:
            self.closing.append(self.sink)
            self.sink = None

    def take(self) -> tuple[Writes, list[int]]:
        """The pending writes and the files to close after them, handed over (to `SpoolWriter.write`)."""
        taken = self.writes, self.closing
        self.writes, self.closing, self.batch_bytes = [], [], 0
        return taken

    def flush(self) -> None:
        """Write the pending bytes now, on this thread, and close the ended parts' files."""
        _write_slices(*self.take())

    def discard(self) -> None:
        """Drop the pending bytes and close every spool file (after an error)."""
        self.close()
        for descriptor in self.take()[1]:
            os.close(descriptor)

    def parser(self, boundary: bytes) -> MultipartParser:
        """python-multipart's streaming parser of a body with `boundary`, calling this collector back."""
        return MultipartParser(boundary, callbacks={
            "on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_end": self.on_end})

    def feed(self, parser: MultipartParser, chunk: bytes) -> None:
        """Parse one network chunk; raise the refusal (a limit passed, a misplaced file) as soon as there is one."""
        parser.write(chunk)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """The body has ended: it must have ended with its closing delimiter (400 otherwise)."""
        if self.ended:
            return
        inside = f" inside the part {self.part_name!r}" if self.part_name else ""
        raise MalformedUpload(f"the multipart body ended{inside} without its closing delimiter (--boundary--)",
                              field=self.part_name or "body")


def _write_slices(writes: Writes, closing: list[int]) -> None:
    """Write each slice to its file, in order (``os.writev`` over runs of one file), then close `closing`."""
    try:
        for descriptor, run in itertools.groupby(writes, key=operator.itemgetter(0)):
            views = [view for _, view in run]
            first = 0
            while first < len(views):
                written = os.writev(descriptor, views[first:first + _MAX_SLICES])
                while first < len(views) and written >= len(views[first]):  # a write may stop short
                    written -= len(views[first])
                    first += 1
                if written:
                    views[first] = views[first][written:]
    finally:
        for descriptor in closing:
            os.close(descriptor)


class SpoolWriter:
    """Writes an upload's file bytes on a thread, one batch at a time, while the event loop receives the next."""

    def __init__(self) -> None:
        self.in_flight: Future[None] | None = None

    async def write(self, writes: Writes, closing: list[int]) -> None:
        """Wait for the previous batch (its errors are raised here), then start writing this one."""
        await self.settle()
        self.in_flight = _SPOOL_THREADS.submit(_write_slices, writes, closing)

    async def settle(self) -> None:
        """Wait until every batch handed over is written (usually it is already: then without a turn of the loop)."""
        if self.in_flight is not None:
            if not self.in_flight.done():
                await asyncio.wrap_future(self.in_flight)
            self.in_flight.result()  # the write's error, if any
            self.in_flight = None

    def abandon(self, collector: _Collector) -> None:
        """After an error: wait for the batch in flight (it is being written), drop the rest, close every file."""
        if self.in_flight is not None:
            with contextlib.suppress(Exception):
                self.in_flight.result()  # at most one batch: a few milliseconds
            self.in_flight = None
        collector.discard()


def body_due(started: float, last: float, received: int, idle: float, rate: float) -> float:
    """When a body's next bytes are due: within `idle` seconds of the last read, and never more than `idle`
    seconds behind `rate` bytes per second since it `started` (``upload_idle_seconds`` and
    ``upload_min_bytes_per_second``; tus PATCH bodies keep the same pace)."""
    return min(last + idle, started + idle + received / rate)


def stall_reason(started: float, last: float, received: int, now: float, idle: float, rate: float) -> str:
    """Why a body missed `body_due`, for its 408: silence, or too slow an average."""
    if now - last >= idle:
        return f"sent no bytes for {idle:g} s"
    return (f"sent {received} bytes in {now - started:.0f} s, slower than the {rate:g} bytes per second an "
            "upload must keep up")


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMediaType(
            f"expected a multipart/form-data body, got {request.headers.get('content-type', 'none')!r}",
            field="Content-Type",
        )
    boundary = options[b"boundary"]
    if len(boundary) > MAX_BOUNDARY_BYTES:
        raise MalformedUpload(f"the multipart boundary is {len(boundary)} characters long; RFC 2046 allows at most "
                              f"{MAX_BOUNDARY_BYTES}", field="Content-Type")
    return boundary


async def _stream(request: Request, settings: Settings, collector: _Collector, boundary: bytes,
                  spool: SpoolWriter) -> None:
    """Parse the body as it arrives, under one deadline (408 past it; see ``upload_idle_seconds``).

    The next bytes are due within `idle` seconds, and the body may fall at
    most `idle` seconds behind `rate` bytes per second.  A read only notes its
    time and size; one timer, when it fires, finds the deadline those reads
    moved and waits for it, or ends the upload.
    """
    parser = collector.parser(boundary)
    loop = asyncio.get_running_loop()
    idle, rate = settings.upload_idle_seconds, settings.upload_min_bytes_per_second
    started = last = loop.time()
    received = 0

    def due() -> float:
        return body_due(started, last, received, idle, rate)

    watchdog: asyncio.TimerHandle
    try:
        async with asyncio.timeout(None) as deadline:

            def check() -> None:
                nonlocal watchdog
                when = due()
                if loop.time() >= when:
                    deadline.reschedule(when)  # passed: asyncio.timeout cancels the task, TimeoutError below
                else:
                    watchdog = loop.call_at(when, check)

            watchdog = loop.call_at(due(), check)
            try:
                async for chunk in request.stream():
                    last = loop.time()
                    received += len(chunk)
                    collector.feed(parser, chunk)
                    if collector.batch_bytes >= SPOOL_BATCH_BYTES or len(collector.writes) >= MAX_PENDING_SLICES:
                        await spool.write(*collector.take())
            finally:
                watchdog.cancel()
        parser.finalize()
        collector.finish()
        await spool.write(*collector.take())
        await spool.settle()
    except TimeoutError:
        reason = stall_reason(started, last, received, loop.time(), idle, rate)
        raise UploadStalled(f"the upload {reason} (after {collector.file_bytes} file bytes)", field="file",
                            headers={"Connection": "close"}) from None
    except (ClientDisconnect, LimitExceeded, MalformedUpload):
        raise
    except Exception as exc:  # python-multipart's parse errors (an over-long part header, a broken delimiter)
        raise MalformedUpload(f"the multipart body cannot be parsed: {exc}", field="body") from exc


#: an upload's spool directory is named for the host and the process that own it, so that a later start can tell the
#: spools of a killed process (SIGKILL, the OOM killer: no cleanup ran) from those of a live worker beside it, and
#: leaves alone those of another host (a replica sharing the directory, whose process ids are not ours to read)
SPOOL_PREFIX = "nibble-upload-"


def _spool_owner() -> str:
    """This process's part of a spool's name: the host (its name's characters a path allows) and the process id."""
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def remove_orphaned_spools(temp_dir: Path | None) -> int:
    """Delete this host's upload spools in `temp_dir` (default: the system's) that no live process of it is
    receiving: those of a process that is gone, and those named for this very process, which has received nothing
    yet (a container restarted after a kill starts with the same process id, often 1); the count.

    Call it once at start-up, before any upload. A spool of a live sibling worker, or of another host, is left alone.
    """
    removed = 0
    host = _spool_owner().rsplit("-", 1)[0]
    for directory in Path(temp_dir or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}{host}-*-*"):
        owner = directory.name[len(f"{SPOOL_PREFIX}{host}-"):].split("-", 1)[0]
        if not owner.isdigit() or int(owner) <= 0 or not directory.is_dir():
            continue
        if int(owner) != os.getpid() and _alive(int(owner)):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or a pid out of range: not ours to judge
        return True
    return True


@contextlib.asynccontextmanager
async def receive_upload(request: Request, settings: Settings,
                         limits: FormLimits = FormLimits()) -> AsyncIterator[Upload]:
    """Stream a multipart body into a temp directory; yield the parsed `Upload`; always delete it (after an
    error before raising; after success on a spool thread, while the answer is sent).

    Raises `LimitExceeded` (413) when the Content-Length, or the file bytes
    received so far, pass ``settings.max_upload_bytes`` (or `limits`' own, and
    one file past ``limits.max_part_bytes``); `UnsupportedMediaType`
    (415) for a body that is not multipart or a file that is neither ``.npy``
    nor ``.safetensors`` by its magic bytes; `MalformedUpload` (400) for a
    broken multipart body; `UploadStalled` (408) for a body that stops
    arriving or arrives too slowly.
    """
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    max_file_bytes = limits.max_file_bytes or settings.max_upload_bytes
    budget = max_file_bytes + MULTIPART_OVERHEAD_BYTES + limits.max_parts * PART_OVERHEAD_BYTES
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise LimitExceeded(limits.limit, int(declared), max_file_bytes, field="file")
    directory = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{_spool_owner()}-", dir=settings.temp_dir))
    collector = _Collector(directory, limits, settings)
    spool = SpoolWriter()
    try:
        try:
            await _stream(request, settings, collector, boundary, spool)
        except BaseException:
            spool.abandon(collector)
            raise
        upload = Upload(fields=collector.fields, directory=directory)
        for number, (name, filename, path, size) in enumerate(collector.raw_files):
            data = collector.in_memory.get(number)
            if data is not None:
                kind = sniff_format(data[:SNIFF_BYTES])
            else:
                with path.open("rb") as handle:
                    kind = sniff_format(handle.read(SNIFF_BYTES))
            if kind is None and name not in limits.untyped:
                raise UnsupportedMediaType(
                    f"the file in field {name!r} ({filename or 'unnamed'}, {size} bytes) is neither "
                    ".npy nor .safetensors by its first bytes", field=name)
            uploaded = UploadedFile(name, filename, path, size, kind, data)
            if name in limits.repeated:
                upload.repeated.setdefault(name, []).append(uploaded)
            else:
                upload.files[name] = uploaded
        yield upload
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    else:
        # deleting the files frees their page-cache pages (a few milliseconds for 64 MiB): a spool thread
        # does it while the answer leaves (threads are joined at exit, so a stopped server leaves nothing)
        try:
            _SPOOL_THREADS.submit(shutil.rmtree, directory, ignore_errors=True)
        except RuntimeError:  # the interpreter is shutting down: no new thread work
            shutil.rmtree(directory, ignore_errors=True)


def new_output_path(upload: Upload, suffix: str) -> Path:
    """A fresh path inside the upload's temp directory for a job's output (removed with it)."""
    handle, name = tempfile.mkstemp(prefix="out-", suffix=suffix, dir=upload.directory)
    os.close(handle)
    return Path(name)
