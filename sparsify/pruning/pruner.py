"""The one pruning machine: ``prepare()`` → ``step()`` … → ``finalize()``, for every criterion, pattern,
scope and schedule.

`Pruner` installs forward pre-hooks that apply masks (`sparsify.masking`), advances every module's schedule
at ``step()``, asks the module's criterion for scores (`sparsify.criteria`) whenever a scheduled sparsity
changes, turns scores into masks with the module's pattern and scope (`sparsify.pruning.update`), and bakes
the masks into plain weights with Core ML compression metadata at ``finalize()``. Nothing here depends on
which criterion, pattern or schedule a module uses.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .._checks import check_flags
from .._sharding import full
from ..calibration import CalibrationData, as_calibration_data
from ..config import OptimizationConfig, PrunerConfig
from ..criteria import Criterion, MagnitudeCriterion, Scorer, scorers_by_spec
from ..distributed import refuse_fsdp
from ..mask_layout import mask_name
from ..masking import bake_mask, install_mask, is_masked, set_mask, uninstall_mask
from .guards import check_state_dict, describe_replaced, refuse_replaced, replaced_modules
from .metadata import METADATA_VERSION_BUFFER, record_requested, register_coreml_metadata
from .plan import Plan, Target, hook_fields, inplace_backup, nothing_selected, plan_model
from .report import Report, global_summary, sparsity_summary
from .saving import protect_save_pretrained, unprotect_save_pretrained
from .sharded import adopt_sharding, refuse_sharded_finalize
from .update import compute_masks

__all__ = ["Pruner"]

logger = logging.getLogger(__name__)

STATE_VERSION = 2


class Pruner:
    """Prune a model while it trains, or in one shot.

    Args:
        model: the model to prune.
        config: a `sparsify.PrunerConfig` (or a subclass, such as Core ML Tools' ``MagnitudePrunerConfig``);
            default: every ``Linear`` / ``Conv`` to 50 % by magnitude at the first ``step()``.
        sampler: calibration data for data-dependent criteria used in one shot: the data as it is (a list or
            ``DataLoader`` of dicts of tensors, token tensors, ``(inputs, targets)``; a ``datasets.Dataset``), a
            `sparsify.CalibrationData`, a `sparsify.GradSampler` (data plus a loss, for gradient criteria) or
            SparseML's ``grad_sampler`` dict (`sparsify.calibration`). During training gradient criteria read the
            training loop's gradients.

    Example::

        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=0.9, criterion="snip_momentum", pattern="4x1", scope="global",
            scheduler={"kind": "exponential", "start_step": 0, "end_step": 900, "frequency": 100}))
        pruner = Pruner(model, config)
        model = pruner.prepare(inplace=True)
        for x, y in data:
            optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
            pruner.step()
        model = pruner.finalize(inplace=True)
    """

    config_class: ClassVar[type[OptimizationConfig]] = PrunerConfig

    def __init__(
        self,
        model: nn.Module,
        config: OptimizationConfig | None = None,
        sampler: CalibrationData | Mapping[str, Any] | Iterable[Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if config is None:
            config = self.config_class()
        allowed = self.config_class if self.config_class is not PrunerConfig else OptimizationConfig
        if not isinstance(config, allowed):
            raise TypeError(
                f"config must be a {self.config_class.__name__} (or None for the default), got "
                f"{type(config).__name__}; build one with {self.config_class.__name__}.from_dict(...) from a dict"
            )
        self._model = model
        self._config = config
        self._sampler = None if sampler is None else as_calibration_data(sampler)
        self._step_count = 0
        self._pruner_info: dict[str, Target] = {}
        self._scorers: list[tuple[Criterion, Scorer, list[str]]] = []
        self._finalized = False
        self._observed = False
        self._next_change: dict[tuple[str, ...], int] = {}  # names -> their next change, while it lies ahead
        self._prepared = False
        self._require_targets: str | None = None  # who needs a module to prune (prune()): none is an error
        self._zeros_current = False  # prune(): finalize() follows the last mask update with nothing in between

    # -- what scorers and users read -------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The model being pruned: the prepared one, or the finalized one after ``finalize()``."""
        return self._model

    @property
    def config(self) -> OptimizationConfig:
        return self._config

    @property
    def sampler(self) -> CalibrationData | None:
        return self._sampler

    @property
    def step_count(self) -> int:
        return self._step_count

    @property
    def finalized(self) -> bool:
        """Whether ``finalize()`` baked this pruner's own model (no masks left to update)."""
        return self._finalized

    @property
    def targets(self) -> Mapping[str, Target]:
        """Every pruned module by name (Core ML Tools' ``_pruner_info``)."""
        return self._pruner_info

    @property
    def supported_modules(self) -> tuple[type[nn.Module], ...]:
        return self._config.supported_modules

    def scorer_of(self, name: str) -> Scorer:
        """The runtime scorer of module ``name``'s criterion (M-FAC's ``log`` lives there)."""
        for _, scorer, names in self._scorers:
            if name in names:
                return scorer
        raise KeyError(f"no prepared module {name!r}")

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self, inplace: bool = False) -> nn.Module:
        """Install masks on every selected module and return the model to train.

        With ``inplace=False`` (the default, as in Core ML Tools) a deep copy is prepared and returned: build
        the optimizer on the *returned* model. Every choice is validated before anything changes, and any
        failure or interruption part-way (Ctrl-C included) leaves the model exactly as it was.
        ``initial_sparsity`` is applied here, ranked by magnitude (no gradients exist yet).
        """
        check_flags(f"{type(self).__name__}.prepare", inplace=inplace)
        if self._pruner_info:
            logger.warning("Model has already been prepared for pruning. This API call will be a no-op.")
            return self._model
        refuse_fsdp(self._model)
        plans = plan_model(self._model, self._config)
        if not plans:
            if self._require_targets:
                raise ValueError(f"{self._require_targets}: {nothing_selected(self._model, self._config)}")
            logger.warning("prepare(): %s", nothing_selected(self._model, self._config))
        original = self._model
        model = original if inplace else copy.deepcopy(original)
        installed: list[tuple[nn.Module, str]] = []
        backup: list[tuple[nn.Parameter, torch.Tensor]] = []
        try:
            for plan in plans:
                installed.append(self._install(model, plan))
            self._model = model
            initial = {n: t.sparsity_level for n, t in self._pruner_info.items() if t.sparsity_level > 0}
            if initial:
                # in-place masks zero the user's own parameters: keep their values until prepare() succeeds
                peers = self._with_global_peers(initial)
                backup = inplace_backup(self._pruner_info[n] for n in peers) if model is original else []
                self._apply_levels(initial, fresh_scores=False)
            self._attach_scorers()
        except BaseException:
            self._uninstall(installed)
            with torch.no_grad():
                for param, values in backup:
                    param.copy_(values)
            self._model = original
            raise
        self._prepared = True
        # Hugging Face-style models: save_pretrained writes the masked weights and each layer's pattern and level
        protect_save_pretrained(model, {name: {"param": t.param_name, **hook_fields(t), "tied_to": list(t.tied_to)}
                                        for name, t in self._pruner_info.items()})
        for name, target in self._pruner_info.items():
            logger.info("%s: %s, criterion %s, %s scope", name, target.pattern.describe(),
                        target.config.criterion.describe(), target.config.scope)
        return model

    def _uninstall(self, installed: list[tuple[nn.Module, str]]) -> None:
        """Remove the masks and hooks in ``installed`` (newest first), leaving the parameters as they are."""
        for _, scorer, _ in self._scorers:
            scorer.detach()
        self._scorers.clear()
        for module, param_name in reversed(installed):
            uninstall_mask(module, param_name)
        self._pruner_info.clear()

    def abandon(self) -> nn.Module:
        """Undo ``prepare()``: remove every mask and hook, restoring plain parameters (their values as they are
        now — masked entries are not zeroed). Returns the model. For a one-shot call that failed part-way."""
        installed = []
        for name, target in self._pruner_info.items():
            installed.append((target.module, target.param_name))  # the masked module, even if replaced since
            gone = {path for path, _ in replaced_modules(self._model, {name: target})}
            installed += [(self._model.get_submodule(a), target.param_name) for a in target.tied_to if a not in gone]
        self._uninstall(installed)
        unprotect_save_pretrained(self._model)
        return self._model

    def _install(self, model: nn.Module, plan: Plan) -> tuple[nn.Module, str]:
        config = copy.deepcopy(plan.config)
        module = model.get_submodule(plan.name)
        reader = model.get_submodule(plan.reader) if plan.reader is not None else None
        describe = hook_fields(plan)
        if plan.owner is not None:
            owner = self._pruner_info[plan.owner]
            install_mask(module, config.param_name, owner.mask, owner.sparsity_level, reader=reader,
                         mode=config.masking, **describe)
            owner.tied_to.append(plan.name)
            return module, config.param_name
        param = getattr(module, config.param_name)
        shape = plan.pattern.mask_shape(param.shape[::-1] if plan.transposed else param.shape)
        ones = torch.ones(shape[::-1] if plan.transposed else shape, dtype=torch.bool, device=param.device)
        install_mask(module, config.param_name, ones, 0.0, reader=reader, mode=config.masking, **describe)
        self._pruner_info[plan.name] = Target(
            plan.name, module, config, plan.pattern, plan.entry, config.initial_sparsity, transposed=plan.transposed
        )
        return module, config.param_name

    def _attach_scorers(self) -> None:
        """One scorer per distinct criterion spec among the targets."""
        self._scorers = scorers_by_spec({n: t.config.criterion for n, t in self._pruner_info.items()})
        for _, scorer, names in self._scorers:
            scorer.attach(self, names)

    def observe_gradients(self) -> int:
        """Fold the gradients of the backward passes since the last call into the criteria (once per optimizer
        step, before the weights move — the ``on_before_optimizer_step`` callback calls it; otherwise `step`
        does). Returns how many modules were updated."""
        self._observed = True
        if not self._pruner_info or self._finalized or self._schedules_done():
            return 0
        return sum(scorer.observe_gradients(self) for _, scorer, _ in self._scorers)

    def step(self) -> None:
        """Advance every schedule by one step and recompute the masks whose sparsity changed.

        The first call is step 1 (Core ML Tools' convention). If the mask update fails, the step does not
        count: calling ``step()`` again retries it.
        """
        if not self._pruner_info:
            logger.warning(
                "Model has not been prepared for pruning. This API call will be a no-op. prepare method must "
                "be called before a call to the step method."
            )
            return
        if self._finalized:
            logger.warning("step() after finalize(): the model is finalized, nothing to update")
            return
        refuse_replaced(self._model, self._pruner_info, "step()")
        adopt_sharding(self._pruner_info)
        if not self._observed:
            self.observe_gradients()
        self._observed = False
        upcoming = self._step_count + 1
        changed: dict[str, float] = {}
        for name, target in self._pruner_info.items():
            level = target.config.scheduler.compute_sparsity(upcoming, target.sparsity_level, target.config)
            if level != target.sparsity_level:
                changed[name] = level
        previous = self._step_count
        self._step_count = upcoming
        try:
            if changed:
                self._apply_levels(changed)
        except BaseException:
            self._step_count = previous
            raise
        for _, scorer, _ in self._scorers:
            scorer.after_step(self)

    def prune_now(self, sparsity: float | None = None) -> None:
        """One shot: bring every module to its final sparsity (or to ``sparsity``) now."""
        if not self._pruner_info:
            raise RuntimeError("prune_now(): call prepare() first" if not self._prepared else
                               "prune_now(): the config selects no module of this model (see prepare()'s warning)")
        if self._finalized:
            raise RuntimeError("prune_now(): the model is already finalized")
        refuse_replaced(self._model, self._pruner_info, "prune_now()")
        if sparsity is not None and (isinstance(sparsity, bool) or not 0.0 <= float(sparsity) <= 1.0):
            raise ValueError(f"prune_now(sparsity={sparsity!r}) is invalid: allowed 0.0 <= sparsity <= 1.0")
        self._apply_levels({
            name: target.config.final_sparsity if sparsity is None else float(sparsity)
            for name, target in self._pruner_info.items()
        })

    def _apply_levels(self, levels: dict[str, float], *, fresh_scores: bool = True) -> None:
        """Bring the modules in ``levels`` to those sparsities: compute every mask first, then install."""
        levels = self._with_global_peers(levels)
        adopt_sharding(self._pruner_info)
        self._next_change.clear()
        if not fresh_scores:
            groups = [(MagnitudeCriterion().scorer(), list(levels))]
        else:
            groups = [(scorer, [n for n in names if n in levels]) for _, scorer, names in self._scorers]
        for scorer, names in groups:
            if not names:
                continue
            steps = scorer.substeps(self) if fresh_scores else 1
            start = {n: self._pruner_info[n].sparsity_level for n in names}
            for k in range(1, steps + 1):
                sub = {n: levels[n] if k == steps else start[n] + (levels[n] - start[n]) * k / steps for n in names}
                masks = compute_masks(self, scorer, sub, fresh_scores=fresh_scores)
                for name, level in sub.items():
                    self._set(name, masks[name], level)

    def _with_global_peers(self, levels: dict[str, float]) -> dict[str, float]:
        """A global ranking always covers every module of its group (`sparsify.pruning.groups`), at their current
        levels."""
        entries = {self._pruner_info[n].entry for n in levels if self._pruner_info[n].config.scope == "global"}
        if not entries:
            return levels
        full = dict(levels)
        for name, target in self._pruner_info.items():
            if target.config.scope == "global" and target.entry in entries:
                full.setdefault(name, target.sparsity_level)
        return full

    def _set(self, name: str, mask: torch.Tensor, level: float) -> None:
        target = self._pruner_info[name]
        target.sparsity_level = level
        set_mask(target.module, target.param_name, mask, level)
        for alias in target.tied_to:
            set_mask(self._model.get_submodule(alias), target.param_name, mask, level)

    def finalize(self, model: nn.Module | None = None, inplace: bool = False) -> nn.Module:
        """Bake the masks into plain parameters, remove every hook and buffer, add Core ML metadata.

        Returns the finalized model (a deep copy unless ``inplace``). When ``model`` is omitted the pruner's
        own model is finalized and becomes `model`. If ``step()`` was never called, every layer is first
        brought to its final sparsity, with a warning (Core ML Tools would export it unpruned); if the
        schedules have not reached their targets, a warning says how far they got.
        """
        check_flags(f"{type(self).__name__}.finalize", inplace=inplace)
        own = model is None or model is self._model
        target_model = self._model if model is None else model
        if not self._pruner_info:
            logger.warning("finalize() before prepare(): there are no masks to bake")
        elif own and not self._finalized:
            refuse_replaced(self._model, self._pruner_info, "finalize()")
            refuse_sharded_finalize(self._pruner_info)
            self._complete_or_warn()
        finalized = target_model if inplace else copy.deepcopy(target_model)
        if METADATA_VERSION_BUFFER not in finalized._buffers:
            finalized.register_buffer(METADATA_VERSION_BUFFER, torch.tensor(1))
        for name, target in self._pruner_info.items():
            for module_name in (name, *target.tied_to):
                module = finalized.get_submodule(module_name)
                if is_masked(module, target.param_name):
                    bake_mask(module, target.param_name, trust_versions=self._zeros_current and own)
                    register_coreml_metadata(module, target.param_name)
                    record_requested(module, target.param_name, target.config.final_sparsity)
        if own:
            for _, scorer, _ in self._scorers:
                scorer.detach()
            self._model = finalized
            self._finalized = True
            for name, target in self._pruner_info.items():
                target.module = finalized.get_submodule(name)
        return finalized

    def _complete_or_warn(self) -> None:
        pending = {n: t.config.final_sparsity for n, t in self._pruner_info.items()
                   if t.sparsity_level != t.config.final_sparsity}
        if not pending:
            return
        if self._step_count == 0:
            logger.warning("finalize() called before any step(): pruning %d module(s) to their final sparsity now "
                           "(Core ML Tools would export them unpruned)", len(pending))
            self._apply_levels(pending)
            return
        worst = min(pending, key=lambda n: self._pruner_info[n].sparsity_level - pending[n])
        logger.warning(
            "finalize() at step %d, before the schedule ended: %d module(s) below their target sparsity (e.g. %r at "
            "%.4f of %.4f); the finalized model keeps the sparsity reached so far", self._step_count, len(pending),
            worst, self._pruner_info[worst].sparsity_level, pending[worst],
        )

    # -- schedules -------------------------------------------------------------------------

    def _schedules_done(self) -> bool:
        upcoming = self._step_count + 1
        for target in self._pruner_info.values():
            last = target.config.scheduler.last_step()
            if last is None or upcoming <= last:
                return False
        return True

    def next_update_step(self, names: list[str]) -> int | None:
        """The next step at which one of ``names`` changes its scheduled sparsity (``None``: never)."""
        key = tuple(names)
        found = self._next_change.get(key)
        if found is not None and found > self._step_count:
            return found
        changes = [t.config.scheduler.next_change(self._step_count, t.sparsity_level, t.config)
                   for t in (self._pruner_info[n] for n in names)]
        found = min((step for step in changes if step is not None), default=None)
        if found is not None:
            self._next_change[key] = found
        return found

    # -- reading ---------------------------------------------------------------------------

    def report(self) -> Report:
        """Per-module ``#params`` and Core ML Tools' sparsity metrics, plus a ``global`` row.

        Always current: masks refresh the weights they apply to, so no forward pass is needed after
        ``step()``; works before and after ``finalize()``.
        """
        report = Report()
        replaced = dict(replaced_modules(self._model, self._pruner_info, self._finalized))
        if replaced:
            logger.warning("report(): %s; its row shows the module there now, which the pruner does not prune "
                           "(step() and finalize() refuse to go on)",
                           describe_replaced(list(replaced.items()), self._pruner_info))
        with torch.no_grad():
            for name, target in self._pruner_info.items():
                module = replaced.get(name, target.module)
                if module is None or not isinstance(getattr(module, target.param_name, None), torch.Tensor):
                    continue  # removed, or holds no such weight: nothing to show
                weight = full(getattr(module, target.param_name))  # FSDP2: gathered (all ranks call)
                weight = weight.t() if target.transposed else weight  # metrics count output channels
                report[name] = {"#params": int(weight.numel()), **sparsity_summary(weight)}
            report["global"] = global_summary(report.values())
        return report

    def named_masks(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(module name, bool keep-mask)`` for every pruned module, before ``finalize()``."""
        for name, target in self._pruner_info.items():
            if (mask := target.module._buffers.get(mask_name(target.param_name))) is not None:
                yield name, mask

    # -- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The pruner's own progress: step count, each module's scheduled sparsity, each criterion's state,
        and the configs it was prepared with (to check a resume against).

        Save it next to ``model.state_dict()`` (which holds the masks); after preparing a fresh pruner the
        same way, ``model.load_state_dict(...)`` + `load_state_dict` resume exactly where it stopped.
        """
        criterion_state: dict[str, Any] = {}
        for _, scorer, _ in self._scorers:
            criterion_state.update(scorer.state_dict())
        return {
            "version": STATE_VERSION,
            "step_count": self._step_count,
            "finalized": self._finalized,
            "sparsity_levels": {name: t.sparsity_level for name, t in self._pruner_info.items()},
            "criteria": {name: t.config.criterion.as_dict() for name, t in self._pruner_info.items()},
            "criterion_state": criterion_state,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict` into a pruner prepared with the same config; every part is checked before any
        is applied."""
        if not self._pruner_info:
            raise RuntimeError("load_state_dict(): call prepare() first, with the same config as the saved run")
        step_count, levels = check_state_dict(state_dict, self._pruner_info)
        saved_state = state_dict.get("criterion_state", {})
        unknown = sorted(set(saved_state) - set(self._pruner_info))
        if unknown:
            raise ValueError(f"pruner state_dict has criterion state for unknown module(s) {unknown}")
        for _, scorer, names in self._scorers:
            scorer.load_state_dict({n: saved_state[n] for n in names if n in saved_state}, self)
        self._step_count = step_count
        self._next_change.clear()
        for name, level in levels.items():
            target = self._pruner_info[name]
            target.sparsity_level = float(level)
            hook = getattr(target.module, "pruning_method", None)
            if hook is not None:
                hook.amount = float(level)
        for _, scorer, _ in self._scorers:  # e.g. M-FAC reopens its gradient recording for the next update
            scorer.after_step(self)
