"""FSDP2 per-step overhead of sparsify over dense FSDP2, two CPU processes (gloo), one thread each.

Run through ``engine_overhead.py --fsdp``. Each round starts two fresh processes; each rank builds every
variant (dense, sparsify default masking, sparsify in-place masking) from the same seed, prepared and pruned
to 75 % *before* ``fully_shard`` (each Linear, then the root), and the variants take one training step each
in turn (forward, backward, optimizer step, ``pruner.step()`` without a mask change), so the load of the
moment hits them alike. A step's time is the slower rank's. Figures: medians over steps, then over rounds.
"""

from __future__ import annotations

import os
import socket
import statistics
import time

VARIANTS = ("dense", "sparsify", "sparsify-inplace")


def _build(variant: str, model_name: str, optimizer_name: str):
    import torch
    from engine_overhead import _optimizer
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    import sparsify

    torch.manual_seed(0)
    if model_name == "mlp":  # 4 x 2048²: three sharded copies per rank stay within a few GB
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(2048, 2048), nn.ReLU())])
        x, y = torch.randn(64, 2048), torch.randint(0, 2048, (64,))
    else:
        model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    pruner = None
    if variant != "dense":
        config = sparsify.PrunerConfig(global_config=sparsify.ModulePrunerConfig(
            target_sparsity=0.75, masking="inplace" if variant == "sparsify-inplace" else "default",
            scheduler={"kind": "polynomial", "update_steps": [1]}))
        pruner = sparsify.Pruner(model, config)
        model = pruner.prepare(inplace=True)
        pruner.step()
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fully_shard(layer)
    fully_shard(model)
    optimizer = _optimizer(optimizer_name, model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()

    step()
    return step


def _rank(rank: int, port: int, model_name: str, steps: int, optimizer_name: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        steppers = {v: _build(v, model_name, optimizer_name) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(steps):
            for variant, step in steppers.items():
                dist.barrier()
                start = time.perf_counter()
                step()
                elapsed = torch.tensor([time.perf_counter() - start])
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step ends when the slower rank is done
                times[variant].append(float(elapsed))
        if rank == 0:
            torch.save({v: statistics.median(t) for v, t in times.items()}, out)
    finally:
        dist.destroy_process_group()


def run(model_name: str, rounds: int, steps: int, optimizer_name: str) -> list[str]:
    import tempfile

    import torch
    import torch.multiprocessing as mp

    per_round = []
    for _ in range(rounds):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "times.pt")
            mp.spawn(_rank, args=(port, model_name, steps, optimizer_name, out), nprocs=2, join=True)
            per_round.append(torch.load(out, weights_only=True))
    rows = [f"\nFSDP2, 2 processes x 1 thread (gloo), model={model_name}, optimizer={optimizer_name}, "
            f"rounds={rounds}, steps={steps}\n",
            "| variant | step (ms) | × dense FSDP2 | per-round × dense (min–max) |", "|---|---|---|---|"]
    for variant in VARIANTS:
        median = statistics.median(r[variant] for r in per_round)
        dense = statistics.median(r["dense"] for r in per_round)
        ratios = [r[variant] / r["dense"] for r in per_round]
        rows.append(f"| {variant} | {median * 1e3:.1f} | {median / dense:.3f} | {min(ratios):.2f}–{max(ratios):.2f} |")
    return rows
