"""INC's ``WeightPruningConfig`` and `from_inc_config`: an INC pruning config as a `sparsify.PrunerConfig`."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from torch import nn

from ...config import SUPPORTED_MODULES, ModulePrunerConfig, PrunerConfig
from ..plan import IncOps, PruningGroup, RecipePlan, UnsupportedFeatureError
from ..translate import global_group_names, module_config, pruner_config, scheduler_for
from .reader import INC_DEFAULTS, read_inc_config

__all__ = ["WeightPruningConfig", "from_inc_config", "inc_plan"]

logger = logging.getLogger(__name__)


class WeightPruningConfig:
    """INC 2.x's ``WeightPruningConfig(pruning_configs, **global keys)``, kept as the dict INC would read.

    Every key is INC's, with INC's defaults; `sparsify.compat.inc.reader` reads it (unknown keys are
    ignored with a warning, as INC does). Pass it to `prepare_compression` / `prepare_pruning`, or turn it
    into a `sparsify.PrunerConfig` with `from_inc_config` (``config.to_pruner_config(model)``).
    """

    def __init__(self, pruning_configs: list[Mapping[str, Any]] | None = None, target_sparsity: float = 0.9,
                 pruning_type: str = "snip_momentum", pattern: str = "4x1", op_names: list[str] | None = None,
                 excluded_op_names: list[str] | None = None, start_step: int = 0, end_step: int = 0,
                 pruning_scope: str = "global", pruning_frequency: int = 1, min_sparsity_ratio_per_op: float = 0.0,
                 max_sparsity_ratio_per_op: float = 0.98, sparsity_decay_type: str = "exp",
                 pruning_op_types: list[str] | None = None, low_memory_usage: bool = False, **kwargs: Any) -> None:
        self.pruning_configs = [dict(c) for c in (pruning_configs if pruning_configs is not None else [{}])]
        self.weight_compression: dict[str, Any] = {
            "target_sparsity": target_sparsity, "pruning_type": pruning_type, "pattern": pattern,
            "op_names": list(op_names or []), "excluded_op_names": list(excluded_op_names or []),
            "start_step": start_step, "end_step": end_step, "pruning_scope": pruning_scope,
            "pruning_frequency": pruning_frequency, "min_sparsity_ratio_per_op": min_sparsity_ratio_per_op,
            "max_sparsity_ratio_per_op": max_sparsity_ratio_per_op, "sparsity_decay_type": sparsity_decay_type,
            "pruning_op_types": list(pruning_op_types or INC_DEFAULTS["pruning_op_types"]),
            "low_memory_usage": low_memory_usage, **kwargs,
        }

    def as_dict(self) -> dict[str, Any]:
        """``{"pruning_configs": [...], **global keys}``, the form `read_inc_config` reads."""
        return {"pruning_configs": [dict(c) for c in self.pruning_configs], **self.weight_compression}

    def plan(self) -> RecipePlan:
        return read_inc_config(self.as_dict())

    def to_pruner_config(self, model: nn.Module | None = None) -> PrunerConfig:
        return from_inc_config(self, model)


def inc_plan(source: WeightPruningConfig | RecipePlan | Mapping[str, Any] | str | Path | IO[str]) -> RecipePlan:
    """The plan of any INC config form (a `WeightPruningConfig`, a dict, a YAML path or stream)."""
    if isinstance(source, RecipePlan):
        return source
    if isinstance(source, WeightPruningConfig):
        return source.plan()
    return read_inc_config(source)


def from_inc_config(source: WeightPruningConfig | Mapping[str, Any] | str | Path | IO[str],
                    model: nn.Module | None = None) -> PrunerConfig:
    """An INC pruning config (any form) as one `sparsify.PrunerConfig`; each INC pruner is one config entry.

    With ``model`` the layers are selected now, by INC's rules exactly (`sparsify.compat.plan`). Without
    it the config keeps INC's rules as name patterns (``op_names`` / ``excluded_op_names`` searched
    anywhere in the name), layer types as ``module_types`` and the classifier head as
    ``keep_classifier_dense`` — the engine's head is the last ``Linear``, INC's the last module when it is a
    ``Linear`` or ``Conv2d``; pass the model where that differs, and for ``pattern_lock`` or INC 1.x
    configs, which need it.
    """
    plan = inc_plan(source)
    if model is not None:
        return pruner_config(plan, model)[0]
    return _model_free(plan)


def _search(patterns: tuple[str, ...]) -> str:
    return "|".join(f".*(?:{p}).*" for p in patterns) or ".*"


def _model_free(plan: RecipePlan) -> PrunerConfig:
    names: dict[str, ModulePrunerConfig | None] = {}
    type_sets: set[tuple[str, ...]] = set()
    types: tuple[str, ...] | None
    for group, label in zip(plan.groups, global_group_names(plan.groups), strict=True):
        selection = group.targets[0].selection
        if group.method == "lock" or not isinstance(selection, IncOps):
            raise UnsupportedFeatureError(f"{group.origin.entry}: {group.method} without the model",
                                          "pass the model: from_inc_config(config, model)", group.origin.path,
                                          group.origin.line)
        supported = [t.__name__ for t in SUPPORTED_MODULES]
        if selection.type_match == "exact":
            types = tuple(t for t in supported if t in selection.op_types)
        else:
            types = tuple(t for t in supported if any(s in t for s in selection.op_types))
        type_sets.add(types)
        guard = "(?!" + "|".join(f".*(?:{p})" for p in selection.excluded) + ")" if selection.excluded else ""
        key = guard + "(?:" + _search(selection.op_names) + ")"
        names[key] = _group_config(group, label)
    if len(type_sets) > 1:
        raise UnsupportedFeatureError(
            f"{plan.path or 'INC config'}: pruners with different pruning_op_types",
            f"without the model one module_types list serves every pruner ({sorted(type_sets)}); pass the model: "
            f"from_inc_config(config, model)", plan.path, None)
    types = type_sets.pop() if type_sets else None
    if types == ():
        raise UnsupportedFeatureError(f"{plan.path or 'INC config'}: pruning_op_types", "it names no Linear or Conv "
                                      "type", plan.path, None)
    return PrunerConfig(module_name_configs=names, module_types=types,
                        keep_classifier_dense=any(isinstance(g.targets[0].selection, IncOps) and
                                                  g.targets[0].selection.drop_classifier_head for g in plan.groups))


def _group_config(group: PruningGroup, label: str) -> ModulePrunerConfig:
    """One INC pruner as a module config, model-free: the translator with a model (`module_config`) with no
    module to look at (INC's channel tiles on convs become whole channels)."""
    target = group.targets[0].sparsity
    assert target is not None
    if group.structure.kind == "tile" and re.match(r"channelx", group.structure.tile or ""):
        logger.info("%s: pattern %r on a convolution prunes whole input channels here; INC prunes one input "
                    "channel at one kernel position: pass the model for INC's exact tiles", group.origin,
                    group.structure.tile)
    # a global group is named, so that it ranks the same after as_dict / to_yaml
    return module_config(group, None, target, scheduler_for(group, None, False), one_shot=False, global_group=label)
