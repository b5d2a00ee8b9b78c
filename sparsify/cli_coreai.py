"""The Core AI side of the ``sparsify`` command: ``export ... --to coreai`` (or an ``.aimodel`` output) and
``inspect model.aimodel``. Kept apart from `sparsify.cli` so that file only routes to these two functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_files import CommandError

__all__ = ["export_command", "inspect_command", "wants_coreai"]


def wants_coreai(args: argparse.Namespace) -> bool:
    """``--to coreai``, or no ``--to`` and an output ending in ``.aimodel``."""
    to = getattr(args, "to", None)
    suffix = Path(args.output).suffix
    if to == "coreai" and suffix != ".aimodel":
        raise CommandError(f"--to coreai writes an .aimodel folder: name the output '<name>.aimodel', "
                           f"not {args.output}")
    if to == "coreml" and suffix == ".aimodel":
        raise CommandError(f"--to coreml writes an .mlpackage: {args.output} ends in .aimodel (use --to coreai)")
    return to == "coreai" or (to is None and suffix == ".aimodel")


def export_command(args: argparse.Namespace, model: Any, kind: str, example: tuple[Any, ...]) -> int:
    """Export to a verified ``.aimodel`` and print its report; exit code 1 with ``--strict`` and a warning."""
    from .export.coreai import export_coreai

    if kind == "torchscript":
        raise CommandError(f"{args.model} is TorchScript, which Core AI cannot convert: save the model with "
                           "torch.export.save(torch.export.export(model, (example,)), path) and export that")
    report = export_coreai(model, example, Path(args.output), overwrite=args.force)
    print(report.to_text())
    if args.strict and report.warnings:
        print(f"error: --strict: the export has {len(report.warnings)} warning(s), see above")
        return 1
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    """Read an ``.aimodel`` folder (checked and parsed, never run) and print what it stores."""
    from .export.aimodel_reader import inspect_aimodel

    try:
        report = inspect_aimodel(Path(args.package), max_bytes=args.max_file_size)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from error
    print(json.dumps(report.as_dict(), indent=2) if args.format == "json" else report.to_text())
    return 0
