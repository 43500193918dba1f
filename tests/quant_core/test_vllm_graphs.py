"""What vLLM allocates outside ``gpu_memory_utilization`` must fit in what the budget leaves free.

vLLM 0.11 and 0.19 size the KV pool as ``total x utilization - (weights + peak activation + non-torch)`` and only
then capture their CUDA graphs (gpu_worker.compile_or_warm_up_model -> gpu_model_runner.capture_model), from the
``total - total x utilization`` the budget leaves free; vLLM 0.19 allocates DeepSeek Sparse Attention's expanded block
table and fp8 mixed-batch kernel buffers there too.  A plan whose device cannot hold them there does not fit, says why,
and its solvers agree.  vLLM 0.33 charges its graph estimate inside the budget (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS
defaults to 1 from 0.21): unchanged.  The graph figures are the public logs' (`quant_core.engines.vllm_graphs`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from quant_core.catalog import get_device, get_preset
from quant_core.engines import BatchLimits, Stage
from quant_core.engines.vllm import CUDA_GRAPH_ESTIMATE_BYTES, VllmProfile
from quant_core.engines.vllm_graphs import cuda_graph_pool, cudagraph_capture_sizes
from quant_core.formats import float_format
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from tests.quant_core.test_deepseek_v32 import spec_of as deepseek_v32
from tests.quant_core.test_dsa_workspace import H200, shipped_options

GIB = 1 << 30
MIB = 1 << 20
LOGS = json.loads((Path(__file__).parent / "data" / "vllm_logs.json").read_text())["logs"]
L4 = get_device("l4")
L4_HARDWARE = Hardware(L4.planning_bytes, 1, "l4", L4.name)  # the 22.03 GiB CUDA reports for an L4
BF16 = PlanOptions(weight_format=float_format("bf16"))


def _l4_plan(version: str, utilization: float, **changes: object) -> Plan:
    options = replace(BF16, engine_version=version, memory_utilization=utilization, **changes)  # type: ignore[arg-type]
    return plan(get_preset("llama-3.1-8b"), L4_HARDWARE, Workload(), options)


# --- the capture sizes, from each release's config code --------------------------------------------------------------

@pytest.mark.parametrize(("version", "limits", "expected"), [
    # 0.19 config/vllm.py _set_cudagraph_sizes: [1, 2, 4] + range(8, 256, 8) + range(256, 513, 16): 3 + 31 + 17
    ("0.19", BatchLimits(8192, 1024), 51),
    ("0.19", BatchLimits(2048, 256), 51),  # min(2 x 256, 512) = 512 too: an L4's defaults capture the same sizes
    ("0.19", BatchLimits(8192, 8), 5),  # up to 16: 1, 2, 4, 8, 16
    ("0.19", BatchLimits(128, 1024), 19),  # sizes above max_num_batched_tokens dropped: 1, 2, 4, 8, 16, ..., 128
    # 0.11 config/__init__.py _set_cudagraph_sizes: [1, 2, 4] + range(8, 513, 8): 3 + 64
    ("0.11", BatchLimits(8192, 1024), 67),
])
def test_capture_sizes_are_the_releases_defaults(version: str, limits: BatchLimits, expected: int) -> None:
    sizes = cudagraph_capture_sizes(version, limits)
    assert len(sizes) == expected
    assert max(sizes) == min(2 * limits.max_num_seqs, 512, limits.max_batched_tokens)


# --- the graph memory against every public figure ---------------------------------------------------------------

GRAPH_LOGS = [log for log in LOGS if log["vllm_version"] == "0.19.0" and log["cuda_graph_gib"] is not None
              and log["model"] not in (None, "sizes")]


@pytest.mark.parametrize("log_id", [log["id"] for log in GRAPH_LOGS])
def test_the_graph_charge_covers_every_logged_0_19_run_and_stays_close(log_id: str) -> None:
    # llm-d-planner's vLLM 0.19.0 H100 sweep: "... GiB for CUDAGraph memory" per worker (0.51 to 1.85 GiB)
    log = next(log for log in LOGS if log["id"] == log_id)
    spec = get_preset(log["model"])
    stages = log["pipeline_parallel"]
    stage = Stage(spec, log["tensor_parallel"], stages, (0, spec.num_layers // stages), stages == 1)
    charged = cuda_graph_pool(stage, BatchLimits(log["max_num_batched_tokens"], log["max_num_seqs"]), "0.19").bytes
    assert charged >= log["cuda_graph_gib"] * GIB - 0.005 * GIB  # never below what vLLM took (to the log's 0.01)
    # at most 0.31 GiB above it: the TP 4 runs (Llama-3.1-8B 0.67 GiB logged, 0.97 charged), whose smaller graphs a
    # rank the envelope of the TP 1 runs does not follow down
    assert charged - log["cuda_graph_gib"] * GIB <= 0.31 * GIB


def test_vllm_0_10_2s_qwen3_next_run_is_covered_at_0_11s_capture_sizes() -> None:
    # 2.37 GiB logged by each of two H200 workers (vLLM 0.10.2, 0.11's capture code, 67 sizes)
    log = next(log for log in LOGS if log["id"] == "vllm0102-h200-qwen3-next-80b-tp2")
    spec = get_preset(log["model"])
    stage = Stage(spec, 2, 1, (0, spec.num_layers), True)
    charged = cuda_graph_pool(stage, BatchLimits(8192, 1024), "0.11").bytes
    assert 2.365 * GIB <= charged <= 2.38 * GIB


def test_llama_3_1_8b_graphs_are_0_97_gib_on_0_19_and_1_16_gib_at_0_11s_67_sizes() -> None:
    # 386 MiB + 32 layers x 19 MiB = 994 MiB (0.91-0.96 GiB logged on H100); 0.11: 386 + 608 x 67 / 51 = 1,184 MiB
    spec = get_preset("llama-3.1-8b")
    stage = Stage(spec, 1, 1, (0, 32), True)
    assert cuda_graph_pool(stage, BatchLimits(2048, 256), "0.19").bytes == 994 * MIB
    assert cuda_graph_pool(stage, BatchLimits(2048, 256), "0.11").bytes == 386 * MIB + 608 * MIB * 67 // 51


def test_0_33_charges_its_estimate_inside_the_budget_and_nothing_outside() -> None:
    stage = Stage(get_preset("llama-3.1-8b"), 1, 1, (0, 32), True)
    limits = BatchLimits(2048, 256)
    assert VllmProfile("0.33").cuda_graphs(stage, limits).bytes == CUDA_GRAPH_ESTIMATE_BYTES
    assert VllmProfile("0.33").outside_budget(stage, "bf16", limits) is None
    # --enforce-eager: 0.33 profiles no graph (gpu_worker.determine_available_memory), 0.19 captures none
    assert VllmProfile("0.33").cuda_graphs(stage, limits, enforce_eager=True).bytes == 0
    assert VllmProfile("0.19").outside_budget(stage, "bf16", limits, enforce_eager=True) is None
    outside = VllmProfile("0.19").outside_budget(stage, "bf16", limits)
    assert outside is not None and outside.bytes_at(4096) == 994 * MIB


# --- the plan: Llama-3.1-8B at bf16 on one L4 ---------------------------------------------------------------------

def test_llama_3_1_8b_on_an_l4_at_0_99_does_not_fit_on_0_19_its_0_97_gib_of_graphs_exceed_the_0_22_gib_left() -> None:
    result = _l4_plan("0.19", 0.99)
    device = result.primary.devices[0]
    assert device.used_bytes <= device.usable_bytes  # the budget itself holds weights, activations and KV
    assert device.outside_budget_bytes == 994 * MIB
    assert device.capacity_bytes - device.usable_bytes < 0.23 * GIB
    assert not device.fits and not result.fits
    warning = next(w for w in result.warnings if w.startswith("Does not fit"))
    for words in ("vLLM 0.19", "0.97 GiB per device", "gpu_memory_utilization=0.99", "0.22 GiB",
                  "lower memory_utilization to 0.95", "enforce_eager"):
        assert words in warning
    # the solvers search the same predicate: no context, no sequence, no device count fits (graphs do not shrink
    # with more ranks: every rank captures all of them)
    primary = result.primary
    assert (primary.max_context_length, primary.max_concurrent_sequences, primary.min_devices) == (None, 0, None)
    # and the INT4 remark does not send the user to more devices the graphs would follow onto
    int4 = next(w for w in result.warnings if w.startswith("The model does not fit even at INT4"))
    assert "the memory budget holds it" in int4 and "tensor-parallel" not in int4
    # the KV capacity stays the one vLLM logs: graphs are not taken from the pool
    eager = _l4_plan("0.19", 0.99, enforce_eager=True)
    assert eager.primary.kv_capacity_tokens == primary.kv_capacity_tokens
    assert eager.primary.kv_pool_bytes == primary.kv_pool_bytes


def test_enforce_eager_at_0_99_fits_on_0_19_with_nothing_outside_the_budget() -> None:
    result = _l4_plan("0.19", 0.99, enforce_eager=True)
    assert result.fits and result.primary.devices[0].outside_budget_bytes == 0
    assert not any(w.startswith("Does not fit") for w in result.warnings)
    assert result.primary.min_devices == 1


@pytest.mark.parametrize("utilization", [0.9, 0.95])
def test_llama_3_1_8b_on_an_l4_at_0_9_and_0_95_fits_on_0_19(utilization: float) -> None:
    # 2.20 GiB and 1.10 GiB left outside the budget hold the 0.97 GiB of graphs
    result = _l4_plan("0.19", utilization)
    primary = result.primary
    assert result.fits and primary.devices[0].outside_budget_bytes == 994 * MIB
    assert not any(w.startswith("Does not fit") for w in result.warnings)
    assert primary.min_devices == 1 and primary.max_concurrent_sequences >= 1
    assert primary.max_context_length is not None and primary.max_context_length >= 4096
    # the answer names the graphs beside the in-budget overhead, which does not count them
    assert "0.97 GiB per device for the CUDA graphs vLLM 0.19 captures" in result.runtime_overhead.basis
    assert result.runtime_overhead.bytes == 256 * MIB  # non-torch memory only


def test_0_11_captures_more_sizes_and_does_not_fit_at_0_95() -> None:
    # 1.16 GiB of graphs at 0.11's 67 sizes against the 1.10 GiB a 0.95 budget leaves; 0.9 holds them
    assert not _l4_plan("0.11", 0.95).fits
    assert _l4_plan("0.11", 0.9).fits


def test_0_33_is_unaffected_its_graph_estimate_stays_inside_the_budget() -> None:
    # 0.33 at 0.99: the 0.39 GiB estimate and 0.25 GiB of non-torch memory charged inside, nothing outside
    result = _l4_plan("0.33", 0.99)
    primary = result.primary
    assert result.fits and primary.devices[0].outside_budget_bytes == 0
    assert primary.devices[0].overhead_bytes == 256 * MIB + CUDA_GRAPH_ESTIMATE_BYTES
    eager = _l4_plan("0.33", 0.99, enforce_eager=True)
    assert eager.primary.devices[0].overhead_bytes == 256 * MIB


# --- DeepSeek Sparse Attention: graphs, the block table and the mixed-batch kernel together --------------------------

def test_deepseek_v3_2_fp8_on_8_h200_at_0_98_does_not_fit_graphs_table_and_kernel_need_5_35_gib() -> None:
    # per rank: 386 + 61 x 19 + 709 MiB of graphs (2.20 GiB), the 0.08 GiB block table at 163,840 tokens and the
    # 3.07 GiB fp8 mixed-batch kernel (16 heads a rank) against the 2.81 GiB a 0.98 budget leaves
    tight = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options(memory_utilization=0.98))
    device = tight.primary.devices[0]
    assert device.outside_budget_bytes == 2254 * MIB + 83_886_080 + 3_294_625_792
    assert not device.fits and not tight.fits
    warning = next(w for w in tight.warnings if w.startswith("Does not fit"))
    assert "5.35 GiB" in warning and "2.81 GiB" in warning and "expanded block table" in warning
    assert "enforce_eager" not in warning  # without graphs the 3.15 GiB of buffers still do not fit
    roomy = plan(deepseek_v32(), Hardware(H200, 8), Workload(163_840, 1), shipped_options())
    assert roomy.fits and not any(w.startswith("Does not fit") for w in roomy.warnings)


def test_deepseek_v3_2s_longest_context_stops_where_the_block_table_outgrows_the_margin() -> None:
    # bf16 cache (no mixed-batch kernel), 65,536 batched tokens: the table is 65,536 x 4 bytes (256 KiB) per 64-token
    # block of context.  At 0.983 an H200 keeps 2,444.1 MiB outside the budget: 2,254 MiB of graphs and 190.1 MiB of
    # table, 760 whole blocks = 48,640 tokens; inside the budget a far longer context fits, so the longest context is
    # set by what lies outside it, and the plan agrees with it either side
    options = shipped_options(kv_cache_dtype="bf16", max_batched_tokens=65_536, memory_utilization=0.983)
    longest = plan(deepseek_v32(), Hardware(H200, 8), Workload(4096, 1), options).primary.max_context_length
    assert longest == 48_640
    at = plan(deepseek_v32(), Hardware(H200, 8), Workload(longest, 1), options)
    beyond = plan(deepseek_v32(), Hardware(H200, 8), Workload(longest + 1, 1), options)
    assert at.fits and not beyond.fits
    over = beyond.primary.devices[0]
    assert over.used_bytes <= over.usable_bytes  # inside the budget it would still fit
    assert over.outside_budget_bytes > over.capacity_bytes - over.usable_bytes
    # and the fewest devices agree with fits at the plan's own count
    assert at.primary.min_devices is not None and at.primary.min_devices <= 8
