"""PrivacyBudgetTracker: cumulative and per-round records, the pre-round check, saved state."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from federated.privacy import PrivacyAccountant, PrivacyBudgetTracker


def test_seed_readme_usage() -> None:
    tracker = PrivacyBudgetTracker(max_epsilon=1.0)
    tracker.record_round(round_id=0, epsilon=0.1, delta=1e-5)
    status = tracker.get_budget_status()
    assert status == {"spent_epsilon": 0.1, "remaining_epsilon": 0.9, "max_epsilon": 1.0, "delta": 1e-5,
                      "spent_delta": 1e-5, "rounds": 1, "last_round": 0, "exceeded": False}
    assert not tracker.is_budget_exceeded()


def test_cumulative_records_take_the_latest_value_not_the_sum() -> None:
    tracker = PrivacyBudgetTracker(max_epsilon=2.0, delta=1e-5)
    accountant = PrivacyAccountant()
    for round_id in range(1, 6):
        accountant.record(0.1, 1.5, 10)
        tracker.record_round(round_id, accountant.epsilon(1e-5), 1e-5)
    assert tracker.spent_epsilon == accountant.epsilon(1e-5)
    assert tracker.get_budget_status()["rounds"] == 5
    with pytest.raises(ValueError, match="below"):
        tracker.record_round(6, 0.01, 1e-5)


def test_the_check_before_a_round_uses_what_the_accountant_would_report() -> None:
    tracker = PrivacyBudgetTracker(max_epsilon=1.0)
    accountant = PrivacyAccountant()
    round_id = 0
    while not tracker.would_exceed(accountant.would_spend(0.05, 2.0, 5, tracker.delta)):
        accountant.record(0.05, 2.0, 5)
        tracker.record_round(round_id, accountant.epsilon(tracker.delta), tracker.delta)
        round_id += 1
    assert round_id > 5  # several rounds fit, then the next one is refused before it starts
    assert tracker.spent_epsilon <= 1.0 and not tracker.is_budget_exceeded()
    assert accountant.would_spend(0.05, 2.0, 5, tracker.delta) > 1.0


def test_exceeded_means_above_the_budget() -> None:
    tracker = PrivacyBudgetTracker(max_epsilon=1.0)
    tracker.record_round(0, 1.0, 1e-5)
    assert not tracker.is_budget_exceeded() and tracker.get_budget_status()["remaining_epsilon"] == 0.0
    assert tracker.would_exceed(1.0001) and not tracker.would_exceed(1.0)
    assert tracker.would_exceed(0.5, delta=1e-4)  # the delta budget counts too
    tracker.record_round(1, 1.2, 1e-5)
    assert tracker.is_budget_exceeded() and tracker.get_budget_status()["exceeded"]
    assert tracker.get_budget_status()["remaining_epsilon"] == 0.0


def test_per_round_records_add_up_under_basic_composition() -> None:
    tracker = PrivacyBudgetTracker(max_epsilon=1.0, delta=1e-4)
    tracker.record_round(0, 0.3, 1e-6, cumulative=False)
    tracker.record_round(2, 0.3, 1e-6, cumulative=False)
    assert tracker.spent_epsilon == pytest.approx(0.6) and tracker.spent_delta == pytest.approx(2e-6)
    assert tracker.would_exceed(0.5) and not tracker.would_exceed(0.4)
    with pytest.raises(ValueError, match="cannot mix"):
        tracker.record_round(3, 0.9, 1e-6)


@pytest.mark.parametrize(("args", "problem"), [
    ((0, -0.1, 1e-5), "epsilon must be a finite number >= 0"),
    ((0, math.inf, 1e-5), "epsilon must be a finite number >= 0"),
    ((0, math.nan, 1e-5), "epsilon must be a finite number >= 0"),
    ((0, 0.1, 0.0), r"delta must be a number in \(0, 1\)"),
    ((0, 0.1, math.nan), r"delta must be a number in \(0, 1\)"),
    ((-1, 0.1, 1e-5), "round_id must be an integer >= 0"),
    ((True, 0.1, 1e-5), "round_id must be an integer >= 0"),
])
def test_record_round_rejects_bad_values(args: tuple[Any, ...], problem: str) -> None:
    tracker = PrivacyBudgetTracker(1.0)
    with pytest.raises(ValueError, match=problem):
        tracker.record_round(*args)
    assert tracker.get_budget_status()["rounds"] == 0


def test_round_ids_must_increase() -> None:
    tracker = PrivacyBudgetTracker(1.0)
    tracker.record_round(3, 0.1, 1e-5)
    with pytest.raises(ValueError, match="not after the last recorded round 3"):
        tracker.record_round(3, 0.2, 1e-5)


@pytest.mark.parametrize(("max_epsilon", "delta", "problem"), [
    (0.0, 1e-5, "max_epsilon must be > 0"),
    (-1.0, 1e-5, "max_epsilon must be a finite number"),
    (math.inf, 1e-5, "max_epsilon must be a finite number"),
    (1.0, 1.0, "delta must be"),
])
def test_budget_must_be_sensible(max_epsilon: float, delta: float, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PrivacyBudgetTracker(max_epsilon, delta)


def test_would_exceed_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyBudgetTracker(1.0).would_exceed(math.nan)


@pytest.mark.parametrize("cumulative", [True, False])
def test_state_round_trip(cumulative: bool) -> None:
    tracker = PrivacyBudgetTracker(3.0, delta=1e-4)
    for round_id, epsilon in [(1, 0.5), (2, 0.9), (4, 1.4)]:
        tracker.record_round(round_id, epsilon, 1e-6, cumulative=cumulative)
    restored = PrivacyBudgetTracker.from_dict(json.loads(json.dumps(tracker.to_dict())))
    assert restored.get_budget_status() == tracker.get_budget_status()
    assert restored.to_dict() == tracker.to_dict()
    empty = PrivacyBudgetTracker.from_dict(PrivacyBudgetTracker(1.0).to_dict())
    assert empty.get_budget_status()["last_round"] is None
    with pytest.raises(ValueError, match="keys"):
        PrivacyBudgetTracker.from_dict({"max_epsilon": 1.0})
    with pytest.raises(ValueError, match="cumulative"):
        PrivacyBudgetTracker.from_dict(tracker.to_dict() | {"cumulative": None})
