"""What a ``sampler=`` argument becomes: `as_calibration_data`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .data import CalibrationData
from .gradients import as_grad_sampler

__all__ = ["as_calibration_data"]


def as_calibration_data(sampler: Any, **builder_kwargs: Any) -> CalibrationData:
    """What a ``sampler=`` argument becomes: a `CalibrationData` (or `GradSampler`) as it is, SparseML's
    ``grad_sampler`` dict as a `GradSampler`, any other data (see the module docs) as ``CalibrationData(data)``."""
    if isinstance(sampler, CalibrationData):
        return sampler
    if isinstance(sampler, Mapping):
        return as_grad_sampler(sampler, **builder_kwargs)
    try:
        return CalibrationData(sampler)
    except TypeError:
        raise TypeError(
            f"sampler must be calibration data — a list / iterable / DataLoader of items (dicts of tensors such as "
            f"{{'input_ids': ..., 'attention_mask': ...}}, token tensors, (inputs, targets)), a datasets.Dataset, "
            f"a sparsify.CalibrationData, a sparsify.GradSampler(data, loss_fn) or SparseML's grad_sampler dict — "
            f"got {type(sampler).__name__}"
        ) from None
