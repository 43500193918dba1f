"""Weights that fit fp16 decode within fp16: engines compute ``(q − z) · s`` in half precision.

Rounding a scale up (or llama.cpp's ``m / −8``) can put an extreme code just
past 65504, the largest fp16, where an fp16 engine gets ``inf``; such groups
get a slightly smaller scale instead (`within_fp16`, quant_core/quantize/_groups.py).
"""

from __future__ import annotations

from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest

from quant_core.errors import InvalidTensor
from quant_core.formats import WeightFormat, int4
from quant_core.quantize import dequantize, quantize

FP16_MAX = 65504.0
CASES = [
    ("rtn", int4(32)), ("rtn-sym", int4(32, symmetric=True)), ("rtn-sym-absmax7", int4(32, symmetric=True)),
    ("rtn-sym-2absmax15", int4(32, symmetric=True)), ("clip", int4(32)), ("refit", int4(32)),
    ("hqq", int4(32, zero="fp16")), ("gptq", int4(32)), ("gptq", int4(32, symmetric=True)),
    ("gptq", int4(32, zero="fp16")), ("gptq-act-order", replace(int4(32), layout="gptq")),
]


def edge_weights(sign: float) -> np.ndarray:
    """fp16 weights up to ±65504: one group per row holds the extreme."""
    rng = np.random.default_rng(7)
    weights = np.clip(rng.standard_normal((16, 128)) * 20000.0, -FP16_MAX, FP16_MAX)
    weights[:, 0] = sign * FP16_MAX
    weights[:, 1] = -sign * 3.0
    return weights.astype(np.float16)


@pytest.mark.parametrize(("method", "scheme"), CASES, ids=lambda c: c if isinstance(c, str) else c.label())
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_group_holding_the_largest_fp16_decodes_finite_in_fp16(method: str, scheme: WeightFormat,
                                                                 sign: float) -> None:
    weights = edge_weights(sign)
    calibration = np.random.default_rng(8).standard_normal((256, 128)).astype(np.float32)
    q = quantize(weights, scheme, method, calibration if method.startswith("gptq") else None)
    decoded = dequantize(q)
    assert float(np.abs(decoded).max()) <= FP16_MAX
    assert np.isfinite(dequantize(q, np.float16)).all()
    assert q.quality.max_abs_error == float(np.abs(decoded - weights.astype(np.float32)).max())


def test_the_largest_fp16_in_a_group_of_zeros_was_65520_and_is_now_at_most_65504() -> None:
    weights = np.zeros((8, 32), dtype=np.float16)
    weights[:, 0] = FP16_MAX  # rtn: range 65504 / 15 rounded up to 4368, and 15 · 4368 = 65520
    q = quantize(weights, int4(32), "rtn")
    assert float(dequantize(q)[0, 0]) <= FP16_MAX
    assert float(q.scales[0, 0]) < 4368.0


def test_groups_beyond_fp16_keep_their_scales() -> None:
    weights = np.zeros((8, 32), dtype=np.float32)
    weights[:, 0] = 1.0e5  # a bfloat16 or float32 source: no fp16 decode can hold it, nothing to limit
    q = quantize(weights.astype(ml_dtypes.bfloat16), int4(32), "rtn")
    assert float(dequantize(q)[0, 0]) == pytest.approx(1.0e5, rel=0.01)



@pytest.mark.parametrize(("method", "scheme", "message"), [
    ("rtn", int4(64), "a group's scale 66666.7 exceeds the fp16 maximum 65504.0"),
    ("rtn-sym", int4(32, symmetric=True), "a value 125000 to store as fp16 exceeds the fp16 maximum 65504.0"),
    ("clip", int4(64), "a group's scale 66666.7 exceeds the fp16 maximum 65504.0"),
    ("gptq", int4(64), "a group's scale 66666.7 exceeds the fp16 maximum 65504.0"),
], ids=["rtn", "rtn-sym", "clip", "gptq"])
def test_weights_no_fp16_scale_can_describe_are_refused_naming_the_tensor(method: str, scheme: WeightFormat,
                                                                         message: str) -> None:
    # a float32 weight of 1e6 needs a scale of 1e6 / 15 (or / 8): past fp16.  The refusal named no tensor, so a
    # checkpoint job of hundreds of tensors, or an upload of several, failed without saying which one.
    weights = np.zeros((8, 64), dtype=np.float32)
    weights[5, 3] = 1.0e6
    calibration = np.random.default_rng(8).standard_normal((64, 64)).astype(np.float32)
    with pytest.raises(InvalidTensor) as raised:
        quantize(weights, scheme, method, calibration if method == "gptq" else None,
                 name="model.layers.3.mlp.down_proj.weight")
    assert str(raised.value).startswith(
        "tensor 'model.layers.3.mlp.down_proj.weight': row 5, group 0 holds weights from 0 to 1e+06, a range of 1e+06 "
        f"too wide for 4-bit codes with 16-bit scales ({message}")
    assert (raised.value.name, raised.value.field) == ("model.layers.3.mlp.down_proj.weight", "file")


@pytest.mark.parametrize("method", ["rtn", "clip", "hqq", "gptq"])
def test_weights_whose_range_overflows_float32_are_refused_saying_what_they_hold_not_scale_inf(method: str) -> None:
    # ±3e38 are finite float32 values, but their range 6e38 is not: the group math saw a scale of inf, and the
    # refusal said "a group's scale inf exceeds the fp16 maximum", which told the user nothing they had sent
    weights = np.zeros((8, 64), dtype=np.float32)
    weights[6, 64 - 2:] = [3e38, -3e38]
    calibration = np.random.default_rng(8).standard_normal((64, 64)).astype(np.float32)
    with pytest.raises(InvalidTensor) as raised:
        quantize(weights, int4(32), method, calibration if method == "gptq" else None, name="lm_head.weight")
    assert str(raised.value) == (
        "tensor 'lm_head.weight': row 6, group 1 holds weights from -3e+38 to 3e+38, a range of 6e+38 too wide for "
        "4-bit codes with 16-bit scales (past float32's largest value, so its 4-bit step exceeds the fp16 maximum "
        "65504.0)")
    assert "inf" not in str(raised.value)
