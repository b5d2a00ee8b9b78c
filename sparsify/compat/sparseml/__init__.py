"""SparseML recipes (temporary: the legacy reader while the plan-based one is built)."""

from .legacy import *  # noqa: F403
from .legacy import __all__  # noqa: F401
