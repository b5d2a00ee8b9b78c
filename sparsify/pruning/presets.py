"""Presets of the one machine: Core ML Tools' `MagnitudePruner`, and `prune` — one call, one shot."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torch import nn

from ..calibration import CalibrationData
from ..config import MagnitudePrunerConfig, ModulePrunerConfig, OptimizationConfig, PrunerConfig
from .pruner import Pruner

__all__ = ["MagnitudePruner", "prune"]


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
    sampler: CalibrationData | Mapping[str, Any] | Iterable[Any] | None = None,
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
    if "scheduler" in choices or "target_sparsity" in choices:
        raise TypeError("prune() prunes in one shot to `sparsity`: do not pass scheduler or target_sparsity")
    module_config = ModulePrunerConfig(target_sparsity=sparsity, **choices)
    config = PrunerConfig(
        global_config=module_config, module_types=module_types, keep_classifier_dense=keep_classifier_dense
    )
    if module_config.criterion.needs_data and sampler is None:
        kind = module_config.criterion.kind
        wanted = ("sampler=<calibration data> (forward only, no loss needed: e.g. a list of {'input_ids': ..., "
                  "'attention_mask': ...} dicts or of input tensors)" if module_config.criterion.layerwise
                  else "sampler=GradSampler(data, loss_fn) (or data whose items carry labels for a model that "
                  "returns its loss)")
        raise ValueError(
            f"criterion {kind!r} needs calibration data for one-shot pruning: "
            f"prune(model, {sparsity}, criterion={kind!r}, {wanted})"
        )
    pruner = Pruner(model, config, sampler)
    pruned = pruner.prepare(inplace=inplace)
    try:
        pruner.prune_now()
    except BaseException:
        pruner.abandon()  # nothing half-done is left in the user's model (inplace=True)
        raise
    return pruner.finalize(pruned, inplace=True)
