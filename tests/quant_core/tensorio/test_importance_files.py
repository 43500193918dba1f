"""Importance statistics files: llama.cpp's GGUF imatrix and legacy .dat, and safetensors vectors (issue 22).

The GGUF layout written here is the one llama.cpp's tools/imatrix/imatrix.cpp
``save_imatrix`` writes: ``<name>.in_sum2`` (ggml shape [in_features, n_mat],
sums of x²), ``<name>.counts`` ([1, n_mat]) and ``<name>.in_sum``, plus
``general.type = "imatrix"``; the legacy .dat is ``save_imatrix_legacy``'s.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from quant_core.errors import LimitExceeded, TensorFileError
from quant_core.tensorio import read_importance, write_importance_dat, write_safetensors
from quant_core.tensorio.importance import MAX_GGUF_METADATA_VALUES


def _write_gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    writer = gguf.GGUFWriter(path, arch="imatrix")  # the arch key is not read
    writer.add_string("general.type", "imatrix")
    writer.add_uint32("imatrix.chunk_count", 3)
    for name, (in_sum2, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", in_sum2.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(-1, 1))
        writer.add_tensor(f"{name}.in_sum", np.zeros_like(in_sum2, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_imatrix_gives_the_mean_of_x_squared(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    sums = np.array([[10.0, 20.0, 40.0, 0.0]])  # one matrix, 4 columns, 5 activation rows
    experts = np.array([[2.0, 4.0], [6.0, 0.0]])  # two experts of 2 columns, 1 and 3 rows
    _write_gguf_imatrix(path, {"blk.0.ffn_up.weight": (sums, np.array([5.0])),
                               "blk.0.ffn_up_exps.weight": (experts, np.array([1.0, 3.0]))})
    vectors = read_importance(path)
    np.testing.assert_array_equal(vectors["blk.0.ffn_up.weight"], [2.0, 4.0, 8.0, 0.0])
    # several matrices: Σ in_sum2 / Σ counts = [8, 4] / 4
    np.testing.assert_array_equal(vectors["blk.0.ffn_up_exps.weight"], [2.0, 1.0])
    assert vectors["blk.0.ffn_up.weight"].dtype == np.float32


def test_legacy_dat_imatrix_is_read_as_written_by_llama_cpp(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    values = np.array([0.5, 1.5, 3.0], dtype=np.float32)
    name = b"blk.1.attn_q.weight"
    # n_entries, then len, name, ncall, nval, values; then the chunk count and the dataset name
    path.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 4, 3)
                     + values.tobytes() + struct.pack("<i", 4) + struct.pack("<i", 8) + b"wiki.txt")
    np.testing.assert_array_equal(read_importance(path)["blk.1.attn_q.weight"], values)


def test_write_importance_dat_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "stats.dat"
    vectors = {"a.weight": np.array([1.0, 2.0], np.float32), "b.weight": np.array([3.0], np.float32)}
    write_importance_dat(path, vectors)
    back = read_importance(path)
    assert list(back) == ["a.weight", "b.weight"]
    np.testing.assert_array_equal(back["a.weight"], vectors["a.weight"])


def test_safetensors_vectors_are_read_by_name(tmp_path: Path) -> None:
    path = tmp_path / "stats.safetensors"
    write_safetensors(path, {"model.layers.0.mlp.up_proj.weight": np.array([1.0, 0.25], np.float32)})
    np.testing.assert_array_equal(read_importance(path)["model.layers.0.mlp.up_proj.weight"], [1.0, 0.25])


def test_safetensors_that_are_not_float32_vectors_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "stats.safetensors"
    write_safetensors(path, {"w": np.ones((2, 2), np.float32)})
    with pytest.raises(TensorFileError, match="'w'") as error:
        read_importance(path)
    assert error.value.field == "importance"


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00\x00\x05\x00\x00\x00ab", b"\x00\x00\x00\x00",
                                  b"GGUF\x03\x00\x00\x00garbage"])
def test_truncated_or_foreign_files_are_refused_as_importance(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "stats.bin"
    path.write_bytes(data)
    with pytest.raises(TensorFileError) as error:
        read_importance(path)
    assert error.value.field == "importance"


@pytest.mark.parametrize(("sums", "counts", "says"), [
    # in_sum2 is [in_features, n_mat] in ggml order (imatrix.cpp save_imatrix): one row of 4 columns with two
    # counts was read as two matrices of 2 columns, [5, 2]
    (np.array([[10.0, 20.0, 40.0, 0.0]]), np.array([5.0, 5.0]), "1 matrices for 2 counts"),
    (np.ones((2, 2, 4)), np.ones(4), "3 dimensions"),
    # a count is a number of activation rows: [5, -4] summed to 1, and the sums were divided by it
    (np.array([[10.0, 20.0], [4.0, 4.0]]), np.array([5.0, -4.0]), "counts must be finite and non-negative"),
    (np.array([[10.0, 20.0]]), np.array([np.nan]), "counts must be finite and non-negative"),
])
def test_a_gguf_imatrix_whose_counts_or_shape_lie_is_refused_naming_the_tensor(
        tmp_path: Path, sums: np.ndarray, counts: np.ndarray, says: str) -> None:
    path = tmp_path / "imatrix.gguf"
    _write_gguf_imatrix(path, {"blk.0.ffn_up.weight": (sums, counts)})
    with pytest.raises(TensorFileError, match=says) as error:
        read_importance(path)
    assert "blk.0.ffn_up.weight" in error.value.detail and error.value.field == "importance"


def test_a_gguf_imatrix_statistic_stored_other_than_f32_is_refused_not_skipped(tmp_path: Path) -> None:
    # imatrix.cpp writes in_sum2 and counts as F32; an F16 in_sum2 was skipped without a word, and its tensor
    # quantized unweighted while the other tensors used their statistics
    path = tmp_path / "imatrix.gguf"
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.add_tensor("a.weight.in_sum2", np.ones((1, 4), np.float32))
    writer.add_tensor("a.weight.counts", np.ones((1, 1), np.float32))
    writer.add_tensor("b.weight.in_sum2", np.ones((1, 4), np.float16))
    writer.add_tensor("b.weight.counts", np.ones((1, 1), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TensorFileError, match="F16") as error:
        read_importance(path)
    assert "b.weight.in_sum2" in error.value.detail


def _gguf_with_metadata_array(items: int) -> bytes:
    """A GGUF header of no tensor whose one metadata value is an array of `items` empty strings."""
    key = b"imatrix.datasets"
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, 8, items) + struct.pack("<Q", 0) * items)


def test_a_gguf_imatrix_of_endless_metadata_is_refused_before_gguf_py_parses_it(tmp_path: Path) -> None:
    # the fuzzing hunt of session 18: gguf-py builds objects for every metadata value before anything can be
    # checked, ~50 us each; an 8 MB array of 10^6 empty strings held a pool worker 54 s, then "no statistics"
    path = tmp_path / "imatrix.gguf"
    path.write_bytes(_gguf_with_metadata_array(MAX_GGUF_METADATA_VALUES))
    with pytest.raises(LimitExceeded) as caught:
        read_importance(path)
    assert caught.value.field == "importance" and caught.value.limit == "gguf metadata values"


def test_a_gguf_imatrix_with_more_tensor_records_than_allowed_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 31, 0))
    with pytest.raises(LimitExceeded) as caught:
        read_importance(path, max_tensors=10)  # three statistics a tensor: 30 records at most
    assert caught.value.field == "importance" and caught.value.maximum == 30


def test_a_gguf_imatrix_header_past_the_header_limit_is_refused_as_such(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    path.write_bytes(_gguf_with_metadata_array(100) + b"\0" * 100)
    with pytest.raises(LimitExceeded) as caught:
        read_importance(path, max_header_bytes=64)
    assert caught.value.field == "importance" and caught.value.maximum == 64


def test_a_json_file_given_as_importance_is_not_an_imatrix_rather_than_a_limit_passed(tmp_path: Path) -> None:
    # a config.json's first four bytes, '{\n  ', read as a legacy .dat entry count are 538,970,747: it was
    # answered as "importance tensors 538970747" past the limit (413), for a file that cannot hold them at all
    path = tmp_path / "config.json"
    path.write_text('{\n  "architectures": ["LlamaForCausalLM"],\n  "hidden_size": 4096\n}\n')
    with pytest.raises(TensorFileError, match=r"538970747 entries.*not an imatrix file") as error:
        read_importance(path)
    assert error.value.field == "importance"
