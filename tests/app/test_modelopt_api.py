"""ModelOpt checkpoints over the API and the CLI: as shipped, refused where vLLM refuses them, their KV cache, the
hf_quant_config.json beside config.json, and broken configs answered 422 naming the field."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.cli import run, with_hf_quant_config
from quant_core.tensorio import write_safetensors
from tests.quant_core.test_modelopt import FP8_CONFIG_JSON, LLAMA_8B, NVFP4_HF_QUANT_CONFIG


def _plan(client: TestClient, quantization_config: dict[str, Any], device: str = "h100-80gb", **extra: Any) -> Any:
    model = {"hf_config": {**LLAMA_8B, "quantization_config": quantization_config}}
    return client.post("/v1/plan", json={"model": model, "hardware": {"device": device}, **extra})


def test_a_modelopt_fp8_config_is_planned_as_shipped_with_the_checkpoints_fp8_kv_cache(client: TestClient) -> None:
    answer = _plan(client, FP8_CONFIG_JSON).json()
    assert answer["weights"]["format"] == "fp8-per-tensor-static"
    assert answer["weights"]["bytes"] == 9_081_202_432  # tests/quant_core/test_modelopt.py derives it
    assert answer["kv_cache"]["dtype"] == "fp8" and answer["kv_cache"]["bytes_per_token"] == 65_536
    assert any("kv_cache_dtype auto takes the checkpoint's ModelOpt KV algorithm FP8" in warning
               for warning in answer["warnings"])
    asked = _plan(client, FP8_CONFIG_JSON, kv_cache={"dtype": "bf16"}).json()
    assert asked["kv_cache"]["dtype"] == "bf16" and asked["kv_cache"]["bytes_per_token"] == 131_072
    on_011 = _plan(client, FP8_CONFIG_JSON, runtime={"engine_version": "0.11"}).json()
    assert on_011["kv_cache"]["dtype"] == "bf16"
    assert any("vLLM 0.11's kv_cache_dtype auto keeps the model's dtype" in warning for warning in on_011["warnings"])


def test_a_modelopt_fp8_checkpoint_on_an_a100_is_refused_by_0_19_and_planned_by_0_33(client: TestClient) -> None:
    refused = _plan(client, FP8_CONFIG_JSON, "a100-80gb").json()
    assert not refused["fits"] and "ModelOptFp8Config.get_min_capability() is 89" in refused["refusal"]
    planned = _plan(client, FP8_CONFIG_JSON, "a100-80gb", runtime={"engine_version": "0.33"}).json()
    assert planned["refusal"] is None and planned["fits"]


@pytest.mark.parametrize(("quantization_config", "field"), [
    ({**FP8_CONFIG_JSON, "quant_algo": 8}, "quantization_config.quant_algo"),
    ({**FP8_CONFIG_JSON, "ignore": {"lm_head": True}}, "quantization_config.ignore"),
    ({**FP8_CONFIG_JSON, "kv_cache_scheme": ["fp8"]}, "quantization_config.kv_cache_scheme"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": "NVFP4"}, "quantization_config.quantization"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": {"quant_algo": 4}}, "quantization_config.quantization.quant_algo"),
    ({**NVFP4_HF_QUANT_CONFIG, "quantization": {**NVFP4_HF_QUANT_CONFIG["quantization"], "group_size": True}},
     "quantization_config.quantization.group_size"),
])
def test_a_modelopt_field_of_the_wrong_type_is_a_422_naming_it(client: TestClient, quantization_config: dict[str, Any],
                                                               field: str) -> None:
    response = _plan(client, quantization_config)
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert [error["field"] for error in response.json()["errors"]] == [f"model.hf_config.{field}"]


def test_a_modelopt_algorithm_nibble_does_not_plan_is_planned_at_int4_naming_it(client: TestClient) -> None:
    # as an unknown quant_method string is (tests/app/test_hostile_configs.py): a real checkpoint, not a broken request
    response = _plan(client, {**FP8_CONFIG_JSON, "quant_algo": "W4A8_AWQ"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["weights"]["format"] == "int4-g128-asym"
    (note,) = [warning for warning in answer["warnings"] if "cannot be planned as shipped" in warning]
    assert "W4A8_AWQ" in note and "quantization_config.quant_algo" in note


def test_an_hf_quant_config_json_quantizing_only_the_kv_cache_is_no_broken_request(client: TestClient) -> None:
    # quant_algo null: vLLM sets no quant_method (_normalize_quantization_config), so the weights load 16-bit; nibble
    # has no method to read it by and plans INT4 with its note, as for any config without quant_method
    response = _plan(client, {"producer": {"name": "modelopt", "version": "0.29.0"},
                              "quantization": {"quant_algo": None, "kv_cache_quant_algo": "FP8"}})
    assert response.status_code == 200
    assert any("cannot be planned as shipped" in warning for warning in response.json()["warnings"])


def _tiny_nvfp4_checkpoint(directory: Path) -> None:
    """A two-layer llama exported by ModelOpt 0.29: config.json without quantization_config, hf_quant_config.json
    beside it, and the NVFP4 tensors (uint8 weight, e4m3 weight_scale per 16, f32 weight_scale_2 and input_scale)."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
              "vocab_size": 1000, "torch_dtype": "bfloat16", "max_position_embeddings": 4096}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "hf_quant_config.json").write_text(json.dumps(NVFP4_HF_QUANT_CONFIG))
    bf16 = ml_dtypes.bfloat16
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": np.zeros((1000, 256), bf16),
                                      "lm_head.weight": np.zeros((1000, 256), bf16),
                                      "model.norm.weight": np.zeros((256,), bf16)}
    for layer in range(2):
        prefix = f"model.layers.{layer}"
        for name, (rows, columns) in (("self_attn.q_proj", (256, 256)), ("self_attn.k_proj", (128, 256)),
                                      ("self_attn.v_proj", (128, 256)), ("self_attn.o_proj", (256, 256)),
                                      ("mlp.gate_proj", (512, 256)), ("mlp.up_proj", (512, 256)),
                                      ("mlp.down_proj", (256, 512))):
            tensors[f"{prefix}.{name}.weight"] = np.zeros((rows, columns // 2), np.uint8)
            tensors[f"{prefix}.{name}.weight_scale"] = np.zeros((rows, columns // 16), ml_dtypes.float8_e4m3fn)
            tensors[f"{prefix}.{name}.weight_scale_2"] = np.zeros((), np.float32)
            tensors[f"{prefix}.{name}.input_scale"] = np.zeros((), np.float32)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{prefix}.{norm}.weight"] = np.zeros((256,), bf16)
    write_safetensors(directory / "model.safetensors", tensors)


def test_the_cli_reads_hf_quant_config_json_beside_a_config_without_quantization_config(tmp_path: Path) -> None:
    # vLLM's get_config (transformers_utils/config.py): "ModelOpt 0.29.0 and before saves the quantization config in a
    # separate hf_quant_config.json in the same directory as the model config file"
    _tiny_nvfp4_checkpoint(tmp_path)
    assert with_hf_quant_config(str(tmp_path / "config.json"))["quantization_config"] == NVFP4_HF_QUANT_CONFIG
    out, err = io.StringIO(), io.StringIO()
    status = run(["plan", "--checkpoint", str(tmp_path), "--device", "h100-80gb", "--engine-version", "0.19",
                  "--json"], out, err)
    assert status == 0, err.getvalue()
    answer = json.loads(out.getvalue())
    assert answer["weights"]["format"] == "checkpoint-nvfp4"
    assert answer["comparison"]["as_shipped"]["format"] == "nvfp4-static"
    assert answer["kv_cache"]["dtype"] == "fp8"  # hf_quant_config.json's kv_cache_quant_algo FP8, 0.19's auto
    # a config.json with its own quantization_config keeps it (vLLM reads hf_quant_config.json only without one)
    (tmp_path / "config.json").write_text(json.dumps({**json.loads((tmp_path / "config.json").read_text()),
                                                      "quantization_config": FP8_CONFIG_JSON}))
    assert with_hf_quant_config(str(tmp_path / "config.json"))["quantization_config"] == FP8_CONFIG_JSON
