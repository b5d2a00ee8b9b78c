"""Forward-pass plumbing of the layer-wise calibration — now `sparsify.calibration.passes`.

This module keeps the old import path (``from sparsify.criteria._passes import StopForward``) working.
"""

from __future__ import annotations

from ..calibration.passes import (
    MaskedWeight,
    Replacements,
    StopForward,
    bind,
    columns_size,
    evaluating,
    merged,
    swapped,
)

__all__ = ["MaskedWeight", "Replacements", "StopForward", "bind", "columns_size", "evaluating", "merged", "swapped"]
