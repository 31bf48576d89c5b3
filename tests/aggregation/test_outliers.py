"""Robust z-scores and their null distribution: the spread estimator, and scores that are calibrated (an
honest value scores above s with probability 1 - Phi(s)) at every cohort size, checked by direct
simulation, independently of the Rao-Blackwellised tables."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from federated.aggregation.outliers import (
    consistency_quantile,
    normal_score,
    null_log_tail,
    robust_z,
    set_aside,
)

_NORMAL = NormalDist()


def test_robust_z_uses_the_n_minus_f_th_deviation_and_a_floor() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # deviations from 3: 2, 1, 0, 1, 97
    np.testing.assert_allclose(robust_z(values, 1e-9, 1), (values - 3.0) / (2.0 / consistency_quantile(5, 1)))
    np.testing.assert_allclose(robust_z(values, 1e-9, 2), (values - 3.0) / (1.0 / consistency_quantile(5, 2)))
    # More than half equal: a spread of 0, so the floor is the yardstick.
    np.testing.assert_allclose(robust_z(np.array([5.0, 5.0, 5.0, 6.0]), 0.5, 1), [0.0, 0.0, 0.0, 2.0])


def test_up_to_f_values_far_out_do_not_move_the_yardstick() -> None:
    honest = np.random.default_rng(0).standard_normal(16)
    z = robust_z(np.concatenate([honest, [50.0, 60.0, 70.0, 80.0]]), 1e-9, 4)
    far = robust_z(np.concatenate([honest, [5e3, 6e3, 7e3, 8e3]]), 1e-9, 4)
    np.testing.assert_allclose(z[:16], far[:16])


def test_consistency_quantile_makes_the_spread_estimate_a_standard_deviation() -> None:
    assert consistency_quantile(10_000, 5_000) == pytest.approx(0.6745, abs=1e-3)  # the MAD's
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((2_000, 200))
    center = np.median(sample, axis=1, keepdims=True)
    spread = np.sort(np.abs(sample - center), axis=1)[:, 200 - 40 - 1] / consistency_quantile(200, 40)
    assert float(np.median(spread)) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("n, fraction, expected", [(3, 0.2, 1), (10, 0.2, 2), (10, 0.25, 2), (20, 0.25, 5),
                                                   (10, 0.0, 1), (10, 0.49, 4), (7, 0.45, 3)])
def test_set_aside(n: int, fraction: float, expected: int) -> None:
    assert set_aside(n, fraction) == expected


@pytest.mark.parametrize("n, fraction", [(2, 0.2), (10, 0.5), (10, -0.1)])
def test_set_aside_refuses_tiny_cohorts_and_bad_fractions(n: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        set_aside(n, fraction)


@pytest.mark.parametrize("n", [3, 5, 10, 20, 50])
def test_scores_of_iid_normal_values_are_calibrated(n: int) -> None:
    """The null model itself, simulated directly: P(score > s) = 1 - Phi(s). 100,000 values per n; each
    frequency must lie within 5 binomial standard errors (plus the tables' own Monte Carlo error, a few
    percent of the probability), which an exact calibration fails with probability below 1e-6."""
    f = set_aside(n, 0.25)
    rng = np.random.default_rng(2024 + n)
    cohorts = rng.standard_normal((100_000 // n, n))
    scores = np.concatenate([normal_score(null_log_tail(robust_z(row, 1e-12, f), n, f)) for row in cohorts])
    for s in (1.5, 2.0, 2.5, 3.0):
        p = 1.0 - _NORMAL.cdf(s)
        tolerance = 5.0 * math.sqrt(p * (1 - p) / scores.size) + 0.05 * p
        assert abs(float(np.mean(scores > s)) - p) <= tolerance, (s, float(np.mean(scores > s)), p)


def test_mad_z_scores_are_far_from_normal_in_small_cohorts() -> None:
    """Why calibrate: at n = 10 a MAD z-score exceeds 3 about ten times as often as a normal variable."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40_000, 10))
    center = np.median(x, axis=1, keepdims=True)
    z = (x - center) / (1.4826 * np.median(np.abs(x - center), axis=1, keepdims=True))
    assert 0.011 < float(np.mean(z > 3.0)) < 0.017  # 1 - Phi(3) = 0.00135


def test_null_log_tail_is_zero_below_the_consistency_quantile_and_falls_beyond() -> None:
    n, f = 10, 2
    z = np.array([-5.0, 0.0, 0.5 * consistency_quantile(n, f), 2.0, 4.0, 8.0, 16.0, 1e3, 1e6, 1e12])
    tail = null_log_tail(z, n, f)
    assert list(tail[:3]) == [0.0, 0.0, 0.0]
    assert np.all(np.diff(tail[2:]) < 0) and np.all(np.isfinite(tail))
    # Heavier than normal (the spread is estimated), lighter than the MAD's (ignoring 2 values, not 5).
    assert math.log(1 - _NORMAL.cdf(4.0)) < float(tail[4]) < math.log(0.01)


def test_normal_score_inverts_the_normal_tail_in_logs() -> None:
    probabilities = np.array([0.9, 0.5, 0.1, 1e-3, 1e-10, 1e-300])
    scores = normal_score(np.log(probabilities))
    np.testing.assert_allclose(scores[:2], [0.0, 0.0])
    np.testing.assert_allclose(scores[2:], [-_NORMAL.inv_cdf(p) for p in probabilities[2:]], rtol=1e-6)
    far = normal_score(np.array([-1e3, -1e5, -1e7]))
    assert np.all(np.diff(far) > 0) and far[0] > scores[-1]
    # Far beyond the smallest float: the asymptotic inversion, log(1 - Phi(z)) ~ -z^2/2 - log(z sqrt(2 pi)).
    z = far[-1]
    assert -z * z / 2 - math.log(z * math.sqrt(2 * math.pi)) == pytest.approx(-1e7, rel=1e-9)
