"""One calibration item, as users have it, normalised to what the model is called with.

Every data-dependent criterion runs the model on *items* of calibration data. An item may be

* a **mapping of model inputs** — a dict (or a transformers ``BatchEncoding``) such as
  ``{"input_ids": ..., "attention_mask": ..., "position_ids": ..., "labels": ...}``: the model is called as
  ``model(**item)``; values that are plain lists of numbers (a tokenizer called without ``return_tensors``)
  become tensors;
* a **tensor**: one positional argument (``model(tokens)``), e.g. token ids ``[B, T]``;
* SparseML's triple ``(forward_args, forward_kwargs, loss_target)``: ``model(*forward_args, **forward_kwargs)``
  (a single tensor counts as one positional argument);
* a pair ``(inputs, targets)``, as a ``DataLoader`` over a ``TensorDataset`` yields: ``inputs`` is a tensor
  (one argument), a list/tuple (several) or a mapping (keyword arguments).

**Unbatched token items** — a 1-D integer tensor ``[T]``, or a mapping whose ``input_ids`` is 1-D — get a batch
dimension of one (every 1-D tensor of the mapping as long as ``input_ids``: the attention mask, position ids,
labels), because a language model reads ``[B, T]``. Any other tensor is passed as it is.

The result is a `CalibrationItem` ``(args, kwargs, target)`` — a named tuple, so code written for
``(args, kwargs, target)`` triples keeps working. ``target`` is what a loss function compares the outputs with
(``None`` when the item has none: a mapping or a tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Number
from typing import Any, NamedTuple

import torch

__all__ = ["CalibrationItem", "split_batch"]

_ALLOWED = ("a dict of tensors (input_ids, attention_mask, ...), a tensor (e.g. token ids [B, T] or [T]), "
            "(inputs, targets) or (forward_args, forward_kwargs: dict, loss_target)")


class CalibrationItem(NamedTuple):
    """One normalised item: the model is called as ``model(*args, **kwargs)``; ``target`` feeds a loss."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    target: Any = None


def _is_number_list(value: Any) -> bool:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, Number) and not isinstance(value, bool)


def _model_inputs(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """A mapping of model inputs: lists of numbers as tensors, unbatched token items given a batch of one."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"calibration item key {key!r} is a {type(key).__name__}: keys must be argument names")
        if isinstance(value, str):
            raise TypeError(
                f"calibration item key {key!r} holds text ({value[:30]!r}...): tokenize it first, e.g. "
                f"sparsify.calibration.text_windows(texts, tokenizer, seq_len, num_samples)"
            )
        out[key] = torch.tensor(value) if isinstance(value, (list, tuple)) and _is_number_list(value) else value
    ids = out.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 1:
        length = ids.shape[0]
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == length:
                out[key] = value.unsqueeze(0)
    return out


def _tokens(tensor: torch.Tensor) -> torch.Tensor:
    """An unbatched 1-D integer tensor (token ids ``[T]``) with a batch of one; anything else as it is."""
    if tensor.dim() == 1 and not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool:
        return tensor.unsqueeze(0)
    return tensor


def split_batch(item: Any) -> CalibrationItem:
    """Normalise one data item to ``(args, kwargs, target)`` (see the module docstring)."""
    if isinstance(item, torch.Tensor):
        return CalibrationItem((_tokens(item),), {}, None)
    if isinstance(item, Mapping):
        return CalibrationItem((), _model_inputs(item), None)
    if isinstance(item, (tuple, list)):
        if len(item) == 3 and isinstance(item[1], Mapping):
            args, kwargs, target = item
            if isinstance(args, torch.Tensor):
                args = (args,)
            elif not isinstance(args, (tuple, list)):
                raise TypeError(
                    f"forward_args must be a list or tuple (or one tensor), got {type(args).__name__}"
                )
            return CalibrationItem(tuple(args), _model_inputs(kwargs), target)
        if len(item) == 2:
            inputs, target = item
            if isinstance(inputs, Mapping):
                return CalibrationItem((), _model_inputs(inputs), target)
            if isinstance(inputs, (tuple, list)):
                return CalibrationItem(tuple(inputs), {}, target)
            return CalibrationItem((inputs,), {}, target)
    shape = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
    raise TypeError(f"calibration data yielded {shape}: allowed {_ALLOWED}")
