"""The common interface of aggregation rules: :class:`Rule`, :data:`RULES` and :func:`make_rule`.

A rule maps a stacked ``(n, d)`` matrix of worker updates (one flattened update a row) to one ``(d,)``
float64 vector. Every rule except ``"mean"`` is Byzantine-robust: it tolerates ``f`` arbitrary rows as
long as the cohort is large enough (``Rule.min_clients``), and refuses smaller cohorts with ``ValueError``
rather than silently averaging. The rules themselves live one concept a module (``coordinate``,
``distance``, ``geomed``, ``clipping``); this module holds what they share.

Input dtype: float32 matrices are aggregated without a float64 copy of the whole matrix (products and
sorts run in float32, sums accumulate in float64); any other real dtype is converted to float64.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np

__all__ = ["BLOCK_COLUMNS", "MAX_MAGNITUDE", "RULES", "Mean", "Rule", "as_update_matrix", "check_count",
           "check_positive", "combine_rows", "make_rule", "map_column_blocks", "raise_non_finite",
           "require_cohort", "thread_count"]

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
         "centered_clipping", "norm_bounding")

# Columns per block when a float32 matrix is combined in float64: 16k columns of 50 rows is 6.5 MB of
# float64 scratch, small enough to stay in cache, large enough that the Python loop costs nothing.
BLOCK_COLUMNS = 16384
# Column-parallel work uses up to this many threads (numpy and BLAS release the GIL), and only with at
# least this many columns per thread: below that, starting threads costs more than it saves.
_MAX_THREADS = 4
_MIN_COLUMNS_PER_THREAD = 65536

T = TypeVar("T")

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - an optional speed-up
    ThreadpoolController = None
_blas_controller: Any = None

#: Largest magnitude accepted in a non-float32 update (2**400, about 2.6e120): differences and squared
#: norms of such updates stay finite in float64 for any d below 2**200.
MAX_MAGNITUDE = 2.0**400


class Rule(Protocol):
    """An aggregation rule over a stacked ``(n, d)`` matrix of updates."""

    name: str
    needs_individual_updates: bool  # False only for "mean", which secure aggregation can compute

    def min_clients(self) -> int:
        """Smallest cohort ``n`` for which the rule's guarantee holds at its ``f``."""
        ...

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Aggregate ``updates`` (n, d) into a (d,) float64 vector.

        Raises ``ValueError`` when ``n < min_clients()`` and for non-2-D or non-finite input.
        """
        ...


def as_update_matrix(updates: np.ndarray, rule: str, *, check_finite: bool = True) -> np.ndarray:
    """``updates`` as a finite 2-D float matrix: float32 is kept as is (no copy), other reals become float64.

    Raises ``ValueError`` naming ``rule`` for a non-2-D or non-real input, NaN or inf, and (for inputs
    that are not float32) magnitudes beyond :data:`MAX_MAGNITUDE`. ``check_finite=False`` skips the
    NaN/inf pass over a float32 matrix, for callers that detect non-finite values from what they
    compute anyway (sorted extremes, Gram matrix, norms) and then call :func:`raise_non_finite`.
    """
    x = np.asarray(updates)
    if x.ndim != 2:
        raise ValueError(f"{rule}: updates must be a 2-D (n, d) array, got shape {x.shape}")
    if x.dtype == np.float32:
        # Any finite float32 matrix is safe: its Gram matrix and differences cannot overflow float64.
        if check_finite and not np.isfinite(x).all():
            raise_non_finite(x, rule)
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{rule}: updates must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    # NaN fails the comparison too. The bound keeps every squared distance finite in float64.
    if x.size and not np.abs(x).max() <= MAX_MAGNITUDE:
        raise_non_finite(x, rule)
    return x


def raise_non_finite(x: np.ndarray, rule: str) -> NoReturn:
    """Raise the ``ValueError`` for NaN, inf or out-of-range values in ``x``, listing the first bad rows."""
    if x.dtype == np.float32:
        ok, limit = np.isfinite(x).all(axis=1), ""
    else:
        ok, limit = (np.abs(x) <= MAX_MAGNITUDE).all(axis=1), " or values beyond +-2**400"
    bad = np.flatnonzero(~ok)[:8].tolist()
    raise ValueError(f"{rule}: updates contain NaN or inf{limit} (rows {bad})")


def require_cohort(rule: str, n: int, f: int, minimum: int, requirement: str) -> None:
    """Raise ``ValueError`` naming the rule, ``n``, ``f`` and the requirement unless ``n >= minimum``."""
    if n < minimum:
        raise ValueError(f"{rule} needs n >= {requirement} = {minimum} updates to tolerate f={f} "
                         f"Byzantine workers, got n={n}")


def thread_count(columns: int) -> int:
    """Threads worth using for column-parallel work on ``columns`` columns (1 for small inputs)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, cpus, columns // _MIN_COLUMNS_PER_THREAD))


def map_column_blocks(work: Callable[[slice], T], columns: int, block_columns: int = BLOCK_COLUMNS) -> list[T]:
    """``[work(block) for block in blocks]`` over consecutive column slices covering ``range(columns)``,
    in order, spread over :func:`thread_count` threads. ``work`` must only write its own columns."""
    blocks = [slice(start, start + block_columns) for start in range(0, columns, block_columns)]
    threads = thread_count(columns)
    if threads == 1:
        return [work(block) for block in blocks]
    with _single_threaded_blas(), ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(work, blocks))


def _single_threaded_blas() -> contextlib.AbstractContextManager[object]:
    """Limit BLAS to one thread while our threads each call it: otherwise OpenBLAS's threads compete
    with ours and keep spinning afterwards (measured on 2 cores: Gram 94 -> 66 ms, Bulyan 294 -> 221).
    threadpoolctl comes with scikit-learn; without it, this does nothing."""
    global _blas_controller
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()  # inspects the loaded libraries once, ~4 ms
    limit: contextlib.AbstractContextManager[object] = _blas_controller.limit(limits=1, user_api="blas")
    return limit


def combine_rows(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``coefficients @ x`` as a (d,) float64 vector, accumulated in float64 block by block.

    A float32 ``x`` is widened 16k columns at a time, so no float64 copy of the whole matrix is made.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    if x.dtype == np.float64:
        return np.asarray(c @ x, dtype=np.float64)
    out = np.empty(x.shape[1], dtype=np.float64)
    # One thread, BLAS included: these matrix-vector products are memory-bound, and threading them
    # (ours or OpenBLAS's) only added contention on 2 cores (measured: 21 ms single, 26-100 ms threaded).
    with _single_threaded_blas():
        for start in range(0, x.shape[1], BLOCK_COLUMNS):
            block = slice(start, start + BLOCK_COLUMNS)
            np.matmul(c, x[:, block].astype(np.float64), out=out[block])
    return out


def _normalised_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"mean: expected {n} weights, got shape {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"mean: weights must be finite and non-negative, got {w[:8].tolist()}")
    total = math.fsum(w.tolist())
    if not total > 0:
        raise ValueError(f"mean: total weight must be positive, got {total}")
    return w / total


@dataclass
class Mean:
    """Weighted mean (FedAvg). Tolerates no Byzantine worker: one row can move it anywhere.

    ``weights`` (e.g. sample counts) are used when given, uniform otherwise; ``f`` is accepted so that
    callers can pass the same configuration to every rule, and is ignored. Raises ``ValueError`` for an
    empty cohort, bad input or weights of the wrong length, negative, non-finite or summing to zero.
    """

    f: int = 0
    name: str = field(default="mean", init=False)
    needs_individual_updates: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        check_count("f", self.f, 0)

    def min_clients(self) -> int:
        return 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)
        require_cohort(self.name, x.shape[0], self.f, self.min_clients(), "1")
        out = combine_rows(_normalised_weights(weights, x.shape[0]), x)
        if not np.isfinite(out).all():  # float64 sums of finite float32 values cannot overflow
            raise_non_finite(x, self.name)
        return out


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or ``ValueError`` naming ``name`` unless it is an integer >= ``minimum``."""
    # 2.5 and "3" are refused rather than truncated or parsed; bool is an int subclass but no count.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value: object) -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` unless it is a positive finite number."""
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def make_rule(name: str, *, f: int = 0, trim_ratio: float = 0.1, multi_krum_m: int | None = None,
              clip_tau: float = 1.0, norm_bound: float = 1.0, geomed_iters: int = 100,
              geomed_eps: float = 1e-6) -> Rule:
    """The rule called ``name`` (one of :data:`RULES`), tolerating ``f`` Byzantine workers.

    ``trim_ratio`` is the fraction trimmed at each end by ``trimmed_mean`` (in [0, 0.5));
    ``multi_krum_m`` the number of updates Multi-Krum averages (default ``n - f``); ``clip_tau`` the
    clipping radius of centered clipping and ``norm_bound`` that of norm bounding (L2, in update units);
    ``geomed_iters``/``geomed_eps`` the Weiszfeld iteration cap and relative tolerance. Every parameter
    is validated whichever rule is chosen, so a bad configuration fails early. Raises ``ValueError`` for
    an unknown name (listing :data:`RULES`) or a bad parameter (naming it and its allowed values).
    """
    # Imported here: the rule modules import this module's helpers, so a top-level import would cycle.
    from federated.aggregation.clipping import CenteredClipping, NormBounding
    from federated.aggregation.coordinate import CoordinateMedian, TrimmedMean
    from federated.aggregation.distance import Bulyan, Krum, MultiKrum
    from federated.aggregation.geomed import GeometricMedian

    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; choose one of {', '.join(RULES)}")
    f = check_count("f", f, 0)
    if isinstance(trim_ratio, bool) or not (isinstance(trim_ratio, numbers.Real) and 0 <= float(trim_ratio) < 0.5):
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio!r}")
    m = None if multi_krum_m is None else check_count("multi_krum_m", multi_krum_m, 1)
    tau = check_positive("clip_tau", clip_tau)
    bound = check_positive("norm_bound", norm_bound)
    iters = check_count("geomed_iters", geomed_iters, 1)
    eps = check_positive("geomed_eps", geomed_eps)
    factories: dict[str, Callable[[], Rule]] = {
        "mean": lambda: Mean(f=f),
        "median": lambda: CoordinateMedian(f=f),
        "trimmed_mean": lambda: TrimmedMean(f=f, trim_ratio=float(trim_ratio)),
        "krum": lambda: Krum(f=f),
        "multi_krum": lambda: MultiKrum(f=f, m=m),
        "bulyan": lambda: Bulyan(f=f),
        "geometric_median": lambda: GeometricMedian(f=f, max_iterations=iters, tolerance=eps),
        "centered_clipping": lambda: CenteredClipping(f=f, tau=tau),
        "norm_bounding": lambda: NormBounding(f=f, bound=bound),
    }
    return factories[name]()
