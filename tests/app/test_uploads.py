"""/v1/uploads: a checkpoint's files uploaded by the tus protocol 1.0.0, then quantized by a job.

The protocol's answers follow https://tus.io/protocols/resumable-upload (core, creation, termination);
tests/e2e/test_tus_upload.py drives a real server with the tuspy client.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import client_with
from tests.app.test_jobs import wait_for
from tests.checkpoints import tree_bytes, write_llama_checkpoint

PROBLEM = "application/problem+json"
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_llama_checkpoint(tmp_path / "data" / "llama", shards=3)
    return tmp_path / "data"


@pytest.fixture
def client(tmp_path: Path, data_root: Path) -> Iterator[TestClient]:
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, upload_max_file_bytes=1 << 20,
                     upload_max_files=16, upload_max_sets=4) as test_client:
        yield test_client


def metadata(name: str) -> str:
    return "filename " + base64.b64encode(name.encode()).decode()


def create_file(client: TestClient, set_url: str, name: str, length: int) -> str:
    answer = client.post(f"{set_url}/files", headers={**TUS, "Upload-Length": str(length),
                                                       "Upload-Metadata": metadata(name)})
    assert answer.status_code == 201, answer.text
    location: str = answer.headers["location"]
    return location


def patch(client: TestClient, url: str, offset: int, body: bytes, **headers: str) -> tuple[int, dict[str, str]]:
    answer = client.patch(url, content=body, headers={**TUS, "Upload-Offset": str(offset),
                                                      "Content-Type": "application/offset+octet-stream", **headers})
    return answer.status_code, {**answer.headers, "json": answer.text}


def upload_directory(client: TestClient, directory: Path, pieces: int = 3) -> str:
    """Upload every file of `directory` into a new set, each in `pieces` PATCHes; the set's id."""
    created = client.post("/v1/uploads").json()
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        url = create_file(client, created["url"], path.name, len(data))
        step = max(1, -(-len(data) // pieces))
        for offset in range(0, len(data), step):
            status, headers = patch(client, url, offset, data[offset:offset + step])
            assert status == 204, headers
            assert int(headers["upload-offset"]) == min(len(data), offset + step)
    set_id: str = created["id"]
    return set_id


def test_options_advertises_the_version_the_extensions_and_the_size_limit(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    answer = client.options(upload_set["tus_url"])
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.headers["tus-extension"] == "creation,termination,expiration"
    assert answer.headers["tus-max-size"] == str(1 << 20)


def test_head_tells_the_offset_and_patch_appends_at_it(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 10)
    head = client.head(url, headers=TUS)
    assert head.status_code == 200 and head.content == b""
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("0", "10")
    assert head.headers["tus-resumable"] == "1.0.0" and head.headers["cache-control"] == "no-store"
    assert patch(client, url, 0, b"0123")[0] == 204
    assert client.head(url, headers=TUS).headers["upload-offset"] == "4"
    status, headers = patch(client, url, 4, b"456789")
    assert (status, headers["upload-offset"]) == (204, "10")
    listed = client.get(upload_set["url"]).json()
    assert listed["complete"] is True
    assert listed["files"] == [{"id": url.rsplit("/", 1)[1], "name": "config.json", "length": 10, "offset": 10,
                                "complete": True, "url": url}]


def test_an_empty_patch_at_the_end_of_a_complete_file_is_204_and_changes_nothing(client: TestClient) -> None:
    # a client retrying its last PATCH with nothing left to send (it got 500: the file was sealed twice)
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 4)
    assert patch(client, url, 0, b"0123")[0] == 204
    status, headers = patch(client, url, 4, b"")
    assert (status, headers["upload-offset"], headers["upload-length"]) == (204, "4", "4")
    assert client.get(upload_set["url"]).json()["complete"] is True
    assert patch(client, url, 4, b"4")[0] == 413  # a byte past the declared length is still refused


def test_a_patch_whose_offset_disagrees_is_409_and_changes_nothing(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 10)
    assert patch(client, url, 0, b"0123")[0] == 204
    for wrong in (0, 2, 8):
        status, headers = patch(client, url, wrong, b"xx")
        assert status == 409 and headers["content-type"] == PROBLEM
        assert headers["tus-resumable"] == "1.0.0"  # every tus answer carries it, a refusal too
        assert '"field":"Upload-Offset"' in headers["json"] and "4 of 10 bytes are received" in headers["json"]
    assert client.head(url, headers=TUS).headers["upload-offset"] == "4"


def test_unsupported_tus_version_is_412_with_the_version_spoken(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    answer = client.post(upload_set["tus_url"], headers={"Tus-Resumable": "0.2.2", "Upload-Length": "4",
                                                         "Upload-Metadata": metadata("a.json")})
    assert answer.status_code == 412 and answer.headers["tus-version"] == "1.0.0"
    assert answer.json()["errors"][0]["field"] == "Tus-Resumable"
    url = create_file(client, upload_set["url"], "a.json", 4)
    answer = client.patch(url, content=b"abcd", headers={"Upload-Offset": "0",
                                                         "Content-Type": "application/offset+octet-stream"})
    assert answer.status_code == 412  # missing


def test_sizes_past_the_limits_are_413_naming_the_limit(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    answer = client.post(upload_set["tus_url"], headers={**TUS, "Upload-Length": str((1 << 20) + 1),
                                                         "Upload-Metadata": metadata("big.safetensors")})
    assert answer.status_code == 413 and answer.headers["content-type"] == PROBLEM
    assert (answer.json()["limit"], answer.json()["maximum"]) == ("upload_max_file_bytes", 1 << 20)
    url = create_file(client, upload_set["url"], "small.json", 4)
    status, headers = patch(client, url, 0, b"abcdef")  # two bytes past the declared length
    assert status == 413 and '"field":"Content-Length"' in headers["json"]
    assert client.head(url, headers=TUS).headers["upload-offset"] == "0"


def test_a_patch_past_the_declared_length_says_offset_plus_bytes_sent_against_it(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 5)
    assert patch(client, url, 0, b"abc")[0] == 204
    answer = client.patch(url, content=b"defgh", headers={
        **TUS, "Upload-Offset": "3", "Content-Type": "application/offset+octet-stream"})
    assert answer.status_code == 413 and answer.headers["tus-resumable"] == "1.0.0"
    problem = answer.json()
    # was "Upload-Length is 8, over the limit of 5": 8 is neither the declared length nor the bytes sent
    assert problem["detail"] == ("the PATCH sends 5 bytes at Upload-Offset 3: they would end at byte 8, past the "
                                 "declared Upload-Length of 5 (2 bytes remain); nothing was written")
    assert (problem["limit"], problem["value"], problem["maximum"]) == ("Upload-Length", 8, 5)
    assert problem["errors"] == [{"field": "Content-Length", "message": problem["detail"]}]
    assert client.head(url, headers=TUS).headers["upload-offset"] == "3"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is read until it passes the end
        yield b"de"
        yield b"fgh"

    answer = client.patch(url, content=chunks(), headers={
        **TUS, "Upload-Offset": "3", "Content-Type": "application/offset+octet-stream"})
    assert answer.status_code == 413 and answer.json()["errors"][0]["field"] == "body"
    assert answer.json()["detail"] == ("the PATCH sends at least 5 bytes at Upload-Offset 3: they would end at byte "
                                       "8, past the declared Upload-Length of 5 (2 bytes remain); the first 2 were "
                                       "kept (HEAD tells the offset)")
    assert client.head(url, headers=TUS).headers["upload-offset"] == "5"
    assert client.get(upload_set["url"]).json()["complete"] is True


@pytest.mark.parametrize(("headers", "status", "said"), [
    # tus 1.0.0 Creation: the value MUST be 1 ("should return 400" otherwise); a known length MUST omit it
    ({"Upload-Defer-Length": "0", "Upload-Length": "4"}, 400, "must be 1"),
    ({"Upload-Defer-Length": "yes"}, 400, "must be 1"),
    ({"Upload-Defer-Length": "1", "Upload-Length": "4"}, 400, "both sent"),
    # no creation-defer-length here: 501, as tusd answers a store that cannot defer (ErrNotImplemented)
    ({"Upload-Defer-Length": "1"}, 501, "creation-defer-length"),
])
def test_a_deferred_length_is_refused_as_tus_and_tusd_answer_a_server_without_the_extension(
        client: TestClient, headers: dict[str, str], status: int, said: str) -> None:
    upload_set = client.post("/v1/uploads").json()
    assert "creation-defer-length" not in client.options(upload_set["tus_url"]).headers["tus-extension"]
    answer = client.post(upload_set["tus_url"], headers={**TUS, "Upload-Metadata": metadata("a.json"), **headers})
    assert (answer.status_code, answer.headers["content-type"]) == (status, PROBLEM)
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.json()["errors"][0]["field"] == "Upload-Defer-Length" and said in answer.json()["detail"]
    assert client.get(upload_set["url"]).json()["files"] == []


@pytest.mark.parametrize("length", ["20", "10", "4"])
def test_a_patch_declaring_an_upload_length_is_400_and_changes_nothing(client: TestClient, length: str) -> None:
    # session 22's probe: a PATCH carrying Upload-Length 20 for a file created with 10 was 204, its length silently
    # kept at 10.  tus 1.0.0 sends Upload-Length in a PATCH only to declare a deferred length ("once set the length
    # MUST NOT be changed"); no length is deferred here, so tusd's answer for an upload whose length is not deferred
    # (ErrInvalidUploadLength, 400) is this server's, whatever the value
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 10)
    status, headers = patch(client, url, 0, b"abc", **{"Upload-Length": length})
    assert (status, headers["content-type"], headers["tus-resumable"]) == (400, PROBLEM, "1.0.0")
    assert '"field":"Upload-Length"' in headers["json"] and "not deferred" in headers["json"]
    head = client.head(url, headers=TUS)
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("0", "10")


def test_a_patch_body_of_another_media_type_is_415(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "a.json", 4)
    status, headers = patch(client, url, 0, b"abcd", **{"Content-Type": "application/octet-stream"})
    assert status == 415 and '"field":"Content-Type"' in headers["json"]


@pytest.mark.parametrize(("name", "status"), [("../config.json", 422), (".hidden", 422), ("a/b.json", 422),
                                              (None, 400)])
def test_file_names_must_be_plain_names(client: TestClient, name: str | None, status: int) -> None:
    upload_set = client.post("/v1/uploads").json()
    headers = {**TUS, "Upload-Length": "4"}
    if name is not None:
        headers["Upload-Metadata"] = metadata(name)
    answer = client.post(upload_set["tus_url"], headers=headers)
    assert answer.status_code == status and answer.headers["content-type"] == PROBLEM
    assert answer.json()["errors"][0]["field"] == "Upload-Metadata"


def test_a_metadata_key_given_twice_is_400_not_the_last_one_kept(client: TestClient) -> None:
    # tus 1.0.0: "All keys MUST be unique"; the last filename was kept without a word
    upload_set = client.post("/v1/uploads").json()
    answer = client.post(upload_set["tus_url"], headers={
        **TUS, "Upload-Length": "4", "Upload-Metadata": f"{metadata('config.json')},{metadata('tokenizer.json')}"})
    assert (answer.status_code, answer.headers["content-type"]) == (400, PROBLEM)
    assert answer.json()["errors"][0]["field"] == "Upload-Metadata" and "'filename'" in answer.json()["detail"]
    assert client.get(upload_set["url"]).json()["files"] == []


def test_a_name_twice_in_a_set_is_409_and_termination_frees_it(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "a.json", 4)
    again = client.post(upload_set["tus_url"], headers={**TUS, "Upload-Length": "4",
                                                        "Upload-Metadata": metadata("a.json")})
    assert again.status_code == 409
    assert client.delete(url, headers=TUS).status_code == 204
    assert client.head(url, headers=TUS).status_code == 404
    create_file(client, upload_set["url"], "a.json", 4)


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/v1/uploads/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/uploads/..").status_code == 404
    upload_set = client.post("/v1/uploads").json()
    assert client.head(f"{upload_set['tus_url']}/0123456789abcdef0123456789abcdef", headers=TUS).status_code == 404


def test_a_job_from_an_incomplete_set_is_409(client: TestClient) -> None:
    upload_set = client.post("/v1/uploads").json()
    create_file(client, upload_set["url"], "config.json", 10)
    answer = client.post("/v1/jobs", json={"source": {"upload": upload_set["id"]}})
    assert answer.status_code == 409
    assert answer.json()["errors"][0]["field"] == "source.upload"
    assert "config.json (0 of 10 bytes)" in answer.json()["detail"]


def test_a_job_source_is_a_path_or_an_upload_never_both(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json={"source": {"path": "llama", "upload": "x"}})
    assert answer.status_code == 422


def test_a_job_from_uploaded_files_gives_the_bytes_of_the_same_job_from_the_directory(
        client: TestClient, data_root: Path, tmp_path: Path) -> None:
    set_id = upload_directory(client, data_root / "llama")
    assert tree_bytes(tmp_path / "state" / "uploads" / set_id / "files") == tree_bytes(data_root / "llama")
    results = {}
    for source in ({"upload": set_id}, {"path": "llama"}):
        job = client.post("/v1/jobs", json={"source": source, "max_shard_bytes": 60_000})
        assert job.status_code == 202, job.text
        status = wait_for(client, job.json()["id"])
        assert status["state"] == "succeeded", status["error"]
        results[next(iter(source))] = {f["name"]: client.get(f["url"]).content for f in status["result"]["files"]}
    assert len(results["upload"]) > 3 and results["upload"] == results["path"]
    assert client.delete(f"/v1/uploads/{set_id}").status_code == 204
    assert client.get(f"/v1/uploads/{set_id}").status_code == 404


def test_sets_past_the_limit_are_413_and_a_deleted_set_frees_its_place(client: TestClient) -> None:
    made = [client.post("/v1/uploads") for _ in range(4)]
    assert [answer.status_code for answer in made] == [201] * 4
    refused = client.post("/v1/uploads")
    assert refused.status_code == 413
    assert (refused.json()["limit"], refused.json()["value"], refused.json()["maximum"]) == ("upload_max_sets", 5, 4)
    assert client.delete(made[0].json()["url"]).status_code == 204
    assert client.post("/v1/uploads").status_code == 201


def age(set_dir: Path, seconds: float) -> None:
    """Make every entry of an upload set look untouched for `seconds`."""
    then = time.time() - seconds
    for path in [set_dir, *set_dir.rglob("*")]:
        os.utime(path, (then, then))


def test_an_abandoned_set_expires_and_frees_its_place_for_a_new_one(client: TestClient, tmp_path: Path) -> None:
    made = [client.post("/v1/uploads").json() for _ in range(4)]  # upload_max_sets = 4
    url = create_file(client, made[0]["url"], "config.json", 4)
    status, headers = patch(client, url, 0, b"{}")
    expires = parsedate_to_datetime(headers["upload-expires"]).timestamp()
    assert status == 204 and abs(expires - (time.time() + 86400)) < 5  # the default: a day after the last byte
    assert client.post("/v1/uploads").status_code == 413
    age(tmp_path / "state" / "uploads" / made[0]["id"], 86400 + 60)
    assert client.post("/v1/uploads").status_code == 201
    assert client.get(made[0]["url"]).status_code == 404
    assert [client.get(m["url"]).status_code for m in made[1:]] == [200] * 3


def test_a_set_touched_within_its_expiry_is_kept(client: TestClient, tmp_path: Path) -> None:
    made = [client.post("/v1/uploads").json() for _ in range(4)]
    set_dir = tmp_path / "state" / "uploads" / made[0]["id"]
    url = create_file(client, made[0]["url"], "config.json", 4)
    age(set_dir, 86400 + 60)
    assert patch(client, url, 0, b"{}")[0] == 204  # a byte appended: touched now
    assert client.post("/v1/uploads").status_code == 413
    assert client.get(made[0]["url"]).status_code == 200


def test_an_expired_set_a_running_job_reads_is_not_removed(tmp_path: Path, data_root: Path) -> None:
    write_llama_checkpoint(tmp_path / "long", shards=10, layers=24)  # 168 tensors by hqq: seconds of work
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, upload_max_sets=1) as client:
        set_id = upload_directory(client, tmp_path / "long", pieces=1)
        job = client.post("/v1/jobs", json={"source": {"upload": set_id}, "method": "hqq"}).json()
        age(tmp_path / "state" / "uploads" / set_id, 86400 + 60)
        refused = client.post("/v1/uploads")
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running")
        assert refused.status_code == 413 and client.get(f"/v1/uploads/{set_id}").status_code == 200
        assert wait_for(client, job["id"], timeout_seconds=300)["state"] == "succeeded"
        assert client.post("/v1/uploads").status_code == 201  # the job is done: the expired set goes
        assert client.get(f"/v1/uploads/{set_id}").status_code == 404


def test_a_file_longer_than_the_free_disk_is_507(tmp_path: Path, data_root: Path) -> None:
    huge = 1 << 62  # more than any disk this runs on, and under the (raised) limits
    with client_with(state_dir=tmp_path / "state", data_dir=data_root, upload_max_file_bytes=huge,
                     upload_max_set_bytes=huge) as client:
        upload_set = client.post("/v1/uploads").json()
        answer = client.post(upload_set["tus_url"], headers={**TUS, "Upload-Length": str(huge),
                                                             "Upload-Metadata": metadata("big.safetensors")})
        assert answer.status_code == 507 and answer.headers["content-type"] == PROBLEM
        assert answer.json()["errors"][0]["field"] == "Upload-Length"
        assert client.get(upload_set["url"]).json()["files"] == []


def test_a_set_a_running_job_reads_cannot_change_until_the_job_ends(client: TestClient, tmp_path: Path) -> None:
    write_llama_checkpoint(tmp_path / "long", shards=9, layers=24)  # 168 tensors by hqq: seconds of work; 16 files
    set_id = upload_directory(client, tmp_path / "long", pieces=1)
    files = client.get(f"/v1/uploads/{set_id}").json()["files"]
    job = client.post("/v1/jobs", json={"source": {"upload": set_id}, "method": "hqq"}).json()
    refusals = [client.delete(f"/v1/uploads/{set_id}"), client.delete(files[0]["url"], headers=TUS),
                client.post(f"/v1/uploads/{set_id}/files", headers={**TUS, "Upload-Length": "2",
                                                                    "Upload-Metadata": metadata("extra.json")})]
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running")
    assert [answer.status_code for answer in refusals] == [409, 409, 409]
    assert all(f"job {job['id']} reads upload set" in answer.json()["detail"] for answer in refusals)
    assert wait_for(client, job["id"], timeout_seconds=300)["state"] == "succeeded"
    assert client.delete(f"/v1/uploads/{set_id}").status_code == 204


@pytest.mark.parametrize("meanwhile", ["HEAD", "GET", "DELETE"])
def test_a_file_read_while_its_last_patch_seals_it_is_sealed_once_by_that_patch(
        client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meanwhile: str) -> None:
    # session 22's probe (a PATCH, a DELETE and a HEAD of one file at once): the read saw the partial file whole and
    # moved it to its name itself, as it does for a file a kill left unsealed, while the PATCH was sealing it in a
    # thread; one of the two then found the partial file gone: a 500 for the PATCH, or for the DELETE or HEAD
    import app.tus as tus

    reached, go = threading.Event(), threading.Event()
    seal = tus._seal

    def gated_seal(partial: Path, final: Path) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the PATCH's own seal, in a worker thread: held until the read is answered
            reached.set()
            assert go.wait(10)
        seal(partial, final)

    monkeypatch.setattr(tus, "_seal", gated_seal)
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 4)
    with ThreadPoolExecutor(1) as executor:
        patched = executor.submit(patch, client, url, 0, b"abcd")
        assert reached.wait(10)
        read = client.request(meanwhile, url, headers=TUS)
        go.set()
        status, headers = patched.result()
    assert status == 204, headers["json"]
    assert headers["upload-offset"] == "4"
    if meanwhile == "DELETE":  # the PATCH holds the file
        assert (read.status_code, read.headers["content-type"]) == (423, PROBLEM)
    else:
        assert (read.status_code, read.headers["upload-offset"]) == (200, "4")
    set_dir = tmp_path / "state" / "uploads" / upload_set["id"]
    assert (set_dir / "files" / "config.json").read_bytes() == b"abcd"
    assert list((set_dir / "partial").iterdir()) == []


def test_a_whole_file_a_kill_left_unsealed_is_moved_to_its_name_when_next_read(client: TestClient,
                                                                               tmp_path: Path) -> None:
    upload_set = client.post("/v1/uploads").json()
    url = create_file(client, upload_set["url"], "config.json", 4)
    set_dir = tmp_path / "state" / "uploads" / upload_set["id"]
    (set_dir / "partial" / url.rsplit("/", 1)[1]).write_bytes(b"abcd")  # its last bytes written, then the kill
    assert client.get(upload_set["url"]).json()["complete"] is True
    assert (set_dir / "files" / "config.json").read_bytes() == b"abcd"
    assert list((set_dir / "partial").iterdir()) == []
