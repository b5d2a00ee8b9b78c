"""Convert with coreai-torch and run a saved ``.aimodel`` on this machine, quietly.

Core AI, unlike Core ML, runs on Linux: ``AIModelAsset.load(path)``, ``async with asset.executable()``
lowers the program to the in-package runtime's format in a temporary ``.aimodelx`` folder, and
``load_function("main")`` runs it on numpy arrays. `run_aimodel` does that for a list of input tuples and
returns the outputs in the function's output order.

`quiet_coreai` keeps the libraries' chatter out of the user's terminal: coreai-torch's progress bar (on
stdout), the runtime's ``ODIE ... Loading function`` lines (written by native code to file descriptor
2) and coreai-torch's warning that it was validated with an older torch (recorded once, at INFO, by
`sparsify.export.coreai`). Everything captured is logged at DEBUG. Standard output and error are
redirected at the file-descriptor level for the duration of the block, process-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["convert_program", "quiet_coreai", "run_aimodel", "torch_outputs"]

logger = logging.getLogger("sparsify.export.coreai")
_told_versions: set[str] = set()


@contextlib.contextmanager
def quiet_coreai() -> Iterator[None]:
    """Capture stdout / stderr (file descriptors 1 and 2 too) and Core AI's warnings; log them at DEBUG."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: dict[int, int] = {}
    with tempfile.TemporaryFile(mode="w+b") as capture:
        for fd in (1, 2):
            try:
                saved[fd] = os.dup(fd)
                os.dup2(capture.fileno(), fd)
            except OSError:  # no such descriptor (an embedded interpreter): nothing to capture there
                saved.pop(fd, None)
        out, err = sys.stdout, sys.stderr
        buffer = io.StringIO()
        sys.stdout = sys.stderr = buffer
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            text = buffer.getvalue()
            sys.stdout, sys.stderr = out, err
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            text += capture.read().decode("utf-8", "replace")
            _log_captured(text, caught)


def _log_captured(text: str, caught: list[warnings.WarningMessage]) -> None:
    for line in text.splitlines():
        if line.strip():
            logger.debug("coreai: %s", line.rsplit("\r", 1)[-1].rstrip())
    for w in caught:
        message = str(w.message)
        if "has only been validated with torch" in message:
            if message not in _told_versions:
                _told_versions.add(message)
                logger.info("%s (sparsify's tests run it with torch %s)", message, torch.__version__)
        elif "coreai" in w.filename:
            logger.debug("coreai %s: %s", w.category.__name__, message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def convert_program(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], debug_info: bool) -> Any:
    """``torch.export`` → Core AI decompositions → ``TorchConverter().to_coreai()``: an ``AIProgram``."""
    import coreai_torch

    with torch.no_grad():
        program = torch.export.export(module, inputs).run_decompositions(coreai_torch.get_decomp_table())
    mode = coreai_torch.TorchConverter.Mode.DEBUG if debug_info else coreai_torch.TorchConverter.Mode.RELEASE
    return coreai_torch.TorchConverter(mode=mode).add_exported_program(program).to_coreai()


def torch_outputs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The model's outputs on ``inputs``, flattened to a list of float arrays."""
    with torch.no_grad():
        result = module(*inputs)
    flat = [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
    return [t.detach().cpu().numpy() for t in flat]


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    if array.dtype == np.int64:  # Core AI's inputs are 32-bit: token ids as int32
        array = array.astype(np.int32)
    return array


def run_aimodel(path: Path, batches: Sequence[tuple[torch.Tensor, ...]]) -> list[list[np.ndarray]]:
    """Run the saved model at ``path`` on each input tuple; outputs in the function's order."""
    return _in_thread(_run(path, batches))


async def _run(path: Path, batches: Sequence[tuple[torch.Tensor, ...]]) -> list[list[np.ndarray]]:
    from coreai.authoring.asset import AIModelAsset
    from coreai.runtime import NDArray

    asset = AIModelAsset.load(path)
    results = []
    async with asset.executable() as model:
        function = model.load_function("main")
        names = list(function.desc.input_names)
        outputs = list(function.desc.output_names)
        for inputs in batches:
            if len(inputs) != len(names):
                raise ValueError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)}")
            feed: dict[str, Any] = {name: NDArray(np.ascontiguousarray(_as_array(t))) for name, t in zip(names, inputs)}
            result = await function(feed)
            arrays: dict[str, Any] = dict(result)
            results.append([np.asarray(arrays[name].numpy()) for name in outputs])
    return results


def _in_thread(coroutine: Any) -> Any:
    """``asyncio.run`` — in a thread of its own when the caller already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
