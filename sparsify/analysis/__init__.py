"""Analysis: sparsity and size reports, sensitivity scans, per-layer budgets (OWL's among them), perplexity and
pictures."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
