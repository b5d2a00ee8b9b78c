"""Core ML Tools' magnitude-pruning tutorial, end to end, with sparsify: the main job.

    sparsify demo                                     # 8×8 digits, offline (what README.md times)
    sparsify demo --dataset mnist --download
    sparsify demo --quick --out /tmp/demo             # seconds, for tests
    python examples/coreml_tutorial.py ...            # the same from a source checkout

It lives in the package (not only in ``examples/``) so that ``sparsify demo`` works from an installed wheel.

The flow, as in Core ML Tools' tutorial:

1. train a small CNN densely;
2. prune it *while fine-tuning*: conv layers to 70 %, linear layers to 80 %, following a
   ``PolynomialDecayScheduler`` that ``pruner.step()`` advances once per batch;
3. ``finalize()`` — bake the masks into the weights and tag them for Core ML;
4. print accuracy, sparsity and size; export the sparse models to ``.mlpackage`` (the exporter
   converts each dense too, to measure the dense weight file) and verify the saved packages
   (sparse ops present, bytes on disk);
5. do the same at 90 % everywhere, whose weight file is about 6× smaller than the dense one.

The only change from Core ML Tools' code is the import line::

    # from coremltools.optimize.torch.pruning import MagnitudePruner, MagnitudePrunerConfig
    from sparsify import MagnitudePruner, MagnitudePrunerConfig, Report
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, Report
from sparsify._progress import tqdm
from sparsify.analysis.sensitivity import accuracy
from sparsify.demo.datasets import DATASETS, load_dataset
from sparsify.demo.models import SmallCNN, train_epoch

__all__ = ["DEFAULT_THREADS", "main", "parse_args", "pruning_config", "schedule"]

# Default epochs (dense, pruning fine-tune, 90 % fine-tune) per dataset: a few minutes on 2 cores.
EPOCHS = {"digits": (10, 10, 6), "mnist": (2, 2, 1), "fashion-mnist": (3, 3, 2)}
QUICK_EPOCHS, QUICK_TRAIN, QUICK_TEST = (1, 1, 1), 256, 128
# torch's default (one thread per core) makes this small model *slower* on a machine whose cores are busy:
# the threads of every batch wait for each other. One thread is what README.md's time is measured with
# (benchmarks/demo_threads.py compares 1 and 2).
DEFAULT_THREADS = 1


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a small CNN, prune it while fine-tuning (conv 70 %, linear 80 %), export a "
        "verified sparse .mlpackage, and compare sizes with the dense export.",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="default: %(default)s (offline)")
    parser.add_argument("--data-root", type=Path, default=None, help="where MNIST-style IDX files live")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST/Fashion-MNIST")
    parser.add_argument("--epochs", type=int, nargs=3, metavar=("DENSE", "PRUNE", "PRUNE90"), default=None,
                        help="epochs of dense training, of pruning fine-tune, and of the 90%% run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/coreml_tutorial"), help="default: %(default)s")
    parser.add_argument("--no-export", action="store_true", help="stop before the Core ML export")
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch each (for tests)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"torch threads (default {DEFAULT_THREADS}, at most the number of CPUs)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else EPOCHS[args.dataset]
    if min(args.epochs) < 1 or args.batch_size < 1:
        parser.error(f"--epochs {args.epochs} and --batch-size {args.batch_size} must all be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads} is invalid: allowed an integer >= 1")
    if args.threads is None:
        args.threads = min(DEFAULT_THREADS, os.cpu_count() or 1)
    return args


def pruning_config(conv: float, linear: float, update_steps: list[int]) -> MagnitudePrunerConfig:
    """Core ML Tools' tutorial config: one sparsity per module type, a polynomial (cubic) schedule."""
    scheduler = {"update_steps": update_steps, "power": 3}
    return MagnitudePrunerConfig.from_dict({
        "module_type_configs": {
            "Conv2d": {"target_sparsity": conv, "scheduler": scheduler},
            "Linear": {"target_sparsity": linear, "scheduler": scheduler},
        }
    })


def schedule(steps: int, updates: int = 8) -> list[int]:
    """``updates`` evenly spaced update steps over the first ~2/3 of ``steps``, so training recovers after."""
    every = max(1, (2 * steps // 3) // updates)
    return list(range(every, every * (updates + 1), every))


def prune_while_fine_tuning(model, config, train_loader, epochs, lr, label):
    """Prepare a copy of ``model``, fine-tune it while ``pruner.step()`` follows the schedule, finalize."""
    pruner = MagnitudePruner(copy.deepcopy(model), config)
    pruned = pruner.prepare(inplace=True)
    optimizer = torch.optim.Adam(pruned.parameters(), lr=lr)  # built on the *prepared* model
    for _ in tqdm(range(epochs), desc=label, unit="epoch", disable=None):
        train_epoch(pruned, train_loader, optimizer, after_step=pruner.step)
    pruned = pruner.finalize(inplace=True)
    return pruned, pruner


def weight_stats(model: nn.Module) -> tuple[int, int]:
    """``(elements, non-zeros)`` over the weights of conv and linear layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(w.numel() for w in weights), sum(int(w.count_nonzero()) for w in weights)


def export(model: nn.Module, example: torch.Tensor, path: Path):
    """Export to ``path`` (Core ML, fp16, iOS16+) and read the saved package back with
    `sparsify.export.mlpackage.inspect_mlpackage`; returns ``(ExportReport, PackageReport)``."""
    from sparsify.export.coreml import export_coreml
    from sparsify.export.mlpackage import inspect_mlpackage

    report = export_coreml(model.eval(), (example,), path, overwrite=True)  # a rerun rewrites its own packages
    return report, inspect_mlpackage(path)


def _quiet_coremltools() -> None:
    """Keep the tables readable: coremltools logs its import-time notices (untested torch version, no
    Core ML runtime on Linux), per-pass progress bars and renaming warnings at levels the example
    does not need."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"coremltools\..*")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    _quiet_coremltools()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    # -- 1. data and the dense model -----------------------------------------------------------
    data = load_dataset(args.dataset, root=args.data_root, download=args.download)
    if args.quick:
        data = data.subset(QUICK_TRAIN, QUICK_TEST)
    print(f"data: {data.name}, train {tuple(data.train_x.shape)}, test {tuple(data.test_x.shape)}, "
          f"{data.num_classes} classes\n      from {data.source}")
    train_loader, test_loader = data.loaders(args.batch_size, seed=args.seed)
    test_accuracy = accuracy(test_loader)  # model -> top-1 accuracy on the test split
    dense_epochs, prune_epochs, prune90_epochs = args.epochs

    model = SmallCNN(data.image_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in tqdm(range(dense_epochs), desc="dense training", unit="epoch", disable=None):
        train_epoch(model, train_loader, optimizer)
    dense_accuracy = test_accuracy(model)
    print(f"\ndense model: {dense_accuracy:.2%} test accuracy after {dense_epochs} epoch(s)")

    # -- 2./3. prune while fine-tuning: conv 70 %, linear 80 % --------------------------------
    steps = prune_epochs * len(train_loader)
    update_steps = schedule(steps)
    config = pruning_config(conv=0.7, linear=0.8, update_steps=update_steps)
    print(f"\npruning over {steps} steps, masks updated at steps {update_steps}")
    pruned, pruner = prune_while_fine_tuning(model, config, train_loader, prune_epochs, args.lr, "pruning fine-tune")
    pruned_accuracy = test_accuracy(pruned)
    print("\npruning report (Core ML Tools' format):")
    print(pruner.report())

    # -- 5. the same at 90 % everywhere -------------------------------------------------------
    steps90 = prune90_epochs * len(train_loader)
    config90 = pruning_config(conv=0.9, linear=0.9, update_steps=schedule(steps90))
    pruned90, _ = prune_while_fine_tuning(model, config90, train_loader, prune90_epochs, args.lr, "90% fine-tune")
    pruned90_accuracy = test_accuracy(pruned90)

    # -- 4. accuracy, sparsity, size; export and verify ---------------------------------------
    variants = [("dense", model, dense_accuracy), ("pruned 70/80 %", pruned, pruned_accuracy),
                ("pruned 90 %", pruned90, pruned90_accuracy)]
    exports = {}
    if not args.no_export:
        example = data.test_x[:1]
        for label, net, _ in variants[1:]:
            path = args.out / f"{label.replace(' ', '').replace('/', '-').replace('%', '')}.mlpackage"
            exports[label] = export(net, example, path)

    summary = Report()  # prints as Core ML Tools' table
    for label, net, acc in variants:
        numel, nnz = weight_stats(net)
        row = {"accuracy": f"{acc:.2%}", "sparsity": f"{1 - nnz / numel:.1%}",
               "non-zeros": f"{nnz:,} / {numel:,}", "fp32 KiB": f"{nnz * 4 / 1024:.1f}"}
        if exports:
            # export_coreml converts the model dense first: dense_bytes is that dense export's weight file
            export_report = exports.get(label, exports[variants[1][0]])[0]
            size = export_report.total_bytes if label in exports else export_report.dense_bytes
            row |= {"weight.bin": f"{size:,}", "smaller": f"{export_report.dense_bytes / size:.2f}x"}
        summary[label] = row
    print("\nsummary (conv + linear weights: test accuracy, sparsity, non-zeros, their fp32 size;")
    print("weight.bin bytes of the fp16 Core ML export and how much smaller than the dense one it is):")
    print(summary)

    if exports:
        label = variants[1][0]
        print(f"\nexport of the {label} model, read back from the saved package:")
        print(exports[label][0].to_text())
        print(f"\nverification with inspect_mlpackage (the saved files only, in {args.out}):")
        verification = Report()
        for _, package in exports.values():
            verification[Path(package.path).name] = {
                "sparse ops": package.op_counts.get("constexpr_sparse_to_dense", 0),
                "stored sparse": f"{package.storage_counts().get('sparse', 0)} of {len(package.rows)}",
                "weight.bin bytes": f"{package.total_bytes:,}", "smaller by": f"{1 / package.ratio:.2f}x",
            }
        print(verification)

    print("\nwritten:")
    for label, (export_report, _) in exports.items():
        print(f"  {export_report.path}  ({label})")
    if not exports:
        print("  nothing (--no-export)")
    print(f"\ndone in {time.perf_counter() - started:.1f} s ({args.threads} torch thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
