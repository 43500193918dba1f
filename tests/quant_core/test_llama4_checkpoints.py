"""Llama 4 checkpoints: a small random one written by transformers itself, planned from its headers."""

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
from quant_core.tensorio import read_safetensors
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
from tests.quant_core.tensorio.gptq_loader_rules import vllm_quantizes_experts

# Maverick's layout at a tiny size: MoE on the odd layers (interleave_moe_layer_step 2), dense between, a vision
# tower of more layers (6) than the language model (4)
TINY_LLAMA4: dict[str, Any] = {
    "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "tie_word_embeddings": False,
    "text_config": {"model_type": "llama4_text", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 32, "intermediate_size_mlp": 96,
                    "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
                    "vocab_size": 128, "tie_word_embeddings": False},
    "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 32, "num_hidden_layers": 6,
                      "num_attention_heads": 4, "intermediate_size": 48, "image_size": 28, "patch_size": 14,
                      "projector_input_dim": 64, "projector_output_dim": 64, "vision_output_dim": 64},
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-llama4"), "Llama4Config",
                                 "Llama4ForConditionalGeneration", TINY_LLAMA4)


def test_a_llama4_checkpoint_written_by_transformers_is_every_tensor_of_nibbles_inventory(
        tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config(TINY_LLAMA4)
    headers = read_checkpoint_headers(tiny_checkpoint)
    names = {tensor.name: tensor for tensor in headers}
    # the fused experts as the published checkpoints hold them: [E, hidden, 2 x width] and [E, width, hidden]
    assert names["language_model.model.layers.1.feed_forward.experts.gate_up_proj"].shape == (4, 64, 64)
    assert names["language_model.model.layers.1.feed_forward.experts.down_proj"].shape == (4, 32, 64)
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.mtp_tensors == 0  # vision layers 4 and 5 are no decoder layers
    assert summary.bytes == 4 * parameter_count(spec).total  # fp32, every tensor counted once
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)
    assert vision_rows_are_on_no_layer(scheme)  # held whole on every pipeline stage, not on a decoder layer's stage


def test_a_llama4_checkpoint_with_one_tensor_per_expert_plans_them_as_experts(tiny_checkpoint: Path) -> None:
    # llm-compressor's Llama 4 checkpoints (RedHatAI's FP8/W4A16 ones, for_llm_compressor) hold each expert's
    # gate_proj/up_proj/down_proj [out, in] apart; vLLM's llama4.py loads them too (load_moe_expert_weights,
    # fused=False): the same experts, planned as experts (split over TP ranks), not as unknown tensors
    spec = model_from_hf_config(TINY_LLAMA4)
    split: list[HeaderTensor] = []
    for tensor in read_checkpoint_headers(tiny_checkpoint):
        prefix, _, kind = tensor.name.rpartition("experts.")
        if kind not in ("gate_up_proj", "down_proj"):
            split.append(tensor)
            continue
        experts, rows, columns = tensor.shape
        parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
        out_features = columns // len(parts)
        for expert in range(experts):
            for part in parts:
                split.append(HeaderTensor(f"{prefix}experts.{expert}.{part}.weight", tensor.dtype,
                                          (out_features, rows), out_features * rows * 4))
    scheme, summary = checkpoint_scheme(spec, split, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total
    experts = sum(size * entry.count for entry, size in scheme.checkpoint_rows if entry.role == "expert")
    assert experts == 4 * parameter_count(spec).by_role["expert"]


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_a_llama4_job_quantizes_what_vllm_quantizes_and_marks_the_fused_experts_unquantized(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # vllm/model_executor/models/mllama4.py builds Llama4VisionModel and Llama4MultiModalProjector with
    # quant_config None, and its llama4.py Llama4MoE's router with quant_config=None: all three stay as stored.
    # The routed experts are fused [E, hidden, 2 x width] / [E, width, hidden] tensors nibble does not quantize:
    # kept as stored, their FusedMoE module ("...feed_forward.experts") named unquantized for vLLM
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    experts = [f"language_model.model.layers.{layer}.feed_forward.experts" for layer in (1, 3)]
    for module in experts:
        assert reasons[f"{module}.gate_up_proj"].startswith("routed experts fused as one [experts, in, out] tensor")
        assert reasons[f"{module}.down_proj"].startswith("routed experts fused")
    assert reasons["vision_model.model.layers.5.self_attn.q_proj.weight"].startswith("Llama 4's vision tower")
    assert reasons["multi_modal_projector.linear_1.weight"].startswith("Llama 4's vision tower and projector")
    assert reasons["language_model.model.layers.1.feed_forward.router.weight"] == \
        "name matches the exclude pattern '*router*'"
    quantized = sorted(name.removeprefix("language_model.model.layers.") for name, reason in reasons.items()
                       if not reason)
    # attention in every layer, the dense MLP of layers 0 and 2, the shared expert of the MoE layers 1 and 3
    assert len(quantized) == 4 * 4 + 2 * 3 + 2 * 3
    assert all(".self_attn." in name or ".feed_forward.gate_proj" in name or ".feed_forward.up_proj" in name
               or ".feed_forward.down_proj" in name or ".shared_expert." in name for name in quantized)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    if output == "compressed-tensors":
        # CompressedTensorsMoEMethod.get_moe_method: should_ignore_layer; get_scheme refuses any other linear layer
        # neither targeted nor ignored, so the tower's and the routers' are listed too
        assert set(experts) <= set(config["ignore"])
        assert {"vision_model.model.layers.0.mlp.fc1", "language_model.model.layers.1.feed_forward.router"} \
            <= set(config["ignore"])
    elif output == "gptq":  # gptq_marlin.py get_moe_quant_method: a negative dynamic rule
        assert not any(vllm_quantizes_experts(config, module) for module in experts)
    else:  # awq_marlin.py: is_layer_skipped(prefix, modules_to_not_convert)
        assert set(experts) <= set(config["modules_to_not_convert"])
        assert "vision_model.model.layers.0.mlp.fc1" in config["modules_to_not_convert"]
    stored = output_tensors(tmp_path / "out")
    source = read_safetensors(tiny_checkpoint / "model.safetensors")
    for module in experts:  # byte for byte as the checkpoint held them, vLLM's fused loading path reads them
        assert stored[f"{module}.gate_up_proj"].tobytes() == source[f"{module}.gate_up_proj"].tobytes()
    assert stored["vision_model.model.layers.0.mlp.fc1.weight"].tobytes() == \
        source["vision_model.model.layers.0.mlp.fc1.weight"].tobytes()


def test_a_llama4_job_refuses_a_gguf_output_it_cannot_write_for_llama_cpp(tiny_checkpoint: Path) -> None:
    # nibble's GGUF writer follows convert_hf_to_gguf.py for the llama, Qwen2 and Qwen3 converters only: a Llama 4
    # file (llama.cpp's llama4 arch, the vision tower in a separate mmproj) is refused before any work
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(tiny_checkpoint), CheckpointOptions(output="gguf", group_size=32,
                                                                            symmetric=True))
    assert refused.value.field == "output" and "Llama4ForConditionalGeneration" in refused.value.detail


def test_a_llama4_checkpoints_vision_tower_sits_on_every_pipeline_stage(tiny_checkpoint: Path) -> None:
    # vLLM's mllama4.py builds the vision tower and projector with no pipeline-rank test: every stage holds them,
    # and the tower's 6 layers are no decoder layers (they would have put its layers 0-1 on stage 0 only)

    spec = model_from_hf_config(TINY_LLAMA4)
    headers = read_checkpoint_headers(tiny_checkpoint)
    tower, added = tower_bytes_by_stage(spec, headers, ("vision_model.", "multi_modal_projector."))
    assert tower == 4 * parameter_count(spec).by_role["vision"]
    assert added == [tower, tower]
