"""Per-layer sparsity budgets vs one uniform sparsity, at the same global sparsity, on digits.

    python benchmarks/budget_vs_uniform.py --seeds 3 --figures docs/img

For each seed: train the example CNN (``sparsify.demo.models.SmallCNN``: conv 32 → conv 64 → fc 256 → fc 10,
with batch norm) on scikit-learn's 8×8 digits (offline; 1 400 train / 397 test images), run a
sensitivity scan (each layer pruned alone, metric = minus the cross-entropy on 600 training images),
then for every global target and every budget method — ``uniform`` (every layer at the target),
``scan`` (allocated from the scan), ``erk`` and ``magnitude`` (no scan) — prune the trained model
one-shot with :class:`sparsify.MagnitudePruner` using ``budget.to_config()``, check that the number
of zeros is exactly the target's, and measure test accuracy: right after pruning, and after
``--finetune`` epochs of training with the masks fixed. Prints a Markdown table (mean ± std over
seeds), writes the raw numbers as JSON (``--json``) and, with ``--figures DIR``, the pictures that
docs/benchmarks.md and docs/reports.md show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sparsify import MagnitudePruner
from sparsify.analysis.budget import allocate_budget
from sparsify.analysis.sensitivity import accuracy, sensitivity_scan
from sparsify.scope import pruned_count

METHODS = ("uniform", "scan", "erk", "magnitude")
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def load_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def build_model() -> nn.Module:
    try:
        from sparsify.demo.models import SmallCNN
    except ImportError:  # the example networks are not installed: the same shape, defined here
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 256), nn.ReLU(), nn.Dropout(0.25), nn.Linear(256, 10),
        )
    return SmallCNN(image_shape=(1, 8, 8), num_classes=10)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def run_seed(seed: int, targets: list[float], finetune: int, figures: Path | None) -> dict:
    train_x, train_y, test_x, test_y = load_digits()
    torch.manual_seed(seed)
    model = train(build_model(), train_x, train_y, epochs=15, lr=1e-3, seed=seed)
    evaluate = accuracy((test_x, test_y))
    dense = evaluate(model)

    def neg_loss(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(m(train_x[:600]), train_y[:600]))

    started = time.perf_counter()
    scan = sensitivity_scan(model, neg_loss, sparsities=SWEEP, metric_name="-loss (train subset)", progress=False)
    scan_seconds = time.perf_counter() - started
    results = {"seed": seed, "dense": dense, "scan_seconds": scan_seconds, "runs": []}
    for target in targets:
        for method in METHODS:
            budget = allocate_budget(model, target, scan=scan if method == "scan" else None, method=method)
            pruner = MagnitudePruner(model, budget.to_config())
            pruned = pruner.prepare()
            pruner.step()
            zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
            assert zeros == pruned_count(sum(budget.params.values()), target), (method, target, zeros)
            one_shot = evaluate(pruned)
            tuned = evaluate(train(pruned, train_x, train_y, finetune, 1e-3, seed)) if finetune else one_shot
            results["runs"].append({
                "target": target, "method": method, "one_shot": one_shot, "finetuned": tuned,
                "sparsities": budget.sparsities, "predicted_drop": budget.predicted_drop,
            })
            if figures is not None and seed == 0 and method == "scan" and target == 0.9:
                _layer_figures(model, pruned, budget, figures)
    if figures is not None and seed == 0:
        scan.plot(figures / "sensitivity_digits.png", title="digits CNN: each layer pruned alone")
    return results


def _layer_figures(model: nn.Module, pruned: nn.Module, budget, figures: Path) -> None:
    from sparsify.analysis.model_report import model_report
    from sparsify.analysis.plots import plot_layer_sparsity, plot_weight_heatmap, plot_weight_histogram

    plot_layer_sparsity(model_report(pruned), figures / "budget_layers_digits.png",
                        title="digits CNN, scan budget at 90 %")
    name = max(budget.params, key=budget.params.get)
    plot_weight_heatmap(model.get_submodule(name), figures / "heatmap_digits.png",
                        after=pruned.get_submodule(name).weight, title=f"layer {name} before / after", figsize=(10, 4))
    plot_weight_histogram(pruned, figures / "histogram_digits.png", title="digits CNN at 90 %: non-zero weights")


def summarize(all_results: list[dict], targets: list[float]) -> tuple[str, dict]:
    table = {}
    for target in targets:
        for method in METHODS:
            runs = [r for res in all_results for r in res["runs"] if r["target"] == target and r["method"] == method]
            table[(target, method)] = {
                key: (statistics.mean(r[key] for r in runs),
                      statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0.0)
                for key in ("one_shot", "finetuned")
            }
    dense = statistics.mean(r["dense"] for r in all_results)
    lines = [f"dense test accuracy: {100 * dense:.1f} %  ({len(all_results)} seeds)", "",
             "| global sparsity | method | one-shot accuracy | after fine-tuning |", "|---|---|---:|---:|"]
    for (target, method), row in table.items():
        cells = [f"{100 * m:.1f} ± {100 * s:.1f} %" for m, s in (row["one_shot"], row["finetuned"])]
        lines.append(f"| {100 * target:g} % | {method} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines), table


def plot_comparison(table: dict, targets: list[float], dense: float, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in zip(axes, ("one_shot", "finetuned"), ("one-shot", "after fine-tuning")):
        for method in METHODS:
            means = [100 * table[(t, method)][key][0] for t in targets]
            stds = [100 * table[(t, method)][key][1] for t in targets]
            ax.errorbar([100 * t for t in targets], means, yerr=stds, marker="o", capsize=3, label=method)
        ax.axhline(100 * dense, color="grey", linestyle="--", linewidth=1, label="dense")
        ax.set_title(f"digits CNN, {title}")
        ax.set_xlabel("global sparsity (%)")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(loc="lower left")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--finetune", type=int, default=2, help="fine-tuning epochs after pruning (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figures", type=Path, help="folder for the PNG pictures")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_seed(seed, args.targets, args.finetune, args.figures) for seed in range(args.seeds)]
    text, table = summarize(results, args.targets)
    print(text)
    print(f"\nscan time per seed: {statistics.mean(r['scan_seconds'] for r in results):.1f} s; "
          f"total {time.perf_counter() - started:.0f} s")
    if args.figures is not None:
        plot_comparison(table, args.targets, statistics.mean(r["dense"] for r in results),
                        args.figures / "budget_vs_uniform.png")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
