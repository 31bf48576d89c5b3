"""The coordinator running secure rounds, driven in memory by real secure-aggregation workers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import SECURE_WEIGHTS, SecureFakeWorker, run_coordinator_round, secure_round_config

from federated.broker.coordinator import Coordinator
from federated.protocol import (
    Error,
    Roster,
    Shares,
    UnmaskRequest,
    Update,
    decode_message,
)


def _distinct(workers: list[SecureFakeWorker]) -> list[SecureFakeWorker]:
    """Give each worker its own update, different in every coordinate (seeded per worker): a mean that
    included a worker it should not (or left one out) then differs from the right one everywhere."""
    for i, w in enumerate(workers):
        rng = np.random.default_rng(1000 + i)
        w.update = {k: rng.uniform(-1.0, 1.0, v.shape).astype(np.float32) for k, v in SECURE_WEIGHTS.items()}
    return workers


def weighted_mean(workers: list[SecureFakeWorker]) -> dict[str, np.ndarray]:
    """The exact (float64) FedAvg mean of these workers' updates, weighted by sample count."""
    total = sum(w.samples for w in workers)
    return {k: sum(w.samples * w.update[k].astype(np.float64) for w in workers) / total for k in SECURE_WEIGHTS}


def fixed_point_atol(survivors: list[SecureFakeWorker]) -> float:
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
    workers = _distinct([SecureFakeWorker(f"w{i}", s, d)
                         for i, (s, d) in enumerate([(10, 0.1), (30, -0.2), (20, 0.4), (40, 0.0)])])
    coordinator, received = run_coordinator_round(workers)
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
    workers = _distinct([SecureFakeWorker(f"w{i}", 10 * (i + 1), 0.0) for i in range(5)])
    coordinator, _ = run_coordinator_round(workers, {"w2": stage})
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
    workers = [SecureFakeWorker(f"w{i}", 10, 0.1) for i in range(3)]
    coordinator = Coordinator(secure_round_config(3), SECURE_WEIGHTS)
    for w in workers:
        coordinator.handle(w.wid.encode(), w.hello.to_frames(), 0.0)
    coordinator.tick(0.0)
    assert coordinator.round is not None and coordinator.round.secure is not None
    out = coordinator.handle(b"w0", Update("w0", coordinator.round.round_id, "train", 10, {}, SECURE_WEIGHTS).to_frames(), 0.1)
    assert decode_message(out[0].frames).code == "wrong_stage"


class RefusingWorker(SecureFakeWorker):
    """Refuses the roster (as a worker does when a signature fails) with an ERROR, and says nothing more."""

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, Roster):
            return Error("secagg_refused", "roster signature does not verify", msg.round_id)
        return super().answer(msg)


def test_a_worker_reporting_an_error_for_the_round_is_dropped_at_once() -> None:
    # run_coordinator_round stops when no message is left in flight and never advances the clock to a deadline: the
    # round finishes only if the ERROR itself drops the worker.
    workers = [SecureFakeWorker(f"w{i}", 10, 0.1 * (i + 1)) for i in range(4)] + [RefusingWorker("w4", 10, 9.0)]
    coordinator, _ = run_coordinator_round(workers)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    assert "w4" in record.dropped and "w4" not in record.survivors
    np.testing.assert_allclose(coordinator.weights["b"], weighted_mean(workers[:4])["b"], rtol=RTOL,
                               atol=fixed_point_atol(workers[:4]))
