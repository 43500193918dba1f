"""/v1/jobs: a checkpoint quantized as a job through the API, watched, downloaded; hostile sources refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.checkpoint_jobs import PoolTensorRunner
from app.job_store import _SCHEMA, DATABASE_NAME, JobStore
from app.security import signed_path
from quant_core.checkpoint import (
    DEFAULT_EXCLUDE,
    INDEX_NAME,
    CheckpointOptions,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from tests.app.conftest import client_with, make_settings
from tests.checkpoints import llama_tensors, tree_bytes, write_llama_checkpoint

PROBLEM = "application/problem+json"


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_llama_checkpoint(tmp_path / "data" / "llama", shards=3)
    return tmp_path / "data"


@pytest.fixture
def jobs_client(tmp_path: Path, data_root: Path) -> Iterator[TestClient]:
    with client_with(state_dir=tmp_path / "state", data_dir=data_root) as client:
        yield client


def wait_for(client: TestClient, job_id: str, timeout_seconds: float = 60.0) -> dict[str, Any]:
    """Poll a job until it is finished (a generous bound that only catches a hang)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        status: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_job_quantizes_a_checkpoint_and_serves_the_files_of_the_in_process_result(
        jobs_client: TestClient, data_root: Path, tmp_path: Path) -> None:
    answer = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "method": "rtn",
                                                "output": "compressed-tensors", "max_shard_bytes": 60_000})
    assert answer.status_code == 202
    created = answer.json()
    assert answer.headers["location"] == created["url"] == f"/v1/jobs/{created['id']}"
    assert created["progress"]["tensors_total"] == 14 and created["progress"]["bytes_total"] == 589_824
    status = wait_for(jobs_client, created["id"])
    assert status["state"] == "succeeded", status["error"]
    progress = status["progress"]
    assert (progress["tensors_done"], progress["bytes_done"]) == (14, 589_824)
    assert progress["eta_seconds"] == 0.0 and progress["rate"] > 0
    quantized = [entry for entry in status["report"] if "reason" not in entry]
    passthrough = {entry["name"]: entry["reason"] for entry in status["report"] if "reason" in entry}
    assert len(quantized) == 14 and all(entry["seconds"] >= 0 for entry in quantized)
    assert passthrough["lm_head.weight"] == "name matches the exclude pattern '*lm_head*'"

    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(max_shard_bytes=60_000)
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "ref", tmp_path / "p")
    expected = tree_bytes(tmp_path / "ref")
    files = {entry["name"]: entry for entry in status["result"]["files"]}
    assert set(files) == set(expected)
    for name, entry in files.items():
        assert entry["bytes"] == len(expected[name])
        assert jobs_client.get(entry["url"]).content == expected[name], name


@pytest.mark.parametrize(("exclude", "noted"), [(["*k_proj*"], True), (["*q_proj*", "*k_proj*", "*v_proj*"], False)],
                         ids=["k_proj-alone", "all-of-q-k-v"])
def test_the_202_answer_says_which_fused_layers_vllm_would_refuse_before_any_work(
        jobs_client: TestClient, exclude: list[str], noted: bool) -> None:
    # vLLM refuses a qkv_proj whose q/k/v are stored differently (0.19 utils/gptq_utils.py lines 97-120): the plan
    # at submission knows it, so the 202 says so; the job still does what was asked (k_proj stays excluded)
    body = {"source": {"path": "llama"}, "output": "gptq", "exclude": [*DEFAULT_EXCLUDE, *exclude]}
    answer = jobs_client.post("/v1/jobs", json=body)
    assert answer.status_code == 202
    notes = answer.json()["engine_notes"]
    # a GPTQ job at the default symmetric=false: vLLM 0.33's AutoGPTQConfig refuses sym=False, said after the rest
    assert notes[-1].startswith("vLLM 0.33 will not load this result")
    if noted:
        (note,) = notes[:-1]
        assert note.startswith("model.layers.{0..1}.self_attn: k_proj passed through, q_proj and v_proj quantized. "
                               "vLLM fuses q_proj, k_proj and v_proj into one qkv_proj")
        assert "exclude or include q_proj, k_proj and v_proj together" in note
    else:
        assert notes[:-1] == []
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "succeeded", status["error"]
    assert status["engine_notes"] == notes
    assert sum(entry["name"].endswith("k_proj.weight") and "reason" in entry for entry in status["report"]) == 2
    (url,) = [entry["url"] for entry in status["result"]["files"] if entry["name"] == "nibble_report.json"]
    report = jobs_client.get(url).json()
    assert report["engine_notes"] == notes


def test_job_files_are_served_by_byte_range(jobs_client: TestClient) -> None:
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    status = wait_for(jobs_client, job["id"])
    shard = next(f for f in status["result"]["files"] if f["name"].startswith("model-00001"))
    whole = jobs_client.get(shard["url"]).content
    part = jobs_client.get(shard["url"], headers={"Range": "bytes=8-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 8-99/{shard['bytes']}"
    assert part.content == whole[8:100]
    tail = jobs_client.get(shard["url"], headers={"Range": f"bytes={shard['bytes'] - 10}-"})
    assert tail.content == whole[-10:]


def test_a_range_refused_is_a_problem_and_an_unknown_unit_is_ignored(jobs_client: TestClient) -> None:
    # Starlette's own answers were text/plain: 400 "Malformed range header", an empty 416, and a 400 for
    # a unit it does not know (RFC 9110 §14.2: ignored); and 416 as soon as one range of several was past the end
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    status = wait_for(jobs_client, job["id"])
    entry = next(f for f in status["result"]["files"] if f["name"] == "tokenizer.model")
    size, whole = entry["bytes"], jobs_client.get(entry["url"]).content
    for malformed in ("bytes=5-2", "bytes=abc", "bytes=", "bytes=-", "bytes=1-2-3", "bytes=+1-2", "bytes=1_0-20",
                      "bytes"):
        answer = jobs_client.get(entry["url"], headers={"Range": malformed})
        assert (answer.status_code, answer.headers["content-type"]) == (400, PROBLEM), malformed
        assert answer.json()["errors"][0]["field"] == "Range"
    for past in (f"bytes={size}-", f"bytes={size}-{size + 10}", "bytes=-0", f"bytes={'9' * 5000}-"):
        answer = jobs_client.get(entry["url"], headers={"Range": past})
        assert (answer.status_code, answer.headers["content-type"]) == (416, PROBLEM), past[:20]
        assert answer.headers["content-range"] == f"bytes */{size}"
        assert answer.json()["errors"][0]["field"] == "Range"
    for ignored in ("items=0-5", "Items=5-2"):  # a unit this server does not know: the whole file, 200
        answer = jobs_client.get(entry["url"], headers={"Range": ignored})
        assert (answer.status_code, answer.content) == (200, whole)
    some = jobs_client.get(entry["url"], headers={"Range": f"bytes=0-9,{size + 5}-{size + 9}"})  # one satisfiable
    assert (some.status_code, some.headers["content-range"], some.content) == (206, f"bytes 0-9/{size}", whole[:10])
    huge = jobs_client.get(entry["url"], headers={"Range": f"bytes=-{'9' * 5000}"})  # a suffix past the start
    assert (huge.status_code, huge.content) == (206, whole)
    stale = jobs_client.get(entry["url"], headers={"Range": "bytes=5-2", "If-Range": '"another-etag"'})
    assert (stale.status_code, stale.content) == (200, whole)  # If-Range fails: the Range is not read


def test_job_events_stream_status_until_the_job_is_finished(jobs_client: TestClient) -> None:
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "output": "awq"}).json()
    with jobs_client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["state"] == "succeeded"
    assert len(events[-1]["report"]) == 21 and all("report" not in event for event in events[:-1])
    done = [event["progress"]["tensors_done"] for event in events]
    assert done == sorted(done)


def test_an_event_stream_reads_the_report_once_for_its_last_event(jobs_client: TestClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # every event read and decoded the rows of every finished tensor, then dropped them: 300 streams on a
    # 2,100-tensor job held /healthz for 22 s and starved the job itself
    manager = jobs_client.app.state.jobs  # type: ignore[attr-defined]
    reads: list[str] = []
    report = manager.report_json
    monkeypatch.setattr(manager, "report_json", lambda record: (reads.append(record.state), report(record))[1])
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "method": "clip"}).json()
    reads.clear()  # the 202's own status holds the report (empty)
    with jobs_client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        events = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 2 and events[-1]["state"] == "succeeded" and len(events[-1]["report"]) == 21
    assert reads == ["succeeded"]


def test_the_report_is_every_stored_entry_with_its_seconds_then_the_passthrough_and_optional(
        jobs_client: TestClient) -> None:
    # the rows are spliced from the stored JSON text (not decoded and encoded again on the event loop: 50,000
    # tensors held /healthz 1.5 s), so they must be exactly the stored entries with their seconds
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    status = wait_for(jobs_client, job["id"])
    manager = jobs_client.app.state.jobs  # type: ignore[attr-defined]
    record = manager.store.get(job["id"])
    expected = [{**row.entry, "seconds": row.seconds} for row in manager.store.tensors(job["id"])]
    assert status["report"] == expected + record.passthrough and len(expected) == 14 and len(record.passthrough) == 7
    light = jobs_client.get(f"/v1/jobs/{job['id']}", params={"report": "false"})
    assert light.status_code == 200 and "report" not in light.json()
    assert light.json() == {key: value for key, value in status.items() if key != "report"}
    bad = jobs_client.get(f"/v1/jobs/{job['id']}", params={"report": "maybe"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "report"


def test_jobs_are_listed_newest_first_and_unknown_ids_are_404(jobs_client: TestClient, tmp_path: Path) -> None:
    first = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    second = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "output": "gptq"}).json()
    listed = [job["id"] for job in jobs_client.get("/v1/jobs").json()["jobs"]]
    assert listed == [second["id"], first["id"]]
    missing = jobs_client.get("/v1/jobs/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    for job in (first, second):
        wait_for(jobs_client, job["id"])
    # the same source twice: each job wrote its own directory (the store's output column is UNIQUE)
    assert sorted(p.name for p in (tmp_path / "state" / "jobs").iterdir()) == sorted([first["id"], second["id"]])


def stored_jobs(client: TestClient, created_at: list[float]) -> list[str]:
    """Job rows put straight into the app's store (no work is queued for them), created at the given times;
    their ids, newest first as GET /v1/jobs lists them (created_at descending, then id)."""
    store: JobStore = client.app.state.jobs.store  # type: ignore[attr-defined]
    rows = []
    for number, when in enumerate(created_at):
        job_id = f"{number:032x}"
        store.create(job_id, {"source": {"path": "llama"}}, Path("llama"), 1, 1, [])
        store._connection.execute("UPDATE jobs SET created_at = ? WHERE id = ?", (when, job_id))
        rows.append((-when, job_id))
    return [job_id for _, job_id in sorted(rows)]


def _every_page(client: TestClient, url: str) -> list[list[str]]:
    """The ids of each page, following `next` (and checking the Link header says the same) until it is null."""
    pages = []
    while url is not None:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append([job["id"] for job in body["jobs"]])
        assert answer.headers.get("link") == (f'<{body["next"]}>; rel="next"' if body["next"] else None)
        assert (body["next"] is None) == (body["next_cursor"] is None)
        url = body["next"]
    return pages


def test_jobs_are_listed_a_page_at_a_time_and_the_answer_says_when_more_follow(jobs_client: TestClient) -> None:
    # 101 jobs, three created in the same instant (their ids order them): the default page is 100, and the
    # 101st is on a second page the first one links to, not cut without a word (the old listing stopped at 1,000)
    times = [1_000.0 + number for number in range(98)] + [2_000.0, 2_000.0, 2_000.0]
    newest_first = stored_jobs(jobs_client, times)
    assert _every_page(jobs_client, "/v1/jobs") == [newest_first[:100], newest_first[100:]]
    pages = _every_page(jobs_client, "/v1/jobs?limit=3")
    assert [len(page) for page in pages] == [3] * 33 + [2]
    # the tie at 2,000.0 is split across pages without a repeat or a gap
    assert [job for page in pages for job in page] == newest_first
    # a limit that divides the jobs: the last full page says there is nothing after it
    assert _every_page(jobs_client, "/v1/jobs?limit=101") == [newest_first]


def test_a_job_deleted_between_two_pages_neither_repeats_nor_skips_one(jobs_client: TestClient) -> None:
    newest_first = stored_jobs(jobs_client, [10.0, 20.0, 30.0, 40.0, 50.0])
    first = jobs_client.get("/v1/jobs", params={"limit": 2}).json()
    jobs_client.app.state.jobs.store.delete(newest_first[0])  # type: ignore[attr-defined]
    jobs_client.app.state.jobs.store.delete(newest_first[2])  # type: ignore[attr-defined]
    assert [job["id"] for job in first["jobs"]] == newest_first[:2]
    assert _every_page(jobs_client, first["next"]) == [[newest_first[3], newest_first[4]]]


def test_the_state_filter_lists_only_those_states_and_its_next_page_keeps_it(jobs_client: TestClient) -> None:
    newest_first = stored_jobs(jobs_client, [float(number) for number in range(6)])
    store: JobStore = jobs_client.app.state.jobs.store  # type: ignore[attr-defined]
    for job_id in newest_first[::2]:
        store.finish(job_id, "failed", error={"detail": "x"})
    store.finish(newest_first[1], "cancelled")
    assert _every_page(jobs_client, "/v1/jobs?state=failed&limit=2") == [newest_first[0:3:2], [newest_first[4]]]
    assert _every_page(jobs_client, "/v1/jobs?state=queued&state=cancelled&limit=2") == [
        newest_first[1:4:2], [newest_first[5]]]
    assert _every_page(jobs_client, "/v1/jobs?state=succeeded") == [[]]


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"),
    ("state=done", "state[0]"), ("cursor=bm90IGEgY3Vyc29y", "cursor"), ("cursor=%FF", "cursor"),
    ("cursor=" + "A" * 201, "cursor"), ("page=2", "page"), ("limit=5&limit=6", "limit"),
    ("cursor=bmFuIHg&cursor=bmFuIHg", "cursor"), ("cursor=bmFuIHg", "cursor")])  # the last: 'nan x'
def test_a_bad_listing_parameter_is_a_422_naming_it(jobs_client: TestClient, query: str, field: str) -> None:
    stored_jobs(jobs_client, [1.0])
    answer = jobs_client.get(f"/v1/jobs?{query}")
    assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM), answer.text
    assert [error["field"] for error in answer.json()["errors"]] == [field]


def test_cancelled_job_ends_cancelled_and_keeps_no_files(jobs_client: TestClient, tmp_path: Path) -> None:
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "method": "clip"}).json()
    cancelled = jobs_client.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["state"] in ("cancelled", "running")
    assert wait_for(jobs_client, job["id"])["state"] == "cancelled"
    assert not (tmp_path / "state" / "jobs" / job["id"]).exists()
    refused = jobs_client.get(f"/v1/jobs/{job['id']}/files/config.json")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Until it is set, every job's tensors wait: the first job stays running and the ones after it queued."""
    gate = threading.Event()
    quantize = PoolTensorRunner.quantize

    async def gated(self: PoolTensorRunner, *args: Any) -> Any:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return await quantize(self, *args)

    monkeypatch.setattr(PoolTensorRunner, "quantize", gated)
    return gate


def test_past_max_unfinished_jobs_a_job_is_refused_503_with_retry_after_and_nothing_stored(
        tmp_path: Path, data_root: Path, gate: threading.Event) -> None:
    body = {"source": {"path": "llama"}}
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, max_unfinished_jobs=2,
                     retry_after_seconds=7) as client:
        first, second = (client.post("/v1/jobs", json=body).json() for _ in range(2))  # running, queued
        refused = client.post("/v1/jobs", json=body)
        assert (refused.status_code, refused.headers["content-type"], refused.headers["retry-after"]) == (
            503, PROBLEM, "7")
        assert refused.json()["type"] == "urn:nibble:problem:server-busy"
        assert refused.json()["detail"] == ("2 jobs are queued or running, the most this server takes "
                                            "(max_unfinished_jobs); retry in 7 s")
        assert [job["id"] for job in client.get("/v1/jobs").json()["jobs"]] == [second["id"], first["id"]]
        jobs_dir = tmp_path / "state" / "jobs"  # made when the running job writes its first part: maybe not yet
        stored = {path.name for path in jobs_dir.iterdir()} if jobs_dir.exists() else set()
        assert stored <= {first["id"], second["id"]}
        assert client.delete(second["url"]).json()["state"] == "cancelled"  # a queued job: at once
        third = client.post("/v1/jobs", json=body)
        assert third.status_code == 202
        assert client.post("/v1/jobs", json=body).status_code == 503
        gate.set()
        assert wait_for(client, first["id"])["state"] == "succeeded"
        fourth = client.post("/v1/jobs", json=body)
        assert fourth.status_code == 202
        for job in (third.json(), fourth.json()):
            assert wait_for(client, job["id"])["state"] == "succeeded"


def test_jobs_resumed_at_a_restart_count_toward_max_unfinished_jobs(tmp_path: Path, data_root: Path,
                                                                     gate: threading.Event) -> None:
    settings = {"state_dir": tmp_path / "state", "data_dir": data_root, "max_unfinished_jobs": 2}
    body = {"source": {"path": "llama"}}
    with client_with(**settings) as client:
        jobs = [client.post("/v1/jobs", json=body).json() for _ in range(2)]
    with client_with(**settings) as client:  # both resumed, the first waiting at the gate
        assert client.post("/v1/jobs", json=body).status_code == 503
        gate.set()
        assert [wait_for(client, job["id"])["state"] for job in jobs] == ["succeeded", "succeeded"]
        assert client.post("/v1/jobs", json=body).status_code == 202


def test_deleting_a_finished_job_removes_its_files_and_its_record(jobs_client: TestClient, tmp_path: Path,
                                                                  gate: threading.Event) -> None:
    jobs = tmp_path / "state" / "jobs"
    cancelled = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    assert jobs_client.delete(cancelled["url"]).json()["state"] in ("running", "cancelled")  # cancelled, kept
    gate.set()
    assert wait_for(jobs_client, cancelled["id"])["state"] == "cancelled"
    done = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    status = wait_for(jobs_client, done["id"])
    assert status["state"] == "succeeded" and (jobs / done["id"] / "output" / "config.json").is_file()
    for job, state in ((done, "succeeded"), (cancelled, "cancelled")):
        answer = jobs_client.delete(job["url"])
        assert (answer.status_code, answer.json()["state"]) == (200, state)  # its last status
        assert not (jobs / job["id"]).exists()
        for url in (job["url"], f"{job['url']}/files/config.json", f"{job['url']}/events"):
            assert jobs_client.get(url).status_code == 404, url
        again = jobs_client.delete(job["url"])
        assert (again.status_code, again.headers["content-type"]) == (404, PROBLEM)
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / DATABASE_NAME)) as connection:
        assert [connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("jobs", "tensors", "measurements")] == [0, 0, 0]


def test_a_deleted_jobs_files_stay_until_the_downloads_being_sent_end(jobs_client: TestClient,
                                                                      tmp_path: Path) -> None:
    # a download's file is opened once its answer starts: removed before then, the download broke mid-answer
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    wait_for(jobs_client, job["id"])
    manager = jobs_client.app.state.jobs  # type: ignore[attr-defined]
    manager.download(job["id"], started=True)
    manager.download(job["id"], started=True)
    assert jobs_client.delete(job["url"]).status_code == 200
    assert jobs_client.get(job["url"]).status_code == 404  # the record is gone at once
    manager.download(job["id"], started=False)
    assert (tmp_path / "state" / "jobs" / job["id"] / "output" / "config.json").is_file()
    manager.download(job["id"], started=False)
    assert not (tmp_path / "state" / "jobs" / job["id"]).exists()


def test_a_cancel_survives_a_restart_before_the_job_stops(tmp_path: Path) -> None:
    # a running job stops between tensors; a restart in between resumed it and it succeeded: the cancel was lost
    tensors = llama_tensors()
    first = next(name for name in tensors if name.endswith("q_proj.weight"))
    tensors[first] = np.random.default_rng(0).standard_normal((2048, 4096)).astype(np.float32)  # ~1 s of hqq
    write_llama_checkpoint(tmp_path / "data" / "big", tensors=tensors)
    settings = {"state_dir": tmp_path / "state", "data_dir": tmp_path / "data", "job_tensor_concurrency": 1}
    with client_with(**settings) as client:
        job = client.post("/v1/jobs", json={"source": {"path": "big"}, "method": "hqq"}).json()
        deadline = time.monotonic() + 60
        while client.get(job["url"]).json()["state"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.delete(job["url"]).json()["state"] == "running"  # it stops after the tensor in flight
    with client_with(**settings) as client:  # the server restarted at once
        status = wait_for(client, job["id"])
    assert status["state"] == "cancelled"
    assert not (tmp_path / "state" / "jobs" / job["id"]).exists()


def test_a_job_store_made_before_cancel_requests_were_kept_opens_with_its_jobs(tmp_path: Path) -> None:
    old_schema = _SCHEMA.replace(",\n    cancel_requested INTEGER NOT NULL DEFAULT 0", "").replace(
        ",\n    engine_notes TEXT NOT NULL DEFAULT '[]'", "")
    assert "cancel_requested" not in old_schema and "engine_notes" not in old_schema
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as connection:
        connection.executescript(old_schema)
        connection.execute("INSERT INTO jobs (id, created_at, state, request, source_dir, output_dir, tensors_total, "
                           "bytes_total, passthrough) VALUES ('j', 0, 'running', '{}', 's', 'o', 1, 1, '[]')")
        connection.commit()
    store = JobStore(tmp_path)
    try:
        assert [(record.cancel_requested, record.engine_notes) for record in store.unfinished()] == [(False, [])]
        store.request_cancel("j")
        assert store.get("j").cancel_requested is True  # type: ignore[union-attr]
    finally:
        store.close()


def test_only_the_manifests_names_are_served(jobs_client: TestClient) -> None:
    job = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    wait_for(jobs_client, job["id"])
    for name in ("jobs.sqlite3", "..%2F..%2Fjobs.sqlite3", "parts"):
        answer = jobs_client.get(f"/v1/jobs/{job['id']}/files/{name}")
        assert answer.status_code == 404, name


# --- hostile sources -----------------------------------------------------------------------------------------


def _problem(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json=body)
    assert answer.headers["content-type"] == PROBLEM, answer.text
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == answer.status_code
    return problem


@pytest.mark.parametrize("path", ["../llama", "llama/../../etc", "/etc", "/work", "llama/..\\..", "a\x00b"])
def test_source_paths_leaving_the_data_root_are_refused_403(jobs_client: TestClient, path: str) -> None:
    problem = _problem(jobs_client, {"source": {"path": path}})
    assert (problem["status"], problem["type"]) == (403, "urn:nibble:problem:path-refused")
    assert problem["errors"][0]["field"] == "source.path"
    # each refusal says why: the fuzzing hunt found a NUL byte called "absolute"
    reason = "NUL byte" if "\x00" in path else "absolute" if path.startswith("/") else "climbs out"
    assert reason in problem["detail"], problem["detail"]


@pytest.mark.parametrize("field", ["source.path", "importance"])
@pytest.mark.parametrize("path", ["a" * 300, "llama/" + "b" * 300, "loop", "loop/x"])
def test_a_path_that_cannot_be_resolved_is_422_naming_its_field(jobs_client: TestClient, data_root: Path,
                                                                field: str, path: str) -> None:
    # a name past NAME_MAX (255 bytes) and a symlink loop were 500s
    (data_root / "loop").symlink_to(data_root / "loop")
    body = {"source": {"path": path}} if field == "source.path" else {"source": {"path": "llama"}, "importance": path}
    problem = _problem(jobs_client, body)
    assert (problem["status"], problem["type"]) == (422, "urn:nibble:problem:checkpoint-error"), problem
    assert problem["errors"][0]["field"] == field and "cannot be resolved" in problem["detail"]


def test_a_source_that_is_no_directory_is_named_as_sent_not_by_the_servers_path(jobs_client: TestClient,
                                                                               data_root: Path) -> None:
    # the detail was "/srv/.../data/models/nope is not a directory": the data root's place on the server's disk
    (data_root / "models").mkdir(exist_ok=True)
    problem = _problem(jobs_client, {"source": {"path": "models/nope"}})
    assert problem["status"] == 422 and problem["detail"] == "'models/nope' is not a directory"
    assert str(data_root) not in json.dumps(problem)


def test_symlink_leading_out_of_the_data_root_is_refused(jobs_client: TestClient, data_root: Path,
                                                        tmp_path: Path) -> None:
    write_llama_checkpoint(tmp_path / "elsewhere")
    (data_root / "link").symlink_to(tmp_path / "elsewhere")
    problem = _problem(jobs_client, {"source": {"path": "link"}})
    assert problem["status"] == 403 and "symlink" in problem["detail"]


def test_symlinked_shard_leading_out_of_the_data_root_is_refused(jobs_client: TestClient, data_root: Path,
                                                                tmp_path: Path) -> None:
    shard = data_root / "llama" / "model-00002-of-00003.safetensors"
    shard.rename(tmp_path / "stolen.safetensors")
    shard.symlink_to(tmp_path / "stolen.safetensors")
    problem = _problem(jobs_client, {"source": {"path": "llama"}})
    assert (problem["status"], problem["type"]) == (422, "urn:nibble:problem:checkpoint-error")
    assert "outside the data root" in problem["detail"]


def test_a_file_whose_name_is_not_utf8_is_refused_422_at_submission(jobs_client: TestClient, data_root: Path) -> None:
    # it was copied through and its name put in the manifest: the job ran every tensor, then failed with a 500
    (data_root / "llama" / os.fsdecode(b"notes-\xff.txt")).write_bytes(b"x")
    problem = _problem(jobs_client, {"source": {"path": "llama"}})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "source.path"
    assert "is not UTF-8" in problem["detail"] and "notes-\\udcff.txt" in problem["detail"]
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []


def test_a_shard_whose_header_claims_10_to_the_12_elements_is_413_naming_the_source(jobs_client: TestClient,
                                                                                   data_root: Path) -> None:
    # refused from the header alone; the problem named 'file', a field POST /v1/jobs does not have
    header = json.dumps({"model.layers.0.mlp.up_proj.weight": {
        "dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    (data_root / "huge").mkdir()
    (data_root / "huge" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    problem = _problem(jobs_client, {"source": {"path": "huge"}})
    assert problem["status"] == 413 and problem["errors"][0]["field"] == "source.path"
    assert (problem["limit"], problem["value"]) == ("elements of tensor 'model.layers.0.mlp.up_proj.weight'", 10**12)


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", INDEX_NAME])
def test_a_file_copied_through_symlinked_out_of_the_data_root_is_refused_not_copied(
        jobs_client: TestClient, data_root: Path, tmp_path: Path, name: str) -> None:
    # the files beside the shards are checked as the shards are: nothing outside the data root is read
    path = data_root / "llama" / name
    path.rename(tmp_path / "secret")
    path.symlink_to(tmp_path / "secret")
    problem = _problem(jobs_client, {"source": {"path": "llama"}})
    assert (problem["status"], problem["type"]) == (422, "urn:nibble:problem:checkpoint-error")
    assert "outside the data root" in problem["detail"] and name in problem["detail"]
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []


def test_index_that_lies_is_refused_422(jobs_client: TestClient, data_root: Path) -> None:
    index_path = data_root / "llama" / INDEX_NAME
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    problem = _problem(jobs_client, {"source": {"path": "llama"}})
    assert (problem["status"], problem["type"]) == (422, "urn:nibble:problem:checkpoint-error")
    assert "model.norm.weight" in problem["detail"] and problem["errors"][0]["field"] == "source.path"


def test_truncated_shard_is_refused_422(jobs_client: TestClient, data_root: Path) -> None:
    shard = data_root / "llama" / "model-00003-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 1)
    problem = _problem(jobs_client, {"source": {"path": "llama"}})
    assert problem["status"] == 422 and "model-00003-of-00003.safetensors" in problem["detail"]


def test_missing_directory_and_bad_options_are_422(jobs_client: TestClient) -> None:
    assert _problem(jobs_client, {"source": {"path": "nothing"}})["status"] == 422
    gguf = _problem(jobs_client, {"source": {"path": "llama"}, "output": "gguf"})
    assert gguf["status"] == 422 and gguf["errors"][0]["field"] == "group_size"
    unknown = _problem(jobs_client, {"source": {"path": "llama"}, "method": "magic"})
    assert unknown["status"] == 422 and unknown["errors"][0]["field"] == "method"
    extra = _problem(jobs_client, {"source": {"path": "llama"}, "colour": "red"})
    assert extra["status"] == 422 and extra["errors"][0]["field"] == "colour"


def test_a_glob_past_1024_characters_is_refused_422_naming_it_before_any_work(jobs_client: TestClient) -> None:
    # /v1/quantize's include bound (issue 17): 50,000 '[' held a pool worker for 50 s before it
    for field in ("include", "exclude"):
        problem = _problem(jobs_client, {"source": {"path": "llama"}, field: ["*proj*", "[" * 1025]})
        assert problem["status"] == 422 and problem["errors"][0]["field"] == f"{field}[1]", problem
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []
    within = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "exclude": ["[" * 1024, "*norm*"]})
    assert within.status_code == 202


def test_a_key_given_twice_is_refused_422_naming_it_not_the_last_one_kept(jobs_client: TestClient,
                                                                         data_root: Path) -> None:
    # the JSON parser kept the last "source" without a word and the job quantized another checkpoint
    write_llama_checkpoint(data_root / "other", shards=1)
    for body, field in ((b'{"source": {"path": "llama"}, "source": {"path": "other"}}', "source"),
                        (b'{"source": {"path": "llama", "path": "other"}}', "source.path"),
                        (b'{"source": {"path": "llama"}, "exclude": ["*norm*"], "exclude": []}', "exclude")):
        answer = jobs_client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM), body
        assert answer.json()["errors"][0]["field"] == field and "appears twice" in answer.json()["detail"]
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize("group_size", [4096, 10**21])
def test_a_group_size_no_selected_weight_can_take_is_422_naming_group_size(jobs_client: TestClient,
                                                                            group_size: int) -> None:
    # it was refused naming 'include', which the request did not give
    problem = _problem(jobs_client, {"source": {"path": "llama"}, "group_size": group_size})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "group_size", problem
    assert f"is not a multiple of group_size {group_size}" in problem["detail"]
    narrowed = _problem(jobs_client, {"source": {"path": "llama"}, "include": ["nothing.*"]})
    assert narrowed["errors"][0]["field"] == "include"


def test_gguf_output_of_an_architecture_llama_cpp_would_not_load_is_422(jobs_client: TestClient,
                                                                         data_root: Path) -> None:
    config_path = data_root / "llama" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "architectures": ["GPT2LMHeadModel"]}))
    problem = _problem(jobs_client, {"source": {"path": "llama"}, "output": "gguf", "group_size": 32,
                                     "symmetric": True})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "output"
    assert "'GPT2LMHeadModel'" in problem["detail"]
    assert jobs_client.get("/v1/jobs").json()["jobs"] == []  # refused before a job existed


def test_jobs_without_state_dir_and_data_root_answer_404() -> None:
    with client_with() as client:
        problem = _problem(client, {"source": {"path": "llama"}})
    assert (problem["status"], problem["type"]) == (404, "urn:nibble:problem:jobs-not-configured")


def _write_with_a_non_finite_value(directory: Path, name: str, index: tuple[int, int], value: float) -> None:
    """The small llama checkpoint with one value of tensor `name` made NaN or infinite (seen only once read)."""
    tensors = llama_tensors()
    tensors[name] = tensors[name].copy()
    tensors[name][index] = value
    write_llama_checkpoint(directory, tensors=tensors)


def test_a_tensor_that_cannot_be_quantized_fails_the_job_with_its_problem(tmp_path: Path) -> None:
    broken = "model.layers.1.mlp.up_proj.weight"
    _write_with_a_non_finite_value(tmp_path / "data" / "nan", broken, (3, 5), np.nan)
    with client_with(state_dir=tmp_path / "state", data_dir=tmp_path / "data") as client:
        job = client.post("/v1/jobs", json={"source": {"path": "nan"}})
        assert job.status_code == 202  # NaN is only seen when the tensor is read
        status = wait_for(client, job.json()["id"])
    assert status["state"] == "failed" and status["result"] is None
    error = status["error"]
    assert (error["status"], error["type"]) == (422, "urn:nibble:problem:non-finite-values")
    assert error["detail"] == f"1 NaN/Inf value(s) in tensor {broken!r}; first at index [3, 5]"


def test_a_failed_job_keeps_no_files(tmp_path: Path) -> None:
    # its parts (the tensors quantized before the failure) were kept for ever: a failed job is never resumed,
    # and its files are not served, so nothing could use them and nothing removed them
    _write_with_a_non_finite_value(tmp_path / "data" / "inf", "model.layers.1.mlp.down_proj.weight", (0, 0), np.inf)
    with client_with(state_dir=tmp_path / "state", data_dir=tmp_path / "data") as client:
        job = client.post("/v1/jobs", json={"source": {"path": "inf"}}).json()
        status = wait_for(client, job["id"])
        assert status["state"] == "failed" and status["progress"]["tensors_done"] >= 12  # parts were written
        assert not (tmp_path / "state" / "jobs" / job["id"]).exists()
        refused = client.get(f"/v1/jobs/{job['id']}/files/config.json")
        assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM


def test_with_api_keys_a_jobs_file_urls_are_signed_and_download_without_the_header_until_they_expire(
        tmp_path: Path, data_root: Path) -> None:
    auth = {"Authorization": "Bearer k1"}
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, api_keys=["k1"],
                     download_url_seconds=60) as client:
        created = client.post("/v1/jobs", json={"source": {"path": "llama"}}, headers=auth).json()
        deadline = time.monotonic() + 60
        while (status := client.get(created["url"], headers=auth).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = status["result"]["files"][0]["url"]
        path, _, query = url.partition("?")
        params = dict(pair.split("=") for pair in query.split("&"))
        assert abs(int(params["expires"]) - (time.time() + 60)) < 5
        assert client.get(url).status_code == 200  # a browser's plain link: no Authorization header
        assert client.get(url).content == client.get(path, headers=auth).content
        assert client.get(path).status_code == 401  # unsigned, without a key
        forged = {**params, "expires": str(int(params["expires"]) + 3600)}  # a longer life is not signed
        refused = client.get(path, params=forged)
        assert refused.status_code == 401 and "signature" in refused.json()["detail"]
        other = client.get(created["url"], params=params)  # the signature is for that file's path only
        assert other.status_code == 401
        assert client.post(path, params=params).status_code in (401, 405)
        expired = signed_path(make_settings(api_keys=["k1"], download_url_seconds=1), path, now=time.time() - 10)
        assert client.get(expired).status_code == 401  # signed rightly, nine seconds ago
        assert client.get(signed_path(make_settings(api_keys=["k2"]), path)).status_code == 401  # other keys


@pytest.mark.parametrize("expires", ["%C2%B2", "%C2%B9%C2%B2", "%D9%A3"])  # '²', '¹²' (int() refuses), '٣' (Arabic 3)
def test_a_signed_link_whose_expiry_is_not_ascii_digits_is_401_not_a_500(tmp_path: Path, data_root: Path,
                                                                        expires: str) -> None:
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, api_keys=["k1"]) as client:
        answer = client.get(f"/v1/jobs/{'0' * 32}/files/config.json?expires={expires}&signature=00")
    assert answer.status_code == 401 and answer.headers["content-type"] == PROBLEM
    assert "signature" in answer.json()["detail"]


@pytest.mark.parametrize("api_keys", [[], ["k1"]])
def test_a_result_file_whose_name_holds_url_characters_downloads_from_its_url(tmp_path: Path, data_root: Path,
                                                                             api_keys: list[str]) -> None:
    # copied through from the source directory; its URL was the raw name, so '#' and '?' cut it short (404)
    name = "read me #1?%é.txt"
    (data_root / "llama" / name).write_bytes(b"notes")
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, api_keys=api_keys) as client:
        auth = {"Authorization": "Bearer k1"} if api_keys else {}
        created = client.post("/v1/jobs", json={"source": {"path": "llama"}}, headers=auth).json()
        deadline = time.monotonic() + 60
        while (status := client.get(created["url"], headers=auth).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        entry = next(entry for entry in status["result"]["files"] if entry["name"] == name)
        assert entry["url"].split("?")[0] == f"{created['url']}/files/read%20me%20%231%3F%25%C3%A9.txt"
        answer = client.get(entry["url"])  # no Authorization header: with keys, the link is signed
        assert (answer.status_code, answer.content) == (200, b"notes")


def test_without_api_keys_file_urls_are_plain_paths(jobs_client: TestClient) -> None:
    created = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}}).json()
    status = wait_for(jobs_client, created["id"])
    assert all("?" not in entry["url"] for entry in status["result"]["files"])


@pytest.mark.parametrize(("change", "field"), [
    ({"symmetric": "yes"}, "symmetric"), ({"symmetric": 1}, "symmetric"),
    ({"group_size": True}, "group_size"), ({"group_size": "128"}, "group_size"), ({"group_size": 128.0}, "group_size"),
    ({"bits_per_weight": "4.5"}, "bits_per_weight"), ({"max_shard_bytes": "1000"}, "max_shard_bytes"),
    ({"source": {"path": 7}}, "source.path"),
])
def test_a_job_body_of_the_wrong_json_type_is_a_422_naming_the_field_not_coerced(
        jobs_client: TestClient, change: dict[str, object], field: str) -> None:
    # the fuzzing hunt: the job body was read lax, so "symmetric": "yes" quantized symmetric and "group_size": true
    # was refused as "group_size=1"; the plan bodies were already strict
    response = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, **change})
    assert response.status_code == 422, response.text[:300]
    assert [error["field"] for error in response.json()["errors"]] == [field]


def test_a_job_body_keeps_its_spelled_out_whole_row_group_size(jobs_client: TestClient) -> None:
    for row in ("row", None):
        response = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "group_size": row})
        assert response.status_code == 202, response.text[:300]
        jobs_client.delete(response.json()["url"])
