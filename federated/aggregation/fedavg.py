"""Weighted federated averaging of model updates (McMahan et al. 2017). numpy in, numpy out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["check_compatible", "weighted_mean"]


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
