"""Configs — per-module-type config dataclasses, as in Core ML Tools.

`ModulePrunerConfig` says how one module is pruned (schedule, criterion, pattern, scope); `PrunerConfig`
maps modules to module configs by name, type or globally. `ModuleMagnitudePrunerConfig` /
`MagnitudePrunerConfig` are Core ML Tools' configs: the magnitude × local preset.
"""

from .io import Dictable, load_yaml_mapping, safe_load_yaml
from .model import SUPPORTED_MODULES, ModuleKey, OptimizationConfig, PrunerConfig
from .module import SCOPES, ModuleOptimizationConfig, ModulePrunerConfig
from .presets import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig

__all__ = [
    "SCOPES",
    "SUPPORTED_MODULES",
    "Dictable",
    "MagnitudePrunerConfig",
    "ModuleKey",
    "ModuleMagnitudePrunerConfig",
    "ModuleOptimizationConfig",
    "ModulePrunerConfig",
    "OptimizationConfig",
    "PrunerConfig",
    "load_yaml_mapping",
    "safe_load_yaml",
]
