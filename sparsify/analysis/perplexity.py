"""Perplexity and held-out loss of a causal language model on token windows.

`perplexity` runs the model (``eval()``, ``no_grad``) on each window — the items calibration takes
(`sparsify.calibration`): dicts with ``input_ids`` (and ``attention_mask``), token tensors ``[B, T]`` or
``[T]``, e.g. ``sparsify.calibration.text_windows(texts, tokenizer, seq_len, num_samples=None)`` — and
averages the next-token cross-entropy over every predicted token: position ``t`` predicts token ``t + 1``
of the same window; positions whose target is masked out (``attention_mask == 0``, or ``labels == -100``
when the item carries labels) do not count. The held-out loss is that mean (nats per token) and the
perplexity its exponential — the usual protocol of SparseGPT, Wanda and OWL on consecutive windows of a
held-out text.

The model's output may be a tensor of logits, a tuple (logits first) or an object with ``.logits``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..calibration import as_calibration_data

__all__ = ["PerplexityResult", "perplexity"]


@attrs.frozen
class PerplexityResult:
    """``loss``: mean next-token cross-entropy (nats); ``perplexity = exp(loss)``; ``tokens`` counted."""

    loss: float
    perplexity: float
    tokens: int


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if logits is None and isinstance(outputs, dict):
        logits = outputs.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"perplexity: the model returned {type(outputs).__name__} without logits")
    return logits


def perplexity(model: nn.Module, windows: Any, *, progress: bool = True) -> PerplexityResult:
    """Held-out loss and perplexity of ``model`` on ``windows`` (see the module docs)."""
    data = as_calibration_data(windows)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for args, kwargs, _ in tqdm(data.items(), desc="perplexity", unit="window", disable=not progress,
                                        leave=False):
                kwargs = dict(kwargs)
                labels = kwargs.pop("labels", None)
                ids = kwargs.get("input_ids", args[0] if args else None)
                if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
                    raise ValueError("perplexity: every window needs token ids [B, T] (input_ids or a tensor), got "
                                     f"{type(ids).__name__}{tuple(ids.shape) if isinstance(ids, torch.Tensor) else ''}")
                logits = _logits(data.forward(model, (args, kwargs, None))).float()
                targets = (labels if isinstance(labels, torch.Tensor) else ids).to(logits.device)[:, 1:]
                valid = targets != -100
                mask = kwargs.get("attention_mask")
                if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                    valid &= mask.to(logits.device)[:, 1:].bool()
                losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                         targets.clamp_min(0).reshape(-1), reduction="none")
                total += float(losses[valid.reshape(-1)].double().sum())
                count += int(valid.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("perplexity: the windows hold no predicted token (each needs at least two tokens)")
    loss = total / count
    return PerplexityResult(loss, math.exp(loss) if loss < 700 else math.inf, count)
