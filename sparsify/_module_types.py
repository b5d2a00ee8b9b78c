"""Module types recognised without importing their packages (a leaf module: configs, criteria and the
pruner all need them, and must not import each other for it)."""

from __future__ import annotations

import abc

from torch import nn

__all__ = ["Conv1D"]


class Conv1D(nn.Module, metaclass=abc.ABCMeta):
    """Hugging Face ``transformers``' ``Conv1D`` (GPT-2's linear layers), recognised without importing
    transformers, so that sparsify does not depend on it.

    Never instantiated: ``isinstance(module, Conv1D)`` is true for ``transformers.pytorch_utils.Conv1D``
    and its subclasses, matched by class name and package. Its weight is stored transposed
    (``[in_features, out_features]``); the pruner gives patterns the ``[out, in]`` view.
    """

    @classmethod
    def __subclasshook__(cls, klass: type) -> bool:
        if cls is Conv1D and any(
            k.__name__ == "Conv1D" and k.__module__.partition(".")[0] == "transformers" for k in klass.__mro__
        ):
            return True
        return NotImplemented
