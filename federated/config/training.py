"""The run's training section: what the broker asks of every worker's local training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federated.config.checks import number, positive_int
from federated.config.errors import ConfigError

__all__ = ["OPTIMIZERS", "TrainingConfig"]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainingConfig:
    """Local training that the broker asks of every worker (sent in each TASK)."""

    local_epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0

    def validate(self, prefix: str = "training") -> None:
        positive_int(f"{prefix}.local_epochs", self.local_epochs)
        positive_int(f"{prefix}.batch_size", self.batch_size)
        number(f"{prefix}.learning_rate", self.learning_rate, 0.0, 10.0, open_lo=True)
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{prefix}.optimizer", f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        number(f"{prefix}.momentum", self.momentum, 0.0, 0.999)
        number(f"{prefix}.proximal_mu", self.proximal_mu, 0.0, 1e6)

    def to_task_config(self) -> dict[str, Any]:
        """The training section of a TASK message (keys of ``federated.worker.trainer.TrainConfig``)."""
        return {"epochs": self.local_epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "optimizer": self.optimizer,
                "momentum": self.momentum, "proximal_mu": self.proximal_mu}
