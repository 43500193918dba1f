"""An upper bound on generation speed beside the memory plan: decode is memory-bound, prefill compute-bound.

Decoding one token per sequence reads, on every device, the weights it holds
and the KV cache of every sequence it serves; no engine can do that faster
than the device's peak memory bandwidth allows.  So a decode step takes at
least ``bytes read / bandwidth`` on each device; devices of one pipeline stage
work at once (the slowest sets the pace), and a token passes the stages one
after the other.  That gives, at the planned batch of B sequences,

    tokens/s per sequence  <=  1 / sum over stages of max over ranks (bytes read / bandwidth)
    tokens/s in aggregate  <=  B / max over stages (...)   (stages overlapped on B sequences)

This is the roofline argument of Williams, Waterman and Patterson (CACM 2009)
applied as in "LLM Inference Unveiled" (Yuan et al., 2024): decode's
arithmetic intensity is ~B FLOPs per weight byte, far below a GPU's
FLOP-per-byte ridge, so bandwidth bounds it.  A mixture of experts reads only
the experts its tokens are routed to: at most ``B × experts_per_token`` of
``num_experts`` per layer, and at least that many are counted here, which
keeps the bound an upper bound.  The KV cache is read at the full context
(the workload's last token).

Prefill of one full-context prompt needs ``2 × matmul parameters × tokens``
FLOPs plus the attention's ``QKᵀ`` and ``AV`` products (causal: about half of
``L²`` per head), and its logits only for the last token; it takes at least
those FLOPs over the dense 16-bit peak of the devices of one stage (weight-only
INT4 and INT8 kernels dequantize to 16-bit for the matmuls).  Peaks come from
the datasheets in ``data/devices.json``; real engines reach some fraction of
them, so both figures are bounds, never predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from quant_core.catalog import DevicePerformance
from quant_core.planner import FormatPlan, Plan
from quant_core.slots import slot_constructor
from quant_core.specs import ModelSpec


@dataclass(frozen=True, slots=True)
class SpeedBound:
    """The speed bound of one weight format of a plan.

    `bytes_read_per_step` is the most any one device reads in one decode step
    (weights it holds, less the experts no token is routed to, plus the KV
    cache it holds), summed over pipeline stages; None figures mean the device
    has no catalogued bandwidth or throughput.
    """

    format: str
    bytes_read_per_step: int
    weight_bytes_read_per_step: int
    kv_bytes_read_per_step: int
    decode_tokens_per_second_per_sequence: float | None
    decode_tokens_per_second_aggregate: float | None
    prefill_flops: int
    prefill_seconds: float | None


_new_speed_bound = slot_constructor(SpeedBound)  # one per format of each plan the app answers


def _expert_share(spec: ModelSpec, sequences: int) -> float:
    """The fraction of routed-expert weights one decode step of `sequences` tokens reads at least."""
    if spec.num_experts <= 0 or spec.experts_per_token <= 0:
        return 1.0
    return min(1.0, sequences * spec.experts_per_token / spec.num_experts)


def _step_bytes(spec: ModelSpec, result: FormatPlan, sequences: int) -> tuple[list[int], int, int]:
    """Per pipeline stage, the most bytes one of its devices reads per decode step (its weights less the
    embedding and lm_head copies it holds but does not run); and the weights and KV cache parts on the
    slowest path."""
    expert_bytes = result.weights_by_role.get("expert", 0)
    expert_fraction = expert_bytes / result.weights_bytes if result.weights_bytes else 0.0
    unread = expert_fraction * (1.0 - _expert_share(spec, sequences))
    stages: dict[int, tuple[int, int]] = {}
    for device in result.devices:
        weights = round((device.weights_bytes - device.unread_weights_bytes) * (1.0 - unread))
        current = stages.get(device.pipeline_stage)
        if current is None or weights + device.kv_cache_bytes > sum(current):
            stages[device.pipeline_stage] = (weights, device.kv_cache_bytes)
    per_stage = [weights + kv for weights, kv in stages.values()]
    return per_stage, sum(w for w, _ in stages.values()), sum(kv for _, kv in stages.values())


def prefill_flops(spec: ModelSpec, plan_result: Plan, context_length: int) -> int:
    """FLOPs to prefill one prompt of `context_length` tokens: ``2 × (active parameters − embeddings −
    lm_head) × tokens`` for the matmuls, ``2 × vocab × hidden`` for the last token's logits, and per layer
    ``4 × heads × head_dim × tokens × span / 2`` for ``QKᵀ`` and ``AV`` (causal; `span` is the sliding
    window on windowed layers)."""
    by_role = plan_result.parameters_by_role
    matmul = (plan_result.active_parameters_per_token - by_role.get("embedding", 0)
              - by_role.get("position_embedding", 0) - by_role.get("lm_head", 0))
    logits = 2 * spec.vocab_size * spec.hidden_size
    windowed = 0
    if spec.sliding_window:
        windowed = sum(1 for layer in set(spec.sliding_layers) if 0 <= layer < spec.num_layers)
    window_span = min(context_length, spec.sliding_window or context_length)
    per_span_token = 2 * spec.num_attention_heads * spec.head_dim * context_length
    attention = per_span_token * ((spec.num_layers - windowed) * context_length + windowed * window_span)
    return 2 * matmul * context_length + logits + attention


def speed_bounds(spec: ModelSpec, plan_result: Plan, performance: DevicePerformance) -> dict[str, SpeedBound]:
    """The decode and prefill bounds of every format of `plan_result` (keyed as its `comparison`, plus the
    deployed format under its label when it is neither), on the device `performance` describes."""
    sequences = plan_result.workload.concurrent_sequences
    context = plan_result.workload.context_length
    bandwidth = performance.memory_bandwidth_bytes_per_second
    peak = performance.bf16_flops_per_second or performance.fp16_flops_per_second
    flops = prefill_flops(spec, plan_result, context)
    prefill_seconds = flops / (peak * plan_result.tensor_parallel) if peak else None
    formats = dict(plan_result.comparison)
    if all(result.format != plan_result.primary.format for result in formats.values()):
        formats[plan_result.primary.format] = plan_result.primary
    out: dict[str, SpeedBound] = {}
    for name, result in formats.items():
        per_stage, weights, kv = _step_bytes(spec, result, sequences)
        per_sequence = aggregate = None
        if bandwidth:
            per_sequence = bandwidth / sum(per_stage)
            aggregate = sequences * bandwidth / max(per_stage)
        out[name] = _new_speed_bound(result.format, sum(per_stage), weights, kv, per_sequence, aggregate, flops,
                                     prefill_seconds)
    return out


@lru_cache(maxsize=64)
def speed_basis(performance: DevicePerformance) -> str:
    """One sentence on what the bound assumes, with the peaks it used."""
    bandwidth = performance.memory_bandwidth_bytes_per_second
    peak = performance.bf16_flops_per_second or performance.fp16_flops_per_second
    kind = "bf16" if performance.bf16_flops_per_second else "fp16"
    return ("Upper bounds, not predictions: decode reads every held weight (only the experts B x top-k routing "
            "can reach) and the KV cache at the full context once per step, at the peak memory bandwidth "
            f"({(bandwidth or 0) / 1e12:.3g} TB/s per device); prefill of one full-context prompt at the dense "
            f"{kind} tensor peak ({(peak or 0) / 1e12:.4g} TFLOP/s per device, over the tensor-parallel ranks). "
            f"Source: {performance.source}")
