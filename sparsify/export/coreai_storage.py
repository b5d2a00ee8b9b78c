"""How `sparsify.export.coreai.export_coreai` stores each weight: planned in torch, written by Core AI's converter.

Core AI keeps a compressed weight as a chain of ops over constants, and ``coreai-torch`` lowers three
torch custom ops to them (``coreai_torch._compression.custom_layers``): ``coreai::sparse_to_dense(values,
mask)`` (the kept values row-major and a one-bit mask: ``build_sparse_with_bitmask`` +
``sparse_with_bitmask_to_dense``), ``coreai::lut_to_dense(indices, lut, axis)`` (palettes: indices of
1–8 bits) and ``coreai::constexpr_blockwise_shift_scale(data, scale)`` (int8 / FP8 values times a
scale). Each weight to compress is given a parametrization (`CompressedWeight`) that computes its value
from such buffers with those ops, so ``torch.export`` records the chain and the converter stores exactly
those buffers. This is the route coreai-opt's own pruned export takes (``MagnitudePruner.finalize()``
puts a ``SparseModule`` parametrization on each pruned weight); here the mask is sparsify's:

* **sparse**: the pruned weights (those with a mask or Core ML pruning metadata in torch;
  ``sparse_weights="all"``: any weight of rank >= 2) drop exactly their zeros, wherever that is smaller
  than dense in the same encoding — a mask costs one bit per element, so at float32 a weight needs
  more than 1/32 zeros, with int8 more than 1/8, with 4-bit palettes more than 1/4;
* **quantize** ``"int8"``: symmetric, one scale per output channel (axis 0), ``round(w / scale)`` in
  [-127, 127]; ``"fp8_e4m3fn"`` / ``"fp8_e5m2"``: the same scales with 448 / 57344 as the largest value;
* **palettize_bits** N: one palette of ``2**N`` float32 values per weight, k-means over the kept
  values only (`sparsify.export.palette`: the zeros are in the mask, so no entry is spent on them).

Quantization and palettes apply to every weight of rank >= 2, jointly with its sparsity. Biases and
other rank-1 tensors stay dense float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .palette import kmeans_1d

__all__ = ["FP8_MAX", "QUANTIZE", "CompressedWeight", "Plan", "plan_weight"]

QUANTIZE = ("int8", "fp8_e4m3fn", "fp8_e5m2")
FP8_MAX = {"fp8_e4m3fn": 448.0, "fp8_e5m2": 57344.0}
_FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_ELEMENT = 4  # float32 bytes: sparsify exports the model in float32


@dataclass(frozen=True)
class Plan:
    """What one weight becomes, and the bytes each choice would take."""

    name: str
    storage: str  # "dense", "sparse", "quantized int8", "sparse+palettized 4 bits", ...
    sparse: bool
    bytes: int  # planned bytes of its constants
    dense_bytes: int  # the same encoding without the mask
    sparse_bytes: int  # the same encoding with the mask
    zeros: int


def _encoded_bytes(numel: int, count: int, channels: int, palettize_bits: int | None, quantize: str | None) -> int:
    """Bytes of ``count`` stored values of a ``numel``-element weight (plus scales or the palette)."""
    if palettize_bits is not None:
        return math.ceil(count * palettize_bits / 8) + _ELEMENT * 2**palettize_bits
    if quantize is not None:
        return count + channels * (_ELEMENT + 1)  # values, scale and zero point per channel
    return count * _ELEMENT


def plan_weight(name: str, tensor: torch.Tensor, may_be_sparse: bool, palettize_bits: int | None,
                quantize: str | None) -> Plan:
    """The smallest storage for ``tensor`` among those allowed (see the module docstring)."""
    numel = tensor.numel()
    compress = tensor.dim() >= 2 and (palettize_bits is not None or quantize is not None)
    bits, quant = (palettize_bits, quantize) if compress else (None, None)
    channels = tensor.shape[0] if tensor.dim() else 1
    nonzeros = int(torch.count_nonzero(tensor))
    dense = _encoded_bytes(numel, numel, channels, bits, quant)
    sparse = _encoded_bytes(numel, nonzeros, channels, bits, quant) + math.ceil(numel / 8)
    use_sparse = may_be_sparse and tensor.dim() >= 1 and sparse < dense
    encoding = f"palettized {bits} bits" if bits is not None else f"quantized {quant}" if quant is not None else ""
    parts = (["sparse"] if use_sparse else []) + ([encoding] if encoding else [])
    return Plan(name=name, storage="+".join(parts) or "dense", sparse=use_sparse,
                bytes=sparse if use_sparse else dense, dense_bytes=dense, sparse_bytes=sparse, zeros=numel - nonzeros)


class CompressedWeight(nn.Module):
    """A parametrization computing a weight from its stored parts with Core AI's custom ops.

    Buffer names matter: coreai-torch narrows a ``lut_to_dense`` operand to its sub-byte type only when
    the operand's name contains ``indices`` (and the palette's ``lut``).
    """

    def __init__(self, weight: torch.Tensor, plan: Plan, palettize_bits: int | None, quantize: str | None) -> None:
        super().__init__()
        import coreai_torch._compression.custom_layers  # noqa: F401  (registers the torch.ops.coreai ops)

        weight = weight.detach().float()
        compress = weight.dim() >= 2 and (palettize_bits is not None or quantize is not None)
        self.sparse = plan.sparse
        self.palettized = compress and palettize_bits is not None
        self.quantized = compress and quantize is not None
        mask = weight != 0 if plan.sparse else torch.ones_like(weight, dtype=torch.bool)
        kept = weight[mask]
        if self.palettized:
            assert palettize_bits is not None
            centroids, labels = kmeans_1d(kept.numpy(), 2**palettize_bits)
            indices = torch.from_numpy(labels.astype(np.uint8))
            lut_shape = (1, 2**palettize_bits, 1) if plan.sparse else (*([1] * weight.dim()), 2**palettize_bits, 1)
            self.register_buffer("indices", indices if plan.sparse else indices.reshape(weight.shape))
            self.register_buffer("lut", torch.from_numpy(centroids.astype(np.float32)).reshape(lut_shape))
        elif self.quantized:
            assert quantize is not None
            reduce = tuple(range(1, weight.dim()))
            amax = weight.abs().amax(dim=reduce, keepdim=True)
            top = 127.0 if quantize == "int8" else FP8_MAX[quantize]
            scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
            scaled = weight / scale
            if quantize == "int8":
                data = torch.round(scaled).clamp(-127, 127).to(torch.int8)
            else:
                data = scaled.clamp(-top, top).to(_FP8_DTYPES[quantize])
            self.register_buffer("scale", scale)
            self.register_buffer("data", data[mask] if plan.sparse else data)
        else:
            self.register_buffer("data", kept)
        if plan.sparse:
            self.register_buffer("mask", mask)

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.coreai
        if self.palettized:
            values = ops.lut_to_dense(self.indices, self.lut, 0)
        else:
            values = self.data
        if self.sparse:
            values = ops.sparse_to_dense(values, self.mask)
        if self.quantized:
            values = ops.constexpr_blockwise_shift_scale(values, self.scale)
        return values
