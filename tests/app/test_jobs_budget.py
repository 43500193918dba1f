"""/v1/jobs with importance statistics and a budget: each tensor in the format the allocation chose, the file
written exactly the allocation's bytes (never above the budget), the same bytes as the job run in-process;
hostile statistics paths, mismatched widths and budgets an output cannot carry refused with problem+json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from quant_core.checkpoint import (
    INDEX_NAME,
    CheckpointOptions,
    attach_importance,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.tensorio import read_importance, write_safetensors
from tests.app.conftest import client_with
from tests.app.test_jobs import wait_for
from tests.checkpoints import llama_tensors, tree_bytes, write_llama_checkpoint

PROBLEM = "application/problem+json"
STATISTICS = "stats/imatrix.safetensors"


def importance_vectors(seed: int = 3) -> dict[str, Any]:
    """Non-uniform statistics (a few loud input columns, as real activations have) for every linear weight."""
    rng = np.random.default_rng(seed)
    vectors = {}
    for name, array in llama_tensors().items():
        if array.ndim == 2 and "proj" in name:
            values = rng.gamma(0.5, 1.0, array.shape[1]).astype(np.float32)
            values[rng.integers(0, array.shape[1], 4)] *= 50
            vectors[name] = values
    return vectors


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_llama_checkpoint(root / "llama", shards=3)
    (root / "stats").mkdir()
    write_safetensors(root / STATISTICS, importance_vectors())
    return root


@pytest.fixture
def jobs_client(tmp_path: Path, data_root: Path) -> Iterator[TestClient]:
    with client_with(state_dir=tmp_path / "state", data_dir=data_root) as client:
        yield client


def _problem(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/jobs", json={"source": {"path": "llama"}, **body})
    assert answer.headers["content-type"] == PROBLEM, answer.text
    problem: dict[str, Any] = {"status": answer.status_code, **answer.json()}
    return problem


def _quantized_data_bytes(out_dir: Path, report: dict[str, Any]) -> int:
    """The bytes the written shards hold for the quantized tensors: the index's total less the passthrough."""
    index = json.loads((out_dir / INDEX_NAME).read_text())
    written = llama_tensors()
    passthrough = sum(written[entry["name"]].nbytes for entry in report["passthrough"])
    return int(index["metadata"]["total_size"]) - passthrough


def test_budgeted_job_writes_each_tensor_in_its_chosen_format_exactly_within_the_budget(
        jobs_client: TestClient, data_root: Path, tmp_path: Path) -> None:
    body = {"source": {"path": "llama"}, "method": "rtn", "output": "compressed-tensors",
            "importance": STATISTICS, "bits_per_weight": 4.4, "max_shard_bytes": 60_000}
    answer = jobs_client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "succeeded", status["error"]
    assert status["progress"]["tensors_measured"] == 14
    allocation = status["result"]["allocation"]
    tensors = [entry for entry in status["report"] if "reason" not in entry]
    # 294,912 weights x 4.4 bits / 8 = 162,201.6 bytes, rounded down
    assert allocation["budget_bytes"] == 162_201 and allocation["elements"] == 294_912
    assert allocation["output_bytes"] <= allocation["budget_bytes"]
    assert allocation["output_bytes"] == sum(entry["bytes"]["output"] for entry in tensors)
    assert len(allocation["formats"]) >= 2, allocation  # a mix, not one format
    assert {entry["format"] for entry in tensors} == set(allocation["formats"])
    assert all(entry["importance_used"] for entry in tensors)
    assert all(entry["quality"]["weighted_relative_error"] is not None for entry in tensors)

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for file in status["result"]["files"]:
        (downloaded / file["name"]).write_bytes(jobs_client.get(file["url"]).content)
    report = json.loads((downloaded / "nibble_report.json").read_text())
    assert report["format"] == "mixed" and report["allocation"] == allocation
    assert _quantized_data_bytes(downloaded, report) == allocation["output_bytes"]  # the file is the prediction
    groups = json.loads((downloaded / "config.json").read_text())["quantization_config"]["config_groups"]
    assert len(groups) == len(allocation["formats"])

    # the same job in this process: the same bytes
    checkpoint = open_checkpoint(data_root / "llama")
    options = CheckpointOptions(bits_per_weight=4.4, max_shard_bytes=60_000)
    plans = attach_importance(plan_checkpoint(checkpoint, options), read_importance(data_root / STATISTICS))
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "ref", tmp_path / "parts")
    assert tree_bytes(downloaded) == tree_bytes(tmp_path / "ref")


def test_a_budgets_formats_keep_each_fused_layer_whole_and_the_status_notes_no_split(
        jobs_client: TestClient) -> None:
    # at 5.5 bits per weight a tensor-by-tensor choice kept some k_proj (and v_proj) 16-bit beside an int4 q_proj,
    # which vLLM refuses (compressed_tensors/utils.py should_ignore_layer, 0.19 lines 34-64); the budget now
    # chooses each fused layer (q/k/v, gate/up: llama.py packed_modules_mapping) as one
    body = {"source": {"path": "llama"}, "importance": STATISTICS, "bits_per_weight": 5.5}
    answer = jobs_client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["engine_notes"] == []
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "succeeded", status["error"]
    (url,) = [file["url"] for file in status["result"]["files"] if file["name"] == "nibble_report.json"]
    report = jobs_client.get(url).json()
    assert status["engine_notes"] == report["engine_notes"] == []
    formats = {entry["name"].removesuffix(".weight"): entry["format"] for entry in report["tensors"]}
    for layer in range(2):
        for parent, parts in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))):
            assert len({formats[f"model.layers.{layer}.{parent}.{part}"] for part in parts}) == 1, formats
    assert "bf16" in formats.values()  # still a mix: a layer vLLM does not fuse (o_proj) took 16-bit


def test_importance_without_a_budget_weights_the_methods_and_says_so(jobs_client: TestClient) -> None:
    answer = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "method": "clip",
                                                "output": "gptq", "importance": STATISTICS})
    assert answer.status_code == 202, answer.text
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "succeeded", status["error"]
    tensors = [entry for entry in status["report"] if "reason" not in entry]
    assert len(tensors) == 14 and all(entry["importance_used"] for entry in tensors)
    assert {entry["format"] for entry in tensors} == {"int4-g128-asym"}
    assert status["result"].get("allocation") is None


@pytest.mark.parametrize("path", ["../outside.dat", "/etc/passwd", "stats/../../outside.dat"])
def test_importance_paths_leaving_the_data_root_are_refused_403(jobs_client: TestClient, path: str) -> None:
    problem = _problem(jobs_client, {"importance": path})
    assert problem["status"] == 403 and problem["errors"][0]["field"] == "importance", problem


def test_importance_symlink_leading_out_is_refused_and_a_missing_file_is_422(
        jobs_client: TestClient, data_root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    os.symlink(tmp_path / "secret.safetensors", data_root / "stats" / "link.safetensors")
    problem = _problem(jobs_client, {"importance": "stats/link.safetensors"})
    assert problem["status"] == 403 and "outside the data root" in problem["detail"]
    problem = _problem(jobs_client, {"importance": "stats/none.dat"})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "importance", problem


def test_importance_of_the_wrong_width_is_refused_naming_the_tensor(jobs_client: TestClient,
                                                                    data_root: Path) -> None:
    vectors = importance_vectors()
    vectors["model.layers.1.mlp.down_proj.weight"] = np.ones(128, np.float32)  # in_features is 256
    write_safetensors(data_root / "stats" / "wrong.safetensors", vectors)
    problem = _problem(jobs_client, {"importance": "stats/wrong.safetensors", "bits_per_weight": 4.5})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "importance"
    assert "model.layers.1.mlp.down_proj.weight" in problem["detail"] and "256" in problem["detail"]
    write_safetensors(data_root / "stats" / "other.safetensors", {"blk.0.attn_q.weight": np.ones(128, np.float32)})
    problem = _problem(jobs_client, {"importance": "stats/other.safetensors"})
    assert problem["status"] == 422 and "name none of the tensors to quantize" in problem["detail"]


@pytest.mark.parametrize("output", ["gptq", "awq"])
def test_a_budget_is_refused_for_outputs_that_declare_one_format_for_every_module(
        jobs_client: TestClient, output: str) -> None:
    problem = _problem(jobs_client, {"output": output, "bits_per_weight": 4.5})
    assert problem["status"] == 422 and problem["errors"][0]["field"] == "output"
    assert "one bits/group_size" in problem["detail"] or "one w_bit/q_group_size" in problem["detail"]


def test_budget_fields_are_validated(jobs_client: TestClient) -> None:
    both = _problem(jobs_client, {"bits_per_weight": 4.5, "budget_bytes": 100_000})
    assert both["status"] == 422 and both["errors"][0]["field"] == "budget_bytes" and "not both" in json.dumps(both)
    for field, value in (("bits_per_weight", 0), ("bits_per_weight", 17), ("budget_bytes", 0)):
        problem = _problem(jobs_client, {field: value})
        assert problem["status"] == 422 and problem["errors"][0]["field"] == field, problem
    # the 14 tensors' payload at int4 g128 symmetric, their smallest format: 294,912 / 2 codes + 4,608 fp16
    # scales = 152,064 bytes; a byte less is refused at submission
    small = _problem(jobs_client, {"budget_bytes": 152_063})
    assert small["status"] == 422 and small["errors"][0]["field"] == "budget_bytes", small
    assert "152063" in small["detail"] and "152064" in small["detail"]
    bits = _problem(jobs_client, {"bits_per_weight": 3.0})
    assert bits["status"] == 422 and bits["errors"][0]["field"] == "bits_per_weight", bits


@pytest.mark.parametrize("group_size", [64, None])
def test_a_group_size_sent_with_a_budget_is_refused_rather_than_ignored(jobs_client: TestClient,
                                                                       group_size: int | None) -> None:
    # compressed-tensors' budget chooses each tensor's group size (g128, g64, g32 or 16-bit), as the quantize
    # forms refuse it; gguf's budget keeps its Q4_0 group of 32, which the job needs sent (test_checkpoint_loaders)
    for budget in ({"bits_per_weight": 4.5}, {"budget_bytes": 200_000}):
        problem = _problem(jobs_client, {**budget, "group_size": group_size})
        assert problem["status"] == 422 and problem["errors"][0]["field"] == "group_size", problem
        assert "send the budget without group_size" in problem["errors"][0]["message"]
    gguf = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "output": "gguf", "group_size": 32,
                                              "symmetric": True, "bits_per_weight": 6.0})
    assert gguf.status_code == 202, gguf.text


def test_a_bits_per_weight_that_is_not_a_finite_number_is_refused_as_such(jobs_client: TestClient) -> None:
    # JSON's NaN and Infinity (Python's json writes and reads them) were refused as "less than or equal to 16"
    for value in ("NaN", "Infinity", "-Infinity"):
        answer = jobs_client.post("/v1/jobs", content=f'{{"source": {{"path": "llama"}}, "bits_per_weight": {value}}}',
                                  headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0] == {"field": "bits_per_weight", "message": "Input should be a finite number"}


def test_a_budget_below_what_the_output_stores_fails_the_job_naming_the_field(jobs_client: TestClient) -> None:
    """compressed-tensors adds each tensor's int64 ``weight_shape`` (16 bytes): 152,064 + 14 x 16 = 152,288
    bytes is the least it stores, known once the tensors are measured."""
    answer = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "budget_bytes": 152_287})
    assert answer.status_code == 202, answer.text
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "failed" and status["error"]["status"] == 422, status
    assert status["error"]["errors"][0]["field"] == "budget_bytes" and "152288" in status["error"]["detail"]
    answer = jobs_client.post("/v1/jobs", json={"source": {"path": "llama"}, "budget_bytes": 152_288})
    status = wait_for(jobs_client, answer.json()["id"])
    assert status["state"] == "succeeded", status["error"]
    assert status["result"]["allocation"]["output_bytes"] == 152_288
    assert status["result"]["allocation"]["formats"] == {"int4-g128-sym": 14}
