"""One-shot pruning without fine-tuning: sparsify's criteria against Core ML Tools' magnitude and SparseGPT.

A ``SmallCNN(channels=(32, 64), hidden=384)`` — 1.23 M conv + linear weights — is trained on Fashion-MNIST
(Debian's ``dataset-fashion-mnist``; scikit-learn's digits if it is missing, and the output says so), seeded,
and cached under ``/tmp/sparsify-bench`` (never in git). Then every method prunes *the same trained model* in
one shot to 50 / 70 / 90 % of every conv and linear layer (each layer at that sparsity, unless the method says
global) and the test accuracy is measured, with no fine-tuning:

* Core ML Tools magnitude — ``MagnitudePruner``, constant schedule at step 0;
* Core ML Tools SparseGPT — ``LayerwiseCompressor`` with ``ModuleSparseGPTConfig`` (float32 weights: no
  quantization), ``calibration_nsamples`` = the calibration batches;
* sparsify magnitude, SparseGPT, Wanda, M-FAC (``Pruner(..., sampler).prune_now()``);
* sparsify's best combinations (``BEST``): SparseGPT with its bias update and asymmetric calibration, per layer
  and global; global SparseGPT (its budget ranked by Wanda's scores); SparseGPT at per-layer levels from a
  magnitude sensitivity scan on 2 000 training images (`sparsify.analysis.budget.allocate_budget`); global
  M-FAC with 4 recomputations.

Every data-driven method gets the same calibration images: ``--calib-batches`` batches of ``--calib-batch``
training images (M-FAC takes one gradient per batch). Each (level, method) is timed over ``--rounds`` rounds,
the methods interleaved within each round, and the median wall-clock time is printed with the load average.

    python benchmarks/oneshot_compare.py                     # ~35 min on 2 busy cores (training: ~8 min, once)
    python benchmarks/oneshot_compare.py --rounds 1 --methods "Core ML Tools SparseGPT" "sparsify SparseGPT"
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _oneshot_common import CACHE, quiet_coremltools  # benchmarks/ is the script's folder: on sys.path
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import GradSampler
from sparsify.demo.datasets import DatasetNotFoundError, DatasetSplits, load_dataset
from sparsify.demo.models import SmallCNN, train_epoch


def load() -> tuple[DatasetSplits, str]:
    try:
        return load_dataset("fashion-mnist"), "Fashion-MNIST"
    except DatasetNotFoundError as error:
        print(f"Fashion-MNIST is not available, falling back to scikit-learn digits:\n{error}")
        return load_dataset("digits"), "digits (fallback)"


def trained(data: DatasetSplits, name: str, seed: int, epochs: int) -> nn.Module:
    image = tuple(data.train_x.shape[1:])
    model = SmallCNN(image, data.num_classes, channels=(32, 64), hidden=384)
    path = CACHE / f"{name.split()[0].lower()}-smallcnn-384-seed{seed}-e{epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    torch.manual_seed(seed)
    model = SmallCNN(image, data.num_classes, channels=(32, 64), hidden=384)
    train, _ = data.loaders(batch_size=128, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(epochs):
        loss = train_epoch(model, train, optimizer)
        schedule.step()
        print(f"  epoch {epoch + 1}/{epochs}: training loss {loss:.4f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy(model: nn.Module, data: DatasetSplits) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(data.test_x.split(1000),
                                                                             data.test_y.split(1000)))
    return correct / len(data.test_y)


def weights_of(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# -- methods --------------------------------------------------------------------------------------

Method = Callable[[nn.Module, float, list[tuple[torch.Tensor, torch.Tensor]]], nn.Module]


def coreml_magnitude(model: nn.Module, sparsity: float, calibration) -> nn.Module:
    from coremltools.optimize.torch.pruning import (
        ConstantSparsityScheduler,
        MagnitudePruner,
        MagnitudePrunerConfig,
        ModuleMagnitudePrunerConfig,
    )

    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(
        target_sparsity=sparsity, scheduler=ConstantSparsityScheduler(begin_step=0)))
    pruner = MagnitudePruner(copy.deepcopy(model), config)
    prepared = pruner.prepare(inplace=True)
    pruner.step()
    return pruner.finalize(prepared, inplace=True)


def coreml_sparsegpt(model: nn.Module, sparsity: float, calibration) -> nn.Module:
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    config = LayerwiseCompressorConfig.from_dict({
        "global_config": {"algorithm": "sparse_gpt", "target_sparsity": sparsity, "weight_dtype": "float32"},
        "calibration_nsamples": len(calibration),
    })
    return LayerwiseCompressor(model, config).compress([x for x, _ in calibration], device="cpu")


def sparsify_with(criterion, **fields) -> Method:
    def run(model: nn.Module, sparsity: float, calibration) -> nn.Module:
        config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=sparsity, criterion=criterion,
                                                               **fields))
        pruner = Pruner(model, config, sampler=GradSampler(calibration, F.cross_entropy, progress=False))
        pruner.prepare()
        pruner.prune_now()
        return pruner.finalize(inplace=True)

    return run


METHODS: dict[str, tuple[Method, str]] = {
    "Core ML Tools magnitude": (coreml_magnitude, "per layer"),
    "Core ML Tools SparseGPT": (coreml_sparsegpt, "per layer"),
    "sparsify magnitude": (sparsify_with("magnitude"), "per layer"),
    "sparsify SparseGPT": (sparsify_with("sparsegpt"), "per layer"),
    "sparsify Wanda": (sparsify_with("wanda"), "per layer"),
    "sparsify M-FAC": (sparsify_with({"kind": "mfac", "num_grads": 128}), "per layer"),
}
def sparsegpt_budget(criterion) -> Method:
    """A per-layer budget from a magnitude sensitivity scan on held-out training images (`allocate_budget`,
    method "scan"), then SparseGPT at each layer's level."""

    def run(model: nn.Module, sparsity: float, calibration) -> nn.Module:
        from sparsify.analysis.budget import allocate_budget
        from sparsify.analysis.sensitivity import sensitivity_scan

        images, labels = VALIDATION

        def evaluate(candidate: nn.Module) -> float:
            with torch.no_grad():
                return float((candidate(images).argmax(1) == labels).float().mean())

        scan = sensitivity_scan(copy.deepcopy(model).eval(), evaluate, progress=False,
                                sparsities=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98))
        budget = allocate_budget(None, sparsity, scan=scan)
        configs = {re.escape(name): ModulePrunerConfig(target_sparsity=level, criterion=criterion)
                   if budget.zeros[name] else None for name, level in budget.sparsities.items()}
        pruner = Pruner(model, PrunerConfig(module_name_configs=configs),
                        sampler=GradSampler(calibration, F.cross_entropy, progress=False))
        pruner.prepare()
        pruner.prune_now()
        return pruner.finalize(inplace=True)

    return run


VALIDATION: tuple[torch.Tensor, torch.Tensor] = (torch.empty(0), torch.empty(0))
BIAS_ASYMMETRIC = {"kind": "sparsegpt", "update_bias": True, "asymmetric": True}
BEST: dict[str, tuple[Method, str]] = {
    "sparsify SparseGPT + bias": (sparsify_with({"kind": "sparsegpt", "update_bias": True}), "per layer"),
    "sparsify SparseGPT + asymmetric": (sparsify_with({"kind": "sparsegpt", "asymmetric": True}), "per layer"),
    "sparsify SparseGPT + bias + asymmetric": (sparsify_with(BIAS_ASYMMETRIC), "per layer"),
    "sparsify SparseGPT, global (Wanda-ranked budget)": (sparsify_with("sparsegpt", scope="global"), "global"),
    "sparsify SparseGPT + bias + asymmetric, global": (sparsify_with(BIAS_ASYMMETRIC, scope="global"), "global"),
    "sparsify SparseGPT + bias + asymmetric, sensitivity budget": (sparsegpt_budget(BIAS_ASYMMETRIC), "global"),
    "sparsify M-FAC, global, 4 recomputations": (
        sparsify_with({"kind": "mfac", "num_grads": 128, "num_recomputations": 4}, scope="global"), "global"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--methods", nargs="+", default=None, help="names from the table (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (accuracy is the first round's)")
    parser.add_argument("--calib-batches", type=int, default=128)
    parser.add_argument("--calib-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1: stable timings on a shared machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    quiet_coremltools()
    torch.set_num_threads(args.threads)
    data, name = load()
    model = trained(data, name, args.seed, args.epochs)
    dense = accuracy(model, data)
    print(f"{name}: SmallCNN(32, 64, hidden 384), {weights_of(model):,} conv+linear weights, dense test accuracy "
          f"{dense:.4f}", flush=True)
    generator = torch.Generator().manual_seed(1000 + args.seed)
    index = torch.randperm(len(data.train_y), generator=generator)[: args.calib_batches * args.calib_batch]
    calibration = list(zip(data.train_x[index].split(args.calib_batch), data.train_y[index].split(args.calib_batch)))
    held = torch.randperm(len(data.train_y), generator=generator)[:2000]  # training images, for the scan
    global VALIDATION
    VALIDATION = (data.train_x[held], data.train_y[held])
    methods = {**METHODS, **BEST}
    chosen = {k: v for k, v in methods.items() if args.methods is None or k in args.methods}
    results: dict[str, dict[float, float]] = {k: {} for k in chosen}
    times: dict[str, dict[float, list[float]]] = {k: {s: [] for s in args.sparsities} for k in chosen}
    for sparsity in args.sparsities:
        for round_ in range(args.rounds):
            for label, (method, _) in chosen.items():
                torch.manual_seed(args.seed)
                started = time.perf_counter()
                pruned = method(model, sparsity, calibration)
                times[label][sparsity].append(time.perf_counter() - started)
                if round_ == 0:
                    results[label][sparsity] = accuracy(pruned, data)
                    zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules()
                                if isinstance(m, (nn.Conv2d, nn.Linear)))
                    print(f"  {sparsity:.0%} {label}: accuracy {results[label][sparsity]:.4f}, "
                          f"{zeros / weights_of(pruned):.4f} of weights zero, "
                          f"{times[label][sparsity][-1]:.2f} s", flush=True)
        print(f"  ({sparsity:.0%} done; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})", flush=True)
    levels = " | ".join(f"{s:.0%}" for s in args.sparsities)
    print(f"\n{name}, dense {dense:.4f}; one shot, no fine-tuning; calibration {args.calib_batches} batches of "
          f"{args.calib_batch} training images; median of {args.rounds} interleaved round(s), {args.threads} "
          f"threads\n")
    print(f"| method | scope | {levels} | time {' / '.join(f'{s:.0%}' for s in args.sparsities)} (s) |")
    print("|---|---|" + "---|" * len(args.sparsities) + "---|")
    for label, (_, scope) in chosen.items():
        cells = " | ".join(f"{results[label][s]:.3f}" for s in args.sparsities)
        spent = " / ".join(f"{statistics.median(times[label][s]):.2f}" for s in args.sparsities)
        print(f"| {label} | {scope} | {cells} | {spent} |")


if __name__ == "__main__":
    main()
