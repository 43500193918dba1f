"""Answers remembered by the identity of the objects they were computed from.

A plan asks the same questions of the same model spec and weight scheme many times (each layout it weighs, each
solver step), and a catalog preset or a cached policy scheme comes back as the very same object request after
request.  Hashing such an object walks every field, so the planner and the engine model key their memos by ``id``
instead.  An id is unique only among live objects: each entry therefore holds the objects it was computed from, so
while it exists no other object can take their ids, and an id in a key names the very object asked about.  The memo
empties when full, which bounds it without bookkeeping.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    """At most `capacity` answers, each keyed by the identity of some objects and by some hashable values (None is
    never an answer: `get` means "not known" by it)."""

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: dict[tuple[Hashable, ...], tuple[tuple[object, ...], T]] = {}

    def get(self, objects: tuple[object, ...], values: Hashable) -> T | None:
        """The answer remembered for `objects` (by identity) and `values` (by equality), or None."""
        found = self._entries.get((values, id(objects[0])) if len(objects) == 1 else (values, *map(id, objects)))
        return None if found is None else found[1]

    def put(self, objects: tuple[object, ...], values: Hashable, answer: T) -> T:
        """Remember `answer` for `objects` and `values`, and return it."""
        if len(self._entries) >= self._capacity:
            self._entries.clear()
        key = (values, id(objects[0])) if len(objects) == 1 else (values, *map(id, objects))
        self._entries[key] = (objects, answer)
        return answer

    def clear(self) -> None:
        """Forget every answer."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

