"""FSDP2 (``torch.distributed.fsdp.fully_shard``): two CPU processes (gloo) against a single-process run."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsify.checkpoints import load_checkpoint_file

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="torch built without distributed support")
if not hasattr(fsdp, "fully_shard") or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed.fsdp.fully_shard and the gloo backend", allow_module_level=True)
if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 13):
    pytest.skip(f"FSDP2 pruning is checked on torch 2.13 and 2.15; torch {torch.__version__}'s FSDP2 has not been "
                f"run with sparsify (docs/reliability.md)", allow_module_level=True)

JOB = Path(__file__).parent / "jobs" / "fsdp_job.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fsdp")
    subprocess.run([sys.executable, str(JOB), str(out)], check=True, timeout=300)
    return {"rank0": load_checkpoint_file(out / "rank0.pt"), "rank1": load_checkpoint_file(out / "rank1.pt"),
            "single": load_checkpoint_file(out / "single.pt")}


@pytest.mark.parametrize("masking", ["default", "inplace"])
def test_fsdp2_prunes_resumes_and_fine_tunes_like_one_process(results: dict, masking: str) -> None:
    """Gradual global pruning on unevenly split layers, saved after step 4 (sharded checkpoint for the default
    mode, full state dict for the in-place one), resumed into a fresh sharded model, pruned to the end and
    fine-tuned: identical masks on both ranks, equal to one process on the whole batches."""
    rank0, rank1, single = results["rank0"][masking], results["rank1"][masking], results["single"][masking]
    assert rank0["checksums"] == rank1["checksums"]
    assert rank0["state"].keys() == single.keys()
    agree = total = 0
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
        if key.endswith("_mask"):
            agree += int((value == single[key]).sum())
            total += value.numel()
        else:
            assert torch.allclose(value, single[key], atol=1e-5), key
    assert agree / total >= 0.999
    zeros = sum(int((~rank0["state"][f"{i}.weight_mask"]).sum()) for i in (0, 2, 4))
    assert zeros == 315  # global ranking: floor(0.75 * (252 + 147 + 21)) of all weights, across the shards
    assert rank0["report_zeros"] == 315


def test_fsdp2_inplace_keeps_weights_and_optimizer_state_zero_at_pruned_entries(results: dict) -> None:
    """AdamW's exp_avg / exp_avg_sq shards and the weight shards are exactly zero wherever the mask prunes."""
    assert results["rank0"]["inplace"]["pruned_nonzeros"] == 0
    assert results["rank1"]["inplace"]["pruned_nonzeros"] == 0
    state = results["rank0"]["inplace"]["state"]
    for i in (0, 2, 4):
        assert int(state[f"{i}.weight_orig"][~state[f"{i}.weight_mask"]].count_nonzero()) == 0


def test_fsdp2_one_shot_pruning_of_a_sharded_model_matches_one_process(results: dict) -> None:
    for key, mask in results["single"]["one_shot"].items():
        assert torch.equal(results["rank0"]["one_shot"][key], mask), key
        assert torch.equal(results["rank1"]["one_shot"][key], mask), key


def test_fsdp2_refusals_name_the_way_to_do_it(results: dict) -> None:
    said = results["rank0"]["refusals"]
    assert said["prepare"].startswith("module '<root>' is already sharded with fully_shard: call "
                                      "pruner.prepare(inplace=True) on the unsharded model first")
    assert said["finalize"].startswith("finalize(): module '0' is sharded by FSDP2; gather a full state dict")
