"""A pool worker's watchdog ends it when its parent dies, where the kernel's parent-death signal is not asked for.

``PR_SET_PDEATHSIG`` follows the thread that started the worker, so it is
only asked for when that is the main thread (app/pool.py); a worker started
from another thread (a server run in a thread) relies on its watchdog: the
job pipe hangs up, or its parent's pid changes.  The SIGKILLed-server case
with both guards is tests/e2e/test_worker_lifetime.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from app.pool import PARENT_POLL_SECONDS

# A parent that starts one worker from a thread other than its main thread and hands it two jobs: one that
# creates a marker file (so the test knows the worker is serving jobs), then one that sleeps for a minute
# (the GIL released, as NumPy's loops do); it prints the worker's pid and waits to be killed.
PARENT_SCRIPT = """
import multiprocessing, pathlib, sys, threading, time
from app.pool import PRELOAD_MODULES, _ProcessWorker

workers = []
thread = threading.Thread(target=lambda: workers.append(
    _ProcessWorker(multiprocessing.get_context("spawn"), PRELOAD_MODULES)))
thread.start()
thread.join()
workers[0].send(pathlib.Path.touch, (pathlib.Path(sys.argv[1]),))
workers[0].send(time.sleep, (60.0,))
print(workers[0].process.pid, flush=True)
time.sleep(120)
"""


def test_a_worker_started_from_another_thread_exits_when_its_parent_is_sigkilled_mid_job(tmp_path: Path) -> None:
    marker = tmp_path / "serving"
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        with parent.stdout:
            worker = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the worker never ran its first job"
            time.sleep(0.02)
        time.sleep(0.3)  # the second job has started: the worker sleeps in it
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        killed = time.monotonic()
        while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() - killed > 5:
                worker.kill()
                raise AssertionError("the worker outlived its SIGKILLed parent by 5 s")
            time.sleep(0.01)
        gone = time.monotonic() - killed
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    print(f"\nworker gone {gone:.2f} s after its parent's SIGKILL (watchdog polls every {PARENT_POLL_SECONDS} s)")
    assert gone < 5
