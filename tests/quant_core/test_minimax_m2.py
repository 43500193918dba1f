"""MiniMax-M2 / M2.1 / M2.5 (``minimax_m2``): planned as transformers builds them and vLLM loads them.

The config is the published MiniMax-M2.5 one (tests/quant_core/data/minimax_m2/, sources in its README.md).  The
exact counts come from transformers itself: the model the config describes, built on the meta device (no memory),
its parameters plus the router's ``e_score_correction_bias`` (a persistent buffer, so in every checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.errors import InvalidSpec
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count, weight_bytes
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import scheme_bytes, scheme_from_quantization_config
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import HeaderTensor

DATA = Path(__file__).resolve().parent / "data" / "minimax_m2"
GIB = 1 << 30
# MiniMax-M2.5's sizes (its config.json): 62 layers of 3072, 48 heads and 8 KV heads of 128, 256 experts of 1536
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, WIDTH, VOCAB = 62, 3072, 48, 8, 128, 256, 1536, 200064


def load(name: str = "MiniMax-M2.5") -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


def spec_of(name: str = "MiniMax-M2.5") -> ModelSpec:
    return model_from_hf_config(load(name), name=name)


def transformers_count(config: dict[str, Any]) -> tuple[int, int, set[str]]:
    """Parameters, router-bias buffer elements and state-dict names of the model transformers builds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    keys = {key: value for key, value in config.items() if key != "quantization_config"}  # the FP8 release's
    hf_config = transformers.AutoConfig.for_model(**keys)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for name, buffer in model.named_buffers() if name.endswith("e_score_correction_bias"))
    return parameters, buffers, set(model.state_dict())


def test_minimax_m2_5_counts_what_transformers_builds_plus_the_router_bias_the_checkpoints_hold() -> None:
    # transformers 5.23's MiniMaxM2ForCausalLM on the meta device: 228,689,748,992 parameters, and 62 MoE layers x
    # 256 router-bias values in a persistent buffer.  Sanity, against a rounded published figure: "228.7B total"
    # (the model card of Ex0bit/MiniMax-SLURPY, a weight merge of M2.5 and M2.7, "identical architecture")
    built, buffers, _ = transformers_count(load())
    assert (built, buffers) == (228_689_748_992, LAYERS * EXPERTS)
    counts = parameter_count(spec_of())
    assert counts.total == built + buffers == 228_689_764_864
    assert round(counts.total / 1e9, 1) == 228.7
    assert counts.routed_experts == LAYERS * EXPERTS * 3 * HIDDEN * WIDTH
    assert counts.by_role["router"] == LAYERS * EXPERTS * (HIDDEN + 1)
    # the q/k norms span all heads: 62 x (48 + 8) x 128 weights, beside the two 3072-wide norms a layer and the last
    assert counts.by_role["norm"] == LAYERS * ((HEADS + KV_HEADS) * HEAD_DIM + 2 * HIDDEN) + HIDDEN
    assert counts.by_role["attention"] == LAYERS * 2 * (HEADS + KV_HEADS) * HEAD_DIM * HIDDEN


def test_a_checkpoint_transformers_writes_is_nibbles_inventory_tensor_for_tensor(tmp_path: Path) -> None:
    # A tiny random MiniMax-M2 saved by transformers 5.23 (which writes the published checkpoints' names:
    # block_sparse_moe.gate, block_sparse_moe.e_score_correction_bias, experts.{e}.w1/w2/w3, per-expert 2-D):
    # every tensor name and shape is one nibble lists, and no other
    from quant_core.tensorio.safetensors_io import read_safetensors
    from tests.quant_core.meta_models import saved_by_transformers
    tiny = {**{key: value for key, value in load().items() if key not in ("quantization_config", "attn_type_list")},
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
            "vocab_size": 128, "rotary_dim": 8}
    saved = read_safetensors(saved_by_transformers(tmp_path, "MiniMaxM2Config", "MiniMaxM2ForCausalLM", tiny)
                             / "model.safetensors")
    ours = {}
    for entry in inventory(model_from_hf_config(tiny)):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                ours[entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))] = entry.shape
    assert ours == {name: tuple(array.shape) for name, array in saved.items()}
    assert ours["model.layers.1.self_attn.q_norm.weight"] == (4 * 16,)  # all heads, not one head's 16
    assert ours["model.layers.1.self_attn.k_norm.weight"] == (2 * 16,)


def test_minimax_m2_5_reads_its_attention_and_expert_layout() -> None:
    spec = spec_of()
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == \
        (LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM)  # 48 x 128 = 6144 != 3072: head_dim is given
    assert (spec.num_experts, spec.experts_per_token, spec.moe_intermediate_size, spec.num_shared_experts) == \
        (EXPERTS, 8, WIDTH, 0)
    assert spec.moe_layers == tuple(range(LAYERS)) and spec.router_bias and spec.qk_norm
    assert not spec.tie_word_embeddings and not spec.attention_qkv_bias
    assert spec.max_position_embeddings == 196_608 and spec.sliding_layers == ()


def test_minimax_m2_has_no_unread_sizing_key() -> None:
    # rotary_dim (64 of 128: partial rotary), use_qk_norm, scoring_func and the MTP keys change no tensor vLLM loads
    assert unread_config_keys(load()) == ()


@pytest.mark.parametrize(("key", "value"), [
    ("qk_norm_type", "per_head"),  # vLLM's MiniMaxText01RMSNormTP is the full-width norm only
    ("shared_intermediate_size", 1536),  # neither transformers nor vLLM builds a shared expert
    ("tie_word_embeddings", True),  # vLLM's MiniMaxM2ForCausalLM always builds its own lm_head
])
def test_what_vllm_does_not_build_is_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**load(), key: value})
    assert caught.value.field == key


def test_a_linear_attention_layer_is_refused_naming_its_index() -> None:
    # attn_type_list 0 is MiniMax-Text-01's lightning (linear) attention; vLLM's minimax_m2.py builds full attention
    kinds = [1] * LAYERS
    kinds[7] = 0
    with pytest.raises(InvalidSpec) as caught:
        model_from_hf_config({**load(), "attn_type_list": kinds})
    assert caught.value.field == "attn_type_list[7]"


def test_absent_keys_take_minimaxm2configs_defaults() -> None:
    config = {key: value for key, value in load().items() if key not in ("num_key_value_heads", "head_dim")}
    spec = model_from_hf_config(config)
    assert (spec.num_kv_heads, spec.head_dim) == (8, 128)
    built, buffers, _ = transformers_count(config)
    assert parameter_count(spec).total == built + buffers


def test_minimax_m2_kv_cache_is_grouped_query_attention_on_every_layer() -> None:
    # vllm/model_executor/models/minimax_m2.py: Attention(num_heads / tp, head_dim 128, num_kv_heads = max(1, 8 / tp))
    # on all 62 layers, no sliding window (attn_window_size None); partial rotary changes no cached size
    spec = spec_of()
    assert kv_bytes_per_token(spec) == 2 * LAYERS * KV_HEADS * HEAD_DIM * 2 == 253_952
    assert kv_bytes_per_token(spec, tensor_parallel=4) == 253_952 // 4
    # tensor parallel 16 replicates the 8 KV heads (one per rank): "tp_size % total_num_kv_heads == 0"
    assert kv_bytes_per_token(spec, tensor_parallel=16) == 2 * LAYERS * 1 * HEAD_DIM * 2


def test_vllm_accepts_the_tensor_parallel_sizes_minimax_m2s_attention_splits() -> None:
    # MiniMaxM2Attention asserts total_num_heads % tp == 0 and, for tp above the 8 KV heads, tp % 8 == 0
    from quant_core.engines.vllm import VllmProfile
    from quant_core.planner import engine_tensor_parallel_sizes
    spec = spec_of()
    assert engine_tensor_parallel_sizes(spec, 64) == (1, 2, 4, 8, 16, 24, 48)
    assert "key/value heads" in (VllmProfile().refusal(spec, 12, 1) or "")  # 48 % 12 == 0, but 8 and 12
    assert VllmProfile().vocabulary_on_every_stage(spec) is None  # PPMissingLayer for embed_tokens, norm, lm_head


def test_vllm_0_11_0_cannot_load_minimax_m2() -> None:
    # minimax_m2.py arrived for MiniMax-M2's release (26 October 2025), after v0.11.0 (2 October 2025): v0.11.0's
    # registry has no MiniMaxM2ForCausalLM; v0.19 loads it
    from quant_core.engines.vllm import VllmProfile
    spec = spec_of()
    assert "v0.11.1" in (VllmProfile("0.11").refusal(spec, 4, 1) or "")
    assert VllmProfile("0.19").refusal(spec, 4, 1) is None
    assert VllmProfile("0.11").refusal(model_from_hf_config({**load(), "model_type": "mixtral",
                                                              "architectures": ["MixtralForCausalLM"]}), 4, 1) is None


@pytest.mark.parametrize("weight_format", ["bf16", "int4"])
def test_vllm_holds_minimax_m2s_routers_in_float32_and_splits_its_qk_norms(weight_format: str) -> None:
    # minimax_m2.py: MiniMaxM2MoE.gate = ReplicatedLinear(3072, 256, params_dtype=torch.float32, quant_config=None)
    # and e_score_correction_bias = nn.Parameter(torch.empty(256, dtype=torch.float32)): whole on each rank, 4 bytes
    # an element, 62 x 256 x 3073 x 2 = 97,549,312 bytes more than at 16 bits, of which the generic plan holds the
    # bias's share too (planner ``_FLOAT32_NAMES``): the engines differ by 62 x 256 x 3072 x 2 = 97,517,568 (97,549,312
    # before the bias was float32 in both).  Its q_norm / k_norm are
    # MiniMaxText01RMSNormTP: torch.ones(int(width / tp)) on each rank, so at TP 4 a device holds a quarter of them
    from quant_core.formats import float_format, int4
    spec = spec_of()
    chosen = float_format("bf16") if weight_format == "bf16" else int4()
    hardware, workload = Hardware(141 * GIB, 4), Workload(8192, 1)
    vllm = plan(spec, hardware, workload, PlanOptions(weight_format=chosen))
    generic = plan(spec, hardware, workload, PlanOptions(weight_format=chosen, engine="generic"))
    extra = LAYERS * EXPERTS * HIDDEN * 2
    assert extra == 97_517_568
    assert [device.weights_bytes - other.weights_bytes
            for device, other in zip(vllm.primary.devices, generic.primary.devices, strict=True)] == [extra] * 4
    note = next(line for line in vllm.warnings if "float32" in line)
    assert "minimax_m2.py" in note and "0.09 GiB" in note
    if weight_format == "bf16":  # every tensor of one device, by hand
        vocabulary = 2 * VOCAB * HIDDEN * 2 // 4  # embed_tokens and lm_head at 2 bytes, each split over 4 ranks
        attention = LAYERS * 2 * (HEADS + KV_HEADS) * HEAD_DIM * HIDDEN * 2 // 4
        experts = LAYERS * EXPERTS * 3 * HIDDEN * WIDTH * 2 // 4
        routers = LAYERS * EXPERTS * (HIDDEN + 1) * 4
        norms = (LAYERS * 2 * HIDDEN + HIDDEN) * 2 + LAYERS * (HEADS + KV_HEADS) * HEAD_DIM // 4 * 2
        assert vllm.primary.devices[0].weights_bytes == vocabulary + attention + experts + routers + norms


def test_minimax_m2_5_fp8_release_is_priced_as_shipped() -> None:
    # The published quantization_config: fp8 e4m3 with [128, 128] weight blocks (fmt "float8_e4m3fn", which vLLM's
    # Fp8Config does not read), dynamic activations, and modules_to_not_convert gate, e_score_correction_bias,
    # lm_head.  Every attention and expert weight is 1 byte an element plus one fp32 weight_scale_inv per 128 x 128
    # block (3072, 1536, 6144 and 1024 are all multiples of 128); the router, its bias, the norms, the embedding
    # and the lm_head at bf16
    spec = spec_of()
    scheme = scheme_from_quantization_config(load()["quantization_config"])
    assert not any("fmt" in note for note in scheme.notes)

    def fp8(rows: int, columns: int) -> int:
        return rows * columns + 4 * (rows // 128) * (columns // 128)

    per_layer = (fp8(HEADS * HEAD_DIM, HIDDEN) + 2 * fp8(KV_HEADS * HEAD_DIM, HIDDEN) + fp8(HIDDEN, HEADS * HEAD_DIM)
                 + EXPERTS * (2 * fp8(WIDTH, HIDDEN) + fp8(HIDDEN, WIDTH)))
    sixteen_bit = 2 * (2 * VOCAB * HIDDEN + LAYERS * EXPERTS * (HIDDEN + 1)
                       + LAYERS * ((HEADS + KV_HEADS) * HEAD_DIM + 2 * HIDDEN) + HIDDEN)
    assert scheme_bytes(spec, scheme) == LAYERS * per_layer + sixteen_bit
    assert weight_bytes(spec, "bf16") == 2 * 228_689_764_864
    as_shipped = plan(spec, Hardware(141 * GIB, 4), Workload(8192, 1), PlanOptions(scheme=scheme))
    assert as_shipped.primary.weights_by_role["router"] == 2 * LAYERS * EXPERTS * (HIDDEN + 1)


def test_the_minimax_m2_5_preset_is_its_parsed_config_shipped_in_fp8() -> None:
    from quant_core.catalog import get_preset_info
    info = get_preset_info("minimax-m2.5")
    assert info.spec == model_from_hf_config(load(), name="minimax-m2.5")
    assert info.quantization_config == load()["quantization_config"]
    result = plan(info.spec, Hardware(141 * GIB, 4), Workload(8192, 1),
                  PlanOptions(scheme=scheme_from_quantization_config(load()["quantization_config"])))
    # the FP8 release on four 141 GiB devices, as vLLM's recipe serves it (--tensor-parallel-size 4, recipes#95)
    assert result.primary.fits


def _tiny() -> dict[str, Any]:
    """MiniMax-M2.5's config at a few layers and small widths: the same tensors, fewer and smaller."""
    return {**{key: value for key, value in load().items() if key not in ("quantization_config", "attn_type_list")},
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
            "vocab_size": 128, "rotary_dim": 8}


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq", "awq"])
def test_a_minimax_m2_checkpoint_job_quantizes_what_vllm_quantizes_and_passes_the_router_through(
        tmp_path: Path, output: str) -> None:
    # A tiny random MiniMax-M2 saved by transformers through a job with the default include/exclude: the router
    # (block_sparse_moe.gate, a float32 ReplicatedLinear with quant_config=None in vLLM) and its
    # e_score_correction_bias pass through, as do the full-width q/k norms, the other norms, the embedding and the
    # lm_head (the FP8 release's modules_to_not_convert: gate, e_score_correction_bias, lm_head); the attention
    # projections and every expert's w1/w2/w3 are quantized
    from quant_core.checkpoint import quantize_checkpoint
    from tests.quant_core.meta_models import output_tensors, planned_job, saved_by_transformers
    folder = saved_by_transformers(tmp_path / "m2", "MiniMaxM2Config", "MiniMaxM2ForCausalLM", _tiny())
    checkpoint, options, plans, reasons = planned_job(folder, output)
    quantized = {name for name, reason in reasons.items() if not reason}
    passed = set(reasons) - quantized
    layer = "model.layers.1"
    assert {f"{layer}.block_sparse_moe.gate.weight", f"{layer}.block_sparse_moe.e_score_correction_bias",
            f"{layer}.self_attn.q_norm.weight", f"{layer}.self_attn.k_norm.weight", f"{layer}.input_layernorm.weight",
            "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= passed
    assert quantized == {f"model.layers.{i}.{name}.weight" for i in range(2) for name in (
        *(f"self_attn.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "o_proj")),
        *(f"block_sparse_moe.experts.{e}.{w}" for e in range(4) for w in ("w1", "w2", "w3")))}
    # the written config leaves the router to vLLM unquantized: compressed-tensors targets exactly the quantized
    # modules, AWQ lists the gates in modules_to_not_convert, and GPTQ needs no list (minimax_m2.py builds the gate
    # with quant_config=None); the router bias reaches the output in float32, as the checkpoint stored it
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    gates = {f"model.layers.{i}.block_sparse_moe.gate" for i in range(2)}
    if output == "compressed-tensors":
        targets = {target for group in config["config_groups"].values() for target in group["targets"]}
        assert targets == {name.removesuffix(".weight") for name in quantized} and not targets & gates
    elif output == "awq":
        assert gates <= set(config["modules_to_not_convert"])
    stored = output_tensors(tmp_path / "out")
    bias = f"{layer}.block_sparse_moe.e_score_correction_bias"
    assert stored[bias].dtype == np.float32 and stored[f"{layer}.block_sparse_moe.gate.weight"].ndim == 2


def fp8_release_headers(layers: int = 3) -> tuple[ModelSpec, list[HeaderTensor]]:
    """MiniMax-M2.5's FP8 release at `layers` of its layers, and its headers (the same tensors, fewer): attention
    and expert weights F8_E4M3 with one F32 weight_scale_inv per 128 x 128 block, the router (modules_to_not_convert)
    in F32, norms, embedding and lm_head BF16."""
    spec = model_from_hf_config({**load(), "num_hidden_layers": layers, "attn_type_list": [1] * layers})
    tensors: list[HeaderTensor] = []
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                if entry.role in ("attention", "expert"):
                    rows, columns = entry.shape
                    tensors.append(HeaderTensor(name, "F8_E4M3", entry.shape, entry.elements))
                    blocks = (-(-rows // 128), -(-columns // 128))
                    tensors.append(HeaderTensor(f"{name}_scale_inv", "F32", blocks, 4 * blocks[0] * blocks[1]))
                elif entry.role == "router":  # the gate and its bias in F32, the dtype vLLM holds them in
                    tensors.append(HeaderTensor(name, "F32", entry.shape, 4 * entry.elements))
                else:
                    tensors.append(HeaderTensor(name, "BF16", entry.shape, 2 * entry.elements))
    return spec, tensors


def test_an_fp8_minimax_m2_checkpoint_is_planned_at_its_stored_bytes() -> None:
    # the planner's rows from the FP8 release's headers are their stored bytes, to the byte
    from quant_core.checkpoint_rows import checkpoint_scheme
    spec, tensors = fp8_release_headers()
    scheme, summary = checkpoint_scheme(spec, tensors)
    assert summary.unknown == () and summary.format == "fp8-block128"
    # 3 layers x (4 attention + 3 x 256 expert) weight_scale_inv tensors: 62 x 772 = 47,864 in the full release
    assert sum(tensor.name.endswith("weight_scale_inv") for tensor in tensors) == 3 * (4 + 3 * EXPERTS)
    assert summary.bytes == scheme_bytes(spec, scheme) == sum(tensor.bytes for tensor in tensors)


def test_vllm_refuses_the_fp8_release_where_its_experts_do_not_split_into_whole_blocks() -> None:
    # fp8.py's Fp8MoEMethod.create_weights: FusedMoE's intermediate_size_per_partition must be a multiple of the
    # 128-wide weight block.  MiniMax-M2's 1536-wide experts: 768 at TP 2 and 384 at TP 4 are, 192 at TP 8 is not
    # ("ValueError: output_size of gate's and up's weight = 192 is not divisible by weight quantization block_n =
    # 128", MiniMax-M2.7 on vLLM 0.19.0 at TP 8; fixed there with --enable-expert-parallel).  bf16 and int4 split
    # at TP 8 as before
    from quant_core.engines.vllm import VllmProfile
    spec = spec_of()
    scheme = scheme_from_quantization_config(load()["quantization_config"])
    assert scheme.label() == "fp8-block128"
    assert [size for size in (1, 2, 4, 8, 16, 24, 48)
            if VllmProfile().format_refusal(spec, scheme.label(), size) is None] == [1, 2, 4]
    assert "192" in (VllmProfile().format_refusal(spec, "fp8-block128", 8) or "")
    assert VllmProfile().format_refusal(spec, "checkpoint-fp8-block128", 8) is not None  # read from headers
    assert VllmProfile().format_refusal(spec, "bf16", 8) is None
    h100 = 80 * GIB
    refused = plan(spec, Hardware(h100, 8), Workload(8192, 1), PlanOptions(scheme=scheme))
    assert not refused.primary.fits and "expert-parallel" in (refused.primary.refusal or "")
    # the fewest devices skip the refused sizes: four 80 GiB devices hold the 230 GB release (the recipe's TP 4);
    # bf16's fewest are not limited by it, and int4 at TP 8 is planned as before
    assert refused.primary.min_devices == 4
    assert refused.comparison["bf16"].min_devices == 8
    assert plan(spec, Hardware(h100, 8), Workload(8192, 1)).comparison["int4"].refusal is None


def test_at_tensor_parallel_16_each_device_holds_one_whole_key_value_head() -> None:
    # Past the 8 KV heads, vLLM's QKVParallelLinear gives each of 16 ranks one whole key and one whole value head
    # (128 rows of k_proj and of v_proj, each head held by two ranks), and the key norm is sharded by KV head
    # (weight_shard_world_size = 8: 128 weights); the query norm and q/o projections split 16 ways.  bf16, by hand
    from quant_core.formats import float_format
    spec = spec_of()
    tp = 16
    device = plan(spec, Hardware(80 * GIB, tp), Workload(8192, 1),
                  PlanOptions(weight_format=float_format("bf16")))
    vocabulary = 2 * VOCAB * HIDDEN * 2 // tp
    query_output = LAYERS * 2 * HEADS * HEAD_DIM * HIDDEN * 2 // tp
    key_value = LAYERS * 2 * HEAD_DIM * HIDDEN * 2  # one head of k_proj and one of v_proj per layer
    experts = LAYERS * EXPERTS * 3 * HIDDEN * WIDTH * 2 // tp
    routers = LAYERS * EXPERTS * (HIDDEN + 1) * 4
    norms = (LAYERS * 2 * HIDDEN + HIDDEN) * 2 + LAYERS * (HEADS * HEAD_DIM // tp + KV_HEADS * HEAD_DIM // 8) * 2
    assert device.primary.devices[0].weights_bytes == \
        vocabulary + query_output + key_value + experts + routers + norms


def test_minimax_m2_active_parameters_are_the_published_9_8_billion_without_the_vocabulary() -> None:
    # Sanity, against rounded published figures: "230 billion total parameters with 10 billion active parameters"
    # (sgl-project/sglang's docs/basic_usage/minimax_m2.md) and "9.8B 激活", 9.8B active, for M2.7's identical
    # architecture (https://pillumina.github.io/posts/architecture/).  Per token: attention, norms, the router and
    # 8 of 256 experts in each of 62 layers, plus the embedding row and the lm_head: 11,030,553,088; without those
    # two vocabulary matrices, 9.80B
    counts = parameter_count(spec_of())
    assert counts.active_per_token == 11_030_553_088
    assert round((counts.active_per_token - counts.embedding - counts.lm_head) / 1e9, 1) == 9.8


def test_a_config_of_another_type_with_minimax_m2s_class_is_read_as_minimax_m2() -> None:
    # vLLM loads the class its registry has for ``architectures``: a fine-tune renaming model_type keeps
    # MiniMaxM2ForCausalLM, and nibble reads it as minimax_m2 (architecture_family)
    spec = model_from_hf_config({**load(), "model_type": "minimax_m2_finetune"})
    assert spec.model_type == "minimax_m2" and parameter_count(spec).total == 228_689_764_864


def test_no_fewest_devices_is_given_for_a_release_that_cannot_load_the_model() -> None:
    # vLLM 0.11 has no minimax_m2.py (MODEL_TYPES_SINCE): every layout is refused, so no device count runs it; the
    # fewest devices said 4 (8 x B200 at bf16 and int4 fit in memory), a count whose plan is refused as well
    b200 = get_device("b200")
    result = plan(get_preset("minimax-m2.5"), Hardware(b200.planning_bytes, 8, b200.id),
                  Workload(8192, 1), PlanOptions(engine_version="0.11"))
    assert "cannot load a minimax_m2 model" in (result.primary.refusal or "")
    assert {name: answer.min_devices for name, answer in result.comparison.items()} == {
        name: None for name in result.comparison}
    assert plan(get_preset("minimax-m2.5"), Hardware(b200.planning_bytes, 8, b200.id), Workload(8192, 1),
                PlanOptions(engine_version="0.19")).primary.min_devices is not None
