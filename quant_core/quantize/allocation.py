"""Per-tensor formats under a byte budget: the choice that minimises the total measured error.

Each tensor offers a few formats, each with its exact payload bytes
(`WeightFormat.payload_bytes_for`) and its error measured by quantizing the tensor
that way (the importance-weighted relative squared error,
``Σ h_j (W − Ŵ)²_ij / Σ h_j W²_ij``: each layer's output error relative to its
output, for inputs with the importance's second moments).  `allocate` picks
one option per tensor so that the bytes sum to at most the budget and the
errors sum to as little as the search finds:

1. every tensor starts at its smallest option; if those already exceed the
   budget, `BudgetTooSmall` says by how much;
2. each tensor's options are reduced to their lower convex hull in the
   (bytes, error) plane (an option that costs more and does not lower the error, or lies
   above the line between two others, is never the best use of its bytes);
3. greedy marginal gain: repeatedly take, among every tensor's next hull
   step, the one that lowers the error most per added byte and still fits
   (on convex hulls this is the Lagrangian solution at each budget it passes
   through, the classic bit-allocation argument of Shoham & Gersho 1988);
4. then moves of one tensor, or of two at once (one down, one up: a tensor
   taken to 16-bit early may hold bytes that two others use better), are
   taken while one fits and lowers the total error, the best first;
5. the exact optimum, by dynamic programming over each prefix of tensors'
   (bytes, error) Pareto frontier, replaces that when the frontier stays
   under `PARETO_STATES` (it does when many tensors share a shape, as in real models).

Fused groups.  vLLM builds one layer from several stored tensors (q/k/v as
``qkv_proj``, gate/up as ``gate_up_proj``, a layer's routed experts as one
FusedMoE: its models' ``packed_modules_mapping``) and refuses the layer when
its parts are stored in different schemes (compressed-tensors: "Found a
different quantization schemes", ``should_ignore_layer`` of
vllm/model_executor/layers/quantization/compressed_tensors/utils.py, vLLM 0.19
lines 34-64, and ``get_moe_method`` of compressed_tensors_moe.py, lines
121-147; GGUF: "Detected some but not all shards ... are quantized",
``is_layer_skipped_gguf`` of quantization/gguf.py, lines 116-150; the list
and the mappings are quant_core/checkpoint/fused_groups.py's).  So a budget
for such an output passes `groups` (tensor indexes that must share a kind)
and `kinds` (each option's kind: what the engine tells apart).  Each group
is then ONE unit of the search above: its options are the ways its members
can all take options of one kind that every member offers (the intersection
of their kinds), each costing the sum of the members' bytes and the sum of
their errors; within a kind of several options per member (GGUF's Q4_0 and
Q8_0 both load as "quantized") only the combinations on the group's own
(bytes, error) Pareto frontier are kept, which loses no optimum.  Steps 1-5
run on the units unchanged, so the exact search is exact over the choices
vLLM loads, the budget is met as before, and a tensor in no group is its own
unit with its own options: without groups the result is the same.

Pure: numbers in, indexes out; the measuring lives with the caller.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant_core.errors import BudgetTooSmall
from quant_core.formats import WeightFormat

#: the most (bytes, error) states the exact search keeps per tensor before leaving the answer to the greedy one
PARETO_STATES = 200_000
#: the most (state, option) pairs the exact search examines in all before leaving the answer to the greedy one:
#: the frontier of n tensors of one shape grows with n, so its work grows as n^2 (4,096 tensors of 1 x 32 under a
#: budget took 63 s of a pool worker); this bound is about half a second and 32 MB of parents at most
PARETO_WORK = 4_000_000
#: pair moves are searched while (tensors × options) is at most this (the pair matrix is its square)
PAIR_MOVES = 2048

__all__ = ["BUDGET_GROUP_SIZES", "Allocation", "AllocationUnit", "BudgetTooSmall", "TensorOption", "allocate",
           "allocation_summary", "allocation_units", "budget_formats", "budget_from_bits"]

#: the int4 group sizes a budget may choose per tensor
BUDGET_GROUP_SIZES = (128, 64, 32)


@dataclass(frozen=True, slots=True)
class TensorOption:
    """One way to store a tensor: a format label, its exact payload bytes and its measured error."""

    label: str
    bytes: int
    error: float


@dataclass(frozen=True, slots=True)
class Allocation:
    """The option index chosen for each tensor, with the bytes and error they add up to."""

    choices: tuple[int, ...]
    bytes: int
    error: float
    budget_bytes: int


@dataclass(frozen=True, slots=True)
class AllocationUnit:
    """What the search chooses for at once: one tensor, or a fused group (`members`, tensor indexes).

    `options[k]` stores the members as `choices[k]` (each member's option index), its bytes and error the
    members' sums, its label the members' shared label (or their labels joined by ``+``)."""

    members: tuple[int, ...]
    options: tuple[TensorOption, ...]
    choices: tuple[tuple[int, ...], ...]


def budget_formats(scheme: WeightFormat, in_features: int, method: str) -> list[WeightFormat]:
    """The int4 formats a tensor may take under a budget, at each group size that fits its width.

    A symmetric `scheme` allows symmetric formats only; an asymmetric one
    allows both its own (zero stored as `scheme.zero`) and the symmetric one
    (no zero: 4.125, 4.25 and 4.5 bits per weight at g128, g64 and g32, between
    the asymmetric 4.156, 4.3125 and 4.625), except for `hqq`, which needs a zero.
    """
    kinds = [scheme] if scheme.symmetric or method == "hqq" else [
        scheme, WeightFormat("int4", scheme.group_size, True, "none", scheme.pad)]
    formats = []
    for kind in kinds:
        for group_size in BUDGET_GROUP_SIZES:
            if scheme.pad or in_features % group_size == 0:  # the layout kept: act-order's g_idx is in `gptq`'s
                formats.append(WeightFormat("int4", group_size, kind.symmetric, kind.zero, scheme.pad,
                                            layout=scheme.layout))
    return formats


def budget_from_bits(bits_per_weight: float, elements: int) -> int:
    """The byte budget of `bits_per_weight` over `elements` weights, rounded down: ``⌊bits × n / 8⌋``."""
    return math.floor(bits_per_weight * elements / 8)


def _hull(options: Sequence[TensorOption]) -> list[int]:
    """Indexes of the options on the lower convex hull, by increasing bytes and decreasing error."""
    order = sorted(range(len(options)), key=lambda i: (options[i].bytes, options[i].error))
    frontier: list[int] = []
    for index in order:
        if frontier and options[index].error >= options[frontier[-1]].error:
            continue  # costs at least as much and is no better
        while len(frontier) >= 2:
            a, b = options[frontier[-2]], options[frontier[-1]]
            c = options[index]
            # b lies on or above the segment a–c: drop it
            if (b.error - a.error) * (c.bytes - a.bytes) >= (c.error - a.error) * (b.bytes - a.bytes):
                frontier.pop()
            else:
                break
        frontier.append(index)
    return frontier


def allocation_units(tensors: Sequence[Sequence[TensorOption]], groups: Sequence[Sequence[int]] = (),
                     kinds: Sequence[Sequence[str]] | None = None) -> list[AllocationUnit]:
    """The units the search chooses among (module docstring, "Fused groups"), ordered by their first tensor.

    `groups`: disjoint lists of tensor indexes whose options must share a kind; `kinds[t][k]` the kind of
    tensor t's option k (default: its label, so a group shares one format).  A tensor in no group, or in a
    group of one, is a unit with exactly its own options.  Raises ValueError for overlapping groups, an index
    out of range, or a group whose members offer no kind in common.
    """
    kind_of = kinds if kinds is not None else [[option.label for option in options] for options in tensors]
    owner: dict[int, tuple[int, ...]] = {}
    for group in groups:
        members = tuple(dict.fromkeys(group))
        for member in members:
            if not 0 <= member < len(tensors) or member in owner:
                raise ValueError(f"tensor {member} is out of range or in two groups")
            owner[member] = members
    units: list[AllocationUnit] = []
    for t, options in enumerate(tensors):
        members = owner.get(t, (t,))
        if len(members) == 1:
            units.append(AllocationUnit((t,), tuple(options), tuple((k,) for k in range(len(options)))))
        elif t == min(members):
            units.append(_group_unit(tensors, kind_of, tuple(sorted(members))))
    return units


def _group_unit(tensors: Sequence[Sequence[TensorOption]], kind_of: Sequence[Sequence[str]],
                members: tuple[int, ...]) -> AllocationUnit:
    """A fused group's unit: per kind every member offers (in the first member's order of kinds), the
    (bytes, error) Pareto frontier of its members' combinations of options of that kind, by growing bytes."""
    offered = [dict.fromkeys(kind_of[t][k] for k in range(len(tensors[t]))) for t in members]
    common = [kind for kind in offered[0] if all(kind in kinds for kinds in offered[1:])]
    if not common:
        raise ValueError(f"the tensors {list(members)} of a fused group offer no kind of option in common")
    options: list[TensorOption] = []
    choices: list[tuple[int, ...]] = []
    for kind in common:
        states: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
        for t in members:
            mine = [k for k in range(len(tensors[t])) if kind_of[t][k] == kind]
            grown = sorted(((size + tensors[t][k].bytes, error + tensors[t][k].error, (*picked, k))
                            for size, error, picked in states for k in mine), key=lambda state: state[:2])
            states = []
            for state in grown:  # by growing bytes: keep a state only if it lowers the error
                if not states or state[1] < states[-1][1]:
                    states.append(state)
        for size, error, picked in states:
            labels = list(dict.fromkeys(tensors[t][k].label for t, k in zip(members, picked, strict=True)))
            options.append(TensorOption("+".join(labels), size, error))
            choices.append(picked)
    return AllocationUnit(members, tuple(options), tuple(choices))


def allocate(tensors: Sequence[Sequence[TensorOption]], budget_bytes: int, groups: Sequence[Sequence[int]] = (),
             kinds: Sequence[Sequence[str]] | None = None) -> Allocation:
    """One option per tensor: total bytes ≤ `budget_bytes`, total error minimised (module docstring); the
    members of each of `groups` take options of one kind (`allocation_units`), the group chosen as one unit.

    Ties are broken by tensor order, so the result is deterministic.
    """
    if any(not options for options in tensors):
        raise ValueError("every tensor needs at least one option")
    if not tensors:  # nothing to spend the budget on (every tensor of a file passes through): an empty allocation
        return Allocation((), 0, 0.0, budget_bytes)
    units = allocation_units(tensors, groups, kinds)
    if all(len(unit.members) == 1 for unit in units):
        return _allocate(tensors, budget_bytes)
    chosen = _allocate([unit.options for unit in units], budget_bytes)
    choices = [0] * len(tensors)
    for unit, index in zip(units, chosen.choices, strict=True):
        for member, option in zip(unit.members, unit.choices[index], strict=True):
            choices[member] = option
    return Allocation(tuple(choices), int(_total(tensors, choices, "bytes")), _total(tensors, choices, "error"),
                      budget_bytes)


def _allocate(tensors: Sequence[Sequence[TensorOption]], budget_bytes: int) -> Allocation:
    """`allocate` of independent tensors: steps 1-5 of the module docstring."""
    hulls = [_hull(options) for options in tensors]
    position = [0] * len(tensors)
    choices = [hull[0] for hull in hulls]
    used = sum(tensors[t][choices[t]].bytes for t in range(len(tensors)))
    if used > budget_bytes:
        raise BudgetTooSmall(budget_bytes, used)

    def step(t: int) -> tuple[float, int, int, int] | None:
        if position[t] + 1 >= len(hulls[t]):
            return None
        here, there = tensors[t][choices[t]], tensors[t][hulls[t][position[t] + 1]]
        added = there.bytes - here.bytes
        return (-(here.error - there.error) / max(added, 1), t, added, hulls[t][position[t] + 1])

    heap = [item for t in range(len(tensors)) if (item := step(t)) is not None]
    heapq.heapify(heap)
    while heap:
        _, t, added, index = heapq.heappop(heap)
        if used + added > budget_bytes:
            continue  # later hull steps of this tensor cost more still
        used += added
        choices[t] = index
        position[t] += 1
        following = step(t)
        if following is not None:
            heapq.heappush(heap, following)
    _improve(tensors, choices, budget_bytes)
    frontier = _pareto_choices(tensors, budget_bytes)
    if frontier is not None and _total(tensors, frontier, "error") < _total(tensors, choices, "error"):
        choices = frontier
    return Allocation(tuple(choices), int(_total(tensors, choices, "bytes")), _total(tensors, choices, "error"),
                      budget_bytes)


def allocation_summary(tensors: Sequence[Sequence[TensorOption]], allocation: Allocation, elements: int,
                       bits_per_weight: float | None) -> dict[str, Any]:
    """An allocation as a report gives it: the budget (and the bits per weight it came from, if it did), the
    bytes and bits per weight over the `elements` weights, the total error, how many tensors took each format
    and every format offered."""
    chosen = [tensors[t][index].label for t, index in enumerate(allocation.choices)]
    return {
        "budget_bytes": allocation.budget_bytes, "bits_per_weight_budget": bits_per_weight,
        "output_bytes": allocation.bytes, "elements": elements,
        "bits_per_weight": 8 * allocation.bytes / elements if elements else 0.0,
        "error": allocation.error, "formats": dict(sorted(Counter(chosen).items())),
        "allowed_formats": sorted({option.label for options in tensors for option in options}),
    }


def _total(tensors: Sequence[Sequence[TensorOption]], choices: Sequence[int], what: str) -> float:
    if what == "bytes":
        return float(sum(tensors[t][i].bytes for t, i in enumerate(choices)))
    return float(sum(tensors[t][i].error for t, i in enumerate(choices)))


def _pareto_choices(tensors: Sequence[Sequence[TensorOption]], budget_bytes: int) -> list[int] | None:
    """The exact optimum by dynamic programming over (bytes, error) Pareto frontiers, tensor by tensor.

    After each tensor only the states no other beats on both bytes and error
    (and within the budget) are kept; tensors of one shape give equal byte
    steps, so the frontier stays small for real models.  When it outgrows
    `PARETO_STATES`, or the states examined in all outgrow `PARETO_WORK`, the
    search gives up (None) and the greedy result stands.
    """
    state_bytes = np.zeros(1, dtype=np.int64)
    state_error = np.zeros(1, dtype=np.float64)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    work = 0
    for options in tensors:
        work += state_bytes.size * len(options)
        if work > PARETO_WORK:
            return None
        option_bytes = np.array([o.bytes for o in options], dtype=np.int64)
        option_error = np.array([o.error for o in options], dtype=np.float64)
        new_bytes = (state_bytes[:, None] + option_bytes[None, :]).reshape(-1)
        new_error = (state_error[:, None] + option_error[None, :]).reshape(-1)
        keep = (new_bytes <= budget_bytes) & np.isfinite(new_error)
        index = np.flatnonzero(keep)
        order = index[np.lexsort((new_error[index], new_bytes[index]))]
        errors = new_error[order]
        best_before = np.concatenate(([np.inf], np.minimum.accumulate(errors)[:-1]))
        order = order[errors < best_before]
        if order.size == 0:
            return None
        if order.size > PARETO_STATES:
            return None
        parents.append(((order // len(options)).astype(np.int32), (order % len(options)).astype(np.int32)))
        state_bytes, state_error = new_bytes[order], new_error[order]
    state = int(np.argmin(state_error))
    choices = [0] * len(tensors)
    for t in range(len(tensors) - 1, -1, -1):
        parent, option = parents[t]
        choices[t] = int(option[state])
        state = int(parent[state])
    return choices


def _improve(tensors: Sequence[Sequence[TensorOption]], choices: list[int], budget_bytes: int) -> None:
    """Single and paired moves that fit the budget and lower the total error, best first, until none does.

    Greedy steps can stop short where a large step (a tensor to 16-bit) used
    bytes that several smaller ones would have used better: a pair move takes
    one tensor down and another up in one step.  All (tensor, option) moves
    are compared at once as arrays; each accepted move strictly lowers the
    error, so the loop ends.
    """
    count = len(tensors)
    width = max(len(options) for options in tensors)
    size = np.full((count, width), np.iinfo(np.int64).max // 4, dtype=np.int64)
    error = np.full((count, width), np.inf)
    for t, options in enumerate(tensors):
        for k, option in enumerate(options):
            size[t, k] = option.bytes
            error[t, k] = option.error
    owner = np.repeat(np.arange(count), width)
    for _ in range(4 * count * width):
        rows = np.arange(count)
        added = (size - size[rows, choices][:, None]).reshape(-1)
        gain = (error[rows, choices][:, None] - error).reshape(-1)
        gain = np.where(np.isfinite(gain), gain, -np.inf)
        slack = budget_bytes - int(size[rows, choices].sum())
        single = np.where(added <= slack, gain, -np.inf)
        best_single = int(np.argmax(single))
        moves = [best_single]
        best_gain = float(single[best_single])
        if added.size <= PAIR_MOVES:
            pair_gain = gain[:, None] + gain[None, :]
            fits = (added[:, None] + added[None, :] <= slack) & (owner[:, None] != owner[None, :])
            pair_gain = np.where(fits, pair_gain, -np.inf)
            first, second = divmod(int(np.argmax(pair_gain)), added.size)
            if pair_gain[first, second] > best_gain:
                moves, best_gain = [first, second], float(pair_gain[first, second])
        if best_gain <= 0:
            return
        for move in moves:
            choices[move // width] = move % width
