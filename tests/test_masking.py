"""Masking fast paths: bit-identical to plain ``torch.where`` masking; the in-place mode's guarantees."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from sparsify._mask_ops import select_into
from sparsify.masking import bake_mask, install_mask, is_masked, set_mask, uninstall_mask


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


# -- the kernel ----------------------------------------------------------------------------------------------------

_SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.5, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel", [7, 40_000, (1 << 20) + 3])  # small (torch.where), integer path, several chunks
def test_select_into_is_where_bit_for_bit(dtype: torch.dtype, numel: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    src = torch.randn(numel, generator=gen).to(dtype)
    src[: len(_SPECIAL)] = torch.tensor(_SPECIAL, dtype=dtype)
    mask = torch.rand(numel, generator=gen) > 0.5
    mask[: len(_SPECIAL)] = torch.tensor([True, True, False, True, False, False, True])
    expected = torch.where(mask, src, 0.0)
    out = torch.full_like(src, 7.0)
    assert select_into(out, src, mask) is out and _same_bits(out, expected)
    inplace = src.clone()
    assert _same_bits(select_into(inplace, inplace, mask), expected)
    assert _same_bits(out[:3], torch.tensor([float("nan"), float("inf"), 0.0], dtype=dtype))  # NaN kept, -inf pruned


def test_select_into_group_masks_and_odd_layouts() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, 5, 5, generator=gen)
    for mask_shape in [(64, 1, 1, 1), (64, 32, 1, 1), (64, 32, 5, 5)]:
        mask = torch.rand(mask_shape, generator=gen) > 0.3
        assert _same_bits(select_into(torch.empty_like(weight), weight, mask), torch.where(mask, weight, 0.0))
    channels_last = weight.to(memory_format=torch.channels_last)
    mask = torch.rand(weight.shape, generator=gen) > 0.3
    assert _same_bits(select_into(torch.empty_like(weight), channels_last, mask), torch.where(mask, weight, 0.0))
    transposed = torch.randn(300, 200, generator=gen).t()
    mask = torch.rand(200, 300, generator=gen) > 0.3
    assert _same_bits(select_into(torch.empty(200, 300), transposed, mask), torch.where(mask, transposed, 0.0))


# -- default mode: the same training run as plain torch.where masking, bit for bit ----------------------------------


def _reference_install(module: nn.Module, mask: torch.Tensor) -> None:
    """The masking path before the fast one: a fresh ``torch.where`` at every forward, autograd's own backward."""
    module.register_parameter("weight_orig", module._parameters.pop("weight"))
    module.register_buffer("weight_mask", mask.clone())

    def refresh(mod: nn.Module, _inputs: object) -> None:
        mod.weight = torch.where(mod.weight_mask, mod.weight_orig, 0.0)

    module.register_forward_pre_hook(refresh)
    refresh(module, ())


def _net(dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 9000), nn.ReLU(), nn.Linear(9000, 10),  # 1.15 M weights (chunks), 90 000
    ).to(dtype)


_MASK_SHAPES = {0: (8, 1, 1, 1), 2: (8, 8, 1, 1), 5: (9000, 128), 7: (10, 9000)}  # per channel, per kernel, scalar


def _masks(gen: torch.Generator) -> dict[int, torch.Tensor]:
    return {i: torch.rand(shape, generator=gen) > 0.6 for i, shape in _MASK_SHAPES.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_mode_trains_bit_identically_to_plain_where(dtype: torch.dtype) -> None:
    fast, reference = _net(dtype), _net(dtype)
    gen = torch.Generator().manual_seed(1)
    first = _masks(gen)
    for i, mask in first.items():
        install_mask(fast[i], "weight", mask)
        _reference_install(reference[i], mask)
    opts = [torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3) for net in (fast, reference)]
    data = torch.Generator().manual_seed(2)
    for step in range(6):
        x = torch.randn(4, 3, 8, 8, generator=data, dtype=dtype)
        target = torch.randint(0, 10, (4,), generator=data)
        outputs = []
        for net, opt in zip((fast, reference), opts):
            opt.zero_grad()
            xin = x.clone().requires_grad_(True)
            if step == 3:  # two forwards before one backward: the first graph still needs its masked weights
                out = net(xin)
                with torch.no_grad():
                    net[5].weight_orig.mul_(1.01)
                out = out + net(xin)
            else:
                out = net(xin)
            nn.functional.cross_entropy(out, target).backward()
            if step == 4:  # gradient accumulation over a second backward
                nn.functional.cross_entropy(net(xin), target).backward()
            outputs.append((out.detach(), xin.grad))
            opt.step()
        assert _same_bits(outputs[0][0], outputs[1][0]) and _same_bits(outputs[0][1], outputs[1][1])
        for (name, a), (_, b) in zip(fast.named_parameters(), reference.named_parameters()):
            assert _same_bits(a, b) and _same_bits(a.grad, b.grad), (step, name)
        for i in first:
            assert _same_bits(fast[i].weight, reference[i].weight) and fast[i].weight.grad_fn is None
        if step in (1, 3):  # new masks, reviving some weights
            for i, mask in _masks(gen).items():
                set_mask(fast[i], "weight", mask)
                reference[i].weight_mask.copy_(mask)
                reference[i].weight = torch.where(mask, reference[i].weight_orig.detach(), 0.0)
                assert _same_bits(fast[i].weight, reference[i].weight)



def test_default_mode_reuses_the_weight_memory_but_never_under_a_holder() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(300, 200)
    mask = torch.rand(200, 300) > 0.5
    install_mask(layer, "weight", mask)
    x = torch.randn(8, 300, requires_grad=True)
    layer(x).sum().backward()
    address = layer.weight.data_ptr()
    for _ in range(3):  # a plain training loop writes every forward into the same memory
        layer(x).sum().backward()
        assert layer.weight.data_ptr() == address
    kept = layer.weight  # a user's reference: later forwards must not change it
    snapshot = kept.clone()
    with torch.no_grad():
        layer.weight_orig.add_(1.0)
    layer(x).sum().backward()
    assert torch.equal(kept, snapshot) and layer.weight.data_ptr() != kept.data_ptr()
    assert torch.equal(layer.weight, torch.where(mask, layer.weight_orig.detach(), 0.0))
    with torch.no_grad():
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    with torch.inference_mode():
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()  # after inference mode, training goes on normally
    assert torch.equal(layer.weight, torch.where(mask, layer.weight_orig.detach(), 0.0))


def test_default_mode_second_order_gradients_match_plain_where() -> None:
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        layer = nn.Linear(200, 200)
        mask = torch.rand(200, 200) > 0.5
        install_mask(layer, "weight", mask) if fast else _reference_install(layer, mask)
        x = torch.randn(4, 200)
        (grad,) = torch.autograd.grad(layer(x).pow(2).sum(), layer.weight_orig, create_graph=True)
        grad.pow(2).sum().backward()
        results.append((grad.detach(), layer.weight_orig.grad))
    assert _same_bits(results[0][0], results[1][0]) and _same_bits(results[0][1], results[1][1])
    assert torch.all(results[0][0][~mask] == 0)


def test_default_mode_copies_and_pickles_keep_training() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    install_mask(net[0], "weight", torch.rand(64, 64) > 0.5)
    x = torch.randn(3, 64)
    net(x).sum().backward()
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        assert torch.equal(other(x), net(x))
        other(x).sum().backward()
        assert torch.all(other[0].weight_orig.grad[~other[0].weight_mask] == 0)
        assert other[0].weight.data_ptr() != net[0].weight.data_ptr()


# -- in-place mode -------------------------------------------------------------------------------------------------


def _inplace_net() -> tuple[nn.Sequential, dict[int, torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 5))
    masks = {0: torch.rand(300, 40) > 0.5, 2: torch.rand(5, 1) > 0.4}
    for i, mask in masks.items():
        install_mask(net[i], "weight", mask, mode="inplace")
    return net, masks


def test_inplace_mode_zeroes_the_parameter_and_the_forward_reads_it() -> None:
    net, masks = _inplace_net()
    for i, mask in masks.items():
        assert net[i].weight is net[i].weight_orig and is_masked(net[i])
        assert torch.all(net[i].weight_orig[~mask.expand_as(net[i].weight_orig)] == 0)
    x = torch.randn(2, 40)
    expected = nn.functional.linear(torch.relu(nn.functional.linear(x, net[0].weight_orig, net[0].bias)),
                                    net[2].weight_orig, net[2].bias)
    assert torch.equal(net(x), expected)
    assert sorted(net.state_dict()) == ["0.bias", "0.weight_amount", "0.weight_mask", "0.weight_orig",
                                        "2.bias", "2.weight_amount", "2.weight_mask", "2.weight_orig"]


class _NoisySGD(torch.optim.SGD):
    """Not a known zero-preserving optimizer: it moves every entry, so pruned ones must be zeroed after each step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                param.add_(0.01)
        return loss


_OPTIMIZERS = [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, maximize=True),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01, amsgrad=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, foreach=False),
    lambda p: torch.optim.Adamax(p, lr=0.01, weight_decay=0.01),
    lambda p: torch.optim.NAdam(p, lr=0.01, decoupled_weight_decay=True, weight_decay=0.01),
    lambda p: torch.optim.RAdam(p, lr=0.01),
    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True, weight_decay=0.01),
    lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5),
    lambda p: torch.optim.Adadelta(p, lr=1.0),
    lambda p: torch.optim.ASGD(p, lr=0.1, weight_decay=0.01),
    lambda p: torch.optim.Rprop(p, lr=0.01),
    lambda p: _NoisySGD(p, lr=0.1, momentum=0.9),
]


@pytest.mark.parametrize("make_optimizer", _OPTIMIZERS)
def test_inplace_mode_keeps_zeros_through_optimizer_steps_and_mask_changes(make_optimizer) -> None:
    net, masks = _inplace_net()
    optimizer = make_optimizer(net.parameters())
    gen = torch.Generator().manual_seed(3)
    for step in range(6):
        optimizer.zero_grad()
        x = torch.randn(6, 40, generator=gen)
        net(x).pow(2).sum().backward()
        net(x).sum().backward()  # accumulated gradients are masked too
        for i, mask in masks.items():
            assert torch.all(net[i].weight_orig.grad[~mask.expand(net[i].weight_orig.shape)] == 0)
        optimizer.step()
        for i, mask in masks.items():
            assert torch.all(net[i].weight_orig[~mask.expand(net[i].weight_orig.shape)] == 0)
        if step == 2:  # more zeros: momentum / Adam state of the new zeros would move them without re-zeroing
            masks[0] = masks[0] & (torch.rand(300, 40, generator=gen) > 0.5)
            set_mask(net[0], "weight", masks[0])
            assert torch.all(net[0].weight_orig[~masks[0]] == 0)
        if step >= 3 and type(optimizer) is not _NoisySGD:  # momentum / first moments cleared at the new zeros
            for key, value in optimizer.state[net[0].weight_orig].items():
                if key in ("momentum_buffer", "exp_avg"):
                    assert torch.all(value[~masks[0]] == 0)
        if step == 1:
            saved = copy.deepcopy(optimizer.state_dict())
        if step == 4:  # an older state (momentum at today's zeros) loaded into the same optimizer
            optimizer.load_state_dict(saved)


def test_inplace_mode_matches_the_default_mode_on_kept_weights() -> None:
    """With masks that only add zeros, both modes train the kept weights identically, bit for bit."""
    nets = []
    for mode in ("default", "inplace"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(50, 400), nn.ReLU(), nn.Linear(400, 3))
        install_mask(net[0], "weight", torch.ones(400, 50, dtype=torch.bool), mode=mode)
        nets.append((net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)))
    gen = torch.Generator().manual_seed(5)
    mask = torch.ones(400, 50, dtype=torch.bool)
    for step in range(6):
        x = torch.randn(8, 50, generator=gen)
        for net, optimizer in nets:
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
        if step % 2 == 1:
            mask = mask & (torch.rand(400, 50, generator=gen) > 0.3)
            for net, _ in nets:
                set_mask(net[0], "weight", mask)
        (default, _), (inplace, _) = nets
        assert _same_bits(torch.where(mask, default[0].weight_orig, 0.0), inplace[0].weight)
        assert _same_bits(default[2].weight, inplace[2].weight)
        assert _same_bits(default[0].weight_orig.grad, inplace[0].weight_orig.grad)


def test_inplace_mode_follows_deep_copies_pickles_and_loads() -> None:
    net, masks = _inplace_net()
    x = torch.randn(4, 40)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
        before = net[0].weight_orig.detach().clone()
        for _ in range(2):
            optimizer.zero_grad()
            other(x).pow(2).sum().backward()
            assert torch.all(other[0].weight_orig.grad[~masks[0]] == 0)
            optimizer.step()
            assert torch.all(other[0].weight_orig[~masks[0]] == 0)
        assert torch.equal(net[0].weight_orig, before)  # the original is not touched by the copy's training
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.weight_orig"] = torch.randn(300, 40)  # e.g. a default-mode checkpoint: pruned entries non-zero
    net.load_state_dict(state)
    assert torch.all(net[0].weight_orig[~masks[0]] == 0)
    assert torch.equal(net[0].weight_orig[masks[0]], state["0.weight_orig"][masks[0]])


def test_inplace_mode_holds_nothing_but_its_masks_and_runs_only_its_pre_hook() -> None:
    """The chunked kernel's buffer (4 bytes per chunk element) is freed after each in-place pass, where the
    default mode's forward keeps one per thread; an unsharded in-place module runs no forward post-hook."""
    from sparsify import _mask_ops

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 160), nn.ReLU(), nn.Linear(160, 10))  # 40 960 weights: the chunked kernel
    masks = [torch.rand(160, 256) > 0.5]
    install_mask(net[0], "weight", masks[0], mode="inplace")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    _mask_ops._scratch.buffers = {}
    for step in range(4):
        optimizer.zero_grad()
        net(torch.randn(4, 256)).sum().backward()
        assert torch.all(net[0].weight_orig.grad[~masks[-1]] == 0)
        optimizer.step()
        assert torch.all(net[0].weight_orig[~masks[-1]] == 0)
        assert torch.all(optimizer.state[net[0].weight_orig]["exp_avg"][~masks[-1]] == 0)
        if step == 1:  # a mask change zeroes the new pruned entries of the weight and of Adam's moments
            masks.append(masks[0] & (torch.rand(160, 256) > 0.5))
            set_mask(net[0], "weight", masks[-1])
    assert _mask_ops._scratch.buffers == {}
    assert not net[0]._forward_hooks and len(net[0]._forward_pre_hooks) == 1
    install_mask(net[2], "weight", torch.rand(10, 160) > 0.5)  # the default mode keeps its post-hook
    assert len(net[2]._forward_hooks) == 1


def test_inplace_mode_removal_is_clean() -> None:
    net, masks = _inplace_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    bake_mask(net[0])
    uninstall_mask(net[2])
    assert not is_masked(net[0]) and not is_masked(net[2]) and "weight" in net[0]._parameters
    assert list(net.state_dict()) == ["0.bias", "0.weight", "2.weight", "2.bias"]  # bake appends, roll-back restores
    net(torch.randn(3, 40)).pow(2).sum().backward()
    assert torch.any(net[0].weight.grad[~masks[0]] != 0)  # no gradient hook left
    optimizer.step()
    assert torch.any(net[0].weight[~masks[0]] != 0)  # and no re-zeroing after the step


def test_bad_mode_and_mask_shape_are_rejected_before_any_change() -> None:
    layer = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"mode='fast' is invalid: allowed values are 'default', 'inplace'"):
        install_mask(layer, "weight", mode="fast")
    with pytest.raises(ValueError, match=r"has shape \(4, 3\): allowed are shapes that broadcast to .* \(3, 4\)"):
        install_mask(layer, "weight", torch.ones(4, 3, dtype=torch.bool))
    assert list(layer.state_dict()) == ["weight", "bias"] and not is_masked(layer)


def test_inplace_mode_under_torch_compile_follows_mask_updates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    mask = torch.rand(16, 8) > 0.5
    install_mask(model[0], "weight", mask, mode="inplace")
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 8)
    for _ in range(3):
        optimizer.zero_grad()
        compiled(x).pow(2).sum().backward()
        assert torch.all(model[0].weight_orig.grad[~mask] == 0)
        optimizer.step()
        assert torch.all(model[0].weight_orig[~mask] == 0)
        mask = mask & (torch.rand(16, 8) > 0.3)
        set_mask(model[0], "weight", mask)
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_a_forward_that_raises_leaves_no_graph_on_the_weight() -> None:
    import copy

    layer = nn.Linear(4, 3)
    install_mask(layer, "weight", torch.rand(3, 4) > 0.5)
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 5))  # wrong input size: the forward raises after the pre-hook ran
    assert layer.weight.grad_fn is None
    copy.deepcopy(layer)  # would fail on a non-leaf tensor
    bake_mask(layer, "weight")
    assert isinstance(layer.weight, nn.Parameter)


def test_an_interrupt_while_installing_leaves_the_module_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Linear(4, 3)
    before = list(layer._parameters.items())

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(layer, "register_buffer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        install_mask(layer, "weight")
    monkeypatch.undo()
    assert list(layer._parameters.items()) == before  # the same Parameter objects, in the same order
    assert not hasattr(layer, "weight_orig") and not layer._forward_pre_hooks


def test_in_place_zeroing_follows_version_counters_and_a_bake_trusts_them_only_when_told():
    """In-place masks skip zeroing what no in-place write touched since (`MaskHook.zero_pruned` compares the
    version counters); a write through ``.data`` changes no counter, so only a bake the caller vouches for
    (``trust_versions``, what `sparsify.prune` passes) skips its zeroing."""
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 7.0).reshape(2, 3))
    install_mask(layer, "weight", mode="inplace")
    keep = torch.tensor([[True, False, True], [False, True, True]])
    set_mask(layer, "weight", keep)
    assert layer.weight_orig.tolist() == [[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]]
    with torch.no_grad():
        layer.weight_orig.add_(1.0)  # an in-place write: its version moves, the next refresh zeroes again
    layer.pruning_method.refresh(layer)
    assert layer.weight_orig.tolist() == [[2.0, 0.0, 4.0], [0.0, 6.0, 7.0]]
    layer.weight_orig.data[0, 1] = 9.0  # through .data: no version change
    layer.pruning_method.refresh(layer)
    assert layer.weight_orig[0, 1].item() == 9.0  # not seen until the mask changes
    bake_mask(layer, "weight")  # an untrusted bake zeroes regardless
    assert layer.weight.tolist() == [[2.0, 0.0, 4.0], [0.0, 6.0, 7.0]]

    other = nn.Linear(3, 2, bias=False)
    install_mask(other, "weight", mode="inplace")
    set_mask(other, "weight", keep)
    other.weight_orig.data[0, 1] = 9.0
    bake_mask(other, "weight", trust_versions=True)  # vouched for (wrongly here): the write survives
    assert other.weight[0, 1].item() == 9.0
