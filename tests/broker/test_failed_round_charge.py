"""A failed round is charged too: the privacy ledger counts every round that started, not only those
that completed.

README / :mod:`federated.privacy.ledger`: a round is charged when it starts, before any TASK leaves the
broker, because from then on workers train and release updates whether or not the round completes. A
broker that refunded failed rounds would report less than was spent, and a budget would let more rounds
run than it allows. Here round 1 fails (two of three workers refuse it, one answers; ``min_clients`` is
2), round 2 completes, and the budget has room for exactly two rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Outbound
from federated.broker.store import RoundRecord
from federated.config import BrokerConfig, EvaluationConfig, FederatedConfig, PrivacyConfig
from federated.privacy import compute_epsilon
from federated.protocol import Error, Hello, Update

T0 = 1000.0
WORKERS = ("w1", "w2", "w3")
SIGMA, DELTA = 2.0, 1e-5


def _epsilon(rounds: int) -> float:
    """Central mode: each round is one Gaussian release (q = 1, one step) with noise multiplier SIGMA."""
    return compute_epsilon(1.0, SIGMA, rounds, DELTA, "rdp")


class _Broker:
    def __init__(self, budget: float | None) -> None:
        broker = BrokerConfig(round_timeout_s=10.0, start_timeout_s=5.0, heartbeat_interval_s=1.0,
                              heartbeat_timeout_s=3.0, max_failed_rounds=3)
        config = FederatedConfig(num_clients=3, clients_per_round=3, min_clients=2, num_rounds=10,
                                 broker=broker, privacy_budget=budget, evaluation=EvaluationConfig(every=0),
                                 privacy=PrivacyConfig(mode="central", noise_multiplier=SIGMA, clip=1.0, delta=DELTA))
        self.records: list[RoundRecord] = []
        self.weights = {"w": np.zeros(4, np.float32)}
        self.coord = Coordinator(config, self.weights, on_round=self.records.append, clock=lambda: T0)
        for wid in WORKERS:
            self.send(wid, Hello(wid, 10))
        self.coord.tick(T0)

    def send(self, wid: str, msg: Any) -> list[Outbound]:
        return self.coord.handle(f"r-{wid}".encode(), [bytes(f) for f in msg.to_frames()], T0)

    def answer(self, wid: str) -> None:
        assert self.coord.round is not None
        self.send(wid, Update(wid, self.coord.round.round_id, STAGE_TRAIN, 10, {}, {"w": np.full(4, 0.1, np.float32)}))

    def refuse(self, wid: str) -> None:
        assert self.coord.round is not None
        self.send(wid, Error("train_failed", "out of memory", self.coord.round.round_id))

    def failed_round(self) -> RoundRecord:
        self.answer("w1")
        self.refuse("w2")
        self.refuse("w3")
        assert self.records[-1].status == "failed"
        self.coord.tick(T0)  # the next round starts
        return self.records[-1]

    def complete_round(self) -> RoundRecord:
        for wid in WORKERS:
            self.answer(wid)
        assert self.records[-1].status == "complete"
        self.coord.tick(T0)
        return self.records[-1]


def test_a_failed_round_is_charged_in_full() -> None:
    b = _Broker(budget=None)
    ledger = b.coord.privacy
    assert ledger is not None
    failed = b.failed_round()
    assert failed.round == 1 and failed.epsilon == pytest.approx(_epsilon(1), rel=1e-12)
    # Still charged after the failure is recorded (nothing refunded), and round 2 is already charged too.
    assert ledger.rounds_charged == 2 and ledger.accountant.total_steps == 2
    complete = b.complete_round()
    assert complete.round == 2 and complete.epsilon == pytest.approx(_epsilon(2), rel=1e-12)


def test_the_budget_counts_the_failed_round() -> None:
    # Room for exactly two rounds: after one failed and one complete round, round 3 must not start.
    b = _Broker(budget=_epsilon(2) * 1.0001)
    b.failed_round()
    b.complete_round()
    assert b.coord.done and b.coord.round is None
    assert "privacy budget" in b.coord.exit_reason and "round 3" in b.coord.exit_reason
    assert [r.status for r in b.records] == ["failed", "complete"]
    assert b.records[-1].epsilon is not None and b.records[-1].epsilon <= _epsilon(2) * 1.0001
