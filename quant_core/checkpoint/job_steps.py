"""The steps of a checkpoint job that run off the event loop, each a module-level function of picklable arguments
(a worker process imports it by name): validate and plan the source, load the plan again at each run, make one
tensor's part, lay out the result.

The job's state machine and its store live with the caller (the HTTP app's job manager); these steps know
nothing of it, and `quantize_checkpoint` (output.py) runs the same work in one process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quant_core.checkpoint.budget import attach_importance, check_budget, without_statistics
from quant_core.checkpoint.output import (
    OutputShard,
    build_report,
    engine_notes,
    output_shards,
    passthrough_entry,
    quantize_tensor_part,
    write_gguf_output,
)
from quant_core.checkpoint.plan import CheckpointOptions, TensorPlan, plan_checkpoint
from quant_core.checkpoint.source import Checkpoint, open_checkpoint
from quant_core.tensorio import read_importance, read_safetensors, write_safetensors

__all__ = ["finish_output", "inspect_source", "load_plan", "timed_tensor_part"]


def inspect_source(directory: Path, root: Path, max_tensors: int, max_elements: int, max_header_bytes: int,
                   options: CheckpointOptions, importance: Path | None = None, importance_copy: Path | None = None
                   ) -> tuple[int, int, list[dict[str, Any]], list[str]]:
    """Validate and plan a source: (tensors to quantize, their input bytes, passthrough report entries, the
    engine notes the plan already calls for: `engine_notes`, before a budget chooses formats).

    With `importance`, its vectors are checked against every tensor to quantize and the ones used are
    written to `importance_copy` (the job reads them from there on every run); with a budget, a budget
    below the smallest formats' bytes is refused here."""
    checkpoint = open_checkpoint(directory, root=root, max_tensors=max_tensors, max_elements=max_elements,
                                 max_header_bytes=max_header_bytes)
    plans = plan_checkpoint(checkpoint, options)
    if importance is not None and importance_copy is not None:
        checkpoint = without_statistics(checkpoint, importance)
        vectors = read_importance(importance, max_tensors=max_tensors, max_elements=max_elements,
                                  max_header_bytes=max_header_bytes)
        plans = attach_importance(plans, vectors)
        importance_copy.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(importance_copy, {plan.tensor.name: plan.importance for plan in plans
                                            if plan.importance is not None})
    if options.has_budget:
        check_budget(plans, options, checkpoint.config)
    quantized = [plan for plan in plans if plan.quantized]
    return (len(quantized), sum(plan.tensor.nbytes for plan in quantized),
            [passthrough_entry(plan) for plan in plans if not plan.quantized],
            engine_notes(options, plans, checkpoint.config))


def load_plan(directory: Path, root: Path, max_tensors: int, max_elements: int, max_header_bytes: int,
              options: CheckpointOptions, importance: Path | None = None, importance_copy: Path | None = None
              ) -> tuple[Checkpoint, tuple[TensorPlan, ...]]:
    """The validated checkpoint and its plan (again at each run: the source may have changed since), with the
    job's copy of its importance vectors (the statistics file itself, `importance`, is not copied through)."""
    checkpoint = open_checkpoint(directory, root=root, max_tensors=max_tensors, max_elements=max_elements,
                                 max_header_bytes=max_header_bytes)
    plans = plan_checkpoint(checkpoint, options)
    if importance is not None and importance_copy is not None:
        checkpoint = without_statistics(checkpoint, importance)
        plans = attach_importance(plans, read_safetensors(importance_copy))
    return checkpoint, plans


def timed_tensor_part(directory: Path, plan: TensorPlan, options: CheckpointOptions, part: Path
                      ) -> tuple[dict[str, Any], float]:
    """`quantize_tensor_part` and the seconds it took."""
    started = time.perf_counter()
    entry = quantize_tensor_part(directory, plan, options, part)
    return entry, time.perf_counter() - started


def finish_output(checkpoint: Checkpoint, plans: tuple[TensorPlan, ...], options: CheckpointOptions,
                  entries: dict[int, dict[str, Any]], part_dir: Path, out_dir: Path,
                  allocation: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[OutputShard]] | None:
    """Lay out the result: GGUF is written here whole (None); otherwise the report and the shards to write."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob("*.partial"):  # a write a kill interrupted
        leftover.unlink()
    report = build_report(options, plans, entries, checkpoint, allocation)
    if options.output == "gguf":
        write_gguf_output(checkpoint, plans, part_dir, report, out_dir)
        return None
    return report, output_shards(checkpoint, plans, part_dir, options)
