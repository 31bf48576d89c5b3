"""Runs a broker: opens the store, builds the coordinator and the ROUTER loop, handles signals.

This is what ``flbroker`` / ``fl broker`` and ``fl simulate``'s broker process call. It needs no MLX: the
initial weights, the evaluator and the model description come from the caller.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np

from federated.broker.coordinator import Coordinator, Evaluator
from federated.broker.errors import StoreError
from federated.broker.loop import BrokerLoop
from federated.broker.store import RoundRecord, RoundStore
from federated.config import FederatedConfig

__all__ = ["BrokerOutcome", "serve"]

log = logging.getLogger("federated.broker")


@dataclass(frozen=True)
class BrokerOutcome:
    """How a broker run ended: rounds completed, whether it stopped on failure, and why."""

    completed: int
    failed: bool
    interrupted: bool
    reason: str
    history: tuple[RoundRecord, ...]
    weights: dict[str, np.ndarray]


def serve(
    config: FederatedConfig,
    initial_weights: Mapping[str, np.ndarray],
    *,
    evaluate: Evaluator | None = None,
    task_config: Mapping[str, Any] | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> BrokerOutcome:
    """Serve ``config.num_rounds`` rounds on ``config.broker.bind``, recording into ``config.broker.store``.

    Raises :class:`StoreError` if the store cannot be opened or already holds rounds (resuming a run is
    not supported yet: pick a new store path). SIGINT and SIGTERM stop the loop after the current step.
    """
    store = RoundStore(config.broker.store)
    try:
        if store.list_rounds():
            raise StoreError(f"store {config.broker.store} already holds a run; use a new --store path")
        store.set_meta("config", config.to_dict(resolved=True))
        store.save_initial({k: np.asarray(v, np.float32) for k, v in initial_weights.items()})
        coordinator = Coordinator(config, initial_weights, store=store, evaluate=evaluate,
                                  on_round=on_round, task_config=task_config)
        loop = BrokerLoop(coordinator, config.broker.bind)
        interrupted = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal interrupted
            interrupted = True
            loop.stop()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if on_listening is not None:
                loop.on_bound = on_listening
            loop.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        store.set_meta("outcome", {"completed": coordinator.completed, "failed": coordinator.failed,
                                   "interrupted": interrupted, "reason": coordinator.exit_reason})
        return BrokerOutcome(coordinator.completed, coordinator.failed, interrupted,
                             coordinator.exit_reason or ("interrupted" if interrupted else ""),
                             tuple(coordinator.history), coordinator.weights)
    finally:
        store.close()
