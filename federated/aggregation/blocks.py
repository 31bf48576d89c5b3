"""Column blocks and BLAS threads: how the rules walk a wide ``(n, d)`` matrix fast and in bounded memory.

A float32 matrix is combined in float64 one block of columns at a time (never a float64 copy of the
whole matrix), and column-parallel work is spread over a few threads (numpy and BLAS release the GIL)
with BLAS held to one thread meanwhile. Imports nothing else of :mod:`federated.aggregation`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

__all__ = ["BLOCK_COLUMNS", "combine_rows", "map_column_blocks", "thread_count"]

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
