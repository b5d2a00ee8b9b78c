"""Checkpoints across the three layouts a pruned model goes through.

* **dense** — a plain model: ``fc.weight``;
* **prepared** — masks installed: ``fc.weight_orig``, ``fc.weight_mask``, ``fc.weight_amount``;
* **finalized** — masks baked in: ``fc.weight`` plus Core ML metadata buffers
  (``_COREML_/metadata_version``, ``fc._COREML_/weight/compression_type``).

``model.load_state_dict`` refuses every cross-layout load with a list of missing and unexpected keys.
`load_state_dict` recognises the layout of the checkpoint and of the model and converts:

* dense or finalized → prepared: weights go to ``weight_orig``; the masks become "keep the non-zeros"
  of the loaded weights (so a finalized model resumes with its masks) unless the checkpoint is dense
  and ``masks_from_zeros=False``, which keeps the prepared model's current masks;
* prepared → dense/finalized: ``weight = where(mask, weight_orig, 0)``;
* Core ML metadata buffers are dropped when the model has none, and kept when it has them.

Files are read by `load_checkpoint_file` through `sparsify.model_files.read_tensor_file` (re-exported
here), after a size check: it builds tensors and plain containers without ``torch.load`` at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import check_flags
from ._nested import to_device
from .coreml_metadata import is_metadata_key
from .mask_layout import layout_names, masked_bases, plain_state_dict
from .model_files import DEFAULT_MAX_BYTES, FileRefusedError, read_tensor_file

__all__ = [
    "DEFAULT_MAX_BYTES", "FileRefusedError", "dense_state_dict", "load_checkpoint_file", "load_state_dict",
    "read_tensor_file", "state_dict_layout",
]

logger = logging.getLogger(__name__)

def state_dict_layout(state_dict: Mapping[str, Any]) -> str:
    """``"prepared"`` if some key pairs ``<name>_orig`` with ``<name>_mask``, ``"finalized"`` if Core ML metadata
    is present, else ``"dense"``."""
    if masked_bases(state_dict):
        return "prepared"
    if any(is_metadata_key(k) for k in state_dict):
        return "finalized"
    return "dense"


#: a prepared or finalized state dict made plain (masks applied, metadata dropped): `mask_layout.plain_state_dict`
dense_state_dict = plain_state_dict


def _prepared_from_plain(
    plain: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor], masks_from_zeros: bool
) -> dict[str, torch.Tensor]:
    """Map ``x.weight`` to ``x.weight_orig`` (+ mask and amount) wherever the model is prepared."""
    bases = masked_bases(model_sd)
    out = {k: v for k, v in plain.items() if k not in bases and not is_metadata_key(k)}
    for base in bases & set(plain):
        weight = plain[base]
        orig, mask_key, amount = layout_names(base)
        out[orig] = weight
        if not masks_from_zeros:
            out[mask_key], out[amount] = model_sd[mask_key], model_sd[amount]
            continue
        mask = weight != 0
        for dim, size in enumerate(model_sd[mask_key].shape):  # per-channel / per-kernel mask shapes
            if size == 1 and mask.shape[dim] != 1:
                mask = mask.any(dim=dim, keepdim=True)
        out[mask_key] = mask
        out[amount] = (weight == 0).float().mean()
    return out


def load_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, masks_from_zeros: bool = True
) -> Any:
    """Load ``state_dict`` into ``model`` whatever the two layouts are (see the module docstring).

    ``masks_from_zeros`` (when loading a dense or finalized checkpoint into a prepared model): take
    the masks from the checkpoint's zeros (``True``) or keep the model's current masks (``False``).
    Returns what ``model.load_state_dict`` returns. With ``strict`` a checkpoint that does not describe
    the same network raises ``ValueError`` naming the missing and unexpected keys.
    """
    check_flags("load_state_dict", strict=strict, masks_from_zeros=masks_from_zeros)
    model_sd = model.state_dict()
    source, target = state_dict_layout(state_dict), state_dict_layout(model_sd)
    if source == "prepared" and target != "prepared":
        converted = dense_state_dict(state_dict)
    elif target == "prepared" and source != "prepared":
        converted = _prepared_from_plain(state_dict, model_sd, masks_from_zeros)
    else:
        converted = dict(state_dict)
    if target == "finalized":  # keep the model's own Core ML metadata
        converted.update({k: v for k, v in model_sd.items() if is_metadata_key(k) and k not in converted})
    else:
        converted = {k: v for k, v in converted.items() if not is_metadata_key(k)}
    if strict:
        missing = sorted(set(model_sd) - set(converted))
        unexpected = sorted(set(converted) - set(model_sd))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint ({source} layout) does not match the model ({target} layout): missing keys "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected keys "
                f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
    if source != target:
        logger.info("converted a %s checkpoint to the model's %s layout", source, target)
    return model.load_state_dict(converted, strict=strict)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """A ``torch.save`` checkpoint of at most ``max_bytes``, read by `read_tensor_file`: tensors and plain
    containers only, never code, whatever the installed torch's ``weights_only`` unpickler would allow
    (it had code-execution bugs before torch 2.10). Tensors are moved to ``map_location``."""
    return to_device(read_tensor_file(path, max_bytes=max_bytes), map_location)

