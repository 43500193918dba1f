"""Multipart uploads streamed to temporary files, with the size limit enforced as the bytes arrive.

Starlette's own form parsing reads the whole body before the handler runs; an
upload endpoint that must refuse a 10 GiB body with 413 after the first few
hundred MiB (and before that, from its Content-Length alone) has to parse the
stream itself.  `receive_upload` feeds `request.stream()` chunk by chunk to
python-multipart's parser, writes file parts to spools (the main file part to
an unnamed temp file reused across uploads when the budget allows,
app/spool.py; others to a private temporary directory, under names it
chooses, never the client's), keeps small text fields in memory, and in ``finally`` (on
success, on error, and when the client disconnects mid-upload) releases the
spools and removes the directory.

Writes go straight to the file from the event loop, unbuffered and without
slicing a copy out of the network chunk (a memoryview of it): each is one copy
of one chunk (uvicorn hands over about 256 KiB at a time) into the page cache,
tens of microseconds, the same trade Starlette makes for its spooled files.

A tensor file declares its own length in its header (quant_core/tensorio/declared.py).
Once a file part's header has arrived, the bytes up to that length go to the
spool without passing through the multipart parser, whose search for the
boundary was about a fifth of the server's CPU time on a 64 MiB upload
(BENCHMARKS.md); the parser takes over again where the file should end, and
finds the boundary there.  This changes nothing for a well-formed body: a
file that is not the length its header declares is refused either way (a
longer one after the parser has found its real end; a shorter one because
the body ends before the declared length, or leaves the parser in a later
part's data).  The parser is only bypassed when the last byte it was fed
cannot begin a boundary, so it holds no partly matched boundary back.

When at least `MIN_DIVERTED_BYTES` of such a file are still due and the
server offers it (app/http_protocol.py, ``QueuedBodyProtocol``), those bytes
are diverted: read from the socket straight into a buffer that is searched
for the delimiter and written to the spool, without a trip through the
request's receive queue per network read.  The answer is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app import byte_search
from app.arrival import ArrivalRecorder
from app.http_protocol import BODY_DIVERT_EXTENSION
from app.problems import MalformedUpload, UnsupportedMediaType, UploadStalled
from app.settings import Settings
from app.spool import Spool, SpoolFiles
from quant_core.errors import LimitExceeded, NibbleError, TensorFileError
from quant_core.tensorio import sniff_format
from quant_core.tensorio.declared import declared_layout, header_end

TensorFileKind = Literal["npy", "safetensors"]
SNIFF_BYTES = 16
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers, boundaries and text fields on top of the files
#: how far into a chunk to look for a byte after which the parser may be bypassed (a Python loop: kept short)
CLEAN_BYTE_SEARCH = 64
#: the longest file header parsed on the event loop to learn a file part's length (larger: no bypass)
DECLARED_HEAD_BYTES = 1 << 20
#: the fewest bytes still due of a declared file for which the server reads them straight into its spool
MIN_DIVERTED_BYTES = 1 << 20


@dataclass
class UploadedFile:
    """One file part, spooled to `path`: its form field, the client's file name (shown only), size, kind."""

    field: str
    filename: str
    path: Path
    size: int
    #: None for a field in UNTYPED_FILE_FIELDS whose file is not .npy or .safetensors (its own reader checks it)
    kind: TensorFileKind | None


#: file fields that may hold files other than .npy / .safetensors: importance statistics (llama.cpp's GGUF or
#: .dat imatrix), read and validated by quant_core.tensorio.read_importance
UNTYPED_FILE_FIELDS = ("importance",)


@dataclass(frozen=True)
class ArrivingFile:
    """A file part whose first bytes have arrived (the rest is still coming), for a job that starts early.

    `fields` and `files` are what the body held before this part (text
    fields, and file parts already complete); `arrival` is the shared
    arrival record (app/arrival.py) the job waits on.
    """

    field: str
    path: Path
    kind: TensorFileKind
    arrival: ArrivalRecorder
    fields: dict[str, list[str]]
    files: dict[str, Path]
    directory: Path


@dataclass
class Upload:
    """A parsed multipart body: its files (by field name) and its text fields."""

    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)
    directory: Path = Path()


class _Collector:
    """python-multipart callbacks: route each part's bytes to a temp file or a text buffer."""

    def __init__(self, directory: Path, file_fields: tuple[str, ...], settings: Settings, spools: SpoolFiles,
                 expected_bytes: int | None, on_arriving: Callable[[ArrivingFile], None] | None = None,
                 arriving_field: str = "file", boundary: bytes = b"") -> None:
        self.directory = directory
        self.settings = settings
        #: every byte value of the delimiter ``CRLF--boundary``: a chunk fed to the parser that ends in none
        #: of them leaves no partly matched boundary in the parser
        self.delimiter = b"\r\n--" + boundary
        self.delimiter_bytes = frozenset(self.delimiter)
        self.parser_clean = True
        #: the last bytes that went straight to a spool (fewer than the delimiter), to find one cut across reads
        self.bypass_tail = b""
        self.head = bytearray()
        self.head_needed = SNIFF_BYTES  # bytes of the file part to collect before looking at its header again
        #: the current file part's length as its header declares it (None: not known, or not knowable)
        self.declared_end: int | None = None
        self.head_done = False
        self.spools = spools
        self.expected_bytes = expected_bytes
        self.opened: list[Spool] = []
        self.spool: Spool | None = None
        self.on_arriving = on_arriving
        self.arriving_field = arriving_field
        self.recorder: ArrivalRecorder | None = None
        self.announced = False
        self.completed: dict[str, Path] = {}
        self.file_fields = file_fields
        self.max_file_bytes = settings.max_upload_bytes
        self.max_text_bytes = settings.max_json_bytes
        self.file_bytes = 0
        self.text_bytes = 0
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[str, bytes] = {}
        self.part_name = ""
        self.part_filename: str | None = None
        self.text: bytearray | None = None
        self.raw_files: dict[str, tuple[str, Path, int]] = {}
        self.fields: dict[str, list[str]] = {}
        self.error: Exception | None = None

    def on_part_begin(self) -> None:
        self.headers = {}

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
        self.part_filename = None if filename is None else filename.decode("utf-8", "replace")
        if self.part_filename is not None and self.part_name not in self.file_fields:
            self.error = MalformedUpload(
                f"the form holds a file in field {self.part_name!r}; this route reads files from "
                f"{list(self.file_fields)} only", field=self.part_name)
            return
        if self.part_filename is not None or self.part_name in self.file_fields:
            if self.part_name in self.raw_files:
                self.error = MalformedUpload(f"the field {self.part_name!r} holds more than one file",
                                             field=self.part_name)
                return
            stem = self.directory / f"part-{len(self.raw_files)}"
            # the main file part may go to a reused unnamed file (app/spool.py); others to the temp directory
            self.spool = self.spools.open(stem, self.expected_bytes if self.part_name == self.file_fields[0] else None)
            self.opened.append(self.spool)
            self.head, self.head_needed, self.declared_end, self.head_done = bytearray(), SNIFF_BYTES, None, False
            self.raw_files[self.part_name] = (self.part_filename or "", self.spool.path, 0)
            if self.on_arriving is not None and self.part_name == self.arriving_field and self.recorder is None:
                self.recorder = ArrivalRecorder(stem.with_suffix(".arrival"))
        else:
            self.text = bytearray()

    def on_part_data(self, data: bytes | bytearray, start: int, end: int) -> None:
        if self.error is not None:
            return
        size = end - start
        if self.spool is not None:
            self.file_bytes += size
            if self.file_bytes > self.max_file_bytes:
                self.error = LimitExceeded("max_upload_bytes", self.file_bytes, self.max_file_bytes,
                                           field=self.part_name)
                return
            view = memoryview(data)[start:end]  # a slice of the network chunk, not a copy of it
            sink = self.spool.sink
            while view:  # a raw file may write less than asked
                view = view[sink.write(view) or 0:]
            name, path, written = self.raw_files[self.part_name]
            self.raw_files[self.part_name] = (name, path, written + size)
            if not self.head_done:
                self._learn_length(data, start, end)
            if self.recorder is not None and self.part_name == self.arriving_field:
                self.recorder.advance(written + size)
                if not self.announced and written + size >= SNIFF_BYTES:
                    self._announce(path)
        elif self.text is not None:
            self.text_bytes += size
            if self.text_bytes > self.max_text_bytes:
                self.error = LimitExceeded("max_json_bytes", self.text_bytes, self.max_text_bytes,
                                           field=self.part_name)
                return
            self.text += data[start:end]

    def _learn_length(self, data: bytes | bytearray, start: int, end: int) -> None:
        """Collect the file part's first bytes until its header says how long the file is (or cannot).

        The header is parsed once, when its last byte is in (its length is read
        from its first 16 bytes), however finely the client cuts its body.
        """
        self.head += data[start: min(end, start + DECLARED_HEAD_BYTES - len(self.head))]
        if len(self.head) < self.head_needed:
            return
        layout = None
        kind = sniff_format(bytes(self.head[:SNIFF_BYTES]))
        if kind is not None and self.head_needed == SNIFF_BYTES:
            header_bytes = header_end(bytes(self.head[:SNIFF_BYTES]), kind)
            if header_bytes is not None and header_bytes <= DECLARED_HEAD_BYTES:
                self.head_needed = max(header_bytes, SNIFF_BYTES)
                if len(self.head) < self.head_needed:
                    return
            else:
                kind = None  # a header too long to parse here: the parser handles this file
        if kind is not None:
            try:
                layout = declared_layout(
                    bytes(self.head[: self.head_needed]), kind,
                    max_header_bytes=min(self.settings.max_header_bytes, DECLARED_HEAD_BYTES),
                    max_elements=self.settings.max_elements_per_tensor, max_tensors=self.settings.max_tensors)
            except NibbleError:  # a bad header is reported by the reader, as for any upload
                layout = None
        self.declared_end = None if layout is None else layout.file_bytes
        self.head_done, self.head = True, bytearray()

    def check_bypassed(self, chunk: bytes | bytearray, start: int, end: int) -> None:
        """Refuse bytes about to go straight to a spool if they hold the multipart delimiter.

        The file's header declared them its own, but a delimiter ends the part
        there, whatever the header says: the parser would have ended it, so the
        answer is the same however the client's body was cut into reads (the
        file is shorter than its header declares, 422).
        """
        delimiter = self.delimiter
        keep = len(delimiter) - 1
        if byte_search.find(chunk, delimiter, start, end) >= 0 or (
                self.bypass_tail and (self.bypass_tail + chunk[start: min(end, start + keep)]).find(delimiter) >= 0):
            self.error = self._ends_early()
            raise self.error
        self.bypass_tail = bytes(self.bypass_tail + chunk[max(start, end - keep): end])[-keep:]

    def known_file_bytes(self, chunk: bytes, position: int) -> int:
        """How many bytes of `chunk` from `position` on are the current file's own, by its declared length."""
        return min(self.bytes_due(), len(chunk) - position)

    def bytes_due(self) -> int:
        """Bytes of the current file still to come by its declared length, which may skip the parser.

        0 unless a file part is open, its length is known, and the parser holds nothing back.
        """
        if self.spool is None or self.declared_end is None or not self.parser_clean or self.error is not None:
            return 0
        return max(0, self.declared_end - self.raw_files[self.part_name][2])

    def take_due(self, data: bytes | bytearray, start: int, end: int) -> None:
        """`data[start:end]` are the current file's own bytes (`bytes_due`): to its spool, past the parser.

        Raises the collector's error (a delimiter among them, a limit passed) as soon as it is set.
        """
        self.check_bypassed(data, start, end)
        self.on_part_data(data, start, end)
        if self.error is not None:
            raise self.error

    def parser_span_end(self, chunk: bytes, position: int) -> int:
        """Where the bytes fed to the parser from `position` should stop: the chunk's end, or, when the
        current file's declared length is known but the parser may hold part of a boundary, just past the
        first byte that cannot belong to one (so the bytes after it can bypass the parser).  Only the next
        `CLEAN_BYTE_SEARCH` bytes are looked at: data made of the boundary's own bytes goes to the parser."""
        if self.spool is None or self.declared_end is None or self.parser_clean:
            return len(chunk)
        for index in range(position, min(len(chunk), position + CLEAN_BYTE_SEARCH)):
            if chunk[index] not in self.delimiter_bytes:
                return index + 1
        return len(chunk)

    def unfinished_part(self) -> MalformedUpload | None:
        """The error for a body that ended inside a file part (no closing boundary), if it did."""
        if self.spool is None:
            return None
        written = self.raw_files[self.part_name][2]
        if self.declared_end is not None and written < self.declared_end:
            return MalformedUpload(
                f"the body ended {written} bytes into the file part {self.part_name!r}, whose header declares "
                f"{self.declared_end}: the file is shorter than its header says, or the body was cut off",
                field=self.part_name)
        return MalformedUpload(f"the multipart body ended inside the file part {self.part_name!r} after "
                               f"{written} bytes, without a closing boundary", field=self.part_name)

    def _announce(self, path: Path) -> None:
        """Tell `on_arriving` that the arriving file's first bytes are in (once, if it is a tensor file)."""
        self.announced = True
        assert self.on_arriving is not None and self.recorder is not None
        with path.open("rb") as handle:
            kind = sniff_format(handle.read(SNIFF_BYTES))
        if kind is not None:
            self.on_arriving(ArrivingFile(
                self.part_name, path, kind, self.recorder,
                {name: list(values) for name, values in self.fields.items()}, dict(self.completed), self.directory))

    def _ends_early(self) -> TensorFileError:
        """The error for a file part that a multipart delimiter ends before its declared length."""
        name = self.part_name
        return TensorFileError(f"the file in field {name!r} ends at a multipart boundary before the "
                               f"{self.declared_end} bytes its header declares", field=name)

    def _delimiter_across_declared_end(self, path: Path, written: int) -> bool:
        """Whether a multipart delimiter begins before the file's declared end and runs past it.

        The bytes up to the declared end went to the spool past the parser,
        which then saw only the rest of that delimiter, no boundary, and took
        what followed (the next parts) as more of the file: the file is really
        shorter than its header declares, as the parser alone would have found.
        """
        assert self.declared_end is not None
        size = len(self.delimiter)
        start = max(0, self.declared_end - size + 1)
        with open(path, "rb") as handle:
            handle.seek(start)
            window = handle.read(min(written, self.declared_end + size - 1) - start)
        index = window.find(self.delimiter)
        return index >= 0 and start + index < self.declared_end

    def on_part_end(self) -> None:
        if self.spool is not None:
            _, path, written = self.raw_files[self.part_name]
            if (self.error is None and self.declared_end is not None and written > self.declared_end
                    and self._delimiter_across_declared_end(path, written)):
                self.error = self._ends_early()
            self.spool.finish(written)
            self.spool = None
            self.completed[self.part_name] = path
            if self.recorder is not None and self.part_name == self.arriving_field:
                self.recorder.complete(written)
        if self.text is not None:
            self.fields.setdefault(self.part_name, []).append(self.text.decode("utf-8", "replace"))
            self.text = None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.recorder is not None and not self.recorder.ended:
            self.recorder.abandon()


def _parser(boundary: bytes, collector: _Collector) -> MultipartParser:
    """python-multipart's streaming parser, calling `collector` back."""
    return MultipartParser(boundary, callbacks={
        "on_part_begin": collector.on_part_begin,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
    })


def _feed(chunk: bytes, parser: MultipartParser, collector: _Collector) -> None:
    """One network chunk: a known file's own bytes straight to its spool, the rest through the parser.

    Raises the collector's error (a limit passed, a field with two files) as soon as it is set.
    """
    position = 0
    while position < len(chunk) and collector.error is None:
        known = collector.known_file_bytes(chunk, position)
        if known:
            collector.take_due(chunk, position, position + known)
            position += known
            continue
        collector.bypass_tail = b""
        end = collector.parser_span_end(chunk, position)
        parser.write(chunk if position == 0 and end == len(chunk) else chunk[position:end])
        collector.parser_clean = chunk[end - 1] not in collector.delimiter_bytes
        position = end
    if collector.error is not None:
        raise collector.error


def _finish(parser: MultipartParser, collector: _Collector) -> None:
    """The body has ended: flush the parser; a file part still open means the body was cut short (400)."""
    parser.finalize()
    if collector.error is not None:
        raise collector.error
    unfinished = collector.unfinished_part()
    if unfinished is not None:
        raise unfinished


#: RFC 2046: a boundary is 1 to 70 characters
MAX_BOUNDARY_BYTES = 70


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


@contextlib.asynccontextmanager
async def receive_upload(request: Request, settings: Settings,
                         file_fields: tuple[str, ...] = ("file", "calibration"),
                         on_arriving: Callable[[ArrivingFile], None] | None = None,
                         before_cleanup: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Upload]:
    """Stream a multipart body into a temp directory; yield the parsed `Upload`; always delete it.

    `on_arriving`, when given, is called (on the event loop, once) with the
    ``file`` part as soon as its first bytes are written, so a job can start
    on it while the rest arrives; its arrival record is marked complete when
    the part ends, and abandoned if the body fails before that.  `before_cleanup`
    is awaited first thing on the way out, whatever happened, before the spools
    are released for reuse (app/spool.py) and the directory removed: it must
    leave no job reading them (the early job is stopped there).

    Raises `LimitExceeded` (413) when the Content-Length, or the file bytes
    received so far, pass ``settings.max_upload_bytes``; `UnsupportedMediaType`
    (415) for a body that is not multipart or a file that is neither ``.npy``
    nor ``.safetensors`` by its magic bytes; `MalformedUpload` (400) for a
    broken multipart body.
    """
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    budget = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise LimitExceeded("max_upload_bytes", int(declared), settings.max_upload_bytes, field="file")
    directory = Path(tempfile.mkdtemp(prefix="nibble-upload-", dir=settings.temp_dir))
    spools: SpoolFiles = request.app.state.spools
    expected = int(declared) if declared is not None and declared.isdigit() else None
    collector = _Collector(directory, file_fields, settings, spools, expected, on_arriving, boundary=boundary)
    try:
        parser = _parser(boundary, collector)
        loop = asyncio.get_running_loop()
        idle, rate = settings.upload_idle_seconds, settings.upload_min_bytes_per_second
        started = last = loop.time()
        received = 0
        divert = request.scope.get("extensions", {}).get(BODY_DIVERT_EXTENSION)
        try:
            # One deadline: the next bytes are due within `idle` seconds, and the body may fall at most `idle`
            # seconds behind `rate` bytes per second.  A read only notes its time and size; one timer, when it
            # fires, finds the deadline those reads moved and waits for it, or ends the upload.
            async with asyncio.timeout(None) as deadline:

                def due() -> float:
                    return min(last + idle, started + idle + received / rate)

                def check() -> None:
                    nonlocal watchdog
                    when = due()
                    if loop.time() >= when:
                        deadline.reschedule(when)  # passed: asyncio.timeout cancels the task, TimeoutError below
                    else:
                        watchdog = loop.call_at(when, check)

                watchdog = loop.call_at(due(), check)

                def arrived(size: int) -> None:
                    nonlocal last, received
                    last = loop.time()
                    received += size

                def take_due(data: bytes | bytearray, start: int, end: int) -> None:
                    arrived(end - start)
                    collector.take_due(data, start, end)

                try:
                    async for chunk in request.stream():
                        arrived(len(chunk))
                        _feed(chunk, parser, collector)
                        bytes_due = collector.bytes_due()
                        if divert is not None and bytes_due >= MIN_DIVERTED_BYTES:
                            await divert(take_due, bytes_due)
                finally:
                    watchdog.cancel()
            _finish(parser, collector)
        except TimeoutError:
            if loop.time() - last >= idle:
                reason = f"sent no bytes for {idle:g} s"
            else:
                reason = (f"sent {received} bytes in {loop.time() - started:.0f} s, slower than the "
                          f"{rate:g} bytes per second an upload must keep up")
            raise UploadStalled(f"the upload {reason} (after {collector.file_bytes} file bytes)", field="file",
                                headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise
        except (LimitExceeded, MalformedUpload, TensorFileError):
            raise
        except Exception as exc:
            raise MalformedUpload(f"the multipart body cannot be parsed: {exc}") from exc
        finally:
            collector.close()
        upload = Upload(fields=collector.fields, directory=directory)
        for name, (filename, path, size) in collector.raw_files.items():
            with path.open("rb") as handle:
                kind = sniff_format(handle.read(SNIFF_BYTES))
            if kind is None and name not in UNTYPED_FILE_FIELDS:
                raise UnsupportedMediaType(
                    f"the file in field {name!r} ({filename or 'unnamed'}, {size} bytes) is neither "
                    ".npy nor .safetensors by its first bytes", field=name)
            upload.files[name] = UploadedFile(name, filename, path, size, kind)
        yield upload
    finally:
        try:
            if before_cleanup is not None:
                await before_cleanup()
        finally:
            collector.close()
            if collector.recorder is not None:
                collector.recorder.close()
            for spool in collector.opened:
                spools.release(spool)
            shutil.rmtree(directory, ignore_errors=True)


def new_output_path(upload: Upload, suffix: str) -> Path:
    """A fresh path inside the upload's temp directory for a job's output (removed with it)."""
    handle, name = tempfile.mkstemp(prefix="out-", suffix=suffix, dir=upload.directory)
    os.close(handle)
    return Path(name)
