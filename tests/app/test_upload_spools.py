"""Upload spools a killed process left behind are removed at the next start (app/uploads.py).

A server killed with SIGKILL (or by the kernel's OOM killer) runs no cleanup, so each multipart upload it was
receiving stays in the temp directory; tests/e2e/test_worker_lifetime.py shows it with a real server.  A spool is
named for its host and process: a start removes its host's spools whose process is gone or is the starting process
itself (a restarted container's server often has the same process id, 1), and leaves a live sibling's and another
host's alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.uploads import SPOOL_PREFIX, remove_orphaned_spools
from tests.app.conftest import client_with

HOST = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _live_pid() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _spool(temp_dir: Path, name: str) -> Path:
    directory = temp_dir / name
    directory.mkdir()
    (directory / "part-0").write_bytes(b"\0" * 1024)
    return directory


def test_spools_of_a_dead_process_are_removed_and_a_live_siblings_are_kept(tmp_path: Path) -> None:
    sibling = _live_pid()
    try:
        orphan = _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-{_dead_pid()}-abc123")
        live = _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-{sibling.pid}-def456")
        assert remove_orphaned_spools(tmp_path) == 1
        assert not orphan.exists() and (live / "part-0").exists()
    finally:
        sibling.kill()
        sibling.wait()


def test_a_spool_named_for_the_starting_process_is_a_restarted_containers_and_is_removed(tmp_path: Path) -> None:
    # in a container the server is often process 1 after every restart: its old spools carry its own id
    stale = _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-{os.getpid()}-abc123")
    assert remove_orphaned_spools(tmp_path) == 1
    assert not stale.exists()


def test_another_hosts_spools_and_names_not_of_a_spool_are_left_alone(tmp_path: Path) -> None:
    dead = _dead_pid()
    kept = [_spool(tmp_path, f"{SPOOL_PREFIX}{HOST}x-{dead}-abc"),  # another host sharing the directory
            _spool(tmp_path, f"{SPOOL_PREFIX}other_host-{dead}-abc"),
            _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-ab_cd1234"), _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-0-x"),
            _spool(tmp_path, f"{SPOOL_PREFIX}{dead}-abc"),  # no host in the name
            _spool(tmp_path, "other-123-x")]
    (tmp_path / f"{SPOOL_PREFIX}{HOST}-{dead}-file").write_bytes(b"not a spool")
    assert remove_orphaned_spools(tmp_path) == 0
    assert all(directory.exists() for directory in kept)


def test_the_app_removes_orphaned_spools_when_it_starts(tmp_path: Path) -> None:
    orphan = _spool(tmp_path, f"{SPOOL_PREFIX}{HOST}-{_dead_pid()}-abc123")
    with client_with(temp_dir=tmp_path) as client:
        assert client.get("/healthz").status_code == 200
        assert not orphan.exists()


@pytest.mark.parametrize("hostname", ["web-7d9f-x2", "a b/c"])
def test_a_host_name_is_kept_to_characters_without_a_dash_so_a_spool_name_parses(
        hostname: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    safe = hostname.replace("-", "_").replace(" ", "_").replace("/", "_")
    orphan = _spool(tmp_path, f"{SPOOL_PREFIX}{safe}-{_dead_pid()}-abc123")
    neighbour = _spool(tmp_path, f"{SPOOL_PREFIX}{safe}_2-{_dead_pid()}-abc123")
    assert remove_orphaned_spools(tmp_path) == 1
    assert not orphan.exists() and neighbour.exists()
