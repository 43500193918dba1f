"""Upload spools (app/spool.py): unnamed temp files reused across uploads, within a byte budget."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from app.spool import KEEP_FILES, Spool, SpoolFiles
from tests.app.conftest import make_settings

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="unnamed temp files are Linux's O_TMPFILE")


@pytest.fixture
def spools(tmp_path: Path) -> Iterator[SpoolFiles]:
    files = SpoolFiles(8 * MiB, tmp_path)
    yield files
    files.close()


def _write(spool: Spool, data: bytes) -> None:
    spool.sink.write(data)
    spool.finish(len(data))


def test_a_part_within_the_budget_is_spooled_to_an_unnamed_file_readable_by_path(spools: SpoolFiles,
                                                                                tmp_path: Path) -> None:
    spool = spools.open(tmp_path / "part-0", 1 * MiB)
    assert spool.kept is not None
    assert spool.path == Path(f"/proc/{os.getpid()}/fd/{spool.kept}")
    _write(spool, b"abc" * 1000)
    assert spool.path.read_bytes() == b"abc" * 1000
    assert list(tmp_path.iterdir()) == []  # no name in the directory
    spools.release(spool)


def test_a_released_file_is_reused_and_cut_to_the_next_parts_exact_size(spools: SpoolFiles,
                                                                               tmp_path: Path) -> None:
    first = spools.open(tmp_path / "part-0", 2 * MiB)
    _write(first, b"\xaa" * (2 * MiB))
    spools.release(first)
    assert spools.idle_files == 1
    second = spools.open(tmp_path / "part-0", 1 * MiB)
    assert second.kept == first.kept  # the same pages, overwritten
    _write(second, b"\x55" * 1000)
    assert second.path.read_bytes() == b"\x55" * 1000  # nothing of the earlier upload is left past the end
    spools.release(second)


def test_a_part_larger_than_the_budget_or_of_unknown_size_is_spooled_to_disk(spools: SpoolFiles,
                                                                             tmp_path: Path) -> None:
    for expected in (9 * MiB, None):
        spool = spools.open(tmp_path / "part-0", expected)
        assert spool.kept is None
        assert spool.path == tmp_path / "part-0"
        _write(spool, b"xyz")
        assert (tmp_path / "part-0").read_bytes() == b"xyz"
        spools.release(spool)
    assert spools.held_bytes == 0


def test_bytes_in_use_and_kept_never_exceeds_the_budget(spools: SpoolFiles, tmp_path: Path) -> None:
    first = spools.open(tmp_path / "a", 5 * MiB)
    second = spools.open(tmp_path / "b", 5 * MiB)  # 10 MiB would pass the 8 MiB budget: disk
    assert first.kept is not None and second.kept is None
    assert spools.held_bytes == 5 * MiB
    _write(first, bytes(5 * MiB))
    spools.release(first)
    spools.release(second)
    assert spools.held_bytes == 5 * MiB and spools.idle_files == 1
    third = spools.open(tmp_path / "c", 7 * MiB)  # the kept 5 MiB file grows to 7 MiB: within budget
    assert third.kept == first.kept
    assert spools.held_bytes == 7 * MiB
    spools.release(third)  # abandoned before its part ended: kept at the size it has
    assert spools.held_bytes == 5 * MiB and spools.idle_files == 1


def test_kept_files_are_evicted_to_make_room_and_at_most_keep_files_are_kept(tmp_path: Path) -> None:
    spools = SpoolFiles(64 * MiB, tmp_path)
    try:
        opened = [spools.open(tmp_path / f"p{k}", 1 * MiB) for k in range(KEEP_FILES + 1)]
        for spool in opened:
            _write(spool, bytes(1 * MiB))
            spools.release(spool)
        assert spools.idle_files == KEEP_FILES
        assert spools.held_bytes == KEEP_FILES * MiB
        big = spools.open(tmp_path / "big", 64 * MiB)  # takes one kept file, evicts the other to fit
        assert big.kept is not None
        assert spools.idle_files == 0
        assert spools.held_bytes == 64 * MiB
        spools.release(big)
    finally:
        spools.close()
    assert spools.held_bytes == 0 and spools.idle_files == 0


def test_a_zero_budget_spools_everything_to_disk(tmp_path: Path) -> None:
    spools = SpoolFiles(0, tmp_path)
    spool = spools.open(tmp_path / "part-0", 1)
    assert spool.kept is None
    spools.release(spool)


def test_the_app_keeps_spools_only_under_the_process_pool() -> None:
    assert create_app(make_settings(pool_kind="process", spool_keep_bytes=5 * MiB)).state.spools.keep_bytes == 5 * MiB
    # a thread cannot be stopped: a job that outlived its request could still be reading a reused file
    assert create_app(make_settings(pool_kind="thread", spool_keep_bytes=5 * MiB)).state.spools.keep_bytes == 0
