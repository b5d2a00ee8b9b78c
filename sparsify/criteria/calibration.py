"""Forward-only calibration for the layer-wise criteria (``sparsegpt``, ``wanda``): what each pruned layer sees.

The data is the pruner's `GradSampler`, used forward only (its targets and ``loss_fn`` are ignored). Its first
``num_batches`` items are kept for the whole mask update — the raw batches, never activations — so every pass
sees the same samples. Then:

* **forward order** — one forward of the first batch records the order in which the pruned modules are first
  called, which of them receive the very same input tensor (the ``q``/``k``/``v`` projections of an attention
  block, the two input layers of a gated MLP) and how often each is called per forward;
* **stages** — consecutive modules (in forward order) fed the same input form one stage, calibrated together
  and sharing one statistic (one Hessian for ``q``/``k``/``v``);
* **merged forwards** — consecutive batches whose inputs differ only in their first dimension are concatenated,
  as long as the largest pruned layer's (unfolded) input stays under `MERGED_COLUMNS` floats (64 MiB): the same
  rows in fewer forwards (so the model must treat samples independently in ``eval()`` mode, as batch norm does);
* **a pass** runs every kept batch through the model in ``eval()`` mode under ``no_grad``, with forward
  pre-hooks that hand each stage module's input to its statistic and that substitute the new weights of the
  modules already pruned in this update — so each stage is calibrated on the inputs of the pruned model — and
  it stops the forward (an exception caught here) once every stage module has been called, so the pass for
  stage ``k`` runs the model only up to stage ``k``.

`input_columns` turns a module input into the rows a layer-wise criterion needs: a ``Linear`` sees rows of
``in_features``; a ``Conv1d`` / ``Conv2d`` (``groups=1``) sees its unfolded patches ``[Ci·kh·kw]`` — the order
of ``weight.flatten(1)`` — one row per output position. A module whose weight its parent reads without calling
it (``nn.MultiheadAttention``'s ``out_proj``) is never called, and the calibration says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from ..masking import MaskHook
from .base import TargetView
from .sampler import GradSampler

__all__ = ["Calibration", "Stage", "check_layer", "input_columns"]

logger = logging.getLogger(__name__)


#: calibration items are concatenated into forwards whose largest layer input (unfolded) stays under this many
#: floats (64 MiB) — fewer, larger forwards over the same rows
MERGED_COLUMNS = 2**24


class _StopForward(Exception):
    """Raised by a pre-hook once every module of the stage has seen its input: the rest of the forward is moot."""


def check_layer(kind: str, name: str, module: nn.Module) -> None:
    """Raise ``ValueError`` naming the module if criterion ``kind`` cannot calibrate it."""
    where = f"criterion {kind!r}: module {name!r} ({type(module).__name__})"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise ValueError(
                f"{where} has groups={module.groups}: layer-wise calibration handles groups=1 only; exclude it "
                f"(module_name_configs={{{name!r}: None}}) or give it another criterion"
            )
        return
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"{where}: layer-wise calibration handles Linear, Conv1d and Conv2d; exclude it "
            f"(module_name_configs={{{name!r}: None}}) or give it another criterion"
        )


def input_columns(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The 2-D float32 ``[rows, columns]`` view of one input of ``module`` (see the module docs)."""
    x = inputs.detach()
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features).float()
    conv2d = isinstance(module, nn.Conv2d)
    if x.dim() == (3 if conv2d else 2):  # an unbatched input
        x = x.unsqueeze(0)
    if not conv2d:
        x = x.unsqueeze(-2)  # Conv1d as a Conv2d of height 1
    kernel, stride, dilation = (tuple(v) if conv2d else (1, v[0]) for v in
                                (module.kernel_size, module.stride, module.dilation))
    padding: Any = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0, 0)
    elif not conv2d:
        padding = (0, padding[0])
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, Ci·K, L]
    return columns.transpose(1, 2).reshape(-1, columns.shape[1]).float()


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """Modules with equal signatures fed the same tensor see the same columns (so share one statistic)."""
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features)
    return (type(module).__name__, module.in_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.padding_mode)


@attrs.define
class Stage:
    """Modules calibrated in one pass; ``leader[name]`` is the module whose statistic ``name`` shares."""

    names: list[str]
    leader: dict[str, str]

    @property
    def leaders(self) -> list[str]:
        return list(dict.fromkeys(self.leader.values()))


class Calibration:
    """The calibration batches of one mask update and the passes over them (see the module docs).

    Args:
        model: the prepared model.
        sampler: the pruner's sampler (forward only).
        targets: the pruned modules this calibration may observe or replace, by name.
        num_batches: how many items of the sampler's data to keep.
        owner: the criterion's name, for messages.
    """

    def __init__(
        self, model: nn.Module, sampler: GradSampler, targets: Mapping[str, TargetView], num_batches: int, owner: str
    ) -> None:
        self.model = model
        self.sampler = sampler
        self.targets = targets
        self.owner = owner
        self.batches: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
        for batch in sampler.batches():
            self.batches.append(batch)
            if len(self.batches) == num_batches:
                break
        if not self.batches:
            raise ValueError(f"{owner}: the calibration data yielded no batch; give it at least one")
        if len(self.batches) < num_batches:
            logger.warning("%s: the calibration data ran out after %d of num_batches=%d batches; using them",
                           owner, len(self.batches), num_batches)
        self._order: list[str] | None = None
        self._inputs: dict[str, int] = {}
        self._calls: dict[str, int] = {}

    # -- forward order ------------------------------------------------------------------------

    def _discover(self) -> None:
        """Forward the first batch once, recording call order, shared inputs and calls per forward."""
        seen: list[torch.Tensor] = []  # kept alive during the forward, so no tensor id is reused
        order: list[str] = []
        inputs: dict[str, int] = {}
        calls: dict[str, int] = dict.fromkeys(self.targets, 0)

        largest = [0]

        def record(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] += 1
            if not args or not isinstance(args[0], torch.Tensor):
                return
            largest[0] = max(largest[0], _columns_size(module, args[0]))
            if name in inputs:
                return
            order.append(name)
            for index, tensor in enumerate(seen):
                if tensor is args[0]:
                    inputs[name] = index
                    return
            inputs[name] = len(seen)
            seen.append(args[0])

        handles = [t.module.register_forward_pre_hook(_bind(record, n)) for n, t in self.targets.items()]
        try:
            with _evaluating(self.model):
                self._forward(self.batches[0])
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in self.targets if n not in inputs]
        if missing:
            raise RuntimeError(
                f"{self.owner}: module(s) {missing} were not called with a tensor input by the model's forward on "
                f"the calibration data, so their inputs cannot be observed (a module whose parent reads its weight "
                f"directly, such as nn.MultiheadAttention's out_proj, is never called); exclude them or give them "
                f"another criterion"
            )
        self._order, self._inputs, self._calls = order, inputs, calls
        self.batches = _merged(self.batches, max(1, MERGED_COLUMNS // max(largest[0], 1)))

    def order(self, names: Sequence[str]) -> list[str]:
        """``names`` in the order the model's forward first calls them."""
        if self._order is None:
            self._discover()
        assert self._order is not None
        wanted = set(names)
        return [n for n in self._order if n in wanted]

    def stages(self, names: Sequence[str], sequential: bool = True) -> list[Stage]:
        """Stages over ``names`` (see the module docs); one stage of all of them when not ``sequential``."""
        ordered = self.order(names)
        groups: list[list[str]] = []
        for name in ordered:
            if sequential and groups and self._inputs[groups[-1][0]] != self._inputs[name]:
                groups.append([name])
            elif groups:
                groups[-1].append(name)
            else:
                groups.append([name])
        stages = []
        for group in groups:
            leader: dict[str, str] = {}
            for name in group:
                module = self.targets[name].module
                leader[name] = next((other for other in leader if leader[other] == other
                                     and self._inputs[other] == self._inputs[name]
                                     and _signature(self.targets[other].module) == _signature(module)), name)
            stages.append(Stage(group, leader))
        return stages

    # -- passes ---------------------------------------------------------------------------------

    def run(
        self,
        stage: Stage,
        observe: Callable[[str, torch.Tensor], None],
        replaced: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        reference: Callable[[str, torch.Tensor], None] | None = None,
    ) -> None:
        """One pass over the kept batches: ``observe(leader, columns)`` for each input of the stage's leaders,
        with the tensors in ``replaced`` (module name → parameter name → tensor; the pruned parameter already
        masked) standing in for the current ones. With ``reference``, every batch is first run without the
        replacements, calling ``reference(leader, columns)`` — so the same sample's input before and after the
        update's earlier layers were pruned can be paired."""
        if self._order is None:
            self._discover()
        replaced = replaced or {}
        needed = {n: self._calls[n] for n in stage.names}
        count: dict[str, int] = {}
        state = {"swap": True, "observe": observe}
        saved: dict[tuple[str, str], torch.Tensor] = {}

        def seen(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
            if stage.leader[name] == name and args and isinstance(args[0], torch.Tensor):
                state["observe"](name, input_columns(module, args[0]))
            count[name] = count.get(name, 0) + 1
            if all(count.get(n, 0) >= c for n, c in needed.items()):
                raise _StopForward

        def swap(name: str, module: nn.Module, _args: tuple[Any, ...]) -> None:
            if not state["swap"]:
                return
            for key, value in replaced[name].items():
                if key == self.targets[name].param_name:
                    setattr(module, key, value)
                else:  # a plain parameter (the bias): swap its data for this call only
                    param = getattr(module, key)
                    saved.setdefault((name, key), param.data)
                    param.data = value

        def restore(name: str, module: nn.Module, *_: Any) -> None:
            for key in list(replaced.get(name, {})):
                data = saved.pop((name, key), None)
                if data is not None:
                    getattr(module, key).data = data

        handles = []
        for name in replaced:
            module = self.targets[name].module
            handles += [module.register_forward_pre_hook(_bind(swap, name)),
                        module.register_forward_hook(_bind(restore, name))]
        handles += [self.targets[n].module.register_forward_pre_hook(_bind(seen, n)) for n in stage.names]
        try:
            with _evaluating(self.model):
                for batch in self.batches:
                    if reference is not None:
                        state.update(swap=False, observe=reference)
                        count.clear()
                        self._forward(batch)
                        state.update(swap=True, observe=observe)
                    count.clear()
                    self._forward(batch)
        finally:
            for handle in handles:
                handle.remove()
            for (name, key), data in saved.items():
                getattr(self.targets[name].module, key).data = data
            for name in replaced:
                _refresh(self.targets[name])

    def _forward(self, batch: tuple[tuple[Any, ...], dict[str, Any], Any]) -> None:
        try:
            with torch.no_grad():
                self.sampler.forward(self.model, batch)
        except _StopForward:
            pass


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``eval()`` mode for a pass, then each module's own mode back."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _columns_size(module: nn.Module, inputs: torch.Tensor) -> int:
    """How many floats `input_columns` makes of one input (an unfolded convolution input is larger)."""
    if isinstance(module, nn.Conv2d):
        return inputs.numel() * math.prod(module.kernel_size) // math.prod(module.stride)
    if isinstance(module, nn.Conv1d):
        return inputs.numel() * module.kernel_size[0] // module.stride[0]
    return inputs.numel()


def _mergeable(first: Any, other: Any) -> bool:
    if isinstance(first, torch.Tensor):
        return (isinstance(other, torch.Tensor) and first.dim() > 0 and first.dim() == other.dim()
                and first.shape[1:] == other.shape[1:] and first.dtype == other.dtype and first.device == other.device)
    if isinstance(first, Mapping):
        return isinstance(other, Mapping) and first.keys() == other.keys() and all(
            _mergeable(first[k], other[k]) for k in first)
    if isinstance(first, (tuple, list)):
        return (type(first) is type(other) and len(first) == len(other)
                and all(_mergeable(a, b) for a, b in zip(first, other)))
    try:
        return bool(first == other)
    except Exception:  # an odd object that cannot be compared is simply not merged
        return False


def _concatenated(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, Mapping):
        return {k: _concatenated([v[k] for v in values]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concatenated(list(parts)) for parts in zip(*values))
    return first


def _merged(batches: list[Any], factor: int) -> list[Any]:
    """Consecutive batches concatenated along dim 0, ``factor`` at a time, where their inputs allow (same
    shapes but the first, equal non-tensor arguments): fewer, larger forwards with the same rows. Targets are
    dropped (unused)."""
    if factor <= 1:
        return batches
    merged: list[Any] = []
    group: list[Any] = []
    for args, kwargs, _ in batches:
        if group and (len(group) == factor or not _mergeable(group[0], (args, kwargs))):
            merged.append((*_concatenated(group), None))
            group = []
        group.append((args, kwargs))
    if group:
        merged.append((*_concatenated(group), None))
    return merged


def _bind(function: Callable[..., None], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], *_: Any) -> None:
        function(name, module, args)

    return hook


def _refresh(target: TargetView) -> None:
    """Show the module's own masked weight again after a pass that substituted it."""
    for hook in target.module._forward_pre_hooks.values():
        if isinstance(hook, MaskHook) and hook._tensor_name == target.param_name:
            hook.refresh(target.module)
