"""Decoders for the GPTQ export, transcribed from the reference library (not from nibble's code).

GPTQ: AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda.py`` (``QuantLinear.forward``'s
dequantization, the one every later kernel reproduces; ``qlinear_cuda_old.py`` is the same with
groups in column order, no ``g_idx``).  AutoGPTQ's own layers run in test_reference_libraries.py;
this transcription also covers what they cannot: GPTQModel's v2 checkpoints and fewer than 32 rows:

    zeros = (qzeros[:, :, None] >> wf[None, None, :]) -> int8; zeros = zeros + 1; zeros &= 0xF
    weight = (qweight[:, None, :] >> wf[None, :, None]) -> int8; weight &= 0xF;  reshape [in, out]
    w = scales[g_idx] * (weight - zeros[g_idx])            with wf = [0, 4, ..., 28]

GPTQModel's v2 checkpoints drop the ``+ 1``.  The reference computes in fp16; here the same
expression is evaluated in float32, where ``(w - z) × s`` is exact (a 5-bit integer times an
11-bit mantissa), so the comparison with nibble's float32 `dequantize` can be bit for bit.

AWQ is decoded by compressed-tensors' port of AutoAWQ's ``unpack_awq`` / ``reverse_awq_order``
(compressed_tensors/entrypoints/convert/converters/autoawq.py), a real installed library, in
test_exports.py, so no transcription is needed for it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

WF = np.arange(0, 32, 4, dtype=np.int32)


def decode_gptq(qweight: NDArray[np.int32], qzeros: NDArray[np.int32], scales: NDArray[np.float16],
                g_idx: NDArray[np.int32], checkpoint_format: str = "gptq") -> NDArray[np.float32]:
    """AutoGPTQ's dequantization of a GPTQ layer, returned as ``[out, in]`` float32."""
    zeros = (qzeros[:, :, None] >> WF[None, None, :]).astype(np.int8)
    if checkpoint_format == "gptq":
        zeros = zeros + np.int8(1)
    zeros = (zeros & 0xF).reshape(qzeros.shape[0], -1)
    weight = (qweight[:, None, :] >> WF[None, :, None]).astype(np.int8) & 0xF
    weight = weight.reshape(-1, qweight.shape[1])
    groups = g_idx.astype(np.int64)
    values = scales.astype(np.float32)[groups] * (weight.astype(np.float32) - zeros.astype(np.float32)[groups])
    return np.ascontiguousarray(values.T)
