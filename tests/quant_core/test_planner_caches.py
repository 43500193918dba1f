"""The planner's shortcuts for speed give the same objects and answers as the plain code they replace."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from quant_core import planner
from quant_core.catalog import get_device, get_preset
from quant_core.planner import DevicePlan, Hardware, PlanOptions, Workload, plan


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
        planner._slot_constructor(Checked)  # type: ignore[arg-type]


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
    assert plan(spec, hardware, Workload(8192, 4)) == first
