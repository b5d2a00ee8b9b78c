"""Forward-only calibration for the layer-wise criteria (``sparsegpt``, ``wanda``): what each pruned layer sees.

The data is the pruner's `sparsify.calibration.CalibrationData` (a `GradSampler` too), used forward only (targets and
any ``loss_fn`` are ignored). Its first
``num_batches`` items are kept for the whole mask update — the raw batches, never activations — so every pass
sees the same samples. Then:

* **forward order** — one forward of the first batch records the order in which the pruned modules are first
  called, which of them receive the very same input tensor (the ``q``/``k``/``v`` projections of an attention
  block, the two input layers of a gated MLP) and how often each is called per forward;
* **stages** — consecutive modules (in forward order) fed the same input form one stage, calibrated together
  and sharing one statistic (one Hessian for ``q``/``k``/``v``); a criterion may ask for one stage per block of
  a chain (below) instead — every layer of a decoder block calibrated on one forward of that block;
* **merged forwards** — consecutive items whose inputs differ only in their batch dimension are concatenated
  where that is exactly equivalent (`sparsify.calibration.merge`),
  as long as the largest pruned layer's (unfolded) input stays under `MERGED_COLUMNS` floats (64 MiB): the same
  rows in fewer forwards (so the model must treat samples independently in ``eval()`` mode, as batch norm does);
* **a pass** runs every kept batch through the model in ``eval()`` mode under ``no_grad``, with forward
  pre-hooks that hand each stage module's input to its statistic and that substitute the new weights of the
  modules already pruned in this update — so each stage is calibrated on the inputs of the pruned model — and
  it stops the forward (an exception caught here) once every stage module has been called, so the pass for
  stage ``k`` runs the model only up to stage ``k``;
* **block chains** — when the pruned layers sit in a chain of blocks (decoder layers, an ``nn.Sequential``), a
  stage inside a block runs that block alone on its cached inputs (`sparsify.calibration.chain`).

`input_columns` turns a module input into the rows a layer-wise criterion needs: a ``Linear`` (and
transformers' ``Conv1D``, whose ``[in, out]`` weight the criterion sees transposed) sees rows of
``in_features``; a ``Conv1d`` / ``Conv2d`` (``groups=1``) sees its unfolded patches ``[Ci·kh·kw]`` — the
order of ``weight.flatten(1)`` — one row per output position. A module whose weight its parent reads without calling
it (``nn.MultiheadAttention``'s ``out_proj``) is never called, and the calibration says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .._module_types import Conv1D
from .chain import BlockInputs, Chain, ChainProbe
from .data import CalibrationData
from .merge import merged
from .passes import PrunedLayer, Replacements, StopForward, bind, columns_size, evaluating, swapped

__all__ = ["Calibration", "Stage", "check_layer", "input_columns"]

logger = logging.getLogger(__name__)


#: calibration items are concatenated into forwards whose largest layer input (unfolded) stays under this many
#: floats (64 MiB) — fewer, larger forwards over the same rows
MERGED_COLUMNS = 2**24


def check_layer(kind: str, name: str, module: nn.Module) -> None:
    """Raise ``ValueError`` naming the module if criterion ``kind`` cannot calibrate it."""
    where = f"criterion {kind!r}: module {name!r} ({type(module).__name__})"
    if isinstance(module, Conv1D):
        return
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise ValueError(
                f"{where} has groups={module.groups}: layer-wise calibration handles groups=1 only; exclude it "
                f"(module_name_configs={{{name!r}: None}}) or give it another criterion"
            )
        return
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"{where}: layer-wise calibration handles Linear, Conv1d, Conv2d and transformers' Conv1D; exclude it "
            f"(module_name_configs={{{name!r}: None}}) or give it another criterion"
        )


def input_columns(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The 2-D float32 ``[rows, columns]`` view of one input of ``module`` (see the module docs)."""
    x = inputs.detach()
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features).float()
    if isinstance(module, Conv1D):  # x @ weight with weight [in, out]
        return x.reshape(-1, _in_features(module)).float()
    assert isinstance(module, (nn.Conv1d, nn.Conv2d))  # check_layer admits these, Linear and Conv1D only
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


def _in_features(module: nn.Module) -> int:
    """A transformers ``Conv1D``'s input size: the first dimension of its ``[in, out]`` weight."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """Modules with equal signatures fed the same tensor see the same columns (so share one statistic)."""
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features)
    if isinstance(module, Conv1D):
        return ("linear", _in_features(module))
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
        reference: passes will pair inputs with the unpruned model's (``run(..., reference=...)``), so a chain keeps
            its blocks' reference inputs too.
    """

    def __init__(
        self, model: nn.Module, sampler: CalibrationData, targets: Mapping[str, PrunedLayer], num_batches: int,
        owner: str,
        reference: bool = False,
    ) -> None:
        self.model = model
        self.reference = reference
        self.chain: Chain | None = None
        self._blocks: BlockInputs | None = None
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
            largest[0] = max(largest[0], columns_size(module, args[0]))
            if name in inputs:
                return
            order.append(name)
            for index, tensor in enumerate(seen):
                if tensor is args[0]:
                    inputs[name] = index
                    return
            inputs[name] = len(seen)
            seen.append(args[0])

        handles = [t.module.register_forward_pre_hook(bind(record, n)) for n, t in self.targets.items()]
        probe = ChainProbe(self.model)
        try:
            probe.attach()
            with evaluating(self.model):
                self._forward(self.batches[0])
        finally:
            for handle in handles:
                handle.remove()
            self.chain = probe.result(list(self.targets))
        missing = [n for n in self.targets if n not in inputs]
        if missing:
            raise RuntimeError(
                f"{self.owner}: module(s) {missing} were not called with a tensor input by the model's forward on "
                f"the calibration data, so their inputs cannot be observed (a module whose parent reads its weight "
                f"directly, such as nn.MultiheadAttention's out_proj, is never called); exclude them or give them "
                f"another criterion"
            )
        self._order, self._inputs, self._calls = order, inputs, calls
        self.batches = merged(self.batches, max(1, MERGED_COLUMNS // max(largest[0], 1)))
        if self.chain is not None:
            self._blocks = BlockInputs(self.chain, self.reference)

    def order(self, names: Sequence[str]) -> list[str]:
        """``names`` in the order the model's forward first calls them."""
        if self._order is None:
            self._discover()
        assert self._order is not None
        wanted = set(names)
        return [n for n in self._order if n in wanted]

    def stages(self, names: Sequence[str], sequential: bool = True, by_block: bool = False) -> list[Stage]:
        """Stages over ``names`` (see the module docs); one stage of all of them when not ``sequential``; with
        ``by_block``, one stage of all the consecutive modules inside one block of the chain (SparseGPT's and Core
        ML Tools' order: a block's layers all calibrated on one forward of the block)."""
        ordered = self.order(names)

        def joins(group: list[str], name: str) -> bool:
            if not sequential or self._inputs[group[0]] == self._inputs[name]:
                return True
            if not by_block or self.chain is None:
                return False
            block = self.chain.block_of(name)
            return block is not None and block == self.chain.block_of(group[-1])

        groups: list[list[str]] = []
        for name in ordered:
            if groups and joins(groups[-1], name):
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
        replaced: Replacements | None = None,
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
        state: dict[str, Any] = {"swap": True, "observe": observe}

        def seen(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
            if stage.leader[name] == name and args and isinstance(args[0], torch.Tensor):
                state["observe"](name, input_columns(module, args[0]))
            count[name] = count.get(name, 0) + 1
            if all(count.get(n, 0) >= c for n, c in needed.items()):
                raise StopForward

        blocks = {self.chain.block_of(n) for n in stage.names} if self.chain is not None else {None}
        block = blocks.pop() if len(blocks) == 1 else None
        runs: list[Callable[..., None]]
        dense: list[Callable[..., None]]
        with evaluating(self.model):
            if block is not None:
                assert self._blocks is not None
                self._blocks.advance(block, self._forward, self.batches, self.targets, replaced)
                module = self._blocks.chain.blocks[block][1]
                runs = [(lambda a=args, k=kwargs: self._call(module, a, k)) for args, kwargs in
                        zip(self._blocks.inputs, self._blocks.kwargs)]
                dense = [(lambda a=args, k=kwargs: self._call(module, a, k)) for args, kwargs in
                         zip(self._blocks.dense, self._blocks.kwargs)]
            else:
                runs = [(lambda b=batch: self._forward(b)) for batch in self.batches]
                dense = runs
            if reference is not None and len(dense) != len(runs):
                raise RuntimeError(f"{self.owner}: reference inputs were not kept (Calibration(reference=True))")
            handles = [self.targets[n].module.register_forward_pre_hook(bind(seen, n)) for n in stage.names]
            try:
                with swapped(self.targets, replaced, lambda: state["swap"]):
                    for index, run in enumerate(runs):
                        if reference is not None:
                            state.update(swap=False, observe=reference)
                            count.clear()
                            dense[index]()
                            state.update(swap=True, observe=observe)
                        count.clear()
                        run()
            finally:
                for handle in handles:
                    handle.remove()

    @staticmethod
    def _call(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            with torch.no_grad():
                module(*args, **kwargs)
        except StopForward:
            pass

    def _forward(self, batch: tuple[tuple[Any, ...], dict[str, Any], Any]) -> None:
        try:
            with torch.no_grad():
                self.sampler.forward(self.model, batch)
        except StopForward:
            pass


