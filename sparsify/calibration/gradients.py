"""`GradSampler`: calibration data plus a loss, for criteria that need gradients (``mfac``, ``gradient``, ...).

A `GradSampler` is a `CalibrationData` with a *loss function* ``loss_fn(outputs, target)`` returning a scalar
tensor. ``outputs`` is exactly what the model returned (tuples are *not* unpacked, unlike SparseML's sampler,
whose own tutorial indexes ``outputs[0]`` a second time). Without a ``loss_fn`` the loss is the one the model
returns itself (``outputs.loss`` or ``outputs["loss"]``: a transformers model given ``labels``); forward-only
criteria (``sparsegpt``, ``wanda``) need neither.

Each item gives one gradient (the mini-batch gradient of that item's loss). Tensors are moved to the
device of the model's first parameter. While sampling the model is in ``eval()`` mode (dropout off,
batch-norm statistics frozen, as SparseML's one-shot sampling does) and its ``.grad`` fields are left
untouched: gradients are taken with `torch.autograd.grad` for the requested parameters only.

If the data runs out before the requested number of gradients, `NotEnoughDataError` says how
many were collected and how to get more. SparseML's ``grad_sampler`` dictionary
(``{"data_loader_builder": f, "loss_function": fn}``) is accepted by `as_grad_sampler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._nested import to_device
from .data import CalibrationData, first_device

__all__ = ["GradSampler", "NotEnoughDataError", "as_grad_sampler"]

LossFn = Callable[[Any, Any], torch.Tensor]


class NotEnoughDataError(ValueError):
    """The calibration data ran out before the requested number of gradients."""


def _own_loss(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return getattr(outputs, "loss", None)


class GradSampler(CalibrationData):
    """Calibration data plus a loss: yields gradients of chosen parameters, one per data item.

    Args:
        data: an iterable of items, or a zero-argument callable returning a fresh iterable
            (`sparsify.CalibrationData` lists the forms).
        loss_fn: ``loss_fn(model_outputs, loss_target) -> scalar tensor``; ``None`` for the model's own loss
            (items with ``labels`` for a transformers model), or when only forward-only criteria use the data.
        progress: show a tqdm progress bar while collecting.

    Example::

        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
        sampler = GradSampler(loader, torch.nn.functional.cross_entropy)
    """

    def __init__(
        self, data: Iterable[Any] | Callable[[], Iterable[Any]], loss_fn: LossFn | None = None, *, progress: bool = True
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(outputs, target) (or None for forward-only criteria), got "
                f"{type(loss_fn).__name__}"
            )
        super().__init__(data, progress=progress)
        self.loss_fn = loss_fn

    def loss(self, model: nn.Module, batch: tuple[tuple[Any, ...], dict[str, Any], Any]) -> torch.Tensor:
        """Forward ``batch`` through ``model`` and return the scalar loss."""
        device = first_device(model)
        args, kwargs, target = to_device(batch, device, non_blocking=True) if device is not None else batch
        outputs = model(*args, **kwargs)
        if self.loss_fn is None:
            loss = _own_loss(outputs)
            if loss is None:
                raise ValueError(
                    "this GradSampler has loss_fn=None, so it cannot give gradients: the model's outputs carry no "
                    "loss. Build it as GradSampler(data, loss_fn) for gradient-based criteria (mfac, gradient, "
                    "snip, ...), or give items with labels to a model that returns its loss (transformers)"
                )
        else:
            loss = self.loss_fn(outputs, target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}"
            )
        return loss.reshape(())

    def gradients(
        self, model: nn.Module, params: Sequence[torch.Tensor], num_grads: int, *, desc: str = "gradients"
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield ``num_grads`` tuples of gradients (one tensor per entry of ``params``).

        The model is in ``eval()`` mode while sampling and goes back to its previous mode afterwards.
        Raises `NotEnoughDataError` if the data ends first.
        """
        if isinstance(num_grads, bool) or not isinstance(num_grads, int) or num_grads < 1:
            raise ValueError(f"num_grads={num_grads!r} is invalid: allowed an integer >= 1")
        params = list(params)
        was_training = model.training
        model.eval()
        collected = 0
        try:
            with tqdm(total=num_grads, desc=desc, disable=not self.progress, leave=False) as bar:
                for batch in self.batches():
                    with torch.enable_grad():
                        loss = self.loss(model, batch)
                        grads = torch.autograd.grad(loss, params, allow_unused=True)
                    yield tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))
                    collected += 1
                    bar.update(1)
                    if collected == num_grads:
                        return
        finally:
            model.train(was_training)
        raise NotEnoughDataError(
            f"the calibration data ran out after {collected} of num_grads={num_grads} gradients (one per "
            f"batch): give more batches (e.g. a zero-argument callable that yields num_grads random "
            f"batches, or a DataLoader with at least num_grads batches per pass) or lower num_grads"
        )


def as_grad_sampler(sampler: Any, **builder_kwargs: Any) -> GradSampler:
    """A `GradSampler` from one, from SparseML's ``grad_sampler`` dictionary, or from forward-only
    `CalibrationData` (then the loss is the model's own, `GradSampler` with ``loss_fn=None``).

    The dictionary form is ``{"data_loader_builder": f, "loss_function": fn}``: ``f(**builder_kwargs)``
    must return the iterable (SparseML passes the recipe's ``grad_sampler_kwargs`` there).
    """
    if isinstance(sampler, GradSampler):
        return sampler
    if isinstance(sampler, CalibrationData):
        return GradSampler(sampler.data, None, progress=sampler.progress)
    if isinstance(sampler, Mapping):
        missing = {"data_loader_builder", "loss_function"} - set(sampler)
        if missing:
            raise ValueError(
                f"a grad_sampler dict needs the keys 'data_loader_builder' and 'loss_function'; missing "
                f"{sorted(missing)}"
            )
        builder = sampler["data_loader_builder"]
        return GradSampler(lambda: builder(**builder_kwargs), sampler["loss_function"])
    raise TypeError(
        f"sampler must be a GradSampler (GradSampler(data, loss_fn)) or SparseML's grad_sampler dict, got "
        f"{type(sampler).__name__}"
    )
