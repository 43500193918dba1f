"""Frozen, slotted dataclasses built without their ``__init__``'s cost.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its own ``__setattr__`` refuses),
a call per field; a plan builds one `planner.DevicePlan` of fifteen fields per device of each weight format, and the
engine's small records on every call.  `slot_constructor` makes the same objects with one attribute store a field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar, cast

_Frozen = TypeVar("_Frozen")


def slot_constructor(cls: type[_Frozen]) -> Callable[..., _Frozen]:
    """A constructor of `cls` (a frozen, slotted dataclass without ``__post_init__``) from all its fields, in order or
    by name, none left to its default: the same object as ``cls(...)``, without the dataclass ``__init__``'s
    ``object.__setattr__`` per field.  The object is made as a plain slotted twin of `cls` (the same slots in the
    same order, so the same memory layout, and no frozen ``__setattr__``), each field one attribute store, then made
    a `cls` by assigning its ``__class__``, which CPython allows between two such classes (and refuses, TypeError,
    between any others: one object is made here to check it)."""
    names = [item.name for item in fields(cast(Any, cls))]
    if hasattr(cls, "__post_init__") or list(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__} must be a slotted dataclass without __post_init__")
    twin = type(f"_{cls.__name__}Slots", (), {"__slots__": tuple(names)})
    scope: dict[str, Any] = {"twin": twin, "cls": cls}
    body = "".join(f"    made.{name} = {name}\n" for name in names)
    exec(f"def construct({', '.join(names)}):\n    made = twin()\n{body}    made.__class__ = cls\n    return made\n",
         scope)
    construct: Callable[..., _Frozen] = scope["construct"]
    construct(*names)  # the layouts must agree: TypeError here, at import, not in a plan
    return construct
