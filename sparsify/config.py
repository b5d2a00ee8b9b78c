"""Configuration classes: which modules to prune, and how.

Mirrors Core ML Tools' ``OptimizationConfig`` design: a *module config* says how one module is pruned
(`ModuleMagnitudePrunerConfig`), and a *model config* (`MagnitudePrunerConfig`) maps
modules to module configs at three levels:

1. ``module_name_configs`` — regular expressions matched with ``re.fullmatch`` against the module's
   qualified name (``"features\\.\\d+"``), tried in insertion order; the first match wins;
2. ``module_type_configs`` — keyed by class (``nn.Linear``) or class name (``"Linear"``): the exact
   class first, then its name, then (unlike Core ML Tools) the nearest base class in its MRO, so that a
   ``Linear`` subclass follows a ``Linear`` entry instead of silently falling through to the global one;
3. ``global_config`` — everything else that the pruner supports.

A value of ``None`` at any level means "do not prune this module".

Every field is validated when the config is built *and* when it is changed later (attribute
assignment and the ``set_*`` methods), with an error naming the field, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import attrs
import yaml
from torch import nn

from . import _fields
from ._checks import as_int, check_in, check_range, field_error
from .schedules import ConstantSparsityScheduler, PruningScheduler

__all__ = [
    "MagnitudePrunerConfig",
    "ModuleMagnitudePrunerConfig",
    "ModuleOptimizationConfig",
    "OptimizationConfig",
]

_SUPPORTED_MAGNITUDE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

T = TypeVar("T")


def safe_load_yaml(source: str | Path | IO[str]) -> Any:
    """``yaml.safe_load`` of a file path or a stream: plain data only, never objects or code."""
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    return yaml.safe_load(source)


def _load_yaml(source: str | Path | IO[str]) -> dict[str, Any]:
    """Parse a config document; an empty document is ``{}``."""
    data = safe_load_yaml(source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"a config YAML document must be a mapping at the top level, got {type(data).__name__}")
    return data


def _check_keys(cls: type, data: Mapping[str, Any]) -> None:
    allowed = [a.name for a in attrs.fields(cls) if a.init]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}: allowed keys are "
            f"{', '.join(allowed)}"
        )


class _Dictable:
    """``from_dict`` / ``from_yaml`` / ``as_dict`` for attrs config classes."""

    @classmethod
    def from_dict(cls: type[T], config_dict: Mapping[str, Any]) -> T:
        """Build from a mapping; unknown keys are an error that names them."""
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict expects a mapping, got {type(config_dict).__name__}")
        _check_keys(cls, config_dict)
        return cls(**cls._structure(dict(config_dict)))  # type: ignore[attr-defined]

    @classmethod
    def _structure(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    @classmethod
    def from_yaml(cls: type[T], yml: str | Path | IO[str]) -> T:
        """Build from a YAML file path or stream (parsed with ``yaml.safe_load``)."""
        return cls.from_dict(_load_yaml(yml))  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        """A plain dict of JSON/YAML types; ``from_dict`` rebuilds an equivalent config."""
        raise NotImplementedError

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise `as_dict` as YAML; also write it to ``path`` when given."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


class ModuleOptimizationConfig(_Dictable):
    """Base of per-module configs."""


# ----------------------------------------------------------------------------------------------
# ModuleMagnitudePrunerConfig
# ----------------------------------------------------------------------------------------------

_MODULE_CFG = "ModuleMagnitudePrunerConfig"


def _to_granularity(value: Any) -> str:
    if value == "per_layer":
        raise field_error(
            _MODULE_CFG, "granularity", value,
            "'per_layer' is not a pruning granularity (Core ML Tools accepts it but cannot prune conv weights "
            "with it); allowed values are 'per_scalar', 'per_kernel', 'per_channel'",
        )
    check_in(_MODULE_CFG, "granularity", value, ("per_scalar", "per_kernel", "per_channel"))
    return value


def _to_block_size(value: Any) -> int:
    value = as_int(_MODULE_CFG, "block_size", value)
    check_range(_MODULE_CFG, "block_size", value, 1)
    return value


def _check_module_config(values: Mapping[str, Any]) -> None:
    """Checks that involve more than one field of a ModuleMagnitudePrunerConfig."""
    n_m = values["n_m_ratio"]
    if n_m is not None:
        if values["block_size"] > 1:
            raise ValueError(
                f"{_MODULE_CFG}: block_size={values['block_size']} and n_m_ratio={n_m} are mutually exclusive: "
                f"with n_m_ratio set, block_size must be 1"
            )
        if values["granularity"] != "per_scalar":
            raise ValueError(
                f"{_MODULE_CFG}: granularity={values['granularity']!r} and n_m_ratio={n_m} are mutually "
                f"exclusive: with n_m_ratio set, granularity must be 'per_scalar'"
            )
    target = values["target_sparsity"] if n_m is None else n_m[0] / n_m[1]
    if values["initial_sparsity"] > target:
        raise ValueError(
            f"{_MODULE_CFG}.initial_sparsity={values['initial_sparsity']} is invalid: allowed "
            f"0.0 <= initial_sparsity <= target sparsity ({target})"
        )


def revalidate_with(check: Callable[[Mapping[str, Any]], None]) -> Callable[[Any, attrs.Attribute, Any], Any]:
    """An attrs ``on_setattr`` hook that re-runs a config's cross-field ``check`` with the new value
    in place, so an assignment that would make the config inconsistent is refused (and not applied)."""

    def hook(instance: Any, attribute: attrs.Attribute, value: Any) -> Any:
        values = {a.name: getattr(instance, a.name) for a in attrs.fields(type(instance))}
        values[attribute.name] = value
        check(values)
        return value

    return hook


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate, revalidate_with(_check_module_config)])
class ModuleMagnitudePrunerConfig(ModuleOptimizationConfig):
    """How one module is magnitude-pruned. Same fields, order and defaults as Core ML Tools.

    Args:
        scheduler: when and how fast to prune; default ``ConstantSparsityScheduler(begin_step=0)``
            (prune to the target at the first ``step()``). Each config gets its own instance.
        initial_sparsity: sparsity applied at ``prepare()`` and the start of a polynomial schedule.
        target_sparsity: final fraction of zeros, in ``[0, 1]``. With ``n_m_ratio`` the target is
            ``n / m`` instead.
        granularity: ``"per_scalar"`` (single weights), ``"per_kernel"`` (whole ``k×k`` kernels of a
            conv) or ``"per_channel"`` (whole output channels / rows).
        block_size: prune blocks of this many consecutive output channels together (L2 score of the
            block); ``1`` disables blocks.
        n_m_ratio: ``(n, m)``: zero ``n`` of every ``m`` consecutive weights along ``dim``
            (``(2, 4)`` = 50 %). Ramped gradually by the scheduler.
        dim: ``1`` for n:m runs along input channels, ``0`` along output channels.
        param_name: the parameter to prune.
    """

    scheduler: PruningScheduler = attrs.field(
        factory=lambda: ConstantSparsityScheduler(begin_step=0), converter=_fields.scheduler(_MODULE_CFG)
    )
    initial_sparsity: float = attrs.field(default=0.0, converter=_fields.fraction(_MODULE_CFG, "initial_sparsity"))
    target_sparsity: float = attrs.field(default=0.5, converter=_fields.fraction(_MODULE_CFG, "target_sparsity"))
    granularity: str = attrs.field(default="per_scalar", converter=_to_granularity)
    block_size: int = attrs.field(default=1, converter=_to_block_size)
    n_m_ratio: tuple[int, int] | None = attrs.field(default=None, converter=_fields.n_m_ratio(_MODULE_CFG))
    dim: int = attrs.field(default=1, converter=_fields.dim(_MODULE_CFG))
    param_name: str = attrs.field(default="weight", converter=_fields.param_name(_MODULE_CFG))

    def __attrs_post_init__(self) -> None:
        _check_module_config(attrs.asdict(self, recurse=False))

    @property
    def final_sparsity(self) -> float:
        """The sparsity the schedule ends at: ``target_sparsity``, or ``n / m`` with ``n_m_ratio``."""
        if self.n_m_ratio is not None:
            return self.n_m_ratio[0] / self.n_m_ratio[1]
        return self.target_sparsity

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["scheduler"] = self.scheduler.as_dict()
        data["n_m_ratio"] = list(self.n_m_ratio) if self.n_m_ratio is not None else None
        return data


# ----------------------------------------------------------------------------------------------
# Model-level configs
# ----------------------------------------------------------------------------------------------

ModuleKey = type | str


class OptimizationConfig(_Dictable):
    """Base of model-level configs: ``global_config``, ``module_type_configs``, ``module_name_configs``.

    Subclasses set ``module_config_class`` and ``supported_modules``.
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleOptimizationConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = ()

    global_config: ModuleOptimizationConfig | None
    module_type_configs: dict[ModuleKey, ModuleOptimizationConfig | None]
    module_name_configs: dict[str, ModuleOptimizationConfig | None]

    # -- validation --------------------------------------------------------------------------

    @classmethod
    def _check_value(cls, where: str, value: Any) -> ModuleOptimizationConfig | None:
        if value is None or isinstance(value, cls.module_config_class):
            return value
        if isinstance(value, Mapping):
            return cls.module_config_class.from_dict(value)
        raise field_error(
            cls.__name__, where, value,
            f"expected a {cls.module_config_class.__name__}, a dict describing one, or None (= do not prune)",
            TypeError,
        )

    @classmethod
    def _check_type_key(cls, key: Any) -> ModuleKey:
        names = [t.__name__ for t in cls.supported_modules]
        if isinstance(key, str):
            if key not in names:
                raise field_error(
                    cls.__name__, "module_type_configs", key,
                    f"string keys must be one of {', '.join(names)} (class names of supported modules)",
                )
            return key
        if isinstance(key, type) and issubclass(key, cls.supported_modules):
            return key
        raise field_error(
            cls.__name__, "module_type_configs", key,
            f"keys must be a supported module class ({', '.join(names)}, or a subclass) or its class name",
            TypeError,
        )

    @classmethod
    def _check_name_key(cls, key: Any) -> str:
        if not isinstance(key, str):
            raise field_error(cls.__name__, "module_name_configs", key, "keys must be strings", TypeError)
        try:
            re.compile(key)
        except re.error as exc:
            raise field_error(
                cls.__name__, "module_name_configs", key,
                f"keys are regular expressions and this one is invalid ({exc})",
            ) from exc
        return key

    @classmethod
    def _to_type_configs(cls, value: Any) -> OrderedDict[ModuleKey, ModuleOptimizationConfig | None]:
        if not isinstance(value, Mapping):
            raise field_error(cls.__name__, "module_type_configs", value, "expected a dict", TypeError)
        return OrderedDict(
            (cls._check_type_key(k), cls._check_value(f"module_type_configs[{k!r}]", v)) for k, v in value.items()
        )

    @classmethod
    def _to_name_configs(cls, value: Any) -> OrderedDict[str, ModuleOptimizationConfig | None]:
        if not isinstance(value, Mapping):
            raise field_error(cls.__name__, "module_name_configs", value, "expected a dict", TypeError)
        return OrderedDict(
            (cls._check_name_key(k), cls._check_value(f"module_name_configs[{k!r}]", v)) for k, v in value.items()
        )

    # -- building ----------------------------------------------------------------------------

    def set_global(self: T, global_config: ModuleOptimizationConfig | None) -> T:
        """Config for every supported module that no type or name config covers. Returns ``self``."""
        self.global_config = global_config  # type: ignore[attr-defined]
        return self

    def set_module_type(self: T, object_type: ModuleKey, opt_config: ModuleOptimizationConfig | None) -> T:
        """Config for modules of ``object_type`` (a class or class name); ``None`` skips them."""
        key = self._check_type_key(object_type)  # type: ignore[attr-defined]
        value = self._check_value(f"module_type_configs[{key!r}]", opt_config)  # type: ignore[attr-defined]
        self.module_type_configs[key] = value  # type: ignore[attr-defined]
        return self

    def set_module_name(self: T, module_name: str, opt_config: ModuleOptimizationConfig | None) -> T:
        """Config for modules whose qualified name fully matches the regex ``module_name``."""
        key = self._check_name_key(module_name)  # type: ignore[attr-defined]
        value = self._check_value(f"module_name_configs[{key!r}]", opt_config)  # type: ignore[attr-defined]
        self.module_name_configs[key] = value  # type: ignore[attr-defined]
        return self

    # -- lookup ------------------------------------------------------------------------------

    def get_module_config(self, name: str, module: nn.Module) -> ModuleOptimizationConfig | None:
        """The config for ``module`` (qualified ``name``), or ``None`` if it is not to be pruned.

        Precedence: name regex (fullmatch, insertion order) > exact class > class name >
        nearest base class (class or class name) > ``global_config``.
        """
        for pattern, config in self.module_name_configs.items():
            if re.fullmatch(pattern, name):
                return config
        for klass in type(module).__mro__:
            if klass in self.module_type_configs:
                return self.module_type_configs[klass]
            if klass.__name__ in self.module_type_configs:
                return self.module_type_configs[klass.__name__]
        return self.global_config

    # -- dicts -------------------------------------------------------------------------------

    @classmethod
    def _structure(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("global_config") is not None:
            data["global_config"] = cls._check_value("global_config", data["global_config"])
        return data

    def as_dict(self) -> dict[str, Any]:
        def dump(config: ModuleOptimizationConfig | None) -> dict[str, Any] | None:
            return None if config is None else config.as_dict()

        type_configs: dict[str, Any] = {}
        for key, config in self.module_type_configs.items():
            name = key if isinstance(key, str) else key.__name__
            if isinstance(key, type) or name not in type_configs:  # a class key beats its name
                type_configs[name] = dump(config)
        return {
            "global_config": dump(self.global_config),
            "module_type_configs": type_configs,
            "module_name_configs": {k: dump(v) for k, v in self.module_name_configs.items()},
        }


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate])
class MagnitudePrunerConfig(OptimizationConfig):
    """Which modules `sparsify.MagnitudePruner` prunes, and how.

    ``MagnitudePrunerConfig()`` prunes every supported module (``Linear``, ``Conv1d/2d/3d``) with
    the default `ModuleMagnitudePrunerConfig`. As soon as a type or name config is given, the
    global config stays ``None`` unless set, so only the listed modules are pruned (as in Core ML
    Tools).
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleMagnitudePrunerConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = _SUPPORTED_MAGNITUDE_MODULES

    global_config: ModuleMagnitudePrunerConfig | None = attrs.field(
        default=None, converter=lambda v: MagnitudePrunerConfig._check_value("global_config", v)
    )
    module_type_configs: dict[ModuleKey, ModuleMagnitudePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: MagnitudePrunerConfig._to_type_configs(v)
    )
    module_name_configs: dict[str, ModuleMagnitudePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: MagnitudePrunerConfig._to_name_configs(v)
    )

    def __attrs_post_init__(self) -> None:
        if self.global_config is None and not self.module_type_configs and not self.module_name_configs:
            self.global_config = ModuleMagnitudePrunerConfig()
