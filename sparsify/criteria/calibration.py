"""Forward-only calibration for the layer-wise criteria — now `sparsify.calibration.layer_inputs`.

This module keeps the old import path (``from sparsify.criteria.calibration import Calibration``) working; the
code lives in the calibration package beside the data it runs (`sparsify.calibration.layer_inputs`).
"""

from __future__ import annotations

from ..calibration.layer_inputs import MERGED_COLUMNS, Calibration, Stage, check_layer, input_columns

__all__ = ["MERGED_COLUMNS", "Calibration", "Stage", "check_layer", "input_columns"]
