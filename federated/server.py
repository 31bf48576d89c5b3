"""The seed README's server API: a thin façade over the broker service.

    server = FederatedServer(config=FederatedConfig(num_clients=10, clients_per_round=5, num_rounds=100),
                             model_factory=SimpleModel)
    results = server.train_federated()   # serves real workers on config.broker.bind until done

Without ``model_factory`` the model is ``config.model`` built for ``config.dataset``, and the broker
evaluates each round on that data set's test split. With a ``model_factory``, pass ``eval_data=(x, y)``
to get held-out accuracy; workers must run the same model (``FederatedClient`` with the same factory, or
``flworker --model MODULE:FACTORY``). Either way, workers that hold an evaluation split (``test.npz``)
score each model on it: ``final_federated_accuracy`` (federated evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlx import nn

from federated.broker.service import BrokerOutcome, serve
from federated.broker.store import RoundRecord
from federated.config import FederatedConfig
from federated.models import get_weights
from federated.worker.runner import ModelRunner

__all__ = ["FederatedServer", "TrainingResults"]


@dataclass(frozen=True)
class TrainingResults:
    """What ``train_federated`` returns: the rounds as recorded, the final model, and how it ended."""

    rounds: tuple[RoundRecord, ...]
    weights: dict[str, np.ndarray]
    completed: int
    failed: bool
    reason: str
    store: str

    @property
    def final_accuracy(self) -> float | None:
        """The final model's accuracy on the server's held-out data (None without ``eval_data``)."""
        complete = [r for r in self.rounds if r.status == "complete"]
        return complete[-1].accuracy if complete else None

    @property
    def final_federated_accuracy(self) -> float | None:
        """The final model's accuracy on the workers' own held-out data (federated evaluation; None if no
        worker holds an evaluation split)."""
        complete = [r for r in self.rounds if r.status == "complete"]
        return complete[-1].fed_accuracy if complete else None

    def __repr__(self) -> str:
        return (f"TrainingResults(completed={self.completed}, failed={self.failed}, reason={self.reason!r}, "
                f"final_accuracy={self.final_accuracy}, final_federated_accuracy={self.final_federated_accuracy}, "
                f"store={self.store!r})")


class FederatedServer:
    """Coordinates ``config.num_rounds`` rounds over the workers that connect to ``config.broker.bind``."""

    def __init__(self, config: FederatedConfig, model_factory: Callable[[], nn.Module] | None = None, *,
                 eval_data: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.config = config
        self.model_factory = model_factory
        self.eval_data = eval_data

    def _prepare(self) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
        if self.model_factory is None:
            from federated.cli.broker import prepare_model

            return prepare_model(self.config)
        model = self.model_factory()
        spec = f"{self.model_factory.__module__}:{self.model_factory.__qualname__}"
        weights = get_weights(model)
        description: dict[str, Any] = {"spec": spec}
        evaluate = None
        if self.eval_data is not None:
            x = np.asarray(self.eval_data[0], np.float32)
            y = np.asarray(self.eval_data[1]).astype(np.int32)
            description.update(input_shape=list(x.shape[1:]), num_classes=int(y.max()) + 1)
            evaluate = ModelRunner(model=model).evaluator(description, x, y)
        return weights, evaluate, {"model": description}

    def train_federated(self) -> TrainingResults:
        """Serve rounds until ``num_rounds`` are complete or too many fail; blocks until then.

        With ``privacy_budget`` set, differential privacy is on (``config.privacy``; central by default) and
        training stops before the first round that would spend past the budget. Raises ``StoreError`` for
        an unusable store, ``ValueError`` if the noise cannot be calibrated to the budget.
        """
        weights, evaluate, task_config = self._prepare()
        outcome: BrokerOutcome = serve(self.config, weights, evaluate=evaluate, task_config=task_config)
        return TrainingResults(outcome.history, outcome.weights, outcome.completed, outcome.failed,
                               outcome.reason, self.config.broker.store)
