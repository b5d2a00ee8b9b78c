"""Sparsity patterns: pure functions from importance scores to boolean keep-masks.

Every function here takes **scores** (non-negative importance per weight; ``|w|`` for magnitude
pruning) and returns a ``bool`` mask where ``True`` means *keep*. Nothing here knows about modules,
hooks or schedules, so each pattern is testable on a tiny tensor.

The Core ML Tools patterns are reproduced exactly, rounding and ties included:

* the number of kept groups is ``ceil(N * (1 - sparsity))`` computed in float32 (so the number of
  zeros is ``floor(N * sparsity)`` up to float32 rounding);
* the threshold is the score of the last kept group and every group scoring at least that much is
  kept — equal scores are kept together, so ties can give *less* sparsity than requested;
* ``per_kernel`` / ``per_channel`` groups and output-channel blocks score by the L2 norm of their
  members; blocks pad the output-channel axis with zeros when it is not a multiple of the block size;
* n:m zeroes the ``n`` lowest scores in every run of ``m`` consecutive weights along the input
  (``dim=1``) or output (``dim=0``) channels, padding a trailing partial run with zeros.

NaN scores rank below every other score (NaN weights are pruned first), so counts stay exact.

Differences from Core ML Tools, all deliberate: ``per_channel`` on a ``Linear`` weight prunes whole
output rows (Core ML Tools silently falls back to per-scalar for rank-2 weights), and the n:m order
among exactly equal scores is the first-index-first order of a stable sort.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "GRANULARITIES",
    "group_scores",
    "keep_count",
    "magnitude_ranked_mask",
    "mask_shape",
    "n_m_mask",
    "n_m_zero_count",
    "ranked_mask",
    "scheduled_n_m_mask",
    "threshold_mask",
]

GRANULARITIES = ("per_scalar", "per_kernel", "per_channel")


def _rankable(scores: torch.Tensor) -> torch.Tensor:
    """Scores as float32 with NaN mapped below every real score, so NaN weights are pruned first
    and counts stay exact (a NaN compares false with everything and would otherwise be dropped
    silently while still counting as kept)."""
    scores = scores.detach().float()
    return torch.nan_to_num(scores, nan=-1.0, posinf=float("inf")) if scores.isnan().any() else scores


def keep_count(num_groups: int, sparsity: float) -> int:
    """How many of ``num_groups`` groups survive at ``sparsity``: ``ceil(N * (1 - s))`` in float32.

    float32 is what Core ML Tools computes in; matching it keeps masks identical at the edges
    (e.g. 10 groups at 0.14 → 9 kept, at 0.15 → 9 kept, at 0.5 → 5 kept).
    """
    product = torch.as_tensor(num_groups, dtype=torch.float32) * (1 - sparsity)
    return int(torch.ceil(product).item())


def group_scores(scores: torch.Tensor, granularity: str = "per_scalar", block_size: int = 1) -> torch.Tensor:
    """Reduce element scores to one score per prunable group, in a shape that broadcasts to ``scores``.

    ``per_scalar`` keeps every element; ``per_kernel`` (rank ≥ 3) takes the L2 norm over the kernel
    dimensions, shape ``[Co, Ci, 1, …]``; ``per_channel`` takes the L2 norm over everything but the
    output channel, shape ``[Co, 1, …]``. ``block_size > 1`` then groups consecutive output channels
    and gives every member its block's L2 norm (padding ``Co`` with zeros to a multiple of the block).
    """
    rank = scores.dim()
    if granularity == "per_scalar" or rank == 1:
        grouped = scores
    elif granularity == "per_kernel":
        if rank < 3:
            raise ValueError(
                f"granularity='per_kernel' needs a weight with kernel dimensions (rank >= 3), got shape "
                f"{tuple(scores.shape)}: allowed for this weight are 'per_scalar' and 'per_channel'"
            )
        grouped = torch.linalg.vector_norm(scores.flatten(2), dim=-1).reshape(*scores.shape[:2], *[1] * (rank - 2))
    elif granularity == "per_channel":
        grouped = torch.linalg.vector_norm(scores.flatten(1), dim=-1).reshape(scores.shape[0], *[1] * (rank - 1))
    else:
        raise ValueError(f"granularity={granularity!r} is invalid: allowed values are {', '.join(GRANULARITIES)}")

    if block_size > 1:
        channels = grouped.shape[0]
        padding = (-channels) % block_size
        if padding:
            grouped = torch.cat([grouped, grouped.new_zeros((padding, *grouped.shape[1:]))], dim=0)
        blocks = grouped.reshape(grouped.shape[0] // block_size, block_size, *grouped.shape[1:])
        norms = blocks.pow(2).sum(1, keepdim=True).sqrt()
        grouped = norms.expand_as(blocks).reshape(grouped.shape)[:channels]
    return grouped


def mask_shape(shape: torch.Size | tuple[int, ...], granularity: str = "per_scalar") -> tuple[int, ...]:
    """Shape of the mask `ranked_mask` returns for a weight of ``shape`` (see `group_scores`)."""
    rank = len(shape)
    if granularity == "per_kernel" and rank >= 3:
        return (shape[0], shape[1], *[1] * (rank - 2))
    if granularity == "per_channel" and rank >= 2:
        return (shape[0], *[1] * (rank - 1))
    return tuple(shape)


def threshold_mask(grouped: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Keep the ``num_keep`` highest scores; ties with the last kept score are kept too."""
    if num_keep <= 0:
        return torch.zeros_like(grouped, dtype=torch.bool)
    if num_keep >= grouped.numel():
        return torch.ones_like(grouped, dtype=torch.bool)
    ranked = _rankable(grouped)
    # kthvalue finds the same threshold as a full descending sort, in linear time.
    threshold = torch.kthvalue(ranked.reshape(-1), ranked.numel() - num_keep + 1).values
    return ranked >= threshold


def ranked_mask(
    scores: torch.Tensor, sparsity: float, block_size: int = 1, granularity: str = "per_scalar"
) -> torch.Tensor:
    """Mask that prunes the lowest-scoring ``sparsity`` fraction of groups.

    The mask has the shape of `group_scores` (e.g. ``[Co, 1, 1, 1]`` for a per-channel conv
    weight) and broadcasts against the weight.
    """
    grouped = group_scores(scores, granularity, block_size)
    return threshold_mask(grouped, keep_count(grouped.numel(), sparsity))


def magnitude_ranked_mask(
    weights: torch.Tensor, sparsity_fraction: float, block_size: int = 1, granularity: str = "per_scalar"
) -> torch.Tensor:
    """Core ML Tools' ``magnitude_ranked_mask``: `ranked_mask` on ``|weights|``."""
    return ranked_mask(weights.detach().abs(), sparsity_fraction, block_size, granularity)


def n_m_mask(scores: torch.Tensor, n_m_ratio: tuple[int, int], dim: int = 1) -> torch.Tensor:
    """Zero the ``n`` lowest scores in every run of ``m`` consecutive weights along ``dim``.

    ``dim=1`` runs along input channels, ``dim=0`` along output channels. A trailing partial run is
    padded with zeros, which count as the lowest scores, so it loses fewer real weights: the
    achieved sparsity is below ``n/m`` unless the channel count is a multiple of ``m``
    (see `n_m_zero_count`). Returns a ``bool`` mask of the weight's shape.
    """
    n, m = n_m_ratio
    if not 0 <= n < m:
        raise ValueError(f"n_m_ratio={n_m_ratio!r} is invalid: allowed 0 <= n < m (n zeros in every m)")
    if dim not in (0, 1) or scores.dim() < 2:
        raise ValueError(
            f"dim={dim!r} is invalid for a weight of shape {tuple(scores.shape)}: allowed dim 0 (output "
            f"channels) or 1 (input channels) of a weight of rank >= 2"
        )
    moved = _rankable(scores).movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    channels = rows.shape[-1]
    padded = torch.nn.functional.pad(rows, (0, (-channels) % m))
    runs = padded.reshape(-1, m)
    mask = torch.ones_like(runs, dtype=torch.bool)
    if n:
        lowest = torch.argsort(runs, dim=1, stable=True)[:, :n]
        mask.scatter_(1, lowest, False)
    mask = mask.reshape(padded.shape)[:, :channels]
    return mask.reshape(moved.shape).movedim(-1, dim)


def n_m_zero_count(shape: torch.Size | tuple[int, ...], n_m_ratio: tuple[int, int], dim: int = 1) -> int:
    """How many weights `n_m_mask` zeroes for a weight of ``shape`` (ignoring ties).

    Each full run of ``m`` loses ``n`` weights; a trailing run of ``r < m`` real weights is padded
    with ``m - r`` zeros and loses only ``max(0, n - (m - r))``.
    """
    n, m = n_m_ratio
    channels = shape[dim]
    rows = math.prod(shape) // channels
    tail = channels % m
    per_row = (channels // m) * n + (max(0, n - (m - tail)) if tail else 0)
    return rows * per_row


def scheduled_n_m_mask(
    scores: torch.Tensor, amount: float, n_m_ratio: tuple[int, int], dim: int = 1
) -> torch.Tensor:
    """Gradual n:m, as Core ML Tools ramps it: ``k = int(amount * m)`` zeros per run of ``m``.

    While ``k == 0`` (``amount < 1/m``) the weight is pruned unstructured at ``amount`` instead.
    """
    m = n_m_ratio[1]
    zeros = int(amount * m)
    if zeros == 0:
        return ranked_mask(scores, amount)
    return n_m_mask(scores, (zeros, m), dim)
