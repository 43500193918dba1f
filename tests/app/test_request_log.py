"""One JSON line per request on ``nibble.access``, with the request id also sent as ``X-Request-ID``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.request_log import LOGGER_NAME, MAX_LOGGED_PATH_CHARACTERS, request_id_from
from tests.app.conftest import client_with


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def access_log() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_each_request_logs_one_line_with_id_route_status_and_duration(access_log: Collect) -> None:
    with client_with() as client:
        response = client.get("/v1/devices/h100-80gb")
    assert len(access_log.lines) == 1
    line = access_log.lines[0]
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["method"] == "GET"
    assert line["route"] == "/v1/devices/{device_id}"
    assert line["path"] == "/v1/devices/h100-80gb"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_a_sane_incoming_request_id_is_kept(access_log: Collect) -> None:
    with client_with() as client:
        response = client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert response.headers["X-Request-ID"] == "trace-42.a:b_c"
    assert access_log.lines[0]["request_id"] == "trace-42.a:b_c"


@pytest.mark.parametrize("incoming", ["", "has space", "x" * 129, 'quote"', "line\\nbreak"])
def test_an_insane_request_id_is_replaced_by_a_uuid4(incoming: str) -> None:
    replaced = request_id_from(incoming)
    assert replaced != incoming
    assert len(replaced) == 36 and replaced.count("-") == 4


def test_uploads_and_query_strings_never_reach_the_log(access_log: Collect) -> None:
    secret = b"\x93NUMPY-not-really-SECRET-PAYLOAD"
    with client_with() as client:
        client.post("/v1/quantize?token=SECRET-QUERY", files={"file": ("w.npy", secret)})
    assert len(access_log.lines) == 1
    text = json.dumps(access_log.lines[0])
    assert "SECRET" not in text
    assert access_log.lines[0]["route"] == "/v1/quantize"
    assert access_log.lines[0]["status"] in (400, 415, 422)


def test_a_long_path_is_logged_cut_to_a_bound_and_says_how_much_was_cut(access_log: Collect) -> None:
    with client_with() as client:
        client.get("/v1/devices/" + "x" * 60_000)
    path = str(access_log.lines[0]["path"])
    kept, cut = MAX_LOGGED_PATH_CHARACTERS, 60_012 - MAX_LOGGED_PATH_CHARACTERS
    assert path == "/v1/devices/" + "x" * (kept - 12) + f"...({cut} more characters)"
    assert len(json.dumps(access_log.lines[0])) < 1024


def test_errors_answered_by_middleware_are_logged_with_their_status(access_log: Collect) -> None:
    with client_with(max_json_bytes=16) as client:
        response = client.post("/v1/plan", content=b"{" + b" " * 64 + b"}",
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert access_log.lines[0]["status"] == 413
    assert access_log.lines[0]["request_id"] == response.headers["X-Request-ID"]
