"""A 2 GiB synthetic checkpoint quantized through the job API, against quantizing its tensors one by one in-process.

Run: ``.venv/bin/python benchmarks/job_bench.py [--gib 2] [--rows 4096]``.  The checkpoint: ``--gib`` GiB of
BF16 ``[rows, 4096]`` linear weights (``np.random.default_rng(i).standard_normal``) in shards of at most
500 MB, with an index and a llama config.json.  Baseline: in this process, each tensor read by byte range and
quantized by ``rtn`` g128 with every core (`read_tensor` + `quantize`), no output written.  Job: a stock
``uvicorn app.main:app`` (2 pool workers, ``--concurrency`` tensors at once, ``--threads`` each),
``POST /v1/jobs`` (compressed-tensors) timed to ``succeeded``: reading, quantizing, writing each part, the shards
(synced), index and config.  Targets (issue 21):
job throughput >= 0.8x the baseline's; peak RSS of the process that quantizes a tensor <= 3x the largest tensor
+ 256 MiB (sampled every 20 ms with psutil; the server process and the sum are printed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import psutil

from quant_core.checkpoint import open_checkpoint, read_tensor
from quant_core.formats import int4
from quant_core.quantize import quantize
from quant_core.tensorio import write_safetensors

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 4096
MIB = 1 << 20
SHARD_LIMIT = 500 * 10**6


def write_checkpoint(directory: Path, total_bytes: int, rows: int) -> int:
    """Write the synthetic checkpoint; returns the largest tensor's bytes."""
    directory.mkdir(parents=True)
    tensor_bytes = rows * COLUMNS * 2
    count = max(1, total_bytes // tensor_bytes)
    weight_map: dict[str, str] = {}
    shard: dict[str, np.ndarray] = {}
    shards = 0

    def flush() -> None:
        nonlocal shards
        shards += 1
        name = f"model-{shards:05d}.safetensors"
        write_safetensors(directory / name, shard, {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for index in range(count):
        if shard and (len(shard) + 1) * tensor_bytes > SHARD_LIMIT:
            flush()
        rng = np.random.default_rng(index)
        shard[f"model.layers.{index}.mlp.up_proj.weight"] = (
            rng.standard_normal((rows, COLUMNS), dtype=np.float32).astype(ml_dtypes.bfloat16))
    flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": COLUMNS}))
    return tensor_bytes


def in_process_seconds(directory: Path) -> float:
    checkpoint = open_checkpoint(directory)
    started = time.perf_counter()
    for tensor in checkpoint.tensors:
        quantize(read_tensor(checkpoint.directory, tensor), int4(128), "rtn")
    return time.perf_counter() - started


class PeakRss:
    """Peak resident set of a process and of its children, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.server = self.worker = self.total = 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            try:
                server = self.process.memory_info().rss
                children = [child.memory_info().rss for child in self.process.children(recursive=True)]
            except psutil.Error:
                break
            self.server = max(self.server, server)
            self.worker = max([self.worker, *children])
            self.total = max(self.total, server + sum(children))
            time.sleep(0.02)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def job_seconds(data_root: Path, state_dir: Path, concurrency: int, threads: int) -> tuple[float, PeakRss]:
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "NIBBLE_STATE_DIR": str(state_dir), "NIBBLE_DATA_DIR": str(data_root),
           "NIBBLE_POOL_WORKERS": "2", "NIBBLE_JOB_TENSOR_CONCURRENCY": str(concurrency),
           "NIBBLE_JOB_THREADS": str(threads)}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                               "--log-level", "warning"], cwd=REPO_ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(2)  # the pool's workers start in the background; let them settle before timing
        peak = PeakRss(server.pid)
        started = time.perf_counter()
        job = httpx.post(f"{url}/v1/jobs", json={"source": {"path": "synthetic"}}, timeout=600).json()
        quantized_at = None
        while (status := httpx.get(f"{url}{job['url']}", timeout=60).json())["state"] in ("queued", "running"):
            progress = status["progress"]
            if quantized_at is None and progress["tensors_done"] == progress["tensors_total"]:
                quantized_at = time.perf_counter() - started
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        worker_seconds = sum(entry.get("seconds", 0.0) for entry in status["report"])
        print(f"  job: every tensor's part written at {quantized_at or seconds:.2f} s, succeeded at {seconds:.2f} s "
              f"(the rest: shards, index, config); the tensors took {worker_seconds:.2f} s of worker time; "
              f"queued {status['started_at'] - status['created_at']:.2f} s")
        peak.stop()
        if status["state"] != "succeeded":
            raise SystemExit(f"job {status['state']}: {status['error']}")
        return seconds, peak
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=2, help="NIBBLE_JOB_TENSOR_CONCURRENCY (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="NIBBLE_JOB_THREADS (default 1)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nibble-job-bench-"))
    try:
        largest = write_checkpoint(work / "data" / "synthetic", int(args.gib * (1 << 30)), args.rows)
        total = open_checkpoint(work / "data" / "synthetic").total_bytes
        baseline = min(in_process_seconds(work / "data" / "synthetic") for _ in range(2))
        seconds, peak = job_seconds(work / "data", work / "state", args.concurrency, args.threads)
        ratio = baseline / seconds
        bound = 3 * largest + 256 * MIB
        print(f"checkpoint: {total / (1 << 30):.2f} GiB, largest tensor {largest / MIB:.0f} MiB, {os.cpu_count()} CPUs")
        print(f"  in-process (read + quantize, one by one): {baseline:7.2f} s  {total / baseline / MIB:7.1f} MiB/s")
        print(f"  job API (POST to succeeded, files written): {seconds:7.2f} s  {total / seconds / MIB:7.1f} MiB/s")
        passed = 'PASS' if ratio >= 0.8 else 'MISS'
        print(f"  throughput ratio job / in-process {ratio:6.3f}  (target >= 0.8)  {passed}")
        verdict = "PASS" if peak.worker <= bound else "MISS"
        print(f"  peak RSS of a worker {peak.worker / MIB:6.0f} MiB  (target <= 3 x largest + 256 = "
              f"{bound / MIB:.0f} MiB)  {verdict}")
        print(f"  peak RSS of the server process {peak.server / MIB:.0f} MiB; of server + workers together "
              f"{peak.total / MIB:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
