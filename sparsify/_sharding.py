"""Sharded parameters (FSDP2's ``DTensor``) seen from a whole-weight mask.

FSDP2 (``torch.distributed.fsdp.fully_shard``) replaces each parameter by a ``DTensor`` whose local tensor
holds this rank's rows (or columns, with a ``shard_placement_fn``), and puts a plain unsharded parameter in
its place only around forward and backward. sparsify keeps every mask whole on every rank (a ``bool``
buffer, which FSDP2 does not shard), so a mask and a sharded tensor meet through `local_part`: the slice of
the whole mask that lines up with this rank's shard. Nothing here communicates except `full`.
"""

from __future__ import annotations

from typing import Any

import torch

_DTensor: Any
try:  # a torch built without distributed support has no DTensor: nothing is ever sharded there
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - depends on the torch build
    _DTensor = None

__all__ = ["full", "is_sharded", "local", "local_part", "sharded_like"]


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter, gradient or optimizer state under FSDP2)."""
    return _DTensor is not None and isinstance(tensor, _DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` is all-gathered (a collective: every rank must call it), others as is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's local tensor of a ``DTensor`` (shares its memory); other tensors as they are."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def _offsets(sharded: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset) of this rank's shard, in the whole tensor's coordinates."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(sharded.shape, sharded.device_mesh, sharded.placements)
    return tuple(shape), tuple(offset)


def local_part(whole: torch.Tensor, sharded: Any) -> torch.Tensor:
    """The part of ``whole`` (a mask shaped like ``sharded``'s global shape, or broadcastable to it) that lines
    up with this rank's local shard of ``sharded``, as a contiguous tensor.

    Dimensions where ``whole`` has size 1 (a group mask such as ``[Co, 1]``) broadcast and are not sliced.
    """
    shape, offset = _offsets(sharded)
    part = whole
    lead = len(shape) - whole.dim()
    for dim in range(whole.dim()):
        if whole.shape[dim] != 1:
            part = part.narrow(dim, offset[lead + dim], shape[lead + dim])
    return part.contiguous()


def sharded_like(local_tensor: torch.Tensor, sharded: Any) -> torch.Tensor:
    """``local_tensor`` (this rank's shard) as a ``DTensor`` laid out like ``sharded``."""
    assert _DTensor is not None  # only called with a sharded tensor
    return _DTensor.from_local(local_tensor, sharded.device_mesh, sharded.placements,
                              shape=sharded.shape, stride=sharded.stride(), run_check=False)
