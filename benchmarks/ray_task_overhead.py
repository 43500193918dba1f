"""What a Ray task costs a checkpoint job: a no-op task's round trip, and one tensor on Ray against in-process.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/ray_task_overhead.py``.  Starts a one-node cluster
(``ray start --head --block --num-cpus 2``, its own process group, stopped at the end), connects, then measures
(best of 5 each): the round trip of a task returning None; `quantize_tensor_bytes` of one BF16 4096 x 4096
tensor (rtn g128, one thread) as a Ray task, whose 8.4 MB part comes back through Ray's object store; and the
same call in this process.  The difference is the per-task overhead a job pays per tensor on Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_tensor_bytes
from quant_core.tensorio import write_safetensors

REPO_ROOT = Path(__file__).resolve().parents[1]


def best(action: object, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def noop() -> None:
    return None


def main() -> None:
    import ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    work = Path(tempfile.mkdtemp(prefix="nibble-ray-bench-"))
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={session}"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        source = work / "model"
        source.mkdir()
        weights = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
        write_safetensors(source / "model.safetensors",
                          {"model.layers.0.mlp.up_proj.weight": weights.astype(ml_dtypes.bfloat16)})
        (source / "config.json").write_text(json.dumps({"model_type": "llama"}))
        checkpoint = open_checkpoint(source)
        options = CheckpointOptions()
        plan = plan_checkpoint(checkpoint, options)[0]
        started = time.perf_counter()
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, logging_level="WARNING")
        connect = time.perf_counter() - started
        remote_noop = ray.remote(num_cpus=1)(noop)
        remote_tensor = ray.remote(num_cpus=1)(quantize_tensor_bytes)
        ray.get(remote_noop.remote())  # workers started
        ray.get(remote_tensor.remote(checkpoint.directory, plan, options))
        round_trip = best(lambda: ray.get(remote_noop.remote()))
        on_ray = best(lambda: ray.get(remote_tensor.remote(checkpoint.directory, plan, options)))
        local = best(lambda: quantize_tensor_bytes(checkpoint.directory, plan, options))
        print(f"ray {ray.__version__}, {os.cpu_count()} CPUs; connect (ray.init) {connect:.2f} s")
        print(f"  no-op task round trip            {round_trip * 1e3:8.1f} ms")
        print(f"  4096 x 4096 BF16 tensor on Ray    {on_ray * 1e3:8.1f} ms")
        print(f"  the same in this process          {local * 1e3:8.1f} ms")
        print(f"  per-task overhead                 {(on_ray - local) * 1e3:8.1f} ms "
              f"({(on_ray - local) / local:.1%} of the tensor's time)")
        ray.shutdown()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(session, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
