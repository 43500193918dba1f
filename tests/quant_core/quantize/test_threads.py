"""`quantize` in parallel threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from quant_core.errors import InvalidSpec, NonFiniteValues
from quant_core.formats import int4
from quant_core.quantize import api, quantize


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    # 2 Mi elements: the smallest tensor quantize splits across threads
    return np.random.default_rng(7).standard_normal((512, 4096)).astype(np.float32)


@pytest.mark.parametrize("method", ["rtn", "clip"])
def test_thread_count_changes_neither_codes_nor_figures(weights: np.ndarray, method: str) -> None:
    one = quantize(weights, int4(128), method, threads=1)
    for threads in (2, 3):
        other = quantize(weights, int4(128), method, threads=threads)
        assert np.array_equal(one.packed, other.packed)
        assert np.array_equal(one.scales, other.scales) and np.array_equal(one.zeros, other.zeros)
        assert one.quality == other.quality


def test_a_thread_held_up_leaves_its_share_of_chunks_to_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # 16 chunks of 256 rows; the first chunk a thread reads holds it up for 0.5 s (a descheduled core)
    weights = np.random.default_rng(8).standard_normal((4096, 4096)).astype(np.float32)
    chunks_by_thread: dict[str, int] = {}
    held: set[str] = set()
    lock = threading.Lock()
    read = api._ChunkReader.read

    def slow_first_read(reader: Any, start: int, stop: int) -> Any:
        name = threading.current_thread().name
        with lock:
            chunks_by_thread[name] = chunks_by_thread.get(name, 0) + 1
            hold = not held
            held.add(name)
        if hold:
            time.sleep(0.5)
        return read(reader, start, stop)

    reference = quantize(weights, int4(128), "rtn", threads=1)
    monkeypatch.setattr(api._ChunkReader, "read", slow_first_read)
    q = quantize(weights, int4(128), "rtn", threads=2)
    assert sum(chunks_by_thread.values()) == 16
    assert max(chunks_by_thread.values()) >= 12  # dealt round-robin, each would take 8 whatever the delay
    assert np.array_equal(q.packed, reference.packed) and q.quality == reference.quality


def test_non_finite_values_are_counted_over_the_whole_tensor_in_parallel(weights: np.ndarray) -> None:
    broken = weights.copy()
    broken[3, 5] = np.nan
    broken[400, 7] = np.inf
    with pytest.raises(NonFiniteValues) as info:
        quantize(broken, int4(128), "rtn", threads=2, name="w")
    assert info.value.count == 2 and info.value.first_index == (3, 5)


def test_fewer_than_one_thread_is_refused(weights: np.ndarray) -> None:
    with pytest.raises(InvalidSpec) as info:
        quantize(weights, int4(128), "rtn", threads=0)
    assert info.value.field == "threads"
