"""Scope: one sparsity budget per layer (local), or one ranking across a group of layers (global).

The pruner ranks a layer alone through its pattern (`sparsify.patterns.Pattern.local_mask`); it ranks the
layers of one global group — those whose configs name the same ``global_group``, else those one config entry
selects (`sparsify.pruning.groups`) — together through `global_keep_masks`, each layer's scores first
grouped by its pattern (`sparsify.patterns.Pattern.groups`). `local_keep_masks` is the same rule for one
layer at a time on group scores already made. Both are pure: they take **group scores** (one importance
value per prunable group, higher means keep) and return ``bool`` keep-masks of the same shapes; nothing
here knows about modules.

Counting is the one ranking rule of `sparsify.patterns.ranking` (`keep_count`, `pruned_count`): out of
``W`` weights at sparsity ``s`` the number kept is ``ceil(W * (1 - s))`` computed in float32, so one layer
ranked "globally" prunes exactly as many weights as the same layer ranked alone. Ties are broken as
there, by position: lower score first, then layer order (insertion order of the dict), then flat index,
so counts are exact even when many scores are equal (all-zero gradients, already-pruned weights); only
Core ML Tools' own threshold rule keeps every group that ties with the last one kept. NaN scores rank
below every other score (NaN weights are pruned first); ``+inf`` is kept.

Global ranking and fairness across layers
-----------------------------------------
``normalize=None`` (the default, as Intel Neural Compressor does) compares raw scores across
layers. That is right when the score is in the same unit everywhere — an estimate of the loss
increase, such as the M-FAC / OBS saliency ``w²/(2[F⁻¹]ᵢᵢ)`` — and biased when it is not: raw
magnitudes favour pruning layers whose weights are small because they are wide (fan-in
initialisation), which can empty a layer. ``normalize="mean"`` divides each layer's scores by the mean
of their magnitudes, ``"l2"`` by their root-mean-square and ``"max"`` by their largest magnitude (over the
layer's finite group scores, each group counted once whatever its size), so every layer's scores are on a
scale of about 1 before they are ranked together. In every case per-layer
``min_sparsity`` / ``max_sparsity`` caps bound each layer; ``max_sparsity=0.98`` (INC's default)
keeps at least 2 % of every layer alive.

Caps and the exact global count (water-filling)
-----------------------------------------------
Each layer first prunes its ``min_sparsity`` share (its lowest-scoring groups); its remaining groups
up to its ``max_sparsity`` share are candidates. The candidates of all layers are ranked together and
the lowest are pruned until the global count is reached. This is exactly the fixed point of Intel
Neural Compressor's water-filling loop (pin any layer that crosses a cap at the cap, recompute the
threshold for the rest, repeat), computed without sorting (next section), and it hits the global count
exactly:

* when every group stands for one weight, the pruned count is exactly ``W - keep_count(W, s)``;
* when groups stand for several weights, the lowest-scoring groups are taken while the total stays
  at or below the target, so the count is short of it by less than one group.

If the caps make the target impossible (``sum(min) > target`` or ``sum(max) < target``), the caps win
and a warning says which sparsity was reached instead.

Linear time: a threshold instead of a sort
------------------------------------------
The pruned set is always "every candidate scoring below a threshold ``v``, plus the first few that score
exactly ``v`` in (layer, index) order", so only ``v`` and that tie count are needed, not a full ranking.
``v`` is found by a radix selection on the scores' bits (`sparsify.patterns._select`): each score is mapped
to an integer key with the same order (``-0.0`` and ``+0.0`` alike), a histogram of the top 16 bits — every
element counted ``weights_per_group`` times — says which bucket the cut falls in, and the next pass
histograms the next 16 bits of that bucket's elements only (2 passes for float32, 4 for float64). Every pass
streams over the scores in pieces of about a million elements, so the ranking allocates nothing of the
scores' size but its ``bool`` masks; the per-layer caps are selections of the same kind.
Results are identical to a stable sort of all scores, ties included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from .patterns import pruned_count  # the one counting rule (`sparsify.patterns.ranking`), also exported here
from .patterns._select import at_most as _at_most
from .patterns._select import cut as _cut
from .patterns._select import smallest as _smallest

__all__ = ["NORMALIZATIONS", "global_keep_masks", "local_keep_masks", "pruned_count"]

logger = logging.getLogger(__name__)

NORMALIZATIONS = (None, "mean", "l2", "max")

PerLayer = float | Mapping[str, float]


def _per_layer(value: PerLayer | int | None, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        return float(value.get(name, default))
    return float(value)


def _check_fraction(field: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{field}[{name!r}]={value!r} is invalid: allowed 0.0 <= {field} <= 1.0")


def _bad_normalize(how: object) -> str:
    return f"normalize={how!r} is invalid: allowed values are {', '.join(map(repr, NORMALIZATIONS))}"


def _rankable(flat: torch.Tensor) -> torch.Tensor:
    """float32 (float64 kept) with NaN below every score, so NaN weights are pruned first, as in the engine."""
    if flat.dtype != torch.float64:
        flat = flat.float()
    return torch.nan_to_num(flat, nan=-float("inf"), posinf=float("inf")) if flat.isnan().any() else flat


def _normalized(flat: torch.Tensor, how: str | None) -> torch.Tensor:
    if how is None:
        return flat
    finite = flat[torch.isfinite(flat)]
    if finite.numel() == 0:
        return flat
    if how == "mean":
        scale = finite.abs().mean()
    elif how == "l2":
        scale = finite.pow(2).mean().sqrt()
    elif how == "max":
        scale = finite.abs().max()
    else:
        raise ValueError(_bad_normalize(how))
    return flat / scale if 0 < scale < float("inf") else flat


def local_keep_masks(
    scores: Mapping[str, torch.Tensor], sparsity: PerLayer
) -> dict[str, torch.Tensor]:
    """Each layer alone: prune its lowest ``pruned_count(n_groups, sparsity)`` groups (exact, ties by index).

    ``sparsity`` is one float or a dict ``{name: sparsity}`` (missing names: 0).
    """
    masks = {}
    for name, score in scores.items():
        level = _per_layer(sparsity, name, 0.0)
        _check_fraction("sparsity", name, level)
        flat = _rankable(score.detach().reshape(-1))
        masks[name] = ~_smallest(flat, pruned_count(flat.numel(), level)).reshape(score.shape)
    return masks


def global_keep_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    weights_per_group: Mapping[str, int] | int | None = None,
    min_sparsity: PerLayer = 0.0,
    max_sparsity: PerLayer = 1.0,
    normalize: str | None = None,
    layer_weights: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """One ranking across layers with per-layer caps; returns ``{name: bool keep-mask}``.

    Args:
        scores: ``{name: group scores}`` (any shapes, any devices; higher = keep). Each element
            stands for ``weights_per_group[name]`` weights.
        sparsity: the fraction of *all weights* to prune, in ``[0, 1]``.
        weights_per_group: how many weights each score element stands for: one int for all layers
            or a dict per name (missing names: 1). Default 1 (per-weight scores).
        min_sparsity: the least sparsity of each layer: a float for all, or a dict per name
            (missing names: 0.0).
        max_sparsity: the most sparsity of each layer: a float or a dict (missing names: 1.0).
        normalize: ``None`` (raw scores), ``"mean"``, ``"l2"`` or ``"max"`` — see the module docs.
        layer_weights: the number of weights in each layer, when it is not ``groups × weights_per_group``
            — e.g. for n:m runs, where a group of ``m`` weights prunes only ``n``: then pass
            ``weights_per_group = n`` and ``layer_weights = numel``. Sparsities and caps are then
            fractions of these counts, and a layer prunes at most ``floor(cap · weights / size)``
            groups (and at least ``ceil(min · weights / size)``).

    Returns:
        ``{name: keep}`` with ``keep`` a ``bool`` tensor of ``scores[name]``'s shape and device.
        The pruned weights total exactly ``W - keep_count(W, sparsity)`` when every group is one
        weight (within one group otherwise), unless the caps make that impossible.
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity={sparsity!r} is invalid: allowed 0.0 <= sparsity <= 1.0")
    if normalize not in NORMALIZATIONS:
        raise ValueError(_bad_normalize(normalize))
    names = list(scores)
    if not names:
        return {}
    device = scores[names[0]].device

    flats, sizes, weights, lows, highs, mandatory = [], [], [], [], [], 0
    for name in names:
        size = int(_per_layer(weights_per_group, name, 1))
        if size < 1:
            raise ValueError(f"weights_per_group[{name!r}]={size} is invalid: allowed >= 1")
        lo_s = _per_layer(min_sparsity, name, 0.0)
        hi_s = _per_layer(max_sparsity, name, 1.0)
        _check_fraction("min_sparsity", name, lo_s)
        _check_fraction("max_sparsity", name, hi_s)
        if lo_s > hi_s:
            raise ValueError(
                f"min_sparsity[{name!r}]={lo_s} > max_sparsity[{name!r}]={hi_s}: "
                "allowed min_sparsity <= max_sparsity"
            )
        flat = _rankable(scores[name].detach().reshape(-1).to(device))
        n = flat.numel()
        flats.append(_normalized(flat, normalize))
        sizes.append(size)
        if layer_weights is None or name not in layer_weights:
            weights.append(n * size)
            highs.append(pruned_count(n, hi_s))
            lows.append(pruned_count(n, lo_s))
        else:
            weights.append(int(layer_weights[name]))
            highs.append(min(n, pruned_count(weights[-1], hi_s) // size))
            lows.append(min(highs[-1], -(-pruned_count(weights[-1], lo_s) // size)))
        mandatory += lows[-1] * size

    total = sum(weights)
    target = pruned_count(total, float(sparsity))
    ceiling = sum(h * s for h, s in zip(highs, sizes))
    if target < mandatory or target > ceiling:
        reached = mandatory if target < mandatory else ceiling
        logger.warning(
            "global sparsity %.4f (%d of %d weights) is outside what the per-layer caps allow "
            "(%d to %d weights): the caps win and %.4f is reached",
            sparsity, target, total, mandatory, ceiling, reached / max(total, 1),
        )
    budget = max(0, target - mandatory)

    if any(flat.dtype == torch.float64 for flat in flats):  # one key width for all (as torch.cat would promote)
        flats = [flat.double() for flat in flats]
    # per layer: the mandatory zeros (its `lo` lowest) and the candidates (the next `hi - lo`)
    mandatory_masks, candidate_masks = [], []
    for flat, lo, hi in zip(flats, lows, highs):
        below_lo = _smallest(flat, lo) if lo else None
        candidates = None  # every element
        if hi < flat.numel() or lo:
            candidates = _smallest(flat, hi)
            if below_lo is not None:
                candidates &= ~below_lo
        mandatory_masks.append(below_lo)
        candidate_masks.append(candidates)
    # one cut across layers: all candidates below `value`, then ties at `value` in (layer, index) order
    value, left, ties = _cut(flats, sizes, budget, candidate_masks)

    masks = {}
    for i, (name, flat, size) in enumerate(zip(names, flats, sizes)):
        below_lo, candidates = mandatory_masks[i], candidate_masks[i]
        if value is None:  # the budget takes every candidate
            pruned = torch.ones(flat.shape, dtype=torch.bool, device=device) if candidates is None else candidates
        else:
            take = min(ties[i], left // size)
            left = left - take * size if take == ties[i] else 0  # a tie that does not fit ends the prefix
            pruned = _at_most(flat, value, ties[i], take, candidates)
        if below_lo is not None:
            pruned |= below_lo
        keep = pruned.logical_not_()
        original = scores[name]
        masks[name] = keep.reshape(original.shape).to(original.device)
    return masks
