"""Qwen2.5-VL (``qwen2_5_vl``): a Qwen2 language model beside a vision transformer and merger, planned exactly.

Sources: the published configs in data/qwen2_5_vl/ (see its README); transformers 5.23's
``Qwen2_5_VLForConditionalGeneration`` built on the meta device for them; vLLM's
vllm/model_executor/models/qwen2_5_vl.py (``Qwen2_5_VisionTransformer`` and its blocks: how the tower is split over
tensor-parallel ranks; ``Qwen2_5_VLForConditionalGeneration.__init__``: the tower built on every pipeline stage).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint, quantize_checkpoint
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines import get_engine
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format, int4
from quant_core.gguf_mix import ModelFacts, tensor_type
from quant_core.hf_config import architecture_family, model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan
from quant_core.specs import ModelSpec, QwenVisionTower
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
from tests.quant_core.tensorio.gptq_loader_rules import vllm_quantizes

DATA = Path(__file__).parent / "data" / "qwen2_5_vl"


def _config(size: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"qwen2.5-vl-{size}-instruct.json").read_text())
    return loaded


QWEN2_5_VL_3B = _config("3b")
QWEN2_5_VL_7B = _config("7b")

# transformers 5.23, Qwen2_5_VLForConditionalGeneration(config) on the meta device, parameters summed (the 3B's tied
# lm_head once), and the part under model.visual (test_the_counts_are_what_transformers_builds_for_the_configs)
META_TOTALS = {"3b": (3_754_622_976, 668_684_288), "7b": (8_292_166_656, 676_550_144)}


def test_qwen2_5_vl_is_a_qwen2_language_model_beside_its_vision_tower() -> None:
    spec = model_from_hf_config(QWEN2_5_VL_7B)
    assert spec.model_type == "qwen2_5_vl" and spec.layout == "llama"
    assert (spec.hidden_size, spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == \
        (3584, 28, 28, 4, 128)
    assert spec.attention_qkv_bias and not spec.attention_output_bias  # Qwen2Attention: q/k/v biased, o_proj not
    assert spec.sliding_layers == () and spec.sliding_window is None  # use_sliding_window false
    assert spec.vision == QwenVisionTower(hidden_size=1280, num_layers=32, num_attention_heads=16,
                                          intermediate_size=3420, patch_size=14, temporal_patch_size=2,
                                          spatial_merge_size=2, projection_size=3584, num_channels=3)
    assert model_from_hf_config(QWEN2_5_VL_3B).tie_word_embeddings
    # every key that sizes the model is read; the window keys are read too (and size nothing without the flag)
    assert unread_config_keys(QWEN2_5_VL_7B) == ()
    assert architecture_family({**QWEN2_5_VL_7B, "model_type": "qwen2_5_vl_custom"}) == "qwen2_5_vl"


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_the_counts_are_what_transformers_builds_for_the_configs(size: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config(size)
    keys = {key: value for key, value in config.items() if key not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**keys))
    total = sum(parameter.numel() for parameter in model.parameters())
    visual = sum(parameter.numel() for name, parameter in model.named_parameters() if ".visual." in f".{name}")
    assert (total, visual) == META_TOTALS[size]
    counted = parameter_count(model_from_hf_config(config))
    assert (counted.total, counted.by_role["vision"]) == META_TOTALS[size]
    # role by role for the language model too: its embedding, lm_head (untied in the 7B) and biases
    by_role = {"embedding": 0, "lm_head": 0, "bias": 0, "norm": 0}
    for name, parameter in model.named_parameters():
        if ".visual." in f".{name}":
            continue
        role = ("embedding" if "embed_tokens" in name else "lm_head" if name.startswith("lm_head")
                else "bias" if name.endswith(".bias") else "norm" if "norm" in name else None)
        if role is not None:
            by_role[role] += parameter.numel()
    assert by_role == {role: counted.by_role[role] for role in by_role}


def test_the_7b_total_is_its_model_cards_and_its_vision_tower_exactly_what_its_layers_hold() -> None:
    # huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct: "Model size 8.29B params" (rounded)
    spec = model_from_hf_config(QWEN2_5_VL_7B)
    assert round(parameter_count(spec).total / 1e9, 2) == 8.29
    patch = 1280 * 3 * 2 * 14 * 14  # Conv3d without bias over 2 frames of 14 x 14 x 3 pixels
    block = 2 * 1280 + (3840 * 1280 + 3840) + (1280 * 1280 + 1280) + 2 * (3420 * 1280 + 3420) + (1280 * 3420 + 1280)
    merger = 1280 + (5120 * 5120 + 5120) + (3584 * 5120 + 3584)  # ln_q, mlp.0 and mlp.2 over 2 x 2 merged patches
    assert patch + 32 * block + merger == parameter_count(spec).by_role["vision"] == 676_550_144


def test_a_nested_text_config_reads_the_same_model_and_names_its_keys() -> None:
    # transformers >= 4.52 saves Qwen2.5-VL with its language model under text_config
    text_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
                 "vocab_size", "max_position_embeddings", "tie_word_embeddings", "use_sliding_window",
                 "sliding_window", "max_window_layers")
    nested = {key: value for key, value in QWEN2_5_VL_7B.items() if key not in text_keys}
    nested["text_config"] = {key: QWEN2_5_VL_7B[key] for key in text_keys}
    assert model_from_hf_config(nested) == model_from_hf_config(QWEN2_5_VL_7B)
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**nested, "text_config": {**nested["text_config"], "num_key_value_heads": 5}})
    assert caught.value.field == "text_config.num_key_value_heads"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**nested, "tie_word_embeddings": True})
    assert caught.value.field == "tie_word_embeddings"


def test_a_vision_tower_that_does_not_fit_the_language_model_is_refused_by_its_key() -> None:
    vision = QWEN2_5_VL_7B["vision_config"]
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**QWEN2_5_VL_7B, "vision_config": {**vision, "out_hidden_size": 2048}})
    assert caught.value.field == "vision_config.out_hidden_size"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**QWEN2_5_VL_7B, "vision_config": {**vision, "num_heads": 6}})
    assert caught.value.field == "vision_config.num_heads"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**QWEN2_5_VL_7B, "vision_config": {**vision, "depth": 0}})
    assert caught.value.field == "vision_config.depth"  # the config's key, not the tower's field
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**QWEN2_5_VL_7B, "vision_config": {**vision, "in_channels": "rgb"}})
    assert caught.value.field == "vision_config.in_channels"
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**QWEN2_5_VL_7B, "vision_config": [1280]})
    assert caught.value.field == "vision_config"


def test_a_spec_with_the_tower_survives_its_json() -> None:
    spec = model_from_hf_config(QWEN2_5_VL_7B)
    as_json = json.loads(json.dumps(spec.to_dict(), default=dataclasses.asdict))
    assert ModelSpec.from_dict(as_json) == spec  # its temporal_patch_size tells the Qwen tower from the others
    with pytest.raises(InvalidSpec) as caught:
        ModelSpec.from_dict({**as_json, "vision": {**as_json["vision"], "window_size": 112}})
    assert caught.value.field == "vision.window_size"


def test_m_rope_changes_no_kv_size() -> None:
    # vLLM caches 4 KV heads x 128 x (key + value) per layer and token for the 7B, as for Qwen2-7B: M-RoPE rotates
    # the same head dimensions in three sections
    assert kv_bytes_per_token(model_from_hf_config(QWEN2_5_VL_7B), "bf16") == 28 * 2 * 4 * 128 * 2 == 57_344
    assert kv_bytes_per_token(model_from_hf_config(QWEN2_5_VL_3B), "bf16") == 36 * 2 * 2 * 128 * 2 == 36_864


def test_the_tensor_parallel_degrees_offered_are_those_qwen2_5_vl_py_can_split_the_tower_over() -> None:
    # the 3B's language model splits over 1, 2, 4, 8 and 16 ranks; its tower's 3,420-wide MLP (MergedColumnParallel
    # gate_up_proj, RowParallel down_proj: vLLM's divide asserts) not over 8 or 16
    spec = model_from_hf_config(QWEN2_5_VL_3B)
    assert engine_tensor_parallel_sizes(spec) == (1, 2, 4)
    assert engine_tensor_parallel_sizes(model_from_hf_config(QWEN2_5_VL_7B)) == (1, 2, 4)
    refusal = get_engine("vllm").refusal(spec, 8, 1)
    assert refusal is not None and "MLP width (3420" in refusal
    wide = model_from_hf_config({**QWEN2_5_VL_3B, "vision_config": {**QWEN2_5_VL_3B["vision_config"],
                                                                    "intermediate_size": 3456}})
    assert engine_tensor_parallel_sizes(wide) == (1, 2, 4, 8, 16)  # 32B's and 72B's 3,456 split over 16


def _weights(spec: ModelSpec, tp: int = 1, pp: int = 1, fmt: str = "int4") -> list[int]:
    options = PlanOptions(weight_format=int4(128) if fmt == "int4" else float_format(fmt),
                          tensor_parallel=tp, pipeline_parallel=pp)
    result = plan(spec, Hardware(80 << 30, tp * pp), Workload(4096, 1), options)
    return [device.weights_bytes for device in result.primary.devices]


def test_the_tower_stays_16_bit_is_split_as_vllm_splits_it_and_sits_on_every_stage() -> None:
    with_tower = model_from_hf_config(QWEN2_5_VL_7B)
    text_only = ModelSpec.from_dict({**with_tower.to_dict(), "vision": None})
    tower = 676_550_144 * 2  # bf16 whether the language model is int4 or not (Qwen's AWQ: modules_to_not_convert)
    assert _weights(with_tower)[0] - _weights(text_only)[0] == tower
    assert _weights(with_tower, fmt="bf16")[0] - _weights(text_only, fmt="bf16")[0] == tower
    # TP 2: whole on each rank the patch embedding (a ReplicatedLinear), the norms, proj's and down_proj's biases
    # (RowParallelLinear), the merger's ln_q and mlp.2 bias; the rest split in two
    replicated = 1280 * 3 * 2 * 14 * 14 + 32 * (2 * 1280 + 1280 + 1280) + 1280 + 3584
    assert replicated == 1_673_984
    assert [w - t for w, t in zip(_weights(with_tower, tp=2), _weights(text_only, tp=2), strict=True)] == \
        [replicated * 2 + (tower - replicated * 2) // 2] * 2
    assert [w - t for w, t in zip(_weights(with_tower, pp=2), _weights(text_only, pp=2), strict=True)] == [tower] * 2
    warnings = plan(with_tower, Hardware(80 << 30, 1), Workload(4096, 1), PlanOptions()).warnings
    # the plan says it charges vLLM's profiling of the tower, and on what dummy (vllm.qwen_encoder_dummy)
    assert any("activations include vLLM 0.19's profiling of it: 1 dummy video item(s)" in warning
               for warning in warnings)
    assert not any("dummy images" in warning for warning in
                   plan(text_only, Hardware(80 << 30, 1), Workload(4096, 1), PlanOptions()).warnings)


def test_a_gguf_plan_keeps_the_tower_as_llama_cpps_mmproj_file_stores_it() -> None:
    # convert_hf_to_gguf.py writes the language model as arch qwen2vl and the tower (--mmproj) in F16, 1-D in F32;
    # llama.cpp's qwen2vl load_arch_hparams sets no model type, so the 72B's 80 layers are no LLM_TYPE_70B there
    spec = model_from_hf_config(QWEN2_5_VL_7B)
    facts = ModelFacts.of(spec)
    types = {entry.name: tensor_type("gguf-q4_k_m", entry, -1, facts)
             for entry in inventory(spec) if entry.role == "vision"}
    assert types["visual.blocks.{v}.attn.qkv.weight"] == "F16"
    assert types["visual.patch_embed.proj.weight"] == "F16"
    assert types["visual.blocks.{v}.attn.qkv.bias"] == types["visual.merger.ln_q.weight"] == "F32"
    big = model_from_hf_config({**QWEN2_5_VL_7B, "num_hidden_layers": 80, "num_attention_heads": 64,
                                "num_key_value_heads": 8, "hidden_size": 8192, "intermediate_size": 29568,
                                "vision_config": {**QWEN2_5_VL_7B["vision_config"], "out_hidden_size": 8192}})
    assert not ModelFacts.of(big).is_70b


# --- a small random checkpoint written by transformers itself ------------------------------------------------------

TINY_QWEN2_5_VL: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 128, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
    "max_position_embeddings": 32768,
    "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 64,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), "Qwen2_5_VLConfig",
                                 "Qwen2_5_VLForConditionalGeneration", TINY_QWEN2_5_VL)


def test_a_checkpoint_written_by_transformers_is_every_tensor_of_nibbles_inventory(tiny_checkpoint: Path) -> None:
    # transformers 5 saves the published names: model.layers.*, visual.blocks.*, visual.merger.*, lm_head; and the
    # config with its language model under text_config
    saved = json.loads((tiny_checkpoint / "config.json").read_text())
    assert "text_config" in saved and model_from_hf_config(saved) == model_from_hf_config(TINY_QWEN2_5_VL)
    spec = model_from_hf_config(TINY_QWEN2_5_VL)
    headers = read_checkpoint_headers(tiny_checkpoint)
    names = {tensor.name: tensor.shape for tensor in headers}
    assert names["visual.patch_embed.proj.weight"] == (32, 3, 2, 14, 14)
    assert names["visual.merger.mlp.0.weight"] == (128, 128) and names["visual.blocks.2.attn.qkv.bias"] == (96,)
    expected: dict[str, tuple[int, ...]] = {}
    for entry in inventory(spec):
        for layer in entry.layers or (None,):
            for block in range(spec.vision.num_layers if "{v}" in entry.name and spec.vision else 1):
                expected[entry.name.replace("{i}", str(layer)).replace("{v}", str(block))] = entry.shape
    assert names == expected
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.mtp_tensors == 0  # vision blocks are no decoder layers
    assert summary.bytes == 4 * parameter_count(spec).total  # fp32
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)
    assert vision_rows_are_on_no_layer(scheme)


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_a_job_quantizes_the_language_model_and_passes_the_vision_tower_through(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # Qwen's AWQ releases keep the tower as stored (modules_to_not_convert ["visual"]); qwen2_5_vl.py builds it with
    # the checkpoint's quant_config, so the output's config must name its modules unquantized for vLLM
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    assert reasons["visual.blocks.0.attn.qkv.weight"].startswith("Qwen2.5-VL's vision tower and merger")
    assert reasons["visual.merger.mlp.0.weight"].startswith("Qwen2.5-VL's vision tower and merger")
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert len(quantized) == 2 * 7 and all(name.startswith("model.layers.") for name in quantized)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    tower = [f"visual.blocks.{block}.{module}" for block in range(3)
             for module in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    tower += ["visual.merger.mlp.0", "visual.merger.mlp.2"]
    if output == "compressed-tensors":
        assert set(tower) <= set(config["ignore"])
    elif output == "gptq":
        assert not any(vllm_quantizes(config, module) for module in tower)
        assert vllm_quantizes(config, "model.layers.0.self_attn.q_proj")
    else:
        assert set(tower) <= set(config["modules_to_not_convert"])
    stored = output_tensors(tmp_path / "out")
    source = read_safetensors(tiny_checkpoint / "model.safetensors")
    for name in ("visual.blocks.1.mlp.down_proj.weight", "visual.patch_embed.proj.weight"):
        assert stored[name].tobytes() == source[name].tobytes()


def test_a_job_refuses_a_gguf_output_it_cannot_write_for_llama_cpp(tiny_checkpoint: Path) -> None:
    # nibble's GGUF writer follows the llama, Qwen2 and Qwen3 converters only: Qwen2.5-VL (llama.cpp's qwen2vl arch
    # plus an mmproj file) is refused before any work
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(tiny_checkpoint), CheckpointOptions(output="gguf", group_size=32,
                                                                            symmetric=True))
    assert refused.value.field == "output" and "Qwen2_5_VLForConditionalGeneration" in refused.value.detail


def test_a_checkpoints_vision_tower_sits_on_every_pipeline_stage(tiny_checkpoint: Path) -> None:
    # qwen2_5_vl.py builds self.visual with no pipeline-rank test: every stage holds it
    spec = model_from_hf_config(TINY_QWEN2_5_VL)
    headers = read_checkpoint_headers(tiny_checkpoint)
    tower, added = tower_bytes_by_stage(spec, headers, ("visual.",))
    assert tower == 4 * parameter_count(spec).by_role["vision"]
    assert added == [tower, tower]


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_the_catalog_presets_are_the_published_configs_parsed(size: str) -> None:
    from quant_core.catalog import get_preset

    preset_id = f"qwen2.5-vl-{size}-instruct"
    assert get_preset(preset_id) == model_from_hf_config(_config(size), name=preset_id)
    assert parameter_count(get_preset(preset_id)).total == META_TOTALS[size][0]


def test_an_awq_checkpoint_as_shipped_holds_the_tower_at_16_bits() -> None:
    from quant_core.schemes import scheme_bytes, scheme_from_quantization_config

    # Qwen/Qwen2.5-VL-7B-Instruct-AWQ's quantization_config (its config.json, as public copies of it show)
    awq = scheme_from_quantization_config({"bits": 4, "group_size": 128, "modules_to_not_convert": ["visual"],
                                           "quant_method": "awq", "version": "gemm", "zero_point": True})
    spec = model_from_hf_config(QWEN2_5_VL_7B)
    text_only = ModelSpec.from_dict({**spec.to_dict(), "vision": None})
    assert scheme_bytes(spec, awq) - scheme_bytes(text_only, awq) == 676_550_144 * 2


def test_a_checkpoint_saved_under_transformers_4_52_names_is_planned_the_same(tiny_checkpoint: Path) -> None:
    # transformers 4.52 to 4.57 saved Qwen2.5-VL as model.language_model.* and model.visual.* (lm_head unchanged);
    # vLLM's hf_to_vllm_mapper reads both spellings
    spec = model_from_hf_config(TINY_QWEN2_5_VL)
    headers = read_checkpoint_headers(tiny_checkpoint)
    renamed = [HeaderTensor(f"model.language_model.{tensor.name.removeprefix('model.')}"
                            if tensor.name.startswith("model.") else
                            f"model.{tensor.name}" if tensor.name.startswith("visual.") else tensor.name,
                            tensor.dtype, tensor.shape, tensor.bytes) for tensor in headers]
    assert any(tensor.name == "model.visual.blocks.0.attn.qkv.weight" for tensor in renamed)
    scheme, summary = checkpoint_scheme(spec, renamed, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total
    assert vision_rows_are_on_no_layer(scheme)
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)
