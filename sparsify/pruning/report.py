"""Sparsity reports in Core ML Tools' format.

`Report` is a dict ``{module name: {metric: value}}`` plus a ``"global"`` row, printed as the
same right-aligned table Core ML Tools prints. The metrics keep Core ML Tools' names and
definitions (``coremltools/optimize/torch/pruning/_utils.py``: ``structured_sparsity``,
``unstructured_sparsity``, ``block2_sparsity``), with the weight viewed as ``[C_out, K]``
(``K`` = everything after the output channel):

* ``#params`` — number of elements of the pruned parameter;
* ``unstructured_weight_sparsity`` — fraction of zero elements;
* ``structured_weight_sparsity`` — fraction of output channels (rows) that are entirely zero;
* ``block2_weight_sparsity`` — fraction of 2x1 blocks that are zero, a block being the two weights at
  the same position ``k`` of output channels ``2i`` and ``2i + 1`` (there are ``C_out / 2 * K``
  blocks); ``-1`` when ``C_out`` is odd. This is what ``block_size=2`` pruning produces, so a layer
  pruned to 0.5 with ``block_size=2`` reads 0.5. It is *not* "pairs of channels entirely zero".

Worked example, ``C_out = 4``, ``K = 3``::

    [[0, 1, 0],     rows 0-1: blocks (0,0) (1,2) (0,3) -> 1 zero block
     [0, 2, 3],
     [4, 0, 0],     rows 2-3: blocks (4,0) (0,0) (0,5) -> 1 zero block
     [0, 0, 5]]     block2 = 2 / 6 = 1/3; structured = 0 / 4; unstructured = 7 / 12

Unlike Core ML Tools, a row or block counts as zero only when all its *magnitudes* are zero: Core ML
Tools sums signed values, so a row ``[1, -1]`` (or a block ``(1, -1)``) counts as pruned. The two
agree whenever the zeros come from a mask.
"""

from __future__ import annotations

from collections import UserDict
from collections.abc import Iterable

import torch

from .._table import text_table

__all__ = ["Report", "global_summary", "sparsity_summary"]

SPARSITY_METRICS = ("structured_weight_sparsity", "unstructured_weight_sparsity", "block2_weight_sparsity")


def sparsity_summary(weight: torch.Tensor) -> dict[str, float]:
    """Core ML Tools' three sparsity metrics for one weight tensor (see the module docstring).

    1-D weights (a bias) count each element as a channel, where Core ML Tools' report crashes.
    """
    weight = weight.detach()
    rows = weight.abs().reshape(weight.shape[0], -1) if weight.dim() > 0 else weight.abs().reshape(1, 1)
    row_is_zero = rows.sum(1) == 0
    summary = {
        "structured_weight_sparsity": row_is_zero.float().mean().item(),
        "unstructured_weight_sparsity": (weight == 0).float().mean().item(),
    }
    if rows.shape[0] % 2 == 0:
        # [C_out, K] -> [C_out/2, 2, K]: the pair axis is summed, leaving one entry per 2x1 block
        block_is_zero = rows.reshape(rows.shape[0] // 2, 2, -1).sum(1) == 0
        summary["block2_weight_sparsity"] = block_is_zero.float().mean().item()
    else:
        summary["block2_weight_sparsity"] = -1
    return summary


def global_summary(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Parameter-weighted mean of each metric over the rows where it applies (``-1`` if nowhere)."""
    rows = list(rows)
    total = sum(int(r["#params"]) for r in rows)
    summary: dict[str, float] = {"#params": total}
    for metric in SPARSITY_METRICS:
        applicable = [(r["#params"], r[metric]) for r in rows if r[metric] >= 0]
        if not applicable:
            summary[metric] = -1
        else:
            weight = sum(n for n, _ in applicable)
            summary[metric] = sum(n * v for n, v in applicable) / weight
    return summary


def _cell(value: object) -> str:
    return f"{value:.5f}" if isinstance(value, float) else str(value)


TABLE_WIDTH = 100
"""Widest line `Report` prints: longer headers are split over two lines to stay within it."""


def _split_header(header: str) -> tuple[str, str]:
    """Split at the ``_`` or space nearest the middle (kept at the end of the first line); ``("", header)``
    when there is none."""
    cuts = [i for i, char in enumerate(header) if char in "_ "]
    if not cuts:
        return "", header
    cut = min(cuts, key=lambda i: abs(2 * i + 1 - len(header))) + 1
    return header[:cut].rstrip(), header[cut:]


def _render(header_lines: list[list[str]], rows: list[list[str]]) -> list[str]:
    return text_table(header_lines, rows, sep=" | ", strip=False)  # Core ML Tools' layout, right-aligned


class Report(UserDict):
    """A dict of per-module statistics that prints as Core ML Tools' table — with headers split over two
    lines when one line would be wider than `TABLE_WIDTH` (Core ML Tools' own report is 101 columns wide)."""

    def __repr__(self) -> str:
        if not self.data:
            return ""
        columns = ["name", *next(iter(self.data.values())).keys()]
        rows = [[str(name)] + [_cell(row[c]) for c in columns[1:]] for name, row in self.data.items()]
        lines = _render([columns], rows)
        if max(map(len, lines)) > TABLE_WIDTH:
            narrow = _render([list(line) for line in zip(*map(_split_header, columns))], rows)
            if max(map(len, narrow)) < max(map(len, lines)):
                lines = narrow
        return "\n".join(lines)

    __str__ = __repr__
