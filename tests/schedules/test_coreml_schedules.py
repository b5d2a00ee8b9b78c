"""Schedulers: Core ML Tools' formulas step by step, parsing, validation, dict round trips."""

import pytest
import torch

from sparsify import ConstantSparsityScheduler, ModuleMagnitudePrunerConfig, PolynomialDecayScheduler
from sparsify.schedules import PruningScheduler, scheduler_from_dict


def _run(scheduler: PruningScheduler, config: ModuleMagnitudePrunerConfig, steps: int) -> list[float]:
    level, out = config.initial_sparsity, []
    for step in range(1, steps + 1):
        level = scheduler.compute_sparsity(step, level, config)
        out.append(level)
    return out


def test_polynomial_matches_core_ml_example() -> None:
    # coremltools' test_pruning_scheduler: update_steps [4, 7, 9], 0 -> 1.0, power 3
    config = ModuleMagnitudePrunerConfig(initial_sparsity=0.0, target_sparsity=1.0)
    levels = _run(PolynomialDecayScheduler(update_steps=[4, 7, 9]), config, 10)
    assert levels == pytest.approx([0, 0, 0, 0, 0, 0, 0.875, 0.875, 1.0, 1.0])


def test_polynomial_formula_and_power() -> None:
    config = ModuleMagnitudePrunerConfig(initial_sparsity=0.2, target_sparsity=0.8)
    levels = _run(PolynomialDecayScheduler(update_steps=[1, 2, 3, 4, 5], power=2), config, 5)
    expected = [0.8 + (0.2 - 0.8) * (1 - i / 4) ** 2 for i in range(5)]
    assert levels == pytest.approx(expected)
    # a single update step jumps straight to the target
    assert _run(PolynomialDecayScheduler(update_steps=[3]), config, 4) == pytest.approx([0.2, 0.2, 0.8, 0.8])


def test_step_zero_is_never_reached_but_spaces_the_schedule() -> None:
    config = ModuleMagnitudePrunerConfig(target_sparsity=0.8)
    scheduler = PolynomialDecayScheduler(update_steps="range(0, 900, 100)")
    assert scheduler.update_steps.tolist() == list(range(0, 900, 100))
    assert scheduler.compute_sparsity(100, 0.0, config) == pytest.approx(0.8 - 0.8 * (1 - 1 / 8) ** 3)
    assert scheduler.compute_sparsity(150, 0.3, config) == 0.3
    assert scheduler.last_step() == 800


@pytest.mark.parametrize(
    ("text", "steps"),
    [("range(3)", [0, 1, 2]), ("range(2, 5)", [2, 3, 4]), ("range( 0 , 10 , 5 )", [0, 5]), (" range(1,2) ", [1])],
)
def test_range_strings_parse_without_eval(text: str, steps: list[int]) -> None:
    assert PolynomialDecayScheduler(update_steps=text).update_steps.tolist() == steps


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("__import__('os').system('true')", "a string must look like 'range"),
        ("range(-1, 4)", "a string must look like 'range"),
        ("range(0, 10, 0)", "range\\(\\) step must not be zero"),
        ([3, 1, 2], "strictly increasing"),
        ([1, 2, 2], "strictly increasing"),
        ([-1, 2], "non-negative"),
        (torch.tensor([[1, 2]]), "1-D"),
        (torch.tensor([1.5, 2.0]), "every step must be an integer"),
        (5, "expected a list"),
    ],
)
def test_update_steps_validation(value: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as info:
        PolynomialDecayScheduler(update_steps=value)
    assert "PolynomialDecayScheduler.update_steps=" in str(info.value)


def test_an_empty_schedule_is_accepted_as_core_ml_tools_does_but_said_to_never_prune(caplog) -> None:
    # Core ML Tools' own tests build update_steps="range(0)"
    scheduler = PolynomialDecayScheduler(update_steps="range(0)")
    assert scheduler.update_steps.tolist() == []
    assert "never prunes" in caplog.text
    assert scheduler.compute_sparsity(1, 0.0, ModuleMagnitudePrunerConfig()) == 0.0
    assert scheduler.last_step() == 0


def test_update_steps_accepts_tensors_and_ranges() -> None:
    assert PolynomialDecayScheduler(torch.tensor([1.0, 5.0])).update_steps.tolist() == [1, 5]
    assert PolynomialDecayScheduler(range(2, 8, 3)).update_steps.tolist() == [2, 5]
    assert PolynomialDecayScheduler([1, 2]) == PolynomialDecayScheduler(torch.tensor([1, 2]))


def test_power_validation() -> None:
    with pytest.raises(ValueError, match=r"PolynomialDecayScheduler.power=0 is invalid: allowed 1 <= power"):
        PolynomialDecayScheduler([1], power=0)
    with pytest.raises(TypeError, match="expected an integer"):
        PolynomialDecayScheduler([1], power=2.5)
    assert PolynomialDecayScheduler([1], power=2.0).power == 2


def test_constant_scheduler() -> None:
    config = ModuleMagnitudePrunerConfig(target_sparsity=0.6)
    assert _run(ConstantSparsityScheduler(begin_step=3), config, 5) == [0.0, 0.0, 0.6, 0.6, 0.6]
    assert _run(ConstantSparsityScheduler(begin_step=0), config, 1) == [0.6]
    with pytest.raises(ValueError, match="ConstantSparsityScheduler.begin_step=-1 is invalid"):
        ConstantSparsityScheduler(begin_step=-1)


def test_abstract_base_cannot_be_built() -> None:
    with pytest.raises(TypeError):
        PruningScheduler()  # type: ignore[abstract]


def test_scheduler_dicts() -> None:
    poly = PolynomialDecayScheduler([1, 4], power=2)
    assert poly.as_dict() == {"update_steps": [1, 4], "power": 2}
    assert scheduler_from_dict(poly.as_dict()) == poly
    assert scheduler_from_dict({"begin_step": 3}) == ConstantSparsityScheduler(3)
    assert scheduler_from_dict({"kind": "constant", "begin_step": 3}) == ConstantSparsityScheduler(3)
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'begin_step' for PolynomialDecayScheduler"):
        scheduler_from_dict({"update_steps": [1], "begin_step": 2})
    with pytest.raises(ValueError, match="cannot tell which scheduler"):
        scheduler_from_dict({})
    with pytest.raises(ValueError, match="scheduler kind='nope' is unknown"):
        scheduler_from_dict({"kind": "nope"})
