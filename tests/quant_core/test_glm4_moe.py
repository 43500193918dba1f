"""GLM-4.5 / 4.6 / 4.5-Air (``glm4_moe``): planned as transformers builds them and vLLM loads them.

The configs are the published ones (tests/quant_core/data/glm4_moe/, sources in its README.md).  The exact
counts come from transformers itself: the model each config describes, built on the meta device (no memory),
its parameters plus the router's ``e_score_correction_bias`` (a persistent buffer, so in every checkpoint).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.errors import InvalidSpec, MissingConfigKey
from quant_core.hf_config import model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count, weight_bytes
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import HeaderTensor

DATA = Path(__file__).resolve().parent / "data" / "glm4_moe"
GIB = 1 << 30


def load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return config


def spec_of(name: str) -> ModelSpec:
    return model_from_hf_config(load(name), name=name)


def transformers_count(config: dict[str, Any]) -> tuple[int, int, set[str]]:
    """Parameters, router-bias buffer elements and state-dict names of the model transformers builds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for name, buffer in model.named_buffers() if name.endswith("e_score_correction_bias"))
    return parameters, buffers, set(model.state_dict())


@pytest.mark.parametrize(("name", "parameters", "router_bias"), [
    # transformers 5.23's Glm4MoeForCausalLM on the meta device: 352,797,814,784 parameters and 89 MoE layers x 160
    # router-bias values for GLM-4.5 (GLM-4.6 has the same tensors: only its context is longer); 106,852,245,504
    # and 45 x 128 for GLM-4.5-Air.  The published "355B" and "106B" also count the MTP layer, which
    # transformers does not build and vLLM does not load
    ("GLM-4.5", 352_797_814_784, 89 * 160),
    ("GLM-4.6", 352_797_814_784, 89 * 160),
    ("GLM-4.5-Air", 106_852_245_504, 45 * 128),
])
def test_glm_counts_what_transformers_builds_plus_the_router_bias_the_checkpoints_hold(
        name: str, parameters: int, router_bias: int) -> None:
    built, buffers, _ = transformers_count(load(name))
    assert (built, buffers) == (parameters, router_bias)
    counts = parameter_count(spec_of(name))
    assert counts.total == parameters + router_bias
    # the expert elements (transformers 5 fuses each layer's experts into 3-D gate_up_proj / down_proj tensors)
    spec = spec_of(name)
    assert counts.routed_experts == len(spec.moe_layers) * spec.num_experts * 3 * spec.hidden_size * \
        spec.moe_intermediate_size
    assert counts.by_role["router"] == len(spec.moe_layers) * spec.num_experts * (spec.hidden_size + 1)


@pytest.mark.parametrize("name", ["GLM-4.5", "GLM-4.5-Air"])
def test_glm_tensor_names_are_the_checkpoints_own(name: str) -> None:
    # Every non-expert tensor nibble lists is one transformers' state dict holds, by the same name, and no other:
    # the published checkpoints use these names (q/k/v biases, q_norm/k_norm, mlp.gate.e_score_correction_bias,
    # mlp.shared_experts.*); their routed experts are per-expert 2-D tensors (mlp.experts.{e}.gate_proj.weight ...)
    # which transformers 5 loads into fused 3-D parameters
    spec = spec_of(name)
    _, _, state = transformers_count(load(name))
    ours = set()
    for entry in inventory(spec):
        if entry.active_per_layer is not None:  # routed experts
            continue
        for layer in entry.layers or (-1,):
            ours.add(entry.name.replace("{i}", str(layer)))
    assert ours == {key for key in state if ".mlp.experts." not in key}
    experts = {entry.name for entry in inventory(spec) if entry.active_per_layer is not None}
    assert experts == {f"model.layers.{{i}}.mlp.experts.{{e}}.{proj}.weight"
                       for proj in ("gate_proj", "up_proj", "down_proj")}


def test_glm_4_5_reads_its_attention_and_expert_layout() -> None:
    spec = spec_of("GLM-4.5")
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == \
        (92, 5120, 96, 8, 128)  # head_dim 128 is given: 5120 / 96 does not divide
    assert spec.attention_qkv_bias and not spec.attention_output_bias and spec.qk_norm  # o_proj has no bias
    assert spec.dense_layers == (0, 1, 2) and len(spec.moe_layers) == 89
    assert (spec.num_experts, spec.experts_per_token, spec.moe_intermediate_size, spec.num_shared_experts) == \
        (160, 8, 1536, 1)
    assert spec.router_bias and not spec.tie_word_embeddings
    air = spec_of("GLM-4.5-Air")
    assert air.dense_layers == (0,) and not air.qk_norm and air.attention_qkv_bias
    assert spec_of("GLM-4.6").max_position_embeddings == 202_752


def test_glm_unread_keys_are_only_the_mtp_layer() -> None:
    # partial_rotary_factor (0.5: RoPE on half of each head) changes no tensor and no KV size;
    # num_nextn_predict_layers is the MTP layer vLLM skips at load (skip_spec_layers)
    assert unread_config_keys(load("GLM-4.5")) == ("num_nextn_predict_layers",)


def test_glm_absent_keys_take_glm4moeconfigs_defaults_and_missing_expert_sizes_are_refused() -> None:
    config = {key: value for key, value in load("GLM-4.5").items()
              if key not in ("num_key_value_heads", "first_k_dense_replace", "n_shared_experts",
                             "attention_bias", "use_qk_norm")}
    spec = model_from_hf_config(config)
    built, buffers, _ = transformers_count(config)
    assert spec.num_kv_heads == 8 and spec.dense_layers == (0,) and spec.num_shared_experts == 1
    assert parameter_count(spec).total == built + buffers
    for key in ("n_routed_experts", "moe_intermediate_size", "num_experts_per_tok"):
        with pytest.raises(MissingConfigKey) as caught:
            model_from_hf_config({k: v for k, v in load("GLM-4.5").items() if k != key})
        assert caught.value.field == key


def test_glm_kv_cache_is_grouped_query_attention_on_every_layer() -> None:
    # vllm/model_executor/models/glm4_moe.py: Attention(num_heads, head_dim=128, num_kv_heads=8) on every one of
    # the 92 layers, no sliding window; partial rotary changes no cached size: 2 x 92 x 8 x 128 x 2 bytes
    assert kv_bytes_per_token(spec_of("GLM-4.5")) == 376_832
    assert kv_bytes_per_token(spec_of("GLM-4.5-Air")) == 2 * 46 * 8 * 128 * 2 == 188_416
    # tensor parallel 16 replicates the 8 KV heads (one per rank), as vLLM's Glm4MoeAttention does
    assert kv_bytes_per_token(spec_of("GLM-4.5"), tensor_parallel=16) == 2 * 92 * 1 * 128 * 2


def test_glm_bf16_weights_and_the_router_at_16_bits_in_int4() -> None:
    spec = spec_of("GLM-4.5-Air")
    assert weight_bytes(spec, "bf16") == 2 * 106_852_251_264
    int4_plan = plan(spec, Hardware(80 * GIB, 2), Workload(4096, 1))
    assert int4_plan.primary.weights_by_role["router"] == 2 * 45 * 128 * (4096 + 1)  # routers are never quantized


def test_vllm_puts_glms_vocabulary_only_on_the_first_and_last_stage() -> None:
    # glm4_moe.py builds embed_tokens / norm / lm_head behind get_pp_group().is_first_rank / is_last_rank
    # (PPMissingLayer elsewhere), as deepseek_v2.py does: no vocabulary on the middle stages
    from quant_core.engines.vllm import VllmProfile
    assert VllmProfile().vocabulary_on_every_stage(spec_of("GLM-4.5")) is None


def test_vllm_refuses_a_tensor_parallel_size_the_eight_kv_heads_cannot_follow() -> None:
    from quant_core.engines.vllm import VllmProfile
    spec = spec_of("GLM-4.5")
    assert VllmProfile().refusal(spec, 16, 1) is None  # 96 heads split, 8 KV heads replicated twice
    assert "key/value heads" in (VllmProfile().refusal(spec, 12, 1) or "")  # 96 % 12 == 0, but 8 and 12


def test_glm_gguf_formats_are_refused_naming_the_format() -> None:
    # convert_hf_to_gguf.py writes the MTP layer as one more block (GLM-4.5-Air: block_count 47), which nibble's
    # inventory (what vLLM loads) does not hold: refused, not guessed
    spec = spec_of("GLM-4.5-Air")
    with pytest.raises(InvalidSpec) as caught:
        plan(spec, Hardware(80 * GIB, 2), Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format" and "multi-token-prediction" in str(caught.value)


def _bf16_checkpoint(config: dict[str, Any]) -> tuple[list[HeaderTensor], int]:
    """The headers of a bf16 GLM checkpoint: every planned tensor (the router bias in F32, as transformers keeps it,
    ``_keep_in_fp32_modules_strict``) plus the MTP layer (``model.layers.{num_hidden_layers}``: a MoE layer with
    enorm, hnorm, eh_proj, its own embed_tokens and shared_head.norm / shared_head.head, the names vLLM's
    glm4_moe_mtp.py loads and convert_hf_to_gguf.py maps to blk.N.nextn.*); also the planned bytes."""
    spec = model_from_hf_config(config)
    layers, hidden = spec.num_layers, spec.hidden_size
    tensors: list[HeaderTensor] = []
    planned = 0
    for entry in inventory(spec):
        dtype, size = ("F32", 4) if entry.name.endswith("e_score_correction_bias") else ("BF16", 2)
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                tensors.append(HeaderTensor(name, dtype, entry.shape, size * entry.elements))
                planned += size * entry.elements
                if layer == layers - 1:
                    mtp = re.sub(r"^model\.layers\.\d+\.", f"model.layers.{layers}.", name)
                    tensors.append(HeaderTensor(mtp, dtype, entry.shape, size * entry.elements))
    vocab = spec.vocab_size
    for name, shape in (("enorm.weight", (hidden,)), ("hnorm.weight", (hidden,)),
                        ("eh_proj.weight", (hidden, 2 * hidden)), ("embed_tokens.weight", (vocab, hidden)),
                        ("shared_head.norm.weight", (hidden,)), ("shared_head.head.weight", (vocab, hidden))):
        elements = 1
        for dim in shape:
            elements *= dim
        tensors.append(HeaderTensor(f"model.layers.{layers}.{name}", "BF16", shape, 2 * elements))
    return tensors, planned


def test_a_glm_checkpoints_mtp_layer_is_set_apart_and_the_rest_planned() -> None:
    config = {**load("GLM-4.5-Air"), "num_hidden_layers": 3, "first_k_dense_replace": 1}  # same tensors, fewer
    spec = model_from_hf_config(config)
    tensors, planned = _bf16_checkpoint(config)
    _scheme, summary = checkpoint_scheme(spec, tensors, mtp_layers=1)
    assert summary.unknown == () and summary.bytes == planned
    # q/k/v weights and biases and o_proj, 128 x 3 experts, router and its bias, shared expert, two norms, MTP's own
    assert summary.mtp_tensors == 7 + 128 * 3 + 2 + 3 + 2 + 6 == 404
    assert summary.mtp_bytes == sum(t.bytes for t in tensors) - planned


@pytest.mark.parametrize(("preset", "name"), [("glm-4.5", "GLM-4.5"), ("glm-4.5-air", "GLM-4.5-Air"),
                                              ("glm-4.6", "GLM-4.6")])
def test_the_glm_presets_are_their_parsed_configs_with_one_mtp_layer(preset: str, name: str) -> None:
    from quant_core.catalog import get_preset_info
    info = get_preset_info(preset)
    assert info.spec == model_from_hf_config(load(name), name=preset)
    assert info.mtp_layers == load(name)["num_nextn_predict_layers"] == 1
    assert info.quantization_config is None  # the bf16 checkpoints (the -FP8 repositories are other presets' job)


def test_a_glm_checkpoint_job_quantizes_what_vllm_quantizes_and_passes_the_routers_through(tmp_path: Path) -> None:
    # A tiny random GLM (one dense layer, one MoE layer of 4 experts + a shared one, q/k/v biases, q/k norms) with
    # its MTP layer, through a compressed-tensors job with the default include/exclude: the router (mlp.gate, a plain
    # fp32 nn.Linear in vLLM's Glm4MoE, never quantized) and its e_score_correction_bias pass through, as do norms,
    # biases and the embedding / lm_head; the experts, shared experts, attention and dense MLP are quantized
    import ml_dtypes
    import numpy as np

    from quant_core.checkpoint import CheckpointOptions
    from quant_core.checkpoint.output import quantize_checkpoint
    from quant_core.checkpoint.plan import plan_checkpoint
    from quant_core.checkpoint.source import open_checkpoint
    from tests.checkpoints import write_llama_checkpoint

    config = {**load("GLM-4.5"), "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "num_hidden_layers": 2,
              "first_k_dense_replace": 1, "n_routed_experts": 4, "num_experts_per_tok": 2, "vocab_size": 96,
              "pad_token_id": 0, "eos_token_id": 2}
    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {}
    for header in _bf16_checkpoint(config)[0]:
        dtype = np.float32 if header.dtype == "F32" else ml_dtypes.bfloat16
        tensors[header.name] = (rng.standard_normal(header.shape, dtype=np.float32) * 0.05).astype(dtype)
    write_llama_checkpoint(tmp_path / "glm", tensors=tensors)
    (tmp_path / "glm" / "config.json").write_text(json.dumps(config))
    checkpoint, options = open_checkpoint(tmp_path / "glm"), CheckpointOptions()
    plans = plan_checkpoint(checkpoint, options)
    quantized = {p.tensor.name for p in plans if p.quantized}
    passed = {p.tensor.name for p in plans if not p.quantized}
    assert {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
            "model.embed_tokens.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.bias",
            "model.layers.1.self_attn.k_norm.weight"} <= passed
    assert {"model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.1.self_attn.o_proj.weight"} <= quantized
    assert not any(".gate." in name or name.endswith("_bias") for name in quantized)
    # the MTP layer's eh_proj and shared_head.head stay 16-bit (plain nn.Linear / ParallelLMHead in vLLM's
    # glm4_moe_mtp.py), its decoder block is quantized as the others
    assert {"model.layers.2.eh_proj.weight", "model.layers.2.shared_head.head.weight",
            "model.layers.2.embed_tokens.weight"} <= passed
    assert "model.layers.2.mlp.experts.0.gate_proj.weight" in quantized
    # every 2-D linear weight of the model's own layers is quantized, as vLLM's fused MoE needs all of a layer's
    # experts in one scheme
    planned_linears = {name for name in tensors if name.endswith(".weight") and tensors[name].ndim == 2
                       and not name.endswith(("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight",
                                              "eh_proj.weight", "shared_head.head.weight"))}
    assert planned_linears <= quantized
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    written = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    targets = {target for group in written["config_groups"].values() for target in group["targets"]}
    assert targets == {name.removesuffix(".weight") for name in quantized}


def test_glm_4_5s_checkpoint_with_its_mtp_layer_is_the_size_hugging_face_shows() -> None:
    # Sanity, against rounded published figures: Hugging Face's safetensors metadata for zai-org/GLM-4.5 shows
    # "358B" parameters, listed as 358.34B with a 667.5 GB (GiB) download at
    # https://free2aitools.com/model/zai-org/glm-4.5 (and "params 358B" at https://www.onlylabs.fyi/signals/
    # 215ba15c-649f-49a6-b687-455309a9c640).  nibble's 352,797,829,024 planned parameters plus the MTP layer
    # (a MoE layer with its eh_proj, norms, embed_tokens and shared_head.head: 5,539,962,272) make 358,337,791,296;
    # at bf16 with the router bias in F32, 716,675,611,392 bytes = 667.46 GiB.  The exact index total_size was
    # not found in any public source nibble could read.
    tensors, planned = _bf16_checkpoint(load("GLM-4.5"))
    stored = sum(tensor.bytes for tensor in tensors)
    parameters = sum(tensor.bytes // (4 if tensor.dtype == "F32" else 2) for tensor in tensors)
    assert parameters == 358_337_791_296 and round(parameters / 1e9, 2) == 358.34
    assert stored == 716_675_611_392 and round(stored / GIB, 1) == 667.5
    assert planned == 2 * 352_797_829_024 + 2 * 89 * 160  # the router bias at 4 bytes


@pytest.mark.parametrize(("name", "active", "billions"), [("GLM-4.5", 33_632_266_144, 32), ("GLM-4.5-Air",
                                                                                           13_424_129_664, 12)])
def test_glm_active_parameters_are_the_model_cards_without_the_vocabulary(name: str, active: int,
                                                                          billions: int) -> None:
    # Sanity, against rounded published figures: "355 billion total parameters with 32 billion active" and
    # "106 billion total parameters and 12 billion active" (zai-org/GLM-4.5's README, Model Introduction).  Per
    # token: attention, norms, biases, the dense and shared MLPs, the router and 8 routed experts per MoE layer, and
    # the embedding row and lm_head; without those two vocabulary matrices, 32.08B and 12.18B
    counts = parameter_count(spec_of(name))
    assert counts.active_per_token == active
    assert round((active - counts.embedding - counts.lm_head) / 1e9) == billions


@pytest.mark.parametrize("preset", ["glm-4.5", "glm-4.5-air"])
def test_the_fewest_h100s_for_glm_fit_and_one_fewer_does_not(preset: str) -> None:
    # the planner's device solver at its boundary, for the tensor-parallel sizes vLLM accepts for 96 heads and 8
    # KV heads (1, 2, 4, 8, 16, 24, 32, 48, 96: a size must divide 96 and divide 8 or be a multiple of it) and
    # the experts' width (FusedMoE asserts moe_intermediate_size % tp == 0: GLM-4.5-Air's 1,408 refuses 24, 48 and
    # 96, GLM-4.5's 1,536 none) and the vocabulary (151,552 = 2^12 x 37 tokens, divided over the ranks by
    # vocab_parallel_embedding.py: 24, 48 and 96 refused).  At 32K x 4 on H100s: GLM-4.5 needs 16 at bf16 and 4 at
    # INT4, GLM-4.5-Air 4 and 2
    from quant_core.catalog import get_device, get_preset
    from quant_core.formats import float_format, int4
    from quant_core.planner import engine_tensor_parallel_sizes
    h100 = get_device("h100-80gb").memory_bytes
    spec, workload = get_preset(preset), Workload(32768, 4)
    accepted = engine_tensor_parallel_sizes(spec)
    assert accepted == (1, 2, 4, 8, 16, 32)
    result = plan(spec, Hardware(h100, 1), workload)
    assert {key: value.min_devices for key, value in result.comparison.items()} == \
        ({"bf16": 16, "int4": 4} if preset == "glm-4.5" else {"bf16": 4, "int4": 2})
    for key, format_plan in result.comparison.items():
        options = PlanOptions(weight_format=int4() if key == "int4" else float_format(key))
        fewest = format_plan.min_devices
        assert fewest in accepted
        assert plan(spec, Hardware(h100, fewest), workload, options).primary.fits
        fewer = [size for size in accepted if size < fewest]
        assert fewer and not plan(spec, Hardware(h100, fewer[-1]), workload, options).primary.fits


def test_an_fp8_glm_checkpoint_is_planned_at_its_stored_bytes() -> None:
    # FP8 e4m3 linears with one fp32 scale per output channel (compressed-tensors' float-quantized layout; the
    # exact quantization_config of zai-org/GLM-4.5-FP8 could not be read here), the router, its F32 bias, norms,
    # biases and the vocabulary matrices at their own dtypes: the headers' bytes are the plan's, to the byte
    from quant_core.schemes import scheme_bytes
    config = {**load("GLM-4.5-Air"), "num_hidden_layers": 3}
    spec = model_from_hf_config(config)
    tensors: list[HeaderTensor] = []
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                if entry.role in ("attention", "mlp", "expert") and len(entry.shape) == 2:
                    tensors.append(HeaderTensor(name, "F8_E4M3", entry.shape, entry.elements))
                    tensors.append(HeaderTensor(name.replace(".weight", ".weight_scale"), "F32",
                                                (entry.shape[0], 1), 4 * entry.shape[0]))
                elif name.endswith("e_score_correction_bias"):
                    tensors.append(HeaderTensor(name, "F32", entry.shape, 4 * entry.elements))
                else:
                    tensors.append(HeaderTensor(name, "BF16", entry.shape, 2 * entry.elements))
    scheme, summary = checkpoint_scheme(spec, tensors, mtp_layers=1)
    assert summary.format == "fp8" and summary.unknown == () and summary.mtp_tensors == 0
    assert summary.bytes == scheme_bytes(spec, scheme) == sum(tensor.bytes for tensor in tensors) == 7_418_151_424


@pytest.mark.parametrize("weight_format", ["bf16", "int4"])
def test_vllm_holds_glms_routers_in_float32_on_every_rank(weight_format: str) -> None:
    # vllm/model_executor/models/glm4_moe.py (pull requests #22143 and #22203, August 2025, so in every release
    # nibble models): Glm4MoE.gate = nn.Linear(hidden, n_routed_experts, dtype=torch.float32), whole on each rank,
    # and its e_score_correction_bias a float32 Parameter.  GLM-4.5 at TP 8: each device holds the 89 routers at
    # 4 bytes an element, 89 x 160 x (5120 + 1) x 2 = 145,846,080 bytes more than at 16 bits; the generic plan holds
    # the bias at 4 bytes too (vLLM allocates it so in every family that has one: planner ``_FLOAT32_NAMES``), so
    # the engines differ by the gate alone, 89 x 160 x 5120 x 2 = 145,817,600 (145,846,080 before)
    from quant_core.formats import float_format, int4
    spec = spec_of("GLM-4.5")
    chosen = float_format("bf16") if weight_format == "bf16" else int4()
    hardware, workload = Hardware(141 * GIB, 8), Workload(8192, 1)
    vllm = plan(spec, hardware, workload, PlanOptions(weight_format=chosen))
    generic = plan(spec, hardware, workload, PlanOptions(weight_format=chosen, engine="generic"))
    extra = 89 * 160 * 5120 * 2
    assert [device.weights_bytes - other.weights_bytes
            for device, other in zip(vllm.primary.devices, generic.primary.devices, strict=True)] == [extra] * 8
    assert vllm.primary.weights_by_role["router"] == 89 * 160 * (5120 + 1) * 2  # the format's own bytes
    note = next(line for line in vllm.warnings if "float32" in line)
    assert "glm4_moe.py" in note and "0.14 GiB" in note
    # pipeline stages hold the routers of their own layers: 2 stages of 46 layers, 43 and 46 of them MoE
    staged = plan(spec, Hardware(141 * GIB, 16), workload, PlanOptions(weight_format=chosen, pipeline_parallel=2,
                                                                         tensor_parallel=8))
    staged_generic = plan(spec, Hardware(141 * GIB, 16), workload,
                          PlanOptions(weight_format=chosen, pipeline_parallel=2, tensor_parallel=8, engine="generic"))
    first, last = staged.primary.devices[0], staged.primary.devices[-1]
    assert first.weights_bytes - staged_generic.primary.devices[0].weights_bytes == 43 * 160 * 5120 * 2
    assert last.weights_bytes - staged_generic.primary.devices[-1].weights_bytes == 46 * 160 * 5120 * 2


def test_vllm_holds_other_families_routers_as_their_other_weights() -> None:
    from quant_core.catalog import get_preset
    from quant_core.engines.vllm import VllmProfile
    for preset in ("qwen3-30b-a3b", "deepseek-v3", "mixtral-8x7b-v0.1", "gpt-oss-20b"):
        assert VllmProfile().routers_at_fp32(get_preset(preset)) is None
