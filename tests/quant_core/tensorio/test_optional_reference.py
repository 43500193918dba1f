"""GPTQ and AWQ exports decoded by the original libraries, when they are installed (optional).

auto_gptq and autoawq need CUDA builds and are not installed by default, so these tests skip with
the reason; the always-run checks are in test_exports.py (AutoGPTQ's dequantization transcribed in
reference_decoders.py, AutoAWQ's unpacking through compressed-tensors' port of it).  Here nothing is
re-implemented: the unpacking is imported from the reference packages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from quant_core.quantize import dequantize
from quant_core.tensorio import export_awq, export_gptq
from tests.quant_core.tensorio.helpers import random_quantized

pytestmark = pytest.mark.optional

NAME = "model.layers.0.self_attn.q_proj.weight"
PREFIX = "model.layers.0.self_attn.q_proj"


def test_autoawq_packing_utils_decode_nibbles_awq_export(tmp_path: Path) -> None:
    packing_utils = pytest.importorskip("awq.utils.packing_utils", reason="autoawq is not installed")
    q = random_quantized(np.random.default_rng(0), 32, 256, 128, False)
    export_awq({NAME: q}, None, tmp_path / "a.safetensors")
    loaded = safetensors.torch.load_file(tmp_path / "a.safetensors")
    decoded = packing_utils.dequantize_gemm(loaded[f"{PREFIX}.qweight"], loaded[f"{PREFIX}.qzeros"],
                                            loaded[f"{PREFIX}.scales"].to(torch.float32), 4, 128)
    np.testing.assert_array_equal(decoded.T.numpy(), dequantize(q))


def test_autogptq_quantlinear_decodes_nibbles_gptq_export(tmp_path: Path) -> None:
    qlinear = pytest.importorskip("auto_gptq.nn_modules.qlinear.qlinear_cuda_old",
                                  reason="auto_gptq is not installed")
    q = random_quantized(np.random.default_rng(0), 32, 256, 128, False, zero_range=(1, 16))
    export_gptq({NAME: q}, None, tmp_path / "g.safetensors")
    loaded = safetensors.torch.load_file(tmp_path / "g.safetensors")
    layer = qlinear.QuantLinear(4, 128, 256, 32, bias=False)
    for part in ("qweight", "qzeros", "scales", "g_idx"):
        getattr(layer, part).copy_(loaded[f"{PREFIX}.{part}"])
    # The layer's output on the identity is Wᵀ: the reference's own dequantization, in fp16.
    output = layer(torch.eye(256, dtype=torch.float16)).to(torch.float32).numpy()
    np.testing.assert_array_equal(output.T, dequantize(q, np.float16).astype(np.float32))
