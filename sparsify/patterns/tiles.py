"""NxM tiles: ``N`` output channels × ``M`` input channels at one kernel position (Neural Compressor's patterns).

Every weight is viewed as ``[Co, K, Ci]``: output channels, kernel positions, input channels. A
``Linear`` weight ``[Co, Ci]`` has ``K = 1``; a conv weight ``[Co, Ci, kh, kw]`` is permuted to
``[Co, kh, kw, Ci]`` and flattened to ``[Co, kh·kw, Ci]`` — INC's ``[Co, kh·kw·Ci]`` reshape — so a tile
covers consecutive input channels at one kernel position, the layout channels-last sparse kernels use.

``"4x1"`` is four output channels of one input channel (INC's default), ``"1x1"`` single weights.
``"channel"`` for one side means the whole axis *and every kernel position*: ``"1xchannel"`` prunes whole
output channels (rows of a ``Linear``), ``"channelx1"`` whole input channels, ``"2xchannel"`` pairs of
output channels. A tile scores the **mean** of its elements' scores (INC's ``criterion_reduce_type``).
A weight whose channels the tile does not divide cannot take it: the pruner skips it with a warning, as
Neural Compressor does.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import attrs
import torch

from .base import ColumnLayout, Pattern, Shape, SkipWeight, Usage, kernel_major_order
from .ranking import rankable
from .registry import register_pattern

__all__ = ["TilePattern", "as_3d", "dims", "from_3d", "parse_pattern"]

logger = logging.getLogger(__name__)

_TILE_RE = re.compile(r"^(?:tile_pattern_)?(\d+|channel)x(\d+|channel)$")
_N_M_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def as_3d(weight: torch.Tensor) -> torch.Tensor:
    """``[Co, Ci]`` → ``[Co, 1, Ci]``; ``[Co, Ci, *kernel]`` → ``[Co, prod(kernel), Ci]`` (see module docs)."""
    if weight.dim() < 2:
        raise ValueError(f"tile and n:m patterns need a weight of rank >= 2, got shape {tuple(weight.shape)}")
    if weight.dim() == 2:
        return weight.unsqueeze(1)
    return weight.movedim(1, -1).reshape(weight.shape[0], -1, weight.shape[1])


def from_3d(view: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `as_3d` for a weight of ``shape``."""
    if len(shape) == 2:
        return view.reshape(shape)
    return view.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def dims(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) < 2:
        raise ValueError(f"tile and n:m patterns need a weight of rank >= 2, got shape {tuple(shape)}")
    return shape[0], math.prod(shape[2:]), shape[1]


@register_pattern
@attrs.frozen
class TilePattern(Pattern):
    """``N×M`` tiles: ``out_size`` output channels × ``in_size`` input channels; ``None`` = ``"channel"``."""

    kind = "tiles"

    out_size: int | None = 1
    in_size: int | None = 1

    def __attrs_post_init__(self) -> None:
        for field, value in (("out_size", self.out_size), ("in_size", self.in_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TilePattern.{field}={value!r} is invalid: allowed a positive int or None (channel)")
        if self.out_size is None and self.in_size is None:
            raise ValueError("pattern 'channelxchannel' is invalid: it would prune whole layers; use '1xchannel' "
                             "(output channels) or 'channelx1' (input channels)")

    @property
    def text(self) -> str:
        def side(v: int | None) -> str:
            return "channel" if v is None else str(v)

        return f"{side(self.out_size)}x{side(self.in_size)}"

    @property
    def whole_channels(self) -> bool:
        return self.out_size is None or self.in_size is None

    @property
    def label(self) -> str:
        return self.text

    @property
    def config_text(self) -> str:
        return self.text

    def record_fields(self) -> dict[str, Any]:
        return {"tiles": self.text}

    @property
    def single_weights(self) -> bool:
        return self.out_size == 1 and self.in_size == 1

    def fit(self, shape: Shape, usage: Usage) -> Pattern:
        """A weight whose channels the tile does not divide is skipped (`SkipWeight`), as Neural Compressor does."""
        try:
            self.check(shape, usage.where)
        except ValueError as exc:
            raise SkipWeight(str(exc)) from exc
        return self

    def column_layout(self, shape: Shape, chosen: torch.Tensor) -> ColumnLayout:
        """Whole output channels are rows; whole input channels are blocks of ``in_size · K`` consecutive
        ``flatten(1)`` columns; tiles are ``in_size`` consecutive columns in kernel-position-major order."""
        if self.in_size is None:
            return ColumnLayout("rows")
        channels, kernel = shape[1], math.prod(shape[2:])
        total = channels * kernel
        if self.out_size is None:
            return ColumnLayout("groups", edges=list(range(0, total + 1, self.in_size * kernel)))
        edges = sorted({k * channels + r for k in range(kernel) for r in range(0, channels, self.in_size)} | {total})
        return ColumnLayout("groups", order=kernel_major_order(shape), edges=edges)

    def describe(self) -> str:
        if self.out_size is None:
            return f"{self.text}: whole input channels, {self.in_size} at a time"
        if self.in_size is None:
            return f"{self.text}: whole output channels, {self.out_size} at a time"
        if self.out_size == self.in_size == 1:
            return "1x1: single weights (unstructured)"
        return f"{self.text}: tiles of {self.out_size} output x {self.in_size} input channels per kernel position"

    def check(self, shape: torch.Size | tuple[int, ...], where: str) -> None:
        co, _, ci = dims(shape)
        for axis, size, count in (("output", self.out_size, co), ("input", self.in_size, ci)):
            if size is not None and count % size:
                raise ValueError(
                    f"{where}: pattern {self.text!r} needs the {axis} channels ({count}, weight shape "
                    f"{tuple(shape)}) to be a multiple of {size}; exclude this module or pick a pattern that divides it"
                )

    def weights_per_group(self, shape: torch.Size | tuple[int, ...]) -> int:
        co, k, ci = dims(shape)
        if self.out_size is None:
            assert self.in_size is not None  # __attrs_post_init__ refuses channelxchannel
            return co * k * self.in_size
        if self.in_size is None:
            return self.out_size * k * ci
        return self.out_size * self.in_size

    def groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        return self._tile_means(rankable(scores)), self.weights_per_group(scores.shape)

    def pruned_groups(self, kept: torch.Tensor) -> torch.Tensor:
        """Tiles whose every member is pruned (the mean of the 0/1 mask is 0), from ``bool`` reductions."""
        return self._tile_means(~kept.bool(), "all")

    def _tile_means(self, scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """Each tile's ``scores.mean`` (or ``.all`` for a ``bool`` tensor, ``how="all"``)."""
        view = as_3d(scores)
        co, k, ci = view.shape
        if self.out_size is None:
            assert self.in_size is not None  # __attrs_post_init__ refuses channelxchannel
            tiles, dims_ = view.reshape(co, k, ci // self.in_size, self.in_size), (0, 1, 3)
            return getattr(tiles, how)(dim=dims_).reshape(1, 1, -1)
        if self.in_size is None:
            return getattr(view.reshape(co // self.out_size, self.out_size * k * ci), how)(dim=1).reshape(-1, 1, 1)
        tiles = view.reshape(co // self.out_size, self.out_size, k, ci // self.in_size, self.in_size)
        return getattr(tiles, how)(dim=(1, 4))

    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        co, k, ci = as_3d(scores).shape
        keep = keep.reshape(self._group_shape(co, k, ci))
        if self.out_size is not None:
            keep = keep.repeat_interleave(self.out_size, dim=0)
        if self.in_size is not None:
            keep = keep.repeat_interleave(self.in_size, dim=2)
        return from_3d(keep.expand(co, k, ci).contiguous(), scores.shape)

    def _group_shape(self, co: int, k: int, ci: int) -> tuple[int, int, int]:
        if self.out_size is None:
            assert self.in_size is not None  # __attrs_post_init__ refuses channelxchannel
            return (1, 1, ci // self.in_size)
        if self.in_size is None:
            return (co // self.out_size, 1, 1)
        return (co // self.out_size, k, ci // self.in_size)


def parse_pattern(text: str | TilePattern) -> TilePattern:
    """Read a tile pattern: ``"NxM"``, ``"channelxM"``, ``"Nxchannel"`` (INC 1.x ``"tile_pattern_4x1"`` too).

    n:m is not a tile: write it as ``n_m_ratio=(n, m)`` (n zeros of m), or convert INC's ``"2:4"``
    with `n_m_from_string`.
    """
    if isinstance(text, TilePattern):
        return text
    if not isinstance(text, str):
        raise TypeError(f"pattern={text!r} is invalid: expected a string such as '4x1', got {type(text).__name__}")
    cleaned = text.strip().lower()
    if _N_M_RE.match(cleaned):
        raise ValueError(
            f"pattern={text!r} is an n:m ratio, not a tile: write n_m_ratio=({cleaned.replace(':', ', ')}) "
            f"(n = number of zeros in every m weights), or read INC configs with sparsify.compat.inc"
        )
    match = _TILE_RE.match(cleaned)
    if match is None:
        raise ValueError(
            f"pattern={text!r} is invalid: allowed 'NxM' (N output x M input channels, e.g. '4x1', '1x1'), "
            f"'channelxM' (whole input channels) or 'Nxchannel' (whole output channels)"
        )
    out, inp = (None if g == "channel" else int(g) for g in match.groups())
    return TilePattern(out, inp)
