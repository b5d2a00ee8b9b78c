r"""``sparsegpt``: layer-wise OBS pruning with weight reconstruction (Frantar & Alistarh, 2023).

For one layer with weight ``W`` (``rows × columns``; a convolution's ``weight.flatten(1)``) and calibration
inputs ``X`` (one column per input feature or unfolded patch element), SparseGPT minimises the layer's output
error ``‖W X − Ŵ X‖²`` under the mask, using the Hessian ``H = X Xᵀ / n`` of that error:

1. ``H ← H + λ I`` with ``λ = damp · mean(diag H)`` (SparseGPT's ``percdamp``, Core ML Tools'
   ``hessian_dampening``); inputs that are always zero get ``H_jj = 1`` and their weights score 0;
2. ``U`` = the upper Cholesky factor of ``H⁻¹``;
3. columns are processed left to right in blocks of ``block_size`` (the paper's lazy batches, Core ML Tools'
   ``processing_group_size``). At each block the mask is chosen on the *current* weights with the saliency
   ``w_ij² / U_jj²``; then each column ``j`` in turn is pruned and its error ``(w_j − q_j) / U_jj`` is spread
   over the later columns of the block through row ``j`` of ``U`` (the OBS update), the block's accumulated
   error reaching the rest of the layer at its end.

How the mask is chosen inside that loop is the pattern's answer (`Pattern.column_layout`: a mode, a column order
and where blocks may end; the pattern and scope fixed each layer's count before):

* single weights — every ``rerank_every`` blocks the rest of the layer is ranked (weights already decided keep
  their decision), which gives each of the next blocks its share of the layer's count; each block takes its
  share among its own weights when the loop reaches it. So the layer's count is exact and, unlike the paper's
  fixed share per block, columns may differ in sparsity;
* block and tile patterns — at every block, the whole layer is ranked again through the pattern's
  own groups (weights already decided keep their decision), and the groups inside the block are fixed. Groups
  never straddle blocks: a convolution's columns are reordered (kernel position major) for tiles and kept in
  ``flatten(1)`` order for kernels and whole input channels, and block edges move to group edges;
* n:m along input channels — every run of ``m`` columns is decided when the loop reaches it, on the weights
  updated so far (the paper's n:m); along output channels every column is decided when reached;
* whole output channels (``per_channel``, ``"Nxchannel"``) — rows are chosen once by their exact cost
  ``w_r H w_rᵀ`` (a removed row cannot be compensated within the layer);
* any other pattern whose groups are pruned whole (a registered one that says nothing of its columns) is
  re-selected once, over one block of every column, on the first saliencies, then gets the OBS update; one whose
  groups are not pruned whole keeps the chosen mask and gets the OBS update only.

Memory per layer with ``C`` input columns: the float32 Hessian and its inverse factor, ``2·C²·4`` bytes at
rest and at most two more ``C²`` while factoring (`sparsify.criteria.hessian`; the last layer reading a
Hessian factors it in place), plus one float32 copy of the weight (the column loop updates it in place) and
one unfolded calibration batch; layers sharing an input (``q``/``k``/``v``) share one Hessian. A block of a
chain calibrated at once (the default, ``true_sequential=False``) holds its layers' Hessians together (a Llama
decoder layer: four); with ``sequential=False`` every layer's Hessian is held at once. Layers pruned in an
earlier stage of the same update stand in with their new weights for the later stages' calibration.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_float, boolean, check_range, positive_int
from .._memory import release_freed_memory
from ..patterns import ColumnLayout, Pattern, lowest, lowest_per_span
from .base import Criterion, Scorer, register_criterion
from .hessian import Hessian, inverse_factor
from .layerwise import (
    LayerTarget,
    LayerwiseScorer,
    encode,
    reselect,
)

__all__ = ["Hessian", "SparseGPTCriterion", "inverse_factor", "obs_prune"]

logger = logging.getLogger(__name__)

_OWNER = "SparseGPTCriterion"



def _to_damp(value: Any) -> float:
    value = as_float(_OWNER, "damp", value)
    check_range(_OWNER, "damp", value, 0.0, low_open=True)
    return value



@register_criterion
@attrs.define(eq=True, frozen=True)
class SparseGPTCriterion(Criterion):
    """Layer-wise OBS with the SparseGPT weight update (see the module docs).

    Args:
        num_batches: how many items of the sampler's data calibrate each update (128 in the paper and in Core
            ML Tools' ``calibration_nsamples``).
        block_size: columns per lazy-update block and mask-selection step (SparseGPT's ``blocksize``, Core ML
            Tools' ``processing_group_size``: 128).
        damp: relative dampening ``λ = damp · mean(diag H)`` (``percdamp``, ``hessian_dampening``: 0.01).
        sequential: calibrate each layer on the outputs of the layers pruned and updated before it (else all
            layers on the current model, in one pass, holding every Hessian at once).
        true_sequential: with ``sequential``, also inside a block of a chain (a decoder layer): ``o_proj`` is
            calibrated on the pruned ``q/k/v``, the MLP on the pruned attention (GPTQ's and SparseGPT's
            ``--true-sequential``). By default (``False``) every layer of a block is calibrated on one forward of
            that block, with the blocks before it pruned: the reference code's default and Core ML Tools'
            ``LayerwiseCompressor`` order. Layers outside a detected chain are calibrated one after the other
            either way, and so is every layer with ``asymmetric`` (whose point is to correct the error of the
            layers before it: per block it was worse on the benchmark transformer, ``docs/oneshot.md``).
        update_bias: let the layer's bias take part in the reconstruction (a constant input, never pruned, last
            in the column order), so it absorbs the mean of the pruning error.
        rerank_every: for single-weight patterns, how many blocks share one ranking of the rest of the layer:
            it gives each of them its share of the layer's count, and each block takes its share among its own
            weights when the loop reaches it. ``1`` ranks the rest of the layer at every block (four times the
            selection work at the default; the selection runs over ``rows × remaining columns``).
        asymmetric: reconstruct each layer's output *before* this update, ``‖W X − Ŵ X̂‖²`` with ``X`` the
            layer's input in the unpruned model and ``X̂`` in the pruned one (GPTAQ's asymmetric calibration),
            instead of ``‖(W − Ŵ) X̂‖²``: the layer also corrects the error of the layers before it. Costs a
            second forward per calibration batch and another ``C²`` matrix.
    """

    kind: ClassVar[str] = "sparsegpt"
    needs_data: ClassVar[bool] = True
    layerwise: ClassVar[bool] = True

    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    num_batches: int = attrs.field(default=128, converter=positive_int(_OWNER, "num_batches"))  # type: ignore[misc]
    block_size: int = attrs.field(default=128, converter=positive_int(_OWNER, "block_size"))  # type: ignore[misc]
    damp: float = attrs.field(default=0.01, converter=_to_damp)
    sequential: bool = attrs.field(default=True, converter=boolean(_OWNER, "sequential"))  # type: ignore[misc]
    update_bias: bool = attrs.field(default=False, converter=boolean(_OWNER, "update_bias"))  # type: ignore[misc]
    asymmetric: bool = attrs.field(default=False, converter=boolean(_OWNER, "asymmetric"))  # type: ignore[misc]
    true_sequential: bool = attrs.field(default=False,
                                        converter=boolean(_OWNER, "true_sequential"))  # type: ignore[misc]
    rerank_every: int = attrs.field(default=4, converter=positive_int(_OWNER, "rerank_every"))  # type: ignore[misc]

    def scorer(self) -> Scorer:
        return _SparseGPTScorer(self)


def _blocks(columns: int, block_size: int, cuts: Sequence[int] | None) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of about ``block_size`` columns whose edges lie on ``cuts`` (all if ``None``)."""
    blocks, start = [], 0
    while start < columns:
        stop = min(start + block_size, columns)
        if cuts is not None and stop < columns:
            stop = cuts[bisect.bisect_left(cuts, stop)]
        blocks.append((start, stop))
        start = stop
    return blocks


#: from this many input columns on, the factorisation's temporaries (4·C² bytes each) are handed back to the system
#: before the column loop; below it they are few MiB, which the loop's own allocations reuse (a trim costs ~3 ms)
_TRIM_COLUMNS = 2048

#: columns per inner step of the column loop: inside a step each pruned column's error reaches the step's later
#: columns one rank-1 update at a time; at the step's end one matrix product carries the step's errors to the
#: rest of the block. The same updates as one rank-1 update per column over the whole block, reassociated:
#: the rank-1 work (memory-bound) shrinks by ``block_size / SUB_BLOCK``, the rest runs as matrix products.
SUB_BLOCK = 16


def _transposed(columns: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``columns.t()`` for a few columns of a wide row-major matrix: first gathered row by
    row, then transposed. Transposing them straight from the matrix reads one element per row at a stride of
    the row length — with a power-of-two row (1024 floats) every read lands in the same cache sets, 10× slower
    (2.7 ms against 0.26 ms for 128 of 2816 × 1024)."""
    return columns.contiguous().t().contiguous()


def obs_prune(
    weight: torch.Tensor,
    factor: torch.Tensor,
    selector: Any,
    block_size: int,
    cuts: Sequence[int] | None = None,
    columns: int | None = None,
    *,
    owned: bool = False,
) -> torch.Tensor:
    """SparseGPT's column loop: ``weight`` (``rows × C``, float) pruned where ``selector.pruned`` says, with the
    OBS update through ``factor`` (`inverse_factor`'s ``U``). ``selector.block(start, stop, W, diag)`` is called
    at each block and, for a per-column selector, ``selector.column(j, start, block, diag)`` at each column
    before ``j`` is pruned (``block``: the block transposed, ``columns × rows``); it returns the (absolute) end of
    the columns it has just decided from ``j`` on, or ``None``. Only the first ``columns`` are pruned (default:
    all); the rest (a bias column) only take the updates. With ``owned``, ``weight`` itself is updated and
    returned (no copy of it).

    A block is processed transposed (``columns × rows``, each column contiguous), in steps of `SUB_BLOCK`
    columns whose edges lie on ``cuts`` (a per-column selector reads a whole n:m run at its first column, so a
    run must not straddle two steps). A column's error is its value where pruned, times ``1 / U_jj``: one
    product with the decided mask pre-scaled by ``1 / U_jj`` (for the whole block, or run by run as a
    per-column selector decides them). The pruned weights are zeroed once at the block's end: no later column
    of the block reads a finished one."""
    if not owned:  # else ``weight`` is a fresh tensor the caller gives up, updated in place
        weight = weight.clone()
    diag = factor.diagonal()
    per_column = getattr(selector, "per_column", True)
    limit = weight.shape[1] if columns is None else columns
    for start, stop in _blocks(limit, block_size, cuts):
        selector.block(start, stop, weight[:, :limit], diag[:limit])
        block = _transposed(weight[:, start:stop])  # block[i] is column start + i
        rows_view = block.t()  # the block as rows × columns
        errors = torch.empty_like(block)
        local = factor[start:stop, start:stop]
        inverse = local.diagonal().reciprocal()
        pruned = selector.pruned[:, start:stop]  # a view: a per-column selector fills it as the loop goes
        inner = None if cuts is None else sorted({c - start for c in cuts if start < c < stop} | {stop - start})
        width = stop - start
        if per_column:  # filled run by run as the selector decides them (a column it never decides: kept)
            scaled = torch.zeros_like(block)
        else:  # the mask is known for the whole block: transposed like it, and pre-scaled by 1 / U_jj
            scaled = _transposed(pruned).to(block.dtype).mul_(inverse.unsqueeze(1))
        # one view per column, made once per block (indexing is most of a column's Python cost)
        columns_, errors_, local_, scaled_ = block.unbind(0), errors.unbind(0), local.unbind(0), scaled.unbind(0)
        for first, last in _blocks(width, SUB_BLOCK, inner):
            for i in range(first, last):
                if per_column:
                    decided = selector.column(start + i, start, block, diag)
                    if decided is not None:
                        end = decided - start
                        torch.mul(pruned[:, i:end].t(), inverse[i:end].unsqueeze(1), out=scaled[i:end])
                torch.mul(columns_[i], scaled_[i], out=errors_[i])
                if i + 1 < last:
                    block[i + 1 : last].addr_(local_[i][i + 1 : last], errors_[i], alpha=-1)
            if last < width:
                block[last:].addmm_(local[first:last, last:].t(), errors[first:last], alpha=-1)
        block.masked_fill_(_transposed(pruned), 0.0)
        weight[:, start:stop] = rows_view
        weight[:, stop:].addmm_(errors.t(), factor[start:stop, stop:], alpha=-1)
    return weight


class _Groups:
    """Element / block / tile / channel patterns: the whole layer re-ranked through the pattern at every block."""

    per_column = False

    def __init__(self, pattern: Pattern, shape: torch.Size, order: torch.Tensor | None, chosen: torch.Tensor,
                 frozen: torch.Tensor, alive: torch.Tensor, row_cost: torch.Tensor | None,
                 rerank_every: int = 1) -> None:
        self.pattern, self.shape, self.order, self.alive, self.row_cost = pattern, shape, order, alive, row_cost
        self.chosen = chosen  # weight-shaped keep-mask the pattern and scope chose
        self.chosen_groups = pattern.pruned_groups(chosen) if pattern.whole_groups else None
        self.pruned = frozen.clone()  # in processing order
        self.decided = frozen.clone()
        # single weights: rank only the undecided ones against the layer's remaining count (same result, cheaper)
        self.elementwise = row_cost is None and pattern.single_weights
        self.total = chosen.numel() - int(torch.count_nonzero(chosen)) if self.elementwise else 0
        # the elementwise ranking's running state: pruned so far (not recounted at every block), whether any
        # weight was already pruned before this update (else nothing needs masking out), all inputs alive
        self.pruned_count = int(torch.count_nonzero(self.pruned)) if self.elementwise else 0
        self.any_frozen = bool(frozen.any()) if self.elementwise else False
        self.all_alive = bool(alive.all())
        self.diag_squared: torch.Tensor | None = None
        self.rerank_every = rerank_every
        self.shares: dict[int, int] = {}  # block start → how many of its weights the last ranking pruned

    def to_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        if self.order is None:
            return matrix.reshape(self.shape)
        flat = torch.empty_like(matrix)
        flat[:, self.order] = matrix
        return flat.reshape(self.shape)

    def from_weight(self, tensor: torch.Tensor) -> torch.Tensor:
        flat = tensor.reshape(self.shape[0], -1)
        return flat if self.order is None else flat[:, self.order]

    def block(self, start: int, stop: int, weight: torch.Tensor, diag: torch.Tensor) -> None:
        # a block is wholly decided before its turn only by weights pruned before this update
        fresh = self.elementwise and not self.any_frozen
        if not fresh and bool(self.decided[:, start:stop].all()):
            return
        if self.elementwise:
            self._block_elementwise(start, stop, weight, diag)
            return
        if self.row_cost is not None:  # whole rows: decided once, by their exact cost
            saliency = (self.row_cost.clamp(min=0) / weight.shape[1]).sqrt().unsqueeze(1).expand_as(weight)
            start, stop = 0, weight.shape[1]
        else:
            saliency = weight.square() / diag.square() * self.alive
        scores = encode(saliency, self.decided, self.pruned)
        keep = self.from_weight(reselect(self.pattern, self.to_weight(scores), self.chosen,
                                         chosen_groups=self.chosen_groups))
        open_ = ~self.decided[:, start:stop]
        self.pruned[:, start:stop] |= open_ & ~keep[:, start:stop]
        self.decided[:, start:stop] = True

    def _saliency(self, weight: torch.Tensor, diag: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        """``w² / U_jj²`` of columns ``[start, stop)``, computed in place in one buffer; ``inf`` where a weight
        was pruned before this update (it stays pruned and counts as such already)."""
        if self.diag_squared is None:
            self.diag_squared = diag.square()
        saliency = torch.square(weight[:, start:stop])
        saliency.div_(self.diag_squared[start:stop])
        if not self.all_alive:
            saliency.mul_(self.alive[start:stop])
        if self.any_frozen:
            saliency.masked_fill_(self.decided[:, start:stop], math.inf)
        return saliency

    def _block_elementwise(self, start: int, stop: int, weight: torch.Tensor, diag: torch.Tensor) -> None:
        """Single weights. Every `rerank_every` blocks the rest of the layer is ranked by ``w² / U_jj²`` against
        the layer's remaining count, which gives each of the next blocks its share; each block then takes its
        share among its own weights, ranked on their values at that point (after the updates of the blocks
        before it). With ``rerank_every=1`` each block's weights are simply those among the lowest of the rest.
        The ranking of the rest runs over ``rows × remaining columns`` floats: at every block it would be most
        of the loop's cost; the count is kept rather than recounted."""
        width = stop - start
        if start not in self.shares:
            saliency = self._saliency(weight, diag, start, None)
            if self.rerank_every == 1:  # the ranking itself is the block's choice
                chosen = lowest(saliency.reshape(-1), self.total - self.pruned_count).reshape(saliency.shape)
                self._decide(start, stop, chosen[:, :width])
                return
            rest = saliency.shape[1]
            spans = [(first, min(first + width, rest)) for first in range(0, width * self.rerank_every, width)
                     if first < rest]
            counts = lowest_per_span(saliency, self.total - self.pruned_count, spans)
            del saliency
            # a share only ever comes from the latest ranking
            self.shares = {start + first: count for (first, _), count in zip(spans, counts)}
        share = self.shares.pop(start)
        saliency = self._saliency(weight, diag, start, stop)
        self._decide(start, stop, lowest(saliency.reshape(-1), share).reshape(saliency.shape))

    def _decide(self, start: int, stop: int, picked: torch.Tensor) -> None:
        self.pruned[:, start:stop] |= picked
        self.pruned_count += int(torch.count_nonzero(picked))
        self.decided[:, start:stop] = True

    def column(self, j: int, start: int, block: torch.Tensor, diag: torch.Tensor) -> int | None:
        return None


class _Runs:
    """Runs (n:m): ``counts[row, run]`` zeros chosen in every run when the loop reaches it (runs along input
    channels: consecutive columns in kernel-position-major order; along output channels: within each column)."""

    def __init__(self, layout: ColumnLayout, counts: torch.Tensor, kernel: int, channels: int,
                 alive: torch.Tensor, rows: int) -> None:
        self.m, self.dim, self.counts, self.alive = layout.run_length, layout.run_axis, counts, alive
        self.pruned = torch.zeros(rows, kernel * channels, dtype=torch.bool, device=counts.device)
        runs_per_segment = math.ceil(channels / self.m) if self.dim == 1 else 0
        self.starts: dict[int, tuple[int, int, int]] = {}  # column → (run stop, count column index)
        if self.dim == 1:
            # counts are [rows·kernel, runs] in the weight's (Co, k, runs) layout; see `nm_run_counts`
            for k in range(kernel):
                for r in range(runs_per_segment):
                    first = k * channels + r * self.m
                    self.starts[first] = (min(first + self.m, (k + 1) * channels), k, r)
        self.kernel = kernel

    def block(self, start: int, stop: int, weight: torch.Tensor, diag: torch.Tensor) -> None:
        pass

    def column(self, j: int, start: int, block: torch.Tensor, diag: torch.Tensor) -> int | None:
        rows = block.shape[1]  # the block is transposed: columns × rows
        if self.dim == 1:
            found = self.starts.get(j)
            if found is None:
                return None
            stop, k, r = found
            saliency = block[j - start : stop - start].square()  # [run columns, rows]
            saliency.div_(diag[j:stop].square().unsqueeze(1)).mul_(self.alive[j:stop].unsqueeze(1))
            count = self.counts.reshape(rows, self.kernel, -1)[:, k, r]
            self.pruned[:, j:stop] = _lowest_in_runs(saliency, count).t()
            return stop
        # dim=0: runs of m consecutive rows in column j; counts are [(kernel·Ci), row runs] over columns
        saliency = block[j - start].square() * self.alive[j]
        padded = torch.nn.functional.pad(saliency, (0, (-rows) % self.m), value=math.inf).reshape(-1, self.m)
        chosen = _lowest_in_runs(padded.t(), self.counts[j]).t()
        self.pruned[:, j] = chosen.reshape(-1)[:rows]
        return j + 1


#: runs up to this long are ranked by comparing every pair of their positions, longer ones by sorting
_PAIRWISE_RUN = 8


def _lowest_in_runs(saliency: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[m, runs]`` → where each run's ``counts[run]`` lowest saliencies are (ties: the earlier first; NaN as the
    highest, tied with ``+inf``), as ``torch.argsort(..., stable=True)`` ranks them. Runs of up to `_PAIRWISE_RUN`
    are ranked by comparing each pair of positions, each comparison over all runs at once: ranking 2 048 runs of
    4 by sorting them twice takes 210 µs (690 µs for 5 632), the six comparisons of 2:4 117 µs (155 µs)."""
    m = saliency.shape[0]
    saliency = torch.nan_to_num(saliency, nan=math.inf)
    if m > _PAIRWISE_RUN:
        order = torch.argsort(saliency, dim=0, stable=True)
        ranked_low = torch.arange(m, device=counts.device).unsqueeze(1) < counts
        return torch.empty_like(saliency, dtype=torch.bool).scatter_(0, order, ranked_low)
    positions = saliency.unbind(0)
    ranks = torch.zeros(saliency.shape, dtype=torch.uint8, device=saliency.device)
    rank = ranks.unbind(0)
    for a in range(m):
        for b in range(a + 1, m):
            b_first = torch.lt(positions[b], positions[a])  # a tie keeps the earlier (a) first
            rank[a].add_(b_first)
            rank[b].add_(~b_first)
    return ranks < counts


class _Fixed:
    """A pattern sparsify cannot re-select: the chosen mask, with the OBS update."""

    per_column = False

    def __init__(self, pruned: torch.Tensor) -> None:
        self.pruned = pruned

    def block(self, *_: Any) -> None:
        pass

    def column(self, *_: Any) -> int | None:
        return None


def _plan(pattern: Pattern, shape: torch.Size, chosen: torch.Tensor, device: torch.device) -> ColumnLayout:
    """The pattern's `ColumnLayout` for this weight and chosen mask, its processing order on ``device``."""
    layout = pattern.column_layout(shape, chosen)
    if layout.order is None:
        return layout
    return attrs.evolve(layout, order=layout.order.to(device))


class _SparseGPTScorer(LayerwiseScorer):
    label: ClassVar[str] = "SparseGPT"
    zeroes_pruned: ClassVar[bool] = True  # the column loop zeroes every weight it prunes
    spec: SparseGPTCriterion

    def statistic(self, module: torch.nn.Module) -> Hessian:
        return Hessian()

    def wants_reference(self) -> bool:
        return self.spec.asymmetric

    def reselects_alone(self, pruner: Any, name: str) -> bool:
        # single weights: `_Groups` reads only the chosen mask's count; n:m: `_Runs` only its count in each run
        # (whole rows and groups read the mask)
        pattern = pruner.targets[name].pattern
        return name in self.names and (pattern.single_weights or pattern.counts_per_run)

    def by_block(self) -> bool:
        return not (self.spec.true_sequential or self.spec.asymmetric)

    def prune_layer(
        self, layer: LayerTarget, chosen: torch.Tensor, statistic: Hessian
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        orig = layer.orig
        shape, pattern = orig.shape, layer.pattern
        current = layer.mask
        bias = getattr(layer.module, "bias", None) if self.spec.update_bias else None
        layout = _plan(pattern, shape, chosen, statistic.sum.device if statistic.sum is not None else orig.device)
        mode, order, cuts, counts = layout.mode, layout.order, layout.edges, layout.run_counts
        pattern = layout.pattern or pattern  # n:m's unstructured ramp-up stage is re-selected unstructured
        if mode == "rows":  # whole rows read H itself after the factor: it must not be consumed
            statistic.last_reader = False
        factor, alive = statistic.factor(order, self.spec.damp, bias is not None)
        if factor.shape[0] >= _TRIM_COLUMNS:  # the factorisation's C² temporaries, before the loop allocates its own
            release_freed_memory()
        device, columns = factor.device, math.prod(shape[1:])
        # a pattern may bring weights back (n:m; the machine's masks only grow for the others): start them from
        # their trained values, as a regrown weight of any criterion does, rather than from zero
        from_orig = layer.pattern.may_regrow or bool(current.all())  # nothing to zero when all is kept
        start = orig if from_orig else torch.where(current, orig, 0.0)
        weight = start.to(device, torch.float32).reshape(shape[0], -1)
        if order is not None:
            weight = weight[:, order]
        if bias is not None:
            weight = torch.cat([weight, bias.detach().to(device, torch.float32).unsqueeze(1)], 1)
        hessian = None  # H itself (another C²) only where it is read: asymmetric fits and whole rows
        if statistic.cross is not None:  # ‖W X − Ŵ X̂‖²: first the least-squares fit of the dense outputs
            hessian, cross = statistic.matrices(order, bias is not None)
            assert cross is not None
            weight = weight + (weight @ (cross - hessian)) @ factor.t() @ factor  # (ridge toward W)
            del cross
        alive = alive[:columns]
        frozen = ~current.reshape(shape[0], -1).to(device)
        if order is not None:
            frozen = frozen[:, order]
        selector: Any
        if mode == "runs":
            assert counts is not None
            kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
            selector = _Runs(layout, counts.to(device), kernel, shape[1], alive.float(), shape[0])
        elif mode == "fixed":
            pruned = ~chosen.reshape(shape[0], -1).to(device)
            selector = _Fixed(pruned if order is None else pruned[:, order])
        else:
            row_cost = None
            if mode == "rows":
                if hessian is None:
                    hessian = statistic.matrices(order, bias is not None)[0]
                live = weight[:, :columns]
                row_cost = ((live @ hessian[:columns, :columns]) * live).sum(1)
            selector = _Groups(pattern, shape, order, chosen.to(device), frozen, alive.float(), row_cost,
                               self.spec.rerank_every)
        del hessian
        if weight.untyped_storage().data_ptr() == orig.untyped_storage().data_ptr():
            weight = weight.clone()  # the layer's own weight (a pattern that may regrow, float32): not updated
        new = obs_prune(weight, factor, selector, self.spec.block_size, cuts, columns, owned=True)
        del weight
        values: dict[str, torch.Tensor] = {}
        if bias is not None:
            values["bias"] = new[:, columns].to(bias.device, bias.dtype)
            new = new[:, :columns]
        pruned = selector.pruned
        if order is not None:
            unordered = torch.empty_like(new)
            unordered[:, order] = new
            new = unordered
            flat = torch.empty_like(pruned)
            flat[:, order] = pruned
            pruned = flat
        keep = (~pruned).reshape(shape).to(orig.device)
        self.log.append({"module": layer.name, "columns": columns, "rows": shape[0], "samples": statistic.rows,
                         "hessian_bytes": 4 * factor.shape[1] ** 2, "mode": mode})
        values[layer.param_name] = new.reshape(shape).to(orig.device, orig.dtype)
        return keep, values
