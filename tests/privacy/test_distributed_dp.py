"""Distributed DP under secure aggregation: the ledger's plan, the workers' encoded noise shares, and the
exactness of the secure sum with noise."""

from __future__ import annotations

import numpy as np
import pytest

from federated.config import FederatedConfig, PrivacyConfig, SecureConfig
from federated.crypto.fixedpoint import decode_sum
from federated.crypto.secagg_input import EXTRA_COORDINATES
from federated.privacy.ledger import PrivacyLedger
from federated.privacy.skellam import check_no_wrap_with_noise, skellam_epsilon, skellam_sensitivities
from federated.worker.secure import encode_input

DIM = 4810


def _config(**privacy: object) -> FederatedConfig:
    budget = privacy.pop("budget", None)
    return FederatedConfig(num_clients=10, num_rounds=20, min_clients=5, privacy_budget=budget,
                           secure=SecureConfig(enabled=True), privacy=PrivacyConfig(mode="distributed", **privacy))


def test_the_ledger_plans_noise_for_the_smallest_revealed_sum_and_a_scale_that_cannot_wrap() -> None:
    ledger = PrivacyLedger(_config(noise_multiplier=1.5, clip=0.5), dim=DIM)
    scale = 2.0**ledger.frac_bits
    # A round may start with min_clients = 5 workers, whose threshold is 3 (a majority of 4 neighbours):
    # 3 shares reach std sigma * clip * scale (tests/privacy/test_noise_sizing.py has the reason).
    assert ledger.min_survivors == 3
    assert 2 * 3 * ledger.skellam_mu == pytest.approx((1.5 * 0.5 * scale) ** 2)
    check_no_wrap_with_noise(10, 0.5, 1, ledger.frac_bits, 10 * ledger.skellam_mu, DIM, 1e-9 / 20)
    l1, l2 = skellam_sensitivities(0.5, scale, DIM, weight_coordinate=False)
    assert ledger.next_round_epsilon() == pytest.approx(skellam_epsilon(l1, l2, 3 * ledger.skellam_mu, 1, 1e-5))
    ledger.charge_round()
    ledger.charge_round()
    assert ledger.epsilon() == pytest.approx(skellam_epsilon(l1, l2, 3 * ledger.skellam_mu, 2, 1e-5))


def test_calibration_fits_the_budget_over_the_planned_rounds() -> None:
    ledger = PrivacyLedger(_config(budget=4.0), dim=DIM)
    assert ledger.calibrated
    assert ledger._skellam_epsilon(ledger.sigma, 20) <= 4.0 < ledger._skellam_epsilon(ledger.sigma * 0.99, 20)


def _params(ledger: PrivacyLedger, config: FederatedConfig) -> object:
    params = config.secure.round_params(10, DIM + EXTRA_COORDINATES)
    return type(params)(params.threshold, params.degree, ledger.clip, 1, ledger.frac_bits, 10, DIM + EXTRA_COORDINATES)


def test_the_workers_noise_sums_to_the_intended_variance_and_the_sum_is_exact() -> None:
    config = _config(noise_multiplier=1.0, clip=1.0)
    ledger = PrivacyLedger(config, dim=DIM)
    params = _params(ledger, config)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(10):
        update = {"w": rng.normal(size=DIM).astype(np.float32)}  # norm ~70, clipped to 1
        encoded.append(encode_input(update, {"loss": 2.0, "accuracy": 0.5}, 300, params, skellam_mu=ledger.skellam_mu))
    wrapped = np.zeros(DIM + EXTRA_COORDINATES, np.uint32)
    for e in encoded:
        wrapped += e  # mod 2^32, as the masked sum is
    exact = np.sum([e.view(np.int32).astype(np.int64) for e in encoded], axis=0)
    assert np.array_equal(wrapped.view(np.int32).astype(np.int64), exact)  # no wrap: the sum is exact
    data, weight = decode_sum(wrapped, ledger.frac_bits)
    assert weight == 10  # unweighted: one per worker, whatever its sample count
    assert not data[DIM:].any()  # no un-noised loss, accuracy or evaluation score leaves a worker
    # Noise: the data (norm <= 10) is small next to it; its std is sqrt(10 shares * 2 mu) / scale.
    expected = np.sqrt(10 * 2 * ledger.skellam_mu) / 2.0**ledger.frac_bits
    assert data[:-2].std() == pytest.approx(expected, rel=0.05)
