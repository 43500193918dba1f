"""The planner's shortcuts for speed give the same objects and answers as the plain code they replace."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import pytest

from quant_core import planner
from quant_core.catalog import get_device, get_preset
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.engines import vllm
from quant_core.inventory import inventory
from quant_core.planner import DevicePlan, Hardware, PlanOptions, Workload, plan
from quant_core.schemes import WeightScheme, gguf_scheme
from quant_core.slots import slot_constructor
from quant_core.specs import ModelSpec
from quant_core.tensorio.checkpoint_headers import header_tensors


def test_plans_built_through_their_slots_equal_the_dataclasses_own() -> None:
    result = plan(get_preset("qwen2.5-0.5b"), Hardware(get_device("h100-80gb").memory_bytes, 4), Workload(8192, 4),
                  PlanOptions(pipeline_parallel=2))
    for made in (result, *result.comparison.values()):
        plain = dataclasses.replace(made)  # through the dataclass __init__
        assert type(made) is type(plain) and made == plain and repr(made) == repr(plain)
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.kv_cache_bytes = 0  # type: ignore[misc]
    for device in result.primary.devices:
        values = [getattr(device, item.name) for item in dataclasses.fields(DevicePlan)]
        plain = DevicePlan(*values)
        assert type(device) is DevicePlan
        assert device == plain and hash(device) == hash(plain) and repr(device) == repr(plain)
        assert pickle.loads(pickle.dumps(device)) == plain
        with pytest.raises(dataclasses.FrozenInstanceError):
            device.used_bytes = 0  # type: ignore[misc]


def test_the_slot_constructor_refuses_a_class_whose_init_checks_its_fields() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        size: int

        def __post_init__(self) -> None:
            if self.size < 0:
                raise ValueError("size")

    with pytest.raises(TypeError, match="__post_init__"):
        slot_constructor(Checked)


def test_an_evaluator_key_past_the_id_table_is_its_own_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "_EVALUATOR_KEY_IDS", {("filled", index): index for index in range(4096)})
    key = ("spec", "bf16", 1)
    assert planner._evaluator_key_id(key) == key
    assert all(planner._evaluator_key_id(key) != index for index in range(4096))


def test_a_plan_is_the_same_whether_its_model_terms_were_cached_or_not() -> None:
    spec, hardware = get_preset("deepseek-v3"), Hardware(get_device("h100-80gb").memory_bytes, 8)
    first = plan(spec, hardware, Workload(8192, 4))
    planner._TERMS_BY_IDENTITY.clear()
    planner._model_terms.cache_clear()
    planner._EVALUATOR_KEY_IDS.clear()
    planner._SHARED_STAGE_TERMS.clear()
    planner._PLAN_SETUPS.clear()
    vllm._KV_POOLS.clear()
    assert plan(spec, hardware, Workload(8192, 4)) == first


def test_a_plan_set_up_by_a_plan_of_another_workload_is_the_plan_set_up_for_its_own() -> None:
    h100 = get_device("h100-80gb").memory_bytes
    deepseek = get_preset("deepseek-v3")
    # (spec, hardware, options, whether the activation differs between the workloads: vLLM's profiling of
    # Qwen2.5-VL's dummy video is sized by max_model_len, for which no evaluator is kept; the generic estimate
    # grows with the batch)
    cases = [(deepseek, Hardware(h100, 8), PlanOptions(), False),
             (deepseek, Hardware(h100, 8), PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")), False),
             (get_preset("qwen2.5-vl-7b-instruct"), Hardware(h100, 1, "h100-80gb"), PlanOptions(), True),
             (get_preset("qwen2.5-0.5b"), Hardware(h100, 4), PlanOptions(data_parallel=2), False),
             (get_preset("llama-3.1-8b"), Hardware(16 << 30, 2), PlanOptions(engine="generic"), True)]
    for spec, hardware, options, activation_varies in cases:
        first = plan(spec, hardware, Workload(8192, 4), options)  # sets up the (spec, hardware, options) objects
        for workload in (Workload(32768, 1), Workload(65536, 2)):
            planned = plan(spec, hardware, workload, options)
            assert planned.workload == workload
            assert (planned.activation.bytes != first.activation.bytes) == activation_varies
            planner._PLAN_SETUPS.clear()
            assert planned == plan(spec, hardware, workload, options)
            plan(spec, hardware, Workload(8192, 4), options)  # set up by another workload again


def _headers_scheme(spec: ModelSpec) -> WeightScheme:
    """`spec`'s checkpoint at bf16 as its safetensors headers would list it, read back as a scheme."""
    header, offset = {}, 0
    for entry in inventory(spec):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                size = 2 * entry.shape[0] * (entry.shape[1] if len(entry.shape) > 1 else 1)
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                header[name] = {"dtype": "BF16", "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
                offset += size
    text = json.dumps(header).encode()
    scheme, _ = checkpoint_scheme(spec, header_tensors(struct.pack("<Q", len(text)) + text))
    return scheme


def test_a_plan_from_a_checkpoints_headers_keeps_no_setup() -> None:
    spec = get_preset("qwen2.5-0.5b")
    options = PlanOptions(scheme=_headers_scheme(spec))
    planner._PLAN_SETUPS.clear()
    result = plan(spec, Hardware(80 << 30, 1), Workload(8192, 4), options)
    assert result.comparison["checkpoint"] is result.primary
    assert len(planner._PLAN_SETUPS) == 0  # the request's own rows: not kept for another request
    plan(spec, Hardware(80 << 30, 1), Workload(8192, 4), PlanOptions())
    assert len(planner._PLAN_SETUPS) == 1


def test_the_kv_cache_backend_memo_answers_as_the_plain_function_for_each_spec_object() -> None:
    from quant_core.engines.vllm import VllmProfile
    from quant_core.engines.vllm_refusals import kv_cache_refusal

    profile = VllmProfile("0.19")
    v2_lite = get_preset("deepseek-v2-lite")
    llama = get_preset("llama-3.1-8b")
    for _ in range(2):  # the second round is answered from the memo
        for spec in (v2_lite, llama, dataclasses.replace(llama, head_dim=96)):
            for dtype, capability, block in (("fp8", (8, 0), 16), ("bf16", (7, 0), 16), ("bf16", (9, 0), 8),
                                             ("fp8", None, 16)):
                assert profile.kv_cache_backend(spec, dtype, capability, block) == \
                    kv_cache_refusal("0.19", spec, dtype, capability, block)
    # a spec rebuilt equal but as another object is answered for itself, never from another object's entry
    phi_like = dataclasses.replace(llama, head_dim=96)
    assert profile.kv_cache_backend(phi_like, "fp8", (8, 0), 16).refusal is not None  # heads of 96: Triton, < 8.9
    assert profile.kv_cache_backend(llama, "fp8", (8, 0), 16).refusal is None  # heads of 128: FlashInfer from 8.0


@pytest.mark.parametrize(("preset", "count", "options"), [
    ("deepseek-v3", 8, PlanOptions()),  # every layer full attention: the context read as whole blocks
    ("llama-3.1-70b", 2, PlanOptions()),
    ("llama-3.1-70b", 2, PlanOptions(block_size=64, memory_utilization=0.93)),
    ("mistral-7b-v0.1", 1, PlanOptions()),  # sliding-window layers
    ("llama-3.1-70b", 2, PlanOptions(engine="generic")),  # activations grow token by token
])
def test_the_longest_context_fits_and_one_token_more_does_not(preset: str, count: int, options: PlanOptions) -> None:
    spec, hardware = get_preset(preset), Hardware(get_device("h100-80gb").planning_bytes, count, "h100-80gb")
    solved = 0
    for sequences in (1, 3, 8, 64, 256, 1024):
        longest = plan(spec, hardware, Workload(4096, sequences), options).primary
        if longest.context_limited_by != "memory" or longest.max_context_length is None:
            continue  # the model's own context, or not one token
        solved += 1
        assert plan(spec, hardware, Workload(longest.max_context_length, sequences), options).fits
        assert not plan(spec, hardware, Workload(longest.max_context_length + 1, sequences), options).fits
    assert solved >= 2


def test_the_engines_and_speeds_records_built_through_their_slots_equal_the_dataclasses_own() -> None:
    from quant_core.catalog import get_device_performance
    from quant_core.engines.base import KVCapacity
    from quant_core.speed import SpeedBound, speed_bounds

    spec = get_preset("deepseek-v3")
    result = plan(spec, Hardware(get_device("h100-80gb").planning_bytes, 8, "h100-80gb"), Workload(8192, 4))
    performance = get_device_performance("h100-80gb")
    assert performance is not None
    records: list[object] = [*speed_bounds(spec, result, performance).values()]
    records.append(vllm._new_kv_capacity(1, 2, 0.5))
    for made in records:
        assert type(made) in (SpeedBound, KVCapacity)
        plain = dataclasses.replace(made)  # type: ignore[type-var]
        assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
        assert pickle.loads(pickle.dumps(made)) == plain
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, dataclasses.fields(made)[0].name, 0)  # type: ignore[arg-type]


def test_the_mixes_a_fit_weighs_keep_no_setup() -> None:
    from quant_core.fit import fit_plan

    spec, hardware = get_preset("llama-3.1-70b"), Hardware(get_device("h100-80gb").planning_bytes, 1)
    planner._PLAN_SETUPS.clear()
    recipe = fit_plan(spec, hardware, Workload(4096, 1))
    assert recipe.fits and recipe.plan.primary.format == "mixed"  # a search over mixes, each with its own options
    assert len(planner._PLAN_SETUPS) == 0
