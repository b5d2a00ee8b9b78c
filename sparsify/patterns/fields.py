"""How a config's pattern fields name a `Pattern`: Core ML Tools' fields and the ``pattern`` strings.

``ModulePrunerConfig`` stores what the user wrote — ``granularity`` / ``block_size``, ``n_m_ratio`` / ``dim``,
or ``pattern`` (``"4x1"``, ``"2:4"``, a registered kind or instance) — and asks this module which pattern that
is, so the config never needs to know the pattern classes.
"""

from __future__ import annotations

import re

from .base import Pattern
from .coreml import CoreMLPattern
from .n_m import NMPattern
from .tiles import TilePattern, parse_pattern

__all__ = ["normalized_text", "pattern_of_fields"]

_N_M_TEXT = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def normalized_text(text: str) -> str | None:
    """A pattern string as a config stores it: ``"n:m"`` (checked), a tile's ``"NxM"``, ``None`` for ``"1x1"``
    (per-scalar: the Core ML Tools fields' default). Errors start ``pattern=<text> is invalid``."""
    match = _N_M_TEXT.match(text) if isinstance(text, str) else None
    if match is not None:
        n, m = (int(g) for g in match.groups())
        try:
            NMPattern(n, m)
        except ValueError as exc:
            raise ValueError(f"pattern={text!r} is invalid: {exc}") from exc
        return f"{n}:{m}"
    tiles = parse_pattern(text)
    return None if tiles == TilePattern(1, 1) else tiles.text


def pattern_of_fields(
    pattern: str | Pattern | None,
    *,
    n_m_ratio: tuple[int, int] | None = None,
    dim: int = 1,
    granularity: str = "per_scalar",
    block_size: int = 1,
    target_sparsity: float = 0.5,
) -> Pattern:
    """The pattern a config's fields describe (``pattern`` normalised by `normalized_text`, or an instance).

    ``"n:m"`` at a ``target_sparsity`` of ``n / m`` or more is ``n_m_ratio=(n, m)``'s request and gets its
    masks; below, Neural Compressor's meaning: that share of whole runs made n:m-sparse (``by_runs``).
    """
    if n_m_ratio is not None:
        return NMPattern(*n_m_ratio, dim=dim)
    if isinstance(pattern, Pattern):
        return pattern
    if pattern is not None and ":" in pattern:
        n, m = (int(v) for v in pattern.split(":"))
        return NMPattern(n, m, dim=1, by_runs=target_sparsity < n / m - 1e-9)
    if pattern is not None:
        return parse_pattern(pattern)
    return CoreMLPattern(granularity, block_size)
