"""The MIT efficient-ML pruning lab (fine-grained pruning), with sparsify doing the pruning.

    .venv/bin/python examples/mit_lab.py                  # 8×8 digits, offline, 1-3 minutes on 2 cores
    .venv/bin/python examples/mit_lab.py --quick --out /tmp/lab

The lab's steps:

1. train a dense model; measure its accuracy and size (parameters × 32 bits);
2. look at the weight distribution of every layer (PNG);
3. sensitivity scan: prune one layer at a time to increasing sparsity and watch the accuracy (PNG);
4. prune *every* layer to 90 % in one shot (fine-grained, by magnitude) — accuracy drops;
5. fine-tune with the masks kept, so pruned weights stay zero — accuracy recovers;
6. model size after pruning, counting only non-zeros (non-zeros × 32 bits), and the pruned weights (PNG).

The lab's helpers map onto sparsify's: ``fine_grained_prune`` → ``MagnitudePruner`` with a constant
schedule, ``sensitivity_scan`` → `sparsify.analysis.sensitivity.sensitivity_scan`, the weight plots →
`sparsify.analysis.plots`; the model-size count stays here, it is the point of the exercise.

In the lab a ``FineGrainedPruner`` re-applies masks after every optimizer step; with sparsify the
masks are forward pre-hooks installed by ``prepare()``, so the training loop stays untouched.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

from sparsify import (
    ConstantSparsityScheduler,
    MagnitudePruner,
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    Report,
)
from sparsify.analysis.model_report import model_report
from sparsify.analysis.plots import plot_layer_sparsity, plot_weight_heatmap, plot_weight_histogram
from sparsify.analysis.sensitivity import accuracy, sensitivity_scan
from sparsify.demo.datasets import DATASETS, load_dataset
from sparsify.demo.models import SmallCNN, train_epoch

BITS = 32  # fp32 weights, as in the lab
SCAN_SPARSITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mit_lab.py",
        description="Dense model → one-shot fine-grained pruning (90%% by default) → fine-tune with masks kept "
        "→ recovery, with model sizes and weight pictures.",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="default: %(default)s (offline)")
    parser.add_argument("--data-root", type=Path, default=None, help="where MNIST-style IDX files live")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST/Fashion-MNIST")
    parser.add_argument("--sparsity", type=float, default=0.9, help="one-shot sparsity of every layer (default 0.9)")
    parser.add_argument("--epochs", type=int, default=None, help="dense epochs; fine-tuning uses as many")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/mit_lab"), help="default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (for tests)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity {args.sparsity} is invalid: allowed 0 <= sparsity < 1")
    if args.epochs is None:
        args.epochs = 1 if args.quick else (8 if args.dataset == "digits" else 2)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error(f"--epochs {args.epochs} and --batch-size {args.batch_size} must be >= 1")
    return args


def one_shot_pruner(model: nn.Module, sparsity: float) -> MagnitudePruner:
    """Every conv/linear layer to ``sparsity`` by magnitude, all at the first ``step()`` (the lab's
    ``fine_grained_prune`` on each layer)."""
    layer = ModuleMagnitudePrunerConfig(target_sparsity=sparsity, scheduler=ConstantSparsityScheduler(begin_step=0))
    return MagnitudePruner(model, MagnitudePrunerConfig(global_config=layer))


def model_size_bits(model: nn.Module, count_nonzero_only: bool = False) -> int:
    """The lab's ``get_model_size``: parameters (or only the non-zero ones) × 32 bits."""
    return BITS * sum(int(p.count_nonzero()) if count_nonzero_only else p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = load_dataset(args.dataset, root=args.data_root, download=args.download)
    if args.quick:
        data = data.subset(256, 128)
    print(f"data: {data}")
    train_loader, test_loader = data.loaders(args.batch_size, seed=args.seed)
    test_accuracy = accuracy(test_loader)
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # 1. the dense model
    dense = SmallCNN(data.image_shape, data.num_classes)
    optimizer = torch.optim.Adam(dense.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        train_epoch(dense, train_loader, optimizer)
    dense_accuracy = test_accuracy(dense)
    dense_bits = model_size_bits(dense)
    print(f"\ndense model: accuracy {dense_accuracy:.2%}, size {dense_bits / 8 / 1024:.1f} KiB "
          f"({dense_bits // BITS:,} parameters × {BITS} bits)")

    # 2. weight distribution
    written.append(plot_weight_histogram(dense, args.out / "weights_dense.png", title="dense weights"))

    # 3. sensitivity scan: each layer pruned alone, no fine-tuning (the model is restored after each)
    scan = sensitivity_scan(dense, test_accuracy, sparsities=SCAN_SPARSITIES, metric_name="accuracy",
                            progress=False)
    print("\nsensitivity scan:")
    print(scan.to_text())
    written.append(scan.plot(args.out / "sensitivity.png"))

    # 4. one-shot fine-grained pruning of every layer
    pruner = one_shot_pruner(copy.deepcopy(dense), args.sparsity)
    model = pruner.prepare(inplace=True)
    pruner.step()  # the constant schedule applies the target at the first step
    pruned_accuracy = test_accuracy(model)
    print(f"\nafter one-shot {args.sparsity:.0%} pruning: accuracy {pruned_accuracy:.2%} "
          f"({100 * (pruned_accuracy - dense_accuracy):+.2f} points)")

    # 5. fine-tune with the masks kept: the hooks zero the pruned weights in every forward pass
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)  # on the *prepared* model's parameters
    for epoch in range(args.epochs):
        train_epoch(model, train_loader, optimizer)
        print(f"  fine-tune epoch {epoch + 1}: accuracy {test_accuracy(model):.2%}")
    model = pruner.finalize(inplace=True)
    recovered = test_accuracy(model)

    # 6. sizes and pictures of the pruned model
    sparse_bits = model_size_bits(model, count_nonzero_only=True)
    print("\nsummary:")
    summary = Report({  # prints as Core ML Tools' table
        "dense": {"accuracy": f"{dense_accuracy:.2%}", "non-zero parameters": f"{dense_bits // BITS:,}",
                  "size (non-zeros × 32 bits)": f"{dense_bits / 8 / 1024:.1f} KiB", "smaller by": "1.00x"},
        f"pruned {args.sparsity:.0%}, no fine-tune": {"accuracy": f"{pruned_accuracy:.2%}", "non-zero parameters": "",
                                                     "size (non-zeros × 32 bits)": "", "smaller by": ""},
        f"pruned {args.sparsity:.0%} + fine-tune": {
            "accuracy": f"{recovered:.2%}", "non-zero parameters": f"{sparse_bits // BITS:,}",
            "size (non-zeros × 32 bits)": f"{sparse_bits / 8 / 1024:.1f} KiB",
            "smaller by": f"{dense_bits / sparse_bits:.2f}x",
        },
    })
    print(summary)
    report = model_report(model, requested=args.sparsity)
    print("\nper layer, with the Core ML storage estimate:")
    print(report.to_text())

    written.append(plot_weight_histogram(model, args.out / "weights_pruned.png", title="pruned weights (non-zeros)"))
    written.append(plot_layer_sparsity(report, args.out / "layer_sparsity.png"))
    largest = max((m for m in dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), key=lambda m: m.weight.numel())
    name = next(n for n, m in dense.named_modules() if m is largest)
    written.append(plot_weight_heatmap(largest.weight, args.out / "heatmap.png",
                                       after=model.get_submodule(name).weight, title=f"layer {name}: |w|"))
    print("\nwritten:")
    for path in written:
        print(f"  {path}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
