"""n:m — ``n`` zeros in every run of ``m`` consecutive weights along input (``dim=1``) or output (``dim=0``) channels.

**n counts the zeros**, as in Core ML Tools (``(2, 4)`` = 50 %, ``(3, 4)`` = 75 %). Neural Compressor's
``"2:4"`` means the same (2 pruned); SparseML's ``"3:4"`` means 3 *kept* — its reader converts.

Runs follow the layout channels-last sparse kernels use: a conv weight ``[Co, Ci, kh, kw]`` is viewed as
``[Co, kh, kw, Ci]`` and runs cover consecutive input channels at one kernel position. A trailing partial
run is padded with zeros, which count as the lowest scores, so it loses fewer real weights
(`n_m_zero_count` says how many).

Ramping up, one layer at a time (local scope), is Core ML Tools' rule: at sparsity ``s`` every run gets
``k = int(s · m)`` zeros, and while ``k == 0`` the layer is pruned unstructured at ``s``
(`scheduled_n_m_mask`). Ranked across layers (global scope), a run is a group that is either dense or
n:m-sparse, scored by the sum of its ``n`` lowest scores — what making it sparse costs — so pruning ``k``
weights makes the ``k / n`` cheapest runs sparse, as Neural Compressor does; that needs whole runs, so
the channel count must be a multiple of ``m`` there.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import attrs
import torch

from . import _select
from .base import ColumnLayout, Pattern, Shape, SkipWeight, Usage, kernel_major_order
from .coreml import CoreMLPattern, ranked_mask
from .ranking import rankable
from .registry import register_pattern
from .tiles import as_3d, dims, from_3d

__all__ = ["NMPattern", "n_m_from_string", "n_m_mask", "n_m_zero_count", "scheduled_n_m_mask"]

logger = logging.getLogger(__name__)

_N_M_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


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
    moved = rankable(scores).movedim(dim, -1)
    return _by_rows(moved, lambda rows: _run_mask(moved[rows], n, m)).movedim(-1, dim)


def _by_rows(view: torch.Tensor, piece: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``piece`` applied to slices of ``view``'s first dimension, about ``CHUNK`` elements at a time, stacked.

    Run-wise work (sorting every run of ``m``) allocates int64 indices and sorted copies: done piece by piece,
    they take a few pieces of memory instead of 12 bytes per weight.
    """
    rows = view.shape[0]
    if rows == 0:
        return piece(slice(0, 0))
    step = max(1, _select.CHUNK // max(math.prod(view.shape[1:]), 1))
    out = None
    for start in range(0, rows, step):
        part = piece(slice(start, start + step))
        if out is None:
            out = part.new_empty((rows, *part.shape[1:]))
        out[start : start + part.shape[0]] = part
    assert out is not None  # rows > 0: at least one piece
    return out


def _run_mask(block: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask of ``block`` (``[..., channels]``) zeroing the ``n`` lowest of every run of ``m`` channels."""
    channels = block.shape[-1]
    padded = torch.nn.functional.pad(block.reshape(-1, channels), (0, (-channels) % m))
    runs = padded.reshape(-1, m)
    mask = torch.ones_like(runs, dtype=torch.bool)
    if n:
        mask.scatter_(1, torch.argsort(runs, dim=1, stable=True)[:, :n], False)
    return mask.reshape(padded.shape)[:, :channels].reshape(block.shape)


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


@register_pattern
@attrs.frozen
class NMPattern(Pattern):
    """``n`` zeros in every ``m`` consecutive weights along input (``dim=1``) or output (``dim=0``) channels."""

    kind = "n_m"

    n: int
    m: int
    dim: int = 1
    #: ramp by whole runs in local scope too (Neural Compressor's ``"n:m"``), not Core ML Tools' k-per-run rule
    by_runs: bool = False

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.n < self.m:
            raise ValueError(
                f"n_m_ratio=({self.n}, {self.m}) is invalid: allowed 1 <= n < m, n being the number of ZEROS "
                f"in every m weights"
            )
        if self.dim not in (0, 1):
            raise ValueError(f"dim={self.dim!r} is invalid: allowed 0 (output channels) or 1 (input channels)")

    @property
    def max_sparsity(self) -> float:
        return self.n / self.m

    def describe(self) -> str:
        axis = "input" if self.dim == 1 else "output"
        return f"n:m {self.n} zeros of every {self.m} consecutive {axis}-channel weights ({self.n / self.m:.2%})"

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}" + (" dim 0" if self.dim == 0 else "")

    def record_fields(self) -> dict[str, Any]:
        return {"n_m_ratio": (self.n, self.m), "dim": self.dim}

    @property
    def may_regrow(self) -> bool:
        """The ramp's unstructured early phase can leave more than ``n`` zeros in a run: runs must keep exactly
        ``m - n`` weights, so masks are not ANDed with the previous ones."""
        return True

    @property
    def whole_groups(self) -> bool:
        return False

    @property
    def level_steps(self) -> int:
        return self.m

    def at_level(self, level: float) -> NMPattern:
        """``round(level · m)`` zeros of every ``m``, reached the Core ML Tools way (not by runs)."""
        return NMPattern(round(level * self.m), self.m, self.dim)

    def check(self, shape: Shape, where: str) -> None:
        if len(shape) < 2:
            raise ValueError(f"{where}: n_m_ratio needs a weight of rank >= 2, got shape {tuple(shape)}")

    def fit(self, shape: Shape, usage: Usage) -> Pattern:
        """Rank >= 2; whole runs where ranked globally (refused) or ramped by runs (skipped, as Neural Compressor
        does); warnings for a target above ``n / m`` and for partial runs, which reach less."""
        where = usage.where
        self.check(shape, where)
        if usage.target_sparsity is not None and usage.target_sparsity > self.max_sparsity + 1e-9:
            logger.warning("%s: target_sparsity=%g is more than n:m %d:%d can reach; pruned to %g", where,
                           usage.target_sparsity, self.n, self.m, self.max_sparsity)
        if self.by_runs:  # Neural Compressor's "n:m" skips a layer whose runs do not divide, as it does
            target = usage.target_sparsity if usage.target_sparsity is not None else self.max_sparsity
            try:
                self.check_whole_runs(shape, where, advice=(
                    f"at target_sparsity={target:g} (below {self.max_sparsity:g}) it makes that share of whole runs "
                    f"sparse, as Neural Compressor does; n_m_ratio={(self.n, self.m)} pads partial runs but always "
                    f"prunes {self.max_sparsity:g}"), spelled=usage.spelled)
            except ValueError as exc:
                raise SkipWeight(str(exc)) from exc
        if usage.scope == "global":
            self.check_whole_runs(shape, where, spelled=usage.spelled)
        achieved = n_m_zero_count(shape, (self.n, self.m), self.dim) / math.prod(shape)
        if achieved < self.max_sparsity - 1e-9:
            logger.warning(
                "%s: %d channels along dim=%d are not a multiple of m=%d, so n:m (%d, %d) reaches only %.4f sparsity "
                "instead of %.4f", where, shape[self.dim], self.dim, self.m, self.n, self.m,
                achieved, self.max_sparsity,
            )
        return self

    @property
    def counts_per_run(self) -> bool:
        return True

    def fresh_mask(self, shape: Shape, sparsity: float, device: torch.device) -> torch.Tensor | None:
        """At the full ``n / m`` on whole runs, `n_m_mask` zeroes ``n`` of every run whatever the scores: the first
        ``n`` here (a view of one run: no byte per weight). ``None`` below it (the ramp), with partial runs (zero
        scores there tie with the padding) and for Neural Compressor's ramp by runs."""
        if self.by_runs or sparsity < self.max_sparsity - 1e-12 or len(shape) < 2 or shape[self.dim] % self.m:
            return None
        moved = (*shape[: self.dim], *shape[self.dim + 1 :], shape[self.dim])
        first_n = torch.arange(shape[self.dim], device=device) % self.m >= self.n
        return first_n.expand(moved).movedim(-1, self.dim)

    def run_counts(self, chosen: torch.Tensor) -> torch.Tensor | None:
        """Zeros of the chosen weight-shaped keep-mask in every run (``[rows, runs]`` of the weight with ``dim``
        moved last, runs padded at the end), or ``None`` when the full runs do not all hold 0 or one same
        ``k > 0`` zeros (the unstructured ramp-up stage of a scheduled n:m, then re-selected unstructured)."""
        moved = (~chosen).movedim(self.dim, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        channels, m = rows.shape[-1], self.m
        if channels % m:
            rows = torch.nn.functional.pad(rows.to(torch.uint8), (0, (-channels) % m))
        counts = rows.reshape(rows.shape[0], -1, m).sum(-1)
        full = counts[:, : channels // m]
        most = int(full.amax()) if full.numel() else 0
        if most == 0:  # no full run has a zero: n:m only if no partial run has one either
            return counts if int(counts.sum()) == 0 else None
        # every full run holds 0 or the same k > 0 zeros: the smallest nonzero count is the largest
        return counts if int(full.masked_fill(full == 0, most).amin()) == most else None

    def reselect(
        self,
        scores: torch.Tensor,
        chosen: torch.Tensor,
        *,
        chosen_groups: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As many zeros in every run as ``chosen`` has (`run_counts`, or ``counts``), the lowest ``scores`` of the
        run (ties: the earlier first); unstructured when ``chosen`` is not n:m yet (the ramp-up stage)."""
        counts = self.run_counts(chosen) if counts is None else counts
        if counts is None:
            return CoreMLPattern().reselect(scores, chosen)
        moved = scores.movedim(self.dim, -1)
        shape = moved.shape
        rows = moved.reshape(-1, shape[-1])
        channels, m = rows.shape[-1], self.m
        padded = torch.nn.functional.pad(rows, (0, (-channels) % m), value=math.inf)
        runs = padded.reshape(rows.shape[0], -1, m)
        ranks = torch.argsort(torch.argsort(runs, dim=-1, stable=True), dim=-1)
        keep = ranks >= counts.unsqueeze(-1)
        return keep.reshape(rows.shape[0], -1)[:, :channels].reshape(shape).movedim(-1, self.dim)

    def column_layout(self, shape: Shape, chosen: torch.Tensor) -> ColumnLayout:
        """Runs decided as the column loop reaches them: along input channels, ``m`` consecutive columns in
        kernel-position-major order (blocks end on run edges); along output channels, within each column.
        Before the ramp is n:m (`run_counts` is ``None``), unstructured."""
        counts = self.run_counts(chosen)
        if counts is None:
            return ColumnLayout("groups", pattern=CoreMLPattern())
        if self.dim == 0:
            return ColumnLayout("runs", run_length=self.m, run_axis=0, run_counts=counts)
        channels, kernel = shape[1], math.prod(shape[2:])
        total = channels * kernel
        edges = sorted({k * channels + r for k in range(kernel + 1) for r in range(0, channels, self.m)} | {total})
        return ColumnLayout("runs", order=kernel_major_order(shape), edges=[c for c in edges if c <= total],
                            run_length=self.m, run_axis=1, run_counts=counts)

    def check_whole_runs(self, shape: Shape, where: str, advice: str | None = None, spelled: str | None = None) -> None:
        """Global ranking, and Neural Compressor's ramp by runs, need whole runs: the channel count along ``dim``
        must be a multiple of ``m``. ``advice`` replaces the global-scope advice (``scope='local'``); ``spelled``
        is the field as the user wrote it (default ``n_m_ratio=(n, m)``)."""
        co, _, ci = dims(shape)
        count = ci if self.dim == 1 else co
        if count % self.m:
            axis = "input" if self.dim == 1 else "output"
            needs = "ranked globally" if advice is None else "by whole runs"
            advice = advice or "use scope='local' (partial runs padded) or exclude this module"
            raise ValueError(
                f"{where}: {spelled or f'n_m_ratio=({self.n}, {self.m})'} {needs} needs the {axis} channels ({count}, "
                f"weight shape {tuple(shape)}) to be a multiple of m={self.m}; {advice}"
            )

    def local_mask(self, scores: torch.Tensor, sparsity: float, kept: torch.Tensor | None = None) -> torch.Tensor:
        if self.by_runs and sparsity < self.max_sparsity - 1e-12:
            return super().local_mask(scores, sparsity, kept)
        if sparsity >= self.max_sparsity - 1e-12:
            return n_m_mask(scores, (self.n, self.m), self.dim)
        return scheduled_n_m_mask(scores, sparsity, (self.n, self.m), self.dim)

    def _view(self, scores: torch.Tensor) -> torch.Tensor:
        """``[a, k, b]`` with the runs along ``b`` (`as_3d`, transposed for ``dim=0``): a view where it can be."""
        view = as_3d(scores)
        return view.transpose(0, 2) if self.dim == 0 else view

    def _runs(self, view: torch.Tensor) -> torch.Tensor:
        a, k, b = view.shape
        return view.reshape(a, k, b // self.m, self.m)

    def groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        view = self._view(rankable(scores))

        def lowest_sums(rows: slice) -> torch.Tensor:
            return torch.sort(self._runs(view[rows]), dim=-1, stable=True).values[..., : self.n].sum(-1)

        return _by_rows(view, lowest_sums), self.n

    def pruned_groups(self, kept: torch.Tensor) -> torch.Tensor:
        """Runs that already have ``n`` zeros (the sum of their ``n`` lowest 0/1 mask values is 0)."""
        gone = self._runs(self._view(~kept.bool()))
        return gone.sum(-1, dtype=torch.int32) >= self.n

    def weights_per_group(self, shape: Shape) -> int:
        return self.n

    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Element mask: runs not kept lose their ``n`` lowest weights."""
        view = self._view(rankable(scores))
        a, k, b = view.shape
        keep = keep.reshape(a, k, b // self.m)

        def run_masks(rows: slice) -> torch.Tensor:
            runs = self._runs(view[rows])
            sparse = torch.ones_like(runs, dtype=torch.bool)
            sparse.scatter_(-1, torch.argsort(runs, dim=-1, stable=True)[..., : self.n], False)
            return sparse.logical_or_(keep[rows].unsqueeze(-1)).reshape(runs.shape[0], runs.shape[1], -1)

        mask = _by_rows(view, run_masks)
        if self.dim == 0:
            mask = mask.transpose(0, 2)
        return from_3d(mask.contiguous(), scores.shape)


def n_m_from_string(text: str) -> tuple[int, int]:
    """Neural Compressor's ``"N:M"`` (N **pruned** of every M) → ``n_m_ratio=(N, M)``."""
    match = _N_M_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an INC n:m pattern: expected 'N:M' such as '2:4' (N zeros of every M)")
    n, m = int(match.group(1)), int(match.group(2))
    pattern = NMPattern(n, m)
    logger.info("INC pattern %r -> %s", text, pattern.describe())
    return (n, m)
