"""Hugging Face ``transformers``: prune inside ``Trainer``, and save pruned models that reload pruned.

* `PruningCallback` drives a `sparsify.Pruner` from ``Trainer``'s own loop: prepare when training
  begins, fold the gradients in before each optimizer step, ``step()`` after it, finalize when training
  ends, and keep the pruning state in every Trainer checkpoint so ``train(resume_from_checkpoint=...)``
  continues the schedule with the same masks.
* `save_pretrained` saves any model — prepared, finalized or plain — so that ``from_pretrained`` reloads
  the weights it computes: masked weights under their plain names, no masks or Core ML metadata. A model
  prepared by `sparsify.Pruner` does this from its own ``model.save_pretrained(...)`` too
  (`sparsify.pruning.saving`).

GPT-2's ``Conv1D`` layers (weight stored ``[in, out]``) are pruned like the equivalent ``nn.Linear``:
the pruner gives patterns their ``[out, in]`` view. Nothing here downloads: build models from configs
or load them from local folders.

This module needs ``transformers`` (and, for ``Trainer``, ``accelerate``); the rest of sparsify does not.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from .._checks import check_flags
from ..checkpoints import load_checkpoint_file
from ..masking import set_mask
from ..pruning import Pruner
from ..pruning.saving import plain_state_dict

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "sparsify.compat.hf needs Hugging Face transformers, which is not installed: pip install "
        "'sparsify-coreml[hf]' (transformers and accelerate, which the Trainer callback needs)"
    ) from exc

__all__ = ["STATE_FILE", "PruningCallback", "save_pretrained"]

logger = logging.getLogger(__name__)

#: the file each Trainer checkpoint folder gets with the pruner's state and masks
STATE_FILE = "sparsify_pruner.pt"
_HAS_OPTIMIZER_STEP = hasattr(TrainerCallback, "on_optimizer_step")  # transformers >= 4.41


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
    """``model.save_pretrained(save_directory, **kwargs)`` with the weights the model computes: masked
    weights under their plain names, without masks, amounts or Core ML metadata, so that
    ``from_pretrained`` reloads them exactly (a later `sparsify.export_coreml` of the reloaded model
    finds the zeros with ``sparse_weights="all"``).

    Works for models prepared by sparsify, Core ML Tools or ``torch.nn.utils.prune``, finalized, or plain.
    """
    save = getattr(type(model), "save_pretrained", None)
    if not callable(save):
        raise TypeError(f"save_pretrained: {type(model).__name__} has no save_pretrained method (not a transformers "
                        "model); save model.state_dict() with torch.save instead")
    if "state_dict" in kwargs:
        kwargs["state_dict"] = plain_state_dict(model, kwargs["state_dict"])
    else:
        kwargs["state_dict"] = plain_state_dict(model)
    save(model, save_directory, **kwargs)


class PruningCallback(TrainerCallback):
    """Prune while ``transformers.Trainer`` trains: ``Trainer(..., callbacks=[PruningCallback(pruner)])``.

    Args:
        pruner: a `sparsify.Pruner` built on the model given to the Trainer. If it is not prepared yet it is
            prepared in place when training begins (after the Trainer built its optimizer: in-place preparation
            keeps every parameter object, so the optimizer trains ``weight_orig``). Leave it unprepared to
            resume from Trainer checkpoints.
        finalize_at_end: bake the masks into plain weights when training ends (``trainer.model`` is then
            finalized in place, ready for ``trainer.save_model()`` and `sparsify.export_coreml`).

    Each step, ``on_pre_optimizer_step`` calls ``pruner.observe_gradients()`` (gradient criteria read the
    gradients before the weights move) and ``on_optimizer_step`` calls ``pruner.step()``, so schedule steps
    are optimizer steps, whatever the gradient accumulation. Every Trainer checkpoint gets `STATE_FILE`
    (``pruner.state_dict()``, the masks and the unmasked weights of the pruned layers), so that a resumed run
    continues exactly; the checkpoint's model weights are the masked weights, which ``from_pretrained`` loads.
    """

    def __init__(self, pruner: Pruner, *, finalize_at_end: bool = True) -> None:
        if not isinstance(pruner, Pruner):
            raise TypeError(f"PruningCallback(pruner=...) expects a sparsify.Pruner, got {type(pruner).__name__}")
        check_flags("PruningCallback", finalize_at_end=finalize_at_end)
        self.pruner = pruner
        self.finalize_at_end = finalize_at_end
        self._prepared_here = False

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        if model is not None and model is not self.pruner.model:
            raise ValueError(
                f"PruningCallback: the Trainer trains a {type(model).__name__} that is not the pruner's model: build "
                "the Pruner on the model given to the Trainer (or pass the model that pruner.prepare() returned)"
            )
        if not self.pruner.targets:
            self.pruner.prepare(inplace=True)
            self._prepared_here = True
        if state.global_step > 0 and self.pruner.step_count == 0:
            self._resume(args, state)

    def _resume(self, args: Any, state: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        path = os.path.join(folder, STATE_FILE)
        if not self._prepared_here:
            raise RuntimeError(
                f"PruningCallback: resuming at step {state.global_step} needs the model unprepared when the Trainer "
                "loads the checkpoint (it holds plain, masked weights): pass Pruner(model, config) without calling "
                "prepare() and let the callback prepare it"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"PruningCallback: resuming at step {state.global_step} but {path} does not exist, so the masks and "
                "the schedule cannot be restored; resume from a checkpoint written with this callback"
            )
        self._restore(path)
        logger.info("PruningCallback: resumed pruning at step %d from %s", state.global_step, path)

    def _restore(self, path: str) -> None:
        """Put a checkpoint's pruner state, masks and unmasked weights of the pruned layers back."""
        saved = load_checkpoint_file(path, map_location="cpu")  # sparsify's reader: nothing in the file runs
        self.pruner.load_state_dict(saved["pruner"])
        targets = self.pruner.targets
        for name, mask in saved["masks"].items():
            target = targets[name]
            with torch.no_grad():
                target.orig.copy_(saved["orig"][name])  # the values under the mask too: an exact resume
            set_mask(target.module, target.param_name, mask, target.sparsity_level)
            for alias in target.tied_to:
                set_mask(self.pruner.model.get_submodule(alias), target.param_name, mask, target.sparsity_level)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.observe_gradients()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not _HAS_OPTIMIZER_STEP:  # older transformers: the step ends right after the optimizer's
            self.pruner.step()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save or not self.pruner.targets:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        masks = {name: mask.cpu() for name, mask in self.pruner.named_masks()}
        orig = {name: self.pruner.targets[name].orig.detach().cpu() for name in masks}
        torch.save({"pruner": self.pruner.state_dict(), "masks": masks, "orig": orig}, os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        best = getattr(state, "best_model_checkpoint", None)
        if getattr(args, "load_best_model_at_end", False) and best and self.pruner.targets:
            self._restore_best(best)
        if self.finalize_at_end and self.pruner.targets:
            self.pruner.finalize(inplace=True)

    def _restore_best(self, folder: str) -> None:
        """``load_best_model_at_end``: the Trainer has just loaded the best checkpoint's weights, but its
        ``load_state_dict(strict=False)`` cannot fill the pruned layers (the checkpoint holds their masked weights
        under plain names, the model ``weight_orig`` and ``weight_mask``): put that checkpoint's own masks,
        unmasked weights and schedule step back, so every layer comes from the same step."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"PruningCallback: load_best_model_at_end loaded {folder}, but {path} does not exist, so its masks "
                "cannot be restored and the pruned layers would keep the last step's weights; keep the checkpoints "
                "this callback writes, or set load_best_model_at_end=False"
            )
        if self.pruner.finalized:
            raise RuntimeError("PruningCallback: load_best_model_at_end after the pruner was finalized: the best "
                               "checkpoint's masks cannot be restored; let the callback finalize (finalize_at_end)")
        self._restore(path)
        logger.info(
            "PruningCallback: load_best_model_at_end: the pruned layers hold the masks and weights of %s (step %d) "
            "too; the Trainer's warnings about their missing weight_orig / weight_mask keys are answered by this",
            folder, self.pruner.step_count)
