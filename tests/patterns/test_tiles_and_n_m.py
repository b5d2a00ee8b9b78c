"""Tile and n:m patterns (`sparsify.patterns.tiles`, `sparsify.patterns.n_m`) on the `Pattern` contract: worked
examples, conv layout, exact counts per tile / run (hypothesis), ranked globally as the machine does and alone."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsify.patterns import NMPattern, Pattern, TilePattern, as_3d, from_3d, n_m_from_string, n_m_mask, parse_pattern
from sparsify.scope import global_keep_masks


def _mask(pattern: Pattern, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The layer ranked in a global ranking of its own, exactly as `sparsify.pruning.update` calls it."""
    grouped, _ = pattern.groups(scores)
    keep = global_keep_masks(
        {"w": grouped}, sparsity, weights_per_group={"w": pattern.weights_per_group(scores.shape)},
        layer_weights={"w": scores.numel()},
    )["w"]
    return pattern.expand(keep, scores)


def _groups(pattern: Pattern, scores: torch.Tensor) -> torch.Tensor:
    return pattern.groups(scores)[0]


# A 4x4 Linear weight whose scores make every answer easy to read.
SCORES = torch.tensor(
    [
        [1.0, 9.0, 2.0, 8.0],
        [1.0, 9.0, 2.0, 8.0],
        [7.0, 3.0, 6.0, 4.0],
        [7.0, 3.0, 6.0, 4.0],
    ]
)


def test_parse_and_describe() -> None:
    assert parse_pattern("4x1") == TilePattern(4, 1)
    assert parse_pattern("tile_pattern_2x2") == TilePattern(2, 2)
    assert parse_pattern("channelx1") == TilePattern(None, 1)
    assert parse_pattern("1xchannel") == TilePattern(1, None)
    assert parse_pattern(" 1X1 ") == TilePattern(1, 1)
    assert "whole output channels" in TilePattern(1, None).describe()
    assert "whole input channels" in TilePattern(None, 1).describe()
    with pytest.raises(ValueError, match=r"n_m_ratio=\(2, 4\)"):
        parse_pattern("2:4")
    with pytest.raises(ValueError, match="allowed 'NxM'"):
        parse_pattern("4by1")
    with pytest.raises(ValueError, match="channelxchannel"):
        parse_pattern("channelxchannel")


def test_unstructured_1x1_worked_example() -> None:
    mask = _mask(TilePattern(1, 1), SCORES, 0.5)
    assert mask.tolist() == [
        [False, True, False, True],
        [False, True, False, True],
        [True, False, True, False],
        [True, False, True, False],
    ]


def test_2x1_tiles_along_output_channels() -> None:
    # tiles of 2 output rows x 1 input column: means are rows 0-1 [1, 9, 2, 8], rows 2-3 [7, 3, 6, 4]
    mask = _mask(TilePattern(2, 1), SCORES, 0.5)
    assert mask.tolist() == [
        [False, True, False, True],
        [False, True, False, True],
        [True, False, True, False],
        [True, False, True, False],
    ]


def test_1x2_tiles_along_input_channels() -> None:
    # 1 row x 2 columns: tile means 1.5, 10 (row 0) and 3, 0.5 (row 1): prune 0.5 and 1.5
    scores = torch.tensor([[1.0, 2.0, 10.0, 10.0], [3.0, 3.0, 0.0, 1.0]])
    mask = _mask(TilePattern(1, 2), scores, 0.5)
    assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_4x1_on_a_linear_weight() -> None:
    scores = torch.arange(32, dtype=torch.float32).reshape(8, 4)  # rows 0-3 score lower than rows 4-7
    mask = _mask(TilePattern(4, 1), scores, 0.25)  # 8 tiles of 4, prune 2: rows 0-3, columns 0-1
    expected = torch.ones(8, 4, dtype=torch.bool)
    expected[:4, :2] = False
    assert torch.equal(mask, expected)


def test_whole_channels() -> None:
    out_mask = _mask(TilePattern(1, None), SCORES, 0.5)  # row means 5, 5, 5, 5: ties by index
    assert out_mask.tolist() == [[False] * 4, [False] * 4, [True] * 4, [True] * 4]
    in_mask = _mask(TilePattern(None, 1), SCORES, 0.5)  # column means 4, 6, 4, 6
    assert in_mask.tolist() == [[False, True, False, True]] * 4


def test_conv_layout_is_per_kernel_position() -> None:
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # [Co, Ci, kh, kw]
    view = as_3d(weight)
    assert view.shape == (2, 4, 3)  # [Co, kh*kw, Ci]
    assert view[1, 2, 0] == weight[1, 0, 1, 0]  # kernel position (1, 0) of input channel 0
    assert torch.equal(from_3d(view, weight.shape), weight)
    # a 2x1 tile on a conv = 2 output channels of one input channel at one kernel position
    scores = torch.ones(2, 3, 2, 2)
    scores[:, 1, 0, 1] = 0.0
    mask = _mask(TilePattern(2, 1), scores, 1 / 12)
    assert (~mask).sum() == 2 and not mask[:, 1, 0, 1].any()
    # channelx1 on a conv = a whole input channel: every output channel and kernel position
    scores = torch.ones(2, 3, 2, 2)
    scores[:, 2] = 0.5
    mask = _mask(TilePattern(None, 1), scores, 1 / 3)
    assert not mask[:, 2].any() and mask[:, :2].all()


def test_n_m_worked_example_and_engine_parity() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 5.0, 8.0, 7.0, 6.0]])
    mask = _mask(NMPattern(2, 4), scores, 0.5)
    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]
    torch.manual_seed(0)
    conv = torch.rand(8, 8, 3, 3)
    for dim in (0, 1):
        pattern = NMPattern(2, 4, dim)
        all_sparse = pattern.expand(torch.zeros_like(_groups(pattern, conv), dtype=torch.bool), conv)
        assert torch.equal(all_sparse, n_m_mask(conv, (2, 4), dim))


def test_gradual_n_m_ramp_makes_the_cheapest_runs_sparse() -> None:
    # three runs of 4; the middle run is cheapest to sparsify (its two lowest sum to 0.3)
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.1, 0.2, 9.0, 9.0, 5.0, 6.0, 7.0, 8.0]])
    pattern = NMPattern(2, 4)
    assert _groups(pattern, scores).flatten().tolist() == pytest.approx([3.0, 0.3, 11.0])
    mask = _mask(pattern, scores, 2 / 12)  # 2 weights -> one run becomes 2:4
    assert mask.tolist() == [[True] * 4 + [False, False, True, True] + [True] * 4]
    mask = _mask(pattern, scores, 4 / 12)
    assert (~mask).sum() == 4 and mask[0, 8:].all()


def test_n_m_checks_and_inc_string(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sparsify"):
        assert n_m_from_string("2:4") == (2, 4)
    assert "INC pattern '2:4' -> n:m 2 zeros of every 4 consecutive input-channel weights (50.00%)" in caplog.text
    assert n_m_from_string(" 3 : 4 ") == (3, 4)  # INC: 3 pruned of 4 = 75 %
    assert NMPattern(3, 4).max_sparsity == 0.75
    with pytest.raises(ValueError, match="N:M"):
        n_m_from_string("2x4")
    with pytest.raises(ValueError, match="number of ZEROS"):
        NMPattern(4, 4)
    NMPattern(2, 4).check((8, 6), "module 'fc'")  # ranked alone, a partial run is padded (see test_patterns)
    with pytest.raises(ValueError, match=r"module 'fc': n_m_ratio=\(2, 4\) ranked globally needs the input channels "
                                         r"\(6, weight shape \(8, 6\)\) to be a multiple of m=4"):
        NMPattern(2, 4).check_whole_runs((8, 6), "module 'fc'")
    NMPattern(2, 4, dim=0).check_whole_runs((8, 6), "module 'fc'")  # along output channels: 8 is whole runs
    with pytest.raises(ValueError, match="rank >= 2"):
        NMPattern(2, 4).check((8,), "bias")
    with pytest.raises(ValueError, match=r"module 'fc': pattern '4x1' needs the output channels \(10, weight shape "
                                         r"\(10, 8\)\) to be a multiple of 4"):
        TilePattern(4, 1).check((10, 8), "module 'fc'")
    TilePattern(4, 1).check((8, 3, 3, 3), "conv")  # input channels need only be a multiple of 1


_tiles = st.sampled_from([(1, 1), (4, 1), (2, 2), (1, 4), (None, 1), (1, None), (2, None), (None, 2)])


@settings(max_examples=50, deadline=None)
@given(tile=_tiles, blocks=st.tuples(st.integers(1, 3), st.integers(1, 3)), kernel=st.sampled_from([(), (3,), (2, 2)]),
       sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_property_tiles_are_all_or_nothing_and_counts_exact(tile, blocks, kernel, sparsity, seed) -> None:
    out_size, in_size = tile
    co = (out_size or 2) * blocks[0]
    ci = (in_size or 2) * blocks[1]
    shape = (co, ci, *kernel)
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    pattern = TilePattern(out_size, in_size)
    pattern.check(shape, "w")
    mask = _mask(pattern, scores, sparsity)
    assert mask.shape == scores.shape
    size = pattern.weights_per_group(shape)
    groups = _groups(pattern, scores).numel()
    assert groups * size == scores.numel()
    # every tile is entirely kept or entirely pruned
    group_mask = _groups(pattern, mask.float())
    assert torch.all((group_mask == 0) | (group_mask == 1))
    pruned_weights = int((~mask).sum())
    assert pruned_weights % size == 0
    expected_groups = (scores.numel() - int(torch.ceil(torch.tensor(scores.numel(), dtype=torch.float32)
                                                       * (1 - sparsity)).item())) // size
    assert pruned_weights == expected_groups * size
    # ranked alone (local scope) the layer gets the same mask: one counting rule, ties by position
    assert torch.equal(pattern.local_mask(scores, sparsity), mask)


@settings(max_examples=50, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (1, 4), (2, 8)]), runs=st.integers(1, 4), rows=st.integers(1, 4),
       dim=st.sampled_from([0, 1]), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_property_n_m_runs_dense_or_exactly_n_zeros(nm, runs, rows, dim, fraction, seed) -> None:
    n, m = nm
    shape = (m * runs, rows) if dim == 0 else (rows, m * runs)
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    pattern = NMPattern(n, m, dim)
    level = fraction * n / m
    mask = _mask(pattern, scores, level)
    moved = (~mask).movedim(dim, -1).reshape(-1, m)
    zeros_per_run = moved.sum(-1)
    assert torch.all((zeros_per_run == 0) | (zeros_per_run == n))
    sparse_runs = int((zeros_per_run == n).sum())
    target = scores.numel() - int(torch.ceil(torch.tensor(scores.numel(), dtype=torch.float32) * (1 - level)).item())
    assert sparse_runs == min(target // n, moved.shape[0])


def test_pattern_contract_shapes_and_sizes() -> None:
    """``groups`` gives one score per tile and the weights each stands for; ``mask_shape`` is the weight's."""
    conv = torch.rand(8, 6, 3, 3)
    grouped, size = TilePattern(4, 2).groups(conv)
    assert grouped.numel() == (8 // 4) * 9 * (6 // 2) and size == 8
    assert TilePattern(4, 2).mask_shape(conv.shape) == (8, 6, 3, 3)
    assert TilePattern(1, None).weights_per_group(conv.shape) == 6 * 9  # a whole output channel
    assert TilePattern(None, 2).weights_per_group(conv.shape) == 8 * 9 * 2  # two whole input channels
    grouped, size = NMPattern(2, 4).groups(torch.rand(3, 8))
    assert grouped.shape == (3, 1, 2) and size == 2  # a run of 4 prunes only its 2 lowest
    assert NMPattern(2, 4).weights_per_group((3, 8)) == 2


def test_n_m_local_mask_is_core_ml_tools_ramp() -> None:
    """Ranked alone, n:m follows Core ML Tools: k = int(s · m) zeros per run; unstructured while k == 0."""
    torch.manual_seed(0)
    scores = torch.rand(4, 8)
    pattern = NMPattern(2, 4)
    early = pattern.local_mask(scores, 0.2)  # k = int(0.8) = 0: the 6 lowest of 32, anywhere
    assert int((~early).sum()) == 6 and torch.equal(early, scores > scores.reshape(-1).kthvalue(6).values)
    assert torch.all((~pattern.local_mask(scores, 0.3)).reshape(-1, 4).sum(1) == 1)  # k = 1
    assert torch.equal(pattern.local_mask(scores, 0.5), n_m_mask(scores, (2, 4)))
    assert torch.equal(pattern.local_mask(scores, 0.9), n_m_mask(scores, (2, 4)))  # never beyond n / m
