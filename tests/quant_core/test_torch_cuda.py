"""PyTorch's CUDA runtime figures (quant_core/engines/torch_cuda.py) against PyTorch's own code."""

from __future__ import annotations

import pytest

from quant_core.catalog import list_devices
from quant_core.engines.torch_cuda import COMPUTE_UNITS, allocated_block_bytes, blas_workspace_bytes, compute_units

MIB = 1 << 20


@pytest.mark.parametrize(("size", "counted"), [
    # c10/cuda/CUDACachingAllocator.cpp: from kMinLargeAlloc (10 MiB) a request gets a segment rounded up to
    # kRoundLarge (2 MiB); should_split keeps a remainder of kSmallSize (1 MiB) or less in the block, whose whole
    # size alloc_found_block adds to allocated_bytes
    (8192 * 14_784 * 2, 232 * MIB),  # Qwen2.5-72B's down_proj at TP 2, 231 MiB: a 232 MiB segment, 1 MiB kept
    (3584 * 18_944 * 2, 130 * MIB),  # Qwen2.5-7B's down_proj at TP 1, 129.5 MiB: 130 MiB
    (4608 * 3584 * 2, 32 * MIB),  # Qwen2.5-7B's fused qkv_proj at TP 1, 31.5 MiB: 32 MiB
    (3584 * 3584 * 2, 3584 * 3584 * 2),  # its o_proj, 24.5 MiB: 1.5 MiB would remain, so the block is split
    (8192 * 29_568 * 2, 462 * MIB),  # a whole number of 2 MiB: nothing over
    (1152 * 3584 * 2, 1152 * 3584 * 2),  # 7.875 MiB: under 10 MiB, split off a shared 20 MiB segment
    (100, 512),  # every request rounds up to kMinBlockSize
])
def test_the_allocator_counts_a_large_weights_whole_segment_when_it_leaves_a_mib_or_less(size: int,
                                                                                          counted: int) -> None:
    assert allocated_block_bytes(size) == counted


def test_cublas_workspaces_are_32_mib_on_hopper_and_8_elsewhere_beside_cublaslts_1_mib() -> None:
    # aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize: ":4096:2:16:8" by default, 4096 KiB x 8 on
    # compute capability 9.0; parseCUDABlasLtWorkspaceSize: 1024 KiB; ROCm: 128 MiB on gfx94x and hipBLASLt's 76 MiB
    assert blas_workspace_bytes("h100-80gb") == blas_workspace_bytes("h200") == 32 * MIB + MIB
    assert blas_workspace_bytes("a100-80gb") == blas_workspace_bytes("b200") == 8 * MIB + 128 * 1024 + MIB
    assert blas_workspace_bytes("mi300x") == 128 * MIB + 76 * MIB
    assert blas_workspace_bytes("") == blas_workspace_bytes("h100-80gb")  # off the catalog: the Hopper figure


def test_every_catalog_device_has_its_streaming_multiprocessors() -> None:
    assert {device.id for device in list_devices()} == set(COMPUTE_UNITS)
    assert compute_units("h100-80gb") == 132 and compute_units("a100-40gb") == 108
    assert compute_units("") == 188  # off the catalog: the most of the NVIDIA devices, the safe side
