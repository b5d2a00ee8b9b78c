"""The calibration-data contract: GradSampler items, gradients, modes, exhaustion, SparseML's dict."""

from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsify.criteria.sampler import GradSampler, NotEnoughDataError, as_grad_sampler, split_batch


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.drop(self.fc(x)) * scale


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _manual_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    model.eval()
    return torch.autograd.grad(F.cross_entropy(model(x, scale=scale), y), [model.fc.weight])[0]


def test_split_batch_forms() -> None:
    x, y = torch.ones(2, 4), torch.zeros(2)
    assert split_batch((x, y)) == ((x,), {}, y)
    assert split_batch([[x, x], y]) == ((x, x), {}, y)
    assert split_batch(({"x": x}, y)) == ((), {"x": x}, y)
    assert split_batch(([x], {"scale": 2.0}, y)) == ((x,), {"scale": 2.0}, y)
    assert split_batch((x, {}, y)) == ((x,), {}, y)
    with pytest.raises(TypeError, match=r"yielded a tuple of length 1: allowed a dict of tensors"):
        split_batch((x,))
    assert split_batch(x) == ((x,), {}, None)  # one tensor: one positional argument (token ids, an image batch)
    with pytest.raises(TypeError, match="yielded int"):
        split_batch(3)
    with pytest.raises(TypeError, match="forward_args must be a list or tuple"):
        split_batch((3, {}, y))


def test_plain_dataloader_gives_minibatch_gradients() -> None:
    torch.manual_seed(0)
    model = _Net()
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    sampler = GradSampler(loader, F.cross_entropy, progress=False)
    grads = list(sampler.gradients(model, [model.fc.weight, model.unused.weight], 3))
    assert len(grads) == 3
    for k, (g_fc, g_unused) in enumerate(grads):
        torch.testing.assert_close(g_fc, _manual_grad(model, x[4 * k : 4 * k + 4], y[4 * k : 4 * k + 4]))
        assert torch.equal(g_unused, torch.zeros(2, 2))  # a parameter the loss does not reach: zeros


def test_sparseml_triples_with_kwargs_and_namedtuples() -> None:
    model = _Net()
    x, y = _data(4)
    Batch = namedtuple("Batch", "args kwargs target")
    data = [([x], {"scale": 3.0}, y), Batch([x], {"scale": 2.0}, y)]
    grads = [g for (g,) in GradSampler(data, F.cross_entropy, progress=False).gradients(model, [model.fc.weight], 2)]
    torch.testing.assert_close(grads[0], _manual_grad(model, x, y, 3.0))
    torch.testing.assert_close(grads[1], _manual_grad(model, x, y, 2.0))


def test_eval_mode_while_sampling_and_grads_left_alone() -> None:
    model = _Net().train()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    x, y = _data(8)
    sampler = GradSampler(DataLoader(TensorDataset(x, y), batch_size=4), F.cross_entropy, progress=False)
    g1 = [g for (g,) in sampler.gradients(model, [model.fc.weight], 2)]
    g2 = [g for (g,) in sampler.gradients(model, [model.fc.weight], 2)]
    assert seen == [False] * 4  # dropout off: the two passes agree
    torch.testing.assert_close(g1, g2)
    assert model.training and model.fc.weight.grad is None


def test_model_mode_restored_after_an_error() -> None:
    model = _Net().train()

    def bad_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return outputs.sum(0)

    x, y = _data(4)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor, got Tensor \\(3,\\)"):
        next(GradSampler([(x, y)], bad_loss, progress=False).gradients(model, [model.fc.weight], 1))
    assert model.training


def test_callable_data_is_called_for_every_pass() -> None:
    calls = []
    x, y = _data(4)

    def batches():
        calls.append(1)
        yield x, y
        yield x, y

    sampler = GradSampler(batches, F.cross_entropy, progress=False)
    model = _Net()
    for _ in range(3):
        assert len(list(sampler.gradients(model, [model.fc.weight], 2))) == 2
    assert len(calls) == 3


def test_running_out_of_data_says_how_many() -> None:
    x, y = _data(8)
    sampler = GradSampler(DataLoader(TensorDataset(x, y), batch_size=4), F.cross_entropy, progress=False)
    model = _Net()
    with pytest.raises(NotEnoughDataError, match="ran out after 2 of num_grads=5 gradients"):
        list(sampler.gradients(model, [model.fc.weight], 5))
    one_shot_iterator = GradSampler(iter([(x, y)]), F.cross_entropy, progress=False)
    list(one_shot_iterator.gradients(model, [model.fc.weight], 1))
    with pytest.raises(NotEnoughDataError, match="after 0 of"):  # an iterator is consumed once
        list(one_shot_iterator.gradients(model, [model.fc.weight], 1))


def test_progress_bar_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _data(4)
    model = _Net()
    list(GradSampler([(x, y)] * 2, F.cross_entropy).gradients(model, [model.fc.weight], 2, desc="M-FAC gradients"))
    assert "M-FAC gradients" in capsys.readouterr().err


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        GradSampler([], "cross_entropy")
    with pytest.raises(TypeError, match="data must be an iterable"):
        GradSampler(3, F.cross_entropy)
    sampler = GradSampler([], F.cross_entropy)
    with pytest.raises(ValueError, match="num_grads=0 is invalid"):
        next(sampler.gradients(_Net(), [], 0))
    with pytest.raises(TypeError, match="the data callable must return an iterable"):
        list(GradSampler(lambda: 3, F.cross_entropy).batches())


def test_sparseml_grad_sampler_dict() -> None:
    x, y = _data(8)
    received = {}

    def builder(**kwargs):
        received.update(kwargs)
        return DataLoader(TensorDataset(x, y), batch_size=kwargs["batch_size"])

    sampler = as_grad_sampler({"data_loader_builder": builder, "loss_function": F.cross_entropy}, batch_size=2)
    sampler.progress = False
    model = _Net()
    assert len(list(sampler.gradients(model, [model.fc.weight], 4))) == 4
    assert received == {"batch_size": 2}
    assert as_grad_sampler(sampler) is sampler
    with pytest.raises(ValueError, match="missing \\['loss_function'\\]"):
        as_grad_sampler({"data_loader_builder": builder})
    with pytest.raises(TypeError, match="sampler must be a GradSampler"):
        as_grad_sampler([(x, y)])
