"""Property tests of the robust rules: with fewer adversarial rows than a rule tolerates, whatever
their (huge) values, the output stays near the honest rows; and every rule refuses a cohort too small
for its f."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federated.aggregation import RULES, make_rule
from federated.aggregation.clipping import CenteredClipping

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Cohort:
    x: np.ndarray  # all rows, honest and adversarial, shuffled
    honest: np.ndarray  # the honest rows, in the dtype of x
    f: int

    @property
    def honest_mean(self) -> np.ndarray:
        mean: np.ndarray = self.honest.astype(np.float64).mean(axis=0)
        return mean

    @property
    def honest_radius(self) -> float:
        """Largest distance of an honest row to the honest mean."""
        return float(np.linalg.norm(self.honest.astype(np.float64) - self.honest_mean, axis=1).max())


@st.composite
def cohorts(draw: Any, *, min_n_for_f: Any, max_n: int = 15) -> Cohort:
    """Honest rows in [-10, 10]; f adversarial rows with every value of magnitude 1e3 to 1e30."""
    f = draw(st.integers(0, 3))
    n = draw(st.integers(max(min_n_for_f(f), 1), max(min_n_for_f(f), max_n)))
    d = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    honest = draw(arrays(np.float64, (n - f, d), elements=st.floats(-10, 10)))
    huge = st.floats(1e3, 1e30)
    magnitudes = draw(arrays(np.float64, (f, d), elements=huge))
    signs = draw(arrays(np.float64, (f, d), elements=st.sampled_from([-1.0, 1.0])))
    order = draw(st.permutations(list(range(n))))
    x = np.vstack([honest, magnitudes * signs])[order].astype(dtype)
    return Cohort(x=x, honest=honest.astype(dtype), f=f)


def assert_within_honest_range(out: np.ndarray, cohort: Cohort, widen: float = 0.0) -> None:
    low = cohort.honest.astype(np.float64).min(axis=0)
    high = cohort.honest.astype(np.float64).max(axis=0)
    slack = widen * (high - low) + 1e-12 * (1 + np.abs(high) + np.abs(low))
    assert np.all(out >= low - slack) and np.all(out <= high + slack), (out, low, high)


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 1))
def test_median_stays_within_the_honest_range(cohort: Cohort) -> None:
    assert_within_honest_range(make_rule("median", f=cohort.f)(cohort.x), cohort)


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 1), st.floats(0.0, 0.45))
def test_trimmed_mean_stays_within_the_honest_range(cohort: Cohort, ratio: float) -> None:
    assert_within_honest_range(make_rule("trimmed_mean", f=cohort.f, trim_ratio=ratio)(cohort.x), cohort)


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 3), st.sampled_from(["krum", "multi_krum"]))
def test_krum_stays_within_the_honest_radius(cohort: Cohort, name: str) -> None:
    out = make_rule(name, f=cohort.f)(cohort.x)
    assert np.linalg.norm(out - cohort.honest_mean) <= cohort.honest_radius * (1 + 1e-6) + 1e-9


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 4 * f + 3, max_n=18))
def test_bulyan_stays_near_the_honest_range(cohort: Cohort) -> None:
    out = make_rule("bulyan", f=cohort.f)(cohort.x)
    # Theory: each coordinate lies within the honest range widened by its width (see Bulyan's doc).
    assert_within_honest_range(out, cohort, widen=1.0)
    assert np.linalg.norm(out - cohort.honest_mean) <= 2 * math.sqrt(out.size) * 2 * cohort.honest_radius + 1e-9


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 1))
def test_geometric_median_stays_within_minskers_bound(cohort: Cohort) -> None:
    out = make_rule("geometric_median", f=cohort.f)(cohort.x)
    alpha = cohort.f / len(cohort.x)
    # Minsker (2015): with a fraction alpha < 1/2 of rows outside a ball of radius r around z, the
    # geometric median lies within (1 - alpha) / sqrt(1 - 2 alpha) * r of z.
    bound = (1 - alpha) / math.sqrt(1 - 2 * alpha) * cohort.honest_radius
    slack = 1e-3 * (cohort.honest_radius + 1)  # smoothing and the stopping tolerance
    assert np.linalg.norm(out - cohort.honest_mean) <= bound + slack


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 1))
def test_centered_clipping_with_a_sane_tau_stays_near_the_honest_mean(cohort: Cohort) -> None:
    n, f = len(cohort.x), cohort.f
    radius = cohort.honest_radius
    out = CenteredClipping(f=f, tau=max(radius, 1e-3))(cohort.x)
    # The median start is within sqrt(n - f) r of the honest mean; the clipped attackers cannot hold
    # the estimate farther than about n / (n - 2f) r from it once honest pull dominates.
    bound = (math.sqrt(n - f) + n / (n - 2 * f) + 2) * max(radius, 1e-3)
    assert np.linalg.norm(out - cohort.honest_mean) <= bound


@PROPERTY_SETTINGS
@given(cohorts(min_n_for_f=lambda f: 2 * f + 1), st.floats(0.1, 20.0))
def test_norm_bounding_limits_each_attackers_influence(cohort: Cohort, bound: float) -> None:
    n = len(cohort.x)
    out = make_rule("norm_bounding", f=cohort.f, norm_bound=bound)(cohort.x)
    honest = cohort.honest.astype(np.float64)
    norms = np.linalg.norm(honest, axis=1, keepdims=True)
    clipped_honest_sum = (honest * np.minimum(1.0, bound / np.maximum(norms, 1e-300))).sum(axis=0)
    assert np.linalg.norm(out - clipped_honest_sum / n) <= cohort.f * bound / n * (1 + 1e-6) + 1e-9


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("f", [0, 1, 3])
def test_every_rule_refuses_a_too_small_cohort(name: str, f: int) -> None:
    rule = make_rule(name, f=f, multi_krum_m=2)
    minimum = rule.min_clients()
    rule(np.random.default_rng(f).standard_normal((minimum, 3)))  # the minimum itself is fine
    for n in {0, minimum - 1}:
        with pytest.raises(ValueError, match=rf"{name} needs n >= .* = {minimum} .*f={f}.*got n={n}"):
            rule(np.ones((n, 3)))
