"""``nibble quantize DIR -o OUTDIR`` locally and ``nibble jobs ...`` against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli import run
from app.client import AsyncNibbleClient, NibbleAPIError, NibbleClient
from quant_core.checkpoint import (
    DEFAULT_EXCLUDE,
    CheckpointOptions,
    attach_importance,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.tensorio import write_safetensors
from tests.app.conftest import client_with
from tests.app.test_cli import NGINX_502, fixed_answer
from tests.app.test_jobs import stored_jobs
from tests.app.test_jobs_budget import STATISTICS, importance_vectors
from tests.checkpoints import tree_bytes, write_llama_checkpoint
from tests.e2e.conftest import REPO_ROOT, start_server
from tests.threaded_server import uvicorn_in_thread


def nibble(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_llama_checkpoint(root / "llama", shards=2)
    rng = np.random.default_rng(5)  # 16 tensors of 8 MiB: seconds of hqq, to interrupt or cancel mid-way
    write_llama_checkpoint(root / "slow", shards=2, tensors={
        f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((1024, 2048), dtype=np.float32)
        for i in range(16)})
    (root / STATISTICS).parent.mkdir()
    write_safetensors(root / STATISTICS, importance_vectors())
    return root


@pytest.fixture(scope="module")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"NIBBLE_STATE_DIR": str(tmp_path_factory.mktemp("state")), "NIBBLE_DATA_DIR": str(data_root)}
    with start_server(env) as base_url:
        yield base_url


def test_quantize_a_checkpoint_directory_locally_gives_the_jobs_bytes(data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"),
                              "--max-shard-bytes", "100000")
    assert status == 0, err
    assert out.startswith(f"wrote {tmp_path / 'out'} (compressed-tensors): 14 tensors quantized by rtn, "
                          "7 passed through")
    assert err.count("\n") == 14 and "] 14/14 model.layers.1.mlp.down_proj.weight" in err
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(max_shard_bytes=100_000)  # one thread per tensor; the CLI used every core
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")


def _exclude_k_proj() -> list[str]:
    """``--exclude`` of the default globs and k_proj: a layer vLLM fuses (q/k/v) left out in part."""
    return [argument for glob in (*DEFAULT_EXCLUDE, "*k_proj*") for argument in ("--exclude", glob)]


def test_quantize_says_which_fused_layers_vllm_refuses_before_any_work_and_in_its_summary(data_root: Path,
                                                                                        tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"), "--format", "gptq",
                              *_exclude_k_proj())
    assert status == 0, err
    note = "note: model.layers.{0..1}.self_attn: k_proj passed through, q_proj and v_proj quantized. vLLM fuses"
    assert err.startswith(note) and err.index("] 1/12 ") > err.index(note)  # said before the first tensor
    assert out.splitlines()[1].startswith(note) and "12 tensors quantized" in out  # k_proj stays as asked


def test_jobs_submit_prints_the_notes_of_the_202(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "llama", "--format", "gptq", *_exclude_k_proj(), "--url", server)
    assert status == 0, err
    assert out.splitlines()[1].startswith("  note: model.layers.{0..1}.self_attn: k_proj passed through")
    status, out, err = nibble("jobs", "submit", "llama", "--format", "awq", *_exclude_k_proj(), "--watch",
                              "--url", server)
    assert status == 0, err
    note = "note: model.layers.{0..1}.self_attn: k_proj passed through, q_proj and v_proj quantized."
    assert err.splitlines()[1].startswith(note) and "utils/quant_utils.py" in err.splitlines()[1]  # before the wait


def test_quantize_refuses_a_non_empty_output_directory_and_the_nibble_format(data_root: Path,
                                                                          tmp_path: Path) -> None:
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path), "--format", "nibble")
    assert status == 1 and "compressed-tensors, gptq, awq or gguf" in err
    (tmp_path / "x").write_text("taken")
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path))
    assert status == 1 and "not empty" in err


def test_jobs_submit_watch_status_list_against_a_server(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "llama", "--format", "awq", "--watch", "--url", server)
    assert status == 0, err
    job_id = out.split()[1].rstrip(":")
    assert out.startswith(f"job {job_id}: succeeded") and "model.safetensors.index.json" in out
    assert "] 14/14 tensors, 576.00 of 576.00 KiB" in err and "(succeeded)" in err  # 589,824 bytes, not 0.00 GiB
    status, out, _ = nibble("jobs", "status", job_id, "--json", "--url", server)
    assert status == 0 and json.loads(out)["request"]["output"] == "awq" and len(json.loads(out)["report"]) == 21
    status, out, _ = nibble("jobs", "list", "--url", server)
    assert status == 0 and out.startswith(job_id)
    with NibbleClient(server) as client:  # a poll without the report (megabytes for a large job)
        light = client.get_job(job_id, report=False)
        assert "report" not in light and light["state"] == "succeeded"
        assert len(client.get_job(job_id)["report"]) == 21


def test_the_async_client_submits_follows_lists_downloads_and_deletes_a_job_as_the_sync_one(
        server: str, tmp_path: Path) -> None:
    body = {"source": {"path": "llama"}, "method": "rtn", "output": "compressed-tensors"}

    async def run() -> tuple[str, list[dict[str, Any]], list[str], dict[str, Any], list[Path]]:
        async with AsyncNibbleClient(server) as client:
            earlier = await client.submit_job(body)  # two jobs at least: pages of one follow the cursor
            job = await client.submit_job(body)
            events = [status async for status in client.job_events(job["id"])]
            listed = [entry["id"] async for entry in client.iter_jobs(page_size=1)]
            assert listed[:2] == [job["id"], earlier["id"]]
            status = await client.get_job(job["id"], report=False)
            files = [await client.download_job_file(file["url"], tmp_path / "async" / file["name"])
                     for file in status["result"]["files"] if "/" not in file["name"]]
            return job["id"], events, listed, status, files

    (tmp_path / "async").mkdir()
    job_id, events, listed, status, files = asyncio.run(run())
    assert events[-1]["state"] == status["state"] == "succeeded" and "report" not in status
    assert job_id in listed
    with NibbleClient(server) as client:
        assert listed == [entry["id"] for entry in client.list_jobs()]
        for path in files:
            assert path.read_bytes() == client.download_job_file(
                f"/v1/jobs/{job_id}/files/{path.name}", tmp_path / path.name).read_bytes()

    async def delete() -> tuple[dict[str, Any], int]:
        async with AsyncNibbleClient(server) as client:
            deleted = await client.cancel_job(job_id)
            try:
                await client.get_job(job_id)
            except NibbleAPIError as error:
                return deleted, error.status
        return deleted, 200

    deleted, after = asyncio.run(delete())
    assert deleted["state"] == "succeeded" and after == 404
    assert not list((tmp_path / "async").glob(".*.partial")) and len(files) >= 3


def test_jobs_errors_print_the_problem_and_exit_1(server: str) -> None:
    status, _, err = nibble("jobs", "submit", "../etc", "--url", server)
    assert status == 1 and "error: Path outside the data root (403)" in err and "source.path" in err
    status, _, err = nibble("jobs", "status", "nope", "--url", server)
    assert status == 1 and "(404)" in err
    status, _, err = nibble("jobs", "list")
    assert status == 1 and "--url" in err


def test_quantize_a_checkpoint_locally_under_a_budget_with_importance_gives_the_jobs_bytes(
        data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"),
                              "--importance", str(data_root / STATISTICS), "--bits-per-weight", "4.4")
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "nibble_report.json").read_text())
    allocation = report["allocation"]
    assert f"budget 162,201 bytes: {allocation['output_bytes']:,} written" in out
    assert allocation["output_bytes"] <= 162_201 and len(allocation["formats"]) >= 2
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(bits_per_weight=4.4)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")


def test_jobs_submit_sends_the_importance_path_and_the_budget(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "llama", "--importance", STATISTICS, "--budget-bytes", "170000",
                              "--watch", "--json", "--url", server)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["request"]["importance"] == STATISTICS and answer["request"]["budget_bytes"] == 170_000
    assert answer["result"]["allocation"]["output_bytes"] <= 170_000
    status, out, err = nibble("jobs", "status", answer["id"], "--url", server)
    assert status == 0 and f"  budget 170,000 bytes: {answer['result']['allocation']['output_bytes']:,} written" in out
    status, _, err = nibble("jobs", "submit", "llama", "--format", "gptq", "--bits-per-weight", "4.5",
                            "--url", server)
    assert status == 1 and "(422)" in err and "output" in err


def test_jobs_submit_takes_gguf_as_q4_0_and_leaves_a_budgets_group_size_to_the_budget(server: str) -> None:
    # before: --group-size defaulted to 128 and was always sent, so --format gguf was refused (Q4_0 is group 32
    # symmetric) and any budget was refused for sending a group size beside it
    status, out, err = nibble("jobs", "submit", "llama", "--format", "gguf", "--watch", "--json", "--url", server)
    assert status == 0, err
    answer = json.loads(out)
    assert answer["state"] == "succeeded" and answer["request"]["group_size"] == 32 and answer["request"]["symmetric"]
    status, out, err = nibble("jobs", "submit", "llama", "--bits-per-weight", "4.6", "--watch", "--json",
                              "--url", server)
    assert status == 0, err
    assert json.loads(out)["result"]["allocation"]["bits_per_weight"] <= 4.6
    status, _, err = nibble("jobs", "submit", "llama", "--bits-per-weight", "4.6", "--group-size", "64",
                            "--url", server)
    assert status == 1 and "(422)" in err and "send the budget without group_size" in err


def test_quantize_a_checkpoint_locally_as_gguf_takes_q4_0s_scheme(data_root: Path, tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"), "--format", "gguf")
    assert status == 0, err
    assert out.startswith(f"wrote {tmp_path / 'out'} (gguf)")
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(output="gguf", group_size=32, symmetric=True)
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "ref", tmp_path / "p")
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "ref")


# --- as a CI script meets them: exit statuses, what cancel did, interrupted runs, the server's bytes -------------


def nibble_process(*argv: str, **options: Any) -> subprocess.Popen[str]:
    """The console entry point in a child process (signals and exit statuses are the process's)."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **options)


def test_cancel_says_whether_it_cancelled_or_deleted_and_a_cancelled_job_exits_1(server: str) -> None:
    status, out, err = nibble("jobs", "submit", "slow", "--method", "hqq", "--url", server)
    assert status == 0, err
    job_id = out.split()[1].rstrip(":")
    status, out, _ = nibble("jobs", "cancel", job_id, "--url", server)
    assert status == 0
    assert out in (f"job {job_id}: cancelled\n", f"job {job_id}: cancelling (it stops after the tensors in flight)\n")
    status, out, err = nibble("jobs", "watch", job_id, "--url", server)
    assert (status, out, err.splitlines()[-1]) == (1, f"job {job_id}: cancelled\n", f"error: job {job_id} cancelled")
    status, out, _ = nibble("jobs", "status", job_id, "--json", "--url", server)
    assert status == 1 and json.loads(out)["state"] == "cancelled"
    status, _, err = nibble("jobs", "download", job_id, "-o", "never", "--url", server)
    assert (status, err) == (1, f"error: job {job_id} is cancelled: only a succeeded job has files to download\n")
    status, out, _ = nibble("jobs", "cancel", job_id, "--json", "--url", server)
    assert status == 0 and json.loads(out)["state"] == "cancelled"  # the JSON of DELETE: its last status
    status, _, err = nibble("jobs", "status", job_id, "--url", server)
    assert status == 1 and "(404)" in err
    status, out, err = nibble("jobs", "submit", "llama", "--watch", "--url", server)
    job_id = out.split()[1].rstrip(":")
    status, out, _ = nibble("jobs", "cancel", job_id, "--url", server)
    assert (status, out) == (0, f"job {job_id}: deleted, with its files (it had succeeded)\n")


@pytest.mark.parametrize(("name", "exit_status", "said"), [("SIGINT", 130, "interrupted\n"),
                                                            ("SIGTERM", 143, "terminated\n")])
def test_a_watch_stopped_by_a_signal_says_the_job_goes_on(server: str, name: str, exit_status: int,
                                                          said: str) -> None:
    process = nibble_process("jobs", "submit", "slow", "--method", "hqq", "--watch", "--url", server)
    assert process.stderr is not None
    job_id = process.stderr.readline().split()[2]
    assert process.stderr.readline().startswith("[")
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=60)
    assert process.returncode == exit_status
    assert err.endswith(f"stopped watching; job {job_id} goes on on the server (nibble jobs watch {job_id}, or "
                        f"nibble jobs cancel {job_id})\n{said}")
    assert nibble("jobs", "cancel", job_id, "--url", server)[0] == 0


@pytest.mark.parametrize(("name", "exit_status", "said"), [("SIGINT", 130, "interrupted\n"),
                                                            ("SIGTERM", 143, "terminated\n")])
def test_an_interrupted_local_quantize_leaves_no_output_and_no_temporary_files(data_root: Path, tmp_path: Path,
                                                                               name: str, exit_status: int,
                                                                               said: str) -> None:
    (tmp_path / "temp").mkdir()
    process = nibble_process("quantize", str(data_root / "slow"), "-o", str(tmp_path / "out"), "--method", "hqq",
                             env={**os.environ, "NIBBLE_TEMP_DIR": str(tmp_path / "temp")})
    assert process.stderr is not None
    first = process.stderr.readline()
    assert first.startswith("[#") and "1/16" in first, first + process.stderr.read()
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == exit_status and err.endswith(said) and "Traceback" not in err
    assert [path.name for path in tmp_path.iterdir()] == ["temp"]  # no OUTDIR, no .out.partial-* beside it
    assert list((tmp_path / "temp").iterdir()) == []  # the tensors' parts are removed


def test_quantize_writes_through_an_output_that_is_a_link_to_an_empty_directory(data_root: Path,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "volume").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "volume")
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "out"), "--quiet")
    assert status == 0, err
    assert (tmp_path / "out").is_symlink() and (tmp_path / "volume" / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "volume"]


def test_quantize_refuses_an_output_that_is_a_file_before_any_work(data_root: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    status, _, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "taken"))
    assert (status, err) == (1, f"error: {tmp_path / 'taken'} is a file, not a directory; give a new directory\n")
    assert (tmp_path / "taken").read_text() == "a file"


def test_gguf_takes_q4_0s_scheme_locally_and_as_a_job_downloaded_with_the_same_bytes(data_root: Path, server: str,
                                                                                   tmp_path: Path) -> None:
    status, out, err = nibble("quantize", str(data_root / "llama"), "-o", str(tmp_path / "local"), "--format",
                              "gguf", "--quiet")
    assert status == 0, err
    status, out, err = nibble("jobs", "submit", "llama", "--format", "gguf", "--watch", "--json", "--url", server)
    assert status == 0, err
    answer = json.loads(out)
    assert (answer["request"]["group_size"], answer["request"]["symmetric"]) == (32, True)
    status, out, err = nibble("jobs", "download", answer["id"], "-o", str(tmp_path / "job"), "--url", server)
    assert (status, out) == (0, f"downloaded job {answer['id']}: 2 files, "
                                f"{sum(file['bytes'] for file in answer['result']['files']):,} bytes into "
                                f"{tmp_path / 'job'}\n"), err
    assert tree_bytes(tmp_path / "job") == tree_bytes(tmp_path / "local")
    status, _, err = nibble("jobs", "download", answer["id"], "-o", str(tmp_path / "job"), "--url", server)
    assert (status, err) == (1, f"error: {tmp_path / 'job'} exists and is not an empty directory; give a new "
                                "directory\n")
    status, out, err = nibble("jobs", "download", answer["id"], "-o", str(tmp_path / "again"), "--json", "--url",
                              server)
    assert status == 0 and json.loads(out) == {"id": answer["id"], "output": str(tmp_path / "again"),
                                               "files": answer["result"]["files"]}
    status, _, err = nibble("jobs", "submit", "llama", "--format", "gguf", "--group-size", "128", "--url", server)
    assert status == 1 and "GGUF Q4_0 holds int4 group-32 symmetric tensors" in err


def jobs_download_from(files: list[dict[str, Any]], output: Path) -> tuple[int, str, str]:
    """``nibble jobs download`` from a server answering every request with a succeeded job listing `files`
    (a hostile or broken server: each file's download gets that JSON too)."""
    status = {"id": "0123", "url": "/v1/jobs/0123", "state": "succeeded", "created_at": 0, "request": {},
              "progress": {"tensors_done": 0, "tensors_total": 0, "bytes_done": 0, "bytes_total": 0}, "report": [],
              "result": {"files": files}}
    with uvicorn_in_thread(fixed_answer(200, "application/json", json.dumps(status).encode())) as port:
        return nibble("jobs", "download", "0123", "-o", str(output), "--url", f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped", "sub/dir", ".."])
def test_jobs_download_refuses_a_file_name_that_is_not_a_plain_name(tmp_path: Path, name: str) -> None:
    code, _, err = jobs_download_from([{"name": name, "bytes": 2, "url": "/x"}], tmp_path / "out" / "job")
    assert (code, err) == (1, f"error: the server names a result file {name!r}, not a plain file name; nothing "
                              "downloaded\n")
    assert list(tmp_path.iterdir()) == []


def test_jobs_download_refuses_a_file_whose_size_is_not_the_listed_one(tmp_path: Path) -> None:
    files = [{"name": "model.safetensors", "bytes": 2, "url": "/v1/jobs/0123/files/model.safetensors"}]
    code, _, err = jobs_download_from(files, tmp_path / "job")
    assert code == 1 and err.startswith("error: model.safetensors: ") and err.endswith(
        " bytes arrived where the job lists 2; nothing downloaded\n")
    assert list(tmp_path.iterdir()) == []


def restarting_behind_a_proxy(job: dict[str, Any]) -> Any:
    """An ASGI app playing a job's server behind nginx through a restart: the job running, its event stream cut
    after one event, two 502 pages while the server is down, then the job succeeded."""
    answers = iter([("status", "running"), ("events", "running"), ("502", ""), ("502", ""),
                    ("status", "succeeded"), ("events", "succeeded")])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        kind, state = next(answers)
        body = json.dumps({**job, "state": state}).encode()
        if kind == "502":
            head, body = (502, b"text/html"), NGINX_502
        elif kind == "events":
            head, body = (200, b"text/event-stream"), b"event: status\ndata: " + body + b"\n\n"
        else:
            head = (200, b"application/json")
        await send({"type": "http.response.start", "status": head[0], "headers": [(b"content-type", head[1])]})
        await send({"type": "http.response.body", "body": body})
    return app


def test_watch_follows_a_job_through_a_proxys_502_pages_while_its_server_restarts() -> None:
    job = {"id": "0123", "url": "/v1/jobs/0123", "created_at": 0, "request": {}, "report": [],
           "progress": {"tensors_done": 3, "tensors_total": 3, "bytes_done": 6, "bytes_total": 6}}
    with uvicorn_in_thread(restarting_behind_a_proxy(job)) as port:
        status, out, err = nibble("jobs", "watch", "0123", "--url", f"http://127.0.0.1:{port}")
    assert (status, out) == (0, "job 0123: succeeded\n"), err
    assert err.splitlines()[1].startswith("connection to the server lost (502 Bad Gateway: text/html")
    assert err.splitlines()[-1].endswith("(succeeded)") and len(err.splitlines()) == 3


def test_jobs_list_and_the_client_follow_every_page_and_a_limit_says_when_jobs_are_left_out(
        tmp_path: Path) -> None:
    with client_with(state_dir=tmp_path / "state", data_dir=tmp_path) as app_client, \
            uvicorn_in_thread(app_client.app) as port:
        newest_first = stored_jobs(app_client, [float(number) for number in range(150)])  # two server pages
        url = f"http://127.0.0.1:{port}"
        with NibbleClient(url) as client:
            assert [job["id"] for job in client.list_jobs()] == newest_first
            assert [job["id"] for job in client.iter_jobs(page_size=7)] == newest_first
            page = client.jobs_page(limit=7, state="queued")
            assert [job["id"] for job in page["jobs"]] == newest_first[:7] and page["next_cursor"] is not None
            after = client.jobs_page(limit=7, cursor=page["next_cursor"], state=["queued", "failed"])
            assert [job["id"] for job in after["jobs"]] == newest_first[7:14]
            assert client.list_jobs(state="succeeded") == []
        status, out, err = nibble("jobs", "list", "--url", url)
        assert (status, [line.split()[0] for line in out.splitlines()], err) == (0, newest_first, "")
        status, out, err = nibble("jobs", "list", "--limit", "3", "--url", url)
        assert [line.split()[0] for line in out.splitlines()] == newest_first[:3]
        assert err == "more jobs follow these 3: a larger --limit, or none, lists them\n"
        status, out, err = nibble("jobs", "list", "--limit", "150", "--json", "--url", url)
        assert ([job["id"] for job in json.loads(out)], err) == (newest_first, "")
        status, out, err = nibble("jobs", "list", "--state", "failed", "--state", "cancelled", "--url", url)
        assert (status, out, err) == (0, "", "")
