"""Health, problem+json rendering, body size limits, API keys and CORS."""

from __future__ import annotations

from fastapi.testclient import TestClient

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


def test_cors_allows_configured_origin_only() -> None:
    with client_with(cors_origins=["https://dash.example"]) as cors:
        allowed = cors.get("/healthz", headers={"Origin": "https://dash.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
        other = cors.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
