"""Nested containers of tensors: calibration batches, checkpoints."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["to_device"]


def to_device(value: Any, device: Any, *, non_blocking: bool = False) -> Any:
    """``value`` with every tensor in it moved to ``device``, through mappings (an ``OrderedDict`` stays one,
    any other mapping becomes a ``dict``), lists, tuples and named tuples; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        items = ((key, to_device(item, device, non_blocking=non_blocking)) for key, item in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(to_device(item, device, non_blocking=non_blocking) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(item, device, non_blocking=non_blocking) for item in value)
    return value
