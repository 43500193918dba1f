"""Default limits of the tensor file readers, and the element-count check they share.

The readers take their limits as keyword arguments (the service passes its
settings); these defaults are generous for one layer's tensors and small
enough that a hostile header cannot make the process allocate gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quant_core.errors import LimitExceeded, TensorFileError

DEFAULT_MAX_TENSORS = 10_000
DEFAULT_MAX_ELEMENTS = 1 << 30  # elements in one tensor (4 GiB as float32)
DEFAULT_MAX_HEADER_BYTES = 16 * 1024 * 1024  # safetensors JSON header
DEFAULT_MAX_NPY_HEADER_BYTES = 64 * 1024  # numpy's own default is 10,000
MAX_RANK = 64  # NumPy's largest number of dimensions


def checked_element_count(shape: Sequence[int], max_elements: int, where: str) -> int:
    """Product of `shape`, refused with `LimitExceeded` as soon as it passes `max_elements`
    (and with `TensorFileError` past NumPy's `MAX_RANK` dimensions).

    Computed with Python integers one dimension at a time, so a shape like
    ``[2**62, 2**62]`` is refused without overflow and without allocating.
    Zero dimensions are skipped while checking the limit: an empty tensor of
    shape ``[0, 2**62]`` is still refused, because NumPy cannot even describe
    it (its byte count overflows ``intp``).
    """
    if len(shape) > MAX_RANK:
        raise TensorFileError(f"tensor {where} has {len(shape)} dimensions; NumPy holds at most {MAX_RANK}")
    count = 1
    for dim in shape:
        if dim == 0:
            continue
        count *= dim
        if count > max_elements:
            # Report the whole product when it is cheap to compute (a hostile shape may have
            # millions of dimensions; then the partial product, already over the limit, is reported).
            nonzero = [d for d in shape if d] if len(shape) <= 64 else []
            total = math.prod(nonzero) if nonzero else count
            raise LimitExceeded(f"elements of tensor {where}", total, max_elements, field="file")
    return 0 if any(dim == 0 for dim in shape) else count
