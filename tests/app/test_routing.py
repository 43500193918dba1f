"""JsonBodyRoute answers exactly as FastAPI's own handler would, on good and bad bodies alike."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.testclient import TestClient

from app.problems import install_problem_handlers
from app.routing import JsonBodyRoute, is_json_media_type
from app.schemas.plans import PlanRequest
from app.settings import Settings
from tests.app.conftest import client_with, make_settings

GOOD = json.dumps({"model": {"preset": "llama-3.1-8b"}, "hardware": {"device": "h100-80gb"}}).encode()
JSON = "application/json"


async def echo(body: PlanRequest, request: Request) -> Response:
    """Answers the validated body (hf_config by its keys: it may nest deeper than serialization goes)."""
    config = body.model.hf_config
    return Response(json.dumps({"body": body.model_dump(mode="json", exclude={"model": {"hf_config"}}),
                                "hf_config_keys": sorted(config) if config is not None else None}),
                    media_type=JSON)


@pytest.fixture(scope="module")
def both() -> Iterator[TestClient]:
    """One app with the same endpoint behind FastAPI's handler (/standard) and JsonBodyRoute (/lean)."""
    app = FastAPI()
    app.state.settings = make_settings()
    install_problem_handlers(app)
    router = APIRouter()
    router.add_api_route("/standard", echo, methods=["POST"])
    router.add_api_route("/lean", echo, methods=["POST"], route_class_override=JsonBodyRoute)
    app.include_router(router)
    with TestClient(app) as client:
        yield client


CASES: list[tuple[bytes, str | None]] = [
    (GOOD, JSON),
    (GOOD, "application/json; charset=utf-8"),
    (GOOD, "application/vnd.nibble+json"),
    (GOOD, None),
    (GOOD, "text/plain"),
    (GOOD, "multipart/form-data; boundary=x"),
    (b"", JSON),
    (b'{"model": ', JSON),
    (b"not json", JSON),
    (b'{"model": {"preset": "gpt2"},}', JSON),
    (b"[]", JSON),
    (b"null", JSON),
    (b'"a string"', JSON),
    (b"{}", JSON),
    (b'{"model": {"preset": "gpt2"}}', JSON),
    (b'{"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb"}, "extra": 1}', JSON),
    (b'{"model": {"preset": 7}, "hardware": {"device": "h100-80gb", "count": "two"}}', JSON),
    (b'{"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb", "count": 2.0}}', JSON),
    (b'{"model": {"preset": "gpt2"}, "hardware": {"device": "h100-80gb", "count": "3"}}', JSON),
    (b'{"model": {"preset": "gpt2"}, "hardware": {"memory_bytes": NaN}}', JSON),
    (b'{"model": {"hf_config": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}, \"hardware\": {\"device\": \"x\"}}", JSON),
    (b"[" * 100_000 + b"]" * 100_000, JSON),
    (b'\xff\xfe{"model": 1}', JSON),
]


@pytest.mark.parametrize(("content", "content_type"), CASES)
def test_lean_route_answers_as_fastapi_does(both: TestClient, content: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    standard = both.post("/standard", content=content, headers=headers)
    lean = both.post("/lean", content=content, headers=headers)
    assert (lean.status_code, lean.headers["content-type"]) == (standard.status_code,
                                                                standard.headers["content-type"])
    assert lean.json() == standard.json()


@pytest.mark.parametrize(("value", "expected"), [
    ("application/json", True), ("Application/JSON; charset=utf-8", True), ("application/problem+json", True),
    ("text/json", False), ("application/jsonx", False), ("", False), (None, False),
])
def test_json_media_types_are_those_fastapi_parses(value: str | None, expected: bool) -> None:
    assert is_json_media_type(value) is expected


def test_a_lean_route_still_requires_the_api_key() -> None:
    with client_with(api_keys=["sesame"]) as guarded:
        assert guarded.post("/v1/plan", content=GOOD, headers={"content-type": JSON}).status_code == 401
        allowed = guarded.post("/v1/plan", content=GOOD,
                               headers={"content-type": JSON, "Authorization": "Bearer sesame"})
        assert allowed.status_code == 200


def test_a_lean_route_refuses_an_endpoint_it_cannot_serve() -> None:
    async def no_body(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="body"):
        APIRouter().add_api_route("/x", no_body, methods=["POST"], route_class_override=JsonBodyRoute)


def test_plan_over_the_json_limit_is_still_413() -> None:
    settings: Settings = make_settings(max_json_bytes=64)
    with client_with(max_json_bytes=settings.max_json_bytes) as small:
        response = small.post("/v1/plan", content=GOOD, headers={"content-type": JSON})
    assert response.status_code == 413
    assert response.json()["limit"] == "max_json_bytes"
