"""Training-step time, training memory and mask-update time: dense vs sparsify (both masking modes) vs Core ML Tools.

Each measurement runs in its own subprocess (so memory is that variant's alone), and the variants are
interleaved round by round (dense, sparsify, sparsify-inplace, coremltools, dense, ...) so that load from
other processes hits all of them alike. Reported figures are medians over rounds; ratios are against dense
and against Core ML Tools from the same run.

    python benchmarks/engine_overhead.py --model cnn --rounds 7
    python benchmarks/engine_overhead.py --model mlp --rounds 5 --steps 5

Per process: the model is built, prepared (pruned to 75 % by a polynomial schedule that updates the
masks at *every* step, so each ``step()`` recomputes all masks), then ``--steps`` training steps are
timed (forward + backward + SGD-with-momentum update, without ``pruner.step()``), then ``pruner.step()``
is timed on its own. Step time is given as wall time and as process CPU time (user + system, all
threads): on a shared machine the CPU time is the steadier of the two, since waiting for a core is
not counted — page faults, which dominate the cost of fresh weight-sized tensors, are.

Memory is read from ``/proc/self/status``: the peak resident set (``VmHWM``) is reset just before the
timed training steps and read after them, and "training memory" is that peak minus the resident size
just before the model was built (both libraries are imported before that point in every variant).
The mask update's own peak is measured the same way, separately.

``sparsify-inplace`` is the pruner's model with every mask reinstalled by
``install_mask(..., mode="inplace")`` (see `_to_inplace_masks`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

VARIANTS = ("dense", "sparsify", "sparsify-inplace", "coremltools")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+)", status.read()).group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)


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


def _to_inplace_masks(model) -> None:
    """Reinstall every mask of a prepared model in the in-place mode (same mask, amount and pattern).

    Until the pruner config has a field for it, this is how the benchmark reaches
    ``install_mask(..., mode="inplace")``; the pruner keeps working on the reinstalled masks.
    """
    from sparsify.masking import MaskHook, install_mask, uninstall_mask

    for module in model.modules():
        for hook in [h for h in module._forward_pre_hooks.values() if isinstance(h, MaskHook)]:
            name = hook._tensor_name
            mask = getattr(module, name + "_mask").clone()
            pattern = {"block_size": hook.block_size, "granularity": hook.granularity,
                       "n_m_ratio": hook.n_m_ratio, "dim": hook.dim}
            uninstall_mask(module, name)
            install_mask(module, name, mask, hook.amount, mode="inplace", **pattern)


def worker(variant: str, model_name: str, steps: int, threads: int, mask_updates: int) -> dict[str, float]:
    # Import both libraries in every variant, before the baseline, so library code is not counted.
    import coremltools.optimize.torch.pruning as coremltools_api
    import torch
    from torch import nn

    import sparsify as sparsify_api

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline_kib = _status_kib("VmRSS")
    model, x, y = _build(model_name)
    pruner = None
    if variant != "dense":
        api = coremltools_api if variant == "coremltools" else sparsify_api
        schedule = api.PolynomialDecayScheduler(update_steps=list(range(1, 10_000)))
        config = api.MagnitudePrunerConfig().set_global(
            api.ModuleMagnitudePrunerConfig(target_sparsity=0.75, scheduler=schedule))
        pruner = api.MagnitudePruner(model, config)
        model = pruner.prepare(inplace=True)
        if variant == "sparsify-inplace":
            _to_inplace_masks(model)
        pruner.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()  # warm-up (allocates optimizer state)
    _reset_peak()
    wall, cpu = [], []
    for _ in range(steps):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        train_step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    train_peak_kib = _status_kib("VmHWM")
    mask_times, mask_peak_kib = [], float("nan")
    if pruner is not None and mask_updates > 0:
        before_kib = _status_kib("VmRSS")
        _reset_peak()
        for _ in range(mask_updates):
            start = time.perf_counter()
            pruner.step()
            mask_times.append(time.perf_counter() - start)
        mask_peak_kib = _status_kib("VmHWM") - before_kib
    return {
        "step_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "train_mb": (train_peak_kib - baseline_kib) / 1024,
        "mask_update_s": statistics.median(mask_times) if mask_times else float("nan"),
        "mask_update_extra_mb": mask_peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one process per variant each)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mask-updates", type=int, default=3, help="timed pruner.step() calls (0: none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.threads, args.mask_updates)))
        return

    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        for variant in variants:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", variant, "--model", args.model,
                 "--steps", str(args.steps), "--threads", str(args.threads),
                 "--mask-updates", str(args.mask_updates)],
                check=True, capture_output=True, text=True,
            ).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant]) if variant in results else float("nan")

    def ratio(variant: str, key: str, against: str) -> str:
        return f"{med(variant, key) / med(against, key):.3f}"

    with open("/proc/loadavg") as load:
        loadavg = load.read().split()[:3]
    print(f"\nmodel={args.model} rounds={args.rounds} steps={args.steps} threads={args.threads} "
          f"load average at the end: {' '.join(loadavg)}\n")
    print("| variant | step wall (ms) | × dense | × Core ML Tools | step CPU (ms) | × dense | × Core ML Tools "
          "| training memory (MiB) | × dense | × Core ML Tools | mask update (ms) | × Core ML Tools "
          "| mask update extra memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        dense_row = variant == "dense"
        print(
            f"| {variant} | {med(variant, 'step_s') * 1e3:.1f} | {ratio(variant, 'step_s', 'dense')} | "
            f"{ratio(variant, 'step_s', 'coremltools')} | {med(variant, 'step_cpu_s') * 1e3:.1f} | "
            f"{ratio(variant, 'step_cpu_s', 'dense')} | {ratio(variant, 'step_cpu_s', 'coremltools')} | "
            f"{med(variant, 'train_mb'):.0f} | {ratio(variant, 'train_mb', 'dense')} | "
            f"{ratio(variant, 'train_mb', 'coremltools')} | "
            + ("— | — | — |" if dense_row or args.mask_updates == 0 else
               f"{med(variant, 'mask_update_s') * 1e3:.1f} | {ratio(variant, 'mask_update_s', 'coremltools')} | "
               f"{med(variant, 'mask_update_extra_mb'):.0f} |")
        )


if __name__ == "__main__":
    main()
