"""GET /v1/models, /v1/models/{id}, /v1/devices, /v1/devices/{id} and POST /v1/models/inspect."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from quant_core.catalog import get_device, list_devices, list_presets
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import parameter_count, weight_bytes
from quant_core.kv_cache import kv_bytes_per_token
from tests.app.conftest import FIXTURES, client_with


def test_list_devices_matches_the_catalog(client: TestClient) -> None:
    response = client.get("/v1/devices")
    assert response.status_code == 200
    assert [d["id"] for d in response.json()] == [d.id for d in list_devices()]


def test_read_device_gives_memory_bytes_and_source(client: TestClient) -> None:
    body = client.get("/v1/devices/h100-80gb").json()
    assert body["memory_bytes"] == get_device("h100-80gb").memory_bytes == 80 * 2**30
    assert body["source"]


def test_unknown_device_is_404_listing_close_ids(client: TestClient) -> None:
    response = client.get("/v1/devices/h100")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "h100-80gb" in response.json()["close"]


def test_list_models_gives_every_preset_with_parameters(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body] == [p.id for p in list_presets()]
    by_id = {m["id"]: m for m in body}
    # Meta's Llama-3.1-8B: 8,030,261,248 parameters (transformers, tied weights once).
    assert by_id["llama-3.1-8b"]["total_parameters"] == 8_030_261_248


def test_read_model_gives_spec_and_kv_bytes(client: TestClient) -> None:
    body = client.get("/v1/models/llama-3.1-8b").json()
    assert body["spec"]["num_layers"] == 32
    # vLLM at bf16: 2 x 32 layers x 8 KV heads x 128 x 2 B = 131,072 bytes per token.
    assert body["kv_bytes_per_token_bf16"] == 131_072


def test_unknown_model_is_404_listing_close_ids(client: TestClient) -> None:
    response = client.get("/v1/models/lama-3.1-8b")
    assert response.status_code == 404
    assert "llama-3.1-8b" in response.json()["close"]


def test_inspect_preset_lists_tensors_kv_dtypes_and_formats(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"preset": "qwen3-30b-a3b"})
    assert response.status_code == 200
    body = response.json()
    assert set(body["kv_bytes_per_token"]) == {"bf16", "fp16", "fp8", "int8", "int4", "int8_per_token_head",
                                               "int4_per_token_head", "fp8_per_token_head"}
    assert body["kv_bytes_per_token"]["fp8"] * 2 == body["kv_bytes_per_token"]["bf16"]
    # vLLM 0.33's fp8_per_token_head pages one byte a code and two fp32 scales a head, as int8_per_token_head does
    assert body["kv_bytes_per_token"]["fp8_per_token_head"] == body["kv_bytes_per_token"]["int8_per_token_head"]
    formats = {f["format"]: f for f in body["weight_bytes"]}
    assert formats["bf16"]["bits_per_weight"] == 16.0
    assert formats["int4-g128-asym"]["bytes"] < formats["bf16"]["bytes"] / 3
    assert sum(row["elements"] for row in body["tensors"]) == body["parameters"]["total"]
    assert any(row["role"] == "expert" for row in body["tensors"])


@pytest.mark.parametrize("preset", ["gpt-oss-120b", "qwen3-8b"])
def test_each_inspected_format_carries_the_weights_that_plan_it_to_the_same_bytes(client: TestClient,
                                                                                  preset: str) -> None:
    # The page's format selector sends a row's `weights` as is: the plan must answer that row's bytes.
    rows = client.post("/v1/models/inspect", json={"preset": preset}).json()["weight_bytes"]
    assert [row["as_shipped"] for row in rows].count(True) == (1 if preset == "gpt-oss-120b" else 0)
    for row in rows:
        body: dict[str, object] = {"model": {"preset": preset}, "hardware": {"device": "h100-80gb"}}
        if row["as_shipped"]:
            assert row["weights"] is None  # no weights: planned as shipped
        else:
            body["weights"] = row["weights"]
        answer = client.post("/v1/plan", json=body)
        assert answer.status_code == 200, (row, answer.json())
        assert (answer.json()["weights"]["bytes"], answer.json()["weights"]["bits_per_weight"]) \
            == (row["bytes"], row["bits_per_weight"]), row


def test_inspect_explicit_sizes(client: TestClient) -> None:
    spec = {"hidden_size": 4096, "num_layers": 32, "num_attention_heads": 32, "num_kv_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256}
    body = client.post("/v1/models/inspect", json={"spec": spec}).json()
    assert body["parameters"]["total"] == 8_030_261_248  # the same sizes as Llama-3.1-8B


def test_inspect_needs_exactly_one_model_source(client: TestClient) -> None:
    for payload in ({}, {"preset": "gpt2", "hf_config": {"model_type": "gpt2"}}):
        response = client.post("/v1/models/inspect", json=payload)
        assert response.status_code == 422
        assert response.json()["errors"]


def test_inspect_config_missing_a_key_names_it(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"hf_config": {"model_type": "llama"}})
    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields and fields[0].startswith("hf_config.")


def test_inspect_negative_size_names_the_field(client: TestClient) -> None:
    spec = {"hidden_size": -4096, "num_layers": 2, "num_attention_heads": 32, "intermediate_size": 100,
            "vocab_size": 100}
    response = client.post("/v1/models/inspect", json={"spec": spec})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "spec.hidden_size"
    assert "-4096" in response.json()["detail"]


def test_inspect_refuses_config_nested_past_the_limit() -> None:
    nested: dict[str, object] = {"model_type": "llama"}
    for _ in range(10):
        nested = {"x": nested}
    with client_with(max_config_depth=5) as small:
        response = small.post("/v1/models/inspect", json={"hf_config": nested})
    assert response.status_code == 413
    assert response.json()["limit"] == "max_config_depth"


def _fixture_configs() -> list[str]:
    folder = FIXTURES / "models"
    return sorted(path.name for path in folder.glob("*.json")) if folder.is_dir() else []


@pytest.mark.skipif(not (FIXTURES / "models").is_dir(), reason="../shared/fixtures/models is absent")
@pytest.mark.parametrize("name", _fixture_configs())
def test_inspect_hf_config_agrees_with_quant_core(client: TestClient, name: str) -> None:
    config = json.loads((FIXTURES / "models" / name).read_text())
    spec = model_from_hf_config(config)
    body = client.post("/v1/models/inspect", json={"hf_config": config}).json()
    assert body["parameters"]["total"] == parameter_count(spec).total
    assert body["kv_bytes_per_token"]["bf16"] == kv_bytes_per_token(spec, "bf16")
    assert {f["format"]: f["bytes"] for f in body["weight_bytes"]}["bf16"] == weight_bytes(spec, "bf16")


@pytest.mark.parametrize(("path", "catalog"), [("/v1/devices/zzzzzz", "/v1/devices"),
                                               ("/v1/models/zzzzzz", "/v1/models")])
def test_an_unknown_id_with_nothing_close_lists_the_whole_catalog(client: TestClient, path: str,
                                                                  catalog: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    ids = sorted(item["id"] for item in client.get(catalog).json())
    assert response.json()["close"] == ids
    assert "none is close" in response.json()["detail"]


def test_inspect_lists_every_format_with_its_bits_per_weight_and_the_shipped_one_first(client: TestClient) -> None:
    body = client.post("/v1/models/inspect", json={"preset": "gpt-oss-120b"}).json()
    rows = body["weight_bytes"]
    assert rows[0]["format"] == "mxfp4" and rows[0]["as_shipped"]
    # openai/gpt-oss-120b model.safetensors.index.json: "total_size": 65248815744
    assert rows[0]["bytes"] == 65_248_815_744
    names = {row["format"] for row in rows}
    for expected in ("bf16", "fp8-block128", "mxfp4", "nvfp4", "nf4", "nf4-dq", "int8", "int8-g128-gptq-partial",
                     "gguf-q4_0", "gguf-q4_k_s", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q6_k", "gguf-q8_0"):
        assert expected in names
    for row in rows:
        assert row["error"] is None
        assert row["bits_per_weight"] == pytest.approx(8 * row["bytes"] / body["parameters"]["total"])
    mxfp4 = next(row for row in rows if row["format"] == "mxfp4" and not row["as_shipped"])
    assert mxfp4["bytes"] < rows[0]["bytes"]  # every linear at mxfp4, not only the experts
