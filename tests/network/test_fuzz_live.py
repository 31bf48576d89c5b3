"""Malformed messages thrown at a live broker over TCP: each is refused with an ERROR (or dropped with a
log line), the broker's state does not move, and an honest round still completes afterwards."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import zmq
from conftest import Proc, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated.broker.coordinator import Coordinator
from federated.broker.loop import BrokerLoop
from federated.config import BrokerConfig, FederatedConfig, TrainingConfig
from federated.models import build_model, get_weights
from federated.protocol import (
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    Task,
    Update,
    Welcome,
    decode_message,
    encode,
)
from federated.worker.runner import model_config

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _valid_update(round_id: int = 1) -> list[bytes]:
    return [bytes(f) for f in Update("w0", round_id, "train", 10, {"loss": 1.0},
                                     {"layers.0.weight": np.zeros((2, 2), np.float32)}).to_frames()]


def _mutations() -> st.SearchStrategy[list[bytes]]:
    valid = _valid_update()
    header = json.loads(valid[2])
    random_frames = st.lists(st.binary(max_size=300), min_size=1, max_size=6)
    wrong_version = st.binary(max_size=8).filter(lambda b: b != b"FL1").map(lambda v: [v, *valid[1:]])
    oversized = st.integers(65 * 1024, 120 * 1024).map(
        lambda n: [b"FL1", b"HEARTBEAT", json.dumps({"worker_id": "x", "pad": "a" * n}).encode()])
    bad_dtype = st.sampled_from(["float64", "complex64", "object", "", "U8"]).map(
        lambda d: [valid[0], valid[1], json.dumps({**header, "tensors": [{**header["tensors"][0], "dtype": d}]}).encode(),
                   valid[3]])
    size_mismatch = st.integers(0, 15).map(lambda n: [*valid[:3], valid[3][:n]])
    non_finite = st.sampled_from([np.nan, np.inf, -np.inf]).map(
        lambda v: [bytes(f) for f in Update("w0", 1, "train", 10, {},
                                            {"layers.0.weight": np.full((2, 2), v, np.float32)}).to_frames()])
    wrong_round = st.integers(-5, 10**6).map(lambda r: _valid_update(r))
    wrong_kind = st.sampled_from([Kind.TASK, Kind.WELCOME, Kind.ROSTER, Kind.MASKED_INPUT]).map(
        lambda k: [bytes(f) for f in encode(k, {"round_id": 1})])
    flipped = st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(1, 255)).map(
        lambda t: [bytes(b if i != t[0] else _flip(b, t[1], t[2])) for i, b in enumerate(valid)])
    return st.one_of(random_frames, wrong_version, oversized, bad_dtype, size_mismatch, non_finite,
                     wrong_round, wrong_kind, flipped)


def _flip(frame: bytes, pos: int, xor: int) -> bytes:
    if not frame:
        return b"\x00"
    pos %= len(frame)
    return frame[:pos] + bytes([frame[pos] ^ xor]) + frame[pos + 1:]


class LiveBroker:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        model = build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0)
        config = FederatedConfig(
            num_clients=2, clients_per_round=2, min_clients=2, num_rounds=1,
            training=TrainingConfig(local_epochs=1),
            broker=BrokerConfig(bind=f"tcp://127.0.0.1:{self.port}", store=str(tmp / "s.db"),
                                heartbeat_interval_s=0.2, heartbeat_timeout_s=2.0, start_timeout_s=60.0))
        self.coordinator = Coordinator(config, get_weights(model),
                                       task_config={"model": model_config("mlp", (8, 8, 1), 10)})
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.loop = BrokerLoop(self.coordinator, config.broker.bind, context=self.context)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def snapshot(self) -> tuple[object, ...]:
        c = self.coordinator
        digest = hashlib.sha256(b"".join(w.tobytes() for w in c.weights.values())).hexdigest()
        return (digest, c.round, c.next_round_id, c.completed, tuple(c.registry.live_ids()), c.done)

    def close(self) -> None:
        self.loop.stop()
        self.thread.join(timeout=10)
        self.context.term()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    broker = LiveBroker(tmp_path_factory.mktemp("fuzz"))
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def fuzzer(live: LiveBroker) -> Iterator[zmq.Socket[bytes]]:
    sock: zmq.Socket[bytes] = live.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{live.port}")
    yield sock
    sock.close()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=_mutations())
def test_malformed_messages_are_refused_and_change_nothing(live: LiveBroker, fuzzer: zmq.Socket[bytes],
                                                            frames: list[bytes]) -> None:
    before = live.snapshot()
    refused = live.coordinator.refused
    fuzzer.send_multipart(frames)
    # Everything from a connection that never said HELLO is refused with an ERROR, except ERROR and
    # BYE messages, which are dropped with a log line (no reply to a reply).
    try:
        kind = type(decode_message(frames)).__name__
    except ValueError:
        kind = "malformed"
    assert kind != "Hello", "the strategies never produce a HELLO"
    silent = kind in ("Error", "Bye")
    if not silent:
        assert fuzzer.poll(5000), "no ERROR reply within 5 s"
        reply = decode_message(fuzzer.recv_multipart())
        assert reply.__class__.__name__ == "Error"
        assert live.coordinator.refused == refused + 1
    assert live.thread.is_alive()
    assert live.snapshot() == before


def test_honest_round_completes_after_the_fuzzing(live: LiveBroker, fuzzer: zmq.Socket[bytes],
                                                  procs: list[Proc]) -> None:
    # A couple of replays while the honest workers join, to be sure they are harmless mid-flight too.
    procs.append(Proc([sys.executable, "-m", "federated.cli.simworker", "--server-address",
                       f"127.0.0.1:{live.port}", "--dataset", "digits", "--partition", "iid", "--num-shards", "2",
                       "--shards", "0,1", "--seed", "0", "--model", "mlp"]))
    for _ in range(20):
        fuzzer.send_multipart(_valid_update(1))
        fuzzer.send_multipart([bytes(f) for f in Heartbeat("w0").to_frames()])
    live.thread.join(timeout=120)
    assert not live.thread.is_alive(), "the broker did not finish its round"
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
        num_clients=2, clients_per_round=2, min_clients=1, num_rounds=1,
        broker=BrokerConfig(bind=f"tcp://127.0.0.1:{port}", store=str(tmp_path / "s.db"), heartbeat_interval_s=0.2,
                            heartbeat_timeout_s=10.0, start_timeout_s=60.0, round_timeout_s=60.0))
    coordinator = Coordinator(config, weights)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    loop = BrokerLoop(coordinator, config.broker.bind, context=context)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    honest, fuzzer = (context.socket(zmq.DEALER) for _ in range(2))
    try:
        for sock, wid in ((honest, "honest"), (fuzzer, "fuzz_0")):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port}")
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
        thread.join(timeout=60)
        assert not thread.is_alive(), "the round did not finish"
    finally:
        loop.stop()
        thread.join(timeout=10)
        honest.close()
        fuzzer.close()
        context.term()
    (record,) = coordinator.history
    assert record.status == "complete" and record.survivors == ("honest",) and record.dropped == ("fuzz_0",)
    assert record.metrics.get("dropped_left") == 1.0
    # The same round without the fuzzer, state machine only.
    alone = Coordinator(FederatedConfig(num_clients=1, clients_per_round=1, min_clients=1, num_rounds=1), weights)
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
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    loop = BrokerLoop(coordinator, config.broker.bind, context=context)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    stranger = context.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(f"tcp://127.0.0.1:{port}")
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
        loop.stop()
        thread.join(timeout=10)
        stranger.close()
        context.term()
    assert error.code == "unknown_worker"
    assert peak < 2 * 1024 * 1024, f"refusing a stranger's 16 MiB message allocated {peak / 2**20:.0f} MiB"
