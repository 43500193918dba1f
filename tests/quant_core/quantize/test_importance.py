"""Importance statistics (llama.cpp's imatrix: one mean-of-x² per input column) as an input to the methods.

On the seeded 4096 × 4096 Gaussian of issue 3 (test_quality_regression.py), with a
seeded log-normal importance per column: `rtn`, `clip`, `refit` and `hqq` given
the statistics beat their unweighted selves on the importance-weighted error,
and uniform statistics give exactly the unweighted result (issue 22).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant_core.errors import ImportanceMismatch
from quant_core.formats import WeightFormat, int4
from quant_core.quantize import dequantize, quantize
from quant_core.quantize.metrics import weighted_relative_error

CASES = [("rtn", int4(128)), ("rtn", int4(32, symmetric=True)), ("clip", int4(128)), ("refit", int4(128)),
         ("hqq", int4(128)), ("hqq", int4(128, zero="fp16"))]


def _importance(columns: int, seed: int = 7) -> np.ndarray:
    # activations' second moments spread over orders of magnitude (a few outlier channels), as in LLMs
    return np.exp(2.0 * np.random.default_rng(seed).standard_normal(columns)).astype(np.float32)


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "scheme"), CASES, ids=lambda c: c if isinstance(c, str) else c.label())
def test_weighted_methods_beat_unweighted_on_the_weighted_error_4096(gaussian: np.ndarray, method: str,
                                                                      scheme: WeightFormat) -> None:
    importance = _importance(4096)
    weighted = quantize(gaussian, scheme, method, importance=importance).quality
    plain = quantize(gaussian, scheme, method)
    plain_weighted_error = weighted_relative_error(gaussian, dequantize(plain), importance)
    print(f"{method} {scheme.label()}: weighted SQNR {weighted.weighted_sqnr_db:.3f} dB with importance, "
          f"{-20 * np.log10(plain_weighted_error):.3f} dB without")
    assert weighted.importance_used
    assert weighted.weighted_relative_error is not None
    assert weighted.weighted_relative_error < plain_weighted_error * 0.99


@pytest.mark.slow
@pytest.mark.parametrize(("method", "scheme"), CASES, ids=lambda c: c if isinstance(c, str) else c.label())
def test_uniform_importance_gives_exactly_the_unweighted_result_4096(gaussian: np.ndarray, method: str,
                                                                    scheme: WeightFormat) -> None:
    uniform = quantize(gaussian, scheme, method, importance=np.full(4096, 0.37, dtype=np.float32))
    plain = quantize(gaussian, scheme, method)
    np.testing.assert_array_equal(uniform.packed, plain.packed)
    np.testing.assert_array_equal(uniform.scales, plain.scales)
    assert uniform.quality.weighted_relative_error == pytest.approx(plain.quality.relative_error, rel=1e-6)
    assert not uniform.quality.importance_used


@pytest.mark.parametrize(("method", "scheme"), CASES, ids=lambda c: c if isinstance(c, str) else c.label())
def test_weighted_methods_beat_unweighted_on_a_small_tensor(method: str, scheme: WeightFormat) -> None:
    weights = np.random.default_rng(3).standard_normal((64, 1024), dtype=np.float32)
    importance = _importance(1024)
    weighted = quantize(weights, scheme, method, importance=importance).quality.weighted_relative_error
    plain = weighted_relative_error(weights, dequantize(quantize(weights, scheme, method)), importance)
    assert weighted is not None and weighted < plain


def test_gptq_is_measured_by_the_importance_but_does_not_use_it() -> None:
    from quant_core.quantize.calibration import synthetic_activations

    weights = np.random.default_rng(3).standard_normal((64, 512), dtype=np.float32)
    q = quantize(weights, int4(128), "gptq", synthetic_activations(64, 512, seed=2), importance=_importance(512))
    assert q.quality.weighted_relative_error is not None
    assert not q.quality.importance_used


def test_the_weighted_error_is_the_plain_one_without_weights_and_follows_its_formula() -> None:
    weights = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    reconstructed = np.array([[1.0, 1.0], [3.0, 5.0]], dtype=np.float32)
    # columns weighted 1 and 3: errors² 0+0 and 1+1 -> 3·2 = 6; weights² 1+9 and 4+16 -> 10 + 3·20 = 70
    assert weighted_relative_error(weights, reconstructed, np.array([1.0, 3.0])) == pytest.approx((6 / 70) ** 0.5)


@pytest.mark.parametrize(("importance", "message"), [
    (np.ones(100, dtype=np.float32), "has 128 input columns"),
    (np.ones((2, 64), dtype=np.float32), "has 128 input columns"),
    (-np.ones(128, dtype=np.float32), "non-negative"),
    (np.full(128, np.nan, dtype=np.float32), "finite"),
    (np.zeros(128, dtype=np.float32), "all zero"),
])
def test_importance_that_does_not_fit_is_refused_naming_the_tensor(importance: np.ndarray, message: str) -> None:
    weights = np.ones((4, 128), dtype=np.float32)
    with pytest.raises(ImportanceMismatch, match=message) as error:
        quantize(weights, int4(128), "rtn", name="model.layers.0.mlp.up_proj.weight", importance=importance)
    assert "model.layers.0.mlp.up_proj.weight" in error.value.detail
    assert error.value.field == "importance"


def test_the_weighted_figures_survive_nibbles_file(tmp_path: Path) -> None:
    from quant_core.tensorio import read_nibble_safetensors, write_nibble_safetensors

    weights = np.random.default_rng(2).standard_normal((8, 128)).astype(np.float32)
    importance = np.linspace(0.1, 3.0, 128, dtype=np.float32)
    q = quantize(weights, int4(128), "clip", importance=importance)
    path = tmp_path / "q.safetensors"
    write_nibble_safetensors(path, {"w": q})
    back = read_nibble_safetensors(path)[0]["w"].quality
    assert back.weighted_relative_error == q.quality.weighted_relative_error
    assert back.weighted_sqnr_db == q.quality.weighted_sqnr_db
    assert back.importance_used is True


@pytest.mark.parametrize("method", ["rtn", "clip", "hqq"])
def test_importance_of_float32s_smallest_values_weighs_as_the_same_vector_scaled_up(method: str) -> None:
    # [1e-45 (the least float32 above 0), 0, ...]: its mean, 1e-45 / 128, is below float32's range, and dividing
    # by it in float32 gave inf and nan weights (rtn's relative error 0.73 for a 0.1 one, the weighted error nan)
    weights = np.random.default_rng(4).standard_normal((8, 128)).astype(np.float32)
    tiny = np.zeros(128, dtype=np.float32)
    tiny[0] = np.float32(1e-45)
    q = quantize(weights, int4(128), method, importance=tiny)
    scaled = quantize(weights, int4(128), method, importance=tiny / tiny[0])  # [1, 0, ...]: the same weighting
    assert np.array_equal(dequantize(q), dequantize(scaled))
    assert q.quality.weighted_relative_error == scaled.quality.weighted_relative_error
    assert q.quality.weighted_relative_error is not None and np.isfinite(q.quality.weighted_relative_error)
