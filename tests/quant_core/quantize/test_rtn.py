"""Round-to-nearest and the quantize/dequantize contract: error bounds, dtypes, refusals."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from quant_core.errors import GroupSizeMismatch, InvalidTensor, NonFiniteValues, UnknownName
from quant_core.formats import WeightFormat, int4
from quant_core.quantize import METHODS, dequantize, quality_report, quantize

# Codes are w × (1 / s) in float32, so a weight within ~1e-6 steps of a rounding
# boundary may land on the neighbouring code; 1e-5 of a step covers it.
STEP_TOLERANCE = 1e-5


def _weights(rows: int = 64, columns: int = 512, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, columns), dtype=np.float32)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256, None])
@pytest.mark.parametrize("zero", ["int4", "fp16"])
def test_every_rtn_error_is_at_most_half_a_step(group_size: int | None, zero: str) -> None:
    weights = _weights() * np.float32(3.0) + np.float32(0.5)
    scheme = int4(group_size, zero=zero)  # type: ignore[arg-type]
    q = quantize(weights, scheme, "rtn")
    groups = scheme.group_count(weights.shape[1])
    step = np.repeat(q.scales.astype(np.float32), weights.shape[1] // groups, axis=1)
    error = np.abs(dequantize(q) - weights)
    # fp16 zeros are off their exact value by up to half an fp16 ulp of z (z ≤ 15: 2^-8 steps)
    slack = STEP_TOLERANCE + (2.0**-8 if zero == "fp16" else 0.0)
    assert (error <= step * (0.5 + slack)).all()


def test_symmetric_absmax7_error_is_at_most_half_a_step() -> None:
    weights = _weights()
    q = quantize(weights, int4(64, symmetric=True), "rtn-sym-absmax7")
    step = np.repeat(q.scales.astype(np.float32), 64, axis=1)
    assert (np.abs(dequantize(q) - weights) <= step * (0.5 + STEP_TOLERANCE)).all()


def test_q4_0_rule_maps_the_signed_max_to_code_zero() -> None:
    weights = np.linspace(-1.0, 0.5, 32, dtype=np.float32).reshape(1, 32)
    q = quantize(weights, int4(32, symmetric=True), "rtn-sym")
    assert q.packed[0] & 0x0F == 0
    assert float(q.scales[0, 0]) == pytest.approx(1.0 / 8.0)
    assert dequantize(q)[0, 0] == -1.0


@pytest.mark.parametrize("group_size", [None, 32])
def test_q4_0_rule_with_a_positive_signed_max_clips_the_opposite_extreme_to_code_15(group_size: int | None) -> None:
    # m = 2 gives the negative scale −1/4: 2 maps to code 0, −2 to rint(8) + 8 = 16, which must clip to 15
    weights = np.zeros((1, 32), dtype=np.float32)
    weights[0, :2] = 2.0, -2.0
    q = quantize(weights, int4(group_size, symmetric=True), "rtn-sym")
    assert float(q.scales[0, 0]) == -0.25
    assert q.packed[0] == 0xF0  # code 0 in the low nibble, 15 in the high one
    np.testing.assert_array_equal(dequantize(q)[0, :2], [2.0, -1.75])
    assert q.quality.max_abs_error == 0.25
    assert q.quality.relative_error == pytest.approx(0.25 / np.sqrt(8.0), rel=1e-6)


def test_scales_are_fp16_and_dequantize_reproduces_the_measured_error() -> None:
    weights = _weights()
    q = quantize(weights, int4(128), "rtn")
    assert q.scales.dtype == np.float16 and q.zeros is not None and q.zeros.dtype == np.uint8
    assert int(q.zeros.max()) <= 15
    again = quality_report(weights, dequantize(q))
    assert again.relative_error == pytest.approx(q.quality.relative_error, rel=1e-6)
    assert again.max_abs_error == q.quality.max_abs_error
    assert q.quality.sqnr_db == pytest.approx(-20 * np.log10(q.quality.relative_error))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_inputs_quantize_as_their_exact_float32_values(dtype: type) -> None:
    weights = _weights().astype(dtype)
    q = quantize(weights, int4(128), "rtn")
    reference = quantize(weights.astype(np.float32), int4(128), "rtn")
    np.testing.assert_array_equal(q.packed, reference.packed)
    np.testing.assert_array_equal(q.scales, reference.scales)
    assert q.quality == reference.quality
    assert q.source_dtype == np.dtype(dtype).name


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_dequantize_returns_the_requested_dtype(dtype: type) -> None:
    q = quantize(_weights(), int4(128), "rtn")
    out = dequantize(q, dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, dequantize(q).astype(dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_with_count_and_first_index(bad: float) -> None:
    weights = _weights(40, 256)
    weights[21, 7] = bad
    weights[30, 3] = bad
    with pytest.raises(NonFiniteValues) as raised:
        quantize(weights, int4(128), "rtn", name="layer.0.q_proj")
    assert raised.value.count == 2
    assert raised.value.first_index == (21, 7)
    assert raised.value.name == "layer.0.q_proj"


@pytest.mark.parametrize("bad", [np.nan, np.copysign(np.nan, -1.0), np.inf, -np.inf],
                         ids=["nan", "negative-nan", "inf", "-inf"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_non_finite_weights_are_found_in_groups_of_either_sign(bad: float, sign: float) -> None:
    # the group extremes are integer reductions over the float bits: a NaN (either sign bit) or an
    # Inf must surface whether the rest of its group is all positive or all negative
    weights = np.abs(_weights(4, 256)) * np.float32(sign)
    weights[2, 130] = bad
    with pytest.raises(NonFiniteValues) as raised:
        quantize(weights, int4(128), "rtn")
    assert raised.value.count == 1 and raised.value.first_index == (2, 130)


@pytest.mark.parametrize("offset", [-5.0, 5.0, 0.0])
def test_group_ranges_are_the_true_min_and_max_for_groups_of_one_sign(offset: float) -> None:
    # all-negative / all-positive groups take the float fallback of the integer extremes
    weights = _weights(8, 256) * np.float32(0.5) + np.float32(offset)
    scheme = int4(128, zero="fp16")
    q = quantize(weights, scheme, "rtn")
    grouped = weights.reshape(8, 2, 128)
    expected = ((grouped.max(-1) - grouped.min(-1)) / np.float32(15.0)).astype(np.float32)
    scales = q.scales.astype(np.float32)
    assert (scales >= expected).all() and (scales <= expected * np.float32(1.001)).all()
    step = np.repeat(scales, 128, axis=1)
    assert (np.abs(dequantize(q) - weights) <= step * (0.5 + STEP_TOLERANCE + 2.0**-8)).all()


def test_in_features_not_divisible_by_the_group_is_refused() -> None:
    with pytest.raises(GroupSizeMismatch) as raised:
        quantize(_weights(4, 200), int4(128), "rtn")
    assert (raised.value.in_features, raised.value.group_size) == (200, 128)


def test_padding_quantizes_the_real_columns_and_drops_the_pad() -> None:
    weights = _weights(6, 200)
    q = quantize(weights, int4(128, pad=True), "rtn")
    assert q.scales.shape == (6, 2)
    out = dequantize(q)
    assert out.shape == (6, 200)
    assert np.abs(out - weights).max() == pytest.approx(q.quality.max_abs_error)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 32)])
def test_tensors_that_are_not_2d_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidTensor, match="2-D"):
        quantize(np.zeros(shape, dtype=np.float32), int4(32), "rtn")


def test_integer_tensors_are_refused() -> None:
    with pytest.raises(InvalidTensor, match="int32"):
        quantize(np.zeros((2, 32), dtype=np.int32), int4(32), "rtn")


def test_unknown_method_names_close_ones() -> None:
    with pytest.raises(UnknownName) as raised:
        quantize(_weights(), int4(128), "rnt")
    assert "rtn" in raised.value.close


def test_quantize_does_not_modify_its_input() -> None:
    weights = _weights()
    copy = weights.copy()
    for method in METHODS:
        if not method.startswith("gptq"):
            quantize(weights, WeightFormat("int4", 128), method)
    np.testing.assert_array_equal(weights, copy)


def test_all_zero_groups_are_exact_and_constant_groups_stay_finite() -> None:
    weights = np.zeros((2, 64), dtype=np.float32)
    weights[1] = 0.25
    q = quantize(weights, int4(32), "rtn")
    out = dequantize(q)
    np.testing.assert_array_equal(out[0], 0.0)
    # 0.25 is 15 steps of (0.25 / 15 rounded up to fp16): off by at most 15 fp16 ulps of the scale
    np.testing.assert_allclose(out[1], 0.25, rtol=15 * 2.0**-11)
