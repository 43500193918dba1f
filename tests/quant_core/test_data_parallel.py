"""vLLM's data parallelism (``--data-parallel-size``) as nibble plans it.

Read in the sources of vLLM 0.11.0, 0.19.0 and 0.33.0 (PyPI wheels):

* ``run_engine_core`` (v1/engine/core.py, 0.19 and 0.33): a model without routed experts gets
  ``parallel_config.data_parallel_size = 1`` and an ``EngineCoreProc`` per rank ("Non-MoE DP ranks are completely
  independent, so treat like DP=1"): each data-parallel rank is an independent engine with its own scheduler
  (max_num_seqs) and KV pool, its workers as at data parallel 1.
* 0.11's ``run_engine_core`` starts every rank as a ``DPEngineCoreProc`` and keeps the size, so
  ``initialize_model_parallel`` (distributed/parallel_state.py) builds a data-parallel group (``dp`` ranks) and an
  expert group (``dp x tp`` ranks, for every model in 0.11), each with its NCCL communicator, before the start-up
  snapshot.
* ``FusedMoEParallelConfig.make`` (fused_moe/config.py, all three): a MoE model's experts are spread over all
  ``dp x tp`` ranks (``flatten_tp_across_dp``; under expert parallelism ``ep_size = dp x tp``), and the default
  all2all backend (``allgather_reducescatter``) gathers every data-parallel rank's tokens into each MoE layer
  (``AgRsAll2AllManager.dispatch``): planned for 0.19 and 0.33 (tests/quant_core/test_moe_data_parallel.py), refused
  on 0.11 and the generic engine (a 422 naming parallel.data), never a replica plan.
* Nothing in ``ParallelConfig`` or ``EngineArgs`` refuses data parallelism with pipeline parallelism.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from quant_core.catalog import get_device, get_preset, list_presets
from quant_core.engines.base import Stage
from quant_core.engines.vllm_releases import STARTUP_V0_11, data_parallel_groups, startup_memory
from quant_core.errors import InvalidSpec
from quant_core.planner import Hardware, PlanOptions, Workload, plan

GIB = 1 << 30
H100 = 80 * GIB
H200 = 141 * GIB


@pytest.mark.parametrize("version", ["0.19", "0.33"])
def test_a_dense_models_data_parallel_ranks_are_each_planned_as_the_same_replica_at_data_parallel_1(
        version: str) -> None:
    # Llama-3.1-70B, tensor 4 x data 2 on 8 H100s: each replica is the tensor-4 engine of 4 H100s, its 8 of the 16
    # sequences; the deployment serves twice one replica's sequences on twice its devices
    spec = get_preset("llama-3.1-70b")
    replica = plan(spec, Hardware(H100, 4, "h100-80gb"), Workload(8192, 8), PlanOptions(engine_version=version))
    both = plan(spec, Hardware(H100, 8, "h100-80gb"), Workload(8192, 16),
                PlanOptions(engine_version=version, data_parallel=2, tensor_parallel=4))
    assert (both.tensor_parallel, both.pipeline_parallel, both.data_parallel) == (4, 1, 2)
    assert both.primary.devices == replica.primary.devices  # one replica's four devices, identical
    assert both.primary.kv_capacity_tokens == replica.primary.kv_capacity_tokens  # each engine logs its own
    assert both.primary.engine_max_concurrency == replica.primary.engine_max_concurrency
    assert both.primary.max_concurrent_sequences == 2 * replica.primary.max_concurrent_sequences
    assert both.primary.used_bytes == 2 * replica.primary.used_bytes
    assert both.primary.min_devices == 2 * replica.primary.min_devices  # type: ignore[operator]
    assert both.primary.kv_cache_bytes == 2 * replica.primary.kv_cache_bytes  # the deployment's 16 sequences
    assert both.fits == replica.fits and both.workload == Workload(8192, 16)
    assert any(note.startswith("Data parallel 2: 2 replicas of tensor 4 x pipeline 1, 8 devices")
               for note in both.warnings)


def test_the_tensor_degree_defaults_to_the_devices_over_data_times_pipeline() -> None:
    spec = get_preset("llama-3.1-70b")
    result = plan(spec, Hardware(H100, 8, "h100-80gb"), Workload(8192, 4), PlanOptions(data_parallel=2))
    assert result.tensor_parallel == 4 and len(result.primary.devices) == 4


def test_the_sequences_are_shared_among_the_replicas_the_fullest_getting_the_rounded_up_share() -> None:
    # 41 sequences over 4 replicas: one replica serves 11, and every device is planned for it
    spec = get_preset("llama-3.1-8b")
    shared = plan(spec, Hardware(H100, 4, "h100-80gb"), Workload(8192, 41), PlanOptions(data_parallel=4))
    fullest = plan(spec, Hardware(H100, 1, "h100-80gb"), Workload(8192, 11))
    assert shared.primary.devices == fullest.primary.devices
    assert shared.primary.devices[0].kv_cache_bytes == fullest.primary.devices[0].kv_cache_bytes
    assert any("The 41 sequence(s) are shared among them" in note and "most a replica gets, 11" in note
               for note in shared.warnings)


def test_data_parallel_with_pipeline_stages_is_planned_as_replicas_of_the_stages() -> None:
    # vLLM refuses no data x pipeline layout: two replicas of pipeline 2 on four devices
    spec = get_preset("llama-3.1-70b")
    replica = plan(spec, Hardware(H100, 2, "h100-80gb"), Workload(8192, 2), PlanOptions(pipeline_parallel=2))
    both = plan(spec, Hardware(H100, 4, "h100-80gb"), Workload(8192, 4),
                PlanOptions(pipeline_parallel=2, data_parallel=2))
    assert both.tensor_parallel == 1 and both.primary.devices == replica.primary.devices


@pytest.mark.parametrize(("tensor", "groups"), [(1, 2), (2, 1)])
def test_vllm_0_11_charges_the_data_parallel_groups_communicators_at_start_up(tensor: int, groups: int) -> None:
    # 0.11 builds the dp group and the dp x tp expert group for every model; at tp > 1 the expert group's
    # communicator is already in the tensor-parallel figure (953 MiB), so one more group there, two at tp 1, each
    # charged that figure (no log shows one alone)
    spec = get_preset("llama-3.1-8b")
    alone = Stage(spec, tensor, 1, (0, spec.num_layers), True)
    replicated = replace(alone, data_parallel=4)
    assert len(data_parallel_groups(replicated, "0.11")) == groups
    assert startup_memory(replicated, "0.11").bytes - startup_memory(alone, "0.11").bytes \
        == groups * STARTUP_V0_11.tensor_parallel == groups * 953 * (1 << 20)
    for version in ("0.19", "0.33"):  # independent engines: data_parallel_size reset to 1, no group spans them
        assert data_parallel_groups(replicated, version) == ()
        assert startup_memory(replicated, version) == startup_memory(alone, version)
    one = plan(spec, Hardware(H100, tensor, "h100-80gb"), Workload(8192, 4), PlanOptions(engine_version="0.11"))
    four = plan(spec, Hardware(H100, 4 * tensor, "h100-80gb"), Workload(8192, 16),
                PlanOptions(engine_version="0.11", data_parallel=4))
    assert four.primary.devices[0].outside_budget_bytes - one.primary.devices[0].outside_budget_bytes \
        == groups * 953 * (1 << 20)


@pytest.mark.parametrize(("preset", "expert_parallel", "placed"), [
    # DeepSeek-V3 on 8 H200s at data 8: the expert group is data x tensor = 8 ranks; under --enable-expert-parallel
    # determine_expert_map gives each 256 / 8 = 32 whole experts, without it flatten_tp_across_dp slices each
    # expert's 2048-wide intermediate 8 ways (256 a rank)
    ("deepseek-v3", True, "whole experts, 32 of the 256 routed experts on the most loaded rank"),
    ("deepseek-v3", False, "each routed expert's 2048-wide intermediate sliced over them (256 a rank"),
    # Qwen3-235B-A22B: 128 experts over 8 ranks, 16 each; its 1536-wide experts 192 a rank
    ("qwen3-235b-a22b", True, "16 of the 128 routed experts"),
    ("qwen3-235b-a22b", False, "1536-wide intermediate sliced over them (192 a rank"),
])
@pytest.mark.parametrize(("options", "why"), [
    ({"engine_version": "0.11"}, "vLLM 0.11's FusedMoE.forward_impl"),  # its dispatch and DP chunking: not read
    ({"engine": "generic"}, "the generic engine has no MoE data-parallel placement"),
])
def test_data_parallelism_of_a_moe_model_is_refused_on_0_11_and_the_generic_engine_naming_vllms_placement(
        preset: str, expert_parallel: bool, placed: str, options: dict[str, object], why: str) -> None:
    if options.get("engine") == "generic" and expert_parallel:
        pytest.skip("the generic engine refuses runtime.expert_parallel itself")
    with pytest.raises(InvalidSpec) as caught:
        plan(get_preset(preset), Hardware(H200, 8, "h200"), Workload(8192, 8),
             PlanOptions(data_parallel=8, expert_parallel=expert_parallel, **options))  # type: ignore[arg-type]
    assert caught.value.field == "parallel.data"
    message = str(caught.value)
    assert placed in message and "data x tensor = 8 ranks" in message and "AgRsAll2AllManager" in message
    assert why in message
    # the H200's default --max-num-batched-tokens (8192: 70 GiB and more, not an A100) gathered from 8 ranks
    assert "8 x 8,192 = 65,536 rows" in message


@pytest.mark.parametrize(("count", "options", "field"), [
    (6, {"data_parallel": 4}, "hardware.count"),  # 6 devices are no multiple of 4 replicas
    (8, {"data_parallel": 2, "tensor_parallel": 2}, "parallel.tensor"),  # 2 x 2 x 1 is not 8 devices
    (4, {"data_parallel": 0}, "parallel.data"),
    (4, {"data_parallel": True}, "parallel.data"),
    (4, {"data_parallel": 2048}, "parallel.data"),
])
def test_a_layout_that_is_not_the_device_count_or_a_bad_degree_is_an_error_naming_the_field(
        count: int, options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        plan(get_preset("llama-3.1-8b"), Hardware(H100, count, "h100-80gb"), Workload(8192, 4),
             PlanOptions(**options))  # type: ignore[arg-type]
    assert caught.value.field == field


def test_data_parallel_1_plans_as_before() -> None:
    spec = get_preset("llama-3.1-8b")
    hardware, workload = Hardware(H100, 2, "h100-80gb"), Workload(8192, 4)
    assert plan(spec, hardware, workload) == plan(spec, hardware, workload, PlanOptions(data_parallel=1))


def test_a_seeded_sample_of_dense_data_parallel_plans_keeps_the_replica_and_solver_invariants() -> None:
    # dense presets x devices x data 2-4 x tensor x pipeline x engines x workloads: on 0.19, 0.33 and the generic
    # engine the devices are the replica's at its share of the sequences; everywhere a format that fits serves the
    # requested sequences, its most sequences fit and one more does not, and its fewest devices fit
    draw = random.Random(23)
    dense = [preset for preset in list_presets() if not preset.spec.is_moe]
    devices = [get_device(name) for name in ("t4", "l4", "a100-80gb", "h100-80gb", "b200", "mi300x")]
    broken: list[str] = []
    for index in range(150):
        spec = draw.choice(dense).spec
        device = draw.choice(devices)
        data, tensor, pipeline = draw.choice((2, 3, 4)), draw.choice((1, 1, 2, 4)), draw.choice((1, 1, 2))
        engine, version = draw.choice((("vllm", "0.11"), ("vllm", "0.19"), ("vllm", "0.33"), ("generic", None)))
        workload = Workload(draw.choice((512, 4096, 32768)), draw.choice((1, 3, 16, 257)))
        options = PlanOptions(engine=engine, engine_version=version, data_parallel=data, tensor_parallel=tensor,
                              pipeline_parallel=pipeline)
        hardware = Hardware(device.planning_bytes, data * tensor * pipeline, device.id, device.name)
        result = plan(spec, hardware, workload, options)
        replica = plan(spec, replace(hardware, count=tensor * pipeline),
                       Workload(workload.context_length, -(-workload.concurrent_sequences // data)),
                       replace(options, data_parallel=1))
        for key, answer in result.comparison.items():
            where = f"{spec.name} {device.id} {data}x{tensor}x{pipeline} {version} {workload} {key}"
            if version != "0.11" and answer.devices != replica.comparison[key].devices:
                broken.append(f"{where}: not the replica's devices")
            if answer.fits and answer.max_concurrent_sequences < workload.concurrent_sequences:
                broken.append(f"{where}: fits below the requested sequences")
            most = answer.max_concurrent_sequences
            if answer.refusal is None and most >= 1 and answer.sequences_limited_by == "memory" and index % 2 == 0:
                at_most = plan(spec, hardware, Workload(workload.context_length, most), options).comparison[key]
                above = plan(spec, hardware, Workload(workload.context_length, most + 1), options).comparison[key]
                if not at_most.fits or above.fits:
                    broken.append(f"{where}: most sequences {most} not the edge")
            if answer.min_devices is not None and index % 3 == 0:
                fewest = plan(spec, replace(hardware, count=answer.min_devices), workload,
                              replace(options, tensor_parallel=None, pipeline_parallel=1)).comparison[key]
                if not fewest.fits:
                    broken.append(f"{where}: does not fit on its fewest devices {answer.min_devices}")
    assert broken == []
