"""Health, problem+json rendering, body size limits, API keys and CORS."""

from __future__ import annotations

import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import GIL_SWITCH_SECONDS
from app.settings import Settings
from tests.app.conftest import client_with


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_route_is_a_problem_document(client: TestClient) -> None:
    response = client.get("/v1/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert set(body) >= {"type", "title", "status", "detail", "errors"}


def test_json_body_over_limit_is_refused_from_content_length() -> None:
    with client_with(max_json_bytes=100) as small:
        response = small.post("/healthz", content=b"x" * 101, headers={"content-type": "application/json"})
    assert response.status_code == 413
    body = response.json()
    assert (body["limit"], body["value"], body["maximum"]) == ("max_json_bytes", 101, 100)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models/inspect", "/v1/plan"])
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=b", "application/octet-stream"])
def test_an_upload_sized_body_on_a_route_that_does_not_read_it_as_an_upload_is_held_to_max_json_bytes(
        path: str, content_type: str) -> None:
    # a JSON route read a whole multipart body (up to max_upload_bytes, 256 MiB) before its 415
    with client_with(max_json_bytes=100) as small:
        response = small.post(path, content=b"--b\r\n" + b"x" * 200, headers={"content-type": content_type})
    if path == "/v1/plan" and content_type.startswith("multipart/"):  # the checkpoint-headers form (issue 18)
        assert response.status_code == 400
        return
    assert response.status_code == 413
    assert (response.json()["limit"], response.json()["value"]) == ("max_json_bytes", 205)


def test_a_multipart_body_on_an_upload_route_is_held_to_max_upload_bytes_not_max_json_bytes() -> None:
    with client_with(max_json_bytes=100) as small:
        response = small.post("/v1/quantize", files={"file": ("w.npy", b"\x93NUMPY" + b"x" * 500)})
    assert response.status_code == 422  # read by the route (a broken .npy header), not refused for its size
    assert "limit" not in response.json()


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "br"])
def test_a_transfer_coding_other_than_chunked_is_501_before_the_body_is_read(client: TestClient,
                                                                            coding: str) -> None:
    # RFC 9112 section 6.1 (issue 17, "also worth fixing"); over a real socket: tests/e2e/test_connections.py
    response = client.post("/v1/plan", content=b"{}", headers={"transfer-encoding": coding,
                                                               "content-type": "application/json"})
    assert response.status_code == 501
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "Transfer-Encoding"


def test_chunked_json_body_over_limit_is_cut_off() -> None:
    def chunks() -> object:
        for _ in range(10):
            yield b"y" * 50

    with client_with(max_json_bytes=120) as small:
        response = small.post("/v1/models/inspect", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["limit"] == "max_json_bytes"


def test_api_keys_protect_v1_but_not_healthz() -> None:
    with client_with(api_keys=["sesame"]) as guarded:
        assert guarded.get("/healthz").status_code == 200
        refused = guarded.get("/v1/devices")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.headers["content-type"] == "application/problem+json"
        wrong = guarded.get("/v1/devices", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = guarded.get("/v1/devices", headers={"Authorization": "Bearer sesame"})
        assert allowed.status_code == 200



def _v1_operations() -> list[tuple[str, str]]:
    with client_with() as plain:
        paths = plain.get("/openapi.json").json()["paths"]
    return sorted((method, path.replace("{model_id}", "llama-3.1-8b").replace("{device_id}", "h100-80gb"))
                  for path, item in paths.items() if path.startswith("/v1/") for method in item)


@pytest.mark.parametrize(("method", "path"), _v1_operations())
def test_every_v1_route_refuses_a_request_without_a_key_before_reading_its_body(method: str, path: str) -> None:
    with client_with(api_keys=["sesame"]) as guarded:
        # A body that would be a 400/415/422 if it were read: the key is checked first.
        refused = guarded.request(method, path, content=b"{not json", headers={"content-type": "application/json"})
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["errors"] == [{"field": "Authorization", "message": refused.json()["detail"]}]


@pytest.mark.parametrize("header", ["bearer sesame", "BEARER  sesame ", "Bearer sesame"])
def test_the_bearer_scheme_is_case_insensitive_and_the_token_trimmed(header: str) -> None:
    with client_with(api_keys=["other", "sesame"]) as guarded:
        assert guarded.get("/v1/devices", headers={"Authorization": header}).status_code == 200


@pytest.mark.parametrize("header", ["Basic sesame", "Bearer", "Bearer ", "sesame", "Bearer sesame2"])
def test_a_non_bearer_or_wrong_token_is_refused(header: str) -> None:
    with client_with(api_keys=["sesame"]) as guarded:
        assert guarded.get("/v1/devices", headers={"Authorization": header}).status_code == 401


def test_without_keys_configured_v1_needs_no_token_and_unknown_v1_paths_stay_404() -> None:
    with client_with() as open_app:
        assert open_app.get("/v1/devices").status_code == 200
    with client_with(api_keys=["sesame"]) as guarded:
        assert guarded.get("/v1/no-such-thing").status_code == 404


def test_openapi_declares_the_bearer_scheme_on_every_v1_operation_only(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for operation in item.values():
            assert operation.get("security") == ([{"HTTPBearer": []}] if path.startswith("/v1/") else None)

def test_cors_allows_configured_origin_only() -> None:
    with client_with(cors_origins=["https://dash.example"]) as cors:
        allowed = cors.get("/healthz", headers={"Origin": "https://dash.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
        other = cors.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_dashboard_reads_the_download_name_and_request_id_across_origins() -> None:
    with client_with(cors_origins=["https://dash.example"]) as cors:
        exposed = cors.get("/healthz", headers={"Origin": "https://dash.example"}).headers
    names = {name.strip().lower() for name in exposed["access-control-expose-headers"].split(",")}
    assert {"content-disposition", "x-request-id", "retry-after", "x-nibble-report"} <= names


@pytest.mark.parametrize("variable", ["NIBBLE_API_KEYS", "NIBBLE_CORS_ORIGINS"])
def test_a_list_setting_of_only_commas_is_refused_not_read_as_empty(monkeypatch: pytest.MonkeyPatch,
                                                                     variable: str) -> None:
    # " , " used to mean "no keys": authentication off without a word
    monkeypatch.setenv(variable, " , ")
    with pytest.raises(ValidationError, match="lists no value"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/v1/devices/h100-80gb", "/"])
def test_head_answers_wherever_get_does_with_no_body(client: TestClient, path: str) -> None:
    head, get = client.head(path), client.get(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_a_post_only_route_is_still_405(client: TestClient) -> None:
    assert client.head("/v1/plan").status_code == 405


def test_a_refused_cors_preflight_is_a_problem_naming_the_origin() -> None:
    with client_with(cors_origins=["https://dash.example"]) as cors:
        refused = cors.options("/v1/plan", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
        allowed = cors.options("/v1/plan", headers={"Origin": "https://dash.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"][0]["field"] == "Origin"
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://dash.example"


def test_the_serving_process_lets_the_event_loop_take_the_gil_back_within_half_a_millisecond() -> None:
    # a large sweep runs on a thread: at CPython's default 5 ms each system call of the event loop could cost it
    # 5 ms of waiting for the GIL (benchmarks/load_test.py: plan p99 178 ms beside one maximum sweep, 92 ms at 0.5)
    sys.setswitchinterval(0.005)
    try:
        with client_with():
            assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS) == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(0.005)
