"""The demo that `sparsify demo` runs: bundled datasets and small models (not needed to prune)."""
