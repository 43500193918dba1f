"""Checkpoint quantize jobs: the state machine (queued -> running -> succeeded | failed | cancelled) and its runner.

A job is submitted once its source has been validated (every shard header,
the index, the files: in the pool, never on the event loop) and planned; its
row goes into the `JobStore` and its id into a FIFO queue that one runner
task works through.  Running a job: each tensor to quantize that has no
finished-tensor row is handed to the executor (`job_tensor_concurrency` at
once), which runs `quantize_tensor_part` and writes the tensor's part file;
its row is recorded when the part is on disk.  When every tensor has its part
the executor assembles the result (one call per shard, then the index,
config.json, copied files and report), the parts are removed, and the job
succeeds with its file manifest (a job that fails keeps no file).  A restart resumes every job still queued or
running from its rows, and the assembly makes the same bytes.  A job with
importance statistics keeps a copy of the vectors it uses (validated against
every tensor at submission) in its own directory; a job with a budget first
measures each tensor in every allowed format (a row each), then allocates the
formats from those rows (the same choice on every run) and writes the parts.  Cancelling
stops a job between tensors and removes its files.

The steps a job runs off the event loop are quant_core's (quant_core/checkpoint/job_steps.py).
The executors know nothing of HTTP: `PoolExecutor` runs calls on the app's
bounded `WorkerPool` (waiting while it is full); tensors go through a
`TensorRunner`, the pool's (`PoolTensorRunner`) or, with ``NIBBLE_RAY_ADDRESS``,
Ray tasks (app/ray_runner.py), which give the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from app.job_store import TERMINAL_STATES, JobRecord, JobStore, TensorRecord
from app.pool import WorkerPool
from app.problems import ApiProblem, ItemNotFound, PoolFull, problem_for
from app.schemas.jobs import STORED, JobCreate, to_options
from app.tus import UploadSets
from quant_core.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointOptions,
    TensorPlan,
    choose_formats,
    engine_notes,
    finish_output,
    inspect_source,
    load_plan,
    measure_tensor,
    part_path,
    timed_tensor_part,
    valid_parts,
    write_checkpoint_files,
    write_output_shard,
)
from quant_core.errors import NibbleError, TensorFileError
from quant_core.quantize.allocation import TensorOption

T = TypeVar("T")
logger = logging.getLogger("nibble.jobs")


class JobsNotConfigured(ApiProblem):
    """The server has no state directory or no data root (NIBBLE_STATE_DIR, NIBBLE_DATA_DIR): there are no jobs
    here (404: a configuration of this server, not a passing condition to retry)."""

    status, title, slug = 404, "Jobs not configured", "jobs-not-configured"


class JobConflict(ApiProblem):
    """An action the job's state does not allow (a file of a job that has not succeeded)."""

    status, title, slug = 409, "Conflict", "job-state-conflict"


class PathRefused(ApiProblem):
    """A source path that is absolute, climbs with '..', or resolves (through symlinks) outside the data root."""

    status, title, slug = 403, "Path outside the data root", "path-refused"


def resolve_source(data_root: Path, path: str, field: str = "source.path") -> Path:
    """The place `path` names under `data_root`, refused (`PathRefused`, naming `field`) unless it stays inside it.

    Refused: an absolute path, a ``..`` component, a NUL byte, and any path
    that resolves, symlinks followed, outside the resolved data root; a path
    that cannot be resolved (a name too long, a symlink loop) is a
    `CheckpointError` naming `field`.
    """
    parts = PurePosixPath(path).parts
    if "\x00" in path:  # no file name holds one: open() would raise ValueError
        raise PathRefused(f"{field} {path!r} holds a NUL byte, which no file name does", field=field)
    if path.startswith(("/", "\\")) or PurePosixPath(path).is_absolute():
        raise PathRefused(f"{field} {path!r} is absolute; give a path relative to the data root", field=field)
    if ".." in parts or "\\" in path:
        raise PathRefused(f"{field} {path!r} climbs out with '..' (or uses '\\'); give a path inside the "
                          "data root", field=field)
    root = data_root.resolve()
    try:
        resolved = (root / path).resolve()
        resolved.stat()  # a name past the file system's NAME_MAX, or a symlink loop, fails here
    except (FileNotFoundError, NotADirectoryError):
        pass  # a missing source or file is refused where it is opened, naming what is missing
    except (OSError, RuntimeError) as exc:  # pathlib raises RuntimeError for a symlink loop on some versions
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(f"{field} {path!r} cannot be resolved: {reason}", field=field) from None
    if resolved != root and root not in resolved.parents:
        raise PathRefused(f"{field} {path!r} resolves to a place outside the data root (a symlink leads out)",
                          field=field)
    return resolved


# --- executors -------------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs a module-level function with picklable arguments somewhere other than the event loop."""

    async def call(self, function: Callable[..., T], *args: Any) -> T: ...


class PoolExecutor:
    """The app's bounded pool: a call waits (`retry_seconds` at a time) while every place is taken."""

    def __init__(self, pool: WorkerPool, retry_seconds: float) -> None:
        self.pool = pool
        self.retry_seconds = retry_seconds

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                async with self.pool.reserve():
                    return await self.pool.run(function, *args)
            except PoolFull:
                await asyncio.sleep(self.retry_seconds)


class TensorRunner(Protocol):
    """Makes one tensor's part file: ``(report entry, seconds)``."""

    async def quantize(self, directory: Path, plan: TensorPlan, options: CheckpointOptions, part: Path
                       ) -> tuple[dict[str, Any], float]: ...

    async def close(self) -> None: ...


class PoolTensorRunner:
    """Tensors on the app's bounded pool: the worker reads the tensor and writes its part itself."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def quantize(self, directory: Path, plan: TensorPlan, options: CheckpointOptions, part: Path
                       ) -> tuple[dict[str, Any], float]:
        return await self.executor.call(timed_tensor_part, directory, plan, options, part)

    async def close(self) -> None:
        return None


# --- the manager -----------------------------------------------------------------------------------------


class JobManager:
    """Submits, runs, resumes, cancels and describes checkpoint jobs (module docstring)."""

    def __init__(self, store: JobStore, executor: Executor, data_root: Path, *, concurrency: int,
                 max_tensors: int, max_elements: int, max_header_bytes: int, threads: int | None = 1,
                 tensors: TensorRunner | None = None, uploads: UploadSets | None = None,
                 max_unfinished: int = 64, retry_after_seconds: int = 5) -> None:
        self.store = store
        #: most jobs queued or running (or being submitted) at once; past it a submission is 503 with Retry-After
        self.max_unfinished, self.retry_after_seconds, self._submitting = max_unfinished, retry_after_seconds, 0
        #: the tus upload sets a job may take as its source (``source.upload``)
        self.uploads = uploads
        self.executor = executor
        #: where tensors are quantized: the pool (default) or Ray tasks (app/ray_runner.py)
        self.tensors = tensors or PoolTensorRunner(executor)
        self.data_root = data_root.resolve()
        self.concurrency = concurrency
        self.limits = (max_tensors, max_elements, max_header_bytes)
        self.threads = threads
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._cancelled: set[str] = set()
        self._changed: dict[str, asyncio.Event] = {}
        #: per running job: (monotonic start of this run, bytes done at its start)
        self._run_start: dict[str, tuple[float, int]] = {}
        self._closing = False
        #: result-file downloads being sent, per job: a deleted job's files are removed when its last one ends
        self._downloads: Counter[str] = Counter()

    # lifecycle
    def start(self) -> None:
        """Queue every unfinished job (a restart resumes them; one whose cancel was asked is cancelled) and start
        the runner."""
        for record in self.store.unfinished():
            if record.cancel_requested:
                self.store.finish(record.id, "cancelled")
                self._remove_files(record.id)
            else:
                self._queue.put_nowait(record.id)
        self._runner = asyncio.create_task(self._run_forever(), name="nibble-job-runner")

    async def close(self) -> None:
        """Stop the runner; a running job keeps its state and resumes at the next start."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._runner, 10)
        await self.tensors.close()
        self.store.close()

    # requests
    async def submit(self, request: JobCreate) -> JobRecord:
        """Validate and plan the source (typed errors: 4xx), then queue the job; refused with nothing stored
        (`PoolFull`: 503 with Retry-After) while `max_unfinished` jobs are queued, running or being submitted."""
        unfinished = self.store.count_unfinished() + self._submitting
        if unfinished >= self.max_unfinished:
            raise PoolFull(f"{unfinished} jobs are queued or running, the most this server takes "
                           f"(max_unfinished_jobs); retry in {self.retry_after_seconds} s",
                           headers={"Retry-After": str(self.retry_after_seconds)})
        directory, root = self._source(request)
        importance = self._importance(request, root)
        options = to_options(request, self.threads)
        job_id = uuid.uuid4().hex
        copy = self._importance_copy(job_id) if importance is not None else None
        self._submitting += 1
        try:
            total, total_bytes, passthrough, notes = await self.executor.call(
                inspect_source, directory, root, *self.limits, options, importance, copy)
        except BaseException:
            self._remove_files(job_id)
            raise
        finally:
            self._submitting -= 1
        record = self.store.create(job_id, request.model_dump(mode="json"), directory, total, total_bytes,
                                   passthrough, notes)
        self._queue.put_nowait(record.id)
        return record

    def _source(self, request: JobCreate) -> tuple[Path, Path]:
        """The source directory and the root no file it names may leave: a directory under the data root, or
        a complete upload set (its own directory is its root)."""
        if request.source.upload is not None:
            if self.uploads is None:
                raise JobsNotConfigured("this server keeps no upload sets", field="source.upload")
            directory = self.uploads.source_directory(request.source.upload)
            return directory, directory
        return resolve_source(self.data_root, request.source.path or ""), self.data_root

    @staticmethod
    def _importance(request: JobCreate, root: Path) -> Path | None:
        """The statistics file under the root the source's files may not leave (validated as the source path)."""
        if request.importance is None:
            return None
        path = resolve_source(root, request.importance, field="importance")
        if not path.is_file():
            raise TensorFileError(f"importance {request.importance!r} is not a file under the "
                                  f"{'upload set' if request.source.upload else 'data root'}", field="importance")
        return path

    def _importance_copy(self, job_id: str) -> Path:
        """Where a job keeps the importance vectors it uses (read again at every run: a restart uses the same)."""
        return self.store.job_dir(job_id) / "importance.safetensors"

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise ItemNotFound(f"no job with id {job_id!r}", field="id")
        return record

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (it stops between tensors); a finished job is returned as it is."""
        record = self.get(job_id)
        if record.state in TERMINAL_STATES:
            return record
        self._cancelled.add(job_id)
        self.store.request_cancel(job_id)  # durable: a restart before the job stops does not resume it
        if record.state == "queued":
            self.store.finish(job_id, "cancelled")
            self._remove_files(job_id)
        self._notify(job_id)
        return self.get(job_id)

    def progress(self, record: JobRecord) -> dict[str, Any]:
        """Tensors and bytes done of total, and the rate and ETA of this run."""
        done, done_bytes = self.store.progress(record.id)
        rate = eta = None
        start = self._run_start.get(record.id)
        if start is not None and record.state == "running":
            elapsed = time.monotonic() - start[0]
            if elapsed > 0 and done_bytes > start[1]:
                rate = (done_bytes - start[1]) / elapsed
                eta = (record.bytes_total - done_bytes) / rate
        elif record.state == "succeeded" and record.started_at is not None and record.finished_at is not None:
            elapsed = record.finished_at - record.started_at  # over every run, restarts included
            rate, eta = (done_bytes / elapsed if elapsed > 0 else None), 0.0
        budget = record.request.get("budget_bytes") is not None or record.request.get("bits_per_weight") is not None
        return {"tensors_done": done, "tensors_total": record.tensors_total, "bytes_done": done_bytes,
                "bytes_total": record.bytes_total, "rate": rate, "eta_seconds": eta,
                "tensors_measured": self.store.measured_count(record.id) if budget else None}

    def report_json(self, record: JobRecord) -> bytes:
        """The per-tensor report as a JSON array: each finished tensor's entry as stored, its seconds spliced in
        (not decoded and encoded again: a 200,000-tensor job's report is ~100 MB), then the passthrough tensors."""
        finished = [f'{entry[:-1]},"seconds":{seconds!r}}}' for seconds, entry in
                    self.store.tensor_entries_json(record.id)]
        passthrough = [json.dumps(entry) for entry in record.passthrough]
        return f"[{','.join(finished + passthrough)}]".encode()

    async def wait_change(self, job_id: str, timeout_seconds: float) -> None:
        """Return when job `job_id` changes (a tensor finishes, its state moves) or after `timeout_seconds`."""
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_seconds)

    def output_file(self, job_id: str, name: str) -> Path:
        """A result file of a succeeded job, by a name its manifest lists (nothing else is served)."""
        record = self.get(job_id)
        if record.state != "succeeded" or record.result is None:
            raise JobConflict(f"job {job_id} is {record.state}; its files exist once it has succeeded", field="id")
        if name not in {entry["name"] for entry in record.result["files"]}:
            raise ItemNotFound(f"job {job_id} has no file {name!r}", field="name")
        return Path(record.output_dir) / name

    def delete(self, job_id: str) -> None:
        """Remove a finished job: its record at once (it is then 404), its files too unless a download of one is
        being sent (an open file keeps streaming, but one not yet opened would be gone): then when the last ends."""
        self.store.delete(job_id)
        self._cancelled.discard(job_id)
        self._notify(job_id)
        if not self._downloads[job_id]:
            self._remove_files(job_id)

    def download(self, job_id: str, started: bool) -> None:
        """Count a download of a result file of job `job_id` starting or ending (the last one to end after the
        job was deleted removes its files)."""
        self._downloads[job_id] += 1 if started else -1
        if not self._downloads[job_id]:
            del self._downloads[job_id]
            if self.store.get(job_id) is None:
                self._remove_files(job_id)

    # running
    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)

    async def _run_forever(self) -> None:
        while not self._closing:
            job_id = await self._queue.get()
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the runner; the job is marked failed
                logger.exception("job %s failed unexpectedly", job_id)
                if not self._closing:
                    self._fail(job_id, RuntimeError("unexpected"))

    def _fail(self, job_id: str, exc: Exception) -> None:
        """Fail the job with `exc`'s problem and remove its files: a failed job is never resumed or served."""
        problem, _ = problem_for(exc)
        self.store.finish(job_id, "failed", error=problem.model_dump(exclude_none=True))
        self._remove_files(job_id)
        self._notify(job_id)

    async def _run(self, job_id: str) -> None:
        record = self.store.get(job_id)
        if record is None or record.state in TERMINAL_STATES:
            return
        self.store.set_running(job_id)
        self._run_start[job_id] = (time.monotonic(), self.store.progress(job_id)[1])
        self._notify(job_id)
        try:
            await self._execute(record)
        except asyncio.CancelledError:
            raise
        except (NibbleError, ApiProblem) as exc:
            if self._closing:
                return  # the pool was closed under the job: it resumes at the next start
            self._fail(job_id, exc)
        finally:
            self._run_start.pop(job_id, None)

    async def _each(self, job_id: str, todo: list[TensorPlan], work: Callable[[TensorPlan], Any]) -> None:
        """Await ``work(plan)`` for each plan of `todo` in order, `concurrency` at once, until the job is cancelled;
        the first error stops the others once the tensors they hold are done (so nothing writes into the job's
        directory after it has failed and been removed), and is raised."""
        pending = iter(todo)  # shared by the workers below: each takes the next tensor in plan order
        errors: list[Exception] = []

        async def next_tensor() -> None:
            for plan in pending:
                if job_id in self._cancelled or errors:
                    return
                try:
                    await work(plan)
                except Exception as error:
                    errors.append(error)
                    return
                self._notify(job_id)

        workers = [asyncio.create_task(next_tensor()) for _ in range(min(self.concurrency, max(1, len(todo))))]
        try:
            await asyncio.gather(*workers)
        finally:  # cancelled from outside (the server stops): the tensors in flight are not waited for
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if errors:
            raise errors[0]

    async def _allocate(self, job_id: str, checkpoint: Checkpoint, plans: tuple[TensorPlan, ...],
                        options: CheckpointOptions) -> tuple[tuple[TensorPlan, ...], dict[str, Any]]:
        """Measure every tensor without a measurement row (on the pool), then allocate the formats from the rows."""
        measured = {position: [TensorOption(*option) for option in options_]
                    for position, options_ in self.store.measurements(job_id).items()}

        async def measure(plan: TensorPlan) -> None:
            found = await self.executor.call(measure_tensor, checkpoint.directory, plan, options)
            self.store.add_measurement(job_id, plan.index, [(o.label, o.bytes, o.error) for o in found])
            measured[plan.index] = found

        await self._each(job_id, [plan for plan in plans if plan.quantized and plan.index not in measured], measure)
        if job_id in self._cancelled:
            return plans, {}
        return await self.executor.call(choose_formats, plans, options, measured, checkpoint.config)

    async def _execute(self, record: JobRecord) -> None:
        job_id = record.id
        request = JobCreate.model_validate(record.request, context=STORED)
        options = to_options(request, self.threads)
        source = Path(record.source_dir)
        root = source if request.source.upload is not None else self.data_root
        importance = copy = None
        if request.importance is not None:
            importance = resolve_source(root, request.importance, field="importance")
            copy = self._importance_copy(job_id)
        checkpoint, plans = await self.executor.call(load_plan, source, root, *self.limits, options, importance,
                                                     copy)
        allocation = None
        if options.has_budget:
            plans, allocation = await self._allocate(job_id, checkpoint, plans, options)
            # the status's notes as the report will give them (a budget keeps each fused layer whole: none added)
            self.store.set_engine_notes(job_id, await self.executor.call(engine_notes, options, plans,
                                                                         checkpoint.config))
            self._notify(job_id)
        job_dir = self.store.job_dir(job_id)
        part_dir, out_dir = job_dir / "parts", Path(record.output_dir)
        part_dir.mkdir(parents=True, exist_ok=True)
        rows = {row.position: row.entry for row in self.store.tensors(job_id)}
        whole = await self.executor.call(valid_parts, part_dir, plans, sorted(rows)) if rows else []
        entries = {position: rows[position] for position in whole}

        async def quantize(plan: TensorPlan) -> None:
            entry, seconds = await self.tensors.quantize(checkpoint.directory, plan, options,
                                                         part_path(part_dir, plan))
            self.store.add_tensor(job_id, TensorRecord(plan.index, plan.tensor.nbytes, seconds, entry))
            entries[plan.index] = entry

        if job_id not in self._cancelled:
            await self._each(job_id, [plan for plan in plans if plan.quantized and plan.index not in entries],
                             quantize)
        if job_id in self._cancelled:
            self.store.finish(job_id, "cancelled")
            self._remove_files(job_id)
            self._notify(job_id)
            return
        laid_out = await self.executor.call(finish_output, checkpoint, plans, options, entries, part_dir, out_dir,
                                            allocation)
        if laid_out is not None:
            report, shards = laid_out
            for shard in shards:
                await self.executor.call(write_output_shard, shard, out_dir)
            await self.executor.call(write_checkpoint_files, checkpoint, shards, report, out_dir)
        files = sorted(path for path in out_dir.iterdir() if path.is_file())
        result: dict[str, Any] = {"files": [{"name": path.name, "bytes": path.stat().st_size} for path in files]}
        if allocation is not None:
            result["allocation"] = allocation
        if job_id in self._cancelled:
            self.store.finish(job_id, "cancelled")
            self._remove_files(job_id)
        else:
            self.store.finish(job_id, "succeeded", result=result)
            await asyncio.to_thread(shutil.rmtree, part_dir, True)
        self._notify(job_id)
