"""Named tensors <-> one flat vector, in sorted-name order (the order every party agrees on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["flatten", "flatten_into", "flatten_rows", "unflatten"]


def flatten(tensors: Mapping[str, np.ndarray], dtype: Any = np.float64) -> np.ndarray:
    """Concatenate ``tensors`` in sorted-name order into one ``dtype`` vector."""
    return np.concatenate([np.asarray(tensors[k], dtype).ravel() for k in sorted(tensors)])


def flatten_into(tensors: Mapping[str, np.ndarray], out: np.ndarray) -> np.ndarray:
    """Write ``tensors`` in sorted-name order into the 1-D array ``out`` (cast to its dtype), the same
    vector :func:`flatten` makes without a new one; return ``out``. Raises ``ValueError`` if the sizes
    differ."""
    size = sum(int(np.size(t)) for t in tensors.values())
    if out.shape != (size,):
        raise ValueError(f"{size} values do not fit an array of shape {out.shape}")
    offset = 0
    for name in sorted(tensors):
        tensor = np.asarray(tensors[name]).reshape(-1)
        out[offset:offset + tensor.size] = tensor
        offset += tensor.size
    return out


def flatten_rows(updates: Sequence[Mapping[str, np.ndarray]], out: np.ndarray | None = None) -> np.ndarray:
    """The float32 matrix whose row ``i`` is ``flatten(updates[i])``, written row by row: one copy of
    the data, not a flattened copy per update and then a stacked one.

    ``out``: a float32 array to fill when its shape is (len(updates), parameters), as a caller that builds
    such a matrix every round can reuse one (fresh pages of a large array cost more to fault in than to
    fill); otherwise a new one is made. Raises ``ValueError`` if the updates differ in size.
    """
    sizes = [sum(int(np.size(t)) for t in u.values()) for u in updates]
    if len(set(sizes)) > 1:
        raise ValueError(f"updates differ in size: {sorted(set(sizes))[:3]}")
    shape = (len(updates), sizes[0] if sizes else 0)
    matrix = out if out is not None and out.shape == shape and out.dtype == np.float32 else \
        np.empty(shape, dtype=np.float32)
    for row, update in zip(matrix, updates, strict=True):
        flatten_into(update, row)
    return matrix


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
