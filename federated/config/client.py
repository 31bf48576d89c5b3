"""One worker's own settings (:class:`ClientConfig`, the seed README's API)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from federated.config.errors import ConfigError
from federated.config.training import TASK_KEYS, TrainingConfig

__all__ = ["ClientConfig"]


@dataclass(frozen=True)
class ClientConfig:
    """One worker's own settings (seed README API).

    Its training settings (``local_epochs`` to ``proximal_mu``) are the run's ``training`` section with
    their own defaults and the same bounds (:data:`~federated.config.training.TRAINING_SCHEMA`).
    :class:`federated.client.FederatedClient` uses them when it trains on its own; in a federated run the
    broker's TASK carries the training configuration, so that every worker in a round trains alike.
    """

    client_id: str = "client_0"
    server_address: str = "127.0.0.1:8080"
    data_path: str | None = None
    local_epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 16
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0
    model: str = "mlp"

    def __post_init__(self) -> None:
        if not (isinstance(self.client_id, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", self.client_id)):
            raise ConfigError("client_id", f"must be 1-128 characters of letters, digits and _.:@-, "
                                           f"got {self.client_id!r}")
        address = self.server_address
        if not (isinstance(address, str) and re.fullmatch(r"[^\s:/]+:\d{1,5}", address)):
            raise ConfigError("server_address", f"must be HOST:PORT, got {self.server_address!r}")
        self.training().validate("client")

    def training(self) -> TrainingConfig:
        """This client's training settings as a :class:`TrainingConfig`."""
        return TrainingConfig(**{name: getattr(self, name) for name in TASK_KEYS})
