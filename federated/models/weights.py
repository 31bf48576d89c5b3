"""Moving weights between an MLX model and named float32 NumPy arrays (the wire and aggregation format).

Names are ``mlx.utils.tree_flatten`` paths of ``model.parameters()``, e.g. ``layers.0.weight``.
"""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten

from federated.models.errors import ModelError

__all__ = ["flat_parameters", "get_weights", "set_weights"]


def flat_parameters(tree: Any) -> list[tuple[str, mx.array]]:
    """``tree_flatten`` of a parameter tree, typed: ``[(dotted name, array), ...]`` in a stable order."""
    return cast(list[tuple[str, mx.array]], tree_flatten(tree))


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Copy the model's parameters out as ``{name: float32 ndarray}`` in ``tree_flatten`` order.

    The arrays are fresh copies: later training does not change them, and changing them does not change
    the model.
    """
    params = flat_parameters(model.parameters())
    # One eval for all parameters instead of one implicit sync per tensor.
    mx.eval([value for _, value in params])
    return {name: np.array(value.astype(mx.float32), dtype=np.float32, copy=True) for name, value in params}


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load ``weights`` into the model; names and shapes must match the model's parameters exactly.

    Values are converted to float32. Raises :class:`ModelError` naming the first missing, unexpected or
    mis-shaped tensor (checked before anything is changed, so a failed call leaves the model as it was).
    """
    current = dict(flat_parameters(model.parameters()))
    for name, value in current.items():
        if name not in weights:
            raise ModelError(f"weights are missing tensor {name!r} (model has {len(current)} tensors)")
        given = weights[name]
        if not isinstance(given, np.ndarray):
            raise ModelError(f"tensor {name!r} must be a numpy array, got {type(given).__name__}")
        if tuple(given.shape) != tuple(value.shape):
            raise ModelError(f"tensor {name!r} has shape {given.shape}, model expects {tuple(value.shape)}")
        if given.dtype.kind not in "fiu":
            raise ModelError(f"tensor {name!r} has non-numeric dtype {given.dtype}")
    for name in weights:
        if name not in current:
            raise ModelError(f"weights have tensor {name!r} that the model does not have")
    model.update(
        tree_unflatten([(name, mx.array(np.asarray(weights[name], dtype=np.float32))) for name in current])
    )
