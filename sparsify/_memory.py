"""Giving freed heap memory back to the operating system between large steps.

glibc serves a freed large tensor's memory to later, smaller allocations from its heap, and it raises its
``mmap`` threshold after the first large free, so a loop that allocates and frees matrices of a few MiB each
(SparseGPT's Hessians and factors, one layer after the other) grows the resident set well past what is live at
any time: 140 MiB more than the live peak for one decoder block of the 119 M-parameter Llama in
``benchmarks/streaming_memory.py``. ``malloc_trim(0)`` returns every free page of the heap (glibc 2.8 and
later); it takes about a millisecond, so it is called between layers, not inside them. Elsewhere (macOS, musl)
`release_freed_memory` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["release_freed_memory"]

_TRIM: Any = None


def _load() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False


def release_freed_memory() -> None:
    """``malloc_trim(0)`` where the C library has it (see the module docs)."""
    global _TRIM
    if _TRIM is None:
        _TRIM = _load()
    if _TRIM:
        _TRIM(0)
