"""`sparsify.mask_layout`: the one owner of the ``<name>_orig`` / ``<name>_mask`` / ``<name>_amount`` names and
of the masked-to-plain state-dict conversion."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparsify import checkpoints, mask_layout
from sparsify.masking import install_mask
from sparsify.pruning import saving

ROOT = Path(__file__).resolve().parent.parent


def test_names_and_split() -> None:
    assert mask_layout.layout_names("fc.weight") == ("fc.weight_orig", "fc.weight_mask", "fc.weight_amount")
    assert mask_layout.split_masked_key("fc.weight_mask") == ("fc.weight", "mask")
    assert mask_layout.split_masked_key("blocks.0.in_proj_weight_orig") == ("blocks.0.in_proj_weight", "orig")
    assert mask_layout.split_masked_key("fc.weight_amount") == ("fc.weight", "amount")
    # other names that merely end in a similar word are not layout names
    for key in ("fc.weight", "fc.orig", "_mask", "fc.weight_masks", "n_m_mask_x", "x_origin"):
        assert mask_layout.split_masked_key(key) is None, key
    assert mask_layout.split_masked_key("attention_mask") == ("attention", "mask")  # only the suffix is read
    assert mask_layout.is_masked_key("x_orig") and not mask_layout.is_masked_key("x_origin")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_masked_names_of_sparsify_and_torch_prune_masks() -> None:
    net = _net()
    install_mask(net[0], "weight", torch.tensor([[True], [False], [True]]), amount=1 / 3)
    torch_prune.l1_unstructured(net[2], "bias", amount=0.5)
    assert mask_layout.masked_params(net[0]) == ["weight"]
    assert mask_layout.masked_tensors(net) == ["0.weight", "2.bias"]
    assert mask_layout.has_mask_layout(net[2], "bias") and not mask_layout.has_mask_layout(net[2], "weight")
    assert mask_layout.masked_bases(net.state_dict()) == {"0.weight", "2.bias"}


def test_plain_state_dict_applies_masks_keeps_order_and_drops_bookkeeping() -> None:
    net = _net()
    install_mask(net[0], "weight", torch.tensor([[True], [False], [True]]), amount=1 / 3)
    state = net.state_dict()
    assert list(state) == ["0.bias", "0.weight_orig", "0.weight_mask", "0.weight_amount", "2.weight", "2.bias"]
    plain = mask_layout.plain_state_dict(state)
    assert list(plain) == ["0.bias", "0.weight", "2.weight", "2.bias"]
    expected = state["0.weight_orig"].clone()
    expected[1] = 0
    assert torch.equal(plain["0.weight"], expected)
    assert plain["0.bias"] is state["0.bias"]
    fresh = _net()
    fresh.load_state_dict(plain)  # what a model without masks loads
    assert torch.equal(fresh[0].weight, expected)


def test_plain_state_dict_keeps_tied_weights_one_tensor_and_integer_dtype() -> None:
    orig = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    state = {"a.weight_orig": orig, "a.weight_mask": mask, "b.weight_orig": orig, "b.weight_mask": mask,
             "c.weight_orig": torch.ones(2)}  # no mask beside it: not masked, kept as it is
    plain = mask_layout.plain_state_dict(state)
    assert plain["a.weight"] is plain["b.weight"]
    assert plain["a.weight"].dtype == torch.int32
    assert plain["a.weight"].tolist() == [[0, 0, 2], [0, 4, 5]]
    assert list(plain) == ["a.weight", "b.weight", "c.weight_orig"]
    # limited to the names given: b stays in the masked layout's keys, dropped as bookkeeping only for a
    assert list(mask_layout.plain_state_dict(state, masked=["a.weight"])) == [
        "a.weight", "b.weight_orig", "b.weight_mask", "c.weight_orig"]


def test_the_public_conversions_are_the_one_conversion() -> None:
    assert checkpoints.dense_state_dict is mask_layout.plain_state_dict
    net = _net()
    install_mask(net[2], "weight", torch.tensor([[True, False, True], [True, True, False]]))
    via_model = saving.plain_state_dict(net)
    direct = mask_layout.plain_state_dict(net.state_dict())
    assert list(via_model) == list(direct) == ["0.weight", "0.bias", "2.bias", "2.weight"]
    assert all(torch.equal(via_model[k], direct[k]) for k in direct)


_SPELLED = re.compile(r"""["']_(?:orig|mask|amount)["']|\+\s*["']_(?:orig|mask|amount)\b|\}_(?:orig|mask|amount)\b""")


def test_only_mask_layout_spells_the_layout_suffixes() -> None:
    spelled = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "sparsify").rglob("*.py")) if path.name != "mask_layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _SPELLED.search(line)
    ]
    assert spelled == []
    assert _SPELLED.search('key + "_orig"') and _SPELLED.search('f"{name}_mask"') and _SPELLED.search("'_amount'")
