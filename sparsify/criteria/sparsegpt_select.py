"""SparseGPT's selectors: which weights its column loop (`sparsify.criteria.sparsegpt.obs_prune`) prunes.

A selector holds ``pruned`` (the layer's columns in processing order) and is asked at each block
(``block(start, stop, weight, diag)``) and, when ``per_column``, at each column (``column(j, start, block, diag)``,
returning the end of the columns it has just decided): `Groups` re-ranks element / block / tile / channel
patterns through the pattern, `Runs` decides n:m runs as the loop reaches them, `Fixed` keeps a chosen mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..patterns import ColumnLayout, Pattern, lowest, lowest_per_span
from .layerwise import encode, reselect

__all__ = ["Fixed", "Groups", "Runs", "lowest_in_runs"]


class Groups:
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


class Runs:
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
            self.pruned[:, j:stop] = lowest_in_runs(saliency, count).t()
            return stop
        # dim=0: runs of m consecutive rows in column j; counts are [(kernel·Ci), row runs] over columns
        saliency = block[j - start].square() * self.alive[j]
        padded = torch.nn.functional.pad(saliency, (0, (-rows) % self.m), value=math.inf).reshape(-1, self.m)
        chosen = lowest_in_runs(padded.t(), self.counts[j]).t()
        self.pruned[:, j] = chosen.reshape(-1)[:rows]
        return j + 1


#: runs up to this long are ranked by comparing every pair of their positions, longer ones by sorting
_PAIRWISE_RUN = 8


def lowest_in_runs(saliency: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
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


class Fixed:
    """A pattern sparsify cannot re-select: the chosen mask, with the OBS update."""

    per_column = False

    def __init__(self, pruned: torch.Tensor) -> None:
        self.pruned = pruned

    def block(self, *_: Any) -> None:
        pass

    def column(self, *_: Any) -> int | None:
        return None
