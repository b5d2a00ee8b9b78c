"""coreai-opt's ``MagnitudePruner`` on sparsify's machine: change one import line.

::

    # from coreai_opt.pruning import MagnitudePruner, MagnitudePrunerConfig
    from sparsify.compat.coreai import MagnitudePruner
    from coreai_opt.pruning import MagnitudePrunerConfig      # or a dict / YAML of the same shape

    pruner = MagnitudePruner(model, config)
    model = pruner.prepare((example,))   # masks at the targets (or the schedules' first values)
    for batch in data:
        ...; optimizer.step(); pruner.step()
    model = pruner.finalize()            # backend="coreai" (default), "coreml" or "torch"

The config is translated for the model by `sparsify.compat.coreai_config.pruner_config` (coreai-opt's
precedence rules, its schedules step for step), and a `sparsify.Pruner` does the work: on coreai-opt's
magnitude configs the masks are coreai-opt's (tests compare them mask for mask with coreai-opt installed),
and every sparsify criterion, pattern, scope and schedule is reachable through extra keys in the same dicts.

``finalize(backend=...)``: ``"torch"`` bakes the masks into plain weights; ``"coreml"`` also writes Core ML
Tools' pruning metadata (what ``coremltools.convert`` and `sparsify.export_coreml` read); ``"coreai"``
(coreai-opt's default) puts coreai-torch's ``SparseModule`` parametrization on every pruned weight — its kept
values and sparsify's mask — so the user's own ``torch.export`` + ``coreai_torch.TorchConverter`` stores them
sparse, as after coreai-opt's ``finalize()``. `sparsify.export.coreai.export_coreai` does the conversion,
storage and verification in one call from a ``"torch"`` or ``"coreml"`` result, or from the prepared model.

Differences: the prepared model keeps sparsify's ``weight_orig`` / ``weight_mask`` layout (Core ML Tools',
``torch.nn.utils.prune``'s), not coreai-opt's parametrizations, so ``prepare(state_dict=...)`` takes a state
dict saved from this class; ``prepare`` works in place and returns the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from ..coreml_metadata import is_metadata_key
from ..mask_layout import mask_name, orig_name
from ..masking import is_masked
from ..pruning import Pruner
from .coreai_config import CoreAIPolynomialDecayScheduler, pruner_config, to_plain

__all__ = ["BACKENDS", "CoreAIPolynomialDecayScheduler", "MagnitudePruner", "pruner_config", "to_plain"]

logger = logging.getLogger(__name__)

BACKENDS = ("coreai", "coreml", "torch")


def _backend(value: Any) -> str:
    name = str(getattr(value, "name", value)).lower()
    if name not in BACKENDS:
        raise ValueError(f"MagnitudePruner.finalize: backend={value!r} is invalid: allowed {', '.join(BACKENDS)} "
                         "(or coreai_opt.common.ExportBackend)")
    return name


class MagnitudePruner:
    """coreai-opt's ``MagnitudePruner`` interface over `sparsify.Pruner` (see the module docstring)."""

    def __init__(self, model: nn.Module, config: Any = None, *, sampler: Any = None) -> None:
        """``sampler``: sparsify's `GradSampler` (calibration data) for the data-dependent criteria a config may
        name (SparseGPT, Wanda, M-FAC in one shot); coreai-opt's magnitude configs need none."""
        self._model = model
        self.config = pruner_config({} if config is None else config, model)
        self._pruner = Pruner(model, self.config, sampler=sampler)
        self._prepared = False

    @property
    def pruner(self) -> Pruner:
        """The `sparsify.Pruner` doing the work (reports, state dicts, ...)."""
        return self._pruner

    def prepare(self, example_inputs: tuple[Any, ...] | None = None, *,
                state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """Install the masks (in place); ``example_inputs`` are accepted for coreai-opt's signature and unused:
        magnitude masks need no forward pass. ``state_dict``: one saved from a model prepared by this class."""
        if self._prepared:
            raise RuntimeError("Model has already been prepared. Cannot re-prepare a prepared model.")
        model = self._pruner.prepare(inplace=True)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        self._prepared = True
        return model

    def step(self) -> None:
        """Advance every schedule by one step (coreai-opt's ``step()``)."""
        if not self._prepared:
            raise RuntimeError("Model must be prepared before step(). Call prepare() first.")
        self._pruner.step()

    def report(self) -> Any:
        return self._pruner.report()

    def finalize(self, model: nn.Module | None = None, backend: Any = "coreai") -> nn.Module:
        """Bake the masks (in place, as coreai-opt); see the module docstring for ``backend``."""
        if not self._prepared:
            raise RuntimeError("Model must be prepared before finalization. Call prepare() first.")
        kind = _backend(backend)
        target = self._model if model is None else model
        masks = {name: _full_mask(module) for name, module in target.named_modules() if is_masked(module, "weight")}
        if self._pruner.step_count == 0 and all(
                t.sparsity_level == t.config.final_sparsity for t in self._pruner._pruner_info.values()):
            self._pruner.step()  # static masks (no schedule): at their targets since prepare(); nothing changes
        finalized = self._pruner.finalize(target, inplace=True)
        if kind != "coreml":
            _drop_metadata(finalized)
        if kind == "coreai":
            _sparse_parametrizations(finalized, masks)
        return finalized


def _full_mask(module: nn.Module) -> torch.Tensor:
    mask, weight = getattr(module, mask_name("weight")), getattr(module, orig_name("weight"))
    assert isinstance(mask, torch.Tensor) and isinstance(weight, torch.Tensor)
    return mask.bool().expand_as(weight).clone()


def _drop_metadata(model: nn.Module) -> None:
    for module in model.modules():
        for key in [k for k in module._buffers if is_metadata_key(k)]:
            del module._buffers[key]


def _sparse_parametrizations(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """coreai-torch's ``SparseModule`` on each pruned weight: kept values + mask (coreai-opt's CoreAI backend)."""
    try:
        from coreai_torch._compression.custom_layers import SparseModule
        from coreai_torch._compression.utils import wrap_for_parametrization
    except ImportError as exc:
        raise ImportError("finalize(backend='coreai') needs coreai-torch: pip install 'sparsify-coreml[coreai]', or "
                          "use backend='torch' and sparsify.export.coreai.export_coreai") from exc
    sparse = wrap_for_parametrization(SparseModule)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        weight = module.weight.detach()
        parametrize.register_parametrization(module, "weight", sparse(weight[mask].flatten(), mask), unsafe=True)
