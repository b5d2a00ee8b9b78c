"""Which modules get pruned, and with what — visible before anything changes.

Matching rule (one rule, the engine's): names in ``module_name_configs`` are regular expressions
matched with `re.fullmatch` against the module's qualified name from ``named_modules()``, so
``"fc"`` matches only ``fc`` — not ``fc2`` nor ``head.fc``; write ``".*fc.*"`` for a substring
(Intel Neural Compressor's ``re.search`` rule) or ``"features\\.\\d+"`` for a family. The first
matching name pattern wins, then the module's type (exact class, then class name, then base
classes), then ``global_config``. A config of ``None`` at any level excludes the module.

`sparsify.gradual.GradualPrunerConfig` adds two filters applied before those rules:
``module_types`` (only these classes, or subclasses, are pruned) and ``keep_classifier_dense``
(the classifier head — the **last** ``nn.Linear`` in ``named_modules()`` order, the module that
produces the logits in ordinary networks — is never pruned, as Intel Neural Compressor does).

`dry_run` applies exactly the pruner's own selection and validation to a model without
touching it and lists every module with the decision, the rule that made it and the config it
will get::

    print(sparsify.selection.dry_run(model, config))
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from torch import nn

__all__ = ["DryRunRow", "DryRunTable", "classifier_head_name", "dry_run", "explain_module_config"]


def classifier_head_name(model: nn.Module) -> str | None:
    """The qualified name of the last ``nn.Linear`` in ``named_modules()`` order, or ``None``."""
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            head = name
    return head


def explain_module_config(config: Any, name: str, module: nn.Module) -> tuple[Any, str]:
    """``(module config or None, reason)``: the engine's ``get_module_config`` precedence, with the rule named.

    Gives the same config as ``config.get_module_config(name, module)`` (tested), plus a
    human-readable reason.
    """
    types = getattr(config, "module_types", None)
    if types is not None and not any(k.__name__ in types for k in type(module).__mro__):
        return None, f"type {type(module).__name__} not in module_types {list(types)}"
    for pattern, module_config in config.module_name_configs.items():
        if re.fullmatch(pattern, name):
            if module_config is None:
                return None, f"excluded by name rule '{pattern}'"
            return module_config, f"name rule '{pattern}'"
    for klass in type(module).__mro__:
        for key in (klass, klass.__name__):
            if key in config.module_type_configs:
                module_config = config.module_type_configs[key]
                label = key if isinstance(key, str) else key.__name__
                if module_config is None:
                    return None, f"excluded by type rule {label!r}"
                return module_config, f"type rule {label!r}"
    if config.global_config is None:
        return None, "no rule matches and global_config is None"
    return config.global_config, "global_config"


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
        widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        pruned = [r for r in self if r.action == "prune"]
        total = sum(r.params for r in self if r.shape)
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


def _settings(module_config: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    n_m = getattr(module_config, "n_m_ratio", None)
    pattern = getattr(module_config, "pattern", None)
    if n_m is not None:
        settings["pattern"] = f"n:m {n_m[0]} zeros of {n_m[1]} (dim {getattr(module_config, 'dim', 1)})"
    elif pattern is not None:
        settings["pattern"] = getattr(pattern, "text", pattern)
    else:
        block = getattr(module_config, "block_size", 1)
        settings["pattern"] = getattr(module_config, "granularity", "") + (f", block {block}" if block > 1 else "")
    criterion = getattr(module_config, "criterion", None)
    settings["criterion"] = criterion.kind if criterion is not None else "magnitude"
    final = getattr(module_config, "final_sparsity", getattr(module_config, "target_sparsity", None))
    if final is not None:
        settings["final"] = f"{final:.4f}"
    scope = getattr(module_config, "scope", "local")
    if scope == "global":
        lo, hi = getattr(module_config, "min_sparsity", 0.0), getattr(module_config, "max_sparsity", 1.0)
        scope += f" [{lo:g}, {hi:g}]"
    settings["scope"] = scope
    if hasattr(module_config, "scheduler"):
        settings["schedule"] = _schedule_text(module_config.scheduler)
    return settings


def _pruner_class(config: Any) -> type:
    from .pruner import BasePruner

    queue = [BasePruner]  # breadth first: the most general pruner for the config wins over its subclasses
    while queue:
        cls = queue.pop(0)
        if getattr(cls, "config_class", None) is type(config) and cls is not BasePruner:
            return cls
        queue.extend(cls.__subclasses__())
    if type(config) is BasePruner.config_class:
        return BasePruner
    raise TypeError(f"no pruner is registered for a config of type {type(config).__name__}")


def dry_run(model: nn.Module, config: Any, pruner_class: type | None = None) -> DryRunTable:
    """List every module with what the pruner would do to it — the model is not changed.

    Lists each module that owns parameters directly or is of a type the pruner supports (plain
    containers are left out). ``action`` is ``"prune"`` (with the settings it will get), ``"skip"``
    (with the rule that excluded it) or ``"error"`` (with the message ``prepare()`` would raise).
    ``pruner_class`` defaults to the pruner whose ``config_class`` is ``type(config)``.
    """
    pruner_cls = pruner_class or _pruner_class(config)
    pruner = pruner_cls(model, config)
    supported = pruner.supported_modules
    head = pruner.head_to_keep(model) if hasattr(pruner, "head_to_keep") else None
    rows = DryRunTable()
    for name, module in model.named_modules():
        is_supported = isinstance(module, supported)
        if not is_supported and not module._parameters:
            continue
        param_name = "weight"
        module_config, reason = (None, f"type {type(module).__name__} is not supported by {pruner_cls.__name__}")
        if is_supported:
            module_config, reason = explain_module_config(config, name, module)
            if module_config is not None:
                param_name = module_config.param_name
        param = getattr(module, param_name, None)
        shape = tuple(param.shape) if param is not None and hasattr(param, "shape") else None
        row = DryRunRow(name, type(module).__name__, shape, "skip", reason)
        if module_config is not None:
            if name == head:
                row.reason = "classifier head kept dense (keep_classifier_dense)"
            else:
                row.settings = _settings(module_config)
                try:
                    pruner._check_module(name, module, module_config)
                    row.action = "prune"
                except (ValueError, TypeError) as exc:
                    row.action, row.reason = "error", str(exc)
        rows.append(row)
    return rows
