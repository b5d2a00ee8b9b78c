"""Mask patterns: Core ML Tools' worked examples, exact counts, and parity with the installed coremltools."""

import math

import pytest
import torch
from coremltools.optimize.torch.pruning import _utils as ct_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsify.patterns import (
    group_scores,
    keep_count,
    magnitude_ranked_mask,
    mask_shape,
    n_m_mask,
    n_m_zero_count,
    scheduled_n_m_mask,
)


def _apply(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, weight, torch.zeros(()))


# -- Core ML Tools' documented examples -----------------------------------------------------------


def test_unstructured_example() -> None:
    w = torch.tensor([0.3, -0.2, -0.01, 0.05])
    assert _apply(w, magnitude_ranked_mask(w, 0.75)).tolist() == pytest.approx([0.3, 0, 0, 0])


def test_block_example() -> None:
    w = torch.tensor([[1.0, 3], [-6, -7], [0, 3], [-9, 2]])
    pruned = _apply(w, magnitude_ranked_mask(w, 0.5, block_size=2))
    assert pruned.tolist() == [[0, 3], [0, -7], [0, 0], [-9, 0]]


def test_n_m_examples() -> None:
    w = torch.tensor([[3.0, 4, 7, 6], [1, 8, -3, -8], [-2, -3, -4, 0], [5, 4, -3, -2]])
    assert _apply(w, n_m_mask(w.abs(), (1, 2), dim=1)).tolist() == [
        [0, 4, 7, 0], [0, 8, 0, -8], [0, -3, -4, 0], [5, 0, -3, 0]]
    assert _apply(w, n_m_mask(w.abs(), (1, 2), dim=0)).tolist() == [
        [3, 0, 7, 0], [0, 8, 0, -8], [0, 0, -4, 0], [5, 4, 0, -2]]


def test_per_channel_and_per_kernel_examples() -> None:
    w = torch.tensor([[[[2.0, -1]], [[-3, 2]]], [[[5, -2]], [[-1, -3]]]])
    per_channel = magnitude_ranked_mask(w, 0.5, granularity="per_channel")
    assert per_channel.shape == (2, 1, 1, 1)
    assert _apply(w, per_channel).tolist() == [[[[0, 0]], [[0, 0]]], [[[5, -2]], [[-1, -3]]]]
    per_kernel = magnitude_ranked_mask(w, 0.5, granularity="per_kernel")
    assert per_kernel.shape == (2, 2, 1, 1)
    assert _apply(w, per_kernel).tolist() == [[[[0, 0]], [[-3, 2]]], [[[5, -2]], [[0, 0]]]]


@pytest.mark.parametrize(
    ("sparsity", "zeros"), [(0.0, 0), (0.05, 0), (0.14, 1), (0.15, 1), (0.5, 5), (0.99, 9), (1.0, 10)]
)
def test_unstructured_rounding_matches_core_ml(sparsity: float, zeros: int) -> None:
    w = torch.arange(1.0, 11.0)
    assert int((~magnitude_ranked_mask(w, sparsity)).sum()) == zeros


def test_ties_are_broken_by_position_so_counts_are_exact() -> None:
    # Core ML Tools keeps every weight tied with the threshold: constant weights would stay dense at 50 %.
    w = torch.ones(10)
    assert magnitude_ranked_mask(w, 0.5).tolist() == [False] * 5 + [True] * 5
    w = torch.tensor([1.0, 2, 2, 2, 3])
    assert magnitude_ranked_mask(w, 0.4).tolist() == [False, False, True, True, True]


def test_block_pads_output_channels() -> None:
    # 5 output channels, blocks of 2: channels (0,1), (2,3), (4,pad). Block norms 1, 5, 10.
    w = torch.tensor([[0.6], [0.8], [3.0], [4.0], [10.0]])
    mask = magnitude_ranked_mask(w, 0.4, block_size=2)  # 2 of 5 weights pruned -> lowest block
    assert mask.flatten().tolist() == [False, False, True, True, True]


def test_n_m_partial_run_and_zero_count() -> None:
    # 10 input channels with 3:4 -> runs of 4,4 and a tail of 2 padded with 2 zeros that take 2 of the 3 cuts.
    w = torch.arange(1.0, 81.0).reshape(8, 10)
    mask = n_m_mask(w, (3, 4))
    assert int((~mask).sum()) == n_m_zero_count(w.shape, (3, 4)) == 8 * (3 + 3 + 1)
    assert (~mask).float().mean().item() == pytest.approx(0.7)
    # Conv with one input channel and 1:2 along dim 1: every run is [w, pad] -> nothing pruned.
    assert n_m_zero_count((8, 1, 3, 3), (1, 2), dim=1) == 0
    assert n_m_mask(torch.rand(8, 1, 3, 3) + 0.1, (1, 2), dim=1).all()


def test_scheduled_n_m_ramp() -> None:
    w = torch.rand(4, 8) + 0.01
    # amount below 1/m: unstructured at that amount
    assert int((~scheduled_n_m_mask(w, 0.1, (3, 4))).sum()) == math.floor(32 * 0.1)
    # int(amount * m) zeros per run of 4
    for amount, zeros in [(0.25, 1), (0.5, 2), (0.74, 2), (0.75, 3)]:
        runs = (~scheduled_n_m_mask(w, amount, (3, 4))).reshape(4, 2, 4).sum(-1)
        assert (runs == zeros).all()


def test_group_scores_rejects_bad_granularity() -> None:
    with pytest.raises(ValueError, match="granularity='per_kernel' needs a weight with kernel dimensions"):
        group_scores(torch.ones(4, 4), "per_kernel")
    with pytest.raises(ValueError, match="allowed values are per_scalar, per_kernel, per_channel"):
        group_scores(torch.ones(4, 4, 3), "per_layer")


def test_per_channel_on_linear_prunes_rows() -> None:
    w = torch.tensor([[1.0, 1.0], [3.0, 0.1], [0.2, 0.2], [2.0, 2.0]])
    mask = magnitude_ranked_mask(w, 0.5, granularity="per_channel")
    assert mask.shape == (4, 1)
    assert mask.flatten().tolist() == [False, True, False, True]


def test_mask_shape() -> None:
    assert mask_shape((8, 3, 3, 3), "per_channel") == (8, 1, 1, 1)
    assert mask_shape((8, 3, 3, 3), "per_kernel") == (8, 3, 1, 1)
    assert mask_shape((8, 3), "per_scalar") == (8, 3)


# -- properties ---------------------------------------------------------------------------------

shapes = st.sampled_from([(7,), (6, 5), (16, 9), (8, 3, 3), (12, 4, 3, 3), (4, 2, 2, 2, 2)])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, sparsity=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_unstructured_count_is_exact_without_ties(shape: tuple[int, ...], sparsity: float, seed: int) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_ranked_mask(w, sparsity)
    assert int(mask.sum()) == keep_count(w.numel(), sparsity)
    # every kept weight is at least as large as every pruned one
    if mask.any() and (~mask).any():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(8, 12), (6, 8, 3), (8, 4, 2, 2), (5, 7)]),
    nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (5, 8)]),
    dim=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_n_m_count_matches_formula(shape: tuple[int, ...], nm: tuple[int, int], dim: int, seed: int) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = n_m_mask(w.abs(), nm, dim)
    assert mask.shape == w.shape
    assert int((~mask).sum()) == n_m_zero_count(shape, nm, dim)


# -- parity with the installed coremltools ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(16, 9), (8, 3, 5), (12, 6, 3, 3), (10, 4, 2, 2, 2), (9, 5, 3, 3)]),
    sparsity=st.floats(0, 1),
    block=st.sampled_from([1, 2, 3, 4, 8]),
    granularity=st.sampled_from(["per_scalar", "per_kernel", "per_channel"]),
    seed=st.integers(0, 2**16),
)
def test_ranked_mask_parity_with_coremltools(
    shape: tuple[int, ...], sparsity: float, block: int, granularity: str, seed: int
) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if len(shape) == 2:
        granularity = "per_scalar"  # Core ML Tools ignores granularity on rank-2 weights; sparsify does not
    expected = ct_utils.magnitude_ranked_mask(w, sparsity, block, granularity)
    assert torch.equal(magnitude_ranked_mask(w, sparsity, block, granularity), expected)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(8, 12), (6, 8, 3), (8, 4, 2, 2), (5, 7), (4, 6, 2, 2, 2)]),
    nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (7, 8)]),
    dim=st.sampled_from([0, 1]),
    amount=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_n_m_parity_with_coremltools(
    shape: tuple[int, ...], nm: tuple[int, int], dim: int, amount: float, seed: int
) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(n_m_mask(w.abs(), nm, dim), ct_utils.n_m_mask(w, nm, dim).bool())
    zeros = int(amount * nm[1])
    if zeros < nm[1]:
        expected = (ct_utils.n_m_mask(w, (zeros, nm[1]), dim).bool() if zeros
                    else ct_utils.magnitude_ranked_mask(w, amount, 1, "per_scalar"))
        assert torch.equal(scheduled_n_m_mask(w.abs(), amount, nm, dim), expected)
