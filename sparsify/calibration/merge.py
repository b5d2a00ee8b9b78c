"""Merging calibration items into fewer, larger forwards — only where that is exactly equivalent.

Layer-wise calibration runs every kept item through the model several times; concatenating consecutive items
along their batch dimension saves forwards. That is only the same computation when dimension 0 really is the
batch of every tensor concatenated, so items merge only when:

* the item has a **batch size**: its lead tensor — the first positional argument, else ``input_ids`` (or
  ``inputs_embeds``, ``pixel_values``, ``input_values``, ``input_features``), else the first tensor keyword —
  has at least two dimensions; ``B`` is its first;
* every tensor whose first dimension is ``B`` (the batched ones) has the same trailing shape, dtype and device
  in every item of the group: they are concatenated;
* every other tensor — a ``position_ids`` of shape ``[1, T]`` beside ``input_ids`` ``[B, T]`` with ``B > 1``,
  a 1-D ``cache_position`` — is *broadcast*: it must be equal (same values) in every item of the group and is
  passed once, never concatenated;
* non-tensor arguments (``use_cache=False``) are equal.

Anything else — unbatched inputs, items of different lengths, different broadcast tensors — runs one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["batch_size", "merged"]

_LEAD_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features")


def batch_size(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The batch size of one item (see the module docs), or ``None`` when it has no real batch dimension."""
    lead: Any = None
    if args:
        lead = args[0]
    else:
        lead = next((kwargs[k] for k in _LEAD_KEYS if isinstance(kwargs.get(k), torch.Tensor)), None)
        if lead is None:
            lead = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    if not isinstance(lead, torch.Tensor) or lead.dim() < 2:
        return None
    return int(lead.shape[0])


def _batched(tensor: torch.Tensor, batch: int) -> bool:
    return tensor.dim() >= 1 and tensor.shape[0] == batch


def _compatible(first: Any, other: Any, batch: int, other_batch: int) -> bool:
    if isinstance(first, torch.Tensor):
        if not (isinstance(other, torch.Tensor) and first.dim() == other.dim() and first.dtype == other.dtype
                and first.device == other.device):
            return False
        if _batched(first, batch) != _batched(other, other_batch):
            return False
        if _batched(first, batch):
            return first.shape[1:] == other.shape[1:]
        return first.shape == other.shape and bool(torch.equal(first, other))
    if isinstance(other, torch.Tensor):
        return False
    if isinstance(first, Mapping):
        return isinstance(other, Mapping) and first.keys() == other.keys() and all(
            _compatible(first[k], other[k], batch, other_batch) for k in first)
    if isinstance(first, (tuple, list)):
        return (type(first) is type(other) and len(first) == len(other)
                and all(_compatible(a, b, batch, other_batch) for a, b in zip(first, other)))
    try:
        return bool(first == other)
    except Exception:  # an odd object that cannot be compared is simply not merged
        return False


def _concatenated(values: list[Any], batch: int) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values) if _batched(first, batch) else first
    if isinstance(first, Mapping):
        return {k: _concatenated([v[k] for v in values], batch) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenated(list(parts), batch) for parts in zip(*values))
    return first


def merged(batches: list[Any], factor: int) -> list[Any]:
    """Consecutive ``(args, kwargs, target)`` items concatenated along their batch dimension, at most ``factor``
    at a time, where that is exactly equivalent (see the module docs): fewer, larger forwards with the same rows.
    Targets of merged items are dropped (the forward-only calibration does not read them)."""
    if factor <= 1:
        return batches
    out: list[Any] = []
    group: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    sizes: list[int | None] = []

    def flush() -> None:
        if len(group) == 1:
            out.append((*group[0], None))
        elif group:
            size = sizes[0]
            assert size is not None
            out.append((*_concatenated(list(group), size), None))
        group.clear()
        sizes.clear()

    for args, kwargs, *_ in batches:
        size = batch_size(args, kwargs)
        joins = (bool(group) and len(group) < factor and size is not None and sizes[0] is not None
                 and _compatible(group[0], (args, kwargs), sizes[0], size))
        if not joins:
            flush()
        group.append((args, kwargs))
        sizes.append(size)
    flush()
    return out
