"""Cost fuzzing (issue 17): adversarial strings in every text field and header, never a 500, never costly.

Schema fuzzing (test_schema_fuzz.py) checks that answers are documented; it
does not look where an attacker looks, at cost.  Here hypothesis puts
strings built to be expensive (long runs of ``[``, ``*``, ``?``, quotes and
backslashes, lone surrogates, nesting a hundred thousand deep, megabyte keys)
into each text field of every JSON route (plan, sweep, inspect, the model
and device ids) and each form field of the upload routes, and into the
headers a client controls; every answer must be a 200 or a 4xx, arrive
within `TIME_BUDGET_SECONDS`, and be at most `MAX_ERROR_BYTES` when it is an error.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from app.problems import MAX_FIELD_CHARS, MAX_LISTED_ERRORS, MAX_MESSAGE_CHARS
from tests.app.conftest import make_settings

pytestmark = pytest.mark.slow

#: generous: the slowest hostile answer here takes tens of milliseconds; fnmatch's took minutes
TIME_BUDGET_SECONDS = 5.0
#: an error answer: at most MAX_LISTED_ERRORS fields, each bounded, and a bounded detail
MAX_ERROR_BYTES = (MAX_LISTED_ERRORS + 1) * 4 * (MAX_FIELD_CHARS + MAX_MESSAGE_CHARS) + 2048
#: a 200 answer (an inspect lists the tensor inventory: tens of KiB)
MAX_ANSWER_BYTES = 1 << 20
EXAMPLES = 60

PIECES = ["[", "]", "*", "?", "!", "-", "{", "}", "(", ")", "\\", "'", '"', "\ud800", "\udfff", "\x00", "é",
          "a", ".", "%", "\u202e", "(1,2),", "[a-", "*a", "\\u", "${", "\r\n", "\ufeff"]
RUN_LENGTHS = [1, 2, 64, 1000, 10_000, 100_000]

adversarial_text = st.one_of(
    st.builds(lambda piece, count: piece * count, st.sampled_from(PIECES), st.sampled_from(RUN_LENGTHS)),
    st.lists(st.sampled_from(PIECES), max_size=200).map("".join),
    st.text(max_size=40),
)
#: raw JSON put where a string would go: nesting, long arrays, huge numbers
adversarial_json = st.one_of(
    adversarial_text.map(json.dumps),
    st.sampled_from([10, 1000, 100_000]).map(lambda depth: "[" * depth + "]" * depth),
    st.sampled_from([10, 1000, 100_000]).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.sampled_from([1000, 100_000]).map(lambda count: "[" + ",".join(['"x"'] * count) + "]"),
    st.just("1" + "0" * 5000),
    st.just('"' + "\\ud800" * 1000 + '"'),
)

SPEC = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 4,
        "intermediate_size": 128, "vocab_size": 1000}
HF_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 1000}
PLAN = {"model": {"spec": SPEC}, "hardware": {"device": "h100-80gb"}}
FUZZ = "__FUZZ__"


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """`body` with the member at `path` set to `value` (copied, not changed)."""
    copied = json.loads(json.dumps(body))
    target = copied
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return copied


#: (route, body template, path of the text field): every text field of every JSON route
JSON_FIELDS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    *[(route, PLAN, path) for route in ("/v1/plan", "/v1/models/inspect") for path in [
        ("model", "preset"), ("model", "spec", "name"), ("hardware", "device"), ("weights", "format"),
        ("weights", "zero"), ("kv_cache", "dtype"), ("runtime", "float_format"), ("model", "hf_config", "model_type"),
        ("model", "hf_config", "_name_or_path"), ("model", "hf_config", "torch_dtype"), ("model", "spec", FUZZ),
        (FUZZ,)]],
    ("/v1/plan/sweep", {**PLAN, "sweep": {"context_lengths": [1024]}}, ("sweep", "formats")),
    ("/v1/plan/sweep", {**PLAN, "sweep": {"context_lengths": [1024]}}, ("model", "spec", "name")),
    ("/v1/plan/sweep", {**PLAN, "sweep": {"context_lengths": [1024]}}, ("sweep", FUZZ)),
]


def _json_body(route: str, template: dict[str, Any], path: tuple[str, ...], raw_value: str) -> str:
    """The JSON text of `template` with `raw_value` (JSON text) at `path`; inspect takes the model alone."""
    if route == "/v1/models/inspect":
        if path[0] != "model":
            path = ("model", *path)  # the top-level key of an inspect body is the model's own
        template, path = {"model": template["model"]}, path
    if path[0] == "model" and len(path) > 2 and path[1] == "hf_config":
        template = _with(template, ("model",), {"hf_config": HF_CONFIG})
    elif path[0] == "model" and path[1] == "preset":
        template = _with(template, ("model",), {})
    if path[-1] == FUZZ:  # the string is a key: an unknown member
        text = json.dumps(_with(template, path, 1))
        key_text = raw_value if raw_value.startswith('"') else json.dumps(raw_value)
        text = text.replace(json.dumps(FUZZ), key_text, 1)
    else:
        text = json.dumps(_with(template, path, FUZZ)).replace(json.dumps(FUZZ), raw_value, 1)
    if route == "/v1/models/inspect":
        text = text[len('{"model": '):-1]  # {"spec": ...} or {"hf_config": ...} or {"preset": ...}
    return text


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(make_settings(max_upload_bytes=1 << 20, request_time_limit_seconds=30.0))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _check(response: Any, seconds: float) -> None:
    assert response.status_code < 500, response.text[:1000]
    assert response.status_code == 200 or 400 <= response.status_code < 500
    assert seconds < TIME_BUDGET_SECONDS
    limit = MAX_ANSWER_BYTES if response.status_code == 200 else MAX_ERROR_BYTES
    assert len(response.content) <= limit, (response.status_code, len(response.content))
    if response.status_code >= 400:
        assert response.json()["errors"], response.text[:500]  # every 4xx names its field


def _timed(call: Any) -> None:
    started = time.perf_counter()
    response = call()
    _check(response, time.perf_counter() - started)


@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(field=st.sampled_from(JSON_FIELDS), value=adversarial_json)
def test_adversarial_json_fields_are_answered_cheaply_and_never_500(client: TestClient,
                                                                    field: tuple[str, dict[str, Any],
                                                                                 tuple[str, ...]],
                                                                    value: str) -> None:
    route, template, path = field
    body = _json_body(route, template, path, value)
    _timed(lambda: client.post(route, content=body.encode("utf-8", "surrogatepass"),
                               headers={"content-type": "application/json"}))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(["/v1/models/", "/v1/devices/"]), value=adversarial_text)
def test_adversarial_ids_in_the_path_are_answered_cheaply_and_never_500(client: TestClient, route: str,
                                                                        value: str) -> None:
    # a request head is bounded by the server (uvicorn answers 400 or 431 past it): ids up to 2,000 characters
    path = route + quote(value[:2000].encode("utf-8", "surrogatepass"), safe="")
    _timed(lambda: client.get(path))


def _header_safe(text: str) -> bytes:
    """`text` as raw header bytes (its UTF-8, surrogates as they are), without line breaks or NUL, at most 8 KB."""
    encoded = text.encode("utf-8", "surrogatepass")
    return encoded.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")[:8000]


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(header=st.sampled_from(["Authorization", "Content-Type", "Accept", "Origin", "X-Request-Id", "Cookie",
                               "Accept-Encoding", "If-None-Match", "Range", "X-Forwarded-For"]),
       route=st.sampled_from(["/v1/plan", "/v1/plan/sweep", "/v1/models/inspect", "/v1/models", "/v1/devices",
                              "/healthz"]),
       value=adversarial_text)
def test_adversarial_headers_are_answered_cheaply_and_never_500(client: TestClient, header: str, route: str,
                                                               value: str) -> None:
    headers = {b"content-type": b"application/json", header.encode(): _header_safe(value)}
    if route in ("/v1/models", "/v1/devices", "/healthz"):
        _timed(lambda: client.get(route, headers=headers))
    else:
        body = json.dumps({**PLAN, "sweep": {"context_lengths": [1024]}} if route.endswith("sweep") else
                          PLAN if route == "/v1/plan" else {"spec": SPEC})
        _timed(lambda: client.post(route, content=body, headers=headers))


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32))
    return buffer.getvalue()


W_NPY = _npy()
FORM_FIELDS = [("/v1/quantize", name) for name in ("method", "group_size", "symmetric", "zero", "output", "include",
                                                   "extra")] + \
              [("/v1/quantize/compare", name) for name in ("methods", "group_size", "symmetric", "zero", "include")] + \
              [("/v1/dequantize", "dtype")]


@settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(field=st.sampled_from(FORM_FIELDS), value=adversarial_text)
def test_adversarial_form_fields_are_answered_cheaply_and_never_500(client: TestClient, field: tuple[str, str],
                                                                   value: str) -> None:
    route, name = field
    boundary = "fuzz-boundary-17"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n').encode() + \
        value.encode("utf-8", "surrogatepass") + b"\r\n"
    file_part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.npy"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + W_NPY
    body = part + file_part + f"\r\n--{boundary}--\r\n".encode()
    _timed(lambda: client.post(route, content=body,
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"}))
