"""The seed README's client API: a thin façade over the worker's trainer and DEALER loop.

    client = FederatedClient(config=ClientConfig(client_id="client_0"), model_factory=SimpleModel,
                             train_data=(X_train, y_train))
    update = client.train_local(round_id=0)   # one local training pass, no network
    client.run()                              # serve a broker's rounds at config.server_address
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from mlx import nn

from federated.config import ClientConfig
from federated.models import get_weights
from federated.worker.loop import ClientData, WorkerLoop, task_seed
from federated.worker.runner import ModelRunner

__all__ = ["ClientUpdate", "FederatedClient"]


@dataclass(frozen=True)
class ClientUpdate:
    """A local training result: ``update`` = trained weights - starting weights (float32 arrays)."""

    client_id: str
    round_id: int
    num_samples: int
    update: dict[str, np.ndarray]
    metrics: dict[str, float]

    def __repr__(self) -> str:
        norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in self.update.values())))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return (f"ClientUpdate(client_id={self.client_id!r}, round_id={self.round_id}, "
                f"num_samples={self.num_samples}, tensors={len(self.update)}, update_norm={norm:.4g}, {shown})")


class FederatedClient:
    """One worker with its own model and private ``train_data`` = (x (N, F) float, y (N,) int labels).

    Raises ``ValueError`` if the data are empty or mismatched (on first training).
    """

    def __init__(self, config: ClientConfig, model_factory: Callable[[], nn.Module],
                 train_data: tuple[np.ndarray, np.ndarray], *, seed: int = 0) -> None:
        self.config = config
        self.model = model_factory()
        self.x = np.asarray(train_data[0], dtype=np.float32)
        self.y = np.asarray(train_data[1]).astype(np.int32)
        self.seed = seed
        self._runner = ModelRunner(model=self.model)

    def train_local(self, round_id: int = 0, global_weights: Mapping[str, np.ndarray] | None = None) -> ClientUpdate:
        """Train locally from ``global_weights`` (default: the model's current weights).

        Uses the ClientConfig's epochs, batch size, learning rate and optimizer. Afterwards the client's
        model holds the locally trained weights.
        """
        start = dict(global_weights) if global_weights is not None else get_weights(self.model)
        c = self.config
        result = self._runner.trainer({}).fit(start, self.x, self.y, c.training().to_train_config(),
                                              seed=task_seed(self.seed, round_id, c.client_id))
        return ClientUpdate(c.client_id, round_id, result.num_samples, result.update,
                            {"loss": result.loss, "accuracy": result.accuracy, "train_s": result.train_s})

    def run(self) -> int:
        """Connect to the broker at ``config.server_address`` and serve rounds until it says BYE.

        In a federated run the broker's TASK sets the training configuration. Returns 0 when the broker
        finished training, 1 if stopped.
        """
        data = ClientData(self.config.client_id, self.x, self.y)
        return WorkerLoop([data], self.config.server_address, self._runner.fit).run()
