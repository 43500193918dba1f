"""Qwen3.5-MoE (``qwen3_5_moe``: Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B, Qwen3.6-35B-A3B) planned as its checkpoints
hold it and vLLM's qwen3_5.py loads and caches it: Qwen3.5's hybrid language model (Gated DeltaNet and gated full
attention, test_qwen3_next.py) with a Qwen3-Next sparse block in every layer, beside Qwen3.5's vision tower.

The config under data/qwen3_5_moe/ is a published config.json (source in that folder's README.md).  Independent
count: transformers 5.23 builds Qwen3_5MoeForConditionalGeneration from it on the meta device (no memory).  No
published ``metadata.total_size`` of a Qwen3.5-MoE index was found (see the README); the count is transformers'.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_core.catalog import get_device, get_preset_info
from quant_core.checkpoint import quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_releases import mamba_cache_mode
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import hybrid_kv
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme
from quant_core.tensorio.checkpoint_headers import read_checkpoint_headers
from tests.checkpoints import write_llama_checkpoint
from tests.quant_core.meta_models import (
    fp32_bytes_by_role,
    output_tensors,
    planned_job,
    saved_by_transformers,
    stored_bytes_by_role,
)

CONFIG = Path(__file__).resolve().parent / "data" / "qwen3_5_moe" / "qwen3.6-35b-a3b.json"

# transformers 5.23's Qwen3_5MoeForConditionalGeneration for the config (built live below): 35,107,181,936
# parameters, 446,571,248 of them the vision tower and merger (the "35B" of the model's name; no exact published
# count was found)
TOTAL, VISION = 35_107_181_936, 446_571_248


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(CONFIG.read_text())
    return config


def built_by_transformers(config: dict[str, Any]) -> dict[str, int]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.AutoConfig.for_model(**{key: value for key, value in config.items()
                                                     if key != "architectures"})
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForImageTextToText.from_config(hf_config)
    assert type(model).__name__ == "Qwen3_5MoeForConditionalGeneration"
    return {name: parameter.numel() for name, parameter in model.named_parameters()}


def test_qwen3_5_moe_counts_what_transformers_builds_role_by_role() -> None:
    config = load()
    built = built_by_transformers(config)
    spec = model_from_hf_config(config)
    count = parameter_count(spec)
    assert sum(built.values()) == count.total == TOTAL
    assert sum(n for name, n in built.items() if name.startswith("model.visual.")) == count.by_role["vision"] == VISION
    assert sum(n for name, n in built.items() if ".mlp.experts." in name) == count.by_role["expert"]
    assert sum(n for name, n in built.items()  # the routers and shared-expert gates
               if name.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))) == count.by_role["router"]
    assert sum(n for name, n in built.items() if ".shared_expert." in name) == count.by_role["mlp"]
    assert built["model.language_model.embed_tokens.weight"] == count.by_role["embedding"] == 248320 * 2048
    # every layer's tensors by name, the routed experts as the checkpoints hold them: one gate_up_proj and one
    # down_proj per layer (listed per expert, [{e}])
    for layer in (0, 3):  # a Gated DeltaNet layer and a full-attention layer
        names = {row.name.replace("{i}", str(layer)).replace("[{e}]", "")
                 for row in inventory(spec) if layer in row.layers}
        assert {name for name in built if name.startswith(f"model.language_model.layers.{layer}.")} == names
    assert unread_config_keys(config) == ()
    active = count.total - count.by_role["vision"] - count.by_role["expert"] * (256 - 8) // 256
    print(f"Qwen3.6-35B-A3B: {count.total:,} parameters, {active:,} active per token (text)")
    experts = 40 * 256 * (2 * 512 * 2048 + 2048 * 512)  # 40 layers x 256 experts x (gate_up_proj + down_proj)
    assert count.by_role["expert"] == experts
    # "A3B": the text model's 2,448,355,968 parameters outside the routed experts and 8 of each layer's 256 experts
    assert active == TOTAL - VISION - experts + experts * 8 // 256 == 3_454_988_928


def test_every_layer_is_sparse_whatever_keys_transformers_does_not_read() -> None:
    # Qwen3_5MoeTextConfig has no intermediate_size, decoder_sparse_step or mlp_only_layers, and vLLM's qwen3_5.py
    # builds a Qwen3NextSparseMoeBlock in every qwen3_5_moe_text layer: a config holding them plans the same model
    config = load()
    spec = model_from_hf_config(config)
    assert spec.moe_layers == tuple(range(40)) and spec.dense_layers == ()
    assert (spec.num_shared_experts, spec.shared_expert_intermediate_size) == (1, 512)
    extra = {**config, "text_config": {**config["text_config"], "intermediate_size": 5120,
                                       "decoder_sparse_step": 2, "mlp_only_layers": [0, 1]}}
    assert model_from_hf_config(extra) == spec
    with pytest.raises(InvalidSpec) as caught:  # text_config keys are named where they are
        model_from_hf_config({**config, "text_config": {**config["text_config"], "attention_bias": True}})
    assert caught.value.field == "text_config.attention_bias"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": {**config["text_config"], "num_experts": "256"}})
    assert caught.value.field == "text_config.num_experts"


def test_the_hybrid_kv_cache_is_ten_attention_layers_and_float32_states() -> None:
    # 10 full-attention layers cache 2 kv heads x 256 x 2 (K and V) x 2 bytes per token each; each of the 30 Gated
    # DeltaNet layers holds a conv state (3 x 8,192 x 2 bytes) and a recurrent state at mamba_ssm_dtype float32
    # (32 x 128 x 128 x 4 bytes), vLLM's MambaStateShapeCalculator.gated_delta_net_state_shape
    spec = model_from_hf_config(load())
    hybrid = hybrid_kv(spec)
    assert (hybrid.full_layers, hybrid.linear_layers) == (10, 30)
    assert hybrid.attention_bytes_per_token == 2 * 2 * 256 * 2 == 2048
    assert hybrid.state_bytes == 3 * 8192 * 2 + 32 * 128 * 128 * 4 == 2_146_304
    # the block vLLM raises until one page (group of 10 layers) holds a state: ceil(2,146,304 / 20,480) tokens, to 16
    assert (hybrid.block_size(), hybrid.group_size, hybrid.full_groups, hybrid.linear_groups) == (1056, 10, 1, 3)
    # a sequence of 32,768 tokens: 32 attention blocks and one state block per linear group with prefix caching off
    # (vLLM 0.11 / 0.19's default for hybrid models), two in 'align' mode (0.33's default, PR #50991)
    assert hybrid.blocks_per_sequence(32_768) == 32 + 3
    assert hybrid_kv(spec, "bf16", 1, None, mamba_cache_mode("0.33")).blocks_per_sequence(32_768) == 32 + 2 * 3
    # at tensor parallel 4 each rank holds a quarter of the heads and states (gdn_linear_attn.py divides them)
    assert hybrid_kv(spec, "bf16", 4).state_bytes == 2_146_304 // 4


def test_qwen3_5_moe_is_planned_by_the_releases_that_have_it() -> None:
    spec = model_from_hf_config(load())
    h100 = Hardware(get_device("h100-80gb").planning_bytes, 1)
    result = plan(spec, h100, Workload(32_768, 4), PlanOptions(engine_version="0.19"))
    assert result.primary.fits and result.refusal is None
    assert result.primary.max_concurrent_sequences == int(result.primary.engine_max_concurrency or 0)
    refused = plan(spec, h100, Workload(32_768, 4), PlanOptions(engine_version="0.11")).refusal
    assert refused is not None and "Qwen3.5-MoE" in refused
    # gdn_linear_attn.py splits the 16 key heads over the ranks: 32 does not divide them
    assert VllmProfile("0.19").refusal(spec, 32, 1) is not None  # 16 heads (and DeltaNet key heads) over 32 ranks
    assert VllmProfile("0.19").refusal(spec, 8, 1) is None
    # qwen3_5.py builds the embedding on every pipeline stage (Qwen3_5Model.__init__, no get_pp_group() test) but the
    # final norm and lm_head on the last only: the second of two stages holds an embedding it never runs, and the
    # stages split the layers into whole 4-layer patterns (20 layers, 5 full-attention, each)
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(32_768, 4),
                  PlanOptions(pipeline_parallel=2, tensor_parallel=1))
    first, second = staged.primary.devices
    embedding = 248320 * 2048 * 2
    assert (first.unread_weights_bytes, second.unread_weights_bytes) == (0, embedding)
    assert second.weights_bytes - first.weights_bytes == embedding + 2048 * 2  # the lm_head and the final norm
    assert staged.primary.max_concurrent_sequences == int(staged.primary.engine_max_concurrency or 0)
    with pytest.raises(InvalidSpec) as caught:  # llama.cpp's qwen35moe files: not sized (see gguf_mix.GGUF_REFUSED)
        plan(spec, h100, Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format" and "qwen35moe" in str(caught.value)


def test_the_qwen3_6_preset_is_its_parsed_config_with_one_mtp_layer() -> None:
    info = get_preset_info("qwen3.6-35b-a3b")
    assert info.spec == model_from_hf_config(load(), name="qwen3.6-35b-a3b")
    assert info.mtp_layers == 1 and parameter_count(info.spec).total == TOTAL


TINY: dict[str, Any] = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
    "text_config": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
                    "head_dim": 32, "vocab_size": 96, "max_position_embeddings": 256, "linear_num_key_heads": 2,
                    "linear_num_value_heads": 4, "linear_key_head_dim": 32, "linear_value_head_dim": 32,
                    "linear_conv_kernel_dim": 4, "num_experts": 4, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
                    "layer_types": ["linear_attention"] * 3 + ["full_attention"], "mamba_ssm_dtype": "float32",
                    "tie_word_embeddings": False},
    "vision_config": {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "out_hidden_size": 64,
                      "num_position_embeddings": 16, "patch_size": 4, "spatial_merge_size": 1},
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-qwen3_5_moe"), "Qwen3_5MoeConfig",
                                 "Qwen3_5MoeForConditionalGeneration", TINY)


def test_a_checkpoint_written_by_transformers_is_planned_from_its_headers(tiny_checkpoint: Path) -> None:
    # transformers 5.23 saves the routed experts per expert (conversion_mapping.py: qwen3_5_moe_text takes
    # qwen2_moe's converters, which it reverses on save); the published checkpoints hold them fused (below): the same
    # elements, and either is every tensor of nibble's inventory
    spec = model_from_hf_config(TINY)
    headers = read_checkpoint_headers(tiny_checkpoint)
    names = {tensor.name: tensor.shape for tensor in headers}
    assert names["model.language_model.layers.1.mlp.experts.3.gate_proj.weight"] == (32, 64)
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)


@pytest.mark.parametrize("output", ["compressed-tensors", "awq"])
def test_a_job_passes_routers_gates_tower_and_deltanet_state_tensors_through(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # what vLLM builds with the checkpoint's quant_config is quantized (the DeltaNet projections, q/k/v/o, the
    # experts, the shared expert); the routers and shared_expert_gate (Qwen3NextSparseMoeBlock builds them with
    # quant_config=None), conv1d, A_log, dt_bias, the norms and the tower pass through
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    layer = "model.language_model.layers.0"
    for name in ("mlp.gate.weight", "mlp.shared_expert_gate.weight", "linear_attn.conv1d.weight",
                 "linear_attn.A_log", "linear_attn.dt_bias", "linear_attn.norm.weight"):
        assert reasons[f"{layer}.{name}"], name
    assert reasons["model.visual.blocks.0.attn.qkv.weight"].startswith("Qwen3.5-MoE's vision tower")
    quantized = {name for name, reason in reasons.items() if not reason}
    assert {f"{layer}.linear_attn.in_proj_qkv.weight", f"{layer}.mlp.experts.3.up_proj.weight",
            f"{layer}.mlp.shared_expert.down_proj.weight",
            "model.language_model.layers.3.self_attn.q_proj.weight"} <= quantized
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    listed = config["ignore"] if output == "compressed-tensors" else config["modules_to_not_convert"]
    assert f"{layer}.mlp.gate" in listed and "model.visual.merger.linear_fc1" in listed
    source = output_tensors(tiny_checkpoint)
    stored = output_tensors(tmp_path / "out")
    for name in ("mlp.gate.weight", "mlp.shared_expert_gate.weight", "linear_attn.A_log", "linear_attn.dt_bias"):
        np.testing.assert_array_equal(stored[f"{layer}.{name}"], source[f"{layer}.{name}"])


def test_a_published_layout_checkpoint_passes_its_fused_experts_and_mtp_layer_through(
        tmp_path: Path, tiny_checkpoint: Path) -> None:
    # as the published checkpoints hold them: per layer one mlp.experts.gate_up_proj [experts, 2 x width, hidden]
    # and one down_proj [experts, hidden, width] (vLLM's qwen3_5.py fused_expert_params_mapping, "qwen3.5 no need
    # to transpose"; llama.cpp's conversion/qwen.py reads the same shapes), and the mtp.* layer vLLM skips
    spec = model_from_hf_config(TINY)
    tensors = {name: value for name, value in output_tensors(tiny_checkpoint).items() if ".experts." not in name}
    for i in range(4):
        experts = f"model.language_model.layers.{i}.mlp.experts"
        source = output_tensors(tiny_checkpoint)
        tensors[f"{experts}.gate_up_proj"] = np.stack([np.concatenate(
            [source[f"{experts}.{e}.gate_proj.weight"], source[f"{experts}.{e}.up_proj.weight"]]) for e in range(4)])
        tensors[f"{experts}.down_proj"] = np.stack([source[f"{experts}.{e}.down_proj.weight"] for e in range(4)])
    tensors["mtp.fc.weight"] = tensors["lm_head.weight"][:64, :].repeat(2, axis=1)
    tensors["mtp.layers.0.self_attn.q_proj.weight"] = tensors["model.language_model.layers.3.self_attn.q_proj.weight"]
    write_llama_checkpoint(tmp_path / "src", shards=2, tensors=tensors)
    (tmp_path / "src" / "config.json").write_text(json.dumps(TINY))
    headers = read_checkpoint_headers(tmp_path / "src")
    _scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=1)
    assert summary.unknown == () and summary.mtp_tensors == 2
    assert summary.bytes == 4 * parameter_count(spec).total  # f32, as transformers saved the tiny model
    checkpoint, options, plans, reasons = planned_job(tmp_path / "src", "compressed-tensors")
    assert reasons["model.language_model.layers.0.mlp.experts.gate_up_proj"].startswith("routed experts fused")
    assert "multi-token-prediction" in reasons["mtp.layers.0.self_attn.q_proj.weight"]
    assert "multi-token-prediction" in reasons["mtp.fc.weight"]
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    ignore = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["ignore"]
    assert "model.language_model.layers.0.mlp.experts" in ignore and "mtp.fc" in ignore
