"""A MoE model under vLLM's data parallelism (``--data-parallel-size``, with or without ``--enable-expert-parallel``),
as nibble plans it for vLLM 0.19 and 0.33.  Every figure is derived by hand from vLLM's code (0.19.0 and 0.33.0
wheels) and the checkpoints' shapes:

* ``FusedMoEParallelConfig.make`` (model_executor/layers/fused_moe/config.py): the MoE layers of a data-parallel
  deployment form one group of data x tensor ranks: under expert parallelism ``ep_size`` = data x tensor, whole
  experts placed by ``determine_expert_map`` (fused_moe/layer.py in 0.19), else ``flatten_tp_across_dp`` slices each
  expert's width over data x tensor ranks; attention, shared experts and dense layers stay split by tensor
  parallelism alone, whole on every data-parallel rank.
* ``profile_run`` (v1/worker/gpu_model_runner.py) runs ``_dummy_run(max_num_tokens)`` on every data-parallel rank
  (``coordinate_batch_across_dp``: each rank's count in ``num_tokens_across_dp``), and the default all2all backend,
  allgather_reducescatter (``AgRsAll2AllManager.dispatch``, distributed/device_communicators/all2all.py), gathers
  them all into each MoE layer, unchunked (``use_dp_chunking`` is for DeepEP low-latency, MORI, FlashInfer NVLink,
  NIXL); under expert parallelism with tensor parallel > 1 (``ParallelConfig.use_sequence_parallel_moe``) each
  tensor-parallel rank sends ``ceil(tokens / tp)`` (forward_context.py ``_compute_sp_num_tokens``).
* The fused-MoE workspace on those rows: ``TritonExperts.workspace_shapes`` (fused_moe/fused_moe.py in 0.19)
  ``M x k x max(w, K)`` + ``M x k x max(2w, K)`` bf16, kept by the workspace manager; MXFP4 on Hopper:
  ``OAITritonMxfp4ExpertsMonolithic._supports_parallel_config`` refuses dp_size > 1, so the TRITON backend's next
  class, ``OAITritonExperts`` (gpt_oss_triton_kernels_moe.py), with ``M x k x w`` + ``M x K``, kept.
* ``initialize_model_parallel`` (distributed/parallel_state.py): a MoE model's data-parallel group and its expert
  group over data x tensor ranks, each charged the tensor-parallel start-up figure (1065 MiB on 0.19: no log shows
  them alone, the safe side).
"""

from __future__ import annotations

import random

import pytest

from quant_core.catalog import device_facts, get_device, list_presets
from quant_core.engines.base import BatchLimits, Stage
from quant_core.engines.vllm import VllmProfile, outside_budget
from quant_core.engines.vllm_graphs import cuda_graph_pool
from quant_core.engines.vllm_moe_buffers import cutlass_moe_runtime_workspace_bytes, fused_moe_caches
from quant_core.engines.vllm_parallel import moe_data_parallel_format_refusal, moe_dispatch_bytes, moe_dispatched_tokens
from quant_core.engines.vllm_releases import startup_memory
from quant_core.errors import InvalidSpec
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import scheme_from_quantization_config

MIB = 1 << 20
PRESETS = {preset.id: preset for preset in list_presets()}
H200 = get_device("h200").memory_bytes
H100 = get_device("h100-80gb").memory_bytes
LIMITS = BatchLimits(max_batched_tokens=8192, max_num_seqs=1024)  # vLLM's defaults on a device of 70 GiB or more

# DeepSeek-V3 as shipped, fp8 e4m3 in [128, 128] blocks with a float32 weight_scale_inv per block: one routed
# expert is gate and up (2048 x 7168 each) and down (7168 x 2048) at one byte a weight, 3 x 14,680,064 bytes, and
# 3 x 16 x 56 float32 scales (10,752 bytes); 58 MoE layers (first_k_dense_replace = 3 of 61)
DEEPSEEK_EXPERT_BYTES = 3 * 2048 * 7168 + 3 * 16 * 56 * 4
# gpt-oss-120b's MXFP4 expert: gate_up 5760 x 2880 and down 2880 x 2880 at half a byte, an e8m0 scale per 32, and
# its bf16 biases (5760 + 2880); 36 MoE layers
GPT_OSS_EXPERT_BYTES = (5760 * 2880 + 2880 * 2880) // 2 + (5760 * 2880 + 2880 * 2880) // 32 + (5760 + 2880) * 2
# Qwen3-235B-A22B in bf16: gate, up and down of 1536 x 4096; 94 MoE layers
QWEN3_EXPERT_BYTES = 3 * 1536 * 4096 * 2


def _plan(preset: str, device: str, capacity: int, count: int, sequences: int = 8, **options: object) -> Plan:
    info = PRESETS[preset]
    if info.quantization_config is not None and "scheme" not in options:
        options["scheme"] = scheme_from_quantization_config(info.quantization_config)
    return plan(info.spec, Hardware(capacity, count, device), Workload(8192, sequences),
                PlanOptions(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["0.19", "0.33"])
@pytest.mark.parametrize("expert_parallel", [True, False])
def test_deepseek_v3_at_data_8_on_h200s_holds_an_eighth_of_the_experts_beside_the_whole_attention(
        version: str, expert_parallel: bool) -> None:
    # DP 8 (+ EP): 256 / 8 = 32 whole experts a rank (determine_expert_map), or without EP each expert's 2048-wide
    # intermediate in 256-wide slices (flatten_tp_across_dp: whole 128-blocks, the same bytes); everything else
    # (MLA attention, the shared expert, the three dense layers, embedding, lm_head) is whole, as on one GPU
    single = _plan("deepseek-v3", "h200", H200, 1, engine_version=version)
    data = _plan("deepseek-v3", "h200", H200, 8, engine_version=version, data_parallel=8,
                 expert_parallel=expert_parallel)
    assert (data.tensor_parallel, data.data_parallel) == (1, 8)
    held = data.primary.devices[0].weights_bytes - single.primary.devices[0].weights_bytes
    assert held == (32 - 256) * 58 * DEEPSEEK_EXPERT_BYTES == -572_309_864_448
    assert data.primary.fits and data.primary.refusal is None
    note = next(note for note in data.warnings if note.startswith("Data parallel 8"))
    placed = ("32 of the 256 on the most loaded rank" if expert_parallel
              else "2048-wide intermediate sliced over the 8 ranks, 256 a rank")
    assert placed in note and "65,536 rows" in note
    assert not any(note.startswith("Expert parallelism (runtime.expert_parallel) changes nothing")
                   for note in data.warnings)


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_deepseek_v3s_profiling_peak_holds_the_fused_moe_workspace_of_65536_gathered_rows(version: str) -> None:
    spec, h200 = PRESETS["deepseek-v3"].spec, device_facts("h200")
    sliced = Stage(spec, 1, 1, (0, 61), True, 2, False, 8)
    alone = Stage(spec, 1, 1, (0, 61), True, 2, False, 1)
    assert moe_dispatched_tokens(sliced, 8192) == 8 * 8192 == 65_536
    # the gathered hidden states (7168 x 2 bytes) and router logits (256 x float32) of each row
    assert moe_dispatch_bytes(sliced, 8192) == 65_536 * (7168 * 2 + 256 * 4) == 1_006_632_960
    # without EP oracle/fp8.py puts TRITON first on Hopper: TritonExperts on 256-wide slices of the 256 experts
    # (w = 256 < K = 7168): 65,536 x 8 x (7168 + 7168) x 2 bytes, kept by the workspace manager
    caches = fused_moe_caches(spec, 8, 65_536, version, "fp8-block128", h200, False, True)
    assert caches.nbytes == 65_536 * 8 * (7168 + 7168) * 2 == 15_032_385_536 and caches.persists
    # the peak is the sampler pass beside the kept workspace on both: the DP rank's is the 8,192-row one's plus the
    # workspace's growth, 57,344 rows more
    profile = VllmProfile(version)
    grown = (profile.activation(sliced, LIMITS, "fp8-block128", h200).bytes
             - profile.activation(alone, LIMITS, "fp8-block128", h200).bytes)
    assert grown == (65_536 - 8192) * 8 * (7168 + 7168) * 2 == 13_153_337_344


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_under_expert_parallelism_block_fp8_on_hopper_is_charged_flashinfers_larger_figure(version: str) -> None:
    # ep_size > 1 moves FLASHINFER_CUTLASS to the front on Hopper (oracle/fp8.py): FlashInferExperts keeps a
    # 65,536 x 7168 bf16 view and CUTLASS allocates its workspace inside each layer, 0.96 GB above TritonExperts'
    # figure on these rows; the block-scale path's own workspace unread, the larger is charged
    spec, h200 = PRESETS["deepseek-v3"].spec, device_facts("h200")
    caches = fused_moe_caches(spec, 8, 65_536, version, "fp8-block128", h200, True, True)
    transient = cutlass_moe_runtime_workspace_bytes(tokens=65_536, experts=32, top_k=8, hidden=7168, width=2048,
                                                    finalize_fused=True, nvfp4=False)
    assert (caches.nbytes, caches.transient, caches.persists) == (65_536 * 7168 * 2, transient, True)
    assert caches.nbytes + caches.transient > 15_032_385_536
    # the forward pass's MoE layer: the residual, norm, output and 1 x 6144 shared-expert rows of 8,192 tokens, the
    # gathered tensors, the CUTLASS workspace and the kept view: above the sampler pass, it is the peak
    placed = Stage(spec, 1, 1, (0, 61), True, 2, True, 8)
    forward = 8192 * 2 * (3 * 7168 + 3 * 2048) + 1_006_632_960 + transient + 65_536 * 7168 * 2
    assert VllmProfile(version).activation(placed, LIMITS, "fp8-block128", h200).bytes >= forward
    # at data parallel 1 (8,192 rows) TritonExperts' figure stays: kept beside the sampler pass it makes the larger
    # peak there (DeepSeek-V3 on 8 x H200 with EP, 0.19: 4.00 GB of activations, against 2.42 GB with FlashInfer's
    # view kept and its CUTLASS workspace freed after each layer), though FlashInfer's two are 0.12 GB larger
    assert fused_moe_caches(spec, 8, 8192, version, "fp8-block128", h200, True).nbytes \
        == 8192 * 8 * (7168 + 7168) * 2


def test_deepseek_v3s_start_up_and_graphs_at_data_8_are_charged_on_the_safe_side() -> None:
    spec, h200 = PRESETS["deepseek-v3"].spec, device_facts("h200")
    data = Stage(spec, 1, 1, (0, 61), True, 2, True, 8)
    # CUDA context 523 MiB, the data-parallel group's and the 8-rank expert group's communicators at 1065 MiB each
    assert startup_memory(data, "0.19", h200).bytes == (523 + 2 * 1065) * MIB
    # TP 2 x DP 4: the tensor group's 1065 and the two groups', the 492 MiB tensor-rank expert group replaced
    assert startup_memory(Stage(spec, 2, 1, (0, 61), True, 2, True, 4), "0.19", h200).bytes \
        == (523 + 3 * 1065) * MIB
    # 0.19's graphs (outside the budget): one rank's pool plus 58 MoE layers x the rows of a 512-token graph
    # gathered from 8 ranks, 4,096 x (7168 x 2 + 256 x 4) bytes each
    graphs = outside_budget(data, "bf16", LIMITS, "0.19", False, h200, "fp8-block128").graph
    assert graphs is not None
    assert graphs.bytes - cuda_graph_pool(data, LIMITS, "0.19").bytes == 58 * 8 * 512 * (7168 * 2 + 1024)
    # the MoE collectives' NCCL buffers (non-torch memory): as tensor parallelism over the 8 data x tensor ranks
    non_torch = VllmProfile("0.19").non_torch(data)
    assert non_torch.bytes == VllmProfile("0.19").non_torch(Stage(spec, 8, 1, (0, 61), True)).bytes
    assert "over the 8 data x tensor ranks" in non_torch.basis
    single = Stage(spec, 1, 1, (0, 61), True, 2, False, 1)
    assert non_torch.bytes > VllmProfile("0.19").non_torch(single).bytes
    # 0.33's estimate (inside the budget) the same on an H200, whose largest capture size is 512; on a device not
    # known 0.33 captures up to 1024 (the 10.x family's), and the gathered rows double
    graphs_033 = VllmProfile("0.33").cuda_graphs
    assert graphs_033(data, LIMITS, False, "bf16", h200).bytes - graphs_033(single, LIMITS, False, "bf16", h200).bytes \
        == 58 * 8 * 512 * (7168 * 2 + 1024)
    assert graphs_033(data, LIMITS).bytes - graphs_033(single, LIMITS).bytes == 58 * 8 * 1024 * (7168 * 2 + 1024)


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_qwen3_235b_at_tensor_2_x_data_4_holds_16_experts_and_gathers_each_tensor_ranks_share(version: str) -> None:
    # bf16 on 8 H200s, TP 2 x DP 4 + EP: ep_size = 8, 128 / 8 = 16 whole experts a rank where TP 2 + EP (data 1)
    # holds 64; attention split by TP 2 on both
    tensor = _plan("qwen3-235b-a22b", "h200", H200, 2, engine_version=version, tensor_parallel=2,
                   expert_parallel=True).comparison["bf16"]
    data = _plan("qwen3-235b-a22b", "h200", H200, 8, engine_version=version, tensor_parallel=2, data_parallel=4,
                 expert_parallel=True).comparison["bf16"]
    assert data.devices[0].weights_bytes - tensor.devices[0].weights_bytes \
        == (16 - 64) * 94 * QWEN3_EXPERT_BYTES == -170_322_296_832
    assert data.fits and not tensor.fits  # 235 GB a rank at TP 2; 65 GB with the experts over 8 ranks
    # use_sequence_parallel_moe: each TP rank sends 8192 / 2 rows, the 8-rank expert group gathers 32,768; TritonExperts
    # (w = 1536, K = 4096): 32,768 x 8 x (4096 + 4096) x 2 bytes against 8,192 rows at data 1
    spec = PRESETS["qwen3-235b-a22b"].spec
    assert moe_dispatched_tokens(Stage(spec, 2, 1, (0, 94), True, 2, True, 4), 8192) == 32_768
    assert data.devices[0].activation_bytes - tensor.devices[0].activation_bytes \
        == (32_768 - 8192) * 8 * (4096 + 4096) * 2 == 3_221_225_472


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_gpt_oss_120b_at_data_2_with_expert_parallelism_holds_64_mxfp4_experts_and_keeps_oai_tritons_buffers(
        version: str) -> None:
    single = _plan("gpt-oss-120b", "h100-80gb", H100, 1, engine_version=version)
    data = _plan("gpt-oss-120b", "h100-80gb", H100, 2, engine_version=version, data_parallel=2,
                 expert_parallel=True)
    assert data.primary.devices[0].weights_bytes - single.primary.devices[0].weights_bytes \
        == (64 - 128) * 36 * GPT_OSS_EXPERT_BYTES == -30_496_849_920
    # on Hopper under DP the modular OAITritonExperts: workspace2 16,384 rows x 4 x 2880 and the 16,384 x 2880
    # output, bf16, kept by the workspace manager (the monolithic class's were freed after each layer)
    spec = PRESETS["gpt-oss-120b"].spec
    caches = fused_moe_caches(spec, 2, 16_384, version, "mxfp4", device_facts("h100-80gb"), True, True)
    assert caches.nbytes == 16_384 * (4 * 2880 + 2880) * 2 == 471_859_200 and caches.persists
    assert data.primary.fits


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_without_expert_parallelism_the_experts_are_sliced_over_data_x_tensor_as_tensor_parallelism_slices_them(
        version: str) -> None:
    # flatten_tp_across_dp: gpt-oss-120b at DP 2 holds each expert's 2880-wide intermediate in 1440-wide slices,
    # the slices TP 2 holds, so its MXFP4 kernel layout (the Triton backend's padded widths) is TP 2's
    data = _plan("gpt-oss-120b", "h100-80gb", H100, 2, engine_version=version, data_parallel=2)
    tensor = _plan("gpt-oss-120b", "h100-80gb", H100, 2, engine_version=version, tensor_parallel=2)
    spec, h100 = PRESETS["gpt-oss-120b"].spec, device_facts("h100-80gb")
    layout = VllmProfile(version).expert_layout(Stage(spec, 1, 1, (0, 36), True, 2, False, 2), "mxfp4", h100)
    sliced = VllmProfile(version).expert_layout(Stage(spec, 2, 1, (0, 36), True, 2, False, 1), "mxfp4", h100)
    assert layout is not None and sliced is not None and layout.bytes == sliced.bytes > 0
    assert "1440-wide slices over the 2 data x tensor ranks" in layout.basis
    assert any("2880-wide intermediate sliced over the 2 ranks, 1440 a rank" in note for note in data.warnings)
    assert data.primary.devices[0].layers == tensor.primary.devices[0].layers


def test_the_sequences_are_shared_among_the_data_parallel_ranks_each_with_its_own_kv_pool() -> None:
    one = _plan("deepseek-v3", "h200", H200, 8, sequences=8, engine_version="0.19", data_parallel=8,
                expert_parallel=True)
    many = _plan("deepseek-v3", "h200", H200, 8, sequences=64, engine_version="0.19", data_parallel=8,
                 expert_parallel=True)
    # each rank plans 64 / 8 = 8 sequences: its KV pool and capacity are the rank's, the most sequences 8 x its own
    assert many.primary.kv_capacity_tokens == one.primary.kv_capacity_tokens
    assert many.primary.kv_cache_bytes == 8 * one.primary.kv_cache_bytes
    assert many.primary.max_concurrent_sequences % 8 == 0
    assert any("each device is planned for the most a replica gets, 8" in note for note in many.warnings)


@pytest.mark.parametrize(("version", "label", "capability", "refused"), [
    ("0.19", "bf16", (9, 0), False), ("0.33", "fp16", (12, 0), False), ("0.19", "bf16", (10, 0), False),
    ("0.33", "bf16", (10, 0), True),  # 0.33 puts TrtLlmBf16Experts first on 10.x: its workspace not read
    ("0.33", "bf16", None, True),
    ("0.19", "fp8-block128", (9, 0), False), ("0.19", "fp8-block128", (10, 0), True),  # DeepGEMM / TRT-LLM: not read
    ("0.33", "mxfp4", (9, 0), False), ("0.19", "mxfp4", (8, 0), False),
    ("0.19", "mxfp4", (10, 0), True),  # TrtLlmMxfp4ExpertsMonolithic refuses dp_size > 1: what runs instead not read
    ("0.19", "int4-g128-asym", (9, 0), False), ("0.33", "checkpoint-int4-g128-sym-gptq", (9, 0), False),
    ("0.19", "fp8-per-tensor-static", (9, 0), True),  # FlashInferExperts' use_dp path: not read
    ("0.33", "nvfp4", (12, 0), True), ("0.19", "", (9, 0), True),  # a GGUF mix, per-row formats
    ("0.19", "fp8-block128", None, True), ("0.19", "bf16", None, False),  # a device given in bytes alone
    ("0.11", "bf16", (9, 0), True),
])
def test_the_expert_formats_planned_under_data_parallelism_are_those_whose_kernel_was_read(
        version: str, label: str, capability: tuple[int, int] | None, refused: bool) -> None:
    assert (moe_data_parallel_format_refusal(version, label, capability) is not None) == refused


def test_a_refused_format_is_that_formats_refusal_not_the_plans() -> None:
    # nibble's fp8 per-tensor experts run on FlashInfer's CUTLASS experts on Hopper, whose data-parallel path was
    # not read: that comparison is refused, the bf16 one planned
    answer = _plan("qwen3-235b-a22b", "h200", H200, 8, engine_version="0.19", data_parallel=8,
                   scheme=scheme_from_quantization_config({"quant_method": "fp8", "activation_scheme": "static"}))
    refusal = answer.primary.refusal
    assert refusal is not None and "data parallelism (parallel.data)" in refusal
    assert answer.comparison["bf16"].refusal is None


def test_moe_data_parallelism_with_pipeline_stages_is_refused_naming_parallel_data() -> None:
    with pytest.raises(InvalidSpec) as caught:
        _plan("qwen3-235b-a22b", "h200", H200, 8, engine_version="0.19", data_parallel=4, pipeline_parallel=2)
    assert caught.value.field == "parallel.data" and "parallel.pipeline 1" in str(caught.value)


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_deepseek_v3s_shared_expert_is_whole_on_each_rank_under_sequence_parallel_moe(version: str) -> None:
    # TP 2 x DP 4 + EP turns on use_sequence_parallel_moe (config/parallel.py: allgather_reducescatter, EP, tp > 1,
    # dp > 1), and deepseek_v2.py builds the shared expert's DeepseekV2MLP with disable_tp=is_sequence_parallel: each
    # rank holds it whole (one 2048-wide fp8 expert, 44,050,944 bytes a layer) where without EP it holds half; the
    # routed experts are the same bytes either way (32 whole experts or 256-wide slices of all 256)
    placed = _plan("deepseek-v3", "h200", H200, 8, engine_version=version, tensor_parallel=2, data_parallel=4,
                   expert_parallel=True)
    sliced = _plan("deepseek-v3", "h200", H200, 8, engine_version=version, tensor_parallel=2, data_parallel=4)
    assert placed.primary.devices[0].weights_bytes - sliced.primary.devices[0].weights_bytes \
        == 58 * DEEPSEEK_EXPERT_BYTES // 2 == 1_277_477_376
    assert any("the shared experts are whole on every rank" in note for note in placed.warnings)
    # Qwen3-235B has no shared expert, and gpt-oss's class keeps none: nothing whole
    qwen = _plan("qwen3-235b-a22b", "h200", H200, 8, engine_version=version, tensor_parallel=2, data_parallel=4,
                 expert_parallel=True)
    assert not any("the shared experts are whole" in note for note in qwen.warnings)


def test_a_seeded_sample_of_moe_data_parallel_plans_never_promises_more_than_a_rank_has() -> None:
    # every MoE preset x data 2-8 x tensor 1-2 x EP or not x 0.19/0.33 x four devices: a plan is refused (a format
    # or layout nibble did not read, InvalidSpec for a release without the model) or fits within each rank's usable
    # memory; without EP a rank never holds more than at data 1 with the same tensor degree (the experts only spread)
    draw = random.Random(20261207)
    moe = [preset for preset in list_presets() if preset.spec.is_moe]
    devices = ("h100-80gb", "h200", "a100-80gb", "b200")
    fitted = compared = 0
    for _ in range(60):
        preset, device = draw.choice(moe), draw.choice(devices)
        version, data, tensor = draw.choice(("0.19", "0.33")), draw.choice((2, 4, 8)), draw.choice((1, 2))
        expert_parallel = draw.random() < 0.5
        capacity = get_device(device).memory_bytes
        options = {"engine_version": version, "tensor_parallel": tensor, "expert_parallel": expert_parallel}
        try:
            many = _plan(preset.id, device, capacity, data * tensor, 16, data_parallel=data, **options)
        except InvalidSpec as refused:
            assert refused.field == "runtime.engine_version", (preset.id, version, str(refused))
            continue
        for answer in many.comparison.values():
            if answer.fits:
                fitted += 1
                assert all(rank.used_bytes <= rank.usable_bytes for rank in answer.devices), (preset.id, device)
        if expert_parallel:
            continue
        one = _plan(preset.id, device, capacity, tensor, 16, **options)
        for label, answer in many.comparison.items():
            alone = one.comparison.get(label)
            if answer.refusal is None and alone is not None and alone.refusal is None:
                compared += 1
                assert answer.devices[0].weights_bytes <= alone.devices[0].weights_bytes, (preset.id, label, data)
    print(f"{fitted} fitted formats, {compared} compared with data 1")
    assert fitted >= 30 and compared >= 30  # the sample plans, not only refusals
