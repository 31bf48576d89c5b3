"""The coordinator running secure rounds, driven in memory by real secure-aggregation workers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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
    Error,
    Hello,
    Roster,
    Shares,
    Task,
    UnmaskRequest,
    Update,
    decode_message,
)
from federated.worker.secure import encode_input

WEIGHTS = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 2), np.float32)}


class FakeWorker:
    def __init__(self, wid: str, samples: int, delta: float) -> None:
        self.wid, self.samples = wid, samples
        self.identity, public = generate_identity()
        self.hello = Hello(wid, samples, ("train",), public.hex())
        self.update = {k: np.full(v.shape, delta, np.float32) for k, v in WEIGHTS.items()}
        self.machine: SecAggWorker | None = None
        self.encoded: np.ndarray | None = None

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, Task):
            params = SecAggParams.from_dict(msg.config["secagg"])
            self.machine = SecAggWorker(self.wid, self.identity, msg.round_id, params)
            indices = None
            plan = secure_plan(msg.config.get("compression", "none"))
            if plan.fraction is not None:
                size = sum(int(v.size) for v in self.update.values())
                indices = shared_indices(size, plan.fraction, msg.config["compression_seed"])
            self.encoded = encode_input(self.update, {"loss": 1.0, "accuracy": 0.5}, self.samples, params, indices)
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


def _config(n: int) -> FederatedConfig:
    return FederatedConfig(num_clients=n, clients_per_round=n, num_rounds=1, min_clients=2,
                           secure=SecureConfig(enabled=True),
                           broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))


def run_round(workers: list[FakeWorker], vanish_at: dict[str, type] | None = None,
              config: FederatedConfig | None = None) -> tuple[Coordinator, list[Any]]:
    vanish_at = vanish_at or {}
    coordinator = Coordinator(config or _config(len(workers)), WEIGHTS)
    by_route = {w.wid.encode(): w for w in workers}
    received: list[Any] = []
    queue: list[Outbound] = []
    for w in workers:
        queue += coordinator.handle(w.wid.encode(), w.hello.to_frames(), 0.0)
    queue += coordinator.tick(0.0)
    now = 0.0
    while queue:
        out = queue.pop(0)
        msg = decode_message([bytes(f) for f in out.frames])
        worker = by_route[out.route]
        if type(msg) is vanish_at.get(worker.wid):
            queue += coordinator.handle(out.route, Bye(worker.wid, "vanished").to_frames(), now)
            continue
        answer = worker.answer(msg)
        if answer is not None:
            frames = [bytes(f) for f in answer.to_frames()]
            received.append(answer)
            queue += coordinator.handle(out.route, frames, now)
        now += 0.001
    return coordinator, received


def _distinct(workers: list[FakeWorker]) -> list[FakeWorker]:
    """Give each worker its own update, different in every coordinate (seeded per worker): a mean that
    included a worker it should not (or left one out) then differs from the right one everywhere."""
    for i, w in enumerate(workers):
        rng = np.random.default_rng(1000 + i)
        w.update = {k: rng.uniform(-1.0, 1.0, v.shape).astype(np.float32) for k, v in WEIGHTS.items()}
    return workers


def weighted_mean(workers: list[FakeWorker]) -> dict[str, np.ndarray]:
    """The exact (float64) FedAvg mean of these workers' updates, weighted by sample count."""
    total = sum(w.samples for w in workers)
    return {k: sum(w.samples * w.update[k].astype(np.float64) for w in workers) / total for k in WEIGHTS}


def fixed_point_atol(survivors: list[FakeWorker]) -> float:
    """How far the secure mean of ``survivors`` may be from their exact weighted mean.

    Each encoded coordinate is within one fixed-point unit (2^-frac_bits) of the worker's weight times its
    update (``federated.crypto.fixedpoint``) and the summed weight is exact, so the decoded mean is within
    ``len(survivors) * 2^-frac_bits / summed weight``. (The broker's float32 weights add a relative
    2^-24, which the callers allow as ``rtol``.)
    """
    machine = survivors[0].machine
    assert machine is not None
    params = machine.params
    weight = sum(max(1, min(w.samples, params.weight_cap)) for w in survivors)
    return len(survivors) * 2.0**-params.frac_bits / weight


#: float32 rounding of the new weights, relative to their size.
RTOL = 2.0**-23


def test_secure_round_gives_the_weighted_mean_and_never_sees_an_input() -> None:
    workers = _distinct([FakeWorker(f"w{i}", s, d)
                         for i, (s, d) in enumerate([(10, 0.1), (30, -0.2), (20, 0.4), (40, 0.0)])])
    coordinator, received = run_round(workers)
    assert coordinator.completed == 1, coordinator.history
    atol = fixed_point_atol(workers)
    assert atol < 1e-4  # 4 / (100 * 2^12) with the default clip and weight cap
    expected = weighted_mean(workers)
    for name, value in coordinator.weights.items():
        np.testing.assert_allclose(value, expected[name], rtol=RTOL, atol=atol)
    (record,) = coordinator.history
    assert record.status == "complete" and record.num_samples == 100
    assert record.train_loss == pytest.approx(1.0, abs=atol)
    assert record.train_accuracy == pytest.approx(0.5, abs=atol)
    masked = [m.masked for m in received if type(m).__name__ == "MaskedInput"]
    assert len(masked) == 4
    for m in masked:
        for w in workers:
            assert w.encoded is not None and np.count_nonzero(m == w.encoded) <= 1
    assert not any(isinstance(m, Update) for m in received)


@pytest.mark.parametrize("stage", [Roster, Shares, UnmaskRequest])
def test_a_worker_leaving_at_any_stage_leaves_an_exact_result(stage: type) -> None:
    # Distinct updates and sample counts: with w2's update equal to the others' mean (as this test once
    # had), the value check could not tell w2 in from w2 out.
    workers = _distinct([FakeWorker(f"w{i}", 10 * (i + 1), 0.0) for i in range(5)])
    coordinator, _ = run_round(workers, {"w2": stage})
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    # Leaving before its masked input was sent (roster, shares) is a dropout; leaving at unmasking is
    # not (its input is in the sum, and the others' shares unmask it).
    included = [w for w in workers if w.wid != "w2" or stage is UnmaskRequest]
    other = [w for w in workers if w not in included] or [w for w in workers if w.wid != "w2"]
    atol = fixed_point_atol(included)
    expected, wrong = weighted_mean(included), weighted_mean(other)
    for name, value in coordinator.weights.items():
        # The check can tell the two apart in every coordinate, by far more than its tolerance.
        assert np.abs(expected[name] - wrong[name]).min() > 1000 * atol
        np.testing.assert_allclose(value, expected[name], rtol=RTOL, atol=atol)
    assert ("w2" in record.dropped) == (stage is not UnmaskRequest)


def test_plain_updates_are_refused_in_a_secure_round() -> None:
    workers = [FakeWorker(f"w{i}", 10, 0.1) for i in range(3)]
    coordinator = Coordinator(_config(3), WEIGHTS)
    for w in workers:
        coordinator.handle(w.wid.encode(), w.hello.to_frames(), 0.0)
    coordinator.tick(0.0)
    assert coordinator.round is not None and coordinator.round.secure is not None
    out = coordinator.handle(b"w0", Update("w0", coordinator.round.round_id, "train", 10, {}, WEIGHTS).to_frames(), 0.1)
    assert decode_message(out[0].frames).code == "wrong_stage"


class RefusingWorker(FakeWorker):
    """Refuses the roster (as a worker does when a signature fails) with an ERROR, and says nothing more."""

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, Roster):
            return Error("secagg_refused", "roster signature does not verify", msg.round_id)
        return super().answer(msg)


def test_a_worker_reporting_an_error_for_the_round_is_dropped_at_once() -> None:
    # run_round stops when no message is left in flight and never advances the clock to a deadline: the
    # round finishes only if the ERROR itself drops the worker.
    workers = [FakeWorker(f"w{i}", 10, 0.1 * (i + 1)) for i in range(4)] + [RefusingWorker("w4", 10, 9.0)]
    coordinator, _ = run_round(workers)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    assert "w4" in record.dropped and "w4" not in record.survivors
    np.testing.assert_allclose(coordinator.weights["b"], weighted_mean(workers[:4])["b"], rtol=RTOL,
                               atol=fixed_point_atol(workers[:4]))
