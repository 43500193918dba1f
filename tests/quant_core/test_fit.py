"""The largest per-tensor format mix that fits (quant_core/fit.py, issue 22): found by plan(), its recipe exact."""

from __future__ import annotations

from dataclasses import replace

import pytest

from quant_core import catalog
from quant_core.fit import fit_plan
from quant_core.formats import WeightFormat
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, plan
from quant_core.quantize.allocation import budget_formats
from quant_core.schemes import scheme_of
from quant_core.specs import ModelSpec, TensorEntry

CASES = [  # (preset, device, count, context, sequences): each lands between INT4 and 16-bit
    ("llama-3.1-70b", "h100-80gb", 1, 8192, 4),
    ("llama-3.1-70b", "h100-80gb", 2, 32768, 4),
    ("qwen2.5-7b", "rtx-4090", 1, 32768, 4),
]


def _hardware(device_id: str, count: int) -> Hardware:
    device = catalog.get_device(device_id)
    return Hardware(device.planning_bytes, count, device.id, device.name)


def _plan_mix(spec: ModelSpec, hardware: Hardware, workload: Workload,
              mix: tuple[tuple[TensorEntry, WeightFormat], ...]) -> Plan:
    """The planner's own answer for a mix, asked directly (not through fit_plan)."""
    scheme = replace(scheme_of(WeightFormat("int4", 128, False, "int4")), mix=mix)
    return plan(spec, hardware, workload, PlanOptions(scheme=scheme, format_name="fit"))


@pytest.mark.parametrize(("preset", "device", "count", "context", "sequences"), CASES)
def test_the_fit_mix_fits_its_plan_and_the_next_larger_mix_does_not(
        preset: str, device: str, count: int, context: int, sequences: int) -> None:
    spec, hardware, workload = catalog.get_preset(preset), _hardware(device, count), Workload(context, sequences)
    recipe = fit_plan(spec, hardware, workload)
    print(preset, device, count, context, sequences, recipe.budget_bytes, f"{recipe.bits_per_weight:.3f}",
          recipe.formats)
    assert recipe.fits and recipe.reason is None
    again = _plan_mix(spec, hardware, workload, recipe.mix)
    assert again.fits
    assert again.primary.weights_bytes == recipe.plan.primary.weights_bytes
    assert 0 < recipe.position < recipe.positions  # strictly between the smallest mix and all 16-bit
    assert recipe.next_step_weights_bytes is not None
    assert recipe.next_step_weights_bytes > recipe.plan.primary.weights_bytes
    assert recipe.next_mix is not None
    step_up = _plan_mix(spec, hardware, workload, recipe.next_mix)
    assert not step_up.fits  # one tensor one format up no longer fits
    assert step_up.primary.weights_bytes == recipe.next_step_weights_bytes
    assert recipe.plan.comparison["int4"].fits and not recipe.plan.comparison["bf16"].fits


def test_the_budget_is_the_mix_bytes_of_the_included_tensors_and_the_rest_stays_16_bit() -> None:
    spec, hardware = catalog.get_preset("llama-3.1-70b"), _hardware("h100-80gb", 1)
    recipe = fit_plan(spec, hardware, Workload(8192, 4))
    assert recipe.include == "model.layers.*"
    quantized = [(entry, chosen) for entry, chosen in recipe.mix if entry.role in ("attention", "mlp")
                 and len(entry.shape) == 2]
    assert recipe.budget_bytes == sum(chosen.bytes_for(entry.shape) * entry.count for entry, chosen in quantized)
    rest = sum(chosen.bytes_for(entry.shape) * entry.count for entry, chosen in recipe.mix
               if (entry, chosen) not in quantized)
    assert {chosen.label() for entry, chosen in recipe.mix if (entry, chosen) not in quantized} == {"bf16"}
    assert recipe.plan.primary.weights_bytes == recipe.budget_bytes + rest
    assert recipe.bits_per_weight == 8 * recipe.budget_bytes / recipe.elements
    assert sum(recipe.formats.values()) == 80 * 7  # every linear of the 80 layers, counted once
    assert recipe.method == "rtn"


def test_every_tensor_takes_a_format_the_quantizers_budget_allows() -> None:
    spec = catalog.get_preset("llama-3.1-70b")
    recipe = fit_plan(spec, _hardware("h100-80gb", 1), Workload(8192, 4))
    assert recipe.fits and 0 < recipe.position < recipe.positions
    allowed_labels = {"int8", "bf16"}
    for entry, chosen in recipe.mix:
        if entry.role in ("attention", "mlp"):
            allowed = {f.label() for f in budget_formats(WeightFormat("int4", 128, False, "int4"), entry.shape[1],
                                                         "rtn")} | allowed_labels
            assert chosen.label() in allowed, entry.name


def test_a_model_that_fits_at_16_bit_takes_16_bit_everywhere() -> None:
    spec = catalog.get_preset("llama-3.1-8b")
    recipe = fit_plan(spec, _hardware("h100-80gb", 1), Workload(8192, 1))
    assert recipe.fits and recipe.formats == {"bf16": 32 * 7}
    assert recipe.position == recipe.positions and recipe.next_step_weights_bytes is None
    assert recipe.plan.primary.weights_bytes == recipe.plan.comparison["bf16"].weights_bytes


def test_a_model_too_big_even_at_the_smallest_formats_answers_fits_false_with_the_reason() -> None:
    spec = catalog.get_preset("llama-3.1-70b")
    recipe = fit_plan(spec, _hardware("rtx-4090", 1), Workload(8192, 1))
    print(recipe.reason)
    assert not recipe.fits and not recipe.plan.fits
    assert recipe.reason is not None
    assert "smallest allowed format (int4-g128-sym)" in recipe.reason
    shortfall = -min(d.headroom_bytes for d in recipe.plan.primary.devices)
    assert f"needs {shortfall} bytes more" in recipe.reason
    assert recipe.formats == {"int4-g128-sym": 80 * 7} and recipe.position == 0
    assert recipe.next_step_weights_bytes is None
    # the smallest mix is the 4.125-bit symmetric int4 on every linear: below the default INT4 (4.156)
    assert recipe.plan.primary.weights_bytes < recipe.plan.comparison["int4"].weights_bytes


def test_when_only_the_memory_outside_the_budget_is_short_the_reason_says_so_not_a_negative_shortfall() -> None:
    # Llama-3.1-8B on an L4 at 0.99 (vLLM 0.19): the budget holds every mix, but its 994 MiB of CUDA graphs
    # (quant_core/engines/vllm_graphs.py) and the 523 MiB in use at start-up (engines.vllm_releases.startup_memory) do
    # not fit in the 0.22 GiB the budget leaves free
    options = PlanOptions(memory_utilization=0.99)
    recipe = fit_plan(catalog.get_preset("llama-3.1-8b"), _hardware("l4", 1), Workload(4096, 1), options)
    assert not recipe.fits and recipe.reason is not None
    device = recipe.plan.primary.devices[0]
    assert device.headroom_bytes >= 0 and device.outside_budget_bytes == (994 + 523) * 2**20
    assert f"allocates {(994 + 523) * 2**20} bytes outside its memory budget" in recipe.reason
    assert f"the {device.capacity_bytes - device.usable_bytes} bytes the budget leaves free" in recipe.reason
    assert "bytes more" not in recipe.reason


def test_a_context_the_engine_refuses_is_said_as_the_engines_refusal_of_the_plan_not_of_the_layout() -> None:
    # gpt2 at 32,768 tokens: vLLM 0.19 starts it with 1024 at most (n_positions), whatever the weights' formats
    recipe = fit_plan(catalog.get_preset("gpt2"), Hardware(catalog.get_device("h100-80gb").planning_bytes, 1),
                      Workload(32768, 1))
    assert not recipe.plan.fits
    assert recipe.reason is not None
    assert recipe.reason.startswith("the engine refuses the plan: vLLM 0.19 refuses a context "
                                    "(workload.context_length) of 32768 tokens"), recipe.reason
