"""Streaming layer-wise pruning of Hugging Face checkpoints bigger than memory (`prune_pretrained`)."""

from __future__ import annotations

from .pretrained import SPARSITY_FILE, BlockResult, prune_pretrained

__all__ = ["SPARSITY_FILE", "BlockResult", "prune_pretrained"]
