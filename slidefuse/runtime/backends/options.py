"""Backend options as frozen dataclasses that check themselves.

Each backend declares `options_type`, a subclass of `BackendOptions` whose fields are the option keys it takes.
`BackendOptions.parse(backend, raw)` turns the keyword options given to `open_backend` into an instance: an
unknown key is a UsageError listing the valid ones, a value of the wrong type (checked against the field's
annotation: bool, int, float, str, Literal, unions of those and None; numpy scalars count as numbers, bools do
not, and a float must be finite) or out of range is a UsageError naming the
option, the value and what is expected. A key given as None means "the default".
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from slidefuse.errors import UsageError
from slidefuse.numbers import is_integer, is_number

OptionsT = TypeVar("OptionsT", bound="BackendOptions")


def _describe(hint: Any) -> str:
    """'an integer', 'true or false', 'one of fp32, fp16', ... for an option's annotation."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(hint, str(hint))


def _matches(value: object, hint: Any) -> bool:
    """Whether `value` is of the option type `hint` (bool is not an int here; an int is a float)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int:
        return is_integer(value)
    if hint is float:
        return is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
    raise TypeError(f"option annotation {hint!r} is not supported by BackendOptions")


def _only_literal(hint: Any) -> tuple[object, ...] | None:
    """The choices of `Literal[...]` or `Literal[...] | None`, else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(parts) == 1 and typing.get_origin(parts[0]) is Literal:
            return typing.get_args(parts[0])
    return None


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Options of a backend that takes none. Subclasses add one field per option key, with a comment each."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if _matches(value, hint):
                if is_number(value) and type(value) not in (int, float):  # numpy scalars as Python numbers
                    value = value.item()  # type: ignore[attr-defined]
                object.__setattr__(self, f.name, float(value) if isinstance(value, int) and hint is float else value)
                continue
            choices = _only_literal(hint)
            if choices is not None:
                raise UsageError(f"{f.name} {value!r} is not offered; choose one of "
                                 f"{', '.join(str(c) for c in choices)}")
            raise UsageError(f"option {f.name}={value!r}: expected {_describe(hint)}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option keys this class takes, sorted."""
        return tuple(sorted(f.name for f in dataclasses.fields(cls)))

    @classmethod
    def parse(cls: type[OptionsT], backend: str, raw: Mapping[str, Any]) -> OptionsT:
        """Options of backend `backend` from keyword options; UsageError (one line, naming the backend) for an
        unknown key, listing the valid ones, or for a bad value."""
        valid = cls.keys()
        for key in raw:
            if key not in valid:
                raise UsageError(f"backend {backend}: unknown option '{key}'; valid options: "
                                 f"{', '.join(valid) or '(none)'}")
        try:
            return cls(**{k: v for k, v in raw.items() if v is not None})
        except UsageError as exc:
            raise UsageError(f"backend {backend}: {exc}") from None

    def at_least(self, name: str, minimum: int | float) -> None:
        """Raise UsageError unless option `name` is None or >= `minimum`."""
        value = getattr(self, name)
        if value is not None and value < minimum:
            raise UsageError(f"option {name}={value!r}: expected a value >= {minimum}")
