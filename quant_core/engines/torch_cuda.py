"""What PyTorch's CUDA runtime adds to the memory an engine built on it measures, from PyTorch's own code.

vLLM sizes its KV pool from PyTorch's allocator statistics (``torch.cuda.max_memory_allocated`` for the weights,
``allocated_bytes.all.peak`` for the profiling run's peak), so two of PyTorch's behaviours show in its figures:

* ``c10/cuda/CUDACachingAllocator.cpp``: the ``allocated_bytes`` statistic counts each block the allocator hands
  out, not the bytes asked for, and a request of 10 MiB or more gets a segment of its own rounded up to 2 MiB, split
  only when more than 1 MiB would remain (`allocated_block_bytes`).
* ``aten/src/ATen/cuda/CublasHandlePool.cpp``: the cuBLAS and cuBLASLt workspaces are allocated through the caching
  allocator at the first matrix product on a stream and kept (`blas_workspace_bytes`).

The device figures are the catalog's (`catalog.DeviceFacts`): the streaming multiprocessors come from the vendors'
figures in data/devices.json (torch reads the same number as ``multi_processor_count``), and the choices PyTorch
makes by device are made from the compute capability, as its code tests it.
"""

from __future__ import annotations

from quant_core.catalog import DeviceFacts, most_compute_units

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


def compute_units(device: DeviceFacts) -> tuple[int, bool]:
    """The device's streaming multiprocessors (`DeviceFacts.compute_units`, the catalog's figure), and True; for a
    device whose count is not known (given in bytes) `catalog.most_compute_units` of its compute capability, the
    safe side for the buffers sized by it, and False."""
    if device.compute_units is not None:
        return device.compute_units, True
    return most_compute_units(device.compute_capability), False


#: CublasHandlePool.cpp ``parseChosenWorkspaceSize`` takes the larger cuBLAS workspace on compute capability 9.0
#: exactly (its ``sm90`` test of the device properties' major and minor)
SM90_CAPABILITY = (9, 0)
#: the catalog's ROCm devices of the gfx94x and gfx95x families (MI300X and MI325X are gfx942, MI355X gfx950: ROCm's
#: GPU specifications); ROCm devices have no CUDA compute capability, so they are named
GFX94_DEVICES = frozenset({"mi300x", "mi325x", "mi355x"})
#: CublasHandlePool.cpp ``parseChosenWorkspaceSize`` without ``CUBLAS_WORKSPACE_CONFIG``: ":4096:2:16:8" (2 x 4 MiB
#: + 8 x 16 KiB), 32 MiB on compute capability 9.0; on ROCm 32 MiB, 128 MiB on gfx94x/gfx95x
CUBLAS_WORKSPACE_BYTES = 4096 * KIB * 2 + 16 * KIB * 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * KIB * 8
HIPBLAS_WORKSPACE_GFX94_BYTES = 128 * MIB
#: ``parseCUDABlasLtWorkspaceSize``: cuBLASLt's own workspace, 1 MiB (``CUBLASLT_WORKSPACE_SIZE`` unset; its pool is
#: the cuBLAS one only when ``TORCH_CUBLASLT_UNIFIED_WORKSPACE`` is set); hipBLASLt's 76 MiB on ROCm
CUBLASLT_WORKSPACE_BYTES = 1 * MIB
HIPBLASLT_WORKSPACE_BYTES = 76 * MIB


def blas_workspace_bytes(device: DeviceFacts) -> int:
    """The cuBLAS and cuBLASLt workspaces PyTorch allocates through its caching allocator at the first matrix
    product on a stream and keeps (CublasHandlePool.cpp: ``getNewWorkspace`` / ``getNewCUDABlasLtWorkspace``
    call ``CUDACachingAllocator::get()->allocate``): 32 MiB + 1 MiB on compute capability 9.0 (`SM90_CAPABILITY`),
    8 MiB + 128 KiB + 1 MiB on other NVIDIA devices, 128 MiB + 76 MiB on the gfx94x/gfx95x ROCm devices; a device of
    unknown capability (given in bytes without one) is charged the Hopper figure, the larger of NVIDIA's."""
    if device.device_id in GFX94_DEVICES:
        return HIPBLAS_WORKSPACE_GFX94_BYTES + HIPBLASLT_WORKSPACE_BYTES
    if device.compute_capability in (SM90_CAPABILITY, None):
        return CUBLAS_WORKSPACE_SM90_BYTES + CUBLASLT_WORKSPACE_BYTES
    return CUBLAS_WORKSPACE_BYTES + CUBLASLT_WORKSPACE_BYTES
