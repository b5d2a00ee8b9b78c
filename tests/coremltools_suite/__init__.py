"""Core ML Tools' own pruning tests, run against sparsify.

See `harness`; by hand: ``python tests/coremltools_suite``.
"""
