r"""Second-order pruning (M-FAC / WoodFisher): ``w²/(2[F⁻¹]ᵢᵢ)`` saliency, global ranking, OBS update.

`MFACPruner` is the engine's `sparsify.pruner.BasePruner` with the second-order
criterion and global scope plugged in; configs, masks, schedules, ``finalize()`` (Core ML metadata)
and ``report()`` are the engine's. At every mask update it

1. takes ``m`` gradients of the loss with respect to the still-unpruned weights of all the modules
   being updated — from a `sparsify.data.GradSampler` (one-shot, or gradual with calibration
   data), or recorded from the live training steps just before the update (gradual, no sampler);
2. builds the inverse empirical Fisher over those ``d`` coordinates (`sparsify.fisher.FisherInverse`,
   dense or block-diagonal, relative damping by default);
3. scores every weight by the OBS saliency ``ρᵢ = wᵢ² / (2 [F⁻¹]ᵢᵢ)`` — the estimated loss increase
   of removing it — and ranks **all modules together** (``global_sparsity=True``, via
   `sparsify.scope.global_keep_masks`, with optional per-layer caps) or each module alone;
4. optionally applies SparseML's OBS weight update to the weights that survive:
   ``δw = −F⁻¹ e`` with ``e_q = w_q / [F⁻¹]_qq`` for every newly pruned ``q`` (the sum of the
   single-weight OBS corrections, ignoring interactions between pruned weights).

``num_recomputations = r`` reaches a new sparsity in ``r`` sub-steps, interpolated linearly, each with
fresh gradients, a fresh Fisher and its own update (oBERT / WoodFisher's recomputation; the single
largest gain in the study's experiment). Pruned weights score 0 and stay pruned: masks only grow.

One shot::

    sampler = GradSampler(train_loader, torch.nn.functional.cross_entropy)
    config = MFACPrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=0.7), num_grads=256)
    model = oneshot_prune(model, config, sampler).model                  # M-FAC
    baseline = oneshot_prune(model, config, sampler, method="magnitude").model  # same scope, |w| scores

Gradually (gradients recorded from the training steps before each update)::

    config = MFACPrunerConfig(global_config=ModuleMagnitudePrunerConfig(
        target_sparsity=0.8, scheduler=PolynomialDecayScheduler(update_steps=range(200, 2000, 200))), num_grads=64)
    pruner = MFACPruner(model, config)
    model = pruner.prepare(inplace=True)
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        pruner.step()
    model = pruner.finalize(inplace=True)

``initial_sparsity`` is applied at ``prepare()`` by magnitude (no gradients exist yet).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from ._checks import as_float, check_range
from .config import (
    ModuleMagnitudePrunerConfig,
    OptimizationConfig,
)
from .data import GradSampler, as_grad_sampler
from .distributed import gather_rows
from .fisher import FisherInverse, plan_memory
from .mfac_config import CRITERIA, MFACPrunerConfig
from .pruner import BasePruner, PrunedModuleInfo
from .scope import global_keep_masks, pruned_count

__all__ = ["CRITERIA", "MFACPruner", "MFACPrunerConfig", "oneshot_prune"]

logger = logging.getLogger(__name__)

_OWNER = MFACPrunerConfig.__name__  # errors about config fields name the config class

# ----------------------------------------------------------------------------------------------
# Gradients recorded from training
# ----------------------------------------------------------------------------------------------


class _TrainingGradients:
    """Tensor hooks on ``weight_orig`` that copy each backward pass's gradient (unpruned coordinates
    only) into a ring buffer of ``m`` rows; one row per backward pass."""

    def __init__(self, entries: list[tuple[str, torch.Tensor, torch.Tensor]], num_grads: int, device: str) -> None:
        self.layout: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, _, index in entries:
            self.layout[name] = (offset, index.numel())
            offset += index.numel()
        self.buffer = torch.empty(num_grads, offset, device=device)
        self.counts = [0] * len(entries)
        self.handles = [
            param.register_hook(functools.partial(self._record, i, self.layout[name][0], index))
            for i, (name, param, index) in enumerate(entries)
        ]

    def _record(self, i: int, offset: int, index: torch.Tensor, grad: torch.Tensor) -> None:
        row = self.counts[i] % self.buffer.shape[0]
        values = grad.detach().reshape(-1)[index]
        self.buffer[row, offset : offset + index.numel()] = values.to(self.buffer.device, self.buffer.dtype)
        self.counts[i] += 1

    @property
    def rows(self) -> int:
        return min(min(self.counts, default=0), self.buffer.shape[0])

    def take(self, names: list[str]) -> torch.Tensor:
        """The recorded rows for ``names`` (columns in that order), removing the hooks."""
        self.remove()
        rows = self.buffer[: self.rows]
        if [*self.layout] == names:
            return rows
        columns = [torch.arange(o, o + n) for o, n in (self.layout[name] for name in names)]
        return rows[:, torch.cat(columns).to(rows.device)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# ----------------------------------------------------------------------------------------------
# Pruner
# ----------------------------------------------------------------------------------------------


@attrs.define
class _Slot:
    offset: int
    index: torch.Tensor  # flat positions of the unpruned weights, on the parameter's device


class MFACPruner(BasePruner):
    """M-FAC / WoodFisher pruner (see the module docstring).

    Args:
        model: the model to prune.
        config: an `MFACPrunerConfig` (default: every Linear/Conv, 50 %, global).
        sampler: calibration data, a `sparsify.data.GradSampler` (or SparseML's
            ``grad_sampler`` dict). Required for one-shot pruning and for ``num_recomputations > 1``;
            without it, gradual pruning records the gradients of the training steps before each update.
        criterion: ``"mfac"`` (default) or ``"magnitude"`` — the same scope, schedule, caps and
            masks with ``|w|`` scores, for like-for-like comparisons; the Fisher options are unused.

    Attributes:
        fisher_log: one dict per Fisher estimate: sparsity levels, ``num_grads``, ``dim``, damping,
            seconds spent on gradients and on the Fisher, and the memory plan.
    """

    config_class: ClassVar[type[OptimizationConfig]] = MFACPrunerConfig

    def __init__(
        self,
        model: nn.Module,
        config: MFACPrunerConfig | None = None,
        sampler: GradSampler | Mapping[str, Any] | None = None,
        *,
        criterion: str = "mfac",
    ) -> None:
        super().__init__(model, config)
        if criterion not in CRITERIA:
            raise ValueError(f"criterion={criterion!r} is invalid: allowed values are {', '.join(map(repr, CRITERIA))}")
        self.criterion = criterion
        self._sampler = None if sampler is None else as_grad_sampler(sampler)
        self._preparing = False
        self._slots: dict[str, _Slot] = {}
        self._fisher: FisherInverse | None = None
        self._diag: torch.Tensor | None = None
        self._recording: _TrainingGradients | None = None
        self._next_change: int | None = None
        self._probed_until = -1
        self.fisher_log: list[dict[str, Any]] = []

    @property
    def recording_gradients(self) -> bool:
        """Whether training gradients are being recorded for an upcoming mask update (gradual, no sampler)."""
        return self._recording is not None

    @property
    def _second_order(self) -> bool:
        return self.criterion == "mfac"

    # -- selection -------------------------------------------------------------------------

    def _check_module(self, name: str, module: nn.Module, config: ModuleMagnitudePrunerConfig) -> None:
        super()._check_module(name, module, config)
        if self._config.global_sparsity:
            for field, value, plain in (
                ("granularity", config.granularity, "per_scalar"), ("block_size", config.block_size, 1),
                ("n_m_ratio", config.n_m_ratio, None),
            ):
                if value != plain:
                    raise ValueError(
                        f"module {name!r}: {field}={value!r} needs each module ranked alone; with "
                        f"{_OWNER}.global_sparsity=True only unstructured pruning is allowed ({field}={plain!r}); "
                        f"set global_sparsity=False for patterns"
                    )

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self, inplace: bool = False) -> nn.Module:
        """Install masks (see `BasePruner.prepare`); ``initial_sparsity`` is applied by magnitude."""
        if self._second_order and self._config.num_recomputations > 1 and self._sampler is None:
            raise ValueError(
                f"{_OWNER}.num_recomputations={self._config.num_recomputations} needs fresh gradients for every "
                f"sub-step: pass sampler=GradSampler(data, loss_fn) to MFACPruner"
            )
        if self._pruner_info:
            return super().prepare(inplace)
        self._preparing = True
        try:
            model = super().prepare(inplace)
        finally:
            self._preparing = False
        self._watch_schedule()
        return model

    def step(self) -> None:
        """Advance the schedules (see `BasePruner.step`); record training gradients ahead of updates."""
        super().step()
        self._watch_schedule()

    def prune_now(self, sparsity: float | None = None) -> None:
        """One shot: bring every module to its final sparsity (or to ``sparsity``) now."""
        if not self._pruner_info:
            raise RuntimeError("prune_now(): call prepare() first")
        if self._finalized:
            raise RuntimeError("prune_now(): the model is already finalized")
        if sparsity is not None:
            sparsity = as_float("prune_now", "sparsity", sparsity)
            check_range("prune_now", "sparsity", sparsity, 0.0, 1.0)
        if self._second_order and self._sampler is None:
            raise ValueError(
                "one-shot M-FAC needs calibration data: MFACPruner(model, config, sampler=GradSampler(data, loss_fn)) "
                "or oneshot_prune(model, config, sampler)"
            )
        self._stop_recording()
        self._apply_levels({
            name: info.config.final_sparsity if sparsity is None else sparsity
            for name, info in self._pruner_info.items()
        })

    def finalize(self, model: nn.Module | None = None, inplace: bool = False) -> nn.Module:
        """Bake masks and add Core ML metadata (see `BasePruner.finalize`); stops gradient recording."""
        own = model is None or model is self._model
        finalized = super().finalize(model, inplace)
        if own:
            self._stop_recording()
        return finalized

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._stop_recording()
        self._next_change, self._probed_until = None, -1
        self._watch_schedule()

    # -- masks -----------------------------------------------------------------------------

    def _apply_levels(self, levels: dict[str, float]) -> None:
        """Reach ``levels`` in ``num_recomputations`` sub-steps (one mask computation each)."""
        steps = self._config.num_recomputations if self._second_order and not self._preparing else 1
        start = {name: self._pruner_info[name].sparsity_level for name in levels}
        for k in range(1, steps + 1):
            sub = levels if k == steps else {n: start[n] + (levels[n] - start[n]) * k / steps for n in levels}
            super()._apply_levels(sub)
        self._next_change, self._probed_until = None, -1

    def scores(self, name: str, info: PrunedModuleInfo) -> torch.Tensor:
        """``w²/(2[F⁻¹]ᵢᵢ)`` (or ``|w|`` for ``criterion="magnitude"``); pruned weights score 0."""
        weight = getattr(info.module, info.config.param_name + "_orig").detach()
        keep = _keep(info)
        if not self._second_order or self._preparing:
            return weight.abs() * keep
        if self._diag is None or name not in self._slots:
            raise RuntimeError(
                f"module {name!r}: M-FAC scores exist only while masks are being computed (in step() or prune_now())"
            )
        slot = self._slots[name]
        diag = self._diag[slot.offset : slot.offset + slot.index.numel()].to(weight.device, torch.float64)
        score = torch.zeros(weight.numel(), dtype=torch.float32, device=weight.device)
        kept = weight.reshape(-1)[slot.index].double()
        score[slot.index] = (kept.square() / (2 * diag)).float()
        return score.view_as(weight)

    def compute_masks(self, levels: dict[str, float]) -> dict[str, torch.Tensor]:
        """Keep-masks for ``levels``: one Fisher over the modules in ``levels``, global or per-layer ranking."""
        if self._preparing:
            return super().compute_masks(levels)
        names = list(levels)
        try:
            if self._second_order:
                self._estimate(names)
            scores = {name: self.scores(name, self._pruner_info[name]) for name in names}
            if self._config.global_sparsity:
                masks = self._global_masks(scores, levels)
            else:
                masks = {
                    name: self.pattern_mask(scores[name], level, self._pruner_info[name].config)
                    for name, level in levels.items()
                }
            masks = {name: mask & self._current_mask(name).expand(mask.shape) for name, mask in masks.items()}
            if self._second_order and self._config.obs_update:
                self._obs_update(masks)
        finally:
            self._fisher, self._diag, self._slots = None, None, {}
        return masks

    def _current_mask(self, name: str) -> torch.Tensor:
        info = self._pruner_info[name]
        return getattr(info.module, info.config.param_name + "_mask")

    def _global_masks(self, scores: dict[str, torch.Tensor], levels: dict[str, float]) -> dict[str, torch.Tensor]:
        """One ranking; the budget is the common level, or with mixed levels the sum of each module's zeros."""
        distinct = set(levels.values())
        if len(distinct) == 1:
            sparsity = distinct.pop()
        else:
            sizes = {name: s.numel() for name, s in scores.items()}
            sparsity = sum(pruned_count(sizes[n], level) for n, level in levels.items()) / sum(sizes.values())
        config = self._config
        return global_keep_masks(
            scores, sparsity, min_sparsity=config.min_layer_sparsity,
            max_sparsity=config.max_layer_sparsity, normalize=config.normalize,
        )

    # -- second-order work -----------------------------------------------------------------

    def _entries(self, names: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, weight_orig, flat indices of unpruned weights)`` for ``names``."""
        entries = []
        for name in names:
            info = self._pruner_info[name]
            param = getattr(info.module, info.config.param_name + "_orig")
            entries.append((name, param, _keep(info).reshape(-1).nonzero().squeeze(1)))
        return entries

    def _level(self, names: list[str]) -> float:
        """The parameter-weighted mean scheduled sparsity of ``names``."""
        sizes = {n: _keep(self._pruner_info[n]).numel() for n in names}
        return sum(sizes[n] * self._pruner_info[n].sparsity_level for n in names) / max(sum(sizes.values()), 1)

    def _memory_plan(self, num_grads: int, dim: int) -> Any:
        plan = plan_memory(num_grads, dim, self._config.fisher_block_size, budget=self._config.memory_budget)
        logger.info("M-FAC memory plan: %s", plan)
        plan.check()
        return plan

    def _estimate(self, names: list[str]) -> None:
        """Collect gradients and build the inverse Fisher over the unpruned weights of ``names``."""
        config = self._config
        entries = self._entries(names)
        level = self._level(names)
        num_grads = config.num_grads_at(level)
        dim = sum(index.numel() for _, _, index in entries)
        started = time.perf_counter()
        if self._sampler is not None:
            plan = self._memory_plan(num_grads, dim)
            grads = self._sample(entries, num_grads, dim)
        else:
            plan = None
            grads = self._recorded(names, num_grads)
        grads = gather_rows(grads)  # under DDP every rank builds the same Fisher from all ranks' gradients
        gathered = time.perf_counter()
        self._fisher = FisherInverse(
            grads, config.damp, damp_mode=config.damp_mode, block_size=config.fisher_block_size, devices=config.devices
        )
        self._diag = self._fisher.diag(torch.float64)
        self._slots, offset = {}, 0
        for name, _, index in entries:
            self._slots[name] = _Slot(offset, index)
            offset += index.numel()
        self.fisher_log.append({
            "step": self._step_count, "sparsity_before": level, "num_grads": grads.shape[0], "dim": dim,
            "damp": self._fisher.damp, "damp_ratio": self._fisher.damp_ratio, "fisher_scale": self._fisher.fisher_scale,
            "seconds_gradients": gathered - started, "seconds_fisher": time.perf_counter() - gathered,
            "memory_plan": str(plan) if plan is not None else None,
        })

    def _sample(self, entries: list[tuple[str, torch.Tensor, torch.Tensor]], num_grads: int, dim: int) -> torch.Tensor:
        assert self._sampler is not None
        device = self._config.grads_device
        buffer = torch.empty(num_grads, dim, device=device)
        params = [param for _, param, _ in entries]
        rows = self._sampler.gradients(self._model, params, num_grads, desc="M-FAC gradients")
        for row, grads in enumerate(rows):
            offset = 0
            for grad, (_, _, index) in zip(grads, entries):
                buffer[row, offset : offset + index.numel()] = grad.reshape(-1)[index].to(device, buffer.dtype)
                offset += index.numel()
        return buffer

    def _recorded(self, names: list[str], num_grads: int) -> torch.Tensor:
        recording, self._recording = self._recording, None
        rows = 0 if recording is None else recording.rows
        if recording is None or rows == 0:
            if recording is not None:
                recording.remove()
            raise RuntimeError(
                f"M-FAC at step {self._step_count}: no training gradients were recorded before this update "
                f"(they are recorded from the backward passes of the num_grads={num_grads} steps before each "
                f"update); schedule the first update after at least one training step — ideally {num_grads} — or "
                f"pass sampler=GradSampler(data, loss_fn)"
            )
        if rows < num_grads:
            logger.warning(
                "M-FAC at step %d: only %d of num_grads=%d training gradients were recorded before this update; "
                "using them", self._step_count, rows, num_grads,
            )
        missing = [n for n in names if n not in recording.layout]
        if missing:
            raise RuntimeError(f"M-FAC: no gradients were recorded for module(s) {missing}")
        return recording.take(names)  # the recording is dropped: the Fisher may overwrite its buffer

    def _obs_update(self, masks: dict[str, torch.Tensor]) -> None:
        """``w ← w − F⁻¹e``, ``e_q = w_q/[F⁻¹]_qq`` over the newly pruned ``q`` (SparseML's update)."""
        assert self._fisher is not None and self._diag is not None
        home = self._diag.device
        weights, pruned = [], []
        for name, slot in self._slots.items():
            info = self._pruner_info[name]
            param = getattr(info.module, info.config.param_name + "_orig")
            weights.append(param.detach().reshape(-1)[slot.index].to(home, self._diag.dtype))
            survives = masks[name].expand(param.shape).reshape(-1)[slot.index]
            pruned.append((~survives).nonzero().squeeze(1).to(home) + slot.offset)
        flat = torch.cat(weights)
        newly = torch.cat(pruned)
        if newly.numel() == 0:
            return
        e = torch.zeros_like(flat)
        e[newly] = flat[newly] / self._diag[newly]
        delta = self._fisher.mul(e).neg_()
        with torch.no_grad():
            for name, slot in self._slots.items():
                info = self._pruner_info[name]
                param = getattr(info.module, info.config.param_name + "_orig")
                full = torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
                full[slot.index] = delta[slot.offset : slot.offset + slot.index.numel()].to(param.device, param.dtype)
                param.add_(full.view_as(param))

    # -- recording training gradients ------------------------------------------------------

    def _watch_schedule(self) -> None:
        """Open the gradient recording when a mask update is due within ``num_grads`` steps."""
        if not self._second_order or self._sampler is not None or self._finalized or not self._pruner_info:
            return
        if self._recording is not None:
            return
        upcoming = self._upcoming_change()
        if upcoming is None:
            return
        names = list(self._pruner_info)
        num_grads = self._config.num_grads_at(self._level(names))
        if upcoming - self._step_count > num_grads:
            return
        entries = self._entries(names)
        self._memory_plan(num_grads, sum(index.numel() for _, _, index in entries))
        logger.info("M-FAC: recording training gradients for the update at step %d", upcoming)
        self._recording = _TrainingGradients(entries, num_grads, self._config.grads_device)

    def _upcoming_change(self) -> int | None:
        """The next step at which some module's scheduled sparsity changes (cached between updates)."""
        if self._next_change is not None and self._next_change > self._step_count:
            return self._next_change
        lasts = [info.config.scheduler.last_step() for info in self._pruner_info.values()]
        horizon = max((s for s in lasts if s is not None), default=0)
        if any(s is None for s in lasts):
            horizon = max(horizon, self._step_count + self._config.num_grads_at(1.0))
        first = max(self._step_count, self._probed_until) + 1
        for step in range(first, horizon + 1):
            for info in self._pruner_info.values():
                level = info.config.scheduler.compute_sparsity(step, info.sparsity_level, info.config)
                if level != info.sparsity_level:
                    self._next_change = step
                    return step
        self._probed_until = max(self._probed_until, horizon)
        return None

    def _stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.remove()
            self._recording = None


def _keep(info: PrunedModuleInfo) -> torch.Tensor:
    """The module's current keep-mask expanded to the weight's shape."""
    param = getattr(info.module, info.config.param_name + "_orig")
    return getattr(info.module, info.config.param_name + "_mask").expand(param.shape)


def oneshot_prune(
    model: nn.Module,
    config: MFACPrunerConfig | None = None,
    sampler: GradSampler | Mapping[str, Any] | None = None,
    *,
    method: str = "mfac",
    inplace: bool = False,
    finalize: bool = True,
) -> MFACPruner:
    """Prune ``model`` to its configured final sparsity now; returns the pruner (``.model``, ``.report()``).

    ``method="mfac"`` (needs ``sampler``) or ``"magnitude"`` (same scope, caps and masks, ``|w|``
    scores) — one flag apart, for comparisons. With ``finalize=True`` (default) the masks are baked and
    Core ML metadata added; ``inplace=False`` (default) works on a deep copy of ``model``.
    """
    pruner = MFACPruner(model, config, sampler, criterion=method)
    pruner.prepare(inplace=inplace)
    pruner.prune_now()
    if finalize:
        pruner.finalize(inplace=True)
    return pruner
