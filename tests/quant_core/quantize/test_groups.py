"""fp16-exact group parameters (quant_core/quantize/_groups.py): rounding scales up to fp16, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.errors import InvalidTensor
from quant_core.quantize._groups import FP16_MAX, _fp16_ceil_by_casts, fp16_ceil, nonzero_scale


def _edge_values() -> np.ndarray:
    """Zero, fp16 subnormals and the normal boundary, exact fp16 values and their float32 neighbours, the top."""
    exact = np.array([2.0**-24, 2.0**-15, 2.0**-14, 1.0, 1.5, 1024.0, 65504.0], dtype=np.float32)
    neighbours = np.concatenate([np.nextafter(exact, np.float32(0)), np.nextafter(exact, np.float32(np.inf))])
    return np.concatenate([[0.0], exact, neighbours[neighbours <= FP16_MAX]]).astype(np.float32)


def test_fp16_ceil_equals_the_cast_and_nextafter_reference_on_every_kind_of_value() -> None:
    rng = np.random.default_rng(0)
    random = np.concatenate([
        rng.uniform(0, 65504, 20_000), np.exp(rng.uniform(np.log(2.0**-26), np.log(60000.0), 100_000)),
    ]).astype(np.float32)
    values = np.concatenate([_edge_values(), random])
    assert np.array_equal(fp16_ceil(values), _fp16_ceil_by_casts(values))


def test_fp16_ceil_rounds_up_to_an_fp16_value_at_most_one_fp16_step_away() -> None:
    values = np.exp(np.random.default_rng(1).uniform(np.log(2.0**-20), np.log(60000.0), 50_000)).astype(np.float32)
    rounded = fp16_ceil(values)
    assert np.all(rounded >= values)
    assert np.array_equal(rounded.astype(np.float16).astype(np.float32), rounded)  # representable in fp16
    below = np.nextafter(rounded.astype(np.float16), np.float16(0)).astype(np.float32)
    assert np.all(below < values)  # the next fp16 down would be too small: the smallest fp16 >= value


def test_fp16_ceil_keeps_exact_fp16_values_and_zero() -> None:
    values = np.array([0.0, 2.0**-24, 0.5, 3.0, 65504.0], dtype=np.float32)
    assert np.array_equal(fp16_ceil(values), values)


def test_fp16_ceil_refuses_a_scale_beyond_fp16() -> None:
    with pytest.raises(InvalidTensor, match="exceeds the fp16 maximum"):
        fp16_ceil(np.array([1.0, 70000.0], dtype=np.float32))


def test_nonzero_scale_replaces_only_zero_scales_by_one() -> None:
    assert np.array_equal(nonzero_scale(np.array([0.0, 0.25, 0.0], dtype=np.float32)), [1.0, 0.25, 1.0])
    unchanged = np.array([0.5, 2.0], dtype=np.float32)
    assert np.array_equal(nonzero_scale(unchanged), unchanged)
