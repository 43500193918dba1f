"""Qwen3-VL dense (``qwen3_vl``): a Qwen3 language model beside a vision transformer, merger and deepstack mergers.

Sources: the configs in data/qwen3_vl/ (see its README); transformers 5.23's ``Qwen3VLForConditionalGeneration``
built on the meta device for them; vLLM's vllm/model_executor/models/qwen3_vl.py (``Qwen3_VisionTransformer``:
Conv3d patch embedding and nn.Embedding positions whole on every rank, the blocks' and mergers' linear layers split).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.errors import InvalidSpec
from quant_core.formats import int4
from quant_core.hf_config import architecture_family, model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan
from quant_core.specs import ModelSpec, Qwen3VisionTower
from quant_core.tensorio import read_safetensors
from quant_core.tensorio.checkpoint_headers import read_checkpoint_headers
from tests.quant_core.meta_models import (
    fp32_bytes_by_role,
    output_tensors,
    planned_job,
    saved_by_transformers,
    stored_bytes_by_role,
    vision_rows_are_on_no_layer,
)

DATA = Path(__file__).parent / "data" / "qwen3_vl"


def _config(size: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"qwen3-vl-{size}-instruct.json").read_text())
    return loaded


# transformers 5.23, Qwen3VLForConditionalGeneration(config) on the meta device: all parameters (the tied lm_head
# once) and those under model.visual
META_TOTALS = {"2b": (2_127_532_032, 406_957_056), "4b": (4_437_815_808, 415_347_712)}


def test_qwen3_vl_is_a_qwen3_language_model_beside_its_vision_tower() -> None:
    spec = model_from_hf_config(_config("2b"))
    assert spec.model_type == "qwen3_vl" and spec.layout == "llama" and spec.qk_norm
    assert (spec.hidden_size, spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == \
        (2048, 28, 16, 8, 128)
    assert spec.tie_word_embeddings and not spec.attention_qkv_bias and spec.sliding_layers == ()
    assert spec.vision == Qwen3VisionTower(hidden_size=1024, num_layers=24, num_attention_heads=16,
                                           intermediate_size=4096, patch_size=16, temporal_patch_size=2,
                                           spatial_merge_size=2, num_position_embeddings=2304, deepstack_mergers=3,
                                           projection_size=2048, num_channels=3)
    assert unread_config_keys(_config("2b")) == ()
    assert architecture_family({**_config("2b"), "model_type": "qwen3_vl_custom"}) == "qwen3_vl"
    rows = {entry.name: entry for entry in inventory(spec)}
    assert rows["model.language_model.layers.{i}.self_attn.q_norm.weight"].shape == (128,)
    assert "lm_head.weight" not in rows  # tied
    assert rows["model.visual.deepstack_merger_list.{v}.norm.weight"].shape == (4096,)  # after the 2 x 2 shuffle
    assert rows["model.visual.deepstack_merger_list.{v}.linear_fc1.weight"].per_layer == 3
    assert rows["model.visual.pos_embed.weight"].shape == (2304, 1024)


@pytest.mark.parametrize("size", ["2b", "4b"])
def test_the_counts_are_what_transformers_builds_for_the_configs(size: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config(size)
    keys = {key: value for key, value in config.items() if key not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**keys))
    parameters = dict(model.named_parameters())
    total = sum(parameter.numel() for parameter in parameters.values())
    visual = sum(parameter.numel() for name, parameter in parameters.items() if name.startswith("model.visual."))
    assert (total, visual) == META_TOTALS[size]
    counted = parameter_count(model_from_hf_config(config))
    assert (counted.total, counted.by_role["vision"]) == META_TOTALS[size]
    norms = sum(parameter.numel() for name, parameter in parameters.items()
                if name.startswith("model.language_model.") and "norm" in name)
    assert norms == counted.by_role["norm"]  # q/k norms of head_dim beside the layers' and the final norm


def test_a_config_whose_two_ties_disagree_or_whose_tower_does_not_fit_is_refused() -> None:
    config = _config("2b")
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "tie_word_embeddings": False})
    assert caught.value.field == "tie_word_embeddings"
    untied_text = {key: value for key, value in config["text_config"].items() if key != "tie_word_embeddings"}
    assert not model_from_hf_config({**config, "text_config": untied_text,
                                     "tie_word_embeddings": False}).tie_word_embeddings
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "vision_config": {**config["vision_config"], "out_hidden_size": 4096}})
    assert caught.value.field == "vision_config.out_hidden_size"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "vision_config": {**config["vision_config"],
                                                          "deepstack_visual_indexes": [5, 30]}})
    assert caught.value.field == "vision_config.deepstack_visual_indexes"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": {**config["text_config"], "head_dim": 0}})
    assert caught.value.field == "text_config.head_dim"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**config, "text_config": "qwen3"})
    assert caught.value.field == "text_config"


def test_a_spec_with_the_tower_survives_its_json() -> None:
    spec = model_from_hf_config(_config("4b"))
    as_json = json.loads(json.dumps(spec.to_dict(), default=dataclasses.asdict))
    assert ModelSpec.from_dict(as_json) == spec


def test_kv_and_tensor_parallel_degrees() -> None:
    spec = model_from_hf_config(_config("2b"))
    # 8 KV heads x 128 x (key + value) per layer, bf16: interleaved M-RoPE changes no size
    assert kv_bytes_per_token(spec, "bf16") == 28 * 8 * 128 * 2 * 2
    # the tower's 16 heads, 4,096-wide MLP and 1,024 width divide 16 ranks; a 4,304-wide MLP (the 8B's) too
    assert engine_tensor_parallel_sizes(spec) == (1, 2, 4, 8, 16)
    odd = model_from_hf_config({**_config("2b"), "vision_config": {**_config("2b")["vision_config"],
                                                                   "intermediate_size": 4100}})
    assert engine_tensor_parallel_sizes(odd) == (1, 2, 4)


def test_the_tower_stays_16_bit_is_split_as_qwen3_vl_py_splits_it_and_sits_on_every_stage() -> None:
    with_tower = model_from_hf_config(_config("2b"))
    text_only = ModelSpec.from_dict({**with_tower.to_dict(), "vision": None})

    def weights(spec: ModelSpec, tp: int = 1, pp: int = 1) -> list[int]:
        options = PlanOptions(weight_format=int4(128), tensor_parallel=tp, pipeline_parallel=pp)
        return [device.weights_bytes for device in
                plan(spec, Hardware(80 << 30, tp * pp), Workload(4096, 1), options).primary.devices]

    tower = 406_957_056 * 2
    assert weights(with_tower)[0] - weights(text_only)[0] == tower
    # whole on both ranks: the patch embedding and its bias, the positions, the blocks' LayerNorms, proj's and
    # linear_fc2's biases, and each merger's LayerNorm and linear_fc2 bias (4 mergers, the deepstack ones over 4,096)
    replicated = (1024 * 3 * 2 * 16 * 16 + 1024 + 2304 * 1024 + 24 * (4 * 1024 + 1024 + 1024)
                  + (2 * 1024 + 2048) + 3 * (2 * 4096 + 2048))
    assert [w - t for w, t in zip(weights(with_tower, tp=2), weights(text_only, tp=2), strict=True)] == \
        [replicated * 2 + (tower - replicated * 2) // 2] * 2
    assert [w - t for w, t in zip(weights(with_tower, pp=2), weights(text_only, pp=2), strict=True)] == [tower] * 2
    warnings = plan(with_tower, Hardware(80 << 30, 1), Workload(4096, 1), PlanOptions()).warnings
    assert any(warning.startswith("Qwen3-VL's vision tower is counted in the weights at 16 bits")
               for warning in warnings)


TINY_QWEN3_VL: dict[str, Any] = {
    "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl", "tie_word_embeddings": False,
    "text_config": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "max_position_embeddings": 4096,
                    "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False},
    "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 64,
                      "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 2]},
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-qwen3_vl"), "Qwen3VLConfig",
                                 "Qwen3VLForConditionalGeneration", TINY_QWEN3_VL)


def test_a_checkpoint_written_by_transformers_is_every_tensor_of_nibbles_inventory(tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config(TINY_QWEN3_VL)
    headers = read_checkpoint_headers(tiny_checkpoint)
    expected: dict[str, tuple[int, ...]] = {}
    for entry in inventory(spec):
        for layer in entry.layers or (None,):
            for copy in range(entry.per_layer if "{v}" in entry.name else 1):
                expected[entry.name.replace("{i}", str(layer)).replace("{v}", str(copy))] = entry.shape
    assert {tensor.name: tensor.shape for tensor in headers} == expected
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)
    assert vision_rows_are_on_no_layer(scheme)


@pytest.mark.parametrize("output", ["compressed-tensors", "awq"])
def test_a_job_quantizes_the_language_model_and_passes_the_vision_tower_through(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    assert reasons["model.visual.blocks.0.attn.qkv.weight"].startswith("Qwen3-VL's vision tower and mergers")
    assert reasons["model.visual.deepstack_merger_list.1.linear_fc1.weight"].startswith("Qwen3-VL's vision tower")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert len(quantized) == 2 * 7 and all(name.startswith("model.language_model.layers.") for name in quantized)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    listed = config["ignore"] if output == "compressed-tensors" else config["modules_to_not_convert"]
    assert {"model.visual.blocks.2.attn.qkv", "model.visual.merger.linear_fc2",
            "model.visual.deepstack_merger_list.0.linear_fc1"} <= set(listed)
    stored = output_tensors(tmp_path / "out")
    source = read_safetensors(tiny_checkpoint / "model.safetensors")
    assert stored["model.visual.pos_embed.weight"].tobytes() == source["model.visual.pos_embed.weight"].tobytes()


@pytest.mark.parametrize(("size", "total"), [("2b", 2_127_532_032), ("4b", 4_437_815_808),
                                             ("30b-a3b", 31_070_754_032)])
def test_the_catalog_presets_are_the_configs_parsed(size: str, total: int) -> None:
    from quant_core.catalog import get_preset

    preset_id = f"qwen3-vl-{size}-instruct"
    assert get_preset(preset_id) == model_from_hf_config(_config(size), name=preset_id)
    assert parameter_count(get_preset(preset_id)).total == total


def test_a_job_refuses_a_gguf_output_it_cannot_write_for_llama_cpp(tiny_checkpoint: Path) -> None:
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(tiny_checkpoint), CheckpointOptions(output="gguf", group_size=32,
                                                                            symmetric=True))
    assert refused.value.field == "output" and "Qwen3VLForConditionalGeneration" in refused.value.detail


# --- Qwen3-VL-MoE (qwen3_vl_moe) ------------------------------------------------------------------------------------


def test_qwen3_vl_30b_a3b_is_what_transformers_builds_for_its_config() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config("30b-a3b")
    keys = {key: value for key, value in config.items() if key not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = transformers.Qwen3VLMoeForConditionalGeneration(transformers.Qwen3VLMoeConfig(**keys))
    by_role: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        role = ("vision" if name.startswith("model.visual.") else "expert" if ".mlp.experts." in name
                else "router" if ".mlp.gate." in name else "rest")
        by_role[role] = by_role.get(role, 0) + parameter.numel()
    counted = parameter_count(model_from_hf_config(config))
    # 31,070,754,032 in all: the model card's "31.1B params"; 128 experts of 768 in each of the 48 layers, a
    # [128, 2048] router, the vision tower of the dense 8B's shape
    assert sum(by_role.values()) == counted.total == 31_070_754_032
    assert by_role["expert"] == counted.by_role["expert"] == 48 * 128 * 3 * 768 * 2048
    assert by_role["router"] == counted.by_role["router"] == 48 * 128 * 2048
    assert by_role["vision"] == counted.by_role["vision"] == 538_631_408
    assert counted.active_per_token == 3_353_032_704  # "A3B": 8 of 128 experts, the tower left out
    assert unread_config_keys(_config("30b-a3b")) == ()


def test_qwen3_vl_moe_lists_its_experts_fused_as_its_checkpoints_hold_them() -> None:
    spec = model_from_hf_config(_config("30b-a3b"))
    assert spec.model_type == "qwen3_vl_moe" and spec.num_experts == 128 and spec.experts_per_token == 8
    rows = {entry.name: entry for entry in inventory(spec)}
    gate_up = rows["model.language_model.layers.{i}.mlp.experts.gate_up_proj[{e}]"]
    assert gate_up.shape == (2 * 768, 2048) and gate_up.per_layer == 128 and len(gate_up.layers) == 48
    assert rows["model.language_model.layers.{i}.mlp.experts.down_proj[{e}]"].shape == (2048, 768)
    assert rows["model.language_model.layers.{i}.mlp.gate.weight"].role == "router"
    assert not any(".experts.{e}." in name for name in rows)
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**_config("30b-a3b"), "text_config": {**_config("30b-a3b")["text_config"],
                                                                    "num_experts": 0}})
    assert caught.value.field == "text_config.num_experts"


TINY_QWEN3_VL_MOE: dict[str, Any] = {
    **TINY_QWEN3_VL, "architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe",
    "text_config": {**TINY_QWEN3_VL["text_config"], "num_experts": 4, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32, "decoder_sparse_step": 1, "mlp_only_layers": []},
}


@pytest.fixture(scope="module")
def tiny_moe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-qwen3_vl_moe"), "Qwen3VLMoeConfig",
                                 "Qwen3VLMoeForConditionalGeneration", TINY_QWEN3_VL_MOE)


def test_a_moe_checkpoint_written_by_transformers_is_planned_from_its_headers(tiny_moe_checkpoint: Path) -> None:
    spec = model_from_hf_config(TINY_QWEN3_VL_MOE)
    headers = read_checkpoint_headers(tiny_moe_checkpoint)
    names = {tensor.name: tensor.shape for tensor in headers}
    # one 3-D tensor per layer and projection (transformers 5 writes them [E, out, in]; the published checkpoints
    # [E, in, out]: the same elements, which is what a plan counts)
    assert names["model.language_model.layers.1.mlp.experts.gate_up_proj"] in ((4, 64, 64),)
    assert names["model.language_model.layers.1.mlp.experts.down_proj"] in ((4, 64, 32), (4, 32, 64))
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)


@pytest.mark.parametrize("output", ["compressed-tensors", "awq"])
def test_a_moe_job_passes_the_fused_experts_router_and_tower_through(
        tmp_path: Path, tiny_moe_checkpoint: Path, output: str) -> None:
    checkpoint, options, plans, reasons = planned_job(tiny_moe_checkpoint, output)
    experts = [f"model.language_model.layers.{layer}.mlp.experts" for layer in (0, 1)]
    assert reasons[f"{experts[0]}.gate_up_proj"].startswith("routed experts fused as one [experts, in, out] tensor")
    assert reasons["model.language_model.layers.0.mlp.gate.weight"].startswith("name matches the exclude pattern")
    assert reasons["model.visual.blocks.0.attn.qkv.weight"].startswith("Qwen3-VL's vision tower")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert len(quantized) == 2 * 4 and all(".self_attn." in name for name in quantized)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    listed = config["ignore"] if output == "compressed-tensors" else config["modules_to_not_convert"]
    assert set(experts) <= set(listed) and "model.visual.merger.linear_fc1" in listed


def test_vllms_deepstack_input_buffers_are_counted_on_every_device() -> None:
    # vllm/model_executor/models/qwen3_vl.py, Qwen3VLForConditionalGeneration.__init__: one
    # torch.zeros(max_num_batched_tokens, text_config.hidden_size) per deepstack_visual_indexes entry, at the
    # model's dtype: 3 x 8,192 x 2,048 x 2 bytes = 100,663,296 for the 2B on an H100 (8,192 batched tokens)
    with_tower = model_from_hf_config(_config("2b"))
    no_deepstack = ModelSpec.from_dict({**with_tower.to_dict(),
                                        "vision": {**dataclasses.asdict(with_tower.vision), "deepstack_mergers": 0}})
    h100 = Hardware(80 << 30, 2)  # two devices: tensor parallel 2, or two pipeline stages

    def activations(spec: ModelSpec, pp: int = 1) -> list[int]:
        result = plan(spec, h100, Workload(4096, 1), PlanOptions(pipeline_parallel=pp))
        return [device.activation_bytes for device in result.primary.devices]

    buffers = 3 * 8192 * 2048 * 2
    # beside them, vLLM's profiling of the tower (vllm.qwen_encoder_profile) holds each deepstack merger's rows for
    # its dummy image: 3 x 16,384 rows x 2,048 x 2 bytes, whether the encoding or the text pass is the peak
    features = 3 * 16384 * 2048 * 2
    assert [a - b for a, b in zip(activations(with_tower), activations(no_deepstack), strict=True)] == \
        [buffers + features] * 2
    assert [a - b for a, b in zip(activations(with_tower, pp=2), activations(no_deepstack, pp=2), strict=True)] == \
        [buffers + features] * 2
    result = plan(with_tower, Hardware(80 << 30, 1), Workload(4096, 1), PlanOptions())
    assert "deepstack input buffers" in result.activation.basis
