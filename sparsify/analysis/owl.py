"""OWL's levels live in `sparsify.pruning.owl` (``prune(..., layer_levels="owl")`` uses them, and the pruning
machine imports nothing from `sparsify.analysis`); this module keeps ``sparsify.analysis.owl`` importable."""

from ..pruning.owl import OWLLevels, block_of, nm_counts, outlier_ratio, owl_levels, owl_spread

__all__ = ["OWLLevels", "block_of", "nm_counts", "outlier_ratio", "owl_levels", "owl_spread"]
