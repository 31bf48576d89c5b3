"""Named tensors <-> one flat vector, in sorted-name order (the order every party agrees on)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["flatten", "unflatten"]


def flatten(tensors: Mapping[str, np.ndarray], dtype: Any = np.float64) -> np.ndarray:
    """Concatenate ``tensors`` in sorted-name order into one ``dtype`` vector."""
    return np.concatenate([np.asarray(tensors[k], dtype).ravel() for k in sorted(tensors)])


def unflatten(vector: np.ndarray, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split ``vector`` back into float32 tensors shaped like ``reference``.

    Raises ``ValueError`` if the lengths differ.
    """
    total = sum(int(r.size) for r in reference.values())
    if vector.shape != (total,):
        raise ValueError(f"vector has shape {vector.shape}; the model has {total} parameters")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(reference):
        size = int(reference[name].size)
        out[name] = np.asarray(vector[offset:offset + size], np.float32).reshape(reference[name].shape)
        offset += size
    return out
