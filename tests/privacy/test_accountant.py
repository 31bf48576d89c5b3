"""The accountant against dp_accounting itself, calibration, saved state, and input checks."""

from __future__ import annotations

import json
import math
from typing import Any

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from federated.privacy import PrivacyAccountant, calibrate_sigma, compute_epsilon
from federated.privacy.accountant import sampled_gaussian_event

# (q, sigma, steps, delta): DP-SGD-like, DP-FedAvg-like (few rounds, larger q), and full batch.
CASES = [(0.01, 1.1, 1000, 1e-5), (0.05, 0.8, 50, 1e-6), (1.0, 2.0, 10, 1e-5), (0.0032, 1.0, 1000, 1e-5)]


def _library(kind: str, q: float, sigma: float, steps: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    return float(accountant.compose(event).get_epsilon(delta))


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), CASES)
def test_rdp_epsilon_is_the_library_s(q: float, sigma: float, steps: int, delta: float) -> None:
    expected = _library("rdp", q, sigma, steps, delta)
    assert compute_epsilon(q, sigma, steps, delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), CASES[:2])
def test_pld_epsilon_is_the_library_s(q: float, sigma: float, steps: int, delta: float) -> None:
    ours = compute_epsilon(q, sigma, steps, delta, accountant="pld")
    assert ours == pytest.approx(_library("pld", q, sigma, steps, delta), rel=1e-9)
    # PLD is the tighter accountant.
    assert ours <= compute_epsilon(q, sigma, steps, delta, accountant="rdp")


def test_no_noise_is_no_privacy() -> None:
    assert compute_epsilon(0.1, 0.0, 5, 1e-5) == math.inf
    assert compute_epsilon(0.1, 0.0, 5, 1e-5, accountant="pld") == math.inf
    accountant = PrivacyAccountant()
    accountant.record(0.1, 1.0, 10)
    accountant.record(0.1, 0.0)
    assert accountant.epsilon(1e-5) == math.inf


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    base = compute_epsilon(0.01, 1.0, 100, 1e-5)
    assert compute_epsilon(0.01, 1.0, 1000, 1e-5) > base > compute_epsilon(0.01, 2.0, 100, 1e-5)
    assert compute_epsilon(0.001, 1.0, 100, 1e-5) < base  # amplification by sampling


@pytest.mark.parametrize(("target", "q", "steps", "delta"), [(1.0, 0.01, 1000, 1e-5), (8.0, 0.1, 30, 1e-5),
                                                             (0.5, 1.0, 1, 1e-6), (3.0, 0.004, 5000, 1e-7)])
def test_calibrate_sigma_round_trips(target: float, q: float, steps: int, delta: float) -> None:
    sigma = calibrate_sigma(target, q, steps, delta)
    assert compute_epsilon(q, sigma, steps, delta) <= target
    # The smallest such sigma, to the documented relative precision (1e-3).
    assert compute_epsilon(q, sigma * (1 - 2e-3), steps, delta) > target


@pytest.mark.slow
def test_calibrate_sigma_with_pld() -> None:
    sigma = calibrate_sigma(2.0, 0.02, 200, 1e-5, accountant="pld")
    assert compute_epsilon(0.02, sigma, 200, 1e-5, accountant="pld") <= 2.0
    assert compute_epsilon(0.02, sigma * (1 - 2e-3), 200, 1e-5, accountant="pld") > 2.0
    assert sigma < calibrate_sigma(2.0, 0.02, 200, 1e-5)  # PLD needs less noise than RDP says


def test_calibrate_sigma_refuses_an_unreachable_epsilon() -> None:
    with pytest.raises(ValueError, match="not reachable"):
        calibrate_sigma(1e-9, 1.0, 1000, 1e-5)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"q": 0.0}, r"q \(sampling rate\) must be a number in \(0, 1\]"),
    ({"q": 1.5}, r"q \(sampling rate\)"),
    ({"q": float("nan")}, r"q \(sampling rate\)"),
    ({"sigma": -1.0}, r"sigma \(noise multiplier\) must be a finite number >= 0"),
    ({"sigma": float("inf")}, r"sigma \(noise multiplier\)"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": 2.0}, "steps must be an integer >= 1"),
    ({"steps": True}, "steps must be an integer >= 1"),
    ({"delta": 0.0}, r"delta must be a number in \(0, 1\)"),
    ({"delta": 1.0}, r"delta must be a number in \(0, 1\)"),
    ({"accountant": "moments"}, "accountant must be one of rdp, pld"),
])
def test_compute_epsilon_names_the_bad_argument(kwargs: dict[str, Any], problem: str) -> None:
    args: dict[str, Any] = {"q": 0.1, "sigma": 1.0, "steps": 10, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=problem):
        compute_epsilon(**args)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
    ({"epsilon": float("inf")}, "epsilon must be a finite number > 0"),
    ({"q": 0.0}, "q"),
    ({"steps": -3}, "steps"),
    ({"delta": 2.0}, "delta"),
    ({"rtol": 0.0}, "rtol"),
])
def test_calibrate_sigma_names_the_bad_argument(kwargs: dict[str, Any], problem: str) -> None:
    args: dict[str, Any] = {"epsilon": 1.0, "q": 0.1, "steps": 10, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=problem):
        calibrate_sigma(**args)


# ---------------------------------------------------------------------------------------- accountant


def test_accountant_merges_identical_events_and_matches_one_composition() -> None:
    accountant = PrivacyAccountant()
    assert accountant.epsilon(1e-5) == 0.0
    for _ in range(3):
        accountant.record(0.01, 1.1, 100)
    accountant.record(0.02, 0.9, 5)
    accountant.record(0.01, 1.1, 10)
    assert accountant.events == [(0.01, 1.1, 310), (0.02, 0.9, 5)]
    assert accountant.total_steps == 315
    library = rdp.RdpAccountant()
    library.compose(sampled_gaussian_event(0.01, 1.1, 310)).compose(sampled_gaussian_event(0.02, 0.9, 5))
    assert accountant.epsilon(1e-5) == library.get_epsilon(1e-5)


def test_would_spend_does_not_record() -> None:
    accountant = PrivacyAccountant()
    accountant.record(0.01, 1.1, 100)
    before = accountant.epsilon(1e-5)
    ahead = accountant.would_spend(0.01, 1.1, 100, 1e-5)
    assert ahead > before
    assert accountant.epsilon(1e-5) == before and accountant.total_steps == 100
    accountant.record(0.01, 1.1, 100)
    assert accountant.epsilon(1e-5) == ahead
    assert PrivacyAccountant().would_spend(0.01, 1.1, 200, 1e-5) == ahead


@pytest.mark.parametrize("kind", ["rdp", pytest.param("pld", marks=pytest.mark.slow)])
def test_saved_state_rebuilds_the_same_epsilon(kind: str) -> None:
    accountant = PrivacyAccountant(kind)
    accountant.record(0.02, 1.2, 40)
    accountant.record(0.05, 1.0, 3)
    accountant.record(0.02, 1.2, 40)
    state = json.loads(json.dumps(accountant.to_dict()))  # through JSON, as a store would keep it
    rebuilt = PrivacyAccountant.from_dict(state)
    assert rebuilt.kind == kind and rebuilt.events == accountant.events
    assert rebuilt.epsilon(1e-5) == accountant.epsilon(1e-5)
    rebuilt.record(0.05, 1.0, 1)
    accountant.record(0.05, 1.0, 1)
    assert rebuilt.epsilon(1e-6) == accountant.epsilon(1e-6)


@pytest.mark.parametrize(("state", "problem"), [
    ([], "must be a JSON object"),
    ({"version": 2, "kind": "rdp", "events": []}, "version must be 1"),
    ({"version": 1, "kind": "zcdp", "events": []}, "kind must be one of"),
    ({"version": 1, "kind": "rdp", "events": {}}, "'events' must be a list"),
    ({"version": 1, "kind": "rdp", "events": [{"q": 0.1, "sigma": 1.0}]}, "keys q, sigma, steps"),
    ({"version": 1, "kind": "rdp", "events": [{"q": 2, "sigma": 1.0, "steps": 1}]}, r"events\[0\].q"),
    ({"version": 1, "kind": "rdp", "events": [{"q": 0.1, "sigma": 1.0, "steps": 1}] * 2}, "repeats"),
])
def test_from_dict_rejects_bad_state(state: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PrivacyAccountant.from_dict(state)


def test_record_checks_its_arguments() -> None:
    accountant = PrivacyAccountant()
    with pytest.raises(ValueError, match="sampling rate"):
        accountant.record(0.0, 1.0)
    with pytest.raises(ValueError, match="steps"):
        accountant.record(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="delta"):
        accountant.epsilon(0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        PrivacyAccountant("gdp")
    assert accountant.events == []
