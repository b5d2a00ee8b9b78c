"""Alias of Core ML Tools' ``coremltools.optimize.torch.pruning.pruning_scheduler`` module path."""

from .schedules import ConstantSparsityScheduler, PolynomialDecayScheduler, PruningScheduler

__all__ = ["ConstantSparsityScheduler", "PolynomialDecayScheduler", "PruningScheduler"]
