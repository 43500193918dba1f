"""vLLM 0.19's speculative decoding (``--speculative-config``), by hand from vLLM 0.19.0's code:

* config/speculative.py ``SpeculativeConfig``: ``hf_config_override`` maps deepseek_v3 to ``DeepSeekMTPModel``;
  ``__post_init__`` refuses num_speculative_tokens above n_predict that it does not divide;
  ``max_num_new_slots_for_drafting`` is 0 for mtp and ngram (max_num_batched_tokens unchanged).
* model_executor/models/deepseek_mtp.py ``DeepSeekMultiTokenPredictorLayer``: a ``DeepseekV2DecoderLayer`` with the
  target's quant_config, ``enorm``/``hnorm``/``shared_head.norm`` (RMSNorm) and ``eh_proj = nn.Linear(2h, h)``;
  v1/spec_decode/eagle.py ``_maybe_share_embeddings`` / ``_maybe_share_lm_head`` swap its embedding and head for the
  target's inside gpu_model_runner.py ``load_model``'s ``DeviceMemoryProfiler``, whose ``gc.collect()`` and
  ``empty_cache()`` (utils/mem_utils.py, platforms/cuda.py ``get_current_memory_usage``) free them before "Model
  loading took" is measured: a transient of the load alone; ``EagleProposer.__init__`` allocates its buffers.
* v1/core/kv_cache_utils.py: the MTP layer's MLA spec equals the target's, one group of 62 layers.
* config/vllm.py ``_set_cudagraph_sizes``: largest size ``min(max_num_seqs x (1 + k) x 2, 512)``;
  config/compilation.py ``adjust_cudagraph_sizes_for_spec_decode``: sizes rounded up to multiples of 1 + k;
  v1/cudagraph_dispatcher.py: FULL decode graphs from 1 + k to max_num_seqs x (1 + k) tokens.
* v1/worker/gpu_model_runner.py ``_dummy_sampler_run``: the rejection sampler's warm-up after the sampler's.
"""

from __future__ import annotations

import pytest

from quant_core.catalog import device_facts, get_device, get_preset, get_preset_info
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.torch_cuda import allocated_block_bytes
from quant_core.engines.vllm import VllmProfile, outside_budget, speculative_serving_excess
from quant_core.engines.vllm_graphs import cudagraph_capture_sizes, cudagraph_count, largest_full_graph
from quant_core.engines.vllm_sampler import sampler_pass_bytes
from quant_core.engines.vllm_speculative import (
    SpeculativeDecoding,
    drafter_buffer_bytes,
    drafter_load_bytes,
    mtp_front_bytes,
    rejection_warmup,
    rejection_warmup_0_11_bytes,
    serving_rejection_0_11_bytes,
    serving_rejection_bytes,
)
from quant_core.errors import InvalidSpec
from quant_core.formats import float_format
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

MIB = 2**20
H200_X8 = Hardware(get_device("h200").planning_bytes, 8, "h200")
WORKLOAD = Workload(32_768, 1)
HIDDEN = 7168
VOCABULARY = 129_280  # a multiple of 64: vLLM's padded vocabulary is the same
TOKENS, SEQUENCES = 8192, 1024  # vLLM 0.19's defaults on a device of 70 GiB or more, not an A100

# DeepSeek-V3's layer 60 (a MoE layer, like the MTP layer 61) on one of 8 ranks, fp8 with [128, 128] blocks (a fp32
# scale per block): 256 routed experts of gate/up (2048 x 7168) and down (7168 x 2048), each sliced to 256 of 2048
# (ceil(bytes / 8)); the shared expert likewise; MLA's down-projections whole (ReplicatedLinear), the others
# ceil(bytes / 8); norms (7168 x 2, 1536, 512) in bf16, the router (256 x 7168) in bf16 and its correction bias (256)
# in float32 as deepseek_v2.py allocates it (``torch.empty(n_routed_experts, dtype=torch.float32)``; 512 bytes more
# than the bf16 nibble counted before), whole
EXPERT_MATRIX = -(-(2048 * 7168 + 16 * 56 * 4) // 8)  # 1,835,456
ROUTED = 256 * 3 * EXPERT_MATRIX
SHARED = 3 * EXPERT_MATRIX
ATTENTION = 1536 * 7168 + 12 * 56 * 4 + 576 * 7168 + 5 * 56 * 4 + sum(-(-size // 8) for size in (  # q_a, kv_a whole
    24576 * 1536 + 192 * 12 * 4,  # q_b_proj
    32768 * 512 + 256 * 4 * 4,  # kv_b_proj
    7168 * 16384 + 56 * 128 * 4))  # o_proj
NORMS = (2 * 7168 + 1536 + 512) * 2
ROUTER = 256 * 7168 * 2 + 256 * 4
LAYER_60 = ROUTED + SHARED + ATTENTION + NORMS + ROUTER
# the MTP layer's eh_proj (2h -> h) and three RMSNorms, unquantized bf16 on every rank
FRONT = (2 * HIDDEN * HIDDEN + 3 * HIDDEN) * 2
MLA_BYTES_PER_TOKEN = (512 + 64) * 2  # kv_lora_rank + qk_rope_head_dim, bf16: one MLA layer
PAGE = 16 * MLA_BYTES_PER_TOKEN


def deepseek_v3(speculative: SpeculativeDecoding | None, **options: object) -> Plan:
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    return plan(get_preset("deepseek-v3"), H200_X8, WORKLOAD,
                PlanOptions(engine_version="0.19", scheme=scheme, speculative=speculative, **options))  # type: ignore[arg-type]


def test_deepseek_v3_fp8_on_8_h200_with_mtp_1_holds_the_mtp_layer_on_every_rank_beside_the_target() -> None:
    assert get_preset_info("deepseek-v3").mtp_layers == 1
    assert LAYER_60 == 1_455_484_064 and FRONT == 205_563_904
    without = deepseek_v3(None).primary.devices[0]
    mtp = deepseek_v3(SpeculativeDecoding("mtp", 1, 1)).primary.devices[0]
    assert mtp.weights_bytes - without.weights_bytes == LAYER_60 + FRONT == 1_661_047_968
    assert mtp_front_bytes(get_preset("deepseek-v3"), 2) == FRONT


def test_deepseek_v3_with_mtp_1_pools_62_mla_layers_a_token() -> None:
    without, mtp = deepseek_v3(None), deepseek_v3(SpeculativeDecoding("mtp", 1, 1))
    # the workload's cache: one more MLA layer a token
    assert without.primary.devices[0].kv_cache_bytes == 61 * MLA_BYTES_PER_TOKEN * 32_768
    assert mtp.primary.devices[0].kv_cache_bytes == 62 * MLA_BYTES_PER_TOKEN * 32_768
    # vLLM's pool: num_blocks = available // (page x 62 layers), 16 tokens a block
    pool = mtp.primary.kv_pool_bytes
    assert pool is not None and mtp.primary.kv_capacity_tokens == pool // (PAGE * 62) * 16
    assert without.primary.kv_pool_bytes is not None
    assert without.primary.kv_capacity_tokens == without.primary.kv_pool_bytes // (PAGE * 61) * 16


def test_the_rejection_sampler_and_the_drafters_buffers_are_charged_by_hand() -> None:
    without = deepseek_v3(None).primary.devices[0]
    mtp = deepseek_v3(SpeculativeDecoding("mtp", 1, 1)).primary.devices[0]
    ngram = deepseek_v3(SpeculativeDecoding("ngram", 3)).primary.devices[0]
    # the sampler warm-up decides the peak: 1024 rows x (2 x vocabulary x 2 bytes of random logits + two float32
    # copies: the target rows' copy, clone and softmax and the recovered tokens' q and 1/q where the sampler held three)
    rejection = SEQUENCES * (2 * VOCABULARY * 2 + 8 * VOCABULARY)
    assert mtp.activation_bytes - without.activation_bytes == rejection == 1_588_592_640
    assert ngram.activation_bytes - without.activation_bytes == rejection
    # ngram runs no model: no weights, KV or buffers (its capture sizes at 1 + 3 stay 51 up to 512)
    assert ngram.weights_bytes == without.weights_bytes and ngram.kv_cache_bytes == without.kv_cache_bytes
    # outside the budget: EagleProposer's buffers (input_ids int32, positions and slot mapping int64, hidden states
    # and input embeddings T x 7168 bf16 = 112 MiB each, arange max(S + 1, T) int32, backup ids S int32) and the
    # MTP layer's CUDA graphs at the per-layer rate (19 MiB a layer at 51 sizes)
    buffers = 8192 * 4 + 2 * 8192 * 8 + 2 * 112 * MIB + 8192 * 4 + 1024 * 4
    assert drafter_buffer_bytes(get_preset("deepseek-v3"), BatchLimits(TOKENS, SEQUENCES, 0, 1, 1), 2) == buffers
    assert allocated_block_bytes(TOKENS * HIDDEN * 2) == 112 * MIB
    assert mtp.outside_budget_bytes - without.outside_budget_bytes == buffers + 19 * MIB == 255_004_672


@pytest.mark.parametrize(("max_num_seqs", "tokens", "sizes"), [
    (1024, 0, (1, 2, 4, *range(8, 256, 8), *range(256, 513, 16))),  # 51 sizes up to 512
    (1024, 1, (2, 4, *range(8, 256, 8), *range(256, 513, 16))),  # 1 rounds to 2: 50
    (16, 0, (1, 2, 4, 8, 16, 24, 32)),  # min(2 x 16, 512)
    (16, 1, (2, 4, *range(8, 65, 8))),  # min(16 x 2 x 2, 512) = 64, rounded to even
    (16, 3, (4, *range(8, 129, 8))),  # min(16 x 4 x 2, 512) = 128, rounded to multiples of 4
])
def test_0_19_capture_sizes_grow_with_the_decode_query_and_round_to_it(max_num_seqs: int, tokens: int,
                                                                        sizes: tuple[int, ...]) -> None:
    limits = BatchLimits(TOKENS, max_num_seqs, speculative_tokens=tokens)
    assert cudagraph_capture_sizes("0.19", limits) == sizes
    piecewise, full = cudagraph_count("0.19", limits)
    query = 1 + tokens
    assert piecewise == len(sizes)
    assert full == sum(1 for size in sizes if query <= size <= max_num_seqs * query)


def test_the_graph_charge_takes_the_unrounded_sizes_never_fewer() -> None:
    # a backend without FULL uniform-batch graphs keeps the unrounded sizes (PIECEWISE only): 0.19 counts them
    limits = BatchLimits(TOKENS, 16, speculative_tokens=1)
    assert len(cudagraph_capture_sizes("0.19", limits, rounded=False)) == 11
    assert len(cudagraph_capture_sizes("0.19", limits)) == 10


@pytest.mark.parametrize(("speculative", "options", "field", "words"), [
    (SpeculativeDecoding("mtp", 1, 1), {"engine_version": "0.33"}, "runtime.engine_version", "Model Runner V2"),
    (SpeculativeDecoding("ngram", 2), {"engine_version": "0.33"}, "runtime.engine_version", "NgramGPUSpeculator"),
    (SpeculativeDecoding("mtp", 1, 1), {"engine_version": "0.11"}, "runtime.engine_version", "EagleProposer"),
    (SpeculativeDecoding("mtp", 1, 0), {}, "runtime.speculative.method", "no multi-token-prediction layers"),
    (SpeculativeDecoding("mtp", 3, 2), {}, "runtime.speculative.num_speculative_tokens", "divisible by n_predict"),
    (SpeculativeDecoding("mtp", 1, 1), {"pipeline_parallel": 2}, "parallel.pipeline", "pipeline parallelism"),
])
def test_what_is_not_planned_is_a_refusal_naming_the_field(speculative: SpeculativeDecoding,
                                                            options: dict[str, object], field: str,
                                                            words: str) -> None:
    preset = get_preset_info("deepseek-v3")
    scheme = scheme_from_quantization_config(preset.quantization_config or {})
    base: dict[str, object] = {"engine_version": "0.19", "scheme": scheme, "speculative": speculative}
    with pytest.raises(InvalidSpec) as raised:
        plan(get_preset("deepseek-v3"), H200_X8, WORKLOAD, PlanOptions(**{**base, **options}))  # type: ignore[arg-type]
    assert raised.value.field == field and words in raised.value.reason


def test_mtp_on_a_model_type_without_a_read_drafter_and_the_generic_engine_are_refused() -> None:
    with pytest.raises(InvalidSpec) as raised:
        plan(get_preset("llama-3.1-8b"), Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"),
             WORKLOAD, PlanOptions(engine_version="0.19", speculative=SpeculativeDecoding("mtp", 1, 1)))
    assert raised.value.field == "runtime.speculative.method" and "'llama'" in raised.value.reason
    with pytest.raises(InvalidSpec) as raised:
        PlanOptions(engine="generic", speculative=SpeculativeDecoding("ngram", 1))
    assert raised.value.field == "runtime.speculative"


@pytest.mark.parametrize(("method", "tokens", "field"), [
    ("eagle", 1, "runtime.speculative.method"), ("eagle3", 2, "runtime.speculative.method"),
    ("lookahead", 1, "runtime.speculative.method"), ("mtp", 0, "runtime.speculative.num_speculative_tokens"),
    ("ngram", 33, "runtime.speculative.num_speculative_tokens"),
])
def test_methods_that_need_a_draft_model_and_bad_counts_are_refused(method: str, tokens: int, field: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        SpeculativeDecoding(method, tokens)
    assert raised.value.field == field


def test_the_same_model_with_and_without_speculation_plans_apart() -> None:
    # the caches key on the batch limits that carry it: asking without after with gives the plain figures again
    first = deepseek_v3(None).primary.devices[0]
    deepseek_v3(SpeculativeDecoding("mtp", 1, 1))
    again = deepseek_v3(None).primary.devices[0]
    assert again == first


def test_the_mtp_layer_takes_a_layers_share_of_the_allocator_blocks_nibble_charges_per_layer() -> None:
    # DeepSeek-V3 in bf16: every weight of 10 MiB or more holds a 2 MiB-rounded segment (`weight_allocation_slack`),
    # charged per decoder layer of the stage; the MTP layer takes the stage's average layer's share, rounded up
    spec, bf16 = get_preset("deepseek-v3"), float_format("bf16")
    allocation = VllmProfile("0.19").weight_allocation(Stage(spec, 8, 1, (0, 61), True), "bf16")
    assert allocation is not None and allocation.bytes > 0
    overheads = [plan(spec, H200_X8, WORKLOAD, PlanOptions(engine_version="0.19", weight_format=bf16,
                                                          speculative=speculative)).primary.devices[0].overhead_bytes
                 for speculative in (None, SpeculativeDecoding("mtp", 1, 1))]
    assert overheads[1] - overheads[0] == -(-allocation.bytes // 61)


def test_a_full_decode_step_of_three_drafts_needs_more_than_the_warm_up_measured() -> None:
    # serving: min(1024, 8192 // 4) = 1024 requests of 4 tokens; the step's 8192 hidden states and 4096 gathered rows,
    # 4096 + 1024 rows of bf16 logits, then 3072 target rows x 3 float32 copies and 1024 x 2 float32 draws
    limits = BatchLimits(TOKENS, SEQUENCES, speculative_tokens=3)
    spec = get_preset("deepseek-v3")
    serving = ((8192 + 4096) * HIDDEN * 2 + 1024 * 5 * VOCABULARY * 2 + 1024 * VOCABULARY * (12 * 3 + 8))
    assert serving_rejection_bytes(spec, limits, VOCABULARY, 2) == serving == 7_324_827_648
    # the warm-up (one draft a request) measured less: the rest comes from the memory the budget leaves free
    without = deepseek_v3(None).primary.devices[0]
    ngram = deepseek_v3(SpeculativeDecoding("ngram", 3)).primary.devices[0]
    excess = speculative_serving_excess(Stage(spec, 8, 1, (0, 61), True), limits, "0.19", "fp8-block128",
                                        device_facts("h200"))
    assert excess is not None and 0 < excess.bytes < serving
    assert ngram.outside_budget_bytes - without.outside_budget_bytes == excess.bytes
    # one draft a request is what the warm-up ran: nothing beyond it
    one = BatchLimits(TOKENS, SEQUENCES, speculative_tokens=1)
    assert speculative_serving_excess(Stage(spec, 8, 1, (0, 61), True), one, "0.19", "fp8-block128",
                                      device_facts("h200")) is None


def test_glm_4_5_air_with_mtp_1_pools_one_more_gqa_layer_and_holds_its_eh_proj_whole() -> None:
    # Glm4MoeMTP (glm4_moe_mtp.py): a Glm4MoeDecoderLayer with the target's quant_config (layer 46, a MoE layer like
    # layer 45) and eh_proj nn.Linear(2 x 4096, 4096) plus three norms, bf16 on every rank; at TP 4 each of the
    # 8 KV heads' 2 a rank holds K and V of 128: 2 x 2 x 128 x 2 = 1,024 bytes a token a layer
    spec = get_preset("glm-4.5-air")
    assert get_preset_info("glm-4.5-air").mtp_layers == 1
    hardware = Hardware(get_device("h200").planning_bytes, 4, "h200")
    plans = [plan(spec, hardware, WORKLOAD, PlanOptions(engine_version="0.19", weight_format=float_format("bf16"),
                                                       speculative=speculative)).primary
             for speculative in (None, SpeculativeDecoding("mtp", 2, 1))]
    per_token = 2 * 2 * 128 * 2
    assert plans[0].devices[0].kv_cache_bytes == 46 * per_token * 32_768
    assert plans[1].devices[0].kv_cache_bytes == 47 * per_token * 32_768
    front = (2 * 4096 * 4096 + 3 * 4096) * 2
    assert mtp_front_bytes(spec, 2) == front == 67_133_440
    # layer 45 in bf16 at TP 4, as nibble charges it: 128 experts of gate/up/down 1408 x 4096 and the shared expert
    # split 4 ways; q (12,288 x 4096), k and v (1024 x 4096) and o split, and their q/k/v biases with them
    # (QKVParallelLinear's bias is column-parallel: 1,172,615,680 when nibble held them whole); the two norms whole;
    # the router and its correction bias in float32 (vLLM's glm4_moe.py gate), whole
    layer_45 = (128 * 3 * 1408 * 4096 * 2 // 4 + 3 * 1408 * 4096 * 2 // 4
                + (12288 + 2 * 1024) * 4096 * 2 // 4 + 4096 * 12288 * 2 // 4
                + (12288 + 2 * 1024) * 2 // 4 + 2 * 4096 * 2 + (128 * 4096 + 128) * 4)
    assert layer_45 == 1_172_594_176
    assert plans[1].devices[0].weights_bytes - plans[0].devices[0].weights_bytes == layer_45 + front


# vLLM 0.19's start-up memory of a MoE model at tensor parallel 2 or more (engines/vllm.py STARTUP_V0_19: one GPU, the
# tensor-parallel communicator, the expert group's)
MOE_TP_STARTUP = (523 + 1065 + 492) * MIB


def test_deepseek_v3_drafters_own_embedding_and_head_are_a_load_transient_the_budget_holds_on_8_h200() -> None:
    # deepseek_mtp.py: the drafter builds its own embed_tokens (VocabParallelEmbedding, no quant_config) and layer 61's
    # shared_head.head (ParallelLMHead: Fp8Config quantizes no LM head), 129,280 / 8 = 16,160 rows x 7168 bf16 each on
    # a rank, loads them and swaps them for the target's (eagle.py) before "Model loading took": in no budget term
    spec = get_preset("deepseek-v3")
    one = 16_160 * HIDDEN * 2
    assert drafter_load_bytes(spec, 8, VOCABULARY, 1, 2) == 2 * one == 463_339_520
    limits = BatchLimits(TOKENS, SEQUENCES, 32_768, 1, 1)
    budget = outside_budget(Stage(spec, 8, 1, (0, 61), True), "auto", limits, "0.19", device=device_facts("h200"),
                            expert_format="fp8-block128")
    assert budget.load is not None and budget.load.bytes == 2 * one
    assert budget.startup.bytes == MOE_TP_STARTUP and budget.drafter is not None
    # while loading, outside the budget: the start-up memory, the drafter's buffers and what of the transient the
    # budget still free then does not hold
    assert budget.load_bytes(0) == MOE_TP_STARTUP + budget.drafter.bytes + 2 * one
    assert budget.load_bytes(one) == MOE_TP_STARTUP + budget.drafter.bytes + one
    # on 8 H200 at 0.9 the budget beyond the weights and overhead (the KV pool and profiling peak, allocated only
    # after the load) holds it 90 times over: the load phase stays under what serving takes outside, no figure moves
    mtp = deepseek_v3(SpeculativeDecoding("mtp", 1, 1)).primary.devices[0]
    room = mtp.usable_bytes - mtp.weights_bytes - mtp.overhead_bytes - budget.load_held
    assert room > 90 * 2 * one
    assert budget.load_bytes(room) == MOE_TP_STARTUP + budget.drafter.bytes < mtp.outside_budget_bytes


def _glm_4_5_air_tp2(capacity_bytes: int, utilization: float, speculative: SpeculativeDecoding | None) -> Plan:
    """GLM-4.5-Air in bf16 at TP 2, eager, 256 batched tokens and 16 sequences, on two Hopper devices of
    `capacity_bytes`."""
    return plan(get_preset("glm-4.5-air"), Hardware(capacity_bytes, 2, compute_capability=(9, 0), compute_units=132),
                Workload(1024, 1), PlanOptions(engine_version="0.19", weight_format=float_format("bf16"),
                                               max_batched_tokens=256, max_num_seqs=16, enforce_eager=True,
                                               memory_utilization=utilization, speculative=speculative))


def test_glm_4_5_air_with_mtp_does_not_fit_where_the_drafters_load_transient_outgrows_the_free_memory() -> None:
    # glm4_moe_mtp.py as deepseek_mtp.py: at TP 2, 151,552 / 2 = 75,776 rows x 4096 bf16 for the embedding and the head
    spec = get_preset("glm-4.5-air")
    one = 75_776 * 4096 * 2
    assert drafter_load_bytes(spec, 2, 151_552, 1, 2) == 2 * one == 1_241_513_984
    mtp = SpeculativeDecoding("mtp", 1, 1)
    # 114.3 GB devices at 0.98: the budget holds weights, overhead, profiling peak and the workload's cache, and
    # what it leaves free the start-up memory and the drafter's buffers (the verdict before the load was charged) ...
    assert _glm_4_5_air_tp2(114_300_000_000, 0.98, None).primary.fits
    tight = _glm_4_5_air_tp2(114_300_000_000, 0.98, mtp)
    device = tight.primary.devices[0]
    assert device.used_bytes <= device.usable_bytes
    buffers = drafter_buffer_bytes(spec, BatchLimits(256, 16, None, 1, 1), 2)
    assert MOE_TP_STARTUP + buffers <= 114_300_000_000 - device.usable_bytes
    # ... but while loading the device holds the start-up memory, the buffers, the weights, the overhead and the
    # rotary cache (built with the model), and the transient on top: more than the device has
    budget = outside_budget(Stage(spec, 2, 1, (0, 46), True), "auto", BatchLimits(256, 16, 1024, 1, 1), "0.19", True,
                            device_facts("h200"), "bf16")
    loading = (MOE_TP_STARTUP + buffers + device.weights_bytes + device.overhead_bytes + budget.load_held
               + 2 * one)
    assert loading - 114_300_000_000 == 726_361_856 + budget.load_held
    room = device.usable_bytes - device.weights_bytes - device.overhead_bytes - budget.load_held
    assert device.outside_budget_bytes == MOE_TP_STARTUP + buffers + 2 * one - room
    assert not tight.primary.fits
    assert any("run out of memory loading the MTP drafter" in warning for warning in tight.warnings)
    # whatever the context or sequences: the solvers share the verdict
    assert tight.primary.max_context_length is None and tight.primary.max_concurrent_sequences == 0
    # 0.9 GB more a device holds it
    roomier = _glm_4_5_air_tp2(115_200_000_000, 0.975, mtp).primary
    assert roomier.fits and roomier.max_context_length is not None and roomier.max_context_length >= 1024


# vLLM 0.11's ngram, by hand from v0.11.0's code: Llama-3.1-8B (hidden 4096, vocabulary 128,256: a multiple of 64, so
# the padded vocabulary is the same) in bf16 on one H100 80GB, 0.11's defaults there: 8192 tokens, 1024 sequences
LLAMA_HIDDEN, LLAMA_VOCABULARY = 4096, 128_256
H100 = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")


def llama_on_0_11(speculative: SpeculativeDecoding | None) -> Plan:
    return plan(get_preset("llama-3.1-8b"), H100, WORKLOAD, PlanOptions(engine_version="0.11", speculative=speculative))


@pytest.mark.parametrize("tokens", [1, 3])
def test_0_11_capture_sizes_do_not_grow_with_the_decode_query_and_full_graphs_start_at_it(tokens: int) -> None:
    # config/scheduler.py: cuda_graph_sizes = [min(max_num_seqs x 2, 512)] whatever the speculative config, no
    # rounding; gpu_model_runner.py capture_model: FULL decode graphs of sizes from 1 + k to max_num_seqs x (1 + k)
    # (0.19 would capture up to min(16 x (1 + k) x 2, 512) = 64 or 128, rounded to multiples of 1 + k)
    limits = BatchLimits(TOKENS, 16, speculative_tokens=tokens)
    sizes = (1, 2, 4, 8, 16, 24, 32)  # min(16 x 2, 512) = 32
    assert cudagraph_capture_sizes("0.11", limits) == sizes
    assert cudagraph_capture_sizes("0.11", limits, rounded=False) == sizes
    assert cudagraph_count("0.11", limits) == (7, 6 if tokens == 1 else 5)  # FULL from 2 or from 4 tokens
    # the largest FULL graph counted in tokens (up to 16 x (1 + k)), not sequences (16): the safe side for the
    # fitted excess of FULL graphs above 256 sequences
    assert largest_full_graph("0.11", limits) == 32


def test_0_11_ngram_runs_no_model_and_its_rejection_warm_up_stays_below_the_sampler_pass() -> None:
    without, ngram = llama_on_0_11(None), llama_on_0_11(SpeculativeDecoding("ngram", 3))
    plain, drafted = without.primary.devices[0], ngram.primary.devices[0]
    assert drafted.weights_bytes == plain.weights_bytes and drafted.kv_cache_bytes == plain.kv_cache_bytes
    assert ngram.primary.kv_capacity_tokens == without.primary.kv_capacity_tokens
    # the sampler pass over 1024 rows: the dummy run's 8192 hidden states and two copies of the 1024 rows, the bf16
    # logits, and at the PyTorch sort of their float32 copy 36 bytes a logit (4 + 4 + 8 + 20)
    held = (8192 + 2 * 1024) * LLAMA_HIDDEN * 2 + 1024 * LLAMA_VOCABULARY * 2
    sampler = held + 1024 * LLAMA_VOCABULARY * 36
    assert sampler == 5_074_583_552
    # the rejection warm-up beside the same: randn target logits in bf16 (2) and compute_probs' sort of them (sorted
    # bf16 2, int64 indices 8, the sort's buffers with 2-byte keys 8 + 2 + 8), 30 bytes a logit, and 12 small
    # tensors of 1024 x 8 bytes: below the sampler pass, so the activation does not move
    spec = get_preset("llama-3.1-8b")
    peak = held + 1024 * LLAMA_VOCABULARY * 30 + 12 * 8192
    assert rejection_warmup_0_11_bytes(spec, 1024, 8192, LLAMA_VOCABULARY, 2) == peak == 4_286_676_992
    assert rejection_warmup(spec, "0.11", 1024, 8192, LLAMA_VOCABULARY, 2, sampler)[0] == 0
    assert drafted.activation_bytes == plain.activation_bytes
    assert "rejection sampler" in ngram.activation.basis and "0.11" in ngram.activation.basis


def test_0_11_rejection_warm_up_of_a_float32_model_adds_its_small_tensors_to_the_sampler_pass() -> None:
    # float32 logits: the sort holds the target (4), sorted values (4), int64 indices (8) and 20 bytes of buffers,
    # 36 bytes a logit like the sampler's sort: only the 12 small tensors of 1024 x 8 bytes are beyond it
    spec = get_preset("llama-3.1-8b")
    sampled, _basis = sampler_pass_bytes(spec, 1024, 8192, device_facts("h100-80gb"), "0.11", 4)
    assert rejection_warmup(spec, "0.11", 1024, 8192, LLAMA_VOCABULARY, 4, sampled)[0] == 12 * 8192


def test_0_11_full_decode_step_of_three_drafts_sorts_3072_target_rows_beyond_the_profiling_peak() -> None:
    # serving: min(1024, 8192 // 4) = 1024 requests of 4 tokens; held: 8192 hidden states, 4096 gathered rows, their
    # 4096 rows of bf16 logits and the 1024 bonus rows' copy; then the larger of the bonus sampler (1024 rows x 36),
    # compute_probs over the 3072 target rows' copy (2 + 28 = 30 a logit) and the recovered tokens (3072 x (2 + 4) +
    # 1024 x 4): compute_probs, with 12 small tensors of 4096 x 8 bytes
    spec = get_preset("llama-3.1-8b")
    limits = BatchLimits(8192, 1024, speculative_tokens=3)
    held = (8192 + 4096) * LLAMA_HIDDEN * 2 + 4096 * LLAMA_VOCABULARY * 2 + 1024 * LLAMA_VOCABULARY * 2
    assert max(1024 * 36, 3072 * 6 + 1024 * 4) < 3072 * 30
    serving = held + 3072 * LLAMA_VOCABULARY * 30 + 12 * 32_768
    assert serving_rejection_0_11_bytes(spec, limits, LLAMA_VOCABULARY, 2) == serving == 13_234_470_912
    # beyond the profiling peak, the sampler pass (5,074,583,552: the forward pass is 0.84 GiB), from outside the
    # budget; two FULL graphs fewer (sizes 1 and 2 are below 1 + 3): 2 x 32 layers x 293 KiB less graph memory
    excess = speculative_serving_excess(Stage(spec, 1, 1, (0, 32), True), limits, "0.11", "",
                                        device_facts("h100-80gb"))
    assert excess is not None and excess.bytes == serving - 5_074_583_552 == 8_159_887_360
    plain = llama_on_0_11(None).primary.devices[0]
    drafted = llama_on_0_11(SpeculativeDecoding("ngram", 3)).primary.devices[0]
    assert drafted.outside_budget_bytes - plain.outside_budget_bytes == excess.bytes - 2 * 32 * 293 * 1024


@pytest.mark.parametrize("version", ["0.11", "0.19"])
def test_ngram_on_a_model_with_linear_attention_is_refused_for_its_state_blocks(version: str) -> None:
    # vLLM gives each request 1 + k recurrent-state blocks a linear-attention group under speculative decoding
    # (MambaSpec.num_speculative_blocks = num_speculative_tokens), where nibble's state paging charges one: the plan
    # would promise sequences the engine cannot hold
    with pytest.raises(InvalidSpec) as raised:
        plan(get_preset("qwen3-next-80b-a3b-instruct"), Hardware(get_device("h100-80gb").planning_bytes, 4,
                                                                  "h100-80gb"),
             WORKLOAD, PlanOptions(engine_version=version, speculative=SpeculativeDecoding("ngram", 3)))
    assert raised.value.field == "runtime.speculative.method"
    assert "num_speculative_blocks" in raised.value.reason and "4 recurrent-state blocks" in raised.value.reason
