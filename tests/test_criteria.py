"""Criteria: formulas on tiny tensors, INC's snip-momentum coefficients, |W| not signed W, dict building."""

from __future__ import annotations

import pytest
import torch

from sparsify.criteria import (
    GradientCriterion,
    MagnitudeCriterion,
    SnipCriterion,
    SnipMomentumCriterion,
    criterion_from_dict,
    criterion_kinds,
)

W = torch.tensor([[-3.0, 0.5], [2.0, -0.1]])
G = torch.tensor([[0.1, -4.0], [-0.5, 2.0]])


def test_magnitude_is_absolute_value() -> None:
    # INC issue #592: a signed score prunes large negative weights first
    scores = MagnitudeCriterion().scores(None, W)
    assert torch.equal(scores, W.abs())
    assert scores.tolist()[0] == [3.0, 0.5]
    assert MagnitudeCriterion().update(None, W, G) is None
    assert not MagnitudeCriterion.needs_gradients


def test_gradient_and_snip_use_the_latest_step() -> None:
    state = GradientCriterion().update(None, W, G)
    assert torch.equal(GradientCriterion().scores(state, W), G.abs())
    state = SnipCriterion().update(None, W, G)
    assert torch.allclose(SnipCriterion().scores(state, W), torch.tensor([[0.3, 2.0], [1.0, 0.2]]))
    later = SnipCriterion().update(state, W, 2 * G)  # no memory of earlier steps
    assert torch.allclose(later, 2 * state)


def test_snip_momentum_uses_inc_code_coefficients() -> None:
    # INC code: S <- 0.9 * S + 1.0 * |W * G|  (its README swaps them: S <- 1.0 * S + 0.9 * |W * G|)
    criterion = SnipMomentumCriterion()
    assert (criterion.decay, criterion.gain) == (0.9, 1.0)
    w = torch.tensor([2.0])
    s1 = criterion.update(None, w, torch.tensor([1.0]))  # 0.9 * 0 + |2 * 1| = 2
    s2 = criterion.update(s1, w, torch.tensor([-3.0]))  # 0.9 * 2 + |2 * -3| = 7.8
    s3 = criterion.update(s2, w, torch.tensor([0.5]))  # 0.9 * 7.8 + 1 = 8.02
    assert [s1.item(), s2.item(), s3.item()] == pytest.approx([2.0, 7.8, 8.02])
    assert s1 is not s2  # the state is not modified in place
    custom = SnipMomentumCriterion(decay=0.5, gain=2.0)
    twice = custom.update(custom.update(None, w, torch.tensor([1.0])), w, torch.tensor([1.0]))
    assert twice.item() == pytest.approx(0.5 * 4.0 + 2.0 * 2.0)


def test_gradient_criteria_refuse_to_score_without_a_gradient() -> None:
    for criterion in (GradientCriterion(), SnipCriterion(), SnipMomentumCriterion()):
        assert criterion.needs_gradients
        with pytest.raises(RuntimeError, match="has seen no gradient"):
            criterion.scores(None, W)


def test_from_dict_and_round_trip() -> None:
    assert set(criterion_kinds()) >= {"magnitude", "gradient", "snip", "snip_momentum"}
    assert criterion_from_dict("snip") == SnipCriterion()
    built = criterion_from_dict({"kind": "snip_momentum", "decay": 0.8})
    assert built == SnipMomentumCriterion(decay=0.8, gain=1.0)
    assert criterion_from_dict(built.as_dict()) == built
    assert criterion_from_dict(built) is built
    with pytest.raises(ValueError, match="kind='movement' is unknown"):
        criterion_from_dict("movement")
    with pytest.raises(ValueError, match="unknown key.*'alpha'"):
        criterion_from_dict({"kind": "snip_momentum", "alpha": 0.9})
    with pytest.raises(ValueError, match="decay"):
        SnipMomentumCriterion(decay=-1.0)
    with pytest.raises(TypeError):
        criterion_from_dict(3)
