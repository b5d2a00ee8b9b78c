"""Calibration data for `prune_pretrained`: normalised as `sparsify.prune` normalises it, merged as it merges.

The ``sampler`` argument goes through `sparsify.calibration.as_calibration_data` — the one path
`sparsify.prune` uses — so both accept the same data (dicts of tensors, token tensors, ``datasets.Dataset``,
...). The first ``num_batches`` items are kept and concatenated into larger forwards exactly as the in-memory
calibration does (`sparsify.calibration.merged`, at most `sparsify.calibration.layer_inputs.MERGED_COLUMNS` floats
in the largest layer input), so the two compute the same sums in the same order.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..calibration import CalibrationData, merged
from ..calibration.layer_inputs import MERGED_COLUMNS

__all__ = ["digest", "kept_batches", "merged_batches"]

logger = logging.getLogger(__name__)

Batch = tuple[tuple[Any, ...], dict[str, Any], Any]


def kept_batches(sampler: CalibrationData, num_batches: int, owner: str) -> list[Batch]:
    """The first ``num_batches`` normalised items (a warning when there are fewer, as in memory)."""
    batches: list[Batch] = []
    for batch in sampler.items():
        batches.append(batch)
        if len(batches) == num_batches:
            break
    if not batches:
        raise ValueError(f"{owner}: the calibration data yielded no batch; give it at least one")
    if len(batches) < num_batches:
        logger.warning("%s: the calibration data ran out after %d of num_batches=%d batches; using them",
                       owner, len(batches), num_batches)
    return batches


def merged_batches(batches: list[Batch], rows: int, widest: int) -> list[Batch]:
    """``batches`` concatenated as the in-memory calibration does, given the first batch's ``rows`` (tokens)
    and the widest pruned layer input (``widest`` features)."""
    return merged(batches, max(1, MERGED_COLUMNS // max(rows * widest, 1)))


def digest(batches: list[Batch]) -> str:
    """A SHA-256 over the batches' tensors (dtype, shape, values) and other values: resuming checks it."""
    hasher = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                hasher.update(f"K{key}".encode())
                feed(value[key])
        elif isinstance(value, (tuple, list)):
            hasher.update(f"L{len(value)}".encode())
            for part in value:
                feed(part)
        else:
            hasher.update(f"V{value!r}".encode())

    for args, kwargs, _ in batches:
        feed((args, kwargs))
    return hasher.hexdigest()
