"""Presets of the one machine: Core ML Tools' `MagnitudePruner`, and `prune` — one call, one shot."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torch import nn

from .._checks import check_flags
from ..calibration import CalibrationData
from ..config import MagnitudePrunerConfig, ModulePrunerConfig, OptimizationConfig, PrunerConfig
from .layer_levels import LAYER_LEVELS, owl_config
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
    sampler: CalibrationData | Mapping[str, Any] | Iterable[Any] | None = None,
    module_types: Any = None,
    keep_classifier_dense: bool = False,
    inplace: bool = False,
    layer_levels: str | None = None,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    **choices: Any,
) -> nn.Module:
    """Prune ``model`` to ``sparsity`` in one shot and return the finalized model (Core ML metadata included).

    Defaults: every ``Linear`` / ``Conv1d/2d/3d`` (and transformers' ``Conv1D``), magnitude criterion,
    unstructured, each layer at ``sparsity`` (``scope="local"``); a deep copy unless ``inplace=True``.
    ``choices`` are any other `sparsify.ModulePrunerConfig` fields — ``criterion``, ``pattern``,
    ``scope``, ``granularity``, ``block_size``, ``n_m_ratio``, ``dim``, ``min_sparsity``,
    ``max_sparsity``, ``normalize`` — and data-dependent criteria (``"snip"``, ``"mfac"``, …) need a ``sampler``::

        pruned = sparsify.prune(model, 0.8, criterion="mfac", scope="global", sampler=GradSampler(data, loss_fn))

    On a transformers language model the output head and the embeddings stay dense unless a name rule names
    them (`sparsify.pruning.language_models`). ``layer_levels="owl"`` gives each layer its own level by OWL
    (outlier-weighted layerwise sparsity; ``owl_m``, ``owl_lambda``: the paper's ``M = 5``, ``λ = 0.08``),
    measured on ``sampler``, with any criterion and pattern; the mean level stays ``sparsity``
    (`sparsify.pruning.owl`).
    """
    check_flags("prune", inplace=inplace, keep_classifier_dense=keep_classifier_dense)
    if "scheduler" in choices or "target_sparsity" in choices:
        raise TypeError("prune() prunes in one shot to `sparsity`: do not pass scheduler or target_sparsity")
    # the model comes back finalized either way; "inplace" masking reads each weight itself instead of keeping a
    # masked float copy of every pruned weight for the calibration forwards (docs/benchmarks.md, streaming)
    choices.setdefault("masking", "inplace")
    module_config = ModulePrunerConfig(target_sparsity=sparsity, **choices)
    if abs(module_config.final_sparsity - sparsity) > 1e-9:
        chosen = (f"n_m_ratio={module_config.n_m_ratio}" if module_config.n_m_ratio is not None
                  else f"pattern={module_config.pattern!r}")
        raise ValueError(
            f"prune(model, {sparsity}, {chosen}): that pattern prunes {module_config.final_sparsity:g} of each "
            f"layer, not {sparsity}; pass sparsity={module_config.final_sparsity:g} or another pattern"
        )
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
    if layer_levels is not None:
        if layer_levels not in LAYER_LEVELS:
            raise ValueError(f"layer_levels={layer_levels!r} is invalid: allowed {', '.join(LAYER_LEVELS)} or None")
        if sampler is None:
            raise ValueError("layer_levels='owl' measures each layer's outliers on calibration data: pass "
                             "sampler=<calibration data> (forward only, no loss needed)")
        config = owl_config(model, config, sampler, sparsity, m=owl_m, lam=owl_lambda)
    elif (owl_m, owl_lambda) != (5.0, 0.08):
        raise ValueError("owl_m / owl_lambda are OWL's settings: pass layer_levels='owl' with them")
    pruner = Pruner(model, config, sampler)
    pruner._require_targets = "prune()"  # nothing to prune is an error here, before the model is copied
    pruned = pruner.prepare(inplace=inplace)
    try:
        pruner.prune_now()
    except BaseException:
        pruner.abandon()  # nothing half-done is left in the user's model (inplace=True)
        raise
    pruner._zeros_current = True  # no code ran since the masks were set: their zeros need no second pass
    return pruner.finalize(pruned, inplace=True)

