"""Intel Neural Compressor pruning configs (temporary: the legacy translator while the plan-based one is built)."""

from .legacy import INC_DEFAULTS, from_inc_config, load_inc_config

__all__ = ["INC_DEFAULTS", "from_inc_config", "load_inc_config"]
