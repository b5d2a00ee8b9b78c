"""The files the ``sparsify`` command is given: saved models, configs, model factories.

Nothing in a file runs (`sparsify.model_files`): tensors are read with `read_tensor_file`; a TorchScript
file or a ``torch.export`` program is loaded for export only after its pickles passed that reader; YAML
configs are read by `sparsify.safe_io` (size, alias and depth limits; errors name the file and line).
Every failure is a `CommandError`, printed by the command as one line.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .model_files import DEFAULT_MAX_BYTES, FileRefusedError, check_file_size, read_tensor_file
from .pt2_archive import check_exported_archive

__all__ = [
    "CommandError", "build_model", "check_output", "load_config", "load_model", "read_state_dict", "save_atomically",
]

logger = logging.getLogger("sparsify.cli")


class CommandError(Exception):
    """A failure to report as ``error: <message>`` with exit code 1 (no traceback)."""


# ----------------------------------------------------------------------------------------------
# Loading saved models
# ----------------------------------------------------------------------------------------------


def _archive_kind(path: Path) -> str | None:
    """``"torchscript"`` (a zip with a ``<name>/code/`` folder), ``"exported"`` (``torch.export.save``'s
    ``.pt2``, with an ``archive_format`` record), or ``None`` (anything else, e.g. a ``torch.save`` file)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name == "archive_format" or name.endswith(("/archive_format", "serialized_exported_program.json"))
           for name in names):  # torch >= 2.8: records in a root folder; torch <= 2.7: serialized_* at the top
        return "exported"
    if any("/code/" in name for name in names):
        return "torchscript"
    return None


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A state dict, or a checkpoint dict holding one under a usual key."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                logger.info("%s: using the state dict under key %r", path, key)
                return dict(inner)
        raise CommandError(
            f"{path} holds a dict with keys {sorted(map(str, obj))[:12]} but no state dict: expected tensors as "
            f"values, or a state dict under 'state_dict', 'model_state_dict' or 'model'"
        )
    raise CommandError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")


def _existing_file(path: str | Path, max_bytes: int) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"model path {str(path)!r} is not a file")
    try:
        check_file_size(path, max_bytes, "model file")
    except FileRefusedError as error:
        raise CommandError(f"{error} (raise it with --max-file-size)") from error
    return path


def read_state_dict(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, dict[str, torch.Tensor]]:
    """The tensors of a saved model, without running anything in the file: ``(kind, state dict)`` with kind
    ``"torchscript"``, ``"exported"`` or ``"state_dict"`` (a ``torch.save`` file of a state dict or a
    checkpoint dict holding one). Read by `sparsify.checkpoints.read_tensor_file`."""
    path = _existing_file(path, max_bytes)
    kind = _archive_kind(path) or "state_dict"
    try:
        obj = read_tensor_file(path, max_bytes=max_bytes)
    except FileRefusedError as error:
        raise CommandError(
            f"{path} is refused: {error}. sparsify reads torch.save files of tensors (model.state_dict()), "
            "TorchScript (torch.jit.save) and torch.export programs (torch.export.save)"
        ) from error
    return kind, _state_dict_from(obj, path)


def load_model(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, Any]:
    """Load a saved model to export it: ``("torchscript", ScriptModule)``, ``("exported", ExportedProgram)``
    or ``("state_dict", dict)``.

    TorchScript is loaded with ``torch.jit.load`` after its pickle passed `read_state_dict` (its TorchScript
    code, not Python, runs when it is exported);
    a ``torch.export`` program with ``torch.export.load`` only after `check_exported_archive`; anything
    else is read as tensors with `read_state_dict`.
    """
    path = _existing_file(path, max_bytes)
    kind = _archive_kind(path)
    if kind == "torchscript":
        read_state_dict(path, max_bytes)  # its pickle holds only tensors and module attributes, or it is refused
        with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; loading still works
            warnings.simplefilter("ignore", FutureWarning)
            return "torchscript", torch.jit.load(str(path), map_location="cpu")
    if kind == "exported":
        try:
            check_exported_archive(path, max_bytes)
        except FileRefusedError as error:
            raise CommandError(f"{path} is refused: {error}") from error
        return "exported", torch.export.load(str(path))
    return read_state_dict(path, max_bytes)


def check_output(path: str | Path, force: bool, *, directory: bool = False) -> Path:
    """Check an output path before any work: a file path is not a directory, not an existing file unless
    ``force``; a ``directory`` (a Hugging Face model) is not a file, and not a folder holding files unless
    ``force``; either under a folder (or a folder still to create) that can be written. Every message names
    the path."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise CommandError(f"-o {path} is a file: give the directory to write the Hugging Face model to")
        if path.is_dir() and any(path.iterdir()) and not force:
            raise CommandError(f"-o {path} exists and is not empty; pass --force to write into it")
    elif path.is_dir():
        raise CommandError(f"-o {path} is a directory: give the path of the file to write")
    elif (path.exists() or path.is_symlink()) and not force:
        raise CommandError(f"-o {path} exists; pass --force to overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CommandError(f"-o {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (
            not directory and path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"-o {path}: cannot write there (permission denied)")
    return path


def save_atomically(path: Path, write: Any) -> None:
    """``write(temporary_path)`` beside ``path``, then rename it into place: a failure (or Ctrl-C) leaves no
    half-written file and an existing one as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_model(spec: str) -> torch.nn.Module:
    """Call a model factory named ``package.module:callable`` (e.g. ``torchvision.models:resnet18``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CommandError(f"model={spec!r}: expected 'package.module:factory', e.g. sparsify.demo.models:SmallCNN")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"model={spec!r}: cannot import it ({exc})") from exc
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"model={spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_config(path: str | None, pruner: str, model: torch.nn.Module | None = None) -> Any:
    """The config in ``path`` (or the default one) as the format ``pruner`` says: ``"sparsify"``
    (`PrunerConfig`), ``"coreml"`` (`MagnitudePrunerConfig`) or ``"inc"`` (an Intel Neural Compressor
    config). Read through `sparsify.safe_io`; a file it refuses is a one-line `CommandError`."""
    from .compat.inc import from_inc_config
    from .config import MagnitudePrunerConfig, PrunerConfig
    from .safe_io import SourceError

    if path is not None and not Path(path).is_file():
        raise CommandError(f"config path {path!r} is not a file")
    try:
        if pruner == "inc":
            if path is None:
                raise CommandError("--format inc needs a config file (an Intel Neural Compressor pruning YAML)")
            return from_inc_config(path, model)
        config_class: Any = {"sparsify": PrunerConfig, "coreml": MagnitudePrunerConfig}[pruner]
        return config_class() if path is None else config_class.from_yaml(path)
    except SourceError as error:
        raise CommandError(" ".join(str(error).split())) from error
