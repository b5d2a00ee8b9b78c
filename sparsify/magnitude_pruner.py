"""Alias of Core ML Tools' ``coremltools.optimize.torch.pruning.magnitude_pruner`` module path.

Lets ``from coremltools.optimize.torch.pruning.magnitude_pruner import MagnitudePruner`` become
``from sparsify.magnitude_pruner import MagnitudePruner``.
"""

from .config import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from .pruning import MagnitudePruner

__all__ = ["MagnitudePruner", "MagnitudePrunerConfig", "ModuleMagnitudePrunerConfig"]
