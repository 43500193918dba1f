"""IdentityMemo: answers by the identity of objects and the equality of values, bounded, never crossed by id reuse."""

from __future__ import annotations

import gc

from quant_core.identity_memo import IdentityMemo


class Equal:
    """Equal to every other instance: only identity tells two apart."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Equal)

    def __hash__(self) -> int:
        return 0


def answer(memo: IdentityMemo[str], objects: tuple[object, ...], values: tuple[object, ...], computed: str) -> str:
    """What a caller does: the remembered answer, else `computed` remembered."""
    found = memo.get(objects, values)
    return found if found is not None else memo.put(objects, values, computed)


def test_the_same_objects_and_values_are_answered_from_memory() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    spec, scheme = Equal(), Equal()
    assert memo.get((spec,), ("bf16", 16)) is None
    assert answer(memo, (spec,), ("bf16", 16), "first") == "first"
    assert answer(memo, (spec,), ("bf16", 16), "again") == "first"
    assert answer(memo, (spec, scheme), ("bf16",), "two") == answer(memo, (spec, scheme), ("bf16",), "x") == "two"
    assert len(memo) == 2


def test_an_equal_but_other_object_or_other_values_are_computed_anew() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    first, second = Equal(), Equal()
    assert answer(memo, (first,), ("bf16",), "first") == "first"
    assert answer(memo, (second,), ("bf16",), "second") == "second"
    assert answer(memo, (first,), ("fp8",), "fp8") == "fp8"
    assert answer(memo, (first, second), ("bf16",), "pair") == "pair"
    assert answer(memo, (second, first), ("bf16",), "swapped") == "swapped"
    assert answer(memo, (first,), ("bf16",), "recomputed") == "first"


def test_an_entry_keeps_its_objects_alive_so_their_ids_cannot_be_reused() -> None:
    memo: IdentityMemo[str] = IdentityMemo(8)
    spec = Equal()
    memo.put((spec,), (), "held")
    ident = id(spec)
    del spec
    gc.collect()
    fresh = [Equal() for _ in range(1000)]  # none can take the held object's id while the entry lives
    assert all(id(obj) != ident for obj in fresh)


def test_past_its_capacity_it_forgets_everything_and_answers_anew() -> None:
    memo: IdentityMemo[str] = IdentityMemo(2)
    objects = [Equal() for _ in range(3)]
    for index, obj in enumerate(objects):
        memo.put((obj,), (), str(index))
    assert len(memo) == 1  # emptied when the third came
    assert memo.get((objects[0],), ()) is None and memo.get((objects[2],), ()) == "2"
    memo.clear()
    assert len(memo) == 0
