"""Presets of the one machine: Core ML Tools' `MagnitudePruner`, and `prune` — one call, one shot."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from .._checks import check_flags
from ..config import MagnitudePrunerConfig, ModulePrunerConfig, OptimizationConfig, PrunerConfig
from ..criteria import GradSampler
from ..patterns import NMPattern
from .pruner import Pruner

__all__ = ["MagnitudePruner", "prune"]

logger = logging.getLogger(__name__)


class MagnitudePruner(Pruner):
    """Core ML Tools' magnitude pruner (Zhu & Gupta, 2017): drop-in for
    ``coremltools.optimize.torch.pruning.MagnitudePruner`` — `Pruner` with the magnitude × local preset.

    Example::

        config = MagnitudePrunerConfig().set_global(
            ModuleMagnitudePrunerConfig(target_sparsity=0.75,
                                        scheduler=PolynomialDecayScheduler(update_steps=range(0, 1000, 100))))
        pruner = MagnitudePruner(model, config)
        model = pruner.prepare(inplace=True)
        for batch in data:
            train_step(model, batch)
            pruner.step()
        model = pruner.finalize(inplace=True)
    """

    config_class: ClassVar[type[OptimizationConfig]] = MagnitudePrunerConfig

    def __init__(self, model: nn.Module, config: MagnitudePrunerConfig | None = None) -> None:
        super().__init__(model, config)


def prune(
    model: nn.Module,
    sparsity: float,
    *,
    sampler: GradSampler | Mapping[str, Any] | None = None,
    module_types: Any = None,
    keep_classifier_dense: bool = False,
    inplace: bool = False,
    **choices: Any,
) -> nn.Module:
    """Prune ``model`` to ``sparsity`` in one shot and return the finalized model (Core ML metadata included).

    Defaults: every ``Linear`` / ``Conv1d/2d/3d`` (and transformers' ``Conv1D``), magnitude criterion,
    unstructured, each layer at ``sparsity`` (``scope="local"``); a deep copy unless ``inplace=True``.
    ``choices`` are any other `sparsify.ModulePrunerConfig` fields — ``criterion``, ``pattern``,
    ``scope``, ``granularity``, ``block_size``, ``n_m_ratio``, ``dim``, ``min_sparsity``,
    ``max_sparsity``, ``normalize`` — and data-dependent criteria (``"snip"``, ``"mfac"``, …) need a ``sampler``::

        pruned = sparsify.prune(model, 0.8, criterion="mfac", scope="global", sampler=GradSampler(data, loss_fn))
    """
    check_flags("prune", inplace=inplace, keep_classifier_dense=keep_classifier_dense)
    if "scheduler" in choices or "target_sparsity" in choices:
        raise TypeError("prune() prunes in one shot to `sparsity`: do not pass scheduler or target_sparsity")
    module_config = ModulePrunerConfig(target_sparsity=sparsity, **choices)
    _warn_n_m_level(module_config)
    config = PrunerConfig(
        global_config=module_config, module_types=module_types, keep_classifier_dense=keep_classifier_dense
    )
    if module_config.criterion.needs_data and sampler is None:
        raise ValueError(
            f"criterion {module_config.criterion.kind!r} needs calibration data for one-shot pruning: "
            f"prune(model, {sparsity}, criterion=..., sampler=GradSampler(data, loss_fn))"
        )
    pruner = Pruner(model, config, sampler)
    pruner._require_targets = "prune()"  # nothing to prune is an error here, before the model is copied
    pruned = pruner.prepare(inplace=inplace)
    try:
        pruner.prune_now()
    except BaseException:
        pruner.abandon()  # nothing half-done is left in the user's model (inplace=True)
        raise
    return pruner.finalize(pruned, inplace=True)


def _warn_n_m_level(config: ModulePrunerConfig) -> None:
    """An n:m pattern prunes at most ``n / m``, and ``n_m_ratio`` exactly that: say so when ``sparsity`` differs."""
    pattern = config.pattern_spec()
    if not isinstance(pattern, NMPattern) or abs(config.target_sparsity - config.final_sparsity) < 1e-9:
        return
    spelled = f"n_m_ratio={config.n_m_ratio}" if config.n_m_ratio is not None else f"pattern={config.pattern!r}"
    if config.target_sparsity > pattern.max_sparsity:
        why = f"an n:m pattern prunes at most n/m = {pattern.max_sparsity:g}"
    else:
        why = (f"n_m_ratio always prunes n/m (Core ML Tools' rule); pattern='{pattern.n}:{pattern.m}' prunes "
               f"{config.target_sparsity:g} by whole runs (Neural Compressor's rule)")
    logger.warning("prune(sparsity=%g, %s) prunes %g: %s", config.target_sparsity, spelled,
                   config.final_sparsity, why)
