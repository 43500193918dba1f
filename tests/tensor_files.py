"""Tensor files as bytes, for tests that upload or download them."""

from __future__ import annotations

import io
import tempfile

import numpy as np

from quant_core.tensorio import read_safetensors


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_safetensors(content: bytes) -> dict[str, np.ndarray]:
    """Read a downloaded .safetensors (BF16 included, which safetensors.numpy cannot) into arrays."""
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(content)
        handle.flush()
        tensors = read_safetensors(handle.name)
        return {name: np.array(tensors[name]) for name in tensors}
