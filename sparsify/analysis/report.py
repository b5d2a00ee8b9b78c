"""Core ML Tools' sparsity report (`Report`, `sparsity_summary`, `global_summary`), under its analysis name.

The report is what ``Pruner.report()`` returns, so it lives with the pruner (`sparsify.pruning.report`, as
Core ML Tools keeps it in its pruning utilities): the pruning machine imports nothing from `sparsify.analysis`,
and the analysis tools build on the machine. This module keeps the names importable from here.
"""

from __future__ import annotations

from ..pruning.report import TABLE_WIDTH, Report, global_summary, sparsity_summary

__all__ = ["TABLE_WIDTH", "Report", "global_summary", "sparsity_summary"]
