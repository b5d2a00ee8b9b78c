"""Translators from the peer systems' formats and entry points (SparseML recipes, Neural Compressor)."""
