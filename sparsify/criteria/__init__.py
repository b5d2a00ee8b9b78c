"""Criteria — how important is each weight?

One module per criterion on the `Criterion` / `Scorer` contract (`sparsify.criteria.base`): magnitude
(Core ML Tools'), the gradient family of Neural Compressor (``gradient``, ``snip``, ``snip_momentum``) and
second-order M-FAC. Data-dependent criteria read gradients from the training loop or from a `GradSampler`.
"""

from .base import Criterion, PrunerView, Scorer, TargetView, criterion_from_dict, criterion_kinds, register_criterion
from .gradient import GradientCriterion, SnipCriterion, SnipMomentumCriterion
from .magnitude import MagnitudeCriterion
from .mfac import MFACCriterion
from .sampler import GradSampler, NotEnoughDataError, as_grad_sampler

__all__ = [
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
    "TargetView",
    "as_grad_sampler",
    "criterion_from_dict",
    "criterion_kinds",
    "register_criterion",
]
