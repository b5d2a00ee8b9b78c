"""The one ranking rule: prune the lowest-scoring groups, counting weights exactly.

Every pattern and every scope ranks through here (global scope through `sparsify.scope`, which uses the
same counting rule across layers). Out of ``W`` weights at sparsity ``s``:

* the number kept is ``keep_count(W, s) = ceil(W·(1 − s))`` computed in float32 — Core ML Tools' own
  arithmetic, so masks agree with it at the edges (10 groups at 0.15 → 9 kept);
* groups are pruned lowest score first while the pruned weights stay within ``W − keep_count``; a group
  that stands for several weights (a block, a kernel, a tile) is pruned whole, so the count is short by
  less than one group;
* equal scores are broken by position — the earlier group is pruned first — so the count is exact even
  when every score ties (constant weights reach their target instead of staying dense, which is what
  Core ML Tools' keep-every-tie threshold does);
* NaN scores rank below everything (NaN weights are pruned first; the pruner warns about them).

On tie-free scores this is exactly Core ML Tools' threshold rule, which the parity tests check against the
installed coremltools.
"""

from __future__ import annotations

import torch

from ._select import at_most, cut, fill_first_ties

__all__ = ["keep_count", "lowest", "lowest_per_span", "pruned_count", "rank_keep", "rankable"]


def rankable(scores: torch.Tensor) -> torch.Tensor:
    """Scores as float32 with NaN mapped below every real score (and +inf kept as the top)."""
    scores = scores.detach().float()
    return torch.nan_to_num(scores, nan=-1.0, posinf=float("inf")) if scores.isnan().any() else scores


def keep_count(num_groups: int, sparsity: float) -> int:
    """How many of ``num_groups`` survive at ``sparsity``: ``ceil(N * (1 - s))`` in float32 (Core ML Tools')."""
    product = torch.as_tensor(num_groups, dtype=torch.float32) * (1 - sparsity)
    return int(torch.ceil(product).item())


def pruned_count(num: int, sparsity: float) -> int:
    """How many of ``num`` items are pruned at ``sparsity``: ``num - keep_count(num, sparsity)``."""
    return num - keep_count(num, sparsity)


def lowest(flat: torch.Tensor, count: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the ``count`` lowest entries of 1-D ``flat``, in linear time and chunk-sized memory.

    Ties at the threshold are broken by position — entries where ``first`` is ``True`` (weights already
    pruned, for criteria whose masks only grow) before the others. The threshold comes from a streaming radix
    selection (`sparsify.patterns._select`), not ``kthvalue``, which copies the scores and allocates an int64
    index per score (12 bytes per weight).
    """
    size = flat.numel()
    if count <= 0:
        return torch.zeros(size, dtype=torch.bool, device=flat.device)
    if count >= size:
        return torch.ones(size, dtype=torch.bool, device=flat.device)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    value, missing, (ties,) = cut([flat], [1], count)
    assert value is not None  # 0 < count < size: the cut falls inside
    if first is None:
        return at_most(flat, value, ties, missing)
    chosen = at_most(flat, value, ties, 0)  # strictly below the threshold
    if missing:
        missing = fill_first_ties(chosen, flat, value, missing, first)  # already pruned first
    if missing:
        fill_first_ties(chosen, flat, value, missing, ~first)
    return chosen


def lowest_per_span(scores: torch.Tensor, count: int, spans: list[tuple[int, int]]) -> list[int]:
    """How many of the ``count`` lowest entries of the 2-D ``scores`` (ties broken by row-major position, as
    `lowest` of ``scores.reshape(-1)``) fall in each column span ``[a, b)`` — without writing that mask: one
    selection over all of ``scores`` and one comparison over the spans only (SparseGPT's block shares)."""
    rows = scores.shape[0]
    if count <= 0:
        return [0] * len(spans)
    if count >= scores.numel():
        return [rows * (b - a) for a, b in spans]
    flat = scores.reshape(-1)
    value, take, (ties,) = cut([flat], [1], count)
    assert value is not None  # 0 < count < numel: the cut falls inside
    compare = torch.le if take == ties else torch.lt
    counts = [int(torch.count_nonzero(compare(scores[:, a:b], value))) for a, b in spans]
    if 0 < take < ties:  # the first `take` ties in row-major order: few, except on dead inputs
        columns = (flat == value).nonzero().squeeze(1)[:take] % scores.shape[1]
        counts = [c + int(torch.count_nonzero((columns >= a) & (columns < b))) for c, (a, b) in zip(counts, spans)]
    return counts


def rank_keep(
    scores: torch.Tensor, sizes: torch.Tensor | int, total: int, sparsity: float, first: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep-mask over ``scores`` (one per group) pruning ``pruned_count(total, sparsity)`` weights.

    ``sizes`` is how many weights each group stands for: one int for all, or a tensor of ``scores``'
    shape when groups differ (a partial block at the end of the output channels). ``first`` (``scores``'
    shape) marks the groups to prune first among equal scores.
    """
    flat = rankable(scores).reshape(-1)
    budget = pruned_count(total, sparsity)
    first_flat = first.reshape(-1) if first is not None else None
    if isinstance(sizes, int):
        pruned = lowest(flat, min(budget // sizes, flat.numel()), first_flat)
    else:
        order = torch.arange(flat.numel(), device=flat.device)
        if first_flat is not None:
            order = torch.argsort((~first_flat).to(torch.uint8), stable=True)
        order = order[torch.argsort(flat[order], stable=True)]
        cumulative = torch.cumsum(sizes.reshape(-1).to(flat.device)[order], 0)
        taken = int(torch.searchsorted(cumulative, torch.tensor(budget, device=flat.device), right=True))
        pruned = torch.zeros_like(flat, dtype=torch.bool)
        pruned[order[:taken]] = True
    return pruned.logical_not_().reshape(scores.shape)  # in place: `pruned` is ours
