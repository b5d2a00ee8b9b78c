"""Model-level configs: which module gets which `ModulePrunerConfig`, as in Core ML Tools.

A model config maps modules to module configs at three levels:

1. ``module_name_configs`` — regular expressions matched with ``re.fullmatch`` against the module's
   qualified name (``"features\\.\\d+"``), tried in insertion order; the first match wins;
2. ``module_type_configs`` — keyed by class (``nn.Linear``) or class name (``"Linear"``): the exact class
   first, then its name, then (unlike Core ML Tools) the nearest base class, so a ``Linear`` subclass
   follows a ``Linear`` entry instead of silently falling through to the global one;
3. ``global_config`` — every other supported module.

A value of ``None`` at any level means "do not prune this module". Every field is validated when the config
is built and when it is changed, with an error naming the field, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs
from torch import nn

from .._checks import field_error
from .._module_types import COREML_MODULES, OPT_IN_MODULES, PRUNER_MODULES, Conv1D
from . import fields
from .io import Dictable
from .module import ModuleOptimizationConfig, ModulePrunerConfig

__all__ = [
    "OPT_IN_MODULES", "PRUNER_MODULES", "SUPPORTED_MODULES", "Conv1D", "ModuleKey", "OptimizationConfig",
    "PrunerConfig",
]

T = TypeVar("T")
ModuleKey = type | str

#: Core ML Tools' prunable module types (`sparsify._module_types`, where every list of module types is defined)
SUPPORTED_MODULES = COREML_MODULES
_VIRTUAL_CLASSES = (Conv1D,)  # matched by name: a key of this class is stored as its name


class OptimizationConfig(Dictable):
    """Base of model-level configs: ``global_config``, ``module_type_configs``, ``module_name_configs``.

    Subclasses set ``module_config_class`` and ``supported_modules``.
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleOptimizationConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = ()

    global_config: ModuleOptimizationConfig | None
    # Mapping, not dict: each subclass stores dicts of its own module config class
    module_type_configs: Mapping[ModuleKey, ModuleOptimizationConfig | None]
    module_name_configs: Mapping[str, ModuleOptimizationConfig | None]

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
        if isinstance(key, type) and key in _VIRTUAL_CLASSES and key in cls.supported_modules:
            return key.__name__
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

    def lookup(self, name: str, module: nn.Module) -> tuple[ModuleOptimizationConfig | None, str]:
        """``(module config or None, the rule that decided)`` for ``module`` (qualified ``name``).

        Precedence: name regex (``re.fullmatch``, insertion order) > exact class > class name > nearest base
        class (class or class name) > ``global_config``.
        """
        rule = self.rule_for(name, module)
        if rule is not None:
            return rule
        if self.global_config is None:
            return None, "no rule matches and global_config is None"
        return self.global_config, "global_config"

    def rule_for(self, name: str, module: nn.Module) -> tuple[ModuleOptimizationConfig | None, str] | None:
        """The name or type rule that decides ``module`` (as `lookup`), or ``None`` when none names it."""
        for pattern, config in self.module_name_configs.items():
            if re.fullmatch(pattern, name):
                return config, f"{'excluded by ' if config is None else ''}name rule '{pattern}'"
        for klass in type(module).__mro__:
            for key in (klass, klass.__name__):
                if key in self.module_type_configs:
                    config = self.module_type_configs[key]
                    label = key if isinstance(key, str) else key.__name__
                    return config, f"{'excluded by ' if config is None else ''}type rule {label!r}"
        return None

    def get_module_config(self, name: str, module: nn.Module) -> ModuleOptimizationConfig | None:
        """The config for ``module`` (qualified ``name``), or ``None`` if it is not to be pruned (see `lookup`)."""
        return self.lookup(name, module)[0]

    # -- dicts -------------------------------------------------------------------------------

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


def _to_module_types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, type)):
        value = [value]
    allowed = [t.__name__ for t in PRUNER_MODULES]
    names: list[str] = []
    for item in value if isinstance(value, (list, tuple, set, frozenset)) else [value]:
        if isinstance(item, type) and issubclass(item, PRUNER_MODULES):
            names.append(item.__name__)
        elif isinstance(item, str) and item in allowed:
            names.append(item)
        else:
            raise field_error(
                "PrunerConfig", "module_types", item,
                f"allowed None (every supported type) or a list of supported classes or class names: "
                f"{', '.join(allowed)} (names are case-sensitive)",
            )
    if not names:
        raise field_error("PrunerConfig", "module_types", value, "an empty list would prune nothing; use None")
    return tuple(names)


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate])
class PrunerConfig(OptimizationConfig):
    """Which modules `sparsify.Pruner` prunes, and how.

    ``PrunerConfig()`` prunes every supported module (``Linear``, ``Conv1d/2d/3d``, and Hugging Face
    transformers' ``Conv1D``, keyed ``"Conv1D"``) with the default
    `ModulePrunerConfig` (magnitude, 50 %, at the first ``step()``). As soon as a type or name config is
    given, the global config stays ``None`` unless set, so only the listed modules are pruned (as in Core
    ML Tools). ``nn.Embedding`` tables are pruned only when a rule names them (``module_type_configs=
    {nn.Embedding: ...}``, a name rule, or ``"Embedding"`` in ``module_types``), never by
    ``global_config`` alone: Core ML Tools never prunes them, SparseML's ``__ALL_PRUNABLE__`` does.

    Args:
        global_config, module_type_configs, module_name_configs: see the module docs; values are
            `ModulePrunerConfig` instances, dicts describing one, or ``None``.
        module_types: if given, only modules of these classes (names or classes; subclasses follow) are
            pruned, whatever the rules say.
        keep_classifier_dense: never prune the classifier head — the last ``nn.Linear`` of the model.
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModulePrunerConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = PRUNER_MODULES

    global_config: ModulePrunerConfig | None = attrs.field(
        default=None, converter=lambda v: PrunerConfig._check_value("global_config", v)
    )
    module_type_configs: dict[ModuleKey, ModulePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: PrunerConfig._to_type_configs(v)
    )
    module_name_configs: dict[str, ModulePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: PrunerConfig._to_name_configs(v)
    )
    module_types: tuple[str, ...] | None = attrs.field(default=None, converter=_to_module_types)
    # mypy's attrs plugin cannot type a converter that a call returns (fields.py): hence ignore[misc]
    keep_classifier_dense: bool = attrs.field(
        default=False, converter=fields.boolean("PrunerConfig", "keep_classifier_dense")  # type: ignore[misc]
    )

    def __attrs_post_init__(self) -> None:
        if self.global_config is None and not self.module_type_configs and not self.module_name_configs:
            self.global_config = ModulePrunerConfig()

    def lookup(self, name: str, module: nn.Module) -> tuple[ModuleOptimizationConfig | None, str]:
        listed = self.module_types is not None and any(k.__name__ in self.module_types for k in type(module).__mro__)
        if self.module_types is not None and not listed:
            return None, f"type {type(module).__name__} not in module_types {list(self.module_types)}"
        if isinstance(module, OPT_IN_MODULES) and not listed and self.rule_for(name, module) is None:
            kind = type(module).__name__
            return None, (f"{kind} is pruned only when named: a type rule ({kind!r}), a name rule or "
                          f"module_types, not global_config")
        return super().lookup(name, module)

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["module_types"] = list(self.module_types) if self.module_types is not None else None
        data["keep_classifier_dense"] = self.keep_classifier_dense
        return data
