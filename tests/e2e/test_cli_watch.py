"""``nibble jobs submit --watch`` as a CI script runs it: a real console process against a real server that is
killed (``kill -9``) and restarted mid-job; the watch follows the resumed job to its end and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.checkpoints import write_llama_checkpoint
from tests.e2e.conftest import REPO_ROOT, free_port
from tests.e2e.test_job_resume import status_of, uvicorn_server

TENSORS = 16


def test_watch_follows_a_job_across_a_server_kill_and_restart_to_its_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_llama_checkpoint(tmp_path / "data" / "slow", shards=2, tensors={
        f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((1024, 2048), dtype=np.float32)
        for i in range(TENSORS)})
    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path / "data"),
           "NIBBLE_POOL_WORKERS": "1", "NIBBLE_JOB_TENSOR_CONCURRENCY": "1"}
    port, log = free_port(), tmp_path / "server.log"
    with uvicorn_server(env, log, port) as (url, server):
        watch = subprocess.Popen([sys.executable, "-m", "app.cli", "jobs", "submit", "slow", "--method", "hqq",
                                  "--watch", "--url", url], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert watch.stderr is not None
        submitted = watch.stderr.readline()
        assert submitted.startswith("submitted job "), submitted + log.read_text()[-2000:]
        job_id = submitted.split()[2]
        assert watch.stderr.readline().startswith("[")  # the first progress line: the stream is open
        os.killpg(server.pid, signal.SIGKILL)  # the server and its pool workers, mid-job
        server.wait()
        time.sleep(1.5)  # the watch finds the server gone and keeps trying
    with uvicorn_server(env, log, port) as (url, _):
        out, err = watch.communicate(timeout=300)
        assert status_of(url, job_id)["state"] == "succeeded"
    assert watch.returncode == 0, err
    assert out.startswith(f"job {job_id}: succeeded")
    assert "connection to the server lost" in err and f"following job {job_id} again once it answers" in err
    assert f"] {TENSORS}/{TENSORS} tensors, 128.00 of 128.00 MiB" in err and err.rstrip().endswith("(succeeded)")
    assert "Traceback" not in err
