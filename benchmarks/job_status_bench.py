"""A large job's status (its per-tensor report) against ``/healthz`` answered meanwhile, on a real server.

Run: ``.venv/bin/python benchmarks/job_status_bench.py [--tensors 50000] [--rounds 3]``.  A job store is made
with one finished job of ``--tensors`` report rows (each a real row of a checkpoint job, renamed), and a stock
``uvicorn app.main:app`` serves it.  One client polls ``GET /healthz`` every 10 ms while another reads
``GET /v1/jobs/{id}`` (the whole report), then ``?report=false``, ``--rounds`` times each.  Printed: each read's
seconds and bytes, and the slowest ``/healthz`` answer of each phase against the median before them: the
status of a large job must not hold the other requests (its report is read and spliced on a thread).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.job_store import JobStore, TensorRecord
from tests.e2e.conftest import start_server

#: a compressed-tensors job's row for one 128 x 128 BF16 tensor (tests/checkpoints.py's llama), as stored
ROW = {"shape": [128, 128], "dtype": "BF16", "method": "rtn", "format": "int4-g128-asym",
       "bytes": {"input": 32768, "output": 8528}, "bits_per_weight": 4.1640625,
       "quality": {"relative_error": 0.10118648371591496, "sqnr_db": 19.897549915859372,
                   "max_abs_error": 0.0110931396484375, "cosine_similarity": 0.9949253174700116,
                   "output_relative_error": None, "fit_rows": None, "eval_rows": None,
                   "weighted_relative_error": None, "weighted_sqnr_db": None},
       "importance_used": False}


def make_store(state: Path, tensors: int) -> str:
    """A job store holding one cancelled (finished) job with `tensors` report rows; its id."""
    store = JobStore(state)
    job_id = uuid.uuid4().hex
    store.create(job_id, {"source": {"path": "bench"}, "method": "rtn", "output": "compressed-tensors"},
                 state / "source", tensors, tensors * 32768, [])
    for position in range(tensors):
        store.add_tensor(job_id, TensorRecord(position, 32768, 0.01,
                                              {"name": f"model.layers.{position}.mlp.down_proj.weight", **ROW}))
    store.finish(job_id, "cancelled")
    store.close()
    return job_id


def watched(base_url: str, work: Callable[[], None]) -> list[float]:
    """Run `work` while another thread times ``GET /healthz`` every 10 ms; those seconds."""
    seconds: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{base_url}/healthz")
                seconds.append(time.perf_counter() - started)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        work()
    finally:
        done.set()
        poller.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory) / "state"
        (Path(directory) / "data").mkdir()
        job_id = make_store(state, args.tensors)
        env = {"NIBBLE_STATE_DIR": str(state), "NIBBLE_DATA_DIR": str(Path(directory) / "data")}
        with start_server(env) as base_url:
            idle = watched(base_url, lambda: time.sleep(1.0))
            baseline = statistics.median(idle)
            print(f"job of {args.tensors} report rows; /healthz alone: median {baseline * 1e3:.1f} ms, "
                  f"slowest {max(idle) * 1e3:.1f} ms")
            for query in ("", "?report=false"):
                def read(query: str = query) -> None:
                    with httpx.Client(timeout=120) as client:
                        for _ in range(args.rounds):
                            started = time.perf_counter()
                            answer = client.get(f"{base_url}/v1/jobs/{job_id}{query}")
                            answer.raise_for_status()
                            print(f"  GET /v1/jobs/{{id}}{query}: {time.perf_counter() - started:.3f} s, "
                                  f"{len(answer.content):,} bytes")
                health = watched(base_url, read)
                print(f"  /healthz meanwhile: slowest {max(health) * 1e3:.1f} ms "
                      f"({max(health) / baseline:.0f} x its median alone)")


if __name__ == "__main__":
    main()
