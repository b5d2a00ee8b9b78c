"""The calibration-data contract shared by every data-dependent pruning method.

A `GradSampler` is built from *data* and a *loss function*:

* ``data`` — an iterable, or a zero-argument callable returning one (called afresh for every
  `GradSampler.gradients` pass), that yields either

  - SparseML's triple ``(forward_args, forward_kwargs, loss_target)``: the model is called as
    ``model(*forward_args, **forward_kwargs)`` (a single tensor counts as one positional argument), or
  - a plain ``(inputs, targets)`` pair, as a ``DataLoader`` over a ``TensorDataset`` yields: ``inputs``
    is a tensor (one argument), a list/tuple (several) or a dict (keyword arguments);

* ``loss_fn(outputs, target)`` — returns a scalar tensor. ``outputs`` is exactly what the model
  returned (tuples are *not* unpacked, unlike SparseML's sampler, whose own tutorial indexes
  ``outputs[0]`` a second time). Forward-only criteria (``sparsegpt``, ``wanda``) only run the model on
  the data: for them ``loss_fn`` may be ``None`` and the targets are ignored.

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

from .._checks import check_flags
from .._nested import to_device
from .._progress import tqdm

__all__ = ["GradSampler", "NotEnoughDataError", "as_grad_sampler", "split_batch"]

LossFn = Callable[[Any, Any], torch.Tensor]


class NotEnoughDataError(ValueError):
    """The calibration data ran out before the requested number of gradients."""


def split_batch(item: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """Normalise one data item to ``(args, kwargs, target)`` (see the module docstring)."""
    if isinstance(item, (tuple, list)):
        if len(item) == 3 and isinstance(item[1], Mapping):
            args, kwargs, target = item
            if isinstance(args, torch.Tensor):
                args = (args,)
            elif not isinstance(args, (tuple, list)):
                raise TypeError(
                    f"forward_args must be a list or tuple (or one tensor), got {type(args).__name__}"
                )
            return tuple(args), dict(kwargs), target
        if len(item) == 2:
            inputs, target = item
            if isinstance(inputs, Mapping):
                return (), dict(inputs), target
            if isinstance(inputs, (tuple, list)):
                return tuple(inputs), {}, target
            return (inputs,), {}, target
    shape = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
    raise TypeError(
        f"calibration data yielded {shape}: allowed (forward_args, forward_kwargs: dict, loss_target) "
        f"or (inputs, targets)"
    )


class GradSampler:
    """Calibration data plus a loss: yields gradients of chosen parameters, one per data item.

    Args:
        data: an iterable of items, or a zero-argument callable returning a fresh iterable.
        loss_fn: ``loss_fn(model_outputs, loss_target) -> scalar tensor``; ``None`` when only forward-only
            criteria (``sparsegpt``, ``wanda``) use the sampler.
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
        if not (callable(data) or isinstance(data, Iterable)):
            raise TypeError(
                f"data must be an iterable of batches or a zero-argument callable returning one, got "
                f"{type(data).__name__}"
            )
        check_flags("GradSampler", progress=progress)
        self.data = data
        self.loss_fn = loss_fn
        self.progress = progress

    def batches(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], Any]]:
        """One pass over the data, normalised to ``(args, kwargs, target)``."""
        source = self.data() if callable(self.data) and not isinstance(self.data, Iterable) else self.data
        if not isinstance(source, Iterable):
            raise TypeError(f"the data callable must return an iterable, got {type(source).__name__}")
        for item in source:
            yield split_batch(item)

    def forward(self, model: nn.Module, batch: tuple[tuple[Any, ...], dict[str, Any], Any]) -> Any:
        """Run ``model`` on ``batch`` (moved to the model's device) and return its outputs; the target is unused.

        What forward-only criteria (``sparsegpt``, ``wanda``) call; the caller chooses ``no_grad`` and the mode.
        """
        device = _first_device(model)
        args, kwargs, _ = to_device(batch, device, non_blocking=True) if device is not None else batch
        return model(*args, **kwargs)

    def loss(self, model: nn.Module, batch: tuple[tuple[Any, ...], dict[str, Any], Any]) -> torch.Tensor:
        """Forward ``batch`` through ``model`` and return the scalar loss."""
        if self.loss_fn is None:
            raise ValueError(
                "this GradSampler has loss_fn=None, so it cannot give gradients: build it as "
                "GradSampler(data, loss_fn) for gradient-based criteria (mfac, gradient, snip, ...)"
            )
        device = _first_device(model)
        args, kwargs, target = to_device(batch, device, non_blocking=True) if device is not None else batch
        loss = self.loss_fn(model(*args, **kwargs), target)
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


def _first_device(model: nn.Module) -> torch.device | None:
    for param in model.parameters():
        return param.device
    return None


def as_grad_sampler(sampler: Any, **builder_kwargs: Any) -> GradSampler:
    """A `GradSampler` from one, or from SparseML's ``grad_sampler`` dictionary.

    The dictionary form is ``{"data_loader_builder": f, "loss_function": fn}``: ``f(**builder_kwargs)``
    must return the iterable (SparseML passes the recipe's ``grad_sampler_kwargs`` there).
    """
    if isinstance(sampler, GradSampler):
        return sampler
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
