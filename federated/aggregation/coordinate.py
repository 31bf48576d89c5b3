"""Coordinate-wise robust rules: the median and the trimmed mean (Yin et al. 2018).

Both treat each coordinate independently, over the ``n`` workers' values for it, so both come from
sorting each column of the ``(n, d)`` matrix. How matters at d = 1M (measured, float32, n = 50):
``np.median``/``np.partition`` along axis 0 take ~800 ms, ``np.sort(axis=0)`` ~150 ms. Faster still is
to copy a block of 16k columns transposed (coordinates as rows, ~0.3 ms) and sort along the last axis
(~1.5 ms), block by block on a few threads (numpy releases the GIL), reducing each sorted block while
it is in cache: the matrix is never copied whole.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from federated.aggregation.blocks import map_column_blocks
from federated.aggregation.rule import as_update_matrix, check_count, raise_non_finite, require_cohort

__all__ = ["CoordinateMedian", "TrimmedMean", "coordinate_median", "map_sorted_blocks", "median_of_rows"]

T = TypeVar("T")


def map_sorted_blocks(x: np.ndarray, work: Callable[[np.ndarray, slice], T], *, rule: str) -> list[T]:
    """``work(s, columns)`` for consecutive column blocks of ``x`` (n, d), where ``s`` (w, n) holds the
    block's coordinates as rows, each sorted ascending; results in block order.

    Raises ``ValueError`` naming ``rule`` if ``x`` holds NaN or inf: sorted, they sit in the first or
    last column of ``s``, so checking those two columns checks everything.
    """
    n = x.shape[0]

    def sorted_block(columns: slice) -> T:
        block = x[:, columns]
        s = np.empty((block.shape[1], n), dtype=x.dtype)
        np.copyto(s.T, block)
        s.sort(axis=1)
        if n and not (np.isfinite(s[:, 0]).all() and np.isfinite(s[:, -1]).all()):  # NaN sorts last
            raise_non_finite(x, rule)
        return work(s, columns)

    return map_column_blocks(sorted_block, x.shape[1])


def median_of_rows(s: np.ndarray) -> np.ndarray:
    """The median (w,) float64 of each row of a row-sorted ``s`` (w, n); even n averages the middle two."""
    n = s.shape[1]
    median: np.ndarray = s[:, n // 2].astype(np.float64)
    if n % 2 == 0:
        median += s[:, n // 2 - 1]
        median *= 0.5
    return median


def coordinate_median(x: np.ndarray, *, rule: str = "median") -> np.ndarray:
    """The coordinate-wise median (d,) float64 of ``x`` (n, d), n >= 1. Raises ``ValueError`` naming
    ``rule`` for NaN or inf."""
    out = np.empty(x.shape[1], dtype=np.float64)

    def median(s: np.ndarray, columns: slice) -> None:
        out[columns] = median_of_rows(s)

    map_sorted_blocks(x, median, rule=rule)
    return out


@dataclass
class CoordinateMedian:
    """Coordinate-wise median. Tolerates f < n/2 Byzantine workers (breakdown point 1/2).

    With n >= 2f + 1, every output coordinate lies within the honest workers' values for it. Unweighted:
    ``weights`` are ignored, since a weighted median would let a worker that overstates its sample count
    outvote the others. Raises ``ValueError`` for n < 2f + 1 or bad input.
    """

    f: int = 0
    name: str = field(default="median", init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)  # the sort checks
        require_cohort(self.name, x.shape[0], self.f, self.min_clients(), "2f + 1")
        return coordinate_median(x, rule=self.name)


@dataclass
class TrimmedMean:
    """Coordinate-wise trimmed mean: per coordinate, drop the ``k`` largest and ``k`` smallest values
    and average the rest, where ``k = max(f, floor(trim_ratio * n))``.

    Tolerates k Byzantine workers (so at least f); needs n > 2k, which holds for every n >= 2f + 1
    since ``trim_ratio < 0.5``. With at most k attackers every output coordinate lies within the honest
    values for it. Unweighted (``weights`` are ignored, as for the median). Raises ``ValueError`` for
    n < 2f + 1 or bad input.
    """

    f: int = 0
    trim_ratio: float = 0.1
    name: str = field(default="trimmed_mean", init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)
        if isinstance(self.trim_ratio, bool) or not (isinstance(self.trim_ratio, numbers.Real)
                                                     and 0 <= float(self.trim_ratio) < 0.5):
            raise ValueError(f"trim_ratio must be in [0, 0.5), got {self.trim_ratio!r}")

    def trimmed(self, n: int) -> int:
        """How many values are dropped at each end of a coordinate in a cohort of ``n``."""
        return max(self.f, math.floor(self.trim_ratio * n))

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)  # the sort checks
        n = x.shape[0]
        require_cohort(self.name, n, self.f, self.min_clients(), "2f + 1")
        k = self.trimmed(n)
        out = np.empty(x.shape[1], dtype=np.float64)

        def trimmed_mean(s: np.ndarray, columns: slice) -> None:
            out[columns] = s[:, k:n - k].mean(axis=1, dtype=np.float64)

        map_sorted_blocks(x, trimmed_mean, rule=self.name)
        return out
