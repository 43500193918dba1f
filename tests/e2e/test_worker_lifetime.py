"""Pool workers die with their server (issue 17 #17), even when the server is killed with SIGKILL.

A SIGKILLed server runs no shutdown code, so nothing in it can stop its
workers: each worker asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``) and watches its parent's pid and its job pipe
(app/pool.py, `_die_with_parent`).  Before, a worker mid-job was re-parented
to init and went on spinning for as long as its job lasted.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.slow

#: a generous bound: the kernel's signal is immediate, the watchdog polls every 0.5 s
WORKERS_GONE_SECONDS = 5.0


def _npy(rows: int, columns: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(seed).standard_normal((rows, columns), dtype=np.float32))
    return buffer.getvalue()


def _server(base_url: str) -> psutil.Process:
    port = str(urlsplit(base_url).port)
    for child in psutil.Process().children():
        if port in child.cmdline():
            return child
    raise LookupError(f"no child process serves {base_url}")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def _settled_cpu_seconds(workers: list[psutil.Process]) -> dict[int, float]:
    """Each worker's CPU seconds once they stop growing for half a second (its imports done)."""
    deadline = time.monotonic() + 60
    before = {worker.pid: _cpu_seconds(worker) for worker in workers}
    while True:
        time.sleep(0.5)
        now = {worker.pid: _cpu_seconds(worker) for worker in workers}
        if all(now[pid] - before[pid] < 0.02 for pid in now) or time.monotonic() > deadline:
            return now
        before = now


def test_workers_die_within_seconds_of_their_server_being_sigkilled_one_of_them_mid_job(tmp_path: Path) -> None:
    content, calibration = _npy(4096, 4096, seed=0), _npy(256, 4096, seed=1)  # 64 MiB of weights
    # a SIGKILLed server cannot delete its upload's spool: keep it in the test's own directory, not the system's
    with start_server({"NIBBLE_POOL_WORKERS": "2", "NIBBLE_TEMP_DIR": str(tmp_path)}) as base_url:
        server = _server(base_url)
        workers = [child for child in server.children(recursive=True) if "multiprocessing" in " ".join(
            child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())]
        assert len(workers) == 2, [child.cmdline() for child in server.children(recursive=True)]
        idle_cpu = _settled_cpu_seconds(workers)  # once they have imported their modules

        def post() -> None:
            # ten seconds of work and more on one worker (gptq alone takes about 7 s on 4096 x 4096)
            with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
                httpx.post(f"{base_url}/v1/quantize/compare", data={"methods": "gptq,hqq,refit,clip"},
                           files={"file": ("w.npy", content), "calibration": ("x.npy", calibration)}, timeout=120)

        client = threading.Thread(target=post, daemon=True)
        client.start()
        deadline = time.monotonic() + 60
        while not any(_cpu_seconds(worker) > idle_cpu[worker.pid] + 1.0 for worker in workers):
            assert time.monotonic() < deadline, "no worker started the job"
            time.sleep(0.05)
        busy = [worker.pid for worker in workers if _cpu_seconds(worker) > idle_cpu[worker.pid] + 1.0]

        server.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        server.wait(timeout=10)
        while any(_alive(worker) for worker in workers) and time.monotonic() - killed < WORKERS_GONE_SECONDS:
            time.sleep(0.02)
        gone_after = time.monotonic() - killed
        survivors = [worker.pid for worker in workers if _alive(worker)]
        for worker in workers:  # never leave a spinning process behind, even when the test fails
            if _alive(worker):
                worker.kill()
        client.join(timeout=30)
    print(f"\n{len(workers)} workers ({len(busy)} mid-job) gone {gone_after:.2f} s after the server's SIGKILL")
    assert busy, "the job ended before the server was killed"
    assert survivors == [], f"workers {survivors} outlived their SIGKILLed server by {WORKERS_GONE_SECONDS} s"
    # the killed server ran no cleanup: its upload's spool is still on disk until the next start removes it
    assert list(tmp_path.glob("nibble-upload-*/part-*"))
    with start_server({"NIBBLE_TEMP_DIR": str(tmp_path)}):
        assert list(tmp_path.glob("nibble-upload-*")) == []
