"""Training-step time, training memory and mask-update time: dense vs sparsify (both masking modes) vs Core ML Tools.

    python benchmarks/engine_overhead.py --model cnn --rounds 5 --steps 100 --threads 1,2 --optimizers sgd,adamw
    python benchmarks/engine_overhead.py --model mlp --rounds 3 --steps 10 --threads 1 --mask-updates 1
    python benchmarks/engine_overhead.py --fsdp --model mlp --rounds 2 --steps 4 --optimizers adamw

Every variant trains the same model (same seed, same batch) with the chosen optimizer (``--optimizers``:
SGD with momentum 0.9, Adam, AdamW — torch's default CPU implementation, or ``adamw-foreach`` /
``adamw-fused``), with ``zero_grad(set_to_none=True)``, after being prepared and pruned to 75 % by a
polynomial schedule that updates the masks at *every* ``pruner.step()`` (so each ``step()`` recomputes all
masks); the timed training steps (forward + backward + optimizer step) do not call ``pruner.step()``.
``sparsify-inplace`` is the same pruning with ``ModulePrunerConfig(masking="inplace")``.

Each round runs, for every (optimizer, thread count) case, in fresh processes:

* **time** — one process holding all variants, which take one training step each in turn, ``--steps``
  times; the medians per variant are that round's step times. Taking turns step by step makes the load
  of the moment (other processes on a shared machine) hit every variant alike. Step time is given as
  wall time and as process CPU time (user + system, all threads): the CPU time does not count waiting
  for a core, but does count page faults — the main cost of fresh weight-sized tensors. The spread is the
  quartiles of the step-by-step ratio of a variant's CPU time to the dense step taken just before it.
* **memory** (unless ``--no-memory``) — one process per variant, alone: the peak resident set (``VmHWM``
  from ``/proc/self/status``) is reset after ``prepare()``, the first mask computation, one warm-up step
  and a ``malloc_trim`` (which returns the heap memory they freed to the system),
  and read after ``--steps`` training steps; "training memory" is that peak minus the resident size
  just before the model was built (both libraries are imported before that point in every variant).
  glibc's mmap threshold is fixed at 128 KiB in these processes (``mallopt``): by default it grows to the
  largest block freed so far, so freed tensors then stay in the heap, resident or not depending on what
  each variant allocated and freed before training — measured on the CNN, the same variant's training
  memory varied by 7 MiB from run to run (dense 74–80 MiB, in-place 85–92), as much as the difference
  being measured. With the fixed threshold every tensor over 128 KiB is its own mapping, returned when
  freed, and the peak is what the variant holds (to 0.1 MiB run to run). Step times are measured with
  the default allocator.
  Then ``--mask-updates`` calls of ``pruner.step()`` are timed, and their own peak (reset again) above
  the resident size before them is the mask update's extra memory.

``--fsdp`` instead measures FSDP2's per-step overhead over dense FSDP2 on two CPU processes
(``_fsdp_overhead.py``).

Reported figures are medians over rounds; ratios are against dense and Core ML Tools from the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
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


def _fixed_mmap_threshold() -> None:
    """Every heap block over 128 KiB its own mapping, unmapped when freed (see the module's docstring)."""
    m_mmap_threshold = -3  # from malloc.h; setting it also turns off glibc's dynamic threshold
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 128 * 1024)


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


OPTIMIZERS = ("sgd", "adam", "adamw", "adamw-foreach", "adamw-fused")


def _optimizer(name: str, params):
    """``sgd``: SGD with momentum 0.9; ``adam`` / ``adamw``: torch's default implementation on the CPU (the
    per-tensor loop); ``adamw-foreach`` / ``adamw-fused``: AdamW with ``foreach=True`` / ``fused=True``."""
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    kind, _, impl = name.partition("-")
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(params, lr=1e-4, **({impl: True} if impl else {}))


def _prepared(variant: str, model_name: str, optimizer_name: str = "sgd"):
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
        if variant == "sparsify-inplace":
            config = api.PrunerConfig(global_config=api.ModulePrunerConfig(
                target_sparsity=0.75, scheduler=schedule, masking="inplace"))
        pruner = (api.Pruner if variant == "sparsify-inplace" else api.MagnitudePruner)(model, config)
        model = pruner.prepare(inplace=True)
        pruner.step()
    optimizer = _optimizer(optimizer_name, model.parameters())

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    train_step()
    return model, pruner, train_step


def time_worker(
    variants: list[str], model_name: str, steps: int, threads: int, optimizer_name: str
) -> dict[str, dict[str, float]]:
    """All variants in one process, one training step each in turn: the load of the moment hits them alike."""
    import torch

    torch.set_num_threads(threads)
    steppers = {variant: _prepared(variant, model_name, optimizer_name)[2] for variant in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(steps):
        for variant, train_step in steppers.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            train_step()
            wall[variant].append(time.perf_counter() - start_wall)
            cpu[variant].append(time.process_time() - start_cpu)
    result = {v: {"step_s": statistics.median(wall[v]), "step_cpu_s": statistics.median(cpu[v])} for v in variants}
    for v in variants:  # the spread: quartiles of the step-by-step CPU-time ratio to the dense step taken beside it
        ratios = [c / d for c, d in zip(cpu[v], cpu[variants[0]])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        result[v].update(cpu_ratio_q1=q1, cpu_ratio_q3=q3)
    return result


def memory_worker(
    variant: str, model_name: str, steps: int, threads: int, mask_updates: int, optimizer_name: str
) -> dict[str, float]:
    """One variant alone in its process: training memory, then the mask update's time and memory."""
    import coremltools.optimize.torch.pruning  # noqa: F401  (imported before the baseline in every variant)
    import torch

    import sparsify  # noqa: F401

    torch.set_num_threads(threads)
    _fixed_mmap_threshold()
    _trim()
    baseline_kib = _status_kib("VmRSS")
    _, pruner, train_step = _prepared(variant, model_name, optimizer_name)
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


def _table(results: dict[str, list[dict[str, float]]], mask_updates: int) -> list[str]:
    """Markdown rows: medians over rounds, ratios of medians, and the spread of the per-round step ratio."""
    variants = list(results)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant]) if variant in results else float("nan")

    def ratio(variant: str, key: str, against: str) -> str:
        return f"{med(variant, key) / med(against, key):.3f}" if against in results else "—"

    def spread(variant: str) -> str:
        low = statistics.median(r["cpu_ratio_q1"] for r in results[variant])
        high = statistics.median(r["cpu_ratio_q3"] for r in results[variant])
        return f"{low:.2f}–{high:.2f}"

    rows = [
        "| variant | step wall (ms) | × dense | × Core ML Tools | step CPU (ms) | × dense "
        "| step-by-step CPU × dense (quartiles) | × Core ML Tools | training memory (MiB) | × dense "
        "| × Core ML Tools | mask update (ms) | × Core ML Tools "
        "| mask update extra memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        no_update = variant == "dense" or mask_updates == 0
        rows.append(
            f"| {variant} | {med(variant, 'step_s') * 1e3:.1f} | {ratio(variant, 'step_s', 'dense')} | "
            f"{ratio(variant, 'step_s', 'coremltools')} | {med(variant, 'step_cpu_s') * 1e3:.1f} | "
            f"{ratio(variant, 'step_cpu_s', 'dense')} | {spread(variant)} | "
            f"{ratio(variant, 'step_cpu_s', 'coremltools')} | "
            f"{med(variant, 'train_mb'):.0f} | {ratio(variant, 'train_mb', 'dense')} | "
            f"{ratio(variant, 'train_mb', 'coremltools')} | "
            + ("— | — | — |" if no_update else
               f"{med(variant, 'mask_update_s') * 1e3:.1f} | {ratio(variant, 'mask_update_s', 'coremltools')} | "
               f"{med(variant, 'mask_update_extra_mb'):.0f} |")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (a timing process + a process per variant)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and process")
    parser.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 1,2")
    parser.add_argument("--optimizers", default="sgd", help=f"comma-separated, of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--mask-updates", type=int, default=3, help="timed pruner.step() calls (0: none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--no-memory", action="store_true", help="time only (no per-variant memory processes)")
    parser.add_argument("--fsdp", action="store_true",
                        help="instead: FSDP2 on two CPU processes (gloo), dense vs sparsify, per-step time")
    parser.add_argument("--worker", choices=(*VARIANTS, "time"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        parser.error(f"--optimizers {bad} unknown: allowed {', '.join(OPTIMIZERS)}")
    if args.fsdp:
        from _fsdp_overhead import run as run_fsdp

        for optimizer_name in optimizers:
            print("\n".join(run_fsdp(args.model, args.rounds, args.steps, optimizer_name)))
        return

    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    if args.worker:
        if args.worker == "time":
            result = time_worker(variants, args.model, args.steps, int(args.threads), optimizers[0])
        else:
            result = memory_worker(args.worker, args.model, args.steps, int(args.threads), args.mask_updates,
                                   optimizers[0])
        print(json.dumps(result), flush=True)
        # skip interpreter shutdown: with some torchao releases installed beside coremltools, it hangs there
        os._exit(0)

    def run(worker: str, threads: str, optimizer_name: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", worker, "--model", args.model, "--steps", str(args.steps),
             "--threads", threads, "--mask-updates", str(args.mask_updates),
             "--variants", ",".join(variants), "--optimizers", optimizer_name],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    # every (optimizer, threads) case runs once per round, so a change of load spreads over all of them
    cases = [(o, t) for o in optimizers for t in args.threads.split(",")]
    results: dict[tuple[str, str], dict[str, list[dict[str, float]]]] = {c: {v: [] for v in variants} for c in cases}
    for round_index in range(args.rounds):
        for optimizer_name, threads in cases:
            timed = run("time", threads, optimizer_name)
            for variant in variants:
                memory = {"train_mb": float("nan")} if args.no_memory else run(variant, threads, optimizer_name)
                results[(optimizer_name, threads)][variant].append({**timed[variant], **memory})
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    with open("/proc/loadavg") as load:
        loadavg = load.read().split()[:3]
    for optimizer_name, threads in cases:
        print(f"\nmodel={args.model} optimizer={optimizer_name} threads={threads} rounds={args.rounds} "
              f"steps={args.steps} load average at the end: {' '.join(loadavg)}\n")
        print("\n".join(_table(results[(optimizer_name, threads)], args.mask_updates)))


if __name__ == "__main__":
    main()
