"""Block chains: calibrate the layers of one block on its cached inputs instead of re-running the model.

Deep models are chains of blocks: a transformer's decoder layers (an ``nn.ModuleList`` called in turn), the
layers of an ``nn.Sequential``. Without knowing that, the pass for a stage must run the model from its input up
to the stage, so calibrating ``L`` blocks costs about ``L²/2`` block forwards. The first calibration forward
therefore also probes every ``nn.ModuleList`` / ``nn.Sequential`` of two or more children (`ChainProbe`): it is a
chain when each child is called once, with one tensor argument that is the previous child's output (or its first
element), and with the very same keyword arguments (one attention mask, one tuple of position embeddings).

With a chain holding pruned layers in at least two of its blocks (`BlockInputs`): the inputs of its first block
are captured once per calibration batch (the forward is stopped there); a stage inside block ``b`` runs block
``b`` alone on its cached inputs; when the stages of block ``b`` are done, its outputs — with the new weights —
become block ``b + 1``'s inputs. Each block then runs about twice, as in SparseGPT's and Core ML Tools' own
implementations; one block's activations per calibration batch are held (twice with ``asymmetric``, whose
reference inputs run through the blocks with their old weights). Layers outside the chain use the model's
forward as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from .passes import PrunedLayer, Replacements, StopForward, swapped

__all__ = ["BlockInputs", "Chain", "ChainProbe"]


@attrs.define
class Chain:
    """Blocks called in turn, each on the previous one's output (``tuple_output[i]``: take its first element)."""

    blocks: list[tuple[str, nn.Module]]
    tuple_output: list[bool]

    def block_of(self, name: str) -> int | None:
        for index, (prefix, _) in enumerate(self.blocks):
            if name == prefix or name.startswith(prefix + "."):
                return index
        return None


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except Exception:  # anything that cannot be compared is not the same
        return False


class ChainProbe:
    """Hooks for the first calibration forward that record, for every candidate container, how its children
    were called (see the module docs)."""

    def __init__(self, model: nn.Module) -> None:
        self.candidates = [
            (name, list(module.named_children())) for name, module in model.named_modules()
            if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2
        ]
        self.calls: dict[tuple[int, int], list[tuple[tuple[Any, ...], dict[str, Any], Any]]] = {}
        self.handles: list[Any] = []

    def attach(self) -> None:
        for c, (_, children) in enumerate(self.candidates):
            for i, (_, child) in enumerate(children):
                self.handles.append(child.register_forward_hook(self._recorder(c, i), with_kwargs=True))

    def _recorder(self, c: int, i: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            self.calls.setdefault((c, i), []).append((args, kwargs, output))

        return hook

    def result(self, targets: Sequence[str]) -> Chain | None:
        """The valid chain holding pruned modules in the most blocks (at least two), or ``None``; drops the
        recorded tensors."""
        for handle in self.handles:
            handle.remove()
        best, best_count = None, 1
        for c, (prefix, children) in enumerate(self.candidates):
            chain = self._chain(c, prefix, children)
            if chain is None:
                continue
            count = len({chain.block_of(t) for t in targets} - {None})
            if count > best_count:
                best, best_count = chain, count
        self.calls.clear()
        return best

    def _chain(self, c: int, prefix: str, children: list[tuple[str, nn.Module]]) -> Chain | None:
        records = [self.calls.get((c, i), []) for i in range(len(children))]
        if any(len(r) != 1 for r in records):
            return None
        tuple_output = []
        for i, [(args, kwargs, output)] in enumerate(records):
            if len(args) != 1 or not isinstance(args[0], torch.Tensor):
                return None
            first_kwargs = records[0][0][1]
            if kwargs.keys() != first_kwargs.keys() or not all(_same(kwargs[k], first_kwargs[k]) for k in kwargs):
                return None
            if i + 1 < len(records):
                following = records[i + 1][0][0]
                if following and following[0] is output:
                    tuple_output.append(False)
                elif isinstance(output, (tuple, list)) and output and following and following[0] is output[0]:
                    tuple_output.append(True)
                else:
                    return None
        tuple_output.append(False)
        names = [f"{prefix}.{n}" if prefix else n for n, _ in children]
        return Chain([(n, m) for n, (_, m) in zip(names, children)], tuple_output)


class BlockInputs:
    """The cached inputs of one block of the chain per calibration batch, advanced block by block."""

    def __init__(self, chain: Chain, reference: bool) -> None:
        self.chain = chain
        self.reference = reference
        self.index = -1
        self.inputs: list[tuple[Any, ...]] = []
        self.dense: list[tuple[Any, ...]] = []
        self.kwargs: list[dict[str, Any]] = []

    def advance(
        self,
        index: int,
        forward: Any,
        batches: Sequence[Any],
        targets: Mapping[str, PrunedLayer],
        replaced: Replacements,
    ) -> None:
        """Bring the cache to block ``index``: capture the first block's inputs with ``forward(batch)`` (the
        model's), then run each finished block on its inputs with the new weights in ``replaced``."""
        if self.index < 0:
            self.inputs, self.kwargs = self._capture(forward, batches, targets, replaced)
            if self.reference:
                self.dense = self._capture(forward, batches, targets, {})[0] if replaced else list(self.inputs)
            self.index = 0
        while self.index < index:
            self.inputs = self._through(self.index, self.inputs, targets, replaced)
            if self.reference:
                self.dense = self._through(self.index, self.dense, targets, {})
            self.index += 1

    def _capture(
        self, forward: Any, batches: Sequence[Any], targets: Mapping[str, PrunedLayer],
        replaced: Replacements,
    ) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
        inputs: list[tuple[Any, ...]] = []
        kwargs: list[dict[str, Any]] = []

        def stop(_module: nn.Module, args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
            inputs.append(args)
            kwargs.append(call_kwargs)
            raise StopForward

        handle = self.chain.blocks[0][1].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            with swapped(targets, replaced):
                for batch in batches:
                    forward(batch)
        finally:
            handle.remove()
        return inputs, kwargs

    def _through(
        self, index: int, inputs: list[tuple[Any, ...]], targets: Mapping[str, PrunedLayer],
        replaced: Replacements,
    ) -> list[tuple[Any, ...]]:
        block = self.chain.blocks[index][1]
        outputs = []
        with swapped(targets, replaced), torch.no_grad():
            for args, kwargs in zip(inputs, self.kwargs):
                output = block(*args, **kwargs)
                outputs.append((output[0] if self.chain.tuple_output[index] else output,))
        return outputs
