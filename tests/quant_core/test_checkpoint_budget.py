"""A checkpoint under a budget (quant_core.checkpoint.budget): the formats each output may carry, the bytes
written equal to the allocation's and never above the budget, and the refusals, each naming its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from quant_core.checkpoint import (
    INDEX_NAME,
    Checkpoint,
    CheckpointOptions,
    TensorPlan,
    attach_importance,
    candidate_formats,
    check_options,
    choose_formats,
    measure_tensor,
    open_checkpoint,
    plan_checkpoint,
    quantize_checkpoint,
)
from quant_core.errors import ImportanceMismatch, InvalidSpec
from quant_core.quantize.allocation import allocate
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


def _budget_job(checkpoint_dir: Path, tmp_path: Path, output: str,
                bits_per_weight: float) -> tuple[Checkpoint, CheckpointOptions, list[TensorPlan], dict[str, Any]]:
    """A budgeted job on the test checkpoint with the test importance vectors (GGUF at g32, symmetric: the blocks it
    writes), into ``tmp_path / "out"``: its checkpoint, options, plans and report."""
    extra = {"group_size": 32, "symmetric": True} if output == "gguf" else {}
    options = CheckpointOptions(output=output, bits_per_weight=bits_per_weight, **extra)  # type: ignore[arg-type]
    checkpoint = open_checkpoint(checkpoint_dir)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    return checkpoint, options, plans, quantize_checkpoint(checkpoint, plans, options, tmp_path / "out",
                                                           tmp_path / "parts")


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
    *_, report = _budget_job(checkpoint_dir, tmp_path, output, bits_per_weight)
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


#: the parts of each layer vLLM fuses in the tiny llama (llama.py packed_modules_mapping: qkv_proj, gate_up_proj)
FUSED = [(f"model.layers.{layer}.{parent}", parts) for layer in range(LAYERS)
         for parent, parts in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))]


def _kind(output: str, label: str) -> str:
    """What vLLM's loader tells apart in a fused layer: a compressed-tensors scheme (compressed_tensors/utils.py
    should_ignore_layer, 0.19 lines 34-64), or for GGUF quantized against 16-bit (gguf.py is_layer_skipped_gguf,
    0.19 lines 116-150; GGUFLinearMethod.apply multiplies each shard in its own type, lines 520-548)."""
    if output == "gguf":
        return "16-bit" if label in ("bf16", "fp16") else "quantized"
    return label


@pytest.mark.parametrize("bits_per_weight", [4.6, 5.0, 5.5, 9.0])
@pytest.mark.parametrize("output", ["compressed-tensors", "gguf"])
def test_a_budget_stores_each_fused_layer_in_one_scheme_so_vllm_loads_it(
        checkpoint_dir: Path, tmp_path: Path, output: str, bits_per_weight: float) -> None:
    # vLLM 0.19 compressed_tensors/utils.py find_matched_target (lines 85-131) refuses a linear layer neither
    # targeted nor ignored ("Unable to find matching target"): a 16-bit choice is ignored, not left out of both.
    # Chosen tensor by tensor, these budgets split q/k/v or gate/up (1 layer at 5.0 and 3 at 5.5 bits per weight,
    # gate_proj apart from up_proj at 4.6; a GGUF's k_proj 16-bit beside quantized q/v at 9.0), which vLLM
    # refuses; chosen per fused layer, none is split
    checkpoint, options, plans, report = _budget_job(checkpoint_dir, tmp_path, output, bits_per_weight)
    formats = {entry["name"].removesuffix(".weight"): entry["format"] for entry in report["tensors"]}
    for module, parts in FUSED:
        assert len({_kind(output, formats[f"{module}.{part}"]) for part in parts}) == 1, (module, formats)
    assert not [note for note in report["engine_notes"] if "fuse" in note]
    assert report["allocation"]["output_bytes"] <= report["allocation"]["budget_bytes"]
    if output == "compressed-tensors":
        config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
        targeted = {name for group in config["config_groups"].values() for name in group["targets"]}
        assert {module for module, label in formats.items() if label == "bf16"} <= set(config["ignore"])
        assert set(formats) <= targeted | set(config["ignore"]) and targeted.isdisjoint(config["ignore"])

    # the same measurements allocated tensor by tensor split some of these layers: the groups are what keeps them
    # whole, at the least error the search finds for whole layers (never below the unconstrained one)
    quantized = [plan for plan in plans if plan.quantized]
    measured = [measure_tensor(checkpoint.directory, plan, options) for plan in quantized]
    alone = allocate(measured, report["allocation"]["budget_bytes"])
    labels = {plan.tensor.name.removesuffix(".weight"): measured[t][alone.choices[t]].label
              for t, plan in enumerate(quantized)}
    split_alone = [module for module, parts in FUSED
                   if len({_kind(output, labels[f"{module}.{part}"]) for part in parts}) > 1]
    assert len(split_alone) == {("compressed-tensors", 4.6): 1, ("compressed-tensors", 5.0): 1,
                                ("compressed-tensors", 5.5): 3, ("gguf", 9.0): 1}.get((output, bits_per_weight), 0)
    assert report["allocation"]["error"] >= alone.error


def test_tensors_no_two_of_which_vllm_fuses_get_the_tensor_by_tensor_formats(checkpoint_dir: Path) -> None:
    # phi3.py's packed_modules_mapping maps qkv_proj and gate_up_proj to themselves (its checkpoints store them
    # fused), so nothing here is a fused group for it; for llama, o_proj and down_proj are layers of their own
    options = CheckpointOptions(bits_per_weight=5.5)
    checkpoint = open_checkpoint(checkpoint_dir)
    plans = attach_importance(plan_checkpoint(checkpoint, options), importance_vectors())
    quantized = [plan for plan in plans if plan.quantized]
    measured = {plan.index: measure_tensor(checkpoint.directory, plan, options) for plan in quantized}
    budget = int(5.5 * 294_912 / 8)
    alone = allocate([measured[plan.index] for plan in quantized], budget)
    chosen, _ = choose_formats(plans, options, measured, {"model_type": "phi3"})
    assert [plan.format for plan in chosen if plan.quantized] == [
        candidate_formats(plan, options)[choice] for plan, choice in zip(quantized, alone.choices, strict=True)]
    _, as_llama = choose_formats(plans, options, measured, {"model_type": "llama"})
    assert as_llama["error"] > alone.error  # llama's fused layers cost error at this budget: the groups bite

    narrow = CheckpointOptions(bits_per_weight=5.5, include=("*.o_proj.weight", "*.down_proj.weight"))
    plans = attach_importance(plan_checkpoint(checkpoint, narrow), importance_vectors())
    quantized = [plan for plan in plans if plan.quantized]
    assert len(quantized) == 4
    measured = {plan.index: measure_tensor(checkpoint.directory, plan, narrow) for plan in quantized}
    budget = int(5.5 * sum(plan.tensor.shape[0] * plan.tensor.shape[1] for plan in quantized) / 8)
    alone = allocate([measured[plan.index] for plan in quantized], budget)
    chosen, summary = choose_formats(plans, narrow, measured, {"model_type": "llama"})
    assert summary["budget_bytes"] == budget and summary["error"] == alone.error
    assert [plan.format for plan in chosen if plan.quantized] == [
        candidate_formats(plan, narrow)[choice] for plan, choice in zip(quantized, alone.choices, strict=True)]
