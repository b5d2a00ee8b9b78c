"""attrs converters for config fields that several configs share.

Each factory takes the owning class's name so the error names the right ``Owner.field``. The
converters run on construction and on assignment (configs use ``on_setattr=[convert, validate, ...]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._checks import as_float, as_int, boolean, check_in, check_range, field_error, positive_int
from ..schedules import PruningScheduler, scheduler_from_dict

__all__ = [
    "boolean", "dim", "fraction", "n_m_ratio", "one_of", "param_name", "positive_int", "revalidate_with", "scheduler",
]


def scheduler(owner: str) -> Callable[[Any], PruningScheduler]:
    """A `PruningScheduler`, or a dict describing one (see `scheduler_from_dict`)."""

    def convert(value: Any) -> PruningScheduler:
        if isinstance(value, Mapping):
            return scheduler_from_dict(value)
        if not isinstance(value, PruningScheduler):
            raise field_error(
                owner, "scheduler", value, "expected a PruningScheduler (or a dict describing one)", TypeError
            )
        return value

    return convert


def fraction(owner: str, field: str) -> Callable[[Any], float]:
    """A number in ``[0, 1]`` (ints accepted, bools and non-finite values refused)."""

    def convert(value: Any) -> float:
        value = as_float(owner, field, value)
        check_range(owner, field, value, 0.0, 1.0)
        return value

    return convert


def n_m_ratio(owner: str) -> Callable[[Any], tuple[int, int] | None]:
    """``None`` or ``(n, m)`` with ``1 <= n < m``, where ``n`` counts the ZEROS in every ``m``."""

    def convert(value: Any) -> tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, str):
            raise field_error(
                owner, "n_m_ratio", value,
                "expected a pair (n, m) with n = number of zeros; convert 'N:M' strings with "
                "sparsify.patterns.n_m_from_string", TypeError,
            )
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise field_error(owner, "n_m_ratio", value, "expected None or a pair (n, m) of integers", TypeError)
        n, m = (as_int(owner, "n_m_ratio", v) for v in value)
        if not 1 <= n < m:
            raise field_error(
                owner, "n_m_ratio", value,
                "allowed 1 <= n < m, where n is the number of ZEROS in every run of m weights "
                "(e.g. (2, 4) prunes 2 of every 4 = 50 %)",
            )
        return (n, m)

    return convert


def dim(owner: str) -> Callable[[Any], int]:
    """The n:m axis: ``0`` (output channels) or ``1`` (input channels)."""

    def convert(value: Any) -> int:
        value = as_int(owner, "dim", value)
        check_in(owner, "dim", value, (0, 1))
        return value

    return convert


def param_name(owner: str) -> Callable[[Any], str]:
    """The name of the parameter to prune (a Python identifier such as ``"weight"``)."""

    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value.isidentifier():
            raise field_error(owner, "param_name", value, "expected the name of a parameter, e.g. 'weight'", TypeError)
        return value

    return convert


def one_of(owner: str, field: str, allowed: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A value from ``allowed`` exactly."""

    def convert(value: Any) -> Any:
        check_in(owner, field, value, allowed)
        return value

    return convert


def revalidate_with(check: Callable[[Mapping[str, Any]], None]) -> Callable[[Any, attrs.Attribute, Any], Any]:
    """An attrs ``on_setattr`` hook that re-runs a config's cross-field ``check`` with the new value
    in place, so an assignment that would make the config inconsistent is refused (and not applied)."""

    def hook(instance: Any, attribute: attrs.Attribute, value: Any) -> Any:
        values = {a.name: getattr(instance, a.name) for a in attrs.fields(type(instance))}
        values[attribute.name] = value
        check(values)
        return value

    return hook
