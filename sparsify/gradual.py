"""Gradual pruning with pluggable criteria, tile / n:m patterns and local or global scope.

`GradualPruner` is the engine's `sparsify.pruner.BasePruner` with three parts
swapped in — nothing else changes (masks, lifecycle, finalize, Core ML metadata, report, resume):

* **criterion** (`sparsify.criteria`): ``magnitude``, ``gradient``, ``snip``,
  ``snip_momentum``; gradient criteria fold in one gradient per optimizer step;
* **pattern** (`sparsify.tiles`): ``"NxM"`` tiles (``"4x1"``, ``"1x1"``, ``"1xchannel"``,
  ``"channelx1"``) or ``n_m_ratio=(n, m)`` (n zeros of m), ramped gradually;
* **scope** (`sparsify.scope`): ``"local"`` (each layer at the scheduled sparsity, capped at
  ``max_sparsity``) or ``"global"`` (one ranking across layers, with ``min_sparsity`` /
  ``max_sparsity`` caps per layer and the exact global count). Global scope ranks together the
  modules whose configs share scheduler, initial and final sparsity and criterion — usually all of
  them; ``normalize`` on the model config chooses raw or per-layer-normalised scores.

Any registered scheduler drives it, including the step-range ones of `sparsify.decay`
(``exponential``, ``cubic_fast_start``, …).

Gradients. ``prepare()`` puts a ``register_post_accumulate_grad_hook`` on every pruned
``weight_orig`` (no optimizer or ``torch.save`` patching; the hooks do not follow deep copies or
pickles). After each backward pass the hook notes the gradient; the criterion folds it into its state
once per optimizer step — in `GradualPruner.observe_gradients` (what the
``on_before_optimizer_step`` callback calls, before the weights move, as INC does) or, if that was
not called, at the start of `GradualPruner.step`. With gradient accumulation, the gradient
folded in is the accumulated one. The criterion state is part of `GradualPruner.state_dict`.

Example::

    config = GradualPrunerConfig(global_config=ModuleGradualPrunerConfig(
        criterion="snip_momentum", pattern="4x1", target_sparsity=0.9, scope="global",
        max_sparsity=0.98, scheduler={"kind": "exponential", "start_step": 0, "end_step": 900,
                                      "frequency": 100}),
        keep_classifier_dense=True)
    pruner = GradualPruner(model, config)
    model = pruner.prepare(inplace=True)
    for x, y in data:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        pruner.step()
    model = pruner.finalize(inplace=True)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from . import _fields
from . import decay as _decay  # noqa: F401  (registers the step-range schedulers)
from ._checks import check_in, field_error
from .config import (
    _SUPPORTED_MAGNITUDE_MODULES,
    ModuleKey,
    ModuleOptimizationConfig,
    OptimizationConfig,
    revalidate_with,
)
from .criteria import Criterion, MagnitudeCriterion, criterion_from_dict
from .masking import masked_weight
from .pruner import BasePruner, PrunedModuleInfo
from .schedules import ConstantSparsityScheduler, PruningScheduler
from .scope import NORMALIZATIONS, global_keep_masks
from .selection import classifier_head_name
from .tiles import NMPattern, Pattern, TilePattern, parse_pattern

__all__ = ["GradualPruner", "GradualPrunerConfig", "ModuleGradualPrunerConfig", "pattern_of"]

logger = logging.getLogger(__name__)

_OWNER = "ModuleGradualPrunerConfig"
SCOPES = ("local", "global")


def _to_criterion(value: Any) -> Criterion:
    try:
        return criterion_from_dict(value)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{_OWNER}.criterion: {exc}") from exc


def _to_pattern(value: Any) -> TilePattern:
    try:
        return parse_pattern(value)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{_OWNER}.{exc}") from exc


def _to_scope(value: Any) -> str:
    check_in(_OWNER, "scope", value, SCOPES)
    return value


def _check_module_config(values: Mapping[str, Any]) -> None:
    n_m, pattern = values["n_m_ratio"], values["pattern"]
    if n_m is not None and pattern != TilePattern(1, 1):
        raise ValueError(
            f"{_OWNER}: pattern={pattern.text!r} and n_m_ratio={n_m} are mutually exclusive: with n_m_ratio set, "
            f"pattern must be '1x1'"
        )
    final = values["target_sparsity"] if n_m is None else n_m[0] / n_m[1]
    if values["initial_sparsity"] > final:
        raise ValueError(
            f"{_OWNER}.initial_sparsity={values['initial_sparsity']} is invalid: allowed 0.0 <= initial_sparsity "
            f"<= final sparsity ({final})"
        )
    if values["min_sparsity"] > values["max_sparsity"]:
        raise ValueError(
            f"{_OWNER}.min_sparsity={values['min_sparsity']} is invalid: allowed min_sparsity <= max_sparsity "
            f"({values['max_sparsity']})"
        )


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate, revalidate_with(_check_module_config)])
class ModuleGradualPrunerConfig(ModuleOptimizationConfig):
    """How one module is pruned by `GradualPruner`.

    Args:
        scheduler: when and how fast to prune (any registered scheduler, or a dict with ``kind``);
            default: the target at the first ``step()``.
        initial_sparsity: sparsity applied at ``prepare()`` and the start of the schedule.
        target_sparsity: the final fraction of zeros (ignored with ``n_m_ratio``: then ``n / m``).
        criterion: ``"magnitude"`` (default), ``"gradient"``, ``"snip"``, ``"snip_momentum"``, a dict
            such as ``{"kind": "snip_momentum", "decay": 0.9, "gain": 1.0}``, or a Criterion.
        pattern: tile shape ``"NxM"`` — N output × M input channels (``"1x1"`` unstructured,
            ``"4x1"``, ``"1xchannel"``, ``"channelx1"``); see `sparsify.tiles`.
        n_m_ratio: ``(n, m)``: ``n`` ZEROS in every ``m`` consecutive weights along ``dim``, ramped
            gradually; needs ``pattern="1x1"``.
        dim: the n:m axis: ``1`` input channels (default), ``0`` output channels.
        scope: ``"local"`` or ``"global"`` (see `sparsify.scope`).
        min_sparsity: in global scope, the least sparsity of this layer.
        max_sparsity: the most sparsity of this layer (INC's ``max_sparsity_ratio_per_op``; it also
            caps the scheduled sparsity in local scope).
        param_name: the parameter to prune.
    """

    scheduler: PruningScheduler = attrs.field(
        factory=lambda: ConstantSparsityScheduler(begin_step=0), converter=_fields.scheduler(_OWNER)
    )
    initial_sparsity: float = attrs.field(default=0.0, converter=_fields.fraction(_OWNER, "initial_sparsity"))
    target_sparsity: float = attrs.field(default=0.5, converter=_fields.fraction(_OWNER, "target_sparsity"))
    criterion: Criterion = attrs.field(factory=MagnitudeCriterion, converter=_to_criterion)
    pattern: TilePattern = attrs.field(default="1x1", converter=_to_pattern)
    n_m_ratio: tuple[int, int] | None = attrs.field(default=None, converter=_fields.n_m_ratio(_OWNER))
    dim: int = attrs.field(default=1, converter=_fields.dim(_OWNER))
    scope: str = attrs.field(default="local", converter=_to_scope)
    min_sparsity: float = attrs.field(default=0.0, converter=_fields.fraction(_OWNER, "min_sparsity"))
    max_sparsity: float = attrs.field(default=1.0, converter=_fields.fraction(_OWNER, "max_sparsity"))
    param_name: str = attrs.field(default="weight", converter=_fields.param_name(_OWNER))

    def __attrs_post_init__(self) -> None:
        _check_module_config(attrs.asdict(self, recurse=False))

    # The engine reads these Core ML pattern fields; tiles replace them here.
    granularity: ClassVar[str] = "per_scalar"
    block_size: ClassVar[int] = 1

    @property
    def final_sparsity(self) -> float:
        """``target_sparsity``, or ``n / m`` with ``n_m_ratio``."""
        if self.n_m_ratio is not None:
            return self.n_m_ratio[0] / self.n_m_ratio[1]
        return self.target_sparsity

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["scheduler"] = self.scheduler.as_dict()
        data["criterion"] = self.criterion.as_dict()
        data["pattern"] = self.pattern.text
        data["n_m_ratio"] = list(self.n_m_ratio) if self.n_m_ratio is not None else None
        return data


def pattern_of(config: ModuleGradualPrunerConfig) -> Pattern:
    """The `sparsify.tiles.Pattern` a module config asks for."""
    if config.n_m_ratio is not None:
        return NMPattern(*config.n_m_ratio, dim=config.dim)
    return config.pattern


def _to_module_types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, type)):
        value = [value]
    names = tuple(v.__name__ if isinstance(v, type) else v for v in value)
    if not names or not all(isinstance(n, str) for n in names):
        raise field_error(
            "GradualPrunerConfig", "module_types", value,
            "expected None (all supported types) or a non-empty list of class names or classes", TypeError,
        )
    return names


def _to_normalize(value: Any) -> str | None:
    if value not in NORMALIZATIONS:
        raise field_error("GradualPrunerConfig", "normalize", value, f"allowed values are {NORMALIZATIONS}")
    return value


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate])
class GradualPrunerConfig(OptimizationConfig):
    """Which modules `GradualPruner` prunes, and how (global / type / name configs, as in the engine).

    Args:
        global_config, module_type_configs, module_name_configs: as in
            `sparsify.MagnitudePrunerConfig`, with `ModuleGradualPrunerConfig` values
            (or dicts); name keys are regular expressions matched with ``re.fullmatch``.
        module_types: if given, only modules of these classes (names or classes, subclasses
            included) are pruned, whatever the other rules say.
        keep_classifier_dense: never prune the classifier head (the last ``nn.Linear``).
        normalize: how global scope compares layers: ``None`` (raw scores), ``"mean"``, ``"l2"``,
            ``"max"`` (see `sparsify.scope`).
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleGradualPrunerConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = _SUPPORTED_MAGNITUDE_MODULES

    global_config: ModuleGradualPrunerConfig | None = attrs.field(
        default=None, converter=lambda v: GradualPrunerConfig._check_value("global_config", v)
    )
    module_type_configs: dict[ModuleKey, ModuleGradualPrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: GradualPrunerConfig._to_type_configs(v)
    )
    module_name_configs: dict[str, ModuleGradualPrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: GradualPrunerConfig._to_name_configs(v)
    )
    module_types: tuple[str, ...] | None = attrs.field(default=None, converter=_to_module_types)
    keep_classifier_dense: bool = attrs.field(
        default=False, converter=_fields.boolean("GradualPrunerConfig", "keep_classifier_dense")
    )
    normalize: str | None = attrs.field(default=None, converter=_to_normalize)

    def __attrs_post_init__(self) -> None:
        if self.global_config is None and not self.module_type_configs and not self.module_name_configs:
            self.global_config = ModuleGradualPrunerConfig()

    def get_module_config(self, name: str, module: nn.Module) -> ModuleGradualPrunerConfig | None:
        """The engine's lookup (name regex > type > global), after the ``module_types`` filter."""
        if self.module_types is not None and not any(k.__name__ in self.module_types for k in type(module).__mro__):
            return None
        return super().get_module_config(name, module)  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["module_types"] = list(self.module_types) if self.module_types is not None else None
        data["keep_classifier_dense"] = self.keep_classifier_dense
        data["normalize"] = self.normalize
        return data


class _GradRecorder:
    """post-accumulate-grad hook: remember the newest gradient of one parameter (no copy)."""

    def __init__(self, store: dict[str, torch.Tensor], name: str) -> None:
        self.store = store
        self.name = name

    def __call__(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self.store[self.name] = param.grad


class GradualPruner(BasePruner):
    """Gradual pruner with a criterion, a tile / n:m pattern and local or global scope (see module docs)."""

    config_class: ClassVar[type[OptimizationConfig]] = GradualPrunerConfig

    def __init__(self, model: nn.Module, config: GradualPrunerConfig | None = None) -> None:
        super().__init__(model, config)
        self._criterion_state: dict[str, torch.Tensor] = {}
        self._fresh_grads: dict[str, torch.Tensor] = {}
        self._grad_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._observed = False
        self._preparing = False
        self._head: str | None = None

    # -- selection -------------------------------------------------------------------------

    def head_to_keep(self, model: nn.Module) -> str | None:
        """The classifier head left dense by ``keep_classifier_dense``, if any."""
        return classifier_head_name(model) if self._config.keep_classifier_dense else None

    def _plan(self, model: nn.Module) -> list[Any]:
        self._head = self.head_to_keep(model)
        plans = super()._plan(model)
        return [p for p in plans if self._head is None or self._head not in (p.name, p.owner)]

    def _check_module(self, name: str, module: nn.Module, config: Any) -> None:
        if name == self._head:
            return
        super()._check_module(name, module, config)
        param = getattr(module, config.param_name)
        pattern_of(config).check(tuple(param.shape), f"module {name!r} ({type(module).__name__})")

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self, inplace: bool = False) -> nn.Module:
        """Install masks (and gradient hooks for gradient criteria); see `BasePruner.prepare`."""
        if self._pruner_info:
            return super().prepare(inplace)
        self._preparing = True
        try:
            model = super().prepare(inplace)
            joint = {n: i.sparsity_level for n, i in self._pruner_info.items()
                     if i.config.scope == "global" and i.sparsity_level > 0}
            if joint:  # initial sparsity was applied module by module while installing
                self._apply_levels(joint)
        finally:
            self._preparing = False
        for name, info in self._pruner_info.items():
            logger.info("%s: %s, criterion %s, %s scope", name, pattern_of(info.config).describe(),
                        info.config.criterion.kind, info.config.scope)
            if info.config.criterion.needs_gradients:
                param = getattr(info.module, info.config.param_name + "_orig")
                recorder = _GradRecorder(self._fresh_grads, name)
                self._grad_hooks.append(param.register_post_accumulate_grad_hook(recorder))
        return model

    def observe_gradients(self) -> int:
        """Fold the gradients of the backward passes since the last call into the criteria (once per
        optimizer step); returns how many modules were updated. Called by the
        ``on_before_optimizer_step`` callback, or by `step` if it was not called."""
        self._observed = True
        if not self._pruner_info or self._finalized:
            return 0
        if self._schedules_done():
            self._fresh_grads.clear()
            return 0
        updated = 0
        for name, info in self._pruner_info.items():
            grad = self._fresh_grads.pop(name, None)
            if grad is None or not info.config.criterion.needs_gradients:
                continue
            weight = self._masked(info)
            self._criterion_state[name] = info.config.criterion.update(self._criterion_state.get(name), weight, grad)
            updated += 1
        return updated

    def step(self) -> None:
        """Fold in new gradients (if `observe_gradients` was not called), then advance the schedules."""
        if not self._observed:
            self.observe_gradients()
        self._observed = False
        super().step()

    def finalize(self, model: nn.Module | None = None, inplace: bool = False) -> nn.Module:
        """Bake masks, remove the gradient hooks, add Core ML metadata (see `BasePruner.finalize`)."""
        own = model is None or model is self._model
        finalized = super().finalize(model, inplace)
        if own:
            for handle in self._grad_hooks:
                handle.remove()
            self._grad_hooks.clear()
            self._fresh_grads.clear()
        return finalized

    def _schedules_done(self) -> bool:
        upcoming = self._step_count + 1
        for info in self._pruner_info.values():
            last = info.config.scheduler.last_step()
            if last is None or upcoming <= last:
                return False
        return True

    # -- masks -----------------------------------------------------------------------------

    @staticmethod
    def _masked(info: PrunedModuleInfo) -> torch.Tensor:
        name = info.config.param_name
        return masked_weight(getattr(info.module, name + "_orig").detach(), getattr(info.module, name + "_mask"))

    def scores(self, name: str, info: PrunedModuleInfo) -> torch.Tensor:
        """Element scores from the module's criterion and its state (higher = keep)."""
        criterion = info.config.criterion
        state = self._criterion_state.get(name)
        weight = self._masked(info)
        if criterion.needs_gradients and state is None:
            if self._preparing:
                logger.info("%s: no gradient seen yet, initial sparsity ranks by |W|", name)
                return weight.abs()
            raise RuntimeError(
                f"module {name!r}: criterion {criterion.kind!r} has seen no gradient yet — run loss.backward() "
                f"before pruner.step() (or call the on_before_optimizer_step callback) before its first pruning step"
            )
        return criterion.scores(state, weight)

    def compute_masks(self, levels: dict[str, float]) -> dict[str, torch.Tensor]:
        masks: dict[str, torch.Tensor] = {}
        groups: dict[Any, float] = {}
        for name, level in levels.items():
            config = self._pruner_info[name].config
            if config.scope == "global":
                groups.setdefault(self._group_key(config), level)
            else:
                masks[name] = self._local_mask(name, min(level, config.max_sparsity))
        for key, level in groups.items():
            members = [n for n, i in self._pruner_info.items()
                       if i.config.scope == "global" and self._group_key(i.config) == key]
            masks.update({n: m for n, m in self._global_masks(members, level).items() if n in levels})
        return masks

    @staticmethod
    def _group_key(config: ModuleGradualPrunerConfig) -> tuple[Any, ...]:
        return (repr(config.scheduler.as_dict()), config.initial_sparsity, config.final_sparsity, config.criterion)

    def _local_mask(self, name: str, level: float) -> torch.Tensor:
        info = self._pruner_info[name]
        pattern = pattern_of(info.config)
        element = self.scores(name, info)
        grouped = pattern.group_scores(element)
        if isinstance(pattern, NMPattern) and level >= pattern.max_sparsity - 1e-12:
            keep = torch.zeros_like(grouped, dtype=torch.bool)  # every run n:m, no float rounding of the count
        else:
            keep = global_keep_masks(
                {name: grouped}, level, weights_per_group={name: pattern.weights_per_group(element.shape)},
                layer_weights={name: element.numel()},
            )[name]
        return pattern.expand(keep, element)

    def _global_masks(self, members: list[str], level: float) -> dict[str, torch.Tensor]:
        element, grouped, sizes, weights, low, high = {}, {}, {}, {}, {}, {}
        for name in members:
            info = self._pruner_info[name]
            pattern = pattern_of(info.config)
            element[name] = self.scores(name, info)
            grouped[name] = pattern.group_scores(element[name])
            sizes[name] = pattern.weights_per_group(element[name].shape)
            weights[name] = element[name].numel()
            low[name] = min(info.config.min_sparsity, pattern.max_sparsity)
            high[name] = min(info.config.max_sparsity, pattern.max_sparsity)
        keep = global_keep_masks(
            grouped, level, weights_per_group=sizes, layer_weights=weights, min_sparsity=low, max_sparsity=high,
            normalize=self._config.normalize,
        )
        masks = {n: pattern_of(self._pruner_info[n].config).expand(keep[n], element[n]) for n in members}
        zeros = sum(int((~m).sum()) for m in masks.values())
        total = sum(weights.values())
        logger.info("step %d: global ranking of %d module(s) at %.4f: %d of %d weights pruned (%.4f)",
                    self._step_count, len(members), level, zeros, total, zeros / max(total, 1))
        return masks

    # -- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The engine's state plus each module's criterion state (moving averages) for an exact resume."""
        state = super().state_dict()
        state["criterion_state"] = {n: t.detach().clone() for n, t in self._criterion_state.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("criterion_state", {})
        unknown = sorted(set(saved) - set(self._pruner_info))
        if unknown:
            raise ValueError(f"pruner state_dict has criterion state for unknown module(s) {unknown}")
        self._criterion_state = {}
        for name, tensor in saved.items():
            device = getattr(self._pruner_info[name].module, self._pruner_info[name].config.param_name + "_orig").device
            self._criterion_state[name] = tensor.detach().clone().to(device)
        self._fresh_grads.clear()
        self._observed = False
