"""Per-tensor formats under a byte budget (quant_core/quantize/allocation.py, issue 22)."""

from __future__ import annotations

import itertools

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


def test_budget_from_bits_rounds_down() -> None:
    assert budget_from_bits(4.25, 1000) == 531  # 531.25 bytes -> 531, never over
    assert budget_from_bits(4.5, 4096 * 4096) == 4.5 * 4096 * 4096 / 8


@pytest.mark.parametrize("seed", range(20))
def test_the_allocation_never_exceeds_the_budget_and_is_the_exhaustive_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = _options(rng, 5)
    smallest = sum(min(o.bytes for o in options) for options in tensors)
    largest = sum(max(o.bytes for o in options) for options in tensors)
    budget = int(rng.integers(smallest, largest))
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
    smallest = sum(min(o.bytes for o in options) for options in tensors)
    largest = sum(max(o.bytes for o in options) for options in tensors)
    budget = int(rng.integers(smallest, largest))
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
