"""Distributed DP's noise is sized for the smallest sum the broker can see unmasked (issue 13, item 13).

Secure aggregation unmasks the sum of any ``t`` survivors (``t`` the round's threshold); ``min_clients`` is
checked by the broker after it holds the sum. The old ledger sized each worker's Skellam share so that
``min_clients`` shares reached the charged noise, so with ``min_clients > t`` the broker could learn sums
carrying less noise than was charged (e.g. 10 workers, ``min_clients`` 8: a cohort of 8 has threshold 4,
and a sum of 4 carried half the accounted variance). For every cohort size a round can start with, the
per-worker ``mu`` times that cohort's threshold must reach the charged noise, and the epsilon of that
least-noised sum must not exceed the epsilon charged.
"""

from __future__ import annotations

import pytest

from federated.config import FederatedConfig, PrivacyConfig, SecureConfig
from federated.privacy.ledger import PrivacyLedger, smallest_revealed_sum
from federated.privacy.skellam import skellam_epsilon, skellam_sensitivities

DIM = 4810  # the built-in MLP


def _config(n: int, min_clients: int, *, threshold: int | None = None, neighbors: int | None = None,
            sigma: float | None = 1.0, budget: float | None = None) -> FederatedConfig:
    return FederatedConfig(num_clients=n, num_rounds=10, min_clients=min_clients, privacy_budget=budget,
                           secure=SecureConfig(enabled=True, threshold=threshold, neighbors=neighbors),
                           privacy=PrivacyConfig(mode="distributed", noise_multiplier=sigma, clip=1.0))


def _cohort_thresholds(config: FederatedConfig) -> dict[int, int]:
    """Each cohort size a distributed-DP round can start with (the coordinator starts with
    ``min(clients_per_round, live)`` workers, at least ``max(min_clients, 3)``), and its threshold."""
    return {c: config.secure.round_params(c, vector_length=1).threshold
            for c in range(max(config.min_clients, 3), config.clients_per_round + 1)}


CASES = [
    pytest.param(_config(10, 8), id="n10-min8"),  # the README's advice: raise min_clients above t
    pytest.param(_config(10, 5), id="n10-min5"),
    pytest.param(_config(10, 2), id="n10-min2"),
    pytest.param(_config(10, 8, threshold=5), id="n10-min8-t5"),
    pytest.param(_config(40, 40, neighbors=8), id="n40-min40-k8"),
    pytest.param(_config(100, 50), id="n100-min50"),
    pytest.param(_config(10, 8, sigma=None, budget=8.0), id="n10-min8-calibrated"),
]


@pytest.mark.parametrize("config", CASES)
def test_every_revealable_sum_carries_the_charged_noise(config: FederatedConfig) -> None:
    ledger = PrivacyLedger(config, dim=DIM)
    scale = 2.0**ledger.frac_bits
    target = (ledger.sigma * ledger.clip * scale) ** 2  # the variance charged, per coordinate
    charged = ledger.next_round_epsilon()
    l1, l2 = skellam_sensitivities(ledger.clip, scale, DIM, weight_coordinate=False)
    for cohort, t in _cohort_thresholds(config).items():
        revealed = min(t, config.min_clients)  # the fewest inputs a sum of this cohort can be unmasked with
        assert 2 * revealed * ledger.skellam_mu >= target * (1 - 1e-12), (cohort, t)
        real = skellam_epsilon(l1, l2, revealed * ledger.skellam_mu, 1, ledger.delta)
        assert real <= charged * (1 + 1e-9), (cohort, t, real, charged)


@pytest.mark.parametrize(("config", "expected"), [
    (_config(10, 8), 4),  # a cohort of 8: 7 neighbours, majority 4
    (_config(10, 5), 3),  # a cohort of 5: 4 neighbours, majority 3
    (_config(10, 2), 2),  # min_clients below every threshold (cohorts of 3 have t = 2 anyway)
    (_config(10, 8, threshold=5), 5),  # an explicit threshold (a majority of every cohort's neighbours)
    (_config(40, 40, neighbors=8), 5),  # a sparse graph: 8 neighbours, majority 5
])
def test_the_smallest_revealed_sum(config: FederatedConfig, expected: int) -> None:
    assert smallest_revealed_sum(config) == expected
    assert PrivacyLedger(config, dim=DIM).min_survivors == expected


def test_the_claimed_epsilon_is_the_real_one_for_the_readmes_advice() -> None:
    # 10 workers, min_clients 8, calibrated to epsilon 8 over 10 rounds. The broker unmasks a sum of 4 as
    # readily as one of 8; before the fix the noise was sized for 8 and that sum's real epsilon was higher
    # than the one charged. Now the charged figure is the epsilon of the least-noised sum.
    ledger = PrivacyLedger(_config(10, 8, sigma=None, budget=8.0), dim=DIM)
    scale = 2.0**ledger.frac_bits
    l1, l2 = skellam_sensitivities(ledger.clip, scale, DIM, weight_coordinate=False)
    real = skellam_epsilon(l1, l2, 4 * ledger.skellam_mu, 10, ledger.delta)
    assert real == pytest.approx(ledger._skellam_epsilon(ledger.sigma, 10), rel=1e-9)
    assert real <= 8.0
