"""A checkpoint uploaded by the real tus client (tuspy) to a real uvicorn server, interrupted and resumed.

tuspy is the tus project's own Python client (PyPI ``tuspy``); it resumes an upload by asking the server the
offset (HEAD) and sending the rest (PATCH), as every tus 1.0.0 client does.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient import client as tus_client

from quant_core.tensorio import write_safetensors
from tests.app.test_jobs_budget import importance_vectors
from tests.checkpoints import tree_bytes, write_llama_checkpoint
from tests.e2e.conftest import start_server
from tests.e2e.test_job_resume import uvicorn_server

CHUNK_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("tus")
    write_llama_checkpoint(root / "data" / "llama", shards=3)
    env = {"NIBBLE_STATE_DIR": str(root / "state"), "NIBBLE_DATA_DIR": str(root / "data"),
           "NIBBLE_POOL_KIND": "thread"}
    with start_server(env) as base_url:
        yield base_url, root


def new_set(base_url: str) -> dict[str, Any]:
    answer = httpx.post(f"{base_url}/v1/uploads")
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def upload_directory(base_url: str, directory: Path) -> dict[str, Any]:
    """A new upload set holding each file of `directory`, sent by tuspy (an existing tus client)."""
    upload_set = new_set(base_url)
    client = tus_client.TusClient(base_url + upload_set["tus_url"])
    for path in sorted(directory.iterdir()):
        with path.open("rb") as stream:
            client.uploader(file_stream=stream, chunk_size=64 * 1024, metadata={"filename": path.name}).upload()
    return upload_set


def finished_job(base_url: str, job: dict[str, Any]) -> dict[str, Any]:
    """The status of `job` once it has succeeded (within two minutes)."""
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{base_url}{job['url']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["state"] == "succeeded", status["error"]
    done: dict[str, Any] = status
    return done


def new_file(base_url: str, upload_set: dict[str, Any], length: int) -> str:
    """Create the file ``a.bin`` of `length` bytes in `upload_set` (tus creation); its URL path."""
    created = httpx.post(base_url + upload_set["tus_url"], headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": "filename YS5iaW4="})  # a.bin
    return str(created.headers["location"])


@contextmanager
def patch_under_way(url: str, length: int, first: bytes) -> Iterator[socket.socket]:
    """A PATCH of `length` bytes at offset 0 whose body has sent only `first` so far (and is being received)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        connection.sendall((f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                            f"Content-Length: {length}\r\n\r\n").encode() + first)
        time.sleep(0.3)  # the server has read the head and is receiving the body
        yield connection


def offset_of(url: str) -> int:
    return int(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["upload-offset"])


def cut_patch(url: str, offset: int, body: bytes, sent_bytes: int) -> None:
    """A PATCH declaring `body` whose connection drops after `sent_bytes` of it (a network cut mid-body)."""
    parts = urlsplit(url)
    head = (f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port)) as connection:
        connection.sendall(head + body[:sent_bytes])
        time.sleep(0.2)


def test_an_upload_interrupted_twice_is_resumed_by_tuspy_and_arrives_byte_identical(
        server: tuple[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    base_url, root = server
    data = os.urandom(3 * 1024 * 1024 + 12_345)
    source = tmp_path / "model-00001-of-00001.safetensors"
    source.write_bytes(data)
    upload_set = new_set(base_url)
    client = tus_client.TusClient(base_url + upload_set["tus_url"])
    stream = source.open("rb")  # tuspy opens a file_path again for each request and never closes it
    request.addfinalizer(stream.close)

    # 1. the client stops a third of the way (a process stopped between chunks)
    first = client.uploader(file_stream=stream, chunk_size=CHUNK_BYTES, metadata={"filename": source.name})
    first.upload(stop_at=len(data) // 3)
    url = first.url
    assert offset_of(url) == first.offset == len(data) // 3

    # 2. the network drops in the middle of a PATCH body: what arrived is kept
    at = offset_of(url)
    cut_patch(url, at, data[at:at + 1_000_000], sent_bytes=600_000)
    deadline = time.monotonic() + 30
    while offset_of(url) == at:  # the server notices the drop and writes what it got
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kept = offset_of(url)
    assert at < kept <= at + 600_000

    # 3. a new tuspy uploader given the upload's URL asks the offset and sends the rest
    resumed = client.uploader(file_stream=stream, url=url, chunk_size=CHUNK_BYTES, retries=3, retry_delay=1)
    assert resumed.offset == kept
    resumed.upload()
    status = httpx.get(base_url + upload_set["url"]).json()
    assert status["complete"] is True and status["files"][0]["offset"] == len(data)
    assert (root / "state" / "uploads" / upload_set["id"] / "files" / source.name).read_bytes() == data


def test_a_patch_whose_offset_disagrees_is_409_on_a_real_server(server: tuple[str, Path]) -> None:
    base_url, _ = server
    upload_set = new_set(base_url)
    client = tus_client.TusClient(base_url + upload_set["tus_url"])
    uploader = client.uploader(file_stream=io.BytesIO(b"x" * 1000), chunk_size=100,
                               metadata={"filename": "config.json"})
    uploader.upload(stop_at=300)
    answer = httpx.patch(uploader.url, content=b"y" * 100, headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "200", "Content-Type": "application/offset+octet-stream"})
    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["field"] == "Upload-Offset"
    assert offset_of(uploader.url) == 300


@pytest.mark.parametrize("header", ["Upload-Length", "Upload-Offset"])
def test_a_length_or_offset_of_digits_that_are_not_ascii_is_400_naming_the_header(server: tuple[str, Path],
                                                                                header: str) -> None:
    # the byte 0xb2 is latin-1 '²', which str.isdigit() takes for a digit and int() refuses (it was a 500);
    # sent on a real connection, as no test client sends a header byte past ASCII unchanged
    base_url, _ = server
    upload_set = new_set(base_url)
    created = httpx.post(f"{base_url}{upload_set['tus_url']}", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "4", "Upload-Metadata": "filename Y29uZmlnLmpzb24="})
    target, method = ((f"{base_url}{upload_set['tus_url']}", "POST") if header == "Upload-Length"
                      else (base_url + created.headers["location"], "PATCH"))
    headers = [("Tus-Resumable", b"1.0.0"), ("Upload-Length", b"4"), ("Upload-Offset", b"0"),
               ("Upload-Metadata", b"filename YS5qc29u"), ("Content-Type", b"application/offset+octet-stream")]
    if method == "PATCH":  # a PATCH carries no Upload-Length (one that does is refused: tests/app/test_uploads.py)
        headers = [(name, value) for name, value in headers if name != "Upload-Length"]
    answer = httpx.request(method, target, content=b"0123",
                           headers=[(name, b"\xb2" if name == header else value) for name, value in headers])
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json", answer.text
    assert answer.json()["errors"][0]["field"] == header


def test_a_job_from_shards_uploaded_by_tuspy_gives_the_bytes_of_the_directory_job(
        server: tuple[str, Path]) -> None:
    base_url, root = server
    upload_set = upload_directory(base_url, root / "data" / "llama")
    results = []
    for source in ({"upload": upload_set["id"]}, {"path": "llama"}):
        job = httpx.post(f"{base_url}/v1/jobs", json={"source": source, "max_shard_bytes": 60_000}).json()
        status = finished_job(base_url, job)
        results.append({f["name"]: httpx.get(base_url + f["url"]).content for f in status["result"]["files"]})
    assert results[0] == results[1]
    assert set(results[0]) >= {"config.json", "model.safetensors.index.json", "nibble_report.json"}
    assert tree_bytes(root / "state" / "uploads" / upload_set["id"] / "files") == tree_bytes(root / "data" / "llama")


def test_an_upload_survives_sigkill_of_the_server_mid_patch_and_resumes_after_restart(tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 7)
    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path),
           "NIBBLE_POOL_KIND": "thread"}
    with uvicorn_server(env, tmp_path / "server.log") as (base_url, process):
        upload_set = new_set(base_url)
        first = tus_client.TusClient(base_url + upload_set["tus_url"]).uploader(
            file_stream=io.BytesIO(data), chunk_size=CHUNK_BYTES, metadata={"filename": "shard.safetensors"})
        first.upload(stop_at=1024 * 1024)
        file_path = urlsplit(first.url).path
        at = offset_of(first.url)
        parts = urlsplit(first.url)
        connection = socket.create_connection((parts.hostname, parts.port))
        connection.sendall((f"PATCH {file_path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                            f"Upload-Offset: {at}\r\nContent-Type: application/offset+octet-stream\r\n"
                            f"Content-Length: {len(data) - at}\r\n\r\n").encode() + data[at:at + 3 * 1024 * 1024])
        deadline = time.monotonic() + 30
        while offset_of(first.url) < at + 2 * 1024 * 1024:  # batches of 1 MiB reach the disk while the body flows
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # mid-body, the connection still open
        process.wait()
        connection.close()
    with uvicorn_server(env, tmp_path / "server.log") as (base_url, _):
        kept = offset_of(base_url + file_path)
        assert at + 2 * 1024 * 1024 <= kept <= at + 3 * 1024 * 1024
        resumed = tus_client.TusClient(base_url + upload_set["tus_url"]).uploader(
            file_stream=io.BytesIO(data), url=base_url + file_path, chunk_size=CHUNK_BYTES)
        assert resumed.offset == kept
        resumed.upload()
        assert httpx.get(base_url + upload_set["url"]).json()["complete"] is True
    assert (tmp_path / "state" / "uploads" / upload_set["id"] / "files" / "shard.safetensors").read_bytes() == data


def test_a_patch_body_that_pauses_locks_its_file_then_is_408_and_the_bytes_it_sent_are_kept(tmp_path: Path) -> None:
    env = {"NIBBLE_STATE_DIR": str(tmp_path / "state"), "NIBBLE_DATA_DIR": str(tmp_path),
           "NIBBLE_UPLOAD_IDLE_SECONDS": "3"}  # long enough for the two requests below on a loaded machine
    with start_server(env) as base_url:
        upload_set = new_set(base_url)
        url = base_url + new_file(base_url, upload_set, 100_000)
        with patch_under_way(url, 100_000, b"z" * 40_000) as connection:
            # while that body is being received, the file is locked (423, as tusd answers)
            second = httpx.patch(url, content=b"y", headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                                                             "Content-Type": "application/offset+octet-stream"})
            terminate = httpx.delete(url, headers={"Tus-Resumable": "1.0.0"})
            assert (second.status_code, terminate.status_code) == (423, 423)
            assert second.headers["retry-after"] == "1" and second.headers["tus-resumable"] == "1.0.0"
            answer = b""  # then nothing: the server gives up after 3 s, answers and closes
            while chunk := connection.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"application/problem+json" in answer and b"upload-stalled" in answer
        assert offset_of(url) == 40_000


def test_a_set_is_not_deleted_while_a_patch_to_one_of_its_files_is_received(server: tuple[str, Path]) -> None:
    # the set was removed (204) under the PATCH, which then answered 500 (its partial file was gone)
    base_url, _ = server
    upload_set = new_set(base_url)
    url = base_url + new_file(base_url, upload_set, 100_000)
    with patch_under_way(url, 100_000, b"z" * 40_000) as connection:
        refused = httpx.delete(base_url + upload_set["url"])
        assert (refused.status_code, refused.headers.get("content-type")) == (423, "application/problem+json")
        assert refused.headers["retry-after"] == "1"
        connection.sendall(b"z" * 60_000)
        assert connection.recv(65536).startswith(b"HTTP/1.1 204 ")
    assert offset_of(url) == 100_000
    assert httpx.delete(base_url + upload_set["url"]).status_code == 204  # once the PATCH has ended


def test_a_budgeted_job_takes_its_importance_file_from_the_upload_set(server: tuple[str, Path]) -> None:
    """The statistics uploaded with the shards (``importance``: a file of the set) give the bytes of the same
    job from a directory holding them; the statistics are not copied into the result."""
    base_url, root = server
    shutil.copytree(root / "data" / "llama", root / "data" / "llama-stats")
    write_safetensors(root / "data" / "llama-stats" / "imatrix.safetensors", importance_vectors())
    upload_set = upload_directory(base_url, root / "data" / "llama-stats")
    results = []
    for source, importance in (({"upload": upload_set["id"]}, "imatrix.safetensors"),
                               ({"path": "llama-stats"}, "llama-stats/imatrix.safetensors")):
        body = {"source": source, "importance": importance, "bits_per_weight": 4.4, "max_shard_bytes": 60_000}
        job = httpx.post(f"{base_url}/v1/jobs", json=body).json()
        status = finished_job(base_url, job)
        assert all(entry["importance_used"] for entry in status["report"] if "reason" not in entry)
        results.append({f["name"]: httpx.get(base_url + f["url"]).content for f in status["result"]["files"]})
    assert results[0] == results[1] and "imatrix.safetensors" not in results[0]
    outside = httpx.post(f"{base_url}/v1/jobs", json={"source": {"upload": upload_set["id"]},
                                                      "importance": "../../../data/llama-stats/imatrix.safetensors"})
    assert outside.status_code == 403 and outside.json()["errors"][0]["field"] == "importance"
