"""Typed exceptions of the core, each carrying the values that caused it.

`app/problems.py` maps every class here to an HTTP status once; the core never
thinks about HTTP.  Every error has a `field` (dotted path of the offending
input, or "" when it is not about one field) and a human `detail`.
"""

from __future__ import annotations

from collections.abc import Sequence


class NibbleError(Exception):
    """Base class of every error nibble's core raises on bad input."""

    def __init__(self, detail: str, *, field: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidSpec(NibbleError):
    """A model, hardware or workload value is missing, zero, negative or inconsistent."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}", field=field)
        self.value = value
        self.reason = reason


class MissingConfigKey(InvalidSpec):
    """A config.json lacks a key the model family needs."""

    def __init__(self, key: str, model_type: str) -> None:
        super().__init__(key, None, f"required by model_type {model_type!r} but missing")
        self.key = key
        self.model_type = model_type


class UnsupportedArchitecture(NibbleError):
    """A config.json whose model_type nibble cannot read, with what it would need."""

    def __init__(self, model_type: str, known: Sequence[str], missing: Sequence[str] = (), reason: str = "") -> None:
        need = f"; a generic decoder needs {', '.join(missing)}" if missing else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"model_type {model_type!r} is not supported{need}{why}; known types: {', '.join(known)}",
            field="model_type",
        )
        self.model_type = model_type
        self.known = list(known)
        self.missing = list(missing)


class UnknownName(NibbleError):
    """A preset, device, method or dtype id that is not in its catalog; lists close names."""

    def __init__(self, kind: str, name: str, close: Sequence[str], field: str = "",
                 known: Sequence[str] = ()) -> None:
        if close:
            hint = f"; did you mean {', '.join(close)}?"
        elif known:  # nothing is close: the whole catalog is the list to choose from
            close = sorted(known)
            hint = f"; none is close; the {len(close)} known: {', '.join(close)}"
        else:
            hint = ""
        super().__init__(f"unknown {kind} {name!r}{hint}", field=field or kind)
        self.kind = kind
        self.name = name
        self.close = list(close)


class GroupSizeMismatch(NibbleError):
    """A tensor's input dimension does not divide by the group size (and padding was not asked)."""

    def __init__(self, in_features: int, group_size: int, field: str = "group_size", tensor: str = "",
                 dividing: Sequence[int] | None = None, hint: str | None = None) -> None:
        where = f"tensor {tensor}: " if tensor else ""
        if hint is None:  # the caller's own hint names the choices its request has
            hint = "; choose a group size that divides it, or ask for padding" if tensor else ""
        if dividing is not None:
            sizes = ", ".join(map(str, dividing)) if dividing else "none of 32, 64, 128, 256"
            hint = f"; group sizes that divide every quantized tensor of this model: {sizes} (or null, a whole " \
                   "row); or ask for padding (pad: true, beside group_size)"
        super().__init__(
            f"{where}in_features {in_features} is not a multiple of group_size {group_size}{hint}", field=field
        )
        self.in_features = in_features
        self.group_size = group_size
        self.tensor = tensor


class InvalidTensor(NibbleError):
    """A tensor nibble cannot quantize: wrong rank or dtype, or NaN/Inf values."""

    def __init__(self, detail: str, *, field: str = "", name: str = "") -> None:
        super().__init__(detail, field=field)
        self.name = name


class NonFiniteValues(InvalidTensor):
    """A tensor holds NaN or Inf: how many, and the index of the first."""

    def __init__(self, count: int, first_index: tuple[int, ...], name: str = "") -> None:
        where = f" in tensor {name!r}" if name else ""
        super().__init__(
            f"{count} NaN/Inf value(s){where}; first at index {list(first_index)}",
            field="file",
            name=name,
        )
        self.count = count
        self.first_index = first_index


class CalibrationError(NibbleError):
    """Calibration activations that do not fit the weights (shape, rows, values)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, field="calibration")


class TensorFileError(NibbleError):
    """A .npy or .safetensors file nibble refuses to read: corrupt, hostile or unsupported."""

    def __init__(self, detail: str, *, field: str = "file") -> None:
        super().__init__(detail, field=field)


class LimitExceeded(NibbleError):
    """An input over a configured limit; names the limit and the value."""

    def __init__(self, limit: str, value: int, maximum: int, field: str = "") -> None:
        super().__init__(f"{limit} is {value}, over the limit of {maximum}", field=field or limit)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class ImportanceMismatch(NibbleError):
    """Importance statistics that do not fit a tensor: wrong width, negative, non-finite or all zero."""

    def __init__(self, tensor: str, detail: str, *, expected: int | None = None, got: int | None = None) -> None:
        where = f"tensor {tensor!r}: " if tensor else ""
        super().__init__(f"importance statistics for {where}{detail}", field="importance")
        self.tensor = tensor
        self.expected = expected
        self.got = got


class BudgetTooSmall(NibbleError):
    """The budget is below the smallest bytes the allowed formats can reach."""

    def __init__(self, budget_bytes: int, minimum_bytes: int, field: str = "budget_bytes") -> None:
        super().__init__(f"a budget of {budget_bytes} bytes is below the {minimum_bytes} bytes the smallest allowed "
                         "formats take for these tensors", field=field)
        self.budget_bytes = budget_bytes
        self.minimum_bytes = minimum_bytes
