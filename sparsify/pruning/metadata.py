"""Core ML compression metadata written at ``finalize()``: the buffers ``coremltools.convert`` reads to store a
weight sparse (their format: `sparsify.coreml_metadata`)."""

from __future__ import annotations

import torch
from torch import nn

from ..coreml_metadata import COMPRESSION_TYPE, METADATA_VERSION_BUFFER, PRUNING, metadata_buffer

__all__ = ["METADATA_VERSION_BUFFER", "REQUESTED_ATTRIBUTE", "record_requested", "register_coreml_metadata"]

REQUESTED_ATTRIBUTE = "_sparsify_requested"
"""A finalized module's ``{param name: sparsity asked for}``, a plain attribute (not in the state dict),
read by `sparsify.model_report` so that it shows what was asked, not "-", once the masks are baked in."""


def register_coreml_metadata(module: nn.Module, param_name: str) -> None:
    """Mark ``module.<param_name>`` as pruned for ``coremltools.convert``.

    Writes the buffer ``_COREML_/<param_name>/compression_type = [1]`` exactly as Core ML Tools does
    (appending to an existing list, for joint compression). With ``minimum_deployment_target >= iOS16``
    the converter then stores that weight as a sparse ``constexpr_sparse_to_dense`` constant.
    """
    buffer_name = metadata_buffer(param_name, COMPRESSION_TYPE)
    existing = module._buffers.get(buffer_name)
    types = existing.tolist() if existing is not None else []
    if PRUNING not in types:
        types.append(PRUNING)
    module.register_buffer(buffer_name, torch.tensor(types))


def record_requested(module: nn.Module, param_name: str, sparsity: float) -> None:
    """Remember on ``module`` the sparsity asked for ``param_name`` (see `REQUESTED_ATTRIBUTE`)."""
    module.__dict__.setdefault(REQUESTED_ATTRIBUTE, {})[param_name] = float(sparsity)
