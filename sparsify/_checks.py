"""Validation helpers shared by configs and schedulers.

Every message names the owner and field, the value received and what is allowed, so a bad config
fails when it is written rather than hours into training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "as_float",
    "as_int",
    "boolean",
    "check_flags",
    "check_in",
    "check_range",
    "field_error",
    "positive_int",
]


def field_error(owner: str, field: str, value: Any, allowed: str, exc: type[Exception] = ValueError) -> Exception:
    """Build the standard error: ``Owner.field=value is invalid: allowed ...``."""
    return exc(f"{owner}.{field}={value!r} is invalid: {allowed}.")


def as_float(owner: str, field: str, value: Any) -> float:
    """Accept ``int`` or ``float`` (not ``bool``) and return a finite ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise field_error(owner, field, value, f"expected a number, got {type(value).__name__}", TypeError)
    value = float(value)
    if not math.isfinite(value):
        raise field_error(owner, field, value, "expected a finite number")
    return value


def as_int(owner: str, field: str, value: Any) -> int:
    """Accept an ``int`` (or an integral float such as ``4.0``), never a ``bool``."""
    if isinstance(value, bool):
        raise field_error(owner, field, value, "expected an integer, got bool", TypeError)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int):
        raise field_error(owner, field, value, f"expected an integer, got {type(value).__name__}", TypeError)
    return value


def check_range(
    owner: str,
    field: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``low <= value <= high`` (bounds optional, optionally open)."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "" if low is None else f"{low} {'<' if low_open else '<='} "
        right = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise field_error(owner, field, value, f"allowed {left}{field}{right}")


def check_in(owner: str, field: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise field_error(owner, field, value, f"allowed values are {', '.join(map(repr, allowed))}")


def boolean(owner: str, field: str) -> Callable[[Any], bool]:
    """``True`` or ``False`` exactly (``1`` or ``"yes"`` are refused rather than guessed)."""

    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise field_error(owner, field, value, "expected True or False", TypeError)
        return value

    return convert


def check_flags(owner: str, **flags: Any) -> None:
    """Refuse any keyword argument of ``owner`` (a function) that is not ``True`` or ``False``: ``inplace="no"``
    is truthy, and guessing would prune the user's own model."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{owner}({name}={value!r}) is invalid: expected True or False, got {type(value).__name__}")


def positive_int(owner: str, field: str) -> Callable[[Any], int]:
    """An integer ``>= 1``."""

    def convert(value: Any) -> int:
        value = as_int(owner, field, value)
        check_range(owner, field, value, 1)
        return value

    return convert
