"""Pruning under ``torch.distributed``: masks identical on every rank, by construction and checked.

Why masks agree under DDP without extra communication: a sparsify mask depends only on the weights
(and, for data-dependent criteria, on scores that those pruners all-reduce first), DDP keeps weights
identical across ranks by averaging gradients, and DDP's default ``broadcast_buffers=True`` copies
rank 0's buffers — the masks are buffers — to every rank before each forward.

Recipe: ``pruner.prepare(inplace=True)`` *before* wrapping with ``DistributedDataParallel`` (so
module names in configs match, and the optimizer sees the prepared parameters), call
``pruner.step()`` on every rank, and optionally `check_masks_consistent` now and then: it costs
one small all-gather.

FSDP is not supported: FSDP flattens or shards parameters, so a whole-tensor ranking cannot be
computed on one rank without gathering. `refuse_fsdp` raises a clear error and is called by
``prepare()``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["check_masks_consistent", "gather_rows", "mask_checksums", "refuse_fsdp"]


def mask_checksums(model: nn.Module) -> dict[str, int]:
    """A position-sensitive integer checksum of every ``*_mask`` buffer (cheap, deterministic)."""
    sums: dict[str, int] = {}
    for name, buffer in model.named_buffers():
        if name.endswith("_mask"):
            flat = buffer.detach().reshape(-1).to(torch.int64).cpu()
            positions = torch.arange(1, flat.numel() + 1, dtype=torch.int64) % 1_000_003
            sums[name] = int((flat * positions).sum()) * 1_000_003 + int(flat.sum())
    return sums


def check_masks_consistent(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Raise ``RuntimeError`` naming the first mask that differs between ranks (no-op if not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    local = mask_checksums(model)
    gathered: list[dict[str, int] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, local, group=group)
    for rank, other in enumerate(gathered):
        if other != local:
            differing = sorted(k for k in set(local) | set(other or {}) if local.get(k) != (other or {}).get(k))
            raise RuntimeError(
                f"pruning masks differ between rank {dist.get_rank(group)} and rank {rank}: {differing[:5]}; "
                f"prepare the model before wrapping it in DDP and call pruner.step() on every rank"
            )


def gather_rows(rows: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's ``rows`` (same shape on every rank), in rank order.

    Data-dependent criteria call this on locally collected gradients so that every rank ranks the
    same scores: M-FAC's gradient rows are gathered from all ranks (each rank's local gradients are
    extra samples of the Fisher). Returns ``rows`` unchanged outside a multi-process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return rows
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, rows.contiguous(), group=group)
    return torch.cat(parts)


def refuse_fsdp(model: nn.Module) -> None:
    """Raise ``TypeError`` if ``model`` is (or contains) an FSDP-wrapped module."""
    fsdp_types: list[type] = []
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        fsdp_types.append(FullyShardedDataParallel)
    except ImportError:  # pragma: no cover - depends on the torch build
        pass
    try:
        from torch.distributed.fsdp import FSDPModule

        fsdp_types.append(FSDPModule)
    except ImportError:  # pragma: no cover
        pass
    for name, module in model.named_modules():
        if fsdp_types and isinstance(module, tuple(fsdp_types)):
            raise TypeError(
                f"module {name or '<root>'!r} is wrapped with FSDP, which sparsify does not support: FSDP shards "
                f"weights, and masks need whole weights. Use DistributedDataParallel (prepare before wrapping)."
            )
