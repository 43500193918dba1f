"""The planner's laws: monotone in memory, solvers exact at their boundary, INT4 never touches KV."""

from __future__ import annotations

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format, int4
from quant_core.hf_config import model_from_sizes
from quant_core.kv_cache import kv_bytes_per_token, kv_cache_bytes
from quant_core.planner import Hardware, PlanOptions, Workload, engine_tensor_parallel_sizes, plan
from quant_core.specs import ModelSpec

GIB = 1 << 30
H100 = get_device("h100-80gb").memory_bytes
MODELS = ["qwen2.5-0.5b", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.1", "gemma-2-9b",
          "qwen3-30b-a3b", "mixtral-8x7b-v0.1", "phi-3-mini-4k-instruct"]


def test_llama_70b_on_one_h100_fits_at_int4_but_not_at_16_bit() -> None:
    result = plan(get_preset("llama-3.1-70b"), Hardware(H100, 1), Workload(4096, 1))
    assert result.comparison["int4"].fits
    assert not result.comparison["bf16"].fits
    assert result.fits is result.primary.fits is True
    assert any("16-bit" in warning for warning in result.warnings)


def test_used_bytes_is_the_sum_of_its_terms_and_headroom_is_usable_minus_used() -> None:
    result = plan(get_preset("llama-3.1-8b"), Hardware(H100, 2), Workload(8192, 4))
    for device in result.primary.devices:
        assert device.used_bytes == (device.weights_bytes + device.kv_cache_bytes + device.activation_bytes
                                     + device.overhead_bytes)
        assert device.usable_bytes == int(H100 * 0.9)
        assert device.headroom_bytes == device.usable_bytes - device.used_bytes
        assert device.fits == (device.used_bytes <= device.usable_bytes)


def test_tensor_parallel_ranks_hold_the_sum_of_the_weights_at_least_once() -> None:
    spec = get_preset("llama-3.1-70b")
    single = plan(spec, Hardware(4 * H100, 1), Workload(4096, 1))
    split = plan(spec, Hardware(H100, 4), Workload(4096, 1))
    assert len(split.primary.devices) == 4
    per_rank = split.primary.devices[0].weights_bytes
    assert single.primary.weights_bytes <= 4 * per_rank <= single.primary.weights_bytes + 4 * 10 * 2**20
    # the KV cache of 8 KV heads splits evenly over 4 ranks
    assert 4 * split.primary.devices[0].kv_cache_bytes == single.primary.devices[0].kv_cache_bytes


def test_pipeline_stages_split_layers_with_embedding_first_and_head_last() -> None:
    spec = get_preset("llama-3.1-8b")
    result = plan(spec, Hardware(H100, 2), Workload(4096, 1), PlanOptions(pipeline_parallel=2))
    first, last = result.primary.devices
    assert first.layers == (0, 16) and last.layers == (16, 32)
    embedding = result.primary.weights_by_role["embedding"]
    lm_head = result.primary.weights_by_role["lm_head"]
    assert first.weights_bytes + last.weights_bytes == result.primary.weights_bytes
    assert embedding == lm_head  # untied, same shape, both 16-bit: the stages differ only by the norm
    assert first.kv_cache_bytes == last.kv_cache_bytes == result.kv_cache_bytes // 2


@pytest.mark.parametrize("model", MODELS)
def test_int4_never_changes_the_kv_cache_bytes(model: str) -> None:
    spec = get_preset(model)
    result = plan(spec, Hardware(H100, 1), Workload(16384, 8))
    assert result.comparison["int4"].kv_cache_bytes == result.comparison["bf16"].kv_cache_bytes
    assert result.kv_cache_bytes == kv_cache_bytes(spec, "bf16", 16384, 8)
    for quantized, baseline in zip(result.comparison["int4"].devices, result.comparison["bf16"].devices,
                                   strict=True):
        assert quantized.kv_cache_bytes == baseline.kv_cache_bytes
    assert result.kv_bytes_per_token == kv_bytes_per_token(spec, "bf16")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sequences", [1, 16])
def test_more_memory_never_turns_a_fit_into_a_no_fit(model: str, sequences: int) -> None:
    spec = get_preset(model)
    previous = {"bf16": False, "int4": False}
    for capacity in range(8 * GIB, 400 * GIB, 7 * GIB):
        result = plan(spec, Hardware(capacity, 1), Workload(32768, sequences))
        for key, format_plan in result.comparison.items():
            assert format_plan.fits or not previous[key], f"{key} stopped fitting at {capacity} bytes"
            previous[key] = format_plan.fits


@pytest.mark.parametrize("model", MODELS)
def test_the_longest_context_fits_and_one_more_token_does_not(model: str) -> None:
    spec = get_preset(model)
    hardware = Hardware(24 * GIB, 1)
    result = plan(spec, hardware, Workload(1024, 8))
    for key, format_plan in result.comparison.items():
        options = PlanOptions(weight_format=int4() if key == "int4" else float_format(key))
        longest = format_plan.max_context_length
        if longest is None:
            assert not plan(spec, hardware, Workload(1, 8), options).primary.fits
            continue
        assert plan(spec, hardware, Workload(longest, 8), options).primary.fits
        if format_plan.context_limited_by == "memory":
            assert not plan(spec, hardware, Workload(longest + 1, 8), options).primary.fits
        else:
            assert longest == spec.max_position_embeddings


@pytest.mark.parametrize("model", MODELS)
def test_the_most_sequences_fit_and_one_more_does_not(model: str) -> None:
    spec = get_preset(model)
    hardware = Hardware(48 * GIB, 1)
    result = plan(spec, hardware, Workload(4096, 1))
    most = result.primary.max_concurrent_sequences
    if most == 0:
        assert not result.primary.fits
        return
    assert plan(spec, hardware, Workload(4096, most)).primary.fits
    assert not plan(spec, hardware, Workload(4096, most + 1)).primary.fits


@pytest.mark.parametrize("model", [*MODELS, "deepseek-v3", "llama-3.1-405b", "qwen3-235b-a22b"])
def test_the_fewest_devices_fit_and_one_fewer_does_not(model: str) -> None:
    spec = get_preset(model)
    workload = Workload(32768, 4)
    result = plan(spec, Hardware(H100, 1), workload)
    for key, format_plan in result.comparison.items():
        options = PlanOptions(weight_format=int4() if key == "int4" else float_format(key))
        fewest = format_plan.min_devices
        assert fewest is not None
        accepted = engine_tensor_parallel_sizes(spec)
        assert fewest in accepted
        assert plan(spec, Hardware(H100, fewest), workload, options).primary.fits
        fewer = [size for size in accepted if size < fewest]
        if fewer:
            assert not plan(spec, Hardware(H100, fewer[-1]), workload, options).primary.fits


def test_a_context_may_end_part_way_into_a_kv_block_when_activations_are_the_limit() -> None:
    # The generic model (no engine profile): Qwen2.5-72B at INT4 on one 48 GiB device, one sequence: the
    # KV cache of a block's tokens is the same blocks, and the activation estimate (below 8,192 batched
    # tokens) grows with each token
    spec = get_preset("qwen2.5-72b-instruct")
    hardware = Hardware(get_device("l40s").memory_bytes, 1)
    generic = PlanOptions(engine="generic")
    longest = plan(spec, hardware, Workload(4096, 1), generic).primary.max_context_length
    assert longest is not None and longest % 16 != 0
    assert plan(spec, hardware, Workload(longest, 1), generic).primary.fits
    assert not plan(spec, hardware, Workload(longest + 1, 1), generic).primary.fits


@pytest.mark.parametrize(("model", "accepted"), [
    ("llama-3.1-70b", [1, 2, 4, 8, 16, 32, 64]),  # 64 heads, 8 KV heads (replicated past 8)
    # 28 heads, 4 KV heads: 7 and 14 neither divide 4 nor replicate it evenly; 28 does not divide the MLP's 18,944
    # rows (vLLM's MergedColumnParallelLinear asserts divide(18944, 28))
    ("qwen2.5-7b", [1, 2, 4]),
])
def test_fewest_devices_count_only_tensor_parallel_sizes_engines_accept(model: str, accepted: list[int]) -> None:
    spec = get_preset(model)
    assert list(engine_tensor_parallel_sizes(spec)) == accepted
    result = plan(spec, Hardware(H100, 1), Workload(32768, 4))
    assert result.comparison["bf16"].min_devices in engine_tensor_parallel_sizes(spec)


def test_sliding_window_models_are_limited_by_the_trained_context_not_memory() -> None:
    result = plan(get_preset("mistral-7b-v0.1"), Hardware(H100, 1), Workload(4096, 1))
    assert result.primary.context_limited_by == "model"
    assert result.primary.max_context_length == 32768


def test_kv_cache_dominating_is_said_in_plain_words() -> None:
    result = plan(get_preset("llama-2-7b"), Hardware(H100, 1), Workload(32768, 4))
    assert any("KV cache" in warning and "INT4" in warning for warning in result.warnings)


def test_estimated_terms_state_their_basis() -> None:
    result = plan(get_preset("llama-3.1-8b"), Hardware(H100, 1), Workload(8192, 2), PlanOptions(engine="generic"))
    assert "estimate" in result.activation.basis and "8192" in result.activation.basis
    assert "GiB" in result.runtime_overhead.basis
    vllm = plan(get_preset("llama-3.1-8b"), Hardware(H100, 1), Workload(8192, 2))
    assert "vLLM 0.19 profiling run" in vllm.activation.basis and "max_num_batched_tokens=8192" in vllm.activation.basis
    assert "non-torch" in vllm.runtime_overhead.basis and "CUDA graphs" in vllm.runtime_overhead.basis
    overridden = plan(get_preset("llama-3.1-8b"), Hardware(H100, 1), Workload(8192, 2),
                      PlanOptions(activation_bytes=123, runtime_overhead_bytes=0))
    assert overridden.activation.bytes == 123 and "request" in overridden.activation.basis
    assert overridden.primary.devices[0].overhead_bytes == 0


def test_16_bit_deployment_makes_bf16_the_primary_plan() -> None:
    result = plan(get_preset("qwen2.5-0.5b"), Hardware(H100, 1), Workload(),
                  PlanOptions(weight_format=float_format("bf16")))
    assert result.primary is result.comparison["bf16"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"tensor_parallel": 3}, "parallel.tensor"),
    ({"pipeline_parallel": 0}, "parallel.pipeline"),
    ({"memory_utilization": 1.5}, "runtime.memory_utilization"),
    ({"block_size": -16}, "kv_cache.block_size"),
])
def test_bad_options_raise_errors_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        plan(get_preset("qwen2.5-0.5b"), Hardware(H100, 2), Workload(), PlanOptions(**kwargs))  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(("hardware", "field"), [
    ({"capacity_bytes": 0}, "hardware.memory_bytes"),
    ({"capacity_bytes": H100, "count": 0}, "hardware.count"),
])
def test_bad_hardware_raises_errors_naming_the_field(hardware: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        Hardware(**hardware)
    assert caught.value.field == field


def test_bad_workload_raises_errors_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as caught:
        Workload(context_length=-5)
    assert caught.value.field == "workload.context_length"
    assert caught.value.value == -5


def test_a_group_size_that_does_not_divide_a_tensor_is_planned_with_a_partial_last_group_and_said_so() -> None:
    # Qwen2.5-0.5B's MLP is 4864 wide: 4864 / 256 = 19, but 896 / 256 = 3.5 groups: GPTQ and AWQ store 4
    result = plan(get_preset("qwen2.5-0.5b"), Hardware(H100, 1), Workload(),
                  PlanOptions(weight_format=int4(group_size=256)))
    assert result.primary.format == "int4-g256-asym-partial"
    assert any("group_size 256 does not divide" in w and "896" in w and "partial last group" in w
               for w in result.warnings)
    # q_proj [896, 896] stores ceil(896 / 256) = 4 scales and zeros per row, no padding
    assert int4(256, partial=True).bytes_for((896, 896)) == 896 * 896 // 2 + 896 * 4 * 2 + 896 * 4 // 2


@pytest.mark.parametrize(("model", "in_features"), [("deepseek-v2-lite", 10944), ("gpt-oss-20b", 2880)])
def test_widths_that_group_128_does_not_divide_are_planned_at_the_defaults(model: str, in_features: int) -> None:
    # DeepSeek-V2-Lite's dense MLP is 10944 wide (85.5 groups of 128); gpt-oss's hidden size 2880 (22.5)
    spec = get_preset(model)
    partial = plan(spec, Hardware(H100, 1), Workload())
    assert partial.primary.format == "int4-g128-asym-partial"
    assert any(str(in_features) in warning and "partial last group" in warning for warning in partial.warnings)
    padded = plan(spec, Hardware(H100, 1), Workload(), PlanOptions(weight_format=int4(pad=True)))
    exact = plan(spec, Hardware(H100, 1), Workload(), PlanOptions(weight_format=int4(group_size=64)))
    # padding stores the padded codes, g64 twice the scales: the partial last group is the smallest
    assert partial.primary.weights_bytes < padded.primary.weights_bytes < exact.primary.weights_bytes
    # a 16-bit deployment still compares with INT4, with the same partial last group
    baseline = plan(spec, Hardware(H100, 1), Workload(), PlanOptions(weight_format=float_format("bf16")))
    assert baseline.comparison["int4"].weights_bytes == partial.primary.weights_bytes


def test_a_tensor_parallel_degree_that_cannot_split_the_kv_heads_is_warned_about() -> None:
    spec = get_preset("qwen2.5-0.5b")  # 14 attention heads, 2 key/value heads
    assert (spec.num_attention_heads, spec.num_kv_heads) == (14, 2)
    refused = plan(spec, Hardware(H100, 7), Workload(4096, 1), PlanOptions(tensor_parallel=7))
    assert any("neither divides" in warning for warning in refused.warnings)
    for tensor_parallel in (2, 14):  # divides the KV heads; replicates each on 7 devices
        fine = plan(spec, Hardware(H100, tensor_parallel), Workload(4096, 1),
                    PlanOptions(tensor_parallel=tensor_parallel))
        assert not any("neither divides" in warning for warning in fine.warnings)


def test_limits_that_are_the_searchs_own_caps_say_so() -> None:
    tiny = model_from_sizes(hidden_size=128, num_layers=2, num_attention_heads=2, intermediate_size=128,
                            vocab_size=10, head_dim=64)  # states no trained context
    result = plan(tiny, Hardware(get_device("b200").memory_bytes, 1), Workload(1, 1), PlanOptions(block_size=1))
    assert result.primary.max_context_length == 1 << 24
    assert result.primary.context_limited_by == "search_limit"
    assert result.primary.max_concurrent_sequences == 1 << 24
    assert result.primary.sequences_limited_by == "search_limit"
    capped = plan(get_preset("llama-3.1-8b"), Hardware(H100, 1), Workload(1024, 1))
    assert capped.primary.context_limited_by == "model" and capped.primary.sequences_limited_by == "memory"


def test_a_deployed_format_that_does_not_fit_is_warned_about_even_when_int4_and_16_bit_fit() -> None:
    result = plan(get_preset("llama-3.1-8b"), Hardware(get_device("l4").memory_bytes, 1), Workload(4096, 1),
                  PlanOptions(weight_format=float_format("fp32")))
    assert not result.fits and result.comparison["int4"].fits and result.comparison["bf16"].fits
    assert any("does not fit as fp32" in warning and "it fits at INT4 and at 16-bit" in warning
               for warning in result.warnings)


def test_int4_refused_at_the_layout_is_warned_as_refused_with_the_reason_not_as_not_fitting() -> None:
    """Llama-3.1-70B on three H100s: vLLM refuses tensor parallel size 3 (64 heads), every format alike; the INT4
    warning said "does not fit even at INT4 on 3 device(s) ...; the fewest devices that fit at INT4 is 1" (a refusal
    read as a memory miss, on devices that hold the weights)."""
    result = plan(get_preset("llama-3.1-70b"), Hardware(H100, 3), Workload(4096, 1))
    refusal = result.comparison["int4"].refusal
    assert refusal is not None and refusal.startswith("vLLM refuses tensor parallel size 3")
    assert f"The model cannot run at INT4 on 3 device(s): {refusal}." in result.warnings
    assert not any("does not fit" in warning for warning in result.warnings)


def test_16_bit_refused_where_int4_fits_is_warned_as_refused_with_the_reason_not_as_not_fitting() -> None:
    """Qwen3-30B-A3B on two B200s under vLLM 0.33 with data parallel 2: nibble does not plan bf16 routed experts
    under 0.33's data parallelism on 10.x (`engines.vllm.moe_data_parallel_format_refusal`), int4 ones it does; the
    warning said "The model fits at INT4 but not at 16-bit (bf16) on 2 device(s)", 61 GB of weights on 2 x 192 GB."""
    result = plan(get_preset("qwen3-30b-a3b"), Hardware(get_device("b200").memory_bytes, 2, "b200"),
                  Workload(4096, 1), PlanOptions(engine_version="0.33", data_parallel=2))
    refusal = result.comparison["bf16"].refusal
    assert result.comparison["int4"].fits and refusal is not None
    assert f"The model fits at INT4, but cannot run at 16-bit (bf16) on 2 device(s): {refusal}." in result.warnings
    assert not any("but not at 16-bit" in warning for warning in result.warnings)
    assert all(device.used_bytes <= device.usable_bytes for device in result.comparison["bf16"].devices)


def test_when_no_tensor_parallel_degree_fits_the_warning_points_to_pipeline_stages_not_to_a_false_limit() -> None:
    result = plan(get_preset("llama-3.1-405b"), Hardware(get_device("t4").memory_bytes, 32), Workload(131072, 4))
    assert result.comparison["int4"].min_devices is None
    warning = next(w for w in result.warnings if "does not fit even at INT4" in w)
    assert "the largest is 128 device(s)" in warning and "parallel.pipeline" in warning
    assert "1024" not in warning
    # and pipeline stages do fit it, on 64 devices, at 0.75: the 4.0 GiB it leaves free hold vLLM 0.19's 3.20 GiB
    # outside the budget (2.52 GiB in use at start-up with a TP and a PP group, 0.67 GiB of graphs), which the 1.6 GiB
    # a 0.9 budget leaves do not (before the start-up memory was charged, 0.9 fitted)
    staged = plan(get_preset("llama-3.1-405b"), Hardware(get_device("t4").memory_bytes, 64), Workload(131072, 4),
                  PlanOptions(tensor_parallel=8, pipeline_parallel=8, weight_format=int4(128),
                              memory_utilization=0.75))
    assert staged.fits


def _h100_weights(spec: ModelSpec, tp: int = 1, pp: int = 1, fmt: str = "int4") -> list[int]:
    """Each H100's weight bytes in a plan of `spec` at `tp` x `pp`, its policy's tensors at INT4 g128 or `fmt`."""
    h100 = get_device("h100-80gb")
    options = PlanOptions(weight_format=int4(128) if fmt == "int4" else float_format(fmt),
                          tensor_parallel=tp, pipeline_parallel=pp)
    result = plan(spec, Hardware(h100.planning_bytes, tp * pp, h100.id), Workload(4096, 1), options)
    return [device.weights_bytes for device in result.primary.devices]


def test_more_tensor_parallel_ranks_than_kv_heads_says_the_kv_cache_is_replicated() -> None:
    spec = get_preset("qwen3-235b-a22b")  # 4 key/value heads (Qwen3-235B-A22B config.json)
    assert spec.num_kv_heads == 4
    eight = plan(spec, Hardware(H100, 8), Workload(32768, 8), PlanOptions())
    four = plan(spec, Hardware(H100, 4), Workload(32768, 8), PlanOptions())
    note = next(w for w in eight.warnings if w.startswith("The KV cache is replicated"))
    assert "8 devices in tensor parallel share the model's 4 key/value heads" in note
    assert eight.primary.devices[0].kv_cache_bytes == four.primary.devices[0].kv_cache_bytes
    assert not any(w.startswith("The KV cache is replicated") for w in four.warnings)
    mla = plan(get_preset("deepseek-v3"), Hardware(H100, 16), Workload(4096, 1), PlanOptions())
    assert not any(w.startswith("The KV cache is replicated") for w in mla.warnings)  # MLA: one latent, no heads


def test_a_vision_tower_stays_16_bit_in_int4_is_sharded_as_vllm_shards_it_and_sits_on_every_stage() -> None:
    from quant_core.hf_config import model_from_hf_config
    from tests.quant_core.test_hf_config import GEMMA_3_27B_IT

    with_tower = model_from_hf_config(GEMMA_3_27B_IT)
    text_only = model_from_hf_config({**GEMMA_3_27B_IT, "vision_config": None})

    tower = 423_060_336 * 2  # bf16, whether the language model is int4 or not
    assert _h100_weights(with_tower)[0] - _h100_weights(text_only)[0] == tower
    assert _h100_weights(with_tower, fmt="bf16")[0] - _h100_weights(text_only, fmt="bf16")[0] == tower
    # TP 2: q/k/v/out_proj, fc1, fc2 and the positions split; the patch convolution, norms, out_proj and fc2
    # biases and the projector (7,061,760 parameters) whole on both ranks
    replicated = 1152 * 3 * 14 * 14 + 1152 + 27 * (4 * 1152 + 2 * 1152) + 2 * 1152 + 1152 * 5376 + 1152
    assert replicated == 7_061_760
    assert [w - t for w, t in zip(_h100_weights(with_tower, tp=2), _h100_weights(text_only, tp=2), strict=True)] == \
        [2 * replicated + (tower - 2 * replicated) // 2] * 2
    assert [w - t for w, t in zip(_h100_weights(with_tower, pp=2), _h100_weights(text_only, pp=2), strict=True)] == \
        [tower] * 2


def test_a_gguf_plan_keeps_the_vision_tower_as_llama_cpps_mmproj_file_stores_it() -> None:
    from quant_core.gguf_mix import ModelFacts, tensor_type
    from quant_core.hf_config import model_from_hf_config
    from quant_core.inventory import inventory
    from tests.quant_core.test_hf_config import GEMMA_3_27B_IT

    spec = model_from_hf_config(GEMMA_3_27B_IT)
    facts = ModelFacts.of(spec)
    # convert_hf_to_gguf.py --mmproj writes a separate F16 file (1-D tensors F32); llama-quantize never sees it
    file_type = "gguf-q4_k_m"
    types = {entry.name.removeprefix("vision_tower.vision_model."): tensor_type(file_type, entry, -1, facts)
             for entry in inventory(spec) if entry.role == "vision"}
    layer = "encoder.layers.{v}"
    assert types[f"{layer}.self_attn.q_proj.weight"] == types[f"{layer}.mlp.fc1.weight"] == "F16"
    assert types[f"{layer}.layer_norm1.bias"] == "F32"
    assert types["multi_modal_projector.mm_input_projection_weight"] == "F16"


def _llama4(name: str, vision: bool = True) -> object:
    from quant_core.hf_config import model_from_hf_config
    from tests.quant_core.test_hf_config import llama4_config

    config = llama4_config(name)
    return model_from_hf_config(config if vision else config["text_config"])


def test_llama4_scout_plans_its_weights_and_chunked_kv_on_h100s() -> None:
    scout = _llama4("llama-4-scout-17b-16e-instruct")
    h100 = get_device("h100-80gb")
    result = plan(scout, Hardware(h100.planning_bytes, 4, h100.id), Workload(8192, 1),  # type: ignore[arg-type]
                  PlanOptions(weight_format=float_format("bf16"), tensor_parallel=4))
    # 108,641,793,536 bf16 parameters over 4 ranks: everything splits but the norms, the router (16 x 5120 per
    # layer, replicated), the vision tower's replicated part, and the rest of the rounding
    total = sum(device.weights_bytes for device in result.primary.devices)
    assert 2 * 108_641_793_536 < total < 2 * 108_641_793_536 + 4 * 60_000_000
    # 48 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes = 196,608 bytes a token; the 36 chunked local layers
    # (attention_chunk_size 8192) hold one chunk, as vLLM 0.19 (the default release) allocates them, the 12 global
    # ones the whole context (per release: test_llama4_chunked_attention.py)
    assert kv_bytes_per_token(scout) == 48 * 8 * 128 * 2 * 2 == 196_608
    assert kv_cache_bytes(scout, context_length=100_000) == 4096 * (12 * 100_000 + 36 * 8192)
    assert kv_cache_bytes(scout, context_length=100_000, chunked_local=False) == 196_608 * 100_000
    assert any("chunked local attention layers" in warning and "one chunk of 8,192 tokens" in warning
               for warning in result.warnings)


def test_llama4s_vision_tower_stays_16_bit_in_int4_and_is_sharded_as_mllama4_shards_it() -> None:

    with_tower = _llama4("llama-4-scout-17b-16e-instruct")
    from dataclasses import replace

    text_only = replace(with_tower, vision=None)  # type: ignore[type-var]
    tower = 871_932_416 * 2
    assert _h100_weights(with_tower)[0] - _h100_weights(text_only)[0] == tower
    # TP 2 (mllama4.py): class and position embeddings, the pre/post norms, each layer's two LayerNorms and its
    # o_proj and fc2 biases whole; q/k/v (weights and biases), o_proj, fc1 (and its bias), fc2, the patch
    # embedding, the adapter's fc1/fc2 and the projector split
    replicated = 1408 + 577 * 1408 + 4 * 1408 + 34 * (4 * 1408 + 2 * 1408)
    assert replicated == 1_106_688
    assert [w - t for w, t in zip(_h100_weights(with_tower, tp=2), _h100_weights(text_only, tp=2), strict=True)] == \
        [2 * replicated + (tower - 2 * replicated) // 2] * 2
    assert [w - t for w, t in zip(_h100_weights(with_tower, pp=2), _h100_weights(text_only, pp=2), strict=True)] == \
        [tower] * 2


def test_maverick_at_int4_quantizes_experts_shared_expert_and_dense_layers_and_keeps_the_router() -> None:
    from quant_core.inventory import weight_bytes_by_role

    maverick = _llama4("llama-4-maverick-17b-128e-instruct")
    by_role = weight_bytes_by_role(maverick, int4(128))  # type: ignore[arg-type]
    assert by_role["router"] == 24 * 128 * 5120 * 2  # 16-bit, as GPTQ/AWQ/compressed-tensors checkpoints keep it
    assert by_role["vision"] == 871_932_416 * 2
    # 128 experts x 24 layers of [16384, 5120] and [5120, 8192] at 4 bits with an fp16 scale and a packed zero
    # per 128 inputs (4.156 bits per weight at g = 128)
    expert_weights = 24 * 128 * (16384 * 5120 + 5120 * 8192)
    assert by_role["expert"] == expert_weights // 2 + expert_weights // 128 * 2 + expert_weights // 128 // 2


def test_a_gguf_plan_of_scout_quantizes_its_text_model_as_llama_quantize_does_and_keeps_the_mmproj_at_16_bits() -> None:
    from quant_core.gguf_mix import ModelFacts, tensor_type
    from quant_core.inventory import inventory

    scout = _llama4("llama-4-scout-17b-16e-instruct")
    facts = ModelFacts.of(scout)  # type: ignore[arg-type]
    types = {entry.name.removeprefix("language_model.model.layers.{i}."): tensor_type("gguf-q4_k_m", entry, 0, facts)
             for entry in inventory(scout)}  # type: ignore[arg-type]
    # layer 0 is one of use_more_bits' layers: attn_v and every ffn_down (routed and shared) Q6_K, as llama-quantize
    # gave the llama4 model of data/llama_quantize/recorded.json; the router stays F32, the vision tower F16/F32
    assert types["self_attn.v_proj.weight"] == types["feed_forward.experts.down_proj[{e}]"] == "Q6_K"
    assert types["feed_forward.shared_expert.down_proj.weight"] == "Q6_K"
    assert types["feed_forward.experts.gate_up_proj[{e}]"] == types["self_attn.q_proj.weight"] == "Q4_K"
    assert types["feed_forward.router.weight"] == "F32"
    assert types["vision_model.model.layers.{v}.mlp.fc1.weight"] == "F16"
    assert types["vision_model.class_embedding"] == "F32"
    assert types["language_model.lm_head.weight"] == "Q6_K"
