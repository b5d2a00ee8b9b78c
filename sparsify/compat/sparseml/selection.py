"""llm-compressor / SparseML v2 layer targets (``SparseGPTModifier``, ``WandaPruningModifier``)."""

from __future__ import annotations

import re

import attrs
from torch import nn

from ..plan import PRUNABLE_TYPES, Origin, Selection

__all__ = ["LayerTargets"]


def _matches(token: str, name: str, module: nn.Module) -> bool:
    if token.startswith("re:"):
        return re.match(token[3:], name) is not None
    return token == name or token == type(module).__name__


@attrs.frozen
class LayerTargets(Selection):
    """The Linear / Conv layers inside the ``targets`` layers, minus ``ignore`` (SparseML v2's rule).

    A target is a module name, a class name, or ``"re:<regex>"`` (``re.match`` on the name). No
    targets means the model's transformer blocks: the modules whose class is listed in
    ``model._no_split_modules`` (Hugging Face models list their decoder-layer class there).
    """

    targets: tuple[str, ...]
    ignore: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"layers in {list(self.targets) or '_no_split_modules blocks'}" + (
            f", ignoring {list(self.ignore)}" if self.ignore else "")

    def select(self, model: nn.Module, origin: Origin) -> list[str]:
        targets = list(self.targets)
        if not targets or targets == ["__ALL__"]:
            blocks = list(getattr(model, "_no_split_modules", None) or [])
            if not blocks:
                raise origin.error("no targets given and the model does not name its blocks in _no_split_modules: "
                                   "give targets (layer names, class names or 're:' patterns)")
            targets = blocks
        roots = [name for name, module in model.named_modules() if any(_matches(t, name, module) for t in targets)]
        missing = [t for t in targets if not any(_matches(t, n, m) for n, m in model.named_modules())]
        if missing:
            raise origin.error(f"targets {missing} match no layer of the model")
        chosen = []
        for name, module in model.named_modules():
            inside = any(name == root or name.startswith(root + ".") or root == "" for root in roots)
            if inside and isinstance(module, PRUNABLE_TYPES) and not any(_matches(t, name, module) for t in
                                                                         self.ignore):
                chosen.append(name)
        return chosen
