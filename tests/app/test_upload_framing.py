"""The multipart framing of an upload: the answer never depends on how the body was cut into reads.

These tests drive the server's own collector and parser (app/uploads.py) with
a body cut into network reads in many ways, including cuts inside a near-miss
of the delimiter, and compare what they collect (or the error they raise) with
the body's real parts and with the same body in one read.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors

from app.problems import MalformedUpload
from app.uploads import (
    MAX_PARTS,
    MAX_PENDING_SLICES,
    FormLimits,
    SpoolWriter,
    Writes,
    _Collector,
    _stream,
    _write_slices,
)
from tests.app.conftest import make_settings

BOUNDARY = b"----nibbleTestBoundary7MA4YWxkTrZu0gW"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def safetensors_bytes(array: np.ndarray) -> bytes:
    header = (b'{"w":{"dtype":"F32","shape":[%d,%d],"data_offsets":[0,%d]}}'
              % (array.shape[0], array.shape[1], array.nbytes))
    return struct.pack("<Q", len(header)) + header + array.tobytes()


def multipart(parts: list[tuple[str, bytes, bool]], boundary: bytes = BOUNDARY, close: bytes = b"--\r\n") -> bytes:
    """A form body: (name, content, is_file) parts in order, then the last delimiter followed by `close`."""
    body = b""
    for name, content, is_file in parts:
        filename = b'; filename="%s.bin"' % name.encode() if is_file else b""
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() + b'"' + filename
        body += b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + close


def collect(body: bytes, cuts: list[int], directory: Path) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """Feed `body` cut at `cuts` to the server's collector; the files' bytes and the text fields."""
    collector = _Collector(directory, FormLimits(("file", "calibration")), make_settings())
    parser = collector.parser(BOUNDARY)
    edges = [0, *sorted({cut % len(body) for cut in cuts}), len(body)]
    try:
        for start, stop in itertools.pairwise(edges):
            if stop > start:
                collector.feed(parser, body[start:stop])
        parser.finalize()
        collector.finish()
        collector.flush()  # the server hands these writes to its spool thread (SpoolWriter)
        files = {name: path.read_bytes() for name, _, path, _size in collector.raw_files}
        assert all(len(files[name]) == size for name, _, _path, size in collector.raw_files)
        return files, collector.fields
    finally:
        collector.discard()


def outcome(body: bytes, cuts: list[int], directory: Path) -> object:
    """What the collector makes of `body` cut at `cuts`: its files and fields, or its error's type and text."""
    try:
        return collect(body, cuts, directory)
    except MalformedUpload as refused:
        return type(refused).__name__, str(refused)


WEIGHTS = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
# data full of the delimiter's first bytes, where the parser holds partly matched delimiters back
_NEAR_MISS = b"\r\n--" + BOUNDARY[:12] + b"\r\n-"
DELIMITER_HEAVY = np.frombuffer((_NEAR_MISS * 2000)[: 64 * 96 * 4], dtype=np.float32).reshape(64, 96)
# issue 17, item 12: file data holding the whole delimiter followed by a byte that makes it no delimiter
ALMOST_DELIMITER = b"\r\n--" + BOUNDARY + b"x"
WITH_ALMOST_DELIMITER = npy_bytes(WEIGHTS)[:300] + ALMOST_DELIMITER + npy_bytes(WEIGHTS)[300 + len(ALMOST_DELIMITER):]


@pytest.mark.parametrize("content", [npy_bytes(WEIGHTS), safetensors_bytes(WEIGHTS), npy_bytes(DELIMITER_HEAVY),
                                     WITH_ALMOST_DELIMITER],
                         ids=["npy", "safetensors", "npy-of-delimiter-bytes", "npy-holding-delimiter-then-x"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=30_000), max_size=12))
def test_files_and_fields_arrive_whole_however_the_body_is_cut(content: bytes, cuts: list[int],
                                                               tmp_path: Path) -> None:
    calibration = npy_bytes(np.ones((4, 96), dtype=np.float32))
    body = multipart([("method", b"rtn", False), ("file", content, True), ("calibration", calibration, True),
                      ("group_size", b"32", False)])
    files, fields = collect(body, cuts, tmp_path)
    assert files == {"file": content, "calibration": calibration}
    assert fields == {"method": ["rtn"], "group_size": ["32"]}


def test_data_holding_the_delimiter_then_x_is_file_data_with_the_body_cut_at_any_byte_around_it(
        tmp_path: Path) -> None:
    # issue 17, item 12: this was 200 in one read and 422 when the body was cut after the .npy header
    body = multipart([("file", WITH_ALMOST_DELIMITER, True), ("method", b"clip", False)])
    at = body.index(ALMOST_DELIMITER)
    expected = ({"file": WITH_ALMOST_DELIMITER}, {"method": ["clip"]})
    assert collect(body, [], tmp_path) == expected
    for cut in range(at - 2, at + len(ALMOST_DELIMITER) + 2):
        assert collect(body, [cut], tmp_path) == expected, cut
        assert collect(body, [128, cut], tmp_path) == expected, cut


BODIES = {
    "fields and files": multipart([("method", b"rtn", False), ("file", WITH_ALMOST_DELIMITER, True),
                                   ("calibration", npy_bytes(DELIMITER_HEAVY), True)]),
    "no closing dashes": multipart([("file", WITH_ALMOST_DELIMITER, True)], close=b"\r\n"),
    "cut inside the file": multipart([("file", WITH_ALMOST_DELIMITER, True)])[:5000],
    "epilogue after the close": multipart([("file", npy_bytes(WEIGHTS), True)]) + b"epilogue " * 10,
}


@pytest.mark.parametrize("name", list(BODIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=60_000), max_size=16))
def test_the_answer_is_the_same_as_for_the_body_in_one_read_wherever_it_is_cut(name: str, cuts: list[int],
                                                                               tmp_path: Path) -> None:
    body = BODIES[name]
    assert outcome(body, cuts, tmp_path) == outcome(body, [], tmp_path)


@pytest.mark.parametrize("close", [b"", b"\r\n", b"\r\n\r\n", b"-", b"-\r\n"],
                         ids=["nothing", "crlf", "crlf-crlf", "one-dash", "one-dash-crlf"])
def test_a_body_whose_last_delimiter_lacks_its_closing_dashes_is_malformed(close: bytes, tmp_path: Path) -> None:
    # issue 17, item 11: this was 200; RFC 2046's close-delimiter is the boundary followed by "--"
    body = multipart([("method", b"rtn", False), ("file", npy_bytes(WEIGHTS), True)], close=close)
    with pytest.raises(MalformedUpload, match=r"without its closing delimiter \(--boundary--\)"):
        collect(body, [], tmp_path)


def test_a_body_cut_off_inside_a_file_is_malformed_naming_the_file(tmp_path: Path) -> None:
    body = multipart([("file", npy_bytes(WEIGHTS), True)])
    with pytest.raises(MalformedUpload, match="inside the part 'file' without its closing delimiter") as refused:
        collect(body[: body.index(b"\x93NUMPY") + 5000], [300], tmp_path)
    assert refused.value.field == "file"


def test_an_empty_body_is_malformed_naming_the_body(tmp_path: Path) -> None:
    with pytest.raises(MalformedUpload, match="without its closing delimiter") as refused:
        collect(b"", [], tmp_path)
    assert refused.value.field == "body"


def test_a_body_of_more_parts_than_a_form_has_is_refused_at_the_first_part_too_many(tmp_path: Path) -> None:
    fields = [(f"field{index}", b"", False) for index in range(MAX_PARTS + 1)]
    assert collect(multipart(fields[:MAX_PARTS]), [], tmp_path)[1]["field0"] == [""]
    with pytest.raises(MalformedUpload, match=f"more than {MAX_PARTS} parts") as refused:
        collect(multipart(fields), [], tmp_path)
    assert refused.value.field == "body"


def test_a_file_in_a_field_the_route_does_not_read_is_refused_naming_it(tmp_path: Path) -> None:
    body = multipart([("weights", npy_bytes(WEIGHTS), True)])
    with pytest.raises(MalformedUpload, match="reads files from") as refused:
        collect(body, [], tmp_path)
    assert refused.value.field == "weights"


def _without_seconds(answer: object) -> object:
    """An answer with the timing figures (the only ones that vary between runs) left out."""
    if isinstance(answer, dict):
        return {key: _without_seconds(value) for key, value in answer.items() if key != "seconds"}
    if isinstance(answer, list):
        return [_without_seconds(value) for value in answer]
    return answer


async def _post_in_pieces(body: bytes, cuts: list[int]) -> tuple[int, object]:
    """POST /v1/quantize with `body` handed to the app in the pieces `cuts` make (one ASGI message each)."""
    import httpx

    from app.main import create_app

    edges = [0, *sorted({cut % len(body) for cut in cuts}), len(body)]

    async def pieces() -> AsyncIterator[bytes]:
        for start, stop in itertools.pairwise(edges):
            if stop > start:
                yield body[start:stop]

    app = create_app(make_settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/quantize", content=pieces(), headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
    app.state.pool.close()
    return response.status_code, _without_seconds(response.json())


# a file that is quantized (its float tensor) with the near-delimiter in data that passes through (bytes)
MIXED = save_safetensors({"raw": np.frombuffer(ALMOST_DELIMITER * 3, dtype=np.uint8).reshape(3, -1), "w": WEIGHTS})
HTTP_BODIES = {
    "answered": multipart([("method", b"clip", False), ("group_size", b"32", False), ("file", MIXED, True)]),
    "no closing dashes": multipart([("file", WITH_ALMOST_DELIMITER, True)], close=b"\r\n"),
}


@pytest.mark.parametrize("name", list(HTTP_BODIES))
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=60_000), max_size=10))
def test_the_http_answer_is_the_same_however_the_body_is_cut_into_reads(name: str, cuts: list[int]) -> None:
    # issue 17, item 12: file data holding "\r\n--<boundary>x" was 200 in one read and 422 when cut after the header
    body = HTTP_BODIES[name]
    whole = asyncio.run(_post_in_pieces(body, []))
    assert whole[0] == (200 if name == "answered" else 400)
    assert asyncio.run(_post_in_pieces(body, cuts)) == whole


def test_the_spool_writer_finishes_writes_the_system_cuts_short_and_keeps_each_files_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda descriptor, views: real_writev(descriptor, [bytes(views[0])[:3]]))
    first, second = tmp_path / "part-0", tmp_path / "part-1"
    descriptors = [os.open(path, os.O_WRONLY | os.O_CREAT) for path in (first, second)]
    pieces = [(descriptors[0], b"alpha-"), (descriptors[0], b"beta-"), (descriptors[1], b"gamma"),
              (descriptors[0], b"delta")]
    _write_slices([(descriptor, memoryview(piece)) for descriptor, piece in pieces], descriptors)
    assert first.read_bytes() == b"alpha-beta-delta"
    assert second.read_bytes() == b"gamma"
    for descriptor in descriptors:  # closed after their writes
        with pytest.raises(OSError):
            os.fstat(descriptor)


def test_a_body_in_tiny_reads_is_handed_to_the_spool_thread_every_max_pending_slices(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = npy_bytes(WEIGHTS)
    body = multipart([("file", content, True)])
    handed: list[int] = []
    write = SpoolWriter.write

    async def counting_write(self: SpoolWriter, writes: Writes, closing: list[int]) -> None:
        handed.append(len(writes))
        await write(self, writes, closing)

    monkeypatch.setattr(SpoolWriter, "write", counting_write)

    class OneByteReads:
        async def stream(self) -> AsyncIterator[bytes]:
            for index in range(len(body)):
                yield body[index:index + 1]

    collector = _Collector(tmp_path, FormLimits(("file",)), make_settings())
    asyncio.run(_stream(OneByteReads(), make_settings(), collector, BOUNDARY, SpoolWriter()))  # type: ignore[arg-type]
    assert len(content) > 4 * MAX_PENDING_SLICES
    assert max(handed) <= MAX_PENDING_SLICES + 1  # a read can end a part: its slice and the next part's
    assert collector.raw_files[0][2].read_bytes() == content
