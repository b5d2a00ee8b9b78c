"""Giving freed heap memory back to the operating system between large steps.

glibc serves a freed large tensor's memory to later, smaller allocations from its heap, and it raises its
``mmap`` threshold after the first large free, so a loop that allocates and frees matrices of a few MiB each
(SparseGPT's Hessians and factors, one layer after the other) grows the resident set well past what is live at
any time: 140 MiB more than the live peak for one decoder block of the 119 M-parameter Llama in
``benchmarks/streaming_memory.py``. ``malloc_trim(0)`` returns every free page of the heap (glibc 2.8 and
later); it takes about a millisecond, so it is called between layers, not inside them. Elsewhere (macOS, musl)
`release_freed_memory` does nothing.

Inside a layer, the same reuse keeps the temporaries of one step (a Hessian's factorisation, the column
loop's buffers) resident through the next: `large_allocations_unmapped` fixes glibc's ``mmap`` threshold at
1 MiB for a block of work, so every larger allocation the heap cannot serve from memory it already holds free
is its own mapping, returned to the system when freed
(the streaming benchmark's peak fell from 0.90× to 0.71× of the model's float32 bytes with the same setting
given as ``MALLOC_MMAP_THRESHOLD_``). glibc cannot go back to its adaptive threshold, so on leaving it is set
to 32 MiB, the adaptive threshold's own ceiling; a threshold the user set in ``MALLOC_MMAP_THRESHOLD_`` is left
alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["large_allocations_unmapped", "release_freed_memory"]

_TRIM: Any = None
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_ADAPTIVE_CEILING = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc


def _load(symbol: str = "malloc_trim") -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return getattr(ctypes.CDLL(name), symbol)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def large_allocations_unmapped(threshold: int = 2**20) -> Iterator[None]:
    """While inside, glibc maps every allocation above ``threshold`` bytes on its own (see the module docs)."""
    mallopt: Any = False if "MALLOC_MMAP_THRESHOLD_" in os.environ else _load("mallopt")
    if mallopt:
        mallopt(_M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if mallopt:
            mallopt(_M_MMAP_THRESHOLD, _ADAPTIVE_CEILING)


def release_freed_memory() -> None:
    """``malloc_trim(0)`` where the C library has it (see the module docs)."""
    global _TRIM
    if _TRIM is None:
        _TRIM = _load()
    if _TRIM:
        _TRIM(0)
