"""The worker's protocol session without sockets: messages and results in, actions out, exactly as the
DEALER loop drives it. A plain round, a whole secure round of five sessions against the real broker-side
machine through the real codec (the sum is exact), simulated dropouts, stale results, BYE and ERRORs.

The cheating broker's attacks on these same sessions are in ``test_malicious_broker.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import (
    SESSION_SIZE,
    SESSION_WEIGHTS,
    fit_with,
    round_trip,
    secagg_params,
    secure_task,
    sends,
    train_now,
    worker_session,
)

from federated.crypto.fixedpoint import decode_sum
from federated.crypto.secagg_broker import SecAggBroker
from federated.protocol import (
    AdvertiseKeys,
    Bye,
    Error,
    ErrorCode,
    Heartbeat,
    Task,
    Update,
    Welcome,
)
from federated.worker.randomness import LocalRandomness
from federated.worker.session import (
    Announce,
    Finish,
    Train,
    Vanish,
    Welcomed,
    WorkerSession,
    task_seed,
)
from federated.worker.simulation import DropoutPlan


def test_plain_round_trains_and_answers_with_an_update() -> None:
    s = worker_session("w0")
    assert s.on_message(Welcome("w0", 1.0, 5.0)) == [Welcomed(1.0, 5.0)]
    actions = s.on_message(round_trip(Task(1, "train", {"seed": 5}, SESSION_WEIGHTS, 0, 1, 30.0)))
    assert [type(a) for a in actions] == [Train]
    (update,) = sends(train_now(s, actions, 0.25))
    assert isinstance(update, Update) and update.round_id == 1 and update.num_samples == 4
    np.testing.assert_array_equal(update.update["w"], np.full((2, 3), 0.25, np.float32))


def test_a_bad_task_becomes_an_error_not_an_exception() -> None:
    s = worker_session("w0")
    actions = s.on_message(round_trip(Task(2, "train", {"fail": True}, SESSION_WEIGHTS, 0, 1, 30.0)))
    (error,) = sends(train_now(s, actions, 0.0))
    assert isinstance(error, Error) and error.code == ErrorCode.BAD_TASK and "fail" in error.message


@pytest.mark.parametrize(("delta", "loss", "named"), [
    (float("nan"), 0.5, "w"), (float("inf"), 0.5, "w"), (0.25, float("nan"), "loss"), (0.25, float("inf"), "loss"),
])
def test_a_diverged_training_run_becomes_an_error_not_an_update(delta: float, loss: float, named: str) -> None:
    """The broker refuses an UPDATE with NaN or infinite values as malformed and would wait for this worker
    until the round's deadline; the worker says at once that its training failed, and what diverged."""
    s = worker_session("w0")
    actions = s.on_message(round_trip(Task(3, "train", {}, SESSION_WEIGHTS, 0, 1, 30.0)))
    (job,) = [a.job for a in actions if isinstance(a, Train)]

    def diverged(weights: dict[str, np.ndarray], *_: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return {k: np.full_like(v, delta) for k, v in weights.items()}, {"loss": loss, "accuracy": 0.1, "train_s": 0.01}

    (error,) = sends(s.on_trained(s.train(job, diverged)))
    assert isinstance(error, Error) and error.code == ErrorCode.TRAIN_FAILED and error.round_id == 3
    assert "diverged" in error.message and f"{named} not finite" in error.message


def test_results_of_an_earlier_connection_are_dropped() -> None:
    s = worker_session("w0")
    actions = s.on_message(round_trip(Task(1, "train", {}, SESSION_WEIGHTS, 0, 1, 30.0)))
    (job,) = [a.job for a in actions if isinstance(a, Train)]
    s.connected()  # reconnected while training: the broker already counted us as dropped
    assert s.on_trained(s.train(job, fit_with(1.0))) == []


def test_bye_unknown_worker_and_heartbeats() -> None:
    s = worker_session("w0")
    assert s.on_message(Heartbeat("")) == []
    assert s.on_message(Error(ErrorCode.UNKNOWN_WORKER.value, "send HELLO first")) == [Announce()]
    assert s.on_message(Error("wrong_stage", "late")) == []
    assert s.on_message(Bye("", "done")) == [Finish("done")] and s.done


def test_training_seed_is_the_task_seed_only_when_seeded_for_a_simulation() -> None:
    task = round_trip(Task(4, "train", {"seed": 9}, SESSION_WEIGHTS, 0, 1, 30.0))
    seeded = worker_session("w0", randomness=LocalRandomness.seeded(9, "w0"))
    (job,) = [a.job for a in seeded.on_message(task) if isinstance(a, Train)]
    assert job.seed == task_seed(9, 4, "w0")
    real = worker_session("w0")  # the OS: a broker that knows the run's seed cannot predict or replay it
    seeds = {next(a.job.seed for a in real.on_message(task) if isinstance(a, Train)) for _ in range(8)}
    assert len(seeds) == 8  # 8 draws of 32 bits: a repeat has probability 28 / 2^32 = 6.5e-9


def run_secure_round(n: int, deltas: list[float], *, vanish: dict[str, str] | None = None
                     ) -> tuple[SecAggBroker, dict[str, WorkerSession]]:
    """A whole secure round: ``n`` sessions and the real broker-side machine, every message through the
    codec, dropped sessions (``vanish``: worker id -> stage) simply never answer again."""
    vanish = vanish or {}
    p = secagg_params(n)
    ids = [f"w{i}" for i in range(n)]
    sessions = {w: worker_session(w) for w in ids}
    broker = SecAggBroker(1, ids, p, {w: bytes.fromhex(s.identity_hex) for w, s in sessions.items()})
    trained: dict[str, list[Any]] = {}
    for i, w in enumerate(ids):
        actions = sessions[w].on_message(secure_task(1, p, i, n))
        (advert,) = sends(actions)
        assert isinstance(advert, AdvertiseKeys)
        broker.receive(w, advert)
        trained[w] = [a for a in actions if isinstance(a, Train)]
    while broker.stage not in ("done", "aborted"):
        for w, msg in broker.advance():
            if vanish.get(w) == broker.stage:
                broker.drop(w, "vanished")
                continue
            out = sends(sessions[w].on_message(round_trip(msg)))
            if broker.stage == "masked_input":
                assert out == []  # the shares are in, the input is not trained yet
                out = sends(train_now(sessions[w], trained[w], deltas[ids.index(w)]))
            for answer in out:
                broker.receive(w, answer)
    return broker, sessions


def test_a_secure_round_of_sessions_gives_the_exact_weighted_mean() -> None:
    deltas = [0.1, -0.2, 0.4, 0.3, -0.05]
    broker, _ = run_secure_round(5, deltas)
    assert broker.stage == "done" and broker.result is not None
    data, weight = decode_sum(broker.result.total, 16, 32)
    assert weight == 5 * 4  # every session's weight is its 4 samples
    # Each coordinate's rounding error is under one unit of 2^-16 per input.
    np.testing.assert_allclose(data[:SESSION_SIZE] / weight, np.mean(deltas), atol=5 * 2**-16 / 4)


@pytest.mark.parametrize("stage", ["share_keys", "masked_input", "consistency", "unmask"])
def test_a_session_vanishing_at_any_stage_leaves_an_exact_sum_of_the_survivors(stage: str) -> None:
    deltas = [0.1, -0.2, 0.4, 0.3, -0.05]
    broker, _ = run_secure_round(5, deltas, vanish={"w4": stage})
    assert broker.stage == "done" and broker.result is not None
    data, weight = decode_sum(broker.result.total, 16, 32)
    included = deltas if stage in ("consistency", "unmask") else deltas[:4]  # its input is in the sum
    assert weight == 4 * len(included)
    np.testing.assert_allclose(data[:SESSION_SIZE] / weight, np.mean(included), atol=5 * 2**-16 / 4)


def test_simulated_dropout_vanishes_at_its_stage_only() -> None:
    p = secagg_params(3)
    s = worker_session("w0", dropout=DropoutPlan(0.4, "task"))
    assert s.on_message(secure_task(1, p, 0, 3)) == [Vanish()]  # index 0 < round(0.4 * 3) = 1
    other = worker_session("w1", dropout=DropoutPlan(0.4, "task"))
    assert Vanish() not in other.on_message(secure_task(1, p, 1, 3))
