"""Core ML Tools' magnitude-pruning configs: the magnitude × local preset of the one machine.

`ModuleMagnitudePrunerConfig` is a `ModulePrunerConfig` whose criterion, tile pattern, scope and caps
are fixed (magnitude, none, local, none): it has exactly Core ML Tools' fields, order and defaults, so
scripts written for ``coremltools.optimize.torch.pruning`` run unchanged, and a `sparsify.Pruner` given
one prunes exactly as `sparsify.MagnitudePruner` (and Core ML Tools) does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import attrs
from torch import nn

from . import fields
from .model import SUPPORTED_MODULES, ModuleKey, OptimizationConfig
from .module import ModuleOptimizationConfig, ModulePrunerConfig, check_module_config

__all__ = ["MagnitudePrunerConfig", "ModuleMagnitudePrunerConfig"]

_OWNER = "ModuleMagnitudePrunerConfig"


CORE_ML_FIELDS = (
    "scheduler", "initial_sparsity", "target_sparsity", "granularity", "block_size", "n_m_ratio", "dim", "param_name",
)
"""Core ML Tools' ``ModuleMagnitudePrunerConfig`` fields, in its order."""


def _named_after(owner: str, convert: Any) -> Any:
    """``convert``, with its errors naming ``owner`` instead of ``ModulePrunerConfig``."""

    def converter(value: Any) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise type(exc)(str(exc).replace("ModulePrunerConfig", owner, 1)) from exc

    return converter


def _core_ml_fields_only(cls: type, attributes: list[attrs.Attribute]) -> list[attrs.Attribute]:
    """Keep Core ML Tools' fields (their checks named after the preset); fix every other field at its default,
    out of ``__init__``, the repr and ``as_dict``."""
    return [
        a.evolve(converter=_named_after(cls.__name__, a.converter)) if a.name in CORE_ML_FIELDS and a.converter
        else a if a.name in CORE_ML_FIELDS
        else a.evolve(init=False, repr=False, converter=None)
        for a in attributes
    ]


def _check(values: Any) -> None:
    check_module_config(values, _OWNER)


@attrs.define(
    on_setattr=[attrs.setters.convert, attrs.setters.validate, fields.revalidate_with(_check)],
    field_transformer=_core_ml_fields_only,
)
class ModuleMagnitudePrunerConfig(ModulePrunerConfig):
    """How one module is magnitude-pruned — Core ML Tools' fields, order and defaults.

    Args:
        scheduler: when and how fast to prune; default ``ConstantSparsityScheduler(begin_step=0)``.
        initial_sparsity: sparsity applied at ``prepare()`` and the start of a polynomial schedule.
        target_sparsity: final fraction of zeros, in ``[0, 1]`` (``n / m`` with ``n_m_ratio``).
        granularity: ``"per_scalar"``, ``"per_kernel"`` or ``"per_channel"``.
        block_size: prune blocks of this many consecutive output channels together; ``1`` disables blocks.
        n_m_ratio: ``(n, m)``: zero ``n`` of every ``m`` consecutive weights along ``dim``, ramped gradually.
        dim: ``1`` for n:m runs along input channels, ``0`` along output channels.
        param_name: the parameter to prune.
    """


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate])
class MagnitudePrunerConfig(OptimizationConfig):
    """Which modules `sparsify.MagnitudePruner` prunes, and how — Core ML Tools' ``MagnitudePrunerConfig``.

    ``MagnitudePrunerConfig()`` prunes every supported module (``Linear``, ``Conv1d/2d/3d``) with the default
    `ModuleMagnitudePrunerConfig`. As soon as a type or name config is given, the global config stays
    ``None`` unless set, so only the listed modules are pruned (as in Core ML Tools).
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleMagnitudePrunerConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = SUPPORTED_MODULES

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
