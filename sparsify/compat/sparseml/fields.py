"""Reading SparseML modifier fields: numbers, fractions, name lists, ``mask_type``, unknown keys.

Shared by the recipe reader and the AC/DC modifier; each error names the entry, the field and the value.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from ..plan import Origin, Structure

__all__ = ["check_keys", "fraction", "number", "structure", "tokens"]

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def number(value: Any, field: str, origin: Origin, *, integer: bool = False) -> float:
    """A YAML number; ``"1e-7"`` (a string to YAML 1.1, a number to YAML 1.2 and to users) counts."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise origin.error(f"{field}={value!r} is invalid: expected a finite number")
    if integer and float(value) != int(value):
        raise origin.error(f"{field}={value!r} is invalid: expected an integer")
    return int(value) if integer else float(value)


def fraction(value: Any, field: str, origin: Origin) -> float:
    value_ = number(value, field, origin)
    if not 0.0 <= value_ <= 1.0:
        raise origin.error(f"{field}={value_:g} is invalid: allowed 0 <= {field} <= 1")
    return value_


def tokens(value: Any, field: str, origin: Origin) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise origin.error(f"{field}={value!r} is invalid: expected a string or a list of strings")


def structure(mask_type: Any, origin: Origin, global_sparsity: bool) -> tuple[Structure, float | None]:
    """``mask_type`` → the structure, and the sparsity it fixes (N:M) or None."""
    if mask_type in (None, "unstructured"):
        return Structure(), None
    if mask_type == "block4" or mask_type == "block":
        return Structure("tile", tile="1x4", indivisible="error"), None
    if mask_type == "filter" or mask_type == "channel":
        return Structure("tile", tile="1xchannel", indivisible="error"), None
    if isinstance(mask_type, list):
        if len(mask_type) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in
                                          mask_type):
            raise origin.error(f"mask_type={mask_type!r} is invalid: a block is [out, in], two integers > 0")
        return Structure("tile", tile=f"{mask_type[0]}x{mask_type[1]}", indivisible="error"), None
    text = "2:4" if mask_type == "tensorrt" else mask_type
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text) if isinstance(text, str) else None
    if match:
        kept, size = int(match.group(1)), int(match.group(2))
        if not 0 < kept < size:
            raise origin.error(f"mask_type={mask_type!r} is invalid: SparseML's N:M keeps N of every M, 0 < N < M")
        if global_sparsity:
            logger.info("%s: N:M masks ignore global_sparsity (SparseML's rule)", origin)
        return Structure("n_m", n_m=(size - kept, size), indivisible="error"), (size - kept) / size
    raise origin.error(f"mask_type={mask_type!r} is invalid: allowed 'unstructured', 'block4', [out, in] blocks, "
                       f"'N:M' (N kept of every M) or 'tensorrt'")


def check_keys(fields: Mapping[str, Any], allowed: set[str], tag: str, origin: Origin) -> None:
    unknown = sorted(k for k in fields if k not in allowed)
    if unknown:
        raise origin.error(f"unknown key(s) {unknown} for {tag}: allowed keys are {', '.join(sorted(allowed))}")
