"""Malformed messages thrown at a live broker over TCP: each is refused with the ERROR code its fault calls
for, the broker's state does not move, and an honest round still completes afterwards.

The fuzzing connection says HELLO first and holds a TASK of the open round, as a selected worker does, so
its messages reach every check a worker's message meets (decoding, tensor dtype, NaN, shape against the
model, round and stage), not only the door a stranger is turned away at. Every test starts its own broker.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from support import BrokerThread, Proc, frames_of, free_port

from federated.broker.coordinator import Coordinator
from federated.config import BrokerConfig, EvaluationConfig, FederatedConfig, TrainingConfig
from federated.models import build_model, get_weights
from federated.protocol import (
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    MaskedInput,
    ProtocolError,
    Task,
    Update,
    Welcome,
    decode_message,
    encode,
)
from federated.worker.runner import model_config

pytestmark = [pytest.mark.network]

#: The fuzzing worker's id, and a second worker's that only makes up the round's cohort.
FUZZ_ID, BYSTANDER_ID = "w0", "w1"
#: The live broker's model: a small MLP on 8x8 digits.
MODEL = build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0)
#: The codes the decoder sends (``federated.protocol.errors``) for bytes that do not decode.
DECODE_CODES = frozenset({"malformed", "version", "unknown_kind", "limit", "bad_tensor"})
#: The codes the coordinator sends for a worker's well-formed message that does not fit.
COORDINATOR_CODES = frozenset({"wrong_worker", "wrong_stage", "bad_tensor", "wrong_direction"})


def _valid_update(round_id: int = 1) -> list[bytes]:
    """Well-formed, but never acceptable: one made-up tensor, not the model's four."""
    return frames_of(Update(FUZZ_ID, round_id, "train", 10, {"loss": 1.0},
                            {"layers.0.weight": np.zeros((2, 2), np.float32)}))


def _model_update(round_id: int, tensors: dict[str, np.ndarray]) -> list[bytes]:
    return frames_of(Update(FUZZ_ID, round_id, "train", 10, {"loss": 1.0}, tensors))


def _decoder_code(frames: list[bytes]) -> str:
    """The code the decoder itself gives ``frames`` (they must not decode)."""
    try:
        decode_message(frames)
    except ProtocolError as exc:
        assert exc.code in DECODE_CODES, exc
        return exc.code
    raise AssertionError("these frames decode")


def _flipped_code(frames: list[bytes]) -> frozenset[str]:
    """A bit flip may break decoding (then the decoder's code) or leave a message that decodes but
    does not fit (then one of the coordinator's)."""
    try:
        return frozenset({_decoder_code(frames)})
    except AssertionError:
        return COORDINATOR_CODES


@dataclass(frozen=True)
class Case:
    """One fuzz message: its category, its frames, and the ERROR codes it may be answered with."""

    category: str
    frames: list[bytes] = field(repr=False)
    codes: frozenset[str]

    def __repr__(self) -> str:  # the frames can be 100 kB: their lengths and first bytes are enough
        shown = [f[:24] for f in self.frames]
        sizes = [len(f) for f in self.frames]
        return f"Case({self.category!r}, frames={shown} ({sizes} bytes), {set(self.codes)})"


def _case(category: str, expected: str | Callable[[list[bytes]], str | frozenset[str]]
          ) -> Callable[[list[bytes]], Case]:
    def make(frames: list[bytes]) -> Case:
        codes = expected if isinstance(expected, str) else expected(frames)
        return Case(category, frames, frozenset({codes}) if isinstance(codes, str) else codes)
    return make


def _flip(frame: bytes, pos: int, xor: int) -> bytes:
    if not frame:
        return b"\x00"
    pos %= len(frame)
    return frame[:pos] + bytes([frame[pos] ^ xor]) + frame[pos + 1:]


def _mutations(round_id: int) -> st.SearchStrategy[Case]:
    """Mutations by category, for a worker that said HELLO and holds round ``round_id``'s TASK."""
    valid = _valid_update(round_id)
    header = json.loads(valid[2])
    good = {n: np.zeros(w.shape, np.float32) for n, w in get_weights(MODEL).items()}
    first = "layers.0.weight"
    random_frames = st.lists(st.binary(max_size=300), min_size=1, max_size=6).filter(
        lambda f: len(f) < 3 or f[0] != b"FL1")  # never a message that decodes: the decoder's code
    wrong_version = st.binary(max_size=8).filter(lambda b: b != b"FL1").map(lambda v: [v, *valid[1:]])
    oversized = st.integers(65 * 1024, 120 * 1024).map(
        lambda n: [b"FL1", b"HEARTBEAT", json.dumps({"worker_id": FUZZ_ID, "pad": "a" * n}).encode()])
    def with_dtype(dtype: str) -> list[bytes]:  # the header says ``dtype``; the bytes are float32's
        tensors = [{**header["tensors"][0], "dtype": dtype}]
        return [valid[0], valid[1], json.dumps({**header, "tensors": tensors}).encode(), valid[3]]

    bad_dtype = st.sampled_from(["float64", "complex64", "object", "", "U8"]).map(with_dtype)
    size_mismatch = st.integers(0, 15).map(lambda n: [*valid[:3], valid[3][:n]])
    non_finite = st.tuples(st.sampled_from([np.nan, np.inf, -np.inf]), st.sampled_from(sorted(good))).map(
        lambda t: _model_update(round_id, {**good, t[1]: np.full(good[t[1]].shape, t[0], np.float32)}))
    # The model's own tensor names and float32, but one of them the wrong shape, or one missing or extra.
    wrong_shape = st.sampled_from([
        {**good, first: good[first].T[:, :32].copy()},
        {**good, first: good[first].reshape(-1)},
        {n: w for n, w in good.items() if n != first},
        {**good, "layers.9.weight": np.zeros(2, np.float32)},
    ]).map(lambda t: _model_update(round_id, t))
    # The model's names and shapes in a dtype other than float32.
    wrong_dtype = st.sampled_from([np.float16, np.int32, np.uint8]).map(
        lambda d: _model_update(round_id, {n: w.astype(d) for n, w in good.items()}))
    # What would be accepted, but for another round (a replay, or one not yet started) or another stage;
    # a negative round is no round at all, refused by the decoder.
    wrong_round = st.integers(0, 10**6).filter(lambda r: r != round_id).map(lambda r: _model_update(r, good))
    negative_round = st.integers(-5, -1).map(lambda r: _model_update(r, good))
    wrong_stage = st.sampled_from(["unmask", "eval", "aggregate"]).map(
        lambda stage: frames_of(Update(FUZZ_ID, round_id, stage, 10, {}, good)))
    foreign_id = st.sampled_from([BYSTANDER_ID, "someone_else"]).map(
        lambda wid: frames_of(Update(wid, round_id, "train", 10, {}, good)))
    headless_kind = st.sampled_from([Kind.TASK, Kind.WELCOME, Kind.ROSTER, Kind.MASKED_INPUT]).map(
        lambda k: [bytes(f) for f in encode(k, {"round_id": round_id})])  # required fields missing
    broker_kind = st.sampled_from([
        Welcome(FUZZ_ID, 0.2, 2.0),
        Task(round_id, "train", {}, good, 0, 2, 60.0),
    ]).map(frames_of)
    secagg_in_plain_round = st.just(frames_of(MaskedInput(FUZZ_ID, round_id, np.zeros(4, np.uint32), 0.0)))
    flipped = st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(1, 255)).map(
        lambda t: [bytes(b if i != t[0] else _flip(b, t[1], t[2])) for i, b in enumerate(valid)])
    return st.one_of(
        random_frames.map(_case("random_frames", _decoder_code)),
        wrong_version.map(_case("wrong_version", "version")),
        oversized.map(_case("oversized", "limit")),
        bad_dtype.map(_case("bad_dtype", "bad_tensor")),
        size_mismatch.map(_case("size_mismatch", "bad_tensor")),
        non_finite.map(_case("non_finite", "bad_tensor")),
        wrong_shape.map(_case("wrong_shape", "bad_tensor")),
        wrong_dtype.map(_case("wrong_dtype", "bad_tensor")),
        wrong_round.map(_case("wrong_round", "wrong_stage")),
        negative_round.map(_case("negative_round", "malformed")),
        wrong_stage.map(_case("wrong_stage", "wrong_stage")),
        foreign_id.map(_case("foreign_id", "wrong_worker")),
        headless_kind.map(_case("headless_kind", "malformed")),
        broker_kind.map(_case("broker_kind", "wrong_direction")),
        secagg_in_plain_round.map(_case("secagg_in_plain_round", "wrong_stage")),
        flipped.map(_case("flipped", _flipped_code)),
    )


#: Every category ``_mutations`` draws from.
CATEGORIES = ("random_frames", "wrong_version", "oversized", "bad_dtype", "size_mismatch", "non_finite",
              "wrong_shape", "wrong_dtype", "wrong_round", "negative_round", "wrong_stage", "foreign_id",
              "headless_kind", "broker_kind", "secagg_in_plain_round", "flipped")


def _live_broker(tmp: Path, *, heartbeat_timeout_s: float = 2.0,
                 round_timeout_s: float = 60.0) -> BrokerThread:
    """A broker loop on 127.0.0.1 in a thread, for two workers, one round of the MLP."""
    port = free_port()
    config = FederatedConfig(
        num_clients=2, clients_per_round=2, min_clients=2, num_rounds=1, evaluation=EvaluationConfig(every=0),
        training=TrainingConfig(local_epochs=1),
        broker=BrokerConfig(bind=f"tcp://127.0.0.1:{port}", store=str(tmp / "s.db"),
                            heartbeat_interval_s=0.2, heartbeat_timeout_s=heartbeat_timeout_s,
                            start_timeout_s=60.0, round_timeout_s=round_timeout_s))
    coordinator = Coordinator(config, get_weights(MODEL),
                              task_config={"model": model_config("mlp", (8, 8, 1), 10)})
    return BrokerThread(coordinator, port=port)


def _snapshot(c: Coordinator) -> tuple[object, ...]:
    """What a refused message must leave as it was: the model, the round's progress, the registry."""
    digest = hashlib.sha256(b"".join(w.tobytes() for w in c.weights.values())).hexdigest()
    rnd = c.round
    progress = (None if rnd is None
                else (rnd.round_id, tuple(sorted(rnd.pending)), tuple(sorted(rnd.updates))))
    return (digest, progress, c.next_round_id, c.completed, tuple(c.registry.live_ids()), c.done)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[BrokerThread]:
    """A fresh broker for each test (none depends on what another did to its broker)."""
    # Long timeouts: the fuzzing worker sends no heartbeats and its round must stay open however long the
    # fuzzing takes. (The honest workers heartbeat, and their round ends when they answer.)
    broker = _live_broker(tmp_path, heartbeat_timeout_s=600.0, round_timeout_s=600.0)
    yield broker
    broker.close()


def test_malformed_messages_are_refused_with_their_code_and_change_nothing(live: BrokerThread) -> None:
    fuzzer, bystander = live.dealer(), live.dealer()
    try:
        for sock, wid in ((fuzzer, FUZZ_ID), (bystander, BYSTANDER_ID)):
            sock.send_multipart(Hello(wid, 10, ("train",)).to_frames())
            _recv(sock, Welcome)
        round_id = _recv(fuzzer, Task).round_id
        seen: Counter[str] = Counter()

        @settings(max_examples=300, deadline=None, database=None)
        @given(case=_mutations(round_id))
        def fuzz(case: Case) -> None:
            before = _snapshot(live.coordinator)
            refused = live.coordinator.refused
            fuzzer.send_multipart(case.frames)
            error = _recv(fuzzer, Error, timeout_ms=5000)
            assert error.code in case.codes, (case.category, error)
            assert live.coordinator.refused == refused + 1
            assert live.thread.is_alive()
            assert _snapshot(live.coordinator) == before
            seen[case.category] += 1

        fuzz()
        # Every category reached the broker and was answered with its own code: none was turned away at
        # the door as a stranger's ("unknown_worker"), so the deeper checks were reached.
        assert sorted(seen) == sorted(CATEGORIES), seen
        rnd = live.coordinator.round
        assert rnd is not None and rnd.round_id == round_id
        assert sorted(rnd.pending) == [FUZZ_ID, BYSTANDER_ID] and not rnd.updates
    finally:
        fuzzer.close()
        bystander.close()


#: A few of the fuzz test's messages, sent before and while an honest round runs.
JUNK = [b"", b"FL1"], [b"FL2", b"UPDATE", b"{}"], [b"FL1", b"NOPE", b"{}"], _valid_update(1)


def test_honest_round_completes_after_the_fuzzing(tmp_path: Path, procs: list[Proc]) -> None:
    live = _live_broker(tmp_path)
    stranger = live.dealer()
    try:
        # Junk from a connection that never said HELLO, each refused, before the honest workers join...
        for frames in JUNK:
            stranger.send_multipart(frames)
            _recv(stranger, Error)
        procs.append(Proc([sys.executable, "-m", "federated.cli.simworker", "--server-address",
                           f"127.0.0.1:{live.port}", "--dataset", "digits", "--partition", "iid",
                           "--num-shards", "2", "--shards", "0,1", "--seed", "0", "--model", "mlp"]))
        # ... and replays while they join, to be sure they are harmless mid-flight too.
        for _ in range(20):
            stranger.send_multipart(_valid_update(1))
            stranger.send_multipart(frames_of(Heartbeat(FUZZ_ID)))
        assert live.join(120), "the broker did not finish its round"
    finally:
        stranger.close()
        live.close()
    c = live.coordinator
    assert c.completed == 1 and not c.failed
    (record,) = c.history
    assert record.status == "complete" and sorted(record.survivors) == ["client_0", "client_1"]
    assert procs[-1].wait(30) == 0


M = TypeVar("M")


def _recv(sock: zmq.Socket[bytes], kind: type[M], timeout_ms: int = 10_000) -> M:
    """The next message of ``kind`` on ``sock`` (heartbeats skipped); fails the test after the timeout."""
    deadline = time.monotonic() + timeout_ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            msg = decode_message(sock.recv_multipart())
            if isinstance(msg, kind):
                return msg
            assert isinstance(msg, Heartbeat), f"expected {kind.__name__}, got {msg!r}"
    pytest.fail(f"no {kind.__name__} within {timeout_ms} ms")


def test_a_selected_connection_cannot_get_a_malformed_update_into_its_round(tmp_path: Path) -> None:
    """The deepest checks: a connection that said HELLO and was selected sends updates for the right round
    and stage that are wrong only in their tensors. Each is refused; the worker stays pending (a bad
    update is not an answer); the aggregate is exactly the honest worker's, as if the fuzzer were absent."""
    port = free_port()
    weights: dict[str, np.ndarray] = {"layers.0.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
               "layers.0.bias": np.linspace(-1, 1, 3).astype(np.float32)}
    config = FederatedConfig(
        num_clients=2, clients_per_round=2, min_clients=1, num_rounds=1, evaluation=EvaluationConfig(every=0),
        broker=BrokerConfig(bind=f"tcp://127.0.0.1:{port}", store=str(tmp_path / "s.db"), heartbeat_interval_s=0.2,
                            heartbeat_timeout_s=10.0, start_timeout_s=60.0, round_timeout_s=60.0))
    coordinator = Coordinator(config, weights)
    broker = BrokerThread(coordinator, port=port)
    honest, fuzzer = broker.dealer(), broker.dealer()
    try:
        for sock, wid in ((honest, "honest"), (fuzzer, "fuzz_0")):
            sock.send_multipart(Hello(wid, 10, ("train",)).to_frames())
            _recv(sock, Welcome)
        tasks = [_recv(sock, Task) for sock in (honest, fuzzer)]
        round_id = tasks[1].round_id
        good = {n: np.full(w.shape, 0.25, np.float32) for n, w in weights.items()}
        first = "layers.0.weight"
        bad_tensors: list[dict[str, np.ndarray]] = [
            {n: w.astype(np.float16) for n, w in good.items()},
            {n: np.zeros(w.shape, np.int32) for n, w in good.items()},
            {n: w for n, w in good.items() if n != first},
            {**good, "layers.9.weight": np.zeros(2, np.float32)},
            {(n + "_x" if n == first else n): w for n, w in good.items()},
            {n: w.reshape(-1) for n, w in good.items()},
            {**good, first: good[first].T.copy()},
            {},
        ]
        bad = [Update("fuzz_0", round_id, "train", 10, {"loss": 1.0}, t).to_frames() for t in bad_tensors]
        bf16 = encode(Kind.UPDATE, {"worker_id": "fuzz_0", "round_id": round_id, "stage": "train", "num_samples": 10,
                                    "metrics": {}}, {n: np.zeros(w.shape, np.uint16) for n, w in good.items()},
                      wire_dtypes={n: "bfloat16" for n in good})
        bad += [bf16, Update("fuzz_0", round_id, "unmask", 10, {}, good).to_frames(),
                Update("honest", round_id, "train", 10, {}, good).to_frames(),  # someone else's id
                Update("fuzz_0", round_id + 1, "train", 10, {}, good).to_frames(),  # a round not yet started
                Update("fuzz_0", round_id - 1, "train", 10, {}, good).to_frames()]  # one long over
        refused = coordinator.refused
        for frames in bad:
            fuzzer.send_multipart(frames)
            error = _recv(fuzzer, Error)
            assert error.code in ("bad_tensor", "wrong_stage", "wrong_worker", "malformed"), error
        assert coordinator.refused == refused + len(bad)
        rnd = coordinator.round
        assert rnd is not None and rnd.round_id == round_id
        assert "fuzz_0" in rnd.pending and not rnd.updates
        fuzzer.send_multipart(Bye("fuzz_0", "done fuzzing").to_frames())
        honest.send_multipart(Update("honest", round_id, "train", 10, {"loss": 0.5}, good).to_frames())
        assert broker.join(60), "the round did not finish"
    finally:
        broker.close()
    (record,) = coordinator.history
    assert record.status == "complete" and record.survivors == ("honest",) and record.dropped == ("fuzz_0",)
    assert record.metrics.get("dropped_left") == 1.0
    # The same round without the fuzzer, state machine only.
    alone = Coordinator(FederatedConfig(num_clients=1, clients_per_round=1, min_clients=1, num_rounds=1,
                                        evaluation=EvaluationConfig(every=0)), weights)
    alone.handle(b"h", [bytes(f) for f in Hello("honest", 10).to_frames()], 0.0)
    alone.tick(0.0)
    alone.handle(b"h", [bytes(f) for f in Update("honest", 1, "train", 10, {"loss": 0.5}, good).to_frames()], 0.1)
    assert alone.completed == 1
    assert all(coordinator.weights[n].tobytes() == alone.weights[n].tobytes() for n in weights)


def test_a_strangers_tensor_message_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A connection that never said HELLO may only say HELLO (no tensors), BYE or ERROR. Anything carrying
    tensors is refused as "unknown connection" whatever it holds, so it must be refused *before* decoding:
    joining a chunked tensor and scanning it for NaN costs the broker's only thread time and memory in
    proportion to what a stranger chose to send (up to ``max_message_bytes``, 256 MiB, per message)."""
    port = free_port()
    config = FederatedConfig(
        num_clients=1, clients_per_round=1, min_clients=1, num_rounds=1,
        broker=BrokerConfig(bind=f"tcp://127.0.0.1:{port}", store=str(tmp_path / "s.db"), start_timeout_s=600.0))
    coordinator = Coordinator(config, {"w": np.zeros(4, np.float32)})
    broker = BrokerThread(coordinator, port=port)
    stranger = broker.dealer()
    # 16 MiB in two 8 MiB chunks: every frame passes MAXMSGSIZE, the whole is well within the limits.
    frames = Update("x", 1, "train", 1, {}, {"w": np.ones(4 * 1024 * 1024, np.float32)}).to_frames()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        stranger.send_multipart(frames, copy=False)
        error = _recv(stranger, Error, timeout_ms=60_000)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        broker.close()
    assert error.code == "unknown_worker"
    assert peak < 2 * 1024 * 1024, f"refusing a stranger's 16 MiB message allocated {peak / 2**20:.0f} MiB"
