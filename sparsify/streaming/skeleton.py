"""The model without its weights: a meta-device skeleton, parts of it loaded only when they are called.

`prune_pretrained` builds the model from its ``config.json`` on the ``meta`` device (shapes, no memory) and
then needs, at any time, only the modules in front of the first decoder block (the embeddings, a rotary
embedding) or one decoder block. Modules in front are loaded by a forward pre-hook the first time they are
called (`load_on_call`), so the final norm and the head, never called while the inputs of the first block are
captured, are never loaded. A module holding buffers that the checkpoint does not store (a rotary embedding's
``inv_freq``) is rebuilt on the CPU from the config instead.

The inputs of the first block are captured the way SparseGPT's reference code does it (its "Catcher"): a
forward pre-hook on the first block records the hidden states and the exact keyword arguments the model passes
(attention mask, rotary position embeddings, position ids) and stops the forward (`capture_first_block`).
Hidden states are float32 from the embedding on (a forward hook casts its output), so every block computes
in float32 whatever the checkpoint's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..calibration.passes import StopForward
from .checkpoint import SourceCheckpoint

__all__ = ["Skeleton"]


class Skeleton:
    """A causal LM built on the meta device from ``config``, with its chain of decoder blocks found.

    Args:
        config: a transformers ``PretrainedConfig``.
        checkpoint: where tensors are loaded from.
    """

    def __init__(self, config: Any, checkpoint: SourceCheckpoint) -> None:
        from transformers import AutoModelForCausalLM

        self.config = config
        self.checkpoint = checkpoint
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config)
        self.model.eval()
        self.prefix, self.layers = self._decoder_layers()
        self._keys = set(checkpoint.names())
        self._handles: list[Any] = []

    def _decoder_layers(self) -> tuple[str, nn.ModuleList]:
        count = getattr(self.config, "num_hidden_layers", None)
        found = [(name, module) for name, module in self.model.named_modules()
                 if isinstance(module, nn.ModuleList) and len(module) > 0 and len(module) == count]
        if not found:
            raise ValueError(f"{type(self.model).__name__}: found no list of num_hidden_layers={count} decoder "
                             f"blocks; prune_pretrained streams models whose blocks sit in one nn.ModuleList")
        return found[0]

    # -- keys ---------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The checkpoint key of the model's tensor ``name`` (checkpoints saved from the base model lack its
        prefix)."""
        if name in self._keys:
            return name
        base = getattr(self.model, "base_model_prefix", "")
        for candidate in (name.removeprefix(base + "."), f"{base}.{name}"):
            if candidate in self._keys:
                return candidate
        raise ValueError(f"the source checkpoint has no tensor {name!r}, which the model built from its config needs")

    def block_prefix(self, index: int) -> str:
        return f"{self.prefix}.{index}."

    def block_keys(self, index: int) -> dict[str, str]:
        """The block's own tensor names (``self_attn.q_proj.weight``) → checkpoint keys."""
        block = self.layers[index]
        names = [n for n, _ in block.named_parameters()] + [n for n, b in _persistent_buffers(block)]
        return {name: self.key(self.block_prefix(index) + name) for name in names}

    def outside_keys(self) -> list[str]:
        """Checkpoint keys of every tensor outside the decoder blocks (embeddings, final norm, head)."""
        inside = {k for i in range(len(self.layers)) for k in self.block_keys(i).values()}
        return [k for k in self.checkpoint.names() if k not in inside]

    # -- loading ------------------------------------------------------------------------------

    def load_block(self, index: int, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        """Block ``index`` on the CPU in float32 from ``tensors`` (its own names), no copy kept elsewhere."""
        block = self.layers[index]
        _check_buffers(block, f"{self.prefix}.{index}")
        block.to_empty(device="cpu")
        state = {name: tensor.float() for name, tensor in tensors.items()}
        block.load_state_dict(state, strict=True, assign=True)
        for param in block.parameters():
            param.requires_grad_(False)
        return block

    def unload_block(self, index: int) -> None:
        self.layers[index].to("meta")

    def load_on_call(self) -> None:
        """Load each module outside the blocks on its first call (see the module docs)."""
        inside = {id(m) for m in self.layers.modules()}
        for name, module in list(self.model.named_modules()):
            if id(module) in inside or not _has_meta_tensors(module):
                continue
            if any(True for _ in _nonpersistent_buffers(module)):
                self._rebuild(name, module)  # now: a pre-hook could not swap the module it is called on
            else:
                self._handles.append(module.register_forward_pre_hook(self._loader(name)))
        embeddings = self.model.get_input_embeddings()
        self._handles.append(embeddings.register_forward_hook(lambda _m, _a, out: out.float()))

    def _loader(self, name: str) -> Callable[..., None]:
        def load(module: nn.Module, _args: Any) -> None:
            if not _has_meta_tensors(module):
                return
            prefix = f"{name}." if name else ""
            keys = {n: self.key(prefix + n) for n, p in module.named_parameters(recurse=False)}
            keys.update({n: self.key(prefix + n) for n, _ in _persistent_buffers(module, recurse=False)})
            tensors = self.checkpoint.tensors(keys.values())
            module.to_empty(device="cpu", recurse=False)
            for local, key in keys.items():
                if local in module._parameters:
                    module._parameters[local] = nn.Parameter(tensors[key], requires_grad=False)
                else:
                    module._buffers[local] = tensors[key]

        return load

    def _rebuild(self, name: str, module: nn.Module) -> None:
        """Replace ``module`` by one built on the CPU from the config (its buffers are computed, not stored)."""
        try:
            with torch.device("cpu"):
                fresh = type(module)(config=self.config)
        except Exception as error:  # any constructor failure: say which module and why
            raise ValueError(f"module {name!r} ({type(module).__name__}) holds buffers the checkpoint does not "
                             f"store and could not be rebuilt from the config: {error}") from error
        if any(True for _ in fresh.parameters()):
            raise ValueError(f"module {name!r} ({type(module).__name__}) holds buffers the checkpoint does not "
                             f"store and parameters; prune_pretrained cannot load it")
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, fresh)

    def unload_outside(self) -> None:
        """Free every module outside the blocks again (the captured inputs are all that is needed of them)."""
        inside = {id(m) for m in self.layers.modules()}
        for module in self.model.modules():
            if id(module) not in inside and not _has_meta_tensors(module):
                module.to("meta")

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- the first block's inputs -------------------------------------------------------------

    def capture_first_block(
        self, batches: Iterable[tuple[tuple[Any, ...], dict[str, Any], Any]]
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """``(hidden states, keyword arguments)`` the model passes to its first block, per batch."""
        captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

        def catch(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if not isinstance(hidden, torch.Tensor) or len(args) > 1:
                raise ValueError(f"{type(self.model).__name__}: its first decoder block is not called with one "
                                 f"hidden-state tensor; prune_pretrained cannot replay it")
            captured.append((hidden.float(), dict(kwargs)))
            raise StopForward

        handle = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for args, kwargs, _ in batches:
                    kwargs = dict(kwargs)
                    kwargs.setdefault("use_cache", False)
                    try:
                        self.model(*args, **kwargs)
                    except StopForward:
                        continue
                    raise RuntimeError(f"{type(self.model).__name__}: the forward never called its first "
                                       f"decoder block ({self.prefix}.0)")
        finally:
            handle.remove()
        return captured


def _has_meta_tensors(module: nn.Module) -> bool:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return any(t.is_meta for t in tensors)


def _persistent_buffers(module: nn.Module, recurse: bool = True) -> Iterable[tuple[str, torch.Tensor]]:
    for name, buffer in module.named_buffers(recurse=recurse):
        owner_name, _, local = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if local not in owner._non_persistent_buffers_set:
            yield name, buffer


def _nonpersistent_buffers(module: nn.Module) -> Iterable[str]:
    for local in module._buffers:
        if local in module._non_persistent_buffers_set:
            yield local


def _check_buffers(block: nn.Module, where: str) -> None:
    for name, sub in block.named_modules():
        for local in _nonpersistent_buffers(sub):
            raise ValueError(f"decoder block {where} holds buffer {name + '.' + local if name else local!r} that "
                             f"checkpoints do not store; prune_pretrained cannot stream this architecture")
