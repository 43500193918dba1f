"""`NibbleClient` / `AsyncNibbleClient`: typed answers from a real uvicorn server, one error type for problems."""

from __future__ import annotations

import asyncio
import io
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load

import app.client
from app.client import AsyncNibbleClient, Download, NibbleAPIError, NibbleClient, NibbleResponseError
from app.schemas.models import Health
from app.schemas.plans import PlanResponse
from tests.app.test_cli import NGINX_502, fixed_answer
from tests.e2e.conftest import start_server
from tests.threaded_server import silent_listener, uvicorn_in_thread

PLAN_BODY = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
             "workload": {"context_length": 32768, "concurrent_sequences": 8}}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with start_server() as base_url:
        yield base_url


@pytest.fixture
def weights_npy(tmp_path: Path) -> Path:
    path = tmp_path / "w.npy"
    np.save(path, np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32))
    return path


def test_plan_answer_is_typed_and_equals_the_raw_json(server: str) -> None:
    with NibbleClient(server) as client:
        answer = client.plan(PLAN_BODY)
        raw = client._http.post("/v1/plan", json=PLAN_BODY).json()
    assert isinstance(answer, PlanResponse)
    assert answer.model_dump(mode="json") == raw
    assert answer.comparison["int4"].fits and not answer.comparison["bf16"].fits


def test_engine_terms_and_kv_capacity_travel_through_the_client(server: str) -> None:
    body = {**PLAN_BODY, "runtime": {"engine": "vllm", "engine_version": "0.33", "max_num_seqs": 256}}
    with NibbleClient(server) as client:
        answer = client.plan(body)
        refused = client.plan({**PLAN_BODY, "hardware": {"device": "h100-80gb", "count": 3}})
        h100 = client.get_device("h100-80gb")
    assert (answer.engine.name, answer.engine.version, answer.engine.max_num_seqs) == ("vllm", "0.33", 256)
    assert answer.engine.max_batched_tokens == 8192  # vLLM's OpenAI-server default on a 70 GiB+ non-A100 device
    assert answer.kv_cache.capacity_tokens is not None and answer.kv_cache.capacity_tokens % 16 == 0
    assert answer.kv_cache.engine_max_concurrency is not None
    assert not refused.fits and refused.refusal is not None and "64 attention heads" in refused.refusal
    assert h100.reported_memory_bytes is not None and h100.reported_memory_bytes < h100.memory_bytes


def test_catalogs_inspect_and_sweep(server: str) -> None:
    with NibbleClient(server) as client:
        assert client.health() == Health(status="ok")
        assert "llama-3.1-70b" in {model.id for model in client.list_models()}
        assert client.get_model("llama-3.1-8b").total_parameters == 8_030_261_248  # meta-llama/Llama-3.1-8B
        assert client.get_device("h100-80gb").memory_bytes == 80 * 2**30
        assert "h100-80gb" in {device.id for device in client.list_devices()}
        # Llama-3.1-8B KV cache: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes = 131,072 bytes per token.
        assert client.inspect({"preset": "llama-3.1-8b"}).kv_bytes_per_token["bf16"] == 131072
        sweep = client.sweep({**PLAN_BODY, "sweep": {"context_lengths": [4096, 8192], "formats": ["bf16", "int4"]}})
    assert [(row.format.split("-")[0], row.context_length) for row in sweep.rows] == [
        ("bf16", 4096), ("bf16", 8192), ("int4", 4096), ("int4", 8192)]


def test_problems_raise_one_error_type_with_the_problem_fields(server: str) -> None:
    with NibbleClient(server) as client:
        with pytest.raises(NibbleAPIError) as missing:
            client.get_device("h100-80")
        with pytest.raises(NibbleAPIError) as invalid:
            client.plan({**PLAN_BODY, "workload": {"context_length": 0}})
    assert missing.value.status == 404
    assert missing.value.type.endswith("not-found")
    assert "h100-80gb" in missing.value.problem["close"]
    assert invalid.value.status == 422
    assert invalid.value.title
    assert [error.field for error in invalid.value.errors] == ["workload.context_length"]


def test_errors_reach_a_parent_process_whole_from_a_worker(server: str) -> None:
    with NibbleClient(server) as client, pytest.raises(NibbleAPIError) as invalid:
        client.plan({**PLAN_BODY, "workload": {"context_length": 0}})
    response = NibbleResponseError(200, "text/html", "<html> <body>", "not JSON")
    # what multiprocessing, concurrent.futures and Ray do with an exception raised in a worker
    received, received_response = pickle.loads(pickle.dumps(invalid.value)), pickle.loads(pickle.dumps(response))
    assert (received.status, received.title, received.detail, received.type, received.errors, received.problem) == (
        invalid.value.status, invalid.value.title, invalid.value.detail, invalid.value.type, invalid.value.errors,
        invalid.value.problem)
    assert [error.field for error in received.errors] == ["workload.context_length"] and str(received) == str(
        invalid.value)
    assert (received_response.status, received_response.excerpt, str(received_response)) == (
        200, "<html> <body>", str(response))


def test_quantize_compare_and_dequantize_round_trip(server: str, weights_npy: Path, tmp_path: Path) -> None:
    with NibbleClient(server) as client:
        report = client.quantize(weights_npy, method="rtn")
        comparison = client.compare(weights_npy, ["rtn", "clip"])
        download = client.quantize(weights_npy.read_bytes(), filename="w.npy", method="rtn", output="nibble")
        assert isinstance(download, Download)
        restored = client.dequantize(download.content, "float32", filename="q.safetensors")
    assert report.tensors[0].bytes.output == 8512  # 64 x 256, g128 asymmetric
    assert [result.method for result in comparison.tensors[0].results] == ["rtn", "clip"]
    assert download.summary["quantized_tensors"] == 1
    original = np.load(weights_npy)
    tensor = load(restored.content)["weight"]
    relative = float(np.linalg.norm(tensor - original) / np.linalg.norm(original))
    assert relative == pytest.approx(report.tensors[0].quality.relative_error, rel=1e-5)
    assert download.save(tmp_path / "q.safetensors").stat().st_size == len(download.content)


def test_a_file_object_the_caller_passes_stays_open_to_send_again(server: str, weights_npy: Path) -> None:
    with NibbleClient(server) as client, weights_npy.open("rb") as handle:
        first = client.quantize(handle, method="rtn")
        assert not handle.closed  # the caller's, not the client's: it was closed, and the seek below failed
        handle.seek(0)
        again = client.compare(handle, ["rtn"])
    assert again.tensors[0].results[0].quality == first.tensors[0].quality


def test_async_client_answers_the_same(server: str, weights_npy: Path) -> None:
    async def run() -> tuple[PlanResponse, float, int]:
        async with AsyncNibbleClient(server) as client:
            answer = await client.plan(PLAN_BODY)
            assert await client.health() == Health(status="ok")
            comparison = await client.compare(io.BytesIO(weights_npy.read_bytes()), ["rtn"], filename="w.npy")
            try:
                await client.get_model("nope")
            except NibbleAPIError as error:
                status = error.status
            return answer, comparison.tensors[0].results[0].quality.relative_error, status

    answer, relative_error, status = asyncio.run(run())
    with NibbleClient(server) as client:
        assert answer == client.plan(PLAN_BODY)
    assert 0 < relative_error < 0.2
    assert status == 404


def test_api_key_is_sent_as_a_bearer_token() -> None:
    with start_server({"NIBBLE_API_KEYS": "k1"}) as base_url:
        with NibbleClient(base_url) as anonymous, pytest.raises(NibbleAPIError) as refused:
            anonymous.list_devices()
        with NibbleClient(base_url, api_key="k1") as client:
            assert client.list_devices()
    assert refused.value.status == 401


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://example.org", "http://"])
def test_a_base_url_that_names_no_http_server_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="is not an http:// or https:// address"):
        NibbleClient(url)
    with pytest.raises(ValueError, match="is not an http:// or https:// address"):
        AsyncNibbleClient(url)


@pytest.mark.parametrize(("url", "reason"), [("http://127.0.0.1:99999", "Port out of range 0-65535"),
                                           ("http://127.0.0.1:0", "port 0"), ("http://[::1", "Invalid IPv6 URL")])
def test_a_base_url_with_a_port_or_host_that_cannot_be_is_refused_at_once(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"is not a valid address: {reason}"):
        NibbleClient(url)  # not a "Connection refused" at the first request


def test_white_space_around_a_base_url_is_dropped(server: str) -> None:
    with NibbleClient(f" {server}/\n") as client:  # NIBBLE_URL read from a file keeps its newline
        assert client.health() == Health(status="ok")


def test_both_clients_plan_and_sweep_a_checkpoint_from_its_headers_as_files(server: str, tmp_path: Path) -> None:
    from quant_core.tensorio.checkpoint_headers import read_header_prefix
    from tests.checkpoints import LLAMA_CONFIG, write_llama_checkpoint

    tensors = write_llama_checkpoint(tmp_path, shards=2)
    headers = {path.name: read_header_prefix(path) for path in sorted(tmp_path.glob("model-*.safetensors"))}
    index = (tmp_path / "model.safetensors.index.json").read_bytes()
    body = {"model": {"hf_config": LLAMA_CONFIG}, "hardware": {"device": "l4"}}
    sweep = {**body, "sweep": {"formats": ["checkpoint", "bf16"]}}
    planned = sum(int(array.nbytes) for array in tensors.values())
    with NibbleClient(server) as client:
        assert client.plan(body, checkpoint=headers, index=index).weights.bytes == planned
        assert client.sweep(sweep, checkpoint=headers, index=index).rows[0].weights_bytes == planned
        with pytest.raises(NibbleAPIError) as refused:  # the index names a shard the headers leave out
            client.plan(body, checkpoint=dict(list(headers.items())[:1]), index=index)
        assert refused.value.status == 422 and refused.value.errors[0].field == "index"

    async def run() -> tuple[int, int]:
        async with AsyncNibbleClient(server) as client:
            answer = await client.plan(body, checkpoint=headers, index=index)
            rows = (await client.sweep(sweep, checkpoint=headers)).rows
            return answer.weights.bytes, rows[0].weights_bytes

    assert asyncio.run(run()) == (planned, planned)


# --- answers that are not nibble's: an exception that says so, never a pydantic or JSON error ---------------------


@contextmanager
def client_of(app: Any, **config: Any) -> Iterator[NibbleClient]:
    """A client of `app` served by a real uvicorn."""
    with uvicorn_in_thread(app, **config) as port, NibbleClient(f"http://127.0.0.1:{port}") as client:
        yield client


def test_a_success_answer_that_is_not_nibbles_raises_a_response_error_with_a_one_line_excerpt() -> None:
    page = b"<html>\n<body>\n  <h1>Sign in to the guest Wi-Fi</h1>\n</body>\n</html>"
    with client_of(fixed_answer(200, "text/html; charset=utf-8", page)) as client, \
            pytest.raises(NibbleResponseError) as html:
        client.list_devices()

    async def health(port: int) -> None:
        async with AsyncNibbleClient(f"http://127.0.0.1:{port}") as client:
            await client.health()

    with uvicorn_in_thread(fixed_answer(200, "text/html", page)) as port, \
            pytest.raises(NibbleResponseError) as async_html:
        asyncio.run(health(port))
    with client_of(fixed_answer(200, "application/json", b'{"state": "running"}')) as client, \
            pytest.raises(NibbleResponseError) as shape:
        client.get_job("0123")
    assert (html.value.status, html.value.content_type, html.value.reason) == (200, "text/html", "not JSON")
    assert html.value.excerpt == "<html> <body> <h1>Sign in to the guest Wi-Fi</h1> </body> </html>"
    assert async_html.value.excerpt == html.value.excerpt
    assert shape.value.reason.startswith("JSON of another shape: ") and shape.value.excerpt == '{"state": "running"}'


def test_an_error_answer_that_is_no_problem_document_keeps_its_status_on_one_line() -> None:
    with client_of(fixed_answer(502, "text/html", NGINX_502)) as client, pytest.raises(NibbleAPIError) as proxy:
        client.plan(PLAN_BODY)
    with client_of(fixed_answer(503, "text/plain", b"Service Unavailable", {"Retry-After": "3"})) as client, \
            pytest.raises(NibbleAPIError) as busy:
        client.submit_job({"source": {"path": "llama"}})
    assert (proxy.value.status, proxy.value.title, proxy.value.is_problem) == (502, "Bad Gateway", False)
    assert "\n" not in proxy.value.detail and proxy.value.detail.startswith("text/html, not a problem document: ")
    assert (busy.value.status, busy.value.retry_after_seconds, busy.value.is_problem) == (503, 3, False)


def test_a_silent_event_stream_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await asyncio.sleep(30)  # a connection gone dead on the way: no heartbeat, no end

    monkeypatch.setattr(app.client, "EVENTS_READ_TIMEOUT_SECONDS", 0.5)
    with client_of(silent, timeout_graceful_shutdown=1) as client, pytest.raises(httpx.ReadTimeout):
        list(client.job_events("0123"))


def test_a_connection_that_is_never_made_fails_after_the_connect_timeout_not_the_read_one() -> None:
    with silent_listener() as port, NibbleClient(f"http://127.0.0.1:{port}", timeout_seconds=300,
                                                 connect_timeout_seconds=1) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            client.list_devices()
    assert time.monotonic() - started < 30  # 1 s asked; before, 300 s (the read timeout) applied to connecting
