"""The worker's DEALER loop against a hand-driven ROUTER on loopback: HELLO, TASK -> UPDATE, heartbeats,
reconnection with a new connection when the broker falls silent, BYE, and simulated dropout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from support import free_port

from federated.protocol import Bye, Error, Heartbeat, Hello, Task, Update, Welcome, decode_message
from federated.worker.loop import ClientData, WorkerLoop

pytestmark = pytest.mark.network

WEIGHTS = {"w": np.ones((2, 3), np.float32)}


def _fit(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: dict[str, Any],
         seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if config.get("fail"):
        raise ValueError("unknown option 'fail'")
    return {k: np.full_like(v, 0.5) for k, v in weights.items()}, {"loss": 1.0, "accuracy": 0.5, "train_s": 0.01}


class FakeBroker:
    def __init__(self, port: int) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port}")

    def recv(self, timeout: float = 10.0) -> tuple[bytes, Any]:
        assert self.sock.poll(int(timeout * 1000)), "nothing received in time"
        route, *frames = self.sock.recv_multipart()
        return route, decode_message(frames)

    def recv_kind(self, kind: type, timeout: float = 10.0) -> tuple[bytes, Any]:
        """Next message of ``kind``, skipping heartbeats."""
        deadline = time.monotonic() + timeout
        while True:
            route, msg = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, kind):
                return route, msg
            assert isinstance(msg, Heartbeat), f"unexpected {msg!r}"

    def send(self, route: bytes, frames: list[Any]) -> None:
        self.sock.send_multipart([route, *frames])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def port() -> int:
    return free_port()


def _run(loop: WorkerLoop) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def _client(i: int = 0, n: int = 7) -> ClientData:
    return ClientData(f"c{i}", np.zeros((n, 4), np.float32), np.zeros(n, np.int32))


def test_hello_task_update_bye(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    loop = WorkerLoop([_client()], f"127.0.0.1:{port}", _fit, context=ctx)
    thread, result = _run(loop)  # the worker starts before the broker exists
    broker = FakeBroker(port)
    try:
        route, hello = broker.recv_kind(Hello)
        assert (hello.worker_id, hello.num_samples) == ("c0", 7)
        assert "train" in hello.capabilities and len(bytes.fromhex(hello.identity)) == 32
        broker.send(route, Welcome("c0", 0.05, 5.0).to_frames())
        broker.send(route, Task(4, "train", {"seed": 1}, WEIGHTS, 0, 1, 10.0).to_frames())
        _, update = broker.recv_kind(Update)
        assert (update.worker_id, update.round_id, update.stage, update.num_samples) == ("c0", 4, "train", 7)
        np.testing.assert_array_equal(update.update["w"], np.full((2, 3), 0.5, np.float32))
        assert update.metrics["wait_s"] >= 0 and update.metrics["loss"] == 1.0
        _, beat = broker.recv_kind(Heartbeat)  # heartbeats flow at the interval WELCOME set
        assert beat.worker_id == "c0"
        broker.send(route, Bye("", "done").to_frames())
        thread.join(10)
        assert result == [0]
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_silent_broker_makes_the_worker_reconnect_with_a_new_connection(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = FakeBroker(port)
    loop = WorkerLoop([_client()], f"127.0.0.1:{port}", _fit, context=ctx, reconnect_min_s=0.05)
    thread, _ = _run(loop)
    try:
        route1, _ = broker.recv_kind(Hello)
        broker.send(route1, Welcome("c0", 0.05, 0.3).to_frames())  # then say nothing more
        route2, hello = broker.recv_kind(Hello, timeout=10)
        assert hello.worker_id == "c0" and route2 != route1
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_bad_task_is_reported_not_fatal(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = FakeBroker(port)
    loop = WorkerLoop([_client()], f"127.0.0.1:{port}", _fit, context=ctx)
    thread, _ = _run(loop)
    try:
        route, _ = broker.recv_kind(Hello)
        broker.send(route, Welcome("c0", 1.0, 5.0).to_frames())
        broker.send(route, Task(1, "train", {"fail": True}, WEIGHTS, 0, 1, 10.0).to_frames())
        _, err = broker.recv_kind(Error)
        assert err.code == "bad_task" and "fail" in err.message and err.round_id == 1
        broker.send(route, Task(2, "train", {}, WEIGHTS, 0, 1, 10.0).to_frames())
        _, update = broker.recv_kind(Update)
        assert update.round_id == 2
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


@pytest.mark.slow
def test_unknown_worker_error_makes_it_announce_again(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = FakeBroker(port)
    loop = WorkerLoop([_client()], f"127.0.0.1:{port}", _fit, context=ctx)
    thread, _ = _run(loop)
    try:
        route, _ = broker.recv_kind(Hello)
        broker.send(route, Error("unknown_worker", "send HELLO first").to_frames())
        route2, hello = broker.recv_kind(Hello)
        assert route2 == route and hello.worker_id == "c0"
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_simulated_dropout_vanishes_and_comes_back(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = FakeBroker(port)
    loop = WorkerLoop([_client(0), _client(1)], f"127.0.0.1:{port}", _fit, context=ctx, dropout_rate=0.5)
    thread, _ = _run(loop)
    try:
        routes = {}
        for _ in range(2):
            route, hello = broker.recv_kind(Hello)
            routes[hello.worker_id] = route
            broker.send(route, Welcome(hello.worker_id, 1.0, 5.0).to_frames())
        # Cohort of 2 at rate 0.5: position 0 vanishes, position 1 answers.
        broker.send(routes["c0"], Task(1, "train", {}, WEIGHTS, 0, 2, 10.0).to_frames())
        broker.send(routes["c1"], Task(1, "train", {}, WEIGHTS, 1, 2, 10.0).to_frames())
        seen = {}
        while len(seen) < 2:
            route, msg = broker.recv(10)
            if isinstance(msg, (Hello, Update)):
                seen[type(msg).__name__] = (route, msg)
        assert seen["Update"][1].worker_id == "c1"
        assert seen["Hello"][1].worker_id == "c0" and seen["Hello"][0] != routes["c0"]
    finally:
        loop.stop()
        thread.join(10)
        broker.close()
