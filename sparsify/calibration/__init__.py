"""Calibration data as users have it — one path for every data-dependent criterion and for streaming.

* `CalibrationData` — forward-only data: a list / iterable / ``DataLoader`` of items (dicts of tensors such
  as ``{"input_ids", "attention_mask", "position_ids", "labels"}``, token tensors ``[B, T]`` or ``[T]``,
  ``(inputs, targets)``, SparseML's ``(args, kwargs, target)``), a zero-argument callable returning one, or a
  ``datasets.Dataset``; `as_calibration_data` turns whatever a ``sampler=`` argument got into one.
* `GradSampler` — `CalibrationData` plus a loss, for gradient-based criteria.
* `split_batch` / `CalibrationItem` — one item normalised to ``(args, kwargs, target)``.
* `merged` / `batch_size` — items concatenated into fewer forwards only where exactly equivalent.
* `text_windows` — token windows of a given length from texts and a tokenizer (seeded random, or consecutive).

The layer-wise criteria (SparseGPT, Wanda) run that data through the model forward only:

* `sparsify.calibration.layer_inputs` — `Calibration`: the kept batches of one mask update, the forward order
  and stages of the pruned layers, and the passes that hand each stage its layers' inputs (`input_columns`);
* `sparsify.calibration.chain` — block chains (decoder layers): a stage runs its block alone on cached inputs;
* `sparsify.calibration.passes` — the hooks of a pass (stop early, substitute the weights pruned so far).

They import nothing of the machine but `sparsify.masking` (a pass shows each layer's own masked weight again), so
criteria, pruning (OWL's outlier levels) and streaming all import them.

Typical use with a transformers causal LM::

    windows = sparsify.calibration.text_windows(texts, tokenizer, seq_len=512, num_samples=128, seed=0)
    pruned = sparsify.prune(model, 0.5, criterion="sparsegpt", sampler=windows)
"""

from .convert import as_calibration_data
from .data import CalibrationData, first_device
from .gradients import GradSampler, NotEnoughDataError, as_grad_sampler
from .items import CalibrationItem, split_batch
from .merge import batch_size, merged
from .text import text_windows, token_ids

__all__ = [
    "CalibrationData",
    "CalibrationItem",
    "GradSampler",
    "NotEnoughDataError",
    "as_calibration_data",
    "as_grad_sampler",
    "batch_size",
    "first_device",
    "merged",
    "split_batch",
    "text_windows",
    "token_ids",
]
