"""``POST /v1/plan`` with ``weights.format: fit`` closes the loop with ``POST /v1/quantize`` (issue 22).

A tiny llama-architecture model (random fp16 weights, every tensor named as a
Hugging Face checkpoint names it) is planned on a device sized to land between
INT4 and 16-bit; the answer's recipe goes to /v1/quantize as it is, and the
file it writes must hold at most the planned weights and, planned back with
its own per-tensor formats, fit.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors

from app.schemas.plans import PlanRequest, plan_to_core
from quant_core.formats import WeightFormat, float_format, int4
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import inventory
from quant_core.planner import plan
from quant_core.quantize.allocation import budget_formats
from quant_core.quantize.int8 import INT8
from quant_core.schemes import scheme_of
from quant_core.specs import TensorEntry
from quant_core.tensorio import read_safetensors_header

# a llama in miniature: 704 is a multiple of 64 but not of 128, so down_proj cannot take g128
CONFIG: dict[str, Any] = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 704, "vocab_size": 512,
    "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
}
WORKLOAD = {"context_length": 256, "concurrent_sequences": 2}
RUNTIME = {"engine": "generic", "overhead_bytes": 0, "activation_bytes": 0, "memory_utilization": 1.0}


def _body(memory_bytes: int, weights_format: str) -> dict[str, Any]:
    return {"model": {"hf_config": CONFIG}, "hardware": {"memory_bytes": memory_bytes}, "workload": WORKLOAD,
            "runtime": RUNTIME, "weights": {"format": weights_format}}


def _checkpoint() -> dict[str, np.ndarray]:
    """Every tensor of the model's inventory, by its checkpoint name, as random fp16."""
    rng = np.random.default_rng(22)
    out = {}
    for entry in inventory(model_from_hf_config(CONFIG)):
        for layer in entry.layers or (None,):
            name = entry.name.replace("{i}", str(layer)) if layer is not None else entry.name
            out[name] = (0.02 * rng.standard_normal(entry.shape)).astype(np.float16)
    return out


@pytest.fixture(scope="module")
def sized(client: TestClient) -> tuple[int, dict[str, Any]]:
    """A device between INT4 and 16-bit (the KV cache plus halfway between the two weights), and its fit answer."""
    probe = client.post("/v1/plan", json=_body(1 << 30, "int4")).json()
    comparison = probe["comparison"]
    memory_bytes = probe["kv_cache"]["bytes"] + (comparison["int4"]["weights_bytes"]
                                                 + comparison["bf16"]["weights_bytes"]) // 2
    response = client.post("/v1/plan", json=_body(memory_bytes, "fit"))
    assert response.status_code == 200, response.text
    return memory_bytes, response.json()


def test_the_fit_answer_is_a_mix_between_int4_and_16_bit_with_a_recipe(sized: tuple[int, dict[str, Any]]) -> None:
    _, answer = sized
    fit = answer["fit"]
    print(json.dumps(fit["recipe"]), fit["formats"], f"{fit['bits_per_weight']:.3f}")
    assert answer["fits"] is True and fit["fits"] is True and fit["reason"] is None
    assert answer["weights"]["format"] == "mixed" and "fit" in answer["comparison"]
    assert answer["comparison"]["int4"]["weights_bytes"] < answer["weights"]["bytes"] \
        < answer["comparison"]["bf16"]["weights_bytes"]
    assert fit["recipe"] == {"method": "rtn", "budget_bytes": fit["recipe"]["budget_bytes"],
                             "include": "model.layers.*", "output": "nibble"}
    assert fit["elements"] == 2 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 704 * 256)
    assert fit["next_step_weights_bytes"] > answer["weights"]["bytes"]
    assert fit["assumptions"]


def test_the_recipe_quantized_as_it_is_writes_at_most_the_planned_weights_and_plans_back_to_a_fit(
        client: TestClient, sized: tuple[int, dict[str, Any]], tmp_path: Path) -> None:
    memory_bytes, answer = sized
    recipe = answer["fit"]["recipe"]
    form = {key: str(value) for key, value in recipe.items() if value is not None}
    response = client.post("/v1/quantize", files={"file": ("tiny-llama.safetensors", save_safetensors(_checkpoint()))},
                           data=form)
    assert response.status_code == 200, response.text
    path = tmp_path / "fit.safetensors"
    path.write_bytes(response.content)
    header = read_safetensors_header(path)
    report = json.loads(header.metadata["report"])
    written = sum(entry.end - entry.begin for entry in header.entries.values())
    print("planned", answer["weights"]["bytes"], "written", written, "budget", recipe["budget_bytes"],
          "chosen", report["allocation"]["formats"])
    assert report["allocation"]["output_bytes"] <= recipe["budget_bytes"]
    assert written <= answer["weights"]["bytes"]

    # plan the file back: each tensor in the format the quantizer chose for it
    request = PlanRequest.model_validate(_body(memory_bytes, "int4"))
    spec, hardware, workload, options = plan_to_core(request, 8)
    chosen = {entry["name"]: entry["format"] for entry in report["tensors"]}
    mix: list[tuple[TensorEntry, WeightFormat]] = []
    for entry in inventory(spec):
        labels = {f.label(): f for f in [*budget_formats(int4(), entry.shape[-1], "rtn"), INT8,
                                          float_format("fp16")]} if len(entry.shape) == 2 else {}
        for layer in entry.layers or (None,):
            name = entry.name.replace("{i}", str(layer)) if layer is not None else entry.name
            one = replace(entry, layers=(layer,)) if layer is not None else entry
            mix.append((one, labels[chosen[name]] if name in chosen else float_format("fp16")))
    scheme = replace(scheme_of(int4()), mix=tuple(mix))
    back = plan(spec, hardware, workload, replace(options, scheme=scheme, format_name="fit"))
    assert back.primary.weights_bytes == written  # the file holds exactly what its formats plan
    assert back.fits


def test_a_model_too_big_even_at_the_smallest_formats_answers_fits_false_with_the_reason(
        client: TestClient) -> None:
    probe = client.post("/v1/plan", json=_body(1 << 30, "int4")).json()
    memory_bytes = probe["kv_cache"]["bytes"] + probe["comparison"]["int4"]["weights_bytes"] // 2
    answer = client.post("/v1/plan", json=_body(memory_bytes, "fit")).json()
    assert answer["fits"] is False and answer["fit"]["fits"] is False
    assert answer["fit"]["reason"].startswith("the model does not fit even with every quantized tensor at its "
                                              "smallest allowed format (int4-g128-sym, int4-g64-sym)")
    assert answer["fit"]["next_step_weights_bytes"] is None


def test_fit_takes_no_int4_parameters_and_no_sweep(client: TestClient) -> None:
    body = _body(1 << 30, "fit")
    body["weights"]["group_size"] = 64
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "weights.group_size"
    sweep = {**_body(1 << 30, "fit"), "sweep": {"context_lengths": [256, 512]}}
    response = client.post("/v1/plan/sweep", json=sweep)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "weights.format"


def test_readme_fit_example_shows_what_the_api_answers(client: TestClient) -> None:
    # README "The best mix that fits": Llama-3.1-70B on one H100 80GB, 8k context x 4 sequences
    answer = client.post("/v1/plan", json={
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 1},
        "workload": {"context_length": 8192, "concurrent_sequences": 4}, "weights": {"format": "fit"}}).json()
    assert answer["weights"]["bytes"] == 63254044672
    assert [device["headroom_bytes"] for device in answer["devices"]] == [25098879]
    assert answer["fit"]["recipe"] == {"method": "rtn", "budget_bytes": 59048714240, "include": "model.layers.*",
                                       "output": "nibble"}
    assert answer["fit"]["formats"] == {"int4-g32-asym": 95, "int8": 465}
    assert answer["fit"]["next_step_weights_bytes"] == 63353192448
    too_big = client.post("/v1/plan", json={"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "rtx-4090"},
                                            "weights": {"format": "fit"}}).json()
    assert "device 0 needs 19043457827 bytes more" in too_big["fit"]["reason"]


def _seventy_b_fit(device: str, count: int, engine_version: str) -> dict[str, Any]:
    return {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": device, "count": count},
            "runtime": {"engine_version": engine_version}, "weights": {"format": "fit"}}


def test_the_best_mix_on_a_v100_under_vllm_0_33_takes_no_refused_format_and_says_the_refusal_first(
        client: TestClient) -> None:
    """vLLM 0.33 loads nibble's int4 and int8 from compute capability 7.5 only (engines.vllm.CAPABILITY_FLOORS); a V100
    is 7.0.  The fit answered "the engine refuses the layout: ... int4-g128-sym on 7.0" with the refused int4 mix as
    its plan; now no tensor takes a refused format, and 16-bit, the only format left, does not fit four V100-32GB."""
    answer = client.post("/v1/plan", json=_seventy_b_fit("v100-32gb", 4, "0.33")).json()
    fit = answer["fit"]
    assert answer["fits"] is False and answer["refusal"] is None and fit["fits"] is False
    assert fit["formats"] == {"bf16": 80 * 7} and fit["bits_per_weight"] == 16.0
    assert set(fit["refused_formats"]) == {f"int4-g{group}-{kind}" for group in (32, 64, 128)
                                           for kind in ("sym", "asym")} | {"int8"}
    assert all("on a device of compute capability 7.0 (its minimum is 7.5)" in reason
               for reason in fit["refused_formats"].values())
    assert fit["reason"].startswith("the engine refuses every quantized format a mix may take on these devices "
                                    "(int4-g128-asym, ")
    assert "), and the model does not fit even with every tensor at 16-bit (bf16): device 0 needs " in fit["reason"]
    assert not fit["reason"].startswith("the engine refuses the plan")


def test_the_best_mix_where_the_release_runs_its_formats_refuses_none(client: TestClient) -> None:
    """vLLM 0.19 loads int4 from 6.0 and int8 from 7.0: on four V100-32GB the best mix fits, int8 and 16-bit (at
    0.85: the 0.9 budget leaves 3.17 GiB free, less than the 3.42 GiB 0.19 allocates outside it there)."""
    body = _seventy_b_fit("v100-32gb", 4, "0.19")
    body["runtime"]["memory_utilization"] = 0.85
    answer = client.post("/v1/plan", json=body).json()
    fit = answer["fit"]
    assert answer["fits"] is True and answer["refusal"] is None and fit["fits"] is True
    assert fit["refused_formats"] == {}
    assert fit["formats"] == {"bf16": 396, "int8": 164} and fit["bits_per_weight"] < 16
