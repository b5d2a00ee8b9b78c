"""Configuration of the second-order (M-FAC) pruner: which modules, how sparse, and the Fisher options.

`MFACPrunerConfig` follows the engine's config style (global / type / name module configs, each a
`sparsify.ModuleMagnitudePrunerConfig`) and adds M-FAC's options; every field is validated on
construction and on assignment, with errors naming the field, the value and what is allowed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from . import _fields
from ._checks import as_float, as_int, check_in, check_range, field_error
from .config import (
    _SUPPORTED_MAGNITUDE_MODULES,
    ModuleKey,
    ModuleMagnitudePrunerConfig,
    ModuleOptimizationConfig,
    OptimizationConfig,
)
from .fisher import DAMP_MODES
from .scope import NORMALIZATIONS

__all__ = ["CRITERIA", "MFACPrunerConfig"]

_OWNER = "MFACPrunerConfig"
CRITERIA = ("mfac", "magnitude")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def _to_num_grads(value: Any) -> int | dict[float, int]:
    if isinstance(value, Mapping):
        if not value:
            raise field_error(_OWNER, "num_grads", value, "a mapping needs at least one {sparsity: num_grads} entry")
        table = {}
        for key, count in value.items():
            level = as_float(_OWNER, "num_grads", key)
            check_range(_OWNER, "num_grads", level, 0.0, 1.0, high_open=True)
            count = as_int(_OWNER, "num_grads", count)
            check_range(_OWNER, "num_grads", count, 1)
            table[level] = count
        return dict(sorted(table.items()))
    value = as_int(_OWNER, "num_grads", value)
    check_range(_OWNER, "num_grads", value, 1)
    return value


def _to_damp(value: Any) -> float:
    value = as_float(_OWNER, "damp", value)
    check_range(_OWNER, "damp", value, 0.0, low_open=True)
    return value


def _to_damp_mode(value: Any) -> str:
    check_in(_OWNER, "damp_mode", value, DAMP_MODES)
    return value


def _to_block_size(value: Any) -> int | None:
    if value is None:
        return None
    value = as_int(_OWNER, "fisher_block_size", value)
    check_range(_OWNER, "fisher_block_size", value, 1)
    return value


def _to_recomputations(value: Any) -> int:
    value = as_int(_OWNER, "num_recomputations", value)
    check_range(_OWNER, "num_recomputations", value, 1)
    return value


def _to_device(field: str):
    def convert(value: Any) -> str:
        try:
            return str(torch.device(value))
        except (RuntimeError, TypeError) as exc:
            raise field_error(_OWNER, field, value, "expected a torch device such as 'cpu' or 'cuda:0'") from exc

    return convert


def _to_devices(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, torch.device)):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise field_error(_OWNER, "devices", value, "expected None or a non-empty list of devices", TypeError)
    return tuple(_to_device("devices")(v) for v in value)


def _to_budget(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return value
    raise field_error(
        _OWNER, "memory_budget", value,
        "allowed None (no limit), a float in (0, 1] (fraction of available RAM) or an int > 1 (bytes)",
    )


def _to_normalize(value: Any) -> str | None:
    check_in(_OWNER, "normalize", value, NORMALIZATIONS)
    return value


def _check_caps(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    low = value if attribute.name == "min_layer_sparsity" else instance.min_layer_sparsity
    high = value if attribute.name == "max_layer_sparsity" else instance.max_layer_sparsity
    if low > high:
        raise field_error(
            _OWNER, attribute.name, value,
            f"allowed min_layer_sparsity <= max_layer_sparsity (now {low} > {high})",
        )


@attrs.define(on_setattr=[attrs.setters.convert, attrs.setters.validate])
class MFACPrunerConfig(OptimizationConfig):
    """Which modules `MFACPruner` prunes, and its second-order options.

    Module selection (``global_config`` / ``module_type_configs`` / ``module_name_configs``, with
    `sparsify.ModuleMagnitudePrunerConfig` values: scheduler, initial/target sparsity,
    pattern) works exactly as in `sparsify.MagnitudePrunerConfig`.

    Args:
        global_sparsity: rank the scores of all pruned modules together (default) — the budget is
            the sum of every module's scheduled zeros — or each module alone (``False``, SparseML's
            default, which allows the Core ML patterns: blocks, channels, n:m).
        min_layer_sparsity, max_layer_sparsity: per-layer caps in global ranking (default 0 and 1,
            i.e. none, as in SparseML).
        normalize: how global ranking compares layers (`sparsify.scope`); ``None`` (default)
            compares raw saliencies, which are all in loss units.
        num_grads: gradients per Fisher estimate, ``m``. An int, or a mapping ``{sparsity: m}``:
            the entry with the largest key ``<=`` the sparsity the modules have *before* the update
            is used (the smallest key if none is), so ``{0.0: 64, 0.5: 128}`` takes 64 gradients
            until the model is half sparse and 128 from then on — the meaning SparseML documents
            ("when that sparsity level is reached"; its code rounds the other way).
        damp: Fisher damping; with ``damp_mode="relative"`` (default) ``λ = damp × mean Fisher
            diagonal``, with ``"absolute"`` ``λ = damp`` (SparseML uses 1e-5; see
            `sparsify.fisher` for why that collapses to magnitude pruning on converged models).
        damp_mode: ``"relative"`` or ``"absolute"``.
        fisher_block_size: block-diagonal Fisher with blocks of this many coordinates (SparseML's
            default 2000), or ``None`` for one dense block.
        obs_update: apply the OBS weight update to the surviving weights (default ``True``).
        num_recomputations: reach each new sparsity in this many sub-steps, with fresh gradients
            for each (needs a sampler; default 1).
        grads_device: where the ``m × d`` gradient buffer lives (default ``"cpu"``).
        devices: where the Fisher blocks are factored and kept (default: ``grads_device``).
        memory_budget: refuse to start when the gradient buffer and Fisher blocks need more: a
            fraction of the RAM available at that moment (default 0.5), a number of bytes, or
            ``None`` for no check.
    """

    module_config_class: ClassVar[type[ModuleOptimizationConfig]] = ModuleMagnitudePrunerConfig
    supported_modules: ClassVar[tuple[type[nn.Module], ...]] = _SUPPORTED_MAGNITUDE_MODULES

    global_config: ModuleMagnitudePrunerConfig | None = attrs.field(
        default=None, converter=lambda v: MFACPrunerConfig._check_value("global_config", v)
    )
    module_type_configs: dict[ModuleKey, ModuleMagnitudePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: MFACPrunerConfig._to_type_configs(v)
    )
    module_name_configs: dict[str, ModuleMagnitudePrunerConfig | None] = attrs.field(
        factory=OrderedDict, converter=lambda v: MFACPrunerConfig._to_name_configs(v)
    )
    global_sparsity: bool = attrs.field(default=True, converter=_fields.boolean(_OWNER, "global_sparsity"))
    min_layer_sparsity: float = attrs.field(
        default=0.0, converter=_fields.fraction(_OWNER, "min_layer_sparsity"), validator=_check_caps
    )
    max_layer_sparsity: float = attrs.field(
        default=1.0, converter=_fields.fraction(_OWNER, "max_layer_sparsity"), validator=_check_caps
    )
    normalize: str | None = attrs.field(default=None, converter=_to_normalize)
    num_grads: int | dict[float, int] = attrs.field(default=64, converter=_to_num_grads)
    damp: float = attrs.field(default=0.01, converter=_to_damp)
    damp_mode: str = attrs.field(default="relative", converter=_to_damp_mode)
    fisher_block_size: int | None = attrs.field(default=2000, converter=_to_block_size)
    obs_update: bool = attrs.field(default=True, converter=_fields.boolean(_OWNER, "obs_update"))
    num_recomputations: int = attrs.field(default=1, converter=_to_recomputations)
    grads_device: str = attrs.field(default="cpu", converter=_to_device("grads_device"))
    devices: tuple[str, ...] | None = attrs.field(default=None, converter=_to_devices)
    memory_budget: float | int | None = attrs.field(default=0.5, converter=_to_budget)

    def __attrs_post_init__(self) -> None:
        if self.global_config is None and not self.module_type_configs and not self.module_name_configs:
            self.global_config = ModuleMagnitudePrunerConfig()

    def num_grads_at(self, sparsity: float) -> int:
        """``m`` for modules whose sparsity before the update is ``sparsity`` (see ``num_grads``)."""
        if isinstance(self.num_grads, int):
            return self.num_grads
        keys = [k for k in self.num_grads if k <= sparsity + 1e-9]
        return self.num_grads[max(keys) if keys else min(self.num_grads)]

    _OPTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "global_sparsity", "min_layer_sparsity", "max_layer_sparsity", "normalize", "num_grads", "damp",
        "damp_mode", "fisher_block_size", "obs_update", "num_recomputations", "grads_device", "devices",
        "memory_budget",
    )

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        for name in self._OPTION_FIELDS:
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        return data
