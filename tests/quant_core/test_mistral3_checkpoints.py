"""Mistral 3 checkpoints: a small random one written by transformers itself, planned from its headers and quantized
by a job that passes the Pixtral tower and projector through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import parameter_count
from quant_core.tensorio import read_safetensors, write_safetensors
from quant_core.tensorio.checkpoint_headers import HeaderTensor, read_checkpoint_headers
from tests.quant_core.meta_models import (
    fp32_bytes_by_role,
    output_tensors,
    planned_job,
    saved_by_transformers,
    stored_bytes_by_role,
    tower_bytes_by_stage,
    vision_rows_are_on_no_layer,
)
from tests.quant_core.tensorio.gptq_loader_rules import vllm_quantizes

# Mistral Small 3's layout at a tiny size: a vision tower of more layers (5) than the language model (3)
TINY_MISTRAL3: dict[str, Any] = {
    "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "spatial_merge_size": 2,
    "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
    "text_config": {"model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 128,
                    "sliding_window": None, "tie_word_embeddings": False},
    "vision_config": {"model_type": "pixtral", "hidden_size": 32, "num_hidden_layers": 5, "num_attention_heads": 4,
                      "intermediate_size": 64, "image_size": 56, "patch_size": 14, "head_dim": 8},
}
TOWER_PREFIXES = ("vision_tower.", "multi_modal_projector.")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # untied as the published checkpoints are (transformers 5's Mistral3Config would tie by its top-level default)
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-mistral3"), "Mistral3Config",
                                 "Mistral3ForConditionalGeneration", TINY_MISTRAL3, tie_word_embeddings=False)


def test_a_mistral3_checkpoint_written_by_transformers_is_every_tensor_of_nibbles_inventory(
        tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config(TINY_MISTRAL3)
    headers = read_checkpoint_headers(tiny_checkpoint)
    names = {tensor.name for tensor in headers}
    assert {"language_model.lm_head.weight", "vision_tower.transformer.layers.4.feed_forward.up_proj.weight",
            "multi_modal_projector.patch_merger.merging_layer.weight"} <= names
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.mtp_tensors == 0  # vision layers 3 and 4 are no decoder layers
    assert summary.bytes == 4 * parameter_count(spec).total  # fp32, every tensor counted once
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)
    assert vision_rows_are_on_no_layer(scheme)  # held whole on every pipeline stage, not on a decoder layer's stage


def test_a_mistral3_checkpoint_in_the_later_model_language_model_layout_plans_the_same(
        tmp_path: Path, tiny_checkpoint: Path) -> None:
    # transformers 4.52-4.57's names (model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*,
    # lm_head), which vLLM's mistral3.py hf_to_vllm_mapper maps to the published ones
    spec = model_from_hf_config(TINY_MISTRAL3)
    headers = read_checkpoint_headers(tiny_checkpoint)
    renames = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."))

    def later(name: str) -> str:
        for old, new in renames:
            if name.startswith(old):
                return new + name[len(old):]
        raise AssertionError(name)

    renamed = [HeaderTensor(later(tensor.name), tensor.dtype, tensor.shape, tensor.bytes) for tensor in headers]
    scheme, summary = checkpoint_scheme(spec, renamed, mtp_layers=0)
    assert summary.unknown == () and summary.mtp_tensors == 0
    assert scheme.checkpoint_rows == checkpoint_scheme(spec, headers, mtp_layers=0)[0].checkpoint_rows
    # and a job on it passes the tower through as on the published layout
    folder = tmp_path / "later"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    tensors = read_safetensors(tiny_checkpoint / "model.safetensors")
    write_safetensors(folder / "model.safetensors", {later(name): array for name, array in tensors.items()})
    plans = plan_checkpoint(open_checkpoint(folder), CheckpointOptions(group_size=32))
    quantized = [plan.tensor.name for plan in plans if plan.quantized]
    assert len(quantized) == 3 * 7 and all(name.startswith("model.language_model.layers.") for name in quantized)


def test_a_mistral3_checkpoints_vision_tower_sits_on_every_pipeline_stage(tiny_checkpoint: Path) -> None:
    # vLLM's mistral3.py builds the vision tower and projector with no pipeline-rank test: every stage holds them
    spec = model_from_hf_config(TINY_MISTRAL3)
    headers = read_checkpoint_headers(tiny_checkpoint)
    tower, added = tower_bytes_by_stage(spec, headers, TOWER_PREFIXES)
    assert tower == 4 * parameter_count(spec).by_role["vision"]
    assert added == [tower, tower]


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_a_mistral3_job_quantizes_the_language_model_and_passes_the_pixtral_tower_through(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # vLLM's mistral3.py builds the Pixtral tower and the projector with the checkpoint's quant_config, so the
    # passed-through modules must read as unquantized (compressed-tensors: no config group targets them; AWQ
    # modules_to_not_convert; GPTQ dynamic), as llm-compressor's Mistral 3 checkpoints ignore re:vision_tower.* and
    # re:multi_modal_projector.*
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    tower = {name: reason for name, reason in reasons.items() if name.startswith(TOWER_PREFIXES)}
    assert all(tower.values())  # every tensor of the tower passes through; its linear layers for this reason
    linear = [name for name in tower if name.endswith("_proj.weight") or ".linear_" in name]
    assert len(linear) == 5 * 7 + 2
    assert all(tower[name].startswith("Mistral 3's Pixtral vision tower and projector stay as stored")
               for name in linear)
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    # q/k/v/o and gate/up/down of each of the 3 language-model layers, and nothing else
    assert len(quantized) == 3 * 7 and all(name.startswith("language_model.model.layers.") for name in quantized)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    tower_modules = ["vision_tower.transformer.layers.0.attention.q_proj",
                     "vision_tower.transformer.layers.4.feed_forward.down_proj", "multi_modal_projector.linear_1"]
    if output == "compressed-tensors":  # its config groups target the quantized modules by name: no tower module
        targets = {target for group in config["config_groups"].values() for target in group["targets"]}
        assert len(targets) == 3 * 7 and not any(target.startswith(TOWER_PREFIXES) for target in targets)
    elif output == "gptq":  # vLLM's get_linear_quant_method, its fused qkv_proj and gate_up_proj included
        for module in ("vision_tower.transformer.layers.0.attention.qkv_proj",
                       "vision_tower.transformer.layers.4.feed_forward.gate_up_proj", "multi_modal_projector.linear_1",
                       "multi_modal_projector.linear_2"):
            assert not vllm_quantizes(config, module), module
        assert vllm_quantizes(config, "language_model.model.layers.2.self_attn.qkv_proj")
    else:  # awq_marlin.py: is_layer_skipped(prefix, modules_to_not_convert)
        assert set(tower_modules) <= set(config["modules_to_not_convert"])
    stored = output_tensors(tmp_path / "out")
    source = read_safetensors(tiny_checkpoint / "model.safetensors")
    for name in ("vision_tower.patch_conv.weight", "vision_tower.transformer.layers.1.attention.v_proj.weight",
                 "multi_modal_projector.linear_2.weight"):
        assert stored[name].tobytes() == source[name].tobytes()


def test_a_mistral3_job_refuses_a_gguf_output_it_cannot_write_for_llama_cpp(tiny_checkpoint: Path) -> None:
    # llama.cpp converts Mistral3ForConditionalGeneration's text as its mistral3 arch (conversion/mistral3.py,
    # Ministral3Model) and the Pixtral tower to a separate mmproj file (conversion/llava.py): nibble's GGUF writer
    # writes neither, so a GGUF output is refused before any work
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(tiny_checkpoint), CheckpointOptions(output="gguf", group_size=32,
                                                                            symmetric=True))
    assert refused.value.field == "output" and "Mistral3ForConditionalGeneration" in refused.value.detail
