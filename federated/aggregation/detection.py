"""Flagging suspicious worker updates: outlier scores against the cohort, calibrated to a false-alarm rate.

Three statistics per worker, each turned into a robust z-score across the cohort: distance from the
median over a spread that ignores the most deviant quarter of the workers (or ``byzantine_fraction``
of them, if more), so that attackers cannot drag the yardstick, with a floor on the spread
(:mod:`federated.aggregation.outliers`):

- distance: ``log |x_i - median|`` to the coordinate-wise median, high is suspicious. Catches noise,
  scaled and otherwise oversized updates. The log because honest update sizes vary by factors (data
  size, local steps): on raw distances the long honest tail doubled the false alarms in our tests.
- direction: ``cos(x_i, median)``, low is suspicious. Catches sign-flipped and other updates of
  normal size pointing the wrong way, which under non-IID heterogeneity need not be far in distance.
- kinship: ``-log R^2_i``, where ``R^2_i`` is the share of ``x_i`` (squared) that the other updates
  explain together (least squares, from the cosine matrix), high is suspicious. Honest workers share
  classes with other workers; Gaussian noise lies outside their span (``R^2 ~ n/d``). This replaces the
  largest cosine with any one other update (the R^2 on a single regressor), whose values tied in pairs
  of mutual nearest neighbours: 10 workers gave about 5 distinct values, and the spread of those
  could collapse (an honest worker once scored 57 MADs out). With the log, noise of honest size is
  found where the largest cosine missed it: 100% against 42% without a shared direction in the synthetic
  non-IID tests (tests/aggregation/test_detection.py).

**Calibration.** The null model: in a round without attackers, each statistic's values across the
n workers are independent draws from one normal distribution (unknown mean and spread). Each z-score
is turned into its exact tail probability under that model at this cohort size
(:func:`~federated.aggregation.outliers.null_log_tail`), the smallest of the three is multiplied by 3
(Bonferroni: no assumption on how the statistics depend on one another), and the worker's **score** is
the standard-normal quantile with that upper tail. So an honest worker scores above ``s`` in a round
with probability at most ``1 - Phi(s)`` under the null, at every cohort size. The default threshold,
3.5, is 2.3e-4 per worker and round: a false alarm in at most 1 of 20 default runs (10 workers, 20
rounds) under the null.

Why a quarter: the MAD ignores half, and its yardstick then collapses whenever half the cohort happens
to lie close together. A MAD z-score of one of 10 normal values exceeds 3 with probability 1.4%, not
the normal 0.13%; the largest of three MAD z-scores did so for 5% of honest workers and rounds, and
each of 20 seeds of the clean default ``fl simulate`` run warned in 3 to 11 of its 20 rounds. Setting
aside fewer makes the yardstick steadier, but each honest outlier beyond the set-aside widens it: a
fifth (the attackers the robust rules assume) found 87% of sign-flipped updates in the synthetic
non-IID tests, a quarter 93%, the MAD-like half 62%, at the same false-alarm probability.

Real honest statistics are not exactly normal: under strong label skew (Dirichlet 0.5) honest
outliers are more frequent than the model says (README, Byzantine robustness). Detection only
reports; what to do with suspects (log, exclude, down-weight) is the caller's policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.aggregation.blocks import map_column_blocks
from federated.aggregation.coordinate import coordinate_median
from federated.aggregation.outliers import normal_score, null_log_tail, robust_z, set_aside
from federated.aggregation.rule import as_update_matrix

__all__ = ["DEFAULT_BYZANTINE_FRACTION", "DEFAULT_THRESHOLD", "Detection", "detect_byzantine_clients"]

#: Score above which a worker is suspected: under the null model, an honest worker exceeds it with
#: probability 1 - Phi(3.5) = 2.3e-4 per round.
DEFAULT_THRESHOLD = 3.5
#: Share of the cohort whose most deviant values the spread ignores (the robust rules' default too).
DEFAULT_BYZANTINE_FRACTION = 0.2
# Smallest spreads taken seriously: however tightly the honest workers agree (e.g. near-IID data, where
# cosines are all ~0.99), a worker must be some 5% farther from the median than typical (log distance),
# or 0.02 below the typical cosine, per unit of z-score.
_MIN_LOG_DISTANCE_SCALE = 0.05
_MIN_COSINE_SCALE = 0.02
# The spread of each statistic ignores at least this share of the cohort (see detect_byzantine_clients).
_MIN_SET_ASIDE = 0.25
# Added to the cosine matrix's diagonal, so that collinear updates (n > d, identical updates) still
# invert: an update the others reproduce exactly is then "explained" to 1 - 1e-9, not to 1.
_KINSHIP_RIDGE = 1e-9


@dataclass(frozen=True)
class Detection:
    """Per-worker scores and the ids whose score exceeded the threshold, in input order.

    A score is a standard-normal quantile: an honest worker scores above ``s`` with probability at most
    ``1 - Phi(s)`` per round under the module's null model. 0 means nothing unusual (any tail
    probability of 1/2 or more)."""

    suspects: tuple[str, ...]
    scores: dict[str, float]


def _products_around(x: np.ndarray, median: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(G, p)`` for ``z = x - median``: ``G = z @ z.T`` (n, n) and ``p = z @ median`` (n,), float64.

    One pass over column blocks (never materialising ``z``), multiplied in ``x``'s dtype and summed in
    float64; a block that overflowed float32 is redone in float64.
    """
    m = median.astype(x.dtype)

    def products(columns: slice) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore"):
            z = x[:, columns] - m[columns]
            g, p = z @ z.T, z @ m[columns]
        if not (np.isfinite(g).all() and np.isfinite(p).all()):
            z = x[:, columns].astype(np.float64) - median[columns]
            g, p = z @ z.T, z @ median[columns]
        return g.astype(np.float64), p.astype(np.float64)

    g_total, p_total = np.zeros((x.shape[0], x.shape[0])), np.zeros(x.shape[0])
    for g, p in map_column_blocks(products, x.shape[1]):
        g_total += g
        p_total += p
    return g_total, p_total


def detect_byzantine_clients(updates: np.ndarray, ids: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD,
                             byzantine_fraction: float = DEFAULT_BYZANTINE_FRACTION) -> Detection:
    """Score each row of ``updates`` (n, d) and flag those scoring above ``threshold``.

    See the module docstring for the statistics and the score. Each statistic's spread ignores its
    ``max(byzantine_fraction, 1/4) * n`` most deviant workers (at least 1, at most (n - 1) // 2): more
    attackers than that, far out on one statistic, can mask one another on it. Meaningful for n >= 3
    with an honest majority; n < 3 gives all-zero scores. Raises ``ValueError`` for bad input,
    ``len(ids) != n``, duplicate ids or a fraction outside [0, 0.5).
    """
    x = as_update_matrix(updates, "detect_byzantine_clients")
    n = x.shape[0]
    names = [str(i) for i in ids]
    if len(names) != n:
        raise ValueError(f"detect_byzantine_clients: {n} updates but {len(names)} ids")
    if len(set(names)) != n:
        raise ValueError("detect_byzantine_clients: ids must be unique")
    if not 0.0 <= byzantine_fraction < 0.5:
        raise ValueError(f"detect_byzantine_clients: byzantine_fraction must be in [0, 0.5), got {byzantine_fraction}")
    if n < 3:  # no majority to measure against
        return Detection(suspects=(), scores=dict.fromkeys(names, 0.0))
    f = set_aside(n, max(byzantine_fraction, _MIN_SET_ASIDE))
    median = coordinate_median(x, rule="detect_byzantine_clients")
    # Everything else follows from products of z = x - median: |z_i| is the distance to the median
    # (precise, as z is small where updates agree), and x_i . x_j = z_i . z_j + p_i + p_j + |m|^2.
    g, p = _products_around(x, median)
    median_sq = float(median @ median)
    tiny = np.finfo(np.float64).tiny
    distance = np.sqrt(np.maximum(np.diag(g), 0.0))
    # Floor the distances so that updates equal to the median get a very low, finite log.
    log_distance = np.log(np.maximum(distance, 1e-12 * max(float(distance.max()), tiny)))
    dots = g + p[:, None] + p[None, :] + median_sq
    norms = np.sqrt(np.maximum(np.diag(dots), 0.0))
    cosines = dots / np.maximum(np.outer(norms, norms), tiny)  # zero updates have no direction: cosine 0
    # Kinship from the cosines, so that one huge update does not swamp everyone else's share.
    np.fill_diagonal(cosines, 1.0 + _KINSHIP_RIDGE)
    unexplained = 1.0 / ((1.0 + _KINSHIP_RIDGE) * np.diag(np.linalg.inv((cosines + cosines.T) / 2)))
    explained = np.clip(1.0 - unexplained, 1e-12, 1.0)
    statistics = [(log_distance, _MIN_LOG_DISTANCE_SCALE), (-np.log(explained), _MIN_LOG_DISTANCE_SCALE)]
    if median_sq > 0:
        cosine_to_median = (p + median_sq) / np.maximum(norms * math.sqrt(median_sq), tiny)
        statistics.append((-cosine_to_median, _MIN_COSINE_SCALE))
    log_tails = [null_log_tail(robust_z(values, floor, f), n, f) for values, floor in statistics]
    # Bonferroni over the statistics: the smallest tail probability, times their number.
    scores = normal_score(np.min(log_tails, axis=0) + math.log(len(statistics)))
    suspects = tuple(name for name, score in zip(names, scores) if score > threshold)
    return Detection(suspects=suspects, scores={name: float(score) for name, score in zip(names, scores)})
