"""Per-tensor formats under a byte budget (quant_core/quantize/allocation.py, issue 22)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest

from quant_core.errors import BudgetTooSmall
from quant_core.formats import int4
from quant_core.quantize import allocation
from quant_core.quantize.allocation import TensorOption, allocate, budget_from_bits


def _options(rng: np.random.Generator, count: int) -> list[list[TensorOption]]:
    tensors = []
    for _ in range(count):
        elements = int(rng.integers(1, 64)) * 4096
        scale = float(rng.lognormal())
        tensors.append([
            TensorOption(label, int4(group).bytes_for((elements // 4096, 4096)), scale * error)
            for label, group, error in (("g128", 128, 0.010), ("g64", 64, 0.008), ("g32", 32, 0.0065))
        ] + [TensorOption("fp16", 2 * elements, scale * 1e-7)])
    return tensors


def _random_budget(rng: np.random.Generator, tensors: list[list[TensorOption]]) -> int:
    """A budget drawn between the smallest and the largest total the tensors' options can make."""
    smallest = sum(min(o.bytes for o in options) for options in tensors)
    largest = sum(max(o.bytes for o in options) for options in tensors)
    return int(rng.integers(smallest, largest))


def test_budget_from_bits_rounds_down() -> None:
    assert budget_from_bits(4.25, 1000) == 531  # 531.25 bytes -> 531, never over
    assert budget_from_bits(4.5, 4096 * 4096) == 4.5 * 4096 * 4096 / 8


@pytest.mark.parametrize("seed", range(20))
def test_the_allocation_never_exceeds_the_budget_and_is_the_exhaustive_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 5)
    budget = _random_budget(rng, tensors)
    result = allocate(tensors, budget)
    assert result.bytes <= budget
    assert result.bytes == sum(tensors[t][i].bytes for t, i in enumerate(result.choices))
    best = min(sum(tensors[t][i].error for t, i in enumerate(choice))
               for choice in itertools.product(range(4), repeat=len(tensors))
               if sum(tensors[t][i].bytes for t, i in enumerate(choice)) <= budget)
    assert result.error == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_the_greedy_search_alone_stays_within_the_budget_and_near_the_best(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocation, "PARETO_STATES", 0)  # the exact search gives up at once
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 5)
    budget = _random_budget(rng, tensors)
    result = allocate(tensors, budget)
    assert result.bytes <= budget
    best = min(sum(tensors[t][i].error for t, i in enumerate(choice))
               for choice in itertools.product(range(4), repeat=len(tensors))
               if sum(tensors[t][i].bytes for t, i in enumerate(choice)) <= budget)
    assert result.error <= best * 1.6


def test_a_budget_that_holds_everything_takes_the_best_option_of_each_tensor() -> None:
    tensors = _options(np.random.default_rng(1), 4)
    result = allocate(tensors, 10**12)
    assert [tensors[t][i].label for t, i in enumerate(result.choices)] == ["fp16"] * 4


def test_the_smallest_budget_takes_the_smallest_formats() -> None:
    tensors = _options(np.random.default_rng(2), 3)
    smallest = sum(options[0].bytes for options in tensors)
    assert allocate(tensors, smallest).choices == (0, 0, 0)
    with pytest.raises(BudgetTooSmall, match=f"{smallest - 1} bytes is below the {smallest}"):
        allocate(tensors, smallest - 1)


def test_bytes_go_where_they_lower_the_error_most() -> None:
    # two tensors of one size: the one whose error falls more per byte gets the upgrade
    cheap = [TensorOption("g128", 100, 1.0), TensorOption("g32", 120, 0.9)]
    steep = [TensorOption("g128", 100, 1.0), TensorOption("g32", 120, 0.2)]
    assert allocate([cheap, steep], 220).choices == (0, 1)
    assert allocate([steep, cheap], 220).choices == (1, 0)


# fused groups: vLLM refuses a fused layer (q/k/v, gate/up, a layer's experts) whose parts are stored in
# different schemes (compressed_tensors/utils.py should_ignore_layer, vLLM 0.19 lines 34-64;
# quant_core/checkpoint/fused_groups.py)
GROUPS = ((0, 2), (1, 3, 4))  # tensors 0 and 2 fused, 1, 3 and 4 fused; 5 alone


def _exhaustive_best(tensors: list[list[TensorOption]], budget: int,
                     allowed: Callable[[tuple[int, ...]], bool]) -> float:
    return min(sum(tensors[t][i].error for t, i in enumerate(choice))
               for choice in itertools.product(*(range(len(options)) for options in tensors))
               if sum(tensors[t][i].bytes for t, i in enumerate(choice)) <= budget and allowed(choice))


@pytest.mark.parametrize("seed", range(20))
def test_a_fused_group_takes_one_format_and_the_allocation_is_the_exhaustive_best_of_those(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 6)
    budget = _random_budget(rng, tensors)
    result = allocate(tensors, budget, GROUPS)
    for group in GROUPS:
        assert len({result.choices[t] for t in group}) == 1, result.choices
    assert result.bytes <= budget
    assert result.bytes == sum(tensors[t][i].bytes for t, i in enumerate(result.choices))
    best = _exhaustive_best(tensors, budget, lambda choice: all(len({choice[t] for t in g}) == 1 for g in GROUPS))
    assert result.error == pytest.approx(best, rel=1e-12)
    assert result.error >= allocate(tensors, budget).error  # the constraint never lowers the error


@pytest.mark.parametrize("seed", range(10))
def test_the_greedy_search_alone_keeps_fused_groups_whole_within_the_budget(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocation, "PARETO_STATES", 0)
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 6)
    budget = _random_budget(rng, tensors)
    result = allocate(tensors, budget, GROUPS)
    assert result.bytes <= budget
    assert all(len({result.choices[t] for t in group}) == 1 for group in GROUPS)
    best = _exhaustive_best(tensors, budget, lambda choice: all(len({choice[t] for t in g}) == 1 for g in GROUPS))
    assert result.error <= best * 1.6


@pytest.mark.parametrize("seed", range(10))
def test_groups_of_kinds_let_members_differ_within_a_kind_and_stay_exhaustively_best(seed: int) -> None:
    # GGUF: vLLM's GGUF loader refuses a fused layer with F16 and quantized parts (gguf.py is_layer_skipped_gguf,
    # 0.19 lines 116-150) but multiplies each shard in its own ggml type (GGUFLinearMethod.apply, lines 526-540)
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 6)
    kinds = [["quantized", "quantized", "quantized", "16-bit"] for _ in tensors]
    budget = _random_budget(rng, tensors)
    result = allocate(tensors, budget, GROUPS, kinds)
    assert all(len({kinds[t][result.choices[t]] for t in group}) == 1 for group in GROUPS)
    assert result.bytes <= budget
    best = _exhaustive_best(tensors, budget, lambda choice: all(
        len({kinds[t][choice[t]] for t in g}) == 1 for g in GROUPS))
    assert result.error == pytest.approx(best, rel=1e-12)


def test_tensors_in_no_group_are_allocated_exactly_as_without_groups() -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        tensors = _options(rng, 6)
        budget = int(rng.integers(sum(o[0].bytes for o in tensors), sum(o[-1].bytes for o in tensors)))
        assert allocate(tensors, budget, [[0], [3]]) == allocate(tensors, budget)


def test_a_group_offers_only_the_formats_every_member_can_take() -> None:
    # member 1's width takes no g128 (budget_formats): the group is never g128, even where g128 would fit best
    wide = [TensorOption("g128", 100, 1.0), TensorOption("g32", 130, 0.5), TensorOption("fp16", 400, 0.0)]
    narrow = [TensorOption("g32", 130, 0.5), TensorOption("fp16", 400, 0.0)]
    assert allocate([wide, narrow], 230).choices == (0, 0)  # apart: g128 and g32
    assert allocate([wide, narrow], 260, [[0, 1]]).choices == (1, 0)  # together: both g32
    units = allocation.allocation_units([wide, narrow], [[0, 1]])
    assert [option.label for option in units[0].options] == ["g32", "fp16"]
    with pytest.raises(BudgetTooSmall, match="a budget of 259 bytes is below the 260"):
        allocate([wide, narrow], 259, [[0, 1]])
    with pytest.raises(ValueError, match="no kind of option in common"):
        allocate([[TensorOption("g128", 100, 1.0)], narrow], 10**6, [[0, 1]])


def test_no_tensors_is_an_empty_allocation_within_any_budget() -> None:
    # every tensor of a file passed through: nothing to choose (was a ValueError from max() in _improve)
    for budget_bytes in (0, 1, 10**12):
        assert allocate([], budget_bytes) == allocation.Allocation((), 0, 0.0, budget_bytes)


def test_thousands_of_tensors_of_one_shape_are_allocated_in_seconds_not_minutes() -> None:
    # the fuzzing hunt of session 18: 4,096 tensors of 1 x 32 under bits_per_weight took 63 s of a pool worker
    # (an 800 kB upload), the exact search's frontier growing with every tensor (its work as n^2); this is that
    # allocation's shape: 12.8 s alone before its work was bounded (PARETO_WORK), 0.6 s after
    rng = np.random.default_rng(0)
    tensors = [[TensorOption("int4-g32-asym", 19, float(rng.uniform(0.008, 0.009))),
                TensorOption("int4-g32-sym", 18, float(rng.uniform(0.012, 0.014))),
                TensorOption("int8", 34, float(rng.uniform(3e-5, 4e-5))),
                TensorOption("fp16", 64, float(rng.uniform(6e-8, 7e-8)))] for _ in range(4096)]
    budget = 4096 * 32 * 9 // 16  # 4.5 bits per weight
    started = time.perf_counter()
    chosen = allocate(tensors, budget)
    assert time.perf_counter() - started < 4.0
    assert chosen.bytes <= budget
    assert allocation._pareto_choices(tensors, budget) is None  # past PARETO_WORK: the greedy result stands


def test_the_exact_search_still_runs_within_its_work_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    tensors = _options(rng, 6)
    budget = _random_budget(rng, tensors)
    assert allocation._pareto_choices(tensors, budget) is not None
    monkeypatch.setattr(allocation, "PARETO_WORK", 4)
    assert allocation._pareto_choices(tensors, budget) is None
