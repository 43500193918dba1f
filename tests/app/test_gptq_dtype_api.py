"""Asymmetric GPTQ on vLLM 0.19 over HTTP: the config's torch_dtype (what ``--dtype auto`` runs) and
runtime.float_format fp16 (``--dtype half``) decide whether the gptq kernels' float16-only activations refuse it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

LLAMA_GPTQ_ASYM: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False},
}


def _plan(client: TestClient, config: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    response = client.post("/v1/plan", json={
        "model": {"hf_config": config}, "hardware": {"device": "h100-80gb"},
        "workload": {"context_length": 4096, "concurrent_sequences": 1},
        "runtime": {"engine_version": "0.19", **runtime}})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_bfloat16_config_is_refused_with_vllms_message_and_a_float16_one_fits(client: TestClient) -> None:
    refused = _plan(client, {**LLAMA_GPTQ_ASYM, "torch_dtype": "bfloat16"})
    assert not refused["fits"] and refused["min_devices"] is None
    assert "torch.bfloat16 is not supported for quantization method gptq" in refused["refusal"]
    assert "--dtype half" in refused["refusal"]
    assert _plan(client, {**LLAMA_GPTQ_ASYM, "torch_dtype": "float16"})["fits"]
    assert _plan(client, {**LLAMA_GPTQ_ASYM, "torch_dtype": "bfloat16"}, float_format="fp16")["fits"]


def test_a_refused_format_states_no_longest_context_and_no_sequences_limited_by_the_engine(
        client: TestClient) -> None:
    # before, the solvers ran on memory alone and the answer said 4,096 tokens and 24 sequences for weights vLLM
    # refuses to load (the page drew "fits up to 4,096 tokens" for it)
    refused = _plan(client, {**LLAMA_GPTQ_ASYM, "torch_dtype": "bfloat16"})
    shipped = refused["comparison"]["as_shipped"]
    for answer in (refused, shipped):
        assert (answer["max_context_length"], answer["context_limited_by"]) == (None, "engine")
        assert (answer["max_concurrent_sequences"], answer["sequences_limited_by"]) == (0, "engine")
    fits = _plan(client, {**LLAMA_GPTQ_ASYM, "torch_dtype": "float16"})
    assert fits["max_context_length"] == 4096 and fits["context_limited_by"] == "model"
    assert fits["max_concurrent_sequences"] > 0 and fits["sequences_limited_by"] == "memory"
