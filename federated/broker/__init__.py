"""The broker: round lifecycle (no I/O), ROUTER loop, worker registry, round store, and wiring.

Where things are: ``coordinator`` (the round lifecycle: a state machine fed messages and the time),
``admission`` (who may speak, for which worker id; rate-limited refusals), ``planning`` (a frozen
``RoundPlan``: cohort, buckets, secure parameters, compression seed, TASK settings), one collector per
mode behind ``collector``'s interface (``plain_round``, ``secure_round``), ``aggregate`` (detection,
buckets, the rule and the server step, on flat vectors), ``records`` (a round's ``RoundRecord``),
``resume`` (what a restarted broker continues from); ``registry`` and ``selection`` (workers, liveness,
cohort strategies), ``store`` (SQLite and checkpoints), ``loop`` (the ROUTER driver), ``service`` (a
broker run).
"""

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
