"""A checkpoint under a budget (quant_core.checkpoint.budget): the formats each output may carry, the bytes
written equal to the allocation's and never above the budget, and the refusals, each naming its field."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from quant_core.checkpoint import (
    INDEX_NAME,
    CheckpointOptions,
    attach_importance,
    candidate_formats,
    check_options,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.errors import ImportanceMismatch, InvalidSpec
from tests.app.test_jobs_budget import importance_vectors
from tests.checkpoints import LAYERS, llama_tensors, write_llama_checkpoint


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data") / "llama"
    write_llama_checkpoint(directory, shards=2)
    return directory


def _labels(checkpoint_dir: Path, **fields: object) -> list[str]:
    options = CheckpointOptions(**fields)  # type: ignore[arg-type]
    plan = next(p for p in plan_checkpoint(open_checkpoint(checkpoint_dir), options) if p.quantized)
    return [f.label() for f in candidate_formats(plan, options)]


def test_each_output_offers_the_formats_it_can_carry(checkpoint_dir: Path) -> None:
    assert _labels(checkpoint_dir) == ["int4-g128-asym", "int4-g64-asym", "int4-g32-asym", "int4-g128-sym",
                                       "int4-g64-sym", "int4-g32-sym", "bf16"]
    assert _labels(checkpoint_dir, symmetric=True) == ["int4-g128-sym", "int4-g64-sym", "int4-g32-sym", "bf16"]
    assert _labels(checkpoint_dir, method="hqq") == ["int4-g128-asym", "int4-g64-asym", "int4-g32-asym", "bf16"]
    assert _labels(checkpoint_dir, output="gguf", group_size=32, symmetric=True) == ["int4-g32-sym", "q8_0", "bf16"]


@pytest.mark.parametrize("bits_per_weight", [4.6, 5.0, 5.5, 9.0])
@pytest.mark.parametrize("output", ["compressed-tensors", "gguf"])
def test_the_bytes_written_are_the_allocations_and_never_above_the_budget(
        checkpoint_dir: Path, tmp_path: Path, output: str, bits_per_weight: float) -> None:
    extra = {"group_size": 32, "symmetric": True} if output == "gguf" else {}
    options = CheckpointOptions(output=output, bits_per_weight=bits_per_weight, **extra)  # type: ignore[arg-type]
    checkpoint = open_checkpoint(checkpoint_dir)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    allocation = report["allocation"]
    assert allocation["budget_bytes"] == int(bits_per_weight * 294_912 / 8)  # the 14 linear weights
    assert allocation["output_bytes"] <= allocation["budget_bytes"]
    assert allocation["output_bytes"] == sum(entry["bytes"]["output"] for entry in report["tensors"])
    if output == "gguf":
        reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)  # the file holds llama.cpp's names
        quantized = {names.get_name(e["name"], try_suffixes=(".weight",)) for e in report["tensors"]}
        written = sum(int(t.n_bytes) for t in reader.tensors if t.name in quantized)
    else:
        index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
        source = llama_tensors()
        written = index["metadata"]["total_size"] - sum(source[e["name"]].nbytes for e in report["passthrough"])
    assert written == allocation["output_bytes"]


def test_budgets_an_output_cannot_carry_and_malformed_budgets_are_refused_naming_the_field() -> None:
    for options, field in ((CheckpointOptions(output="gptq", bits_per_weight=4.5), "output"),
                           (CheckpointOptions(output="awq", budget_bytes=10**6), "output"),
                           (CheckpointOptions(bits_per_weight=4.5, budget_bytes=10**6), "budget_bytes"),
                           (CheckpointOptions(bits_per_weight=0.0), "bits_per_weight"),
                           (CheckpointOptions(budget_bytes=0), "budget_bytes")):
        with pytest.raises(InvalidSpec) as caught:
            check_options(options)
        assert caught.value.field == field, options


def test_importance_vectors_that_do_not_fit_are_refused_naming_the_tensor(checkpoint_dir: Path) -> None:
    plans = plan_checkpoint(open_checkpoint(checkpoint_dir), CheckpointOptions())
    vectors = importance_vectors()
    vectors["model.layers.0.mlp.up_proj.weight"] = -np.ones(128, np.float32)
    with pytest.raises(ImportanceMismatch, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*non-negative"):
        attach_importance(plans, vectors)
    with pytest.raises(ImportanceMismatch, match="name none of the tensors to quantize"):
        attach_importance(plans, {"other.weight": np.ones(128, np.float32)})
    attached = attach_importance(plans, {"model.layers.0.mlp.up_proj.weight": np.ones(128, np.float32)})
    assert [p.tensor.name for p in attached if p.importance is not None] == ["model.layers.0.mlp.up_proj.weight"]


@pytest.mark.parametrize("bits_per_weight", [5.0, 5.5, 9.0])
def test_a_compressed_tensors_budget_ignores_its_16_bit_modules_and_names_the_fused_layers_it_splits(
        checkpoint_dir: Path, tmp_path: Path, bits_per_weight: float) -> None:
    # vLLM 0.19 compressed_tensors/utils.py find_matched_target (lines 85-131) refuses a linear layer neither
    # targeted nor ignored ("Unable to find matching target"): a 16-bit choice is ignored, not left out of both.
    # A budget chooses each tensor's format alone, so q/k/v or gate/up may differ, which vLLM refuses
    # (should_ignore_layer, lines 34-64; _match_fused_layer takes the first part's scheme): the report says which
    options = CheckpointOptions(bits_per_weight=bits_per_weight)
    checkpoint = open_checkpoint(checkpoint_dir)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    formats = {entry["name"].removesuffix(".weight"): entry["format"] for entry in report["tensors"]}
    targeted = {name for group in config["config_groups"].values() for name in group["targets"]}
    assert {module for module, label in formats.items() if label == "bf16"} <= set(config["ignore"])
    assert set(formats) <= targeted | set(config["ignore"]) and targeted.isdisjoint(config["ignore"])
    split = [f"model.layers.{layer}.{parent}" for layer in range(LAYERS)
             for parent, parts in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
             if len({formats[f"model.layers.{layer}.{parent}.{part}"] for part in parts}) > 1]
    assert len(split) == {5.0: 1, 5.5: 3, 9.0: 0}[bits_per_weight]  # the allocations these budgets make
    assert [note.split(":")[0] for note in report["engine_notes"]
            if "fuses" in note] == split  # tiny llama: no two layers split alike at these budgets
