"""Skellam shares are exactly Skellam however large ``mu`` is (issue 13, item 14).

The ledger used to plan per-worker Poisson means up to ~3e14, where NumPy's sampler is no longer Poisson:
measured on 2 million draws its variance is 1.096 lam at lam = 3e14, a fatter noise than the accountant
assumed. Now a share never asks NumPy for a mean above 1e10 (a larger one is a sum of equal draws, which
is exactly Poisson), and the ledger picks a scale at which honest runs need one draw per side.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm

from federated.config import FederatedConfig, PrivacyConfig, SecureConfig
from federated.privacy.ledger import PrivacyLedger
from federated.privacy.noise import POISSON_EXACT_MAX, skellam_share
from federated.privacy.skellam import plan_skellam, skellam_epsilon, skellam_sensitivities


@pytest.mark.slow
def test_a_share_at_mu_3e14_has_the_skellam_mean_and_variance() -> None:
    # 12,000 draws of Skellam(mu, mu), mu = 3e14: mean 0 and variance 2 mu. At this mu the noise is
    # Gaussian to within 1 / sqrt(mu), so the sample mean is N(0, 2 mu / n) and (n - 1) s^2 / (2 mu) is
    # chi-square with n - 1 degrees of freedom. Each check may fail by chance with probability 5e-7 (1e-6
    # in all): the variance must lie in [0.936, 1.065] times 2 mu. The old sampler's 1.096 does not.
    mu, n = 3e14, 12_000
    draws = skellam_share(n, mu, np.random.default_rng(20240613)).astype(np.float64)
    z = norm.isf(2.5e-7)  # two-sided 5e-7
    assert abs(draws.mean()) <= z * math.sqrt(2 * mu / n)  # fails by chance with probability 5e-7
    ratio = draws.var(ddof=1) / (2 * mu)
    low, high = chi2.ppf(2.5e-7, n - 1) / (n - 1), chi2.isf(2.5e-7, n - 1) / (n - 1)
    assert low <= ratio <= high, (low, ratio, high)  # fails by chance with probability 5e-7


class Spy:
    """A generator that records every Poisson mean it is asked for."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)
        self.means: list[float] = []

    def poisson(self, lam: float, size: object) -> np.ndarray:
        self.means.append(float(lam))
        return self.rng.poisson(lam, size)


@pytest.mark.parametrize(("mu", "draws"), [(3.0, 1), (1e10, 1), (1e10 + 1, 2), (3e14, 30_000)])
def test_no_draw_asks_numpy_for_more_than_1e10(mu: float, draws: int) -> None:
    spy = Spy()
    share = skellam_share(4, mu, spy)  # type: ignore[arg-type]
    assert share.shape == (4,) and share.dtype == np.int64
    assert len(spy.means) == 2 * draws  # each side is the sum of `draws` equal Poisson draws
    assert max(spy.means) <= POISSON_EXACT_MAX
    assert sum(spy.means) == pytest.approx(2 * mu, rel=1e-12)


def test_small_shares_still_have_the_skellam_moments() -> None:
    # 200,000 draws at mu = 40 (one draw per side): mean 0 and variance 80, bounds as above.
    mu, n = 40.0, 200_000
    draws = skellam_share(n, mu, np.random.default_rng(5)).astype(np.float64)
    assert abs(draws.mean()) <= norm.isf(2.5e-7) * math.sqrt(2 * mu / n)  # chance failure 5e-7
    # Skellam's excess kurtosis is 1 / (2 mu) here, so the variance of s^2 is (2 + 1/(2 mu)) (2 mu)^2 / n.
    sd = math.sqrt((2 + 1 / (2 * mu)) / n)
    assert abs(draws.var(ddof=1) / (2 * mu) - 1) <= norm.isf(2.5e-7) * sd * 1.01  # chance failure ~5e-7


def _config(n: int, min_clients: int, clip: float, sigma: float) -> FederatedConfig:
    return FederatedConfig(num_clients=n, num_rounds=10, min_clients=min_clients,
                           secure=SecureConfig(enabled=True),
                           privacy=PrivacyConfig(mode="distributed", noise_multiplier=sigma, clip=clip))


@pytest.mark.parametrize(("n", "min_clients", "clip", "sigma", "dim"), [
    (10, 2, 1.0, 1.0, 4810),  # mu was 7.0e13 at 2^24
    (10, 5, 1.0, 2.0, 4810),  # 1.9e14
    (100, 50, 1.0, 1.0, 4810),
    (10, 2, 0.1, 1.0, 100_000),
    (10, 3, 1.0, 0.3, 4810),
])
def test_the_ledger_keeps_each_share_to_one_exact_draw_at_little_cost(n: int, min_clients: int, clip: float,
                                                                      sigma: float, dim: int) -> None:
    ledger = PrivacyLedger(_config(n, min_clients, clip, sigma), dim=dim)
    assert 0 < ledger.skellam_mu <= POISSON_EXACT_MAX
    # The coarser scale costs under 0.5% of epsilon against the largest wrap-safe scale (2^24 here).
    fine = plan_skellam(sigma, clip, 2.0**24, n, ledger.min_survivors)
    l1, l2 = skellam_sensitivities(clip, 2.0**24, dim, weight_coordinate=False)
    finest = skellam_epsilon(l1, l2, fine.mu_guaranteed, 1, ledger.delta)
    assert finest <= ledger.next_round_epsilon() <= finest * 1.005
