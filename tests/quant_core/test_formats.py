"""Format arithmetic: the exact bytes of a tensor in each weight format and KV dtype."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.errors import GroupSizeMismatch, InvalidSpec, UnknownName
from quant_core.formats import WeightFormat, float_format, int4, kv_dtype

SQUARE = (4096, 4096)


def test_int4_group128_asymmetric_costs_4_15625_bits_per_weight() -> None:
    assert int4(128).bits_per_weight(SQUARE) == 4.15625
    assert int4(128).bytes_for(SQUARE) == 4096 * 4096 // 2 + 4096 * 32 * 2 + 4096 * 32 // 2


def test_int4_group128_symmetric_costs_4_125_bits_per_weight() -> None:
    assert int4(128, symmetric=True).bits_per_weight(SQUARE) == 4.125


def test_int4_group32_symmetric_is_llama_cpp_q4_0_at_4_5_bits() -> None:
    assert int4(32, symmetric=True).bits_per_weight(SQUARE) == 4.5


def test_int4_with_fp16_zeros_as_hqq_costs_4_25_bits_at_group128() -> None:
    assert int4(128, zero="fp16").bits_per_weight(SQUARE) == 4.25


def test_int4_whole_row_group_has_one_scale_and_zero_per_row() -> None:
    assert int4(None).bytes_for(SQUARE) == 4096 * 2048 + 4096 * 2 + 2048


def test_gptq_layout_adds_four_bytes_of_g_idx_per_input_column() -> None:
    gptq = WeightFormat("int4", 128, False, "int4", False, "gptq")
    assert gptq.bytes_for(SQUARE) == int4(128).bytes_for(SQUARE) + 4 * 4096


@pytest.mark.parametrize(("name", "size"), [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_float_formats_cost_their_element_size(name: str, size: int) -> None:
    assert float_format(name).bytes_for(SQUARE) == 4096 * 4096 * size


def test_int8_per_channel_stores_one_fp16_scale_per_row() -> None:
    assert WeightFormat("int8", None, True, "none").bytes_for((11008, 4096)) == 11008 * 4096 + 11008 * 2


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_group_size_that_does_not_divide_raises_naming_both_numbers(group_size: int) -> None:
    with pytest.raises(GroupSizeMismatch) as caught:
        int4(group_size).bytes_for((4096, 4095))
    assert caught.value.in_features == 4095 and caught.value.group_size == group_size
    assert "4095" in str(caught.value) and str(group_size) in str(caught.value)


def test_padding_when_asked_stores_whole_groups() -> None:
    padded = int4(128, pad=True)
    assert padded.bytes_for((1, 200)) == 256 // 2 + 2 * 2 + 1


def test_unsupported_group_size_and_format_names_are_refused() -> None:
    with pytest.raises(InvalidSpec) as caught:
        int4(100)
    assert caught.value.field == "group_size" and caught.value.value == 100
    with pytest.raises(UnknownName):
        WeightFormat("int3")


@pytest.mark.parametrize(("name", "head_dim", "expected"),
                         [("bf16", 128, 256), ("fp16", 128, 256), ("fp8", 128, 128), ("int8", 128, 132),
                          ("int4", 128, 68)])
def test_kv_dtype_bytes_per_vector(name: str, head_dim: int, expected: int) -> None:
    assert kv_dtype(name).bytes_per_vector(head_dim) == expected


@pytest.mark.parametrize(("fields", "named"), [
    ({"group_size": 128.0}, "group_size"),  # 128.0 == 128: it passed the membership test, then sliced with a float
    ({"group_size": True}, "group_size"),
    ({"symmetric": "yes"}, "symmetric"),
    ({"pad": "no"}, "pad"),  # a truthy string: padding was on
    ({"zero": "int8"}, "zero"),
    ({"layout": "bogus"}, "layout"),
], ids=lambda value: str(value))
def test_weight_format_fields_are_typed_exactly(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        WeightFormat(**{"name": "int4", **fields})  # type: ignore[arg-type]
    assert raised.value.field == named


def test_a_numpy_integer_group_size_is_an_int() -> None:
    fmt = WeightFormat("int4", np.int64(64))  # type: ignore[arg-type]
    assert type(fmt.group_size) is int and fmt == int4(64)
