"""Clipping rules: centered clipping (Karimireddy, He and Jaggi 2021) and norm bounding (Sun et al. 2019).

Both bound the influence of any one update by clipping it to an L2 radius before averaging. Centered
clipping clips *differences to the current estimate* and iterates; norm bounding clips the updates
themselves once. Centered clipping runs its iterations on the (n, n) Gram matrix of the updates
centered on the starting point (see ``geomed``): one product and one final combination touch the
d-dimensional data, whatever the number of iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from federated.aggregation.blocks import combine_rows, map_column_blocks
from federated.aggregation.coordinate import coordinate_median
from federated.aggregation.distance import centered_gram
from federated.aggregation.rule import (
    MAX_MAGNITUDE,
    as_update_matrix,
    check_count,
    check_positive,
    raise_non_finite,
    require_cohort,
)

__all__ = ["CenteredClipping", "NormBounding", "centered_clipping_coefficients", "row_norms"]


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of each row of ``x`` (n, d) as float64, squares summed in float64 16k columns at a time
    (exact enough to clip by, and no overflow for any finite float32 input)."""
    if x.dtype == np.float64:
        norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", x, x))
        return norms

    def block_squares(columns: slice) -> np.ndarray:
        block = x[:, columns].astype(np.float64)
        squares: np.ndarray = np.einsum("ij,ij->i", block, block)
        return squares

    sq = np.zeros(x.shape[0])
    for part in map_column_blocks(block_squares, x.shape[1]):
        sq += part
    return np.sqrt(sq)


def centered_clipping_coefficients(g: np.ndarray, *, tau: float, iterations: int) -> np.ndarray:
    """Coefficients ``a`` (n,) of ``v = sum_j a_j z_j`` after centered clipping from ``v = 0``, for rows
    ``z`` (centered on the starting point) whose Gram matrix is ``g``.

    Each iteration is ``v <- v + mean_i clip(z_i - v, tau)`` with ``clip(r, tau) = r min(1, tau/|r|)``;
    iterating stops early once a step is below 1e-9 tau, i.e. at a fixed point.
    """
    n = g.shape[0]
    sq = np.diag(g)
    a = np.zeros(n)
    for _ in range(iterations):
        ga = g @ a
        dist = np.sqrt(np.maximum(sq - 2.0 * ga + a @ ga, 0.0))
        scale = np.ones(n)
        far = dist > tau
        scale[far] = tau / dist[far]
        # mean_i scale_i (z_i - v) in coefficients: (scale - sum(scale) a) / n
        step = (scale - scale.sum() * a) / n
        a = a + step
        if math.sqrt(max(float(step @ g @ step), 0.0)) <= 1e-9 * tau:
            break
    return a


@dataclass
class CenteredClipping:
    """Centered clipping: from a starting point v, ``iterations`` steps of
    ``v <- v + mean_i clip(x_i - v, tau)``.

    The start is ``start`` (e.g. the previous round's aggregate, as Karimireddy et al. recommend with
    worker momentum; set the attribute before each call) or, by default, the coordinate-wise median.
    What holds: whatever their values, the Byzantine part of each step is at most ``f tau / n`` long,
    and while the estimate is farther than ``tau`` from the honest updates their pull outweighs it
    once ``n > 2f``; Karimireddy et al. prove an error of order ``(f/n) sigma^2`` for f/n up to about
    0.1 with tau matched to the honest spread sigma. With tau larger than every distance, one step
    gives the plain mean. We require an honest majority, n >= 2f + 1. Unweighted: ``weights`` are
    ignored, since a worker could overstate its sample count. Raises ``ValueError`` for n < 2f + 1,
    bad input or a start of the wrong shape.
    """

    f: int = 0
    tau: float = 1.0
    iterations: int = 10
    start: np.ndarray | None = field(default=None, compare=False, repr=False)
    name: str = field(default="centered_clipping", init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)
        check_count("iterations", self.iterations, 1)
        check_positive("clip_tau", self.tau)

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)  # centered_gram checks
        n, d = x.shape
        require_cohort(self.name, n, self.f, self.min_clients(), "2f + 1")
        if self.start is None:
            start = coordinate_median(x, rule=self.name)
        else:
            start = np.asarray(self.start, dtype=np.float64).reshape(-1)
            if start.shape != (d,) or not (np.abs(start) <= MAX_MAGNITUDE).all():
                raise ValueError(f"{self.name}: start must be a finite vector of {d} values within "
                                 f"+-2**400, got shape {np.shape(self.start)}")
        # Centering on the start (rounded to the update dtype) keeps the Gram entries at the scale of the
        # distances that the clipping compares with tau.
        g, c = centered_gram(x, center=start, rule=self.name)
        a = centered_clipping_coefficients(g, tau=self.tau, iterations=self.iterations)
        # v = c + sum_j a_j (x_j - c), combined from x so that no centered copy is made.
        out: np.ndarray = (1.0 - a.sum()) * c + combine_rows(a, x)
        return out


@dataclass
class NormBounding:
    """Norm bounding: scale each update down to L2 norm at most ``bound``, then take the plain mean.

    No breakdown point, but bounded influence: whatever their values, f Byzantine updates make the
    result differ from ``sum(clipped honest updates) / n`` by at most ``f bound / n`` (and from the
    mean of the clipped honest updates by at most ``2 f bound / n``). Honest
    updates longer than ``bound`` are shrunk too, so the bound should sit above their typical norm.
    We require an honest majority, n >= 2f + 1. Unweighted: ``weights`` are ignored, since a worker
    could overstate its sample count and so its influence. Raises ``ValueError`` for n < 2f + 1 or bad
    input.
    """

    f: int = 0
    bound: float = 1.0
    name: str = field(default="norm_bounding", init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)
        check_positive("norm_bound", self.bound)

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)
        n = x.shape[0]
        require_cohort(self.name, n, self.f, self.min_clients(), "2f + 1")
        norms = row_norms(x)
        if not np.isfinite(norms).all():  # row_norms cannot overflow on finite input
            raise_non_finite(x, self.name)
        scale = np.ones(n)
        long = norms > self.bound
        scale[long] = self.bound / norms[long]
        return combine_rows(scale / n, x)
