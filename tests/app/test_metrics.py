"""``GET /metrics``: Prometheus text that parses, and counters that move with requests and quantizations."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import client_with


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels), parsed by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def npy_bytes(rows: int, columns: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).standard_normal((rows, columns)).astype(np.float32))
    return buffer.getvalue()


def test_request_counter_and_histogram_move_by_route_template_and_status() -> None:
    with client_with() as client:
        before = scrape(client)
        for _ in range(3):
            assert client.get("/v1/models/llama-3.1-8b").status_code == 200
        assert client.get("/v1/devices/no-such-gpu").status_code == 404
        after = scrape(client)
    ok = {"method": "GET", "route": "/v1/models/{model_id}", "status": "200"}
    missing = {"method": "GET", "route": "/v1/devices/{device_id}", "status": "404"}
    assert value(after, "nibble_http_requests_total", **ok) - value(before, "nibble_http_requests_total", **ok) == 3
    assert value(after, "nibble_http_requests_total", **missing) == 1
    assert value(after, "nibble_http_request_duration_seconds_count", **ok) == 3
    assert value(after, "nibble_http_request_duration_seconds_bucket", le="+Inf", **ok) == 3
    # Raw paths never become labels: the label set stays bounded.
    assert not any(dict(labels).get("route") == "/v1/models/llama-3.1-8b" for _, labels in after)


def test_unmatched_paths_share_one_label() -> None:
    with client_with() as client:
        client.get("/nope-1")
        client.get("/nope-2")
        samples = scrape(client)
    assert value(samples, "nibble_http_requests_total", method="GET", route="<unmatched>", status="404") == 2


def test_quantization_seconds_and_bytes_are_counted_per_method() -> None:
    upload = npy_bytes(32, 256)
    with client_with() as client:
        response = client.post("/v1/quantize/compare", files={"file": ("w.npy", upload)},
                               data={"methods": "rtn,clip"})
        assert response.status_code == 200, response.text
        report = response.json()
        samples = scrape(client)
    for result in report["tensors"][0]["results"]:
        method = result["method"]
        assert value(samples, "nibble_quantization_seconds_count", method=method) == 1
        assert value(samples, "nibble_quantization_input_bytes_total", method=method) == 32 * 256 * 4
        # 32 x 256 at g128 asymmetric: 4,096 bytes of nibbles + 64 fp16 scales + 64 packed zeros = 4,256.
        assert value(samples, "nibble_quantization_output_bytes_total", method=method) == 4256
        assert value(samples, "nibble_quantized_tensors_total", method=method) == 1


def test_pool_gauges_report_size_and_idle_workers() -> None:
    with client_with(pool_workers=3, pool_queue=5) as client:
        samples = scrape(client)
    assert value(samples, "nibble_pool_workers") == 3
    assert value(samples, "nibble_pool_capacity") == 8
    assert value(samples, "nibble_pool_busy_workers") == 0
    assert value(samples, "nibble_pool_queued_requests") == 0


def test_each_app_has_its_own_registry() -> None:
    with client_with() as first, client_with() as second:
        first.get("/healthz")
        first.get("/healthz")
        second.get("/healthz")
        first_samples, second_samples = scrape(first), scrape(second)
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(first_samples, "nibble_http_requests_total", **healthz) == 2
    assert value(second_samples, "nibble_http_requests_total", **healthz) == 1


def test_metrics_require_the_api_key_when_keys_are_set_but_the_page_does_not() -> None:
    with client_with(api_keys=["secret"]) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer secret"}).status_code == 200
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_metrics_and_page_stay_out_of_the_openapi_schema() -> None:
    with client_with() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/metrics" not in paths
    assert "/" not in paths


def test_unusual_methods_share_one_label_so_the_metrics_stay_bounded(client: TestClient) -> None:
    for method in ("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "REPORT"):
        client.request(method, "/healthz")
    families = scrape(client)
    methods = {dict(labels).get("method") for (name, labels) in families if name == "nibble_http_requests_total"}
    assert "PROPFIND" not in methods and "other" in methods
