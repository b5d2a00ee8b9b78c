"""sparsify: make PyTorch models sparse while they train, and ship them to Apple devices via Core ML.

The pruning API is a drop-in for ``coremltools.optimize.torch.pruning``::

    # from coremltools.optimize.torch.pruning import MagnitudePruner, MagnitudePrunerConfig
    from sparsify import MagnitudePruner, MagnitudePrunerConfig
"""

from __future__ import annotations

from . import magnitude_pruner, patterns, pruning_scheduler, schedules
from .config import (
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModuleOptimizationConfig,
    OptimizationConfig,
)
from .pruner import BasePruner, MagnitudePruner
from .report import Report
from .schedules import ConstantSparsityScheduler, PolynomialDecayScheduler, PruningScheduler

__version__ = "0.1.0"

__all__ = [
    "BasePruner",
    "ConstantSparsityScheduler",
    "MagnitudePruner",
    "MagnitudePrunerConfig",
    "ModuleMagnitudePrunerConfig",
    "ModuleOptimizationConfig",
    "OptimizationConfig",
    "PolynomialDecayScheduler",
    "PruningScheduler",
    "Report",
    "magnitude_pruner",
    "patterns",
    "pruning_scheduler",
    "schedules",
]
