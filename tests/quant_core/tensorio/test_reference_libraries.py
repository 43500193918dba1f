"""GPTQ and AWQ exports decoded by the original libraries' own code: AutoGPTQ and AutoAWQ.

Nothing is re-implemented here: the decoding is AutoGPTQ's ``QuantLinear`` layers, on their CPU
path (``qlinear_cuda_old.py``, the reference layout every later GPTQ kernel reproduces, which takes
groups in column order; and ``qlinear_cuda.py``, which follows ``g_idx``, as act-order needs), and
AutoAWQ's ``dequantize_gemm`` (``awq/utils/packing_utils.py``).  Both packages are
pinned in pyproject.toml (``[tool.nibble] reference-decoders``) and installed by ``make test`` without
their dependencies: their wheels ask for CUDA-era torch and transformers versions and model-loading
stacks (accelerate, datasets) that decoding does not use.  So each module is loaded from its installed
file by itself, not through its package's ``__init__``, which imports those stacks; AutoGPTQ's CUDA
kernels do not load without CUDA, and its layer then dequantizes with torch on the CPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import safetensors.torch
import torch

from quant_core.formats import int4
from quant_core.quantize import dequantize
from quant_core.tensorio import export_awq, export_gptq
from tests.quant_core.tensorio.helpers import hand_built, random_quantized

NAME = "model.layers.0.self_attn.q_proj.weight"
PREFIX = "model.layers.0.self_attn.q_proj"


def reference_module(distribution: str, file: str) -> ModuleType:
    """One module file of an installed reference package, loaded by itself (module docstring)."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(file)))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed: `make test` installs the reference decoders "
                    "(pyproject.toml [tool.nibble] reference-decoders, pip install --no-deps)")
    spec = importlib.util.spec_from_file_location(f"reference_{Path(file).stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def autoawq() -> ModuleType:
    return reference_module("autoawq", "awq/utils/packing_utils.py")


@pytest.fixture(scope="module", params=["qlinear_cuda_old", "qlinear_cuda"])
def autogptq(request: pytest.FixtureRequest) -> ModuleType:
    return reference_module("auto-gptq", f"auto_gptq/nn_modules/qlinear/{request.param}.py")


@pytest.fixture(scope="module")
def autogptq_g_idx() -> ModuleType:
    return reference_module("auto-gptq", "auto_gptq/nn_modules/qlinear/qlinear_cuda.py")


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), [(32, 256, 128), (64, 512, 64), (8, 128, 32)])
def test_autoawq_dequantize_gemm_decodes_nibbles_awq_export_bit_for_bit(
        autoawq: ModuleType, tmp_path: Path, out_features: int, in_features: int, group_size: int) -> None:
    q = random_quantized(np.random.default_rng(out_features), out_features, in_features, group_size, False)
    export_awq({NAME: q}, None, tmp_path / "a.safetensors")
    loaded = safetensors.torch.load_file(tmp_path / "a.safetensors")
    decoded = autoawq.dequantize_gemm(loaded[f"{PREFIX}.qweight"], loaded[f"{PREFIX}.qzeros"],
                                      loaded[f"{PREFIX}.scales"].to(torch.float32), 4, group_size)
    np.testing.assert_array_equal(decoded.T.numpy(), dequantize(q))


def _autogptq_weight(autogptq: ModuleType, path: Path, out_features: int, in_features: int,
                     group_size: int | None) -> np.ndarray:
    """The weight AutoGPTQ's layer computes from nibble's export: its output on the identity is Wᵀ (in fp16).
    A whole-row group is AutoGPTQ's group_size -1, as the export's quantize_config says."""
    loaded = safetensors.torch.load_file(path)
    layer = autogptq.QuantLinear(4, -1 if group_size is None else group_size, in_features, out_features, bias=False)
    for part in ("qweight", "qzeros", "scales", "g_idx"):
        getattr(layer, part).copy_(loaded[f"{PREFIX}.{part}"])
    with torch.no_grad():
        output = layer(torch.eye(in_features, dtype=torch.float16))
    return output.to(torch.float32).numpy().T  # type: ignore[no-any-return]


@pytest.mark.parametrize(("group_size", "symmetric"), [(128, False), (32, False), (64, True), (None, False)])
def test_autogptq_quantlinear_decodes_nibbles_gptq_export_bit_for_bit(
        autogptq: ModuleType, tmp_path: Path, group_size: int | None, symmetric: bool) -> None:
    q = random_quantized(np.random.default_rng(group_size or 1), 32, 256, group_size, symmetric, zero_range=(1, 16))
    export_gptq({NAME: q}, None, tmp_path / "g.safetensors")
    weight = _autogptq_weight(autogptq, tmp_path / "g.safetensors", 32, 256, group_size)
    # the reference multiplies in fp16; (q − z) × s is exact in float32, so both round the same value
    np.testing.assert_array_equal(weight, dequantize(q, np.float16).astype(np.float32))


def test_autogptq_quantlinear_follows_nibbles_act_order_g_idx(autogptq_g_idx: ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g_idx = rng.permutation(np.arange(256, dtype=np.int32) // 64).astype(np.int32)  # columns in any group order
    # 32 rows: AutoGPTQ sizes qzeros as out_features // 32 * bits columns
    q = hand_built(rng.integers(0, 16, (32, 256), dtype=np.uint8), (rng.random((32, 4)) * 0.01).astype(np.float16),
                   rng.integers(1, 16, (32, 4), dtype=np.uint8), int4(64), g_idx=g_idx)
    export_gptq({NAME: q}, None, tmp_path / "g.safetensors")
    weight = _autogptq_weight(autogptq_g_idx, tmp_path / "g.safetensors", 32, 256, 64)
    np.testing.assert_array_equal(weight, dequantize(q, np.float16).astype(np.float32))
