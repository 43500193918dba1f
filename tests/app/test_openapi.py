"""The committed openapi/openapi.json is what the app serves; every route declares problem+json errors."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.openapi_export import canonical_openapi

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_equals_the_served_spec(client: TestClient) -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    served = json.loads(json.dumps(client.get("/openapi.json").json(), sort_keys=True))
    assert committed == canonical_openapi(), "openapi/openapi.json is stale: run make openapi"
    assert committed == served, "openapi/openapi.json is stale: run make openapi"


def test_every_operation_declares_problem_json_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            errors = {code: response for code, response in operation["responses"].items() if int(code) >= 400}
            assert errors, f"{method.upper()} {path} declares no error response"
            for code, response in errors.items():
                assert list(response["content"]) == ["application/problem+json"], (path, code)
                assert response["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"}


def test_uploads_declare_413_415_503_504(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/quantize", "/v1/quantize/compare", "/v1/dequantize"):
        codes = set(spec["paths"][path]["post"]["responses"])
        assert {"413", "415", "503", "504"} <= codes
        assert "multipart/form-data" in spec["paths"][path]["post"]["requestBody"]["content"]


def test_docs_page_is_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200


def test_json_routes_declare_the_415_they_answer_to_other_media(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/plan", "/v1/plan/sweep", "/v1/models/inspect"):
        assert "415" in spec["paths"][path]["post"]["responses"], path
        answer = client.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415 and answer.headers["content-type"] == "application/problem+json"
