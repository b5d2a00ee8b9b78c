"""The pattern contract: which weights are pruned together, and how a keep-mask is stored.

A pattern turns element scores (one per weight, higher = keep) into **group scores** (one per prunable
group), and a keep decision per group back into a mask. The machine ranks groups either within one
layer (`Pattern.local_mask`) or across layers (`sparsify.scope.global_keep_masks` on
`Pattern.groups`), so a pattern never knows which scope or criterion it is used with.

Everything else the machine asks of a pattern is a method or property here, with a default that suits a pattern
whose groups are pruned whole: whether a weight of some shape can take it (`Pattern.fit`), its names
(`Pattern.describe`, `Pattern.label`) and the fields a pruned weight records (`Pattern.record_fields`), whether
masks may regrow between updates (`Pattern.may_regrow`), the levels it can reach (`Pattern.level_steps`), and
what the layer-wise criteria need to re-select its masks on calibration data (`Pattern.reselect`,
`Pattern.column_layout`, `Pattern.single_weights`). So nothing outside ``sparsify.patterns`` tests which pattern
class it holds, and a new pattern is one module: a class registered with
`sparsify.patterns.registry.register_pattern`.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import attrs
import torch

from .ranking import lowest, rank_keep

__all__ = ["ColumnLayout", "Pattern", "Shape", "SkipWeight", "Usage", "kernel_major_order"]

Shape = torch.Size | tuple[int, ...]


class SkipWeight(ValueError):
    """Raised by `Pattern.fit` for a weight the pattern cannot take that is left dense with a warning (as
    Neural Compressor skips a layer whose channels a tile does not divide); the message says why."""


@attrs.frozen
class Usage:
    """How a config uses a pattern on one weight: what `Pattern.fit` may need to validate it and to word its
    messages."""

    #: the module, for messages: ``"module 'fc' (Linear)"``
    where: str
    #: ``"local"`` (ranked alone) or ``"global"`` (ranked across layers)
    scope: str = "local"
    #: the ``target_sparsity`` the config asks for, or ``None`` where the pattern fixes the final level
    #: (``n_m_ratio``: always ``n / m``)
    target_sparsity: float | None = None
    #: how the config names the pattern (``"pattern='2:4'"``), ``None`` for Core ML Tools' fields
    spelled: str | None = None


@attrs.frozen(eq=False)
class ColumnLayout:
    """How a criterion that walks a weight's columns (SparseGPT: rows are outputs, columns the ``flatten(1)``
    columns of the ``[out, in, *kernel]`` weight) may re-select a pattern's mask.

    ``mode``:

    * ``"groups"`` — the whole layer is re-ranked through `Pattern.reselect` at each block of columns and the
      groups inside the block are fixed: every group must lie inside one block, so block edges may only fall
      on ``edges``;
    * ``"rows"`` — the groups are whole output rows (or sets of them): chosen once, by their exact cost;
    * ``"runs"`` — ``run_counts`` zeros in every run of ``run_length`` consecutive weights along
      ``run_axis`` (``1``: input channels, consecutive columns in processing order; ``0``: output channels,
      within each column), each run decided when the column loop reaches it;
    * ``"fixed"`` — the chosen mask is kept (with the weight update only).
    """

    mode: str
    #: the columns in processing order (``flatten(1)`` indices, int64, CPU), ``None``: ``flatten(1)`` order
    order: torch.Tensor | None = None
    #: where a block of columns may end (processing order, ending with the column count); ``None``: anywhere
    edges: list[int] | None = None
    #: the pattern to re-select with, when it is not the layer's own (n:m's unstructured ramp-up stage)
    pattern: Pattern | None = None
    #: ``"runs"``: the run length and axis, and the zeros of every run — ``[rows · kernel, runs]`` along input
    #: channels, ``[kernel · in, runs]`` along output channels (the weight with ``run_axis`` moved last,
    #: flattened to rows; partial runs padded)
    run_length: int = 0
    run_axis: int = 1
    run_counts: torch.Tensor | None = None

    def __attrs_post_init__(self) -> None:
        if self.mode not in ("groups", "rows", "runs", "fixed"):
            raise ValueError(f"ColumnLayout.mode={self.mode!r} is invalid: allowed 'groups', 'rows', 'runs', 'fixed'")
        if self.mode == "runs" and (self.run_counts is None or self.run_length < 1):
            raise ValueError("ColumnLayout(mode='runs') needs run_length >= 1 and run_counts")


def kernel_major_order(shape: Shape) -> torch.Tensor | None:
    """Processing order ``(kernel position, input channel)`` of a weight's ``flatten(1)`` columns (column
    ``ci·K + k`` at position ``k·Ci + ci``), so a run or tile of input channels at one kernel position is
    consecutive; ``None`` for a weight without kernel positions."""
    channels, kernel = shape[1], math.prod(shape[2:])
    if kernel <= 1:
        return None
    return torch.arange(channels * kernel).reshape(channels, kernel).t().reshape(-1)


class Pattern(abc.ABC):
    """Base class. Subclasses implement `groups`, `expand` and `describe`; the rest has defaults.

    A pattern registered with `register_pattern` has a ``kind`` and is an attrs class whose fields are its
    settings, so configs save it as ``{"kind": kind, **fields}`` (`as_dict`) and read it back.
    """

    #: the name `register_pattern` files the class under (``{"kind": ..., **fields}`` in configs)
    kind: ClassVar[str] = ""

    @property
    def max_sparsity(self) -> float:
        """The highest sparsity the pattern can reach on a layer (n:m stops at n/m)."""
        return 1.0

    def check(self, shape: Shape, where: str) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """Raise ``ValueError`` naming ``where`` if a weight of ``shape`` cannot take this pattern."""

    def fit(self, shape: Shape, usage: Usage) -> Pattern:
        """The pattern to apply to a weight of ``shape`` (``[out, in, *kernel]``) as ``usage`` says, checked.

        Raises `SkipWeight` to leave the weight dense with a warning, ``ValueError`` to refuse the config. The
        default runs `check`; Core ML Tools' channel granularities return per-scalar on a ``Linear``.
        """
        self.check(shape, usage.where)
        return self

    def mask_shape(self, shape: Shape) -> tuple[int, ...]:
        """The shape of the stored keep-mask (it broadcasts against the weight)."""
        return tuple(shape)

    @abc.abstractmethod
    def groups(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """``(group scores, weights per group)``: one score per group, and how many weights each stands
        for (an int for all, or a tensor of the group scores' shape)."""

    @abc.abstractmethod
    def expand(self, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The stored mask (`mask_shape`) from a keep decision per group (`groups`' shape); ``scores`` are
        the element scores the groups came from (n:m needs them to pick the zeros inside a run)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line description for logs, dry runs and reports."""

    # -- names and records -----------------------------------------------------------------------

    @property
    def label(self) -> str:
        """A short name for tables (`sparsify.dry_run`, `sparsify.model_report`): ``"4x1"``, ``"2:4"``,
        ``"unstructured"``. Default: the registered ``kind``."""
        return self.kind or type(self).__name__

    def as_dict(self) -> dict[str, Any]:
        """``{"kind": kind, **fields}`` in JSON / YAML types (tuples as lists), what configs save;
        `pattern_from_dict` reads it back."""
        if not self.kind or not attrs.has(type(self)):
            raise TypeError(f"{type(self).__name__} cannot be saved: register it with register_pattern (an attrs "
                            "class with a kind) or override as_dict")
        fields = attrs.asdict(self, recurse=False)  # type: ignore[arg-type]
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    def record_fields(self) -> dict[str, Any]:
        """What a pruned weight records of the pattern besides `describe` — on its mask hook (reports),
        in ``sparsity.json`` (`sparsify.from_pretrained_pruned` rebuilds the config from it). Core ML Tools'
        patterns record ``granularity`` / ``block_size``, n:m ``n_m_ratio`` / ``dim``, tiles ``tiles``; the
        default records the `label` as ``tiles`` (the reports' name) and the saved form as ``spec``."""
        return {"tiles": self.label, "spec": self.as_dict()}

    @property
    def config_text(self) -> str | None:
        """The string ``ModulePrunerConfig.pattern`` stores for this pattern (a tile's ``"4x1"``), so a config
        given the instance compares and saves as one given the string; ``None``: the config keeps the instance."""
        return None

    # -- what the machine and the criteria ask --------------------------------------------------

    @property
    def may_regrow(self) -> bool:
        """Whether a weight pruned at one update may come back at the next. The machine ANDs the new masks of
        a criterion whose masks only grow (M-FAC, the gradient family, the layer-wise ones) with the old ones;
        a pattern that needs weights back to stay itself (n:m: every run keeps ``m - n`` weights while the
        ramp moves from unstructured to n:m) says ``True`` here, and a regrown weight restarts from its
        trained value."""
        return False

    @property
    def whole_groups(self) -> bool:
        """Whether a pruned group loses every weight it stands for (`expand` zeroes it whole): what lets
        `reselect` re-rank the groups and keep the count. n:m prunes only part of a run: ``False``."""
        return True

    @property
    def single_weights(self) -> bool:
        """Whether every group is one weight (unstructured): layer-wise criteria then rank weights directly
        (SparseGPT only the undecided ones, Wanda within each output row)."""
        return False

    def fresh_count(self, shape: Shape, sparsity: float) -> int | None:
        """How many weights `local_mask` prunes at ``sparsity`` on a layer of ``shape`` with nothing pruned yet,
        whatever the scores — for single-weight patterns whose count depends on the level alone; ``None``
        (the default): it depends on the scores, or the pattern does not say."""
        return None

    @property
    def counts_per_run(self) -> bool:
        """Whether a mask is a count of zeros in every run of consecutive weights (n:m): a criterion that
        re-selects each run's zeros itself reads only those counts of the pattern's mask."""
        return False

    def fresh_mask(self, shape: Shape, sparsity: float, device: torch.device) -> torch.Tensor | None:
        """A keep-mask with as many zeros as `local_mask` gives at ``sparsity`` a layer of ``shape`` with nothing
        pruned yet, whatever the scores — in every group a `counts_per_run` pattern counts, or in all for a
        single-weight pattern (`fresh_count`: the first ones) — for a criterion that re-selects which weights
        from those counts alone; ``None``: the counts depend on the scores. Held through a whole layer-wise
        update for every layer, so a view of one flag per output channel where the count is whole channels
        (50 % of an even number of them): no byte per weight."""
        count = self.fresh_count(shape, sparsity)
        if count is None:
            return None
        per_channel = math.prod(shape[1:])
        if len(shape) > 1 and per_channel and count % per_channel == 0:
            channels = torch.arange(shape[0], device=device) >= count // per_channel
            return channels.reshape(-1, *[1] * (len(shape) - 1)).expand(shape)
        mask = torch.ones(math.prod(shape), dtype=torch.bool, device=device)
        mask[:count] = False
        return mask.reshape(shape)

    @property
    def level_steps(self) -> int | None:
        """The levels the pattern reaches on a layer are multiples of ``1 / level_steps`` (n:m: ``m``), so
        per-layer levels (`sparsify.prune`'s ``layer_levels="owl"``) are rounded to them; ``None``: any level."""
        return None

    def at_level(self, level: float) -> Pattern:
        """The pattern ending at ``level`` (a multiple of ``1 / level_steps``): n:m with another ``n``; the
        default is the pattern itself, the level being the config's ``target_sparsity``."""
        return self

    def reselect(
        self,
        scores: torch.Tensor,
        chosen: torch.Tensor,
        *,
        chosen_groups: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A weight-shaped keep-mask with the pattern and count of ``chosen``, ranked by ``scores``.

        ``scores`` are weight-shaped and non-negative, higher = keep; ``chosen`` is the weight-shaped keep-mask
        the pattern and scope chose. The default prunes as many groups as ``chosen`` does (a group standing
        for fewer weights — a partial block — keeps ``chosen``'s decision, so the count is exact); a pattern
        whose groups are not pruned whole keeps ``chosen``. ``chosen_groups`` (`pruned_groups` of ``chosen``)
        saves recomputing it; ``counts`` is the pattern's own per-run count (`ColumnLayout.run_counts`).
        """
        if not self.whole_groups:
            return chosen.clone()
        grouped, sizes = self.groups(scores)
        pruned_groups = self.pruned_groups(chosen) if chosen_groups is None else chosen_groups
        flat = grouped.reshape(-1).clone()
        if isinstance(sizes, torch.Tensor) and (sizes != sizes.max()).any():
            partial = (sizes != sizes.max()).reshape(-1)
            was_pruned = pruned_groups.reshape(-1)[partial]
            flat[partial] = torch.where(was_pruned, torch.full_like(flat[partial], -1.0),
                                        torch.full_like(flat[partial], math.inf))
        keep = ~lowest(flat, int(pruned_groups.sum())).reshape(grouped.shape)
        return self.expand(keep, scores).expand(scores.shape)

    def column_layout(self, shape: Shape, chosen: torch.Tensor) -> ColumnLayout:
        """How SparseGPT's column loop re-selects this pattern on a weight of ``shape`` whose chosen
        weight-shaped keep-mask is ``chosen`` (see `ColumnLayout`).

        The default, for a pattern whose groups are pruned whole, is ``"groups"`` in one block of every
        column (its groups may span any columns): the mask is re-selected once on the first saliencies, then
        the weights are updated column by column. A pattern that knows where its groups end gives ``edges``
        (finer blocks, each re-selected on the updated weights); one that is not pruned in whole groups is
        ``"fixed"``.
        """
        if not self.whole_groups:
            return ColumnLayout("fixed")
        return ColumnLayout("groups", edges=[math.prod(shape[1:])])

    # -- ranking ---------------------------------------------------------------------------------

    def local_mask(self, scores: torch.Tensor, sparsity: float, kept: torch.Tensor | None = None) -> torch.Tensor:
        """Keep-mask for one layer ranked alone at ``sparsity`` (see `sparsify.patterns.ranking`).

        ``kept`` (the current keep-mask, element shape) makes groups that are already pruned go first among
        equal scores, so a criterion whose masks only grow reaches its count without reviving anything.
        """
        grouped, sizes = self.groups(scores)
        first = self.pruned_groups(kept) if kept is not None else None
        keep = rank_keep(grouped, sizes, math.prod(scores.shape), sparsity, first)
        return self.expand(keep, scores)

    def pruned_groups(self, kept: torch.Tensor) -> torch.Tensor:
        """``True`` for the groups whose group score of the 0/1 ``kept`` mask is 0 (`groups`' shape).

        This default scores a float copy of the mask (4 bytes per weight); the patterns here override it with
        the same answer from ``bool`` reductions.
        """
        return self.groups(kept.float())[0] == 0

    def weights_per_group(self, shape: Shape) -> int:
        """How many weights pruning one (full) group zeroes — what global ranking counts."""
        _, sizes = self.groups(torch.zeros(tuple(shape)))
        return sizes if isinstance(sizes, int) else int(sizes.reshape(-1)[0])
