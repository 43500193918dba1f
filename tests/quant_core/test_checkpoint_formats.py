"""The formats checkpoints ship in: exact bytes per tensor, as-shipped schemes and llama.cpp's mixes.

Golden bytes follow each tool's own tensors (named in `quant_core.formats`); published totals cite
their source: the safetensors index files' ``metadata.total_size`` on Hugging Face.
"""

from __future__ import annotations

import json

import pytest

from quant_core.catalog import get_preset, get_preset_info
from quant_core.errors import GroupSizeMismatch, InvalidSpec
from quant_core.formats import GGML_BLOCKS, block_format, fp8, ggml_format, int4, int8_gptq
from quant_core.gguf_mix import GGUF_FILE_TYPES, ModelFacts, fallback, gguf_rows, use_more_bits
from quant_core.hf_config import model_from_hf_config, model_from_sizes
from quant_core.inventory import inventory
from quant_core.planner import Hardware, PlanOptions, plan
from quant_core.schemes import (
    MAX_KEEP_ENTRIES,
    MAX_KEEP_STEPS,
    assign,
    assigned_bytes,
    gguf_scheme,
    matches,
    module_name,
    scheme_bytes,
    scheme_from_quantization_config,
)
from tests.shared_fixtures import FIXTURES, needs_fixtures

GIB = 1 << 30


@pytest.mark.parametrize(("weight_format", "shape", "expected"), [
    # DeepSeek-V3 expert down_proj [7168, 2048]: e4m3 bytes + fp32 weight_scale_inv [56, 16]
    (fp8("block"), (7168, 2048), 7168 * 2048 + 4 * 56 * 16),
    # a width that 128 does not divide keeps a partial block: ceil(2880 / 128) = 23
    (fp8("block"), (5760, 2880), 5760 * 2880 + 4 * 45 * 23),
    (fp8("tensor"), (4096, 4096), 4096 * 4096 + 4),
    (fp8("channel"), (4096, 4096), 4096 * 4096 + 2 * 4096),
    # gpt-oss gate_up_proj_blocks [E, 5760, 90, 16] + _scales [E, 5760, 90] per expert
    (block_format("mxfp4"), (5760, 2880), 5760 * 90 * 16 + 5760 * 90),
    (block_format("nvfp4"), (4096, 4096), 4096 * 2048 + 4096 * 256 + 4),
    # nf4: codes, 4096*4096/64 fp32 absmax, 16-entry fp32 quant_map
    (block_format("nf4", double_quant=False), (4096, 4096), 4096 * 2048 + 4 * 262144 + 64),
    # with double quantization: uint8 absmax, fp32 nested_absmax per 256 blocks, nested_quant_map of 256
    (block_format("nf4", double_quant=True), (4096, 4096), 4096 * 2048 + 262144 + 4 * 1024 + 1024 + 64),
    # GPTQ 4-bit g128: qweight [512, 4096] int32, qzeros [32, 512] int32, fp16 scales [32, 4096], g_idx [4096]
    (int4(128, layout="gptq"), (4096, 4096), 4 * 512 * 4096 + 4 * 32 * 512 + 2 * 32 * 4096 + 4 * 4096),
    # AWQ g128: qweight [4096, 512], qzeros [32, 512], scales [32, 4096]; no g_idx
    (int4(128, layout="awq"), (4096, 4096), 4 * 4096 * 512 + 4 * 32 * 512 + 2 * 32 * 4096),
    # compressed-tensors pack-quantized symmetric: weight_packed [4096, 512], weight_scale [4096, 32], shape int64[2]
    (int4(128, symmetric=True, layout="compressed-tensors"), (4096, 4096), 4 * 4096 * 512 + 2 * 4096 * 32 + 16),
    # GPTQ 8-bit g128: qweight [1024, 4096], qzeros [32, 1024], scales [32, 4096], g_idx
    (int8_gptq(128), (4096, 4096), 4 * 1024 * 4096 + 4 * 32 * 1024 + 2 * 32 * 4096 + 4 * 4096),
    # GPTQ keeps a partial last group: 2880 = 22.5 x 128 -> 23 groups
    (int4(128, layout="gptq", partial=True), (4096, 2880),
     4 * 360 * 4096 + 4 * 23 * 512 + 2 * 23 * 4096 + 4 * 2880),
    (ggml_format("Q4_K"), (4096, 4096), 4096 * 16 * 144),
    (ggml_format("Q6_K"), (4096, 14336), 4096 * 56 * 210),
    (ggml_format("Q8_0"), (4096, 4096), 4096 * 128 * 34),
])
def test_checkpoint_formats_count_every_scale_zero_and_index(weight_format: object, shape: tuple[int, int],
                                                             expected: int) -> None:
    assert weight_format.bytes_for(shape) == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize(("ggml_type", "block", "size"), [
    ("Q4_0", 32, 18), ("Q4_1", 32, 20), ("Q5_0", 32, 22), ("Q5_1", 32, 24), ("Q8_0", 32, 34), ("Q2_K", 256, 84),
    ("Q3_K", 256, 110), ("Q4_K", 256, 144), ("Q5_K", 256, 176), ("Q6_K", 256, 210), ("IQ4_NL", 32, 18),
    ("IQ4_XS", 256, 136),
])
def test_ggml_block_table_is_ggmls(ggml_type: str, block: int, size: int) -> None:
    # ggml/src/ggml.c type_traits: blck_size and type_size (Q4_K: 2 fp16 + 12 scale bytes + 128 nibble bytes)
    assert GGML_BLOCKS[ggml_type] == (block, size)


def test_a_ggml_row_that_is_not_whole_blocks_is_refused() -> None:
    with pytest.raises(GroupSizeMismatch):
        ggml_format("Q4_K").bytes_for((896, 896))


def test_use_more_bits_is_llama_cpps_first_and_last_eighth_and_every_third() -> None:
    # 32 layers: 0-3 and 28-31, and 4 + 2, 4 + 5, ... (llama-quant.cpp use_more_bits)
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29,
                                                              30, 31]


@pytest.mark.parametrize(("ggml_type", "columns", "expected"), [
    ("Q4_K", 4096, "Q4_K"), ("Q4_K", 896, "Q5_0"), ("Q5_K", 2880, "Q5_1"), ("Q6_K", 2880, "Q8_0"),
    ("Q4_K", 4544, "Q5_0"), ("Q6_K", 100, "F16"),
])
def test_llama_quantize_falls_back_when_a_row_is_not_whole_blocks(ggml_type: str, columns: int,
                                                                  expected: str) -> None:
    assert fallback(ggml_type, columns) == expected


def _types(model: str, file_type: str) -> dict[tuple[str, int], str]:
    spec = get_preset(model)
    out = {}
    for entry, weight_format in gguf_rows(file_type, spec, inventory(spec)):
        for layer in entry.layers or (-1,):
            out[(entry.name, layer)] = weight_format.label()
    return out


def test_llama_3_1_8b_q4_k_m_keeps_v_and_down_at_q6_k_on_the_use_more_bits_layers() -> None:
    types = _types("llama-3.1-8b", "gguf-q4_k_m")
    v, down = "model.layers.{i}.self_attn.v_proj.weight", "model.layers.{i}.mlp.down_proj.weight"
    assert [i for i in range(32) if types[(v, i)] == "q6_k"] == [i for i in range(32) if use_more_bits(i, 32)]
    assert {types[(down, i)] for i in range(32)} == {"q4_k", "q6_k"}
    assert types[("model.layers.{i}.self_attn.q_proj.weight", 5)] == "q4_k"
    assert types[("model.embed_tokens.weight", -1)] == "q4_k"
    assert types[("lm_head.weight", -1)] == "q6_k"
    assert types[("model.layers.{i}.input_layernorm.weight", 0)] == "fp32"


def test_a_tied_embedding_is_quantized_as_the_output_and_an_odd_width_falls_back() -> None:
    # Qwen2.5-0.5B: tied, hidden 896 is not a multiple of 256: token_embd Q8_0, q/k/v/gate/up Q5_0
    types = _types("qwen2.5-0.5b", "gguf-q4_k_m")
    assert types[("model.embed_tokens.weight", -1)] == "q8_0"
    assert types[("model.layers.{i}.self_attn.q_proj.weight", 3)] == "q5_0"
    assert types[("model.layers.{i}.mlp.down_proj.weight", 3)] == "q4_k"  # 4864 = 19 x 256
    # Llama-3.2-1B: tied, 2048 wide: the embedding takes the output's Q6_K
    assert _types("llama-3.2-1b-instruct", "gguf-q4_k_m")[("model.embed_tokens.weight", -1)] == "q6_k"


def test_an_eight_expert_model_keeps_attention_v_and_k_at_q8_0_in_every_file_type() -> None:
    for file_type in GGUF_FILE_TYPES:
        types = _types("mixtral-8x7b-v0.1", file_type)
        assert types[("model.layers.{i}.self_attn.v_proj.weight", 7)] == "q8_0"
        assert types[("model.layers.{i}.self_attn.k_proj.weight", 7)] == "q8_0"


def test_a_70b_model_keeps_attention_v_at_q5_k_or_more() -> None:
    assert ModelFacts.of(get_preset("llama-3.1-70b")).is_70b
    types = _types("llama-3.1-70b", "gguf-q4_k_s")
    assert {types[("model.layers.{i}.self_attn.v_proj.weight", i)] for i in range(80)} == {"q5_k"}


def test_falcon_output_is_q8_0() -> None:
    types = _types("falcon-7b", "gguf-q4_k_m")
    assert types[("transformer.word_embeddings.weight", -1)] == "q8_0"  # tied: the output's type


@pytest.mark.parametrize("file_type", list(GGUF_FILE_TYPES))
def test_every_gguf_file_type_plans_every_preset(file_type: str) -> None:
    for model in ("llama-3.1-8b", "qwen2.5-0.5b", "gemma-2-9b", "phi-3-mini-4k-instruct", "qwen3-30b-a3b",
                  "gpt-oss-20b", "deepseek-v2-lite", "falcon-7b", "gpt2"):
        spec = get_preset(model)
        total = scheme_bytes(spec, gguf_scheme(file_type))
        assert sum(entry.count * fmt.bytes_for(entry.shape) for entry, fmt in assign(spec, gguf_scheme(file_type))) \
            == total > 0


def test_module_patterns_match_as_the_loaders_do() -> None:
    assert module_name("model.layers.{i}.mlp.experts.gate_up_proj[{e}]") == "model.layers.0.mlp.experts.gate_up_proj"
    assert matches("model.layers.0.self_attn.q_proj", "model.layers.*.self_attn")
    assert matches("lm_head", "lm_head") and not matches("model.lm_head_extra", "lm_head")
    assert matches("model.layers.3.mlp.gate", "re:.*mlp.gate$")
    assert not matches("model.layers.3.mlp.gate_proj", "re:.*mlp.gate$")


def test_gpt_oss_ships_mxfp4_experts_byte_for_byte() -> None:
    # openai/gpt-oss-20b model.safetensors.index.json, "metadata": {"total_size": 13761264768};
    # openai/gpt-oss-120b model.safetensors.index.json, "metadata": {"total_size": 65248815744}
    for model, total_size in (("gpt-oss-20b", 13_761_264_768), ("gpt-oss-120b", 65_248_815_744)):
        preset = get_preset_info(model)
        assert preset.quantization_config is not None
        scheme = scheme_from_quantization_config(preset.quantization_config)
        assert scheme.label() == "mxfp4"
        assert scheme_bytes(preset.spec, scheme) == total_size


def test_gpt_oss_120b_on_one_h100_fits_as_shipped() -> None:
    preset = get_preset_info("gpt-oss-120b")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    result = plan(preset.spec, Hardware(80 * GIB, 1), None, PlanOptions(scheme=scheme))
    assert result.primary.format == "mxfp4" and result.fits
    assert not result.comparison["bf16"].fits


def test_deepseek_v3_on_8_h200_fits_as_shipped_at_fp8() -> None:
    # H200: nvidia-smi reports 143771 MiB
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    assert scheme.label() == "fp8-block128"
    result = plan(preset.spec, Hardware(143_771 * 2**20, 8), None, PlanOptions(scheme=scheme))
    assert result.fits and not result.comparison["bf16"].fits


@pytest.mark.parametrize(("config", "label"), [
    ({"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True},
     "int4-g32-sym-act-order-gptq"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False},
     "int4-g32-asym-act-order-gptq"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "int8-g128-gptq"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
     "int4-g128-asym-awq"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_use_double_quant": True}, "nf4-dq"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                       "strategy": "channel"}}}}, "fp8-per-channel"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                       "strategy": "group", "group_size": 128,
                                                                       "symmetric": True}}}},
     "int4-g128-sym-compressed-tensors"),
])
def test_quantization_configs_name_the_format_they_ship(config: dict[str, object], label: str) -> None:
    scheme = scheme_from_quantization_config(config)
    assert scheme.label() == label
    assert not any("not understood" in note for note in scheme.notes)


def test_a_quantization_config_field_nibble_does_not_read_is_named_in_a_note() -> None:
    scheme = scheme_from_quantization_config({"quant_method": "mxfp4", "shiny_new_field": 1})
    assert scheme.notes == ("quantization_config.shiny_new_field is not understood by nibble and was ignored",)


def test_an_unknown_quant_method_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as caught:
        scheme_from_quantization_config({"quant_method": "hqq"})
    assert caught.value.field == "quantization_config.quant_method"


@needs_fixtures
def test_deepseek_v3_fixture_config_is_fp8_blocks_of_128() -> None:
    config = json.loads((FIXTURES / "models" / "deepseek-v3.json").read_text())
    assert scheme_from_quantization_config(config["quantization_config"]).label() == "fp8-block128"


LLAMA_3_8B = {"hidden_size": 4096, "num_layers": 32, "num_attention_heads": 32, "num_kv_heads": 8,
              "intermediate_size": 14336, "vocab_size": 128256}
LLAMA_2_13B = {"hidden_size": 5120, "num_layers": 40, "num_attention_heads": 40, "intermediate_size": 13824,
               "vocab_size": 32000}


def test_an_fp8_llama_with_static_activation_scales_is_its_index_total_size() -> None:
    # neuralmagic/Meta-Llama-3-8B-Instruct-FP8 (AutoFP8): config quantization_config
    # {"quant_method": "fp8", "activation_scheme": "static"}; model.safetensors.index.json
    # "metadata": {"total_size": 9081202432} (a copy: llm-d/llm-d-kv-cache-manager
    # tests/e2e/redis_mock/testdata/local-llama3/model.safetensors.index.json).  Every linear holds
    # e4m3 weights, an fp32 weight_scale and an fp32 input_scale.
    spec = model_from_sizes(**LLAMA_3_8B)
    scheme = scheme_from_quantization_config({"quant_method": "fp8", "activation_scheme": "static"})
    assert scheme.label() == "fp8-per-tensor-static"
    assert scheme_bytes(spec, scheme) == 9_081_202_432


@pytest.mark.parametrize(("group_size", "published_gb"), [(128, 7.26), (32, 8.00), (64, 7.51)])
def test_autogptq_4bit_checkpoints_are_their_published_file_sizes(group_size: int, published_gb: float) -> None:
    # TheBloke/Llama-2-13B-GPTQ README, "Provided files" (branches main, gptq-4bit-32g-actorder_True,
    # gptq-4bit-64g-actorder_True; "All GPTQ files are made with AutoGPTQ"): 7.26, 8.00 and 7.51 GB
    # (https://huggingface.co/TheBloke/Llama-2-13B-GPTQ, README at b7db471d).  The figures are rounded to
    # 10 MB (0.07 % at most); the file adds its JSON header (tens of kB).  AutoGPTQ stores an fp16 bias for
    # every quantized linear: without it the 64g file would be 7.50 GB.
    spec = model_from_sizes(**LLAMA_2_13B)
    scheme = scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": group_size,
                                              "desc_act": group_size != 128, "sym": True})
    assert scheme.stored_bias
    assert abs(scheme_bytes(spec, scheme) - published_gb * 1e9) <= 0.001 * published_gb * 1e9


def test_a_gptqmodel_checkpoint_has_no_bias_for_layers_without_one() -> None:
    spec = model_from_sizes(**LLAMA_2_13B)
    auto = scheme_from_quantization_config({"quant_method": "gptq", "bits": 8, "group_size": 128})
    gptqmodel = scheme_from_quantization_config({"quant_method": "gptq", "bits": 8, "group_size": 128,
                                                 "meta": {"quantizer": ["gptqmodel:1.7.0"]}})
    linears = 40 * (3 * 5120 + 5120 + 2 * 13824 + 5120)  # out features of q, k, v, o, gate, up, down
    assert scheme_bytes(spec, auto) - scheme_bytes(spec, gptqmodel) == 2 * linears


def test_a_gptq_config_plans_the_modules_its_negative_dynamic_rules_skip_at_16_bits() -> None:
    # GPTQModel's and vLLM's "-:<regex>" (quant_core/tensorio/gptq.py): nibble's own checkpoint of a group size
    # down_proj's 11008 columns do not take (g256) carries this rule; each down_proj is bf16, with no bias
    spec = model_from_sizes(**LLAMA_2_7B)
    base = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False}
    skipping = scheme_from_quantization_config({**base, "dynamic": {r"-:^model\.layers\.\d+\.mlp\.down_proj$": {}},
                                                "modules_in_block_to_quantize": [["self_attn.q_proj"]]})
    assert not any("not understood" in note for note in skipping.notes)
    down_proj_int4 = int4(128, layout="gptq").bytes_for((4096, 11008)) + 2 * 4096  # AutoGPTQ's fp16 bias
    assert scheme_bytes(spec, skipping) - scheme_bytes(spec, scheme_from_quantization_config(base)) \
        == 32 * (2 * 4096 * 11008 - down_proj_int4)
    overriding = scheme_from_quantization_config({**base, "dynamic": {r"+:.*\.down_proj$": {"bits": 8}}})
    assert scheme_bytes(spec, overriding) == scheme_bytes(spec, scheme_from_quantization_config(base))
    assert any("dynamic rule '+:.*\\\\.down_proj$'" in note for note in overriding.notes)
    with pytest.raises(InvalidSpec) as caught:
        scheme_from_quantization_config({**base, "dynamic": {"-:(": {}}})
    assert caught.value.field == "quantization_config.dynamic"


COMPRESSED_INT4 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"group_0": {
    "targets": ["Linear"],
    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}}}
COMPRESSED_FORMAT = scheme_from_quantization_config(COMPRESSED_INT4).quantized


@pytest.mark.timeout(30)
@pytest.mark.parametrize("regex", [r"(?:.|.)*!", r"((\w|\.)*)*!", r"(.*)*!"])
def test_a_configs_regex_is_matched_in_linear_time_not_by_backtracking(regex: str) -> None:
    # the regex is the client's: Python's re took minutes on these against a module name (0.18 s on 22 of
    # "model.layers.0.self_attn.q_proj"'s characters, doubling with each more), on the event loop
    spec = model_from_sizes(**LLAMA_2_7B)
    for config in ({**COMPRESSED_INT4, "ignore": ["lm_head", f"re:{regex}"]},
                   {"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {f"-:{regex}": {}}}):
        scheme = scheme_from_quantization_config(config)
        assert scheme_bytes(spec, scheme) > 0 and not matches("model.layers.0.self_attn.q_proj", f"re:{regex}")


def test_a_regex_nibble_cannot_match_in_linear_time_or_too_many_entries_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as look_around:
        scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": ["re:.*(?<!gate)_proj"]})
    assert look_around.value.field == "quantization_config.ignore" and "no look-around" in look_around.value.detail
    too_many = [f"re:m{i}" for i in range(MAX_KEEP_ENTRIES + 1)]
    with pytest.raises(InvalidSpec) as refused:
        scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": too_many})
    assert refused.value.field == "quantization_config.ignore" and f"at most {MAX_KEEP_ENTRIES}" in refused.value.detail
    # at the bound, module names naming layers are bound to the layers they name, not tried on each name
    keep = [f"model.layers.{i}.mlp.gate" for i in range(2048)] + [f"model.layers.{i}.self_attn.v_proj"
                                                                   for i in range(MAX_KEEP_ENTRIES - 2048)]
    spec = model_from_sizes(**LLAMA_2_7B)
    v_proj_16_bit = 2 * 4096 * 4096 - COMPRESSED_FORMAT.bytes_for((4096, 4096))
    whole = scheme_bytes(spec, scheme_from_quantization_config(COMPRESSED_INT4))
    assert scheme_bytes(spec, scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": keep})) \
        == whole + 32 * v_proj_16_bit
    # a hundred regexes naming layers: one RE2 alternation, tried on each layer's module
    regexes = [f"re:model\\.layers\\.{i}\\.self_attn\\.v_proj" for i in range(100)]
    assert scheme_bytes(spec, scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": regexes})) \
        == whole + 32 * v_proj_16_bit
    # each glob naming a layer is tried on every layer's module: past MAX_KEEP_STEPS steps, refused
    globs = [f"model.layers.{i}.*.k_proj" for i in range(1365)]
    with pytest.raises(InvalidSpec) as costly:
        scheme_bytes(spec, scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": globs}))
    assert costly.value.field == "quantization_config" and f"{MAX_KEEP_STEPS:,} steps" in costly.value.detail


@pytest.mark.parametrize(("module", "pattern", "expected"), [
    ("model.layers.0.mlp.gate", "mlp.gate", True), ("model.layers.0.mlp.gate_proj", "mlp.gate", False),
    ("model.layers.3.self_attn.q_proj", "model.layers.*.self_attn", True),
    ("model.layers.3.self_attn", "model.layers.*.self_attn", True),
    ("model.layers.3.mlp", "model.layers.*.self_attn", False),
    ("model.layers.0.mlp.gate", r"re:.*mlp\.gate$", True), ("x.mlp.gate_up", r"re:.*mlp\.gate$", False),
])
def test_keep_entries_name_a_module_as_transformers_compares_them(module: str, pattern: str, expected: bool) -> None:
    assert matches(module, pattern) is expected


# TheBloke/Llama-2-7B-GGUF (llama.cpp of Sept. 2023), file sizes from the Hugging Face file listing
# (lfs.size; quoted e.g. by TheBloke/Llama-2-7B-Chat-GGUF siblings "llama-2-7b-chat.Q4_K_M.gguf",
# size 4081004224, and "llama-2-7b-chat.Q8_0.gguf", size 7161089728; the Q4_0 blob 3825807040 is
# ollama's llama2 layer sha256:22f7f8ef...).
LLAMA_2_7B = {"hidden_size": 4096, "num_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008,
              "vocab_size": 32000}
LLAMA_2_7B_GGUF_FILES = {"gguf-q4_0": 3_825_807_040, "gguf-q4_k_m": 4_081_004_224, "gguf-q5_k_m": 4_783_156_928,
                         "gguf-q6_k": 5_529_194_176, "gguf-q8_0": 7_161_089_728}


@pytest.mark.parametrize(("sizes", "group_size", "published_gb"), [
    (LLAMA_2_13B, 128, 13.65), (LLAMA_2_13B, -1, 13.36), (LLAMA_2_7B, 128, 7.16), (LLAMA_2_7B, -1, 7.01),
])
def test_autogptq_8bit_checkpoints_are_their_published_file_sizes(sizes: dict[str, int], group_size: int,
                                                                   published_gb: float) -> None:
    # TheBloke/MythoMax-L2-13B-GPTQ README, "Provided files" (https://huggingface.co/TheBloke/MythoMax-L2-13B-GPTQ):
    # branches gptq-8bit-128g-actorder_True 13.65 GB and gptq-8bit--1g-actorder_True 13.36 GB (a merge of
    # Llama-2-13B fine-tunes, "each of its 363 tensors": Llama-2-13B's shapes; its 4-bit rows are the 7.26, 8.00
    # and 7.51 GB above).  TheBloke/Llama-2-7B-32K-Instruct-GPTQ README, same table
    # (https://huggingface.co/TheBloke/Llama-2-7B-32K-Instruct-GPTQ): gptq-8bit-128g-actorder_True 7.16 GB,
    # gptq-8bit--1g-actorder_True 7.01 GB (Llama-2-7B's shapes).  AutoGPTQ 8-bit: qweight packs 4 codes per
    # int32, qzeros likewise, fp16 scales per group (one group per row at -1), int32 g_idx, fp16 bias.
    spec = model_from_sizes(**sizes)
    scheme = scheme_from_quantization_config({"quant_method": "gptq", "bits": 8, "group_size": group_size,
                                              "desc_act": True, "sym": True})
    # act order with groups shows in the label; at -1 (a whole row) vLLM sets desc_act false, and so does nibble
    assert scheme.label() == ("int8-g128-act-order-gptq" if group_size == 128 else "int8-row-gptq")
    assert abs(scheme_bytes(spec, scheme) - published_gb * 1e9) <= 0.001 * published_gb * 1e9


@pytest.mark.parametrize(("file_type", "file_size"), list(LLAMA_2_7B_GGUF_FILES.items()))
def test_llama_2_7b_gguf_files_are_their_published_sizes(file_type: str, file_size: int) -> None:
    spec = model_from_sizes(**LLAMA_2_7B)
    tensors = scheme_bytes(spec, gguf_scheme(file_type))
    assert 0 < file_size - tensors <= 0.003 * file_size  # the file adds its metadata (the tokenizer)


def test_every_llama_2_7b_gguf_file_is_its_tensors_plus_the_same_metadata() -> None:
    # the five files share one header (tokenizer, hyperparameters): the per-tensor types chosen for each mix
    # are right to the byte exactly when file size - tensor bytes is one constant over the files
    spec = model_from_sizes(**LLAMA_2_7B)
    overheads = {size - scheme_bytes(spec, gguf_scheme(ft)) for ft, size in LLAMA_2_7B_GGUF_FILES.items()}
    assert overheads == {741_056}


def test_deepseek_v3_as_shipped_plus_its_mtp_module_is_its_files() -> None:
    # deepseek-ai/DeepSeek-V3's 163 safetensors files hold 688,586,727,753 bytes, headers included (the creator
    # repository's weight files, as summed in a public model survey; the README: "671B of the main model weights
    # and 14B of the Multi-Token Prediction (MTP) Module weights").  The plan counts the 61 layers engines load;
    # the MTP module is one more MoE layer (layer 61, fp8 as the others) with its own bf16 embedding and
    # shared head [129280, 7168], eh_proj [7168, 14336] and three norms.
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    planned = scheme_bytes(preset.spec, scheme)
    assert planned == 673_150_582_112
    one_moe_layer = sum(size * entry.per_layer for entry, size in assigned_bytes(preset.spec, scheme)
                        if 60 in entry.layers)
    mtp_module = one_moe_layer + 2 * 129280 * 7168 * 2 + 7168 * 14336 * 2 + 3 * 7168 * 2
    files = 688_586_727_753
    assert abs(planned + mtp_module - files) <= 0.001 * files


def test_compressed_tensors_nvfp4_with_static_activations_stores_an_input_scale() -> None:
    weights = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}
    w4a4 = scheme_from_quantization_config({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                                                          "input_activations": {**weights,
                                                                                                "dynamic": False}}}})
    w4a16 = scheme_from_quantization_config({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                             "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}})
    assert (w4a4.label(), w4a16.label()) == ("nvfp4-static", "nvfp4")
    assert w4a4.quantized.bytes_for((4096, 4096)) == w4a16.quantized.bytes_for((4096, 4096)) + 4


# a small Qwen3-MoE: 12 layers, 16 experts of which layers 0 and 5 are dense (mlp_only_layers)
SMALL_MOE = {"model_type": "qwen3_moe", "hidden_size": 256, "num_hidden_layers": 12, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "moe_intermediate_size": 128,
             "num_experts": 16, "num_experts_per_tok": 2, "mlp_only_layers": [0, 5], "vocab_size": 1024}


def _kept_by_brute_force(keep: list[str]) -> dict[str, int]:
    """Tensors of SMALL_MOE's quantized rows kept at 16 bits, by row name: every layer's and expert's module
    tried against every entry, one at a time."""
    spec = model_from_hf_config(SMALL_MOE)
    out: dict[str, int] = {}
    for entry in inventory(spec):
        if entry.role not in ("attention", "mlp", "expert") or len(entry.shape) < 2:
            continue
        module = module_name(entry.name.replace("{i}", "I").replace("{e}", "E")).replace("I", "{i}")
        kept = 0
        for layer in entry.layers or (0,):
            for expert in range(entry.per_layer) if "{e}" in entry.name else (None,):
                name = module.replace("{i}", str(layer)).replace("E", str(expert))
                if any(matches(name, pattern) for pattern in keep):
                    kept += 1 if expert is not None else entry.per_layer
        out[entry.name] = kept
    return out


@pytest.mark.parametrize("keep", [
    ["model.layers.1.mlp.experts.7.down_proj"],  # one expert of one layer
    ["model.layers.11.self_attn.q_proj", "model.layers.0.mlp"],  # a layer past 9, a dense layer's whole MLP
    ["mlp.experts.3", "layers.4"],  # one expert in every layer; all of layer 4
    [r"re:.*experts\.1[0-5]\.up_proj$", r"re:model\.layers\.[2-3]\..*"],  # classes: experts 10-15, layers 2-3
    ["model.layers.1?.*", "*.experts.?.gate_proj"],  # globs naming index digits
    [r"re:.*mlp\.experts\..*\.down_proj", "*.self_attn.k_proj", "re:.+_proj$"],  # blind to indices: all or none
    ["model.layers.01.mlp.down_proj", "model.layers.{i}.mlp.down_proj", "model.layers.99.self_attn.q_proj"],  # none
])
def test_a_keep_entry_is_tried_on_every_layers_and_experts_module_not_layer_0s_alone(keep: list[str]) -> None:
    # a config that keeps model.layers.1.mlp.experts.7.down_proj at 16 bits was planned as if it kept none of
    # them (layer 0's name did not match), and one keeping layer 0's module as if it kept every layer's
    spec = model_from_hf_config(SMALL_MOE)
    scheme = scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": keep})
    planned: dict[str, int] = {}
    for entry, weight_format in assign(spec, scheme):
        if entry.role in ("attention", "mlp", "expert") and len(entry.shape) >= 2:
            planned[entry.name] = planned.get(entry.name, 0) + (entry.count if weight_format.name == "bf16" else 0)
    assert planned == _kept_by_brute_force(keep)
    split = sum(entry.count for entry, _ in assign(spec, scheme) if entry.role in ("attention", "mlp", "expert"))
    assert split == sum(entry.count for entry in inventory(spec) if entry.role in ("attention", "mlp", "expert"))


def test_a_gptq_rule_skipping_two_layers_down_proj_plans_those_two_at_16_bits() -> None:
    spec = model_from_sizes(**LLAMA_2_7B)
    base = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False}
    skipping = scheme_from_quantization_config({**base, "dynamic": {r"-:model\.layers\.(?:1|31)\.mlp\.down_proj": {}}})
    down_proj_int4 = int4(128, layout="gptq").bytes_for((4096, 11008)) + 2 * 4096  # AutoGPTQ's fp16 bias
    assert scheme_bytes(spec, skipping) - scheme_bytes(spec, scheme_from_quantization_config(base)) \
        == 2 * (2 * 4096 * 11008 - down_proj_int4)


def test_deepseek_v3_with_a_regex_naming_experts_is_planned_within_the_matching_bound() -> None:
    # 58 MoE layers x 256 experts x 3 projections: about 45,000 names tried against the one RE2 alternation
    spec = get_preset("deepseek-v3")
    base = scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": ["lm_head"]})
    ignore = ["lm_head", r"re:.*experts\.1[0-9]\.up_proj$"]
    scheme = scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": ignore})
    up_proj = 2048 * 7168
    layers = sum(len(entry.layers) for entry in inventory(spec) if entry.name.endswith("experts.{e}.up_proj.weight"))
    assert scheme_bytes(spec, scheme) - scheme_bytes(spec, base) \
        == 10 * layers * (2 * up_proj - COMPRESSED_FORMAT.bytes_for((2048, 7168)))


@pytest.mark.timeout(30)
def test_regexes_naming_experts_that_would_cost_minutes_to_try_on_every_expert_are_refused_at_once() -> None:
    # 4,096 backtracking-shaped regexes: RE2's program of 60,000 instructions, tried on 45,000 expert names, took
    # 163 s; refused before any is tried
    spec = get_preset("deepseek-v3")
    ignore = [f"re:(?:.|.)*{i}!" for i in range(MAX_KEEP_ENTRIES)]
    with pytest.raises(InvalidSpec) as refused:
        scheme_bytes(spec, scheme_from_quantization_config({**COMPRESSED_INT4, "ignore": ignore}))
    assert refused.value.field == "quantization_config" and "45,032 names" in refused.value.detail


def test_a_gptq_scheme_carries_sym_and_counts_the_same_qzeros_either_way() -> None:
    """AutoGPTQ and GPTQModel write packed qzeros whether sym is true or false: the bytes do not move, the format's
    `symmetric` (which vLLM 0.33's refusal of asymmetric GPTQ reads) and its label do."""
    assert scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                            "sym": False}).quantized.symmetric is False
    spec = model_from_sizes(**LLAMA_2_7B)
    base = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    symmetric = scheme_from_quantization_config({**base, "sym": True})
    asymmetric = scheme_from_quantization_config({**base, "sym": False})
    assert (symmetric.label(), asymmetric.label()) == ("int4-g128-sym-gptq", "int4-g128-asym-gptq")
    assert scheme_bytes(spec, symmetric) == scheme_bytes(spec, asymmetric)
    assert symmetric.quantized.bytes_for((4096, 4096)) == 4 * 512 * 4096 + 4 * 32 * 512 + 2 * 32 * 4096 + 4 * 4096
    unsaid = scheme_from_quantization_config(base)
    assert unsaid.label() == "int4-g128-sym-gptq" and any("no sym" in note for note in unsaid.notes)
    with pytest.raises(InvalidSpec) as caught:
        scheme_from_quantization_config({**base, "sym": "no"})
    assert caught.value.field == "quantization_config.sym"


@pytest.mark.parametrize("release", ["0.11", "0.19", "0.33"])
def test_vllm_0_33_refuses_an_asymmetric_gptq_checkpoint_on_every_device_and_0_11_0_19_load_it_in_float16(
        release: str) -> None:
    # vLLM 0.33's auto_gptq.py AutoGPTQConfig.__init__: "Unsupported quantization config: bits=4, sym=False"; 0.11's
    # and 0.19's gptq.py take float16 activations only (bfloat16 refused: tests/quant_core/test_vllm_gptq_dtype.py)
    spec = model_from_sizes(**LLAMA_2_7B)
    base = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    for sym in (True, False):
        scheme = scheme_from_quantization_config({**base, "sym": sym})
        result = plan(spec, Hardware(80 * 2**30, 1, "h100-80gb"), None,
                      PlanOptions(scheme=scheme, shipped=scheme, engine_version=release, float_format="fp16"))
        refused = release == "0.33" and not sym
        assert (result.refusal is not None) is refused
        assert result.fits is not refused
        if refused:
            assert result.refusal is not None and "Unsupported quantization config: bits=4, sym=False" in result.refusal
            assert result.primary.min_devices is None
