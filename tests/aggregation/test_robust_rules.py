"""Unit tests of the robust aggregation rules: hand-checked cases and numpy oracles."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest

from federated.aggregation import RULES, Rule, make_rule
from federated.aggregation.clipping import CenteredClipping, NormBounding
from federated.aggregation.distance import (
    Krum,
    MultiKrum,
    krum_scores,
    mean_closest_to_median,
    pairwise_sq_distances,
)
from federated.aggregation.geomed import GeometricMedian


def random_matrix(n: int, d: int, seed: int = 0, dtype: Any = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


# --- the interface --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RULES)
def test_make_rule_builds_each_rule_with_its_name(name: str) -> None:
    rule: Rule = make_rule(name, f=1)
    assert rule.name == name
    assert rule.needs_individual_updates is (name != "mean")
    assert rule.min_clients() >= 1
    out = rule(random_matrix(rule.min_clients() + 2, 5))
    assert out.shape == (5,) and out.dtype == np.float64


def test_make_rule_rejects_an_unknown_name_listing_the_rules() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule 'avg'.*mean, median, trimmed_mean"):
        make_rule("avg")


@pytest.mark.parametrize("kwargs, field", [
    ({"f": -1}, "f"), ({"f": 1.5}, "f"), ({"f": True}, "f"),
    ({"trim_ratio": 0.5}, "trim_ratio"), ({"trim_ratio": -0.1}, "trim_ratio"),
    ({"multi_krum_m": 0}, "multi_krum_m"), ({"clip_tau": 0.0}, "clip_tau"),
    ({"norm_bound": math.nan}, "norm_bound"), ({"geomed_iters": 0}, "geomed_iters"),
    ({"geomed_eps": -1e-3}, "geomed_eps"),
])
def test_make_rule_rejects_bad_parameters_naming_them(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_rule("median", **kwargs)


@pytest.mark.parametrize("name", RULES)
def test_rules_reject_non_2d_and_non_finite_input(name: str) -> None:
    rule = make_rule(name, f=1)
    n = rule.min_clients()
    with pytest.raises(ValueError, match=f"{name}: updates must be a 2-D"):
        rule(np.zeros(5))
    with pytest.raises(ValueError, match=f"{name}: updates must be a 2-D"):
        rule(np.zeros((n, 2, 2)))
    for dtype in (np.float32, np.float64):
        for bad in (np.nan, np.inf, -np.inf):
            x = random_matrix(n, 4, dtype=dtype)
            x[n - 1, 2] = bad
            with pytest.raises(ValueError, match=rf"{name}: updates contain NaN or inf.*rows \[{n - 1}\]"):
                rule(x)
    with pytest.raises(ValueError, match="2\\*\\*400"):
        rule(np.full((n, 3), 1e300))


@pytest.mark.parametrize("name", RULES)
def test_rules_accept_integer_and_float16_input(name: str) -> None:
    rule = make_rule(name, f=1, clip_tau=1e6, norm_bound=1e6)
    x = np.arange(rule.min_clients() * 3).reshape(-1, 3)
    np.testing.assert_allclose(rule(x.astype(np.float16)), rule(x), rtol=1e-6)


# --- mean -----------------------------------------------------------------------------------------

def test_mean_is_weighted_and_accumulates_in_float64() -> None:
    x = random_matrix(7, 30, seed=1, dtype=np.float32)
    w = np.arange(1.0, 8.0)
    rule = make_rule("mean", f=3)  # f is accepted and ignored
    np.testing.assert_allclose(rule(x), x.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rule(x, w), np.average(x.astype(np.float64), axis=0, weights=w), rtol=1e-12)


@pytest.mark.parametrize("weights, match", [
    (np.ones(3), "expected 4 weights"), (np.array([1.0, -1.0, 1.0, 1.0]), "non-negative"),
    (np.array([1.0, np.nan, 1.0, 1.0]), "finite"), (np.zeros(4), "total weight"),
])
def test_mean_rejects_bad_weights(weights: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_rule("mean")(random_matrix(4, 2), weights)


# --- coordinate-wise ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 8, 51])
def test_median_matches_numpy(n: int) -> None:
    x = random_matrix(n, 257, seed=n)
    np.testing.assert_array_equal(make_rule("median")(x), np.median(x, axis=0))
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(make_rule("median")(x32), np.median(x32.astype(np.float64), axis=0), rtol=1e-15)


def test_median_ignores_weights_and_large_outliers() -> None:
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [1e9, -1e9], [-1e9, 1e9]])
    out = make_rule("median", f=2)(x, np.array([100.0, 1, 1, 1, 1]))
    np.testing.assert_array_equal(out, [2.0, 20.0])


def test_median_threads_on_wide_input_give_the_same_answer() -> None:
    x = random_matrix(9, 300_000, seed=3, dtype=np.float32)  # wide enough to sort on several threads
    np.testing.assert_array_equal(make_rule("median")(x), np.median(x, axis=0).astype(np.float64))


@pytest.mark.parametrize("n, f, ratio", [(5, 0, 0.0), (5, 1, 0.0), (10, 0, 0.1), (10, 1, 0.25), (21, 3, 0.1),
                                         (21, 0, 0.49), (7, 3, 0.1)])
def test_trimmed_mean_matches_sorted_slice_mean(n: int, f: int, ratio: float) -> None:
    x = random_matrix(n, 101, seed=n + f)
    k = max(f, math.floor(ratio * n))
    expected = np.sort(x, axis=0)[k:n - k].mean(axis=0)
    np.testing.assert_allclose(make_rule("trimmed_mean", f=f, trim_ratio=ratio)(x), expected, rtol=1e-12)


def test_trimmed_mean_without_trimming_is_the_mean() -> None:
    x = random_matrix(6, 40, seed=2)
    np.testing.assert_allclose(make_rule("trimmed_mean", trim_ratio=0.0)(x), x.mean(axis=0), rtol=1e-12)


# --- distance-based -------------------------------------------------------------------------------

def test_pairwise_distances_match_numpy_even_with_a_large_common_component() -> None:
    rng = np.random.default_rng(4)
    x = (100.0 * rng.standard_normal(5000) + rng.standard_normal((6, 5000))).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=2)
    # Without centering, float32 cancellation makes this a few percent off; centered, ~1e-6.
    np.testing.assert_allclose(pairwise_sq_distances(x), expected, rtol=1e-4)
    assert np.all(np.diag(pairwise_sq_distances(x)) == 0)


# p0 has the smallest sum of squared distances to its 2 nearest neighbours (1 + 1); p4 is far away.
KRUM_POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [10.0, 10.0]])


def test_krum_picks_the_hand_checked_update() -> None:
    np.testing.assert_allclose(krum_scores(pairwise_sq_distances(KRUM_POINTS), f=1)[:4], [2, 5, 5, 9])
    np.testing.assert_array_equal(make_rule("krum", f=1)(KRUM_POINTS), [0.0, 0.0])


def test_krum_scores_match_a_brute_force_oracle() -> None:
    x = random_matrix(9, 13, seed=5)
    f = 2
    d2 = ((x[:, None] - x[None]) ** 2).sum(axis=2)
    oracle = [sorted(d2[i, j] for j in range(9) if j != i)[:9 - f - 2] for i in range(9)]
    np.testing.assert_allclose(krum_scores(pairwise_sq_distances(x), f), [sum(o) for o in oracle], rtol=1e-9)
    np.testing.assert_array_equal(Krum(f=f)(x), x[int(np.argmin([sum(o) for o in oracle]))])


def test_multi_krum_averages_the_best_scored_updates() -> None:
    np.testing.assert_allclose(make_rule("multi_krum", f=1)(KRUM_POINTS), [0.0, 0.5])  # m = n - f = 4
    np.testing.assert_allclose(make_rule("multi_krum", f=1, multi_krum_m=1)(KRUM_POINTS), [0.0, 0.0])
    np.testing.assert_allclose(MultiKrum(f=1, m=2)(KRUM_POINTS), [0.5, 0.0])  # ties: lowest index
    with pytest.raises(ValueError, match=r"max\(2f \+ 3, m \+ f\) = 6.*got n=5"):
        MultiKrum(f=1, m=5)(KRUM_POINTS)


def test_krum_survives_float32_values_whose_squares_overflow() -> None:
    x = random_matrix(9, 50, seed=6, dtype=np.float32)
    x[[2, 7]] = np.float32(3e38)  # squared norms overflow float32; the Gram is redone in float64
    assert make_rule("krum", f=2)(x).max() < 10
    assert np.linalg.norm(make_rule("geometric_median", f=2)(x)) < 50


def bulyan_oracle(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    d2 = ((x[:, None] - x[None]) ** 2).sum(axis=2)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        scores = [sum(sorted(d2[i, j] for j in remaining if j != i)[:max(len(remaining) - f - 2, 1)])
                  for i in remaining]
        chosen.append(remaining.pop(int(np.argmin(scores))))
    s = np.sort(x[chosen], axis=0)
    beta = len(chosen) - 2 * f
    med = np.median(s, axis=0)
    closest = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
    out: np.ndarray = np.take_along_axis(s, closest, axis=0).mean(axis=0)
    return out


@pytest.mark.parametrize("n, f", [(3, 0), (7, 1), (12, 2), (15, 3)])
def test_bulyan_matches_the_oracle(n: int, f: int) -> None:
    x = random_matrix(n, 64, seed=n)
    np.testing.assert_allclose(make_rule("bulyan", f=f)(x), bulyan_oracle(x, f), rtol=1e-9, atol=1e-12)


def test_bulyan_refuses_fewer_than_4f_plus_3() -> None:
    with pytest.raises(ValueError, match=r"bulyan needs n >= 4f \+ 3 = 11 .*f=2.*got n=10"):
        make_rule("bulyan", f=2)(random_matrix(10, 3))


def test_mean_closest_to_median_handles_every_window_position() -> None:
    rng = np.random.default_rng(7)
    for t in (3, 5, 8, 13):
        s = np.sort(rng.standard_normal((500, t)), axis=1)
        med = np.median(s, axis=1, keepdims=True)
        # Even t, beta = 1 is an exact tie: the two middle values are equally close to their mean.
        for beta in range(1 if t % 2 else 2, t + 1):
            closest = np.argsort(np.abs(s - med), axis=1, kind="stable")[:, :beta]
            np.testing.assert_allclose(mean_closest_to_median(s, beta),
                                       np.take_along_axis(s, closest, axis=1).mean(axis=1), rtol=1e-12)


# --- geometric median -----------------------------------------------------------------------------

def test_geometric_median_of_collinear_points_is_their_median_point() -> None:
    direction = np.array([3.0, -4.0]) / 5
    x = np.array([0.0, 1.0, 2.0, 3.0, 100.0])[:, None] * direction
    np.testing.assert_allclose(make_rule("geometric_median", f=2)(x), 2.0 * direction, atol=1e-4)


def test_geometric_median_of_symmetric_points_is_the_centre() -> None:
    center = np.array([1.0, -2.0, 3.0])
    x = center + np.vstack([np.eye(3), -np.eye(3)]) * 5
    np.testing.assert_allclose(make_rule("geometric_median")(x), center, atol=1e-5)  # tolerance 1e-6 x 5


def test_geometric_median_is_stationary_in_general_position() -> None:
    x = random_matrix(11, 4, seed=8)
    v = GeometricMedian(max_iterations=1000, tolerance=1e-15)(x)
    diff = v - x
    gradient = (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(axis=0)
    assert np.linalg.norm(gradient) < 1e-5  # sum of unit vectors vanishes at the minimiser


# --- clipping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [1, 5])
def test_centered_clipping_with_a_large_tau_is_the_mean(iterations: int) -> None:
    x = random_matrix(9, 20, seed=9, dtype=np.float32)
    rule = CenteredClipping(tau=1e6, iterations=iterations)
    np.testing.assert_allclose(rule(x), x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)
    rule.start = np.full(20, 7.0)  # the start does not matter when nothing is clipped
    np.testing.assert_allclose(rule(x), x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)


def test_centered_clipping_hand_checked_step() -> None:
    x = np.array([[0.0], [0.0], [0.0], [10.0]])
    # One step from 0: mean(clip([0, 0, 0, 10], 1)) = (0 + 0 + 0 + 1) / 4.
    np.testing.assert_allclose(CenteredClipping(tau=1.0, iterations=1, start=np.zeros(1))(x), [0.25])
    # Default start: the coordinate-wise median (0), so the same answer.
    np.testing.assert_allclose(CenteredClipping(f=1, tau=1.0, iterations=1)(x), [0.25])
    # Iterated to the fixed point: 3 (0 - v) + 1 = 0 (the far update contributes tau = 1), v = 1/3.
    np.testing.assert_allclose(CenteredClipping(tau=1.0, iterations=200)(x), [1 / 3], rtol=1e-6)


def test_centered_clipping_moves_at_most_tau_per_step() -> None:
    x = random_matrix(7, 10, seed=10) * 100
    start = np.zeros(10)
    for iterations in (1, 3):
        v = CenteredClipping(tau=0.5, iterations=iterations, start=start)(x)
        assert np.linalg.norm(v - start) <= 0.5 * iterations + 1e-9


def test_centered_clipping_rejects_a_bad_start() -> None:
    with pytest.raises(ValueError, match="start must be a finite vector of 3 values"):
        CenteredClipping(start=np.zeros(4))(random_matrix(3, 3))


def test_norm_bounding_clips_then_averages() -> None:
    x = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(make_rule("norm_bounding", norm_bound=1.0)(x), [0.6 / 3, 1.8 / 3])
    np.testing.assert_allclose(NormBounding(bound=10.0)(x), x.mean(axis=0))


# --- column-parallel paths ------------------------------------------------------------------------

@pytest.mark.parametrize("name", RULES)
def test_rules_give_the_same_answer_on_one_thread_or_several(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from federated.aggregation import blocks

    x = random_matrix(11, 40_000, seed=11, dtype=np.float32)  # 3 blocks of 16k columns
    x[4] *= 1e3  # an outlier, so that the robust paths do something
    rule = make_rule(name, f=2, clip_tau=50.0, norm_bound=50.0)
    monkeypatch.setattr(blocks, "_MIN_COLUMNS_PER_THREAD", 10**12)
    single = rule(x)
    monkeypatch.setattr(blocks, "_MIN_COLUMNS_PER_THREAD", 1000)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert blocks.thread_count(x.shape[1]) == 3
    np.testing.assert_allclose(rule(x), single, rtol=1e-12, atol=1e-12)
