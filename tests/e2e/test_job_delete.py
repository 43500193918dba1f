"""DELETE of a finished job on a real ``uvicorn app.main:app``: a download of one of its files already being
sent completes whole, then the job's files are removed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.checkpoints import write_llama_checkpoint
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.slow


def test_a_job_deleted_while_its_file_downloads_sends_the_file_whole_then_removes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {"model.layers.0.self_attn.q_proj.weight": rng.standard_normal((128, 128), dtype=np.float32),
               "lm_head.weight": rng.standard_normal((4096, 2048), dtype=np.float32)}  # passed through: 32 MiB
    write_llama_checkpoint(tmp_path / "data" / "big", shards=1, tensors=tensors)
    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "server.log"
    with start_server(env, log_path=log) as url:
        job = httpx.post(f"{url}/v1/jobs", json={"source": {"path": "big"}}, timeout=30).json()
        deadline = time.monotonic() + 120
        while (status := httpx.get(f"{url}{job['url']}", timeout=10).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["state"] == "succeeded", status["error"]
        shard = max(status["result"]["files"], key=lambda entry: entry["bytes"])
        assert shard["bytes"] > 32 * 2**20  # more than the sockets buffer: the server is still sending below
        whole = httpx.get(f"{url}{shard['url']}", timeout=30).content
        job_dir = tmp_path / "state" / "jobs" / job["id"]
        with httpx.stream("GET", f"{url}{shard['url']}", timeout=30) as download:
            chunks = download.iter_bytes()
            first = next(chunks)
            deleted = httpx.delete(f"{url}{job['url']}", timeout=10)
            assert (deleted.status_code, deleted.json()["state"]) == (200, "succeeded")
            assert httpx.get(f"{url}{job['url']}", timeout=10).status_code == 404
            assert httpx.get(f"{url}{shard['url']}", timeout=10).status_code == 404  # no new download
            assert job_dir.exists()  # kept while the download is sent
            assert first + b"".join(chunks) == whole
        deadline = time.monotonic() + 10
        while job_dir.exists():  # removed when the download has ended
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert "Traceback" not in log.read_text()
