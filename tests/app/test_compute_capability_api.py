"""The devices' compute capability on the wire: catalogued, given for unlisted hardware, and the refusals it brings."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

GPT_OSS = {"model": {"preset": "gpt-oss-20b"}, "workload": {"context_length": 4096, "concurrent_sequences": 1}}


def test_devices_list_their_compute_capability_and_its_source(client: TestClient) -> None:
    devices = {device["id"]: device for device in client.get("/v1/devices").json()}
    assert devices["t4"]["compute_capability"] == "7.5"
    assert devices["h100-80gb"]["compute_capability"] == "9.0"
    assert "developer.nvidia.com/cuda-gpus" in devices["l4"]["compute_capability_source"]
    assert devices["mi300x"]["compute_capability"] is None


def test_gpt_oss_20b_on_a_t4_is_refused_with_vllms_reason_and_fits_on_an_l4(client: TestClient) -> None:
    on_t4 = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"device": "t4"}}).json()
    assert on_t4["hardware"]["compute_capability"] == "7.5"
    assert not on_t4["fits"] and "Mxfp4Config.get_min_capability() is 80" in on_t4["refusal"]
    assert on_t4["min_devices"] is None
    on_l4 = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"device": "l4"}}).json()
    assert on_l4["fits"] and on_l4["refusal"] is None


def test_unlisted_hardware_is_checked_only_when_its_capability_is_given(client: TestClient) -> None:
    # 32 GiB: a 0.9 budget leaves 3.2 GiB, which holds vLLM 0.19's 1.55 GiB of graphs, 0.51 GiB in use at start-up
    # and, on a device whose capability is not known, FlashInfer's 394 MiB attention workspace (24 GiB's 2.4 GiB held
    # the first two, before that workspace was charged there)
    unknown = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"memory_bytes": 32 << 30}}).json()
    assert unknown["hardware"]["compute_capability"] is None
    assert unknown["fits"] and unknown["refusal"] is None
    assert any("compute capability is not known" in warning for warning in unknown["warnings"])
    given = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"memory_bytes": 16 << 30,
                                                                  "compute_capability": "7.5"}}).json()
    assert not given["fits"] and "compute capability 7.5" in given["refusal"]


def test_a_malformed_compute_capability_names_the_field(client: TestClient) -> None:
    for value in ("7", "7.10", "x.5", "0.5"):
        response = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"memory_bytes": 16 << 30,
                                                                         "compute_capability": value}})
        assert response.status_code == 422, value
        assert response.json()["errors"][0]["field"] == "hardware.compute_capability"


def test_devices_side_by_side_never_propose_a_device_that_refuses_the_format(client: TestClient) -> None:
    # at 0.75: with two ranks or more a T4's 1.58 GiB left free by 0.9 holds neither vLLM 0.19's 2.03 GiB in use at
    # start-up (TP group and a MoE model's expert group) nor its 1.55 GiB of graphs; 3.96 GiB holds both (at 0.9 the
    # 16-bit plan fitted on some count of T4s before the start-up memory was charged)
    response = client.post("/v1/plan/sweep", json={**GPT_OSS, "hardware": {"device": "l4"},
                                                   "runtime": {"memory_utilization": 0.75},
                                                   "sweep": {"devices": ["t4", "l4"]}})
    assert response.status_code == 200, response.text
    devices = {entry["device"]: entry["formats"] for entry in response.json()["devices"]}
    assert devices["t4"]["as_shipped"]["min_devices"] is None
    assert devices["l4"]["as_shipped"]["min_devices"] == 1
    assert devices["t4"]["bf16"]["min_devices"] is not None  # 16-bit runs as fp16 below 8.0: not refused


@pytest.mark.parametrize("value", ["１.０", "８.９", "².0", "8.٣"])
def test_a_compute_capability_of_non_ascii_digits_is_a_422_not_read_or_a_500(client: TestClient, value: str) -> None:
    # the fuzzing hunt: str.isdigit took full-width "１.０" (planned as 1.0, every format refused) and superscript
    # "².0" (int() raised: a 500)
    response = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"memory_bytes": 16 << 30,
                                                                     "compute_capability": value}})
    assert response.status_code == 422, response.text[:300]
    assert response.json()["errors"][0]["field"] == "hardware.compute_capability"


@pytest.mark.parametrize("value", ["99.9", "8.9", "12.0"])
def test_a_catalog_device_given_another_compute_capability_is_a_422_naming_its_own(client: TestClient,
                                                                                 value: str) -> None:
    # an H100 is 9.0: "99.9" was planned as a device that does not exist, every floor passed
    response = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"device": "h100-80gb",
                                                                     "compute_capability": value}})
    assert response.status_code == 422, response.text[:300]
    error = response.json()["errors"][0]
    assert error["field"] == "hardware.compute_capability"
    assert "h100-80gb has compute capability 9.0" in error["message"]


def test_a_catalog_device_given_its_own_compute_capability_is_planned(client: TestClient) -> None:
    for value in ("9.0", "09.0"):
        response = client.post("/v1/plan", json={**GPT_OSS, "hardware": {"device": "h100-80gb",
                                                                         "compute_capability": value}})
        assert response.status_code == 200, response.text[:300]
        assert response.json()["hardware"]["compute_capability"] == "9.0"


def test_a_format_the_release_refuses_is_warned_refused_with_the_reason_never_does_not_fit(
        client: TestClient) -> None:
    """Llama-3.1-70B as GGUF Q4_K_M on two A100-40GB under vLLM 0.33, which has no GGUF: the warning said "The model
    does not fit as gguf-q4_k_m on 2 device(s) for this workload; it fits at INT4"."""
    answer = client.post("/v1/plan", json={
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "a100-40gb", "count": 2},
        "runtime": {"engine_version": "0.33"}, "weights": {"format": "gguf-q4_k_m"}}).json()
    refusal = answer["refusal"]
    assert answer["fits"] is False and refusal.startswith("vLLM 0.33 cannot load gguf-q4_k_m weights on any device")
    assert f"The model cannot run as gguf-q4_k_m on 2 device(s): {refusal}; it fits at INT4." in answer["warnings"]
    assert not any("does not fit as gguf-q4_k_m" in warning for warning in answer["warnings"])
