"""What PyTorch's CUDA runtime adds to the memory an engine built on it measures, from PyTorch's own code.

vLLM sizes its KV pool from PyTorch's allocator statistics (``torch.cuda.max_memory_allocated`` for the weights,
``allocated_bytes.all.peak`` for the profiling run's peak), so two of PyTorch's behaviours show in its figures:

* ``c10/cuda/CUDACachingAllocator.cpp``: the ``allocated_bytes`` statistic counts each block the allocator hands
  out, not the bytes asked for, and a request of 10 MiB or more gets a segment of its own rounded up to 2 MiB, split
  only when more than 1 MiB would remain (`allocated_block_bytes`).
* ``aten/src/ATen/cuda/CublasHandlePool.cpp``: the cuBLAS and cuBLASLt workspaces are allocated through the caching
  allocator at the first matrix product on a stream and kept (`blas_workspace_bytes`).

The device figures (`COMPUTE_UNITS`) are the vendors' datasheets; torch reads the same number as
``multi_processor_count``.
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20

#: CUDACachingAllocator.cpp ``kMinBlockSize``: every request is rounded up to a multiple of 512 bytes (round_size)
MIN_BLOCK_BYTES = 512
#: ``kSmallSize``: requests up to 1 MiB come from the small pool; a large-pool block is split only when more than
#: this would remain (``should_split``: ``remaining > kSmallSize``)
SMALL_SIZE_BYTES = 1 * MIB
#: ``kMinLargeAlloc``: from 10 MiB a request gets a segment of its own (``get_allocation_size``), rounded up to
#: ``kRoundLarge`` = 2 MiB; smaller large requests share 20 MiB segments (``kLargeBuffer``)
MIN_LARGE_ALLOC_BYTES = 10 * MIB
ROUND_LARGE_BYTES = 2 * MIB


def allocated_block_bytes(size: int) -> int:
    """The bytes PyTorch's caching allocator counts as allocated (``allocated_bytes``, what
    ``torch.cuda.max_memory_allocated`` reports) for one tensor of `size` bytes that gets a fresh segment:
    the size rounded up to 512 bytes; from 10 MiB on, the whole segment (rounded up to 2 MiB) when it leaves
    1 MiB or less over, since ``should_split`` keeps such a remainder in the block (``alloc_found_block`` adds
    ``block->size``).  Requests under 10 MiB share 20 MiB segments and are split off them: their size, rounded
    (the rare unsplit tail of a shared segment is not counted)."""
    rounded = max(MIN_BLOCK_BYTES, -(-size // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)
    if rounded < MIN_LARGE_ALLOC_BYTES:
        return rounded
    segment = -(-rounded // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES
    return segment if segment - rounded <= SMALL_SIZE_BYTES else rounded


#: streaming multiprocessors (NVIDIA) or compute units (AMD) of each catalog device, from the vendors' datasheets
#: (H100 SXM5 and NVL, H200: 132; B200: 148; A100: 108; L40S: 142; L4: 58; A10G: 80; A10: 72; T4: 40; V100: 80;
#: RTX A6000: 84; RTX PRO 6000 Blackwell Server: 188; RTX 4090: 128; RTX 4080: 76; RTX 3090: 82; MI300X and
#: MI325X: 304 CUs)
COMPUTE_UNITS: dict[str, int] = {
    "h100-80gb": 132, "h100-nvl": 132, "h200": 132, "b200": 148, "a100-40gb": 108, "a100-80gb": 108,
    "l40s": 142, "l4": 58, "a10g": 80, "a10": 72, "t4": 40, "v100-16gb": 80, "v100-32gb": 80,
    "rtx-a6000": 84, "rtx-pro-6000": 188, "rtx-4090": 128, "rtx-4080": 76, "rtx-3090": 82,
    "mi300x": 304, "mi325x": 304,
}


def compute_units(device_id: str) -> int:
    """The device's streaming multiprocessors (`COMPUTE_UNITS`); for a device outside the catalog the most of
    the NVIDIA ones (188), the safe side for the buffers sized by it."""
    return COMPUTE_UNITS.get(device_id, max(units for device, units in COMPUTE_UNITS.items()
                                            if not device.startswith("mi")))


#: compute capability 9.0 devices of the catalog, for which cuBLAS's default workspace is 32 MiB
SM90_DEVICES = frozenset({"h100-80gb", "h100-nvl", "h200"})
#: the catalog's ROCm devices of the gfx94x family (MI300X and MI325X are gfx942)
GFX94_DEVICES = frozenset({"mi300x", "mi325x"})
#: CublasHandlePool.cpp ``parseChosenWorkspaceSize`` without ``CUBLAS_WORKSPACE_CONFIG``: ":4096:2:16:8" (2 x 4 MiB
#: + 8 x 16 KiB), 32 MiB on compute capability 9.0; on ROCm 32 MiB, 128 MiB on gfx94x/gfx95x
CUBLAS_WORKSPACE_BYTES = 4096 * KIB * 2 + 16 * KIB * 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * KIB * 8
HIPBLAS_WORKSPACE_GFX94_BYTES = 128 * MIB
#: ``parseCUDABlasLtWorkspaceSize``: cuBLASLt's own workspace, 1 MiB (``CUBLASLT_WORKSPACE_SIZE`` unset; its pool is
#: the cuBLAS one only when ``TORCH_CUBLASLT_UNIFIED_WORKSPACE`` is set); hipBLASLt's 76 MiB on ROCm
CUBLASLT_WORKSPACE_BYTES = 1 * MIB
HIPBLASLT_WORKSPACE_BYTES = 76 * MIB


def blas_workspace_bytes(device_id: str) -> int:
    """The cuBLAS and cuBLASLt workspaces PyTorch allocates through its caching allocator at the first matrix
    product on a stream and keeps (CublasHandlePool.cpp: ``getNewWorkspace`` / ``getNewCUDABlasLtWorkspace``
    call ``CUDACachingAllocator::get()->allocate``): 32 MiB + 1 MiB on compute capability 9.0 (`SM90_DEVICES`),
    8 MiB + 128 KiB + 1 MiB on other NVIDIA devices, 128 MiB + 76 MiB on the gfx94x ROCm devices; a device
    outside the catalog is charged the Hopper figure."""
    if device_id in GFX94_DEVICES:
        return HIPBLAS_WORKSPACE_GFX94_BYTES + HIPBLASLT_WORKSPACE_BYTES
    if device_id in SM90_DEVICES or device_id not in COMPUTE_UNITS:
        return CUBLAS_WORKSPACE_SM90_BYTES + CUBLASLT_WORKSPACE_BYTES
    return CUBLAS_WORKSPACE_BYTES + CUBLASLT_WORKSPACE_BYTES
