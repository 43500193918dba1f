"""The reported max |W − Ŵ| is exact, though most groups' errors are bounded rather than searched.

`QualityAccumulator.add` skips groups whose bound (``s · (0.5 + 2^-14)`` for an
unclipped group with an integer zero, quant_core/quantize/_fused.py) is below an
error already measured.  These tests compare the figure with the largest
error of the dequantized tensor, computed directly, on tensors built to put
their largest error where a wrong bound or a wrong skip would miss it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quant_core.formats import WeightFormat
from quant_core.quantize import dequantize, quantize
from quant_core.quantize.metrics import QualityAccumulator


def int4(group_size: int | None, **kwargs: object) -> WeightFormat:
    return WeightFormat("int4", group_size, **kwargs)  # type: ignore[arg-type]


def true_max_error(weights: np.ndarray, method: str, scheme: WeightFormat, threads: int = 1) -> tuple[float, float]:
    """(the figure quantize reports, the largest |dequantize − weights| computed here)."""
    q = quantize(weights, scheme, method, threads=threads)
    exact = float(np.abs(dequantize(q).astype(np.float32) - weights.astype(np.float32)).max())
    return q.quality.max_abs_error, exact


def rows_with_growing_scales(rows: int, columns: int, seed: int) -> np.ndarray:
    """Gaussian rows whose spread grows down the tensor: each later block holds larger errors than any before."""
    rng = np.random.default_rng(seed)
    spread = np.linspace(0.5, 2.0, rows, dtype=np.float32)[:, None]
    return (rng.standard_normal((rows, columns), dtype=np.float32) * spread).astype(np.float32)


@pytest.mark.parametrize("method, scheme", [
    ("rtn", int4(128)), ("rtn", int4(32)), ("rtn", int4(None)), ("rtn-sym", int4(128, symmetric=True)),
    ("clip", int4(64)), ("refit", int4(128)), ("hqq", int4(128, zero="fp16")), ("rtn", int4(128, pad=True)),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_reported_max_error_is_the_largest_error_of_the_dequantized_tensor(
        method: str, scheme: WeightFormat, threads: int) -> None:
    columns = 1000 if scheme.pad else 1024
    for weights in (rows_with_growing_scales(1536, columns, 0), rows_with_growing_scales(1536, columns, 1)[::-1]):
        reported, exact = true_max_error(np.ascontiguousarray(weights), method, scheme, threads)
        assert reported == exact, (method, scheme.label())


def test_one_outlier_deep_in_a_late_block_is_found() -> None:
    weights = rows_with_growing_scales(2048, 512, 2)[::-1].copy()  # the largest scales come first
    weights[1900, 300] = 40.0  # a group far down the tensor, with a huge step: its error is the largest
    reported, exact = true_max_error(weights, "rtn", int4(128))
    assert reported == exact


def test_a_group_whose_error_is_just_under_half_a_step_is_searched_after_a_nearly_as_large_one() -> None:
    # rtn g128 with each group's range [0, 15] gives a step of exactly 1 and a zero of 0: integers are exact
    weights = np.tile(np.arange(128, dtype=np.float32) % 16, (512, 8))
    weights[3, 5] = 7.4998  # the first block (rows 0-255) measures 0.4998 ...
    weights[256:] *= np.float32(0.5)  # ... the second block's groups have half the step, and no error ...
    weights[300, 384:512] = np.arange(128, dtype=np.float32) % 16  # ... but one, with a step of 1,
    weights[300, 400] = 3.49995  # holds 0.49995: its bound must not fall below the 0.4998 measured before
    q = quantize(weights, int4(128), "rtn", threads=1)
    assert q.quality.max_abs_error == float(np.abs(dequantize(q) - weights).max())
    assert q.quality.max_abs_error == pytest.approx(0.49995, abs=1e-6)


def test_bfloat16_input_is_measured_exactly_too() -> None:
    weights = rows_with_growing_scales(1024, 1024, 3).astype(ml_dtypes.bfloat16)
    reported, exact = true_max_error(weights, "rtn", int4(128), threads=2)
    assert reported == exact


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 64), st.sampled_from([32, 64, 96])),
              elements=st.floats(-1e4, 1e4, width=32)))
def test_any_small_tensor_reports_its_exact_largest_error(weights: np.ndarray) -> None:
    reported, exact = true_max_error(weights, "rtn", int4(32))
    assert reported == exact


SMALL_CASES = [
    ("rtn", int4(32)), ("rtn-sym", int4(32, symmetric=True)), ("rtn-sym", int4(None, symmetric=True)),
    ("rtn-sym-absmax7", int4(32, symmetric=True)), ("rtn-sym-2absmax15", int4(32, symmetric=True)),
    ("clip", int4(32, symmetric=True)), ("clip", int4(32)), ("refit", int4(32)), ("hqq", int4(32, zero="fp16")),
    ("rtn", int4(None)), ("rtn-sym", int4(32, symmetric=True, pad=True)),
]


@settings(max_examples=120, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.sampled_from([32, 64, 96])),
              elements=st.floats(-1e4, 1e4, width=32)),
       st.sampled_from(SMALL_CASES), st.sampled_from(["as drawn", "all positive", "all negative"]))
def test_every_method_reports_the_figures_of_the_tensor_it_stored(
        weights: np.ndarray, case: tuple[str, WeightFormat], signs: str) -> None:
    method, scheme = case
    if signs != "as drawn":
        weights = np.abs(weights) * np.float32(1.0 if signs == "all positive" else -1.0)
    q = quantize(weights, scheme, method)
    stored = dequantize(q)
    assert q.quality.max_abs_error == float(np.abs(stored - weights).max())
    error = np.linalg.norm(stored.astype(np.float64) - weights)
    norm = np.linalg.norm(weights.astype(np.float64))
    assert q.quality.relative_error == (pytest.approx(error / norm, rel=1e-5, abs=1e-12) if norm else 0.0 if
                                        error == 0 else np.inf)


def test_an_accumulator_skips_groups_bounded_below_a_measured_error() -> None:
    weights = np.zeros((4, 16), dtype=np.float32)
    reconstructed = np.zeros((4, 16), dtype=np.float32)
    reconstructed[3, 10] = 3.0  # an error of 3 in group 29 (of 32 groups of 2)
    reconstructed[0, 0] = -5.0  # and one of 5 in group 0, bounded (wrongly, on purpose) at 1
    bounds = np.ones(32, dtype=np.float32)
    accumulator = QualityAccumulator()
    accumulator.add(weights, reconstructed.copy(), bounds, floor=2.0)
    assert accumulator.max_abs_error == 0.0  # no group's bound exceeds the floor: none is searched
    bounds[29] = 4.0
    accumulator.add(weights, reconstructed.copy(), bounds, floor=2.0)
    assert accumulator.max_abs_error == 3.0  # only group 29 was searched
    accumulator.add(weights, reconstructed.copy())
    assert accumulator.max_abs_error == 5.0  # without bounds, every element is


def test_tiny_weights_whose_squares_underflow_float32_are_measured_in_float64() -> None:
    # squares of 1e-25 are 1e-50, below float32's range: summed in float32 they vanish and a 100 % error read 0
    weights = (np.random.default_rng(4).standard_normal((64, 256)) * 1e-25).astype(np.float32)
    q = quantize(weights, int4(128), "rtn")
    stored = dequantize(q).astype(np.float64)
    expected = np.linalg.norm(stored - weights) / np.linalg.norm(weights.astype(np.float64))
    assert q.quality.relative_error == pytest.approx(expected, rel=1e-6)
    assert q.quality.relative_error > 0.5  # fp16 scales cannot resolve 1e-25: the weights are lost, and it says so
