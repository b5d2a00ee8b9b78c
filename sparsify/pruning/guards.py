"""Checks on a prepared model and its pruner: that the model still holds the modules its pruner masks, and
that a saved pruner state fits it.

A module replaced after ``prepare()`` (``model.fc = nn.Linear(...)``) is not masked: the pruner would go on
updating the mask of the module it replaced, report that module's sparsity, and ``finalize()`` would ship the
new one dense. `replaced_modules` finds such paths; the pruner refuses to ``step()``, ``prune_now()`` or
``finalize()`` with one of them, and ``report()`` warns and shows the module that is there now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..masking import is_masked
from .plan import Target

__all__ = ["check_state_dict", "describe_replaced", "refuse_replaced", "replaced_modules"]


def _at(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def replaced_modules(
    model: nn.Module, targets: Mapping[str, Target], finalized: bool = False
) -> list[tuple[str, nn.Module | None]]:
    """``(path, the module there now or None)`` for every pruned module that ``model`` no longer holds at its
    path (a tied alias, which shares a pruned module's mask: when it is gone or, before ``finalize()``, unmasked)."""
    found: list[tuple[str, nn.Module | None]] = []
    for name, target in targets.items():
        now = _at(model, name)
        if now is not target.module:
            found.append((name, now))
        for alias in target.tied_to:
            held = _at(model, alias)
            if held is None or not (finalized or is_masked(held, target.param_name)):
                found.append((alias, held))
    return found


def describe_replaced(replaced: list[tuple[str, nn.Module | None]], targets: Mapping[str, Target]) -> str:
    """``module 'fc' (Linear) was replaced after prepare() by ...`` for the first few replaced paths."""
    parts = []
    for path, now in replaced[:3]:
        old = targets[path].module if path in targets else None
        was = f" ({type(old).__name__})" if old is not None else ""
        parts.append(f"module {path!r}{was} was removed after prepare()" if now is None else
                     f"module {path!r}{was} was replaced after prepare() by a new {type(now).__name__}, which is not "
                     "masked")
    more = f" and {len(replaced) - 3} more" if len(replaced) > 3 else ""
    return "; ".join(parts) + more


def refuse_replaced(model: nn.Module, targets: Mapping[str, Target], action: str, finalized: bool = False) -> None:
    """Raise ``RuntimeError`` for ``action`` (``"step()"``...) if a pruned module was replaced after ``prepare()``."""
    replaced = replaced_modules(model, targets, finalized)
    if replaced:
        raise RuntimeError(
            f"{action}: {describe_replaced(replaced, targets)}; the pruner masks the module that was "
            "there, so the new one would stay dense. Replace modules before prepare(): abandon() this pruner "
            "(or put the original module back) and prepare a new Pruner on the changed model"
        )


def check_state_dict(state_dict: Any, targets: Mapping[str, Target]) -> tuple[int, Mapping[str, Any]]:
    """``(step_count, sparsity_levels)`` of a pruner ``state_dict`` checked against the prepared ``targets``:
    its keys, types, ranges, modules and criteria (`Pruner.load_state_dict` applies nothing before this)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"pruner state_dict must be a mapping, got {type(state_dict).__name__}")
    missing = {"step_count", "sparsity_levels"} - set(state_dict)
    if missing:
        raise ValueError(f"pruner state_dict lacks key(s) {sorted(missing)}; got keys {sorted(state_dict)}")
    step_count = state_dict["step_count"]
    if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
        raise ValueError(f"pruner state_dict step_count={step_count!r} is invalid: allowed an integer >= 0")
    levels = state_dict["sparsity_levels"]
    expected, got = set(targets), set(levels)
    if expected != got:
        raise ValueError(
            "pruner state_dict does not match the prepared modules: missing "
            f"{sorted(expected - got)}, unexpected {sorted(got - expected)}"
        )
    for name, level in levels.items():
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level <= 1.0:
            raise ValueError(f"pruner state_dict sparsity_levels[{name!r}]={level!r} is invalid: allowed 0..1")
    for name, saved in state_dict.get("criteria", {}).items():
        if name in targets and saved != targets[name].config.criterion.as_dict():
            raise ValueError(
                f"module {name!r} was pruned with criterion {saved} but is prepared with "
                f"{targets[name].config.criterion.as_dict()}: prepare with the saved config"
            )
    return step_count, levels
