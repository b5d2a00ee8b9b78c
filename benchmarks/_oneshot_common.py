"""What the two one-shot benchmarks (`oneshot_compare.py`, `oneshot_transformer.py`) share."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

CACHE = Path(os.environ.get("SPARSIFY_BENCH_CACHE", "/tmp/sparsify-bench"))
"""Where trained models are kept between runs (the first run trains them)."""


def quiet_coremltools() -> None:
    """Core ML Tools gives its loggers their own INFO level: set each to ERROR."""
    for module in ("coremltools.optimize.torch.layerwise_compression", "coremltools.optimize.torch.pruning"):
        importlib.import_module(module)  # creates the loggers
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("coremltools"):
            logging.getLogger(name).setLevel(logging.ERROR)
