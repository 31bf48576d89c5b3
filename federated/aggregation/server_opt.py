"""Server optimizers: turn the aggregated update into the next global model.

Plain FedAvg is a server step of learning rate 1.0: ``w <- w + lr * mean_update``. Adaptive optimizers
(Reddi et al. 2021) plug in behind the same :class:`ServerOptimizer` interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

__all__ = ["FedAvgServer", "ServerOptimizer"]


class ServerOptimizer(Protocol):
    """Applies one aggregated update (a pseudo-gradient with the sign of a descent step)."""

    def step(self, weights: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the new global weights; never modifies its arguments."""
        ...


class FedAvgServer:
    """``w + lr * update``: FedAvg when ``lr`` is 1.0 (the default)."""

    def __init__(self, learning_rate: float = 1.0) -> None:
        if not learning_rate > 0:
            raise ValueError(f"server learning rate must be positive, got {learning_rate}")
        self.learning_rate = learning_rate

    def step(self, weights: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        lr = np.float32(self.learning_rate)
        return {name: (w + lr * update[name]).astype(np.float32) for name, w in weights.items()}
