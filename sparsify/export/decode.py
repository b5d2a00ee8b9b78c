"""Decode a weight of an ML Program back to dense values, from the stored blobs alone.

Handled: plain ``const``; ``constexpr_sparse_to_dense`` (iOS16+) on its own or fed by iOS18's
``constexpr_lut_to_sparse`` (sparse + palettized) or ``constexpr_sparse_blockwise_shift_scale``
(sparse + quantized); iOS18's ``constexpr_lut_to_dense`` and ``constexpr_blockwise_shift_scale``.
Per-block look-up tables and scales are supported (each block's parameters broadcast over its
elements, ``block_size[i] = shape[i] / params.shape[i]``); vector palettization and the iOS16
palettized / quantized ops are not, and give ``None`` rather than a guess.

The semantics follow the op definitions in ``coremltools.converters.mil.mil.ops.defs.iOS18.compression``
(``output = scale * (data - offset)``; ``output = lut[block, index]``; the mask's set bits, row-major,
receive the non-zero data); ``tests/export/test_mlpackage.py`` checks every case against Core ML Tools' own
decompression of the same program.
"""

from __future__ import annotations

import math

import numpy as np

from .blobs import Value, WeightFiles

__all__ = ["decode"]

_SPARSE = "constexpr_sparse_to_dense"
_LUT_SPARSE = "constexpr_lut_to_sparse"
_SHIFT_SPARSE = "constexpr_sparse_blockwise_shift_scale"
_LUT = "constexpr_lut_to_dense"
_SHIFT = "constexpr_blockwise_shift_scale"


def decode(
    op_types: list[str], values: dict[str, Value], shape: tuple[int, ...], files: WeightFiles
) -> np.ndarray | None:
    """The dense values of a weight made of ``op_types`` with input ``values`` (see `_Program.parts`)."""
    kinds = set(op_types)
    if kinds == {"const"}:
        return values["const.val"].array(files)
    if kinds == {_SPARSE}:
        return _scatter(values[f"{_SPARSE}.nonzero_data"].array(files), mask_of(values, shape, files), shape)
    if kinds == {_SPARSE, _LUT_SPARSE}:
        mask = mask_of(values, shape, files)
        if mask is None:
            return None
        return _scatter(_lut(values, f"{_LUT_SPARSE}.indices_nonzero_data", _LUT_SPARSE, mask, shape, files),
                        mask, shape)
    if kinds == {_SPARSE, _SHIFT_SPARSE}:
        mask = mask_of(values, shape, files)
        if mask is None:
            return None
        return _scatter(_shift(values, f"{_SHIFT_SPARSE}.nonzero_data", _SHIFT_SPARSE, mask, shape, files),
                        mask, shape)
    everything = np.ones(math.prod(shape), dtype=bool)
    if kinds == {_LUT}:  # iOS18's op; iOS16's (a 1-D table, packed indices) is left undecoded by _lut
        dense = _lut(values, f"{_LUT}.indices", _LUT, everything, shape, files)
        return None if dense is None else dense.reshape(shape)
    if kinds == {_SHIFT}:
        dense = _shift(values, f"{_SHIFT}.data", _SHIFT, everything, shape, files)
        return None if dense is None else dense.reshape(shape)
    return None


def mask_of(values: dict[str, Value], shape: tuple[int, ...], files: WeightFiles) -> np.ndarray | None:
    """The flat ``bool`` mask of a sparse weight: iOS16's packed ``uint8`` mask or a ``uint1`` tensor of
    the weight's shape (iOS18), whichever op holds it."""
    numel = math.prod(shape)
    packed = values.get(f"{_SPARSE}.mask")
    if packed is not None and packed.dtype == "UINT8" and packed.numel == math.ceil(numel / 8):
        return packed.bits(files, numel)
    for key in (f"{_SPARSE}.mask", f"{_LUT_SPARSE}.indices_mask", f"{_SHIFT_SPARSE}.data_mask"):
        value = values.get(key)
        if value is not None and value.dtype == "UINT1" and value.numel == numel:
            return value.bits(files, numel)
    return None


def _scatter(data: np.ndarray | None, mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if data is None or mask is None or data.size != int(mask.sum()):
        return None
    dense = np.zeros(mask.size, dtype=data.dtype)
    dense[mask] = data.reshape(-1)
    return dense.reshape(shape)


def _blocks(mask: np.ndarray, shape: tuple[int, ...], params_shape: tuple[int, ...]) -> tuple[np.ndarray, ...] | None:
    """For each selected element (row-major), the index of its block along every axis."""
    if len(params_shape) < len(shape) or any(p == 0 or s % p for s, p in zip(shape, params_shape)):
        return None
    coords = np.unravel_index(np.flatnonzero(mask), shape)
    return tuple(c // (s // p) for c, s, p in zip(coords, shape, params_shape))


def _lut(values: dict[str, Value], indices_key: str, op: str, mask: np.ndarray, shape: tuple[int, ...],
         files: WeightFiles) -> np.ndarray | None:
    lut_value, indices_value = values.get(f"{op}.lut"), values.get(indices_key)
    if lut_value is None or indices_value is None:
        return None
    lut, indices = lut_value.array(files), indices_value.array(files)
    if lut is None or indices is None or lut.ndim != len(shape) + 2 or lut.shape[-1] != 1:
        return None  # vector palettization, or an unexpected layout
    blocks = _blocks(mask, shape, lut.shape[: len(shape)])
    if blocks is None:
        return None
    # a named key: mypy 2.4 takes the inline lut[(*blocks, ...)] for 3.11's lut[*blocks, ...]
    key: tuple[np.ndarray | int, ...] = (*blocks, indices.reshape(-1).astype(np.int64), 0)
    return lut[key]


def _shift(values: dict[str, Value], data_key: str, op: str, mask: np.ndarray, shape: tuple[int, ...],
           files: WeightFiles) -> np.ndarray | None:
    scale_value, data_value = values.get(f"{op}.scale"), values.get(data_key)
    if scale_value is None or data_value is None:
        return None
    scale, data = scale_value.array(files), data_value.array(files)
    if scale is None or data is None:
        return None
    blocks = _blocks(mask, shape, scale.shape)
    if blocks is None:
        return None
    result = data.reshape(-1).astype(np.float32)
    offset_value = values.get(f"{op}.offset")
    if offset_value is not None:
        offset = offset_value.array(files)
        if offset is None or offset.shape != scale.shape:
            return None
        result = result - offset[blocks].astype(np.float32)
    return (result * scale[blocks].astype(np.float32)).astype(scale.dtype)
