"""A pruned layer's stand-in during an update: held as its kept entries, rebuilt exactly, written exactly."""

from __future__ import annotations

import torch

from sparsify.calibration.passes import MaskedWeight


def test_compact_new_values_rebuild_and_write_exactly():
    torch.manual_seed(0)
    new = torch.randn(6, 5)
    keep = torch.rand(6, 5) < 0.5
    stand_in = MaskedWeight.compact(keep, new.clone())
    assert stand_in.kept is not None and stand_in.kept.numel() == int(keep.sum())  # only the kept entries held
    assert torch.equal(stand_in(), torch.where(keep, new, 0.0))
    param = torch.full((6, 5), 7.0)
    stand_in.write(param, keep)
    assert torch.equal(param, torch.where(keep, new, 7.0))  # pruned entries keep the parameter's own values


def test_compact_writes_through_a_mask_that_broadcasts():
    new = torch.arange(12.0).reshape(3, 4)
    keep = torch.tensor([[True], [False], [True]]).expand(3, 4)
    stand_in = MaskedWeight.compact(keep, new)
    param = torch.zeros(3, 4, dtype=torch.float64)
    stand_in.write(param, torch.tensor([[True], [False], [True]]))
    assert param.tolist() == [[0.0, 1.0, 2.0, 3.0], [0.0] * 4, [8.0, 9.0, 10.0, 11.0]]


def test_a_full_stand_in_reads_the_weight_it_was_given():
    weight = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    keep = torch.tensor([[True, False], [False, True]])
    assert torch.equal(MaskedWeight(keep, weight)(), torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
