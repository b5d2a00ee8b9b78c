"""`sparsify.compat.coremltools`: Core ML Tools' helpers, equal to the real ones and interoperable with them."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig
from sparsify.compat.coremltools import (
    METADATA_VERSION_BUFFER,
    CompressionMetadata,
    CompressionType,
    n_m_mask,
    register_metadata_version,
)


def test_n_m_mask_docstring_example() -> None:
    # Core ML Tools' own example (ModuleMagnitudePrunerConfig's docstring, dim=1); dim=0 worked by hand
    w = torch.tensor([[3.0, 4, 7, 6], [1, 8, -3, -8], [-2, -3, -4, 0], [5, 4, -3, -2]])
    assert torch.equal(n_m_mask(w, (1, 2)) * w, torch.tensor([[0.0, 4, 7, 0], [0, 8, 0, -8], [0, -3, -4, 0],
                                                                [5, 0, -3, 0]]))
    assert torch.equal(n_m_mask(w, (1, 2), dim=0) * w, torch.tensor([[3.0, 0, 7, 0], [0, 8, 0, -8], [0, 0, -4, 0],
                                                                       [5, 4, 0, -2]]))


def test_n_m_mask_is_float32_on_the_weight_device_and_keeps_the_shape() -> None:
    mask = n_m_mask(torch.randn(4, 6, 3, 3, dtype=torch.float64), (2, 4))
    assert mask.dtype == torch.float32 and mask.shape == (4, 6, 3, 3)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("shape", [(8, 12), (6, 10), (4, 8, 5), (6, 9, 3, 3), (4, 4, 2, 3, 2), (3, 1, 3, 3)])
@pytest.mark.parametrize("nm", [(1, 2), (2, 4), (3, 4), (0, 4), (5, 8)])
@pytest.mark.parametrize("dim", [0, 1])
def test_n_m_mask_equals_coremltools(shape: tuple[int, ...], nm: tuple[int, int], dim: int) -> None:
    from coremltools.optimize.torch.pruning._utils import n_m_mask as coremltools_n_m_mask

    gen = torch.Generator().manual_seed(hash((shape, nm, dim)) % 2**31)
    w = torch.randn(shape, generator=gen)  # distinct magnitudes: no ties, so the masks are fully defined
    expected = coremltools_n_m_mask(w, nm, dim=dim)
    assert torch.equal(n_m_mask(w, nm, dim=dim), expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.ones(2, 4), (2, 2)), r"nm=\(2, 2\) is invalid: n \(number of zeros\) = 2 must be >= 0 and less than m"),
        ((torch.ones(2, 4), (3,)), r"nm=\(3,\) is invalid: allowed a pair of ints"),
        ((torch.ones(2, 4), (1, 2), 2), r"dim=2 is invalid: n:m masks run along dim 0 \(output channels\) or 1"),
        ((torch.ones(4), (1, 2)), r"weights of shape \(4,\) are invalid: allowed rank 2 to 5"),
    ],
)
def test_n_m_mask_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        n_m_mask(*args)


def test_compression_type_values() -> None:
    assert [(t.name, t.value, str(t)) for t in CompressionType] == [
        ("pruning", 1, "pruning"), ("palettization", 2, "palettization"), ("quantization", 3, "quantization")]


def _finalized_model() -> nn.Module:
    model = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 8, 3)), ("fc1", nn.Linear(8, 4))]))
    pruner = MagnitudePruner(model, MagnitudePrunerConfig().set_module_name("fc1", None))
    pruner.prepare(inplace=True)
    pruner.step()
    return pruner.finalize(inplace=True)


def test_reads_what_sparsify_finalize_writes_as_coremltools_does() -> None:
    from coremltools.optimize.torch._utils.metadata_utils import CompressionMetadata as Theirs

    model = _finalized_model()
    state = model.state_dict()
    assert state[METADATA_VERSION_BUFFER].item() == 1
    assert state["conv1._COREML_/weight/compression_type"].tolist() == [1]
    ours = CompressionMetadata.from_state_dict(model.conv1.state_dict())
    theirs = Theirs.from_state_dict(model.conv1.state_dict())
    assert list(ours) == list(theirs) == ["weight"]
    assert ours["weight"].compression_type == theirs["weight"].compression_type == [CompressionType.pruning.value]
    assert CompressionMetadata.from_state_dict(model.fc1.state_dict()) == {}


def test_register_round_trips_and_matches_coremltools_buffers() -> None:
    from coremltools.optimize.torch._utils.metadata_utils import CompressionMetadata as Theirs

    def fields(**extra: object) -> dict:
        return dict(param_name="weight", quantization_n_bits=4, quantization_scale=torch.tensor([0.5, 2.0]),
                    vector_axis=0, **extra)

    ours_module, theirs_module = nn.Linear(2, 2), nn.Linear(2, 2)
    for module, cls in ((ours_module, CompressionMetadata), (theirs_module, Theirs)):
        cls(**fields(compression_type=["quantization"])).register(module)
        cls("weight", compression_type=["pruning"]).register(module)  # appended: joint compression
    ours_buffers = {k: v for k, v in ours_module.state_dict().items() if k.startswith("_COREML_")}
    theirs_buffers = {k: v for k, v in theirs_module.state_dict().items() if k.startswith("_COREML_")}
    assert list(ours_buffers) == list(theirs_buffers)
    for key in ours_buffers:
        assert torch.equal(ours_buffers[key], theirs_buffers[key]), key
    assert ours_buffers["_COREML_/weight/compression_type"].tolist() == [3, 1]

    parsed = CompressionMetadata.from_state_dict(theirs_module.state_dict())["weight"]
    assert (parsed.quantization_n_bits, parsed.vector_axis, parsed.compression_type) == (4, 0, [3, 1])
    assert torch.equal(parsed.quantization_scale, torch.tensor([0.5, 2.0]))
    back = Theirs.from_state_dict(ours_module.state_dict())["weight"]
    assert (back.quantization_n_bits, back.compression_type) == (4, [3, 1])

    override = CompressionMetadata("weight", compression_type=["palettization"])
    override.register(ours_module, override_compression_type=True)
    assert ours_module.state_dict()["_COREML_/weight/compression_type"].tolist() == [2]


def test_register_metadata_version() -> None:
    model = nn.Linear(2, 2)
    register_metadata_version(model)
    assert model.state_dict()[METADATA_VERSION_BUFFER].item() == 1
    assert CompressionMetadata.from_state_dict(model.state_dict()) == {}


def test_bad_metadata() -> None:
    with pytest.raises(ValueError, match=r"compression_type item 'sparse' is invalid: allowed \['palettization'"):
        CompressionMetadata("weight", compression_type=["sparse"])
    with pytest.raises(ValueError, match=r"CompressionMetadata keys \['lut_size'\] are unknown"):
        CompressionMetadata.from_dict({"param_name": "weight", "lut_size": 4})
    with pytest.raises(ValueError, match=r"state-dict key '_COREML_/a/b/compression_type' is invalid"):
        CompressionMetadata.from_state_dict({"_COREML_/a/b/compression_type": torch.tensor([1])})


# Engine behaviour that must equal Core ML Tools' (issue 10): masks on a conv + linear model, and empty schedules.


def _conv_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def _masks(pruner_cls: type, config_cls: type, config: dict, steps: int = 1) -> dict[str, torch.Tensor]:
    pruner = pruner_cls(_conv_linear(), config_cls.from_dict(config))
    model = pruner.prepare()
    for _ in range(steps):
        pruner.step()
    model(torch.randn(1, 3, 8, 8))
    return {name: m.weight.eq(0) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize(
    "module_config",
    [
        {"granularity": "per_scalar"},
        {"granularity": "per_scalar", "block_size": 2},
        {"n_m_ratio": (2, 4)},
        {"n_m_ratio": (3, 4), "dim": 0},
        {"granularity": "per_channel"},
        {"granularity": "per_channel", "block_size": 2},
        {"granularity": "per_kernel"},
        {"granularity": "per_kernel", "block_size": 2},
    ],
)
def test_masks_equal_coremltools_on_a_conv_linear_model(module_config: dict) -> None:
    from coremltools.optimize.torch.pruning import MagnitudePruner as TheirPruner
    from coremltools.optimize.torch.pruning import MagnitudePrunerConfig as TheirConfig

    config = {"global_config": {"target_sparsity": 0.5, **module_config}}
    ours = _masks(MagnitudePruner, MagnitudePrunerConfig, config)
    theirs = _masks(TheirPruner, TheirConfig, config)
    assert list(ours) == list(theirs) == ["0", "3"]
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def test_empty_update_steps_keep_initial_sparsity_as_coremltools() -> None:
    from coremltools.optimize.torch.pruning import MagnitudePruner as TheirPruner
    from coremltools.optimize.torch.pruning import MagnitudePrunerConfig as TheirConfig

    config = {"global_config": {"scheduler": {"update_steps": "range(0)"}, "initial_sparsity": 0.25}}
    theirs = _masks(TheirPruner, TheirConfig, config, steps=3)
    ours = _masks(MagnitudePruner, MagnitudePrunerConfig, config, steps=3)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
        assert ours[name].float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_metadata_without_a_parameter_name_cannot_register() -> None:
    metadata = CompressionMetadata(None, compression_type=["pruning"])  # allowed, as in Core ML Tools
    module = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"CompressionMetadata.param_name=None is invalid here: register\(\) names "
                                         r"its buffers '_COREML_/<param_name>/<field>'"):
        metadata.register(module)
    assert not [name for name, _ in module.named_buffers()]
