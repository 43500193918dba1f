"""clip, hqq, refit and gptq: schemes respected, errors typed, GPTQ beats RTN on LLM-like activations."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.errors import CalibrationError, InvalidSpec
from quant_core.formats import WeightFormat, int4
from quant_core.quantize import dequantize, payload_bytes, quantize, quantized_from_payload
from quant_core.quantize.calibration import synthetic_activations
from quant_core.quantize.gptq import inverse_cholesky_upper

SCHEMES = [int4(128), int4(128, zero="fp16"), int4(64, symmetric=True), int4(None)]


def _weights(rows: int = 64, columns: int = 512, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, columns), dtype=np.float32)


@pytest.mark.parametrize("method", ["clip", "refit"])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_search_methods_never_do_worse_than_rtn(method: str, scheme: WeightFormat) -> None:
    weights = _weights()
    baseline = quantize(weights, scheme, "rtn").quality.relative_error
    assert quantize(weights, scheme, method).quality.relative_error <= baseline * (1 + 1e-6)


@pytest.mark.parametrize("method", ["clip", "hqq", "refit", "gptq"])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label())
def test_every_method_stores_the_zero_kind_its_scheme_asks_for(method: str, scheme: WeightFormat) -> None:
    weights = _weights()
    calibration = synthetic_activations(64, 512, seed=2) if method == "gptq" else None
    if method == "hqq" and scheme.symmetric:
        with pytest.raises(InvalidSpec, match="asymmetric"):
            quantize(weights, scheme, method)
        return
    q = quantize(weights, scheme, method, calibration)
    expected = {"none": None, "int4": np.uint8, "fp16": np.float16}[scheme.zero]
    assert (q.zeros.dtype if q.zeros is not None else None) == expected
    assert q.scales.dtype == np.float16
    data = payload_bytes(q)
    assert len(data) == scheme.payload_bytes_for(weights.shape) == scheme.bytes_for(weights.shape)
    back = quantized_from_payload(data, q.shape, scheme, method)
    np.testing.assert_array_equal(dequantize(back), dequantize(q))


@pytest.mark.parametrize("group_size", [32, 128])
def test_hqq_with_an_int4_zero_beats_rtn_on_the_same_tensor(group_size: int) -> None:
    # issue 22: rounding HQQ's float zero alone gave back RTN's codes; the projection refits the scales
    weights = _weights(128, 1024)
    rtn_error = quantize(weights, int4(group_size), "rtn").quality.relative_error
    hqq_error = quantize(weights, int4(group_size), "hqq").quality.relative_error
    assert hqq_error < rtn_error * 0.99


def test_hqq_int4_zero_codes_differ_from_rtn() -> None:
    weights = _weights(128, 1024)
    hqq = quantize(weights, int4(128), "hqq")
    rtn = quantize(weights, int4(128), "rtn")
    assert not np.array_equal(hqq.packed, rtn.packed)


def test_gptq_without_calibration_is_refused() -> None:
    with pytest.raises(CalibrationError, match="calibration"):
        quantize(_weights(), int4(128), "gptq")


def test_calibration_with_the_wrong_width_is_refused() -> None:
    with pytest.raises(CalibrationError, match=r"\[n, 512\]"):
        quantize(_weights(), int4(128), "rtn", np.ones((8, 100), dtype=np.float32))


def test_act_order_needs_the_gptq_layout_for_its_g_idx() -> None:
    calibration = synthetic_activations(64, 512, seed=2)
    with pytest.raises(InvalidSpec, match="g_idx"):
        quantize(_weights(), int4(128), "gptq-act-order", calibration)


@pytest.mark.parametrize("in_features", [200, 256])
def test_a_partial_last_group_is_refused_as_a_scheme_the_quantizer_does_not_write(in_features: int) -> None:
    # partial=True is how GPTQ/AWQ checkpoints store a width the group size does not divide (the planner counts
    # it); the quantizer writes whole groups (pad=True pads a row): a partial 200 raised ValueError from a reshape
    with pytest.raises(InvalidSpec, match="partial"):
        quantize(_weights(8, in_features), int4(128, partial=True), "rtn")


def test_inverse_cholesky_upper_factors_the_damped_inverse() -> None:
    matrix = np.random.default_rng(4).standard_normal((300, 300)).astype(np.float32)
    hessian = matrix @ matrix.T
    upper, damp = inverse_cholesky_upper(hessian)
    assert np.allclose(np.tril(upper, -1), 0.0)
    expected = np.linalg.inv(hessian.astype(np.float64) + damp * np.eye(300))
    np.testing.assert_allclose(upper.T.astype(np.float64) @ upper, expected, atol=1e-4 * np.abs(expected).max())


def test_dead_input_columns_are_quantized_as_zero_weights() -> None:
    calibration = synthetic_activations(256, 512, seed=5)
    calibration[:, 10] = 0.0
    q = quantize(_weights(), int4(128), "gptq", calibration)
    assert np.all(np.abs(dequantize(q)[:, 10]) <= q.scales[:, 0].astype(np.float32) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "gptq-act-order"])
def test_gptq_held_out_output_error_is_at_least_20_percent_below_rtn(method: str) -> None:
    # 512 × 1024 Gaussian weights; activations from calibration.synthetic_activations
    # (correlated channels, log-normal channel scales, 6 outlier channels × 20), seed 3.
    weights = _weights(512, 1024, seed=2)
    calibration = synthetic_activations(2048, 1024, seed=3)
    scheme = WeightFormat("int4", 128, layout="gptq")
    rtn = quantize(weights, scheme, "rtn", calibration).quality
    gptq = quantize(weights, scheme, method, calibration).quality
    assert gptq.fit_rows == (0, 1536) and gptq.eval_rows == (1536, 2048)
    assert rtn.output_relative_error is not None and gptq.output_relative_error is not None
    assert gptq.output_relative_error <= 0.8 * rtn.output_relative_error
