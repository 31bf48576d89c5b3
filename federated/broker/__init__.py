"""The broker: round state machine (no I/O), ROUTER loop, worker registry, round store, and wiring."""

from __future__ import annotations

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Evaluator, Outbound
from federated.broker.errors import BrokerError, StoreError
from federated.broker.loop import BrokerLoop
from federated.broker.registry import WorkerRecord, WorkerRegistry
from federated.broker.service import BrokerOutcome, serve
from federated.broker.store import RoundRecord, RoundStore

__all__ = [
    "STAGE_TRAIN",
    "BrokerError",
    "BrokerLoop",
    "BrokerOutcome",
    "Coordinator",
    "Evaluator",
    "Outbound",
    "RoundRecord",
    "RoundStore",
    "StoreError",
    "WorkerRecord",
    "WorkerRegistry",
    "serve",
]
