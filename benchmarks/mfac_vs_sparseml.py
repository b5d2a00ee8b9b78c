"""M-FAC one shot: sparsify against SparseML 1.x's ``MFACPruningModifier`` — same model, same gradient batches,
same targets, in one process, timed in interleaved rounds.

SparseML 1.8 (the last 1.x) installs beside torch 2.7 in its own environment (it pins numpy < 2,
protobuf <= 3.20.3 and onnx < 1.15, which the project's own environment does not want; sparsezoo 1.9 is an
end-of-life stub that refuses to build, so 1.8.0 is pinned):

    python3 -m venv /tmp/sml
    (cat .ci/oldest.txt; echo sparsezoo==1.8.0) > /tmp/sml-constraints.txt
    PIP_CONSTRAINT=/tmp/sml-constraints.txt /tmp/sml/bin/pip install "sparseml[torch]==1.8.0" -e ".[data]"
    /tmp/sml/bin/python benchmarks/mfac_vs_sparseml.py --rounds 1    # ~45 min on 2 cores, SparseML's part

Models: ``sparsify.demo.models.SmallCNN`` trained on scikit-learn's 8×8 digits (offline) — the 87 k-weight
default (40 epochs) and the 1.14 M-weight ``SmallCNN(channels=(64, 128), hidden=2048)`` (8 epochs). Each is
pruned in one shot to 50 / 70 / 90 % of all its conv and linear weights, ranked globally, by:

* SparseML: a recipe with one ``!MFACPruningModifier`` (``params: __ALL_PRUNABLE__``, ``global_sparsity:
  true``, ``num_grads``, ``fisher_block_size: 2000``, its default absolute ``damp: 1e-5``), applied with
  ``ScheduledModifierManager.apply(model, grad_sampler=...)`` — SparseML's one-shot entry point;
* sparsify with SparseML's settings — the same computation: ``{"kind": "mfac", "damp": 1e-5, "damp_mode":
  "absolute"}`` (both score ``w² / (2 [F⁻¹]_ii)`` and apply the OBS update to the kept weights);
* sparsify's defaults (damping relative to the Fisher's scale), for what the switch gives on top.

Every run takes its gradients from the same list of batches of 16 training images (model in ``eval()``).
Reported: the median wall time of the whole one-shot call over ``--rounds`` interleaved rounds, test
accuracy without fine-tuning, how many weights' keep/prune decisions differ from SparseML's, and the largest
difference between a kept weight and SparseML's value for it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from mfac_oneshot import train  # the same training as the M-FAC benchmark; benchmarks/ is on sys.path
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria.sampler import GradSampler
from sparsify.demo.datasets import load_digits
from sparsify.demo.models import SmallCNN

RECIPE = """
pruning_modifiers:
  - !MFACPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: {sparsity}
    final_sparsity: {sparsity}
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    global_sparsity: true
    num_grads: {num_grads}
    fisher_block_size: {block}
    damp: 0.00001  # PyYAML reads "1e-5" as a string
"""

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def gradient_batches(count: int, batch_size: int = 16) -> Batches:
    data = load_digits()
    g = torch.Generator().manual_seed(0)
    return [(data.train_x[i], data.train_y[i]) for i in
            (torch.randint(0, len(data.train_y), (batch_size,), generator=g) for _ in range(count))]


def accuracy(model: nn.Module) -> float:
    data = load_digits()
    with torch.no_grad():
        return 100.0 * float((model.eval()(data.test_x).argmax(1) == data.test_y).float().mean())


def sparseml_oneshot(model: nn.Module, sparsity: float, batches: Batches, block: int) -> nn.Module:
    from sparseml.pytorch.optim import ScheduledModifierManager

    net = copy.deepcopy(model).eval()
    manager = ScheduledModifierManager.from_yaml(RECIPE.format(sparsity=sparsity, num_grads=len(batches),
                                                               block=block))
    loader = lambda _kwargs=None: (([x], {}, y) for x, y in batches)  # noqa: E731 (SparseML's builder)
    # manager.apply(net, grad_sampler=...) is SparseML's one-shot call, but in 1.8 the pruning base class runs the
    # one-shot update inside initialize() before MFACPruningModifier has stored the grad sampler ("only 0 were
    # collected"); so: initialize at epoch 0 (nothing pruned), then the same one-shot update apply() would run
    manager.initialize(net, epoch=0.0, grad_sampler={"data_loader_builder": loader, "loss_function": F.cross_entropy})
    manager.modifiers[0].check_mask_update(net, epoch=math.inf, steps_per_epoch=1)
    manager.finalize(net)
    return net


def sparsify_oneshot(model: nn.Module, sparsity: float, batches: Batches, block: int, **options: object) -> nn.Module:
    criterion = {"kind": "mfac", "num_grads": len(batches), "fisher_block_size": block, **options}
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=sparsity, criterion=criterion,
                                                           scope="global"))
    pruner = Pruner(copy.deepcopy(model).eval(), config, GradSampler(batches, F.cross_entropy, progress=False))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    return pruner.finalize(inplace=True)


def weights_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])


def kept(model: nn.Module) -> torch.Tensor:
    return weights_of(model) != 0


def compare(label: str, model: nn.Module, num_grads: int, args: argparse.Namespace) -> list[dict]:
    batches = gradient_batches(num_grads)
    methods: dict[str, Callable[[float], nn.Module]] = {
        "SparseML MFACPruningModifier": lambda s: sparseml_oneshot(model, s, batches, args.block_size),
        "sparsify, SparseML's settings": lambda s: sparsify_oneshot(
            model, s, batches, args.block_size, damp=1e-5, damp_mode="absolute"),
        "sparsify, defaults (relative damp)": lambda s: sparsify_oneshot(model, s, batches, args.block_size),
    }
    weights = int(kept(model).numel())
    print(f"\n{label}: {weights:,} conv+linear weights, dense {accuracy(model):.2f} %, {num_grads} gradients, "
          f"blocks of {args.block_size}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for sparsity in args.sparsities:
        times: dict[str, list[float]] = {name: [] for name in methods}
        results: dict[str, nn.Module] = {}
        for _ in range(args.rounds):
            for name, run in methods.items():
                started = time.perf_counter()
                results[name] = run(sparsity)
                times[name].append(time.perf_counter() - started)
        reference = kept(results["SparseML MFACPruningModifier"])
        reference_values = weights_of(results["SparseML MFACPruningModifier"])
        base = statistics.median(times["SparseML MFACPruningModifier"])
        for name, model_out in results.items():
            seconds = statistics.median(times[name])
            differ = int((kept(model_out) != reference).sum())
            both = kept(model_out) & reference
            delta = float((weights_of(model_out) - reference_values)[both].abs().max())
            row = {"model": label, "sparsity": sparsity, "method": name, "seconds": seconds,
                   "speedup": base / seconds, "accuracy": accuracy(model_out), "decisions_differ": differ,
                   "max_weight_delta": delta, "achieved": 1 - float(kept(model_out).float().mean())}
            rows.append(row)
            print(f"  {sparsity:.0%} {name:36s} {seconds:6.2f} s ({row['speedup']:5.1f}× SparseML's speed) "
                  f"accuracy {row['accuracy']:6.2f} %  decisions unlike SparseML's: {differ} of {weights:,}, "
                  f"kept weights within {delta:.1e}  "
                  f"sparsity {row['achieved']:.4f}  ({_load()})", flush=True)
    # SparseML's time does not depend on the level (the Fisher work dominates): the median over the levels is
    # the figure to quote when --rounds is 1
    base = statistics.median(r["seconds"] for r in rows if r["method"] == "SparseML MFACPruningModifier")
    for name in methods:
        seconds = statistics.median(r["seconds"] for r in rows if r["method"] == name)
        print(f"  median over the levels: {name:36s} {seconds:6.2f} s ({base / seconds:5.1f}× SparseML's speed)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=2000)
    parser.add_argument("--models", default="small,large")
    args = parser.parse_args()
    logging.getLogger("sparseml").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")  # SparseML's gradient progress bar
    import sparseml

    print(f"torch {torch.__version__}, sparseml {sparseml.__version__}, {os.cpu_count()} CPUs, {_load()}")
    models = args.models.split(",")
    if "small" in models:
        torch.manual_seed(0)
        compare("SmallCNN (digits, 40 epochs)", train(SmallCNN(), 40, seed=0), 512, args)
    if "large" in models:
        torch.manual_seed(0)
        compare("SmallCNN(channels=(64, 128), hidden=2048) (digits, 8 epochs)",
                train(SmallCNN(channels=(64, 128), hidden=2048), 8, seed=0), 256, args)


if __name__ == "__main__":
    main()
