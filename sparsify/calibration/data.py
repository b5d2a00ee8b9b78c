"""`CalibrationData`: the data a criterion runs the model on, forward only, as users have it.

``CalibrationData(data)`` wraps

* an iterable of items — a list, a generator, a ``torch.utils.data.DataLoader`` — each item a dict of model
  inputs, a tensor, ``(inputs, targets)`` or ``(forward_args, forward_kwargs, loss_target)``
  (`sparsify.calibration.items`);
* a zero-argument callable returning such an iterable (called afresh for every pass);
* a Hugging Face ``datasets.Dataset``: its numeric columns (``input_ids``, ``attention_mask``, ...) become the
  items' keyword arguments, one row (one sequence, given a batch of one) per item; text columns are left out.

Layer-wise criteria (``sparsegpt``, ``wanda``) only run the model forward on it: no loss is needed.
Gradient-based criteria need a loss too: `sparsify.GradSampler` (a `CalibrationData` with a ``loss_fn``) —
or items with ``labels`` for a model that returns its own ``loss``, as transformers' causal LMs do.

Every ``sampler=`` argument (`sparsify.prune`, `sparsify.Pruner`) accepts what `as_calibration_data` does:
a `CalibrationData` / `GradSampler`, SparseML's ``grad_sampler`` dict, or the plain data above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn

from .._nested import to_device
from .items import CalibrationItem, split_batch

__all__ = ["CalibrationData", "first_device"]


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "datasets" and hasattr(data, "with_format")


def _from_hf_dataset(data: Any) -> Iterable[Any]:
    """A ``datasets.Dataset`` as torch-formatted rows of its numeric columns."""
    rows = len(data)
    if rows == 0:
        raise ValueError("the calibration datasets.Dataset has no rows")
    first = data[0]
    numeric = [c for c in data.column_names if not isinstance(first[c], str)
               and not (isinstance(first[c], list) and first[c] and isinstance(first[c][0], str))]
    if not numeric:
        raise ValueError(
            f"the calibration datasets.Dataset has no numeric columns (columns: {', '.join(data.column_names)}): "
            f"tokenize it first (dataset.map(lambda row: tokenizer(row['text']), remove_columns=['text'])) or use "
            f"sparsify.calibration.text_windows(texts, tokenizer, seq_len, num_samples)"
        )
    return data.with_format("torch", columns=numeric)


class CalibrationData:
    """Calibration data for a forward-only pass (see the module docs).

    Args:
        data: an iterable of items, a zero-argument callable returning a fresh one, or a ``datasets.Dataset``.
        progress: show tqdm progress bars while criteria run on it.

    Example::

        data = [{"input_ids": ids, "attention_mask": mask} for ids, mask in windows]
        pruned = sparsify.prune(model, 0.5, criterion="sparsegpt", sampler=data)  # or CalibrationData(data)
    """

    def __init__(self, data: Iterable[Any] | Callable[[], Iterable[Any]], *, progress: bool = True) -> None:
        if isinstance(data, CalibrationData):
            data = data.data
        if not (callable(data) or isinstance(data, Iterable) or _is_hf_dataset(data)):
            raise TypeError(
                f"calibration data must be an iterable of items (a list, a DataLoader, a datasets.Dataset) or a "
                f"zero-argument callable returning one, got {type(data).__name__}"
            )
        if isinstance(data, (str, bytes)):
            raise TypeError(
                "calibration data is a string: give token windows, e.g. "
                "sparsify.calibration.text_windows(texts, tokenizer, seq_len, num_samples)"
            )
        self.data = data
        self.progress = progress

    def _source(self) -> Iterable[Any]:
        data = self.data
        if _is_hf_dataset(data):
            return _from_hf_dataset(data)
        source = data() if callable(data) and not isinstance(data, Iterable) else data
        if _is_hf_dataset(source):
            return _from_hf_dataset(source)
        if not isinstance(source, Iterable):
            raise TypeError(f"the data callable must return an iterable, got {type(source).__name__}")
        return source

    def items(self) -> Iterator[CalibrationItem]:
        """One pass over the data, each item normalised to ``(args, kwargs, target)``."""
        for item in self._source():
            yield split_batch(item)

    def batches(self) -> Iterator[CalibrationItem]:
        """The same as `items` (the name `GradSampler` has always used)."""
        return self.items()

    def forward(self, model: nn.Module, item: tuple[tuple[Any, ...], dict[str, Any], Any]) -> Any:
        """Run ``model`` on ``item`` (moved to the model's device) and return its outputs; the target is unused.

        What forward-only criteria (``sparsegpt``, ``wanda``) call; the caller chooses ``no_grad`` and the mode.
        """
        device = first_device(model)
        args, kwargs, _ = to_device(item, device, non_blocking=True) if device is not None else item
        return model(*args, **kwargs)


def first_device(model: nn.Module) -> Any:
    """The device of the model's first parameter (``None`` without parameters)."""
    for param in model.parameters():
        return param.device
    return None
