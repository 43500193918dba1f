"""Median time of one full `plan()` (both formats, all three solvers): 0.5B dense vs 671B MoE.

Targets (issue 2): DeepSeek-V3 within 2x of Qwen2.5-0.5B (the inventory counts repeated
tensors instead of listing them) and at most 200 µs.  Both models are planned on the same
hardware (one 8 x H100 80GB node, 8k context, 4 sequences), in alternating rounds so that
the shared machine's noise falls on both alike.  The first (cold) call builds and caches the
per-model terms (inventory, bytes per tensor, stage layouts); the medians are over warm
calls.  Each timed call gets new `Hardware` and `PlanOptions` objects (equal to the last), so
the plan's setup, which `plan()` keeps per (model, hardware, options) objects for requests that
change only the workload, is found again every time: the targets are judged on what a request
with options of its own pays.  The same plans with the objects reused (the setup kept) are
printed after them, for the record.

Issue 18 adds the formats checkpoints ship in: the same targets hold for DeepSeek-V3 planned as
shipped (fp8 128x128 blocks) and as a GGUF Q4_K_M file (per-layer types), and a plan from the
headers of a 100-shard checkpoint (Llama-3.1-405B's tensors in 100 safetensors headers, parsed,
matched to the model's modules and planned) answers in under 50 ms.

Run: `.venv/bin/python benchmarks/plan_bench.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
from dataclasses import replace

from quant_core.catalog import get_device, get_preset, get_preset_info
from quant_core.checkpoint_rows import checkpoint_scheme
from quant_core.inventory import inventory
from quant_core.planner import Hardware, PlanOptions, Workload, plan
from quant_core.schemes import gguf_scheme, scheme_from_quantization_config
from quant_core.tensorio.checkpoint_headers import header_tensors

TARGET_MICROSECONDS = 200.0
TARGET_RATIO = 2.0
TARGET_HEADER_PLAN_MS = 50.0
SHARDS = 100
MODELS = ("qwen2.5-0.5b", "deepseek-v3")


def _shard_headers(model: str, shards: int) -> list[bytes]:
    """Every tensor of `model` at bf16 in `shards` safetensors headers (8-byte length + JSON), as a
    checkpoint's files start."""
    names = []
    for entry in inventory(get_preset(model)):
        for layer in entry.layers or (-1,):
            for expert in range(entry.per_layer):
                name = entry.name.replace("{i}", str(layer)).replace("{e}", str(expert))
                names.append((name, list(entry.shape)))
    headers = []
    for shard in range(shards):
        offset, header = 0, {}
        for name, shape in names[shard::shards]:
            size = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header).encode()
        headers.append(struct.pack("<Q", len(text)) + text)
    return headers


def _header_plan_ms(model: str, hardware: Hardware, workload: Workload, rounds: int) -> tuple[float, int]:
    headers = _shard_headers(model, SHARDS)
    spec = get_preset(model)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        tensors = [tensor for prefix in headers for tensor in header_tensors(prefix)]
        scheme, _ = checkpoint_scheme(spec, tensors)
        plan(spec, hardware, workload, PlanOptions(scheme=scheme))
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), len(tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    hardware = Hardware(get_device("h100-80gb").memory_bytes, 8)
    workload = Workload(context_length=8192, concurrent_sequences=4)
    specs = {name: get_preset(name) for name in MODELS}
    cold = {}
    for name, spec in specs.items():
        start = time.perf_counter()
        plan(spec, hardware, workload)
        cold[name] = (time.perf_counter() - start) * 1e6
    samples: dict[str, list[float]] = {name: [] for name in MODELS}
    default = PlanOptions()
    for _ in range(args.rounds):
        for name, spec in specs.items():
            fresh_hardware, fresh_options = replace(hardware), replace(default)
            start = time.perf_counter()
            plan(spec, fresh_hardware, workload, fresh_options)
            samples[name].append((time.perf_counter() - start) * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name in MODELS:
        values = sorted(samples[name])
        print(f"plan() {name:13s} on 8 x h100-80gb: median {medians[name]:.1f} us, "
              f"p10 {values[len(values) // 10]:.1f} us, p90 {values[9 * len(values) // 10]:.1f} us "
              f"(cold {cold[name]:.0f} us)")
    ratio = medians["deepseek-v3"] / medians["qwen2.5-0.5b"]
    print(f"ratio deepseek-v3 / qwen2.5-0.5b: {ratio:.2f} (target <= {TARGET_RATIO}) "
          f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    worst = max(medians.values())
    print(f"slowest median: {worst:.1f} us (target <= {TARGET_MICROSECONDS:.0f} us) "
          f"{'PASS' if worst <= TARGET_MICROSECONDS else 'FAIL'}")

    shipped = scheme_from_quantization_config(get_preset_info("deepseek-v3").quantization_config or {})
    deepseek = specs["deepseek-v3"]
    for label, options in (("as shipped (fp8 blocks)", PlanOptions(scheme=shipped)),
                           ("gguf-q4_k_m", PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))):
        plan(deepseek, hardware, workload, options)
        values = []
        for _ in range(args.rounds // 5):
            fresh_hardware, fresh_options = replace(hardware), replace(options)
            start = time.perf_counter()
            plan(deepseek, fresh_hardware, workload, fresh_options)
            values.append((time.perf_counter() - start) * 1e6)
        median = statistics.median(values)
        ratio = median / medians["qwen2.5-0.5b"]
        ok = median <= TARGET_MICROSECONDS and ratio <= TARGET_RATIO
        print(f"plan() deepseek-v3 {label}: median {median:.1f} us, {ratio:.2f} x qwen2.5-0.5b "
              f"(targets <= {TARGET_MICROSECONDS:.0f} us, <= {TARGET_RATIO}) {'PASS' if ok else 'FAIL'}")

    kept = {}
    for label, options in (("qwen2.5-0.5b", default), ("deepseek-v3", default),
                           ("deepseek-v3 gguf-q4_k_m", PlanOptions(scheme=gguf_scheme("gguf-q4_k_m")))):
        spec = specs[label.split()[0]]
        plan(spec, hardware, workload, options)
        values = []
        for _ in range(args.rounds // 5):
            start = time.perf_counter()
            plan(spec, hardware, workload, options)
            values.append((time.perf_counter() - start) * 1e6)
        kept[label] = statistics.median(values)
    print("for the record, the same objects each call (the setup kept): "
          + ", ".join(f"{label} {median:.1f} us" for label, median in kept.items()))

    header_ms, tensor_count = _header_plan_ms("llama-3.1-405b", hardware, workload, 20)
    print(f"plan from {SHARDS} safetensors headers (llama-3.1-405b, {tensor_count} tensors): median "
          f"{header_ms:.1f} ms (target < {TARGET_HEADER_PLAN_MS:.0f} ms) "
          f"{'PASS' if header_ms < TARGET_HEADER_PLAN_MS else 'FAIL'}")


if __name__ == "__main__":
    main()
