"""One-shot second-order pruning on scikit-learn digits: accuracy without fine-tuning, and what the Fisher costs.

Part ``accuracy``. ``sparsify.demo.models.SmallCNN`` (two conv/BN blocks, 87 k conv+linear weights) is trained
to convergence on the 8×8 digits (1 437 train / 360 test images, offline), once per seed. Each trained
model is then pruned in one shot — no fine-tuning — to 35/50/70/80/90 % of all its conv and linear
weights by:

* magnitude, global (one ``|w|`` ranking across layers) and layer-wise (each layer alone);
* M-FAC, global: score only; + OBS update; + update with 4 recomputations; and SparseML's absolute
  ``damp = 1e-5`` + update (to show the collapse to magnitude on a converged model);
* M-FAC + update, layer-wise (the scope of SparseML's MNIST tutorial recipe).

M-FAC takes ``--num-grads`` (512) gradients of batches of 16 training images and a block-diagonal
Fisher with blocks of ``--block-size`` (2000) — the values of SparseML's MNIST recipe — and relative
damping ``0.01 × mean Fisher diagonal`` unless stated. All runs are one `sparsify.Pruner` with the criterion
``"magnitude"`` or ``{"kind": "mfac", ...}`` and ``scope="global"`` or ``"local"``: ``prepare()``, ``prune_now()``,
``finalize()``.

Part ``cost``. ``FisherInverse`` set-up + diagonal + one product on random ``m × d`` float32 gradients,
each in a fresh subprocess: wall time, CPU time, and peak RSS above the process before the buffer
existed (so buffer + workspace), for growing ``d`` (m = 256) and growing ``m`` (d = 1.2 M).

Part ``e2e``. ``SmallCNN(channels=(64, 128), hidden=2048)`` — 1.14 M conv+linear weights — trained
briefly, then pruned in one shot to 70 % with ``num_grads=256`` (batches of 16): the whole call, split
into gradient collection and Fisher work. The machine's load average is printed next to every timing,
since other processes may share the cores.

    .venv/bin/python benchmarks/mfac_oneshot.py                       # all parts, ~10 min on 2 cores
    .venv/bin/python benchmarks/mfac_oneshot.py --parts accuracy --seeds 1 --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria.sampler import GradSampler
from sparsify.demo.datasets import load_digits
from sparsify.demo.models import SmallCNN, train_epoch


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def oneshot(model: nn.Module, sparsity: float, criterion: dict, scope: str = "global",
            sampler: GradSampler | None = None) -> Pruner:
    """Prune a copy of ``model`` in one shot to ``sparsity`` of its conv and linear weights; the finalized
    model is ``pruner.model``, M-FAC's timings are in ``pruner.scorer_of(name).log``."""
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=sparsity, criterion=criterion, scope=scope))
    pruner = Pruner(model, config, sampler)
    pruner.prepare()
    pruner.prune_now()
    pruner.finalize(inplace=True)
    return pruner


# ----------------------------------------------------------------------------------------------
# Part 1: accuracy
# ----------------------------------------------------------------------------------------------


def train(model: nn.Module, epochs: int, seed: int) -> nn.Module:
    data = load_digits()
    train_loader, _ = data.loaders(batch_size=64, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        train_epoch(model, train_loader, optimizer)
        scheduler.step()
    return model.eval()


def calibration(seed: int, batch_size: int = 16) -> GradSampler:
    """Endless random batches of training images; every pass (every recomputation) draws new ones."""
    data = load_digits()
    passes = iter(range(10**9))

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(1000 * seed + next(passes))
        while True:
            index = torch.randint(0, len(data.train_y), (batch_size,), generator=g)
            yield data.train_x[index], data.train_y[index]

    return GradSampler(batches, F.cross_entropy, progress=False)


def test_metrics(model: nn.Module) -> tuple[float, float]:
    """Test accuracy (%) and test cross-entropy."""
    data = load_digits()
    model.eval()
    with torch.no_grad():
        logits = model(data.test_x)
    return 100.0 * float((logits.argmax(1) == data.test_y).float().mean()), float(F.cross_entropy(logits, data.test_y))


def test_accuracy(model: nn.Module) -> float:
    return test_metrics(model)[0]


#: name -> (criterion kind, scope, criterion settings)
METHODS: dict[str, tuple[str, str, dict]] = {
    "magnitude, global": ("magnitude", "global", {}),
    "magnitude, layer-wise": ("magnitude", "local", {}),
    "M-FAC global, score only": ("mfac", "global", {"obs_update": False}),
    "M-FAC global, + OBS update": ("mfac", "global", {}),
    "M-FAC global, + update, 4 recomputations": ("mfac", "global", {"num_recomputations": 4}),
    "M-FAC global, SparseML damp 1e-5 (absolute), + update": (
        "mfac", "global", {"damp": 1e-5, "damp_mode": "absolute"}),
    "M-FAC layer-wise, + update": ("mfac", "local", {}),
}


def accuracy_part(args: argparse.Namespace) -> dict:
    results: dict[str, dict[float, list[float]]] = {m: {s: [] for s in args.sparsities} for m in METHODS}
    losses: dict[str, dict[float, list[float]]] = {m: {s: [] for s in args.sparsities} for m in METHODS}
    dense, dense_loss, times = [], [], []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = train(SmallCNN(), args.epochs, seed)
        accuracy, loss = test_metrics(model)
        dense.append(accuracy)
        dense_loss.append(loss)
        print(f"seed {seed}: dense test accuracy {dense[-1]:.2f} %", flush=True)
        for name, (kind, scope, options) in METHODS.items():
            criterion = {"kind": kind}
            if kind == "mfac":
                criterion.update(num_grads=args.num_grads, fisher_block_size=args.block_size, **options)
            for sparsity in args.sparsities:
                started = time.perf_counter()
                pruner = oneshot(model, sparsity, criterion, scope, calibration(seed) if kind == "mfac" else None)
                times.append((name, time.perf_counter() - started))
                accuracy, loss = test_metrics(pruner.model)
                results[name][sparsity].append(accuracy)
                losses[name][sparsity].append(loss)
            row = " ".join(f"{results[name][s][-1]:6.2f}" for s in args.sparsities)
            print(f"  {name:55s} {row}", flush=True)
    print(f"\ndigits, SmallCNN, {args.seeds} seed(s), one-shot, no fine-tuning, m={args.num_grads}, "
          f"fisher_block_size={args.block_size}; dense {statistics.mean(dense):.2f} % "
          f"(± {statistics.pstdev(dense):.2f})\n")
    for title, table, digits in (("test accuracy, %", results, 1), ("test cross-entropy", losses, 3)):
        print(f"\n{title} (mean ± std over seeds)\n")
        print("| method | " + " | ".join(f"{s:.0%}" for s in args.sparsities) + " |")
        print("|---|" + "---|" * len(args.sparsities))
        for name in METHODS:
            cells = [f"{statistics.mean(v):.{digits}f} ± {statistics.pstdev(v):.{digits}f}"
                     for v in table[name].values()]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\ndense: test cross-entropy {statistics.mean(dense_loss):.3f}")
    mfac_time = [t for n, t in times if n == "M-FAC global, + OBS update"]
    print(f"\nM-FAC + update, one call: {statistics.median(mfac_time):.2f} s median ({_load()})")
    return {"dense": dense, "dense_loss": dense_loss,
            "accuracy": {k: {str(s): v for s, v in r.items()} for k, r in results.items()},
            "loss": {k: {str(s): v for s, v in r.items()} for k, r in losses.items()}}


# ----------------------------------------------------------------------------------------------
# Part 2: cost of the Fisher work, each point in a fresh process
# ----------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size, so imports before the measurement do not count."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:  # not Linux, or not allowed: the peak then includes what came before
        pass


def fisher_point(m: int, d: int, block: int | None) -> dict:
    """Run in a subprocess: time and peak memory of FisherInverse on an m × d buffer."""
    from sparsify.criteria.fisher import FisherInverse

    torch.manual_seed(0)
    _reset_peak()
    before = _status("VmRSS")
    grads = torch.randn(m, d)
    wall, cpu = time.perf_counter(), time.process_time()
    fisher = FisherInverse(grads, 0.01, block_size=block)
    fisher.diag()
    fisher.mul(torch.randn(d))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _status("VmHWM")
    return {"m": m, "d": d, "block": block, "wall_s": wall, "cpu_s": cpu,
            "buffer_mib": m * d * 4 / 2**20, "peak_extra_mib": (peak - before) / 2**20, "load": os.getloadavg()[0]}


def cost_part(args: argparse.Namespace) -> list[dict]:
    points = [(256, d, b) for d in args.dims for b in (args.block_size, None)]
    points += [(m, max(args.dims), b) for m in (64, 128) for b in (args.block_size, None)]
    rows = []
    print("\n| m | d | fisher_block_size | wall s | CPU s | buffer MiB | peak above start MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for m, d, block in points:
        out = subprocess.run(
            [sys.executable, __file__, "--fisher-point", str(m), str(d), str(block)],
            check=True, capture_output=True, text=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {m} | {d:,} | {block} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['buffer_mib']:.0f} | "
              f"{row['peak_extra_mib']:.0f} | {row['load']:.1f} |", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Part 3: end to end on a 1.2 M-weight CNN
# ----------------------------------------------------------------------------------------------


def e2e_part(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = SmallCNN(channels=(64, 128), hidden=2048)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    started = time.perf_counter()
    model = train(model, args.e2e_epochs, seed=0)
    print(f"\n(training {args.e2e_epochs} epochs took {time.perf_counter() - started:.0f} s)")
    dense = test_accuracy(model)
    rows = []
    print(f"\n1.2 M model: {weights:,} conv+linear weights, dense test accuracy {dense:.2f} %, "
          f"{torch.get_num_threads()} threads")
    for block in (args.block_size, None):
        started = time.perf_counter()
        pruner = oneshot(model, 0.7, {"kind": "mfac", "num_grads": 256, "fisher_block_size": block},
                         sampler=calibration(0))
        total = time.perf_counter() - started
        log = pruner.scorer_of(next(iter(pruner.targets))).log[0]
        magnitude = oneshot(model, 0.7, {"kind": "magnitude"})
        row = {"block": block, "total_s": total, "gradients_s": log["seconds_gradients"],
               "fisher_s": log["seconds_fisher"], "accuracy": test_accuracy(pruner.model),
               "magnitude_accuracy": test_accuracy(magnitude.model), "load": _load()}
        rows.append(row)
        print(f"  fisher_block_size={block}: one shot {total:.1f} s (gradients {row['gradients_s']:.1f} s, "
              f"Fisher + scores {row['fisher_s']:.1f} s); 70 %: M-FAC {row['accuracy']:.2f} % vs magnitude "
              f"{row['magnitude_accuracy']:.2f} % ({row['load']})", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--fisher-point":
        m, d, block = int(sys.argv[2]), int(sys.argv[3]), None if sys.argv[4] == "None" else int(sys.argv[4])
        print(json.dumps(fisher_point(m, d, block)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="accuracy,cost,e2e")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--e2e-epochs", type=int, default=8)
    parser.add_argument("--num-grads", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=2000)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.35, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--dims", type=int, nargs="+", default=[150_000, 300_000, 600_000, 1_200_000])
    parser.add_argument("--quick", action="store_true", help="few epochs and gradients: a smoke run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.e2e_epochs, args.num_grads, args.dims = 3, 1, 32, [50_000, 100_000]
    parts = args.parts.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {_load()}")
    out = {}
    if "accuracy" in parts:
        out["accuracy"] = accuracy_part(args)
    if "cost" in parts:
        out["cost"] = cost_part(args)
    if "e2e" in parts:
        out["e2e"] = e2e_part(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(out, stream, indent=1)


if __name__ == "__main__":
    main()
