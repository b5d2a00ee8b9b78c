"""Intel Neural Compressor's training callbacks, mapped onto the pruner lifecycle.

For code written against INC's ``prepare_compression(model, config).callbacks``::

    manager = sparsify.compat.inc_callbacks.prepare_compression(model, inc_config_dict)   # or a PrunerConfig
    manager.callbacks.on_train_begin()
    for step, (x, y) in enumerate(data):
        manager.callbacks.on_step_begin(step)
        loss = loss_fn(model(x), y); loss.backward()
        manager.callbacks.on_before_optimizer_step()
        optimizer.step()
        manager.callbacks.on_after_optimizer_step()
        optimizer.zero_grad()
    manager.callbacks.on_train_end()
    model = manager.model        # finalized: masks baked, Core ML metadata registered

==============================  ==========================================================================
callback                        sparsify
==============================  ==========================================================================
``on_train_begin(dataloader)``  ``pruner.prepare(inplace=True)`` — in place, so an optimizer built on the
                                model before keeps training the same parameters
``on_step_begin(step)``         nothing: masks change after the optimizer step instead, which is the same
                                point in training (INC prunes at the start of step ``g`` = after ``g``
                                optimizer steps)
``on_before_optimizer_step()``  ``pruner.observe_gradients()`` — gradient criteria fold in this step's
                                gradient, before the weights move
``on_after_optimizer_step()``   ``pruner.step()`` — schedules advance, masks are recomputed when due
``on_train_end()``              ``pruner.finalize(inplace=True)`` (unless ``finalize_on_train_end=False``),
                                and the sparsity report is logged
==============================  ==========================================================================

Nothing is monkey-patched: no optimizer wrapper, no global ``torch.save`` patch. Gradients are seen
through hooks on the pruned parameters (`sparsify.criteria.gradient`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..config import PrunerConfig
from ..pruning import Pruner

__all__ = ["CompressionManager", "PruningCallbacks", "prepare_compression"]

logger = logging.getLogger(__name__)


class PruningCallbacks:
    """INC's five callbacks (plus epoch no-ops) on top of any sparsify pruner.

    Args:
        pruner: a pruner that has not been prepared yet (``prepare`` runs in ``on_train_begin``).
        finalize_on_train_end: bake the masks in ``on_train_end`` (default ``True``).
    """

    def __init__(self, pruner: Pruner, *, finalize_on_train_end: bool = True) -> None:
        if not isinstance(pruner, Pruner):
            raise TypeError(f"pruner must be a sparsify pruner, got {type(pruner).__name__}")
        self.pruner = pruner
        self.finalize_on_train_end = finalize_on_train_end

    @property
    def model(self) -> nn.Module:
        """The model being trained (the finalized one after ``on_train_end``)."""
        return self.pruner.model

    def on_train_begin(self, dataloader: Any = None) -> None:
        """Install the masks in place (``dataloader`` is accepted for INC compatibility and unused)."""
        self.pruner.prepare(inplace=True)

    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """No-op (INC compatibility)."""

    def on_step_begin(self, local_step: int | None = None) -> None:
        """No-op: masks are updated in `on_after_optimizer_step` (see the module docs)."""

    def on_before_optimizer_step(self) -> None:
        """Let gradient criteria fold in this step's gradients."""
        observe = getattr(self.pruner, "observe_gradients", None)
        if observe is not None:
            observe()

    def on_after_optimizer_step(self) -> None:
        """Advance the schedules and recompute the masks that are due."""
        self.pruner.step()

    def on_step_end(self) -> None:
        """No-op (INC compatibility)."""

    def on_epoch_end(self) -> None:
        """No-op (INC compatibility)."""

    def on_train_end(self) -> None:
        """Finalize (bake masks, Core ML metadata) and log the sparsity report."""
        logger.info("sparsity at the end of training:\n%s", self.pruner.report())
        if self.finalize_on_train_end:
            self.pruner.finalize(inplace=True)


class CompressionManager:
    """What `prepare_compression` returns: ``.callbacks``, ``.model`` and ``.pruner``, as in INC."""

    def __init__(self, callbacks: PruningCallbacks) -> None:
        self.callbacks = callbacks

    @property
    def pruner(self) -> Pruner:
        return self.callbacks.pruner

    @property
    def model(self) -> nn.Module:
        return self.callbacks.model


def prepare_compression(
    model: nn.Module,
    config: PrunerConfig | Mapping[str, Any] | str | Path,
    *,
    finalize_on_train_end: bool = True,
) -> CompressionManager:
    """INC's ``prepare_compression``: a manager whose ``.callbacks`` drive a `Pruner`.

    ``config`` is a `PrunerConfig`, or an INC pruning config (dict or YAML path) read
    with `sparsify.compat.inc.from_inc_config`. The model is prepared in ``on_train_begin``.
    """
    if not isinstance(config, PrunerConfig):
        from .inc import from_inc_config

        config = from_inc_config(config)
    pruner = Pruner(model, config)
    return CompressionManager(PruningCallbacks(pruner, finalize_on_train_end=finalize_on_train_end))
