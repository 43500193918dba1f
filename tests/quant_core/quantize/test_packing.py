"""nibble's native payload: nibble order, pack/unpack identity, and exact sizes for every scheme."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_core.errors import TensorFileError
from quant_core.formats import GROUP_SIZES, WeightFormat, int4
from quant_core.quantize import (
    dequantize,
    pack_codes,
    payload_array,
    payload_bytes,
    payload_size,
    quantize,
    quantized_from_payload,
    unpack_codes,
)

SCHEMES = [
    WeightFormat("int4", group, symmetric, zero, pad, layout)
    for group in (*GROUP_SIZES, None)
    for symmetric, zero in ((False, "int4"), (False, "fp16"), (True, "none"))
    for pad in (False, True)
    for layout in ("nibble", "gptq")
]


def test_first_code_goes_in_the_low_nibble() -> None:
    assert pack_codes(np.array([1, 2, 15], dtype=np.uint8)).tolist() == [0x21, 0x0F]


@given(st.lists(st.integers(0, 15), min_size=0, max_size=300))
def test_unpack_inverts_pack_for_any_code_sequence(codes: list[int]) -> None:
    array = np.array(codes, dtype=np.uint8)
    packed = pack_codes(array)
    assert packed.size == (len(codes) + 1) // 2
    np.testing.assert_array_equal(unpack_codes(packed, len(codes)), array)


def test_unpack_refuses_more_codes_than_the_bytes_hold() -> None:
    with pytest.raises(TensorFileError):
        unpack_codes(np.zeros(2, dtype=np.uint8), 5)


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    out_features=st.integers(1, 9),
    in_features=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_payload_length_is_the_formats_payload_bytes_and_round_trips(
    scheme: WeightFormat, out_features: int, in_features: int, seed: int
) -> None:
    if scheme.group_size is not None and not scheme.pad and in_features % scheme.group_size:
        in_features = scheme.group_size * (1 + in_features // scheme.group_size)
    weights = np.random.default_rng(seed).standard_normal((out_features, in_features), dtype=np.float32)
    method = "rtn-sym" if scheme.symmetric else "rtn"
    q = quantize(weights, scheme, method)
    data = payload_bytes(q)
    assert len(data) == scheme.payload_bytes_for((out_features, in_features))
    if scheme.layout == "nibble":  # nibble's own layout: the payload is what the planner counts
        assert len(data) == scheme.bytes_for((out_features, in_features))
    back = quantized_from_payload(data, q.shape, scheme, method, quality=q.quality)
    np.testing.assert_array_equal(dequantize(back), dequantize(q))
    assert payload_bytes(back) == data
    array = payload_array(q)
    assert array.dtype == np.uint8 and array.tobytes() == data  # the same bytes, as a NumPy array
    # quantize wrote the sections into one buffer in payload order: that buffer is handed out, read-only
    assert np.shares_memory(array, q.packed) and not array.flags.writeable
    rebuilt = payload_array(back)
    assert rebuilt.tobytes() == data and not np.shares_memory(rebuilt, back.packed)


def test_a_tensor_whose_zeros_were_changed_gets_its_own_bytes_not_the_stale_buffer() -> None:
    weights = np.random.default_rng(5).standard_normal((8, 64), dtype=np.float32)
    q = quantize(weights, WeightFormat("int4", 32), "rtn")
    assert q.zeros is not None
    changed = dataclasses.replace(q, zeros=(np.asarray(q.zeros) + 1) % 16)
    array = payload_array(changed)
    assert array.tobytes() == payload_bytes(changed) != payload_bytes(q)
    assert not np.shares_memory(array, q.packed)
    fp16 = quantize(weights, WeightFormat("int4", 32, zero="fp16"), "hqq")
    other_scales = dataclasses.replace(fp16, scales=fp16.scales.copy())
    assert not np.shares_memory(payload_array(other_scales), fp16.packed)
    assert payload_array(other_scales).tobytes() == payload_bytes(fp16)


def test_payload_sections_are_codes_then_scales_then_packed_zeros() -> None:
    weights = np.array([[0.0, 1.0, 2.0, 3.0] * 8], dtype=np.float32)
    q = quantize(weights, WeightFormat("int4", 32), "rtn")
    data = payload_bytes(q)
    # range [0, 3] -> scale 0.2 rounded up to fp16, zero 0, codes rint(w / s)
    scale = np.float32(np.float16(0.2))
    scale = scale if scale >= np.float32(0.2) else np.float32(np.nextafter(np.float16(0.2), np.float16(1)))
    codes = np.rint(weights[0] / scale).astype(np.uint8)
    assert data[:16] == pack_codes(codes).tobytes()
    assert data[16:18] == np.array([scale], dtype="<f2").tobytes()
    assert data[18:] == bytes([0])


def test_payload_of_wrong_length_is_refused() -> None:
    scheme = WeightFormat("int4", 32)
    q = quantize(np.ones((2, 32), dtype=np.float32), scheme, "rtn")
    with pytest.raises(TensorFileError, match="expected 37"):
        quantized_from_payload(payload_bytes(q)[:-1], (2, 32), scheme, "rtn")


def test_payload_with_out_of_range_g_idx_is_refused() -> None:
    scheme = WeightFormat("int4", 32, layout="gptq")
    q = quantize(np.ones((2, 64), dtype=np.float32), scheme, "rtn")
    data = bytearray(payload_bytes(q))
    data[-4:] = np.array([7], dtype="<i4").tobytes()
    with pytest.raises(TensorFileError, match=r"g_idx\[63\] = 7"):
        quantized_from_payload(bytes(data), (2, 64), scheme, "rtn")


PAYLOAD_CASES: list[tuple[str, WeightFormat, bool]] = [
    ("rtn", int4(128), False),
    ("rtn", int4(None), False),
    ("rtn", int4(32, pad=True), False),
    ("rtn-sym", int4(64, symmetric=True), False),
    ("hqq", int4(128, zero="fp16"), False),
    ("clip", int4(128), False),
    ("gptq", WeightFormat("int4", 128, False, "int4", layout="gptq"), True),
    ("gptq-act-order", WeightFormat("int4", 128, True, "none", layout="gptq"), True),
]


@pytest.mark.parametrize(("method", "scheme", "calibrated"), PAYLOAD_CASES)
def test_payload_size_equals_the_joined_payload_length(method: str, scheme: WeightFormat, calibrated: bool) -> None:
    rng = np.random.default_rng(7)
    columns = 200 if scheme.pad else 256  # 200: not a multiple of 32, so the rows are padded
    weights = rng.standard_normal((13, columns)).astype(np.float32)  # odd: 13 x groups int4 zeros
    calibration = rng.standard_normal((64, columns)).astype(np.float32) if calibrated else None
    q = quantize(weights, scheme, method, calibration)
    assert payload_size(q) == len(payload_bytes(q)) == scheme.payload_bytes_for(weights.shape)
