"""What ``sparsegpt`` and ``wanda`` share: re-selecting masks layer by layer on calibration data.

How a layer-wise criterion fits the one machine (`sparsify.pruning.update`):

1. `Scorer.begin` — for modules ranked globally only, one pass over the calibration data collects every
   module's input column norms ``‖X_j‖`` and `Scorer.scores` returns Wanda's ``|W_ij|·‖X_j‖`` (the output
   energy a weight carries, comparable across layers), so the scope's ranking sets each layer's budget on the
   data. Modules ranked locally score ``|W|``: their count is fixed by their own level anyway.
2. The pattern and scope turn those scores into masks, as for every criterion: they fix **how many** weights
   (and, for n:m, how many per run) each module loses.
3. `Scorer.after_masks` re-selects **which** — module by module in forward order (`sparsify.calibration.layer_inputs`
   stages), each calibrated on the inputs of the modules already pruned (and, for SparseGPT, updated) in earlier
   stages (`by_block`: a whole block of a chain is one stage) — and returns the new masks; the machine checks
   that each keeps its count (`_refined` in the update).

`reselect` is the count-preserving selection both criteria use, asked of the pattern (`Pattern.reselect`): its
own groups, ranked by new scores, pruning as many groups as the chosen mask prunes (n:m: as many weights in every
run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import attrs
import torch
import torch.distributed as dist

from .._memory import release_freed_memory
from .._progress import tqdm
from ..calibration.layer_inputs import Calibration, Stage, check_layer
from ..calibration.passes import MaskedWeight
from ..mask_layout import orig_name
from ..patterns import Pattern
from .base import PrunerView, Scorer, TargetView

__all__ = [
    "ColumnNorms",
    "LayerTarget",
    "LayerwiseScorer",
    "LayerwiseSpec",
    "count_nonfinite",
    "encode",
    "nm_run_counts",
    "pruned_groups_of",
    "refuse_nonfinite",
    "reselect",
    "summed_over_ranks",
    "to_mask_shape",
    "wanda_scores",
]

logger = logging.getLogger(__name__)

_LIVE_FLOOR, _LIVE_CEIL = 1e-12, 1e12


def to_mask_shape(keep: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A weight-shaped keep-mask reduced to the stored mask's ``shape`` (its broadcast dimensions)."""
    for dim, size in enumerate(shape):
        if size == 1 and keep.shape[dim] != 1:
            keep = keep.narrow(dim, 0, 1)
    return keep.contiguous()


def encode(scores: torch.Tensor, decided: torch.Tensor | None, pruned: torch.Tensor | None) -> torch.Tensor:
    """Scores for a ranking that must honour earlier decisions: decided-pruned → 0, decided-kept → +inf, the
    rest scaled into ``[1e-12, 1e12]`` (strictly above every decided-pruned weight, norms stay finite)."""
    scores = scores.float()
    live = scores if decided is None else scores[~decided]
    scale = float(live.max()) if live.numel() else 0.0
    scaled = (scores / scale if scale > 0 and math.isfinite(scale) else torch.zeros_like(scores))
    scaled = scaled.nan_to_num(0.0).clamp(_LIVE_FLOOR, _LIVE_CEIL)
    if decided is None:
        return scaled
    assert pruned is not None
    fixed = torch.where(pruned, torch.zeros_like(scaled), torch.full_like(scaled, math.inf))
    return torch.where(decided, fixed, scaled)


def nm_run_counts(chosen: torch.Tensor, pattern: Pattern) -> torch.Tensor | None:
    """The pattern's zeros per run in the chosen weight-shaped keep-mask (`ColumnLayout.run_counts`), or ``None``
    for a pattern without runs or a mask not in runs yet (n:m's unstructured ramp-up stage)."""
    return pattern.column_layout(chosen.shape, chosen).run_counts


def reselect(
    pattern: Pattern,
    scores: torch.Tensor,
    chosen: torch.Tensor,
    *,
    nm_counts: torch.Tensor | None = None,
    chosen_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """A weight-shaped keep-mask with the same pattern and count as ``chosen``, ranked by ``scores``
    (`Pattern.reselect`: the pattern's own groups, as many pruned as in ``chosen``; n:m as many zeros in every run).

    ``scores`` are weight-shaped, non-negative, higher = keep (`encode` them to honour earlier decisions);
    ``chosen`` is the weight-shaped keep-mask the pattern and scope chose. ``nm_counts`` (`nm_run_counts`) and
    ``chosen_groups`` (`pruned_groups_of` ``chosen``) save recomputing them when one layer is re-selected often.
    """
    return pattern.reselect(scores, chosen, chosen_groups=chosen_groups, counts=nm_counts)


def pruned_groups_of(pattern: Pattern, chosen: torch.Tensor) -> torch.Tensor:
    """Which of the pattern's groups the weight-shaped keep-mask ``chosen`` prunes whole (`Pattern.pruned_groups`)."""
    return pattern.pruned_groups(chosen)


def summed_over_ranks(tensors: list[torch.Tensor], rows: int) -> int:
    """Sum ``tensors`` (in place) and ``rows`` over the ranks of a multi-process group, so every rank prunes
    from every rank's calibration data and all ranks choose the same masks; a no-op outside one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    for tensor in tensors:
        dist.all_reduce(tensor)
    total = torch.tensor([float(rows)], device=tensors[0].device if tensors else "cpu")
    dist.all_reduce(total)
    return int(total.item())


def count_nonfinite(columns: torch.Tensor, reduced: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor | None:
    """``total`` plus the NaN and infinite entries of ``columns`` (an int64 tensor, for `summed_over_ranks`).

    ``reduced`` is a per-column sum the statistic computed anyway: a non-finite input makes it non-finite, so the
    elementwise count (five times the cost of that sum) runs only then."""
    if bool(torch.isfinite(reduced).all()):
        return total
    found = (~torch.isfinite(columns)).sum(dtype=torch.int64)
    return found if total is None else total + found


def refuse_nonfinite(label: str, leader: str, names: list[str], statistic: Any) -> None:
    """Raise ``ValueError`` if the inputs ``leader`` saw on the calibration data held NaN or infinite values
    (``statistic.nonfinite``): a Hessian or a column norm of them is meaningless, and Wanda would rank such a
    column first (a NaN norm) — so the criterion stops, naming the layer, instead of pruning on them."""
    bad = statistic.nonfinite
    count = 0 if bad is None else int(bad.item())
    if not count:
        return
    sharing = [n for n in names if n != leader]
    also = f" (and {', '.join(map(repr, sharing))}, which share its input)" if sharing else ""
    raise ValueError(
        f"{label}: the calibration inputs of module {leader!r}{also} hold {count} non-finite value(s) (NaN or "
        f"infinite) among {statistic.rows} row(s): the sampler's data, or the layers before {leader!r} on it, produce "
        "them, and no mask can be chosen from them; check the calibration data with torch.isfinite (and the model's "
        "activations on it)"
    )


class ColumnNorms:
    """Mean square of every input column, ``‖X_j‖² / rows`` (Wanda's statistic; a few floats per column), and how
    many input values were not finite (`refuse_nonfinite`)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.rows = 0
        self.nonfinite: torch.Tensor | None = None

    def add(self, columns: torch.Tensor) -> None:
        squares = columns.square().sum(0)
        self.sums = squares if self.sums is None else self.sums + squares
        self.rows += columns.shape[0]
        self.nonfinite = count_nonfinite(columns, squares, self.nonfinite)

    def synchronize(self) -> None:
        assert self.sums is not None
        if self.nonfinite is None:  # every rank sums the same tensors
            self.nonfinite = torch.zeros((), dtype=torch.int64, device=self.sums.device)
        self.rows = summed_over_ranks([self.sums, self.nonfinite], self.rows)

    @property
    def mean_squares(self) -> torch.Tensor:
        assert self.sums is not None
        return self.sums / max(self.rows, 1)


def wanda_scores(weight: torch.Tensor, mean_squares: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · sqrt(mean x_j²)`` in the weight's shape (columns in ``flatten(1)`` order)."""
    flat = weight.detach().float().reshape(weight.shape[0], -1).abs()
    return (flat * mean_squares.to(flat.device).sqrt()).reshape(weight.shape)


@attrs.frozen
class LayerTarget:
    """One pruned module as a layer-wise criterion sees it: its weight and current mask in the
    ``[out, in, *kernel]`` layout its pattern uses — a transformers ``Conv1D``'s ``[in, out]`` weight
    transposed — so that rows are outputs and columns the input features the calibration measures."""

    name: str
    module: torch.nn.Module
    param_name: str
    pattern: Pattern
    orig: torch.Tensor  # detached, [out, in, *kernel]
    mask: torch.Tensor  # the current keep-mask expanded to orig's shape
    transposed: bool  # the parameter is stored [in, out]

    @classmethod
    def of(cls, target: TargetView) -> LayerTarget:
        orig = target.orig.detach()
        mask = target.mask.expand(orig.shape)
        if target.transposed:
            orig, mask = orig.t(), mask.t()
        return cls(target.name, target.module, target.param_name, target.pattern, orig, mask, target.transposed)

    def flip(self, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor between the stored layout and this view's (the transpose is its own inverse)."""
        return tensor.t() if self.transposed else tensor


class LayerwiseSpec(Protocol):
    """What the shared runtime reads from a layer-wise criterion's settings (`SparseGPTCriterion`,
    `WandaCriterion`)."""

    kind: ClassVar[str]

    @property
    def num_batches(self) -> int: ...

    @property
    def sequential(self) -> bool: ...


class LayerwiseScorer(Scorer):
    """The shared runtime half (see the module docs); subclasses give a statistic and `prune_layer`."""

    monotone: ClassVar[bool] = True
    label: ClassVar[str] = ""

    def __init__(self, spec: LayerwiseSpec) -> None:
        self.spec = spec
        self.names: list[str] = []
        self.preliminary: dict[str, torch.Tensor] = {}
        self.calibration: Calibration | None = None
        self.log: list[dict[str, Any]] = []

    # -- subclass API -------------------------------------------------------------------------

    def statistic(self, module: torch.nn.Module) -> Any:
        """A fresh accumulator with ``add(columns)`` for one stage leader."""
        raise NotImplementedError

    def prune_layer(
        self, layer: LayerTarget, chosen: torch.Tensor, statistic: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(keep-mask with chosen's count, new parameter values by name)`` for one module: ``chosen``, the
        keep-mask and the pruned parameter's new values (which count where the mask keeps them) are in
        ``layer``'s ``[out, in, *kernel]`` layout; other parameters (a bias) are replaced as they are."""
        raise NotImplementedError

    #: whether `prune_layer`'s new values are already zero wherever its keep-mask prunes
    zeroes_pruned: ClassVar[bool] = False

    def wants_reference(self) -> bool:
        """Whether statistics need each sample's input before this update's earlier layers were pruned too
        (their ``add_reference(columns)`` is then called before the matching ``add``)."""
        return False

    def by_block(self) -> bool:
        """Whether the layers inside one block of a chain are calibrated together, on the block's inputs from
        the blocks pruned before it (`Calibration.stages`), rather than each on the layers pruned before it."""
        return False

    # -- the machine's hooks ------------------------------------------------------------------

    def attach(self, pruner: PrunerView, names: list[str]) -> None:
        kind = type(self.spec).kind
        if pruner.sampler is None:
            raise ValueError(
                f"criterion {kind!r} calibrates every layer on data (forward only, no loss needed): pass "
                f"sampler=<calibration data> to the Pruner — e.g. a list of {{'input_ids': ..., 'attention_mask': "
                f"...}} dicts or of input tensors (sparsify.calibration)"
            )
        for name in names:
            check_layer(kind, name, pruner.targets[name].module)
        self.names = list(names)

    def _calibration(self, pruner: PrunerView, names: list[str]) -> Calibration:
        if self.calibration is None:
            targets = {n: pruner.targets[n] for n in self.names}
            self.calibration = Calibration(pruner.model, pruner.sampler, targets, self.spec.num_batches, self.label,
                                           reference=self.wants_reference())
        return self.calibration

    def begin(self, pruner: PrunerView, names: list[str]) -> None:
        ranked = [n for n in names if pruner.targets[n].config.scope == "global"]
        if not ranked:
            return
        calibration = self._calibration(pruner, names)
        stage = calibration.stages(ranked, sequential=False)[0]
        norms = {leader: ColumnNorms() for leader in stage.leaders}
        calibration.run(stage, lambda leader, columns: norms[leader].add(columns))
        for leader, statistic in norms.items():
            statistic.synchronize()
            refuse_nonfinite(self.label, leader, [n for n in ranked if stage.leader[n] == leader], statistic)
        for name in ranked:
            layer = LayerTarget.of(pruner.targets[name])
            scores = wanda_scores(torch.where(layer.mask, layer.orig, 0.0), norms[stage.leader[name]].mean_squares)
            self.preliminary[name] = layer.flip(scores)

    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        found = self.preliminary.get(name)
        return found if found is not None else _masked(pruner, name).abs()

    def after_masks(self, pruner: PrunerView, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = [n for n in masks if n in self.names]
        calibration = self._calibration(pruner, names)
        stages = calibration.stages(names, sequential=self.spec.sequential, by_block=self.by_block())
        replaced: dict[str, dict[str, torch.Tensor | MaskedWeight]] = {}
        refined: dict[str, torch.Tensor] = {}
        updated: list[str] = []
        with tqdm(total=len(names), desc=f"{self.label} layers", unit="layer", leave=False,
                  disable=not getattr(pruner.sampler, "progress", True)) as bar:
            for index, stage in enumerate(stages):
                last = index == len(stages) - 1
                refined.update(self._stage(pruner, calibration, stage, masks, replaced, updated, last))
                bar.update(len(stage.names))
        # the new values go in only now, all together: an interrupted update leaves the model as it was
        with torch.no_grad():
            for name in updated:
                target = pruner.targets[name]
                for key, value in replaced.pop(name).items():
                    param = getattr(target.module, key if key != target.param_name else orig_name(key))
                    if isinstance(value, MaskedWeight):
                        value.write(param, refined[name])
                    else:
                        param.copy_(value.to(param.device, param.dtype))
        return refined

    def _stage(
        self,
        pruner: PrunerView,
        calibration: Calibration,
        stage: Stage,
        masks: Mapping[str, torch.Tensor],
        replaced: dict[str, dict[str, torch.Tensor | MaskedWeight]],
        updated: list[str],
        last: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Calibrate and prune one stage; each pruned layer's stand-in for later stages goes to ``replaced``
        (its keep-mask and, when it changed them, its new values: held once) and, when it has new values, its
        name to ``updated``. New values are held in full until the next stage's pass has read them, then
        compacted; those of the ``last`` stage at once (no pass reads them)."""
        statistics = {leader: self.statistic(pruner.targets[leader].module) for leader in stage.leaders}
        sequential = self.spec.sequential and bool(replaced)
        reference = None
        if sequential and self.wants_reference():
            def reference(leader: str, columns: torch.Tensor) -> None:
                statistics[leader].add_reference(columns)
        calibration.run(stage, lambda leader, columns: statistics[leader].add(columns),
                        replaced if sequential else None, reference)
        for held in replaced.values():  # the pass that read the last stage's new values in full is over
            for key, value in held.items():
                if isinstance(value, MaskedWeight):
                    held[key] = value.compacted()
        for leader, statistic in statistics.items():
            statistic.synchronize()
            refuse_nonfinite(self.label, leader, [n for n in stage.names if stage.leader[n] == leader], statistic)
        refined = {}
        users = {leader: sum(1 for n in stage.names if stage.leader[n] == leader) for leader in stage.leaders}
        for name in stage.names:
            target = pruner.targets[name]
            layer = LayerTarget.of(target)
            chosen = layer.flip(masks[name].expand(target.orig.shape))
            leader = stage.leader[name]
            if hasattr(statistics[leader], "last_reader"):  # it may consume what no later layer reads
                statistics[leader].last_reader = users[leader] == 1
            keep, values = self.prune_layer(layer, chosen, statistics[leader])
            users[leader] -= 1
            if not users[leader]:  # its last layer is done: free the Hessian and its factors now
                del statistics[leader]
            release_freed_memory()
            keep = layer.flip(keep)
            if target.param_name in values:
                values[target.param_name] = layer.flip(values[target.param_name])
            refined[name] = to_mask_shape(keep, masks[name].shape)
            if values:
                updated.append(name)
            new = values.pop(target.param_name, None)
            if new is None:
                stand_in = MaskedWeight(keep, target.orig.detach())
            elif last or not self.zeroes_pruned:
                stand_in = MaskedWeight.compact(keep, new.to(target.orig.dtype))
            else:
                stand_in = MaskedWeight(keep, new.to(target.orig.dtype), zeroed=True)
            del new
            replaced[name] = {**values, target.param_name: stand_in}
        return refined

    def end(self) -> None:
        self.preliminary = {}
        self.calibration = None


def _masked(pruner: PrunerView, name: str) -> torch.Tensor:
    target = pruner.targets[name]
    if bool(target.mask.all()):  # nothing pruned yet: the weight itself (callers only read it)
        return target.orig.detach()
    return torch.where(target.mask, target.orig.detach(), 0.0)
