"""Format arithmetic: the exact bytes of a tensor in each weight format and KV dtype."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.errors import GroupSizeMismatch, InvalidSpec, UnknownName
from quant_core.formats import StoredTensor, WeightFormat, float_format, gptq_checkpoint, int4, int8_gptq, kv_dtype

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


# what the engines' loaders allocate per quantized [out, in] weight (vLLM 0.11.0: gptq.py GPTQLinearMethod, awq.py
# AWQLinearMethod, compressed_tensors_wNa16.py CompressedTensorsWNA16 .create_weights), here [11008, 4096] at g128
DOWN = (11008, 4096)
GPTQ_TENSORS = (StoredTensor("qweight", "I32", (512, 11008)), StoredTensor("qzeros", "I32", (32, 1376)),
                StoredTensor("scales", "F16", (32, 11008)), StoredTensor("g_idx", "I32", (4096,)))
AWQ_TENSORS = (StoredTensor("qweight", "I32", (4096, 1376)), StoredTensor("qzeros", "I32", (32, 1376)),
               StoredTensor("scales", "F16", (32, 11008)))
CT_TENSORS = (StoredTensor("weight_packed", "I32", (11008, 512)), StoredTensor("weight_scale", "F16", (11008, 32)),
              StoredTensor("weight_shape", "I64", (2,)))


@pytest.mark.parametrize(("fmt", "tensors"), [
    (int4(128, layout="gptq"), GPTQ_TENSORS),
    (int4(128, symmetric=True, layout="gptq"), GPTQ_TENSORS),  # qzeros whatever sym says (all 8)
    (int4(128, layout="awq"), AWQ_TENSORS),
    (int4(128, symmetric=True, layout="awq"), AWQ_TENSORS),  # AWQ is asymmetric: zeros of 8 are stored
    (int4(128, layout="compressed-tensors"),
     (*CT_TENSORS, StoredTensor("weight_zero_point", "I32", (1376, 32)))),
    (int4(128, symmetric=True, layout="compressed-tensors"), CT_TENSORS),  # no zero point when symmetric
    (int8_gptq(128), (StoredTensor("qweight", "I32", (1024, 11008)), StoredTensor("qzeros", "I32", (32, 2752)),
                      StoredTensor("scales", "F16", (32, 11008)), StoredTensor("g_idx", "I32", (4096,)))),
], ids=lambda v: v.label() if isinstance(v, WeightFormat) else "")
def test_a_checkpoint_layout_lists_the_tensors_its_file_holds_and_counts_their_bytes(
        fmt: WeightFormat, tensors: tuple[StoredTensor, ...]) -> None:
    assert fmt.checkpoint_tensors(DOWN) == tensors
    assert fmt.bytes_for(DOWN) == sum(tensor.nbytes for tensor in tensors)


def test_a_symmetric_gptq_file_holds_qzeros_that_nibbles_payload_leaves_out() -> None:
    symmetric = int4(128, symmetric=True, layout="gptq")
    qzeros = 4 * 32 * (11008 // 8)
    assert symmetric.bytes_for(DOWN) == int4(128, layout="gptq").bytes_for(DOWN) == gptq_checkpoint(128).bytes_for(DOWN)
    assert symmetric.payload_bytes_for(DOWN) == symmetric.bytes_for(DOWN) - qzeros
    assert symmetric.payload_sections(DOWN) == (11008 * 4096 // 2, 2 * 11008 * 32, 0, 4 * 4096)
    assert gptq_checkpoint(128, symmetric=True) == symmetric  # one format, whichever way it was made


@pytest.mark.parametrize("fmt", [int4(128), int4(64, symmetric=True), int4(128, zero="fp16"), int4(None),
                                 int4(32, pad=True), int4(128, layout="gptq"), int4(128, layout="awq")],
                         ids=lambda f: f.label())
def test_where_the_file_stores_nothing_more_its_bytes_are_the_payloads(fmt: WeightFormat) -> None:
    assert fmt.bytes_for(DOWN) == fmt.payload_bytes_for(DOWN) == sum(fmt.payload_sections(DOWN))


def test_the_other_symmetric_checkpoint_layouts_store_more_than_the_payload_as_their_files_do() -> None:
    awq = int4(128, symmetric=True, layout="awq")
    assert awq.bytes_for(DOWN) == awq.payload_bytes_for(DOWN) + 4 * 32 * (11008 // 8)  # the zeros of 8
    ct = int4(128, symmetric=True, layout="compressed-tensors")
    assert ct.bytes_for(DOWN) == ct.payload_bytes_for(DOWN) + 16  # weight_shape, int64 [2]


def test_only_a_checkpoint_layout_lists_file_tensors_and_none_stores_fp16_zeros() -> None:
    with pytest.raises(InvalidSpec, match="payload"):
        int4(128).checkpoint_tensors(DOWN)
    for layout in ("gptq", "awq", "compressed-tensors"):
        with pytest.raises(InvalidSpec, match="packed") as caught:
            int4(128, zero="fp16", layout=layout).bytes_for(DOWN)  # type: ignore[arg-type]
        assert caught.value.field == "zero"
    # nibble's own payload in the gptq layout may hold them (act-order with fp16 zeros): it is not a GPTQ file
    assert int4(128, zero="fp16", layout="gptq").payload_bytes_for(DOWN) == int4(128, zero="fp16").bytes_for(DOWN) \
        + 4 * 4096


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
