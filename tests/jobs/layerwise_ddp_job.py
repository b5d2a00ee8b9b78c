"""Two-process one-shot SparseGPT and Wanda on CPU (gloo, loopback), run by tests/criteria/test_layerwise.py.

    python layerwise_ddp_job.py OUT_DIR

Each rank calibrates on its half of the calibration batches; the statistics are summed over the ranks, so
both ranks — and a single process with all the batches — choose the same masks and weights.
"""

import os
import sys

import torch
import torch.distributed as dist
from _two_ranks import spawn_two_ranks
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import GradSampler

CRITERIA = {
    "sparsegpt": {"kind": "sparsegpt", "update_bias": True, "asymmetric": True},
    "wanda": "wanda",
    "sparsegpt_global": "sparsegpt",
}


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(6, 10, generator=g) @ torch.randn(10, 10, generator=g) for _ in range(4)]


def prune(criterion: str, data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    scope = "global" if criterion.endswith("global") else "local"
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.6, criterion=CRITERIA[criterion],
                                                           scope=scope))
    pruner = Pruner(model, config, GradSampler([(x, None) for x in data], progress=False))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    return {k: v.clone() for k, v in pruner.finalize(inplace=True).state_dict().items()}


def rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = batches()[rank * 2 : rank * 2 + 2]
        torch.save({c: prune(c, mine) for c in CRITERIA}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    spawn_two_ranks(rank_main, out_dir)
    torch.save({c: prune(c, batches()) for c in CRITERIA}, os.path.join(out_dir, "single.pt"))


if __name__ == "__main__":
    main()
