"""Training-step time, training memory and mask-update time: dense vs sparsify (both masking modes) vs Core ML Tools.

    python benchmarks/engine_overhead.py --model cnn --rounds 5 --steps 100 --threads 1
    python benchmarks/engine_overhead.py --model mlp --rounds 3 --steps 10 --threads 1 --mask-updates 1

Every variant trains the same model (same seed, same batch) with SGD (momentum 0.9), after being prepared
and pruned to 75 % by a polynomial schedule that updates the masks at *every* ``pruner.step()`` (so each
``step()`` recomputes all masks); the timed training steps (forward + backward + optimizer step) do not
call ``pruner.step()``. ``sparsify-inplace`` is the pruner's model with every mask reinstalled by
``install_mask(..., mode="inplace")`` (see `_to_inplace_masks`).

Each round runs, in fresh processes:

* **time** — one process holding all variants, which take one training step each in turn, ``--steps``
  times; the medians per variant are that round's step times. Taking turns step by step makes the load
  of the moment (other processes on a shared machine) hit every variant alike. Step time is given as
  wall time and as process CPU time (user + system, all threads): the CPU time does not count waiting
  for a core, but does count page faults — the main cost of fresh weight-sized tensors.
* **memory** — one process per variant, alone: the peak resident set (``VmHWM`` from
  ``/proc/self/status``) is reset after ``prepare()``, the first mask computation, one warm-up step
  and a ``malloc_trim`` (which returns the heap memory they freed to the system),
  and read after ``--steps`` training steps; "training memory" is that peak minus the resident size
  just before the model was built (both libraries are imported before that point in every variant).
  Then ``--mask-updates`` calls of ``pruner.step()`` are timed, and their own peak (reset again) above
  the resident size before them is the mask update's extra memory.

Reported figures are medians over rounds; ratios are against dense and Core ML Tools from the same run.
"""

from __future__ import annotations

import argparse
import ctypes
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


def _trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


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


def _prepared(variant: str, model_name: str):
    """``(model, pruner or None, train_step)`` for one variant, warmed up (optimizer state allocated)."""
    import coremltools.optimize.torch.pruning as coremltools_api
    import torch
    from torch import nn

    import sparsify as sparsify_api

    torch.manual_seed(0)
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

    train_step()
    return model, pruner, train_step


def time_worker(variants: list[str], model_name: str, steps: int, threads: int) -> dict[str, dict[str, float]]:
    """All variants in one process, one training step each in turn: the load of the moment hits them alike."""
    import torch

    torch.set_num_threads(threads)
    steppers = {variant: _prepared(variant, model_name)[2] for variant in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(steps):
        for variant, train_step in steppers.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            train_step()
            wall[variant].append(time.perf_counter() - start_wall)
            cpu[variant].append(time.process_time() - start_cpu)
    return {v: {"step_s": statistics.median(wall[v]), "step_cpu_s": statistics.median(cpu[v])} for v in variants}


def memory_worker(variant: str, model_name: str, steps: int, threads: int, mask_updates: int) -> dict[str, float]:
    """One variant alone in its process: training memory, then the mask update's time and memory."""
    import coremltools.optimize.torch.pruning  # noqa: F401  (imported before the baseline in every variant)
    import torch

    import sparsify  # noqa: F401

    torch.set_num_threads(threads)
    _trim()
    baseline_kib = _status_kib("VmRSS")
    _, pruner, train_step = _prepared(variant, model_name)
    _trim()  # heap memory that prepare() and the first mask computation freed goes back to the system
    _reset_peak()  # ... and their peak is not training
    for _ in range(steps):
        train_step()
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
        "train_mb": (train_peak_kib - baseline_kib) / 1024,
        "mask_update_s": statistics.median(mask_times) if mask_times else float("nan"),
        "mask_update_extra_mb": mask_peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (a timing process + a process per variant)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mask-updates", type=int, default=3, help="timed pruner.step() calls (0: none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--worker", choices=(*VARIANTS, "time"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    if args.worker == "time":
        print(json.dumps(time_worker(variants, args.model, args.steps, args.threads)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.model, args.steps, args.threads, args.mask_updates)))
        return

    def run(worker: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", worker, "--model", args.model, "--steps", str(args.steps),
             "--threads", str(args.threads), "--mask-updates", str(args.mask_updates),
             "--variants", ",".join(variants)],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        timed = run("time")
        for variant in variants:
            results[variant].append({**timed[variant], **run(variant)})
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
