"""Training-step time, peak memory and mask-update time: dense vs sparsify vs Core ML Tools.

Each measurement runs in its own subprocess (so peak memory is that variant's alone), and the variants
are interleaved round by round (dense, sparsify, coremltools, dense, ...) so that load from other
processes hits all of them alike. Reported figures are medians over rounds; ratios are against dense
and against Core ML Tools from the same run.

    python benchmarks/engine_overhead.py --model cnn --rounds 5
    python benchmarks/engine_overhead.py --model mlp --rounds 5

Per process: the model is built, prepared (pruned to 75 % by a polynomial schedule that updates the
masks at *every* step, so each ``step()`` recomputes all masks), then ``--steps`` training steps are
timed (forward + backward + SGD update, without ``pruner.step()``), then ``pruner.step()`` is timed on
its own. Peak memory is the growth of the process's peak RSS from just before the model is built.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("dense", "sparsify", "coremltools")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(model_name: str):
    import torch
    from torch import nn

    if model_name == "mlp":
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(4096, 4096), nn.ReLU())])
        return model, torch.randn(128, 4096), torch.randint(0, 4096, (128,))

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * 7 * 7, 256)
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    return SmallCNN(), torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))


def worker(variant: str, model_name: str, steps: int, threads: int) -> dict[str, float]:
    # Import both libraries in every variant, before the baseline, so library code is not counted.
    import coremltools.optimize.torch.pruning as coremltools_api
    import torch
    from torch import nn

    import sparsify as sparsify_api

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline = _peak_rss_bytes()
    model, x, y = _build(model_name)
    pruner = None
    if variant != "dense":
        api = sparsify_api if variant == "sparsify" else coremltools_api
        schedule = api.PolynomialDecayScheduler(update_steps=list(range(1, 10_000)))
        config = api.MagnitudePrunerConfig().set_global(
            api.ModuleMagnitudePrunerConfig(target_sparsity=0.75, scheduler=schedule))
        pruner = api.MagnitudePruner(model, config)
        model = pruner.prepare(inplace=True)
        pruner.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()  # warm-up (allocates optimizer state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    mask_times = []
    if pruner is not None:
        for _ in range(3):
            start = time.perf_counter()
            pruner.step()
            mask_times.append(time.perf_counter() - start)
    return {
        "step_s": statistics.median(times),
        "peak_mb": (_peak_rss_bytes() - baseline) / 2**20,
        "mask_update_s": statistics.median(mask_times) if mask_times else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one process per variant each)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.threads)))
        return

    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for round_index in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", variant, "--model", args.model,
                 "--steps", str(args.steps), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            ).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    print(f"\nmodel={args.model} rounds={args.rounds} steps={args.steps} threads={args.threads}\n")
    print("| variant | train step (ms) | × dense | peak memory growth (MiB) | × Core ML Tools "
          "| mask update step() (ms) "
          "| × Core ML Tools |")
    print("|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        step, peak, mask = med(variant, "step_s"), med(variant, "peak_mb"), med(variant, "mask_update_s")
        mask_cell = "—" if variant == "dense" else f"{mask * 1e3:.1f}"
        mask_ratio = "—" if variant == "dense" else f"{mask / med('coremltools', 'mask_update_s'):.2f}"
        print(f"| {variant} | {step * 1e3:.1f} | {step / med('dense', 'step_s'):.3f} | {peak:.0f} | "
              f"{peak / med('coremltools', 'peak_mb'):.2f} | {mask_cell} | {mask_ratio} |")


if __name__ == "__main__":
    main()
