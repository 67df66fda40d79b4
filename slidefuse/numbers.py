"""Numeric option values, checked once: the one place that says what a number option accepts.

Numbers come from the command line (floats and ints), from Python (ints, floats and numpy scalars such as
`np.float32(2.0)`) and from JSON. A bool is never a number here (`mpp=True` is refused, not read as 1), nor is nan
or an infinity: each is refused with one line that names the field, the value and what is expected.
"""

from __future__ import annotations

import math
import numbers

from slidefuse.errors import UsageError


def is_number(value: object) -> bool:
    """True for an int, a float or a numpy integer or floating scalar; False for bools (numpy's too)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's bool is no numbers.Real


def is_integer(value: object) -> bool:
    """True for an int or a numpy integer scalar; False for bools and floats."""
    return isinstance(value, numbers.Integral) and is_number(value)


def finite_float(value: object, *, field: str, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, what: str | None = None,
                 error: type[UsageError] = UsageError) -> float:
    """`value` when it is a finite number within the bounds (`minimum` <= value <= `maximum`, value > `above`):
    a plain int or float as given, a numpy scalar as a float. Else `error` (a UsageError) naming `field`, the
    value and `what` was expected (default: "a finite number" and the bounds)."""
    ok = is_number(value) and math.isfinite(float(value))  # type: ignore[arg-type]
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if ok and ((minimum is not None and number < minimum) or (maximum is not None and number > maximum)
               or (above is not None and not number > above)):
        ok = False
    if not ok:
        expected = what or "a finite number" + _bounds(minimum, maximum, above)
        raise error(f"{field} must be {expected}, got {_show(value)}", field=field)
    return value if type(value) in (int, float) else number  # type: ignore[return-value]  # ints stay ints


def integer(value: object, *, field: str, minimum: int | None = None, what: str = "an integer") -> int:
    """`value` as an int when it is an integer (int or numpy integer, not a bool) >= `minimum`; else a
    UsageError naming `field`."""
    if not is_integer(value) or (minimum is not None and int(value) < minimum):  # type: ignore[call-overload]
        bound = f" >= {minimum}" if minimum is not None else ""
        raise UsageError(f"{field} must be {what}{bound}, got {_show(value)}", field=field)
    return int(value)  # type: ignore[call-overload]


def _bounds(minimum: float | None, maximum: float | None, above: float | None) -> str:
    parts = [f"> {above:g}"] if above is not None else []
    if minimum is not None and maximum is not None:
        return f" in {minimum:g}..{maximum:g}"
    parts += [f">= {minimum:g}"] if minimum is not None else []
    parts += [f"<= {maximum:g}"] if maximum is not None else []
    return (" (" + ", ".join(parts) + ")") if parts else ""


def _show(value: object) -> str:
    """The value as the user wrote it (numpy scalars as plain numbers), on one line and short."""
    text = repr(value.item()) if hasattr(value, "item") and is_number(value) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."
