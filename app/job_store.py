"""The durable job store: SQLite in ``NIBBLE_STATE_DIR``, a row per job and a row per finished tensor.

A tensor's row is written only after its part file is on disk (written
beside, synced, renamed: quant_core/checkpoint/output.py), so after any kill
the rows name parts that exist whole, and a restarted server quantizes only
the tensors without a row.  Under a budget each tensor is first measured,
one row each (``measurements``); the formats are allocated from those rows,
the same on every run.  SQLite runs in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed (SIGKILL
included; only a power loss may lose the last commits, which are then redone).
Every call is a short statement on one connection, made from the event loop's
thread.  Jobs write under ``<state dir>/jobs/<id>/``, and the output
directory is a UNIQUE column: two jobs never write the same output.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
DATABASE_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    source_dir TEXT NOT NULL,
    output_dir TEXT NOT NULL UNIQUE,
    tensors_total INTEGER NOT NULL,
    bytes_total INTEGER NOT NULL,
    passthrough TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    engine_notes TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS tensors (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    input_bytes INTEGER NOT NULL,
    seconds REAL NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX IF NOT EXISTS jobs_newest_first ON jobs (created_at DESC, id);
CREATE TABLE IF NOT EXISTS measurements (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    options TEXT NOT NULL,
    PRIMARY KEY (job_id, position)
);
"""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job's row."""

    id: str
    created_at: float
    state: JobState
    request: dict[str, Any]
    source_dir: str
    output_dir: str
    tensors_total: int
    bytes_total: int
    #: report entries of the tensors passed through (name, shape, dtype, reason), known at submission
    passthrough: list[dict[str, Any]]
    started_at: float | None
    finished_at: float | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    #: a DELETE came while the job ran: it stops between tensors, and a restart before then does not resume it
    cancel_requested: bool = False
    #: what an engine will refuse in the result, known from the plan at submission (`engine_notes`)
    engine_notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TensorRecord:
    """One finished tensor's row: its position in the job's plan, bytes read, seconds and report entry."""

    position: int
    input_bytes: int
    seconds: float
    entry: dict[str, Any]


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], created_at=row["created_at"], state=row["state"], request=json.loads(row["request"]),
        source_dir=row["source_dir"], output_dir=row["output_dir"], tensors_total=row["tensors_total"],
        bytes_total=row["bytes_total"], passthrough=json.loads(row["passthrough"]),
        started_at=row["started_at"], finished_at=row["finished_at"],
        error=json.loads(row["error"]) if row["error"] else None,
        result=json.loads(row["result"]) if row["result"] else None, cancel_requested=bool(row["cancel_requested"]),
        engine_notes=json.loads(row["engine_notes"]),
    )


class JobStore:
    """The job rows and finished-tensor rows of one state directory (module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(state_dir / DATABASE_NAME, isolation_level=None,
                                           check_same_thread=False)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._connection.executescript(_SCHEMA)
        columns = {row["name"] for row in self._connection.execute("PRAGMA table_info(jobs)")}
        if "cancel_requested" not in columns:  # a store made before the column existed
            self._connection.execute("ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
        if "engine_notes" not in columns:  # a store made before the notes were kept
            self._connection.execute("ALTER TABLE jobs ADD COLUMN engine_notes TEXT NOT NULL DEFAULT '[]'")

    def close(self) -> None:
        self._connection.close()

    def job_dir(self, job_id: str) -> Path:
        """Where job `job_id` writes: ``parts/`` while it runs, ``output/`` for the result."""
        return self.state_dir / "jobs" / job_id

    def create(self, job_id: str, request: dict[str, Any], source_dir: Path, tensors_total: int,
               bytes_total: int, passthrough: list[dict[str, Any]],
               engine_notes: list[str] | None = None) -> JobRecord:
        """Insert a queued job writing to its own directory (an output taken by another job is an IntegrityError)."""
        output_dir = self.job_dir(job_id) / "output"
        self._connection.execute(
            "INSERT INTO jobs (id, created_at, state, request, source_dir, output_dir, tensors_total, bytes_total, "
            "passthrough, engine_notes) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (job_id, time.time(), json.dumps(request), str(source_dir), str(output_dir), tensors_total, bytes_total,
             json.dumps(passthrough), json.dumps(engine_notes or [])))
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        row = self._connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row is not None else None

    def list_jobs(self, limit: int, *, after: tuple[float, str] | None = None,
                  states: Sequence[str] = ()) -> list[JobRecord]:
        """At most `limit` jobs, newest first (``created_at`` descending, then ``id``), only those listed after
        the job `after` names (its ``created_at`` and ``id``) and, given `states`, only in one of them.

        `after` is a keyset, not an offset: a job created or deleted between two pages neither repeats a job
        nor skips one on the next page."""
        where, parameters = [], []
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id > ?))")
            parameters += [after[0], after[0], after[1]]
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            parameters += list(states)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._connection.execute(f"SELECT * FROM jobs {clause}ORDER BY created_at DESC, id LIMIT ?",
                                        (*parameters, limit))
        return [_record(row) for row in rows.fetchall()]

    def unfinished(self) -> list[JobRecord]:
        """Jobs queued or running (a restart resumes them), oldest first."""
        rows = self._connection.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id")
        return [_record(row) for row in rows.fetchall()]

    def count_unfinished(self) -> int:
        """How many jobs are queued or running."""
        return int(self._connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0])

    def delete(self, job_id: str) -> None:
        """Remove a job's row and (by cascade) its tensor and measurement rows."""
        self._connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def set_running(self, job_id: str) -> None:
        self._connection.execute("UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?) "
                                 "WHERE id = ?", (time.time(), job_id))

    def set_engine_notes(self, job_id: str, notes: list[str]) -> None:
        """Replace a job's engine notes (a budget's formats, chosen once the tensors are measured, may add some)."""
        self._connection.execute("UPDATE jobs SET engine_notes = ? WHERE id = ?", (json.dumps(notes), job_id))

    def request_cancel(self, job_id: str) -> None:
        """Record that a running job is to stop (it does between tensors; a restart before then cancels it)."""
        self._connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def finish(self, job_id: str, state: JobState, *, error: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None) -> None:
        """Put a job in a terminal state, with its error or result."""
        self._connection.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ? WHERE id = ?",
            (state, time.time(), json.dumps(error) if error else None, json.dumps(result) if result else None,
             job_id))

    def add_tensor(self, job_id: str, record: TensorRecord) -> None:
        """Record a finished tensor (its part file is already on disk)."""
        self._connection.execute(
            "INSERT OR REPLACE INTO tensors (job_id, position, input_bytes, seconds, entry) VALUES (?, ?, ?, ?, ?)",
            (job_id, record.position, record.input_bytes, record.seconds, json.dumps(record.entry)))

    def tensors(self, job_id: str) -> list[TensorRecord]:
        """The finished tensors of a job, in plan order."""
        rows = self._connection.execute(
            "SELECT position, input_bytes, seconds, entry FROM tensors WHERE job_id = ? ORDER BY position", (job_id,))
        return [TensorRecord(row["position"], row["input_bytes"], row["seconds"], json.loads(row["entry"]))
                for row in rows.fetchall()]

    def tensor_entries_json(self, job_id: str) -> list[tuple[float, str]]:
        """The finished tensors' seconds and report entries as stored (JSON text, not decoded), in plan order."""
        rows = self._connection.execute(
            "SELECT seconds, entry FROM tensors WHERE job_id = ? ORDER BY position", (job_id,))
        return [(row["seconds"], row["entry"]) for row in rows.fetchall()]

    def add_measurement(self, job_id: str, position: int, options: list[tuple[str, int, float]]) -> None:
        """Record a tensor measured under a budget: its (format label, bytes, error) per allowed format.

        JSON keeps every float exactly, so a resumed job allocates the same numbers to the same formats."""
        self._connection.execute(
            "INSERT OR REPLACE INTO measurements (job_id, position, options) VALUES (?, ?, ?)",
            (job_id, position, json.dumps(options)))

    def measurements(self, job_id: str) -> dict[int, list[tuple[str, int, float]]]:
        """The measured tensors of a job by plan position."""
        rows = self._connection.execute(
            "SELECT position, options FROM measurements WHERE job_id = ? ORDER BY position", (job_id,))
        return {row["position"]: [(label, size, error) for label, size, error in json.loads(row["options"])]
                for row in rows.fetchall()}

    def measured_count(self, job_id: str) -> int:
        row = self._connection.execute("SELECT COUNT(*) FROM measurements WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0])

    def progress(self, job_id: str) -> tuple[int, int]:
        """(tensors finished, their input bytes)."""
        row = self._connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_bytes), 0) FROM tensors WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]), int(row[1])
