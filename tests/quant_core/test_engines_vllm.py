"""The vLLM engine profile against real vLLM start-up logs (tests/quant_core/data/vllm_logs.json, each with its URL)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quant_core.catalog import (
    UNKNOWN_DEVICE,
    DeviceFacts,
    device_facts,
    get_device,
    get_preset,
    get_preset_info,
    list_devices,
)
from quant_core.engines import BatchLimits, Stage, get_engine
from quant_core.engines.base import Term
from quant_core.engines.vllm import VllmProfile
from quant_core.engines.vllm_encoders import rotary_cache_bytes
from quant_core.engines.vllm_expert_layouts import mxfp4_expert_layout_bytes
from quant_core.engines.vllm_linear import weight_allocation_slack
from quant_core.engines.vllm_releases import startup_memory
from quant_core.engines.vllm_sampler import grammar_bitmask_bytes, sampler_pass_bytes
from quant_core.errors import UnknownName
from quant_core.formats import WeightFormat, float_format, fp8, int4
from quant_core.hf_config import model_from_hf_config, model_from_sizes
from quant_core.kv_cache import kv_bytes_per_token
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.schemes import WeightScheme, scheme_from_quantization_config
from quant_core.specs import ModelSpec

#: the catalog devices the figures below are charged on
A100_80GB = device_facts("a100-80gb")
H100 = device_facts("h100-80gb")
L40S = device_facts("l40s")
MI300X = device_facts("mi300x")
T4 = device_facts("t4")

GIB = 1 << 30
LOGS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "vllm_logs.json").read_text(encoding="utf-8"))["logs"]
BY_ID = {log["id"]: log for log in LOGS}


def _spec(log: dict[str, Any]) -> ModelSpec:
    if log["model"] == "sizes":
        return model_from_sizes(**log["sizes"], name=log["id"])
    if log["model"] == "hf_config":  # a model nibble has no preset for, planned from its config.json as a user's is
        return model_from_hf_config(log["hf_config"], name=log["id"])
    return get_preset(log["model"])


def _stage(spec: ModelSpec, tensor_parallel: int = 1) -> Stage:
    return Stage(spec, tensor_parallel, 1, (0, spec.num_layers), True)


def _ids(condition: Any) -> list[str]:
    return [log["id"] for log in LOGS if condition(log)]


def test_at_least_twelve_public_logs_each_with_its_source() -> None:
    assert len(LOGS) >= 12
    assert all(log["url"].startswith("https://") for log in LOGS)
    assert len({log["hf_repo"] for log in LOGS if log["hf_repo"]}) >= 8  # several models
    assert {1, 2, 4} <= {log["tensor_parallel"] for log in LOGS}
    assert any(log["pipeline_parallel"] == 2 for log in LOGS)
    assert any(log["kv_cache_dtype"] == "fp8" for log in LOGS)
    assert {"int4-g128-awq", "fp8", "mxfp4", "int8-w8a8"} <= {log["weights_format"] for log in LOGS}


# --- block rounding: the tokens vLLM logs for the memory it logs -------------------------------------------

# Runs whose logged KV memory is not the tightest worker's: vllm#21348 (another rank had less) and the PP 4 run
# (the 26.84 GiB worker holds more blocks than the 34,730 every stage gets).
NOT_THE_TIGHTEST_WORKER = ("vllm-21348-qwen3-235b-fp8-tp4", "kubesimplify-v0.27-qwen3-235b-fp8-pp4")


@pytest.mark.parametrize("log_id", _ids(lambda log: log["model"] and (log["available_kv_gib"] or 0) > 0
                                        and log["kv_cache_tokens"] and log["tensor_parallel"]
                                        and log["id"] not in NOT_THE_TIGHTEST_WORKER))
def test_kv_capacity_from_the_logged_available_memory_is_vllms_token_figure(log_id: str) -> None:
    # vLLM prints the available memory to 0.01 GiB: the tokens it logs lie between nibble's count for that
    # figure minus and plus half a hundredth (block size 16, or 128 where the run set --block-size 128).  With
    # pipeline stages the logged worker is the first stage (Worker_PP0), which holds layers [0, 32) of 64.
    log = BY_ID[log_id]
    spec, profile = _spec(log), VllmProfile("0.19")
    stages = log["pipeline_parallel"]
    stage = Stage(spec, log["tensor_parallel"], stages, (0, spec.num_layers // stages), stages == 1)

    def tokens(gib: float) -> int:
        return profile.kv_capacity(stage, log["kv_cache_dtype"], int(gib * GIB),
                                   log["block_size"], log["max_model_len"], BatchLimits(8192, 256)).tokens

    assert tokens(log["available_kv_gib"] - 0.005) <= log["kv_cache_tokens"] <= tokens(log["available_kv_gib"] + 0.005)


def test_the_qwen3_235b_log_is_sized_by_its_tightest_worker_not_rank_0() -> None:
    # vllm#21348: rank 0 logs 8.11 GiB, but 178,880 tokens at 48,128 bytes each is 8.02 GiB: vLLM gives
    # every worker the smallest worker's blocks, so nibble answers with the tightest device.
    log = BY_ID["vllm-21348-qwen3-235b-fp8-tp4"]
    per_token = kv_bytes_per_token(get_preset("qwen3-235b-a22b"), "bf16", tensor_parallel=4)
    assert per_token == 48128
    assert round(log["kv_cache_tokens"] * per_token / GIB, 2) == 8.02 < log["available_kv_gib"]


@pytest.mark.parametrize("log_id", _ids(lambda log: log["kv_cache_tokens"] and log["max_concurrency"]
                                        and log["max_model_len"] and log["full_attention"]))
def test_engine_max_concurrency_is_blocks_over_the_blocks_of_one_full_request(log_id: str) -> None:
    # Full-attention models: concurrency = blocks / ceil(max_model_len / block), to the 2 decimals logged.
    log = BY_ID[log_id]
    block = log["block_size"]
    assert round(log["kv_cache_tokens"] // block / -(-log["max_model_len"] // block), 2) == log["max_concurrency"]


def test_a_hybrid_models_concurrency_is_not_tokens_over_context() -> None:
    # vllm#36861: 54,384 tokens would hold 0.34 requests of 160,000 tokens in a full-attention model; vLLM logs
    # 1.34x because its sliding or linear-attention groups cap what one request needs.
    log = BY_ID["vllm-36861-pipeline"]
    assert round(log["kv_cache_tokens"] / log["max_model_len"], 2) == 0.34 != log["max_concurrency"]


# --- the engine terms: activation, non-torch memory, CUDA graphs --------------------------------------------

TEXT_V011 = _ids(lambda log: log["profile_version"] == "0.11" and not log.get("multimodal")
                 and log.get("self_consistent", True) and log["activation_gib"] is not None)


@pytest.mark.parametrize("log_id", TEXT_V011)
def test_activation_is_the_sampler_pass_of_the_profiling_run(log_id: str) -> None:
    # vLLM v0.11 on H100 (llm-d-benchmark): 4.76-7.38 GiB, which is 1024 sequences x vocabulary x 38 bytes
    # beside the batch's hidden states, for models from 0.6B to 70B.
    log = BY_ID[log_id]
    spec = _spec(log)
    term = VllmProfile("0.11").activation(_stage(spec, log["tensor_parallel"]),
                                          BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]))
    assert abs(term.bytes / GIB - log["activation_gib"]) / log["activation_gib"] < 0.03
    assert "independent of the workload's context" in term.basis


def test_a_log_whose_figures_do_not_add_up_is_not_fitted() -> None:
    # llm-d's gpt-oss-120b row: weights + activation + non-torch exceed the 71.26 GiB budget it reports 3.33 GiB
    # of KV memory from.  nibble predicts no room, on the safe side, instead of bending a term to that row.
    log = BY_ID["llmd-v0.11-gpt-oss-120b"]
    budget = round(0.9 * log["total_memory_gib"], 2)
    assert budget - log["weights_gib"] - log["activation_gib"] - log["non_torch_gib"] < 0 < log["available_kv_gib"]


def test_activation_does_not_depend_on_the_context() -> None:
    # The same Qwen3-0.6B at --max-model-len 16000 and 32000: the same 5.56 GiB and 64.45 GiB (llm-d-benchmark).
    short, long = BY_ID["llmd-v0.11-qwen3-0.6b-16k"], BY_ID["llmd-v0.11-qwen3-0.6b-32k"]
    assert (short["activation_gib"], short["available_kv_gib"]) == (long["activation_gib"], long["available_kv_gib"])
    spec, hardware = get_preset("qwen3-0.6b"), Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    assert plan(spec, hardware, Workload(16000, 1)).activation == plan(spec, hardware, Workload(32000, 8)).activation


@pytest.mark.parametrize("log_id", ["vllm-10517-3090-llama8b-20k", "vllm-10517-3090-llama8b-29k"])
def test_a_large_profiling_batch_makes_the_forward_pass_the_peak(log_id: str) -> None:
    # V0 profiled one batch of max_model_len tokens: 2.07 and 2.99 GiB of activations for 20,000 and 29,000
    # tokens of Llama-3.1-8B, the forward pass's MLP intermediates (vllm#10517), beside the RTX 3090's cuBLAS
    # workspaces (9.1 MiB: the Hopper figure is 33 MiB, so the device is passed).
    log = BY_ID[log_id]
    term = VllmProfile().activation(_stage(_spec(log)), BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]),
                                    device=device_facts(log["catalog_device"]))
    assert abs(term.bytes / GIB - log["activation_gib"]) / log["activation_gib"] < 0.02
    assert term.basis.index("forward pass") < term.basis.index("sampler")


#: the release whose Worker.init_device takes the start-up snapshot before init_worker_distributed_environment (read in
#: its wheel; 0.11 takes it after): its non-torch figure holds the NCCL communicators 0.11 charges outside the budget,
#: so its run is planned under 0.11's rules with that figure (vllm_logs.json's "gap")
SNAPSHOT_BEFORE_NCCL = "0.10.2"

#: model types whose vLLM 0.19 runs logged more non-torch memory than the other runs of their layout (llm-d-planner's
#: Granite 3.1 and 3.3 runs, 0.46 GiB on one GPU against 0.24-0.27): each is bounded by its own runs
NON_TORCH_FAMILIES = ("granite",)


def _non_torch_family(log: dict[str, Any]) -> str | None:
    model_type = _spec(log).model_type if log["model"] else None
    return model_type if model_type in NON_TORCH_FAMILIES else None


@pytest.mark.parametrize("log_id", _ids(lambda log: log["profile_version"] in ("0.11", "0.19")
                                        and log["non_torch_gib"] is not None))
def test_non_torch_memory_is_the_releases_figure_for_the_layout(log_id: str) -> None:
    # vLLM 0.11 on H100 (llm-d-benchmark): 0.13-0.14 GiB on one GPU, 0.54-0.55 GiB at TP=2, what grows after the
    # start-up snapshot 0.11 takes once NCCL is set up.  vLLM 0.10.2 on two H200s: 1.38 GiB at TP=2, where 0.10.2 took
    # its snapshot before setting up NCCL, so the figure holds the communicators 0.11 has in use at start-up (its
    # "gap"): against it, 0.11's non-torch figure and the start-up memory above one GPU together.  vLLM 0.19 on H100
    # (llm-d-planner): 0.24-0.27 GiB on one GPU, 2.06-2.11 GiB at TP=2, 2.13-2.21 GiB at TP=4, 0.07 GiB per pipeline
    # stage; Granite 3.1 and 3.3 (2B, 8B, 3.3-8B) 0.46 GiB on one GPU.  (0.11's figure at TP=8 is what a log's KV
    # memory leaves, not a logged figure: test_vllm_0_11s_non_torch_memory_at_8_ranks_is_what_the_kimi_run_leaves.)
    log = BY_ID[log_id]
    spec = _spec(log)
    stages = log["pipeline_parallel"]
    stage = Stage(spec, log["tensor_parallel"], stages, (0, spec.num_layers // stages), stages == 1)
    version = log["profile_version"]
    charged = VllmProfile(version).non_torch(stage).bytes
    if log["vllm_version"] == SNAPSHOT_BEFORE_NCCL:
        charged += startup_memory(stage, version).bytes - startup_memory(_stage(spec), version).bytes
    # never below what a public run of the release logged, to the log's rounding (0.01 GiB): the largest logged figure
    # of each layout is charged, rounded up to the MiB (0.19's 256 MiB on one GPU left Qwen3-30B-A3B's 0.27 GiB 20 MiB
    # short, and 277 MiB left Granite's 0.46 GiB 189-199 MiB short before its model type's excess)
    assert charged / GIB >= log["non_torch_gib"] - 0.005
    # and no more than that largest figure (the runs of a layout spread up to 0.08 GiB: 2.13-2.21 at TP=4), a family
    # with its own figure against its own runs
    largest = max(other["non_torch_gib"] for other in LOGS
                  if other["profile_version"] == version and other["non_torch_gib"] is not None
                  and "non-torch" not in other.get("gap", "")
                  and other["tensor_parallel"] == log["tensor_parallel"]
                  and (other["pipeline_parallel"] > 1) == (stages > 1)
                  and _non_torch_family(other) == _non_torch_family(log))
    assert charged / GIB <= largest + 0.005 or "non-torch" in log.get("gap", "")


KIMI = BY_ID["recipes-kimi-k2-thinking-h200-tp8"]


def test_vllm_0_11s_non_torch_memory_at_8_ranks_is_what_the_kimi_run_leaves() -> None:
    # vLLM's Kimi-K2-Thinking recipe run (TP=8 on H200s, a 0.11.1 nightly, defaults: utilization 0.9, 8192 tokens and
    # 1024 sequences) logs 715,072 tokens: 11,173 FlashMLA blocks of 64 tokens x 61 layers x (512 + 64) x 2 bytes.
    # Its weights a rank are vLLM's modules' (deepseek_v2.py, compressed_tensors_moe.py
    # CompressedTensorsWNA16MarlinMoEMethod): the embedding and lm_head split 8 ways, per layer the replicated
    # fused_qkv_a_proj and the split q_b/kv_b/o projections in bf16, per MoE layer the bf16 router and its float32
    # bias, the shared expert and the 384 INT4 experts' w13/w2 an eighth wide (int32-packed, Marlin-repacked at the
    # same size) with a bf16 scale per 32 and the two (E, 2) shape tensors in the model dtype, the dense layer's MLP
    # (nibble charges the router bias at 2 bytes, 45 KiB under); the profiling peak is the sampler pass
    # (gpu_model_runner._dummy_sampler_run, topk_topp_sampler.forward_native: 38 bytes a logit through PyTorch's sort,
    # 1024 x 163,840 logits) beside the dummy run's 8192 hidden states and two copies of its 1024 sampled rows, the
    # rotary cache (262,144 positions x 64 x 2 bytes, in vLLM's weights) and the cuBLAS workspaces (33 MiB).
    spec = _spec(KIMI)
    hidden, vocabulary, layers, experts, width = 7168, 163_840, 61, 384, 2048 // 8
    heads = 64 // 8
    attention = (hidden * (1536 + 512 + 64) * 2 + (1536 + 512) * 2 + 1536 * heads * 192 * 2 + 512 * heads * 256 * 2
                 + heads * 128 * hidden * 2 + 2 * hidden * 2)
    moe = (hidden * experts * 2 + experts * 4
           + experts * (hidden // 8 * 2 * width * 4 + width // 8 * hidden * 4
                        + hidden // 32 * 2 * width * 2 + width // 32 * hidden * 2 + 2 * 2 * 2)
           + hidden * 2 * width * 2 + width * hidden * 2)
    dense = hidden * 2 * (18_432 // 8) * 2 + (18_432 // 8) * hidden * 2
    weights = 2 * (vocabulary // 8) * hidden * 2 + hidden * 2 + layers * attention + (layers - 1) * moe + dense
    peak = (1024 * vocabulary * 38 + (8192 + 2 * 1024) * hidden * 2 + 262_144 * 64 * 2 + 33 * MIB)
    stage = _stage(spec, 8)
    assert VllmProfile("0.11").activation(stage, BatchLimits(8192, 1024), device=device_facts("h200")).bytes == peak
    storage = END_TO_END[KIMI["id"]]
    hardware = Hardware(get_device("h200").planning_bytes, 8, "h200")
    device = plan(spec, hardware, Workload(KIMI["max_model_len"], 1), _options(KIMI, storage)).primary.devices[0]
    assert weights - device.weights_bytes == 60 * experts * 2  # 70.95 GiB
    # the smallest pool holding those blocks, against the largest public H200 total (vllm_logs.json's 0.10.2 run:
    # "Free memory on device (139.21/139.81 GiB)"), so no H200 has less left than the plan says: 1.94 GiB, 1.39 GiB
    # above TP=2's 0.55 (the catalog's 139.72 GiB leaves 1,906 MiB)
    pool = KIMI["kv_cache_tokens"] // 64 * 64 * layers * (512 + 64) * 2
    left = int(round(139.81 * GIB) * KIMI["gpu_memory_utilization"]) - pool - weights - peak
    charged = VllmProfile("0.11").non_torch(stage)
    assert charged.bytes == -(-left // MIB) * MIB == 1989 * MIB
    assert "Kimi-K2-Thinking" in charged.basis and "NVLink SHARP" in charged.basis
    # NCCL's code sizes part of the excess: NVLink SHARP above two GPUs (nvls.cc ncclNvlsInit), its buffer 16 channels
    # x 2 x (128 KiB x 8 steps) x 8 heads = 256 MiB at 8 ranks for each of the two communicators that run collectives
    # in the profiling run (vLLM's PyNccl all-reduces, PyTorch's logits all-gather)
    nvls = 2 * 16 * 2 * (128 * 1024 * 8) * 8
    assert nvls == 512 * MIB < charged.bytes - 564 * MIB
    # four ranks have no 0.11 log, and NVLS is on above two GPUs there too: eight's figure, the safe side; more
    # than eight take eight's
    for ranks, mib in ((2, 564), (4, 1989), (8, 1989), (16, 1989)):
        assert VllmProfile("0.11").non_torch(_stage(spec, ranks)).bytes == mib * MIB
    # and the plan holds no more than the 715,072 tokens vLLM logged (-0.18 %; +2.79 % at TP=2's 0.55 GiB)
    assert -0.002 < _capacity_error(KIMI["id"], "catalog device") <= 0


@pytest.mark.parametrize(("version", "excess_mib"), [("0.11", 0), ("0.19", 195), ("0.33", 195)])
def test_a_granite_models_non_torch_excess_is_charged_on_every_layout_of_the_releases_that_logged_it(
        version: str, excess_mib: int) -> None:
    # llm-d-planner's vLLM 0.19.0 runs of Granite-3.1-2B, 3.1-8B and 3.3-8B logged 0.46 GiB on one GPU: rounded up to
    # the MiB, 472 MiB, 195 above the 277 MiB of the layout.  No Granite run with TP or PP was logged, so the 195 MiB
    # are added on every layout (0.33 borrows 0.19's figures); 0.11's logs show no Granite run.  Other model types and
    # llama-style configs that are not Granite's are charged the layout's figure.
    granite = _spec(BY_ID["llmdp-v0.19-granite-3.1-8b-tp1"])
    llama = get_preset("llama-3.1-8b")
    assert granite.model_type == "granite"
    profile = VllmProfile(version)
    for tensor_parallel, stages in ((1, 1), (2, 1), (4, 1), (1, 2), (2, 2)):
        layers = (0, granite.num_layers // stages)
        charged = profile.non_torch(Stage(granite, tensor_parallel, stages, layers, stages == 1))
        layout = profile.non_torch(Stage(llama, tensor_parallel, stages, layers, stages == 1))
        assert charged.bytes - layout.bytes == excess_mib * MIB
        assert (f"plus {excess_mib} MiB for a granite model" in charged.basis) is (excess_mib > 0)
        assert "granite" not in layout.basis


@pytest.mark.parametrize(("version", "at_startup"), [("0.11", False), ("0.19", False), ("0.33", True)])
def test_pytorchs_cublas_workspaces_are_charged_once_where_the_release_allocates_them(version: str,
                                                                                      at_startup: bool) -> None:
    # PyTorch allocates the cuBLAS and cuBLASLt workspaces through its caching allocator at the first matrix product
    # of a (handle, stream) and keeps them (CublasHandlePool.cpp): 32 + 1 MiB on an H100.  0.11 and 0.19 first multiply
    # after the start-up snapshot, so the workspaces are in the profiling run's torch peak (the activation term).
    # 0.33's Worker.init_device runs torch.mm and a biased linear before MemorySnapshot ("Create the handles now,
    # before the snapshot, so they count as baseline"; empty_cache does not free them), so they are in the memory in
    # use at start-up, outside the budget; its profiling run, on the same thread and default stream, reuses them, and
    # memory_profiling (utils/mem_utils.py) charges total_consumed (free memory lost since that snapshot) plus
    # transient_peak_headroom (peak - allocated after the run), neither of which holds them.  Charging them in both
    # terms took 33 MiB a device twice.
    spec = get_preset("llama-3.1-8b")
    stage, limits, profile = _stage(spec), BatchLimits(8192, 1024), VllmProfile(version)
    # an H100 taken as compute capability 8.0 keeps its 132 SMs (the sampler's buffers) and gets PyTorch's smaller
    # workspaces, 8 MiB + 128 KiB + 1 MiB: the activation moves by the difference only where it holds them
    ampere_workspaces = device_facts("h100-80gb", (8, 0))
    difference = (32 + 1) * 2**20 - (8 * 2**20 + 128 * 2**10 + 2**20)
    activation = profile.activation(stage, limits, device=H100)
    moved = activation.bytes - profile.activation(stage, limits, device=ampere_workspaces).bytes
    assert moved == (0 if at_startup else difference)
    startup = startup_memory(stage, version, H100)
    single = {"0.11": 625, "0.19": 523, "0.33": 523}[version] * 2**20  # the CUDA context, from the releases' logs
    assert startup.bytes == single + ((32 + 1) * 2**20 if at_startup else 0)
    assert ("cuBLAS workspaces" in startup.basis) is at_startup
    assert ("plus PyTorch's cuBLAS and cuBLASLt workspaces (33 MiB)" in activation.basis) is not at_startup
    assert ("allocates them before its start-up snapshot" in activation.basis) is at_startup


def _device(log: dict[str, Any]) -> DeviceFacts:
    """The logged run's device: its catalog entry, or the compute capability its log names (vllm#57047's SM89)."""
    capability = log.get("compute_capability")
    return device_facts(log["catalog_device"], None if capability is None else (capability[0], capability[1]))


# the runs whose log gives the weights vLLM loaded (alone, or with the non-torch memory as vllm#57047's does)
ENGINE_TERMS = _ids(lambda log: log["profile_version"] and (log["available_kv_gib"] or 0) > 0
                    and log["gpu_memory_utilization"] and not log.get("multimodal")
                    and log.get("self_consistent", True) and not log.get("gap")
                    and (log["weights_gib"] is not None or log.get("weights_and_non_torch_gib") is not None))


@pytest.mark.parametrize("log_id", ENGINE_TERMS)
def test_engine_terms_fill_the_gap_between_logged_weights_and_logged_kv_memory(log_id: str) -> None:
    # available = total x utilization - weights - activation - non-torch (- CUDA graphs from v0.21): nibble's
    # engine terms between the weights and the KV memory vLLM logged.  vllm#57047 logs weights with non-torch.
    log = BY_ID[log_id]
    spec = _spec(log)
    total = (round(log["total_memory_gib"] * GIB) if log["total_memory_gib"]
             else get_device(log["catalog_device"]).planning_bytes)
    profile, stage = VllmProfile(log["profile_version"]), _stage(spec, log["tensor_parallel"])
    limits = BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"])
    if log["weights_gib"] is not None:
        loaded = log["weights_gib"] * GIB + profile.non_torch(stage).bytes
    else:
        loaded = log["weights_and_non_torch_gib"] * GIB
    # the experts' format and the device pick the fused-MoE kernel (gpt-oss's MXFP4 experts on Hopper: OpenAI's
    # Triton kernels, outside the workspace manager); the logged weights hold the rotary cos/sin cache nibble charges
    # in its activation term: counted once
    experts = "mxfp4" if log["weights_format"] == "mxfp4" else ""
    device = _device(log)
    activation = (profile.activation(stage, limits, experts, device).bytes
                  - rotary_cache_bytes(spec, log["profile_version"]))
    # 0.33's graph estimate holds FlashInfer's workspace where the device and the KV dtype run it
    graphs = profile.cuda_graphs(stage, limits, False, log["kv_cache_dtype"], device).bytes
    predicted = (int(total * log["gpu_memory_utilization"]) - loaded - activation - graphs) / GIB
    error = (predicted - log["available_kv_gib"]) / log["available_kv_gib"]
    print(f"{log_id}: available KV {predicted:.2f} GiB predicted, {log['available_kv_gib']} logged ({error:+.2%})")
    assert -0.02 <= error <= 0.01


# --- vLLM 0.19's sampler pass and PyTorch's allocator, against llm-d-planner's logs ---------------------------

MIB = 1 << 20
#: dense runs whose peak is the forward pass, not the sampler pass this test pins: Granite-3.1-8B and 3.3-8B (49,155 and
#: 49,159 vocabulary entries, a 12,800-wide MLP) log 0.85 GiB, nibble's forward pass of 8192 tokens and the cuBLAS
#: workspaces 0.806 GiB (0.77 GiB against a 0.76 GiB sampler pass): 44 MiB under, which the sampler pass does not size
FORWARD_PEAK_V019 = ("llmdp-v0.19-granite-3.1-8b-tp1", "llmdp-v0.19-granite-3.3-8b-tp1")
DENSE_V019 = _ids(lambda log: log["id"].startswith("llmdp-v0.19-") and log["pipeline_parallel"] == 1
                  and not _spec(log).is_moe and log["id"] not in FORWARD_PEAK_V019)


def _activation_against_its_log(log_id: str, release: str) -> tuple[Term, float]:
    """vLLM `release`'s activation term for a logged run, and its GiB without the rotary cache (which vLLM logs as
    weights), printed beside the log's figure."""
    log = BY_ID[log_id]
    spec = _spec(log)
    experts = "mxfp4" if log["weights_format"] == "mxfp4" else ""
    term = VllmProfile(release).activation(_stage(spec, log["tensor_parallel"]),
                                           BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]),
                                           experts, device_facts(log["catalog_device"]))
    predicted = (term.bytes - rotary_cache_bytes(spec, release)) / GIB
    print(f"{log_id}: {predicted:.3f} GiB predicted, {log['activation_gib']} logged")
    return term, predicted


@pytest.mark.parametrize("log_id", DENSE_V019)
def test_vllm_0_19s_activation_is_the_sampler_pass_its_code_allocates(log_id: str) -> None:
    # gpu_model_runner._dummy_sampler_run holds the dummy run's 8192 hidden states, its 1024 gathered rows and their
    # rand_like copy, and the 16-bit logits while sampler.py makes float32 logits, softmax probabilities and the
    # exponential draws (14 bytes a logit), topk_topp_triton.py's buffer of 132 rows (an H100's SMs) x vocabulary x
    # 4 bytes beside them; PyTorch's cuBLAS workspaces (33 MiB on Hopper) are kept from the first matrix product.
    # Every dense run of the sweep at TP 1, 2 and 4 within the log's rounding: Qwen2.5-72B at TP 2 2.294 GiB against
    # 2.29 (the fitted 14.4 bytes a logit beside 2 x 8192 x 8192 x 2 bytes gave 2.338), Llama-3.1-8B 1.886 against
    # 1.89, gemma-2-9b 3.644 against 3.65
    term, predicted = _activation_against_its_log(log_id, "0.19")
    assert abs(predicted - BY_ID[log_id]["activation_gib"]) <= 0.01
    assert "14 bytes a logit" in term.basis and "132 rows" in term.basis and "cuBLAS" in term.basis


def test_the_sampler_buffer_has_a_row_per_sm_and_a_few_rows_take_pytorchs_sort() -> None:
    # topk_topp_triton.py: min(next_power_of_2(min(SMs, rows)), SMs) rows; apply_top_k_top_p: the Triton kernel from
    # 8 rows, below it apply_top_k_top_p_pytorch, whose peak is PyTorch's sort: float32 logits, sorted values, int64
    # indices and SortStable.cu's buffers (segmented_sort_pairs_by_full_sort's from 2 rows, 48 bytes a logit with
    # the float32 logits; one row's segmented_sort_large_segments, 36), above the 12 bytes of the float32 copies
    spec = get_preset("llama-3.1-8b")
    vocabulary, held = 128_256, (8192 + 2 * 100) * 4096 * 2 + 100 * 128_256 * 2
    assert sampler_pass_bytes(spec, 100, 8192, H100)[0] == held + 3 * 100 * vocabulary * 4 + 128 * vocabulary * 4
    assert sampler_pass_bytes(spec, 100, 8192, A100_80GB)[0] == held + 3 * 100 * vocabulary * 4 + 108 * vocabulary * 4
    few = (8192 + 2 * 4) * 4096 * 2 + 4 * 128_256 * 2
    assert sampler_pass_bytes(spec, 4, 8192, H100)[0] == few + 4 * vocabulary * 48
    one = (8192 + 2) * 4096 * 2 + 128_256 * 2
    assert sampler_pass_bytes(spec, 1, 8192, H100)[0] == one + vocabulary * 36
    assert sampler_pass_bytes(spec, 0, 8192, H100)[0] == 0  # a pipeline stage before the last


@pytest.mark.parametrize("log_id", TEXT_V011)
def test_vllm_0_11s_activation_is_the_pytorch_sort_its_code_allocates(log_id: str) -> None:
    # With no FlashInfer (an extra of the 0.11 wheel) TopKTopPSampler runs forward_native, whose apply_top_k_top_p
    # sorts the float32 logits: at the sort the 16-bit logits (2), the float32 logits (4), the sorted values (4) and
    # int64 indices (8), SortStable.cu's int64 reverse indices (8) and CUB's alternate key and value buffers (4 + 8)
    # are live, 38 bytes a logit over 1024 rows, beside the dummy run's hidden states, its gathered rows and their
    # rand_like copy, and the cuBLAS workspaces.  Every llm-d v0.11 H100 run and the v0.10.2 H200 run within the
    # log's rounding (the fitted 38 bytes beside 2 x 8192 x hidden x 2 gave up to +0.058 GiB: Llama-3.3-70B, 4.898
    # against 4.84; now 4.836)
    term, predicted = _activation_against_its_log(log_id, "0.11")
    assert abs(predicted - BY_ID[log_id]["activation_gib"]) <= 0.01
    assert "38 bytes a logit" in term.basis and "SortStable.cu" in term.basis and "cuBLAS" in term.basis


def test_pytorchs_sort_buffers_depend_on_the_row_count() -> None:
    # SortStable.cu launch_stable_sort_kernel: segmented_sort_pairs from 128 rows and segmented_sort_large_segments
    # for one row (an int64 index and CUB's 12 bytes: 38 bytes a logit with the logits, values and indices); between
    # them segmented_sort_pairs_by_full_sort's two int2 arrays, its sorted keys and CUB's buffers (50)
    spec = get_preset("llama-3.1-8b")
    for rows, per_logit in ((1024, 38), (128, 38), (127, 50), (64, 50), (2, 50), (1, 38)):
        held = (8192 + 2 * rows) * 4096 * 2
        assert sampler_pass_bytes(spec, rows, 8192, H100, "0.11")[0] == held + rows * 128_256 * per_logit


def test_vllm_0_33s_sampler_pass_is_model_runner_v2s() -> None:
    # Model Runner V2 (0.33's default) gathers the rows without a random copy and samples with the warm-up
    # parameters: the 16-bit logits, their float32 copy and FlashInfer's masked logits and softmax (14 bytes a logit,
    # plus a 1 MiB row-state buffer) where flashinfer_sampler_supported admits the device; on a T4 (capability 7.5)
    # the Triton kernel masks in place with its buffer of a row per SM.  vllm#57047 (0.29 era, an SM89 card) logs
    # 0.57 GiB of peak activation for Qwen3-4B's 256 x 151,936 logits: the 0.33 pass is 0.519 GiB, 0.05 under it.
    spec = _spec(BY_ID["vllm-57047-awq"])
    held = (2048 + 256) * 2560 * 2 + 256 * 151_936 * (2 + 4)
    assert sampler_pass_bytes(spec, 256, 2048, L40S, "0.33")[0] == held + 256 * 151_936 * 8 + (1 << 20)
    assert sampler_pass_bytes(spec, 256, 2048, T4, "0.33")[0] == held + 40 * 151_936 * 4
    assert round(sampler_pass_bytes(spec, 256, 2048, UNKNOWN_DEVICE, "0.33")[0] / GIB, 3) == 0.519
    assert 0.04 < BY_ID["vllm-57047-awq"]["activation_gib"] - 0.519 < 0.06


def test_vllm_0_33_charges_the_samplers_penalty_state_on_the_last_stage() -> None:
    # gpu/sample/penalties.py: output_bin_counts (max_num_seqs x vocabulary int32) and prompt_bin_mask (max_num_seqs
    # x ceil(vocabulary / 32) int32), made with the Sampler after "Model loading took" is measured: 0.49 GiB for
    # Llama-3.1-8B at 1024 sequences, charged by 0.33 only and only where the sampler runs
    spec = get_preset("llama-3.1-8b")
    state = 1024 * (128_256 + 4008) * 4
    limits = BatchLimits(8192, 1024)
    last, first = _stage(spec), Stage(spec, 1, 2, (0, 16), False)
    profile = VllmProfile("0.33")
    term = profile.activation(last, limits, device=H100)
    assert "penalty state" in term.basis and f"({state / GIB:.2f} GiB)" in term.basis
    passes = sampler_pass_bytes(spec, 1024, 8192, H100, "0.33")[0]
    assert term.bytes >= passes + state
    assert "penalty state" not in profile.activation(first, limits, device=H100).basis
    assert "penalty state" not in VllmProfile("0.19").activation(last, limits, device=H100).basis


def test_vllm_0_33_charges_the_structured_output_bitmask_it_keeps_on_the_device() -> None:
    # gpu/structured_outputs.py StructuredOutputsWorker.__init__, made in gpu/model_runner.py load_model after "Model
    # loading took" is measured: grammar_bitmask (max_num_seqs x ceil(128,256 / 32) = 4,008 int32) and logits_indices
    # (max_num_seqs int32), 1024 x 4,009 x 4 = 16,420,864 bytes for Llama-3.1-8B at 1024 sequences (nibble charged
    # the penalty state made beside it but not this); 0.11 and 0.19 hold the scheduler's bitmask on the CPU
    spec = get_preset("llama-3.1-8b")
    assert grammar_bitmask_bytes(spec, 1024, "0.33") == 1024 * 4008 * 4 + 1024 * 4 == 16_420_864
    assert grammar_bitmask_bytes(spec, 1024, "0.19") == grammar_bitmask_bytes(spec, 1024, "0.11") == 0
    limits = BatchLimits(8192, 1024)
    last, first = _stage(spec), Stage(spec, 1, 2, (0, 16), False)
    profile = VllmProfile("0.33")
    term = profile.activation(last, limits, device=H100)
    assert "grammar bitmask" in term.basis and "(15.7 MiB)" in term.basis
    assert "grammar bitmask" not in profile.activation(first, limits, device=H100).basis
    assert "grammar bitmask" not in VllmProfile("0.19").activation(last, limits, device=H100).basis


@pytest.mark.parametrize(("log_id", "slack_mib"), [
    ("llmdp-v0.19-qwen2.5-72b-tp2", 80),  # 80 down_proj of 231 MiB in 232 MiB segments
    ("llmdp-v0.19-qwen2.5-7b-tp1", 57),  # 28 x (qkv 31.5 -> 32, gate_up 259 -> 260, down 129.5 -> 130), 2 x 0.5
    ("llmdp-v0.19-qwen2.5-7b-tp2", 21.5),  # 28 x (qkv 15.75 -> 16, gate_up 129.5 -> 130), 2 x 0.25
    ("llmdp-v0.19-qwen2.5-7b-tp4", 0.25),  # 2 x 0.125 (embedding and lm_head, 259.875 MiB)
    ("llmdp-v0.19-llama-3.1-8b-tp1", 0),  # every weight a whole number of 2 MiB
    ("llmdp-v0.19-qwen3-8b-tp1", 2),  # embedding and lm_head of 1,187 MiB
    ("llmdp-v0.19-gemma-2-27b-tp1", 0),
    ("llmdp-v0.19-mixtral-8x7b-tp2", 2),  # embedding and lm_head of 125 MiB
    ("llmdp-v0.19-qwen3-30b-a3b-tp1", 1),  # embedding and lm_head of 593.5 MiB
])
def test_vllms_logged_weights_are_the_checkpoints_plus_the_allocators_rounding(log_id: str, slack_mib: float) -> None:
    # "Model loading took" is torch.cuda.max_memory_allocated after loading less before (gpu_model_runner.load_model,
    # DeviceMemoryProfiler), which counts the blocks PyTorch's allocator hands out: a weight of 10 MiB or more in a
    # segment rounded up to 2 MiB, with the remainder when it is 1 MiB or less (CUDACachingAllocator.cpp).
    # Qwen2.5-72B at TP 2 logs 67.80 GiB where its tensors are 67.715 GiB and its rotary cache 8 MiB: the 80 MiB of
    # rounding was the +1.29 % nibble promised above vLLM's 19,920 tokens.
    log = BY_ID[log_id]
    spec = _spec(log)
    stage = _stage(spec, log["tensor_parallel"])
    slack = weight_allocation_slack(stage, "bf16")
    assert slack == slack_mib * MIB
    catalog = get_device(log["catalog_device"]).planning_bytes
    hardware = Hardware(catalog, log["tensor_parallel"], log["catalog_device"])
    options = _options(log, END_TO_END[log_id])
    device = plan(spec, hardware, Workload(log["max_model_len"], 1), options).primary.devices[0]
    # Qwen2.5-7B-Instruct's rotary cache is 32,768 positions (its config.json), where the qwen2.5-7b preset is the base
    # model's 131,072
    positions = 32_768 if log["hf_repo"] == "Qwen/Qwen2.5-7B-Instruct" else spec.rotary_cache_rows[0]
    predicted = (device.weights_bytes + positions * spec.rotary_dim * 2 + slack) / GIB
    print(f"{log_id}: {predicted:.3f} GiB predicted, {log['weights_gib']} logged")
    assert abs(predicted - log["weights_gib"]) <= 0.006


def test_the_allocators_rounding_is_charged_only_where_nibble_knows_the_shapes_vllm_allocates() -> None:
    # quantized layouts (packed, repacked, scales) and model classes outside FUSED_LINEAR_MODEL_TYPES are not modelled
    stage = _stage(get_preset("qwen2.5-72b-instruct"), 2)
    assert weight_allocation_slack(stage, "fp8-per-channel") is None
    assert weight_allocation_slack(_stage(get_preset("gpt-oss-20b")), "bf16") is None
    assert weight_allocation_slack(_stage(get_preset("deepseek-v3.2")), "bf16") is None
    # DeepSeek-V2-Lite (deepseek_v2.py): its MLA projections and experts are whole numbers of 2 MiB or under 10 MiB;
    # the 26 shared experts' down_proj of 2048 x 2816 x 2 bytes (11 MiB) hold 12 MiB, the dense layer's gate_up
    # (85.5 MiB) 86: 26.5 MiB of the 0.155 GiB its log's weights hold beyond nibble's (the rest is not explained)
    assert weight_allocation_slack(_stage(get_preset("deepseek-v2-lite")), "bf16") == 26.5 * MIB
    assert weight_allocation_slack(stage, "fp16") == weight_allocation_slack(stage, "bf16") == 80 * MIB
    # a pipeline stage holds the embedding only on the first stage and the lm_head only on the last
    spec = get_preset("qwen3-8b")
    first, last = Stage(spec, 1, 2, (0, 18), False), Stage(spec, 1, 2, (18, 36), True)
    assert weight_allocation_slack(first, "bf16") == weight_allocation_slack(last, "bf16") == 1 * MIB


# --- end to end: nibble's weights, the engine terms and the device, against vLLM's token figure -------------

def _shipped(model: str) -> WeightScheme:
    """The checkpoint as it ships (its config.json's quantization_config): gpt-oss's MXFP4 experts beside
    bf16 attention, router and embeddings."""
    config = get_preset_info(model).quantization_config
    assert config is not None
    return scheme_from_quantization_config(config)


Storage = WeightFormat | WeightScheme | str

# Every public run whose log gives the model, the device (its total memory or a catalog entry), the utilization,
# the context, the layout and vLLM's KV figure, with the storage nibble plans it at.  Sources: vllm_logs.json.
END_TO_END: dict[str, Storage] = {
    "llmd-v0.11-llama-3.1-8b": float_format("bf16"),
    "llmd-v0.11-qwen3-0.6b-16k": float_format("bf16"),
    "llmd-v0.11-qwen3-0.6b-32k": float_format("bf16"),
    "llmd-v0.11-qwen3-32b-tp1": float_format("bf16"),
    "llmd-v0.11-qwen3-32b-tp2": float_format("bf16"),
    "llmd-v0.11-llama-3.3-70b-fp8-tp2": fp8(),  # FP8-dynamic: per-channel scales, dynamic activations
    # GPT-2 (uer/gpt2-chinese-cluecorpussmall, 21,128 tokens) at fp16 on an RTX 4090 through the LLM class: vLLM 0.11's
    # terms on a device below 70 GiB (8192 tokens, 256 sequences), planned from its config.json
    "aiinfra-v0.11-gpt2-chinese-4090": float_format("fp16"),
    # Qwen3-Next-80B-A3B on two H200s (vLLM 0.10.2): a hybrid model's KV pool at 262,144 tokens, exactly
    "vllm0102-h200-qwen3-next-80b-tp2": float_format("bf16"),
    # gpt-oss: nibble's 12.82 GiB is the checkpoint's bytes; vLLM's MXFP4 MoE kernels hold 13.47 GiB on H100 and
    # 13.72 GiB on A100: nibble adds their layout (`expert_layout`: +1.28 % -> -0.45 % and +2.61 % -> +0.23 %; on
    # H100 0.11's default Marlin layout, 0.23 GiB more than llm-d's image held with OpenAI's Triton kernels)
    "llmd-v0.11-gpt-oss-20b": "as shipped",
    "kagaho-v0.16-llama-3-70b-awq-l40s-tp2": int4(128),
    "myoceane-a100-gpt-oss-20b-0.19": "as shipped",
    # Mistral-Small-3.2 (Mistral3ForConditionalGeneration with its Pixtral tower): -10.4 %, its "gap" (the multimodal
    # profiling run logs 2.12 GiB of activations where nibble charges 5.09 GiB: the text pass, 4.91 GiB, beside the
    # two dummy images' pixel_values and their outputs widened to the 8,192-token budget, 0.18 GiB)
    "llmd-v0.11-mistral-small-3.2-24b": float_format("bf16"),
    # vLLM's Kimi-K2-Thinking recipe at TP 8 on H200s (a 0.11.1 nightly): INT4 experts (compressed-tensors, its
    # config's quantization_config) beside bf16 MLA; -0.18 % with 0.11's non-torch figure at 8 ranks, which its logged
    # KV memory gives (+2.79 % while TP=2's 0.55 GiB was charged: 1.31 GiB a rank promised that vLLM did not have)
    "recipes-kimi-k2-thinking-h200-tp8": scheme_from_quantization_config(
        BY_ID["recipes-kimi-k2-thinking-h200-tp8"]["hf_config"]["quantization_config"]),
}
# llm-d-planner's vLLM v0.19.0 sweep on H100 (27 runs of 13 checkpoints: TP 1/2/4, PP 2/4, an fp8 KV cache, FP8,
# W8A8, W4A16 and MXFP4 checkpoints; and three Granite runs on one GPU, planned from their config.json), each planned
# at the storage its checkpoint ships in.
STORAGE_OF_FORMAT: dict[str, Storage] = {
    "bf16": float_format("bf16"),
    "fp8": fp8(),  # FP8-dynamic (compressed-tensors): a scale per output channel
    "fp8-tensor": fp8("tensor"),  # --quantization fp8 at load time: one scale per tensor
    "int8-w8a8": WeightFormat("int8", None, True, "none"),  # W8A8: int8 with a scale per output channel
    "int4-g128-gptq": int4(128, symmetric=True),  # W4A16 GPTQ: symmetric, a scale per 128 weights
    "mxfp4": "as shipped",
}
END_TO_END |= {log["id"]: STORAGE_OF_FORMAT[log["weights_format"]] for log in LOGS
               if log["id"].startswith("llmdp-v0.19-")}
SOURCES = ("logged total", "catalog device")


def _vllm_tokens(log: dict[str, Any], total_bytes: int | None = None) -> int:
    """The tokens vLLM logged, or, for a run that logs only its KV memory, the tokens vLLM's own block rounding
    gives for it (pinned above on the runs that log both).  With `total_bytes`, what the same run holds on a device
    reporting that total instead of the logged one: vLLM's KV pool is total x gpu_memory_utilization less the non-KV
    memory its profile measured, which the total does not change (gpu_worker.py determine_available_memory), so the
    pool moves by utilization x the difference and the tokens with it (num_blocks = pool // page)."""
    kv_gib = log["available_kv_gib"]
    if total_bytes is not None and log["total_memory_gib"] and kv_gib:
        kv_gib -= log["gpu_memory_utilization"] * (log["total_memory_gib"] - total_bytes / GIB)
    if log["kv_cache_tokens"] is not None:
        return int(log["kv_cache_tokens"] * (kv_gib / log["available_kv_gib"] if kv_gib else 1))
    spec = _spec(log)
    return VllmProfile().kv_capacity(_stage(spec, log["tensor_parallel"]), log["kv_cache_dtype"],
                                     round(kv_gib * GIB), log["block_size"], log["max_model_len"],
                                     BatchLimits(8192, 1024)).tokens


def _options(log: dict[str, Any], storage: Storage) -> PlanOptions:
    """The run's settings as plan options: its storage (a format, a checkpoint's scheme, or "as shipped" for the
    preset's own checkpoint), KV dtype, utilization, block size, layout and the batch limits it ran with; for a vLLM
    0.10.2 run, its own non-torch figure (`SNAPSHOT_BEFORE_NCCL`)."""
    weight_format, scheme = int4(), None
    if isinstance(storage, WeightFormat):
        weight_format = storage
    elif isinstance(storage, WeightScheme):
        scheme = storage
    else:
        scheme = _shipped(log["model"])
    return PlanOptions(weight_format=weight_format, scheme=scheme, kv_cache_dtype=log["kv_cache_dtype"],
                       memory_utilization=log["gpu_memory_utilization"], block_size=log["block_size"],
                       pipeline_parallel=log["pipeline_parallel"], engine_version=log["profile_version"],
                       max_batched_tokens=log["max_num_batched_tokens"], max_num_seqs=log["max_num_seqs"],
                       runtime_overhead_bytes=(round(log["non_torch_gib"] * GIB)
                                               if log["vllm_version"] == SNAPSHOT_BEFORE_NCCL else None))


def _capacity_error(log_id: str, source: str, storage: Storage | None = None) -> float:
    """(nibble's kv_cache.capacity_tokens - vLLM's) / vLLM's, planning on the total the log reports (the catalog
    device when it reports none) or on the catalog device.  On the catalog device vLLM's tokens are those of the same
    run on a device reporting the catalog's total (`_vllm_tokens`): the catalog keeps the smallest public total, below
    most logged machines' (79.11 GiB for an H100 against llm-d's 79.18-79.19), and the error measured is nibble's, not
    the difference of the two machines."""
    log = BY_ID[log_id]
    storage = END_TO_END[log_id] if storage is None else storage
    catalog = get_device(log["catalog_device"]).planning_bytes
    capacity = (round(log["total_memory_gib"] * GIB) if source == "logged total" and log["total_memory_gib"]
                else catalog)
    hardware = Hardware(capacity, log["tensor_parallel"] * log["pipeline_parallel"], log["catalog_device"])
    tokens = plan(_spec(log), hardware, Workload(log["max_model_len"], 1),
                  _options(log, storage)).primary.kv_capacity_tokens
    assert tokens is not None
    vllm = _vllm_tokens(log, None if source == "logged total" else catalog)
    return (tokens - vllm) / vllm


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("log_id", END_TO_END)
def test_capacity_tokens_of_each_public_run_are_never_3_percent_above_vllms(log_id: str, source: str) -> None:
    # Above is the failure that matters (the plan promises tokens the engine does not hold); below, only the
    # runs with a "gap" in vllm_logs.json are more than 2 % under.
    error = _capacity_error(log_id, source)
    log = BY_ID[log_id]
    print(f"{log_id} ({log['hf_repo']}, TP {log['tensor_parallel']} PP {log['pipeline_parallel']}, "
          f"{source}): {error:+.2%}")
    assert error <= 0.03
    assert error >= -0.02 or log.get("gap")


@pytest.mark.parametrize("source", SOURCES)
def test_capacity_tokens_end_to_end_within_2_percent_on_average(source: str) -> None:
    errors = {log_id: _capacity_error(log_id, source) for log_id in END_TO_END}
    mean = sum(abs(error) for error in errors.values()) / len(errors)
    print(f"{source}: {len(errors)} runs, mean absolute error {mean:.2%}, "
          f"largest over-prediction {max(errors.values()):+.2%}")
    assert mean <= 0.02
    assert max(errors.values()) <= 0.03


# --- runs whose memory nibble's terms do not explain (their "gap"): vLLM 0.27.1 on PCIe-only cards ------------------

FP8_BLOCK_128 = scheme_from_quantization_config(  # the checkpoint's quantization_config, as the post quotes it
    {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"})
GAP_RUNS: dict[str, Storage] = {
    "kubesimplify-v0.27-qwen3-32b-tp2": float_format("bf16"),
    "kubesimplify-v0.27-qwen3-32b-pp2": float_format("bf16"),
    "kubesimplify-v0.27-qwen3-235b-fp8-tp4": FP8_BLOCK_128,
    "kubesimplify-v0.27-qwen3-235b-fp8-pp4": FP8_BLOCK_128,
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("log_id", GAP_RUNS)
def test_runs_with_a_known_gap_never_promise_more_than_3_percent_above_vllm(log_id: str, source: str) -> None:
    # kubesimplify's TP 2 / PP 2 (Qwen3-32B) and TP 4 / PP 4 (Qwen3-235B FP8) runs on RTX PRO 6000 cards without
    # NVLink: TP 2 (-39 %), PP 2 (-0.7 %) and TP 4 (-3 %) are under, on the safe side; PP 4 is +0.3 % once every
    # stage holds the embedding and lm_head as vLLM's Qwen3-MoE model builds them (it was +10.2 % without).
    log = BY_ID[log_id]
    error = _capacity_error(log_id, source, GAP_RUNS[log_id])
    print(f"{log_id} (TP {log['tensor_parallel']} PP {log['pipeline_parallel']}, {source}): {error:+.2%} "
          f"[gap: {log['gap'][:60]}...]")
    assert error <= 0.03


@pytest.mark.parametrize("source", SOURCES)
def test_every_public_run_gaps_included_is_within_2_percent_on_average_and_never_3_percent_above(
        source: str) -> None:
    # the bound over all 47 runs, the seven with a gap among them (TP 2's -39 % and Mistral 3's -10.4 %
    # included; llm-d's two v0.11 TP=2 runs +0.23 and +0.00 % with 0.11's own 0.55 GiB of non-torch memory at TP=2,
    # -2.2 and -2.6 % when a vLLM 0.10.2 run's 1.38 GiB, which holds the NCCL set-up, was charged)
    errors = [_capacity_error(log_id, source) for log_id in END_TO_END]
    errors += [_capacity_error(log_id, source, storage) for log_id, storage in GAP_RUNS.items()]
    mean = sum(map(abs, errors)) / len(errors)
    print(f"{source}, every run: {len(errors)} runs, mean absolute error {mean:.2%}, "
          f"largest over-prediction {max(errors):+.2%}")
    # 42 before llm-d-planner's three Granite runs, 45 before the RTX 4090 GPT-2 run, 46 before Kimi-K2-Thinking's
    assert len(errors) == 47
    assert mean <= 0.02 and max(errors) <= 0.03


def _pp4_plan(engine: str = "vllm") -> Plan:
    log = BY_ID["kubesimplify-v0.27-qwen3-235b-fp8-pp4"]
    options = replace(_options(log, FP8_BLOCK_128), engine=engine,
                      engine_version=log["profile_version"] if engine == "vllm" else None)
    return plan(_spec(log), Hardware(round(log["total_memory_gib"] * GIB), 4, log["catalog_device"]),
                Workload(log["max_model_len"], 1), options)


def test_vllm_builds_the_qwen3_moe_embedding_and_lm_head_on_every_pipeline_stage() -> None:
    # vllm/model_executor/models/qwen3_moe.py (v0.27.1, as in v0.33.0 and since Qwen3-MoE came in):
    # Qwen3MoeModel.__init__ creates embed_tokens and norm, Qwen3MoeForCausalLM.__init__ lm_head, with no
    # get_pp_group() test, where llama.py and qwen3.py put a PPMissingLayer on the other ranks.  kubesimplify's
    # PP 4 run logs "Model loading took 55.70 GiB": 23 of the 94 layers (FP8, 128 x 128 block scales) plus the bf16
    # embedding and lm_head (151,936 x 4,096 x 2 bytes = 1.16 GiB each) plus the 0.06 GiB rotary cos/sin cache
    # nibble does not count (262,144 positions x 128 x 2 bytes).  Stages split the layers [23, 24, 24, 23].
    log = BY_ID["kubesimplify-v0.27-qwen3-235b-fp8-pp4"]
    result = _pp4_plan()
    first, second, third, last = result.primary.devices
    vocabulary = 2 * 151936 * 4096 * 2 + 4096 * 2  # embedding + lm_head (bf16) + the final RMSNorm (bf16)
    assert result.primary.weights_by_role["embedding"] + result.primary.weights_by_role["lm_head"] == \
        vocabulary - 4096 * 2
    rotary_cache = 262144 * 128 * 2
    assert abs((first.weights_bytes + rotary_cache) / GIB - log["weights_gib"]) < 0.01
    assert first.weights_bytes == last.weights_bytes
    assert second.weights_bytes == third.weights_bytes > first.weights_bytes
    generic = _pp4_plan("generic").primary.devices  # no engine: embedding on the first stage, lm_head on the last
    assert second.weights_bytes - generic[1].weights_bytes == vocabulary
    assert first.weights_bytes - generic[0].weights_bytes == vocabulary - 151936 * 4096 * 2
    note = next(w for w in result.warnings if "on every pipeline stage" in w)
    assert "qwen3_moe.py" in note and "2.32 GiB" in note
    assert not any("on every pipeline stage" in w for w in PP2.warnings)  # Llama: llama.py guards them


@pytest.mark.parametrize(("model", "everywhere"), [
    # vllm/model_executor/models/ (v0.27.1, v0.33.0): no get_pp_group() test around the embedding and lm_head in
    # qwen3_moe.py, mixtral.py, gpt_oss.py, gemma2.py, gemma3.py, falcon.py, gpt2.py; PPMissingLayer on the other
    # ranks in llama.py (Mistral, Phi-3), qwen2.py, qwen3.py, deepseek_v2.py.
    ("qwen3-30b-a3b", True), ("mixtral-8x7b-v0.1", True), ("gpt-oss-20b", True), ("gemma-2-9b", True),
    ("gemma-3-1b-it", True), ("falcon-7b", True), ("gpt2", True),
    ("llama-3.1-8b", False), ("mistral-7b-v0.1", False), ("phi-3-mini-4k-instruct", False), ("qwen2.5-7b", False),
    ("qwen3-8b", False), ("deepseek-v3", False),
])
def test_the_model_families_vllm_builds_the_vocabulary_for_on_every_stage(model: str, everywhere: bool) -> None:
    spec = get_preset(model)
    assert (VllmProfile().vocabulary_on_every_stage(spec) is not None) == everywhere
    staged = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 3), Workload(4096, 1),
                  PlanOptions(pipeline_parallel=3, weight_format=float_format("bf16")))
    generic = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 3), Workload(4096, 1),
                   PlanOptions(pipeline_parallel=3, weight_format=float_format("bf16"), engine="generic"))
    middle, alone = staged.primary.devices[1], generic.primary.devices[1]  # a middle stage runs neither matrix
    roles = staged.primary.weights_by_role
    vocabulary = sum(roles.get(role, 0) for role in ("embedding", "position_embedding", "lm_head"))
    if everywhere:  # one copy of each (a tied lm_head is the embedding) and the final norm, none of which it runs
        assert middle.unread_weights_bytes == middle.weights_bytes - alone.weights_bytes
        assert vocabulary <= middle.unread_weights_bytes < vocabulary + (1 << 20)
    else:
        assert middle.unread_weights_bytes == 0 and middle.weights_bytes == alone.weights_bytes


def test_the_tightest_qwen3_235b_stage_at_pp4_is_a_24_layer_stage_holding_58_gib_of_weights() -> None:
    # 555,680 tokens = 34,730 blocks of 16: a 24-layer stage's 25.44 GiB (34,730 x 24 layers x 32 KiB pages); the
    # 26.84 GiB the post quotes is a 23-layer stage's (38,238 blocks).  Each middle stage carries 24 layers plus
    # both vocabulary matrices, 57.95 GiB (58.01 with the rotary cache): vLLM leaves it 85.51 - 58.01 - 25.44 =
    # 2.06 GiB beside its weights and nibble 2.10 (1.00 GiB of it TritonExperts' fused-MoE workspace, which vLLM's
    # workspace manager holds through every later layer's attention, 0.43 GiB the graph estimate of 11 capture sizes,
    # 386 MiB + (24 layers x 4.25 MiB + qwen3_moe's 146 MiB) x 11 / 51, 0.01 GiB the rotary cache, 40,960 x 128 x
    # 2 bytes, and 0.01 GiB DeepGEMM's packed UE8M0 scales of 0.33 on 12.x, 24 x (qkv_proj 9216 x 4096: 294,912 -
    # 9,216, o_proj 4096 x 8192: 262,144 - 8,192) = 12,951,552 bytes, which the post's VLLM_USE_DEEP_GEMM=0 run did
    # not hold: 2.09 before), so nibble is 0.09 % over (0.29 % with the fixed 0.39 GiB estimate) instead of the
    # 10.2 % it was when the middle stages held neither matrix (nibble 28.04 GiB for the KV pool there, vLLM 25.44).
    # The card's 9 MiB of cuBLAS workspaces are not in it: the run is planned under 0.33's rules, whose init_device
    # takes them before the start-up snapshot (charged there, outside the budget); 0.27.1, the logged release, takes
    # them in the profiling run (it has no such step), which is 2.11.
    log = BY_ID["kubesimplify-v0.27-qwen3-235b-fp8-pp4"]
    result = _pp4_plan()
    page = 16 * 4 * 128 * 2 * 2  # one layer's 16-token block: 4 KV heads x 128 x K and V x bf16
    assert log["kv_cache_tokens"] // 16 == 34730 and round(34730 * 24 * page / GIB, 2) == 25.44
    assert int(log["available_kv_gib"] * GIB) // (23 * page) == 38238 > 34730
    middle = result.primary.devices[1]
    assert round(middle.weights_bytes / GIB, 2) == 57.95
    assert round((middle.activation_bytes + middle.overhead_bytes) / GIB, 2) == 2.10
    assert 0 < (result.primary.kv_capacity_tokens - log["kv_cache_tokens"]) / log["kv_cache_tokens"] < 0.004


def test_a_run_vllm_starts_without_kv_memory_is_planned_without_room() -> None:
    # Qwen3-32B in bf16 on one 95.01 GiB card at --gpu-memory-utilization 0.426: vLLM logs "Available KV cache
    # memory: -24.42 GiB" and refuses to start; nibble's pool is negative and the plan does not fit.
    log = BY_ID["kubesimplify-v0.27-qwen3-32b-tp1"]
    hardware = Hardware(round(log["total_memory_gib"] * GIB), 1, log["catalog_device"])
    result = plan(_spec(log), hardware, Workload(log["max_model_len"], 1), _options(log, float_format("bf16")))
    assert not result.fits
    assert result.primary.kv_pool_bytes / GIB < log["available_kv_gib"] + 1 < 0


def test_the_end_to_end_runs_span_models_layouts_and_checkpoints() -> None:
    # What nibble's terms explain end to end: 43 runs of 27 checkpoints on H100, H200, A100, L40S and an RTX 4090, TP
    # 1/2/4/8 and PP 2/4, an fp8 KV cache, FP8, W8A8, W4A16 (Kimi-K2-Thinking's INT4 experts among them), AWQ and MXFP4
    # checkpoints, a hybrid (Gated DeltaNet) model.  The vLLM 0.27.1 runs on PCIe-only cards (GAP_RUNS) are outside
    # it: nibble does not model their memory outside the KV cache.
    runs = [BY_ID[log_id] for log_id in END_TO_END]
    assert len(runs) >= 37 and len({log["hf_repo"] for log in runs}) >= 19
    assert {log["tensor_parallel"] for log in runs} == {1, 2, 4, 8}
    assert {log["pipeline_parallel"] for log in runs} == {1, 2, 4}
    assert "fp8" in {log["kv_cache_dtype"] for log in runs}
    assert {"fp8", "int8-w8a8", "int4-g128-gptq", "int4-g128-awq", "mxfp4"} <= {log["weights_format"] for log in runs}
    assert {log["catalog_device"] for log in runs} == {"h100-80gb", "h200", "a100-80gb", "l40s", "rtx-4090"}
    assert any(not log["full_attention"] for log in runs)
    gaps = [BY_ID[log_id] for log_id in GAP_RUNS]
    assert {(log["tensor_parallel"], log["pipeline_parallel"]) for log in gaps} == {(2, 1), (1, 2), (4, 1), (1, 4)}
    assert all(log["gap"] for log in gaps)


# --- pipeline parallelism: no public PP=2 log gives all its figures, so PP is pinned on vLLM's own code ---------

@pytest.mark.parametrize(("model", "stages", "layers"), [
    ("deepseek-v3", 2, [(0, 31), (31, 61)]),  # vLLM's docs: 61 layers -> [31, 30] and [15, 15, 16, 15]
    ("deepseek-v3", 4, [(0, 15), (15, 30), (30, 46), (46, 61)]),
    ("llama-3.2-3b", 3, [(0, 9), (9, 19), (19, 28)]),
    ("llama-3.1-8b", 2, [(0, 16), (16, 32)]),
])
def test_pipeline_stages_hold_the_layers_vllms_get_pp_indices_gives_them(model: str, stages: int,
                                                                         layers: list[tuple[int, int]]) -> None:
    # vllm/distributed/utils.py get_pp_indices: num_layers // pp each, the remainder one apiece to the stages
    # before the last, from the second-to-last backwards (the last stage runs the norm, lm_head and sampler).
    hardware = Hardware(get_device("h100-80gb").planning_bytes, stages, "h100-80gb")
    result = plan(get_preset(model), hardware, Workload(4096, 1), PlanOptions(pipeline_parallel=stages))
    assert [device.layers for device in result.primary.devices] == layers


PP2_LOG = BY_ID["llmdp-v0.19-llama-3.1-8b-pp2"]
PP2 = plan(get_preset("llama-3.1-8b"), Hardware(round(PP2_LOG["total_memory_gib"] * GIB), 2, "h100-80gb"),
           Workload(8192, 1), PlanOptions(weight_format=float_format("bf16"), pipeline_parallel=2,
                                          memory_utilization=PP2_LOG["gpu_memory_utilization"]))


def test_only_the_last_pipeline_stage_profiles_the_sampler() -> None:
    # gpu_model_runner.profile_run: "_dummy_run(self.max_num_tokens, is_profile=True)" on every rank, then
    # "if get_pp_group().is_last_rank: ... self._dummy_sampler_run(...)".  vLLM 0.19.0 logs Llama-3.1-8B at PP=2
    # (llm-d-planner): 1.10 GiB of peak activation on the first stage, 2.01 GiB on the last, which is the single
    # GPU's 1.89 GiB sampler pass plus the 0.13 GiB (2 x 8192 x 4096 x 2 bytes) it receives the first stage's
    # hidden states and residual in.  nibble's first stage is the forward pass alone, 8192 x 2 bytes x (3 x 4096
    # hidden + 3 x 14336 MLP) = 0.84 GiB, below the log on a stage that does not bind, plus the rotary cos/sin cache
    # every stage builds with its layers (llama3_rope.py: 131,072 positions x 128 x 2 bytes) and the H100's cuBLAS and
    # cuBLASLt workspaces, 32 + 1 MiB, taken at the first matrix product (CublasHandlePool.cpp).
    first, last = PP2.primary.devices
    expected = 8192 * 2 * (3 * 4096 + 3 * 14336) + 131_072 * 128 * 2 + 33 * 2**20
    assert first.activation_bytes == expected == 974_127_104
    # nibble's activation term also carries the rotary cache, which vLLM logs inside "Model loading took"
    assert round((last.activation_bytes - 131_072 * 128 * 2) / GIB, 2) == PP2_LOG["activation_gib"] == 2.01


def test_pipeline_capacity_is_every_stage_cut_to_the_smallest_stages_blocks() -> None:
    # kv_cache_utils.get_kv_cache_configs: each worker gets available // (page x its layers) blocks, then "Change
    # the num_blocks of each rank to the smallest among all ranks"; the token line is num_blocks x block_size.
    # Llama-3.1-8B: a 16-token page of one layer is 16 x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 64 KiB.
    page = 16 * 8 * 128 * 2 * 2
    blocks = [(device.usable_bytes - device.weights_bytes - device.activation_bytes - device.overhead_bytes)
              // (page * (device.layers[1] - device.layers[0])) for device in PP2.primary.devices]
    assert blocks[1] < blocks[0]  # the last stage also holds lm_head and the sampler's peak
    assert PP2.primary.kv_capacity_tokens == min(blocks) * 16


# --- defaults, versions, grouping, refusals, devices ---------------------------------------------------------

def test_batch_limits_follow_vllms_openai_server_defaults() -> None:
    profile = VllmProfile()
    assert profile.batch_limits(get_device("h100-80gb").planning_bytes, "h100-80gb") == BatchLimits(8192, 1024)
    assert profile.batch_limits(get_device("a100-80gb").planning_bytes, "a100-80gb") == BatchLimits(2048, 256)
    assert profile.batch_limits(get_device("l40s").planning_bytes, "l40s") == BatchLimits(2048, 256)


def test_the_plan_takes_the_engines_defaults_for_the_device() -> None:
    spec = get_preset("llama-3.1-8b")
    h100 = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb"), Workload(4096, 1))
    l40s = plan(spec, Hardware(get_device("l40s").planning_bytes, 1, "l40s"), Workload(4096, 1))
    assert (h100.max_batched_tokens, h100.max_num_seqs) == (8192, 1024)
    assert (l40s.max_batched_tokens, l40s.max_num_seqs) == (2048, 256)


def test_cuda_graph_memory_is_outside_the_budget_in_0_19_and_inside_in_0_33() -> None:
    spec = get_preset("llama-3.1-8b")
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    limits = BatchLimits(8192, 1024)
    old = plan(spec, hardware, Workload(8192, 1), PlanOptions(engine_version="0.19", max_num_seqs=256))
    new = plan(spec, hardware, Workload(8192, 1), PlanOptions(engine_version="0.33", max_num_seqs=256))
    h100, planned = device_facts("h100-80gb"), BatchLimits(8192, 256)
    assert VllmProfile("0.19").cuda_graphs(_stage(spec), limits).bytes == 0
    graphs = VllmProfile("0.33").cuda_graphs(_stage(spec), planned, False, "bf16", h100).bytes
    activations = (VllmProfile("0.19").activation(_stage(spec), planned, device=h100).bytes
                   - VllmProfile("0.33").activation(_stage(spec), planned, device=h100).bytes)
    assert old.primary.kv_pool_bytes - new.primary.kv_pool_bytes == graphs - activations
    # 51 capture sizes on an H100: 386 MiB + 32 layers x 4.25 MiB, above the 0.09-0.52 GiB estimates 0.2x releases log
    # (club-3090, gpustack/runner#251, LMCache#3430's Qwen3-8B at 36 layers); 400 MiB before
    assert graphs == 522 * MIB


def test_sliding_window_layers_are_grouped_as_vllm_groups_them() -> None:
    # gemma-2-9b: 21 sliding + 21 full layers -> two groups of 21; a block of the pool serves one group,
    # so tokens = num_blocks // 2 x 16, num_blocks = pool // (page x 21).
    spec = get_preset("gemma-2-9b")
    page = 16 * kv_bytes_per_token(spec, "bf16") // spec.num_layers
    pool = 10 * GIB
    capacity = VllmProfile().kv_capacity(_stage(spec), "bf16", pool, 16, 8192, BatchLimits(8192, 1024))
    assert capacity.num_blocks == pool // (page * 21)
    assert capacity.tokens == capacity.num_blocks // 2 * 16


@pytest.mark.parametrize(("version", "group_size", "blocks_per_request"), [
    # full groups x cdiv(8192, 16) + sliding groups x (cdiv(min(4096 - 1 + in-flight tokens, 8192), 16) + 1)
    ("0.11", 10, 2 * 512 + 1 * (384 + 1)),  # 3 groups of 10: 2 full (the second padded) and 1 sliding
    ("0.19", 13, 1 * 512 + 1 * (384 + 1)),  # 2 groups of 13 (the sliding one padded)
    ("0.33", 13, 1 * 512 + 1 * (512 + 1)),  # the same, two batches of 2,048 in flight
])
def test_layers_of_two_kinds_within_1_5x_are_grouped_by_the_larger_count_from_0_19(
        version: str, group_size: int, blocks_per_request: int) -> None:
    # 10 sliding + 13 full layers: v0.11's _get_kv_cache_groups_uniform_page_size groups by the smaller count, 10;
    # v0.19 and v0.33 by the larger when it is under 1.5x the smaller (kv_cache_utils.py / kv_cache_planning.py:
    # "if max_num_layers < min_num_layers * 1.5")
    spec = model_from_sizes(hidden_size=1024, num_layers=23, num_attention_heads=8, intermediate_size=4096,
                            vocab_size=32_000, sliding_window=4096, sliding_layers=list(range(10)), name="mixed")
    page = 16 * kv_bytes_per_token(spec, "bf16") // spec.num_layers
    pool = GIB
    capacity = VllmProfile(version).kv_capacity(_stage(spec), "bf16", pool, 16, 8192, BatchLimits(2048, 256))
    assert capacity.num_blocks == pool // (page * group_size)
    assert capacity.max_concurrency == capacity.num_blocks / blocks_per_request


@pytest.mark.parametrize(("version", "in_flight"), [("0.19", 8192), ("0.33", 2 * 8192)])
def test_a_sliding_group_reserves_its_window_and_the_tokens_in_flight_per_request(version: str,
                                                                                  in_flight: int) -> None:
    # gpt-oss-20b: 12 sliding (window 128) + 12 full layers, two groups of 12.  SlidingWindowSpec's
    # max_memory_usage_bytes reserves cdiv(min(window - 1 + in-flight tokens, L), 16) + 1 blocks: in v0.19 the in-flight
    # tokens are max_num_batched_tokens (kv_cache_interface.py); in v0.33 VllmConfig.max_in_flight_tokens,
    # max_concurrent_batches (2: async scheduling, on by default, with the V2 model runner at one stage, config/vllm.py)
    # x max_num_batched_tokens
    spec = get_preset("gpt-oss-20b")
    pool, length = 10 * GIB, 131_072
    capacity = VllmProfile(version).kv_capacity(_stage(spec), "bf16", pool, 16, length, BatchLimits(8192, 1024))
    page = 16 * kv_bytes_per_token(spec, "bf16") // spec.num_layers
    assert capacity.num_blocks == pool // (page * 12)
    per_request = length // 16 + (-(-(128 - 1 + in_flight) // 16) + 1)
    assert capacity.max_concurrency == capacity.num_blocks / per_request


@pytest.mark.parametrize(("model", "tensor_parallel", "reason"), [
    ("llama-3.1-8b", 3, "does not divide the model's 32 attention heads"),
    ("qwen2.5-7b", 7, "4 key/value heads can be neither split evenly nor replicated"),
])
def test_layouts_vllm_refuses_are_not_deployable_with_the_reason(model: str, tensor_parallel: int,
                                                                 reason: str) -> None:
    hardware = Hardware(get_device("h100-80gb").planning_bytes, tensor_parallel)
    result = plan(get_preset(model), hardware, Workload(4096, 1))
    assert not result.fits and result.refusal is not None and reason in result.refusal
    assert plan(get_preset(model), hardware, Workload(4096, 1), PlanOptions(engine="generic")).refusal is None


def test_devices_carry_the_memory_cuda_reports_below_their_nominal_size() -> None:
    # H100 80GB: 79.11 GiB (vllm#27508); L40S: 44.39 GiB (sgahlot/ai-observ-summarizer's 4x L40S); RTX 3090:
    # 23.56 GiB (wtdcode/vllm-backport#34), each the smallest public total
    assert round(get_device("h100-80gb").planning_bytes / GIB, 2) == 79.11
    assert round(get_device("l40s").planning_bytes / GIB, 2) == 44.39
    assert round(get_device("rtx-3090").planning_bytes / GIB, 2) == 23.56
    for device in list_devices():
        assert device.reported_source
        if device.reported_memory_bytes is not None:
            assert device.reported_memory_bytes < device.memory_bytes
            assert "https://github.com/" in device.reported_source


def test_unknown_engine_and_version_are_refused_naming_the_field() -> None:
    with pytest.raises(UnknownName) as engine:
        PlanOptions(engine="tgi")
    assert engine.value.field == "runtime.engine"
    with pytest.raises(UnknownName) as version:
        PlanOptions(engine_version="0.1")
    assert version.value.field == "runtime.engine_version"
    assert get_engine("generic") is None


def test_vllm_refuses_a_tensor_parallel_size_that_splits_llama4s_40_heads_but_not_its_vision_towers_16() -> None:
    # TP 40 divides the language model's 40 heads and replicates its 8 KV heads, but mllama4.py's
    # Llama4VisionAttention asserts num_heads (16) % tp_size == 0; the text-only llama4_text model passes the head
    # checks but not FusedMoE's (intermediate_size 8192 % 40: expert_width_refusal)
    from quant_core.hf_config import model_from_hf_config
    from tests.quant_core.test_hf_config import llama4_config

    config = llama4_config("llama-4-scout-17b-16e-instruct")
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 40)
    refused = plan(model_from_hf_config(config), hardware, Workload(4096, 1))
    assert refused.refusal is not None and "vision tower's 16 attention heads" in refused.refusal
    text_only = plan(model_from_hf_config(config["text_config"]), hardware, Workload(4096, 1)).refusal
    assert text_only is not None and "routed experts' width (8192" in text_only and "vision" not in text_only
    assert VllmProfile().refusal(model_from_hf_config(config), 8, 1) is None
    from quant_core.planner import engine_tensor_parallel_sizes

    assert engine_tensor_parallel_sizes(model_from_hf_config(config)) == (1, 2, 4, 8)
    assert engine_tensor_parallel_sizes(model_from_hf_config(config["text_config"])) == (1, 2, 4, 8)


def test_vllm_builds_llama4s_vocabulary_only_on_the_first_and_last_stage() -> None:
    # vllm/model_executor/models/llama4.py: Llama4Model(LlamaModel) and Llama4ForCausalLM(LlamaForCausalLM) keep
    # llama.py's PPMissingLayer for the embedding, norm and lm_head on the ranks that do not run them
    from quant_core.hf_config import model_from_hf_config
    from tests.quant_core.test_hf_config import llama4_config

    spec = model_from_hf_config(llama4_config("llama-4-maverick-17b-128e-instruct"))
    assert VllmProfile().vocabulary_on_every_stage(spec) is None


# --- vLLM 0.19's MXFP4 expert layouts (gpt-oss): the weights its kernels hold beyond the checkpoint's ---------

def test_vllm_0_19_holds_gpt_oss_20b_experts_at_tp2_on_hopper_in_openais_triton_layout() -> None:
    # gpt-oss-20b: 32 experts, hidden 2,880, expert width 2,880 = 1,440 a rank at TP 2.  vLLM 0.19
    # (fused_moe/oracle/mxfp4.py, quantization/mxfp4.py, third_party/triton_kernels/tensor_details/layout_details):
    # the width rounded up to 64 (1,472); HopperMXValueLayout pads the transposed packed values to 64 (w13
    # [1,440 -> 1,472 x 2,944], w2 [736 -> 768 x 2,880]); HopperMXScaleLayout pads the rows to 256 (w13 2,944 ->
    # 3,072 x 90 scales, w2 2,880 -> 3,072 x 46); the unswizzled scales stay registered (2,944 x 90, 2,880 x 46);
    # the biases become float32 ((2,944 + 2,880) x 4)
    held = (2944 * 1472 + 2880 * 768) + (3072 * 90 + 3072 * 46) + (2944 * 90 + 2880 * 46) + (2944 + 2880) * 4
    shipped = (2 * 1440 * 2880 // 2 + 2 * 1440 * 2880 // 32 + 2880 * 1440 // 2 + 2880 * 1440 // 32
               + (2 * 1440 + 2880) * 2)
    spec = get_preset("gpt-oss-20b")
    assert mxfp4_expert_layout_bytes(spec, 2, 24, "triton") == (24 * 32 * held, 24 * 32 * shipped)
    term = VllmProfile("0.19").expert_layout(_stage(spec, 2), "mxfp4", H100)
    assert term is not None and term.bytes == 24 * 32 * (held - shipped)  # 0.55 GiB a rank
    assert "1440 -> 1472" in term.basis


def test_vllm_0_19_holds_gpt_oss_20b_experts_on_a100_in_marlins_padded_tiles() -> None:
    # Marlin (compute capability 8.x, marlin_utils_fp4.py prepare_moe_mxfp4_layer_for_marlin): width 2,880 -> 2,944
    # (128), hidden 2,880 -> 3,072 (256), repacked values and e8m0 scales at those sizes, bf16 biases
    def experts(width: int, hidden: int) -> int:
        return 2 * width * hidden // 2 + 2 * width * hidden // 32 + hidden * width // 2 + hidden * width // 32 \
            + (2 * width + hidden) * 2
    spec = get_preset("gpt-oss-20b")
    assert mxfp4_expert_layout_bytes(spec, 1, 24, "marlin") == (24 * 32 * experts(2944, 3072),
                                                                 24 * 32 * experts(2880, 2880))


def test_mxfp4_layouts_are_charged_only_where_they_were_read() -> None:
    spec, profile = get_preset("gpt-oss-20b"), VllmProfile("0.19")
    assert profile.expert_layout(_stage(spec), "bf16", H100) is None
    assert profile.expert_layout(_stage(spec), "mxfp4", MI300X) is None  # ROCm's CK / AITER layouts: not read
    assert profile.expert_layout(_stage(spec), "mxfp4", T4) is None  # capability 7.5: not read
    assert profile.expert_layout(_stage(spec), "mxfp4", UNKNOWN_DEVICE) is None  # no capability: the backend unknown
    assert profile.expert_layout(_stage(get_preset("llama-3.1-8b")), "mxfp4", H100) is None  # no experts


# gpt-oss-20b: 24 MoE layers x 32 experts, gpt-oss-120b: 36 x 128, both hidden H = 2,880 and expert width 2,880
# (w = 1,440 a rank at TP 2).  One expert holds w x H x 51 / 32 bytes of values and e8m0 scales (w13: 2w x H/2 +
# 2w x H/32, w2: H x w/2 + H x w/32) and (2w + H) biases.  The checkpoint: bf16 biases at w and H.
SHIPPED_EXPERT = {1: 2880 * 2880 * 51 // 32 + (2 * 2880 + 2880) * 2, 2: 1440 * 2880 * 51 // 32 + (2 * 1440 + 2880) * 2}
# What vLLM holds for one expert, by backend and TP:
HELD_EXPERT = {
    # Marlin (utils/marlin_utils_fp4.py): width to 128 (2,880 -> 2,944, 1,440 -> 1,536), hidden to 256 (3,072),
    # bf16 biases
    ("marlin", 1): 2944 * 3072 * 51 // 32 + (2 * 2944 + 3072) * 2,
    ("marlin", 2): 1536 * 3072 * 51 // 32 + (2 * 1536 + 3072) * 2,
    # FlashInfer TRT-LLM-gen, 0.11 (SM100_FI_MXFP4_BF16) and 0.19 (FLASHINFER_TRTLLM_MXFP4_BF16): width and hidden to
    # 256 (2,880 -> 3,072, 1,440 -> 1,536), shuffled values and scales at those sizes, float32 biases
    ("trtllm", 1): 3072 * 3072 * 51 // 32 + (2 * 3072 + 3072) * 4,
    ("trtllm", 2): 1536 * 3072 * 51 // 32 + (2 * 1536 + 3072) * 4,
    # 0.33's TRT-LLM-gen: width to 128 only (2,880 -> 2,944; 1,536), hidden to 256, float32 biases
    ("trtllm-0.33", 1): 2944 * 3072 * 51 // 32 + (2 * 2944 + 3072) * 4,
    ("trtllm-0.33", 2): 1536 * 3072 * 51 // 32 + (2 * 1536 + 3072) * 4,
    # 0.19's Triton (Hopper): width to 64 (2,880; 1,472), values padded to 64 ([5,760 x 1,472] + [2,880 x 1,472];
    # [2,944 x 1,472] + [2,880 x 768]), swizzled scales' rows to 256 (5,888 / 3,072; 3,072 / 3,072), the unswizzled
    # scales kept beside them, float32 biases
    ("triton", 1): (5760 * 1472 + 2880 * 1472) + (5888 * 90 + 3072 * 90) + (5760 * 90 + 2880 * 90) + (5760 + 2880) * 4,
    ("triton", 2): (2944 * 1472 + 2880 * 768) + (3072 * 90 + 3072 * 46) + (2944 * 90 + 2880 * 46) + (2944 + 2880) * 4,
    # 0.33's Triton (Hopper): values' rows to 16 and bytes to 32 (already aligned), scales per row to 4 (90 -> 92,
    # 46 -> 48) and rows to 256, no unswizzled copy, float32 biases
    ("triton-0.33", 1): (5760 * 1440 + 2880 * 1440) + (5888 * 92 + 3072 * 92) + (5760 + 2880) * 4,
    ("triton-0.33", 2): (2944 * 1440 + 2880 * 736) + (3072 * 92 + 3072 * 48) + (2944 + 2880) * 4,
}
# The backend each release runs gpt-oss's experts on, by device (compute capability): H100 9.0, A100 8.0, B200 10.0,
# RTX PRO 6000 12.0.  0.11 (quantization/mxfp4.py get_mxfp4_backend): FlashInfer's SM100 kernel on 10.0, Marlin
# elsewhere (no triton_kernels in a 0.11.0 install); 0.19 / 0.33 (fused_moe/oracle/mxfp4.py): TRT-LLM-gen on 10.0,
# Triton on 9.0, Marlin on 8.x and 12.0
BACKEND_OF = {
    ("0.11", "h100-80gb"): "marlin", ("0.11", "a100-80gb"): "marlin", ("0.11", "b200"): "trtllm",
    ("0.11", "rtx-pro-6000"): "marlin",
    ("0.19", "h100-80gb"): "triton", ("0.19", "a100-80gb"): "marlin", ("0.19", "b200"): "trtllm",
    ("0.19", "rtx-pro-6000"): "marlin",
    ("0.33", "h100-80gb"): "triton-0.33", ("0.33", "a100-80gb"): "marlin", ("0.33", "b200"): "trtllm-0.33",
    ("0.33", "rtx-pro-6000"): "marlin",
}
EXPERTS_OF = {"gpt-oss-20b": 24 * 32, "gpt-oss-120b": 36 * 128}


@pytest.mark.parametrize(("version", "device"), list(BACKEND_OF))
@pytest.mark.parametrize("tensor_parallel", [1, 2])
@pytest.mark.parametrize("model", list(EXPERTS_OF))
def test_gpt_oss_mxfp4_experts_per_rank_bytes_by_release_device_and_tp(version: str, device: str,
                                                                        tensor_parallel: int, model: str) -> None:
    # e.g. gpt-oss-20b on a B200 at TP 1 in vLLM 0.19: 768 x (3,072 x 3,072 x 51/32 + 9,216 x 4 - 2,880 x 2,880 x
    # 51/32 - 8,640 x 2) = 768 x 1,840,896 = 1.32 GiB a rank beyond the checkpoint's 9.47 GiB of experts
    backend = BACKEND_OF[version, device]
    held, shipped = HELD_EXPERT[backend, tensor_parallel], SHIPPED_EXPERT[tensor_parallel]
    spec = get_preset(model)
    term = VllmProfile(version).expert_layout(_stage(spec, tensor_parallel), "mxfp4", device_facts(device))
    assert term is not None
    assert term.bytes == EXPERTS_OF[model] * (held - shipped)
    assert mxfp4_expert_layout_bytes(spec, tensor_parallel, spec.num_layers, backend) == \
        (EXPERTS_OF[model] * held, EXPERTS_OF[model] * shipped)


@pytest.mark.parametrize(("version", "device", "names"), [
    ("0.11", "h100-80gb", ("Marlin", "MARLIN", "triton_kernels", "2880 -> 2944", "2880 -> 3072")),
    ("0.11", "b200", ("TRT-LLM-gen", "SM100_FI_MXFP4_BF16", "2880 -> 3072", "float32 biases")),
    ("0.19", "b200", ("TRT-LLM-gen", "FLASHINFER_TRTLLM_MXFP4_BF16", "2880 -> 3072")),
    ("0.33", "b200", ("TRT-LLM-gen", "FLASHINFER_TRTLLM_MXFP4_BF16", "2880 -> 2944", "2880 -> 3072")),
    ("0.19", "rtx-pro-6000", ("Marlin", "2880 -> 2944")),
    ("0.33", "h100-80gb", ("OpenAI's Triton kernels", "Mxfp4MoeBackend.TRITON")),
])
def test_the_plan_says_which_mxfp4_backend_and_layout_it_charged(version: str, device: str,
                                                                 names: tuple[str, ...]) -> None:
    spec = get_preset("gpt-oss-120b")
    result = plan(spec, Hardware(get_device(device).planning_bytes, 1, device), Workload(8192, 1),
                  PlanOptions(scheme=_shipped("gpt-oss-120b"), engine_version=version))
    basis = result.runtime_overhead.basis
    assert "routed experts' kernel layout: vLLM " + version in basis
    assert all(name in basis for name in names), basis


def test_vllm_0_11_runs_gpt_oss_on_marlin_on_hopper_without_triton_kernels() -> None:
    # vLLM 0.11 quantization/mxfp4.py get_mxfp4_backend: on capability 9.0 FlashInfer only with
    # VLLM_USE_FLASHINFER_MOE_MXFP4_BF16 (off by default), then ``capability[0] < 9 or not has_triton_kernels()``
    # -> MARLIN; the 0.11.0 wheel neither requires nor vendors triton_kernels (vllm/third_party holds pynvml only;
    # vLLM PR #27370 / issue #27672 added it after 0.11.0).  Marlin pads gpt-oss-20b's experts to 2,944 x 3,072:
    # 0.85 GiB a rank beyond the checkpoint (the Triton layout this replaced charged 0.57 GiB).  llm-d's v0.11 H100
    # log ('Model loading took 13.47 GiB', vllm_logs.json) is 0.23 GiB under Marlin's 13.70 GiB (checkpoint 12.82 +
    # layout 0.85 + bf16 rotary cache 0.03): that image ran OpenAI's Triton kernels, so the plan is on the safe side
    log = BY_ID["llmd-v0.11-gpt-oss-20b"]
    spec = _spec(log)
    term = VllmProfile("0.11").expert_layout(_stage(spec), "mxfp4", H100)
    assert term is not None and term.bytes == 768 * (HELD_EXPERT["marlin", 1] - SHIPPED_EXPERT[1])  # 0.85 GiB
    hardware = Hardware(get_device("h100-80gb").planning_bytes, 1, "h100-80gb")
    device = plan(spec, hardware, Workload(log["max_model_len"], 1), _options(log, "as shipped")).primary.devices[0]
    loaded = (device.weights_bytes + term.bytes + rotary_cache_bytes(spec, "0.11")) / GIB
    assert log["weights_gib"] + 0.2 <= loaded <= log["weights_gib"] + 0.25


def test_vllm_0_33_holds_gpt_oss_20b_experts_at_tp2_on_hopper_in_its_vendored_triton_layout() -> None:
    # vLLM 0.33 (fused_moe/oracle/mxfp4.py select_mxfp4_moe_backend: TRITON is the first of
    # _get_priority_backends_for_gpt_oss an SM90 device supports).  gpt-oss-20b at TP 2: width 1,440 -> 1,472
    # (mxfp4_round_up_hidden_size_and_intermediate_size, 64).  convert_gpt_oss_weight_to_mxfp4_moe_kernel_format
    # (TRITON_BACKENDS): float32 biases ((2,944 + 2,880) x 4), then quantization/utils/mxfp4_utils.py _swizzle_mxfp4
    # pads the scales per row to 4 (w13 90 -> 92, w2 46 -> 48) and HopperMXScaleLayout.swizzle_data pads the rows to
    # 256 (2,944 and 2,880 -> 3,072); third_party/triton_kernels/.../hopper_value.py HopperMXValueLayout.swizzle_data
    # pads the values' rows to 16 and packed bytes to 32 (w13 2,944 x 1,440 and w2 2,880 x 736: already aligned);
    # ``del layer.w13_weight_scale`` / ``w2_weight_scale``: no unswizzled copy is kept (0.19 kept one)
    held = (2944 * 1440 + 2880 * 736) + (3072 * 92 + 3072 * 48) + (2944 + 2880) * 4
    shipped = (2 * 1440 * 2880 // 2 + 2 * 1440 * 2880 // 32 + 2880 * 1440 // 2 + 2880 * 1440 // 32
               + (2 * 1440 + 2880) * 2)
    spec = get_preset("gpt-oss-20b")
    assert mxfp4_expert_layout_bytes(spec, 2, 24, "triton-0.33") == (24 * 32 * held, 24 * 32 * shipped)
    term = VllmProfile("0.33").expert_layout(_stage(spec, 2), "mxfp4", H100)
    assert term is not None and term.bytes == 24 * 32 * (held - shipped)  # 0.14 GiB a rank (0.19: 0.55 GiB)
    assert "1440 -> 1472" in term.basis and "vLLM 0.33" in term.basis


def test_vllm_0_33_holds_gpt_oss_20b_experts_at_tp2_on_a100_in_marlins_padded_tiles() -> None:
    # vLLM 0.33 on compute capability 8.0: TRITON needs (9, 0), FlashInferExperts 9.0/10.x/12.x, CUTLASS_MXFP4_MXFP4
    # is dropped for bf16 activations (_filter_by_activation), so select_mxfp4_moe_backend lands on MARLIN;
    # mxfp4_round_up_hidden_size_and_intermediate_size rounds the width 1,440 -> 1,536 (128) and the hidden size
    # 2,880 -> 3,072 (256); utils/marlin_utils_fp4.py prepare_moe_mxfp4_layer_for_marlin repacks the values
    # (gptq_marlin_repack: size_k x size_n / 2 bytes), keeps e8m0 scales (mxfp4_marlin_process_scales) and bf16 biases
    def experts(width: int, hidden: int) -> int:
        return 2 * width * hidden // 2 + 2 * width * hidden // 32 + hidden * width // 2 + hidden * width // 32 \
            + (2 * width + hidden) * 2
    spec = get_preset("gpt-oss-20b")
    term = VllmProfile("0.33").expert_layout(_stage(spec, 2), "mxfp4", A100_80GB)
    assert term is not None and term.bytes == 24 * 32 * (experts(1536, 3072) - experts(1440, 2880))  # 0.65 GiB
    assert "1440 -> 1536" in term.basis and "2880 -> 3072" in term.basis


@pytest.mark.parametrize("log_id", ["llmdp-v0.19-gpt-oss-20b-tp2", "myoceane-a100-gpt-oss-20b-0.19"])
def test_gpt_oss_weights_vllm_0_19_logs_are_the_checkpoint_its_expert_layout_and_its_fp32_rotary_cache(
        log_id: str) -> None:
    # llm-d-planner's TP 2 H100 log: 'Model loading took 7.01 GiB' on every worker; myoceane's A100 log: 13.72 GiB
    # (vllm_logs.json).  nibble's rank weights + the expert layout + the float32 YaRN cache lands within 0.025 GiB
    # under them (the log's 0.01 GiB rounding and allocator rounding of the 24 x 6 expert tensors unread), never over.
    # TP 2 predicted 6.993 GiB while nibble counted the experts' gate/up biases whole on each rank; vLLM holds half
    # of them (w13_bias [E, 2 x intermediate / tp]): 24 x 32 x 2,880 x 2 bytes = 4.4 MB less, 6.989 GiB, 0.021 under
    # the log's 7.01 (the A100 run at TP 1, unchanged, is 0.018 under 13.72: the same unread ~0.02 GiB)
    log = BY_ID[log_id]
    spec = _spec(log)
    tp = log["tensor_parallel"]
    hardware = Hardware(get_device(log["catalog_device"]).planning_bytes, tp, log["catalog_device"])
    device = plan(spec, hardware, Workload(log["max_model_len"], 1), _options(log, "as shipped")).primary.devices[0]
    term = VllmProfile("0.19").expert_layout(_stage(spec, tp), "mxfp4", device_facts(log["catalog_device"]))
    assert term is not None
    loaded = (device.weights_bytes + term.bytes + rotary_cache_bytes(spec, "0.19")) / GIB
    print(f"{log_id}: weights {loaded:.3f} GiB predicted, {log['weights_gib']} logged "
          f"(checkpoint only: {device.weights_bytes / GIB:.3f})")
    assert log["weights_gib"] - 0.025 <= loaded <= log["weights_gib"] + 0.005


@pytest.mark.parametrize("source", SOURCES)
def test_gpt_oss_20b_at_tp2_on_h100_plans_vllms_kv_tokens_within_a_tenth_of_a_percent(source: str) -> None:
    # llm-d-planner's v0.19.0 log (vllm_logs.json "llmdp-v0.19-gpt-oss-20b-tp2"): 'GPU KV cache size: 2,591,776
    # tokens'.  vLLM's own figure for its logged 59.32 GiB: 24 layers, 12 sliding (window 128) + 12 full, two groups
    # of 12 (kv_cache_utils.py _get_kv_cache_groups_uniform_page_size), a page of 16 tokens x 4 KV heads a rank x 64
    # x 2 (K, V) x 2 bytes = 16 KiB a layer, so a block of the shared pool is 12 x 16 KiB; num_blocks = 59.32 GiB //
    # 196,608 B, and the tokens are num_blocks // 2 groups x 16.  nibble was +0.97 % above it with the checkpoint's
    # expert bytes; with vLLM's MXFP4 layout and the fp32 rotary cache it is within 0.1 %
    log = BY_ID["llmdp-v0.19-gpt-oss-20b-tp2"]
    def vllm_tokens(gib: float) -> int:
        return int(gib * GIB) // (12 * 16 * 4 * 64 * 2 * 2) // 2 * 16

    # the logged 2,591,776 within the 0.01 GiB the log rounds its memory to
    assert vllm_tokens(59.315) <= log["kv_cache_tokens"] == 2_591_776 <= vllm_tokens(59.325)
    error = _capacity_error(log["id"], source)
    print(f"{log['id']} ({source}): {error:+.3%}")
    assert abs(error) <= 0.001


def _llama_heads(head_dim: int) -> ModelSpec:
    return model_from_sizes(hidden_size=4096, num_layers=4, num_attention_heads=32, num_kv_heads=8,
                            intermediate_size=14336, vocab_size=128256, head_dim=head_dim)


@pytest.mark.parametrize("version", ["0.11", "0.19", "0.33"])
@pytest.mark.parametrize("head_dim", [1, 3, 12, 15])
def test_heads_below_16_elements_are_refused_by_every_release_naming_flex_attention(version: str,
                                                                                    head_dim: int) -> None:
    # FlashAttention, FlashInfer and Triton refuse them (v1/attention/backends/*.py), and the FlexAttention
    # fallback's PyTorch kernel needs 16 or more: the plan answered fits=true for a model no backend runs
    refusal = VllmProfile(version).device_refusal(_llama_heads(head_dim), "bf16", (9, 0))
    assert refusal is not None and f"heads of {head_dim} elements" in refusal and "FlexAttention" in refusal


@pytest.mark.parametrize(("version", "capability", "refused"), [
    ("0.11", (9, 0), True),  # 0.11's FlashAttention lists 32, 64, ..., 256
    ("0.19", (9, 0), False), ("0.33", (9, 0), False),  # a multiple of 8 from 0.19 (supports_head_size)
    ("0.19", (7, 5), True),  # FlashAttention needs 8.0 (supports_compute_capability)
    ("0.19", None, False),  # capability not known: not refused
])
def test_a_head_of_8_runs_where_flash_attention_takes_multiples_of_8(version: str, capability: tuple[int, int] | None,
                                                                     refused: bool) -> None:
    refusal = VllmProfile(version).device_refusal(_llama_heads(8), "bf16", capability)
    assert (refusal is not None) is refused, refusal


@pytest.mark.parametrize("head_dim", [16, 24, 40, 72, 128, 256, 320, 512])
def test_heads_of_16_or_more_are_not_refused(head_dim: int) -> None:
    for version in ("0.11", "0.19", "0.33"):
        assert VllmProfile(version).device_refusal(_llama_heads(head_dim), "bf16", (9, 0)) is None
