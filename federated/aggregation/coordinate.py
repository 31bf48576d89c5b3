"""Coordinate-wise robust rules: the median and the trimmed mean (Yin et al. 2018).

Both treat each coordinate independently, over the ``n`` workers' values for it, so both are computed
from one sort of the ``(n, d)`` matrix along axis 0. ``np.sort`` is used rather than ``np.partition`` or
``np.median``: on float32 columns of ~50 values numpy's SIMD sort is about 5x faster than its
introselect, and the sort is split over a few threads (numpy releases the GIL while sorting).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from federated.aggregation.robust import as_update_matrix, check_count, require_cohort

__all__ = ["CoordinateMedian", "TrimmedMean", "median_of_sorted", "sort_columns"]

# Below this many columns per thread, starting threads costs more than it saves.
_MIN_COLUMNS_PER_THREAD = 65536
_MAX_THREADS = 4


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def sort_columns(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` (n, d) with each column sorted ascending (each coordinate across workers)."""
    s = np.array(x, copy=True)
    threads = min(_MAX_THREADS, _available_cpus(), s.shape[1] // _MIN_COLUMNS_PER_THREAD)
    if threads <= 1:
        s.sort(axis=0)
        return s
    bounds = np.linspace(0, s.shape[1], threads + 1).astype(int).tolist()

    def sort_block(i: int) -> None:
        s[:, bounds[i]:bounds[i + 1]].sort(axis=0)  # in place on a view of disjoint columns

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(sort_block, range(threads)))
    return s


def median_of_sorted(s: np.ndarray) -> np.ndarray:
    """The per-column median (d,) float64 of a column-sorted ``s`` (n, d); even n averages the middle two."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].astype(np.float64)
    return 0.5 * (s[n // 2 - 1].astype(np.float64) + s[n // 2])


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
        x = as_update_matrix(updates, self.name)
        require_cohort(self.name, x.shape[0], self.f, self.min_clients(), "2f + 1")
        return median_of_sorted(sort_columns(x))


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
        if not 0 <= self.trim_ratio < 0.5:
            raise ValueError(f"trim_ratio must be in [0, 0.5), got {self.trim_ratio!r}")

    def trimmed(self, n: int) -> int:
        """How many values are dropped at each end of a coordinate in a cohort of ``n``."""
        return max(self.f, math.floor(self.trim_ratio * n))

    def min_clients(self) -> int:
        return 2 * self.f + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name)
        n = x.shape[0]
        require_cohort(self.name, n, self.f, self.min_clients(), "2f + 1")
        k = self.trimmed(n)
        return sort_columns(x)[k:n - k].mean(axis=0, dtype=np.float64)
