"""The ``sparsify`` command: run the demo, report on a saved model, export it to Core ML, inspect a package,
and list what a pruning config would do to a model (dry run).

Files come from anywhere, so nothing in them runs (`sparsify.model_files`): ``report`` reads tensors with
`read_tensor_file` (its own pickle reader: no ``torch.load``, ``torch.jit.load`` or ``torch.export.load``);
``export`` of a ``torch.export`` program first checks every member of the archive (`sparsify.pt2_archive`); every
file read has a size limit (``--max-file-size``; YAML configs: `sparsify.safe_io`'s size and alias limits).
Errors are one line on stderr (``-vv`` adds the traceback).

Also reachable as ``python -m sparsify``. Logging is configured here and only here (the library
itself only creates loggers), so importing sparsify never changes an application's logging.

Exit codes: 0 success, 1 failure (the error is printed on stderr), 2 bad usage (from argparse),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .analysis.sizing import RULES, TARGETS
from .cli_files import (
    CommandError,
    build_model,
    check_output,
    load_config,
    load_model,
    read_state_dict,
    save_atomically,
)
from .cli_prune import add_saved_model_arguments
from .model_files import DEFAULT_MAX_BYTES

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CommandError", "build_parser",
    "load_model", "main",
    "read_state_dict",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
_QUIET_HELP = ("only errors: no warnings or progress bars; demo, export and prune print nothing else either "
               "(report, inspect and dry-run still print their result)")

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
    from .cli_coreai import export_command, wants_coreai

    if wants_coreai(args):
        return export_command(args, model, kind, example)
    report = export_coreml(model, example, out, minimum_deployment_target=args.target,
                           compute_precision=args.precision, overwrite=args.force)
    print(report.to_text())  # every row was read back from the saved package
    sparse_ops = report.op_counts.get("constexpr_sparse_to_dense", 0)
    print(f"\nverified {out}: {sparse_ops} constexpr_sparse_to_dense op(s), weight file {report.total_bytes:,} "
          f"bytes vs {report.dense_bytes:,} dense ({report.dense_bytes / max(report.total_bytes, 1):.2f}x smaller)")
    if args.strict and report.warnings:
        print(f"error: --strict: the export has {len(report.warnings)} warning(s), see above", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from .cli_prune import options_config, prune_saved, saved_kind
    from .pruning import Pruner

    saved = saved_kind(args.model)  # a Hugging Face directory or a torch.export program: written back the same
    if saved is not None:
        return prune_saved(args, saved)
    out = check_output(args.output, args.force)  # before any work: a wrong -o fails in a second
    model = build_model(args.model)
    if args.weights is not None:
        kind, state = read_state_dict(args.weights, args.max_file_size)  # tensors only: no torch loader runs
        logger.info("%s: read the tensors of a %s", args.weights, kind)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CommandError(f"{args.weights} does not fit {args.model}: {exc}") from exc
    if args.config is not None:
        config = load_config(args.config, args.config_format, model)
        if args.sparsity is not None:
            raise CommandError("give the sparsity in the config file or with --sparsity, not both")
    else:
        config = options_config(args)
    needs_data = sorted({c.criterion.kind for c in _module_configs(config) if c.criterion.needs_data})
    if needs_data:
        raise CommandError(
            f"criterion {', '.join(needs_data)} needs data (gradients) that the command line does not have: use "
            f"sparsify.prune(model, sparsity, criterion=..., sampler=GradSampler(data, loss_fn)) from Python"
        )
    pruner = Pruner(model, config)
    pruner.prepare(inplace=True)
    pruner.prune_now()
    pruned = pruner.finalize(inplace=True)
    check_output(out, args.force)  # again: the path may have changed while pruning
    if args.trace is not None:
        traced = torch.jit.trace(pruned.eval(), torch.rand(*args.trace))
        save_atomically(out, lambda temporary: traced.save(temporary))
    else:
        save_atomically(out, lambda temporary: torch.save(pruned.state_dict(), temporary))
    print(pruner.report())
    what = "TorchScript" if args.trace is not None else "state dict"
    print(f"\nsaved the pruned model ({what}, with Core ML pruning metadata) to {out}")
    return EXIT_OK


def _module_configs(config: Any) -> list[Any]:
    configs = [config.global_config, *config.module_type_configs.values(), *config.module_name_configs.values()]
    return [c for c in configs if c is not None]


_CONFIG_FORMATS = ("sparsify", "coreml", "inc")


def cmd_dry_run(args: argparse.Namespace) -> int:
    from .pruning import dry_run

    model = build_model(args.model)
    try:
        config = load_config(args.config, args.config_format, model)
    except (ValueError, TypeError) as exc:  # config errors name the field; no traceback needed
        raise CommandError(f"{args.config}: {exc}") from exc
    table = dry_run(model, config)
    print(table)
    return EXIT_FAILURE if any(row.action == "error" for row in table) else EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .export.mlpackage import inspect_mlpackage

    package = Path(args.package)
    if package.suffix == ".aimodel":
        from .cli_coreai import inspect_command

        return inspect_command(args)
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
    verbosity.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)
    # the same options after the command (`sparsify report x -q`); SUPPRESS keeps the ones given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    _add_parser = commands.add_parser
    commands.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)  # type: ignore[method-assign]

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
    export.add_argument("--to", choices=("coreml", "coreai"), default=None,
                        help="the format: Core ML .mlpackage or Core AI .aimodel (default: from the output's suffix)")
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
        "  sparsify dry-run torchvision.models:mobilenet_v2 inc.yaml --format inc",
    )
    dry.add_argument("model", help="a model factory 'package.module:callable', called without arguments")
    dry.add_argument("config", nargs="?", default=None,
                     help="a YAML config for the pruner (default: the pruner's default config)")
    dry.add_argument("--format", dest="config_format", choices=_CONFIG_FORMATS, default="sparsify",
                     help="what the YAML holds: a sparsify PrunerConfig (default), Core ML Tools' "
                     "MagnitudePrunerConfig, or an Intel Neural Compressor pruning config")

    prune_cmd = commands.add_parser(
        "prune", formatter_class=formatter, help="prune a saved model in one shot and save the finalized model",
        description="Rebuild a model from its factory, load its weights, prune it in one shot with sparsify.Pruner "
        "(any data-free criterion, pattern and scope) and save it finalized, with Core ML pruning metadata, as a "
        "state dict or (with --trace) as TorchScript ready for 'sparsify export'.",
        epilog="examples:\n"
        "  sparsify prune sparsify.demo.models:SmallCNN --weights model.pt --sparsity 0.8 -o pruned.pt\n"
        "  sparsify prune torchvision.models:resnet18 --sparsity 0.5 --pattern 4x1 --scope global -o r18.pt\n"
        "  sparsify prune my.models:Net --weights w.pt --config prune.yaml --trace 1,3,32,32 -o pruned.ts",
    )
    prune_cmd.add_argument("model", help="a model factory 'package.module:callable', called without arguments; a "
                           "Hugging Face model directory; or a torch.export program (.pt2), saved back as such")
    prune_cmd.add_argument("--weights", help="a torch.save'd state dict (or a TorchScript / torch.export file) whose "
                           "tensors to load into the model (read without running anything in it)")
    prune_cmd.add_argument("--sparsity", type=float, help="the fraction of weights to prune, in [0, 1]")
    prune_cmd.add_argument("--criterion", default="magnitude", help="a data-free criterion (default: magnitude)")
    prune_cmd.add_argument("--pattern", help="NxM tiles such as 4x1 or 1xchannel (default: unstructured)")
    prune_cmd.add_argument("--granularity", choices=("per_scalar", "per_kernel", "per_channel"))
    prune_cmd.add_argument("--n-m", help="N:M, N zeros in every M weights (e.g. 2:4)")
    prune_cmd.add_argument("--scope", choices=("local", "global"), default="local")
    prune_cmd.add_argument("--config", help="a YAML config instead of the options above")
    prune_cmd.add_argument("--format", dest="config_format", choices=_CONFIG_FORMATS, default="sparsify",
                           help="what --config holds (as in dry-run)")
    prune_cmd.add_argument("--trace", type=_parse_shape, help="save TorchScript traced with a random input of this "
                           "shape (e.g. 1,3,32,32) instead of a state dict")
    prune_cmd.add_argument("-o", "--output", required=True, help="where to save the pruned model")
    add_saved_model_arguments(prune_cmd)
    prune_cmd.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    inspect = commands.add_parser(
        "inspect", formatter_class=formatter, help="show the ops and how every weight of an .mlpackage is stored",
        description="Read a saved .mlpackage without a Core ML runtime: op counts, how every weight is stored "
        "(dense, sparse, ...), its non-zeros, and the weight file size against dense.",
        epilog="examples:\n  sparsify inspect model.mlpackage\n  sparsify inspect model.mlpackage --format json",
    )
    inspect.add_argument("package", help="path of the .mlpackage (or Core AI .aimodel)")
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("sparsify").setLevel(level)
    # coremltools warns at import about untested torch versions and the missing Core ML runtime (Linux):
    # noise for this command, shown with -vv.
    logging.getLogger("coremltools").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


@contextlib.contextmanager
def _silenced(active: bool) -> Iterator[None]:
    """Send stdout and stderr to nowhere (logging keeps the real stderr: errors still show)."""
    if not active:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.quiet and args.verbose:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    _configure_logging(args.verbose, args.quiet)
    commands = {"report": cmd_report, "export": cmd_export, "inspect": cmd_inspect, "dry-run": cmd_dry_run,
                "prune": cmd_prune}
    try:
        # -q: a command run for the files it writes prints nothing but errors (no tables, no progress bars)
        with _silenced(args.quiet and args.command in ("demo", "export", "prune")):
            code = cmd_demo(args, extra) if args.command == "demo" else commands[args.command](args)
        sys.stdout.flush()  # a closed pipe (`sparsify inspect x | head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader went away: stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
