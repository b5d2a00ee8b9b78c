"""Criteria — how important is each weight?

One module per criterion on the `Criterion` / `Scorer` contract (`sparsify.criteria.base`): magnitude
(Core ML Tools'), the gradient family of Neural Compressor (``gradient``, ``snip``, ``snip_momentum``) and
second-order M-FAC, and the layer-wise SparseGPT and Wanda. Data-dependent criteria read gradients from the
training loop or from a `GradSampler`; the layer-wise ones run it forward only, layer by layer.
"""

from .base import (
    Criterion,
    PrunerView,
    Scorer,
    TargetView,
    criterion_from_dict,
    criterion_kinds,
    register_criterion,
    scorers_by_spec,
)
from .gradient import GradientCriterion, SnipCriterion, SnipMomentumCriterion
from .magnitude import MagnitudeCriterion
from .mfac import MFACCriterion
from .sampler import CalibrationData, GradSampler, NotEnoughDataError, as_calibration_data, as_grad_sampler
from .sparsegpt import SparseGPTCriterion
from .wanda import WandaCriterion

__all__ = [
    "CalibrationData",
    "Criterion",
    "GradSampler",
    "GradientCriterion",
    "MFACCriterion",
    "MagnitudeCriterion",
    "NotEnoughDataError",
    "PrunerView",
    "Scorer",
    "SnipCriterion",
    "SnipMomentumCriterion",
    "SparseGPTCriterion",
    "TargetView",
    "WandaCriterion",
    "as_calibration_data",
    "as_grad_sampler",
    "criterion_from_dict",
    "criterion_kinds",
    "register_criterion",
    "scorers_by_spec",
]
