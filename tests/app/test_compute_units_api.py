"""The devices' SM count on the wire: catalogued, given for hardware in bytes, and refused where it contradicts the
catalog (as the compute capability is)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

LLAMA = {"model": {"preset": "llama-3.1-8b"}, "workload": {"context_length": 8192, "concurrent_sequences": 4}}
H100_BYTES = 84_943_715_697  # the h100-80gb's reported_memory_bytes (79.11 GiB), what plans use


def _figures(answer: dict[str, Any]) -> dict[str, Any]:
    """A plan answer without what names the hardware (and the speed bound, known for a catalogued device only)."""
    return {key: value for key, value in answer.items() if key not in ("hardware", "speed")}


def test_devices_list_their_sm_count_and_its_source(client: TestClient) -> None:
    devices = {device["id"]: device for device in client.get("/v1/devices").json()}
    assert devices["h100-80gb"]["compute_units"] == 132 and devices["mi300x"]["compute_units"] == 304
    assert all(device["compute_units_source"] for device in devices.values())
    one = client.get("/v1/devices/l4").json()
    assert one["compute_units"] == 58 and one["compute_units_source"] == devices["l4"]["compute_units_source"]


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_h100_bytes_with_capability_9_0_and_132_sms_plan_exactly_as_the_h100(client: TestClient,
                                                                           release: str) -> None:
    runtime = {"runtime": {"engine_version": release}}
    catalog = client.post("/v1/plan", json={**LLAMA, **runtime, "hardware": {"device": "h100-80gb"}}).json()
    custom = client.post("/v1/plan", json={**LLAMA, **runtime, "hardware": {
        "memory_bytes": H100_BYTES, "compute_capability": "9.0", "compute_units": 132}}).json()
    assert custom["hardware"]["compute_units"] == catalog["hardware"]["compute_units"] == 132
    assert _figures(custom) == _figures(catalog)  # every figure and basis, the SM count's included


def test_without_compute_units_the_count_is_the_safe_side_fallback_and_said_so(client: TestClient) -> None:
    # vLLM 0.19's Triton top-k/top-p buffer of min(SMs, rows) rows: an L4's 58 SMs given, else the most of the
    # catalog's 8.x devices (142) and the basis says the count was not given
    hardware = {"memory_bytes": 23_579_370_455, "compute_capability": "8.9"}
    fallback = client.post("/v1/plan", json={**LLAMA, "hardware": hardware}).json()
    given = client.post("/v1/plan", json={**LLAMA, "hardware": {**hardware, "compute_units": 58}}).json()
    assert fallback["hardware"]["compute_units"] is None
    assert "142 SMs: the device's count not given" in fallback["activation"]["basis"]
    assert "58 SMs)" in given["activation"]["basis"] and "not given" not in given["activation"]["basis"]
    assert fallback["activation"]["bytes"] - given["activation"]["bytes"] == (142 - 58) * 128_256 * 4


@pytest.mark.parametrize("value", [0, 10_001, 132.0, "132", True, -4])
def test_compute_units_outside_1_to_10000_or_not_an_int_is_a_422_naming_the_field(client: TestClient,
                                                                                  value: object) -> None:
    response = client.post("/v1/plan", json={**LLAMA, "hardware": {"memory_bytes": H100_BYTES,
                                                                   "compute_units": value}})
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "hardware.compute_units"


def test_a_catalog_device_given_another_sm_count_is_a_422_naming_its_own(client: TestClient) -> None:
    response = client.post("/v1/plan", json={**LLAMA, "hardware": {"device": "h100-80gb", "compute_units": 114}})
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    error = response.json()["errors"][0]
    assert error["field"] == "hardware.compute_units" and "h100-80gb has 132 compute units" in error["message"]
    same = client.post("/v1/plan", json={**LLAMA, "hardware": {"device": "h100-80gb", "compute_units": 132}})
    assert same.status_code == 200 and same.json()["hardware"]["compute_units"] == 132


def test_a_sweep_over_device_counts_keeps_the_given_sm_count(client: TestClient) -> None:
    hardware = {"memory_bytes": 23_579_370_455, "compute_capability": "8.9"}
    rows = [client.post("/v1/plan/sweep", json={**LLAMA, "hardware": units, "sweep": {"device_counts": [1, 2]}})
            .json()["rows"] for units in (hardware, {**hardware, "compute_units": 58})]
    assert all(fallback["used_bytes"] > given["used_bytes"] for fallback, given in zip(*rows, strict=True))
