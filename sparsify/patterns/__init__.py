"""Patterns — which weights are pruned together?

Each pattern is one small class on the `Pattern` contract (element scores → group scores → keep-mask, plus
what the machine and the layer-wise criteria ask of it), registered by ``kind`` with `register_pattern`:
Core ML Tools' granularities and output-channel blocks (`CoreMLPattern`, ``"coreml"``), n:m runs
(`NMPattern`, ``"n_m"``) and Neural Compressor's NxM tiles (`TilePattern`, ``"tiles"``). All of them rank
through `sparsify.patterns.ranking`, the one counting rule, and every pattern works with every criterion,
scope and schedule.
"""

from .base import ColumnLayout, Pattern, SkipWeight, Usage, kernel_major_order
from .coreml import GRANULARITIES, CoreMLPattern, group_scores, magnitude_ranked_mask, mask_shape, ranked_mask
from .n_m import NMPattern, n_m_from_string, n_m_mask, n_m_zero_count, scheduled_n_m_mask
from .ranking import keep_count, lowest, lowest_per_span, pruned_count, rank_keep, rankable
from .registry import pattern_from_dict, pattern_kinds, register_pattern
from .tiles import TilePattern, as_3d, from_3d, parse_pattern

__all__ = [
    "GRANULARITIES",
    "ColumnLayout",
    "CoreMLPattern",
    "NMPattern",
    "Pattern",
    "SkipWeight",
    "TilePattern",
    "Usage",
    "as_3d",
    "from_3d",
    "group_scores",
    "keep_count",
    "kernel_major_order",
    "lowest",
    "lowest_per_span",
    "magnitude_ranked_mask",
    "mask_shape",
    "n_m_from_string",
    "n_m_mask",
    "n_m_zero_count",
    "parse_pattern",
    "pattern_from_dict",
    "pattern_kinds",
    "pruned_count",
    "rank_keep",
    "rankable",
    "ranked_mask",
    "register_pattern",
    "scheduled_n_m_mask",
]
