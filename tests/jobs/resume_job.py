"""A pruning training job that can be stopped and resumed (run by tests/test_checkpoints_and_ddp.py).

    python resume_job.py --checkpoint ck.pt --out final.pt --total 8 [--stop-after 4]

Starts from ``--checkpoint`` when the file exists; stops after ``--stop-after`` steps by saving the
model, pruner and optimizer state there; writes the final model state to ``--out`` when done.
"""

import argparse
import os

import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig, PolynomialDecayScheduler
from sparsify.checkpoints import load_checkpoint_file


def build() -> tuple[nn.Module, MagnitudePruner, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(
        target_sparsity=0.8, scheduler=PolynomialDecayScheduler(update_steps=[2, 3, 5, 6, 7])))
    pruner = MagnitudePruner(model, config)
    model = pruner.prepare(inplace=True)
    return model, pruner, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--total", type=int, default=8)
    parser.add_argument("--stop-after", type=int, default=None)
    args = parser.parse_args()

    model, pruner, optimizer = build()
    if os.path.exists(args.checkpoint):
        state = load_checkpoint_file(args.checkpoint)
        model.load_state_dict(state["model"])
        pruner.load_state_dict(state["pruner"])
        optimizer.load_state_dict(state["optimizer"])
    while pruner.step_count < args.total:
        data = torch.Generator().manual_seed(pruner.step_count)
        x, y = torch.randn(8, 16, generator=data), torch.randint(0, 4, (8,), generator=data)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
        if args.stop_after is not None and pruner.step_count == args.stop_after:
            torch.save({"model": model.state_dict(), "pruner": pruner.state_dict(),
                        "optimizer": optimizer.state_dict()}, args.checkpoint)
            return
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, args.out)


if __name__ == "__main__":
    main()
