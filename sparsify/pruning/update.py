"""One mask update: scores from a criterion, groups from a pattern, a ranking by scope → new keep-masks.

Local targets are ranked alone through their pattern (`sparsify.patterns.Pattern.local_mask`), at their
scheduled sparsity capped by ``max_sparsity``. Global targets are ranked together with the other targets
of their group — those whose configs name the same ``global_group``, else those their config entry
selected (`sparsify.pruning.groups`) — through `sparsify.scope.global_keep_masks`, with the per-layer
caps: the budget is the sum of every member's scheduled zeros, so a global ranking never prunes more than
the schedules ask.

Patterns see every weight as ``[out, in, *kernel]``: a target whose weight is stored ``[in, out]``
(``Target.transposed``: transformers' ``Conv1D``) is scored in its own layout, ranked on the transposed
scores, and its masks are transposed back — so a criterion, the installed mask and ``after_masks`` all
use the stored layout, and a per-output-channel mask of shape ``[out, 1]`` is stored as ``[1, out]``.

The pattern and scope decide how many weights of each module are pruned; a layer-wise criterion (SparseGPT,
Wanda) may then re-select *which* ones in `Scorer.after_masks`, calibrating each layer on the inputs of the
layers already pruned before it. Its masks replace the chosen ones only with the same shape and count.

Memory: an update allocates little beyond the new ``bool`` masks (see ``docs/benchmarks.md``, "Criterion
memory at a mask update"): scores are checked and ranked piece by piece (`sparsify.patterns._select`), never
copied, sorted or indexed with int64 whole.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping

import torch

from ..criteria import PrunerView, Scorer
from ..patterns import _select, pruned_count
from ..scope import global_keep_masks
from .plan import Target
from .sharded import whole_scores

__all__ = ["compute_masks"]

logger = logging.getLogger(__name__)


def compute_masks(
    pruner: PrunerView, scorer: Scorer, levels: Mapping[str, float], *, fresh_scores: bool = True
) -> dict[str, torch.Tensor]:
    """New keep-masks for the targets in ``levels`` (module name → sparsity), scored by ``scorer``.

    ``fresh_scores=False`` skips `Scorer.begin` / `Scorer.after_masks` (the magnitude ranking of
    ``initial_sparsity`` at ``prepare()``).
    """
    targets: Mapping[str, Target] = pruner.targets  # type: ignore[assignment]
    names = list(levels)
    if fresh_scores:
        scorer.begin(pruner, names)
    try:
        scores: dict[str, torch.Tensor] = {}  # of globally ranked targets only: a local one's go once it is masked
        masks: dict[str, torch.Tensor] = {}
        entries: dict[Hashable, list[str]] = defaultdict(list)
        counted_only: set[str] = set()  # nothing pruned yet: no previous mask to keep
        for name in names:
            target = targets[name]
            counted = _count_only(target, scorer, pruner, name, levels[name]) if fresh_scores else None
            if counted is not None:
                masks[name] = counted
                counted_only.add(name)
                continue
            # FSDP2: gathered whole, so every rank ranks the same scores
            score = _oriented(target, _checked(name, whole_scores(target, scorer.scores(pruner, name))))
            if target.config.scope == "global":
                entries[target.entry].append(name)
                scores[name] = score
            else:
                level = _local_level(target, levels[name])
                kept = _oriented(target, target.mask.expand(target.orig.shape)) if scorer.monotone else None
                masks[name] = target.pattern.local_mask(score, level, kept)
            del score
        for members in entries.values():
            masks.update(_global_masks([targets[n] for n in members], scores, levels))
        scores.clear()  # a layer-wise update calibrates for a long time next: hold no score through it
        masks = {name: _oriented(targets[name], mask) for name, mask in masks.items()}  # back to the stored layout
        if scorer.monotone:  # masks only grow — except where the pattern needs weights back (`Pattern.may_regrow`)
            masks = {name: mask if targets[name].pattern.may_regrow or name in counted_only else
                     mask & targets[name].mask.expand(mask.shape) for name, mask in masks.items()}
        if fresh_scores:
            refined = scorer.after_masks(pruner, masks)
            if refined is not None:
                masks = _refined(targets, masks, refined)
    finally:
        if fresh_scores:
            scorer.end()
    return masks


def _local_level(target: Target, level: float) -> float:
    """The level a locally ranked target reaches: the update's, within its config's and its pattern's caps."""
    return min(level, target.config.max_sparsity, target.pattern.max_sparsity)


def _count_only(
    target: Target, scorer: Scorer, pruner: PrunerView, name: str, level: float
) -> torch.Tensor | None:
    """A local target's chosen mask when the scorer re-selects its weights from their counts alone and nothing is
    pruned yet: `sparsify.patterns.Pattern.fresh_mask` (in the scores' layout), without scoring or ranking any."""
    if target.config.scope == "global" or not scorer.reselects_alone(pruner, name) or not bool(target.mask.all()):
        return None
    shape = _oriented(target, target.orig).shape
    return target.pattern.fresh_mask(shape, _local_level(target, level), target.orig.device)


def _oriented(target: Target, tensor: torch.Tensor) -> torch.Tensor:
    """``[in, out]`` ↔ ``[out, in]`` for a transposed target (its own inverse); other targets unchanged."""
    return tensor.t() if target.transposed else tensor


def _refined(
    targets: Mapping[str, Target], masks: dict[str, torch.Tensor], refined: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Masks a scorer re-selected in `Scorer.after_masks`: same shape, same number of pruned weights."""
    out = dict(masks)
    for name, mask in refined.items():
        if name not in masks:
            raise RuntimeError(f"the scorer refined module {name!r}, which is not part of this mask update")
        chosen = masks[name]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != chosen.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise RuntimeError(f"module {name!r}: a refined mask must be bool {tuple(chosen.shape)}, got {got}")
        shape = targets[name].orig.shape
        before, after = _pruned_weights(chosen, shape), _pruned_weights(mask, shape)
        if before != after:
            raise RuntimeError(
                f"module {name!r}: the refined mask prunes {after} weights where the pattern and scope chose "
                f"{before}; a refinement re-selects which weights are pruned, never how many"
            )
        out[name] = mask
    return out


def _pruned_weights(mask: torch.Tensor, shape: torch.Size) -> int:
    """Zeros of ``mask`` broadcast to ``shape``, counted without a copy (``bool.sum()`` makes an int64 one)."""
    return shape.numel() - int(torch.count_nonzero(mask)) * (shape.numel() // max(mask.numel(), 1))


def _checked(name: str, scores: torch.Tensor) -> torch.Tensor:
    flat = scores.detach().reshape(-1) if scores.is_contiguous() else scores.detach().flatten()
    bad = 0
    for start in range(0, flat.numel(), _select.CHUNK):  # isfinite() of all scores at once takes 9 B/weight
        bad += int(torch.isfinite(flat[start : start + _select.CHUNK]).logical_not_().count_nonzero())
    if bad:
        logger.warning(
            "module %r: %d of %d scores are NaN or infinite (diverged weights or gradients?); NaN ranks lowest "
            "and is pruned first, +inf is kept", name, bad, scores.numel(),
        )
    return scores


def _global_masks(
    members: list[Target], scores: Mapping[str, torch.Tensor], levels: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    grouped, sizes, weights, low, high = {}, {}, {}, {}, {}
    for target in members:
        name, shape = target.name, scores[target.name].shape
        grouped[name] = target.pattern.groups(scores[name])[0]
        sizes[name] = target.pattern.weights_per_group(shape)
        weights[name] = scores[name].numel()
        cap = target.pattern.max_sparsity
        low[name] = min(target.config.min_sparsity, cap)
        high[name] = min(target.config.max_sparsity, cap)
    total = sum(weights.values())
    distinct = {levels[n] for n in weights}
    if len(distinct) == 1:  # the usual case: one schedule, so the global count is exact
        sparsity = distinct.pop()
    else:
        sparsity = sum(pruned_count(weights[n], levels[n]) for n in weights) / max(total, 1)
    keep = global_keep_masks(
        grouped, sparsity, weights_per_group=sizes, layer_weights=weights, min_sparsity=low, max_sparsity=high,
        normalize=members[0].config.normalize,
    )
    masks = {t.name: t.pattern.expand(keep[t.name], scores[t.name]) for t in members}
    zeros = sum(_pruned_weights(m, scores[n].shape) for n, m in masks.items())
    logger.info("global ranking of %d module(s) at %.4f: %d of %d weights pruned (%.4f)",
                len(members), sparsity, zeros, total, zeros / max(total, 1))
    return masks
