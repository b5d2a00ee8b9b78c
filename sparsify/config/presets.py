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

from ..criteria import Criterion, MagnitudeCriterion
from ..schedules import ConstantSparsityScheduler, PruningScheduler
from . import fields
from .model import SUPPORTED_MODULES, ModuleKey, OptimizationConfig
from .module import ModuleOptimizationConfig, ModulePrunerConfig, check_module_config

__all__ = ["MagnitudePrunerConfig", "ModuleMagnitudePrunerConfig"]

_OWNER = "ModuleMagnitudePrunerConfig"


def _to_granularity(value: Any) -> str:
    from .module import _to_granularity as convert

    try:
        return convert(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("ModulePrunerConfig", _OWNER, 1)) from exc


def _check(values: Any) -> None:
    check_module_config(values, _OWNER)


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate, fields.revalidate_with(_check)])
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

    # mypy's attrs plugin cannot type a converter that a call returns (fields.py): hence ignore[misc] below
    scheduler: PruningScheduler = attrs.field(
        factory=lambda: ConstantSparsityScheduler(begin_step=0), converter=fields.scheduler(_OWNER)  # type: ignore[misc]
    )
    initial_sparsity: float = attrs.field(default=0.0, converter=fields.fraction(_OWNER, "initial_sparsity"))  # type: ignore[misc]
    target_sparsity: float = attrs.field(default=0.5, converter=fields.fraction(_OWNER, "target_sparsity"))  # type: ignore[misc]
    granularity: str = attrs.field(default="per_scalar", converter=_to_granularity)
    block_size: int = attrs.field(default=1, converter=fields.positive_int(_OWNER, "block_size"))  # type: ignore[misc]
    n_m_ratio: tuple[int, int] | None = attrs.field(default=None, converter=fields.n_m_ratio(_OWNER))  # type: ignore[misc]
    dim: int = attrs.field(default=1, converter=fields.dim(_OWNER))  # type: ignore[misc]
    param_name: str = attrs.field(default="weight", converter=fields.param_name(_OWNER))  # type: ignore[misc]
    criterion: Criterion = attrs.field(factory=MagnitudeCriterion, init=False, repr=False)
    pattern: str | None = attrs.field(default=None, init=False, repr=False)
    scope: str = attrs.field(default="local", init=False, repr=False)
    min_sparsity: float = attrs.field(default=0.0, init=False, repr=False)
    max_sparsity: float = attrs.field(default=1.0, init=False, repr=False)
    normalize: str | None = attrs.field(default=None, init=False, repr=False)
    masking: str = attrs.field(default="default", init=False, repr=False)


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
