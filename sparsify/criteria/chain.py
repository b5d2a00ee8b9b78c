"""Block chains of the layer-wise calibration — now `sparsify.calibration.chain`.

This module keeps the old import path (``from sparsify.criteria.chain import ChainProbe``) working.
"""

from __future__ import annotations

from ..calibration.chain import BlockInputs, Chain, ChainProbe

__all__ = ["BlockInputs", "Chain", "ChainProbe"]
