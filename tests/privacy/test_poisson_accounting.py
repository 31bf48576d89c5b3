"""User-level DP with Poisson client sampling (issue 15): the ledger's accounting is dp-accounting's
Poisson-subsampled Gaussian, computed here directly from the library for known (q, z, rounds); epsilon
grows with q and with the rounds; only central DP claims the amplification."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.config import FederatedConfig, PrivacyConfig, SecureConfig
from federated.privacy import compute_epsilon
from federated.privacy.ledger import PrivacyLedger

DELTA = 1e-5


def _poisson(q: float, *, mode: str = "central", num_clients: int = 100, **privacy: object) -> FederatedConfig:
    return FederatedConfig(num_clients=num_clients, selection="poisson", client_sampling_rate=q, num_rounds=50,
                           privacy=PrivacyConfig(mode=mode, **privacy))  # type: ignore[arg-type]


def _library_epsilon(q: float, z: float, rounds: int, kind: str) -> float:
    """dp-accounting alone: ``rounds`` compositions of a Poisson(q)-sampled Gaussian(z)."""
    accountant = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize(("q", "z", "rounds", "kind"), [
    (0.3, 0.8, 5, "rdp"),
    pytest.param(0.01, 1.0, 40, "rdp", marks=pytest.mark.slow),
    pytest.param(0.05, 1.3, 40, "rdp", marks=pytest.mark.slow),
    pytest.param(0.1, 4.3, 30, "rdp", marks=pytest.mark.slow),
    pytest.param(0.05, 1.3, 6, "pld", marks=pytest.mark.slow),
])
def test_central_poisson_rounds_are_charged_as_dp_accountings_subsampled_gaussian(
        q: float, z: float, rounds: int, kind: str) -> None:
    ledger = PrivacyLedger(_poisson(q, noise_multiplier=z, accountant=kind))
    assert ledger.amplified and (ledger.q, ledger.steps) == (q, 1)
    for _ in range(rounds):
        spent = ledger.charge_round()
    expected = _library_epsilon(q, z, rounds, kind)
    assert spent == pytest.approx(expected, rel=1e-9)
    # And below the unamplified charge of the same rounds (q = 1), which a fixed-size cohort pays.
    assert spent < compute_epsilon(1.0, z, rounds, DELTA, kind)


def test_the_budget_check_before_a_round_is_the_next_rounds_library_epsilon() -> None:
    ledger = PrivacyLedger(_poisson(0.05, noise_multiplier=1.1))
    for rounds in range(1, 4):
        assert ledger.next_round_epsilon() == pytest.approx(_library_epsilon(0.05, 1.1, rounds, "rdp"), rel=1e-9)
        ledger.charge_round()


def test_a_calibrated_sigma_fits_the_planned_rounds_at_the_poisson_rate() -> None:
    config = FederatedConfig(num_clients=1000, selection="poisson", client_sampling_rate=0.1, num_rounds=100,
                             privacy_budget=1.0, privacy=PrivacyConfig(mode="central"))
    ledger = PrivacyLedger(config)
    assert ledger.calibrated
    assert _library_epsilon(0.1, ledger.sigma, 100, "rdp") <= 1.0 < _library_epsilon(0.1, ledger.sigma * 0.99,
                                                                                     100, "rdp")


def test_the_denominator_is_the_expected_cohort_not_the_largest() -> None:
    ledger = PrivacyLedger(_poisson(0.05, num_clients=1000, noise_multiplier=1.0))
    assert ledger.expected_cohort == pytest.approx(50.0)
    assert ledger.planned == 1000  # the largest cohort, for bounds only
    fixed = PrivacyLedger(FederatedConfig(num_clients=1000, clients_per_round=50,
                                          privacy=PrivacyConfig(mode="central", noise_multiplier=1.0)))
    assert fixed.expected_cohort == 50.0 and not fixed.amplified and fixed.q == 1.0


def test_the_summary_says_which_guarantee_the_epsilon_is() -> None:
    amplified = PrivacyLedger(_poisson(0.05, noise_multiplier=1.0)).summary()
    assert amplified["amplified"] is True and amplified["client_sampling_rate"] == 0.05
    assert "amplified by Poisson" in amplified["guarantee"] and "not against the trusted broker" in amplified["guarantee"]
    fixed = PrivacyLedger(FederatedConfig(privacy=PrivacyConfig(mode="central", noise_multiplier=1.0))).summary()
    assert fixed["amplified"] is False and fixed["client_sampling_rate"] is None
    assert "q = 1" in fixed["guarantee"]


def test_record_mode_claims_no_amplification_from_client_sampling() -> None:
    ledger = PrivacyLedger(_poisson(0.05, mode="record", noise_multiplier=1.0, sampling_rate=0.25))
    assert not ledger.amplified and ledger.q == 0.25  # DP-SGD's own rate, every round in full
    assert "no amplification by client sampling" in ledger.guarantee


def test_distributed_mode_is_charged_without_amplification_against_the_broker() -> None:
    secure = SecureConfig(enabled=True)
    poisson = PrivacyLedger(FederatedConfig(num_clients=12, selection="poisson", client_sampling_rate=0.5,
                                            min_clients=3, num_rounds=5, secure=secure,
                                            privacy=PrivacyConfig(mode="distributed", noise_multiplier=1.0)))
    assert not poisson.amplified and poisson.q == 1.0
    assert "the broker included" in poisson.guarantee and "no amplification" in poisson.guarantee
    # The noise is sized for the smallest sum any realised cohort (3 to all 12 workers) can reveal.
    fixed = PrivacyLedger(FederatedConfig(num_clients=12, min_clients=3, num_rounds=5, secure=secure,
                                          privacy=PrivacyConfig(mode="distributed", noise_multiplier=1.0)))
    assert poisson.min_survivors == fixed.min_survivors
    assert poisson.charge_round() == pytest.approx(fixed.charge_round(), rel=1e-9)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(q=st.floats(0.005, 0.5), factor=st.floats(1.2, 2.0), rounds=st.integers(1, 60),
       z=st.floats(0.8, 5.0))
def test_epsilon_grows_with_the_sampling_rate_and_with_the_rounds(q: float, factor: float, rounds: int,
                                                                   z: float) -> None:
    eps = compute_epsilon(q, z, rounds, DELTA)
    assert compute_epsilon(min(1.0, q * factor), z, rounds, DELTA) > eps
    assert compute_epsilon(q, z, rounds + 1, DELTA) >= eps
