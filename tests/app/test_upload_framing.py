"""A file part's bytes skip the multipart parser once its header declares its length: nothing else may change.

These tests drive the server's own parser and collector (app/uploads.py) with
the same body cut into network chunks in many ways, including cuts right after
a byte that could begin the boundary, and compare what they collect with the
body's real parts.
"""

from __future__ import annotations

import io
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import uploads
from app.problems import MalformedUpload
from app.spool import SpoolFiles
from app.uploads import _Collector, _feed, _finish, _parser
from quant_core.errors import TensorFileError
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


def multipart(parts: list[tuple[str, bytes, bool]], boundary: bytes = BOUNDARY) -> bytes:
    """A form body: (name, content, is_file) parts in order, closed by the final boundary."""
    body = b""
    for name, content, is_file in parts:
        filename = b'; filename="%s.bin"' % name.encode() if is_file else b""
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() + b'"' + filename
        body += b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


class _CountingParser:
    """The server's parser, counting the bytes it is fed."""

    def __init__(self, collector: _Collector) -> None:
        self.parser = _parser(BOUNDARY, collector)
        self.fed = 0

    def write(self, data: bytes) -> int:
        self.fed += len(data)
        return self.parser.write(data)

    def finalize(self) -> None:
        self.parser.finalize()


def collect(body: bytes, cuts: list[int], directory: Path, counter: list[int] | None = None
            ) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """Feed `body` cut at `cuts` through the server's parser; the files' bytes and the text fields.

    `counter`, when given, gets the number of bytes the multipart parser itself saw appended.
    """
    collector = _Collector(directory, ("file", "calibration"), make_settings(), SpoolFiles(0, directory), None,
                           boundary=BOUNDARY)
    parser = _CountingParser(collector)
    edges = [0, *sorted(set(cuts)), len(body)]
    try:
        for start, stop in itertools.pairwise(edges):
            if stop > start:
                _feed(body[start:stop], parser, collector)  # type: ignore[arg-type]
        _finish(parser, collector)  # type: ignore[arg-type]
        if counter is not None:
            counter.append(parser.fed)
        files = {name: path.read_bytes()[:size] for name, (_, path, size) in collector.raw_files.items()}
        return files, collector.fields
    finally:
        collector.close()
        for spool in collector.opened:
            spool.close()


WEIGHTS = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
# data full of the boundary's first bytes, where the parser holds partly matched boundaries back
_NEAR_MISS = b"\r\n--" + BOUNDARY[:12] + b"\r\n-"
DELIMITER_HEAVY = np.frombuffer((_NEAR_MISS * 2000)[: 64 * 96 * 4], dtype=np.float32).reshape(64, 96)


@pytest.mark.parametrize("content", [npy_bytes(WEIGHTS), safetensors_bytes(WEIGHTS), npy_bytes(DELIMITER_HEAVY)],
                         ids=["npy", "safetensors", "npy-of-boundary-bytes"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=30_000), max_size=12))
def test_files_and_fields_arrive_whole_however_the_body_is_cut(content: bytes, cuts: list[int],
                                                               tmp_path: Path) -> None:
    calibration = npy_bytes(np.ones((4, 96), dtype=np.float32))
    body = multipart([("method", b"rtn", False), ("file", content, True), ("calibration", calibration, True),
                      ("group_size", b"32", False)])
    files, fields = collect(body, [cut % len(body) for cut in cuts], tmp_path)
    assert files == {"file": content, "calibration": calibration}
    assert fields == {"method": ["rtn"], "group_size": ["32"]}


def test_the_parser_sees_the_part_headers_and_boundaries_but_not_a_declared_file_body(tmp_path: Path) -> None:
    content = npy_bytes(np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32))  # 1 MiB
    body = multipart([("method", b"rtn", False), ("file", content, True)])
    cuts = list(range(4096, len(body), 65536))  # network-sized chunks
    fed: list[int] = []
    files, _ = collect(body, cuts, tmp_path, fed)
    assert files == {"file": content}
    assert fed[0] < 4096 + 65536 + 1024  # the first chunk (it holds the header) and the framing, not 1 MiB


def test_a_cut_just_after_every_byte_of_the_file_end_still_finds_the_boundary(tmp_path: Path) -> None:
    content = npy_bytes(WEIGHTS)
    body = multipart([("file", content, True), ("method", b"clip", False)])
    end = body.index(content) + len(content)
    for cut in range(end - 8, end + 12):
        files, fields = collect(body, [body.index(content) + 200, cut], tmp_path)
        assert files == {"file": content} and fields == {"method": ["clip"]}, cut


def test_a_file_longer_than_its_header_declares_is_kept_whole_for_the_reader_to_refuse(tmp_path: Path) -> None:
    content = npy_bytes(WEIGHTS) + b"trailing bytes the header does not declare"
    files, _ = collect(multipart([("file", content, True)]), [300], tmp_path)
    assert files == {"file": content}


# up to 40 bytes short, the delimiter after the file runs across its declared end: the bytes up to that end skip
# the parser, which then never sees a whole boundary (and used to take the next part as more of the file)
@pytest.mark.parametrize("short_by", [1, 2, 3, 20, 39, 40, 41, 1000])
def test_a_file_shorter_than_its_header_declares_ends_at_its_boundary(tmp_path: Path, short_by: int) -> None:
    content = npy_bytes(WEIGHTS)[:-short_by]
    body = multipart([("file", content, True), ("method", b"clip", False)])
    declared_end = body.index(content) + len(content) + short_by
    for cuts in ([300], [300, declared_end], [300, declared_end - 1, declared_end + 1], [300, len(body) - 20]):
        with pytest.raises(TensorFileError, match="'file' ends at a multipart boundary before the 24704 bytes"):
            collect(body, cuts, tmp_path)


def test_a_body_cut_off_inside_a_declared_file_is_malformed(tmp_path: Path) -> None:
    body = multipart([("file", npy_bytes(WEIGHTS), True)])
    cut_short = body[: body.index(b"\x93NUMPY") + 5000]
    shorter = r"ended \d+ bytes into the file part 'file', whose header declares \d+: the file is shorter"
    with pytest.raises(MalformedUpload, match=shorter):
        collect(cut_short, [300], tmp_path)


def test_a_body_without_its_closing_boundary_is_malformed(tmp_path: Path) -> None:
    content = b"not a tensor file, so its length is unknown"
    body = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + content
    with pytest.raises(MalformedUpload, match="without a closing boundary"):
        collect(body, [], tmp_path)


def test_a_file_with_an_unreadable_header_goes_through_the_parser_unchanged(tmp_path: Path) -> None:
    content = b"\x93NUMPY\x01\x00\x10\x00{'descr': <bad>}\n" + bytes(5000)
    files, _ = collect(multipart([("file", content, True)]), [20, 4000], tmp_path)
    assert files == {"file": content}


def test_a_header_sent_a_byte_at_a_time_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = uploads.declared_layout

    def counting(prefix: bytes, *args: object, **kwargs: object) -> object:
        calls.append(len(prefix))
        return real(prefix, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(uploads, "declared_layout", counting)
    content = npy_bytes(WEIGHTS)
    body = multipart([("file", content, True)])
    files, _ = collect(body, list(range(1, 400)), tmp_path)  # the part headers and the .npy header byte by byte
    assert files == {"file": content}
    assert calls == [len(content) - WEIGHTS.nbytes]  # once, on exactly the header


def test_a_file_made_of_the_boundarys_own_bytes_goes_through_the_parser(tmp_path: Path) -> None:
    content = npy_bytes(DELIMITER_HEAVY)
    body = multipart([("file", content, True)])
    fed: list[int] = []
    files, _ = collect(body, list(range(1000, len(body), 4096)), tmp_path, fed)
    assert files == {"file": content}
    assert fed[0] > len(content) // 2  # no byte after which to bypass it safely is found nearby: parsed, not skipped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=30_000), max_size=6))
def test_a_boundary_inside_the_declared_length_ends_the_file_however_the_body_is_cut(cuts: list[int],
                                                                                    tmp_path: Path) -> None:
    # a header declaring 64 x 96 float32, only 1,000 data bytes, the closing delimiter, then padding up to the
    # declared length: the parser ends the file at the delimiter; bytes skipping it must not carry it in
    declared = npy_bytes(WEIGHTS)
    short = declared[:128 + 1000]
    body = multipart([("file", short, True)])
    body += b"A" * (len(declared) - len(short)) + b"\r\n--" + BOUNDARY + b"--\r\n"
    try:
        files, _ = collect(body, [cut % len(body) for cut in cuts], tmp_path)
    except TensorFileError as refused:
        assert "ends at a multipart boundary" in str(refused)
    else:
        assert files == {"file": short}  # shorter than its header: the reader refuses it (422)
