"""Intel Neural Compressor pruning configs on the one machine.

Every INC form — 2.x ``WeightPruningConfig`` (a dict, a YAML file, or `WeightPruningConfig`), the 1.x
PyTorch pruner and legacy YAML with ``!Pruner`` entries — is read by `read_inc_config` into a plan with INC's
own rules, and `from_inc_config` turns it into one `sparsify.PrunerConfig` with an entry per INC pruner.
`sparsify.compat.inc_callbacks` has INC's entry points (``prepare_compression``, ``prepare_pruning``). See
``docs/inc.md`` and ``docs/recipes.md``.
"""

from .config import WeightPruningConfig, from_inc_config, inc_plan
from .reader import INC_DEFAULTS, read_inc_config, read_inc_data

__all__ = ["INC_DEFAULTS", "WeightPruningConfig", "from_inc_config", "inc_plan", "read_inc_config", "read_inc_data"]
