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
from .analysis.budget import allocate_budget
from .analysis.model_report import model_report
from .analysis.report import Report
from .analysis.sensitivity import sensitivity_scan
from .compat.inc import from_inc_config
from .compat.inc_callbacks import prepare_compression
from .compat.sparseml import Recipe
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
from .export.coreml import export_coreml
from .export.mlpackage import inspect_mlpackage
from .gradual import GradualPruner, GradualPrunerConfig, ModuleGradualPrunerConfig
from .mfac import MFACPruner, MFACPrunerConfig, oneshot_prune
from .pruner import BasePruner, MagnitudePruner
from .schedules import ConstantSparsityScheduler, PolynomialDecayScheduler, PruningScheduler
from .selection import dry_run

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
