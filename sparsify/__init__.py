"""sparsify: make PyTorch models sparse while they train, and ship them to Apple devices via Core ML.

The pruning API is a drop-in for ``coremltools.optimize.torch.pruning``::

    # from coremltools.optimize.torch.pruning import MagnitudePruner, MagnitudePrunerConfig
    from sparsify import MagnitudePruner, MagnitudePrunerConfig

On top of it: gradual pruning with gradient criteria, tiles and global scope (`GradualPruner`),
second-order pruning (`MFACPruner`, `oneshot_prune`, `Recipe`), reports and
budgets (`model_report`, `sensitivity_scan`, `allocate_budget`) and a verified Core ML
export (`export_coreml`, `inspect_mlpackage`). coremltools and matplotlib are imported only
when an export, an inspection or a plot needs them.
"""

from __future__ import annotations

from . import decay, magnitude_pruner, patterns, pruning_scheduler, schedules
from .budget import allocate_budget
from .callbacks import prepare_compression
from .config import (
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModuleOptimizationConfig,
    OptimizationConfig,
)
from .data import GradSampler
from .decay import (
    CosineScheduler,
    CubicFastStartScheduler,
    CubicSlowStartScheduler,
    ExponentialScheduler,
    LinearScheduler,
)
from .export import export_coreml
from .gradual import GradualPruner, GradualPrunerConfig, ModuleGradualPrunerConfig
from .inc_config import from_inc_config
from .mfac import MFACPruner, MFACPrunerConfig, oneshot_prune
from .mlpackage import inspect_mlpackage
from .model_report import model_report
from .pruner import BasePruner, MagnitudePruner
from .recipes import Recipe
from .report import Report
from .schedules import ConstantSparsityScheduler, PolynomialDecayScheduler, PruningScheduler
from .selection import dry_run
from .sensitivity import sensitivity_scan

__version__ = "0.1.0"

__all__ = [
    "BasePruner",
    "ConstantSparsityScheduler",
    "CosineScheduler",
    "CubicFastStartScheduler",
    "CubicSlowStartScheduler",
    "ExponentialScheduler",
    "GradSampler",
    "GradualPruner",
    "GradualPrunerConfig",
    "LinearScheduler",
    "MFACPruner",
    "MFACPrunerConfig",
    "MagnitudePruner",
    "MagnitudePrunerConfig",
    "ModuleGradualPrunerConfig",
    "ModuleMagnitudePrunerConfig",
    "ModuleOptimizationConfig",
    "OptimizationConfig",
    "PolynomialDecayScheduler",
    "PruningScheduler",
    "Recipe",
    "Report",
    "allocate_budget",
    "decay",
    "dry_run",
    "export_coreml",
    "from_inc_config",
    "inspect_mlpackage",
    "magnitude_pruner",
    "model_report",
    "oneshot_prune",
    "patterns",
    "prepare_compression",
    "pruning_scheduler",
    "schedules",
    "sensitivity_scan",
]
