"""The pruning machine, a few layers at a time and undone after each look: what the analysis tools run.

`LayerProbe` runs a `sparsify.PrunerConfig` the way `sparsify.Pruner` does — the same planning
(`sparsify.pruning.plan.plan_model`: module types, name / type rules, ``module_types``, language-model
defaults, tied weights, the pattern of each module), the same masks (`sparsify.masking`), one scorer per
criterion made from the config (with the ``sampler`` for data-dependent criteria) and the same mask update
(`sparsify.pruning.update.compute_masks`: scores → pattern → scope → the criterion's refinement) — so a
sensitivity scan or a budget measures exactly what ``sparsify.prune`` with that config would do. What it
adds is the undo: `LayerProbe.pruned` applies a mask only while the caller evaluates, then writes every
changed parameter back bit for bit, and leaving the ``with`` block removes every mask it installed.

A module that a sparsify ``Pruner`` already masks keeps its mask and its hook: it is scored on its masked
weight and pruned on top of that mask.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..calibration import CalibrationData, as_calibration_data
from ..config import OptimizationConfig, PrunerConfig
from ..criteria import Criterion, Scorer, scorers_by_spec
from ..mask_layout import orig_name
from ..masking import MaskHook, install_mask, is_masked, uninstall_mask
from ..pruning.plan import Plan, Target, hook_fields, plan_model
from ..pruning.update import compute_masks

__all__ = ["LayerProbe", "selected_layers"]


def selected_layers(
    model: nn.Module, config: OptimizationConfig | None = None, layers: Sequence[str] | str | None = None
) -> list[str]:
    """The modules ``config`` prunes in ``model`` — `sparsify.Pruner`'s own selection (`plan_model`), the one
    definition of "prunable" — optionally narrowed by ``layers``: a regular expression matched in full
    against module names, or a list of names.

    ``config`` defaults to ``PrunerConfig()`` (``Linear``, ``Conv1d/2d/3d``, transformers' ``Conv1D``; a
    language model's head and embeddings left out). A weight tied to another selected module is listed once.
    """
    plans = plan_model(model, PrunerConfig() if config is None else config, masked=True)
    return _narrow([p.name for p in plans if p.owner is None], layers)


def _narrow(candidates: list[str], layers: Sequence[str] | str | None) -> list[str]:
    if layers is None:
        return candidates
    if isinstance(layers, str):
        chosen = [name for name in candidates if re.fullmatch(layers, name)]
        if not chosen:
            raise ValueError(f"layers={layers!r} matches no prunable layer; the prunable layers are {candidates}")
        return chosen
    unknown = [name for name in layers if name not in candidates]
    if unknown:
        raise ValueError(f"layers names {unknown}, which are not prunable layers; allowed: {candidates}")
    return [name for name in candidates if name in layers]


class LayerProbe:
    """Masks from the machine for chosen layers at chosen sparsities, each undone after use.

    Use as a context manager::

        with LayerProbe(model, config, sampler=data, layers=["fc1"]) as probe:
            with probe.pruned({"fc1": 0.5}):
                metric = evaluate(model)

    It implements `sparsify.criteria.PrunerView`, so the criteria read it as they read a pruner.
    """

    def __init__(
        self,
        model: nn.Module,
        config: OptimizationConfig | None = None,
        *,
        sampler: Any = None,
        layers: Sequence[str] | str | None = None,
    ) -> None:
        self._model = model
        self._sampler: CalibrationData | None = None if sampler is None else as_calibration_data(sampler)
        plans = plan_model(model, PrunerConfig() if config is None else config, masked=True)
        self.names = _narrow([p.name for p in plans if p.owner is None], layers)
        chosen = set(self.names)
        self._plans = [p for p in plans if (p.owner or p.name) in chosen]
        self._targets: dict[str, Target] = {}
        self._installed: list[tuple[nn.Module, str]] = []
        self._scorers: list[tuple[Criterion, Scorer, list[str]]] = []

    # -- PrunerView ------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def sampler(self) -> CalibrationData | None:
        return self._sampler

    @property
    def step_count(self) -> int:
        return 0

    @property
    def targets(self) -> Mapping[str, Target]:
        return self._targets

    def next_update_step(self, names: list[str]) -> int | None:
        return None  # one shot: no later update to prepare for

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LayerProbe:
        try:
            for plan in self._plans:
                self._install(plan)
            self._scorers = scorers_by_spec({n: t.config.criterion for n, t in self._targets.items()})
            for _, scorer, names in self._scorers:
                scorer.attach(self, names)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _install(self, plan: Plan) -> None:
        module = self._model.get_submodule(plan.name)
        param_name = plan.config.param_name
        if plan.owner is not None:  # a tied holder shares its owner's mask, as in Pruner.prepare()
            if not is_masked(module, param_name):
                install_mask(module, param_name, self._targets[plan.owner].mask, 0.0, **hook_fields(plan))
                self._installed.append((module, param_name))
            return
        if not is_masked(module, param_name):  # a module a Pruner already masks keeps its own mask
            reader = self._model.get_submodule(plan.reader) if plan.reader is not None else None
            install_mask(module, param_name, None, 0.0, reader=reader, **hook_fields(plan))
            self._installed.append((module, param_name))
        level = float(getattr(_hook(module, param_name), "amount", 0.0))
        self._targets[plan.name] = Target(plan.name, module, plan.config, plan.pattern, plan.entry, level,
                                          transposed=plan.transposed)

    def _close(self) -> None:
        for _, scorer, _ in self._scorers:
            scorer.detach()
        self._scorers.clear()
        for module, param_name in reversed(self._installed):
            uninstall_mask(module, param_name)
        self._installed.clear()
        self._targets.clear()

    # -- probing ---------------------------------------------------------------------------

    def configs(self) -> dict[str, Any]:
        """Each probed layer's module config (`sparsify.ModulePrunerConfig`), as the config selects it."""
        return {p.name: p.config for p in self._plans if p.owner is None}

    def shape(self, name: str) -> torch.Size:
        """The stored shape of module ``name``'s pruned parameter (known before the probe is entered)."""
        plan = next(p for p in self._plans if p.name == name and p.owner is None)
        module, param_name = self._model.get_submodule(name), plan.config.param_name
        param = module._parameters.get(orig_name(param_name), module._parameters.get(param_name))
        assert param is not None  # plan_model checked it
        return param.shape

    def weight_count(self, name: str) -> int:
        """How many weights module ``name`` has (its pruned parameter's size)."""
        return self.shape(name).numel()

    def masks(self, levels: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """The keep-masks the machine computes for ``levels`` (module name → sparsity), scored on the current
        weights, without applying them (a criterion's weight update — M-FAC's — is undone too)."""
        with self._saved(levels):
            return self._compute(levels)

    @contextlib.contextmanager
    def pruned(self, levels: Mapping[str, float]) -> Iterator[dict[str, torch.Tensor]]:
        """Prune the modules in ``levels`` to those sparsities (on top of any mask they have) for the duration
        of the block; yields the masks. Every parameter of those modules is written back afterwards."""
        with self._saved(levels):
            masks = self._compute(levels)
            with torch.no_grad():
                for name, mask in masks.items():
                    orig = self._targets[name].orig
                    orig.copy_(torch.where(mask.expand(orig.shape), orig, orig.new_zeros(())))
            self._refresh(levels)
            yield masks

    def _compute(self, levels: Mapping[str, float]) -> dict[str, torch.Tensor]:
        unknown = sorted(set(levels) - set(self._targets))
        if unknown:
            raise KeyError(f"not probed: {unknown}; probed layers are {list(self._targets)}")
        with torch.no_grad():  # a masked module is scored on its masked weight, so its mask is kept
            for name in levels:
                target = self._targets[name]
                target.orig.copy_(torch.where(target.mask.expand(target.orig.shape), target.orig,
                                              target.orig.new_zeros(())))
        masks: dict[str, torch.Tensor] = {}
        for _, scorer, names in self._scorers:
            group = {n: float(levels[n]) for n in names if n in levels}
            if not group:
                continue
            steps, start = scorer.substeps(self), {n: self._targets[n].sparsity_level for n in group}
            for k in range(1, steps + 1):  # as Pruner does: some criteria reach a level in sub-steps
                sub = {n: s if k == steps else start[n] + (s - start[n]) * k / steps for n, s in group.items()}
                masks.update(compute_masks(self, scorer, sub))
        return {name: torch.logical_and(mask, self._targets[name].mask) for name, mask in masks.items()}

    @contextlib.contextmanager
    def _saved(self, levels: Mapping[str, float]) -> Iterator[None]:
        modules = {id(t.module): t.module for n, t in self._targets.items() if n in levels}
        saved = [(p, p.detach().clone()) for m in modules.values() for p in m.parameters(recurse=False)]
        try:
            yield
        finally:
            with torch.no_grad():
                for param, values in saved:
                    param.copy_(values)
            self._refresh(levels)

    def _refresh(self, levels: Mapping[str, float]) -> None:
        for name in levels:
            target = self._targets[name]
            for holder in (target.module, *(self._model.get_submodule(p.name) for p in self._plans
                                            if p.owner == name)):
                hook = _hook(holder, target.param_name)
                if hook is not None:
                    hook.refresh(holder)


def _hook(module: nn.Module, param_name: str) -> MaskHook | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, MaskHook) and hook._tensor_name == param_name:
            return hook
    return None
