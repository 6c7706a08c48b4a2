"""Argument checks for constructors and operators, with one message shape for every owner:

    ``<Owner>: <name> must be <rule>[ (<meaning>)], got <value>``

e.g. ``DyNet: degree must be an integer >= 0, got -1`` or ``VideoPrediction: lr_decay must be a number in
(0, 1] (the factor applied every lr_decay_every epochs or steps; 1 = constant), got 1.5``. Each check raises
``ValueError`` (what a config error becomes in ``dfn.config_errors``) and returns the value it accepted.
Booleans are never numbers here: ``True`` is not a kernel size.
"""

from __future__ import annotations

from typing import Any, Sequence


def fail(owner: str, name: str, rule: str, value: Any, *, meaning: str = "", shown: str | None = None) -> ValueError:
    """The ValueError of the shared shape (to ``raise``); `shown` replaces ``repr(value)`` (e.g. a shape)."""
    why = f" ({meaning})" if meaning else ""
    return ValueError(f"{owner}: {name} must be {rule}{why}, got {value!r}" if shown is None
                      else f"{owner}: {name} must be {rule}{why}, got {shown}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, *, minimum: int = 1, maximum: int | None = None,
              optional: bool = False, meaning: str = "") -> int | None:
    """`value` as an int >= `minimum` (and <= `maximum` when given; None too when `optional`), else the
    shared ValueError."""
    if optional and value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        rule = f"{'None or ' if optional else ''}an integer {bound}"
        raise fail(owner, name, rule, value, meaning=meaning)
    return value


def check_odd(owner: str, name: str, value: Any, *, meaning: str = "") -> int:
    """`value` as a positive odd int (a window with a centre pixel: a kernel size), else the shared ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise fail(owner, name, "a positive odd integer", value, meaning=meaning)
    return value


def check_bool(owner: str, name: str, value: Any, *, meaning: str = "") -> bool:
    """`value` if it is True or False (not 0 or 1: a config's ``1`` is a typo for ``true`` here), else the
    shared ValueError."""
    if not isinstance(value, bool):
        raise fail(owner, name, "true or false", value, meaning=meaning)
    return value


def interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The allowed range in words: ``> 0``, ``<= 1``, ``in (0, 1]``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 meaning: str = "") -> float | None:
    """`value` as a number in the interval given by `low`/`high` (open ends with `low_open`/`high_open`;
    None when `optional`), else the shared ValueError. NaN is never in range."""
    if optional and value is None:
        return None
    inside = _is_number(value) and value == value  # not NaN
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        rule = f"{'None or ' if optional else ''}a number {interval(low, high, low_open, high_open)}"
        raise fail(owner, name, rule, value, meaning=meaning)
    return value


def check_positive(owner: str, name: str, value: Any, *, maximum: float | None = None, optional: bool = False,
                   meaning: str = "") -> float | None:
    """`value` as a number > 0 (and <= `maximum` when given), else the shared ValueError."""
    return check_number(owner, name, value, low=0, high=maximum, low_open=True, optional=optional, meaning=meaning)


def check_choice(owner: str, name: str, value: Any, allowed: Sequence[Any], *, meaning: str = "") -> Any:
    """`value` if it is one of `allowed`, else the shared ValueError listing them."""
    if value not in tuple(allowed):
        raise fail(owner, name, f"one of {', '.join(map(repr, allowed))}", value, meaning=meaning)
    return value
