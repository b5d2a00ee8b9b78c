"""The machine: `Pruner` (plan → masks → schedule → finalize), its Core ML Tools preset `MagnitudePruner`,
the one-call `prune`, and `dry_run` to see what a config would do."""

from .dry_run import dry_run
from .metadata import register_coreml_metadata
from .plan import Target, classifier_head_name
from .presets import MagnitudePruner, prune
from .pruner import Pruner
from .resume import from_pretrained_pruned

__all__ = [
    "MagnitudePruner", "Pruner", "Target", "classifier_head_name", "dry_run", "from_pretrained_pruned", "prune",
    "register_coreml_metadata",
]
