"""Checkpoint tensors as Ray tasks, when ``NIBBLE_RAY_ADDRESS`` names a Ray cluster.

Each tensor is one task running `quantize_tensor_bytes` (quant_core, no app
code): it reads its tensor by byte range from the source directory, which
must be at the same path on every node (the shared data root), and returns
the part's bytes and report entry; the server writes the part into its own
state directory, so nodes need no access to it.  The function is the one the
local pool runs, so the bytes are the same.  Ray schedules the tasks (one CPU
each) across the cluster; nibble keeps ``NIBBLE_JOB_TENSOR_CONCURRENCY``
tasks in flight per job.  Nodes need nibble's ``quant_core`` importable
(``pip install nibble`` in the cluster's environment).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from quant_core.checkpoint import CheckpointOptions, TensorPlan, quantize_tensor_bytes, write_part
from quant_core.errors import NibbleError


class RayTensorRunner:
    """Tensors quantized as Ray tasks on the cluster at `address` (connected on first use)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._remote: Any = None
        self._lock = asyncio.Lock()

    async def _task(self) -> Any:
        async with self._lock:
            if self._remote is None:
                import ray

                await asyncio.to_thread(ray.init, address=self.address, ignore_reinit_error=True,
                                        log_to_driver=False, logging_level="WARNING")
                self._remote = ray.remote(num_cpus=1, max_retries=3)(quantize_tensor_bytes)
            return self._remote

    async def quantize(self, directory: Path, plan: TensorPlan, options: CheckpointOptions, part: Path
                       ) -> tuple[dict[str, Any], float]:
        import ray

        remote = await self._task()
        started = time.perf_counter()
        reference = remote.remote(directory, plan, options)
        try:
            data, entry = await reference
        except asyncio.CancelledError:
            ray.cancel(reference, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, NibbleError):
                raise exc.cause from None  # the typed error the pool would have raised
            raise
        seconds = time.perf_counter() - started
        await asyncio.to_thread(write_part, part, data)
        return entry, seconds

    async def close(self) -> None:
        if self._remote is not None:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._remote = None
