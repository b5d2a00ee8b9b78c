"""Planning: which modules are pruned, with which config and pattern — decided and validated before the
model is touched, so that ``prepare()`` either installs everything or changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..config import ModulePrunerConfig, OptimizationConfig
from ..config.model import Conv1D
from ..mask_layout import has_mask_layout, mask_name, orig_name
from ..masking import is_masked
from ..patterns import Pattern, SkipWeight, Usage
from .groups import check_groups, ranking_group
from .language_models import lm_exclusion, lm_parts_for

__all__ = [
    "TRANSPOSED_MODULES",
    "Plan",
    "SkipModule",
    "Target",
    "check_target",
    "classifier_head_name",
    "hook_fields",
    "inplace_backup",
    "is_transposed",
    "masked_by",
    "nothing_selected",
    "pattern_shape",
    "plan_model",
    "reading_parent",
    "tied_holders",
]

logger = logging.getLogger(__name__)

#: module types whose rank-2 weight is stored ``[in_features, out_features]`` (transformers' ``Conv1D``)
TRANSPOSED_MODULES: tuple[type[nn.Module], ...] = (Conv1D,)


class SkipModule(Exception):
    """A selected module that cannot be pruned as configured and is skipped (with a warning), as Core ML
    Tools and Neural Compressor skip such modules; the message says why."""


@attrs.define(eq=False)
class Target:
    """One pruned module as the pruner tracks it (Core ML Tools' ``_pruner_info`` values)."""

    name: str
    module: nn.Module
    config: ModulePrunerConfig
    pattern: Pattern
    entry: Hashable  # the global ranking it joins: its config's global_group or its entry (`groups.ranking_group`)
    sparsity_level: float
    tied_to: list[str] = attrs.field(factory=list)  # other modules holding the same parameter
    transposed: bool = False  # the weight is [in, out]: patterns see its transpose (see `is_transposed`)

    @property
    def param_name(self) -> str:
        return self.config.param_name

    @property
    def orig(self) -> nn.Parameter:
        return getattr(self.module, orig_name(self.param_name))

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, mask_name(self.param_name))


@attrs.define
class Plan:
    """What `plan_model` decided for one module."""

    name: str
    config: ModulePrunerConfig
    pattern: Pattern
    entry: Hashable  # see `Target.entry`
    reader: str | None  # a parent that reads the weight outside the module's forward (MHA out_proj)
    owner: str | None  # for a tied weight, the module whose mask this one shares
    transposed: bool = False  # see `is_transposed`


def is_transposed(module: nn.Module, param: torch.Tensor) -> bool:
    """Whether ``param`` of ``module`` is a weight stored ``[in, out]`` (transformers' ``Conv1D``).

    Patterns are written for ``[out, in, *kernel]`` weights, so such a weight is scored, grouped and
    ranked through its transpose and its mask stored transposed back (`sparsify.pruning.update`): a
    ``"1xchannel"`` row is then an output feature — a *column* of the stored weight — and n:m runs
    along input features, as for the equivalent ``nn.Linear``.
    """
    return isinstance(module, TRANSPOSED_MODULES) and param.dim() == 2


def pattern_shape(module: nn.Module, param: torch.Tensor) -> tuple[int, ...]:
    """The ``[out, in, *kernel]`` shape patterns see for ``param`` of ``module``."""
    shape = tuple(param.shape)
    return shape[::-1] if is_transposed(module, param) else shape


def classifier_head_name(model: nn.Module) -> str | None:
    """The qualified name of the last ``nn.Linear`` in ``named_modules()`` order, or ``None``."""
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            head = name
    return head


def reading_parent(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """The parent that reads ``module``'s weight in its own forward, if any (MHA ``out_proj``)."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name)
    if parent is not module and isinstance(parent, nn.MultiheadAttention) and parent.out_proj is module:
        return parent_name
    return None


def check_target(name: str, module: nn.Module, config: ModulePrunerConfig, *, masked: bool = False) -> Pattern:
    """Validate one module against its config and return the pattern to apply to it.

    Raises `SkipModule` (with the reason) for a module to leave dense, and ``ValueError`` / ``TypeError``
    naming the module for what cannot be pruned as asked. ``masked=True`` admits a weight a sparsify
    ``Pruner`` already masks (the analysis tools prune on top of its mask) and checks its ``<param>_orig``.
    """
    where = f"module {name!r} ({type(module).__name__})"
    owner = masked_by(module, config.param_name)
    if owner is not None and not (masked and is_masked(module, config.param_name)):
        raise ValueError(f"{where}.{config.param_name} is already masked by {owner}; {_UNMASK_FIRST}")
    param = getattr(module, orig_name(config.param_name) if owner is not None else config.param_name, None)
    if not isinstance(param, nn.Parameter):
        raise ValueError(f"{where} has no parameter param_name={config.param_name!r} to prune")
    if not param.is_floating_point():
        raise TypeError(f"{where}.{config.param_name} has dtype {param.dtype}: only floating-point weights prune")
    if param.numel() == 0:
        raise SkipModule(f"{where}: {config.param_name} has no elements, nothing to prune")
    if isinstance(module, nn.Embedding):
        _check_embedding(where, module)
    shape = pattern_shape(module, param)
    if is_transposed(module, param):
        where += " (weight stored [in, out], seen here as [out, in])"
    spelled = None if config.pattern is None else f"pattern={config.pattern!r}"
    usage = Usage(where, config.scope, None if config.n_m_ratio is not None else config.target_sparsity, spelled)
    try:
        return config.pattern_spec().fit(shape, usage)
    except SkipWeight as exc:  # Neural Compressor skips a layer its tiles (or runs) do not divide, too
        raise SkipModule(str(exc)) from exc


_UNMASK_FIRST = ("a second pruner cannot mask a weight again: finalize() the first pruner (or abandon() it to "
                 "undo its prepare()) before preparing another, or prune everything with one pruner and one config")


def masked_by(module: nn.Module, param_name: str) -> str | None:
    """Who already masks ``module.<param_name>``: ``"a sparsify Pruner"``, ``"torch.nn.utils.prune (or Core ML
    Tools)"`` (their ``<name>_orig`` / ``<name>_mask`` layout), or ``None``."""
    if is_masked(module, param_name):
        return "a sparsify Pruner"
    hooked = any(isinstance(h, torch_prune.BasePruningMethod) and getattr(h, "_tensor_name", None) == param_name
                 for h in module._forward_pre_hooks.values())
    if hooked or has_mask_layout(module, param_name):
        return "torch.nn.utils.prune (or Core ML Tools)"
    return None


def _refuse_masked(model: nn.Module, config: OptimizationConfig, head: str | None) -> None:
    """A second pruner on a prepared model: refused up front, naming every selected module already masked."""
    masked = []
    for name, module in model.named_modules(remove_duplicate=True):
        if not isinstance(module, config.supported_modules) or name == head:
            continue
        module_config = config.get_module_config(name, module)
        param_name = getattr(module_config, "param_name", "weight")
        owner = None if module_config is None else masked_by(module, param_name)
        if owner is not None:
            masked.append((name, owner))
    if masked:
        listed = ", ".join(repr(n) for n, _ in masked[:5]) + (f" and {len(masked) - 5} more" if len(masked) > 5 else "")
        owners = " / ".join(sorted({o for _, o in masked}))
        raise ValueError(f"the model is already prepared for pruning: {len(masked)} module(s) the config selects are "
                         f"already masked by {owners} ({listed}); {_UNMASK_FIRST}")


def _check_embedding(where: str, module: nn.Embedding) -> None:
    """An embedding table prunes like a ``Linear`` weight ``[num_embeddings, embedding_dim]`` (a row is one
    token, n:m runs along the embedding dimension), except in two modes that write or return the weight in a
    form the mask cannot follow."""
    if module.sparse:
        raise ValueError(f"{where} has sparse=True: its gradient is a sparse tensor, which the mask cannot multiply "
                         "in place; use sparse=False while pruning")
    if module.max_norm is not None:
        raise ValueError(f"{where} has max_norm={module.max_norm}: its forward rescales the looked-up rows of the "
                         "weight in place, which would rewrite the masked copy, not the weight; set max_norm=None "
                         "while pruning")


def plan_model(model: nn.Module, config: OptimizationConfig, *, masked: bool = False) -> list[Plan]:
    """Decide what to prune and validate every choice; nothing is changed. ``masked=True``: weights a sparsify
    ``Pruner`` already masks are planned too (`check_target`), for the analysis tools."""
    head = classifier_head_name(model) if getattr(config, "keep_classifier_dense", False) else None
    if not masked:
        _refuse_masked(model, config, head)
    parts = lm_parts_for(model, config)
    _warn_unsupported_name_rules(model, config)
    _warn_dense_conv1d(model, config)
    plans: list[Plan] = []
    by_param: dict[int, Plan] = {}
    for name, module in model.named_modules(remove_duplicate=True):
        if not isinstance(module, config.supported_modules) or name == head:
            continue
        module_config, rule = config.lookup(name, module)
        if module_config is None:
            continue
        excluded = lm_exclusion(parts, config, name)
        if excluded is not None:
            logger.info("module %r: %s", name, excluded)
            continue
        assert isinstance(module_config, ModulePrunerConfig)
        try:
            pattern = check_target(name, module, module_config, masked=masked)
        except SkipModule as skip:
            logger.warning("%s; skipped", skip)
            continue
        param = getattr(module, module_config.param_name)
        owner = by_param.get(id(param))
        if owner is not None and owner.config != module_config:
            raise ValueError(
                f"{name}.{module_config.param_name} is the same tensor as {owner.name}.{module_config.param_name} "
                f"(tied weights) but the two modules have different configs; give them one config"
            )
        plan = Plan(name, module_config, pattern, ranking_group(module_config, rule),
                    reading_parent(model, name, module), owner.name if owner is not None else None,
                    is_transposed(module, param))
        by_param.setdefault(id(param), plan)
        plans.append(plan)
    plans += tied_holders(model, plans, parts)
    check_groups(plans)
    return plans


def tied_holders(
    model: nn.Module, plans: list[Plan], parts: dict[str, str] | None = None, selected: Iterable[str] = ()
) -> list[Plan]:
    """Modules of any type (an ``Embedding`` tied to a head) that hold a parameter being pruned but that no rule
    selected: they share its mask, so training, validation and the finalized model all see the same weights.

    Refused (``ValueError`` naming both modules) when the holder is a language-model part (``parts``,
    `sparsify.pruning.language_models`) or the criterion is layer-wise: a tied weight is then changed only when
    both modules are selected by rules. ``selected``: more modules the rules selected (besides ``plans``)."""
    parts = {} if parts is None else parts
    owners = {id(getattr(model.get_submodule(p.name), p.config.param_name)): p for p in plans if p.owner is None}
    planned = {p.name for p in plans} | set(selected)
    extra = []
    for name, module in model.named_modules(remove_duplicate=True):
        if name in planned:
            continue
        for param_name, param in module._parameters.items():
            plan = owners.get(id(param))
            if plan is not None and (name in parts or plan.config.criterion.layerwise):
                why = (f"the language-model {parts[name]}" if name in parts
                       else f"criterion {plan.config.criterion.kind!r} would rewrite it")
                raise ValueError(
                    f"{plan.name}.{plan.config.param_name} is tied to module {name!r} ({type(module).__name__}) as "
                    f"its {param_name!r}, which no rule selects ({why}): pruning it through {plan.name!r} alone "
                    f"would change {name!r} too; select both with one config (module_name_configs="
                    f"{{{plan.name!r}: config, {name!r}: config}}), exclude {plan.name!r} or untie them"
                )
            if plan is not None and param_name == plan.config.param_name:
                if isinstance(module, nn.Embedding):
                    _check_embedding(f"module {name!r} (Embedding, tied to {plan.name!r})", module)
                logger.info("module %r (%s) shares %s with %r: it gets the same mask", name, type(module).__name__,
                            param_name, plan.name)
                extra.append(Plan(name, plan.config, plan.pattern, plan.entry, None, plan.name, plan.transposed))
            elif plan is not None:
                raise ValueError(
                    f"module {name!r} holds {plan.name}.{plan.config.param_name} as its {param_name!r}: a tied "
                    f"parameter under another name cannot share a mask; exclude {plan.name!r} or untie them"
                )
    return extra


def _warn_unsupported_name_rules(model: nn.Module, config: Any) -> None:
    """A name rule that matches only modules sparsify does not prune is almost surely a mistake: say so."""
    for pattern, module_config in config.module_name_configs.items():
        if module_config is None:
            continue
        matched = [(n, m) for n, m in model.named_modules() if re.fullmatch(pattern, n)]
        unsupported = [(n, type(m).__name__) for n, m in matched if not isinstance(m, config.supported_modules)
                       and m._parameters]
        if unsupported and len(unsupported) == len(matched):
            allowed = ", ".join(t.__name__ for t in config.supported_modules)
            logger.warning(
                "name rule %r matches only module(s) sparsify does not prune: %s (supported: %s)", pattern,
                ", ".join(f"{n} ({t})" for n, t in unsupported), allowed,
            )


def nothing_selected(model: nn.Module, config: OptimizationConfig) -> str:
    """Why ``config`` selects no module of ``model``: the types it looks for, those the model has, and how to
    bring a layer in."""
    looked_for = ", ".join(t.__name__ for t in config.supported_modules if t is not nn.Embedding)
    if nn.Embedding in config.supported_modules:
        looked_for += " (and Embedding when a rule or module_types names it)"
    present = sorted({type(m).__name__ for m in model.modules() if m._parameters}) or ["none"]
    candidates = sum(isinstance(m, config.supported_modules) for m in model.modules())
    if candidates:
        how = (f"its rules exclude all {candidates} module(s) of those types (module_types, name or type rules set "
               "to None, keep_classifier_dense); sparsify.dry_run(model, config) gives each one's reason")
    else:
        how = ("a custom layer is pruned when it subclasses one of those types (nn.Linear, nn.Conv2d, ...), "
               "Embedding tables with module_types=['Embedding']")
    return (f"the config selects no module of this {type(model).__name__}: it prunes {looked_for}, and the model's "
            f"layers with parameters are {', '.join(present)}; {how}")


def _warn_dense_conv1d(model: nn.Module, config: OptimizationConfig) -> None:
    """Core ML Tools' preset prunes its four module types only, so GPT-2's ``Conv1D`` layers stay dense: say so
    once, with how to include them."""
    if Conv1D in config.supported_modules:
        return
    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    if names:
        kinds = ", ".join(t.__name__ for t in config.supported_modules)
        logger.warning(
            "%s prunes Core ML Tools' module types (%s) only: %d transformers Conv1D layer(s) (e.g. %r) stay dense; "
            "to prune them, use sparsify.Pruner with a PrunerConfig, which includes Conv1D (e.g. PrunerConfig("
            "module_type_configs={'Conv1D': ModulePrunerConfig(...)}), or module_types=[..., 'Conv1D'])",
            type(config).__name__, kinds, len(names), names[0],
        )


def inplace_backup(targets: Iterable[Target]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Copies of the parameters of the ``masking="inplace"`` targets, whose pruned entries are about to be
    zeroed in the user's own parameters: what `Pruner.prepare` puts back if it is interrupted."""
    return [(target.orig, target.orig.detach().clone()) for target in targets if target.config.masking == "inplace"]


def hook_fields(plan: Plan | Target) -> dict[str, Any]:
    """What the mask hook records of the pattern, for reports and Core ML Tools–style introspection:
    `Pattern.describe` and `Pattern.record_fields` (also what ``sparsity.json`` saves)."""
    pattern = plan.pattern
    return {"pattern": pattern.describe(), **pattern.record_fields()}
