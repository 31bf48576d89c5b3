"""Models: built-in MLP and CNN, user models from ``MODULE:FACTORY``, and weights as NumPy arrays.

Imports MLX; the broker and aggregation code use only the NumPy side (``dict[str, np.ndarray]``).
"""

from __future__ import annotations

from federated.models.builtin import CNN, MLP
from federated.models.errors import ModelError
from federated.models.factory import MODEL_SPECS, build_model
from federated.models.weights import flat_parameters, get_weights, set_weights

__all__ = [
    "CNN",
    "MLP",
    "MODEL_SPECS",
    "ModelError",
    "build_model",
    "flat_parameters",
    "get_weights",
    "set_weights",
]
