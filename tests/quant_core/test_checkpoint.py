"""Whole-checkpoint quantization in the core: reading shards by byte range, hostile sources, deterministic output."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from quant_core.checkpoint import (
    DEFAULT_EXCLUDE,
    INDEX_NAME,
    REPORT_NAME,
    CheckpointError,
    CheckpointOptions,
    engine_notes,
    open_checkpoint,
    part_path,
    plan_checkpoint,
    quantize_checkpoint,
    read_tensor,
    valid_parts,
)
from quant_core.errors import InvalidSpec
from quant_core.globs import glob_matches
from quant_core.tensorio import read_safetensors, write_safetensors
from tests.checkpoints import llama_tensors, tree_bytes, write_llama_checkpoint
from tests.quant_core.tensorio.gptq_loader_rules import (
    LLAMA_PACKED_MODULES,
    gptqmodel_quantizes,
    optimum_quantizes,
    vllm_quantizes,
    vllm_quantizes_experts,
)

QUANTIZED_PER_LAYER = 7  # q, k, v, o, gate, up, down


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    write_llama_checkpoint(tmp_path / "src", shards=3)
    return tmp_path / "src"


def test_open_checkpoint_lists_every_tensor_by_shard_and_byte_range(checkpoint_dir: Path) -> None:
    written = llama_tensors()
    checkpoint = open_checkpoint(checkpoint_dir)
    assert [t.name for t in checkpoint.tensors] == list(written)  # dealt to shards in order
    assert len({t.shard for t in checkpoint.tensors}) == 3
    assert checkpoint.total_bytes == sum(int(a.nbytes) for a in written.values())
    assert checkpoint.other_files == ("generation_config.json", "special_tokens_map.json", "tokenizer.json",
                                      "tokenizer.model", "tokenizer_config.json")
    for tensor in checkpoint.tensors:
        np.testing.assert_array_equal(read_tensor(checkpoint.directory, tensor), written[tensor.name])


def test_default_plan_quantizes_the_linear_layers_and_says_why_the_rest_pass(checkpoint_dir: Path) -> None:
    plans = plan_checkpoint(open_checkpoint(checkpoint_dir), CheckpointOptions())
    quantized = [p.tensor.name for p in plans if p.quantized]
    assert len(quantized) == 2 * QUANTIZED_PER_LAYER
    reasons = {p.tensor.name: p.reason for p in plans if not p.quantized}
    assert reasons["model.embed_tokens.weight"] == "name matches the exclude pattern '*embed*'"
    assert reasons["lm_head.weight"] == "name matches the exclude pattern '*lm_head*'"
    assert reasons["model.norm.weight"] == "name matches the exclude pattern '*norm*'"


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_checkpoint_result_is_byte_identical_when_made_twice(tmp_path: Path, checkpoint_dir: Path,
                                                            output: str) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(output=output, max_shard_bytes=60_000)  # type: ignore[arg-type]
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "a", tmp_path / "parts-a")
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "b", tmp_path / "parts-b")
    first, second = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert first == second
    shards = [name for name in first if name.endswith(".safetensors")]
    assert len(shards) > 1
    index = json.loads(first[INDEX_NAME])
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:  # every shard keeps to the limit (no single tensor here is larger)
        assert sum(int(a.nbytes) for a in read_safetensors(tmp_path / "a" / shard).values()) <= 60_000


def test_result_carries_config_tokenizer_and_report(tmp_path: Path, checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions()
    report = quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "out",
                                 tmp_path / "parts")
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    targets = config["quantization_config"]["config_groups"]["group_0"]["targets"]
    assert "model.layers.1.mlp.down_proj" in targets and len(targets) == 2 * QUANTIZED_PER_LAYER
    assert (out / "tokenizer.json").read_bytes() == (checkpoint_dir / "tokenizer.json").read_bytes()
    assert json.loads((out / REPORT_NAME).read_text()) == report
    assert report["totals"]["passthrough_tensors"] == len(report["passthrough"]) == 2 * 2 + 3
    stored = {}
    for shard in sorted(out.glob("model-*.safetensors")):
        stored.update(read_safetensors(shard))
    assert "model.layers.0.self_attn.q_proj.weight_packed" in stored
    assert "model.layers.0.self_attn.q_proj.weight" not in stored
    np.testing.assert_array_equal(stored["lm_head.weight"], llama_tensors()["lm_head.weight"])


def test_an_awq_result_names_every_module_it_left_unquantized_in_modules_to_not_convert(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    # group 256: every projection reading the 128-wide hidden state passes through (in_features 128), so only
    # down_proj (in 256) is quantized.  modules_to_not_convert was null: transformers (replace_with_awq_linear)
    # and vLLM made AWQ layers of the passed-through modules too, whose qweight the checkpoint does not hold.
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(output="awq", group_size=256)
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    listed = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]
    quantized = [p.tensor.name.removesuffix(".weight") for p in plans if p.quantized]
    assert quantized == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert listed == [p.tensor.name.removesuffix(".weight") for p in plans
                      if not p.quantized and len(p.tensor.shape) == 2]  # the embedding and lm_head too, as published
    assert "model.layers.1.self_attn.q_proj" in listed and len(listed) == 2 * 6 + 2
    # vLLM skips a module when an entry is a substring of its name (awq.py, is_layer_skipped_awq): no quantized one
    assert not [module for module in quantized if any(entry in module for entry in listed)]


def test_an_awq_result_that_quantizes_every_linear_layer_keeps_modules_to_not_convert_for_the_rest(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(output="awq")
    quantize_checkpoint(checkpoint, plan_checkpoint(checkpoint, options), options, tmp_path / "out",
                        tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config["modules_to_not_convert"] == ["model.embed_tokens", "lm_head"]


#: the block's linear modules of the test llama (what optimum's get_layers and GPTQModel's layer tree list)
LINEAR_MODULES = [f"model.layers.{layer}.{module}" for layer in range(2) for module in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj")]
#: vLLM's layer prefixes of the same model (q/k/v and gate/up fused: LlamaForCausalLM.packed_modules_mapping)
VLLM_LINEAR_PREFIXES = [f"model.layers.{layer}.{module}" for layer in range(2) for module in (
    "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]


def gptq_result(tmp_path: Path, checkpoint_dir: Path, **fields: Any) -> tuple[dict[str, Any], list[str]]:
    """A GPTQ job's config.json quantization_config, and the linear modules its plan quantized."""
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(output="gptq", **fields)
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config == json.loads((tmp_path / "out" / "quantize_config.json").read_text())
    return config, [p.tensor.name.removesuffix(".weight") for p in plans if p.quantized]


@pytest.mark.parametrize(("fields", "passed_through"), [
    # group 256: every projection reading the 128-wide hidden state passes through (in_features 128)
    ({"group_size": 256}, [m for m in LINEAR_MODULES if not m.endswith("down_proj")]),
    # an exclude glob leaves out one layer's down_proj
    ({"exclude": (*DEFAULT_EXCLUDE, "*layers.1.mlp.down_proj*")}, ["model.layers.1.mlp.down_proj"]),
], ids=["group-size", "exclude"])
def test_a_gptq_result_tells_every_loader_which_linear_modules_it_left_unquantized(
        tmp_path: Path, checkpoint_dir: Path, fields: dict[str, Any], passed_through: list[str]) -> None:
    # Before: no key said so, and GPTQModel, vLLM and transformers made GPTQ layers of the passed-through
    # modules too, whose qweight the checkpoint does not hold.  Each loader's own matching is transcribed in
    # tests/quant_core/tensorio/gptq_loader_rules.py (sources cited there).
    config, quantized = gptq_result(tmp_path, checkpoint_dir, **fields)
    assert sorted(quantized) == sorted(set(LINEAR_MODULES) - set(passed_through))
    assert [m for m in LINEAR_MODULES if not gptqmodel_quantizes(config, m)] == passed_through
    assert [m for m in LINEAR_MODULES if not optimum_quantizes(config, m)] == passed_through
    vllm_quantized = {prefix for prefix in VLLM_LINEAR_PREFIXES if vllm_quantizes(config, prefix)}
    assert vllm_quantized == {prefix for prefix in VLLM_LINEAR_PREFIXES
                              if all(shard in quantized for shard in vllm_shards(prefix))}


@pytest.mark.parametrize("exclude", [(), ("*layers.1.mlp.down_proj*",), ("*k_proj*", "*v_proj*", "*q_proj*")],
                         ids=["defaults", "one-down-proj", "attention-qkv"])
def test_a_compressed_tensors_result_targets_or_ignores_every_linear_module_vllm_builds(
        tmp_path: Path, checkpoint_dir: Path, exclude: tuple[str, ...]) -> None:
    # vLLM's CompressedTensorsConfig.get_scheme refuses a linear layer that no config group targets and the ignore
    # list does not name ("Unable to find matching target ... in the compressed-tensors config"), shard by shard
    # for its fused layers.  Before: a module an exclude glob left out was in neither, and vLLM refused the result.
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(output="compressed-tensors", exclude=(*DEFAULT_EXCLUDE, *exclude))
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    targeted = {name for group in config["config_groups"].values() for name in group["targets"]}
    ignored = set(config["ignore"])
    assert targeted.isdisjoint(ignored)
    for prefix in VLLM_LINEAR_PREFIXES:
        shards = vllm_shards(prefix)
        assert all(shard in targeted for shard in shards) or all(shard in ignored for shard in shards), prefix
    assert {m for m in LINEAR_MODULES if any(glob_matches(m + ".weight", g) for g in exclude)} <= ignored
    assert {"model.embed_tokens", "lm_head"} <= ignored  # passed through whole, as llm-compressor lists lm_head


def vllm_shards(prefix: str) -> list[str]:
    """The checkpoint modules a vLLM layer prefix stands for (its shards, for a fused layer)."""
    name = prefix.rsplit(".", 1)[1]
    return [prefix.replace(name, shard) for shard in LLAMA_PACKED_MODULES.get(name, [name])]


def test_a_gptq_result_writes_one_rule_per_module_skipped_in_every_layer_and_short_names_for_the_rest(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    config, _ = gptq_result(tmp_path, checkpoint_dir, group_size=256)
    # one rule per module left out in every layer (the layer number any digits), written as GPTQModel does
    assert list(config["dynamic"]) == [r"-:^model\.layers\.\d+\.self_attn\.q_proj$",
                                       r"-:^model\.layers\.\d+\.self_attn\.k_proj$",
                                       r"-:^model\.layers\.\d+\.self_attn\.v_proj$",
                                       r"-:^model\.layers\.\d+\.self_attn\.o_proj$",
                                       r"-:^model\.layers\.\d+\.mlp\.gate_proj$",
                                       r"-:^model\.layers\.\d+\.mlp\.up_proj$"]
    assert all(rule == {} for rule in config["dynamic"].values())
    assert config["modules_in_block_to_quantize"] == [["mlp.down_proj"]]
    config, _ = gptq_result(tmp_path / "exclude", checkpoint_dir,
                            exclude=(*DEFAULT_EXCLUDE, "*layers.1.mlp.down_proj*"))
    # layer 0's down_proj is quantized: layer 1's is named alone, and layer 0's by its full name
    assert config["dynamic"] == {r"-:^model\.layers\.1\.mlp\.down_proj$": {}}
    assert config["modules_in_block_to_quantize"] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                       "model.layers.0.mlp.down_proj"]]


def test_a_gptq_result_leaving_out_part_of_a_fused_layer_is_what_vllm_refuses_at_load(
        tmp_path: Path, checkpoint_dir: Path) -> None:
    # k_proj alone left out: GPTQModel and transformers load it; vLLM fuses q/k/v into one layer and refuses a
    # layer whose shards differ (is_layer_gptq_quantized), as quant_core/tensorio/gptq.py says
    config, _ = gptq_result(tmp_path, checkpoint_dir, exclude=(*DEFAULT_EXCLUDE, "*k_proj*"))
    skipped = [m for m in LINEAR_MODULES if m.endswith("k_proj")]
    assert [m for m in LINEAR_MODULES if not gptqmodel_quantizes(config, m)] == skipped
    assert [m for m in LINEAR_MODULES if not optimum_quantizes(config, m)] == skipped
    with pytest.raises(ValueError, match=r"some but not all shards of model\.layers\.0\.self_attn\.qkv_proj"):
        vllm_quantizes(config, "model.layers.0.self_attn.qkv_proj")


#: what the report says of the tiny llama (2 layers) with k_proj alone left out
K_PROJ_SPLIT = "model.layers.{0..1}.self_attn: k_proj passed through, q_proj and v_proj quantized. "
VLLM_FUSES_QKV = "fuses q_proj, k_proj and v_proj into one qkv_proj and refuses it stored in part"


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq", "gguf"])
def test_a_result_leaving_out_k_proj_alone_says_vllm_refuses_each_layers_qkv_proj(
        tmp_path: Path, checkpoint_dir: Path, output: str) -> None:
    # vLLM refuses a fused layer stored in part (0.19 quant_utils.py is_layer_skipped lines 457-478, gptq_utils.py
    # lines 97-120, compressed_tensors/utils.py lines 34-64, gguf.py lines 121-150); the job writes what was asked
    # (k_proj stays excluded: the globs are not widened) and its report names the group and the remedy
    checkpoint = open_checkpoint(checkpoint_dir)
    gguf = {"group_size": 32, "symmetric": True} if output == "gguf" else {}
    options = CheckpointOptions(output=output, exclude=(*DEFAULT_EXCLUDE, "*k_proj*"), **gguf)  # type: ignore[arg-type]
    plans = plan_checkpoint(checkpoint, options)
    assert [p.tensor.name for p in plans if "k_proj" in p.tensor.name and p.quantized] == []
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    assert report == json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    (note,) = split_notes(report["engine_notes"], asymmetric_gptq=output == "gptq")
    assert note.startswith(K_PROJ_SPLIT) and VLLM_FUSES_QKV in note
    assert note.endswith("exclude or include q_proj, k_proj and v_proj together")
    assert ("llama.cpp loads this GGUF" in note) is (output == "gguf")


def test_include_globs_that_fail_to_name_k_proj_split_qkv_proj_the_same_way(tmp_path: Path,
                                                                            checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions(include=("*q_proj*", "*v_proj*", "*mlp*"))
    plans = plan_checkpoint(checkpoint, options)
    assert options.include == ("*q_proj*", "*v_proj*", "*mlp*")  # what was asked stays asked
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    (note,) = report["engine_notes"]
    assert note.startswith(K_PROJ_SPLIT) and "compressed_tensors/utils.py" in note
    assert report["totals"]["quantized_tensors"] == 2 * 5  # q, v, gate, up, down per layer


def test_a_gptq_result_leaving_out_all_of_q_k_v_loads_in_vllm_and_says_nothing(tmp_path: Path,
                                                                                checkpoint_dir: Path) -> None:
    # the same rule (the mirror of gptq_utils.py's, tests/quant_core/tensorio/gptq_loader_rules.py) accepts the
    # whole group left out, and the report has no note; with k_proj alone left out the mirror refuses and the
    # report names that layer
    config, _ = gptq_result(tmp_path / "qkv", checkpoint_dir,
                            exclude=(*DEFAULT_EXCLUDE, "*q_proj*", "*k_proj*", "*v_proj*"))
    assert vllm_quantizes(config, "model.layers.0.self_attn.qkv_proj") is False
    assert split_notes(json.loads((tmp_path / "qkv" / "out" / REPORT_NAME).read_text())["engine_notes"]) == []
    config, _ = gptq_result(tmp_path / "k", checkpoint_dir, exclude=(*DEFAULT_EXCLUDE, "*k_proj*"))
    with pytest.raises(ValueError, match=r"some but not all shards of model\.layers\.1\.self_attn\.qkv_proj"):
        vllm_quantizes(config, "model.layers.1.self_attn.qkv_proj")
    assert split_notes(json.loads((tmp_path / "k" / "out" / REPORT_NAME).read_text())["engine_notes"])[0] \
        .startswith(K_PROJ_SPLIT)


#: the start of the engine note of an asymmetric GPTQ result (vLLM 0.33's AutoGPTQConfig refuses sym=False)
ASYMMETRIC_GPTQ_NOTE = "vLLM 0.33 will not load this result"


def split_notes(notes: list[str], asymmetric_gptq: bool = True) -> list[str]:
    """`notes` less the asymmetric-GPTQ note, which must be there exactly when `asymmetric_gptq` (a GPTQ job at the
    default symmetric=false)."""
    said = [note for note in notes if note.startswith(ASYMMETRIC_GPTQ_NOTE)]
    assert len(said) == (1 if asymmetric_gptq else 0), notes
    return [note for note in notes if not note.startswith(ASYMMETRIC_GPTQ_NOTE)]


def moe_tensors(layers: int = 2, experts: int = 4) -> dict[str, NDArray[Any]]:
    """A tiny mixture of experts named as Qwen-MoE's are (router ``mlp.gate``, ``mlp.experts.<e>.*_proj``)."""
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> NDArray[np.float32]:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)

    tensors = {"model.embed_tokens.weight": weight(96, 128)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors |= {f"{prefix}.self_attn.q_proj.weight": weight(128, 128),
                    f"{prefix}.self_attn.o_proj.weight": weight(128, 128),
                    f"{prefix}.mlp.gate.weight": weight(experts, 128),
                    f"{prefix}.input_layernorm.weight": np.ones(128, np.float32)}
        for expert in range(experts):
            tensors |= {f"{prefix}.mlp.experts.{expert}.gate_proj.weight": weight(128, 128),
                        f"{prefix}.mlp.experts.{expert}.up_proj.weight": weight(128, 128),
                        f"{prefix}.mlp.experts.{expert}.down_proj.weight": weight(128, 128)}
    return tensors | {"model.norm.weight": np.ones(128, np.float32), "lm_head.weight": weight(96, 128)}


def test_a_gptq_result_whose_layer_leaves_its_experts_unquantized_names_them_as_one_for_vllm(tmp_path: Path) -> None:
    # vLLM makes one FusedMoE layer of a layer's experts and asks `dynamic` about it by its list's name only
    # (gptq_marlin.py get_moe_quant_method): the per-module rules would leave layer 1's experts quantized there
    write_llama_checkpoint(tmp_path / "moe", shards=2, tensors=moe_tensors())
    config, quantized = gptq_result(tmp_path, tmp_path / "moe", exclude=(*DEFAULT_EXCLUDE, "*layers.1.mlp.experts*"))
    assert list(config["dynamic"]) == [r"-:^model\.layers\.1\.mlp\.experts\.\d+\.gate_proj$",
                                       r"-:^model\.layers\.1\.mlp\.experts\.\d+\.up_proj$",
                                       r"-:^model\.layers\.1\.mlp\.experts\.\d+\.down_proj$",
                                       r"-:^model\.layers\.1\.mlp\.experts$"]
    assert vllm_quantizes_experts(config, "model.layers.0.mlp.experts")
    assert not vllm_quantizes_experts(config, "model.layers.1.mlp.experts")
    experts = [name.removesuffix(".weight") for name in moe_tensors() if ".experts." in name]
    skipped = [module for module in experts if module.startswith("model.layers.1.")]
    assert [m for m in experts if not gptqmodel_quantizes(config, m)] == skipped
    assert [m for m in experts if not optimum_quantizes(config, m)] == skipped
    assert all(gptqmodel_quantizes(config, m) and optimum_quantizes(config, m) for m in quantized)


@pytest.mark.parametrize("output", ["gptq", "awq"])
def test_a_moe_result_leaving_out_one_experts_up_proj_names_the_fused_moe_layers_and_a_whole_layer_none(
        tmp_path: Path, output: str) -> None:
    # vLLM's FusedMoE takes one quant method for a layer's experts (gptq_marlin.py get_moe_quant_method,
    # awq_marlin.py lines 282-290 decide it by the list's name); an expert stored apart does not load
    write_llama_checkpoint(tmp_path / "moe", shards=2, tensors=moe_tensors())
    checkpoint = open_checkpoint(tmp_path / "moe")
    reports = {}
    for name, glob in (("one", "*experts.1.up_proj*"), ("layer", "*layers.1.mlp.experts*")):
        options = CheckpointOptions(output=output, exclude=(*DEFAULT_EXCLUDE, glob))  # type: ignore[arg-type]
        plans = plan_checkpoint(checkpoint, options)
        reports[name] = quantize_checkpoint(checkpoint, plans, options, tmp_path / name, tmp_path / f"parts-{name}")
    (note,) = split_notes(reports["one"]["engine_notes"], asymmetric_gptq=output == "gptq")
    assert note.startswith("model.layers.{0..1}.mlp.experts: 1.up_proj passed through, {0..3}.gate_proj, "
                           "{0,2..3}.up_proj and {0..3}.down_proj quantized. vLLM makes one FusedMoE layer")
    assert note.endswith("exclude or include every expert's projections of the layer together")
    assert split_notes(reports["layer"]["engine_notes"], asymmetric_gptq=output == "gptq") == []


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_gptq_result_that_quantizes_every_linear_layer_keeps_the_config_it_had(
        tmp_path: Path, checkpoint_dir: Path, symmetric: bool) -> None:
    # embeddings, lm_head and norms pass through, but no loader quantizes those: no dynamic key, as before
    _, quantized = gptq_result(tmp_path, checkpoint_dir, symmetric=symmetric)
    assert quantized == LINEAR_MODULES
    assert (tmp_path / "out" / "quantize_config.json").read_text() == json.dumps(
        {"bits": 4, "group_size": 128, "desc_act": False, "sym": symmetric, "true_sequential": True,
         "static_groups": False, "checkpoint_format": "gptq", "quant_method": "gptq"}, indent=2) + "\n"


# --- hostile sources ----------------------------------------------------------------------------------------


def _index(directory: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((directory / INDEX_NAME).read_text())
    return loaded


def test_index_placing_a_tensor_in_a_shard_that_lacks_it_is_refused(checkpoint_dir: Path) -> None:
    index = _index(checkpoint_dir)
    weight_map = index["weight_map"]
    assert isinstance(weight_map, dict)
    weight_map["model.norm.weight"] = "model-00001-of-00003.safetensors"
    (checkpoint_dir / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"holds tensor 'model.norm.weight', which .* places in shard"):
        open_checkpoint(checkpoint_dir)


def test_index_naming_a_tensor_no_shard_holds_is_refused(checkpoint_dir: Path) -> None:
    index = _index(checkpoint_dir)
    weight_map = index["weight_map"]
    assert isinstance(weight_map, dict)
    weight_map["model.layers.9.mlp.up_proj.weight"] = "model-00002-of-00003.safetensors"
    (checkpoint_dir / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"places tensor 'model.layers.9.mlp.up_proj.weight' .* does not hold"):
        open_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..",
                                   "a" * 256, "é" * 128])  # past NAME_MAX (255 bytes): an OSError, a 500, before
def test_index_shard_names_that_are_not_plain_file_names_are_refused(checkpoint_dir: Path, shard: str) -> None:
    index = _index(checkpoint_dir)
    weight_map = index["weight_map"]
    assert isinstance(weight_map, dict)
    weight_map["model.norm.weight"] = shard
    (checkpoint_dir / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a plain file name"):
        open_checkpoint(checkpoint_dir)


def test_truncated_shard_is_refused(checkpoint_dir: Path) -> None:
    shard = checkpoint_dir / "model-00002-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 100)
    with pytest.raises(CheckpointError, match=r"shard 'model-00002-of-00003.safetensors': .* data area holds"):
        open_checkpoint(checkpoint_dir)


def test_shard_truncated_after_it_was_opened_is_refused_when_read(checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    last = checkpoint.tensors[-1]
    os.truncate(checkpoint_dir / last.shard, last.offset + 10)
    with pytest.raises(CheckpointError, match="it was truncated"):
        read_tensor(checkpoint.directory, last)


def test_shard_header_with_offsets_past_its_data_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "src"
    directory.mkdir()
    write_safetensors(directory / "model.safetensors", {"a.weight": np.zeros((8, 8), np.float32)})
    raw = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(raw.replace(b"[0,256]", b"[0,999]"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        open_checkpoint(directory)


def test_symlinked_shard_leading_out_of_the_root_is_refused(tmp_path: Path, checkpoint_dir: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    shard = checkpoint_dir / "model-00003-of-00003.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the data root"):
        open_checkpoint(checkpoint_dir)
    assert open_checkpoint(checkpoint_dir, root=tmp_path).tensors  # inside a wider root it is fine


def test_options_a_format_cannot_hold_are_refused_before_any_work(checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    with pytest.raises(InvalidSpec, match="group_size=128: GGUF Q4_0 holds int4 group-32 symmetric"):
        plan_checkpoint(checkpoint, CheckpointOptions(output="gguf"))
    with pytest.raises(InvalidSpec, match="selects no tensor"):
        plan_checkpoint(checkpoint, CheckpointOptions(include=("nothing.*",)))


def test_hostile_include_and_exclude_globs_cost_seconds_at_most_not_minutes(checkpoint_dir: Path) -> None:
    # fnmatch translates a run of unclosed '[' in time quadratic in its length: 50,000 of them in a job's
    # include held a pool worker for 50 s (issue 17's globs, quant_core/globs.py, are linear)
    checkpoint = open_checkpoint(checkpoint_dir)
    started = time.monotonic()
    with pytest.raises(InvalidSpec, match="selects no tensor"):
        plan_checkpoint(checkpoint, CheckpointOptions(include=("[" * 100_000,)))
    plans = plan_checkpoint(checkpoint, CheckpointOptions(exclude=("[" * 100_000, "*norm*", "*embed*", "*lm_head*")))
    assert time.monotonic() - started < 10  # a generous bound: only catches the quadratic cost
    assert next(plan.reason for plan in plans if "norm" in plan.tensor.name) == (
        "name matches the exclude pattern '*norm*'")
    assert sum(plan.quantized for plan in plans) == 2 * QUANTIZED_PER_LAYER


def _release_reader(fifo: Path) -> None:
    """Give a reader blocked on `fifo` its end of file (nothing, if no one reads it)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("name", [INDEX_NAME, "config.json"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_index_or_config_that_is_not_a_regular_file_is_refused_at_once(checkpoint_dir: Path, name: str,
                                                                         kind: str) -> None:
    # a FIFO's read waited for ever (the pool worker held until the time limit, then 504), a directory was a 500,
    # and a config.json that was either was left out of the result without a word
    path = checkpoint_dir / name
    path.unlink()
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    release = threading.Timer(10, _release_reader, [path])  # ends a read that would wait for ever
    release.start()
    started = time.monotonic()
    try:
        with pytest.raises(CheckpointError, match=f"^{name} is not a regular file$"):
            open_checkpoint(checkpoint_dir)
    finally:
        release.cancel()
    assert time.monotonic() - started < 5


def test_valid_parts_names_only_the_parts_that_exist_whole(tmp_path: Path, checkpoint_dir: Path) -> None:
    checkpoint = open_checkpoint(checkpoint_dir)
    options = CheckpointOptions()
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    quantized = [plan.index for plan in plans if plan.quantized]
    first, second, third = (part_path(tmp_path / "parts", plans[index]) for index in quantized[:3])
    os.truncate(first, first.stat().st_size - 1)  # what a power loss may leave of an unsynced part
    second.write_bytes(b"")
    third.unlink()
    assert valid_parts(tmp_path / "parts", plans, quantized) == quantized[3:]


@pytest.mark.parametrize(("name", "excluded"), [
    ("model.layers.0.mlp.gate.weight", True),  # Qwen2/3-MoE, DeepSeek-V3
    ("model.layers.0.block_sparse_moe.gate.weight", True),  # Mixtral, Phi-3.5-MoE: vLLM's gate has no quant_config
    ("model.layers.0.mlp.shared_expert_gate.weight", True),  # Qwen2-MoE: a plain torch.nn.Linear in vLLM
    ("model.layers.0.mlp.router.weight", True),  # gpt-oss
    # GLM-4.5's and DeepSeek-V3's MTP layer (layer num_hidden_layers): a plain nn.Linear and a ParallelLMHead in
    # vLLM's glm4_moe_mtp.py / deepseek_mtp.py; its experts and attention are quantized as the other layers'
    ("model.layers.92.eh_proj.weight", True), ("model.layers.92.shared_head.head.weight", True),
    ("model.layers.92.mlp.experts.3.up_proj.weight", False),
    ("model.layers.0.mlp.gate_proj.weight", False), ("model.layers.0.mlp.experts.3.gate_proj.weight", False),
    ("model.layers.0.block_sparse_moe.experts.3.w1.weight", False), ("model.layers.0.mlp.shared_expert.up_proj.weight",
                                                                       False),
])
def test_the_default_exclude_keeps_every_familys_router_and_no_projection(name: str, excluded: bool) -> None:
    # Mixtral's router was quantized by default (only "*.mlp.gate.weight" was excluded): its GPTQ, AWQ or
    # compressed-tensors checkpoint held block_sparse_moe.gate as int4, which no engine loads
    assert any(glob_matches(name, pattern) for pattern in DEFAULT_EXCLUDE) is excluded


@pytest.mark.parametrize(("experts", "symmetric", "noted"), [
    (True, False, True), (True, True, False), (False, False, False)], ids=["moe-asymmetric", "moe-symmetric", "dense"])
def test_a_compressed_tensors_job_says_which_vllm_releases_refuse_its_asymmetric_experts(
        tmp_path: Path, experts: bool, symmetric: bool, noted: bool) -> None:
    # vLLM 0.11's and 0.19's compressed_tensors_moe.py assert weight_quant.symmetric for int4 MoE ("Only symmetric
    # quantization is supported for MoE"); 0.33's compressed_tensors_moe_wna16.py takes zero points.  The job
    # writes what was asked and its report says so, rather than leaving the refusal to the engine's load.
    write_llama_checkpoint(tmp_path / "src", shards=2, tensors=moe_tensors() if experts else None)
    checkpoint = open_checkpoint(tmp_path / "src")
    options = CheckpointOptions(output="compressed-tensors", symmetric=symmetric)
    plans = plan_checkpoint(checkpoint, options)
    report = quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    assert report == json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    if noted:
        assert len(report["engine_notes"]) == 1
        assert "0.11 and 0.19 refuse" in report["engine_notes"][0] and "symmetric=true" in report["engine_notes"][0]
    else:
        assert report["engine_notes"] == []


@pytest.mark.parametrize(("output", "symmetric", "noted"), [
    ("gptq", False, True), ("gptq", True, False), ("awq", False, False), ("compressed-tensors", False, False)])
def test_an_asymmetric_gptq_job_says_vllm_0_33_will_not_load_it(tmp_path: Path, output: str, symmetric: bool,
                                                                noted: bool) -> None:
    # vLLM 0.33's AutoGPTQConfig (auto_gptq.py) holds only (4, True) and (8, True) in its TYPE_MAP and raises
    # "Unsupported quantization config: bits=4, sym=False"; 0.11 and 0.19 fall back to their GPTQ kernels
    write_llama_checkpoint(tmp_path / "src", shards=1)
    checkpoint = open_checkpoint(tmp_path / "src")
    options = CheckpointOptions(output=output, symmetric=symmetric)  # type: ignore[arg-type]
    notes = engine_notes(options, plan_checkpoint(checkpoint, options), checkpoint.config)
    said = [note for note in notes if note.startswith(ASYMMETRIC_GPTQ_NOTE)]
    assert len(said) == (1 if noted else 0)
    if noted:
        assert "Unsupported quantization config: bits=4, sym=False" in said[0] and "symmetric=true" in said[0]
