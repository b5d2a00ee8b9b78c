"""The calibration-data contract shared by every data-dependent pruning method — now `sparsify.calibration`.

This module keeps the old import path (``from sparsify.criteria.sampler import GradSampler``) working; the code
lives in `sparsify.calibration` (`CalibrationData` for forward-only data, `GradSampler` for data plus a loss).
"""

from __future__ import annotations

from ..calibration import (
    CalibrationData,
    CalibrationItem,
    GradSampler,
    NotEnoughDataError,
    as_calibration_data,
    as_grad_sampler,
    split_batch,
)
from ..calibration.gradients import LossFn

__all__ = [
    "CalibrationData",
    "CalibrationItem",
    "GradSampler",
    "LossFn",
    "NotEnoughDataError",
    "as_calibration_data",
    "as_grad_sampler",
    "split_batch",
]
