"""Pruning under ``torch.distributed``: masks identical on every rank, by construction and checked.

Why masks agree under DDP without extra communication: a sparsify mask depends only on the weights
(and, for data-dependent criteria, on scores that those pruners all-reduce first), DDP keeps weights
identical across ranks by averaging gradients, and DDP's default ``broadcast_buffers=True`` copies
rank 0's buffers — the masks are buffers — to every rank before each forward.

Recipe: ``pruner.prepare(inplace=True)`` *before* wrapping with ``DistributedDataParallel`` (so
module names in configs match, and the optimizer sees the prepared parameters), call
``pruner.step()`` on every rank, and optionally `check_masks_consistent` now and then: it costs
one small all-gather.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is supported the same way: prepare *before* sharding, then
``fully_shard`` the layers and the root, build the optimizer, and call ``pruner.step()`` on every rank.
Masks stay whole ``bool`` buffers on every rank (FSDP2 shards parameters, not buffers); a mask update
all-gathers each pruned weight's scores (``DTensor.full_tensor()``), so every rank ranks the same whole
scores with the same code and gets the same masks, global ranking included, with no further exchange.
The hooks apply this rank's part of each mask to the local shards (`sparsify._sharding`). Only the
magnitude criterion is supported under FSDP2 (the others keep per-weight state that is not sharded);
the legacy ``FullyShardedDataParallel`` wrapper is refused (it flattens parameters).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .mask_layout import MASK, split_masked_key

__all__ = ["check_masks_consistent", "fsdp2_modules", "gather_rows", "mask_checksums", "refuse_fsdp"]


def mask_checksums(model: nn.Module) -> dict[str, int]:
    """A position-sensitive integer checksum of every ``*_mask`` buffer (cheap, deterministic)."""
    sums: dict[str, int] = {}
    for name, buffer in model.named_buffers():
        split = split_masked_key(name)
        if split is not None and split[1] == MASK:
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
                f"prepare the model before wrapping it in DDP or fully_shard, and call pruner.step() on every rank"
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


def fsdp2_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that ``fully_shard`` has wrapped (empty without FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - depends on the torch build
        return []
    return [name or "<root>" for name, module in model.named_modules() if isinstance(module, FSDPModule)]


def refuse_fsdp(model: nn.Module) -> None:
    """Raise ``TypeError`` if ``model`` is (or contains) an FSDP-wrapped module: legacy FSDP always, FSDP2
    when it is already sharded (masks are installed before ``fully_shard``, as before wrapping in DDP)."""
    legacy: tuple[type, ...] = ()
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        legacy = (FullyShardedDataParallel,)
    except ImportError:  # pragma: no cover - depends on the torch build
        pass
    for name, module in model.named_modules():
        if legacy and isinstance(module, legacy):
            raise TypeError(
                f"module {name or '<root>'!r} is wrapped with FullyShardedDataParallel (FSDP1), which sparsify does "
                f"not support: it flattens weights. Use FSDP2 (torch.distributed.fsdp.fully_shard, after "
                f"pruner.prepare()) or DistributedDataParallel."
            )
    sharded = fsdp2_modules(model)
    if sharded:
        raise TypeError(
            f"module {sharded[0]!r} is already sharded with fully_shard: call pruner.prepare(inplace=True) on the "
            f"unsharded model first, then fully_shard it (sparsify renames each pruned weight to <name>_orig, which "
            f"FSDP2 must see when it shards)"
        )
