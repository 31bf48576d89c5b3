"""What every aggregation rule shares: the :class:`Rule` interface and the input and parameter checks.

A rule maps a stacked ``(n, d)`` matrix of worker updates (one flattened update a row) to one ``(d,)``
float64 vector, and refuses a cohort too small for its guarantee with ``ValueError`` rather than
silently averaging. Input dtype: float32 matrices are kept as they are (products and sorts run in
float32, sums accumulate in float64, see :mod:`federated.aggregation.blocks`); any other real dtype is
converted to float64.

This module imports nothing else of :mod:`federated.aggregation`, so every rule module can use it and
the registry (:mod:`federated.aggregation.robust`) can import every rule module without a circle.
"""

from __future__ import annotations

import math
import numbers
from typing import NoReturn, Protocol

import numpy as np

__all__ = ["MAX_MAGNITUDE", "Rule", "as_update_matrix", "check_count", "check_positive", "raise_non_finite",
           "require_cohort"]

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
