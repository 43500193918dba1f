"""Issue 17 (items 1, 2, 3, 5, 8, 10, 13): hostile inputs that cost time, echo themselves or hold surrogates.

Each test sends the probe's repro (scaled to the test client) and checks the
answer: a typed 4xx naming its field, a few KiB at most, in well under a
second where the defect was time.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from app.problems import MAX_FIELD_CHARS, MAX_MESSAGE_CHARS
from app.routers.quantizations import _unless_client_leaves
from app.schemas.quantize import MAX_INCLUDE_CHARS
from quant_core.errors import LimitExceeded
from quant_core.single_file import ReadLimits, load_tensors
from quant_core.specs import MAX_NAME_CHARS
from quant_core.tensorio.limits import DEFAULT_MAX_NPY_HEADER_BYTES

#: the largest error answer any of these may get: a bounded detail and message, plus the problem's frame
MAX_ANSWER_BYTES = 4 * (MAX_MESSAGE_CHARS + MAX_FIELD_CHARS) + 1024
SPEC = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 4,
        "intermediate_size": 128, "vocab_size": 1000}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


W_NPY = _npy(np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32))


def _v2_npy(header: str, data: bytes = b"") -> bytes:
    encoded = header.encode("latin-1")
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(encoded)) + encoded + data


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file written by hand, so that names may be anything JSON can spell."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset, data = 0, b""
    for name, array in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        data += array.astype("<f4").tobytes()
    encoded = json.dumps(header).encode()  # ensure_ascii: a lone surrogate travels as its \ud800 escape
    return struct.pack("<Q", len(encoded)) + encoded + data


def _problem(response: Any, status: int, field: str) -> dict[str, Any]:
    """The problem document of `response`, checked: `status`, names `field`, bounded in size."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    assert len(response.content) <= MAX_ANSWER_BYTES, len(response.content)
    problem: dict[str, Any] = response.json()
    assert field in [error["field"] for error in problem["errors"]], problem["errors"]
    return problem


# --- item 1 and 5: the include glob -------------------------------------------------------------------------


def test_issue_17_item_1_an_include_of_50000_brackets_is_refused_422_naming_include(client: TestClient) -> None:
    started = time.perf_counter()
    response = client.post("/v1/quantize", files={"file": ("w.npy", W_NPY)}, data={"include": "[" * 50_000})
    assert time.perf_counter() - started < 5.0
    problem = _problem(response, 422, "include")
    assert f"at most {MAX_INCLUDE_CHARS} characters" in problem["detail"]


def test_an_include_at_the_length_limit_of_brackets_is_matched_at_once(client: TestClient) -> None:
    # fnmatch took ~20 ms here and its cost grows with the square; the glob matcher is linear (test_globs.py)
    weights = np.ones((8, 128), dtype=np.float32)
    content = _safetensors({"[" * (MAX_INCLUDE_CHARS - 1) + "x": weights, "other": weights})
    started = time.perf_counter()
    response = client.post("/v1/quantize", files={"file": ("w.safetensors", content)},
                           data={"include": "[" * (MAX_INCLUDE_CHARS - 1) + "*"})
    assert time.perf_counter() - started < 5.0
    assert response.status_code == 200, response.text[:300]
    assert [row["name"] for row in response.json()["tensors"]] == ["[" * (MAX_INCLUDE_CHARS - 1) + "x"]


@pytest.mark.parametrize(("include", "quantized"), [
    ("layers.[0-1].*", ["layers.0.w", "layers.1.w"]),
    ("layers.[!0-1].*", ["layers.2.w"]),
    ("*.w", ["layers.0.w", "layers.1.w", "layers.2.w"]),
    ("layers.?.w", ["layers.0.w", "layers.1.w", "layers.2.w"]),
])
def test_include_globs_select_tensors_as_fnmatch_would(client: TestClient, include: str,
                                                       quantized: list[str]) -> None:
    weights = np.ones((8, 128), dtype=np.float32)
    content = _safetensors({f"layers.{index}.w": weights for index in range(3)})
    response = client.post("/v1/quantize", files={"file": ("w.safetensors", content)}, data={"include": include})
    assert response.status_code == 200, response.text[:300]
    assert [row["name"] for row in response.json()["tensors"]] == quantized


# --- items 2 and 3: .npy headers --------------------------------------------------------------------------


def test_issue_17_item_2_a_1_mib_npy_header_is_refused_413_by_its_length(client: TestClient) -> None:
    header = "{'descr':'<f4','fortran_order':False,'shape':(" + "(1,2)," * 174_000 + ")}"
    started = time.perf_counter()
    response = client.post("/v1/quantize", files={"file": ("w.npy", _v2_npy(header, b"\0" * 32))})
    assert time.perf_counter() - started < 5.0
    problem = _problem(response, 413, "file")
    assert (problem["limit"], problem["value"], problem["maximum"]) == (
        "npy header bytes", len(header), DEFAULT_MAX_NPY_HEADER_BYTES)


def test_a_hostile_npy_header_within_64_kib_is_refused_422_at_once(client: TestClient) -> None:
    header = "{'descr':'<f4','fortran_order':False,'shape':(" + "(1,2)," * 10_900 + ")}"
    started = time.perf_counter()
    response = client.post("/v1/quantize", files={"file": ("w.npy", _v2_npy(header, b"\0" * 32))})
    assert time.perf_counter() - started < 5.0
    _problem(response, 422, "file")


def test_issue_17_item_3_a_16_mib_npy_header_is_refused_whatever_the_safetensors_limit(tmp_path: Path) -> None:
    # the 16 MiB header took a worker 67 s and 8.3 GB; the safetensors limit (16 MiB) no longer applies to .npy
    path = tmp_path / "big.npy"
    header = "{'descr':'<f4','fortran_order':False,'shape':(" + "(1,2)," * 2_790_000 + ")}"
    path.write_bytes(_v2_npy(header))
    started = time.perf_counter()
    with pytest.raises(LimitExceeded) as refused:
        load_tensors(path, "npy", ReadLimits(max_tensors=16, max_elements=1 << 20, max_header_bytes=16 << 20))
    assert time.perf_counter() - started < 1.0
    assert (refused.value.value, refused.value.maximum) == (len(header), DEFAULT_MAX_NPY_HEADER_BYTES)


# --- item 10: bounded error answers ----------------------------------------------------------------------


def test_issue_17_item_10_an_error_echoing_a_megabyte_is_cut_to_a_few_kib(client: TestClient) -> None:
    # issue 17: a 1 MiB .npy header got a 2.8 MB answer (detail and message each echoed it)
    response = client.post("/v1/models/inspect", json={"hf_config": {"model_type": "x" * (1 << 19)}})
    problem = _problem(response, 422, "hf_config.model_type")
    detail = problem["detail"]
    assert detail.startswith("model_type 'xxx") and detail.endswith(problem["errors"][0]["message"][-100:])
    assert "characters cut]…" in detail
    assert len(detail) <= MAX_MESSAGE_CHARS + 60


@pytest.mark.parametrize(("body", "field"), [
    ({"spec": {**SPEC, "name": "\x00" * 100_000}}, "spec.name"),
    ({"hf_config": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "vocab_size": 1000, "_name_or_path": "p" * 5_000}},
     "hf_config._name_or_path"),
], ids=["spec.name", "_name_or_path"])
def test_a_model_name_too_long_to_be_one_is_refused_422_not_echoed_into_every_answer(
        client: TestClient, body: dict[str, Any], field: str) -> None:
    # found by the cost fuzzing: a 100,000-character name (600 KB of JSON escapes) came back 200 in a 2.4 MB
    # inspect answer, the name echoed four times
    response = client.post("/v1/models/inspect", json=body)
    assert _problem(response, 422, field)["errors"][0]["message"].endswith(f"longer than {MAX_NAME_CHARS} characters")
    assert len(response.content) < 1024


def test_a_name_at_the_limit_is_answered(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"spec": {**SPEC, "name": "n" * MAX_NAME_CHARS}})
    assert response.status_code == 200 and response.json()["name"] == "n" * MAX_NAME_CHARS


def test_a_megabyte_json_key_is_named_in_a_bounded_field(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"spec": {**SPEC, "k" * (1 << 19): 1}})
    assert response.status_code == 422 and len(response.content) <= MAX_ANSWER_BYTES
    (error,) = response.json()["errors"]
    assert error["field"].startswith("spec.kkkk") and "characters cut]…" in error["field"]
    assert len(error["field"]) <= MAX_FIELD_CHARS + 60


def test_a_megabyte_methods_field_is_echoed_bounded(client: TestClient) -> None:
    response = client.post("/v1/quantize/compare", files={"file": ("w.npy", W_NPY)}, data={"methods": "m" * (1 << 20)})
    _problem(response, 422, "methods")


# --- item 8: lone surrogates ------------------------------------------------------------------------------


def _post_json(client: TestClient, path: str, body: object) -> Any:
    # json.dumps escapes the surrogate as \ud800, as a hostile client sends it
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/plan", {"model": {"spec": {**SPEC, "name": "\ud800"}}, "hardware": {"device": "h100-80gb"}},
     "model.spec.name"),
    ("/v1/plan/sweep", {"model": {"spec": {**SPEC, "name": "a\udfffb"}}, "hardware": {"device": "h100-80gb"},
                        "sweep": {"context_lengths": [1024]}}, "model.spec.name"),
    ("/v1/models/inspect", {"spec": {**SPEC, "name": "\ud800"}}, "spec.name"),
    ("/v1/models/inspect", {"hf_config": {"_name_or_path": "\ud800", "model_type": "llama", "hidden_size": 64,
                                          "num_hidden_layers": 2, "num_attention_heads": 4,
                                          "intermediate_size": 128, "vocab_size": 1000}},
     "hf_config._name_or_path"),
    ("/v1/plan", {"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb"}, "\ud800": 1}, "\\ud800"),
])
def test_issue_17_item_8_a_lone_surrogate_in_a_json_body_is_refused_422_naming_it(
        client: TestClient, path: str, body: object, field: str) -> None:
    problem = _problem(_post_json(client, path, body), 422, field)
    assert "\\ud800" in problem["detail"] or "surrogate" in problem["detail"] or "\\udfff" in problem["detail"]


@pytest.mark.parametrize(("path", "fields"), [
    ("/v1/quantize", {}), ("/v1/quantize", {"output": "nibble"}), ("/v1/quantize/compare", {}),
    ("/v1/dequantize", {}),
])
def test_issue_17_item_8_a_tensor_named_with_a_lone_surrogate_is_refused_422(client: TestClient, path: str,
                                                                              fields: dict[str, str]) -> None:
    content = _safetensors({"\ud800": np.ones((8, 128), dtype=np.float32)})
    problem = _problem(client.post(path, files={"file": ("w.safetensors", content)}, data=fields), 422, "file")
    assert "lone UTF-16 surrogate (U+D800)" in problem["detail"]


def test_a_surrogate_in_safetensors_metadata_is_refused_422(client: TestClient) -> None:
    content = _safetensors({"w": np.ones((8, 128), dtype=np.float32)}, metadata={"note": "\udc00"})
    _problem(client.post("/v1/dequantize", files={"file": ("w.safetensors", content)}), 422, "file")


# --- item 13: every 4xx names its field ---------------------------------------------------------------------


def test_issue_17_item_13_an_over_long_part_header_is_a_400_naming_the_body(client: TestClient) -> None:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.npy\"\r\nX-Long: "
            + b"a" * 100_000 + b"\r\n\r\n" + W_NPY + b"\r\n--b--\r\n")
    response = client.post("/v1/quantize", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= response.status_code < 500
    problem = response.json()
    assert problem["errors"] and all(error["field"] for error in problem["errors"])


def test_issue_17_item_13_a_body_without_its_boundary_names_a_field(client: TestClient) -> None:
    response = client.post("/v1/quantize", content=b"garbage\r\n\r\n",
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= response.status_code < 500
    assert response.json()["errors"], response.text


def test_issue_17_item_13_a_scale_past_fp16_names_the_file(client: TestClient) -> None:
    content = _npy(np.full((4, 128), 1e9, dtype=np.float32))
    problem = _problem(client.post("/v1/quantize", files={"file": ("w.npy", content)}), 422, "file")
    assert "exceeds the fp16 maximum" in problem["detail"]


def test_weights_of_plus_minus_3e38_are_refused_saying_what_was_sent_not_scale_inf(client: TestClient) -> None:
    # the fuzzing hunt's case: finite float32 weights whose range overflows float32; the 422 said "a group's scale
    # inf exceeds the fp16 maximum", naming neither the values nor where they were
    content = _npy(np.tile(np.array([3e38, -3e38], dtype=np.float32), (4, 64)))
    problem = _problem(client.post("/v1/quantize", files={"file": ("w.npy", content)}), 422, "file")
    assert problem["detail"].startswith("tensor 'weight': row 0, group 0 holds weights from -3e+38 to 3e+38, a range "
                                        "of 6e+38"), problem["detail"]
    assert "scale inf" not in problem["detail"]


def test_an_unknown_route_names_the_path(client: TestClient) -> None:
    _problem(client.get("/v1/nothing-here"), 404, "path")


# --- item 1: a job whose client has gone is cancelled -----------------------------------------------------------


class _LeavingClient:
    """Stands for a Request whose client disconnects after `seconds` (its body already read)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(self.seconds)
        return {"type": "http.disconnect"}


def test_a_job_is_cancelled_as_soon_as_its_client_disconnects() -> None:
    # every upload route awaits its pool job this way; a cancelled pool job's worker is killed and replaced
    # (test_pool.py), and the e2e test (test_hostile_e2e.py) watches the worker go free on a real server
    cancelled = asyncio.Event()

    async def long_job() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "finished"

    async def scenario() -> float:
        started = time.perf_counter()
        with pytest.raises(ClientDisconnect):
            await _unless_client_leaves(_LeavingClient(0.05), long_job())  # type: ignore[arg-type]
        assert cancelled.is_set()
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 5.0


def test_a_job_whose_client_stays_gives_its_answer_and_its_errors() -> None:
    async def quick(fail: bool) -> str:
        await asyncio.sleep(0.01)
        if fail:
            raise LimitExceeded("thing", 2, 1)
        return "answer"

    async def scenario() -> None:
        assert await _unless_client_leaves(_LeavingClient(60), quick(False)) == "answer"  # type: ignore[arg-type]
        with pytest.raises(LimitExceeded):
            await _unless_client_leaves(_LeavingClient(60), quick(True))  # type: ignore[arg-type]

    asyncio.run(scenario())
