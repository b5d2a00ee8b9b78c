"""Transient memory of one mask update, in bytes per prunable weight, per criterion × scope × pattern.

    python benchmarks/criterion_memory.py --rounds 3
    python benchmarks/criterion_memory.py --rounds 3 --tree before=/tmp/engine-tree --tree after=.

What is measured: the growth of the process' peak resident set during ``pruner.prune_now(0.5)`` — a mask
update bringing every module from 25 % to 50 % sparsity (2:4 from 1:4) — over the resident set just before
it, divided by the number of prunable weights. Everything the pruner already holds before the update is
*not* counted: the parameters (``weight_orig``), the masked weights, the bool masks, the gradients, and the
criterion's own state (the ``|G|`` / ``|W⊙G|`` / momentum score tensors of the gradient criteria, which
live from one optimizer step to the next). What is counted is everything the update allocates and frees
again, plus the new masks it builds before installing them (1 B/weight, copied into the existing mask
buffers): the scores of ``magnitude`` (``|W|`` is computed at the update), the ranking's temporaries, the
group scores of a pattern, and so on. ``mfac`` and ``wanda`` are not in the table: M-FAC's update builds an
inverse-Fisher estimate of ``num_grads`` gradients per weight (its memory scales with ``num_grads``, not with
a constant per weight), and Wanda re-selects each layer on calibration data; neither is a per-weight score
followed by a ranking.

How: every case runs in a fresh process (``--worker``). It builds the model, prepares the pruner, runs one
forward/backward pass (the gradient criteria fold the gradient in), prunes to 25 %, runs another
forward/backward, and first warms every code path up on a small copy of the same config (so libraries and
thread pools are loaded before the measurement). Then it calls ``malloc_trim(0)`` (free heap pages go back
to the system), reads ``VmRSS`` from ``/proc/self/status``, resets the peak with ``echo 5 >
/proc/self/clear_refs``, runs the update and reads ``VmHWM``. ``MALLOC_MMAP_THRESHOLD_=65536`` makes glibc
serve every tensor of 64 KiB or more by its own ``mmap``, returned to the system when freed, so the peak is
that of live memory and not of heap fragmentation. The ``calibrate`` row checks the method: a
``torch.ones`` of 1 B/weight (a bool tensor of the same number of elements) must read as 1.0.

Models: ``local`` — one ``Linear(8192, 8192)`` (67 M weights, no bias); ``global`` — four
``Linear(4096, 4096)`` ranked together (67 M weights). Constant overheads (a few MiB) are below 0.1 B/weight
at this size. Patterns: ``per_scalar`` (unstructured), ``block4`` (Core ML Tools' ``block_size=4``), ``4x1``
(Neural Compressor's tile), ``2:4`` (``n_m_ratio=(2, 4)``). Rounds interleave the trees (``--tree``) case by
case; the table shows medians of the memory and of the update's wall time (one thread by default).
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
from pathlib import Path

CRITERIA = ("magnitude", "gradient", "snip", "snip_momentum")
SCOPES = ("local", "global")
PATTERNS = ("per_scalar", "block4", "4x1", "2:4")
PATTERN_FIELDS = {
    "per_scalar": {},
    "block4": {"block_size": 4},
    "4x1": {"pattern": "4x1"},
    "2:4": {"n_m_ratio": (2, 4)},
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+)", status.read()).group(1))


def _measure(action) -> tuple[int, float]:
    """Bytes the peak resident set grows by while ``action()`` runs (see the module docs), and its seconds."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set (VmHWM) to the current size
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    return (_status_kib("VmHWM") - before) * 1024, seconds


def _model(scope: str, size: int):
    from torch import nn

    if scope == "local":
        return nn.Sequential(nn.Linear(size, size, bias=False))
    return nn.Sequential(*[nn.Linear(size // 2, size // 2, bias=False) for _ in range(4)])


def _pruner(scope: str, criterion: str, pattern: str, size: int):
    import torch

    import sparsify
    from sparsify.config import ModulePrunerConfig, PrunerConfig

    torch.manual_seed(0)
    model = _model(scope, size)
    config = ModulePrunerConfig(target_sparsity=0.5, criterion=criterion, scope=scope, **PATTERN_FIELDS[pattern])
    pruner = sparsify.Pruner(model, PrunerConfig(global_config=config))
    model = pruner.prepare()  # the pruner works on its own copy of the model
    width = model[0].in_features

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, width)).square().mean().backward()
        pruner.observe_gradients()

    train_step()
    pruner.prune_now(0.25)
    train_step()
    return model, pruner


def worker(criterion: str, scope: str, pattern: str, threads: int, size: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    if criterion == "calibrate":
        numel = size * size
        extra, _ = _measure(lambda: torch.ones(numel, dtype=torch.bool))
        return {"bytes_per_weight": extra / numel, "numel": numel}
    _, small = _pruner(scope, criterion, pattern, 64)
    small.prune_now(0.5)  # warm-up: every code path of the update once, on 4 K weights
    model, pruner = _pruner(scope, criterion, pattern, size)
    numel = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight_orig"))
    extra, seconds = _measure(lambda: pruner.prune_now(0.5))
    masks = [b for n, b in model.named_buffers() if n.endswith("weight_mask")]
    pruned = sum(int((~m).sum()) for m in masks)
    checksum = sum(int(m.reshape(-1).nonzero()[:4096].sum()) for m in masks)
    return {"bytes_per_weight": extra / numel, "seconds": seconds, "numel": numel, "pruned": pruned,
            "checksum": checksum}


def _run(tree: str, case: tuple[str, str, str], threads: int, size: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *case, "--threads", str(threads), "--size", str(size)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=8192, help="the local layer is Linear(size, size)")
    parser.add_argument("--tree", action="append", metavar="NAME=PATH",
                        help="a sparsify source tree to measure (repeatable; default: this checkout)")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--scopes", default=",".join(SCOPES))
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--worker", nargs=3, metavar=("CRITERION", "SCOPE", "PATTERN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.size)))
        return

    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(Path(__file__).parent.parent)}
    cases = [(c, s, p) for c in args.criteria.split(",") for s in args.scopes.split(",")
             for p in args.patterns.split(",")]
    results: dict[tuple[str, tuple[str, str, str]], list[dict[str, float]]] = {}
    calibration = []
    for round_index in range(args.rounds):
        calibration.append(_run(next(iter(trees.values())), ("calibrate", "local", "per_scalar"),
                                args.threads, args.size)["bytes_per_weight"])
        for case in cases:
            for name, tree in trees.items():
                results.setdefault((name, case), []).append(_run(tree, case, args.threads, args.size))
                print(json.dumps({"tree": name, "case": case, **results[(name, case)][-1]}), file=sys.stderr)
            print(f"round {round_index + 1}/{args.rounds}: {case} done", file=sys.stderr)

    for case in cases:  # every tree must build the same masks
        first = {(r["pruned"], r["checksum"]) for name in trees for r in results[(name, case)][:1]}
        if len(first) != 1:
            raise SystemExit(f"{case}: the trees build different masks: {first}")

    print(f"\n{results[(next(iter(trees)), cases[0])][0]['numel']:,} weights per case; rounds={args.rounds} "
          f"threads={args.threads}; calibration (1 B/weight allocated): "
          f"{statistics.median(calibration):.3f} B/weight\n")
    print("| criterion | scope | pattern | " + " | ".join(f"{n} (B/weight)" for n in trees) + " | "
          + " | ".join(f"{n} (s)" for n in trees) + " |")
    print("|---|---|---|" + "---|" * (2 * len(trees)))
    for case in cases:
        cells = [f"{statistics.median(r['bytes_per_weight'] for r in results[(n, case)]):.1f}" for n in trees]
        cells += [f"{statistics.median(r['seconds'] for r in results[(n, case)]):.2f}" for n in trees]
        print(f"| {' | '.join(case)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
