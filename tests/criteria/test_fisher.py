"""Inverse-Fisher estimators against SparseML's literal M-FAC recursion and an explicit inverse."""

import math

import numpy as np
import pytest
import torch

from sparsify.criteria import fisher
from sparsify.criteria.fisher import FisherInverse, MemoryBudgetError, available_memory, plan_memory


def _grads(m: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, d, dtype=torch.float64)[torch.randperm(d, generator=g)]  # heavy-tailed Fisher
    return (torch.randn(m, d, generator=g, dtype=torch.float64) * scales).to(dtype)


def _explicit_inverse(grads: torch.Tensor, lam: float, block_size: int | None = None) -> np.ndarray:
    """``inv(λI + GᵀG/m)`` with numpy, block-diagonal when ``block_size`` is given."""
    g = grads.double().numpy()
    m, d = g.shape
    fisher_matrix = lam * np.eye(d) + g.T @ g / m
    if block_size is not None:
        keep = np.zeros((d, d), dtype=bool)
        for start in range(0, d, block_size):
            keep[start : start + block_size, start : start + block_size] = True
        fisher_matrix = np.where(keep, fisher_matrix, 0.0)
    return np.linalg.inv(fisher_matrix)


def _sparseml_recursion(grads: torch.Tensor, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """SparseML's FisherInverseFast, literally: returns (diag(F⁻¹), the v_k / d_k factors)."""
    g = grads.double().numpy()
    m = g.shape[0]
    big = 1.0 / lam
    vs, ds = [], []
    for k in range(m):
        v = big * g[k]
        for vj, dj in zip(vs, ds):
            v = v - (vj @ g[k]) / dj * vj
        vs.append(v)
        ds.append(m + g[k] @ v)
    diag = big - sum(v**2 / dv for v, dv in zip(vs, ds))
    return diag, (np.array(vs), np.array(ds))


def test_dense_matches_the_literal_sparseml_recursion() -> None:
    grads = _grads(20, 50)
    diag, (vs, ds) = _sparseml_recursion(grads, 1e-2)
    inv = FisherInverse(grads.clone(), 1e-2, damp_mode="absolute")
    np.testing.assert_allclose(inv.diag().numpy(), diag, rtol=1e-9)
    x = torch.randn(50, dtype=torch.float64)
    expected = x.numpy() / 1e-2 - ((vs @ x.numpy()) / ds) @ vs
    np.testing.assert_allclose(inv.mul(x).numpy(), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("m", "d", "block_size"),
    [(20, 50, None), (20, 50, 7), (20, 50, 30), (5, 50, 10), (20, 50, 20), (3, 10, 1), (8, 40, 40), (30, 12, None)],
)
def test_diag_and_product_match_an_explicit_inverse(m: int, d: int, block_size: int | None) -> None:
    grads = _grads(m, d, seed=m + d)
    expected = _explicit_inverse(grads, 1e-2, block_size)
    inv = FisherInverse(grads.clone(), 1e-2, damp_mode="absolute", block_size=block_size)
    np.testing.assert_allclose(inv.diag().numpy(), np.diag(expected), rtol=1e-8)
    x = torch.randn(d, dtype=torch.float64)
    np.testing.assert_allclose(inv.mul(x).numpy(), expected @ x.numpy(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("block_size", [None, 16, 4])
def test_float32_buffers_stay_accurate(block_size: int | None) -> None:
    grads = _grads(24, 96, dtype=torch.float32)
    expected = _explicit_inverse(grads, 1e-3, block_size)
    inv = FisherInverse(grads.clone(), 1e-3, damp_mode="absolute", block_size=block_size)
    assert inv.diag().dtype == torch.float32
    np.testing.assert_allclose(inv.diag().double().numpy(), np.diag(expected), rtol=1e-4)
    x = torch.randn(96)
    got = inv.mul(x).double().numpy()
    want = expected @ x.double().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_chunked_sweeps_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    grads = _grads(6, 90)
    expected_dense = _explicit_inverse(grads, 1e-2)
    expected_blocks = _explicit_inverse(grads, 1e-2, 10)
    monkeypatch.setattr(fisher, "_CHUNK_BYTES", 200)  # a few columns / one block per chunk
    dense = FisherInverse(grads.clone(), 1e-2, damp_mode="absolute")
    blocks = FisherInverse(grads.clone(), 1e-2, damp_mode="absolute", block_size=10)
    x = torch.randn(90, dtype=torch.float64)
    np.testing.assert_allclose(dense.diag().numpy(), np.diag(expected_dense), rtol=1e-8)
    np.testing.assert_allclose(dense.mul(x).numpy(), expected_dense @ x.numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(blocks.diag().numpy(), np.diag(expected_blocks), rtol=1e-8)
    np.testing.assert_allclose(blocks.mul(x).numpy(), expected_blocks @ x.numpy(), rtol=1e-7, atol=1e-9)


def test_factor_is_written_over_the_gradient_buffer() -> None:
    grads = _grads(10, 40)
    buffer = grads.clone()
    inv = FisherInverse(buffer, 1e-2, damp_mode="absolute")
    # the buffer now holds W with diag(F⁻¹) = Λ − Σ_j W_ji² and F⁻¹ = ΛI − WᵀW
    np.testing.assert_allclose(inv.diag().numpy(), (1 / 1e-2 - buffer.pow(2).sum(0)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        (torch.eye(40, dtype=torch.float64) / 1e-2 - buffer.T @ buffer).numpy(), _explicit_inverse(grads, 1e-2),
        rtol=1e-7, atol=1e-9,
    )


def test_devices_split_the_blocks_without_changing_the_result() -> None:
    grads = _grads(8, 70)
    one = FisherInverse(grads.clone(), 1e-2, block_size=10)
    two = FisherInverse(grads.clone(), 1e-2, block_size=10, devices=["cpu", "cpu"])
    assert [r.count for r in two._runs] == [4, 3]
    torch.testing.assert_close(one.diag(), two.diag())
    x = torch.randn(70, dtype=torch.float64)
    torch.testing.assert_close(one.mul(x), two.mul(x))


def test_relative_damping_scales_with_the_fisher() -> None:
    grads = _grads(12, 30)
    scale = float(grads.pow(2).sum()) / (12 * 30)
    inv = FisherInverse(grads.clone(), 0.05)
    assert inv.fisher_scale == pytest.approx(scale)
    assert inv.damp == pytest.approx(0.05 * scale)
    assert inv.damp_ratio == pytest.approx(0.05)
    np.testing.assert_allclose(inv.diag().numpy(), np.diag(_explicit_inverse(grads, 0.05 * scale)), rtol=1e-8)
    # the same relative damping on gradients scaled by 1e-6: the inverse scales by 1e12, ranks unchanged
    tiny = FisherInverse(grads.clone() * 1e-6, 0.05)
    np.testing.assert_allclose(tiny.diag().numpy() * 1e-12, inv.diag().numpy(), rtol=1e-6)


def test_absolute_damping_that_dwarfs_the_fisher_warns_and_collapses(sparsify_logs: pytest.LogCaptureFixture) -> None:
    grads = _grads(16, 40) * 1e-6  # Fisher diagonal ~1e-11, as on a converged model
    inv = FisherInverse(grads.clone(), 1e-5, damp_mode="absolute")
    assert inv.damp_ratio > fisher.DAMP_WARN_RATIO
    assert "damping dominates" in sparsify_logs.text and "damp_mode='relative'" in sparsify_logs.text
    np.testing.assert_allclose(inv.diag().numpy(), 1e5, rtol=1e-4)  # [F⁻¹]ᵢᵢ ≈ 1/damp: magnitude ranking
    sparsify_logs.clear()
    FisherInverse(grads.clone(), 0.01)
    assert "damping dominates" not in sparsify_logs.text


def test_zero_gradients_warn_and_leave_the_damping(sparsify_logs: pytest.LogCaptureFixture) -> None:
    inv = FisherInverse(torch.zeros(4, 9), 0.5)
    assert "every gradient is zero" in sparsify_logs.text
    assert inv.damp_ratio == math.inf
    torch.testing.assert_close(inv.diag(), torch.full((9,), 2.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"damp": 0.0}, "damp=0.0 is invalid"),
        ({"damp": float("nan")}, "damp=nan is invalid"),
        ({"damp_mode": "percent"}, "damp_mode='percent' is invalid: allowed values are 'relative', 'absolute'"),
        ({"block_size": 0}, "block_size=0 is invalid"),
        ({"block_size": True}, "block_size=True is invalid"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FisherInverse(torch.randn(3, 5), **kwargs)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape \\(num_grads, dim\\)"):
        FisherInverse(torch.randn(5), 0.1)
    with pytest.raises(ValueError, match="x must have shape \\(5,\\)"):
        FisherInverse(torch.randn(3, 5), 0.1).mul(torch.randn(4))


def test_memory_plan_counts_the_buffer_and_blocks() -> None:
    plan = plan_memory(256, 1_000_000, 2000, budget=None)
    assert plan.grad_buffer == 256 * 1_000_000 * 4
    assert plan.fisher_blocks == 0  # B > m: factored in place
    small = plan_memory(512, 10_000, 100, budget=None)
    assert small.fisher_blocks == 100 * 100 * 100 * 4  # d/B blocks of B×B
    assert plan.fits and "gradient buffer 256 × 1,000,000 × 4 B" in str(plan)
    assert plan_memory(4, 10, dtype=torch.float64, budget=None).grad_buffer == 4 * 10 * 8


def test_memory_plan_refuses_with_a_suggestion() -> None:
    plan = plan_memory(256, 1_000_000, budget=200 * 2**20)
    assert not plan.fits
    fit = plan.max_num_grads()
    assert 0 < fit < 256
    with pytest.raises(MemoryBudgetError, match=f"num_grads <= {fit}"):
        plan.check()
    assert plan_memory(fit, 1_000_000, budget=200 * 2**20).fits
    blocks = plan_memory(512, 100_000, 100, budget=10 * 2**20)
    with pytest.raises(MemoryBudgetError, match="fisher_block_size above num_grads=512"):
        blocks.check()


def test_memory_budget_fraction_reads_available_ram() -> None:
    assert available_memory() > 0
    plan = plan_memory(2, 3, budget=0.25)
    assert 0 < plan.budget <= available_memory() and "25% of" in plan.budget_source
    for bad in (0.0, 1.5, -3, True, "half"):
        with pytest.raises(ValueError, match="memory_budget="):
            plan_memory(2, 3, budget=bad)
