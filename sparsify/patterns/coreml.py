"""Core ML Tools' patterns: ``granularity`` (per-scalar / per-kernel / per-channel) and ``block_size``.

Group scores are Core ML Tools' exactly: ``per_kernel`` / ``per_channel`` groups and blocks of
consecutive output channels score by the L2 norm of their members; a last block that the output
channels do not fill is padded with zeros (so it stands for fewer weights). The stored mask has the
granularity's shape — ``[Co, 1, 1, 1]`` per channel, ``[Co, Ci, 1, 1]`` per kernel — as in Core ML
Tools, so state dicts are interchangeable.

Weights of rank 2 (``Linear``) have no kernels and, in Core ML Tools, no channel granularity either:
``per_kernel`` and ``per_channel`` fall back to per-scalar there (`CoreMLPattern.for_shape`, logged by
the pruner). Whole rows of a ``Linear`` are the ``"1xchannel"`` tile pattern.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import torch

from . import _select
from .base import ColumnLayout, Pattern, Shape, Usage
from .ranking import pruned_count, rank_keep, rankable
from .registry import register_pattern

__all__ = ["GRANULARITIES", "CoreMLPattern", "group_scores", "magnitude_ranked_mask", "mask_shape", "ranked_mask"]

logger = logging.getLogger(__name__)

GRANULARITIES = ("per_scalar", "per_kernel", "per_channel")


def _unit_scores(scores: torch.Tensor, granularity: str) -> torch.Tensor:
    """Scores reduced to the granularity's unit (element, kernel or channel), in the mask's shape."""
    rank = scores.dim()
    if granularity == "per_scalar" or rank < 2:
        return scores
    if granularity == "per_kernel":
        if rank < 3:
            raise ValueError(
                f"granularity='per_kernel' needs a weight with kernel dimensions (rank >= 3), got shape "
                f"{tuple(scores.shape)}: allowed for this weight are 'per_scalar' and 'per_channel'"
            )
        return torch.linalg.vector_norm(scores.flatten(2), dim=-1).reshape(*scores.shape[:2], *[1] * (rank - 2))
    if granularity == "per_channel":
        return torch.linalg.vector_norm(scores.flatten(1), dim=-1).reshape(scores.shape[0], *[1] * (rank - 1))
    raise ValueError(f"granularity={granularity!r} is invalid: allowed values are {', '.join(GRANULARITIES)}")


def mask_shape(shape: Shape, granularity: str = "per_scalar") -> tuple[int, ...]:
    """Shape of the stored mask for a weight of ``shape``: ``[Co, Ci, 1, …]`` per kernel, ``[Co, 1, …]`` per channel."""
    rank = len(shape)
    if granularity == "per_kernel" and rank >= 3:
        return (shape[0], shape[1], *[1] * (rank - 2))
    if granularity == "per_channel" and rank >= 2:
        return (shape[0], *[1] * (rank - 1))
    return tuple(shape)


def group_scores(scores: torch.Tensor, granularity: str = "per_scalar", block_size: int = 1) -> torch.Tensor:
    """Core ML Tools' group scores in the mask's shape: every member of a block gets its block's L2 norm."""
    unit = _unit_scores(scores, granularity)
    if block_size <= 1:
        return unit
    blocks = _block_norms(unit, block_size)
    return blocks.repeat_interleave(block_size, dim=0)[: unit.shape[0]]


def _block_norms(unit: torch.Tensor, block_size: int) -> torch.Tensor:
    """L2 norm of every block of ``block_size`` consecutive output channels (zero-padded at the end).

    Computed a piece of whole blocks at a time, so the squares never take a copy of all the scores.
    """
    channels, rest = unit.shape[0], unit.shape[1:]
    step = max(1, _select.CHUNK // max(math.prod(rest) * block_size, 1)) * block_size  # channels per piece
    blocks = unit.new_empty((-(-channels // block_size), *rest))
    for start in range(0, channels, step):
        part = unit[start : start + step]
        padding = (-part.shape[0]) % block_size
        if padding:
            part = torch.cat([part, part.new_zeros((padding, *rest))], dim=0)
        norms = part.reshape(part.shape[0] // block_size, block_size, *rest).pow(2).sum(1).sqrt()
        blocks[start // block_size : start // block_size + norms.shape[0]] = norms
    return blocks


@register_pattern
@attrs.frozen
class CoreMLPattern(Pattern):
    """``granularity`` × ``block_size``, as Core ML Tools' ``ModuleMagnitudePrunerConfig`` describes them."""

    kind = "coreml"

    granularity: str = "per_scalar"
    block_size: int = 1

    def fit(self, shape: Shape, usage: Usage) -> Pattern:
        """`for_shape` (logged at INFO when it falls back), with a warning when one block covers the weight."""
        applied = self.for_shape(shape)
        if applied != self:
            logger.info("%s: granularity=%r does not apply to a weight of shape %s; pruned %s (as Core ML Tools "
                        "does; use pattern='1xchannel' for whole rows)", usage.where, self.granularity, shape,
                        applied.granularity)
        if self.block_size > 1 and self.block_size > shape[0]:
            logger.warning("%s: block_size=%d exceeds the %d output channels, so the whole weight is one block",
                           usage.where, self.block_size, shape[0])
        return applied

    @property
    def label(self) -> str:
        return self.describe()

    def record_fields(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "block_size": self.block_size}

    @property
    def single_weights(self) -> bool:
        return self.granularity == "per_scalar" and self.block_size <= 1

    def column_layout(self, shape: Shape, chosen: torch.Tensor) -> ColumnLayout:
        """Whole channels are rows; kernels are whole blocks of ``flatten(1)`` columns; blocks of output channels
        and single weights lie in one column each."""
        if self.granularity == "per_channel" and len(shape) > 1:
            return ColumnLayout("rows")
        if self.granularity == "per_kernel" and len(shape) > 2:
            kernel = math.prod(shape[2:])
            return ColumnLayout("groups", edges=list(range(0, math.prod(shape[1:]) + 1, kernel)))
        return ColumnLayout("groups")

    def for_shape(self, shape: Shape) -> CoreMLPattern:
        """The pattern Core ML Tools actually applies to a weight of ``shape``: rank-2 weights have no kernels
        or channel granularity there, so ``per_kernel`` / ``per_channel`` become ``per_scalar``."""
        if len(shape) < 3 and self.granularity != "per_scalar":
            return CoreMLPattern("per_scalar", self.block_size)
        return self

    def mask_shape(self, shape: Shape) -> tuple[int, ...]:
        return mask_shape(shape, self.granularity)

    def _unit_groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int, int]:
        """``(group scores, units per group, units in all)`` where a unit is an element, kernel or channel.

        Core ML Tools counts its budget in units (``ceil(units · (1 − s))`` kept), so local ranking does too.
        """
        unit = _unit_scores(rankable(scores), self.granularity)
        if self.block_size <= 1:
            return unit, 1, unit.numel()
        blocks = _block_norms(unit, self.block_size)
        full, tail = divmod(unit.shape[0], self.block_size)
        if not tail:
            return blocks, self.block_size, unit.numel()
        sizes = torch.full(blocks.shape, self.block_size, dtype=torch.int64)
        sizes[full] = tail
        return blocks, sizes, unit.numel()

    def groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        grouped, units, _ = self._unit_groups(scores)
        per_unit = math.prod(scores.shape) // math.prod(self.mask_shape(scores.shape))
        return grouped, units * per_unit

    def local_mask(self, scores: torch.Tensor, sparsity: float, kept: torch.Tensor | None = None) -> torch.Tensor:
        grouped, units, total = self._unit_groups(scores)
        first = self.pruned_groups(kept) if kept is not None else None
        return self.expand(rank_keep(grouped, units, total, sparsity, first), scores)

    def fresh_count(self, shape: Shape, sparsity: float) -> int | None:
        if self.granularity != "per_scalar" or self.block_size > 1:
            return None
        total = math.prod(shape)
        return min(pruned_count(total, sparsity), total)  # `rank_keep`'s budget, one weight per group

    def pruned_groups(self, kept: torch.Tensor) -> torch.Tensor:
        """Units (then blocks) whose every member is pruned — where the L2 norm of the 0/1 mask is 0."""
        gone = ~kept.bool()
        rank = gone.dim()
        if self.granularity == "per_kernel" and rank >= 3:
            gone = gone.flatten(2).all(-1).reshape(*gone.shape[:2], *[1] * (rank - 2))
        elif self.granularity == "per_channel" and rank >= 2:
            gone = gone.flatten(1).all(-1).reshape(gone.shape[0], *[1] * (rank - 1))
        if self.block_size <= 1:
            return gone
        padding = (-gone.shape[0]) % self.block_size  # padded channels score 0, like pruned ones
        if padding:
            gone = torch.cat([gone, gone.new_ones((padding, *gone.shape[1:]))], dim=0)
        return gone.reshape(gone.shape[0] // self.block_size, self.block_size, *gone.shape[1:]).all(1)

    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        shape = scores.shape
        if self.block_size > 1:
            keep = keep.repeat_interleave(self.block_size, dim=0)[: shape[0]]
        return keep.reshape(self.mask_shape(shape))

    def weights_per_group(self, shape: Shape) -> int:
        unit = math.prod(shape) // math.prod(self.mask_shape(shape))
        return unit * max(self.block_size, 1)

    def describe(self) -> str:
        """The name every report uses (`sparsify.analysis.pattern_names`): Core ML Tools' own report calls
        ``granularity="per_scalar"`` *unstructured* (``unstructured_weight_sparsity``), so does sparsify."""
        if self.granularity == "per_scalar":
            return "unstructured" if self.block_size <= 1 else f"block {self.block_size}"
        block = f", blocks of {self.block_size} output channels" if self.block_size > 1 else ""
        return f"{self.granularity}{block}"


def ranked_mask(
    scores: torch.Tensor, sparsity: float, block_size: int = 1, granularity: str = "per_scalar"
) -> torch.Tensor:
    """Keep-mask pruning the lowest-scoring ``sparsity`` of ``scores`` with a Core ML pattern."""
    return CoreMLPattern(granularity, block_size).local_mask(scores, sparsity)


def magnitude_ranked_mask(
    weights: torch.Tensor, sparsity_fraction: float, block_size: int = 1, granularity: str = "per_scalar"
) -> torch.Tensor:
    """Core ML Tools' ``magnitude_ranked_mask``: `ranked_mask` on ``|weights|``."""
    return ranked_mask(weights.detach().abs(), sparsity_fraction, block_size, granularity)
