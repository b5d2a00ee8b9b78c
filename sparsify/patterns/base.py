"""The pattern contract: which weights are pruned together, and how a keep-mask is stored.

A pattern turns element scores (one per weight, higher = keep) into **group scores** (one per prunable
group), and a keep decision per group back into a mask. The machine ranks groups either within one
layer (`Pattern.local_mask`) or across layers (`sparsify.scope.global_keep_masks` on
`Pattern.groups`), so a pattern never knows which scope or criterion it is used with.
"""

from __future__ import annotations

import abc
import math

import torch

from .ranking import rank_keep

__all__ = ["Pattern", "Shape"]

Shape = torch.Size | tuple[int, ...]


class Pattern(abc.ABC):
    """Base class. Subclasses implement `groups`, `expand` and `describe`; the rest has defaults."""

    @property
    def max_sparsity(self) -> float:
        """The highest sparsity the pattern can reach on a layer (n:m stops at n/m)."""
        return 1.0

    def check(self, shape: Shape, where: str) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """Raise ``ValueError`` naming ``where`` if a weight of ``shape`` cannot take this pattern."""

    def mask_shape(self, shape: Shape) -> tuple[int, ...]:
        """The shape of the stored keep-mask (it broadcasts against the weight)."""
        return tuple(shape)

    @abc.abstractmethod
    def groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """``(group scores, weights per group)``: one score per group, and how many weights each stands
        for (an int for all, or a tensor of the group scores' shape)."""

    @abc.abstractmethod
    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The stored mask (`mask_shape`) from a keep decision per group (`groups`' shape); ``scores`` are
        the element scores the groups came from (n:m needs them to pick the zeros inside a run)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line description for logs, dry runs and reports."""

    def local_mask(self, scores: torch.Tensor, sparsity: float, kept: torch.Tensor | None = None) -> torch.Tensor:
        """Keep-mask for one layer ranked alone at ``sparsity`` (see `sparsify.patterns.ranking`).

        ``kept`` (the current keep-mask, element shape) makes groups that are already pruned go first among
        equal scores, so a criterion whose masks only grow reaches its count without reviving anything.
        """
        grouped, sizes = self.groups(scores)
        first = self.pruned_groups(kept) if kept is not None else None
        keep = rank_keep(grouped, sizes, math.prod(scores.shape), sparsity, first)
        return self.expand(keep, scores)

    def pruned_groups(self, kept: torch.Tensor) -> torch.Tensor:
        """``True`` for the groups whose group score of the 0/1 ``kept`` mask is 0 (`groups`' shape).

        This default scores a float copy of the mask (4 bytes per weight); the patterns here override it with
        the same answer from ``bool`` reductions.
        """
        return self.groups(kept.float())[0] == 0

    def weights_per_group(self, shape: Shape) -> int:
        """How many weights pruning one (full) group zeroes — what global ranking counts."""
        _, sizes = self.groups(torch.zeros(tuple(shape)))
        return sizes if isinstance(sizes, int) else int(sizes.reshape(-1)[0])
