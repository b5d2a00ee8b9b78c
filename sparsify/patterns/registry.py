"""The open pattern registry: a pattern class registered by ``kind`` is usable wherever a pattern is.

`register_pattern` files an attrs `Pattern` subclass under its ``kind``; `pattern_from_dict` builds one from
``"kind"`` (default settings) or ``{"kind": kind, **fields}``, which is what `Pattern.as_dict` writes, so a
config naming a registered pattern survives ``as_dict`` / ``from_dict`` / YAML round trips. Modelled on the
criteria's registry (`sparsify.criteria.base.register_criterion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import attrs

from .._kinds import spec_from_dict
from .base import Pattern

__all__ = ["pattern_from_dict", "pattern_kinds", "register_pattern"]

_PATTERNS: dict[str, type[Pattern]] = {}

P = TypeVar("P", bound=type[Pattern])


def register_pattern(cls: P) -> P:
    """Class decorator: make the attrs `Pattern` subclass ``cls`` constructible from ``"kind"`` or
    ``{"kind": kind, **fields}`` (configs, YAML, ``sparsity.json``)."""
    if not (isinstance(cls, type) and issubclass(cls, Pattern)):
        raise TypeError(f"register_pattern expects a Pattern subclass, got {cls!r}")
    if not isinstance(cls.kind, str) or not cls.kind.strip():
        raise ValueError(f"{cls.__name__} needs a class attribute kind (a non-empty str) to be registered")
    if not attrs.has(cast(type, cls)):
        raise TypeError(f"{cls.__name__} must be an attrs class (@attrs.frozen): its fields are its saved settings")
    kind: str = cls.kind
    if kind in _PATTERNS and _PATTERNS[kind] is not cls:
        raise ValueError(f"a pattern of kind {kind!r} is already registered: {_PATTERNS[kind]}")
    _PATTERNS[kind] = cls
    return cls


def pattern_kinds() -> tuple[str, ...]:
    """The ``kind`` names `pattern_from_dict` understands."""
    return tuple(sorted(_PATTERNS))


def pattern_from_dict(data: str | Mapping[str, Any] | Pattern) -> Pattern:
    """A pattern from its kind (``"tiles"``), a dict (``{"kind": "n_m", "n": 2, "m": 4}``) or an instance
    (returned unchanged). Unknown kinds and keys are errors that name them."""
    return spec_from_dict(data, _PATTERNS, Pattern, "pattern")
