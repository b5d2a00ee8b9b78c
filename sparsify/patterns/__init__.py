"""Patterns — which weights are pruned together?

Each pattern is one small class on the `Pattern` contract (element scores → group scores → keep-mask):
Core ML Tools' granularities and output-channel blocks (`CoreMLPattern`), n:m runs (`NMPattern`) and
Neural Compressor's NxM tiles (`TilePattern`). All of them rank through `sparsify.patterns.ranking`, the
one counting rule, and every pattern works with every criterion, scope and schedule.
"""

from .base import Pattern
from .coreml import GRANULARITIES, CoreMLPattern, group_scores, magnitude_ranked_mask, mask_shape, ranked_mask
from .n_m import NMPattern, n_m_from_string, n_m_mask, n_m_zero_count, scheduled_n_m_mask
from .ranking import keep_count, lowest, pruned_count, rank_keep, rankable
from .tiles import TilePattern, as_3d, from_3d, parse_pattern

__all__ = [
    "GRANULARITIES",
    "CoreMLPattern",
    "NMPattern",
    "Pattern",
    "TilePattern",
    "as_3d",
    "from_3d",
    "group_scores",
    "keep_count",
    "lowest",
    "magnitude_ranked_mask",
    "mask_shape",
    "n_m_from_string",
    "n_m_mask",
    "n_m_zero_count",
    "parse_pattern",
    "pruned_count",
    "rank_keep",
    "rankable",
    "ranked_mask",
    "scheduled_n_m_mask",
]
