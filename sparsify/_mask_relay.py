"""The relay that runs a child module's mask hooks around its parent's forward, for a weight the parent reads
itself (``nn.MultiheadAttention`` reads ``out_proj.weight``, never calling ``out_proj``)."""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn


class _Hook(Protocol):
    """What the relay calls of `sparsify.masking.MaskHook` (a protocol: masking imports this module)."""

    def __call__(self, module: nn.Module, inputs: Any) -> None: ...

    def detach(self, module: nn.Module, *args: Any) -> None: ...


class ReaderRelay:
    """Runs a child's mask hooks around its parent's forward (plain object: copies and pickles)."""

    def __init__(self, hook: _Hook, module: nn.Module) -> None:
        self.hook = hook
        self.module = module

    def before(self, *_: Any) -> None:
        self.hook(self.module, ())

    def after(self, *_: Any) -> None:
        self.hook.detach(self.module)
