"""sparsify: make PyTorch models sparse while they train, and ship them to Apple devices via Core ML.

The pruning API is a drop-in for ``coremltools.optimize.torch.pruning``::

    # from coremltools.optimize.torch.pruning import MagnitudePruner, MagnitudePrunerConfig
    from sparsify import MagnitudePruner, MagnitudePrunerConfig

Underneath is one machine, `Pruner`, configured per module by `ModulePrunerConfig`: a schedule, a
criterion (magnitude, gradient, snip, snip-momentum, M-FAC), a pattern (Core ML Tools' granularities and
blocks, n:m, NxM tiles) and a scope (local, or global with per-layer caps) — every combination works.
`prune` does it in one call. Around it: reports and budgets (`model_report`, `sensitivity_scan`,
`allocate_budget`), SparseML recipes and Neural Compressor configs (`Recipe`, `from_inc_config`), and a
verified Core ML export (`export_coreml`, `inspect_mlpackage`). coremltools and matplotlib are imported only
when an export, an inspection or a plot needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import calibration, magnitude_pruner, patterns, pruning_scheduler, schedules
from .analysis.budget import allocate_budget
from .analysis.model_report import model_report
from .analysis.report import Report
from .analysis.sensitivity import sensitivity_scan
from .calibration import CalibrationData, GradSampler
from .compat.coremltools import CompressionMetadata, CompressionType, n_m_mask
from .compat.inc import from_inc_config
from .compat.inc_callbacks import prepare_compression
from .compat.sparseml import Recipe
from .config import (
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModuleOptimizationConfig,
    ModulePrunerConfig,
    OptimizationConfig,
    PrunerConfig,
)
from .criteria import Criterion, register_criterion
from .export import (
    ConversionError,
    DamagedPackageError,
    MLPackageError,
    NotAPackageError,
    export_coreai,
    export_coreml,
    inspect_mlpackage,
)
from .patterns import Pattern, register_pattern
from .pruning import MagnitudePruner, Pruner, dry_run, from_pretrained_pruned, prune
from .schedules import (
    ConstantSparsityScheduler,
    CosineScheduler,
    CubicFastStartScheduler,
    CubicSlowStartScheduler,
    ExponentialScheduler,
    LinearScheduler,
    PolynomialDecayScheduler,
    PruningScheduler,
    register_scheduler,
)

if TYPE_CHECKING:  # imported on first use: streaming needs safetensors (the hf extra), the main job does not
    from .streaming import prune_pretrained


def __getattr__(name: str) -> Any:
    if name == "prune_pretrained":
        from .streaming import prune_pretrained

        return prune_pretrained
    raise AttributeError(f"module 'sparsify' has no attribute {name!r}")

__version__ = "0.2.0"

__all__ = [
    "CalibrationData",
    "CompressionMetadata",
    "CompressionType",
    "ConstantSparsityScheduler",
    "ConversionError",
    "CosineScheduler",
    "Criterion",
    "CubicFastStartScheduler",
    "CubicSlowStartScheduler",
    "DamagedPackageError",
    "ExponentialScheduler",
    "GradSampler",
    "LinearScheduler",
    "MLPackageError",
    "MagnitudePruner",
    "MagnitudePrunerConfig",
    "ModuleMagnitudePrunerConfig",
    "ModuleOptimizationConfig",
    "ModulePrunerConfig",
    "NotAPackageError",
    "OptimizationConfig",
    "Pattern",
    "PolynomialDecayScheduler",
    "Pruner",
    "PrunerConfig",
    "PruningScheduler",
    "Recipe",
    "Report",
    "allocate_budget",
    "calibration",
    "dry_run",
    "export_coreai",
    "export_coreml",
    "from_inc_config",
    "from_pretrained_pruned",
    "inspect_mlpackage",
    "magnitude_pruner",
    "model_report",
    "n_m_mask",
    "patterns",
    "prepare_compression",
    "prune",
    "prune_pretrained",
    "pruning_scheduler",
    "register_criterion",
    "register_pattern",
    "register_scheduler",
    "schedules",
    "sensitivity_scan",
]
