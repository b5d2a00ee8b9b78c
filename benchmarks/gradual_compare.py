"""Gradual pruning to 90 % on scikit-learn digits: which criterion, scope and pattern keep accuracy?

Every run trains the same small CNN with the same budget, from the same dense checkpoint:

1. dense training: ``--dense-epochs`` epochs (one checkpoint per seed, shared by all methods);
2. pruning: ``--prune-epochs`` more epochs; the sparsity follows INC's default ``exp`` curve from
   step 0 to 2/3 of this phase (every ``--frequency`` steps), then stays at the target while the
   network recovers.

Methods (all prune every conv and linear layer except the classifier head, which stays dense), all one
machine, `sparsify.Pruner`: the ``magnitude`` and ``snip_momentum`` criteria, each in ``local`` scope and in
``global`` scope (one ranking, per-layer cap 0.98), with ``1x1`` (unstructured) and ``4x1`` tiles; Core ML
Tools' ``MagnitudePruner`` preset (polynomial schedule, same steps) as the reference; and the ``mfac``
criterion (global, same exp schedule and cap, gradients recorded from the training steps).
The dense baseline continues training for the same ``--prune-epochs`` without pruning. Accuracy is
the test accuracy after the last step, mean ± std over ``--seeds`` seeds.

    .venv/bin/python benchmarks/gradual_compare.py            # ~3 min on one CPU core
    .venv/bin/python benchmarks/gradual_compare.py --seeds 1 --dense-epochs 5 --prune-epochs 6   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from sparsify import (
    MagnitudePruner,
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModulePrunerConfig,
    PolynomialDecayScheduler,
    Pruner,
    PrunerConfig,
)


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return images[train], labels[train], images[test], labels[test]


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def train(model, x, y, epochs, seed, optimizer, on_step: Callable[[], None] | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 32):
            batch = order[start:start + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            if on_step is not None:
                on_step()


def exp_schedule(end_step: int, frequency: int) -> dict:
    return {"kind": "exponential", "start_step": 0, "end_step": end_step, "frequency": frequency}


def gradual_config(criterion, scope: str, pattern: str, end_step: int, frequency: int, target: float) -> PrunerConfig:
    module = ModulePrunerConfig(
        criterion=criterion, scope=scope, pattern=pattern, target_sparsity=target, max_sparsity=0.98,
        scheduler=exp_schedule(end_step, frequency),
    )
    return PrunerConfig(global_config=module, keep_classifier_dense=True)


def methods(end_step: int, frequency: int, target: float) -> dict[str, Callable[[nn.Module], Pruner]]:
    table: dict[str, Callable[[nn.Module], Pruner]] = {}
    for pattern in ("1x1", "4x1"):
        for criterion in ("magnitude", "snip_momentum"):
            for scope in ("local", "global"):
                config = gradual_config(criterion, scope, pattern, end_step, frequency, target)
                table[f"{criterion} {scope} {pattern}"] = lambda m, c=config: Pruner(m, c)
    steps = list(range(0, end_step + 1, frequency))
    engine = MagnitudePrunerConfig(
        global_config=ModuleMagnitudePrunerConfig(target_sparsity=target,
                                                  scheduler=PolynomialDecayScheduler(update_steps=steps)),
        module_name_configs={"9": None},  # the classifier head stays dense, as for the others
    )
    table["Core ML MagnitudePruner preset (local, cubic)"] = lambda m: MagnitudePruner(m, engine)
    mfac = gradual_config({"kind": "mfac", "num_grads": min(16, frequency)}, "global", "1x1", end_step, frequency,
                          target)
    table["M-FAC global (max 0.98)"] = lambda m: Pruner(m, mfac)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--prune-epochs", type=int, default=30)
    parser.add_argument("--frequency", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x_train, y_train, x_test, y_test = digits()
    steps_per_epoch = -(-len(y_train) // 32)
    end_step = (args.prune_epochs * steps_per_epoch * 2 // 3) // args.frequency * args.frequency
    results: dict[str, list[float]] = {"dense (no pruning, same budget)": []}
    sparsities: dict[str, float] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        dense = small_cnn()
        optimizer = torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9)
        train(dense, x_train, y_train, args.dense_epochs, seed, optimizer)
        baseline = copy.deepcopy(dense)
        optimizer = torch.optim.SGD(baseline.parameters(), lr=0.02, momentum=0.9)
        train(baseline, x_train, y_train, args.prune_epochs, 1000 + seed, optimizer)
        results["dense (no pruning, same budget)"].append(accuracy(baseline, x_test, y_test))
        for name, build in methods(end_step, args.frequency, args.target).items():
            model = copy.deepcopy(dense)
            pruner = build(model)
            model = pruner.prepare(inplace=True)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
            train(model, x_train, y_train, args.prune_epochs, 1000 + seed, optimizer, pruner.step)
            model = pruner.finalize(inplace=True)
            results.setdefault(name, []).append(accuracy(model, x_test, y_test))
            sparsities[name] = pruner.report()["global"]["unstructured_weight_sparsity"]

    print(f"digits, small CNN, {args.seeds} seed(s): {args.dense_epochs} dense epochs, then {args.prune_epochs} "
          f"epochs pruning to {args.target:.0%} (exp schedule to step {end_step}, every {args.frequency}), "
          f"{time.perf_counter() - started:.0f} s\n")
    print("| method | sparsity of pruned layers | test accuracy (mean ± std) |")
    print("|---|---|---|")
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        sparsity = f"{sparsities[name]:.3f}" if name in sparsities else "0"
        print(f"| {name} | {sparsity} | {100 * statistics.mean(values):.2f} ± {100 * spread:.2f} % |")


if __name__ == "__main__":
    main()
