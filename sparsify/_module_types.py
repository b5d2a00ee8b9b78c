"""The module types sparsify prunes, defined once, and those recognised without importing their packages (a
leaf module: configs, criteria, the pruner, the translators and the analysis tools all need them, and must not
import each other for it). Which modules of a model a config prunes is decided in one place too:
`sparsify.pruning.plan.plan_model`, which reads these through ``config.supported_modules``."""

from __future__ import annotations

import abc

from torch import nn

__all__ = ["COREML_MODULES", "OPT_IN_MODULES", "PRUNER_MODULES", "Conv1D"]


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


#: Core ML Tools' prunable module types (what its ``MagnitudePrunerConfig`` and the presets accept)
COREML_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: module types a `PrunerConfig` prunes only when a rule names them — a type rule, a name rule, or
#: ``module_types`` — never through ``global_config`` alone: SparseML's ``__ALL_PRUNABLE__`` prunes embedding
#: tables, Core ML Tools never does, so a config written for Core ML Tools keeps meaning the same layers
OPT_IN_MODULES: tuple[type[nn.Module], ...] = (nn.Embedding,)

#: the module types `sparsify.Pruner` prunes with a `PrunerConfig`: Core ML Tools', transformers' ``Conv1D``
#: and, when named (`OPT_IN_MODULES`), ``Embedding``
PRUNER_MODULES: tuple[type[nn.Module], ...] = (*COREML_MODULES, Conv1D, *OPT_IN_MODULES)
