"""Exceptions of the export package, one class per thing a caller (or the CLI) may want to catch.

The package errors subclass ``ValueError`` — a bad file is bad input — so code that caught
``ValueError`` before these classes existed still catches them. `ConversionError` subclasses
``RuntimeError``: the model is fine as a torch model, Core ML Tools could not convert it.
"""

from __future__ import annotations

__all__ = ["ConversionError", "DamagedPackageError", "MLPackageError", "NotAPackageError"]


class MLPackageError(ValueError):
    """A path that cannot be read as a Core ML ML Program package; ``path`` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class NotAPackageError(MLPackageError):
    """The path exists but is no Core ML model: no ``Manifest.json``, not a model file, or not an ML Program."""


class DamagedPackageError(MLPackageError):
    """The path is a package, but one of its files is missing, truncated or inconsistent; ``file`` names it."""

    def __init__(self, path: str, file: str, message: str) -> None:
        super().__init__(path, f"{file}: {message}; the package is damaged")
        self.file = file


class ConversionError(RuntimeError):
    """Every conversion route failed; ``failures`` maps each route tried to its error message."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = dict(failures)
