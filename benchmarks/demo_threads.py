"""Wall time of the main job (``examples/coreml_tutorial.py``, default settings) by torch thread count.

    python benchmarks/demo_threads.py --threads 1 2 --rounds 3

Each round runs the job once per thread count, in a fresh process, in an interleaved order (so a change in
the machine's load hits every setting alike); prints every time, the median per setting, and the 1-minute
load average before each run (the machine may be shared). The job's own "done in" time is reported, which
excludes the interpreter start and imports; the whole process time, and the CPU time (user + system) the
process used, are reported too: on an idle machine with one thread, the wall time is about the CPU time.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(threads: int, extra: list[str]) -> tuple[float, float, float]:
    """``(job seconds, process seconds, process CPU seconds)`` of one run of the main job."""
    with tempfile.TemporaryDirectory() as out:
        cpu = _children_cpu()
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "coreml_tutorial.py"), "--threads", str(threads), "--out", out,
             *extra], capture_output=True, text=True, check=True,
        )
        process = time.perf_counter() - started
        cpu = _children_cpu() - cpu
    match = re.search(r"done in ([0-9.]+) s", result.stdout)
    assert match, result.stdout[-500:]
    return float(match.group(1)), process, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more arguments for the job, after --")
    args = parser.parse_args()
    times: dict[int, list[tuple[float, float, float]]] = {n: [] for n in args.threads}
    for round_ in range(args.rounds):
        order = args.threads if round_ % 2 == 0 else list(reversed(args.threads))
        for threads in order:
            load = os.getloadavg()[0]
            job, process, cpu = run_once(threads, args.extra)
            times[threads].append((job, process, cpu))
            print(f"round {round_ + 1}, {threads} thread(s): job {job:.1f} s, process {process:.1f} s, "
                  f"CPU {cpu:.1f} s (load average before: {load:.2f})", flush=True)
    print("\n| torch threads | median job time | median process time | median CPU time | runs |")
    print("|---|---|---|---|---|")
    for threads, values in times.items():
        medians = [statistics.median(v[i] for v in values) for i in range(3)]
        print(f"| {threads} | {medians[0]:.1f} s | {medians[1]:.1f} s | {medians[2]:.1f} s | {len(values)} |")


if __name__ == "__main__":
    main()
