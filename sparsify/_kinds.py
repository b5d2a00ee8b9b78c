"""Building a registered spec (a criterion, a pattern) from its saved form: one rule for every registry.

A spec is saved as its ``kind`` alone (default settings) or as ``{"kind": kind, **fields}``; an instance is
taken as it is. Unknown kinds and keys are errors that name them and list what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import attrs

__all__ = ["build", "spec_from_dict"]

T = TypeVar("T")


def spec_from_dict(data: Any, registry: Mapping[str, type[T]], base: type, noun: str) -> T:
    """``data`` (a kind name, a dict with ``"kind"``, or a ``base`` instance) as an instance of the class
    ``registry`` files under its kind; ``noun`` ("criterion", "pattern") words the errors."""
    if isinstance(data, base):
        return cast(T, data)
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, Mapping):
        raise TypeError(f"{noun} must be a kind name, a dict or a {base.__name__}, got {type(data).__name__}: "
                        f"{data!r}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"{noun} kind={kind!r} is unknown: allowed kinds are {', '.join(sorted(registry))}")
    return build(cls, fields, f"{noun} {kind!r}")


def build(cls: type[T], fields: Mapping[str, Any], where: str) -> T:
    """``cls(**fields)`` for an attrs class, refusing keys it has no init field for (named, with the allowed ones:
    ``where`` says for what)."""
    known = {a.name for a in attrs.fields(cast(Any, cls)) if a.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {where}: allowed keys are "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**fields)
