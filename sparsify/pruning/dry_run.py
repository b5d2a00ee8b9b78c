"""Which modules get pruned, and with what — visible before anything changes.

Matching rule (one rule, the engine's): names in ``module_name_configs`` are regular expressions
matched with `re.fullmatch` against the module's qualified name from ``named_modules()``, so
``"fc"`` matches only ``fc`` — not ``fc2`` nor ``head.fc``; write ``".*fc.*"`` for a substring
(Intel Neural Compressor's ``re.search`` rule) or ``"features\\.\\d+"`` for a family. The first
matching name pattern wins, then the module's type (exact class, then class name, then base
classes), then ``global_config``. A config of ``None`` at any level excludes the module.

`sparsify.PrunerConfig` adds two filters applied before those rules:
``module_types`` (only these classes, or subclasses, are pruned) and ``keep_classifier_dense``
(the classifier head — the **last** ``nn.Linear`` in ``named_modules()`` order, the module that
produces the logits in ordinary networks — is never pruned, as Intel Neural Compressor does).

`dry_run` applies exactly the pruner's own selection and validation to a model without
touching it and lists every module with the decision, the rule that made it and the config it
will get::

    print(sparsify.dry_run(model, config))
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import torch
from torch import nn

from .._table import text_table
from ..config import ModulePrunerConfig, OptimizationConfig
from ..patterns import Pattern
from .language_models import lm_exclusion, lm_parts_for
from .plan import Plan, SkipModule, check_target, classifier_head_name, is_transposed, tied_holders

__all__ = ["DryRunRow", "DryRunTable", "dry_run"]


@attrs.define
class DryRunRow:
    """One module in a dry run."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    action: str  # "prune", "skip" or "error"
    reason: str
    settings: dict[str, Any] = attrs.field(factory=dict)

    @property
    def params(self) -> int:
        count = 1
        for size in self.shape or ():
            count *= size
        return count if self.shape else 0


_COLUMNS = ("name", "type", "shape", "action", "reason", "pattern", "criterion", "final", "scope", "schedule")


TABLE_WIDTH = 100
"""Widest table line: past it, each row's settings become a key (``#1``) and reasons longer than
`_KEYED_CELL` another (``*1``), both spelled out under the table."""
_KEYED_CELL = 16


def _layout(table: list[list[str]]) -> list[str]:
    return text_table(table[:1], table[1:], left=len(table[0]))


def _keyed_layout(table: list[list[str]]) -> tuple[list[str], list[str]]:
    """The table with one ``settings`` column of keys, and the legend of the keys."""
    reasons: dict[str, str] = {}
    settings: dict[str, str] = {}
    rows = [[*table[0][:5], "settings"]]
    for row in table[1:]:
        reason = row[4]
        if len(reason) > _KEYED_CELL:
            reason = reasons.setdefault(reason, f"*{len(reasons) + 1}")
        described = ", ".join(f"{name} {value}" for name, value in zip(_COLUMNS[5:], row[5:]) if value)
        key = settings.setdefault(described, f"#{len(settings) + 1}") if described else ""
        rows.append([*row[:4], reason, key])
    legend = [f"{key} {text}" for text, key in reasons.items()] + [f"{key} {text}" for text, key in settings.items()]
    return _layout(rows), legend


class DryRunTable(list):
    """A list of `DryRunRow` that prints as a table."""

    def selected(self) -> list[str]:
        """Names of the modules that would be pruned."""
        return [row.name for row in self if row.action == "prune"]

    def __str__(self) -> str:
        table = [list(_COLUMNS)]
        for row in self:
            shape = "x".join(map(str, row.shape)) if row.shape else "-"
            cells = [row.name or "(root)", row.type, shape, row.action, row.reason]
            cells += [str(row.settings.get(c, "")) for c in _COLUMNS[5:]]
            table.append(cells)
        legend: list[str]
        lines, legend = _layout(table), []
        if max(map(len, lines)) > TABLE_WIDTH:
            lines, legend = _keyed_layout(table)
        pruned = [r for r in self if r.action == "prune"]
        total = sum(r.params for r in self if r.shape)
        lines += legend
        lines.append(
            f"{len(pruned)} of {len(self)} modules pruned, covering {sum(r.params for r in pruned)} of "
            f"{total} listed weights"
        )
        return "\n".join(lines)

    __repr__ = __str__


def _schedule_text(scheduler: Any) -> str:
    data = scheduler.as_dict() if hasattr(scheduler, "as_dict") else {}
    kind = data.pop("kind", getattr(scheduler, "kind", "") or type(scheduler).__name__)
    if "update_steps" in data:
        steps = list(data.pop("update_steps"))
        data["update_steps"] = f"{steps[0]}..{steps[-1]} ({len(steps)})" if len(steps) > 3 else steps
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in data.items()) + ")"


def _pattern_text(module_config: Any, pattern: Pattern) -> str:
    """The pattern as it will be applied, named as every report names it (`sparsify.analysis.pattern_names`):
    a pattern string as the config has it (``4x1``, ``2:4``), else `Pattern.label` (``2:4 dim 0``,
    ``unstructured``, ``block 4``, ``per_channel``, a registered pattern's name)."""
    if isinstance(module_config.pattern, str):
        return module_config.pattern
    return pattern.label


def _settings(module_config: Any, pattern: Pattern) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "pattern": _pattern_text(module_config, pattern),
        "criterion": module_config.criterion.describe(),
        "final": f"{module_config.final_sparsity:.4f}",
        "scope": module_config.scope,
        "schedule": _schedule_text(module_config.scheduler),
    }
    if module_config.scope == "global" or module_config.max_sparsity < 1.0:
        settings["scope"] += f" [{module_config.min_sparsity:g}, {module_config.max_sparsity:g}]"
    return settings


def dry_run(model: nn.Module, config: Any) -> DryRunTable:
    """List every module with what `sparsify.Pruner` would do to it — the model is not changed.

    Lists each module that owns parameters directly or is of a supported type (plain containers are left
    out). ``action`` is ``"prune"`` (with the settings it will get), ``"skip"`` (with the rule that excluded
    it, or why the pattern cannot apply) or ``"error"`` (with the message ``prepare()`` would raise).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, OptimizationConfig):
        raise TypeError(
            f"config must be a PrunerConfig (or Core ML Tools' MagnitudePrunerConfig), got {type(config).__name__}"
        )
    supported = config.supported_modules
    head = classifier_head_name(model) if getattr(config, "keep_classifier_dense", False) else None
    parts = lm_parts_for(model, config)
    rows = DryRunTable()
    plans: dict[str, Plan] = {}
    seen: dict[int, Plan] = {}
    for name, module in model.named_modules():
        is_supported = isinstance(module, supported)
        if not is_supported and not module._parameters:
            continue
        module_config, reason = None, f"type {type(module).__name__} is not supported"
        if is_supported:
            module_config, reason = config.lookup(name, module)
        assert module_config is None or isinstance(module_config, ModulePrunerConfig)
        param_name = module_config.param_name if module_config is not None else "weight"
        param = getattr(module, param_name, None)
        shape = tuple(param.shape) if isinstance(param, torch.Tensor) else None
        row = DryRunRow(name, type(module).__name__, shape, "skip", reason)
        excluded = lm_exclusion(parts, config, name) if module_config is not None else None
        if module_config is not None:
            if name == head:
                row.reason = "classifier head kept dense (keep_classifier_dense)"
            elif excluded is not None:
                row.reason = excluded
            else:
                try:
                    pattern = check_target(name, module, module_config)
                except SkipModule as skip:
                    row.reason = f"skipped: {skip}"
                except (ValueError, TypeError) as exc:
                    row.action, row.reason = "error", str(exc)
                else:
                    row.settings = _settings(module_config, pattern)
                    row.action = "prune"
                    param = getattr(module, module_config.param_name)
                    owner = seen.get(id(param))
                    if owner is None:  # a tied parameter's first holder owns the mask
                        seen[id(param)] = plans[name] = Plan(name, module_config, pattern, id(module_config), None,
                                                             None, is_transposed(module, param))
                    elif owner.config != module_config:  # prepare()'s refusal, in its words
                        row.action, row.settings = "error", {}
                        row.reason = (f"{name}.{module_config.param_name} is the same tensor as {owner.name}."
                                      f"{module_config.param_name} (tied weights) but the two modules have different "
                                      "configs; give them one config")
                    else:
                        row.reason += f" (tied to {owner.name}: shares its mask)"
        rows.append(row)
    _mark_tied(model, rows, plans, parts)
    return rows


def _mark_tied(model: nn.Module, rows: DryRunTable, plans: dict[str, Plan], parts: dict[str, str]) -> None:
    """Rows of modules that share a pruned parameter without being selected (`tied_holders`): ``prune`` with the
    owner's mask, or ``error`` where ``prepare()`` would refuse (on the holder's row when it is listed)."""
    by_name = {row.name: row for row in rows}
    selected = [row.name for row in rows if row.action in ("prune", "error")]  # an error row keeps its message
    for name, plan in plans.items():
        try:
            holders = tied_holders(model, [plan], parts, selected)
        except ValueError as exc:
            # "module 'x' holds ... under another name" goes on the holder's row (x cannot be pruned as it is);
            # "... is tied to module 'x', which no rule selects" on the owner's (select both, or exclude it)
            holder_name = re.match(r"module '([^']*)'", str(exc))
            row = by_name.get(holder_name.group(1)) if holder_name else None
            row = by_name[name] if row is None else row
            row.action, row.reason, row.settings = "error", str(exc), {}
            continue
        for holder in holders:
            row = by_name.get(holder.name)
            if row is not None:
                row.action, row.reason = "prune", f"tied to {name!r}: shares its weight and mask"
                row.settings = dict(by_name[name].settings)
