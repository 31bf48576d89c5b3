"""Models: built-in MLP, CNN, 1-D CNN and logistic regression, user models from ``MODULE:FACTORY``, and weights as NumPy arrays.

Imports MLX; the broker and aggregation code use only the NumPy side (``dict[str, np.ndarray]``).
"""

from __future__ import annotations

from federated.models.builtin import CNN, CNN1D, MLP, Logistic
from federated.models.errors import ModelError
from federated.models.factory import MODEL_SPECS, build_model
from federated.models.weights import flat_parameters, get_weights, set_weights

__all__ = [
    "CNN",
    "CNN1D",
    "MLP",
    "MODEL_SPECS",
    "Logistic",
    "ModelError",
    "build_model",
    "flat_parameters",
    "get_weights",
    "set_weights",
]
