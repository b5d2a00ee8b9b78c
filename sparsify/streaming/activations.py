"""The calibration activations between two decoder blocks: in memory, or spilled to memory-mapped files.

`prune_pretrained` keeps two sets of hidden states — the current block's inputs and its outputs, the next
block's inputs — each ``rows × hidden`` float32 numbers per calibration batch (128 windows of 2048 tokens of a
4096-wide model: 4 GiB each). With ``offload="disk"``, or ``"auto"`` when the two would pass
``max_activation_bytes``, every batch's hidden states live in a file of float32 numbers mapped into memory
(``torch.from_file(shared=True)``): the operating system pages them in and out, so the process holds only
what a block's forward touches. The files are deleted when the store is closed.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

__all__ = ["OFFLOAD_CHOICES", "ActivationStore", "spill"]

logger = logging.getLogger(__name__)

OFFLOAD_CHOICES = ("auto", "memory", "disk")


class ActivationStore:
    """One set of hidden states, one float32 tensor per calibration batch, in memory or each in a memory-mapped
    file ``<directory>/<name>-<batch>.f32``.

    Args:
        on_disk: map files instead of allocating memory.
        directory: where the files go (created if needed).
        name: the files' name stem.
    """

    def __init__(self, on_disk: bool, directory: Path | None, name: str) -> None:
        self.on_disk = on_disk
        self.directory = directory
        self.name = name
        self.batches: list[torch.Tensor] = []
        self.paths: list[Path] = []

    def add(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A new batch's tensor of ``shape`` (its contents undefined until written)."""
        size = math.prod(shape)
        if self.on_disk:
            assert self.directory is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.name}-{len(self.batches)}.f32"
            with open(path, "wb") as handle:
                handle.truncate(size * 4)
            self.paths.append(path)
            tensor = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32).view(shape)
        else:
            tensor = torch.empty(shape, dtype=torch.float32)
        self.batches.append(tensor)
        return tensor

    def like(self, other: ActivationStore, name: str) -> ActivationStore:
        """An empty store of ``other``'s shapes, same placement."""
        store = ActivationStore(self.on_disk, self.directory, name)
        for tensor in other.batches:
            store.add(tensor.shape)
        return store

    def close(self) -> None:
        self.batches = []
        for path in self.paths:
            if path.exists():
                os.unlink(path)
        self.paths = []


def spill(offload: str, estimate: int, max_bytes: int) -> bool:
    """Whether activations go to disk: always with ``"disk"``, never with ``"memory"``, and with ``"auto"`` when
    the two sets (``estimate`` bytes) would pass ``max_bytes`` (said in the log)."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload={offload!r} is invalid: allowed {', '.join(map(repr, OFFLOAD_CHOICES))}")
    if offload != "auto":
        return offload == "disk"
    if estimate > max_bytes:
        logger.info("calibration activations need about %.1f MiB (a block's inputs and outputs), more than "
                    "max_activation_bytes=%d: they go to memory-mapped files", estimate / 2**20, max_bytes)
        return True
    return False
