"""Weighted federated averaging of model updates (McMahan et al. 2017). numpy in, numpy out.

:func:`weighted_mean` averages per-tensor updates; :class:`Mean` is the same average as an aggregation
:class:`~federated.aggregation.rule.Rule` over a stacked ``(n, d)`` matrix (the ``"mean"`` rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from federated.aggregation.blocks import combine_rows
from federated.aggregation.rule import as_update_matrix, check_count, raise_non_finite, require_cohort

__all__ = ["Mean", "check_compatible", "weighted_mean"]


def check_compatible(reference: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``update`` has exactly ``reference``'s tensor names and shapes."""
    if reference.keys() != update.keys():
        missing = sorted(reference.keys() - update.keys())[:3]
        extra = sorted(update.keys() - reference.keys())[:3]
        raise ValueError(f"update tensors do not match the model (missing {missing}, unexpected {extra})")
    for name, ref in reference.items():
        if update[name].shape != ref.shape:
            raise ValueError(f"update tensor {name!r} has shape {update[name].shape}, model has {ref.shape}")


def weighted_mean(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-tensor mean of ``updates`` weighted by ``weights`` (e.g. sample counts), as float32.

    Accumulates in float64 so that the order of arrival does not change the result beyond float32
    rounding. Raises ``ValueError`` for no updates, mismatched lengths, updates whose tensor names or
    shapes differ, a negative or non-finite weight, or a non-positive total weight.
    """
    if not updates:
        raise ValueError("cannot average zero updates")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    for update in updates[1:]:
        check_compatible(updates[0], update)  # numpy would broadcast a (1, n) tensor silently
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)[:8]}")
    total = math.fsum(weights)
    if not total > 0:
        raise ValueError(f"total weight must be positive, got {total}")
    out: dict[str, np.ndarray] = {}
    for name in updates[0]:
        acc = np.zeros(updates[0][name].shape, dtype=np.float64)
        for update, w in zip(updates, weights):
            # float64 before multiplying: a Python float times a float32 array stays float32 (NEP 50).
            acc += (w / total) * np.asarray(update[name], dtype=np.float64)
        out[name] = acc.astype(np.float32)
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
