"""The one table renderer: every text table sparsify prints goes through `text_table` or `markdown_table`.

`Pruner.report()` (`sparsify.pruning.report`), ``dry_run`` (`sparsify.pruning.dry_run`), the model report
(`sparsify.analysis.layer_report`), sensitivity scans and budgets differ only in their separator (Core ML
Tools' report uses ``" | "``, the others two spaces), which columns are left-aligned, where a rule goes (under
the header; before a totals row) and whether header cells span two lines — so those are the parameters,
and column widths, padding and rules are computed in one place. A leaf module: both `sparsify.pruning` and
`sparsify.analysis` import it, and it imports nothing of sparsify's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["markdown_table", "text_table"]


def _widths(table: Sequence[Sequence[str]]) -> list[int]:
    return [max(map(len, column)) for column in zip(*table)]


def text_table(
    header: Sequence[Sequence[str]],
    rows: Sequence[Sequence[str]],
    *,
    left: int = 0,
    sep: str = "  ",
    rule_sep: str | None = None,
    rules_before: Collection[int] = (),
    columns: Sequence[int] | None = None,
    strip: bool = True,
) -> list[str]:
    """Aligned lines: the header lines, a rule of dashes, the rows.

    Args:
        header: one or more header lines (a header cell split over two lines is two lines).
        rows: the cells, as strings.
        left: the first ``left`` columns are left-aligned, the others right-aligned (numbers).
        sep: between cells; ``rule_sep`` between the rule's dashes (default ``sep``).
        rules_before: indices of rows that get a rule above them too (a totals row: ``[len(rows) - 1]``).
        columns: print only these columns (widths are still those of the whole table, so two parts of one
            table line up).
        strip: drop trailing spaces from each line.
    """
    widths = _widths([*header, *rows])
    shown = range(len(widths)) if columns is None else columns

    def line(cells: Sequence[str]) -> str:
        text = sep.join(cells[i].ljust(widths[i]) if i < left else cells[i].rjust(widths[i]) for i in shown)
        return text.rstrip() if strip else text

    rule = (sep if rule_sep is None else rule_sep).join("-" * widths[i] for i in shown)
    lines = [line(cells) for cells in header]
    lines.append(rule)
    for index, cells in enumerate(rows):
        if index in rules_before:
            lines.append(rule)
        lines.append(line(cells))
    return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> list[str]:
    """A Markdown table: the first ``left`` columns left-aligned (``---``), the others right (``---:``)."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in [header, align, *rows]]
