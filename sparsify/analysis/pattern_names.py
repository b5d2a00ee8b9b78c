"""Name a weight's sparsity pattern: read from a pruner's settings, or inferred from where the zeros are.

One vocabulary for both, so a prepared model (read from its hooks), its finalized copy (inferred) and
a config give the same name:

* ``"dense"`` (no zero), ``"unstructured"``;
* ``"per_channel"`` (whole output channels; the engine's ``"1xchannel"`` tile), ``"channelx1"``
  (whole input channels, every kernel position), ``"per_kernel"`` (whole kernels);
* ``"block N"`` — tiles of ``N`` output channels × 1 input channel at each kernel position: Core ML
  Tools' ``block_size=N`` and the engine's ``"Nx1"`` tile, the same mask;
* ``"NxM"`` with ``M > 1`` — tiles of ``N`` output × ``M`` input channels at each kernel position
  (``"1x4"``, ``"2x2"``, ...), the engine's tile patterns (`sparsify.tiles`' layout: a conv weight
  ``[Co, Ci, kh, kw]`` is viewed as ``[Co, kh·kw, Ci]``);
* ``"n:m"`` — ``n`` zeros in every run of ``m`` along input channels (``"n:m dim 0"``: output channels).

Inference tries tile sizes 16, 8, 4 and 2 along each axis and reports the largest tile the zeros are
constant on; a tile is reported only when it is larger than one weight, and the last, partial tile
of an axis must be constant too (Core ML Tools pads output channels to a multiple of the block).
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["describe_pattern", "infer_pattern", "tile_name"]

_TILE_SIZES = (16, 8, 4, 2)
_TILE_RE = re.compile(r"^(?:tile_pattern_)?(\d+|channel)x(\d+|channel)$")
_N_M_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def tile_name(out_size: int, in_size: int) -> str:
    """The name of ``out_size`` × ``in_size`` tiles (``"block N"`` when ``in_size`` is 1)."""
    if in_size == 1:
        return "unstructured" if out_size == 1 else f"block {out_size}"
    return f"{out_size}x{in_size}"


def describe_pattern(n_m_ratio: Any = None, block_size: int = 1, granularity: str | None = "per_scalar",
                     dim: int = 1, pattern: Any = None) -> str:
    """The name of the pattern a pruner is configured with (Core ML fields, or the engine's ``pattern``)."""
    if pattern is not None:
        text = str(getattr(pattern, "label", pattern)).strip()  # a Pattern instance: its short name
        tile, n_m = _TILE_RE.match(text), _N_M_RE.match(text)
        if tile is not None:
            out, inn = tile.groups()
            if out == "1" and inn == "channel":
                return "per_channel"
            if "channel" in (out, inn):
                return f"{out}x{inn}"
            return tile_name(int(out), int(inn))
        if n_m is not None:
            return f"{n_m.group(1)}:{n_m.group(2)}" + (" dim 0" if dim == 0 else "")
        return text
    if n_m_ratio is not None:
        n, m = n_m_ratio
        return f"{n}:{m}" + (" dim 0" if dim == 0 else "")
    parts = [] if granularity in (None, "per_scalar") else [str(granularity)]
    if block_size and block_size > 1:
        parts.append(f"block {block_size}")
    return ", ".join(parts) or "unstructured"


def _as_3d(zero: torch.Tensor) -> torch.Tensor:
    """``[Co, Ci]`` → ``[Co, 1, Ci]``; ``[Co, Ci, *kernel]`` → ``[Co, prod(kernel), Ci]``."""
    if zero.dim() == 2:
        return zero.unsqueeze(1)
    return zero.movedim(1, -1).reshape(zero.shape[0], -1, zero.shape[1])


def _constant_in_runs(zero: torch.Tensor, run: int) -> bool:
    """Whether ``zero`` is constant within every aligned run of ``run`` entries along dim 0 (the last,
    partial run included)."""
    length = zero.shape[0]
    full = length - length % run
    head = zero[:full].reshape(full // run, run, *zero.shape[1:])
    tail = zero[full:]
    return bool((head == head[:, :1]).all()) and bool((tail == tail[:1]).all())


def _largest_run(zero: torch.Tensor, axis: int) -> int:
    moved = zero.movedim(axis, 0)
    for run in _TILE_SIZES:
        if moved.shape[0] >= run and _constant_in_runs(moved, run):
            return run
    return 1


def infer_pattern(weight: torch.Tensor) -> str:
    """Name the sparsity pattern of ``weight`` from where its zeros are (see the module docstring).

    In order: ``"dense"``, ``"per_channel"``, ``"channelx1"``, ``"per_kernel"``, tiles (``"block N"``,
    ``"NxM"``), ``"n:m"`` (smallest ``m`` of 2/4/8/16 first, input channels before output channels),
    else ``"unstructured"``.
    """
    zero = weight.detach() == 0
    zeros = int(zero.sum())
    if zeros == 0:
        return "dense"
    if weight.dim() < 2:
        return "unstructured"
    rows = zero.reshape(zero.shape[0], -1)
    if zero.all() or int(rows.all(1).sum()) * rows.shape[1] == zeros:
        return "per_channel"
    view = _as_3d(zero)
    if int(view.all(0).all(0).sum()) * view.shape[0] * view.shape[1] == zeros:
        return "channelx1"
    if weight.dim() >= 3 and view.shape[1] > 1:  # a 1x1 kernel is a single weight: nothing to say
        kernels = zero.flatten(2)
        if int(kernels.all(2).sum()) * kernels.shape[2] == zeros:
            return "per_kernel"
    out_size, in_size = _largest_run(view, 0), _largest_run(view, 2)
    if out_size > 1 or in_size > 1:
        return tile_name(out_size, in_size)
    for dim in (1, 0):
        moved = zero.movedim(dim, -1)
        channels = moved.shape[-1]
        for m in (2, 4, 8, 16):
            if channels < m:
                break
            runs = moved[..., : channels - channels % m].reshape(-1, m).sum(1)
            n = int(runs[0])
            if 0 < n < m and bool((runs == n).all()):
                return f"{n}:{m}" + (" dim 0" if dim == 0 else "")
    return "unstructured"
