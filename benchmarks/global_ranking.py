"""Global ranking on ResNet-50: `sparsify.scope.global_keep_masks` (linear-time selection) vs the sort it replaced.

    python benchmarks/global_ranking.py --rounds 5 --threads 1
    python benchmarks/global_ranking.py --rounds 5 --threads 2

The scores are the magnitudes of torchvision's ResNet-50 (random init, seed 0; no download): its 53 conv
and 1 linear weights, 25.5 M scores (23.5 M in the convs). One "global magnitude update" is
``global_keep_masks({name: weight.abs()}, 0.75)``; the ``capped`` case adds INC's per-layer cap
``max_sparsity=0.98`` and a ``min_sparsity=0.5`` on the classifier, so every layer also needs its own
order statistics. ``sort`` is the argsort-based implementation, kept verbatim in ``tests/test_scope.py``
(``_reference_global``) where a property test checks that both give identical masks; this script
checks it again on these scores.

Every measurement runs in its own process, and the two implementations alternate round by round, so load
from other processes hits both alike. Reported: medians of wall time and of process CPU time (all threads;
steadier on a shared machine), of the ranking alone and of the whole update (``abs`` + ranking), and the
ranking's transient memory: the growth of the peak resident set (``VmHWM``, reset just before the call)
over the resident size before it, in bytes per score.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPLEMENTATIONS = ("linear", "sort")
CASES = ("plain", "capped")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+)", status.read()).group(1))


def worker(implementation: str, case: str, threads: int) -> dict[str, float]:
    import torch
    import torchvision
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_scope import _reference_global

    from sparsify.scope import global_keep_masks

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    weights = {name: module.weight.detach() for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    kwargs = {"max_sparsity": 0.98, "min_sparsity": {"fc": 0.5}} if case == "capped" else {}
    rank = global_keep_masks if implementation == "linear" else _reference_global
    rank({name: w[:1].abs() for name, w in weights.items()}, 0.75, **kwargs)  # warm-up on tiny inputs

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    scores = {name: w.abs() for name, w in weights.items()}
    mid_wall, mid_cpu = time.perf_counter(), time.process_time()
    before_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set to the current size
    masks = rank(scores, 0.75, **kwargs)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    extra_kib = _status_kib("VmHWM") - before_kib
    numel = sum(s.numel() for s in scores.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    checksum = sum(int(m.view(-1).nonzero()[:64].sum()) for m in masks.values())
    return {
        "rank_wall_s": end_wall - mid_wall, "rank_cpu_s": end_cpu - mid_cpu,
        "update_wall_s": end_wall - start_wall, "update_cpu_s": end_cpu - start_cpu,
        "extra_bytes_per_score": extra_kib * 1024 / numel, "numel": numel, "layers": len(scores),
        "pruned": pruned, "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        for case in CASES:
            for implementation in IMPLEMENTATIONS:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", implementation, case, "--threads", str(args.threads)],
                    check=True, capture_output=True, text=True,
                ).stdout
                results.setdefault((implementation, case), []).append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    for case in CASES:  # both implementations must agree exactly
        linear, sort = results[("linear", case)][0], results[("sort", case)][0]
        if (linear["pruned"], linear["checksum"]) != (sort["pruned"], sort["checksum"]):
            raise SystemExit(f"{case}: the implementations disagree: {linear} vs {sort}")

    def med(implementation: str, case: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(implementation, case)])

    with open("/proc/loadavg") as load:
        loadavg = " ".join(load.read().split()[:3])
    first = results[("linear", "plain")][0]
    print(f"\nResNet-50: {first['layers']} layers, {first['numel']:,} scores, sparsity 0.75; rounds={args.rounds} "
          f"threads={args.threads}; load average at the end: {loadavg}\n")
    print("| case | implementation | ranking wall (s) | ranking CPU (s) | update wall (s) | update CPU (s) "
          "| ranking extra memory (B/score) | × sort (ranking CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        for implementation in IMPLEMENTATIONS:
            cells = [f"{med(implementation, case, key):.3f}"
                     for key in ("rank_wall_s", "rank_cpu_s", "update_wall_s", "update_cpu_s")]
            ratio = med(implementation, case, "rank_cpu_s") / med("sort", case, "rank_cpu_s")
            print(f"| {case} | {implementation} | {' | '.join(cells)} | "
                  f"{med(implementation, case, 'extra_bytes_per_score'):.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
