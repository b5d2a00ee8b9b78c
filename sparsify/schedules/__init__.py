"""Schedules — how sparse should a layer be at this step?

`PruningScheduler` is the contract (``compute_sparsity(step_count, prev_sparsity, config)``, Core ML
Tools' own, and ``next_change(step_count, sparsity, config)``: when that value next changes); schedulers
register by ``kind`` so configs and YAML can name them. Core ML Tools' two live in
`sparsify.schedules.coreml`; the step-range curves (linear, cosine, exponential, cubic) of Neural
Compressor and Zhu & Gupta in `sparsify.schedules.step_range`. A new schedule is one small class with
``@register_scheduler``.
"""

from .base import PruningScheduler, initial_and_target, register_scheduler, scheduler_from_dict, scheduler_kinds
from .coreml import ConstantSparsityScheduler, PolynomialDecayScheduler
from .step_range import (
    CosineScheduler,
    CubicFastStartScheduler,
    CubicSlowStartScheduler,
    ExponentialScheduler,
    LinearScheduler,
    StepRangeScheduler,
)

__all__ = [
    "ConstantSparsityScheduler",
    "CosineScheduler",
    "CubicFastStartScheduler",
    "CubicSlowStartScheduler",
    "ExponentialScheduler",
    "LinearScheduler",
    "PolynomialDecayScheduler",
    "PruningScheduler",
    "StepRangeScheduler",
    "initial_and_target",
    "register_scheduler",
    "scheduler_from_dict",
    "scheduler_kinds",
]
