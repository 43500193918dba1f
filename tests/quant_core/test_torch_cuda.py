"""PyTorch's CUDA runtime figures (quant_core/engines/torch_cuda.py) against PyTorch's own code."""

from __future__ import annotations

import pytest

from quant_core.catalog import UNKNOWN_DEVICE, device_facts, list_devices
from quant_core.engines.torch_cuda import allocated_block_bytes, blas_workspace_bytes, compute_units

MIB = 1 << 20

#: the catalog devices the figures below are charged on
A100_80GB = device_facts("a100-80gb")
B200 = device_facts("b200")
H100 = device_facts("h100-80gb")
H200 = device_facts("h200")
MI300X = device_facts("mi300x")


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
    # compute capability 9.0; parseCUDABlasLtWorkspaceSize: 1024 KiB; ROCm: 128 MiB on gfx94x/gfx95x and hipBLASLt's
    # 76 MiB
    assert blas_workspace_bytes(H100) == blas_workspace_bytes(H200) == 32 * MIB + MIB
    assert blas_workspace_bytes(A100_80GB) == blas_workspace_bytes(B200) == 8 * MIB + 128 * 1024 + MIB
    assert blas_workspace_bytes(MI300X) == 128 * MIB + 76 * MIB
    # the MI355X is gfx950 (ROCm's GPU specifications): the gfx95x default of 128 MiB, not the Hopper figure its
    # missing compute capability would otherwise be charged
    assert blas_workspace_bytes(device_facts("mi355x")) == 128 * MIB + 76 * MIB
    assert blas_workspace_bytes(UNKNOWN_DEVICE) == blas_workspace_bytes(H100)  # off the catalog: the Hopper figure


def test_every_catalog_device_has_its_streaming_multiprocessors() -> None:
    # the vendors' figures in data/devices.json: H100 SXM5 132 SMs, A100 108, MI300X 304 compute units
    assert all(device.compute_units and device.compute_units_source for device in list_devices())
    assert compute_units(H100) == (132, True) and compute_units(device_facts("a100-40gb")) == (108, True)
    assert compute_units(MI300X) == (304, True)


@pytest.mark.parametrize(("capability", "charged"), [
    ((9, 0), 132),  # the catalog's Hopper devices: H100 SXM5, H100 NVL, H200, GH200 (the H20 has 78)
    ((10, 0), 152),  # the GB200's 152, above the B200's and B300's 148
    ((10, 3), 152),  # the family, not the exact capability: the B300 (10.3) has 148
    ((8, 0), 142),  # the most of the 8.x devices (L40S), not the A100's 108: the family, the safe side
    ((7, 5), 80),  # V100 (7.0) above the T4's 40: a Titan RTX (7.5) has 72
    ((12, 1), 188),  # RTX PRO 6000 (12.0), above the RTX 5090's 170
    ((11, 0), 188),  # no 11.x device in the catalog: the most of its NVIDIA devices
    (None, 188),
])
def test_an_unknown_sm_count_is_the_most_of_the_catalogs_devices_of_that_major_capability(
        capability: tuple[int, int] | None, charged: int) -> None:
    assert compute_units(device_facts(None, capability)) == (charged, False)
    assert compute_units(UNKNOWN_DEVICE) == (188, False)


def test_the_cublas_workspace_follows_the_given_capability_not_the_device_id() -> None:
    # a device given in bytes with capability 9.0 is charged as an H100; with 8.0 as an A100
    assert blas_workspace_bytes(device_facts(None, (9, 0))) == blas_workspace_bytes(H100)
    assert blas_workspace_bytes(device_facts(None, (8, 0))) == blas_workspace_bytes(A100_80GB)
    assert blas_workspace_bytes(device_facts(None, (10, 0))) == blas_workspace_bytes(B200)
