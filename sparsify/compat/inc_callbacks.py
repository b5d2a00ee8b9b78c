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
through hooks on the pruned parameters (`sparsify.criteria.gradient`). `prepare_pruning` (INC's
"automation" API) patches the ``step`` of the one optimizer it is given, as INC does, and nothing else.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .._checks import check_flags
from ..config import PrunerConfig
from ..criteria import GradSampler
from ..pruning import Pruner
from .inc import WeightPruningConfig, inc_plan
from .inc.group_lasso import GroupLasso
from .plan import RecipePlan
from .translate import pruner_config

__all__ = ["CompressionManager", "PruningCallbacks", "PruningHandle", "prepare_compression", "prepare_pruning"]

logger = logging.getLogger(__name__)


class PruningCallbacks:
    """INC's callbacks (``on_train_begin`` ... ``on_train_end``, INC 1.x's ``on_batch_*`` names too) on top of
    any sparsify pruner.

    Args:
        pruner: a pruner that has not been prepared yet (``prepare`` runs in ``on_train_begin``).
        finalize_on_train_end: bake the masks in ``on_train_end`` (default ``True``).
        epochs: the pruner's schedule counts epochs, not optimizer steps (an INC 1.x ``weight_compression``
            config read without ``steps_per_epoch``): it advances in ``on_epoch_begin(epoch)``, as INC 1.x
            updates its masks at the start of each epoch, and the optimizer steps leave it alone.
    """

    def __init__(self, pruner: Pruner, *, finalize_on_train_end: bool = True, epochs: bool = False) -> None:
        if not isinstance(pruner, Pruner):
            raise TypeError(f"pruner must be a sparsify pruner, got {type(pruner).__name__}")
        check_flags("PruningCallbacks", finalize_on_train_end=finalize_on_train_end)
        self.pruner = pruner
        self.finalize_on_train_end = finalize_on_train_end
        self.epochs = epochs
        self._epoch = -1
        self.gradient_hooks: list[Any] = []  # called in on_before_optimizer_step (INC's group lasso)

    @property
    def model(self) -> nn.Module:
        """The model being trained (the finalized one after ``on_train_end``)."""
        return self.pruner.model

    def on_train_begin(self, dataloader: Any = None) -> None:
        """Install the masks in place (``dataloader`` is accepted for INC compatibility and unused)."""
        self.pruner.prepare(inplace=True)

    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """With an epoch schedule: bring the masks to the level of the start of ``epoch`` (counted from 0 when
        not given); otherwise nothing (INC compatibility)."""
        if not self.epochs:
            return
        if epoch is None:
            epoch = self._epoch + 1
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"on_epoch_begin(epoch={epoch!r}) is invalid: allowed an int >= 0")
        if epoch < self._epoch:
            logger.warning("on_epoch_begin(%d) after epoch %d: the masks do not go back; they stay at epoch %d's",
                           epoch, self._epoch, self._epoch)
            return
        self._epoch = epoch
        while self.pruner.step_count < epoch:  # epoch e begins after e schedule steps (epoch 0: at prepare)
            self.pruner.step()

    def on_step_begin(self, local_step: int | None = None) -> None:
        """No-op: masks are updated in `on_after_optimizer_step` (see the module docs)."""

    def on_before_optimizer_step(self) -> None:
        """Let gradient criteria fold in this step's gradients (and INC's gradient regularizers act)."""
        for hook in self.gradient_hooks:
            hook()
        observe = getattr(self.pruner, "observe_gradients", None)
        if observe is not None:
            observe()

    def on_after_optimizer_step(self) -> None:
        """Advance the schedules and recompute the masks that are due (a schedule in epochs: nothing)."""
        if not self.epochs:
            self.pruner.step()

    def on_step_end(self) -> None:
        """No-op (INC compatibility)."""

    on_batch_begin = on_step_begin  # INC 1.x's names
    on_batch_end = on_step_end

    def on_epoch_end(self) -> None:
        """With an epoch schedule: the masks of the next epoch's start, now (INC 1.x's gradient-sensitivity
        pruner cuts at an epoch's end; nothing trains in between); otherwise nothing."""
        if self.epochs and self._epoch >= 0:
            self.on_epoch_begin(self._epoch + 1)
            self._epoch -= 1  # the next on_epoch_begin(e + 1) is that same epoch

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


ConfigSource = PrunerConfig | WeightPruningConfig | RecipePlan | Mapping[str, Any] | str | Path


def _pruner(model: nn.Module, config: ConfigSource, steps_per_epoch: float | None, sampler: Any = None,
            *, epochs_allowed: bool = False) -> tuple[Pruner, bool, list[GroupLasso]]:
    """The pruner; whether its schedule counts epochs (an INC 1.x epoch config without ``steps_per_epoch``,
    where ``epochs_allowed``: the callbacks then advance it at each epoch start); and INC's gradient
    regularizers (1.x ``group_lasso``), to run before each optimizer step."""
    if isinstance(config, PrunerConfig):
        return Pruner(model, config, sampler), False, []
    plan = inc_plan(config)
    plan.warn_not_applied()
    epochs = steps_per_epoch is None and epochs_allowed and _counts_epochs(plan)
    pruner_cfg, resolved = pruner_config(plan, model, steps_per_epoch=1 if epochs else steps_per_epoch)
    pruner = Pruner(model, pruner_cfg, sampler)
    alphas = {name: float(r.group.options["group_lasso"]) for r in resolved if "group_lasso" in r.group.options
              for name, target in r.modules.items() if target is not None}
    return pruner, epochs, [GroupLasso(pruner, alphas)] if alphas else []


def _counts_epochs(plan: RecipePlan) -> bool:
    """Every scheduled group of the plan is in epochs (INC 1.x ``weight_compression``)."""
    units = {g.schedule.unit for g in plan.groups if g.schedule.curve != "hold"}
    return units == {"epoch"}


def prepare_compression(
    model: nn.Module,
    config: ConfigSource,
    *,
    finalize_on_train_end: bool = True,
    steps_per_epoch: float | None = None,
) -> CompressionManager:
    """INC's ``prepare_compression``: a manager whose ``.callbacks`` drive one `sparsify.Pruner`.

    ``config``: INC's ``WeightPruningConfig`` (`sparsify.compat.inc.WeightPruningConfig`), an INC config dict
    or YAML path (2.x, or 1.x with ``!Pruner`` entries), or a `sparsify.PrunerConfig`. INC configs are read
    with the model, by INC's rules, each pruner its own config entry. An INC 1.x config in epochs runs in
    epochs, as INC 1.x ran it: its masks move in ``on_epoch_begin(epoch)`` (give ``steps_per_epoch`` to
    spread them over optimizer steps instead). Anything that cannot be honoured is refused here, before the
    model is touched; the model is prepared in ``on_train_begin``.
    """
    pruner, epochs, regularizers = _pruner(model, config, steps_per_epoch, epochs_allowed=True)
    callbacks = PruningCallbacks(pruner, finalize_on_train_end=finalize_on_train_end, epochs=epochs)
    callbacks.gradient_hooks.extend(regularizers)
    return CompressionManager(callbacks)


class PruningHandle:
    """What `prepare_pruning` returns: the prepared `pruner`; `remove` gives the optimizer its own ``step``
    back; `finalize` bakes the masks (and removes)."""

    def __init__(self, pruner: Pruner, optimizer: Any = None) -> None:
        self.pruner = pruner
        self.optimizer = optimizer
        self._patched: Any = None

    @property
    def model(self) -> nn.Module:
        return self.pruner.model

    def remove(self) -> None:
        """Undo the optimizer patch (idempotent). When a learning-rate scheduler has since wrapped the patched
        ``step`` (as every ``torch.optim.lr_scheduler`` does), the wrapper stays and the patch passes straight
        through to the optimizer's own ``step``."""
        patched = getattr(self, "_patched", None)
        if patched is not None:
            patched.__func__.active = False
            if vars(self.optimizer).get("step") == patched:
                del self.optimizer.step
            self._patched = None
        self.optimizer = None

    def finalize(self) -> nn.Module:
        """Bake the masks into the model and remove the optimizer patch; returns the model."""
        self.remove()
        return self.pruner.finalize(inplace=True)


def prepare_pruning(
    model: nn.Module,
    config: ConfigSource,
    optimizer: Any = None,
    dataloader: Any = None,
    loss_func: Any = None,
    framework: str = "pytorch",
    device: str | None = None,
    *,
    steps_per_epoch: float | None = None,
) -> PruningHandle:
    """INC's ``prepare_pruning``: prepare ``model`` in place and prune as the optimizer steps.

    With ``optimizer``, that optimizer's ``step`` (on this instance only) first lets gradient criteria read
    the gradients, then steps, then advances the schedules — INC's patch, without INC's global
    ``torch.save`` patch (sparsify's masks save as plain buffers). With ``dataloader`` and no optimizer,
    the pruning is done now, in one shot, on that calibration data (``loss_func(output, target)``), and the
    model is finalized. ``framework`` must be ``"pytorch"``; ``device`` is unused (the model's own device).
    """
    if framework != "pytorch":
        raise ValueError(f"framework={framework!r} is invalid: allowed 'pytorch'")
    if optimizer is None and dataloader is None:
        raise ValueError("prepare_pruning needs an optimizer (training-aware pruning) or a dataloader (one shot)")
    sampler = None
    if dataloader is not None and optimizer is None:
        if loss_func is None:
            raise ValueError("one-shot prepare_pruning(model, config, dataloader=...) needs loss_func(output, target)")
        sampler = GradSampler(dataloader, loss_func)
    pruner, _, regularizers = _pruner(model, config, steps_per_epoch, sampler)
    pruner.prepare(inplace=True)
    if optimizer is None:
        if regularizers:
            logger.warning("group_lasso in one shot: INC's group-lasso term acts on training gradients; only its "
                           "magnitude pruning is applied")
        pruner.prune_now()
        pruner.finalize(inplace=True)
        return PruningHandle(pruner)
    original = optimizer.step

    def step(self: Any, closure: Any = None) -> Any:
        if not step.active:  # type: ignore[attr-defined]
            return original() if closure is None else original(closure)
        for regularize in regularizers:
            regularize()
        pruner.observe_gradients()
        result = original() if closure is None else original(closure)
        pruner.step()
        return result

    step.active = True  # type: ignore[attr-defined]
    # a bound method, as INC patches it: lr schedulers wrap ``optimizer.step.__func__`` (and count the steps)
    optimizer.step = types.MethodType(step, optimizer)
    handle = PruningHandle(pruner, optimizer)
    handle._patched = optimizer.step
    return handle
