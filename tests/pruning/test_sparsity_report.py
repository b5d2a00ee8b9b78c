"""`sparsify.analysis.report`: Core ML Tools' sparsity metrics, checked by hand and against Core ML Tools."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.analysis.report import Report, global_summary, sparsity_summary


def test_worked_example_by_hand() -> None:
    # rows 0-1: blocks (0,0) (1,2) (0,3); rows 2-3: blocks (4,0) (0,0) (0,5) -> 2 zero blocks of 6
    w = torch.tensor([[0.0, 1, 0], [0, 2, 3], [4, 0, 0], [0, 0, 5]])
    assert sparsity_summary(w) == pytest.approx({  # float32 means, hence approx
        "structured_weight_sparsity": 0.0,
        "unstructured_weight_sparsity": 7 / 12,
        "block2_weight_sparsity": 1 / 3,
    })


def test_block2_counts_2x1_blocks_not_channel_pairs() -> None:
    # every block (w[2i, k], w[2i+1, k]) with even k is zero: half the blocks, no channel entirely zero
    w = torch.ones(4, 2, 3, 3)
    w.view(4, -1)[:, ::2] = 0.0
    summary = sparsity_summary(w)
    assert summary["structured_weight_sparsity"] == 0.0
    assert summary["block2_weight_sparsity"] == 9 / 18
    assert summary["unstructured_weight_sparsity"] == 36 / 72


def test_odd_channel_count_is_not_applicable_and_1d_counts_elements() -> None:
    assert sparsity_summary(torch.zeros(3, 4))["block2_weight_sparsity"] == -1
    assert sparsity_summary(torch.tensor([0.0, 0.0, 1.0, 0.0])) == {
        "structured_weight_sparsity": 0.75,
        "unstructured_weight_sparsity": 0.75,
        "block2_weight_sparsity": 0.5,
    }


def test_magnitudes_not_signed_sums() -> None:
    # Core ML Tools sums signed values: the [1, -1] row and the (1, -1) blocks would count as zero
    w = torch.tensor([[1.0, -2.0], [-1.0, 2.0]])
    assert sparsity_summary(w) == {
        "structured_weight_sparsity": 0.0,
        "unstructured_weight_sparsity": 0.0,
        "block2_weight_sparsity": 0.0,
    }


def _coremltools_summary(w: torch.Tensor) -> dict[str, float]:
    from coremltools.optimize.torch.pruning._utils import block2_sparsity, structured_sparsity, unstructured_sparsity

    return {
        "structured_weight_sparsity": structured_sparsity(w),
        "unstructured_weight_sparsity": unstructured_sparsity(w),
        "block2_weight_sparsity": block2_sparsity(w) if w.shape[0] % 2 == 0 else -1,
    }


@pytest.mark.parametrize(
    ("shape", "block_size", "granularity"),
    [((16, 8, 3, 3), 2, "per_scalar"), ((16, 8, 3, 3), 1, "per_scalar"), ((8, 4, 3), 2, "per_channel"),
     ((10, 6, 3, 3), 1, "per_kernel"), ((12, 20), 2, "per_scalar"), ((12, 20), 4, "per_scalar")],
)
def test_equals_coremltools_on_coremltools_masks(shape: tuple[int, ...], block_size: int, granularity: str) -> None:
    from coremltools.optimize.torch.pruning._utils import magnitude_ranked_mask

    gen = torch.Generator().manual_seed(sum(shape) + block_size)
    w = torch.randn(shape, generator=gen).abs() + 0.1  # positive: signed and magnitude sums agree
    masked = w * magnitude_ranked_mask(w, 0.5, block_size, granularity)
    assert sparsity_summary(masked) == pytest.approx(_coremltools_summary(masked))


def test_block_size_2_pruning_reads_its_sparsity() -> None:
    # the case Core ML Tools' test_sparsity_report_method checks: block_size=2 at 0.5 reads 0.5
    model = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.Flatten(), nn.Linear(8 * 22 * 22, 10))
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(target_sparsity=0.5, block_size=2))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    prepared(torch.ones(1, 8, 24, 24))
    report = pruner.report()
    for name in ("0", "2"):
        weight = prepared.get_submodule(name).weight
        assert report[name]["block2_weight_sparsity"] == 0.5
        assert report[name]["block2_weight_sparsity"] == _coremltools_summary(weight)["block2_weight_sparsity"]


def test_global_summary_weights_by_params_and_skips_not_applicable() -> None:
    rows = [
        {"#params": 30, "structured_weight_sparsity": 0.0, "unstructured_weight_sparsity": 0.5,
         "block2_weight_sparsity": -1},
        {"#params": 10, "structured_weight_sparsity": 1.0, "unstructured_weight_sparsity": 1.0,
         "block2_weight_sparsity": 0.25},
    ]
    assert global_summary(rows) == {
        "#params": 40,
        "structured_weight_sparsity": 0.25,
        "unstructured_weight_sparsity": 0.625,
        "block2_weight_sparsity": 0.25,
    }
    only_odd = [dict(rows[0])]
    assert global_summary(only_odd)["block2_weight_sparsity"] == -1


def test_report_prints_coremltools_table_within_100_columns() -> None:
    row = {"#params": 216, "structured_weight_sparsity": 0.0, "unstructured_weight_sparsity": 0.5,
           "block2_weight_sparsity": 0.25}
    assert repr(Report({"conv1": row})).splitlines() == [  # Core ML Tools' table: exactly 100 columns
        " name | #params | structured_weight_sparsity | unstructured_weight_sparsity | block2_weight_sparsity",
        "----- | ------- | -------------------------- | ---------------------------- | ----------------------",
        "conv1 |     216 |                    0.00000 |                      0.50000 |                0.25000",
    ]
    # a six-letter name ("global") would make it 101: the headers split at an underscore instead
    assert repr(Report({"conv1": row, "global": row})).splitlines() == [
        "       |         |     structured_ |   unstructured_ | block2_weight_",
        "  name | #params | weight_sparsity | weight_sparsity |       sparsity",
        "------ | ------- | --------------- | --------------- | --------------",
        " conv1 |     216 |         0.00000 |         0.50000 |        0.25000",
        "global |     216 |         0.00000 |         0.50000 |        0.25000",
    ]
    narrow = Report({"fc": {"#params": 8, "unstructured_weight_sparsity": 0.5}})
    assert repr(narrow).splitlines() == [
        "name | #params | unstructured_weight_sparsity",
        "---- | ------- | ----------------------------",
        "  fc |       8 |                      0.50000",
    ]
