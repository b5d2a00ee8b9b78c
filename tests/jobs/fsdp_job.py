"""Two-process FSDP2 pruning on CPU (gloo, loopback), run by tests/test_fsdp.py.

    python fsdp_job.py OUT_DIR

For each masking mode, each rank trains on its half of every batch a model whose layers FSDP2 splits
unevenly (21, 7 and 3 output rows over 2 ranks): gradual magnitude pruning ranked globally, stopped after
step 4, saved (a sharded ``torch.distributed.checkpoint`` of model and optimizer, and a full state dict),
resumed into a freshly prepared and sharded model from either, then pruned to the end and fine-tuned with
the masks kept. Results (whole masks and weights, optimizer state at pruned entries, refusals) are saved per
rank, with a single-process run on the full batches for comparison.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from _two_ranks import spawn_two_ranks
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.distributed import check_masks_consistent, mask_checksums

STEPS, STOP = 9, 4  # pruning at steps 2, 4, 6; fine-tuning with the masks kept at 7-9
FULL = StateDictOptions(full_state_dict=True)  # whole tensors on every rank


def build(masking: str, shard: bool) -> tuple[nn.Module, Pruner, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 21), nn.ReLU(), nn.Linear(21, 7), nn.ReLU(), nn.Linear(7, 3))
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.75, scope="global", masking=masking,
        scheduler={"kind": "polynomial", "update_steps": [2, 4, 6]}))
    pruner = Pruner(model, config)
    model = pruner.prepare(inplace=True)
    if shard:
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    return model, pruner, torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)


def train(model: nn.Module, pruner: Pruner, optimizer: torch.optim.Optimizer, rank: int | None, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        if rank is not None:
            x, y = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()


def whole_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_model_state_dict(model, options=FULL).items()}


def pruned_state_nonzeros(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Nonzero optimizer-state and weight entries at pruned positions, on this rank's shards."""
    count = 0
    for layer in model:
        if isinstance(layer, nn.Linear):
            param, hook = layer.weight_orig, layer.pruning_method
            local_mask = hook._part(layer.weight_mask, param)
            for tensor in [param, *[v for v in optimizer.state[param].values() if v.shape == param.shape]]:
                count += int(tensor.to_local()[~local_mask.expand_as(tensor.to_local())].count_nonzero())
    return count


def run(masking: str, rank: int, out_dir: str, source: str) -> dict:
    model, pruner, optimizer = build(masking, shard=True)
    train(model, pruner, optimizer, rank, range(1, STOP + 1))
    where = os.path.join(out_dir, f"{masking}-ckpt")
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=where)
    full = get_model_state_dict(model, options=FULL)
    full_optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    pruner_state = pruner.state_dict()
    del model, pruner, optimizer

    model, pruner, optimizer = build(masking, shard=True)  # a fresh job resumes
    if source == "sharded":
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=where)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
    else:
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, full_optim, options=StateDictOptions(full_state_dict=True))
    pruner.load_state_dict(pruner_state)
    train(model, pruner, optimizer, rank, range(STOP + 1, STEPS + 1))
    check_masks_consistent(model)
    summary = pruner.report()["global"]  # gathers each sharded weight: every rank calls it
    return {"state": whole_state(model), "checksums": mask_checksums(model),
            "pruned_nonzeros": pruned_state_nonzeros(model, optimizer),
            "report_zeros": round(summary["#params"] * summary["unstructured_weight_sparsity"])}


def refusals() -> dict[str, str]:
    """prepare() of an already sharded model and finalize() of a sharded one are refused, naming the way."""
    said = {}
    model = nn.Sequential(nn.Linear(4, 5))
    fully_shard(model)
    try:
        Pruner(model).prepare(inplace=True)
    except TypeError as exc:
        said["prepare"] = str(exc)
    model, pruner, _ = build("default", shard=True)
    try:
        pruner.finalize()
    except TypeError as exc:
        said["finalize"] = str(exc)
    return said


def one_shot() -> dict[str, torch.Tensor]:
    """Prepared, then sharded, then pruned in one shot (prune_now) across the ranks."""
    model, pruner, _ = build("default", shard=True)
    pruner.prune_now()
    return {k: v for k, v in whole_state(model).items() if k.endswith("_mask")}


def rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = {
            "default": run("default", rank, out_dir, "sharded"),
            "inplace": run("inplace", rank, out_dir, "full"),
            "one_shot": one_shot(),
            "refusals": refusals(),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    spawn_two_ranks(rank_main, out_dir)
    single = {}
    for masking in ("default", "inplace"):
        model, pruner, optimizer = build(masking, shard=False)
        train(model, pruner, optimizer, None, range(1, STEPS + 1))
        single[masking] = {k: v.clone() for k, v in model.state_dict().items()}
    model, pruner, _ = build("default", shard=False)
    pruner.prune_now()
    single["one_shot"] = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
    torch.save(single, os.path.join(out_dir, "single.pt"))


if __name__ == "__main__":
    main()
