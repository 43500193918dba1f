"""DeepSeek-V3.2 (``deepseek_v32``, DeepSeek Sparse Attention): planned as transformers builds it and vLLM loads it.

The config is the published one (tests/quant_core/data/deepseek_v32/, its source in README.md).  Exact counts come
from transformers itself (the model built on the meta device) and from the checkpoint's own tensor listing; the KV
cache from vLLM's code (v0.11.0 and v0.19.0 wheels: vllm/model_executor/models/deepseek_v2.py's Indexer and
DeepseekV32IndexerCache, vllm/v1/kv_cache_interface.py's MLAAttentionSpec and UniformTypeKVCacheSpecs,
vllm/v1/core/kv_cache_utils.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile
from quant_core.errors import InvalidSpec, MissingConfigKey
from quant_core.globs import compile_glob
from quant_core.hf_config import architecture_family, model_from_hf_config, unread_config_keys
from quant_core.inventory import inventory, parameter_count
from quant_core.kv_cache import kv_bytes_per_token, kv_cache_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import assigned_bytes, gguf_scheme, scheme_from_quantization_config
from quant_core.specs import ModelSpec
from quant_core.tensorio._export_common import UNQUANTIZED_NAME_GLOBS

DATA = Path(__file__).resolve().parent / "data" / "deepseek_v32"
GIB = 1 << 30
INDEXER = "model.layers.{i}.self_attn.indexer"


def load() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((DATA / "DeepSeek-V3.2.json").read_text())
    return config


def spec_of(config: dict[str, Any] | None = None) -> ModelSpec:
    return model_from_hf_config(load() if config is None else config, name="DeepSeek-V3.2")


def transformers_count(config: dict[str, Any]) -> tuple[int, int, set[str]]:
    """Parameters, router-bias buffer elements and state-dict names of the model transformers builds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    keys = {key: value for key, value in config.items() if key != "quantization_config"}
    hf_config = transformers.AutoConfig.for_model(**keys)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert type(model).__name__ == "DeepseekV32ForCausalLM"
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for name, buffer in model.named_buffers() if name.endswith("e_score_correction_bias"))
    return parameters, buffers, set(model.state_dict())


def test_deepseek_v32_counts_what_transformers_builds_plus_the_router_bias() -> None:
    # transformers 5.23's DeepseekV32ForCausalLM for DeepSeek-V3.2's config on the meta device: 671,877,929,216
    # parameters and 58 MoE layers x 256 router-bias values (a persistent buffer, in the checkpoint)
    built, buffers, _ = transformers_count(load())
    assert (built, buffers) == (671_877_929_216, 58 * 256)
    counts = parameter_count(spec_of())
    assert counts.total == 671_877_944_064 == built + buffers
    # the indexer's share: 61 layers x (wq_b 8192 x 1536 + wk 128 x 7168 + k_norm 2 x 128 + weights_proj 64 x 7168)
    indexer = sum(entry.total_elements for entry in inventory(spec_of()) if ".indexer." in entry.name)
    assert indexer == 61 * (8192 * 1536 + 128 * 7168 + 2 * 128 + 64 * 7168) == 851_524_864


def test_deepseek_v32_tensor_names_are_the_checkpoints_own() -> None:
    # every non-expert tensor nibble lists is one transformers' state dict holds, by the same name, and no other; the
    # checkpoint stores routed experts per expert (mlp.experts.{e}.gate_proj.weight, ...), transformers 5 fuses them
    spec = spec_of()
    _, _, state = transformers_count(load())
    ours = set()
    for entry in inventory(spec):
        if entry.active_per_layer is not None:
            continue
        for layer in entry.layers or (-1,):
            ours.add(entry.name.replace("{i}", str(layer)))
    assert ours == {key for key in state if ".mlp.experts." not in key}


def test_deepseek_v32_plus_its_mtp_layer_and_fp8_scales_is_the_published_checkpoint() -> None:
    # The deepseek-ai/DeepSeek-V3.2 checkpoint (163 safetensors files) holds 685,396,921,376 elements in 92,425
    # tensors (a public tensor listing of it: README.md in tests/quant_core/data/deepseek_v32/).  That is the 61
    # layers nibble plans, plus the MTP layer 61 (one more MoE layer with its indexer, its own embed_tokens and
    # shared_head.head [129280, 7168], eh_proj [7168, 14336], enorm, hnorm and shared_head.norm), plus one fp32
    # weight_scale_inv per 128 x 128 block of every fp8 linear weight (attention, indexer wq_b / wk, MLPs, experts)
    spec = spec_of()
    rows = inventory(spec)

    def blocks(shape: tuple[int, ...]) -> int:
        return -(-shape[0] // 128) * -(-shape[1] // 128)

    fp8 = [entry for entry in rows if entry.role in ("attention", "mlp", "expert")]
    one_layer = sum(entry.elements * entry.per_layer for entry in rows if 60 in entry.layers)
    one_layer_scales = sum(blocks(entry.shape) * entry.per_layer for entry in fp8 if 60 in entry.layers)
    mtp = one_layer + one_layer_scales + 2 * 129280 * 7168 + 7168 * 14336 + 3 * 7168
    scales = sum(blocks(entry.shape) * entry.count for entry in fp8)
    assert parameter_count(spec).total + scales + mtp == 685_396_921_376


def test_deepseek_v32_indexer_tensors_shapes_and_roles() -> None:
    rows = {entry.name: entry for entry in inventory(spec_of())}
    assert (rows[f"{INDEXER}.wq_b.weight"].shape, rows[f"{INDEXER}.wq_b.weight"].role) == ((8192, 1536), "attention")
    assert (rows[f"{INDEXER}.wk.weight"].shape, rows[f"{INDEXER}.wk.weight"].role) == ((128, 7168), "attention")
    assert (rows[f"{INDEXER}.k_norm.weight"].role, rows[f"{INDEXER}.k_norm.bias"].role) == ("norm", "bias")
    # weights_proj: built with quant_config=None by vLLM, bf16 in the fp8 checkpoint: never quantized
    assert (rows[f"{INDEXER}.weights_proj.weight"].shape, rows[f"{INDEXER}.weights_proj.weight"].role) == \
        ((64, 7168), "other")
    assert all(len(entry.layers) == 61 for name, entry in rows.items() if ".indexer." in name)


def test_deepseek_v32_as_shipped_keeps_the_indexers_fp8_and_bf16_tensors_as_the_checkpoint() -> None:
    # the checkpoint's listing: indexer.wq_b [8192, 1536] float8_e4m3fn + weight_scale_inv [64, 12] float32,
    # indexer.wk [128, 7168] float8_e4m3fn + [1, 56] float32, indexer.weights_proj [64, 7168] bfloat16
    spec = spec_of()
    scheme = scheme_from_quantization_config(load()["quantization_config"])
    sizes = {entry.name: size for entry, size in assigned_bytes(spec, scheme)}
    assert sizes[f"{INDEXER}.wq_b.weight"] == 8192 * 1536 + 64 * 12 * 4
    assert sizes[f"{INDEXER}.wk.weight"] == 128 * 7168 + 1 * 56 * 4
    assert sizes[f"{INDEXER}.weights_proj.weight"] == 64 * 7168 * 2


def test_deepseek_v32_is_never_read_as_deepseek_v3_without_its_indexer() -> None:
    # An unknown model_type whose class is DeepseekV32ForCausalLM is the family vLLM's registry loads
    # (DeepseekV3ForCausalLM with the indexer, as its config has index_topk): the indexer is planned
    config = {**load(), "model_type": "deepseek_v32_fork"}
    assert architecture_family(config) == "deepseek_v32"
    spec = model_from_hf_config(config)
    assert spec.model_type == "deepseek_v32" and spec.has_indexer
    assert (spec.index_n_heads, spec.index_head_dim, spec.index_topk) == (64, 128, 2048)
    assert parameter_count(spec).total == parameter_count(spec_of()).total


def test_deepseek_v32_unread_keys_are_mla_kv_heads_and_the_mtp_layer() -> None:
    assert unread_config_keys(load()) == ("num_key_value_heads", "num_nextn_predict_layers")


def test_deepseek_v32_absent_indexer_keys_take_deepseekv32configs_defaults() -> None:
    config = {key: value for key, value in load().items() if not key.startswith("index_")}
    built, buffers, _ = transformers_count(config)
    assert parameter_count(spec_of(config)).total == built + buffers
    with pytest.raises(MissingConfigKey) as caught:
        model_from_hf_config({**load(), "q_lora_rank": None})
    assert caught.value.field == "q_lora_rank"  # the indexer's wq_b reads the query latent
    with pytest.raises(InvalidSpec) as invalid:
        model_from_hf_config({**load(), "index_n_heads": 0})
    assert invalid.value.field == "index_n_heads"


def test_deepseek_v32_kv_cache_is_the_mla_latent_plus_the_indexer_key() -> None:
    # per layer and token, on every tensor-parallel rank (both replicated): the latent 512 + 64 at bf16 (1,152
    # bytes) or in DeepSeek's fp8_ds_mla layout (512 fp8 + 4 fp32 scales + 64 bf16 = 656 bytes,
    # flashmla_sparse.py), plus the indexer key cache: 128 fp8 + one fp32 scale = 132 bytes (uint8,
    # head_dim + head_dim // 128 * 4 in deepseek_v2.py's Indexer)
    spec = spec_of()
    assert kv_bytes_per_token(spec, "bf16") == 61 * (1152 + 132) == 78_324
    assert kv_bytes_per_token(spec, "fp8") == 61 * (656 + 132) == 48_068
    assert kv_bytes_per_token(spec, "fp8", tensor_parallel=8) == 48_068
    assert kv_cache_bytes(spec, "fp8", context_length=1000, sequences=2, block_size=64) == 48_068 * 1024 * 2
    # plain DeepSeek-V3 MLA with the same latent caches 576 bytes at fp8: the indexer and the scales are the rest
    assert kv_bytes_per_token(replace(spec, index_n_heads=0, index_head_dim=0, index_topk=0), "fp8") == 61 * 576
    for dtype in ("int8", "int4"):
        with pytest.raises(InvalidSpec) as caught:
            kv_bytes_per_token(spec, dtype)
        assert caught.value.field == "kv_cache.dtype"


@pytest.mark.parametrize("version", ["0.11", "0.19"])
@pytest.mark.parametrize(("dtype", "per_token"), [("fp8", 48_068), ("bf16", 78_324)])
def test_vllm_kv_capacity_is_one_group_of_every_layers_latent_and_indexer_pages(
        version: str, dtype: str, per_token: int) -> None:
    # get_kv_cache_groups: the MLA and indexer specs are MLAAttentionSpecs of two page sizes, so
    # UniformTypeKVCacheSpecs puts all 122 in one group whose page is the sum of theirs (64 tokens per block:
    # the FlashMLA sparse backend's block size); num_blocks = available // page; "GPU KV cache size" =
    # num_blocks // 1 group x 64
    spec = spec_of()
    available = 40 * GIB
    stage = Stage(spec, 8, 1, (0, 61), True)
    capacity = VllmProfile(version).kv_capacity(stage, dtype, available, 64, 163_840, BatchLimits(8192, 1024))
    page = 64 * per_token
    assert capacity.num_blocks == available // page
    assert capacity.tokens == available // page * 64
    # 40 GiB // (64 x 48,068) = 13,961 blocks at fp8, // (64 x 78,324) = 8,568 at bf16
    assert capacity.tokens == (13_961 * 64 if dtype == "fp8" else 8_568 * 64)
    assert capacity.max_concurrency == pytest.approx(capacity.num_blocks / (163_840 // 64))


def test_vllm_0_33s_sparse_attention_cache_is_refused_naming_the_engine_version() -> None:
    # vLLM 0.33 gives the indexer cache its own role (SparseCacheRole.INDEXER) and grouping rules: not modelled
    spec = spec_of()
    with pytest.raises(InvalidSpec) as caught:
        VllmProfile("0.33").kv_capacity(Stage(spec, 8, 1, (0, 61), True), "fp8", 40 * GIB, 64, 163_840,
                                        BatchLimits(8192, 1024))
    assert caught.value.field == "runtime.engine_version"
    with pytest.raises(InvalidSpec):
        plan(spec, Hardware(141 * GIB, 8), Workload(4096, 1), PlanOptions(engine_version="0.33"))


@pytest.mark.parametrize(("version", "logits_dummy"), [("0.11", 0), ("0.19", 512 << 20)])
def test_vllm_counts_the_top_k_indices_buffer_and_the_indexers_profiling_dummy(version: str,
                                                                              logits_dummy: int) -> None:
    # deepseek_v2.py, DeepseekV2Model.__init__: torch.empty(max_num_batched_tokens, index_topk, dtype=torch.int32),
    # 8192 x 2048 x 4 = 64 MiB; v0.19's sparse_attn_indexer.py allocates VLLM_SPARSE_INDEXER_MAX_LOGITS_MB (512) in
    # the profiling run's forward pass.  The first of two pipeline stages runs no sampler: the forward pass is its peak
    spec = spec_of()
    without = replace(spec, index_n_heads=0, index_head_dim=0, index_topk=0)
    stage, limits = Stage(spec, 8, 2, (0, 31), False), BatchLimits(8192, 1024)
    profile = VllmProfile(version)
    extra = profile.activation(stage, limits).bytes - profile.activation(replace(stage, spec=without), limits).bytes
    assert extra == 8192 * 2048 * 4 + logits_dummy


def test_vllm_holds_the_indexer_whole_on_every_tensor_parallel_rank() -> None:
    # deepseek_v2.py's Indexer: wq_b, wk and weights_proj are ReplicatedLinear ("no tensor parallel, just
    # replicated"); k_norm a LayerNorm: at bf16, a rank holds all of them, and a 1/8 share of the rest
    spec = spec_of()
    one_rank = plan(spec, Hardware(141 * GIB, 8), Workload(4096, 1)).comparison["bf16"].devices[0]
    plain = replace(spec, index_n_heads=0, index_head_dim=0, index_topk=0)
    plain_rank = plan(plain, Hardware(141 * GIB, 8), Workload(4096, 1)).comparison["bf16"].devices[0]
    indexer_bytes = 2 * 61 * (8192 * 1536 + 128 * 7168 + 2 * 128 + 64 * 7168)
    assert one_rank.weights_bytes - plain_rank.weights_bytes == indexer_bytes


def test_deepseek_v32_gguf_formats_are_refused_naming_the_format() -> None:
    # llama.cpp has the deepseek32 arch, but its converter keeps the MTP layer as an extra block and no
    # llama-quantize run of it is recorded: refused, not guessed
    with pytest.raises(InvalidSpec) as caught:
        plan(spec_of(), Hardware(141 * GIB, 8), Workload(4096, 1), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))
    assert caught.value.field == "format" and "deepseek32" in str(caught.value)


@pytest.mark.parametrize(("name", "passed_through"), [
    ("model.layers.5.self_attn.indexer.weights_proj.weight", True),  # vLLM: quant_config=None
    ("model.layers.5.self_attn.indexer.k_norm.weight", True),
    ("model.layers.5.self_attn.indexer.k_norm.bias", True),
    ("model.layers.5.self_attn.indexer.wq_b.weight", False),  # vLLM quantizes these with the model's quant_config
    ("model.layers.5.self_attn.indexer.wk.weight", False),
    ("model.layers.5.mlp.gate.weight", True),
])
def test_quantize_jobs_pass_the_indexers_unquantized_tensors_through_by_default(name: str,
                                                                                passed_through: bool) -> None:
    assert any(compile_glob(pattern).matches(name) for pattern in UNQUANTIZED_NAME_GLOBS) is passed_through


def test_the_deepseek_v32_preset_is_its_parsed_config_with_one_mtp_layer() -> None:
    from quant_core.catalog import get_preset_info
    info = get_preset_info("deepseek-v3.2")
    assert info.spec == model_from_hf_config(load(), name="deepseek-v3.2")
    assert info.mtp_layers == load()["num_nextn_predict_layers"] == 1
    assert info.quantization_config == load()["quantization_config"]


def test_deepseek_v32_as_shipped_plus_its_mtp_layer_is_the_checkpoints_tensor_bytes() -> None:
    # The public listing of deepseek-ai/DeepSeek-V3.2's tensors sums them to "642.12 GB" (GiB: its 163 files are
    # "642.13 GB" with their headers), a rounded figure: a sanity bound.  The plan's fp8 blocks with their fp32
    # scales, bf16 embedding / lm_head / routers / weights_proj, plus the MTP layer (one more MoE layer, its bf16
    # embed_tokens, shared_head.head and eh_proj and three norms) come to 642.118 GiB; the checkpoint keeps its norms
    # in fp32 (about 2 MB more)
    from quant_core.catalog import get_preset_info
    from quant_core.schemes import scheme_bytes
    preset = get_preset_info("deepseek-v3.2")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    assert scheme.label() == "fp8-block128"
    planned = scheme_bytes(preset.spec, scheme)
    assert planned == 674_030_307_520
    one_layer = sum(size * entry.per_layer for entry, size in assigned_bytes(preset.spec, scheme) if 60 in entry.layers)
    mtp = one_layer + 2 * 129280 * 7168 * 2 + 7168 * 14336 * 2 + 3 * 7168 * 2
    assert abs(planned + mtp - 642.12 * GIB) <= 0.005 * GIB


def test_deepseek_v32_fits_on_8_h200_as_shipped_at_fp8_with_a_vllm_kv_capacity() -> None:
    # H200: nvidia-smi reports 143771 MiB; vLLM 0.19 on 8 ranks, fp8 KV (fp8_ds_mla), 64-token blocks
    from quant_core.catalog import get_preset_info
    preset = get_preset_info("deepseek-v3.2")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    result = plan(preset.spec, Hardware(143_771 * 2**20, 8), Workload(32_768, 4),
                  PlanOptions(scheme=scheme, kv_cache_dtype="fp8", block_size=64))
    assert result.fits and not result.comparison["bf16"].fits
    assert result.kv_bytes_per_token == 48_068
    pool = result.primary.kv_pool_bytes
    assert result.primary.kv_capacity_tokens == pool // (64 * 48_068) * 64


TINY = {"hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64, "num_attention_heads": 2,
        "num_key_value_heads": 2, "q_lora_rank": 64, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 32, "v_head_dim": 32, "index_n_heads": 2, "index_head_dim": 64, "index_topk": 16,
        "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "n_group": 1, "topk_group": 1, "vocab_size": 96, "max_position_embeddings": 256}


@pytest.mark.parametrize("output", ["compressed-tensors", "gptq"])
def test_a_job_quantizes_what_vllm_quantizes_and_passes_the_indexers_weighting_through(tmp_path: Path,
                                                                                       output: str) -> None:
    # A tiny random DeepSeek-V3.2 saved by transformers (one dense layer, one MoE layer of 4 experts + a shared one,
    # an indexer in each), through a job with the default include/exclude: indexer.weights_proj (vLLM: quant_config
    # None), indexer.k_norm, the router and its bias pass through and are listed as unquantized modules; the
    # indexer's wq_b and wk are quantized with the attention, as vLLM's ReplicatedLinear(quant_config=...) loads them
    pytest.importorskip("torch")
    from quant_core.checkpoint.output import quantize_checkpoint
    from quant_core.tensorio.safetensors_io import read_safetensors
    from tests.quant_core.meta_models import output_tensors, planned_job, saved_by_transformers

    config = {key: value for key, value in load().items() if key != "quantization_config"}
    source = saved_by_transformers(tmp_path / "tiny", "DeepseekV32Config", "DeepseekV32ForCausalLM",
                                   {**config, **TINY})
    checkpoint, options, plans, reasons = planned_job(source, output)
    passed = {name for name, reason in reasons.items() if reason}
    quantized = {name for name, reason in reasons.items() if not reason}
    for layer in (0, 1):
        indexer = f"model.layers.{layer}.self_attn.indexer"
        assert {f"{indexer}.weights_proj.weight", f"{indexer}.k_norm.weight", f"{indexer}.k_norm.bias"} <= passed
        assert {f"{indexer}.wq_b.weight", f"{indexer}.wk.weight"} <= quantized
    assert {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias"} <= passed
    assert {"model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.self_attn.kv_b_proj.weight"} <= quantized
    quantize_checkpoint(checkpoint, plans, options, tmp_path / "out", tmp_path / "parts")
    # the output stores the pass-through tensors as they were and the indexer's projections packed
    stored = output_tensors(tmp_path / "out")
    original = read_safetensors(source / "model.safetensors")
    for name in ("model.layers.0.self_attn.indexer.weights_proj.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.self_attn.indexer.k_norm.bias"):
        assert stored[name].tobytes() == original[name].tobytes()
    assert "model.layers.0.self_attn.indexer.wq_b.weight" not in stored
    assert any(name.startswith("model.layers.0.self_attn.indexer.wq_b.") for name in stored)
    # nibble plans the tiny checkpoint's own tensors as the spec's inventory: the same names
    spec = model_from_hf_config({**config, **TINY})
    names = set()
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer if entry.active_per_layer is not None else 1):
                names.add(entry.name.replace("{i}", str(layer)).replace("{e}", str(expert)))
    assert names == set(reasons)


def _fp8_checkpoint_headers(config: dict[str, Any]) -> tuple[list[Any], int]:
    """The headers of a DeepSeek-V3.2 checkpoint as its listing shows them: fp8 e4m3 linear weights (attention,
    indexer wq_b / wk, MLPs, experts) each with a float32 weight_scale_inv of one value per 128 x 128 block, float32
    norms, k_norm bias and router bias, bf16 embedding, lm_head, routers and indexer weights_proj; then the MTP layer
    (``model.layers.{num_hidden_layers}``: one more MoE layer, its bf16 eh_proj, embed_tokens, shared_head.head and
    float32 enorm, hnorm, shared_head.norm).  Also the bytes of the model's own layers."""
    import re

    from quant_core.tensorio.checkpoint_headers import HeaderTensor
    spec = model_from_hf_config(config)
    layers, hidden, vocab = spec.num_layers, spec.hidden_size, spec.vocab_size
    tensors: list[HeaderTensor] = []
    planned = 0

    def add(name: str, dtype: str, shape: tuple[int, ...], mtp: bool) -> int:
        size = {"F8_E4M3": 1, "BF16": 2, "F32": 4}[dtype]
        elements = 1
        for dim in shape:
            elements *= dim
        tensors.append(HeaderTensor(name, dtype, shape, size * elements))
        if mtp:
            tensors.append(HeaderTensor(re.sub(r"^model\.layers\.\d+\.", f"model.layers.{layers}.", name), dtype,
                                        shape, size * elements))
        return size * elements

    for entry in inventory(spec):
        fp8 = entry.role in ("attention", "mlp", "expert")
        dtype = "F8_E4M3" if fp8 else "F32" if entry.role in ("norm", "bias") or "correction" in entry.name \
            else "BF16"
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                planned += add(name, dtype, entry.shape, layer == layers - 1)
                if fp8:
                    scales = (-(-entry.shape[0] // 128), -(-entry.shape[1] // 128))
                    planned += add(name + "_scale_inv", "F32", scales, layer == layers - 1)
    for name, dtype, shape in (("enorm.weight", "F32", (hidden,)), ("hnorm.weight", "F32", (hidden,)),
                               ("eh_proj.weight", "BF16", (hidden, 2 * hidden)),
                               ("embed_tokens.weight", "BF16", (vocab, hidden)),
                               ("shared_head.norm.weight", "F32", (hidden,)),
                               ("shared_head.head.weight", "BF16", (vocab, hidden))):
        add(f"model.layers.{layers}.{name}", dtype, shape, False)
    return tensors, planned


def test_a_deepseek_v32_checkpoints_headers_are_planned_and_its_mtp_layer_set_apart() -> None:
    # the published tensors (names, shapes, dtypes of the listing) for 4 of the 61 layers: every tensor belongs to a
    # module of the model (the indexer's and its fp8 scales included) and the MTP layer is set apart
    from quant_core.checkpoint_rows import checkpoint_scheme
    config = {**load(), "num_hidden_layers": 4}
    spec = model_from_hf_config(config)
    tensors, planned = _fp8_checkpoint_headers(config)
    scheme, summary = checkpoint_scheme(spec, tensors, mtp_layers=1)
    assert summary.unknown == () and summary.bytes == planned
    assert summary.mtp_bytes == sum(tensor.bytes for tensor in tensors) - planned
    weights = plan(spec, Hardware(141 * GIB, 8), Workload(4096, 1), PlanOptions(scheme=scheme)).primary
    assert weights.weights_bytes == planned


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_vllm_plans_sparse_attention_at_its_64_token_block_whatever_the_default_request(version: str) -> None:
    # v0.11 platforms/cuda.py forces cache_config.block_size = 64 "for FlashMLASparse backend"; v0.19's
    # FlashMLASparseBackend.get_supported_kernel_block_sizes() is [64] and platforms/interface.py's
    # update_block_size_for_backend sets it when --block-size is not given: the API's default 16 is planned at 64
    spec = spec_of()
    hardware, workload = Hardware(143_771 * 2**20, 8), Workload(32_768, 4)
    default = plan(spec, hardware, workload, PlanOptions(kv_cache_dtype="fp8", engine_version=version))
    at_64 = plan(spec, hardware, workload, PlanOptions(kv_cache_dtype="fp8", engine_version=version, block_size=64))
    assert default.options.block_size == 64
    assert default.primary.kv_capacity_tokens == at_64.primary.kv_capacity_tokens
    assert default.primary.kv_capacity_tokens % 64 == 0
    assert default.primary.kv_capacity_tokens == default.primary.kv_pool_bytes // (64 * 48_068) * 64
    assert default.primary.max_context_length == at_64.primary.max_context_length
    assert any("64-token KV blocks, not the requested 16" in note for note in default.warnings)
    assert not any("64-token KV blocks" in note for note in at_64.warnings)


def test_vllm_0_11_forces_64_token_blocks_and_0_19_keeps_a_multiple_of_64() -> None:
    spec = spec_of()
    hardware, workload = Hardware(143_771 * 2**20, 8), Workload(32_768, 4)
    old = plan(spec, hardware, workload, PlanOptions(kv_cache_dtype="fp8", engine_version="0.11", block_size=128))
    assert old.options.block_size == 64
    kept = plan(spec, hardware, workload, PlanOptions(kv_cache_dtype="fp8", engine_version="0.19", block_size=128))
    assert kept.options.block_size == 128
    assert kept.primary.kv_capacity_tokens == kept.primary.kv_pool_bytes // (128 * 48_068) * 128


@pytest.mark.parametrize("block_size", [8, 32, 48, 96])
def test_vllm_0_19_refuses_an_explicit_sparse_attention_block_that_is_not_a_multiple_of_64(block_size: int) -> None:
    # AttentionBackend.supports_block_size: block_size % 64 for FlashMLASparseBackend, else "No valid attention
    # backend found"
    with pytest.raises(InvalidSpec) as caught:
        plan(spec_of(), Hardware(143_771 * 2**20, 8), Workload(32_768, 4),
             PlanOptions(kv_cache_dtype="fp8", engine_version="0.19", block_size=block_size))
    assert caught.value.field == "kv_cache.block_size"


def test_the_generic_engine_plans_sparse_attention_at_the_requested_block() -> None:
    result = plan(spec_of(), Hardware(143_771 * 2**20, 8), Workload(32_768, 4),
                  PlanOptions(kv_cache_dtype="fp8", engine="generic"))
    assert result.options.block_size == 16
