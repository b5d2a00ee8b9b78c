"""A `sparsify.compat.plan.RecipePlan` applied to a model, as one `sparsify.PrunerConfig` for `sparsify.Pruner`.

Every pruning group of the plan becomes **one config object** shared by the modules it selects, keyed
by their escaped names; a global group's config names its ranking (``global_group``: the modifier or
pruner, ``"modifier 3 (!GMPruningModifier)"``), so each SparseML modifier and each INC pruner is ranked
on its own, as its project ranks it, and the config ranks the same after ``as_dict`` / ``to_yaml``. Nothing
else is pruned (no global config, no classifier-head rule: the readers already applied the peer's).

Translations (see ``docs/recipes.md``):

* schedules — SparseML epochs become steps with ``steps_per_epoch`` (`epoch_levels`): ``n + 1`` update
  steps evenly spaced from ``round(start·spe)`` to ``round(end·spe)``, ``n = round((end − start) /
  update_frequency)``, at SparseML's own levels ``init + (final − init)·f(i/n)`` (``f`` cubic
  ``1 − (1 − p)³``, linear, or inverse cubic), nothing pruned before the first (`StepLevelsScheduler`); INC
  1.x epochs: at the start of epoch ``e``, ``(e − start + 1)/(end − start + 1)`` of the way; INC 2.x step
  schedules map to the step-range schedulers (``exp`` → ``exponential``, ``cos`` → ``cosine``, ``cube`` →
  ``cubic_slow_start``); ``one_shot=True`` (SparseML's ``manager.apply``) brings every group to its final
  state at once;
* a group that keeps the zeros it has (``ConstantPruningModifier``, ``pattern_lock``) is magnitude pruning
  at each layer's own zero fraction, applied at ``prepare()`` and never changed, so the mask is exactly the
  zeros;
* INC's ``channelxM`` on a convolution prunes one input channel at one kernel position across all output
  channels: the tile ``{Co}xM`` for that layer;
* ``available_devices`` with CUDA absent becomes the CPU with a warning (done by the reader, before any
  work).

``SparseGPTModifier`` / INC ``sparse_gpt`` run as the ``"sparsegpt"`` criterion, Wanda as ``"wanda"``.
Refused here, before any work, with `UnsupportedFeatureError` naming the feature, file and line: a method
this sparsify has no criterion for, an ``Embedding`` weight. An INC n:m target below N/M becomes
``pattern="n:m"`` (that share of whole runs made n:m-sparse, as INC does).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import attrs
import torch
from torch import nn

from ..config import ModulePrunerConfig, PrunerConfig
from ..criteria import criterion_from_dict, criterion_kinds
from ..schedules import ConstantSparsityScheduler, PruningScheduler, register_scheduler
from .plan import PruningGroup, RecipePlan, ResolvedGroup, Schedule, UnsupportedFeatureError

__all__ = [
    "PassThrough",
    "StepLevelsScheduler",
    "check_steps_per_epoch",
    "criterion_for",
    "epoch_levels",
    "global_group_names",
    "module_config",
    "pruner_config",
    "scheduler_for",
]

logger = logging.getLogger(__name__)

_INC_CURVES = {"exp": "exponential", "cos": "cosine", "linear": "linear", "cube": "cubic_slow_start"}


class PassThrough(nn.Module):
    """What SparseML's ``LayerPruningModifier`` puts in place of a layer: returns its first input.

    Like SparseML's ``Identity``: one positional argument comes back as is, several as a tuple;
    keyword arguments are ignored.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if len(args) == 1 else args


@register_scheduler
@attrs.define(eq=True)
class StepLevelsScheduler(PruningScheduler):
    """Given sparsities at given steps: ``levels[i]`` from step ``steps[i]`` on (a step 0 applies at
    ``prepare()`` through ``initial_sparsity``).

    How SparseML's and INC 1.x's epoch schedules run on the engine: nothing is pruned before the first
    listed step (SparseML prunes nothing before ``start_epoch``, then jumps to ``init_sparsity``), and the
    levels are the peer's own interpolation, so no curve of the engine has to match it.
    """

    kind: ClassVar[str] = "step_levels"

    steps: tuple[int, ...] = attrs.field(converter=tuple[int, ...])  # calls tuple(); typed for mypy's attrs plugin
    levels: tuple[float, ...] = attrs.field(converter=lambda v: tuple(float(x) for x in v))

    def __attrs_post_init__(self) -> None:
        if not self.steps or len(self.steps) != len(self.levels):
            raise ValueError(f"StepLevelsScheduler: steps={list(self.steps)} and levels={list(self.levels)} must be "
                             f"non-empty and of one length")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.steps) or any(
                b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"StepLevelsScheduler.steps={list(self.steps)} is invalid: allowed strictly increasing "
                             f"integers >= 0")
        if any(not 0.0 <= level <= 1.0 for level in self.levels):
            raise ValueError(f"StepLevelsScheduler.levels={list(self.levels)} is invalid: allowed 0 <= level <= 1")

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        if step_count in self.steps:
            return self.levels[self.steps.index(step_count)]
        return prev_sparsity

    def last_step(self) -> int | None:
        return max(self.steps[-1], 1)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": list(self.steps), "levels": list(self.levels)}


_CURVES: dict[str, Any] = {
    "cubic": lambda p: 1.0 - (1.0 - p) ** 3,
    "linear": lambda p: p,
    "inverse_cubic": lambda p: 1.0 - (1.0 - p) ** (1.0 / 3.0),
}


def check_steps_per_epoch(steps_per_epoch: Any) -> int:
    """``steps_per_epoch`` as an int, or a `ValueError` naming the field: a whole number of optimizer steps > 0
    (``inf``, ``nan``, 0, negatives, ``2.5``, booleans and strings are refused before any work)."""
    value = steps_per_epoch
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if not ok or float(value) != int(value):
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} is invalid: allowed a whole number of optimizer steps "
                         f"> 0 (the steps in one epoch, e.g. len(train_loader))")
    return int(value)


def epoch_levels(schedule: Schedule, initial: float, final: float, steps_per_epoch: float) -> StepLevelsScheduler:
    """SparseML's (or INC 1.x's) epoch schedule as `StepLevelsScheduler` (see the module docstring)."""
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
    start, end = round(schedule.start * steps_per_epoch), round(schedule.end * steps_per_epoch)
    if schedule.curve == "inc1":  # INC 1.x: at the start of epoch e, (e - start + 1) / (end - start + 1) of the way
        count = int(schedule.end - schedule.start) + 1
        points = [(round((schedule.start + i) * steps_per_epoch), (i + 1) / count) for i in range(count)]
    elif schedule.curve == "acdc":  # SparseML AC/DC: dense (even k), compressed (odd k), compressed at the end
        count = math.ceil((schedule.end - schedule.start) / schedule.frequency - 1e-9)
        points = [(round((schedule.start + k * schedule.frequency) * steps_per_epoch), float(k % 2))
                  for k in range(count)] + [(end, 1.0)]
    elif end <= start or schedule.curve == "oneshot":
        points = [(start, 1.0)]
    else:
        n = max(1, round((schedule.end - schedule.start) / schedule.frequency))
        curve = _CURVES[schedule.curve]
        points = [(round(start + (end - start) * i / n), curve(i / n)) for i in range(n + 1)]
    by_step: dict[int, float] = {}
    for step, fraction in points:
        by_step[step] = initial + (final - initial) * fraction  # a later point at the same step wins
    if len(by_step) < len(points):
        logger.info("epochs %g-%g every %g epoch(s) at %g steps per epoch: %d distinct update steps", schedule.start,
                    schedule.end, schedule.frequency, steps_per_epoch, len(by_step))
    return StepLevelsScheduler(tuple(by_step), tuple(by_step.values()))


def scheduler_for(group: PruningGroup, steps_per_epoch: float | None, one_shot: bool) -> Any:
    """The scheduler of a group (``"epochs"``: per target sparsity, through `epoch_levels`)."""
    schedule: Schedule = group.schedule
    if one_shot or (schedule.curve in ("hold", "oneshot") and schedule.unit == "epoch" and steps_per_epoch is None):
        return ConstantSparsityScheduler(begin_step=0)
    if schedule.unit == "step":
        if schedule.curve in ("hold", "oneshot"):
            return {"kind": "linear", "start_step": int(schedule.start), "end_step": int(schedule.start),
                    "frequency": 1} if schedule.curve == "oneshot" else ConstantSparsityScheduler(begin_step=0)
        return {"kind": _INC_CURVES[schedule.curve], "start_step": int(schedule.start),
                "end_step": int(schedule.end), "frequency": int(schedule.frequency)}
    if steps_per_epoch is None:
        raise group.origin.error("the schedule is in epochs: give steps_per_epoch (or apply the recipe in one shot)")
    if schedule.curve == "hold":
        return ConstantSparsityScheduler(begin_step=0)
    return "epochs"  # per target: `epoch_levels`


#: Group options that drive the run around the criterion (sampling, AC/DC phases, INC's regularizer).
NOT_CRITERION_OPTIONS = ("grad_sampler_kwargs", "momentum_buffer_reset", "group_lasso", "keep_units")


def criterion_for(group: PruningGroup) -> Any:
    """The group's criterion as a `sparsify.criteria.Criterion`, validated; errors name the file and line."""
    method = group.method
    if method == "lock":
        return criterion_from_dict("magnitude")
    options = {k: v for k, v in group.options.items() if k not in NOT_CRITERION_OPTIONS}
    if method == "inc_gradient_sensitivity":  # the INC reader's own criterion, outside the public registry
        from .inc.gradient_sensitivity import GradientSensitivityCriterion

        try:
            return GradientSensitivityCriterion(**options)
        except (TypeError, ValueError) as exc:
            raise group.origin.error(str(exc)) from exc
    kinds = criterion_kinds()
    if method not in kinds:
        feature = {"sparsegpt": "SparseGPT", "wanda": "Wanda"}.get(method, method)
        raise UnsupportedFeatureError(
            f"{group.origin.entry}: {feature}", f"this sparsify has no {method!r} criterion (it has "
            f"{', '.join(kinds)})", group.origin.path, group.origin.line)
    if method == "mfac" and isinstance(options.get("num_grads"), dict):
        options["num_grads"] = {float(k): int(v) for k, v in options["num_grads"].items()}
    try:
        return criterion_from_dict({"kind": method, **options})
    except (TypeError, ValueError) as exc:
        raise group.origin.error(str(exc)) from exc


def _pattern_fields(group: PruningGroup, module: nn.Module | None, target: float) -> dict[str, Any]:
    """The pattern fields of a group at ``target``. n:m, the one place: a target below ``n / m`` is INC's
    ``pattern="n:m"`` (that share of whole runs made n:m-sparse), else Core ML Tools' ``n_m_ratio``."""
    structure = group.structure
    if structure.kind == "n_m":
        assert structure.n_m is not None
        zeros, size = structure.n_m
        if target < zeros / size - 1e-9:  # INC: that share of whole runs made n:m-sparse
            return {"pattern": f"{zeros}:{size}"}
        return {"n_m_ratio": (zeros, size)}
    if structure.kind == "tile":
        assert structure.tile is not None
        out, inp = structure.tile.split("x")
        weight = cast(torch.Tensor, module.weight) if module is not None else None
        if out == "channel" and weight is not None and weight.dim() > 2:
            out = str(weight.shape[0])  # INC: one column of [Co, K·Ci] = one input channel at one position
        return {"pattern": f"{out}x{inp}"}
    return {}


def global_group_names(groups: Sequence[PruningGroup]) -> list[str]:
    """Each group's ``ModulePrunerConfig.global_group``: where it comes from (``"modifier 3
    (!GMPruningModifier)"``, ``"pruners[0] (!Pruner)"``), numbered where two would read the same."""
    labels = [group.origin.entry for group in groups]
    return [label if labels.count(label) == 1 else f"{label} #{labels[:i + 1].count(label)}"
            for i, label in enumerate(labels)]


def module_config(group: PruningGroup, module: nn.Module | None, target: float | None, scheduler: Any,
                  one_shot: bool, steps_per_epoch: float | None = None,
                  global_group: str | None = None) -> ModulePrunerConfig:
    """One group's module config at ``target`` — the one translator of a SparseML modifier or an INC pruner.

    ``module``: the layer it applies to, for what depends on it (INC's channel tiles on a convolution, a
    layer that keeps its zeros); ``None`` for the model-free INC translation (`sparsify.compat.inc.config`).
    The n:m rule lives in `_pattern_fields`.
    """
    if target is None:  # keep the zeros it has: magnitude at its zero fraction, fixed at prepare()
        assert module is not None, "a layer that keeps its zeros needs the model"
        weight = cast(torch.Tensor, module.weight).detach()
        zeros = int((weight == 0).sum())
        level = min(1.0, (zeros + 0.25) / weight.numel()) if zeros else 0.0
        return ModulePrunerConfig(scheduler=ConstantSparsityScheduler(begin_step=0), initial_sparsity=level,
                                  target_sparsity=level, criterion="magnitude")
    fields = _pattern_fields(group, module, target)
    initial = 0.0 if one_shot else min(group.initial, target)
    if scheduler == "epochs":
        assert steps_per_epoch is not None
        final = fields["n_m_ratio"][0] / fields["n_m_ratio"][1] if "n_m_ratio" in fields else target
        scheduler = epoch_levels(group.schedule, initial, final, steps_per_epoch)
        initial = scheduler.levels[0] if scheduler.steps[0] == 0 else 0.0  # nothing before the first step
    config: dict[str, Any] = {"scheduler": copy.deepcopy(scheduler), "initial_sparsity": initial,
                              "criterion": criterion_for(group), "scope": group.scope,
                              "min_sparsity": group.min_sparsity, "max_sparsity": group.max_sparsity, **fields}
    if group.scope == "global":
        config["global_group"] = global_group
    if "n_m_ratio" not in fields:
        config["target_sparsity"] = target
    else:
        config["initial_sparsity"] = min(initial, fields["n_m_ratio"][0] / fields["n_m_ratio"][1])
    return ModulePrunerConfig(**config)


def pruner_config(plan: RecipePlan, model: nn.Module, *, steps_per_epoch: float | None = None,
                  one_shot: bool = False) -> tuple[PrunerConfig, list[ResolvedGroup]]:
    """The `sparsify.PrunerConfig` that applies ``plan`` to ``model`` (layer drops already applied).

    ``one_shot``: every group goes straight to its final state at the first ``step()`` /
    ``prune_now()`` (SparseML's ``manager.apply``); otherwise epochs need ``steps_per_epoch``.
    Raises `UnsupportedFeatureError` before anything is built for what cannot be honoured.
    """
    if steps_per_epoch is not None:
        steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
    for group in plan.groups:  # what this sparsify cannot do is refused before the model is looked at
        criterion_for(group)
        if group.structure.kind == "n_m":
            for rule in group.targets:
                if rule.sparsity is not None:
                    _pattern_fields(group, None, rule.sparsity)
    resolved = plan.resolve(model)
    names: dict[str, ModulePrunerConfig] = {}
    for entry, label in zip(resolved, global_group_names([entry.group for entry in resolved]), strict=True):
        group = entry.group
        if not entry.modules:
            continue
        for note in group.notes:
            logger.info("%s: %s", group.origin, note)
        scheduler = scheduler_for(group, steps_per_epoch, one_shot)
        shared: dict[tuple[Any, ...], ModulePrunerConfig] = {}
        for name, target in entry.modules.items():
            module = model.get_submodule(name)
            if target is None:
                names[re.escape(name)] = module_config(group, module, None, scheduler, one_shot)
                continue
            fields = _pattern_fields(group, module, target)
            key: tuple[Any, ...] = (target, tuple(sorted(fields.items())))
            if group.scope == "global":
                key = ("global",)
                if "pattern" in fields and len({_pattern_fields(group, model.get_submodule(n), t).get("pattern")
                                                 for n, t in entry.modules.items() if t is not None}) > 1:
                    raise UnsupportedFeatureError(
                        f"{group.origin.entry}: pattern {group.structure.tile!r} on convolutions in global scope",
                        "INC's channel tiles differ per convolution; sparsify ranks one pattern per global group",
                        group.origin.path, group.origin.at("pattern"))
            if key not in shared:
                shared[key] = module_config(group, module, target, scheduler, one_shot, steps_per_epoch, label)
            names[re.escape(name)] = shared[key]
    if not names:
        raise UnsupportedFeatureError(f"{plan.path or 'recipe'}: nothing to prune",
                                      "no group selects a layer of this model", plan.path, None)
    return PrunerConfig(module_name_configs=names), resolved

