"""Resumable uploads of a checkpoint's files by the tus protocol 1.0.0 (core, creation, termination, expiration).

An *upload set* is a checkpoint directory being uploaded: ``POST /v1/uploads``
makes one, each of its files (the shards, the index, config.json, the
tokenizer files) is a tus upload created at its tus endpoint
``/v1/uploads/{set}/files``, and once every file is complete a job takes the
set as its source (``{"source": {"upload": "<set id>"}}``).  A set nobody has
touched for ``upload_expiry_seconds`` (no file created, no byte appended) and
no queued or running job reads is removed when the next set is created, so
abandoned sets cannot hold ``upload_max_sets`` places for ever (the expiration
extension: creation and PATCH answers carry ``Upload-Expires``).  Any tus 1.0.0
client resumes an interrupted file: it asks the offset (HEAD) and sends the
rest (PATCH from that offset).

On disk, under ``<upload dir>/<set id>/``: ``meta/<file id>.json`` holds a
file's name and declared length; ``partial/<file id>`` the bytes received so
far, appended in order (its size *is* the offset, so a restart, or a kill,
loses nothing that reached the disk); ``files/<name>`` the complete file,
synced and renamed there when its last byte arrives (or, should a kill come
between the two, when the file is next read).  ``files/`` is the
directory a job reads, with the set itself as the root nothing may leave.

Refused, each with problem+json: a ``Tus-Resumable`` other than 1.0.0 (412,
with ``Tus-Version``), a PATCH that is not ``application/offset+octet-stream``
(415), whose ``Upload-Offset`` is not where the upload stands (409), or that
runs past the declared length (413, saying offset + bytes sent against it); a
creation deferring its length (``Upload-Defer-Length: 1``: 501, no
creation-defer-length here; another value, or beside ``Upload-Length``: 400), or a PATCH carrying
``Upload-Length`` (400: no length is deferred); a file over ``upload_max_file_bytes``,
a set past ``upload_max_set_bytes`` / ``upload_max_files``, more than
``upload_max_sets`` sets (413); a file longer than the free disk (507); a file
name that is not a plain name, or one the set already has (422 / 409).  A
PATCH body pausing ``upload_idle_seconds`` or falling behind
``upload_min_bytes_per_second`` is cut off with 408, like any upload; the
bytes it delivered are kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

from app.problems import ApiProblem, ItemNotFound, UnsupportedMediaType, UploadStalled
from app.settings import Settings
from app.uploads import body_due, stall_reason
from quant_core.errors import InvalidSpec, LimitExceeded

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
PATCH_MEDIA_TYPE = "application/offset+octet-stream"
#: bytes gathered from the network before one write (a worker-thread hop per 64 KiB chunk would cost more)
WRITE_BATCH_BYTES = 1 << 20
#: a file name in a set: a plain name, as checkpoint directories hold (no directory, nothing hidden)
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class TusVersionUnsupported(ApiProblem):
    """A request whose ``Tus-Resumable`` is missing or not a version this server speaks (tus: 412)."""

    status, title, slug = 412, "Unsupported tus version", "tus-version-unsupported"


class UploadConflict(ApiProblem):
    """An ``Upload-Offset`` that is not where the upload stands, a name the set already has, a set not yet
    complete, or one a running job reads (409)."""

    status, title, slug = 409, "Conflict", "upload-conflict"


class UploadLocked(ApiProblem):
    """Another PATCH to the same file is still being received (423, as tusd answers)."""

    status, title, slug = 423, "Locked", "upload-locked"


class InsufficientStorage(ApiProblem):
    """A file longer than the free space where upload sets are kept (RFC 4918 §11.5: 507)."""

    status, title, slug = 507, "Insufficient storage", "insufficient-storage"


class MalformedTusRequest(ApiProblem):
    """A tus header that is missing or not what the protocol allows (400)."""

    status, title, slug = 400, "Malformed tus request", "malformed-tus-request"


class TusExtensionNotSupported(ApiProblem):
    """A request for a tus extension this server does not offer (``Upload-Defer-Length: 1`` without
    creation-defer-length): 501, as tusd answers it (``ErrNotImplemented``) and RFC 9110 §15.6.2 defines it."""

    status, title, slug = 501, "Tus extension not supported", "tus-extension-not-supported"


class PastUploadLength(LimitExceeded):
    """A PATCH whose bytes, from its ``Upload-Offset``, run past the file's declared ``Upload-Length`` (413).

    Its `value` is where the bytes would end (offset + bytes sent, or at least that for a body without
    Content-Length, cut off when it passes the end), its `maximum` the declared length."""

    def __init__(self, offset: int, sent: int, length: int, *, field: str, kept: int) -> None:
        super().__init__("Upload-Length", offset + sent, length, field=field)
        at_least = "" if field == "Content-Length" else "at least "
        self.detail = (f"the PATCH sends {at_least}{sent} bytes at Upload-Offset {offset}: they would end at byte "
                       f"{offset + sent}, past the declared Upload-Length of {length} ({length - offset} bytes "
                       f"remain); " + (f"the first {kept} were kept (HEAD tells the offset)" if kept
                                       else "nothing was written"))


def check_tus_resumable(request: Request, *, required: bool = True) -> None:
    """Refuse (412) a request whose ``Tus-Resumable`` is not 1.0.0 (or is missing, where it is `required`)."""
    version = request.headers.get("tus-resumable")
    if version is None and not required:
        return
    if version != TUS_VERSION:
        raise TusVersionUnsupported(f"Tus-Resumable {version!r} is not supported; this server speaks tus "
                                    f"{TUS_VERSION}", field="Tus-Resumable", headers={"Tus-Version": TUS_VERSION})


def check_defer_length(request: Request) -> None:
    """Refuse a creation that defers its length: this server does not offer creation-defer-length (it is not in
    ``Tus-Extension``), and a file's length bounds it before its first byte is taken.

    tus 1.0.0 (Creation, POST) says a request carries ``Upload-Length`` or ``Upload-Defer-Length: 1``; any other
    value of ``Upload-Defer-Length`` "should" be 400, and a length that is not deferred MUST omit the header, so
    both at once are 400 as well.  What a server without the extension answers ``Upload-Defer-Length: 1`` the
    spec does not say: tusd, the reference server, answers 501 Not Implemented (``ErrNotImplemented``, when its
    store cannot defer lengths), which is RFC 9110's status for a function the server does not support."""
    defer = request.headers.get("upload-defer-length")
    if defer is None:
        return
    if defer != "1":
        raise MalformedTusRequest(f"Upload-Defer-Length must be 1 when sent (tus 1.0.0), got {defer!r}",
                                  field="Upload-Defer-Length")
    if request.headers.get("upload-length") is not None:
        raise MalformedTusRequest("Upload-Length and Upload-Defer-Length are both sent: a length that is known is "
                                  "not deferred (tus 1.0.0: the header MUST then be omitted)",
                                  field="Upload-Defer-Length")
    raise TusExtensionNotSupported(
        f"Upload-Defer-Length: 1 needs the creation-defer-length extension, which this server does not offer "
        f"(Tus-Extension: {TUS_EXTENSIONS}): declare the file's Upload-Length", field="Upload-Defer-Length")


def check_patch_length(request: Request) -> None:
    """Refuse (400) a PATCH that carries ``Upload-Length``: tus 1.0.0 sends it in a PATCH only to declare a length
    its creation deferred ("once set the length MUST NOT be changed"), and no length is deferred here, so the
    header could only change a declared length or repeat it.  tusd answers an upload whose length is not deferred
    the same (``ErrInvalidUploadLength``, 400), whatever the value; read and dropped, it let a client believe its
    file had grown."""
    if request.headers.get("upload-length") is not None:
        raise MalformedTusRequest(
            "Upload-Length in a PATCH declares a deferred length, and this file's is not deferred: its length is "
            "the Upload-Length its creation declared (HEAD tells it), which does not change", field="Upload-Length")


def parse_metadata(header: str | None) -> dict[str, str]:
    """The ``Upload-Metadata`` header's pairs: ``key base64(value)``, comma-separated (tus creation)."""
    pairs: dict[str, str] = {}
    for item in (header or "").split(","):
        if not item.strip():
            continue
        key, _, encoded = item.strip().partition(" ")
        if key in pairs:  # tus 1.0.0: "All keys MUST be unique"; which one was meant is not ours to guess
            raise MalformedTusRequest(f"Upload-Metadata gives the key {key!r} twice", field="Upload-Metadata")
        try:
            pairs[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise MalformedTusRequest(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text",
                                      field="Upload-Metadata") from exc
    return pairs


def header_integer(request: Request, name: str) -> int:
    """A non-negative integer header (Upload-Length, Upload-Offset), 400 when missing or malformed."""
    value = request.headers.get(name)
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:  # not '²': int() refuses it
        raise MalformedTusRequest(f"{name} must be a non-negative integer, got {value!r}", field=name)
    return int(value)


@dataclass(frozen=True, slots=True)
class UploadFile:
    """One file of a set: its id, name, declared length and the bytes received (its offset)."""

    id: str
    name: str
    length: int
    offset: int

    @property
    def complete(self) -> bool:
        return self.offset == self.length


async def paced_chunks(request: Request, idle_seconds: float, min_bytes_per_second: float
                       ) -> AsyncIterator[bytes]:
    """The request body's chunks, cut off with `UploadStalled` (408) when the next one is not due in time.

    The same deadline as multipart uploads (app/uploads.py): the next bytes
    within `idle_seconds`, and never more than `idle_seconds` behind
    `min_bytes_per_second` on average.
    """
    loop = asyncio.get_running_loop()
    started = last = loop.time()
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        due = body_due(started, last, received, idle_seconds, min_bytes_per_second)
        try:
            chunk = await asyncio.wait_for(anext(chunks), max(0.0, due - loop.time()))
        except StopAsyncIteration:
            return
        except TimeoutError:
            reason = stall_reason(started, last, received, loop.time(), idle_seconds, min_bytes_per_second)
            raise UploadStalled(f"the PATCH body {reason}; the bytes received are kept (HEAD tells the offset)",
                                field="body", headers={"Connection": "close"}) from None
        last = loop.time()
        received += len(chunk)
        yield chunk


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as sink:
        sink.write(data)


def _seal(partial: Path, final: Path) -> None:
    """Sync a complete file and move it to its name (a kill leaves it whole in one place or the other)."""
    with partial.open("rb+") as handle:
        os.fsync(handle.fileno())
    final.parent.mkdir(exist_ok=True)
    partial.replace(final)


class UploadSets:
    """The upload sets under `root` and their tus files (module docstring)."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.max_file_bytes = settings.upload_max_file_bytes
        self.max_set_bytes = settings.upload_max_set_bytes
        self.max_files = settings.upload_max_files
        self.max_sets = settings.upload_max_sets
        self.expiry_seconds = settings.upload_expiry_seconds
        self.idle_seconds = settings.upload_idle_seconds
        self.min_bytes_per_second = settings.upload_min_bytes_per_second
        self._locks: dict[str, asyncio.Lock] = {}

    # sets
    def set_ids(self) -> list[str]:
        return [path.name for path in self.root.iterdir() if UPLOAD_ID.fullmatch(path.name)] if self.root.is_dir() \
            else []

    def touched_at(self, set_id: str) -> float:
        """When the set last changed (POSIX seconds): a file created, sealed or removed changes its directories'
        modification times, a byte appended its partial file's."""
        directory = self.root / set_id
        times = [directory.stat().st_mtime]
        for sub in ("meta", "partial", "files"):
            with contextlib.suppress(FileNotFoundError):
                times.append((directory / sub).stat().st_mtime)
        with contextlib.suppress(FileNotFoundError), os.scandir(directory / "partial") as partials:
            times.extend(entry.stat().st_mtime for entry in partials)
        return max(times)

    def expires_at(self, set_id: str) -> float:
        """When the set becomes removable if nothing touches it (POSIX seconds)."""
        return self.touched_at(set_id) + self.expiry_seconds

    def remove_expired(self, now: float, read_by_jobs: set[str]) -> list[str]:
        """Remove the sets past their expiry that no job reads and no PATCH is writing; their ids."""
        receiving = {key.split("/")[0] for key in self._locks}
        removed = []
        for set_id in self.set_ids():
            if set_id in read_by_jobs or set_id in receiving:
                continue
            with contextlib.suppress(FileNotFoundError):  # a concurrent DELETE got there first
                if self.expires_at(set_id) <= now:
                    shutil.rmtree(self.root / set_id, ignore_errors=True)
                    removed.append(set_id)
        return removed

    def create_set(self) -> str:
        """A new, empty set; refused past ``upload_max_sets`` sets kept at once (each may hold
        ``upload_max_set_bytes``: together they bound the disk the sets may take)."""
        count = len(self.set_ids())
        if count + 1 > self.max_sets:
            raise LimitExceeded("upload_max_sets", count + 1, self.max_sets, field="body")
        set_id = uuid.uuid4().hex
        for sub in ("meta", "partial", "files"):
            (self.root / set_id / sub).mkdir(parents=True)
        return set_id

    def set_dir(self, set_id: str) -> Path:
        """The set's directory; 404 for an id that is not one."""
        if not UPLOAD_ID.fullmatch(set_id) or not (self.root / set_id / "meta").is_dir():
            raise ItemNotFound(f"no upload set with id {set_id!r}", field="id")
        return self.root / set_id

    def files(self, set_id: str) -> list[UploadFile]:
        """The set's files, by name."""
        meta = self.set_dir(set_id) / "meta"
        return sorted((self._file(set_id, path.stem) for path in meta.glob("*.json")), key=lambda f: f.name)

    def source_directory(self, set_id: str) -> Path:
        """The directory a job reads: refused (409) while a file is incomplete, or when the set has none."""
        files = self.files(set_id)
        waiting = [f"{f.name} ({f.offset} of {f.length} bytes)" for f in files if not f.complete]
        if not files or waiting:
            raise UploadConflict(f"upload set {set_id} is not complete: "
                                 + (f"waiting for {', '.join(waiting[:10])}" if waiting else "it holds no file"),
                                 field="source.upload")
        return self.set_dir(set_id) / "files"

    def delete_set(self, set_id: str) -> None:
        """Remove the set and its files; refused (423) while a PATCH to one of them is being received."""
        directory = self.set_dir(set_id)
        if any(key.startswith(f"{set_id}/") for key in self._locks):
            raise UploadLocked(f"a PATCH to a file of upload set {set_id} is still being received", field="id",
                               headers={"Retry-After": "1"})
        shutil.rmtree(directory, ignore_errors=True)

    # files (tus)
    def create_file(self, set_id: str, name: str | None, length: int) -> UploadFile:
        """A new tus upload of `length` bytes named `name` in the set (creation extension)."""
        directory = self.set_dir(set_id)
        if name is None:
            raise MalformedTusRequest("Upload-Metadata must name the file: filename <base64 of the name>",
                                      field="Upload-Metadata")
        if not FILE_NAME.fullmatch(name):
            raise InvalidSpec("Upload-Metadata", name, "a file name of a checkpoint directory: letters, digits, "
                              "'.', '_', '+', '-', not starting with '.', at most 255 characters, no directory")
        if length > self.max_file_bytes:
            raise LimitExceeded("upload_max_file_bytes", length, self.max_file_bytes, field="Upload-Length")
        files = self.files(set_id)
        if any(f.name == name for f in files):
            raise UploadConflict(f"upload set {set_id} already has a file named {name!r}; DELETE it first",
                                 field="Upload-Metadata")
        if len(files) + 1 > self.max_files:
            raise LimitExceeded("upload_max_files", len(files) + 1, self.max_files, field="Upload-Metadata")
        total = sum(f.length for f in files) + length
        if total > self.max_set_bytes:
            raise LimitExceeded("upload_max_set_bytes", total, self.max_set_bytes, field="Upload-Length")
        free = shutil.disk_usage(directory).free
        if length > free:
            raise InsufficientStorage(f"Upload-Length {length} is more than the {free} bytes free where upload sets "
                                      "are kept", field="Upload-Length")
        file_id = uuid.uuid4().hex
        (directory / "partial" / file_id).touch()
        (directory / "meta" / f"{file_id}.json").write_text(json.dumps({"name": name, "length": length}))
        if length == 0:
            _seal(directory / "partial" / file_id, directory / "files" / name)
        return self._file(set_id, file_id)

    def file(self, set_id: str, file_id: str) -> UploadFile:
        directory = self.set_dir(set_id)
        if not UPLOAD_ID.fullmatch(file_id) or not (directory / "meta" / f"{file_id}.json").is_file():
            raise ItemNotFound(f"upload set {set_id} has no file with id {file_id!r}", field="id")
        return self._file(set_id, file_id)

    def _file(self, set_id: str, file_id: str) -> UploadFile:
        directory = self.root / set_id
        meta: dict[str, Any] = json.loads((directory / "meta" / f"{file_id}.json").read_text())
        partial = directory / "partial" / file_id
        length = int(meta["length"])
        try:
            offset = partial.stat().st_size
        except FileNotFoundError:  # sealed: moved to its name (by a PATCH's thread, maybe since it was looked for)
            offset = length
        else:
            # whole, but a kill came before it was moved to its name; a PATCH still holding the file seals it
            # itself, in a thread: sealing it here too, one of the two found it gone (a 500)
            if offset == length and f"{set_id}/{file_id}" not in self._locks:
                _seal(partial, directory / "files" / str(meta["name"]))
        return UploadFile(file_id, str(meta["name"]), length, offset)

    async def append(self, set_id: str, file_id: str, request: Request) -> UploadFile:
        """Append a PATCH body at its ``Upload-Offset`` (core protocol); the file as it now stands."""
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != PATCH_MEDIA_TYPE:
            raise UnsupportedMediaType(f"a tus PATCH body is {PATCH_MEDIA_TYPE}, got {content_type or 'none'!r}",
                                       field="Content-Type")
        claimed = header_integer(request, "Upload-Offset")
        key = f"{set_id}/{file_id}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            raise UploadLocked(f"another PATCH to file {file_id} is still being received; retry once it ends",
                               field="id", headers={"Retry-After": "1"})
        async with lock:
            try:
                return await self._append_locked(set_id, file_id, claimed, request)
            finally:
                self._locks.pop(key, None)

    async def _append_locked(self, set_id: str, file_id: str, claimed: int, request: Request) -> UploadFile:
        current = self.file(set_id, file_id)
        if claimed != current.offset:
            raise UploadConflict(f"Upload-Offset {claimed} is not where the upload stands: {current.offset} of "
                                 f"{current.length} bytes are received (HEAD tells it)", field="Upload-Offset")
        remaining = current.length - current.offset
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > remaining:
            raise PastUploadLength(current.offset, int(declared), current.length, field="Content-Length", kept=0)
        partial = self.root / set_id / "partial" / file_id
        buffer = bytearray()
        received = 0
        try:
            async for chunk in paced_chunks(request, self.idle_seconds, self.min_bytes_per_second):
                if received + len(chunk) > remaining:
                    buffer += chunk[:remaining - received]
                    raise PastUploadLength(current.offset, received + len(chunk), current.length, field="body",
                                           kept=remaining)
                buffer += chunk
                received += len(chunk)
                if len(buffer) >= WRITE_BATCH_BYTES:
                    data, buffer = bytes(buffer), bytearray()
                    await asyncio.to_thread(_append, partial, data)
        finally:  # what arrived is kept, whatever stopped the body (a disconnect, a stall, an overrun)
            if buffer:
                await asyncio.shield(asyncio.to_thread(_append, partial, bytes(buffer)))
        if received and current.offset + received == current.length:  # sealed here (once), off the event loop
            await asyncio.to_thread(_seal, partial, self.root / set_id / "files" / current.name)
        return self._file(set_id, file_id)

    def delete_file(self, set_id: str, file_id: str) -> None:
        """Terminate an upload (termination extension): its bytes and its name are gone."""
        found = self.file(set_id, file_id)
        if self._locks.get(f"{set_id}/{file_id}") is not None:
            raise UploadLocked(f"a PATCH to file {file_id} is still being received", field="id",
                               headers={"Retry-After": "1"})
        directory = self.root / set_id
        with contextlib.suppress(FileNotFoundError):
            (directory / "partial" / file_id).unlink()
        if found.complete:
            with contextlib.suppress(FileNotFoundError):
                (directory / "files" / found.name).unlink()
        (directory / "meta" / f"{file_id}.json").unlink()
