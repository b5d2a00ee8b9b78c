"""INC 1.x's ``group_lasso`` pruner: magnitude pruning over epochs plus a group-lasso term in the gradient.

INC's ``GroupLassoPruner`` (a ``BasicMagnitudePruner``) keeps the magnitude pruner's epoch schedule and, in
``on_before_optimizer_step``, adds the gradient of ``alpha · Σ_blocks ‖block‖₂`` to each weight's gradient,

    grad += alpha / ‖block‖₂ · weight          (a block of norm 0 adds nothing)
    grad[weight == 0] = 0                      (pruned weights stay at zero)

where the blocks are the pruner's own ``pattern`` (INC 1.x's ``weight_compression`` takes ``1x1`` only, so
each weight is its own block: ``grad += alpha · sign(weight)``). INC reads ``alpha`` from the pruner's
``parameters`` and nothing else there (a ``parameters: {pattern: ...}`` is not read). `GroupLasso` is that
term, called by INC's ``on_before_optimizer_step`` callback and by `prepare_pruning`'s patched
``optimizer.step``, before the gradient criteria read the gradients.
"""

from __future__ import annotations

import torch

from ...pruning import Pruner

__all__ = ["GroupLasso"]


class GroupLasso:
    """INC's group-lasso gradient term on the named pruned modules (1x1 blocks), ``alpha`` each."""

    def __init__(self, pruner: Pruner, alphas: dict[str, float]) -> None:
        self.pruner = pruner
        self.alphas = alphas

    def __call__(self) -> None:
        with torch.no_grad():
            for name, alpha in self.alphas.items():
                target = self.pruner.targets[name]
                orig = target.orig
                if orig.grad is None:
                    continue
                weight = orig * target.mask  # the weight the forward used
                orig.grad.add_(alpha * torch.sign(weight))  # alpha / |w| · w; 0 where w == 0
                orig.grad.masked_fill_(weight == 0, 0.0)
