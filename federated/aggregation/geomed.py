"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade and Harchaoui 2019).

The geometric median minimises ``sum_i |v - x_i|``. Weiszfeld's iteration re-weights each update by
the inverse of its distance to the current estimate, ``v <- sum_i b_i x_i / sum_i b_i`` with
``b_i = 1 / max(nu, |v - x_i|)``; the smoothing ``nu`` keeps the weights finite when ``v`` lands on an
update.

Every iterate is an affine combination of the rows, so the iteration runs on the (n, n) Gram matrix
of the centered updates ``z_i = x_i - c``: ``|v - x_i|^2 = G_ii - 2 (G a)_i + a.G.a`` for
``v = sum_j a_j x_j`` with ``sum_j a_j = 1``.
One (n, d) @ (d, n) product and one final (n,) @ (n, d) combination are the only passes over the
d-dimensional data, whatever the number of iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from federated.aggregation.distance import centered_gram
from federated.aggregation.robust import as_update_matrix, check_count, combine_rows, require_cohort

__all__ = ["GeometricMedian", "weiszfeld_coefficients"]


def weiszfeld_coefficients(g: np.ndarray, *, nu: float, max_iterations: int, tolerance: float) -> np.ndarray:
    """Coefficients ``a`` (n,), summing to 1, of the smoothed geometric median ``sum_j a_j z_j`` of the
    rows whose Gram matrix is ``g``.

    Starts from the mean and stops after ``max_iterations`` or once an iteration lowers the objective
    ``sum_i |v - z_i|`` by less than ``tolerance`` times its value.
    """
    n = g.shape[0]
    sq = np.diag(g)
    a = np.full(n, 1.0 / n)
    previous = math.inf
    for _ in range(max_iterations):
        ga = g @ a
        dist = np.sqrt(np.maximum(sq - 2.0 * ga + a @ ga, 0.0))
        objective = float(dist.sum())
        if previous - objective <= tolerance * objective:
            break
        previous = objective
        b = 1.0 / np.maximum(dist, nu)
        a = b / b.sum()
    return a


@dataclass
class GeometricMedian:
    """Geometric median (RFA): the point minimising the sum of L2 distances to the updates.

    Breakdown point 1/2: tolerates f < n/2 Byzantine workers (n >= 2f + 1 is enforced), the output
    staying within a bounded distance of the honest updates however far the others are. ``nu`` (update
    units) smooths the weights, ``max_iterations`` caps Weiszfeld's iterations and ``tolerance`` is the
    relative decrease of the objective at which it stops. Unweighted: ``weights`` are ignored, since a
    worker could overstate its sample count. Raises ``ValueError`` for n < 2f + 1 or bad input.
    """

    f: int = 0
    max_iterations: int = 100
    tolerance: float = 1e-6
    nu: float = 1e-6
    name: str = field(default="geometric_median", init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)
        check_count("geomed_iters", self.max_iterations, 1)
        for label, value in (("geomed_eps", self.tolerance), ("nu", self.nu)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive finite number, got {value!r}")

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name)
        require_cohort(self.name, x.shape[0], self.f, self.min_clients(), "2f + 1")
        g, _ = centered_gram(x)
        a = weiszfeld_coefficients(g, nu=self.nu, max_iterations=self.max_iterations,
                                   tolerance=self.tolerance)
        return combine_rows(a, x)  # an affine combination (sum(a) = 1) does not depend on the center
