"""Upload spools a killed process left behind are removed at the next start (app/uploads.py).

A server killed with SIGKILL (or by the kernel's OOM killer) runs no cleanup, so each multipart upload it was
receiving stays in the temp directory; tests/e2e/test_worker_lifetime.py shows it with a real server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.uploads import SPOOL_PREFIX, remove_orphaned_spools
from tests.app.conftest import client_with


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _spool(temp_dir: Path, name: str) -> Path:
    directory = temp_dir / name
    directory.mkdir()
    (directory / "part-0").write_bytes(b"\0" * 1024)
    return directory


def test_spools_of_a_dead_process_are_removed_and_a_live_ones_are_kept(tmp_path: Path) -> None:
    orphan = _spool(tmp_path, f"{SPOOL_PREFIX}{_dead_pid()}-abc123")
    live = _spool(tmp_path, f"{SPOOL_PREFIX}{os.getpid()}-def456")
    assert remove_orphaned_spools(tmp_path) == 1
    assert not orphan.exists() and (live / "part-0").exists()


def test_directories_not_named_for_a_process_are_left_alone(tmp_path: Path) -> None:
    kept = [_spool(tmp_path, f"{SPOOL_PREFIX}ab_cd1234"), _spool(tmp_path, f"{SPOOL_PREFIX}0-x"),
            _spool(tmp_path, "other-123-x")]
    (tmp_path / f"{SPOOL_PREFIX}{_dead_pid()}-file").write_bytes(b"not a spool")
    assert remove_orphaned_spools(tmp_path) == 0
    assert all(directory.exists() for directory in kept)


def test_the_app_removes_orphaned_spools_when_it_starts(tmp_path: Path) -> None:
    orphan = _spool(tmp_path, f"{SPOOL_PREFIX}{_dead_pid()}-abc123")
    with client_with(temp_dir=tmp_path) as client:
        assert client.get("/healthz").status_code == 200
        assert not orphan.exists()
