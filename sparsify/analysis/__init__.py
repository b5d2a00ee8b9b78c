"""Analysis: sparsity and size reports, sensitivity scans, per-layer budgets and pictures."""
