"""Reliability: resume in a fresh process, DDP on two processes, torch.compile, hostile input, checkpoints."""

import copy
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from sparsify import (
    MagnitudePruner,
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    PolynomialDecayScheduler,
)
from sparsify.checkpoints import (
    FileRefusedError,
    dense_state_dict,
    load_checkpoint_file,
    load_state_dict,
    state_dict_layout,
)
from sparsify.distributed import check_masks_consistent, mask_checksums
from sparsify.schedules import scheduler_from_dict

JOBS = Path(__file__).parent / "jobs"


def _run_job(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(JOBS / script), *args], check=True, timeout=300)


def test_stop_and_resume_in_a_fresh_process_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    _run_job("resume_job.py", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(straight))
    checkpoint = tmp_path / "ck.pt"
    _run_job("resume_job.py", "--checkpoint", str(checkpoint), "--out", str(resumed), "--stop-after", "4")
    assert checkpoint.exists() and not resumed.exists()
    _run_job("resume_job.py", "--checkpoint", str(checkpoint), "--out", str(resumed))
    a, b = load_checkpoint_file(straight), load_checkpoint_file(resumed)
    assert a["pruner"] == b["pruner"] and a["pruner"]["step_count"] == 8
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert int((a["model"]["0.weight_mask"] == 0).sum()) == 409  # floor(512 * 0.8)


def test_ddp_two_processes_identical_masks_equal_to_single_process(tmp_path: Path) -> None:
    _run_job("ddp_job.py", str(tmp_path))
    rank0, rank1 = (load_checkpoint_file(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = load_checkpoint_file(tmp_path / "single.pt")
    assert rank0["checksums"] == rank1["checksums"]
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
        if key.endswith("_mask"):
            assert torch.equal(value, single["state"][key]), key
        else:
            assert torch.allclose(value.float(), single["state"][key].float(), atol=1e-6), key
    # M-FAC records local gradients: ranks gather each other's rows, so masks and OBS-updated weights
    # agree even with DDP's buffer broadcast switched off
    for key, value in rank0["mfac_state"].items():
        assert torch.equal(value, rank1["mfac_state"][key]), key
    masks = [rank0["mfac_state"][f"{i}.weight_mask"] for i in (0, 2)]
    assert sum(int((m == 0).sum()) for m in masks) == 270  # global ranking: 75 % of all 360 weights
    # snip-momentum under DDP with gradient_as_bucket_view=True: same state and masks on both ranks, non-trivial
    assert set(rank0["snip_masks"]) == {"0.weight_mask", "2.weight_mask"}
    for key, mask in rank0["snip_masks"].items():
        assert torch.equal(mask, rank1["snip_masks"][key]), key
        assert int((~mask).sum()) == int(0.75 * mask.numel())
    for name, state in rank0["snip_state"].items():
        assert torch.equal(state, rank1["snip_state"][name]), name
    assert "pruning masks differ between rank" in rank0["divergence_caught"]
    assert "0.weight_mask" in rank1["divergence_caught"]


def test_consistency_check_is_a_no_op_without_a_process_group() -> None:
    model = MagnitudePruner(nn.Linear(4, 4)).prepare()
    check_masks_consistent(model)
    before = mask_checksums(model)
    model.weight_mask[0, 0] = False
    assert mask_checksums(model) != before


def test_torch_compile_trains_and_follows_mask_updates() -> None:
    torch.manual_seed(0)
    cfg = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(
        target_sparsity=0.75, scheduler=PolynomialDecayScheduler(update_steps=[1, 2, 3])))
    pruner = MagnitudePruner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), cfg)
    model = pruner.prepare()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 8)
    for _ in range(3):
        optimizer.zero_grad()
        compiled(x).pow(2).sum().backward()
        assert torch.all(model[0].weight_orig.grad[~model[0].weight_mask] == 0)
        optimizer.step()
        pruner.step()
        assert torch.allclose(compiled(x), model(x), atol=1e-6)  # the compiled graph sees new masks
    assert pruner.report()["0"]["unstructured_weight_sparsity"] == 0.75


# -- hostile input ---------------------------------------------------------------------------------

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 20), max_size=5),
    st.sampled_from(["per_scalar", "per_kernel", "per_channel", "per_layer", "range(0, 10, 2)", "range(-1)"]),
)
_keys = st.sampled_from(["scheduler", "initial_sparsity", "target_sparsity", "granularity", "block_size",
                         "n_m_ratio", "dim", "param_name", "bogus"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(_keys, st.one_of(_values, st.dictionaries(
    st.sampled_from(["update_steps", "power", "begin_step", "kind"]), _values, max_size=3)), max_size=6))
def test_config_fuzz_raises_only_documented_errors(data: dict) -> None:
    try:
        cfg = ModuleMagnitudePrunerConfig.from_dict(data)
    except (ValueError, TypeError):
        return
    # whatever was accepted is valid and round-trips
    assert 0.0 <= cfg.initial_sparsity <= cfg.final_sparsity <= 1.0
    assert ModuleMagnitudePrunerConfig.from_dict(cfg.as_dict()) == cfg


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["update_steps", "power", "begin_step", "kind", "x"]), _values, max_size=3),
       step=st.integers(0, 30))
def test_scheduler_fuzz(data: dict, step: int) -> None:
    try:
        scheduler = scheduler_from_dict(data)
    except (ValueError, TypeError):
        return
    level = scheduler.compute_sparsity(step, 0.0, ModuleMagnitudePrunerConfig(target_sparsity=0.9))
    assert 0.0 <= level <= 0.9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.floats(0, 1), granularity=st.sampled_from(["per_scalar", "per_kernel", "per_channel"]),
       block=st.integers(1, 9), nm=st.sampled_from([None, (1, 2), (2, 4), (3, 8)]))
def test_prepare_fuzz_never_half_modifies_the_model(target, granularity, block, nm) -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    before = copy.deepcopy(model.state_dict())
    try:
        cfg = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(
            target_sparsity=target, granularity=granularity, block_size=block, n_m_ratio=nm))
        pruner = MagnitudePruner(model, cfg)
        pruner.prepare(inplace=True)
    except (ValueError, TypeError):
        assert not prune.is_pruned(model)
        assert model.state_dict().keys() == before.keys()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        return
    pruner.step()
    final = pruner.finalize(inplace=True)
    assert not prune.is_pruned(final)
    final(torch.randn(1, 3, 6, 6))


class _Unhookable(nn.Linear):
    """A real module that refuses forward pre-hooks, to fail prepare() part-way through."""

    def register_forward_pre_hook(self, *args, **kwargs):
        raise RuntimeError("this module takes no hooks")


def test_failure_inside_prepare_restores_the_model_exactly() -> None:
    model = nn.Sequential(nn.Linear(4, 4), _Unhookable(4, 4))
    params_before = list(model.named_parameters())
    values_before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="takes no hooks"):
        MagnitudePruner(model).prepare(inplace=True)
    params_after = list(model.named_parameters())
    assert [n for n, _ in params_after] == [n for n, _ in params_before]  # same names, same order
    assert all(a is b for (_, a), (_, b) in zip(params_after, params_before))  # the same Parameter objects
    assert all(torch.equal(model.state_dict()[k], v) for k, v in values_before.items())
    assert model.state_dict().keys() == values_before.keys()
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks and "weight" not in model[0].__dict__
    assert "weight" in model[0]._parameters


@pytest.mark.parametrize(
    "payload",
    [
        "global_config: !!python/object/apply:os.system ['echo pwned']\n",
        "global_config: !!python/name:os.system\n",
        "!!python/object/new:os.system [echo pwned]\n",
        "global_config:\n  scheduler: !!python/object/apply:subprocess.check_output [['id']]\n",
    ],
)
def test_yaml_configs_cannot_run_code(payload: str, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(payload)
    with pytest.raises(ValueError, match=r"evil\.yaml:\d+: invalid YAML: .*nothing is ever built from a tag"):
        MagnitudePrunerConfig.from_yaml(path)


def test_yaml_alias_bomb_is_rejected_quickly() -> None:
    bomb = "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    with pytest.raises(ValueError, match="unknown key"):  # small: parsed, then refused by its keys
        MagnitudePrunerConfig.from_yaml(io.StringIO(bomb))
    levels = ["a: &a [1,1,1,1,1,1,1,1,1,1]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)
    ]
    with pytest.raises(ValueError, match="alias"):  # 10^9 nodes once expanded: refused before it is built
        MagnitudePrunerConfig.from_yaml(io.StringIO("\n".join(levels) + "\n"))


def test_checkpoints_never_unpickle_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(FileRefusedError, match="print"):
        load_checkpoint_file(path)


def test_nan_and_inf_weights_have_defined_masks() -> None:
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[float("nan"), float("inf"), 0.5, -2.0]]))
    pruner = MagnitudePruner(model)
    pruned = pruner.prepare()
    pruner.step()
    # NaN ranks lowest and is pruned first; inf ranks highest; the count stays exact (2 of 4)
    assert pruned.weight_mask.tolist() == [[False, True, False, True]]


def test_empty_weights_are_skipped_with_a_warning(sparsify_logs) -> None:
    model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 2))
    pruner = MagnitudePruner(model)
    pruner.prepare()
    pruner.step()
    assert "has no elements, nothing to prune; skipped" in sparsify_logs.text
    assert list(pruner.report()) == ["1", "global"]


def test_a_module_registered_twice_is_pruned_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    pruner = MagnitudePruner(model)
    prepared = pruner.prepare()
    pruner.step()
    assert list(pruner.report()) == ["0", "global"]
    assert prepared[0] is prepared[2] and len(prepared[0]._forward_pre_hooks) == 1
    prepared(torch.randn(2, 4)).sum().backward()
    final = pruner.finalize()
    assert (final[2].weight == 0).float().mean().item() == 0.5


# -- checkpoints across layouts ------------------------------------------------------------------


def _trained_prepared():
    cfg = MagnitudePrunerConfig(module_name_configs={
        "0": ModuleMagnitudePrunerConfig(target_sparsity=0.5, granularity="per_channel"),
        "2": ModuleMagnitudePrunerConfig(target_sparsity=0.75)})
    pruner = MagnitudePruner(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 3)), cfg)
    model = pruner.prepare()
    pruner.step()
    return model, pruner


def test_layouts_convert_both_ways() -> None:
    prepared, pruner = _trained_prepared()
    finalized = pruner.finalize()
    x = torch.randn(1, 2, 4, 4)
    assert state_dict_layout(prepared.state_dict()) == "prepared"
    assert state_dict_layout(finalized.state_dict()) == "finalized"
    # prepared -> dense
    dense = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(RuntimeError, match="Missing key"):
        dense.load_state_dict(prepared.state_dict())
    load_state_dict(dense, prepared.state_dict())
    assert torch.allclose(dense(x), prepared(x))
    assert dense_state_dict(prepared.state_dict()).keys() == dense.state_dict().keys()
    # finalized -> dense (metadata dropped)
    load_state_dict(dense, finalized.state_dict())
    # finalized -> freshly prepared: masks come back from the zeros, per-channel shape kept
    fresh, _ = _trained_prepared()
    load_state_dict(fresh, finalized.state_dict())
    assert torch.equal(fresh[0].weight_mask, prepared[0].weight_mask) and fresh[0].weight_mask.shape == (4, 1, 1, 1)
    assert torch.equal(fresh[2].weight_mask, prepared[2].weight_mask)
    assert torch.allclose(fresh(x), prepared(x))
    # dense -> prepared, keeping the model's masks
    load_state_dict(fresh, dense.state_dict(), masks_from_zeros=False)
    assert torch.equal(fresh[2].weight_mask, prepared[2].weight_mask)


def test_layout_mismatch_names_the_keys() -> None:
    prepared, _ = _trained_prepared()
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"checkpoint \(prepared layout\) does not match the model \(dense layout\)"):
        load_state_dict(other, prepared.state_dict())
