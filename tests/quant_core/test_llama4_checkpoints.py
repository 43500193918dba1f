"""Llama 4 checkpoints: a small random one written by transformers itself, planned from its headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.hf_config import model_from_hf_config
from quant_core.inventory import parameter_count
from quant_core.tensorio.checkpoint_headers import HeaderTensor, read_checkpoint_headers

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
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-llama4")
    torch.manual_seed(0)
    config = transformers.Llama4Config(**{key: value for key, value in TINY_LLAMA4.items() if key != "model_type"})
    transformers.Llama4ForConditionalGeneration(config).save_pretrained(folder)
    (folder / "nibble-config.json").write_text(json.dumps(TINY_LLAMA4))
    return folder


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
    roles: dict[str, int] = {}
    for entry, size in scheme.checkpoint_rows:
        roles[entry.role] = roles.get(entry.role, 0) + size * entry.count
        if entry.role == "vision":
            assert entry.layers == ()  # held whole on every pipeline stage, not on a decoder layer's stage
    counts = parameter_count(spec).by_role
    assert roles == {role: 4 * size for role, size in counts.items() if size}


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
