"""GLM-4-0414 and GLM-Z1 (``glm4``): planned as transformers builds them and vLLM loads them.

The configs are the published ones (tests/quant_core/data/glm4/, sources in its README.md).  The exact counts come
from transformers itself: the model each config describes, built on the meta device (no memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import get_device, get_preset, get_preset_info
from quant_core.checkpoint import CheckpointOptions, open_checkpoint, plan_checkpoint
from quant_core.checkpoint.output import quantize_checkpoint
from quant_core.checkpoint.plan import DEFAULT_EXCLUDE
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import MissingConfigKey
from quant_core.formats import float_format
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token, kv_layers
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import read_checkpoint_headers
from quant_core.tensorio.safetensors_io import read_safetensors
from tests.quant_core.meta_models import (
    built_on_meta,
    fp32_bytes_by_role,
    output_tensors,
    parameters_by_role,
    planned_job,
    saved_by_transformers,
    stored_bytes_by_role,
    tensor_names,
)
from tests.quant_core.tensorio.gptq_loader_rules import optimum_quantizes, vllm_quantizes

DATA = Path(__file__).resolve().parent / "data" / "glm4"


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


def spec_of(name: str) -> ModelSpec:
    return model_from_hf_config(load(name), name=name)




@pytest.mark.parametrize(("name", "parameters"), [
    # transformers 5.23's Glm4ForCausalLM on the meta device, for the published configs
    ("GLM-4-9B-0414", 9_400_279_040),
    ("GLM-4-32B-0414", 32_566_487_552),
])
def test_glm4_counts_what_transformers_builds_role_by_role(name: str, parameters: int) -> None:
    model = built_on_meta(load(name))
    assert sum(parameter.numel() for parameter in model.parameters()) == parameters
    counts = parameter_count(spec_of(name))
    assert counts.total == parameters
    by_role = parameters_by_role(model, ())
    by_role["bias"] = sum(p.numel() for n, p in model.named_parameters() if n.endswith("_proj.bias"))
    by_role["attention"] -= by_role["bias"]  # transformers' q/k/v biases sit under self_attn
    assert {role: size for role, size in counts.by_role.items() if size} == by_role


@pytest.mark.parametrize("name", ["GLM-4-9B-0414", "GLM-4-32B-0414"])
def test_glm4_tensor_names_are_the_checkpoints_own(name: str) -> None:
    # Every tensor nibble lists is one of transformers' state dict, by the same name, and no other: the published
    # checkpoints hold these names (q/k/v biases, post_self_attn_layernorm / post_mlp_layernorm, and the MLP's gate
    # and up projections as one mlp.gate_up_proj, the tensor vLLM's glm4.py loads whole into its gate_up_proj)
    spec = spec_of(name)
    assert tensor_names(spec) == set(built_on_meta(load(name)).state_dict())
    shapes = {entry.name: entry.shape for entry in inventory(spec)}
    assert shapes["model.layers.{i}.mlp.gate_up_proj.weight"] == (2 * spec.intermediate_size, spec.hidden_size)
    assert "model.layers.{i}.mlp.gate_proj.weight" not in shapes


def test_glm4_9b_reads_its_attention_and_four_norms() -> None:
    spec = spec_of("GLM-4-9B-0414")
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == \
        (40, 4096, 32, 2, 128)
    assert spec.attention_qkv_bias and not spec.attention_output_bias and not spec.qk_norm  # o_proj has no bias
    assert spec.layout == "glm4" and spec.norms_per_layer == 4 and not spec.tie_word_embeddings
    assert spec.max_position_embeddings == 32768 and spec.sliding_layers == ()
    # partial_rotary_factor (0.5: RoPE on half of each head) changes no tensor and no cached size
    assert unread_config_keys(load("GLM-4-9B-0414")) == ()


def test_glm4_absent_keys_take_glm4configs_defaults_and_missing_sizes_are_refused() -> None:
    # Glm4Config: 2 key/value heads, head_dim 128, attention_bias true, untied; transformers builds the same model
    config = {key: value for key, value in load("GLM-4-32B-0414").items()
              if key not in ("num_key_value_heads", "head_dim", "attention_bias", "tie_word_embeddings")}
    spec = model_from_hf_config(config)
    assert (spec.num_kv_heads, spec.head_dim, spec.attention_qkv_bias, spec.tie_word_embeddings) == \
        (2, 128, True, False)
    assert parameter_count(spec).total == sum(p.numel() for p in built_on_meta(config).parameters()) == 32_566_487_552
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
        with pytest.raises(MissingConfigKey) as caught:
            model_from_hf_config({k: v for k, v in load("GLM-4-9B-0414").items() if k != key})
        assert caught.value.field == key


def test_a_config_of_another_type_naming_glm4s_class_is_read_as_glm4() -> None:
    # vLLM loads the class its registry has for ``architectures``: Glm4ForCausalLM is glm4.py's
    config = {**load("GLM-4-9B-0414"), "model_type": "glm4_fork"}
    assert model_from_hf_config(config).layout == "glm4"


def test_glm4_kv_cache_is_grouped_query_attention_on_every_layer() -> None:
    # vllm/model_executor/models/glm4.py: Attention(num_heads, head_dim=128, num_kv_heads=2) on every layer, no
    # sliding window; partial rotary changes no cached size: 2 x 40 x 2 x 128 x 2 bytes
    assert kv_bytes_per_token(spec_of("GLM-4-9B-0414")) == 40_960
    assert kv_bytes_per_token(spec_of("GLM-4-32B-0414")) == 2 * 61 * 2 * 128 * 2 == 62_464
    assert {layer.kind for layer in kv_layers(spec_of("GLM-4-32B-0414"))} == {"full"}
    # four ranks replicate the two KV heads (Glm4Attention: num_kv_heads = max(1, 2 // 4)): one per rank
    assert kv_bytes_per_token(spec_of("GLM-4-9B-0414"), tensor_parallel=4) == 2 * 40 * 1 * 128 * 2


def test_vllms_tensor_parallel_refusals_for_glm4() -> None:
    # glm4.py, Glm4Attention: assert total_num_heads % tp_size == 0, and KV heads split (2 % tp) or replicated
    # (tp % 2); the MLP's MergedColumnParallelLinear divides 13,696 and 23,040 for every size the heads allow
    profile = VllmProfile()
    nine, big = spec_of("GLM-4-9B-0414"), spec_of("GLM-4-32B-0414")
    assert all(profile.refusal(nine, tp, 1) is None for tp in (1, 2, 4, 8, 16, 32))
    assert "attention heads" in (profile.refusal(nine, 3, 1) or "")
    assert all(profile.refusal(big, tp, 1) is None for tp in (1, 2, 4, 8, 16))
    assert "key/value heads" in (profile.refusal(big, 3, 1) or "")  # 48 heads split in 3, but 2 KV heads cannot be
    assert all(size % tp == 0 for size in (13_696, 23_040) for tp in (2, 4, 8, 16, 32))


def test_vllm_puts_glm4s_vocabulary_only_on_the_first_and_last_stage() -> None:
    # glm4.py's Glm4Model is llama.py's LlamaModel (embed_tokens / norm behind get_pp_group().is_first_rank /
    # is_last_rank, PPMissingLayer elsewhere) and Glm4ForCausalLM builds lm_head on the last rank only
    spec = spec_of("GLM-4-9B-0414")
    assert VllmProfile().vocabulary_on_every_stage(spec) is None
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 2), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=2, weight_format=float_format("bf16"))).primary.devices
    assert [device.unread_weights_bytes for device in staged] == [0, 0]
    layer = sum(2 * entry.elements * entry.per_layer for entry in inventory(spec) if entry.layers)
    embedding = 2 * 151_552 * 4096
    assert [device.weights_bytes for device in staged] == [20 * layer + embedding, 20 * layer + embedding + 2 * 4096]


def test_tensor_parallel_ranks_split_the_fused_gate_up_proj_and_qkv_biases_and_hold_norms_whole() -> None:
    # vLLM's MergedColumnParallelLinear takes each rank's rows of gate and of up from the fused tensor (half of it
    # at TP 2); RMSNorms whole on every rank; the q/k/v biases split with their heads (glm4.py's QKVParallelLinear,
    # bias=True: a column-parallel bias; 2 key/value heads over 2 ranks, none replicated).  9,401,122,816 bytes a
    # rank when nibble held the biases whole
    spec = spec_of("GLM-4-9B-0414")
    options = {"weight_format": float_format("bf16")}
    device = get_device("h100-80gb").planning_bytes
    one = plan(spec, Hardware(device, 1), Workload(4096, 1), PlanOptions(**options)).primary.devices[0]
    two = plan(spec, Hardware(device, 2), Workload(4096, 1), PlanOptions(tensor_parallel=2, **options)).primary
    by_role = parameter_count(spec).by_role
    whole = 2 * by_role["norm"]
    assert whole == 2 * 659_456 and by_role["bias"] == 184_320
    assert one.weights_bytes == 2 * 9_400_279_040
    assert [rank.weights_bytes for rank in two.devices] == [(one.weights_bytes - whole) // 2 + whole] * 2


def test_int4_quantizes_the_fused_gate_up_proj_with_attention_and_down_proj() -> None:
    spec = spec_of("GLM-4-9B-0414")
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1), Workload(4096, 1))
    int4, bf16 = result.comparison["int4"].weights_by_role, result.comparison["bf16"].weights_by_role
    assert int4["mlp"] < bf16["mlp"] // 3 and int4["attention"] < bf16["attention"] // 3
    for role in ("embedding", "lm_head", "norm", "bias"):
        assert int4[role] == bf16[role]


TINY_GLM4 = {**load("GLM-4-9B-0414"), "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2, "vocab_size": 96, "pad_token_id": 0,
             "eos_token_id": 2}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_by_transformers(tmp_path_factory.mktemp("tiny-glm4"), "Glm4Config", "Glm4ForCausalLM", TINY_GLM4)


def test_a_glm4_checkpoint_written_by_transformers_is_planned_from_its_headers(tiny_checkpoint: Path) -> None:
    spec = model_from_hf_config(TINY_GLM4)
    headers = read_checkpoint_headers(tiny_checkpoint)
    assert {tensor.name for tensor in headers} == tensor_names(spec)
    scheme, summary = checkpoint_scheme(spec, headers, mtp_layers=0)
    assert summary.unknown == () and summary.bytes == 4 * parameter_count(spec).total  # fp32
    assert stored_bytes_by_role(scheme) == fp32_bytes_by_role(spec)


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_a_glm4_job_quantizes_every_linear_layer_and_passes_norms_biases_and_vocabulary_through(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # the default include/exclude: q/k/v/o, the fused gate_up_proj and down_proj are quantized (vLLM builds them all
    # with the checkpoint's quant_config); the four norms, the q/k/v biases, embed_tokens and lm_head pass through
    checkpoint, options, plans, reasons = planned_job(tiny_checkpoint, output)
    quantized = sorted(name for name, reason in reasons.items() if not reason)
    assert quantized == sorted(f"model.layers.{layer}.{module}.weight" for layer in (0, 1) for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_up_proj",
        "mlp.down_proj"))
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    modules = [name.removesuffix(".weight") for name in quantized]
    if output == "gptq":  # the list written even though nothing is skipped (else vLLM fills it with the modules'
        # full names, which its gate_proj / up_proj shard names of the fused gate_up_proj do not contain)
        assert config["modules_in_block_to_quantize"] == [[
            "mlp.down_proj", "mlp.gate_up_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
            "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]]
        assert all(vllm_quantizes(config, module) and optimum_quantizes(config, module) for module in modules)
    elif output == "awq":
        assert set(config["modules_to_not_convert"]) == {"model.embed_tokens", "lm_head"}
    else:
        targets = {target for group in config["config_groups"].values() for target in group["targets"]}
        assert targets == set(modules)
    stored = output_tensors(tmp_path / "out")
    source = read_safetensors(tiny_checkpoint / "model.safetensors")
    for name in ("model.layers.1.post_mlp_layernorm.weight", "model.layers.0.self_attn.k_proj.bias"):
        assert stored[name].tobytes() == source[name].tobytes()


@pytest.mark.parametrize("output", ["gptq", "awq"])
def test_a_glm4_job_that_leaves_a_fused_gate_up_proj_out_says_so_in_vllms_own_shard_names(
        tmp_path: Path, tiny_checkpoint: Path, output: str) -> None:
    # vLLM's glm4.py maps its gate_up_proj to the shards gate_proj and up_proj (packed_modules_mapping), and decides
    # a fused layer's quantization from those shard names: GPTQ's is_layer_gptq_quantized (each shard against
    # modules_in_block_to_quantize, by substring) and AWQ-Marlin's is_layer_skipped (each shard against
    # modules_to_not_convert).  A config naming only the checkpoint's fused module would have vLLM build layer 0's
    # gate_up_proj unquantized (GPTQ) or quantized (AWQ) against what the file holds
    checkpoint = open_checkpoint(tiny_checkpoint)
    options = CheckpointOptions(output=output, group_size=32,  # type: ignore[arg-type]
                                exclude=(*DEFAULT_EXCLUDE, "model.layers.0.mlp.gate_up_proj.weight"))
    plans = plan_checkpoint(checkpoint, options)
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    if output == "gptq":
        assert not vllm_quantizes(config, "model.layers.0.mlp.gate_up_proj")
        assert vllm_quantizes(config, "model.layers.1.mlp.gate_up_proj")
        assert vllm_quantizes(config, "model.layers.0.mlp.down_proj")
        assert vllm_quantizes(config, "model.layers.0.self_attn.qkv_proj")
        assert optimum_quantizes(config, "model.layers.1.mlp.gate_up_proj")
        assert not optimum_quantizes(config, "model.layers.0.mlp.gate_up_proj")
    elif output == "awq":
        skipped = config["modules_to_not_convert"]
        for layer, expected in ((0, True), (1, False)):  # awq_marlin's is_layer_skipped, substrings, shards agreeing
            shards = [f"model.layers.{layer}.mlp.{shard}" for shard in ("gate_proj", "up_proj")]
            assert [any(entry in shard for entry in skipped) for shard in shards] == [expected, expected]
            assert any(entry in f"model.layers.{layer}.mlp.gate_up_proj" for entry in skipped) == expected  # awq


@pytest.mark.parametrize(("preset", "name"), [("glm-4-9b-0414", "GLM-4-9B-0414"),
                                              ("glm-4-32b-0414", "GLM-4-32B-0414")])
def test_the_glm4_presets_are_their_parsed_configs(preset: str, name: str) -> None:
    info = get_preset_info(preset)
    assert info.spec == model_from_hf_config(load(name), name=preset)
    assert info.quantization_config is None and info.mtp_layers == 0  # the bf16 checkpoints, no MTP layer


def test_the_fewest_h100s_for_glm_4_32b_fit_and_one_fewer_does_not() -> None:
    # the device solver at its boundary, over the tensor-parallel sizes vLLM accepts for 48 heads and 2 KV heads
    # (a size must divide 48 and divide 2 or be a multiple of it) and its 151,552-token vocabulary (2^12 x 37:
    # vocab_parallel_embedding.py divides it over the ranks, so 6, 12, 24 and 48 are refused): at 32K x 8 on H100s,
    # 2 at bf16 (60.7 GiB of weights and 15.2 GiB of KV cache, over one card's 72 GiB at 0.90) and 1 at INT4
    from quant_core.formats import int4
    from quant_core.planner import engine_tensor_parallel_sizes
    h100 = get_device("h100-80gb").memory_bytes
    spec, workload = get_preset("glm-4-32b-0414"), Workload(32768, 8)
    accepted = engine_tensor_parallel_sizes(spec)
    assert accepted == (1, 2, 4, 8, 16)  # (1, 2, 4, 6, 8, 12, 16, 24, 48) before the vocabulary's division
    result = plan(spec, Hardware(h100, 1), workload)
    assert {key: value.min_devices for key, value in result.comparison.items()} == {"bf16": 2, "int4": 1}
    bf16 = PlanOptions(weight_format=float_format("bf16"))
    assert plan(spec, Hardware(h100, 2), workload, bf16).primary.fits
    assert not plan(spec, Hardware(h100, 1), workload, bf16).primary.fits
    assert plan(spec, Hardware(h100, 1), workload, PlanOptions(weight_format=int4())).primary.fits


def test_a_glm4_job_refuses_a_gguf_output_it_cannot_write_for_llama_cpp(tiny_checkpoint: Path) -> None:
    # nibble's GGUF writer follows the llama, Qwen2 and Qwen3 converters only: llama.cpp's glm4 arch (its ffn_up of
    # 2 x n_ff rows, post norms) is refused before any work; plans of GGUF mixes for glm4 are priced (recorded)
    from quant_core.errors import InvalidSpec
    with pytest.raises(InvalidSpec) as refused:
        plan_checkpoint(open_checkpoint(tiny_checkpoint), CheckpointOptions(output="gguf", group_size=32,
                                                                            symmetric=True))
    assert refused.value.field == "output" and "Glm4ForCausalLM" in refused.value.detail
