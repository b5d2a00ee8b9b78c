"""The masking kernels behind `sparsify.masking`: ``where(mask, x, 0)`` fast, bit for bit, without big temporaries.

Why not plain ``torch.where``: on CPU ``where`` with a ``bool`` condition runs a scalar loop (about 37 ms
per 4096 × 4096 weight on one core, against 6 ms for a vectorized multiply), and out of place it
also allocates a fresh tensor, whose first touch costs page faults (about 25 ms for 64 MiB). A
float copy of the mask (Core ML Tools' choice) would be fast but costs 4 bytes per weight.

What is done instead: the floating-point tensor is viewed as integers of the same width, and
multiplied by the mask converted to 0/1 integers in chunks (256 Ki elements on one thread). Integer
multiplication by 0 or 1 gives exactly the bits of ``where(mask, x, 0)`` (``+0.0`` where pruned, the
original bits — NaN and ``-0.0`` included — where kept), it is vectorized, and the only temporary is
one chunk (1 MiB on one thread, so it stays in cache). The default mode's forward keeps that chunk per
thread; the in-place mode, whose passes run only in the backward pass and at mask changes, allocates it
for the call (``keep_scratch=False``) so that no training state grows by it. Off CPU, ``torch.where(...,
out=)`` is already a single fast kernel and is used.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch

__all__ = ["MaskedWeight", "fast_path", "masked_into", "select_into", "sole_owner"]

_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
_CHUNK = 1 << 18  # elements per chunk, one thread: 1 MiB of 0/1 integers stays in cache (measured 64 Ki-1 Mi: best)
# With several threads every op is a parallel region, and on busy cores each one can wait for a descheduled
# worker (measured: a 16 Mi-element pass in 256 Ki chunks took from 6 ms to 1 s on 2 shared cores), so the
# chunks are larger: 1 Mi elements per thread, 16 regions for a 4096 x 4096 weight on 2 threads.
_THREADED_CHUNK = 1 << 20
_SMALL = 1 << 15  # up to this many elements the scalar loop of torch.where costs less than three ops' overhead

_zeros: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_scratch = threading.local()  # one chunk-sized integer buffer per thread and dtype, reused


def _zero_like(x: torch.Tensor) -> torch.Tensor:
    zero = _zeros.get((x.dtype, x.device))
    if zero is None:
        zero = _zeros[(x.dtype, x.device)] = torch.zeros((), dtype=x.dtype, device=x.device)
    return zero


def _scratch_for(int_dtype: torch.dtype, numel: int, keep: bool = True) -> torch.Tensor:
    """This thread's integer buffer of at least ``numel`` elements (grown, never shrunk); with ``keep=False``
    a buffer for this call only."""
    if not keep:
        return torch.empty(numel, dtype=int_dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buffer = buffers.get(int_dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[int_dtype] = torch.empty(numel, dtype=int_dtype)
    return buffer


def select_into(out: torch.Tensor, src: torch.Tensor, mask: torch.Tensor, *, keep_scratch: bool = True) -> torch.Tensor:
    """Write ``where(mask, src, 0)`` into ``out`` (which may be ``src`` itself) and return ``out``.

    ``mask`` is ``bool`` and broadcasts to ``src``; ``out`` has ``src``'s shape and dtype. Nothing is
    recorded by autograd: callers pass detached tensors or run under ``no_grad``. ``keep_scratch=False``:
    the chunk buffer is freed on return instead of kept for this thread's next call (see the module's
    docstring: up to 8 MiB per thread with two threads, more than a small model's masks).
    """
    total = src.numel()
    int_dtype = _INT_VIEW.get(src.dtype)
    if (
        total <= _SMALL
        or int_dtype is None
        or src.device.type != "cpu"
        or not (out.is_contiguous() and src.is_contiguous() and mask.is_contiguous())
    ):
        return torch.where(mask, src, _zero_like(src), out=out)
    if mask.shape != src.shape:  # a group mask ([Co, 1, 1, 1], ...): small, one broadcast multiply
        torch.mul(src.view(int_dtype), mask.to(int_dtype), out=out.view(int_dtype))
        return out
    flat_src, flat_out, flat_mask = src.view(-1).view(int_dtype), out.view(-1).view(int_dtype), mask.view(-1)
    threads = torch.get_num_threads()
    chunk = _CHUNK if threads <= 1 else _THREADED_CHUNK * threads
    scratch = _scratch_for(int_dtype, min(total, chunk), keep_scratch)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        ones = scratch[: stop - start]
        ones.copy_(flat_mask[start:stop])
        torch.mul(flat_src[start:stop], ones, out=flat_out[start:stop])
    return out


# -- is a tensor's memory ours alone? ----------------------------------------------------------------------------

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _entry_refs(holder: dict, key: str) -> int:
    entry = holder.get(key)
    return sys.getrefcount(entry)


def _storage_refs(tensor: torch.Tensor) -> int:
    return _storage_use_count(tensor.untyped_storage()._cdata) if _storage_use_count is not None else -1


_SOLE_ENTRY_REFS = _entry_refs({"x": torch.empty(1)}, "x")  # the dict, the local name, getrefcount's argument
_SOLE_STORAGE_REFS = _storage_refs(torch.empty(1))  # the tensor, plus the Python storage object of the query


def sole_owner(holder: dict, key: str, like: torch.Tensor) -> torch.Tensor | None:
    """``holder[key]`` if its memory can be overwritten with a tensor shaped like ``like``, else ``None``.

    It can when it is a plain contiguous tensor of ``like``'s shape, dtype and device, outside any autograd
    graph, that nothing else refers to: no other Python name (the Python reference count) and no other
    tensor sharing its memory (the storage's reference count) — in particular no saved tensor of an
    autograd graph that has not run its backward yet, and no value a user kept from an earlier forward.
    Reference counts are measured against a calibration made the same way at import, so the test does
    not depend on the Python version; where the storage count is not available, nothing is reused.
    """
    entry = holder.get(key)
    if (
        _storage_use_count is None
        or type(entry) is not torch.Tensor
        or entry.requires_grad
        or entry.shape != like.shape
        or entry.dtype != like.dtype
        or entry.device != like.device
        or not entry.is_contiguous()
        or entry.is_inference()
    ):
        return None
    if sys.getrefcount(entry) > _SOLE_ENTRY_REFS or _storage_refs(entry) > _SOLE_STORAGE_REFS:
        return None
    return entry


# -- the default mode's masked weight -------------------------------------------------------------------------


class MaskedWeight(torch.autograd.Function):
    """``where(mask, orig, 0)`` written into ``out``, with the gradient masked in place when it can be.

    Same values and gradients as ``torch.where(mask, orig, 0.0)``, bit for bit; ``out`` must be memory
    that nothing else uses (`sole_owner`). The output is a new tensor object on ``out``'s memory, so a
    graph that saved it keeps that memory marked as in use until its backward has run. The incoming
    gradient (the engine's own tensor, produced for this node) is masked in place when it is a plain
    contiguous tensor; a hook that kept a reference to the gradient of ``module.<name>`` itself would
    see it masked.
    """

    @staticmethod
    def forward(ctx: Any, orig: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        select_into(out, orig, mask)
        ctx.save_for_backward(mask)  # saved, so a mask changed before backward raises as autograd always does
        ctx.set_materialize_grads(False)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None, None]:
        (mask,) = ctx.saved_tensors
        if grad is None or not ctx.needs_input_grad[0]:
            return None, None, None
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable
            return torch.where(mask, grad, 0.0), None, None
        if type(grad) is not torch.Tensor or not grad.is_contiguous():
            # e.g. an expanded or transposed gradient: make the contiguous copy that AccumulateGrad would
            # make anyway (a layout like the parameter's), then mask that in place
            grad = grad.clone(memory_format=torch.contiguous_format)
        return select_into(grad, grad, mask), None, None


def fast_path(orig: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the buffer-reusing function can run, and pays: plain tensors, eager mode (no tracing, compiling
    or functorch transform).

    Below ``_SMALL`` elements it does not pay: a fresh ``torch.where`` and its C++ backward cost less
    than a Python autograd function (measured: 42 vs 64 µs per step for 288 weights, 110 vs 145 µs
    for 18 432), and tensors that small are allocated without page faults.
    """
    return (
        not torch.jit.is_tracing()  # first: under tracing, numel() would be a traced value
        and orig.numel() > _SMALL
        and type(orig) in (torch.Tensor, torch.nn.Parameter)
        and type(mask) is torch.Tensor
        and orig.layout == torch.strided
        and not torch.compiler.is_compiling()
        and not torch.is_inference_mode_enabled()
        and not torch._C._are_functorch_transforms_active()
    )


def masked_into(holder: dict, key: str, orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``where(mask, orig, 0)`` in the memory of ``holder[key]`` when `sole_owner` allows it, else in new memory.

    Differentiable when ``orig`` requires grad and grad mode is on (`MaskedWeight`); check `fast_path` first.
    """
    out = sole_owner(holder, key, orig)
    if out is None:
        out = torch.empty(orig.shape, dtype=orig.dtype, device=orig.device)
    if torch.is_grad_enabled() and orig.requires_grad:
        return MaskedWeight.apply(orig, mask, out)
    return select_into(out, orig.detach(), mask)
