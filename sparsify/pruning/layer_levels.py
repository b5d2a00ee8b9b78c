"""Per-layer levels for `sparsify.prune`: ``layer_levels="owl"`` turns one config into one per module.

The modules the config selects (`plan_model`: language-model defaults, ``module_types`` and
``keep_classifier_dense`` included) are measured on the calibration data (`sparsify.pruning.owl`); each then
gets the config with its own ``target_sparsity`` — or, for a pattern that reaches only some levels
(`Pattern.level_steps`: n:m's multiples of ``1 / m``), its own level among them (n:m: its own ``n`` with ``m``
fixed) — as a name rule. The criterion, pattern family and every other field stay the user's.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from torch import nn

from ..config import ModulePrunerConfig, PrunerConfig
from .owl import nm_counts, owl_levels
from .plan import plan_model

__all__ = ["LAYER_LEVELS", "owl_config"]

#: the ``layer_levels`` choices of `sparsify.prune`
LAYER_LEVELS = ("owl",)


def owl_config(
    model: nn.Module, config: PrunerConfig, sampler: Any, sparsity: float, *, m: float, lam: float
) -> PrunerConfig:
    """``config`` (one ``global_config``) as one name rule per selected module at its OWL level."""
    base = config.global_config
    assert base is not None
    if base.scope != "local":
        raise ValueError(f"layer_levels='owl' sets each layer's level itself: scope={base.scope!r} is not allowed "
                         f"with it (use scope='local')")
    names = [plan.name for plan in plan_model(model, config) if plan.owner is None]
    owl = owl_levels(model, sampler, sparsity, names, m=m, lam=lam)
    pattern = base.pattern_spec()
    rules: dict[str, ModulePrunerConfig | None] = {}
    steps = pattern.level_steps
    if steps is not None:  # levels k / steps only (n:m: k zeros of every m), keeping the total
        sizes = {name: model.get_submodule(name).get_parameter("weight").numel() for name in names}
        counts = nm_counts(owl.levels, sizes, round(pattern.max_sparsity * steps), steps)
        for name, k in counts.items():
            if k == 0:
                rules[re.escape(name)] = None
            elif base.n_m_ratio is not None:
                rules[re.escape(name)] = attrs.evolve(base, n_m_ratio=(k, steps))
            else:
                rules[re.escape(name)] = attrs.evolve(base, pattern=pattern.at_level(k / steps),
                                                      target_sparsity=k / steps)
    else:
        for name, level in owl.levels.items():
            rules[re.escape(name)] = attrs.evolve(base, target_sparsity=level,
                                                  initial_sparsity=min(base.initial_sparsity, level))
    return PrunerConfig(module_name_configs=rules, module_types=config.module_types,
                        keep_classifier_dense=config.keep_classifier_dense)
