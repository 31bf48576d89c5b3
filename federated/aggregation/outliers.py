"""Robust z-scores of one statistic across a cohort, and how rare a score is among honest workers.

**The score.** ``z_i = (v_i - median) / s``, where ``s`` is the (n - f)-th smallest absolute deviation from
the median, divided by the normal quantile that makes it estimate the standard deviation of normal data.
With n - f = n/2 it would be the MAD. Setting aside fewer than half (``f = floor(fraction * n)``, at
least 1, at most (n - 1) // 2) makes ``s`` far steadier in small cohorts. What makes MAD z-scores
heavy-tailed there is the chance that half the cohort happens to lie close together, so that the spread
looks much smaller than it is: at n = 10 an honest value's MAD z-score exceeds 3 with probability 1.4%,
ten times the normal 0.13%. Up to f values far out cannot move ``s``; more than f can (they then mask
one another).

**The null model.** In a round without attackers, a statistic's n values are independent draws from one
normal distribution, with unknown mean and spread. A value's z-score then has a distribution that
depends on n and f only, and :func:`null_log_tail` gives its upper tail exactly, up to Monte Carlo error
(a fixed seed, so it is deterministic; about +-0.05 in :func:`normal_score` units at n <= 10, less
above). The simulation is Rao-Blackwellised over the value itself: once ``z_i`` exceeds the
consistency quantile ``c`` (0.67 to 1.4 here), the value lies beyond the median and beyond the
(n - f)-th deviation, so moving it further out changes neither. Hence ``P(z_i > t) = E[1 - Phi(m + t
s)]`` for ``t >= c``, with ``m`` and ``s`` the median and spread of n - 1 standard normal draws and one
value at +infinity, averaged over 10^6 / n such draws. Below ``c`` the tail is taken as 1. A floor on
``s`` (``min_scale``) only lowers z-scores, so the tail is then an upper bound.

:func:`normal_score` turns a tail probability into the standard-normal quantile with the same upper
tail, so that one threshold means one false-alarm probability whatever the cohort size.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np

__all__ = ["consistency_quantile", "normal_score", "null_log_tail", "robust_z", "set_aside"]

_NORMAL = NormalDist()
_DRAW_BUDGET = 1_000_000  # standard normal draws per tail table: (budget / n) cohorts of n
_MIN_COHORTS = 8192
_MAX_COHORTS = 200_000
_GRID_DECADES = 6  # at most: the table covers z from c to c * 10^6, then extrapolates as a power law
_GRID_PER_DECADE = 10
_MIN_EFFECTIVE_DRAWS = 100


def set_aside(n: int, fraction: float) -> int:
    """f for a cohort of ``n`` values: ``floor(fraction * n)``, at least 1, at most ``(n - 1) // 2`` (so
    the spread always rests on a majority). Raises ``ValueError`` for n < 3 or a fraction outside
    [0, 0.5)."""
    if n < 3:
        raise ValueError(f"a robust z-score needs at least 3 values, got {n}")
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"fraction must be in [0, 0.5), got {fraction}")
    return min(max(1, math.floor(fraction * n)), (n - 1) // 2)


def consistency_quantile(n: int, f: int) -> float:
    """The normal quantile by which the (n - f)-th smallest absolute deviation is divided so that it
    estimates a standard deviation: ``Phi^-1(1/2 + (n - f - 1/2) / (2n))`` (0.6745, the MAD's, at
    n - f = n/2 for large n)."""
    return _NORMAL.inv_cdf(0.5 + (n - f - 0.5) / (2 * n))


def robust_z(values: np.ndarray, min_scale: float, f: int) -> np.ndarray:
    """``(values - median) / s`` with ``s = max(d_(n-f) / consistency_quantile(n, f), min_scale)``, where
    ``d_(k)`` is the k-th smallest ``|values - median|``.

    ``min_scale`` (in the values' units, > 0) covers a spread of 0 when most values coincide, and keeps
    differences too small to mean anything from scoring high when the honest values are tightly
    clustered. ``f`` is :func:`set_aside`'s.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    center = float(np.median(v))
    deviation = float(np.partition(np.abs(v - center), n - f - 1)[n - f - 1])
    scale = max(deviation / consistency_quantile(n, f), min_scale)
    return (v - center) / scale


def _log_normal_sf(x: np.ndarray) -> np.ndarray:
    """``log(1 - Phi(x))``, accurate in the far tail (Numerical Recipes' erfc, relative error < 1.2e-7)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    log_upper = np.log(t) - z * z + poly - math.log(2.0)  # log(1 - Phi(|x|))
    result: np.ndarray = np.where(x >= 0, log_upper, np.log1p(-np.exp(log_upper)))
    return result


@functools.lru_cache(maxsize=128)
def _tail_table(n: int, f: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(log t, log P(z > t), slope)`` for one of n iid normal values: t from the consistency quantile
    up, 10 points a decade, while the simulation is trustworthy there (an effective sample of at least
    ``_MIN_EFFECTIVE_DRAWS`` draws); ``slope`` is d log P / d log t over the last decade, for beyond."""
    cohorts = min(max(_MIN_COHORTS, _DRAW_BUDGET // n), _MAX_COHORTS)
    rng = np.random.default_rng(20_240_611 + 1_000 * n + f)  # fixed: the table is a constant
    draws = np.empty((cohorts, n))
    draws[:, :-1] = rng.standard_normal((cohorts, n - 1))
    draws[:, -1] = np.inf  # the value itself, beyond everything (see the module docstring)
    median = np.median(draws, axis=1)
    deviation = np.partition(np.abs(draws - median[:, None]), n - f - 1, axis=1)[:, n - f - 1]
    spread = deviation / consistency_quantile(n, f)
    log_t, log_tail = [], []
    for k in range(_GRID_DECADES * _GRID_PER_DECADE + 1):
        t = consistency_quantile(n, f) * 10.0 ** (k / _GRID_PER_DECADE)
        terms = _log_normal_sf(median + t * spread)
        top = float(terms.max())
        weights = np.exp(terms - top)
        if k > 1 and float(weights.sum()) ** 2 < _MIN_EFFECTIVE_DRAWS * float(weights @ weights):
            break  # a handful of draws carry the mean: beyond here it would fall off too fast
        log_t.append(math.log(t))
        log_tail.append(top + math.log(float(weights.mean())))
    back = max(0, len(log_t) - 1 - _GRID_PER_DECADE)
    # The tail steepens towards its asymptote t^-(n - f - 1) (n - f values crowding together), so
    # the slope of the last decade is the shallower, conservative one to extrapolate with.
    slope = (log_tail[-1] - log_tail[back]) / (log_t[-1] - log_t[back])
    return np.array(log_t), np.array(log_tail), slope


def null_log_tail(z: np.ndarray, n: int, f: int) -> np.ndarray:
    """``log P(Z > z)`` for Z the :func:`robust_z` of one of n iid normal values with this f (the null
    model of the module docstring), for each entry of ``z``: 0 below the consistency quantile, a power
    law beyond the simulated range."""
    grid, table, slope = _tail_table(n, f)
    log_z = np.log(np.maximum(np.asarray(z, dtype=np.float64), math.exp(grid[0])))
    inside = np.interp(log_z, grid, table)
    result = np.where(log_z > grid[-1], table[-1] + slope * (log_z - grid[-1]), inside)
    return np.where(np.asarray(z) < math.exp(grid[0]), 0.0, result)


def normal_score(log_p: np.ndarray) -> np.ndarray:
    """The standard-normal quantile with upper tail ``exp(log_p)``, 0 for probabilities of 1/2 or more.

    Works in logs, so that tails far below the smallest float still give finite scores (asymptotic
    inversion of ``log(1 - Phi(z)) ~ -z^2/2 - log(z sqrt(2 pi))`` below 1e-300).
    """
    scores = []
    for lp in np.atleast_1d(np.asarray(log_p, dtype=np.float64)):
        if lp >= math.log(0.5):
            scores.append(0.0)
        elif lp > -690.0:
            scores.append(-_NORMAL.inv_cdf(math.exp(lp)))
        else:
            z = math.sqrt(-2.0 * lp)
            for _ in range(8):
                z = math.sqrt(-2.0 * lp - 2.0 * math.log(z * math.sqrt(2.0 * math.pi)))
            scores.append(z)
    return np.array(scores)
