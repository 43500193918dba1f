"""A checkpoint job survives ``kill -9`` of a real ``uvicorn app.main:app``: restarted on the same state
directory, the server resumes the job from its finished tensors and the result is byte-identical to an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import pytest

from quant_core.checkpoint import (
    CheckpointOptions,
    attach_importance,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.tensorio import write_safetensors
from tests.checkpoints import tree_bytes, write_llama_checkpoint
from tests.e2e.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

LAYERS = 30
JOB = {"source": {"path": "big"}, "method": "hqq", "output": "compressed-tensors", "max_shard_bytes": 4_000_000}


@contextmanager
def uvicorn_server(env: dict[str, str], log: Path,
                   port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Stock ``uvicorn app.main:app`` (no ``--http``) in its own process group, answering /healthz, on `port`
    (default: a free one)."""
    port = port or free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            cwd=REPO_ROOT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def status_of(url: str, job_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
    return answer


def test_job_killed_with_sigkill_resumes_after_restart_to_a_byte_identical_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((512, 2048), dtype=np.float32)
               .astype(ml_dtypes.bfloat16) for i in range(LAYERS)}
    write_llama_checkpoint(tmp_path / "data" / "big", shards=4, tensors=tensors)
    checkpoint = open_checkpoint(tmp_path / "data" / "big")
    options = CheckpointOptions(method="hqq", max_shard_bytes=4_000_000)
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "reference",
                        tmp_path / "reference-parts")
    expected = tree_bytes(tmp_path / "reference")

    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path / "data"),
           "NIBBLE_POOL_WORKERS": "1", "NIBBLE_JOB_TENSOR_CONCURRENCY": "1"}
    log = tmp_path / "server.log"
    with uvicorn_server(env, log) as (url, process):
        job = httpx.post(f"{url}/v1/jobs", json=JOB, timeout=30)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 120
        while (progress := status_of(url, job_id)["progress"])["tensors_done"] < 3:
            assert time.monotonic() < deadline, progress
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # the server and its pool workers, mid-job
        process.wait()
    done_at_kill = progress["tensors_done"]
    assert 3 <= done_at_kill < LAYERS, "the job must be killed mid-way; make its tensors slower"

    with uvicorn_server(env, log) as (url, _):
        resumed = status_of(url, job_id)
        assert resumed["progress"]["tensors_done"] >= done_at_kill  # finished tensors are kept, not redone
        deadline = time.monotonic() + 300
        while (status := status_of(url, job_id))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, status["progress"]
            time.sleep(0.1)
        assert status["state"] == "succeeded", status["error"]
        downloaded = {file["name"]: httpx.get(f"{url}{file['url']}", timeout=30).content
                      for file in status["result"]["files"]}
    assert downloaded.keys() == expected.keys()
    for name, content in expected.items():
        assert downloaded[name] == content, name
    print(f"killed at {done_at_kill}/{LAYERS} tensors; resumed result byte-identical ({len(expected)} files)")


def _wait_until(url: str, job_id: str, key: str, at_least: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while (progress := status_of(url, job_id)["progress"])[key] is None or progress[key] < at_least:
        assert time.monotonic() < deadline, progress
        time.sleep(0.02)
    return progress


def test_budgeted_job_killed_while_measuring_and_while_writing_resumes_to_a_byte_identical_result(
        tmp_path: Path) -> None:
    """Killed once among the measurements and once among the parts: the measurements kept are not redone, the
    allocation made from them is the same, and so is every byte (importance statistics included)."""
    rng = np.random.default_rng(11)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((512, 2048), dtype=np.float32)
               .astype(ml_dtypes.bfloat16) for i in range(LAYERS)}
    write_llama_checkpoint(tmp_path / "data" / "big", shards=4, tensors=tensors)
    vectors = {name: rng.gamma(0.5, 1.0, 2048).astype(np.float32) for name in tensors}
    write_safetensors(tmp_path / "data" / "imatrix.safetensors", vectors)
    checkpoint = open_checkpoint(tmp_path / "data" / "big")
    options = CheckpointOptions(method="hqq", max_shard_bytes=4_000_000, bits_per_weight=4.5)
    plans = attach_importance(plan_checkpoint(checkpoint, options), vectors)
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "reference", tmp_path / "reference-parts")
    assert len(report["allocation"]["formats"]) >= 2, report["allocation"]  # a mix
    expected = tree_bytes(tmp_path / "reference")

    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path / "data"),
           "NIBBLE_POOL_WORKERS": "1", "NIBBLE_JOB_TENSOR_CONCURRENCY": "1"}
    log = tmp_path / "server.log"
    body = {**JOB, "importance": "imatrix.safetensors", "bits_per_weight": 4.5}
    with uvicorn_server(env, log) as (url, process):
        job = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        measured = _wait_until(url, job_id, "tensors_measured", 3)["tensors_measured"]
        os.killpg(process.pid, signal.SIGKILL)  # mid-measurement
        process.wait()
    assert measured < LAYERS, "the job must be killed while measuring; make its tensors slower"
    with uvicorn_server(env, log) as (url, process):
        assert status_of(url, job_id)["progress"]["tensors_measured"] >= measured  # kept, not redone
        done = _wait_until(url, job_id, "tensors_done", 3)["tensors_done"]
        os.killpg(process.pid, signal.SIGKILL)  # mid-writing
        process.wait()
    assert done < LAYERS, "the job must be killed while writing parts; make its tensors slower"
    with uvicorn_server(env, log) as (url, _):
        deadline = time.monotonic() + 300
        while (status := status_of(url, job_id))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, status["progress"]
            time.sleep(0.1)
        assert status["state"] == "succeeded", status["error"]
        assert status["result"]["allocation"] == report["allocation"]
        downloaded = {file["name"]: httpx.get(f"{url}{file['url']}", timeout=30).content
                      for file in status["result"]["files"]}
    assert downloaded.keys() == expected.keys()
    for name, content in expected.items():
        assert downloaded[name] == content, name
    print(f"killed at {measured}/{LAYERS} measured and {done}/{LAYERS} written; resumed result byte-identical "
          f"({report['allocation']['formats']})")
