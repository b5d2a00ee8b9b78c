"""The ``sparsify`` command: run the demo, report on a saved model, export it to Core ML, inspect a package,
and list what a pruning config would do to a model (dry run).

Files come from anywhere, so nothing in them runs (`sparsify.safe_io`): ``report`` reads tensors with
`read_tensor_file` (its own pickle reader: no ``torch.load``, ``torch.jit.load`` or ``torch.export.load``);
``export`` of a ``torch.export`` program first checks every pickle in the archive with that reader; every
file read has a size limit (``--max-file-size``; 1 MiB and an alias-expansion limit for YAML configs).
Errors are one line on stderr (``-vv`` adds the traceback).

Also reachable as ``python -m sparsify``. Logging is configured here and only here (the library
itself only creates loggers), so importing sparsify never changes an application's logging.

Exit codes: 0 success, 1 failure (the error is printed on stderr), 2 bad usage (from argparse),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .analysis.sizing import RULES, TARGETS
from .safe_io import (
    DEFAULT_MAX_BYTES,
    MAX_YAML_BYTES,
    FileRefusedError,
    check_exported_archive,
    check_file_size,
    read_tensor_file,
    read_yaml_text,
)

__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CommandError", "build_parser", "load_model", "main",
    "read_state_dict",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

logger = logging.getLogger("sparsify.cli")

_DESCRIPTION = "Make PyTorch models sparse and ship them to Apple devices through Core ML."

_EPILOG = """\
examples:
  sparsify demo                                   # the Core ML Tools tutorial flow, offline (8x8 digits)
  sparsify demo --quick --out /tmp/demo           # the same in seconds
  sparsify report model.pt                        # a torch.save'd state_dict (read, never unpickled as code)
  sparsify report traced.pt --format markdown     # TorchScript; also csv, json
  sparsify export traced.pt model.mlpackage --input-shape 1,1,28,28
  sparsify export program.pt2 model.mlpackage     # a torch.export.save'd program: shapes are known
  sparsify inspect model.mlpackage --format json
  sparsify dry-run torchvision.models:resnet18 prune.yaml   # what prepare() would do, changing nothing

exit codes: 0 success, 1 failure (message on stderr), 2 bad usage, 130 interrupted.
Use -v for progress details, -q for errors only. Run 'sparsify COMMAND --help' for a command's options.
"""


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
    if any(name.endswith(("/archive_format", "serialized_exported_program.json")) for name in names):
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


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)


def _parse_size(text: str) -> int:
    """``"512MiB"``, ``"8G"``, ``"1000000"`` → bytes (K/M/G/T are powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"--max-file-size {text!r} is invalid: allowed a positive number of bytes with an optional K, M, G or T "
            "suffix, e.g. 512M or 16GiB"
        )
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--input-shape {text!r} is invalid: allowed positive integers separated by commas, e.g. 1,1,28,28"
        )
    return shape


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from .demo.coreml_tutorial import main as tutorial

    return int(tutorial(extra, prog="sparsify demo") or 0)


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis.model_report import model_report

    kind, model = read_state_dict(args.model, args.max_file_size)
    logger.info("%s: read the tensors of a %s", args.model, kind)
    report = model_report(model, requested=args.requested, rule=args.rule, target=args.target)
    render = {"text": report.to_text, "markdown": report.to_markdown, "csv": report.to_csv,
              "json": report.to_json}[args.format]
    text = render()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .export.coreml import export_coreml

    kind, model = load_model(args.model, args.max_file_size)
    if kind == "state_dict":
        raise CommandError(
            f"{args.model} is a state dict: export needs the model's code too. Save it as TorchScript "
            "(torch.jit.trace(model, example).save(path)) or as a torch.export program "
            "(torch.export.save(torch.export.export(model, (example,)), path))"
        )
    if args.input_shape is not None:
        example = (torch.rand(*args.input_shape),)
    elif kind == "exported":  # torch.export.save keeps the example inputs the program was exported with
        args_, kwargs_ = model.example_inputs or ((), {})
        if not args_ or kwargs_:
            raise CommandError(f"{args.model} holds no positional example inputs: pass --input-shape")
        example = tuple(args_)
    else:
        raise CommandError(f"{args.model} is TorchScript: give the input's shape with --input-shape, e.g. 1,1,28,28")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise CommandError(f"{out} exists; pass --force to overwrite it")
    logger.info("converting %s (%s) to %s", args.model, kind, out)
    report = export_coreml(model, example, out, minimum_deployment_target=args.target,
                           compute_precision=args.precision)
    print(report.to_text())  # every row was read back from the saved package
    sparse_ops = report.op_counts.get("constexpr_sparse_to_dense", 0)
    print(f"\nverified {out}: {sparse_ops} constexpr_sparse_to_dense op(s), weight file {report.total_bytes:,} "
          f"bytes vs {report.dense_bytes:,} dense ({report.dense_bytes / max(report.total_bytes, 1):.2f}x smaller)")
    if args.strict and report.warnings:
        print(f"error: --strict: the export has {len(report.warnings)} warning(s), see above", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


_PRUNERS = ("magnitude", "gradual", "mfac", "inc")


def _build_model(spec: str) -> torch.nn.Module:
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


def _load_config(path: str | None, pruner: str) -> Any:
    from .compat.inc import from_inc_config
    from .config import MagnitudePrunerConfig
    from .gradual import GradualPrunerConfig
    from .mfac import MFACPrunerConfig

    if pruner == "inc":
        if path is None:
            raise CommandError("--pruner inc needs a config file (an Intel Neural Compressor pruning YAML)")
        return from_inc_config(io.StringIO(_read_config(path)))
    config_class: Any = {"magnitude": MagnitudePrunerConfig, "gradual": GradualPrunerConfig,
                         "mfac": MFACPrunerConfig}[pruner]
    return config_class() if path is None else config_class.from_yaml(io.StringIO(_read_config(path)))


def _read_config(path: str) -> str:
    if not Path(path).is_file():
        raise CommandError(f"config path {path!r} is not a file")
    try:
        return read_yaml_text(path, max_bytes=MAX_YAML_BYTES)
    except FileRefusedError as error:
        raise CommandError(str(error)) from error



def cmd_dry_run(args: argparse.Namespace) -> int:
    from .selection import dry_run

    model = _build_model(args.model)
    try:
        config = _load_config(args.config, args.pruner)
    except (ValueError, TypeError) as exc:  # config errors name the field; no traceback needed
        raise CommandError(f"{args.config}: {exc}") from exc
    table = dry_run(model, config)
    print(table)
    return EXIT_FAILURE if any(row.action == "error" for row in table) else EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .export.mlpackage import inspect_mlpackage

    package = Path(args.package)
    if not package.exists():
        raise CommandError(f"{package}: no such .mlpackage")
    if not (package / "Manifest.json").is_file():
        what = "a folder without Manifest.json" if package.is_dir() else "a file"
        raise CommandError(f"{package} is {what}, not an .mlpackage")
    total = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    if total > args.max_file_size:
        raise CommandError(f"{package} holds {total:,} bytes, over the limit of {args.max_file_size:,} bytes "
                           "(raise it with --max-file-size)")
    report = inspect_mlpackage(package)
    print(json.dumps(report.as_dict(), indent=2) if args.format == "json" else report.to_text())
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# Parser and entry point
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="sparsify", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=formatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sparsify {__version__}")
    parser.add_argument("--max-file-size", type=_parse_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                        help="refuse model files and packages larger than this (default 8GiB; e.g. 512M, 32G)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "demo", add_help=False, formatter_class=formatter,
        help="train a small CNN, prune it while fine-tuning, export and verify a sparse .mlpackage "
        "(the Core ML Tools tutorial flow; options: 'sparsify demo --help')",
        description="Runs sparsify.demo.coreml_tutorial (examples/coreml_tutorial.py); all options are the tutorial's.",
    )

    report = commands.add_parser(
        "report", formatter_class=formatter,
        help="per-layer sparsity and Core ML size of a saved model (state dict, TorchScript, torch.export)",
        description="Per-layer parameters, non-zeros, sparsity, pattern, and Core ML storage (dense vs sparse, "
        "fp16/fp32) of a saved model, with an estimate of the exported weight.bin.",
        epilog="examples:\n  sparsify report model.pt\n  sparsify report traced.pt --format csv > report.csv\n"
        "  sparsify report model.pt --requested 0.8 --target iOS18",
    )
    report.add_argument("model", help="a torch.save'd state_dict or checkpoint, TorchScript, or torch.export (.pt2)")
    report.add_argument("--format", choices=("text", "markdown", "csv", "json"), default="text")
    report.add_argument("--requested", type=float, default=None, metavar="SPARSITY",
                        help="the sparsity asked for, to compare with what the weights have")
    report.add_argument("--rule", choices=RULES, default="sparsify",
                        help="how the model will be exported, which decides the weights Core ML stores sparse: "
                        "'sparsify' (sparsify export), 'sparsify_all' (export with sparse_weights='all'), "
                        "'metadata' (plain coremltools.convert), 'default_pruning' (coremltools.convert with "
                        "DEFAULT_PRUNING); default %(default)s")
    report.add_argument("--target", choices=TARGETS, default="iOS16",
                        help="deployment target of the size estimate (default %(default)s)")

    export = commands.add_parser(
        "export", formatter_class=formatter,
        help="convert a saved TorchScript or torch.export model to a verified sparse .mlpackage",
        description="Convert a saved model to Core ML with sparse weight storage, then read the package back "
        "and print how every weight is stored.",
        epilog="examples:\n  sparsify export traced.pt model.mlpackage --input-shape 1,1,28,28\n"
        "  sparsify export program.pt2 model.mlpackage --target iOS18",
    )
    export.add_argument("model", help="a TorchScript file (torch.jit.save) or torch.export program (torch.export.save)")
    export.add_argument("output", help="the .mlpackage to write")
    export.add_argument("--input-shape", type=_parse_shape, default=None, metavar="N,C,H,W",
                        help="shape of the example input (required for TorchScript)")
    export.add_argument("--target", choices=TARGETS, default=None,
                        help="minimum deployment target (default: the exporter's, iOS16 or later, so sparsity is kept)")
    export.add_argument("--precision", choices=("float16", "float32"), default="float16",
                        help="compute precision and weight storage (default %(default)s)")
    export.add_argument("--force", action="store_true", help="overwrite an existing output")
    export.add_argument("--strict", action="store_true",
                        help="exit with 1 if the verification found a problem (a pruned weight not stored sparse, ...)")

    dry = commands.add_parser(
        "dry-run", formatter_class=formatter,
        help="list every module of a model with the pruning config it would get, changing nothing",
        description="Build the model from a factory, read the pruning config, and print for every module "
        "whether it would be pruned (with its settings), skipped (and by which rule) or refused (and why). "
        "Exits with 1 if prepare() would refuse a module.",
        epilog="examples:\n  sparsify dry-run sparsify.demo.models:SmallCNN\n"
        "  sparsify dry-run torchvision.models:resnet18 prune.yaml\n"
        "  sparsify dry-run torchvision.models:mobilenet_v2 inc.yaml --pruner inc",
    )
    dry.add_argument("model", help="a model factory 'package.module:callable', called without arguments")
    dry.add_argument("config", nargs="?", default=None,
                     help="a YAML config for the pruner (default: the pruner's default config)")
    dry.add_argument("--pruner", choices=_PRUNERS, default="magnitude",
                     help="which config the YAML holds: MagnitudePrunerConfig (default), GradualPrunerConfig, "
                     "MFACPrunerConfig, or an Intel Neural Compressor pruning config")

    inspect = commands.add_parser(
        "inspect", formatter_class=formatter, help="show the ops and how every weight of an .mlpackage is stored",
        description="Read a saved .mlpackage without a Core ML runtime: op counts, how every weight is stored "
        "(dense, sparse, ...), its non-zeros, and the weight file size against dense.",
        epilog="examples:\n  sparsify inspect model.mlpackage\n  sparsify inspect model.mlpackage --format json",
    )
    inspect.add_argument("package", help="path of the .mlpackage")
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("sparsify").setLevel(level)
    # coremltools warns at import about untested torch versions and the missing Core ML runtime (Linux):
    # noise for this command, shown with -vv.
    logging.getLogger("coremltools").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(args.verbose, args.quiet)
    commands = {"report": cmd_report, "export": cmd_export, "inspect": cmd_inspect, "dry-run": cmd_dry_run}
    try:
        if args.command == "demo":
            return cmd_demo(args, extra)
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as error:
        logger.debug("traceback", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # one line for the user; the traceback with -vv
        logger.debug("traceback", exc_info=True)
        message = " ".join(str(error).split()) or "(no message)"
        print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
