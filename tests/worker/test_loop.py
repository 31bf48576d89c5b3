"""The worker's DEALER loop against a hand-driven ROUTER on loopback: HELLO, TASK -> UPDATE, heartbeats,
reconnection with a new connection when the broker falls silent, BYE, and simulated dropout."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import zmq
from support import LOOP_WEIGHTS, HandRouter, loop_client, loop_fit, run_loop

from federated.protocol import Bye, Error, Heartbeat, Hello, Task, Update, Welcome, decode_message
from federated.worker.loop import WorkerLoop

pytestmark = pytest.mark.network

class FakeBroker(HandRouter):
    def recv(self, timeout: float = 10.0) -> tuple[bytes, Any]:
        route, *frames = self.frames(timeout)
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


def test_hello_task_update_bye(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    loop = WorkerLoop([loop_client()], f"127.0.0.1:{port}", loop_fit, context=ctx)
    thread, result = run_loop(loop)  # the worker starts before the broker exists
    broker = FakeBroker(port)
    try:
        route, hello = broker.recv_kind(Hello)
        assert (hello.worker_id, hello.num_samples) == ("c0", 7)
        assert "train" in hello.capabilities and len(bytes.fromhex(hello.identity)) == 32
        broker.send(route, Welcome("c0", 0.05, 5.0).to_frames())
        broker.send(route, Task(4, "train", {"seed": 1}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames())
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
    loop = WorkerLoop([loop_client()], f"127.0.0.1:{port}", loop_fit, context=ctx, reconnect_min_s=0.05)
    thread, _ = run_loop(loop)
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
    loop = WorkerLoop([loop_client()], f"127.0.0.1:{port}", loop_fit, context=ctx)
    thread, _ = run_loop(loop)
    try:
        route, _ = broker.recv_kind(Hello)
        broker.send(route, Welcome("c0", 1.0, 5.0).to_frames())
        broker.send(route, Task(1, "train", {"fail": True}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames())
        _, err = broker.recv_kind(Error)
        assert err.code == "bad_task" and "fail" in err.message and err.round_id == 1
        broker.send(route, Task(2, "train", {}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames())
        _, update = broker.recv_kind(Update)
        assert update.round_id == 2
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


@pytest.mark.slow
def test_unknown_worker_error_makes_it_announce_again(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = FakeBroker(port)
    loop = WorkerLoop([loop_client()], f"127.0.0.1:{port}", loop_fit, context=ctx)
    thread, _ = run_loop(loop)
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
    loop = WorkerLoop([loop_client(0), loop_client(1)], f"127.0.0.1:{port}", loop_fit, context=ctx, dropout_rate=0.5)
    thread, _ = run_loop(loop)
    try:
        routes = {}
        for _ in range(2):
            route, hello = broker.recv_kind(Hello)
            routes[hello.worker_id] = route
            broker.send(route, Welcome(hello.worker_id, 1.0, 5.0).to_frames())
        # Cohort of 2 at rate 0.5: position 0 vanishes, position 1 answers.
        broker.send(routes["c0"], Task(1, "train", {}, LOOP_WEIGHTS, 0, 2, 10.0).to_frames())
        broker.send(routes["c1"], Task(1, "train", {}, LOOP_WEIGHTS, 1, 2, 10.0).to_frames())
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
