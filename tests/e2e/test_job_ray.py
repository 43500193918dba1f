"""The same checkpoint job on a real local Ray cluster (``ray start --head``, started here) and on the local
pool gives byte-identical results."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from quant_core.tensorio import write_safetensors
from tests.app.conftest import client_with
from tests.app.test_jobs_budget import STATISTICS, importance_vectors
from tests.checkpoints import write_llama_checkpoint
from tests.e2e.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster: ``ray start --head --block`` in its own process group, stopped by signal."""
    if not RAY.exists():
        pytest.fail("ray is not installed (pyproject.toml dev dependencies pin it)")
    port = free_port()
    session_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    process = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={session_dir}"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(session_dir, ignore_errors=True)


def finished_files(client: TestClient, body: dict[str, Any]) -> dict[str, bytes]:
    job = client.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 300
    while (status := client.get(job.json()["url"]).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status["progress"]
        time.sleep(0.1)
    assert status["state"] == "succeeded", status["error"]
    return {file["name"]: client.get(file["url"]).content for file in status["result"]["files"]}


@pytest.mark.parametrize(("output", "budgeted"), [("compressed-tensors", False), ("gguf", False),
                                                  ("compressed-tensors", True), ("gguf", True)])
def test_job_on_a_local_ray_cluster_gives_the_pools_bytes(ray_cluster: str, tmp_path: Path, output: str,
                                                          budgeted: bool) -> None:
    write_llama_checkpoint(tmp_path / "data" / "llama", shards=3)
    body: dict[str, Any] = {"source": {"path": "llama"}, "output": output, "max_shard_bytes": 60_000}
    if output == "gguf":
        body.update(group_size=32, symmetric=True)
    if budgeted:  # each Ray task writes its tensor in the format the allocation chose, with its statistics
        (tmp_path / "data" / STATISTICS).parent.mkdir()
        write_safetensors(tmp_path / "data" / STATISTICS, importance_vectors())
        body.update(importance=STATISTICS, bits_per_weight=5.0)
    with client_with(state_dir=tmp_path / "pool-state", data_dir=tmp_path / "data") as client:
        on_pool = finished_files(client, body)
    with client_with(state_dir=tmp_path / "ray-state", data_dir=tmp_path / "data", ray_address=ray_cluster) as client:
        on_ray = finished_files(client, body)
        import ray

        assert ray.is_initialized()  # the job's tensors went to the cluster (app/ray_runner.py connected)
        refused = client.post("/v1/jobs", json={"source": {"path": "llama"}, "output": "gguf"})
        assert refused.status_code == 422  # the source is still validated before anything is sent to Ray
    assert on_ray.keys() == on_pool.keys()
    for name, content in on_pool.items():
        assert on_ray[name] == content, name
