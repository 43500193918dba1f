"""`transposed` and `transpose_into` give exactly ``a.T``, for any shape, dtype and memory layout."""

from __future__ import annotations

import numpy as np
import pytest

from quant_core.quantize._transpose import BLOCK_ROWS, transpose_into, transposed


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int32])
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (1, 300), (300, 1), (BLOCK_ROWS, 7), (BLOCK_ROWS + 1, 130),
                                   (257, 1024), (1000, 96)])
def test_transposed_is_a_contiguous_copy_of_the_transpose(dtype: type, shape: tuple[int, int]) -> None:
    source = (np.random.default_rng(sum(shape)).standard_normal(shape) * 100).astype(dtype)
    result = transposed(source)
    assert result.flags.c_contiguous and result.dtype == source.dtype
    np.testing.assert_array_equal(result, source.T)
    assert not np.shares_memory(result, source)


def test_sources_that_are_not_c_contiguous_transpose_alike() -> None:
    base = np.random.default_rng(1).standard_normal((300, 512)).astype(np.float32)
    fortran = np.asfortranarray(base)
    column_slice = base[:, 128:256]
    gathered = base[:, np.random.default_rng(2).permutation(512)]  # as act-order's rows[:, permutation]
    for source in (fortran, column_slice, gathered, base[::2, ::3]):
        np.testing.assert_array_equal(transposed(source), source.T)


def test_transpose_into_writes_a_slice_of_a_larger_array_and_nothing_else() -> None:
    source = np.arange(200 * 70, dtype=np.uint8).reshape(200, 70)
    target = np.full((100, 70, 200), 7, dtype=np.uint8)[5]  # a view, inside a larger buffer
    whole = np.full((300, 200), 9, dtype=np.uint8)
    transpose_into(source, whole[30:100])
    transpose_into(source, target)
    np.testing.assert_array_equal(whole[30:100], source.T)
    assert (whole[:30] == 9).all() and (whole[100:] == 9).all()
    np.testing.assert_array_equal(target, source.T)


def test_a_target_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cannot transpose \(3, 4\) into \(3, 4\)"):
        transpose_into(np.zeros((3, 4)), np.zeros((3, 4)))
