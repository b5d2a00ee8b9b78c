"""MagnitudePruner lifecycle: parity with Core ML Tools in training, the B1–B12 fixes, copies and checkpoints."""

import copy
import io
import logging
import pickle

import coremltools.optimize.torch.pruning as ct_pruning
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sparsify
from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig, PolynomialDecayScheduler


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 4)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _tutorial_run(api, steps: int = 12) -> tuple[nn.Module, list[dict[str, torch.Tensor]], object]:
    """Core ML Tools' magnitude-pruning tutorial loop, written against the module ``api``."""
    torch.manual_seed(0)
    model = SmallCNN()
    schedule = api.PolynomialDecayScheduler(update_steps=list(range(2, 11, 2)))
    config = api.MagnitudePrunerConfig(module_type_configs={
        nn.Conv2d: api.ModuleMagnitudePrunerConfig(scheduler=schedule, target_sparsity=0.7),
        nn.Linear: api.ModuleMagnitudePrunerConfig(scheduler=schedule, target_sparsity=0.8),
    })
    pruner = api.MagnitudePruner(model, config)
    model = pruner.prepare(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    masks = []
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
        masks.append({n: b.detach().bool().clone() for n, b in model.named_buffers() if n.endswith("_mask")})
    return model, masks, pruner


def test_tutorial_loop_gives_identical_masks_and_weights_to_coremltools() -> None:
    _, our_masks, our_pruner = _tutorial_run(sparsify)
    _, their_masks, their_pruner = _tutorial_run(ct_pruning)
    for step, (a, b) in enumerate(zip(our_masks, their_masks), start=1):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"mask {name} differs at step {step}"
    final_ours = our_pruner.finalize()
    final_theirs = their_pruner.finalize()
    ours_sd, theirs_sd = final_ours.state_dict(), final_theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for key in ours_sd:
        assert torch.allclose(ours_sd[key].float(), theirs_sd[key].float(), atol=1e-6), key
    levels = {n: r["unstructured_weight_sparsity"] for n, r in our_pruner.report().items() if n != "global"}
    # floor(N * s) zeros per layer: 50/72, 806/1152, 1638/2048, 256/320
    assert levels == pytest.approx({"conv1": 50 / 72, "conv2": 806 / 1152, "fc1": 1638 / 2048, "fc2": 0.8})


def test_prepare_layout_matches_torch_prune_convention() -> None:
    model = MagnitudePruner(SmallCNN()).prepare()
    conv = model.conv1
    assert [n for n, _ in conv.named_parameters()] == ["bias", "weight_orig"]
    buffers = [(n, b.dtype) for n, b in conv.named_buffers()]
    assert buffers == [("weight_mask", torch.bool), ("weight_amount", torch.float32)]
    assert not isinstance(conv.weight, nn.Parameter) and conv.weight.grad_fn is None
    assert prune.is_pruned(model)
    assert isinstance(conv.pruning_method, prune.BasePruningMethod)
    keys = list(model.state_dict())[:4]
    assert keys == ["conv1.bias", "conv1.weight_orig", "conv1.weight_mask", "conv1.weight_amount"]


def test_prepare_default_copies_and_leaves_the_input_alone() -> None:
    original = SmallCNN()
    before = copy.deepcopy(original.state_dict())
    pruner = MagnitudePruner(original)
    prepared = pruner.prepare()
    pruner.step()
    assert prepared is not original and pruner.model is prepared
    assert original.state_dict().keys() == before.keys()
    assert all(torch.equal(original.state_dict()[k], v) for k, v in before.items())


def test_initial_sparsity_prunes_at_prepare() -> None:
    cfg = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(initial_sparsity=0.25, target_sparsity=0.5))
    pruner = MagnitudePruner(SmallCNN(), cfg)
    pruner.prepare()
    assert pruner.report()["global"]["unstructured_weight_sparsity"] == pytest.approx(0.25, abs=2e-3)


def test_report_is_current_right_after_step_b4() -> None:
    pruner = MagnitudePruner(SmallCNN())
    pruner.prepare()
    assert pruner.report()["fc1"]["unstructured_weight_sparsity"] == 0.0
    pruner.step()  # no forward pass in between
    report = pruner.report()
    assert report["fc1"]["unstructured_weight_sparsity"] == 0.5
    assert report["global"]["#params"] == 8 * 9 + 16 * 8 * 9 + 64 * 32 + 32 * 10
    text = repr(report)  # Core ML Tools' table, its long headers split over two lines to fit 100 columns
    assert "global |" in text and "unstructured_ |" in text and max(map(len, text.splitlines())) <= 100


def test_structured_metrics_use_magnitudes() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    cfg = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(target_sparsity=0.0))
    pruner = MagnitudePruner(model, cfg)
    pruner.prepare()
    row = pruner.report()["0"]
    # Core ML Tools sums signed values and would report the [1, -1] row as pruned (1.0, block2 1.0)
    assert row["structured_weight_sparsity"] == 0.5 and row["block2_weight_sparsity"] == 0.0


def test_finalize_without_step_prunes_to_target_and_warns_b1(sparsify_logs) -> None:
    pruner = MagnitudePruner(SmallCNN(), MagnitudePrunerConfig().set_global(
        ModuleMagnitudePrunerConfig(target_sparsity=0.75)))
    pruner.prepare()
    final = pruner.finalize()
    assert "finalize() called before any step()" in sparsify_logs.text
    assert (final.fc1.weight == 0).float().mean().item() == pytest.approx(0.75)


def test_finalize_bakes_masks_and_writes_core_ml_metadata_b2() -> None:
    pruner = MagnitudePruner(SmallCNN())
    prepared = pruner.prepare()
    pruner.step()
    final = pruner.finalize()
    assert final is not prepared and pruner.model is final  # Core ML Tools leaves pruner._model stale
    assert not prune.is_pruned(final)
    assert not final.conv1._forward_pre_hooks and not final.conv1._forward_hooks
    assert not final.conv1._load_state_dict_post_hooks and not hasattr(final.conv1, "pruning_method")
    keys = list(final.state_dict())
    assert keys[0] == "_COREML_/metadata_version"
    assert "conv1._COREML_/weight/compression_type" in keys and "conv1.weight" in keys
    assert final.conv1.get_buffer("_COREML_/weight/compression_type").tolist() == [1]
    assert isinstance(final.conv1.weight, nn.Parameter)
    assert pruner.report()["fc1"]["unstructured_weight_sparsity"] == 0.5  # report still works
    assert prune.is_pruned(prepared)  # the prepared model is untouched by a non-inplace finalize


def test_step_edge_cases_warn(sparsify_logs) -> None:
    pruner = MagnitudePruner(SmallCNN())
    pruner.step()
    assert "has not been prepared" in sparsify_logs.text and pruner.step_count == 0
    pruner.prepare(inplace=True)
    pruner.prepare()
    assert "already been prepared" in sparsify_logs.text
    pruner.finalize(inplace=True)
    pruner.step()
    assert "step() after finalize()" in sparsify_logs.text


def test_errors_are_early_and_leave_model_untouched() -> None:
    model = SmallCNN()
    with pytest.raises(TypeError, match="config must be a MagnitudePrunerConfig"):
        MagnitudePruner(model, {"global_config": {}})
    bad = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig()).set_module_name(
        "fc1", ModuleMagnitudePrunerConfig(param_name="bias", n_m_ratio=(1, 2)))
    pruner = MagnitudePruner(model, bad)
    with pytest.raises(ValueError, match=r"module 'fc1' \(Linear\): n_m_ratio needs a weight of rank >= 2"):
        pruner.prepare(inplace=True)
    assert not prune.is_pruned(model) and isinstance(model.conv1.weight, nn.Parameter)
    missing = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(param_name="scale"))
    with pytest.raises(ValueError, match="has no parameter param_name='scale'"):
        MagnitudePruner(model, missing).prepare(inplace=True)
    assert not prune.is_pruned(model)


@pytest.mark.parametrize("granularity", ["per_kernel", "per_channel"])
def test_kernel_and_channel_granularity_on_a_linear_fall_back_to_per_scalar_as_core_ml_tools(
    granularity, sparsify_logs
) -> None:
    sparsify_logs.set_level(logging.INFO, logger="sparsify")
    cfg = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(granularity=granularity))
    pruner = MagnitudePruner(SmallCNN(), cfg)
    model = pruner.prepare()
    pruner.step()
    assert tuple(model.fc1.weight_mask.shape) == tuple(model.fc1.weight_orig.shape)  # per-scalar mask
    assert int((~model.fc1.weight_mask).sum()) == model.fc1.weight_orig.numel() // 2
    assert f"granularity='{granularity}' does not apply to a weight of shape" in sparsify_logs.text
    assert model.conv1.weight_mask.shape[2:] == (1, 1)  # convs keep the granularity


def test_n_m_that_does_not_fit_warns_with_achieved_sparsity_b7(sparsify_logs) -> None:
    cfg = MagnitudePrunerConfig(module_name_configs={"conv1": ModuleMagnitudePrunerConfig(n_m_ratio=(1, 2))})
    pruner = MagnitudePruner(SmallCNN(), cfg)
    pruner.prepare()
    pruner.step()
    assert "reaches only 0.0000 sparsity instead of 0.5000" in sparsify_logs.text


def test_bias_pruning_and_report_b12() -> None:
    cfg = MagnitudePrunerConfig(module_name_configs={"fc1": ModuleMagnitudePrunerConfig(param_name="bias")})
    pruner = MagnitudePruner(SmallCNN(), cfg)
    model = pruner.prepare()
    pruner.step()
    row = pruner.report()["fc1"]
    assert row["#params"] == 32 and row["unstructured_weight_sparsity"] == 0.5
    assert row["structured_weight_sparsity"] == 0.5
    assert "bias_orig" in dict(model.fc1.named_parameters())


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class BareAttention(nn.MultiheadAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, x, x)[0]


@pytest.mark.parametrize(("factory", "name"), [(Block, "attn.out_proj"), (lambda: BareAttention(16, 2), "out_proj")])
def test_multihead_attention_out_proj_trains_b3(factory, name: str) -> None:
    pruner = MagnitudePruner(factory(), MagnitudePrunerConfig())
    prepared = pruner.prepare()
    pruner.step()
    out_proj = prepared.get_submodule(name)
    x = torch.randn(2, 5, 16)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1)
    for _ in range(3):  # Core ML Tools fails on the second backward
        optimizer.zero_grad()
        prepared(x).sum().backward()
        optimizer.step()
    grad = out_proj.weight_orig.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.all(grad[~out_proj.weight_mask] == 0)  # the mask is applied in the parent's forward
    assert pruner.report()[name]["unstructured_weight_sparsity"] == 0.5
    final = pruner.finalize()
    assert (final.get_submodule(name).weight == 0).float().mean().item() == 0.5
    parent = final.get_submodule(name.rpartition(".")[0])
    assert not parent._forward_pre_hooks and not parent._forward_hooks
    final(x)


def test_type_config_excludes_linear_subclasses_too_b3() -> None:
    mha = nn.MultiheadAttention(8, 2)
    cfg = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(), module_type_configs={nn.Linear: None})
    pruner = MagnitudePruner(mha, cfg)
    pruner.prepare()
    assert "out_proj" not in pruner.report()


def _train(model: nn.Module, pruner: MagnitudePruner, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()


def _polynomial_config() -> MagnitudePrunerConfig:
    return MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(
        target_sparsity=0.8, scheduler=PolynomialDecayScheduler(update_steps=[2, 4, 6, 8])))


def test_pruner_state_dict_resumes_the_schedule_exactly_b9() -> None:
    torch.manual_seed(0)
    straight = MagnitudePruner(SmallCNN(), _polynomial_config())
    straight_model = straight.prepare()
    _train(straight_model, straight, 3)
    saved_model = io.BytesIO()
    torch.save(straight_model.state_dict(), saved_model)
    saved_pruner = straight.state_dict()
    _train(straight_model, straight, 6)

    resumed = MagnitudePruner(SmallCNN(), _polynomial_config())
    resumed_model = resumed.prepare()
    saved_model.seek(0)
    resumed_model.load_state_dict(torch.load(saved_model, weights_only=True))
    resumed.load_state_dict(saved_pruner)
    assert resumed.step_count == 3
    _train(resumed_model, resumed, 6)
    for (name, a), (_, b) in zip(straight_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.state_dict() == straight.state_dict()


def test_load_state_dict_errors() -> None:
    pruner = MagnitudePruner(SmallCNN())
    with pytest.raises(RuntimeError, match="call prepare\\(\\) first"):
        pruner.load_state_dict({"step_count": 1, "sparsity_levels": {}})
    pruner.prepare()
    with pytest.raises(ValueError, match=r"missing \['conv2', 'fc1', 'fc2'\], unexpected \['x'\]"):
        pruner.load_state_dict({"step_count": 1, "sparsity_levels": {"conv1": 0.1, "x": 0.2}})
    with pytest.raises(ValueError, match="lacks key\\(s\\) \\['sparsity_levels'\\]"):
        pruner.load_state_dict({"step_count": 1})


def test_deepcopy_pickle_and_state_dict_round_trips() -> None:
    pruner = MagnitudePruner(SmallCNN())
    model = pruner.prepare()
    _train(model, pruner, 2)
    x, _ = _data(4)
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), expected)
        assert torch.equal(clone.fc1.weight_mask, model.fc1.weight_mask)
        # the copy has its own hook: changing its mask does not touch the original
        clone.fc1.weight_mask.fill_(False)
        assert clone(x).ne(expected).any() and torch.equal(model(x), expected)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = MagnitudePruner(SmallCNN()).prepare()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(x), expected)
    assert fresh.fc1.pruning_method.amount == 0.5  # amount follows the loaded buffer


def test_torch_prune_remove_works_on_sparsify_masks() -> None:
    pruner = MagnitudePruner(SmallCNN())
    model = pruner.prepare()
    pruner.step()
    prune.remove(model.fc1, "weight")
    assert isinstance(model.fc1.weight, nn.Parameter)
    assert (model.fc1.weight == 0).float().mean().item() == 0.5
    assert not hasattr(model.fc1, "weight_mask") and not model.fc1._forward_hooks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_change_after_prepare(dtype: torch.dtype) -> None:
    pruner = MagnitudePruner(SmallCNN())
    model = pruner.prepare().to(dtype)
    pruner.step()
    assert model.fc1.weight_mask.dtype == torch.bool
    assert model.fc1.weight.dtype == dtype
    out = model(_data(4)[0].to(dtype))
    out.float().sum().backward()
    assert model.fc1.weight_orig.grad.dtype == dtype
    # low-precision weights have equal magnitudes, and ties are kept together
    assert pruner.report()["fc1"]["unstructured_weight_sparsity"] == pytest.approx(0.5, abs=2e-3)
    final = pruner.finalize()
    assert final.fc1.weight.dtype == dtype
    assert (final.fc1.weight == 0).float().mean().item() == pytest.approx(0.5, abs=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_follow_the_model_to_cuda() -> None:
    pruner = MagnitudePruner(SmallCNN())
    model = pruner.prepare().cuda()
    pruner.step()
    assert model.fc1.weight_mask.is_cuda and model.fc1.weight.is_cuda
    model(_data(4)[0].cuda()).sum().backward()


def test_mask_memory_is_one_byte_per_weight() -> None:
    model = MagnitudePruner(nn.Sequential(nn.Linear(256, 256))).prepare()
    mask = model[0].weight_mask
    assert mask.element_size() * mask.numel() == 256 * 256


def test_tied_weights_share_one_mask() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(8, 8, bias=False)
            self.dec = nn.Linear(8, 8, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(torch.relu(self.enc(x)))

    pruner = MagnitudePruner(Tied())
    model = pruner.prepare()
    pruner.step()
    assert model.enc.weight_orig is model.dec.weight_orig
    assert model.enc.weight_mask is model.dec.weight_mask
    assert list(pruner.report()) == ["enc", "global"]
    model(torch.randn(2, 8)).sum().backward()
    final = pruner.finalize()
    assert final.enc.weight is final.dec.weight
    assert (final.dec.weight == 0).float().mean().item() == 0.5
    assert final.dec.get_buffer("_COREML_/weight/compression_type").tolist() == [1]


def test_tied_weights_with_different_configs_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    cfg = MagnitudePrunerConfig(module_name_configs={"0": ModuleMagnitudePrunerConfig(target_sparsity=0.2),
                                                     "1": ModuleMagnitudePrunerConfig(target_sparsity=0.9)})
    with pytest.raises(ValueError, match="same tensor as 0.weight \\(tied weights\\)"):
        MagnitudePruner(model, cfg).prepare(inplace=True)
    assert not prune.is_pruned(model)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_prepare_train_finalize(arch: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    schedule = PolynomialDecayScheduler(update_steps=[1, 2])
    cfg = MagnitudePrunerConfig(module_type_configs={
        nn.Conv2d: ModuleMagnitudePrunerConfig(target_sparsity=0.6, scheduler=schedule),
        nn.Linear: ModuleMagnitudePrunerConfig(target_sparsity=0.8, scheduler=schedule),
    })
    pruner = MagnitudePruner(model, cfg)
    prepared = pruner.prepare()
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(prepared(x), y).backward()
        optimizer.step()
        pruner.step()
    report = pruner.report()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(report) == len(convs) + 2
    final = pruner.finalize()
    fc = final.fc if arch == "resnet18" else final.classifier[1]
    assert (fc.weight == 0).float().mean().item() == pytest.approx(0.8)
    big_conv = dict(final.named_modules())[convs[-1]]
    assert (big_conv.weight == 0).float().mean().item() == pytest.approx(0.6, abs=1e-3)
    assert not prune.is_pruned(final)
    final.eval()(x)


def test_logging_not_print(capsys, sparsify_logs) -> None:
    pruner = MagnitudePruner(SmallCNN())
    pruner.step()
    assert capsys.readouterr().out == ""
    assert any(r.levelno == logging.WARNING for r in sparsify_logs.records)


def test_api_surface_covers_core_ml_tools() -> None:
    names = {"ConstantSparsityScheduler", "MagnitudePruner", "MagnitudePrunerConfig", "ModuleMagnitudePrunerConfig",
             "PolynomialDecayScheduler", "magnitude_pruner", "pruning_scheduler"}
    assert names <= set(dir(sparsify)) and names <= set(dir(ct_pruning))
    assert sparsify.pruning_scheduler.PruningScheduler is sparsify.PruningScheduler
    assert sparsify.magnitude_pruner.MagnitudePruner is MagnitudePruner
    assert MagnitudePruner(SmallCNN()).supported_modules == (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
