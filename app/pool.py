"""The bounded pool that runs every NumPy job (quantize, compare, dequantize) off the event loop.

Why processes by default: a job is a pure function of a temp-file path and a
few parameters, and returns a small report plus the path of the file it wrote,
so almost nothing crosses the process boundary (the tensors never do: the
worker memory-maps the uploaded file itself).  In exchange, a worker process
can be killed when a job passes the time limit (a thread cannot be stopped),
a crash or an out-of-memory kill takes one worker down instead of the server,
and the worker's memory goes back to the OS when it is replaced.  NumPy
releases the GIL in its heavy loops, so threads (``pool_kind="thread"``) are
kept as an option for platforms without ``spawn`` and for measurement
(BENCHMARKS.md, "API (issue 4)").

Admission is counted, not queued without bound: `reserve()` takes one of
``workers + queue`` places at once, before the upload is read, and raises
`PoolFull` (503 with ``Retry-After``) when none is left.  `run()` then waits
for an idle worker and runs the job under the per-request time limit (504;
the process is killed and replaced, so the worker is freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, TypeVar

from app.allocator import heap_trimmer
from app.problems import ApiProblem, PoolFull, ShuttingDown, TimeLimitExceeded, WorkerCrashed
from quant_core.errors import NibbleError

T = TypeVar("T")
PRELOAD_MODULES: tuple[str, ...] = ("quant_core.single_file.jobs",)
#: a worker idle this long after a job returns its freed heap to the OS; a job arriving sooner reuses the
#: pages (a 64 MiB quantize allocates ~8 MiB of output: ~2,000 page faults when taken anew, BENCHMARKS.md)
IDLE_TRIM_SECONDS = 0.5
#: most bytes of a worker's answer read per turn of the event loop
_READ_BYTES = 1 << 20
#: how often a worker's watchdog checks that its server is alive (`_die_with_parent`)
PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _pack_error(exc: BaseException) -> tuple[str, str, str, dict[str, Any]]:
    """A picklable description of a typed error (constructors take keywords: plain pickling fails)."""
    cls = type(exc)
    return cls.__module__, cls.__qualname__, str(exc), dict(vars(exc))


def _unpack_error(module: str, qualname: str, message: str, attributes: dict[str, Any]) -> BaseException:
    cls = getattr(importlib.import_module(module), qualname)
    exc: BaseException = cls.__new__(cls)
    Exception.__init__(exc, message)
    vars(exc).update(attributes)
    return exc


def _die_with_parent(parent_pid: int, connection: multiprocessing.connection.Connection,
                     kernel_signal: bool) -> None:
    """End this worker process when its server does, even when the server is killed (SIGKILL, OOM killer).

    Two guards: with `kernel_signal` (Linux, and only when the worker was
    started from the server's main thread, since the kernel sends it when
    that *thread* exits) ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which kills
    the worker whatever it is doing, even in C code that holds the GIL; and
    a watchdog thread that exits the process within `PARENT_POLL_SECONDS` once
    its parent's pid changes (re-parented) or the job pipe hangs up (the
    parent's end closed).
    """
    if kernel_signal and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the server died before the signal was asked for
        os._exit(1)
    descriptor = connection.fileno()

    def watch() -> None:
        poller = select.poll() if hasattr(select, "poll") else None  # no poll(): the parent's pid alone
        if poller is not None:
            poller.register(descriptor, select.POLLHUP | getattr(select, "POLLRDHUP", 0))
        while True:
            if poller is not None:
                hung_up = bool(poller.poll(PARENT_POLL_SECONDS * 1000))
            else:
                hung_up = False
                time.sleep(PARENT_POLL_SECONDS)
            if hung_up or os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="nibble-parent-watchdog", daemon=True).start()


def _worker_main(connection: multiprocessing.connection.Connection, preload: tuple[str, ...],
                 parent_pid: int | None = None, kernel_signal: bool = False) -> None:
    """Loop of a worker process: receive ``(function, args)``, send ``("ok", result)`` or the error."""
    if parent_pid is not None:
        _die_with_parent(parent_pid, connection, kernel_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    for module in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    release_memory = heap_trimmer()  # an idle worker keeps none of its last job's scratch (below)
    while True:
        try:
            function, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            message: tuple[str, Any] = ("ok", function(*args))
        except (NibbleError, ApiProblem) as exc:
            message = ("typed", _pack_error(exc))
        except Exception as exc:  # reported as a 500, the worker lives on
            message = ("error", f"{type(exc).__name__}: {exc}")
        connection.send(message)
        del function, args, message
        if not connection.poll(IDLE_TRIM_SECONDS):
            release_memory()  # idle: give the scratch back; back-to-back jobs reuse its pages instead


class _IncomingMessage:
    """One `multiprocessing.connection.Connection` message, reassembled from the pieces read so far.

    The wire format is a 4-byte big-endian signed length (−1 announcing an
    8-byte unsigned one, for messages over 2 GiB) and the pickled payload.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Add `data`; the payload once the whole message is in (None until then)."""
        self._buffer += data
        if len(self._buffer) < 4:
            return None
        (size,) = struct.unpack("!i", self._buffer[:4])
        start = 4
        if size == -1:
            if len(self._buffer) < 12:
                return None
            (size,) = struct.unpack("!Q", self._buffer[4:12])
            start = 12
        if size < 0:
            raise ValueError(f"a message length of {size}")
        if len(self._buffer) < start + size:
            return None
        if len(self._buffer) > start + size:
            raise ValueError("bytes past the end of the answer")
        return bytes(self._buffer[start:])


class _ProcessWorker:
    """One long-lived worker process and the parent's end of its pipe."""

    def __init__(self, context: multiprocessing.context.SpawnContext, preload: tuple[str, ...]) -> None:
        self.connection, child = context.Pipe()
        # the kernel's parent-death signal follows the creating thread: asked for only from the main thread
        kernel_signal = threading.current_thread() is threading.main_thread()
        self.process = context.Process(target=_worker_main, args=(child, preload, os.getpid(), kernel_signal),
                                       daemon=True)
        self.process.start()
        child.close()

    def send(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Hand the worker a job, now (a blocking write of a few hundred bytes; no turn of the event loop).

        Raises `WorkerCrashed` when the process has died while idle: it must then be replaced.
        """
        descriptor = self.connection.fileno()
        try:
            os.set_blocking(descriptor, True)  # a job is small, but a send must never stop half-way
            self.connection.send((function, args))
        except OSError:  # BrokenPipeError: the process died while idle
            raise WorkerCrashed("the worker process for this job had died; it is being replaced") from None

    async def answer(self) -> tuple[str, Any]:
        """Wait for the worker's whole answer to the job `send` gave it, ``(kind, value)``, without blocking the loop.

        The answer is read as it arrives, in non-blocking reads of the pipe
        (the event loop's reader leaves it non-blocking, so a blocking
        ``Connection.recv`` would fail part-way through any answer larger than
        the pipe's buffer), and unpickled once complete.  Raises
        `WorkerCrashed` when the process dies or its answer cannot be read:
        the worker must then be replaced, never reused.
        """
        loop = asyncio.get_running_loop()
        received: asyncio.Future[tuple[str, Any]] = loop.create_future()
        self._answering = received
        descriptor = self.connection.fileno()
        message = _IncomingMessage()

        def fail(detail: str) -> None:
            loop.remove_reader(descriptor)
            if not received.done():
                received.set_exception(WorkerCrashed(detail))

        def on_readable() -> None:
            if received.done():
                loop.remove_reader(descriptor)
                return
            try:
                chunk = os.read(descriptor, _READ_BYTES)
            except BlockingIOError:
                return
            except OSError:  # the pipe broke: the worker is gone, as when the pipe ends
                chunk = b""
            if not chunk:
                fail("the worker process running this job died")
                return
            try:
                payload = message.feed(chunk)
                if payload is None:
                    return
                answer = ForkingPickler.loads(payload)
            except Exception as exc:  # an unreadable answer: the pipe's state is unknown
                fail(f"the worker's answer could not be read ({type(exc).__name__})")
                return
            loop.remove_reader(descriptor)
            received.set_result(answer)

        loop.add_reader(descriptor, on_readable)
        try:
            return await received
        finally:
            self._answering = None
            if not self.connection.closed:
                loop.remove_reader(descriptor)

    #: the answer being waited for, if any (`kill` ends the wait)
    _answering: asyncio.Future[tuple[str, Any]] | None = None

    def kill(self, reason: Exception | None = None) -> None:
        """Stop the process; a job waiting for its answer gets `reason` (default: `WorkerCrashed`) at once,
        where it would otherwise wait for its time limit (the pipe closes under the event loop's watch)."""
        answering = self._answering
        if answering is not None and not answering.done():
            with contextlib.suppress(ValueError, OSError):  # no reader registered, or no loop running
                answering.get_loop().remove_reader(self.connection.fileno())
            answering.set_exception(reason or WorkerCrashed("the worker process running this job was stopped"))
        self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


@dataclass
class PoolStats:
    """What the pool is doing now (read by /metrics): busy workers and reserved-but-waiting places."""

    workers: int
    capacity: int
    busy: int = 0
    reserved: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    job_seconds: list[float] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return self.reserved - self.busy


class WorkerPool:
    """A bounded pool of `workers` workers plus `queue` waiting places; see the module docstring."""

    def __init__(self, workers: int, queue: int, time_limit_seconds: float, retry_after_seconds: int,
                 kind: Literal["process", "thread"] = "process") -> None:
        self.kind = kind
        self.time_limit_seconds = time_limit_seconds
        self.retry_after_seconds = retry_after_seconds
        self.stats = PoolStats(workers=workers, capacity=workers + queue)
        self._threads: ThreadPoolExecutor | None = None
        self._idle: asyncio.Queue[_ProcessWorker] | None = None
        self._all: list[_ProcessWorker] = []
        self._context = multiprocessing.get_context("spawn")

    def start(self) -> None:
        """Start the workers (idempotent; `run` calls it on first use too)."""
        if self.kind == "thread":
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.stats.workers, thread_name_prefix="nibble-job")
            return
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.stats.workers):
                worker = _ProcessWorker(self._context, PRELOAD_MODULES)
                self._all.append(worker)
                self._idle.put_nowait(worker)

    async def drain(self, timeout_seconds: float = 5.0) -> None:
        """Wait, at most `timeout_seconds`, until no request holds a place (their answers are sent).

        Called at shutdown before `close`: by then uvicorn has let in-flight
        requests finish or cancelled them (answered 503 by `run`), and this
        gives those answers the few loop turns they need to leave.
        """
        deadline = time.monotonic() + timeout_seconds
        while self.stats.reserved > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Stop every worker (running jobs are abandoned)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        stopped = ShuttingDown("the server is shutting down and stopped this job before it finished; retry in "
                               f"{self.retry_after_seconds} s", headers={"Retry-After": str(self.retry_after_seconds)})
        for worker in self._all:
            worker.kill(stopped)
        self._all.clear()
        self._idle = None

    @contextlib.asynccontextmanager
    async def reserve(self) -> AsyncIterator[None]:
        """Hold one of the pool's places for a request, or raise `PoolFull` (503) at once."""
        if self.stats.reserved >= self.stats.capacity:
            self.stats.rejected += 1
            raise PoolFull(
                f"all {self.stats.workers} workers are busy and the queue of "
                f"{self.stats.capacity - self.stats.workers} is full; retry in {self.retry_after_seconds} s",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        self.stats.reserved += 1
        try:
            yield
        finally:
            self.stats.reserved -= 1

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on a worker under the time limit (inside a `reserve()` block)."""
        self.start()
        return await self._limited(self._run(function, args))

    async def _limited(self, job: Coroutine[Any, Any, T]) -> T:
        """Await `job` under the time limit: 504 past it, 503 when the server's shutdown cancels it."""
        try:
            return await asyncio.wait_for(job, self.time_limit_seconds)
        except TimeoutError:
            self.stats.timed_out += 1
            raise TimeLimitExceeded(
                f"the job ran past the time limit of {self.time_limit_seconds:g} s and was stopped"
            ) from None
        except asyncio.CancelledError:
            # Only uvicorn cancels a request task: at SIGTERM, when its graceful-shutdown period
            # (--timeout-graceful-shutdown) ends first.  The job is stopped; answer 503, not a cut connection.
            raise ShuttingDown(
                "the server is shutting down and stopped this job before it finished; retry "
                f"in {self.retry_after_seconds} s", headers={"Retry-After": str(self.retry_after_seconds)},
            ) from None

    async def _run(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run the job on the next idle worker."""
        if self.kind == "thread":
            return await self._run_thread(function, args)
        assert self._idle is not None  # set by start()
        while True:
            worker = await self._idle.get()
            if self._hand(worker, function, args):
                break
        self.stats.busy += 1
        started = time.perf_counter()
        healthy = False  # true once the worker's whole answer is in: its pipe is clean for the next job
        try:
            kind, value = await worker.answer()
            healthy = True
            if kind == "ok":
                return value  # type: ignore[no-any-return]
            if kind == "typed":
                raise _unpack_error(*value)
            raise RuntimeError(f"job failed in worker: {value}")
        finally:
            self._end_job(worker, started, healthy)

    def _hand(self, worker: _ProcessWorker, function: Callable[..., Any], args: tuple[Any, ...]) -> bool:
        """Send the job to an idle `worker`: True once sent.  False when the worker had died while idle (an
        out-of-memory kill): the job never reached it, so it is replaced and the job can go to the next.
        Any other error (an argument that cannot be pickled) is raised, the worker replaced."""
        try:
            worker.send(function, args)
        except WorkerCrashed:
            self._give_back(worker, healthy=False)
            return False
        except BaseException:
            self._give_back(worker, healthy=False)
            raise
        return True

    def _end_job(self, worker: _ProcessWorker, started: float, healthy: bool) -> None:
        """Count a job that held `worker` since `started` as done, and give the worker back."""
        self.stats.busy -= 1
        self.stats.completed += 1
        self.stats.job_seconds.append(time.perf_counter() - started)
        del self.stats.job_seconds[:-256]
        self._give_back(worker, healthy)

    def _give_back(self, worker: _ProcessWorker, healthy: bool) -> None:
        """Return a worker to the idle queue; one whose job did not end cleanly (timed out, cancelled,
        crashed: the process may be mid-job) is killed and replaced first.  Once the pool is closed, the
        worker is only stopped."""
        if self._idle is None or worker not in self._all:  # the pool was closed (and maybe started again)
            worker.kill()  # it is no longer the pool's: nothing would stop it, or a replacement
            return
        if not healthy:
            worker.kill()
            self._all.remove(worker)
            worker = _ProcessWorker(self._context, PRELOAD_MODULES)
            self._all.append(worker)
        self._idle.put_nowait(worker)

    async def _run_thread(self, function: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self._threads is not None  # set by start()
        loop = asyncio.get_running_loop()
        # A thread cannot be stopped: its place stays taken until the job really ends,
        # even when the request has already been answered 504.
        self.stats.reserved += 1

        def account(seconds: float) -> None:
            self.stats.busy -= 1
            self.stats.reserved -= 1
            self.stats.completed += 1
            self.stats.job_seconds.append(seconds)
            del self.stats.job_seconds[:-256]

        def job() -> T:
            loop.call_soon_threadsafe(self._mark_busy)
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                loop.call_soon_threadsafe(account, time.perf_counter() - started)

        future: Future[T] = self._threads.submit(job)
        return await asyncio.wrap_future(future)

    def _mark_busy(self) -> None:
        self.stats.busy += 1
