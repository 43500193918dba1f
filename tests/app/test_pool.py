"""The bounded pool: 503 with Retry-After when full, 504 past the time limit, typed errors across processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator

import pytest

from app.pool import WorkerPool
from app.problems import PoolFull, ShuttingDown, TimeLimitExceeded, WorkerCrashed
from quant_core.errors import InvalidSpec


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _fail(value: int) -> None:
    raise InvalidSpec("group_size", value, "must be one of [32, 64, 128, 256]")


@contextlib.asynccontextmanager
async def started_pool(kind: str = "process", workers: int = 1, queue: int = 1, time_limit_seconds: float = 60,
                       retry_after_seconds: int = 1) -> AsyncIterator[WorkerPool]:
    """A started pool (one worker process, one queued place, a minute's time limit), closed on the way out."""
    pool = WorkerPool(workers, queue, time_limit_seconds, retry_after_seconds, kind)  # type: ignore[arg-type]
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


async def _occupy(pool: WorkerPool, seconds: float) -> float:
    async with pool.reserve():
        return await pool.run(_sleep, seconds)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pool_full_answers_503_with_retry_after_then_recovers(kind: str) -> None:
    async def scenario() -> None:
        async with started_pool(time_limit_seconds=30, retry_after_seconds=7, kind=kind) as pool:
            busy = [asyncio.create_task(_occupy(pool, 0.5)) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(PoolFull) as refused:
                async with pool.reserve():
                    pass
            assert refused.value.headers == {"Retry-After": "7"}
            assert await asyncio.gather(*busy) == [0.5, 0.5]
            assert await _occupy(pool, 0.0) == 0.0
            assert pool.stats.rejected == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_job_past_the_time_limit_answers_504(kind: str) -> None:
    async def scenario() -> None:
        async with started_pool(queue=0, time_limit_seconds=0.3, kind=kind) as pool:
            with pytest.raises(TimeLimitExceeded):
                await _occupy(pool, 2.0 if kind == "process" else 0.6)
            if kind == "process":  # the stuck worker was killed and a fresh one took its place
                assert pool.stats.busy == 0 and pool.stats.timed_out == 1
                pool.time_limit_seconds = 60  # room for the replacement to start (imports NumPy)
                assert await _occupy(pool, 0.0) == 0.0

    asyncio.run(scenario())


def test_typed_core_errors_cross_the_process_boundary() -> None:
    async def scenario() -> None:
        async with started_pool(queue=0, time_limit_seconds=30) as pool:
            with pytest.raises(InvalidSpec) as raised:
                async with pool.reserve():
                    await pool.run(_fail, 100)
            assert (raised.value.field, raised.value.value) == ("group_size", 100)
            assert "100" in raised.value.detail

    asyncio.run(scenario())


def _answer_of(size: int, tag: int) -> tuple[int, bytes]:
    return tag, bytes([tag % 256]) * size


def _exit_now() -> None:
    import os
    os._exit(3)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_answers_larger_than_the_pipe_reach_their_own_request_whole(loop: str) -> None:
    # uvloop (what uvicorn runs) leaves the worker's pipe non-blocking once it watches it: an answer over
    # the pipe's 64 KiB buffer used to fail half-read, and the next request got the rest of it
    async def scenario() -> None:
        async with started_pool(queue=4) as pool:
            for tag, size in enumerate([5 << 20, 10, 300_000, 0, 64 << 10, 17 << 20, 3]):
                async with pool.reserve():
                    assert await pool.run(_answer_of, size, tag) == (tag, bytes([tag]) * size)
            assert pool.stats.completed == 7

    if loop == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(scenario())
    else:
        asyncio.run(scenario())


def test_a_worker_that_dies_mid_job_is_replaced_and_the_next_job_runs() -> None:
    async def scenario() -> None:
        async with started_pool() as pool:
            with pytest.raises(WorkerCrashed):
                async with pool.reserve():
                    await pool.run(_exit_now)
            async with pool.reserve():
                assert await pool.run(_answer_of, 100_000, 5) == (5, bytes([5]) * 100_000)

    asyncio.run(scenario())


def test_a_job_whose_idle_worker_had_died_runs_on_its_replacement() -> None:
    # the job never reached the dead worker (killed while idle, as by the out-of-memory killer): nothing to fail
    async def scenario() -> None:
        async with started_pool() as pool:
            assert await pool.run(_answer_of, 1, 1) == (1, b"\x01")
            (dead,) = pool._all
            dead.process.kill()
            dead.process.join()
            assert await pool.run(_answer_of, 10, 4) == (4, bytes([4]) * 10)
            assert dead not in pool._all and len(pool._all) == 1 and pool.stats.busy == 0

    asyncio.run(scenario())


def _identity(value: object) -> object:
    return value


def test_a_job_that_cannot_be_sent_fails_and_the_pool_keeps_a_worker() -> None:
    async def scenario() -> None:
        async with started_pool() as pool:
            with pytest.raises(TypeError, match="pickle"):
                await pool.run(_identity, threading.Lock())  # a lock cannot be pickled to the worker
            assert pool.stats.busy == 0
            assert await pool.run(_identity, 7) == 7

    asyncio.run(scenario())


def test_a_job_still_running_when_the_pool_closes_answers_503_at_once_and_leaves_no_worker_behind() -> None:
    async def scenario() -> None:
        pool = WorkerPool(workers=1, queue=1, time_limit_seconds=60, retry_after_seconds=3, kind="process")
        pool.start()
        job = asyncio.create_task(pool.run(_sleep, 30.0))
        await asyncio.sleep(0.2)
        closed = time.monotonic()
        pool.close()
        with pytest.raises(ShuttingDown) as stopped:  # not after the time limit: its worker is gone
            await job
        assert time.monotonic() - closed < 10 and stopped.value.headers == {"Retry-After": "3"}
        assert multiprocessing.active_children() == []

    asyncio.run(scenario())
