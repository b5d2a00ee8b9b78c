"""Tile and n:m patterns for gradual pruning: element scores → group scores → element keep-mask.

Weight layout
-------------
Every weight is first viewed as a 3-D tensor ``[Co, K, Ci]``: output channels, kernel positions,
input channels. A ``Linear`` weight ``[Co, Ci]`` has ``K = 1``; a conv weight ``[Co, Ci, kh, kw]``
is permuted to ``[Co, kh, kw, Ci]`` and flattened to ``[Co, kh·kw, Ci]`` — *per kernel position*,
input channels innermost, which is Intel Neural Compressor's ``[Co, kh·kw·Ci]`` reshape. A tile or
an n:m run therefore covers consecutive input channels **at one kernel position**, the layout that
channels-last sparse kernels use (and what the engine's `sparsify.patterns.n_m_mask` does).

Tiles: ``"NxM"``
----------------
``N`` along **output** channels × ``M`` along **input** channels, at each kernel position
(``"4x1"``: four output channels of one input channel — INC's default; ``"1x1"``: single weights).
``"channel"`` for one side means the whole axis *and every kernel position*, so the tile removes
whole channels: ``"1xchannel"`` prunes whole output channels (rows), ``"channelx1"`` whole input
channels (every output channel and kernel position reading that input), ``"2xchannel"`` pairs of
output channels. A tile scores the **mean** of its elements' scores (INC's default
``criterion_reduce_type="mean"``). Channel counts must be multiples of the tile: a weight that
does not divide is an error at ``prepare()``, naming it, rather than a silently unpruned layer.

n:m
---
``n_m_ratio=(n, m)`` zeroes ``n`` of every ``m`` consecutive weights along input channels
(``dim=1``) or output channels (``dim=0``) — **n is the number of zeros**, as in the engine and Core
ML Tools (``(2, 4)`` = 50 %, ``(3, 4)`` = 75 %). INC's ``"2:4"`` strings mean the same thing (n
pruned); SparseML's ``"3:4"`` would mean 3 *kept*. `n_m_from_string` reads the INC spelling
and logs the sparsity it means.

The n:m pattern ramps gradually the way INC does: each run of ``m`` is a group that is either dense
or n:m-sparse, scored by the sum of its ``n`` lowest element scores (what making it sparse costs),
so pruning ``k`` weights makes the ``k / n`` cheapest runs n:m-sparse; at the final sparsity
``n / m`` every run is.
"""

from __future__ import annotations

import logging
import math
import re

import attrs
import torch

__all__ = [
    "NMPattern",
    "Pattern",
    "TilePattern",
    "as_3d",
    "from_3d",
    "n_m_from_string",
    "parse_pattern",
]

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


def _dims(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) < 2:
        raise ValueError(f"tile and n:m patterns need a weight of rank >= 2, got shape {tuple(shape)}")
    return shape[0], math.prod(shape[2:]), shape[1]


class Pattern:
    """What the gradual pruner needs from a pattern (implemented by the two classes below)."""

    max_sparsity: float = 1.0

    def check(self, shape: torch.Size | tuple[int, ...], where: str) -> None:
        """Raise ``ValueError`` naming ``where`` if a weight of ``shape`` cannot take this pattern."""
        raise NotImplementedError

    def group_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """One score per group from element scores of the weight's shape (higher = keep)."""
        raise NotImplementedError

    def weights_per_group(self, shape: torch.Size | tuple[int, ...]) -> int:
        """How many weights pruning one group zeroes."""
        raise NotImplementedError

    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Element keep-mask (the weight's shape) from a group keep-mask of `group_scores`' shape."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@attrs.frozen
class TilePattern(Pattern):
    """``N×M`` tiles: ``out_size`` output channels × ``in_size`` input channels; ``None`` = ``"channel"``."""

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

    def describe(self) -> str:
        if self.out_size is None:
            return f"{self.text}: whole input channels, {self.in_size} at a time"
        if self.in_size is None:
            return f"{self.text}: whole output channels, {self.out_size} at a time"
        if self.out_size == self.in_size == 1:
            return "1x1: single weights (unstructured)"
        return f"{self.text}: tiles of {self.out_size} output x {self.in_size} input channels per kernel position"

    def check(self, shape: torch.Size | tuple[int, ...], where: str) -> None:
        co, _, ci = _dims(shape)
        for axis, size, count in (("output", self.out_size, co), ("input", self.in_size, ci)):
            if size is not None and count % size:
                raise ValueError(
                    f"{where}: pattern {self.text!r} needs the {axis} channels ({count}, weight shape "
                    f"{tuple(shape)}) to be a multiple of {size}; exclude this module or pick a pattern that divides it"
                )

    def weights_per_group(self, shape: torch.Size | tuple[int, ...]) -> int:
        co, k, ci = _dims(shape)
        if self.out_size is None:
            return co * k * self.in_size
        if self.in_size is None:
            return self.out_size * k * ci
        return self.out_size * self.in_size

    def group_scores(self, scores: torch.Tensor) -> torch.Tensor:
        view = as_3d(scores.detach())
        co, k, ci = view.shape
        if self.out_size is None:
            return view.reshape(co, k, ci // self.in_size, self.in_size).mean(dim=(0, 1, 3)).reshape(1, 1, -1)
        if self.in_size is None:
            return view.reshape(co // self.out_size, self.out_size * k * ci).mean(dim=1).reshape(-1, 1, 1)
        tiles = view.reshape(co // self.out_size, self.out_size, k, ci // self.in_size, self.in_size)
        return tiles.mean(dim=(1, 4))

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
            return (1, 1, ci // self.in_size)
        if self.in_size is None:
            return (co // self.out_size, 1, 1)
        return (co // self.out_size, k, ci // self.in_size)


@attrs.frozen
class NMPattern(Pattern):
    """``n`` zeros in every ``m`` consecutive weights along input (``dim=1``) or output (``dim=0``) channels."""

    n: int
    m: int
    dim: int = 1

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.n < self.m:
            raise ValueError(
                f"n_m_ratio=({self.n}, {self.m}) is invalid: allowed 1 <= n < m, n being the number of ZEROS "
                f"in every m weights"
            )
        if self.dim not in (0, 1):
            raise ValueError(f"dim={self.dim!r} is invalid: allowed 0 (output channels) or 1 (input channels)")

    @property
    def max_sparsity(self) -> float:  # type: ignore[override]
        return self.n / self.m

    def describe(self) -> str:
        axis = "input" if self.dim == 1 else "output"
        return (f"n_m_ratio=({self.n}, {self.m}): {self.n} zeros in every {self.m} consecutive {axis}-channel "
                f"weights = {self.n / self.m:.2%} sparsity")

    def _runs(self, scores: torch.Tensor) -> torch.Tensor:
        view = as_3d(scores)
        if self.dim == 0:
            view = view.transpose(0, 2)
        a, k, b = view.shape
        return view.reshape(a, k, b // self.m, self.m)

    def check(self, shape: torch.Size | tuple[int, ...], where: str) -> None:
        co, _, ci = _dims(shape)
        count = ci if self.dim == 1 else co
        if count % self.m:
            axis = "input" if self.dim == 1 else "output"
            raise ValueError(
                f"{where}: n_m_ratio=({self.n}, {self.m}) along {axis} channels needs their number ({count}, weight "
                f"shape {tuple(shape)}) to be a multiple of m={self.m}; exclude this module or use another pattern"
            )

    def weights_per_group(self, shape: torch.Size | tuple[int, ...]) -> int:
        return self.n

    def group_scores(self, scores: torch.Tensor) -> torch.Tensor:
        runs = self._runs(scores.detach().float())
        return torch.sort(runs, dim=-1, stable=True).values[..., : self.n].sum(-1)

    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        runs = self._runs(scores.detach().float())
        sparse = torch.ones_like(runs, dtype=torch.bool)
        lowest = torch.argsort(runs, dim=-1, stable=True)[..., : self.n]
        sparse.scatter_(-1, lowest, False)
        mask = sparse | keep.reshape(runs.shape[:-1]).unsqueeze(-1)
        view = mask.reshape(runs.shape[0], runs.shape[1], -1)
        if self.dim == 0:
            view = view.transpose(0, 2)
        return from_3d(view.contiguous(), scores.shape)


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


def n_m_from_string(text: str) -> tuple[int, int]:
    """INC's ``"N:M"`` (N **pruned** of every M) → ``n_m_ratio=(N, M)``, logging the sparsity it means."""
    match = _N_M_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an INC n:m pattern: expected 'N:M' such as '2:4' (N zeros of every M)")
    n, m = int(match.group(1)), int(match.group(2))
    pattern = NMPattern(n, m)
    logger.info("INC pattern %r -> %s", text, pattern.describe())
    return (n, m)
