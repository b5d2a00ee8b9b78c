"""The pruning lifecycle shared by every pruner: ``prepare()`` → ``step()`` … → ``finalize()``.

`BasePruner` owns everything that does not depend on *how* weights are scored: choosing the
modules from the config (validating all of them before touching the model), installing and rolling
back masks, advancing schedules, baking masks and writing Core ML compression metadata, reports, and
checkpointable state. A concrete pruner supplies `BasePruner.scores` (importance per weight)
and, if it ranks layers jointly, `BasePruner.compute_masks`.

`MagnitudePruner` is Core ML Tools' pruner: ``|w|`` scores, per-layer ranking, the Core ML
patterns, any scheduler.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from .analysis.report import Report, global_summary, sparsity_summary
from .config import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig, OptimizationConfig
from .distributed import refuse_fsdp
from .masking import bake_mask, install_mask, is_masked, set_mask, uninstall_mask
from .patterns import mask_shape, n_m_zero_count, ranked_mask, scheduled_n_m_mask

__all__ = ["BasePruner", "MagnitudePruner", "PrunedModuleInfo", "register_coreml_metadata"]

logger = logging.getLogger(__name__)

METADATA_VERSION_BUFFER = "_COREML_/metadata_version"
_PRUNING = 1  # coremltools' CompressionType.pruning


def register_coreml_metadata(module: nn.Module, param_name: str) -> None:
    """Mark ``module.<param_name>`` as pruned for ``coremltools.convert``.

    Writes the buffer ``_COREML_/<param_name>/compression_type = [1]`` exactly as Core ML Tools does
    (appending to an existing list, for joint compression). With ``minimum_deployment_target >= iOS16``
    the converter then stores that weight as a sparse ``constexpr_sparse_to_dense`` constant.
    """
    buffer_name = f"_COREML_/{param_name}/compression_type"
    existing = module._buffers.get(buffer_name)
    types = existing.tolist() if existing is not None else []
    if _PRUNING not in types:
        types.append(_PRUNING)
    module.register_buffer(buffer_name, torch.tensor(types))


@attrs.define
class PrunedModuleInfo:
    """What the pruner knows about one pruned module (Core ML Tools' ``_MagnitudePrunerInfo``)."""

    config: ModuleMagnitudePrunerConfig
    module: nn.Module
    sparsity_level: float
    tied_to: list[str] = attrs.field(factory=list)  # other names of modules sharing this weight


@attrs.define
class _Plan:
    name: str
    config: ModuleMagnitudePrunerConfig
    reader: str | None  # name of a parent that reads the weight outside the module's forward
    owner: str | None  # for a tied weight, the module whose mask this one shares


class BasePruner:
    """Shared lifecycle. Subclasses define `scores` and may override `compute_masks`."""

    config_class: ClassVar[type[OptimizationConfig]] = MagnitudePrunerConfig

    def __init__(self, model: nn.Module, config: OptimizationConfig | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"config must be a {self.config_class.__name__} (or None for the default), got "
                f"{type(config).__name__}; build one with {self.config_class.__name__}.from_dict(...) "
                f"if you have a dict"
            )
        self._model = model
        self._config = config
        self._step_count = 0
        self._pruner_info: dict[str, PrunedModuleInfo] = {}
        self._finalized = False

    # -- properties ------------------------------------------------------------------------

    @property
    def supported_modules(self) -> tuple[type[nn.Module], ...]:
        return self.config_class.supported_modules

    @property
    def model(self) -> nn.Module:
        """The model being pruned: the prepared one, or the finalized one after ``finalize()``."""
        return self._model

    @property
    def step_count(self) -> int:
        return self._step_count

    # -- selection -------------------------------------------------------------------------

    def _plan(self, model: nn.Module) -> list[_Plan]:
        """Decide what to prune and validate every choice before the model is touched."""
        plans: list[_Plan] = []
        owners: dict[int, str] = {}
        for name, module in model.named_modules(remove_duplicate=True):
            if not isinstance(module, self.supported_modules):
                continue
            config = self._config.get_module_config(name, module)
            if config is None:
                continue
            self._check_module(name, module, config)
            param = getattr(module, config.param_name)
            if param.numel() == 0:
                logger.warning("module %r: %s has no elements, nothing to prune; skipped", name, config.param_name)
                continue
            owner = owners.setdefault(id(param), name)
            if owner != name:
                owner_config = next(p.config for p in plans if p.name == owner)
                if owner_config != config:
                    raise ValueError(
                        f"{name}.{config.param_name} is the same tensor as {owner}.{config.param_name} (tied "
                        f"weights) but the two modules have different configs; give them one config"
                    )
            plans.append(_Plan(name, config, _reading_parent(model, name, module), owner if owner != name else None))
        return plans

    def _check_module(self, name: str, module: nn.Module, config: ModuleMagnitudePrunerConfig) -> None:
        param = getattr(module, config.param_name, None)
        where = f"module {name!r} ({type(module).__name__})"
        if not isinstance(param, nn.Parameter):
            raise ValueError(f"{where} has no parameter param_name={config.param_name!r} to prune")
        if is_masked(module, config.param_name):
            raise ValueError(f"{where}.{config.param_name} already has a pruning mask; finalize it first")
        if not param.is_floating_point():
            raise TypeError(f"{where}.{config.param_name} has dtype {param.dtype}: only floating-point weights prune")
        rank = param.dim()
        if config.granularity == "per_kernel" and rank < 3:
            raise ValueError(
                f"{where}: granularity='per_kernel' needs a weight with kernels (rank >= 3), but "
                f"{config.param_name} has shape {tuple(param.shape)}; allowed here: 'per_scalar', 'per_channel'"
            )
        if config.n_m_ratio is not None:
            if rank < 2:
                raise ValueError(f"{where}: n_m_ratio needs a weight of rank >= 2, got shape {tuple(param.shape)}")
            achieved = n_m_zero_count(param.shape, config.n_m_ratio, config.dim) / param.numel()
            wanted = config.n_m_ratio[0] / config.n_m_ratio[1]
            if achieved < wanted - 1e-9:
                logger.warning(
                    "%s: %d channels along dim=%d are not a multiple of m=%d, so n:m %s reaches only %.4f "
                    "sparsity instead of %.4f", where, param.shape[config.dim], config.dim, config.n_m_ratio[1],
                    config.n_m_ratio, achieved, wanted,
                )
        if config.block_size > 1 and config.block_size > param.shape[0]:
            logger.warning(
                "%s: block_size=%d exceeds the %d output channels, so the whole weight is one block",
                where, config.block_size, param.shape[0],
            )

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self, inplace: bool = False) -> nn.Module:
        """Install masks on every selected module and return the model to train.

        With ``inplace=False`` (the default, as in Core ML Tools) a deep copy is prepared and returned:
        build the optimizer on the *returned* model. All configs are validated before anything is
        changed, and a failure part-way restores the model exactly as it was.
        """
        if self._pruner_info:
            logger.warning("Model has already been prepared for pruning. This API call will be a no-op.")
            return self._model
        refuse_fsdp(self._model)
        plans = self._plan(self._model)
        if not plans:
            logger.warning("prepare(): the config selects no module of a supported type %s", self.supported_modules)
        model = self._model if inplace else copy.deepcopy(self._model)
        installed: list[tuple[nn.Module, str]] = []
        try:
            for plan in plans:
                installed.append(self._install(model, plan))
        except BaseException:
            for module, param_name in reversed(installed):
                uninstall_mask(module, param_name)
            self._pruner_info.clear()
            raise
        self._model = model
        return model

    def _install(self, model: nn.Module, plan: _Plan) -> tuple[nn.Module, str]:
        config = copy.deepcopy(plan.config)
        if config.n_m_ratio is not None:
            config.target_sparsity = config.final_sparsity
        module = model.get_submodule(plan.name)
        reader = model.get_submodule(plan.reader) if plan.reader is not None else None
        pattern = {
            "block_size": config.block_size, "granularity": config.granularity,
            "n_m_ratio": config.n_m_ratio, "dim": config.dim,
        }
        if plan.owner is not None:
            owner = self._pruner_info[plan.owner]
            shared_mask = getattr(owner.module, config.param_name + "_mask")
            install_mask(module, config.param_name, shared_mask, owner.sparsity_level, reader=reader, **pattern)
            owner.tied_to.append(plan.name)
            return module, config.param_name
        info = PrunedModuleInfo(config=config, module=module, sparsity_level=config.initial_sparsity)
        param = getattr(module, config.param_name)
        granularity = "per_scalar" if config.n_m_ratio is not None else config.granularity
        ones = torch.ones(mask_shape(param.shape, granularity), dtype=torch.bool, device=param.device)
        install_mask(module, config.param_name, ones, config.initial_sparsity, reader=reader, **pattern)
        self._pruner_info[plan.name] = info
        if config.initial_sparsity > 0:
            self._apply_levels({plan.name: config.initial_sparsity})
        return module, config.param_name

    def step(self) -> None:
        """Advance every schedule by one step and recompute the masks whose sparsity changed.

        The first call is step 1 (Core ML Tools' convention).
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
        self._step_count += 1
        changed: dict[str, float] = {}
        for name, info in self._pruner_info.items():
            level = info.config.scheduler.compute_sparsity(self._step_count, info.sparsity_level, info.config)
            if level != info.sparsity_level:
                changed[name] = level
        if changed:
            self._apply_levels(changed)

    def _apply_levels(self, levels: dict[str, float]) -> None:
        masks = self.compute_masks(levels)
        for name, level in levels.items():
            info = self._pruner_info[name]
            info.sparsity_level = level
            set_mask(info.module, info.config.param_name, masks[name], level)
            for alias in info.tied_to:
                set_mask(self._model.get_submodule(alias), info.config.param_name, masks[name], level)

    def scores(self, name: str, info: PrunedModuleInfo) -> torch.Tensor:
        """Importance of every element of the pruned parameter (higher = keep)."""
        raise NotImplementedError

    def compute_masks(self, levels: dict[str, float]) -> dict[str, torch.Tensor]:
        """Keep-masks for the modules in ``levels`` at those sparsities (default: each layer alone)."""
        masks = {}
        for name, level in levels.items():
            info = self._pruner_info[name]
            masks[name] = self.pattern_mask(self.scores(name, info), level, info.config)
        return masks

    @staticmethod
    def pattern_mask(scores: torch.Tensor, level: float, config: ModuleMagnitudePrunerConfig) -> torch.Tensor:
        """Apply the config's pattern (n:m, blocks, granularity) to ``scores`` at sparsity ``level``."""
        if config.n_m_ratio is not None:
            return scheduled_n_m_mask(scores, level, config.n_m_ratio, config.dim)
        return ranked_mask(scores, level, config.block_size, config.granularity)

    def finalize(self, model: nn.Module | None = None, inplace: bool = False) -> nn.Module:
        """Bake the masks into plain parameters, remove every hook and buffer, add Core ML metadata.

        Returns the finalized model (a deep copy unless ``inplace``). When ``model`` is omitted the
        pruner's own model is finalized and becomes `model`.

        If ``step()`` was never called, every layer is first brought to its final sparsity (with a
        warning) — Core ML Tools would silently export an unpruned model in that case.
        """
        own = model is None or model is self._model
        target_model = self._model if model is None else model
        if not self._pruner_info:
            logger.warning("finalize() before prepare(): there are no masks to bake")
        elif own and not self._finalized and self._step_count == 0:
            pending = {n: i.config.final_sparsity for n, i in self._pruner_info.items()
                       if i.sparsity_level != i.config.final_sparsity}
            if pending:
                logger.warning(
                    "finalize() called before any step(): pruning %d module(s) to their final sparsity now "
                    "(Core ML Tools would export them unpruned)", len(pending),
                )
                self._apply_levels(pending)
        finalized = target_model if inplace else copy.deepcopy(target_model)
        if METADATA_VERSION_BUFFER not in finalized._buffers:
            finalized.register_buffer(METADATA_VERSION_BUFFER, torch.tensor(1))
        for name, info in self._pruner_info.items():
            for module_name in (name, *info.tied_to):
                module = finalized.get_submodule(module_name)
                if is_masked(module, info.config.param_name):
                    bake_mask(module, info.config.param_name)
                    register_coreml_metadata(module, info.config.param_name)
        if own and self._pruner_info:
            self._model = finalized
            self._finalized = True
            for name, info in self._pruner_info.items():
                info.module = finalized.get_submodule(name)
        return finalized

    # -- inspection ------------------------------------------------------------------------

    def report(self) -> Report:
        """Per-module ``#params`` and Core ML Tools' sparsity metrics, plus a ``global`` row.

        Always current: masks refresh the weights they apply to, so no forward pass is needed after
        ``step()``; works before and after ``finalize()``.
        """
        report = Report()
        with torch.no_grad():
            for name, info in self._pruner_info.items():
                weight = getattr(info.module, info.config.param_name)
                report[name] = {"#params": int(weight.numel()), **sparsity_summary(weight)}
            report["global"] = global_summary(report.values())
        return report

    def named_masks(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(module name, bool keep-mask)`` for every pruned module, before ``finalize()``."""
        for name, info in self._pruner_info.items():
            mask = info.module._buffers.get(info.config.param_name + "_mask")
            if mask is not None:
                yield name, mask

    # -- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The pruner's own progress: step count and each module's scheduled sparsity.

        Save it next to ``model.state_dict()`` (which holds the masks); after preparing a fresh pruner
        the same way, ``model.load_state_dict(...)`` + `load_state_dict` resume the schedule
        exactly where it stopped.
        """
        return {
            "version": 1,
            "step_count": self._step_count,
            "finalized": self._finalized,
            "sparsity_levels": {name: info.sparsity_level for name, info in self._pruner_info.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore `state_dict` into a pruner prepared with the same config."""
        if not self._pruner_info:
            raise RuntimeError("load_state_dict(): call prepare() first, with the same config as the saved run")
        missing = {"step_count", "sparsity_levels"} - set(state_dict)
        if missing:
            raise ValueError(f"pruner state_dict lacks key(s) {sorted(missing)}; got keys {sorted(state_dict)}")
        levels = state_dict["sparsity_levels"]
        expected, got = set(self._pruner_info), set(levels)
        if expected != got:
            raise ValueError(
                "pruner state_dict does not match the prepared modules: missing "
                f"{sorted(expected - got)}, unexpected {sorted(got - expected)}"
            )
        self._step_count = int(state_dict["step_count"])
        for name, level in levels.items():
            info = self._pruner_info[name]
            info.sparsity_level = float(level)
            hook = getattr(info.module, "pruning_method", None)
            if hook is not None:
                hook.amount = float(level)


def _reading_parent(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """The parent that reads ``module``'s weight in its own forward, if any (MHA ``out_proj``)."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name)
    if parent is not module and isinstance(parent, nn.MultiheadAttention) and parent.out_proj is module:
        return parent_name
    return None


class MagnitudePruner(BasePruner):
    """Core ML Tools' magnitude pruner (Zhu & Gupta, 2017): drop-in for
    ``coremltools.optimize.torch.pruning.MagnitudePruner``.

    Example::

        config = MagnitudePrunerConfig().set_global(
            ModuleMagnitudePrunerConfig(target_sparsity=0.75,
                                        scheduler=PolynomialDecayScheduler(update_steps=range(0, 1000, 100))))
        pruner = MagnitudePruner(model, config)
        model = pruner.prepare(inplace=True)
        for batch in data:
            train_step(model, batch)
            pruner.step()
        model = pruner.finalize(inplace=True)
    """

    config_class: ClassVar[type[OptimizationConfig]] = MagnitudePrunerConfig

    def scores(self, name: str, info: PrunedModuleInfo) -> torch.Tensor:
        return getattr(info.module, info.config.param_name + "_orig").detach().abs()
