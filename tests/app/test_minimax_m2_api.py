"""MiniMax-M2.5 (``minimax_m2``) through the API: a pasted config is planned with its experts and as shipped (FP8),
vLLM 0.11.0 (which has no MiniMaxM2ForCausalLM) refuses it, and inspect sizes its GGUF formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "quant_core" / "data" / "minimax_m2"


def minimax() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / "MiniMax-M2.5.json").read_text())
    return config


def test_a_pasted_minimax_m2_5_config_is_planned_with_its_experts(client: TestClient) -> None:
    body = {"model": {"hf_config": minimax()}, "hardware": {"device": "h200", "count": 4},
            "weights": {"format": "bf16"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # 228,689,764,864 parameters (transformers' count + the 62 x 256 router-bias values, tests/quant_core/
    # test_minimax_m2.py), every key of the published config read
    assert answer["parameters"]["total"] == 228_689_764_864
    assert answer["weights"]["bytes"] == 2 * 228_689_764_864
    assert answer["weights"]["by_role"]["expert"] == 2 * 62 * 256 * 3 * 3072 * 1536
    assert not any("not used to size" in warning for warning in answer["warnings"])
    assert any("minimax_m2.py" in warning and "float32" in warning for warning in answer["warnings"])
    # the as-shipped FP8 release beside bf16 and int4
    assert {"bf16", "int4"} <= set(answer["comparison"]) and len(answer["comparison"]) == 3


def test_vllm_0_11_refuses_minimax_m2(client: TestClient) -> None:
    body = {"model": {"preset": "minimax-m2.5"}, "hardware": {"device": "h200", "count": 4},
            "runtime": {"engine_version": "0.11"}}
    response = client.post("/v1/plan", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()  # refused as vLLM refuses layouts: the plan says why and does not fit, in every format
    assert not answer["fits"] and "v0.11.1" in answer["refusal"]
    assert all("v0.11.1" in row["refusal"] and not row["fits"] for row in answer["comparison"].values())


def test_inspect_minimax_m2_sizes_its_gguf_formats(client: TestClient) -> None:
    response = client.post("/v1/models/inspect", json={"preset": "minimax-m2.5"})
    assert response.status_code == 200, response.text
    rows = {row["format"]: row for row in response.json()["weight_bytes"]}
    assert rows["bf16"]["bytes"] == 2 * 228_689_764_864
    assert all(row["bytes"] for name, row in rows.items() if name.startswith("gguf"))


def test_a_minimax_m2_checkpoints_mtp_modules_are_set_apart_not_refused() -> None:
    # vLLM's minimax_m2.py skips model.layers.62.* to model.layers.64.* at load (get_spec_layer_idx_from_weight_name,
    # num_mtp_modules 3): headers that hold them are the model's own, set apart as its multi-token-prediction layers;
    # the as-shipped note (which says the checkpoint holds such layers) stays with num_nextn_predict_layers alone
    from app.schemas.models import ModelInput, checkpoint_mtp_layers_of, mtp_layers_of
    from quant_core.checkpoint_rows import checkpoint_scheme
    from quant_core.hf_config import model_from_hf_config
    from quant_core.inventory import inventory
    from quant_core.tensorio.checkpoint_headers import HeaderTensor
    model = ModelInput(hf_config=minimax())
    assert (checkpoint_mtp_layers_of(model), mtp_layers_of(model)) == (3, 0)
    assert checkpoint_mtp_layers_of(ModelInput(hf_config={**minimax(), "model_type": "mixtral"})) == 0
    config = {**minimax(), "num_hidden_layers": 2, "attn_type_list": [1, 1], "num_local_experts": 4,
              "num_experts_per_tok": 2}
    spec = model_from_hf_config(config)
    tensors = []
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                tensors.append(HeaderTensor(name, "BF16", entry.shape, 2 * entry.elements))
    mtp = [HeaderTensor(f"model.layers.{2 + module}.self_attn.q_proj.weight", "BF16", (6144, 3072), 2 * 6144 * 3072)
           for module in range(3)]
    _scheme, summary = checkpoint_scheme(spec, tensors + mtp, checkpoint_mtp_layers_of(ModelInput(hf_config=config)))
    assert summary.mtp_tensors == 3 and summary.bytes == sum(tensor.bytes for tensor in tensors)
