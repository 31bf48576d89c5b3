"""Tests of bucketing: bucket means against a loop oracle, s = 1 against the inner rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.aggregation import RULES, Bucketing, bucket_means, make_rule


@pytest.mark.parametrize("n, s", [(10, 2), (11, 2), (9, 3), (10, 4), (5, 7), (6, 1)])
def test_bucket_means_average_the_permuted_rows(n: int, s: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
    out = bucket_means(x, s, np.random.default_rng(42))
    order = np.random.default_rng(42).permutation(n)  # the same generator state gives the same shuffle
    expected = [x[order[i:i + s]].astype(np.float64).mean(axis=0) for i in range(0, n, s)]
    assert out.shape == (-(-n // s), 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_bucket_means_do_not_overflow_on_huge_float32_values() -> None:
    x = np.full((4, 3), 3e38, dtype=np.float32)
    assert np.isfinite(bucket_means(x, 2, np.random.default_rng(0))).all()


def test_bucket_means_reject_a_bad_size() -> None:
    with pytest.raises(ValueError, match="bucket_size"):
        bucket_means(np.zeros((4, 2)), 0, np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(RULES), st.integers(0, 2), st.integers(0, 2**32 - 1))
def test_bucketing_with_size_one_is_the_inner_rule(name: str, f: int, seed: int) -> None:
    inner = make_rule(name, f=f, clip_tau=2.0, norm_bound=2.0)
    n = inner.min_clients() + seed % 4
    x = np.random.default_rng(seed).standard_normal((n, 7))
    out = Bucketing(inner, bucket_size=1, rng=np.random.default_rng(seed))(x)
    np.testing.assert_array_equal(out, inner(x[np.random.default_rng(seed).permutation(n)]))
    # Krum (and so Bulyan) breaks score ties by row order, and a mutual nearest pair ties by construction.
    if name not in ("krum", "multi_krum", "bulyan"):
        # The geometric median is iterated to a tolerance of 1e-6 (relative), from a start that near-ties
        # in rounding could move.
        tolerance = 1e-5 if name == "geometric_median" else 1e-12
        np.testing.assert_allclose(out, inner(x), rtol=1e-9, atol=tolerance)


def test_bucketing_needs_enough_buckets_for_the_inner_rule() -> None:
    rule = Bucketing(make_rule("krum", f=1), bucket_size=2, rng=np.random.default_rng(0))
    assert rule.min_clients() == 9 and rule.needs_individual_updates  # ceil(9 / 2) = 5 = 2f + 3 buckets
    assert rule(np.random.default_rng(1).standard_normal((9, 3))).shape == (3,)
    with pytest.raises(ValueError, match=r"bucketing\(krum, s=2\) needs n >= .* = 9 .*f=1.*got n=8"):
        rule(np.zeros((8, 3)))


def test_bucketing_reduces_heterogeneity_for_the_inner_rule() -> None:
    # Honest updates: one direction plus large per-worker noise. Bucket means of 3 are 3x less noisy, so
    # Krum over buckets lands nearer the honest mean than Krum over single updates, on average.
    rng = np.random.default_rng(3)
    errors: dict[int, list[float]] = {1: [], 3: []}
    for _ in range(20):
        x = 1.0 + 2.0 * rng.standard_normal((30, 200))
        for s in (1, 3):
            out = Bucketing(make_rule("krum", f=2), bucket_size=s, rng=rng)(x)
            errors[s].append(float(np.linalg.norm(out - x.mean(axis=0))))
    assert np.mean(errors[3]) < 0.7 * np.mean(errors[1])
