"""The largest per-tensor format mix that fits: a quantization recipe from a plan.

The planner has no weights, so it cannot measure errors; it chooses by bytes:
the most bits that still fit the workload's KV cache and the engine's
overheads on the hardware.  Each tensor the policy quantizes may take the
formats a quantization budget allows it (`quant_core.quantize.allocation.budget_formats`:
int4 at g128, g64 and g32, symmetric and asymmetric, at the group sizes that
divide its width; int8 per row; and 16-bit), ordered by their exact bytes
(`WeightFormat.bytes_for`).  The mixes form one sequence of growing size:
round ``r`` takes every tensor from its ``r``-th smallest format to the next,
one tensor at a time, row by row of the inventory and layer by layer within a
row (so at most one row is split between two formats).  Only formats the engine
runs on the devices are allowed: one the planner's check of a mix refuses
(`planner.mix_format_refusals`: vLLM 0.33 loads nibble's int4 and int8 from compute
capability 7.5 only) is left out of every ladder and named in
`FitRecipe.refused_formats`, so no mix is refused for a format the search could have
left out; when every quantized format is refused only 16-bit remains, and a miss
there says the refusals first.  `plan()` itself
decides whether a mix fits (the planner's own function, never a second
formula), and a binary search over the sequence finds the last mix that does;
the next one does not.

The recipe is what ``POST /v1/quantize`` takes: ``budget_bytes`` (the bytes of
the mix over the tensors `include` selects) and the `method`; the quantizer then
chooses each tensor's format by measured error within that budget, so the
weights it writes are at most the planned ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace

from quant_core.formats import WeightFormat, float_format, int4
from quant_core.globs import compile_glob
from quant_core.inventory import QuantizationPolicy
from quant_core.planner import Hardware, Plan, PlanOptions, Workload, mix_format_refusals, plan
from quant_core.quantize.allocation import budget_formats
from quant_core.quantize.int8 import INT8
from quant_core.schemes import assign, scheme_of
from quant_core.specs import ModelSpec, TensorEntry

__all__ = ["FIT_METHOD", "FitRecipe", "fit_plan"]

#: the method the recipe names: RTN needs no calibration data, and the allowed formats are its own
FIT_METHOD = "rtn"
#: the quantizer's scheme for `FIT_METHOD` without other fields: asymmetric int4 with a 4-bit zero
_QUANTIZER_SCHEME = int4(128, symmetric=False, zero="int4")


@dataclass(frozen=True, slots=True)
class FitRecipe:
    """The largest mix that fits (or the smallest, with `reason`, when none does) and its recipe.

    `plan` is the plan of `mix` (row, format); `budget_bytes` is the mix's bytes over the
    2-D tensors `include` selects (`elements` weights: `bits_per_weight` = 8 × budget / elements);
    `formats` counts those tensors by format label, `formats_by_role` by role.
    `next_mix` is the next mix of the sequence, which does not fit, and `next_step_weights_bytes`
    its weights (both None when every tensor is already 16-bit, or when no mix fits).
    `refused_formats` gives, by label, each format a budget would allow a tensor that the engine refuses on these
    devices (`planner.mix_format_refusals`), with its reason: no mix takes them.
    `assumptions` say what the recipe takes for given.
    """

    fits: bool
    reason: str | None
    plan: Plan
    mix: tuple[tuple[TensorEntry, WeightFormat], ...]
    method: str
    include: str | None
    budget_bytes: int
    elements: int
    bits_per_weight: float
    formats: dict[str, int]
    formats_by_role: dict[str, dict[str, int]]
    position: int
    positions: int
    next_step_weights_bytes: int | None
    next_mix: tuple[tuple[TensorEntry, WeightFormat], ...] | None
    refused_formats: dict[str, str]
    assumptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    entry: TensorEntry
    ladder: tuple[WeightFormat, ...]
    units: int


def _sixteen_bit(options: PlanOptions) -> WeightFormat:
    """The quantizer's 16-bit option: the plan's float format, or bf16 when that is fp32 (it writes 2 bytes)."""
    return float_format(options.float_format if options.float_format != "fp32" else "bf16")


def _candidates(entry: TensorEntry, sixteen: WeightFormat) -> list[WeightFormat]:
    """The formats a budget allows `entry`: the quantizer's int4 for its width, int8 per row, and 16-bit."""
    return [*budget_formats(_QUANTIZER_SCHEME, entry.shape[-1], FIT_METHOD), INT8, sixteen]


def _ladder(entry: TensorEntry, sixteen: WeightFormat, refused: Container[str]) -> tuple[WeightFormat, ...]:
    """The formats a budget allows `entry` less those the engine refuses (`refused` labels), by strictly growing
    bytes (of equal bytes, the first kept: a refused format never hides one of its size that runs)."""
    candidates = [candidate for candidate in _candidates(entry, sixteen) if candidate.label() not in refused]
    ordered = sorted(candidates, key=lambda f: f.bytes_for(entry.shape))
    out: list[WeightFormat] = []
    for candidate in ordered:
        if not out or candidate.bytes_for(entry.shape) > out[-1].bytes_for(entry.shape):
            out.append(candidate)
    return tuple(out)


def _rows(spec: ModelSpec, hardware: Hardware, options: PlanOptions
          ) -> tuple[list[_Row], list[tuple[TensorEntry, WeightFormat]], dict[str, str]]:
    """The rows the policy quantizes (with their ladders of the formats the engine runs on `hardware`), the rest
    with their float format, and the allowed formats the engine refuses there, by label, with the reason."""
    policy = options.policy or QuantizationPolicy(unquantized_format=options.float_format)
    marker = int4()
    sixteen = _sixteen_bit(options)
    entries = assign(spec, scheme_of(marker, policy.unquantized_format, policy.quantized_roles))
    refused = mix_format_refusals(spec, hardware, {candidate.label(): candidate for entry, chosen in entries
                                                   if chosen == marker and len(entry.shape) == 2
                                                   for candidate in _candidates(entry, sixteen)}.values(), options)
    quantized: list[_Row] = []
    rest: list[tuple[TensorEntry, WeightFormat]] = []
    for entry, chosen in entries:
        if chosen == marker and len(entry.shape) == 2:
            quantized.append(_Row(entry, _ladder(entry, sixteen, refused), max(1, len(entry.layers))))
        elif chosen == marker:  # the quantizer passes tensors that are not 2-D through as they are
            rest.append((entry, sixteen))
        else:
            rest.append((entry, chosen))
    return quantized, rest, dict(sorted(refused.items()))


def _refusals_text(refused: dict[str, str]) -> str:
    """`refused` (label -> the engine's reason) in words, one reason per kind of format (``int4``, ``int8``)."""
    kinds: dict[str, list[str]] = {}
    for label in refused:
        kinds.setdefault(label.split("-", 1)[0], []).append(label)
    return "; ".join(f"{', '.join(labels)}: {refused[labels[0]]}" for labels in kinds.values())


def _sequence_length(rows: Sequence[_Row]) -> int:
    """The number of single-tensor steps from the smallest mix to the largest."""
    return sum(row.units * (len(row.ladder) - 1) for row in rows)


def _mix_at(rows: Sequence[_Row], position: int) -> list[tuple[TensorEntry, WeightFormat]]:
    """The mix after `position` steps (module docstring): each row at its rung, one row split by layer."""
    rung = 0
    left = position
    while True:
        in_round = sum(row.units for row in rows if len(row.ladder) > rung + 1)
        if in_round == 0 or left < in_round:
            break
        left -= in_round
        rung += 1
    out: list[tuple[TensorEntry, WeightFormat]] = []
    for row in rows:
        here = min(rung, len(row.ladder) - 1)
        if len(row.ladder) <= rung + 1 or left <= 0:
            out.append((row.entry, row.ladder[here]))
            continue
        upgraded = min(left, row.units)
        left -= upgraded
        if upgraded == row.units:
            out.append((row.entry, row.ladder[here + 1]))
        else:  # only rows with layers have more than one unit
            out.append((replace(row.entry, layers=row.entry.layers[:upgraded]), row.ladder[here + 1]))
            out.append((replace(row.entry, layers=row.entry.layers[upgraded:]), row.ladder[here]))
    return out


def _include(rows: Sequence[_Row]) -> str | None:
    """The widest glob selecting the quantized rows: their names' common prefix before the layer index, and ``*``."""
    names = [row.entry.name for row in rows]
    if not names:
        return None
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.split("{", 1)[0]
    return prefix + "*" if prefix else None


def _concrete(name: str) -> str:
    return name.replace("{i}", "0").replace("{e}", "0")


def fit_plan(spec: ModelSpec, hardware: Hardware, workload: Workload | None = None,
             options: PlanOptions | None = None) -> FitRecipe:
    """The largest mix of the allowed formats whose plan fits `hardware` for `workload`, and its recipe.

    A binary search over the mixes' sequence, each judged by `plan()`: the plan only
    grows with the weights' bytes, so the last mix that fits is found in
    ``log2(steps)`` plans.  When even the smallest mix does not fit, the answer is that
    mix's plan with `fits` false and the reason.
    """
    options = options or PlanOptions()
    rows, rest, refused = _rows(spec, hardware, options)
    positions = _sequence_length(rows)

    def scheme_at(position: int) -> PlanOptions:
        mix = (*rest, *_mix_at(rows, position))
        base = scheme_of(int4(), options.float_format)
        return replace(options, scheme=replace(base, mix=tuple(mix), origin="fit"), format_name="fit")

    def planned(position: int) -> Plan:
        return plan(spec, hardware, workload, scheme_at(position))

    smallest = planned(0)
    position, result = 0, smallest
    if smallest.fits:
        low, high = 0, positions  # plan(low) fits; find the largest that does
        while low < high:
            middle = (low + high + 1) // 2
            candidate = planned(middle)
            if candidate.fits:
                low, result = middle, candidate
            else:
                high = middle - 1
        position = low
    has_next = smallest.fits and position < positions
    next_bytes = planned(position + 1).primary.weights_bytes if has_next else None
    next_mix = (*rest, *_mix_at(rows, position + 1)) if has_next else None
    mix = (*rest, *_mix_at(rows, position))
    include = _include(rows)
    glob = compile_glob(include) if include is not None else None
    budget = elements = 0
    formats: Counter[str] = Counter()
    by_role: dict[str, Counter[str]] = {}
    for entry, chosen in mix:
        if len(entry.shape) != 2 or (glob is not None and not glob.matches(_concrete(entry.name))):
            continue
        budget += chosen.bytes_for(entry.shape) * entry.count
        elements += entry.elements * entry.count
        label = chosen.label()
        formats[label] += entry.count
        by_role.setdefault(entry.role, Counter())[label] += entry.count
    reason = None
    if not smallest.fits:
        devices = smallest.primary.devices
        tightest = min(devices, key=lambda device: device.headroom_bytes)
        lowest = sorted({row.ladder[0].label() for row in rows})
        none_runs = bool(refused) and all(not rung.is_quantized for row in rows for rung in row.ladder)
        at = (f"with every tensor at 16-bit ({', '.join(lowest)})" if none_runs
              else f"with every quantized tensor at its smallest allowed format ({', '.join(lowest)})")
        reason = (f"the model does not fit even {at}: device {tightest.index} needs {-tightest.headroom_bytes} "
                  f"bytes more ({tightest.used_bytes} used of {tightest.usable_bytes} usable)")
        if tightest.headroom_bytes >= 0:  # the budget holds it: what the engine takes outside the budget does not fit
            outside = max(devices, key=lambda device: device.outside_budget_bytes)
            free = outside.capacity_bytes - outside.usable_bytes
            reason = (f"the model does not fit at any allowed format: on device {outside.index} the engine allocates "
                      f"{outside.outside_budget_bytes} bytes outside its memory budget (memory in use at start-up, "
                      f"CUDA graphs, DeepSeek Sparse Attention's late buffers), more than the {free} bytes "
                      "the budget leaves free: the plan's warnings say what to lower")
        if none_runs:  # the refusals come first: they, not the memory, leave no mix below 16-bit
            reason = (f"the engine refuses every quantized format a mix may take on these devices "
                      f"({_refusals_text(refused)}), and {reason}")
        elif refused:
            reason += f" (the engine refuses {', '.join(refused)} on these devices: no mix takes them)"
        if smallest.refusal:
            reason = f"the engine refuses the plan: {smallest.refusal}"
    assumptions: tuple[str, ...] = (
        f"Method {FIT_METHOD} (no calibration data), asymmetric int4 with 4-bit zeros: each tensor "
        "may take int4 at g128, g64 or g32 (symmetric or asymmetric, at group sizes dividing its width), int8 "
        "per row, or 16-bit; the quantizer chooses each tensor's format by measured error within budget_bytes, "
        "so the bytes it writes are at most the planned ones.",
        f"The budget covers the 2-D tensors the include pattern {include!r} selects; the others stay in their "
        f"dtype ({options.float_format} planned); upload 16-bit weights named as in the model's checkpoint.",
        "Without weights the planner chooses by bytes, not error: the most bytes that fit, tensor by tensor "
        "in inventory order; the quantizer's own mix of the same budget spreads its bytes by error.",
    )
    if refused:
        assumptions += (f"The engine refuses {', '.join(refused)} on these devices (refused_formats): no tensor "
                        "takes them.",)
    if result.pipeline_parallel > 1:
        assumptions += ("With pipeline stages, the quantizer may put more of the budget in one stage's layers "
                        "than this mix does: plan the written checkpoint's headers to check each stage.",)
    return FitRecipe(
        fits=smallest.fits, reason=reason, plan=result, mix=mix, method=FIT_METHOD, include=include,
        budget_bytes=budget, elements=elements, bits_per_weight=8 * budget / elements if elements else 0.0,
        formats=dict(sorted(formats.items())),
        formats_by_role={role: dict(sorted(counts.items())) for role, counts in sorted(by_role.items())},
        position=position, positions=positions, next_step_weights_bytes=next_bytes, next_mix=next_mix,
        refused_formats=refused, assumptions=assumptions)
