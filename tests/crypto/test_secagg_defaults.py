"""The default SecAgg+ degrees the README states: 20 at n = 100, 24 at n = 1000, 44 for 20% dropout.

The degree is picked by :func:`federated.crypto.graph.default_degree` (what ``SecureConfig.round_params``
uses when ``neighbors`` is unset): the complete graph up to 30 workers, beyond it the smallest even k for
which, with the majority threshold t = k // 2 + 1, the union bound over the n workers of
P(fewer than t of a worker's k neighbours survive) stays within 1e-3 at 10% dropout. The criterion is
recomputed here with SciPy's binomial distribution, independently of the product's own sum.
"""

from __future__ import annotations

import pytest
from scipy import stats

from federated.config import SecureConfig
from federated.crypto.graph import default_degree, default_threshold, degree_for


def _abort_bound(n: int, k: int, dropout: float) -> float:
    """n * P(Binomial(k, 1 - dropout) < k // 2 + 1): the union bound on losing some worker's secrets."""
    return n * float(stats.binom.cdf(k // 2, k, 1.0 - dropout))


@pytest.mark.parametrize(("n", "degree"), [(100, 20), (1000, 24)])
def test_readme_default_degrees(n: int, degree: int) -> None:
    assert default_degree(n) == degree
    params = SecureConfig(enabled=True).round_params(n, vector_length=10)
    assert (params.degree, params.threshold) == (degree, degree // 2 + 1)


def test_readme_degree_for_twenty_percent_dropout() -> None:
    assert degree_for(100, 0.2) == 44
    assert degree_for(100, 0.3) == 99  # the complete graph: no sparse degree survives 30% at 1e-3


def test_small_cohorts_use_the_complete_graph() -> None:
    assert [default_degree(n) for n in (3, 10, 30)] == [2, 9, 29]
    assert default_degree(31) < 30


@pytest.mark.parametrize(("n", "dropout"), [(100, 0.1), (1000, 0.1), (100, 0.2), (500, 0.15), (31, 0.1)])
def test_the_degree_is_the_smallest_even_one_meeting_the_abort_bound(n: int, dropout: float) -> None:
    k = degree_for(n, dropout)
    if k == n - 1:  # no sparse degree qualifies
        assert all(_abort_bound(n, j, dropout) > 1e-3 for j in range(2, n - 1, 2))
        return
    assert k % 2 == 0 and default_threshold(k) == k // 2 + 1
    assert _abort_bound(n, k, dropout) <= 1e-3
    assert all(_abort_bound(n, j, dropout) > 1e-3 for j in range(2, k, 2))
