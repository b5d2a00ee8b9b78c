"""``magnitude``: ``|w|`` of the trained parameter — Core ML Tools' criterion (Zhu & Gupta)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from .base import Criterion, PrunerView, Scorer, register_criterion

__all__ = ["MagnitudeCriterion"]


class _MagnitudeScorer(Scorer):
    """Scores ``|weight_orig|``: as in Core ML Tools, a pruned weight that training moved can come back."""

    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        return pruner.targets[name].orig.detach().abs()


@register_criterion
@attrs.define(eq=True, frozen=True)
class MagnitudeCriterion(Criterion):
    """``|W|``."""

    kind: ClassVar[str] = "magnitude"

    def scorer(self) -> Scorer:
        return _MagnitudeScorer()
