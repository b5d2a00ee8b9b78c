"""coreai-opt's pruning configs, read into a `sparsify.PrunerConfig` for one model.

coreai-opt (Apple's compression library for Core AI) configures magnitude pruning as::

    MagnitudePrunerConfig(                       # or {"magnitude_pruning_config": {...}} / the same in YAML
        global_config=ModuleMagnitudePrunerConfig(
            op_state_spec={"weight": PruningSpec(target_sparsity=0.75, pruning_scheme=Unstructured())},
            sparsity_schedule=PolynomialDecaySchedule(total_iters=100, power=3.0)),
        module_type_configs={"torch.nn.modules.linear.Linear": ...},   # fully qualified class names, or classes
        module_name_configs={"features\\.0": ..., "classifier": None})  # regexes; None = do not prune

`pruner_config` takes that — coreai-opt's pydantic objects when it is installed, or plain dicts / YAML of the
same shape without it — and resolves it against the model exactly as coreai-opt does, since its rules differ
from Core ML Tools' (and sparsify's): a name or type config applies to the module **and all its children**
(a name config beats a type config, which beats the global one); among name configs the *last* matching one
wins; ``global_config`` defaults to 50 % of every ``weight`` unless given (``None`` disables it) even when
type or name configs are present; inside a module config ``op_type_config`` (``"linear"``, ``"conv2d"``, ...)
beats ``op_state_spec``, and ``module_state_spec`` (not inherited by children) beats both; a spec dict's
``"*"`` key stands for every tensor. The result names each pruned module exactly (one name rule per
config entry and spec, so a global scope ranks the modules one coreai-opt entry selects together).

Spec → `ModulePrunerConfig`: ``target_sparsity``; ``Unstructured()`` → per-scalar; ``ChannelStructured(axis=0)``
→ ``pattern="1xchannel"`` (whole output channels), ``axis=1`` → ``"channelx1"`` (whole input channels): both
score a channel by its mean ``|w|``, the same order as coreai-opt's L1 norm. Schedules: none → the target at
``prepare()`` (coreai-opt's static masks: ``initial_sparsity = target``); ``ConstantSparsitySchedule(begin_step)``;
``PolynomialDecaySchedule(begin_step, total_iters, power, initial_sparsity, update_frequency)`` → the scheduler
`CoreAIPolynomialDecayScheduler`, coreai-opt's formula step for step.

Beyond coreai-opt, a spec dict may carry any other `ModulePrunerConfig` field — ``criterion`` (gradient,
SNIP, M-FAC, SparseGPT, Wanda...), ``pattern`` (tiles, ``"2:4"``), ``n_m_ratio``, ``block_size``,
``granularity``, ``scope``, ``min_sparsity`` / ``max_sparsity``, ``normalize``, ``masking`` — and a module
config dict a ``scheduler`` (any sparsify scheduler, as a dict), which replaces ``sparsity_schedule``.

What sparsify cannot do is refused or said: ``op_name_config`` (coreai-opt's traced op names) raises
``ValueError``; a module coreai-opt would prune that sparsify cannot (``ConvTranspose*``,
``MultiheadAttention.in_proj_weight``) is left dense with a ``logging`` warning.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from ..config import ModulePrunerConfig, PrunerConfig
from ..config.io import safe_load_yaml
from ..schedules import ConstantSparsityScheduler, PruningScheduler, initial_and_target, register_scheduler

__all__ = ["CoreAIPolynomialDecayScheduler", "pruner_config", "to_plain"]

logger = logging.getLogger(__name__)

_OWNER = "sparsify.compat.coreai"
_CONFIG_KEY = "magnitude_pruning_config"
_OP_TYPES: dict[type[nn.Module], str] = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d",
                                         nn.Conv3d: "conv3d"}
_UNSUPPORTED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention)
_SPEC_KEYS = ("target_sparsity", "pruning_scheme", "pruning_algo")
_EXTRA_KEYS = ("criterion", "pattern", "n_m_ratio", "block_size", "granularity", "dim", "scope", "min_sparsity",
               "max_sparsity", "normalize", "masking")
_MODULE_KEYS = ("op_state_spec", "op_type_config", "op_name_config", "module_state_spec", "sparsity_schedule",
                "op_input_spec", "op_output_spec", "module_input_spec", "module_output_spec", "scheduler")
_DEFAULT_SPEC = {"target_sparsity": 0.5}
_DISABLED = object()


@register_scheduler
@attrs.define(eq=True)
class CoreAIPolynomialDecayScheduler(PruningScheduler):
    """coreai-opt's ``PolynomialDecaySchedule``: ``initial`` before ``begin_step``; then at update ``i`` of
    ``n = (total_iters - 1) // update_frequency + 1``, ``target + (initial - target) * (1 - i / max(n - 1, 1))
    ** power``; ``target`` from ``begin_step + total_iters`` on. ``initial`` is the config's ``initial_sparsity``.
    """

    kind: ClassVar[str] = "coreai_polynomial_decay"

    total_iters: int = attrs.field(validator=attrs.validators.gt(0))
    begin_step: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    power: float = attrs.field(default=3.0, validator=attrs.validators.gt(0))
    update_frequency: int = attrs.field(default=1, validator=attrs.validators.gt(0))

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        initial, target = initial_and_target(config)
        if step_count < self.begin_step:
            return initial
        if step_count >= self.begin_step + self.total_iters:
            return target
        updates = max((self.total_iters - 1) // self.update_frequency + 1, 1)
        t = ((step_count - self.begin_step) // self.update_frequency) / max(updates - 1, 1)
        return target + (initial - target) * (1 - t) ** self.power

    def last_step(self) -> int | None:
        return self.begin_step + self.total_iters


def to_plain(config: Any) -> dict[str, Any]:
    """coreai-opt's config (pydantic object, dict, YAML text or file path) as a plain dict of its three levels."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        config = safe_load_yaml(path if path.suffix in (".yaml", ".yml") else io.StringIO(str(config))) or {}
    if hasattr(type(config), "model_fields") and hasattr(config, "global_config"):  # coreai-opt's pydantic object
        config = {"global_config": _plain_module(config.global_config, pydantic=True),
                  "module_type_configs": {k: _plain_module(v, True) for k, v in config.module_type_configs.items()},
                  "module_name_configs": {k: _plain_module(v, True) for k, v in config.module_name_configs.items()}}
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"{_OWNER}: config must be coreai-opt's MagnitudePrunerConfig, a dict or YAML, "
                        f"got {type(config).__name__}")
    config = dict(config)
    if set(config) == {_CONFIG_KEY}:
        config = dict(config[_CONFIG_KEY] or {})
    unknown = sorted(set(config) - {"global_config", "module_type_configs", "module_name_configs"})
    if unknown:
        raise ValueError(f"{_OWNER}: config key(s) {unknown} are unknown: allowed global_config, module_type_configs, "
                         "module_name_configs")
    return {
        "global_config": _plain_module(config["global_config"]) if "global_config" in config else {},
        "module_type_configs": {_type_key(k): _plain_module(v) for k, v in (config.get("module_type_configs") or {})
                                .items()},
        "module_name_configs": {k: _plain_module(v) for k, v in (config.get("module_name_configs") or {}).items()},
    }


def _type_key(key: Any) -> str:
    if isinstance(key, type) and issubclass(key, nn.Module):
        return f"{key.__module__}.{key.__qualname__}"
    if not isinstance(key, str) or "." not in key:
        raise ValueError(f"{_OWNER}: module_type_configs key {key!r} is invalid: allowed a module class or its "
                         "fully qualified name ('torch.nn.modules.linear.Linear')")
    return key


def _plain_module(value: Any, pydantic: bool = False) -> dict[str, Any] | None:
    """A module config as a dict; ``None`` (do not prune) stays ``None``."""
    if value is None:
        return None
    if pydantic or hasattr(type(value), "model_fields"):
        data = {k: getattr(value, k) for k in ("op_state_spec", "op_type_config", "op_name_config",
                                               "module_state_spec", "sparsity_schedule")}
        data["op_type_config"] = {k: {"op_state_spec": getattr(v, "op_state_spec", None)} if v is not None else None
                                  for k, v in (data["op_type_config"] or {}).items()}
        data["op_name_config"] = dict(data["op_name_config"] or {})
        return data
    if not isinstance(value, Mapping):
        raise TypeError(f"{_OWNER}: a module config must be a dict, coreai-opt's ModuleMagnitudePrunerConfig or "
                        f"None, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_MODULE_KEYS))
    if unknown:
        raise ValueError(f"{_OWNER}: module config key(s) {unknown} are unknown: allowed {', '.join(_MODULE_KEYS)}")
    return dict(value)


def _spec(value: Any) -> dict[str, Any] | object:
    """A pruning spec as a dict (``_DISABLED`` for ``None``)."""
    if value is None:
        return _DISABLED
    if hasattr(value, "target_sparsity"):  # coreai-opt's PruningSpec
        scheme = value.pruning_scheme
        algo = getattr(value.pruning_algo, "__name__", str(value.pruning_algo))
        if algo != "_MagnitudePruneImpl":
            raise ValueError(f"{_OWNER}: pruning_algo={algo} is not coreai-opt's magnitude pruning: pass sparsify's "
                             "criterion as a 'criterion' key in a dict spec instead")
        kind = "channel_structured" if type(scheme).__name__ == "ChannelStructured" else "unstructured"
        return {"target_sparsity": value.target_sparsity, "pruning_scheme": {"type": kind, "axis": scheme.axis}}
    if not isinstance(value, Mapping):
        raise TypeError(f"{_OWNER}: a pruning spec must be a dict, a PruningSpec or None, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_SPEC_KEYS) - set(_EXTRA_KEYS))
    if unknown:
        raise ValueError(f"{_OWNER}: pruning spec key(s) {unknown} are unknown: allowed {', '.join(_SPEC_KEYS)} "
                         f"and sparsify's {', '.join(_EXTRA_KEYS)}")
    if value.get("pruning_algo", "default") != "default":
        raise ValueError(f"{_OWNER}: pruning_algo={value['pruning_algo']!r} is unknown: allowed 'default' "
                         "(magnitude); sparsify's criteria go in 'criterion'")
    return dict(value)


def _resolve(specs: Any, tensor: str) -> dict[str, Any] | object | None:
    """The spec a spec dict gives ``tensor`` (``None``: the dict says nothing about it)."""
    if specs is None:
        return _DISABLED
    if not isinstance(specs, Mapping):
        raise TypeError(f"{_OWNER}: op_state_spec / module_state_spec must be a dict, got {type(specs).__name__}")
    for key in (tensor, "*"):
        if key in specs:
            return _spec(specs[key])
    return None


def _module_spec(config: dict[str, Any], op_type: str, own: bool) -> dict[str, Any] | object:
    """The weight's spec under one module config (``own``: the config was set on this module, not a parent)."""
    if config.get("op_name_config"):
        raise ValueError(f"{_OWNER}: op_name_config={config['op_name_config']!r} is not supported (coreai-opt's "
                         "traced op names); name the modules in module_name_configs instead")
    if own and config.get("module_state_spec"):
        found = _resolve(config["module_state_spec"], "weight")
        if found is not None:
            return found
    op_types = config.get("op_type_config") or {}
    if op_type in op_types:
        entry = op_types[op_type]
        found = _resolve(None if entry is None else entry.get("op_state_spec", {"weight": _DEFAULT_SPEC}), "weight")
        if found is not None:
            return found
    specs = config.get("op_state_spec", {"weight": _DEFAULT_SPEC})
    found = _resolve(specs, "weight")
    return _DISABLED if found is None else found


def _assign(model: nn.Module, plain: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """Each module's (entry label, module config, set on the module itself) by coreai-opt's precedence."""
    assigned: dict[str, tuple[str, dict[str, Any], bool]] = {}
    modules = dict(model.named_modules())

    def apply(root: str, label: str, config: dict[str, Any]) -> None:
        for name in modules:
            if (name == root or not root or name.startswith(root + ".")) and name not in assigned:
                assigned[name] = (label, config, name == root)

    for key, config in reversed(list(plain["module_name_configs"].items())):
        for name in reversed(list(modules)):  # children before parents, as coreai-opt
            if re.fullmatch(key, name):
                apply(name, f"module_name_configs[{key!r}]", _entry(config))
    for key, config in reversed(list(plain["module_type_configs"].items())):  # the last entry wins, as names
        for name, module in reversed(list(modules.items())):
            if f"{type(module).__module__}.{type(module).__qualname__}" == key:
                apply(name, f"module_type_configs[{key!r}]", _entry(config))
    apply("", "global_config", _entry(plain["global_config"]))
    return assigned


def _entry(config: dict[str, Any] | None) -> dict[str, Any]:
    return {"_off": True} if config is None else config


def pruner_config(config: Any, model: nn.Module) -> PrunerConfig:
    """Translate coreai-opt's magnitude-pruning ``config`` for ``model`` (see the module docstring)."""
    plain = to_plain(config)
    groups: dict[tuple[str, str], tuple[list[str], ModulePrunerConfig]] = {}
    assigned = _assign(model, plain)
    for name, module in model.named_modules():
        label, module_config, own = assigned.get(name, ("", {"_off": True}, False))
        if module_config.get("_off"):
            continue
        op_type = next((t for klass, t in _OP_TYPES.items() if type(module) is klass), None)
        if op_type is None:
            if isinstance(module, _UNSUPPORTED):
                logger.warning("%s: %s (%s) would be pruned by coreai-opt, but sparsify does not prune %s: left dense",
                               _OWNER, name, type(module).__name__, type(module).__name__)
            continue
        spec = _module_spec(module_config, op_type, own)
        if spec is _DISABLED:
            continue
        assert isinstance(spec, dict)
        translated = _translate(spec, module_config, module, f"{label} for {name or 'the model'}")
        key = (label, repr(translated.as_dict()))
        groups.setdefault(key, ([], translated))[0].append(name)
    rules = {"|".join(re.escape(n) for n in names): cfg for names, cfg in groups.values()}
    return PrunerConfig(module_name_configs=rules or {"$^": None})  # a rule that matches nothing: prune nothing


def _translate(spec: dict[str, Any], module_config: dict[str, Any], module: nn.Module,
               where: str) -> ModulePrunerConfig:
    fields = {k: v for k, v in spec.items() if k in _EXTRA_KEYS}
    target = float(spec.get("target_sparsity", 0.5))
    scheme = spec.get("pruning_scheme") or {"type": "unstructured"}
    if not isinstance(scheme, Mapping) or scheme.get("type", "unstructured") not in ("unstructured",
                                                                                        "channel_structured"):
        raise ValueError(f"{_OWNER}: pruning_scheme={scheme!r} in {where} is invalid: allowed "
                         "{'type': 'unstructured'} or {'type': 'channel_structured', 'axis': 0 or 1}")
    if scheme.get("type") == "channel_structured":
        weight = getattr(module, "weight")  # noqa: B009
        rank = weight.dim() if isinstance(weight, torch.Tensor) else 2
        axis = int(scheme.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        if axis not in (0, 1):
            raise ValueError(f"{_OWNER}: ChannelStructured(axis={scheme.get('axis')}) in {where} is not supported: "
                             f"sparsify prunes whole output (0) or input (1) channels of a rank-{rank} weight")
        fields["pattern"] = "1xchannel" if axis == 0 else "channelx1"
    scheduler, initial = _schedule(module_config, target, where)
    if "scheduler" in module_config:
        scheduler, initial = module_config["scheduler"], 0.0
    return ModulePrunerConfig(scheduler=scheduler, initial_sparsity=initial, target_sparsity=target, **fields)


def _schedule(module_config: dict[str, Any], target: float, where: str) -> tuple[Any, float]:
    schedule = module_config.get("sparsity_schedule")
    if schedule is None:
        return ConstantSparsityScheduler(begin_step=0), target  # static masks, at prepare()
    if hasattr(type(schedule), "model_fields"):
        name = type(schedule).__name__
        schedule = {"type": "polynomial_decay" if name == "PolynomialDecaySchedule" else "constant",
                    **{k: getattr(schedule, k) for k in type(schedule).model_fields}}
    if not isinstance(schedule, Mapping) or schedule.get("type") not in ("constant", "polynomial_decay"):
        raise ValueError(f"{_OWNER}: sparsity_schedule={schedule!r} in {where} is invalid: allowed "
                         "{'type': 'constant', 'begin_step': N} or {'type': 'polynomial_decay', 'total_iters': N, ...}")
    fields = {k: v for k, v in schedule.items() if k != "type"}
    if schedule["type"] == "constant":
        begin = int(fields.pop("begin_step", 0))
        _no_extra(fields, where, "ConstantSparsitySchedule")
        return ConstantSparsityScheduler(begin_step=max(begin, 0)), target if begin == 0 else 0.0
    initial = float(fields.pop("initial_sparsity", 0.0))
    known = {"total_iters", "begin_step", "power", "update_frequency"}
    _no_extra({k: v for k, v in fields.items() if k not in known}, where, "PolynomialDecaySchedule")
    if not math.isfinite(initial) or not 0.0 <= initial <= target:
        raise ValueError(f"{_OWNER}: initial_sparsity={initial} in {where} is invalid: allowed 0 <= it <= "
                         f"target_sparsity ({target})")
    return CoreAIPolynomialDecayScheduler(**fields), initial


def _no_extra(fields: dict[str, Any], where: str, what: str) -> None:
    if fields:
        raise ValueError(f"{_OWNER}: {what} key(s) {sorted(fields)} in {where} are unknown")
