"""Two-process DDP pruning on CPU (gloo, loopback), run by tests/test_checkpoints_and_ddp.py.

    python ddp_job.py OUT_DIR

Each rank trains on its half of every batch, with magnitude and with M-FAC pruning; the results
(masks, weights, checksums) are saved per rank, plus a single-process run on the full batches.
"""

import os
import sys

import torch
import torch.distributed as dist
from _two_ranks import spawn_two_ranks
from torch import nn

from sparsify import (
    MagnitudePruner,
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModulePrunerConfig,
    PolynomialDecayScheduler,
    Pruner,
    PrunerConfig,
)
from sparsify.distributed import check_masks_consistent, mask_checksums

STEPS = 6


def build(second_order: bool = False) -> tuple[nn.Module, Pruner]:
    """Magnitude pruning (Core ML Tools' preset), or M-FAC with its weight update, ranked globally (gradients
    recorded from the training steps: local on each rank, so every rank must gather all ranks' rows to build
    the same Fisher)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))
    scheduler = PolynomialDecayScheduler(update_steps=[2, 4, 6])
    if second_order:
        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=0.75, scheduler=scheduler, criterion={"kind": "mfac", "num_grads": 2}, scope="global"))
        pruner: Pruner = Pruner(model, config)
    else:
        module_config = ModuleMagnitudePrunerConfig(target_sparsity=0.75, scheduler=scheduler)
        pruner = MagnitudePruner(model, MagnitudePrunerConfig().set_global(module_config))
    return pruner.prepare(inplace=True), pruner


def build_snip() -> tuple[nn.Module, Pruner]:
    """snip-momentum: a criterion with state fed by every rank's (averaged) gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.75, scheduler=PolynomialDecayScheduler(update_steps=[2, 4, 6]), criterion="snip_momentum"))
    pruner = Pruner(model, config)
    return pruner.prepare(inplace=True), pruner


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)


def train(model: nn.Module, pruner: Pruner, rank: int | None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        x, y = batch(step)
        if rank is not None:
            x, y = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()


def rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, pruner = build()
        ddp = nn.parallel.DistributedDataParallel(model)
        train(ddp, pruner, rank)
        check_masks_consistent(model)
        result = {"state": {k: v.clone() for k, v in model.state_dict().items()}, "checksums": mask_checksums(model)}
        mfac_model, mfac_pruner = build(second_order=True)
        train(nn.parallel.DistributedDataParallel(mfac_model, broadcast_buffers=False), mfac_pruner, rank)
        check_masks_consistent(mfac_model)
        result["mfac_state"] = {k: v.clone() for k, v in mfac_model.state_dict().items()}
        # snip-momentum with gradient-bucket views and no buffer broadcast: each rank folds the gradient DDP
        # averaged into its own moving average and ranks on its own, so its masks must agree by themselves
        snip_model, snip_pruner = build_snip()
        ddp_snip = nn.parallel.DistributedDataParallel(
            snip_model, broadcast_buffers=False, gradient_as_bucket_view=True)
        train(ddp_snip, snip_pruner, rank)
        result["snip_masks"] = {k: v.clone() for k, v in snip_model.state_dict().items() if k.endswith("_mask")}
        result["snip_state"] = snip_pruner.state_dict()["criterion_state"]
        # a deliberate divergence must be caught by the check
        if rank == 1:
            model[0].weight_mask[0, 0] = ~model[0].weight_mask[0, 0]
        try:
            check_masks_consistent(model)
            result["divergence_caught"] = ""
        except RuntimeError as exc:
            result["divergence_caught"] = str(exc)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    spawn_two_ranks(rank_main, out_dir)
    model, pruner = build()
    train(model, pruner, None)
    torch.save({"state": model.state_dict()}, os.path.join(out_dir, "single.pt"))


if __name__ == "__main__":
    main()
