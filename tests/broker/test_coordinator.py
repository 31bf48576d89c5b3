"""Tests of the broker's round state machine, driven with a fake clock and real protocol frames.

No sockets and no sleeping: time is a number the test moves, and every message is made by the message
classes' ``to_frames()`` (or crafted bytes), so the coordinator sees exactly what a socket would hand it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    HARNESS_BROKER,
    CoordinatorHarness,
    decoded,
    harness_config,
    harness_weights,
    of_type,
    tasked,
    wire,
)

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Outbound
from federated.broker.store import RoundStore
from federated.config import FederatedConfig
from federated.protocol import (
    VERSION,
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    Message,
    Task,
    Update,
    Welcome,
    decode_message,
)


@pytest.fixture(params=["no-store", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoundStore | None]:
    if request.param == "no-store":
        yield None
        return
    with RoundStore(tmp_path / "s.db") as s:
        yield s


# ---------------------------------------------------------------------------------------- a whole round


def test_full_round_with_three_workers(store: RoundStore | None) -> None:
    h = CoordinatorHarness(store=store)
    out = h.join("w1", "w2", "w3")
    tasks = tasked(h, out)
    assert sorted(tasks) == ["w1", "w2", "w3"]
    assert sorted(t.cohort_index for t in tasks.values()) == [0, 1, 2]
    for t in tasks.values():
        assert t.round_id == 1 and t.stage == STAGE_TRAIN and t.cohort_size == 3
        assert t.deadline_s == HARNESS_BROKER.round_timeout_s
        assert t.config["train"] == h.coord.config.training.to_task_config()
        assert t.config["seed"] == h.coord.config.seed
        for name, arr in harness_weights().items():
            np.testing.assert_array_equal(t.weights[name], arr)

    rng = np.random.default_rng(0)
    samples = {"w1": 10, "w2": 20, "w3": 70}
    updates = {w: {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in harness_weights().items()}
               for w in samples}
    h.clock.t += 4.0
    final: list[Outbound] = []
    for wid in ["w2", "w3", "w1"]:
        metrics = {"loss": float(samples[wid]), "accuracy": 0.5, "train_s": 1.0, "wait_s": 0.5}
        final = h.send(wid, h.update(wid, updates[wid], num_samples=samples[wid], metrics=metrics))
    assert final == []  # no ERROR, nothing to send until the next tick
    assert h.coord.round is None and h.coord.completed == 1

    total = sum(samples.values())
    for name, w0 in harness_weights().items():
        expected = w0.astype(np.float64) + sum(samples[w] * updates[w][name].astype(np.float64)
                                               for w in samples) / total
        np.testing.assert_allclose(h.coord.weights[name], expected, rtol=1e-6, atol=1e-6)
        assert h.coord.weights[name].dtype == np.float32

    (rec,) = h.records
    assert h.coord.history == [rec]
    assert rec.round == 1 and rec.status == "complete" and rec.error is None
    assert sorted(rec.participants) == ["w1", "w2", "w3"]
    assert rec.survivors == ("w1", "w2", "w3") and rec.dropped == ()
    assert rec.num_samples == total
    assert rec.loss == 0.25 and rec.accuracy == 0.75
    assert rec.train_loss == pytest.approx(sum(n * n for n in samples.values()) / total)
    assert rec.train_accuracy == pytest.approx(0.5)
    assert rec.duration_s == pytest.approx(4.0)
    assert rec.overhead_s == pytest.approx(4.0 - 1.5)
    assert rec.bytes_down > 3 * sum(v.nbytes for v in harness_weights().values())
    assert rec.bytes_up > 3 * sum(v.nbytes for v in harness_weights().values())
    assert len(h.evaluated) == 1
    np.testing.assert_array_equal(h.evaluated[0]["w"], h.coord.weights["w"])

    # The next tick starts round 2 with the new model.
    tasks = tasked(h, h.tick())
    assert {t.round_id for t in tasks.values()} == {2}
    np.testing.assert_array_equal(tasks["w1"].weights["w"], h.coord.weights["w"])

    if store is not None:
        (stored,) = store.list_rounds()
        assert stored == rec
        checkpoint = store.load_checkpoint(1)
        for name, arr in h.coord.weights.items():
            np.testing.assert_array_equal(checkpoint[name], arr)
        workers = {w["worker_id"]: w for w in store.list_workers()}
        assert sorted(workers) == ["w1", "w2", "w3"]
        assert all(w["rounds_completed"] == 1 and w["rounds_selected"] == 2 and w["rounds_dropped"] == 0
                   for w in workers.values())
        assert workers["w2"]["num_samples"] == 10


@pytest.mark.parametrize("slowest, expected", [
    ({"train_s": 3.0, "wait_s": 0.5}, 2.5),
    ({"train_s": 7.0}, 0.0),   # clamped: reported local time longer than the round
    ({}, 4.0),                 # nothing reported by w2: w1's 2 s is the slowest
])
def test_overhead_is_duration_minus_slowest_local_time(slowest: dict[str, float], expected: float) -> None:
    h = CoordinatorHarness(harness_config(min_clients=1, clients_per_round=2, num_clients=2))
    h.join("w1", "w2")
    h.clock.t += 2.0
    h.send("w1", h.update("w1", metrics={"train_s": 1.0, "wait_s": 1.0}))
    h.clock.t += 4.0
    h.send("w2", h.update("w2", metrics=slowest))
    (rec,) = h.records
    assert rec.duration_s == pytest.approx(6.0)
    assert rec.overhead_s == pytest.approx(expected)
    assert rec.metrics["max_local_s"] == pytest.approx(max(2.0, sum(slowest.values())))


def test_rounds_run_until_num_rounds_then_bye_to_everyone(store: RoundStore | None) -> None:
    h = CoordinatorHarness(harness_config(num_rounds=2), store=store)
    h.join("w1", "w2", "w3")
    last: list[Outbound] = []
    for rid in (1, 2):
        assert h.coord.round is not None and h.coord.round.round_id == rid
        for wid in ("w1", "w2", "w3"):
            last = h.send(wid, h.update(wid))
        if rid == 1:
            assert last == []
            h.tick()
    assert h.coord.done and not h.coord.failed and h.coord.completed == 2
    byes = of_type(last, Bye)
    assert sorted(byes) == [b"r-w1", b"r-w2", b"r-w3"]
    assert all(b.worker_id == "" and b.reason == "training finished" for b in byes.values())
    assert h.coord.exit_reason == "training finished"
    # Nothing more starts; a late worker is welcomed and told goodbye.
    out = h.advance(20.0, alive=["w1", "w2", "w3"])
    assert of_type(out, Task) == {}
    out = h.hello("w4")
    assert set(of_type(out, Welcome)) == {b"r-w4"} and set(of_type(out, Bye)) == {b"r-w4"}
    np.testing.assert_allclose(h.coord.weights["w"], harness_weights()["w"] + 1.0)
    if store is not None:
        assert [r.round for r in store.list_rounds()] == [1, 2]
        assert store.last_complete_round() == 2


# ---------------------------------------------------------------------------------------- starting


def test_round_waits_for_clients_per_round_then_starts_with_min_clients_after_timeout() -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=4, min_clients=2))
    assert h.tick() == []  # broker alone: waiting begins at HARNESS_T0
    h.hello("w1")
    out = h.advance(2.0, alive=["w1"])
    assert of_type(out, Task) == {}
    h.hello("w2")
    out = h.advance(2.5, alive=["w1", "w2"])  # HARNESS_T0 + 4.5 < HARNESS_T0 + start_timeout_s
    assert of_type(out, Task) == {} and h.coord.round is None
    assert h.coord.next_wakeup(h.now) <= 0.5 + 1e-9  # wakes for the start timeout
    out = h.advance(0.5, alive=["w1", "w2"])  # HARNESS_T0 + 5
    tasks = tasked(h, out)
    assert sorted(tasks) == ["w1", "w2"]
    assert all(t.cohort_size == 2 for t in tasks.values())


def test_round_does_not_start_below_min_clients_however_long_it_waits() -> None:
    h = CoordinatorHarness(harness_config(min_clients=2))
    h.tick()
    h.hello("w1")
    out = h.advance(30.0, alive=["w1"])
    assert of_type(out, Task) == {} and h.coord.round is None
    h.hello("w2")
    assert sorted(tasked(h, h.tick())) == ["w1", "w2"]


def test_round_starts_at_once_with_clients_per_round_and_selects_a_subset() -> None:
    h = CoordinatorHarness(harness_config(num_clients=5, clients_per_round=3, min_clients=2))
    out = h.join("w1", "w2", "w3", "w4", "w5")
    tasks = tasked(h, out)
    assert len(tasks) == 3
    assert h.coord.round is not None and sorted(h.coord.round.cohort) == sorted(tasks)


def test_selection_is_reproducible_for_a_seed() -> None:
    def cohort(seed: int) -> list[str]:
        h = CoordinatorHarness(harness_config(num_clients=6, clients_per_round=3, seed=seed))
        h.join(*[f"w{i}" for i in range(1, 7)])
        assert h.coord.round is not None
        return h.coord.round.cohort

    assert cohort(1) == cohort(1)
    assert len({tuple(sorted(cohort(s))) for s in range(6)}) > 1


# ---------------------------------------------------------------------------------------- dropouts


def three_worker_round(store: RoundStore | None = None, **kw: Any) -> CoordinatorHarness:
    h = CoordinatorHarness(harness_config(**kw), store=store)
    tasks = tasked(h, h.join("w1", "w2", "w3"))
    assert sorted(tasks) == ["w1", "w2", "w3"]
    return h


def test_deadline_drops_silent_workers(store: RoundStore | None) -> None:
    h = three_worker_round(store)
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    out = h.advance(9.5, alive=["w1", "w2", "w3"])
    assert h.coord.round is not None and h.coord.round.pending == {"w3"}
    assert of_type(out, Task) == {}
    out = h.advance(0.5, alive=["w1", "w2", "w3"])  # HARNESS_T0 + 10 = deadline
    (rec,) = h.records
    assert rec.status == "complete" and rec.survivors == ("w1", "w2") and rec.dropped == ("w3",)
    assert rec.metrics["dropped_deadline"] == 1.0
    assert "w3" in h.coord.registry  # still connected: only late, not dead
    np.testing.assert_allclose(h.coord.weights["w"], harness_weights()["w"] + 0.5)
    if store is not None:
        workers = {w["worker_id"]: w for w in store.list_workers()}
        assert workers["w3"]["rounds_dropped"] == 1 and workers["w3"]["rounds_completed"] == 0


def test_heartbeat_expiry_drops_a_worker_mid_round() -> None:
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    h.advance(2.5, alive=["w1", "w2"])
    assert h.coord.round is not None  # w3 last heard at HARNESS_T0, expires at HARNESS_T0 + 3
    h.advance(0.5, alive=["w1", "w2"])
    assert "w3" not in h.coord.registry
    (rec,) = h.records
    assert rec.dropped == ("w3",) and rec.metrics["dropped_timeout"] == 1.0
    assert rec.duration_s == pytest.approx(3.0)


def test_heartbeats_keep_a_training_worker_alive() -> None:
    h = three_worker_round()
    h.advance(9.0, alive=["w1", "w2", "w3"])
    assert h.coord.round is not None and h.coord.round.pending == {"w1", "w2", "w3"}
    assert sorted(h.coord.registry.live_ids()) == ["w1", "w2", "w3"]


def test_rehello_of_a_cohort_member_counts_it_dropped() -> None:
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    out = h.hello("w3", route=b"r-w3-new")
    assert set(of_type(out, Welcome)) == {b"r-w3-new"}
    (rec,) = h.records  # nobody is pending any more: the round closes at once
    assert rec.dropped == ("w3",) and rec.metrics["dropped_reconnected"] == 1.0
    assert h.coord.registry.id_of(b"r-w3") is None and h.coord.registry.id_of(b"r-w3-new") == "w3"


def test_rehello_after_answering_keeps_the_update() -> None:
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    h.hello("w1", route=b"r-w1-new")
    h.send("w2", h.update("w2"))
    h.send("w3", h.update("w3"))
    (rec,) = h.records
    assert rec.survivors == ("w1", "w2", "w3") and rec.dropped == ()


def test_bye_mid_round_counts_it_dropped() -> None:
    h = three_worker_round()
    h.send("w3", Bye("w3", "shutting down"))
    assert "w3" not in h.coord.registry
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    (rec,) = h.records
    assert rec.dropped == ("w3",) and rec.metrics["dropped_left"] == 1.0


def test_unreachable_counts_it_dropped() -> None:
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    assert h._check(h.coord.unreachable(b"r-w3", h.now)) == []
    assert "w3" not in h.coord.registry
    (rec,) = h.records
    assert rec.dropped == ("w3",) and rec.metrics["dropped_unreachable"] == 1.0
    assert h.coord.unreachable(b"never-seen", h.now) == []


def test_connection_reused_for_another_id_drops_the_old_id_from_the_round() -> None:
    # One connection cannot speak for two ids (the registry unbinds the older one). The older id can then
    # neither answer nor expire, so it must count as dropped now rather than hold the round to its deadline.
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    h.send("w2", h.update("w2"))
    out = h.send(b"r-w3", Hello("w9", 5))
    assert set(of_type(out, Welcome)) == {b"r-w3"}
    assert "w3" not in h.coord.registry and h.coord.registry.id_of(b"r-w3") == "w9"
    (rec,) = h.records
    assert rec.dropped == ("w3",) and rec.metrics["dropped_displaced"] == 1.0


def test_fewer_than_min_clients_fails_the_round_and_keeps_the_model(store: RoundStore | None) -> None:
    h = three_worker_round(store, min_clients=2)
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    h.send("w1", h.update("w1"))
    h.send("w2", Bye("w2"))
    h.send("w3", Bye("w3"))
    (rec,) = h.records
    assert rec.status == "failed" and rec.round == 1
    assert rec.error is not None and "min_clients" in rec.error and "1 of 3" in rec.error
    assert rec.survivors == ("w1",) and rec.dropped == ("w2", "w3")
    assert rec.accuracy is None and rec.loss is None
    for k, v in before.items():
        np.testing.assert_array_equal(h.coord.weights[k], v)
    assert h.evaluated == []
    assert h.coord.completed == 0 and h.coord.consecutive_failures == 1 and not h.coord.done
    if store is not None:
        (stored,) = store.list_rounds()
        assert stored.status == "failed" and stored.error == rec.error
        assert store.last_complete_round() is None
    # The next round starts once enough workers are back, as round 2.
    h.hello("w2")
    h.hello("w3")
    tasks = tasked(h, h.tick())
    assert sorted(tasks) == ["w1", "w2", "w3"] and {t.round_id for t in tasks.values()} == {2}
    for w in ("w1", "w2", "w3"):
        h.send(w, h.update(w))
    assert h.coord.consecutive_failures == 0 and h.coord.completed == 1
    assert [r.status for r in h.records] == ["failed", "complete"]


def test_round_with_no_answers_fails_at_the_deadline() -> None:
    h = three_worker_round()
    h.advance(10.0, alive=["w1", "w2", "w3"])
    (rec,) = h.records
    assert rec.status == "failed" and rec.survivors == () and rec.overhead_s is None
    assert rec.metrics["dropped_deadline"] == 3.0


def test_max_failed_rounds_in_a_row_stops_training(store: RoundStore | None) -> None:
    h = three_worker_round(store)  # max_failed_rounds = 2
    out = h.advance(10.0, alive=["w1", "w2", "w3"])
    assert len(h.records) == 1 and not h.coord.done
    assert {t.round_id for t in tasked(h, out).values()} == {2}
    out = h.advance(10.0, alive=["w1", "w2", "w3"])
    assert [r.status for r in h.records] == ["failed", "failed"]
    assert h.coord.done and h.coord.failed
    assert "2 rounds in a row failed" in h.coord.exit_reason
    assert sorted(of_type(out, Bye)) == [b"r-w1", b"r-w2", b"r-w3"]
    assert of_type(h.advance(20.0, alive=["w1", "w2", "w3"]), Task) == {}
    if store is not None:
        assert [r.status for r in store.list_rounds()] == ["failed", "failed"]


# ---------------------------------------------------------------------------------------- refusals


def only_error(h: CoordinatorHarness, out: list[Outbound], route: bytes, code: str) -> Error:
    assert len(out) == 1, decoded(out)
    assert out[0].route == route
    msg = decode_message(wire(out[0].frames))
    assert isinstance(msg, Error), msg
    assert msg.code == code, msg
    assert msg.round_id == (h.coord.round.round_id if h.coord.round else -1)
    return msg


def assert_refused(h: CoordinatorHarness, sender: str | bytes, msg: Message | list[bytes], code: str) -> Error:
    before = h.snapshot()
    refused = h.coord.refused
    out = h.send(sender, msg)
    route = sender if isinstance(sender, bytes) else h.route(sender)
    err = only_error(h, out, route, code)
    assert h.snapshot() == before
    assert h.coord.refused == refused + 1
    return err


def test_replayed_update_for_an_old_round_is_refused() -> None:
    h = three_worker_round()
    old = {w: h.update(w) for w in ("w1", "w2", "w3")}
    for w, u in old.items():
        h.send(w, u)
    h.tick()
    assert h.coord.round is not None and h.coord.round.round_id == 2
    err = assert_refused(h, "w1", old["w1"], "wrong_stage")
    assert "round 1" in err.message
    assert_refused(h, "w1", h.update("w1", round_id=3), "wrong_stage")


def test_update_for_another_stage_is_refused() -> None:
    h = three_worker_round()
    assert_refused(h, "w1", h.update("w1", stage="unmask"), "wrong_stage")


def test_update_when_no_round_runs_is_refused() -> None:
    h = CoordinatorHarness()
    h.join("w1")
    assert h.coord.round is None
    assert_refused(h, "w1", h.update("w1", round_id=1), "wrong_stage")


def test_duplicate_update_is_refused_and_the_first_one_counts() -> None:
    h = three_worker_round()
    h.send("w1", h.update("w1"))
    twice = h.update("w1", {k: np.full(v.shape, 100.0, np.float32) for k, v in harness_weights().items()})
    assert_refused(h, "w1", twice, "wrong_stage")
    h.send("w2", h.update("w2"))
    h.send("w3", h.update("w3"))
    np.testing.assert_allclose(h.coord.weights["w"], harness_weights()["w"] + 0.5)


def test_update_from_a_worker_outside_the_cohort_is_refused() -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=3))
    tasks = tasked(h, h.join("w1", "w2", "w3", "w4"))
    (outsider,) = {"w1", "w2", "w3", "w4"} - set(tasks)
    assert_refused(h, outsider, h.update(outsider), "wrong_stage")


@pytest.mark.parametrize("values", [
    {"w": np.zeros((2, 2), np.float32), "b": np.zeros((2, 3), np.float32)},     # wrong shape
    {"w": np.zeros(4, np.float32)},                                              # missing tensor
    {"w": np.zeros(4, np.float32), "b": np.zeros((2, 3), np.float32), "x": np.zeros(1, np.float32)},
    {"w": np.zeros((), np.float32), "b": np.zeros((2, 3), np.float32)},         # would broadcast
    {},
], ids=["shape", "missing", "extra", "scalar", "empty"])
def test_update_with_wrong_tensors_is_refused(values: dict[str, np.ndarray]) -> None:
    h = three_worker_round()
    assert_refused(h, "w1", h.update("w1", values), "bad_tensor")


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int8])
def test_update_with_non_float32_tensors_is_refused(dtype: Any) -> None:
    h = three_worker_round()
    values = {k: np.zeros(v.shape, dtype) for k, v in harness_weights().items()}
    assert_refused(h, "w1", h.update("w1", values), "bad_tensor")


def test_update_with_float64_tensors_is_refused() -> None:
    h = three_worker_round()
    good = wire(h.update("w1").to_frames())
    head = json.loads(good[2])
    for d in head["tensors"]:
        d["dtype"] = "float64"
    frames = [good[0], good[1], json.dumps(head).encode(),
              *[np.zeros(v.shape, np.float64).tobytes() for v in harness_weights().values()]]
    assert_refused(h, "w1", frames, "bad_tensor")


def test_update_with_nan_is_refused() -> None:
    h = three_worker_round()
    values = {k: np.full(v.shape, np.nan, np.float32) for k, v in harness_weights().items()}
    assert_refused(h, "w1", h.update("w1", values), "bad_tensor")


@pytest.mark.parametrize("msg", [Heartbeat("w1"), Update("w1", 1, "train", 1, {}, harness_weights()),
                                 Welcome("w1", 1.0, 3.0)], ids=lambda m: type(m).__name__)
def test_message_from_a_connection_that_never_said_hello_is_refused(msg: Message) -> None:
    h = three_worker_round()
    assert_refused(h, b"stranger", msg, "unknown_worker")


@pytest.mark.parametrize("msg", [Bye("w1"), Error("x", "y")], ids=lambda m: type(m).__name__)
def test_bye_or_error_from_a_stranger_is_ignored_silently(msg: Message) -> None:
    # Answering an ERROR with an ERROR could ping-pong forever between two confused peers.
    h = three_worker_round()
    before = h.snapshot()
    assert h.send(b"stranger", msg) == []
    assert h.snapshot() == before


@pytest.mark.parametrize("msg", [Heartbeat("w2"), Bye("w2"),
                                 Update("w2", 1, "train", 1, {}, harness_weights())],
                         ids=lambda m: type(m).__name__)
def test_worker_id_that_does_not_match_its_connection_is_refused(msg: Message) -> None:
    h = three_worker_round()
    assert_refused(h, "w1", msg, "wrong_worker")


@pytest.mark.parametrize("msg", [
    Welcome("w1", 1.0, 3.0),
    Task(1, "train", {}, harness_weights(), 0, 3, 10.0),
], ids=lambda m: type(m).__name__)
def test_broker_to_worker_messages_sent_to_the_broker_are_refused(msg: Message) -> None:
    h = three_worker_round()
    assert_refused(h, "w1", msg, "wrong_direction")


@pytest.mark.parametrize("frames, code", [
    ([b"garbage"], "malformed"),
    ([b"FL9", b"HEARTBEAT", b"{}"], "version"),
    ([VERSION, b"NOPE", b"{}"], "unknown_kind"),
    ([VERSION, b"ROSTER", b"{}"], "malformed"),
    ([VERSION, b"HEARTBEAT", b"[" * 70_000], "limit"),
    ([VERSION, b"HEARTBEAT", b'{"worker_id": "bad id"}'], "malformed"),
    ([VERSION, b"HEARTBEAT", b'{"worker_id": NaN}'], "malformed"),
], ids=["garbage", "version", "kind", "secagg-kind", "header-size", "worker-id", "nan"])
def test_malformed_frames_are_refused(frames: list[bytes], code: str) -> None:
    h = three_worker_round()
    assert_refused(h, "w1", frames, code)
    assert_refused(h, b"stranger", frames, code)


def test_a_refused_round_still_completes() -> None:
    h = three_worker_round()
    h.send("w1", [b"garbage"])
    h.send(b"stranger", Heartbeat("w1"))
    for w in ("w1", "w2", "w3"):
        assert h.send(w, h.update(w)) == []
    assert h.coord.completed == 1 and h.coord.refused == 2


FUZZ_FRAMES = st.lists(st.binary(max_size=40), max_size=6) | st.builds(
    lambda kind, head: [VERSION, kind, head],
    # (HELLO and BYE are left out: a valid one is allowed to change the state)
    st.sampled_from([k.value.encode() for k in Kind if k not in (Kind.HELLO, Kind.BYE)]),
    st.dictionaries(st.sampled_from(["worker_id", "round_id", "stage", "num_samples", "metrics", "tensors"]),
                    st.none() | st.integers() | st.text(max_size=5) | st.just([]), max_size=6)
    .map(lambda d: json.dumps(d).encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=FUZZ_FRAMES)
def test_fuzzed_input_never_crashes_or_moves_the_round(frames: list[bytes]) -> None:
    h = three_worker_round()
    before = h.snapshot()
    for sender in ("w1", b"stranger"):
        out = h.send(sender, frames)
        assert all(isinstance(m, Error) for _, m in decoded(out))
    assert h.snapshot() == before


# ---------------------------------------------------------------------------------------- time


def test_heartbeats_are_sent_every_interval() -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=4))
    h.join("w1", "w2")
    sent: list[float] = []
    for _ in range(40):  # 10 s in quarter-second ticks
        h.clock.t += 0.25
        for w in ("w1", "w2"):
            h.send(w, Heartbeat(w))
        beats = of_type(h.tick(), Heartbeat)
        if beats:
            assert {m.worker_id for m in beats.values()} == {"w1", "w2"}
            assert sorted(beats) == [b"r-w1", b"r-w2"]
            sent.append(h.now)
    gaps = np.diff(sent)
    assert len(sent) == 10 and np.allclose(gaps, 1.0)


def test_first_tick_sends_heartbeats_and_welcome_carries_the_timing() -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=4))
    welcome = of_type(h.hello("w1"), Welcome)[b"r-w1"]
    assert (welcome.worker_id, welcome.heartbeat_interval_s, welcome.heartbeat_timeout_s) == ("w1", 1.0, 3.0)
    assert set(of_type(h.tick(), Heartbeat)) == {b"r-w1"}
    assert of_type(h.tick(), Heartbeat) == {}  # not again within the interval


def test_next_wakeup_points_at_the_next_event() -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=4))
    h.tick()
    assert h.coord.next_wakeup(h.now) == pytest.approx(1.0)  # next heartbeat
    h.hello("w1")
    h.clock.t += 0.9
    h.tick()
    assert h.coord.next_wakeup(h.now) == pytest.approx(0.1)
    h2 = three_worker_round(broker=dataclasses.replace(HARNESS_BROKER, heartbeat_interval_s=50.0,
                                                       heartbeat_timeout_s=100.0, round_timeout_s=7.0))
    assert h2.coord.next_wakeup(h2.now) == pytest.approx(7.0)  # the round deadline
    h2.clock.t += 100.0
    assert h2.coord.next_wakeup(h2.now) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hello", "beat", "update", "bye", "tick", "unreachable"]),
                          st.sampled_from(["w1", "w2", "w3", "w4"]),
                          st.floats(0.0, 4.0)), max_size=40))
def test_random_schedules_keep_invariants(steps: list[tuple[str, str, float]]) -> None:
    h = CoordinatorHarness(harness_config(num_clients=4, clients_per_round=3, min_clients=2, num_rounds=3))
    for op, wid, dt in steps:
        h.clock.t += dt
        if op == "hello":
            h.hello(wid)
        elif op == "beat":
            h.send(wid, Heartbeat(wid))
        elif op == "update" and h.coord.round is not None:
            h.send(wid, h.update(wid))
        elif op == "bye":
            h.send(wid, Bye(wid))
        elif op == "unreachable":
            h._check(h.coord.unreachable(h.route(wid), h.now))
        else:
            h.tick()
        rnd = h.coord.round
        if rnd is not None:
            assert rnd.pending <= set(rnd.cohort)
            assert not rnd.pending & set(rnd.updates) and not rnd.pending & set(rnd.dropped)
            assert rnd.deadline - h.now <= HARNESS_BROKER.round_timeout_s + 1e-9
        assert h.coord.completed + sum(r.status == "failed" for r in h.records) == len(h.records)
        assert [r.round for r in h.records] == list(range(1, len(h.records) + 1))
        assert h.coord.completed <= 3


def test_identity_key_of_a_live_worker_cannot_be_replaced() -> None:
    from federated.protocol import Hello as _Hello

    config = FederatedConfig(num_clients=3, clients_per_round=3, num_rounds=1)
    c = Coordinator(config, {"w": np.zeros(2, np.float32)})
    first = c.handle(b"r1", _Hello("a", 5, (), "11" * 32).to_frames(), 0.0)
    assert type(decode_message(first[0].frames)).__name__ == "Welcome"
    refused = c.handle(b"r2", _Hello("a", 5, (), "22" * 32).to_frames(), 0.1)
    assert decode_message(refused[0].frames).code == "identity_mismatch"
    assert c.identities["a"] == bytes.fromhex("11" * 32)
    c.registry.remove("a")  # the old session is gone: a restarted worker may bring a new key
    c.handle(b"r3", _Hello("a", 5, (), "22" * 32).to_frames(), 0.2)
    assert c.identities["a"] == bytes.fromhex("22" * 32)
