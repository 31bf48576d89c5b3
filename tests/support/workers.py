"""Scripted secure-aggregation workers driving a real :class:`~federated.broker.coordinator.Coordinator` in
memory: real :class:`~federated.crypto.secagg_worker.SecAggWorker` state machines and real frames, no
sockets and no clock (time is a number that moves a millisecond a message)."""

from __future__ import annotations

from typing import Any

import numpy as np

from federated.broker.coordinator import Coordinator, Outbound
from federated.compression.secure import secure_plan
from federated.compression.sparsify import shared_indices
from federated.config import BrokerConfig, FederatedConfig, SecureConfig
from federated.crypto.params import SecAggParams
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import (
    Bye,
    ConsistencyCheck,
    Hello,
    Roster,
    Shares,
    Task,
    UnmaskRequest,
    decode_message,
)
from federated.worker.secure import encode_input

from .codec import wire

__all__ = ["SECURE_WEIGHTS", "HonestMember", "SecureFakeWorker", "run_coordinator_round", "secure_round_config"]

#: The model of the in-memory secure rounds: two small tensors.
SECURE_WEIGHTS = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 2), np.float32)}


class SecureFakeWorker:
    """A worker of a secure round whose update is ``delta`` everywhere (``samples`` samples), answering each
    broker message with what the real worker's secure-aggregation machine would."""

    def __init__(self, wid: str, samples: int, delta: float, scores: tuple[float, float] | None = None) -> None:
        self.wid, self.samples = wid, samples
        self.scores = scores  # (loss, accuracy) it reports when a TASK asks it to score the model
        self.identity, public = generate_identity()
        self.hello = Hello(wid, samples, ("train",), public.hex())
        self.update = {k: np.full(v.shape, delta, np.float32) for k, v in SECURE_WEIGHTS.items()}
        self.machine: SecAggWorker | None = None
        self.encoded: np.ndarray | None = None

    def answer(self, msg: Any) -> Any:
        """The reply to ``msg`` (a decoded message), or None."""
        if isinstance(msg, Task):
            params = SecAggParams.from_dict(msg.config["secagg"])
            self.machine = SecAggWorker(self.wid, self.identity, msg.round_id, params)
            indices = None
            plan = secure_plan(msg.config.get("compression", "none"))
            if plan.fraction is not None:
                size = sum(int(v.size) for v in self.update.values())
                indices = shared_indices(size, plan.fraction, msg.config["compression_seed"])
            metrics = {"loss": 1.0, "accuracy": 0.5}
            if msg.config.get("evaluate") is True and self.scores is not None:
                metrics.update(eval_loss=self.scores[0], eval_accuracy=self.scores[1])
            update = {} if msg.config.get("evaluate_only") is True else self.update
            self.encoded = encode_input(update, metrics, self.samples, params, indices)
            return self.machine.advertise()
        if not isinstance(msg, (Roster, Shares, ConsistencyCheck, UnmaskRequest)):
            return None  # WELCOME, HEARTBEAT, BYE
        assert self.machine is not None and self.encoded is not None
        if isinstance(msg, Roster):
            return self.machine.on_roster(msg)
        if isinstance(msg, Shares):
            self.machine.on_shares(msg)
            return self.machine.masked_input(self.encoded, 0.01)
        if isinstance(msg, ConsistencyCheck):
            return self.machine.on_consistency(msg)
        if isinstance(msg, UnmaskRequest):
            return self.machine.on_unmask(msg)
        return None


class HonestMember(SecureFakeWorker):
    """An honest member; under distributed DP it adds its Skellam share, as ``federated.worker`` does."""

    def answer(self, msg: Any) -> Any:
        reply = super().answer(msg)
        if isinstance(msg, Task):
            params = SecAggParams.from_dict(msg.config["secagg"])
            mu = msg.config.get("privacy", {}).get("skellam_mu")
            self.encoded = encode_input(self.update, {"loss": 1.0, "accuracy": 0.5}, self.samples, params,
                                        skellam_mu=mu)
            self.params = params
        return reply


def secure_round_config(n: int) -> FederatedConfig:
    """One secure round of ``n`` workers (``min_clients`` 2), heartbeats too slow to matter."""
    return FederatedConfig(num_clients=n, clients_per_round=n, num_rounds=1, min_clients=2,
                           secure=SecureConfig(enabled=True),
                           broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))


def run_coordinator_round(workers: list[SecureFakeWorker], vanish_at: dict[str, type] | None = None,
                          config: FederatedConfig | None = None) -> tuple[Coordinator, list[Any]]:
    """Every worker says HELLO, the coordinator ticks once, then messages flow until none is left in flight.
    A worker in ``vanish_at`` says BYE instead of answering the first message of that type. Returns the
    coordinator and every answer the workers sent (decoded)."""
    vanish_at = vanish_at or {}
    coordinator = Coordinator(config or secure_round_config(len(workers)), SECURE_WEIGHTS)
    by_route = {w.wid.encode(): w for w in workers}
    received: list[Any] = []
    queue: list[Outbound] = []
    for w in workers:
        queue += coordinator.handle(w.wid.encode(), w.hello.to_frames(), 0.0)
    queue += coordinator.tick(0.0)
    now = 0.0
    while queue:
        out = queue.pop(0)
        msg = decode_message(wire(out.frames))
        worker = by_route[out.route]
        if type(msg) is vanish_at.get(worker.wid):
            queue += coordinator.handle(out.route, Bye(worker.wid, "vanished").to_frames(), now)
            continue
        answer = worker.answer(msg)
        if answer is not None:
            frames = wire(answer.to_frames())
            received.append(answer)
            queue += coordinator.handle(out.route, frames, now)
        now += 0.001
    return coordinator, received
