"""int8 per output row (quant_core/quantize/int8.py) and its entries in nibble's file (issue 22)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant_core.errors import InvalidTensor, TensorFileError
from quant_core.quantize.int8 import INT8, dequantize_int8, quantize_int8
from quant_core.tensorio import (
    read_nibble_int8,
    read_nibble_safetensors,
    read_safetensors_header,
    write_nibble_safetensors,
)


def test_int8_keeps_every_weight_within_half_a_step_and_takes_its_format_bytes() -> None:
    weights = np.random.default_rng(0).standard_normal((300, 384)).astype(np.float32)
    weights[7] = 0.0  # an all-zero row gets scale 1 and codes 0
    q = quantize_int8(weights)
    back = dequantize_int8(q)
    scales = q.scales.astype(np.float32)[:, None]
    assert (np.abs(back - weights) <= scales * 0.5 * (1 + 2 ** -20)).all()
    assert (scales[:, 0] >= np.abs(weights).max(axis=1) / 127).all()  # rounded up: no weight clipped
    assert q.codes.nbytes + q.scales.nbytes == INT8.bytes_for(weights.shape) == 300 * 384 + 2 * 300
    assert (back[7] == 0).all()


def test_int8_refuses_what_is_not_a_2d_tensor() -> None:
    with pytest.raises(InvalidTensor, match="2-D"):
        quantize_int8(np.ones(8, np.float32))


def test_int8_tensors_round_trip_through_nibbles_file(tmp_path: Path) -> None:
    weights = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    path = tmp_path / "q.safetensors"
    write_nibble_safetensors(path, {}, {"bias": np.ones(16, np.float32)}, int8={"w": quantize_int8(weights)})
    header = read_safetensors_header(path)
    assert {name: entry.end - entry.begin for name, entry in header.entries.items() if name.startswith("w.")} == {
        "w.int8_codes": 16 * 64, "w.int8_scales": 2 * 16}
    back = read_nibble_int8(path)
    np.testing.assert_array_equal(dequantize_int8(back["w"]), dequantize_int8(quantize_int8(weights)))
    quantized, passthrough, _ = read_nibble_safetensors(path)
    assert quantized == {} and list(passthrough) == ["bias"]  # the int8 entries are not passthrough tensors


def test_a_named_int8_tensor_without_its_entries_is_refused(tmp_path: Path) -> None:
    from quant_core.tensorio import write_safetensors

    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"w.int8_codes": np.ones((2, 4), np.int8)},
                      {"nibble.format": "nibble-int4/1", "nibble.tensors": "{}", "nibble.int8": '["w"]'})
    with pytest.raises(TensorFileError, match="lacks"):
        read_nibble_int8(path)

