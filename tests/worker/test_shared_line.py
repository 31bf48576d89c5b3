"""Sessions sharing one connection (``WorkerLoop(share_connection=True)``) against a hand-driven ROUTER: one
TCP connection, a tag per session, a new tag (and a closed notice for the old one) when a session
reconnects or vanishes, and stray messages dropped without harm."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq
from support import LOOP_WEIGHTS, HandRouter, loop_client, loop_fit, run_loop

from federated.keys import create_worker_keys, load_worker_keys
from federated.protocol import Bye, Error, Heartbeat, Hello, Task, Update, Welcome, decode_message
from federated.protocol.multiplex import TAG_BYTES, parse_tag_frame, tag_frame
from federated.worker.loop import WorkerLoop

pytestmark = pytest.mark.network

class TaggedBroker(HandRouter):
    """A ROUTER that reads and writes tag frames: ``recv`` gives (routing id, tag, closed, message)."""

    def recv(self, timeout: float = 10.0) -> tuple[bytes, bytes, bool, Any]:
        route, first, *frames = self.frames(timeout)
        tagged = parse_tag_frame(first)
        assert tagged is not None, "a message on a shared connection without a tag frame"
        tag, closed = tagged
        return route, tag, closed, (None if closed else decode_message(frames))

    def recv_kind(self, kind: type, timeout: float = 10.0) -> tuple[bytes, bytes, Any]:
        """Next message of ``kind`` (skipping heartbeats and closed notices)."""
        deadline = time.monotonic() + timeout
        while True:
            route, tag, closed, msg = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, kind):
                return route, tag, msg
            assert closed or isinstance(msg, Heartbeat), f"unexpected {msg!r}"

    def send(self, route: bytes, tag: bytes, frames: list[Any]) -> None:
        self.sock.send_multipart([route, tag_frame(tag), *frames])


def _greet(broker: TaggedBroker, count: int, interval_s: float = 1.0,
           timeout_s: float = 5.0) -> tuple[set[bytes], dict[str, bytes]]:
    routes, tags = set(), {}
    for _ in range(count):
        route, tag, hello = broker.recv_kind(Hello)
        routes.add(route)
        tags[hello.worker_id] = tag
        broker.send(route, tag, Welcome(hello.worker_id, interval_s, timeout_s).to_frames())
    return routes, tags


def test_sessions_share_one_connection_each_under_its_own_tag(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = TaggedBroker(port)
    loop = WorkerLoop([loop_client(i) for i in range(3)], f"127.0.0.1:{port}", loop_fit, context=ctx, share_connection=True)
    thread, result = run_loop(loop)
    try:
        routes, tags = _greet(broker, 3)
        assert len(routes) == 1, "every session on the one connection"
        assert sorted(tags) == ["c0", "c1", "c2"] and len(set(tags.values())) == 3
        assert all(len(t) == TAG_BYTES for t in tags.values())
        (route,) = routes
        # A TASK to c1 alone is answered by c1 alone, under c1's tag.
        broker.send(route, tags["c1"], Task(4, "train", {"seed": 1}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames())
        _, tag, update = broker.recv_kind(Update)
        assert (tag, update.worker_id, update.round_id) == (tags["c1"], "c1", 4)
        for tag in tags.values():
            broker.send(route, tag, Bye("", "done").to_frames())
        thread.join(10)
        assert result == [0]
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_a_reconnecting_session_closes_its_tag_and_comes_back_under_a_new_one(
        port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = TaggedBroker(port)
    loop = WorkerLoop([loop_client(0), loop_client(1)], f"127.0.0.1:{port}", loop_fit, context=ctx, share_connection=True,
                      reconnect_min_s=0.05)
    thread, _ = run_loop(loop)
    try:
        routes, tags = _greet(broker, 2, interval_s=0.05, timeout_s=0.3)
        (route,) = routes
        # Keep c1 alive with the broker's heartbeats; say nothing to c0, which gives up after 0.3 s.
        closed_seen = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            broker.send(route, tags["c1"], Heartbeat("c1").to_frames())
            if not broker.sock.poll(50):
                continue
            r, tag, closed, msg = broker.recv()
            if closed:
                assert tag == tags["c0"], "only the silent session closes"
                closed_seen = True
            elif isinstance(msg, Hello):
                assert closed_seen, "the old tag is closed before the new HELLO"
                assert (r, msg.worker_id) == (route, "c0") and tag not in tags.values()
                break
        else:
            pytest.fail("c0 did not come back")
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_a_vanishing_session_closes_its_tag(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    broker = TaggedBroker(port)
    loop = WorkerLoop([loop_client(0), loop_client(1)], f"127.0.0.1:{port}", loop_fit, context=ctx, dropout_rate=0.5,
                      share_connection=True)
    thread, _ = run_loop(loop)
    try:
        routes, tags = _greet(broker, 2)
        (route,) = routes
        # Cohort of 2 at rate 0.5: position 0 vanishes, position 1 answers.
        broker.send(route, tags["c0"], Task(1, "train", {}, LOOP_WEIGHTS, 0, 2, 10.0).to_frames())
        broker.send(route, tags["c1"], Task(1, "train", {}, LOOP_WEIGHTS, 1, 2, 10.0).to_frames())
        seen: dict[str, tuple[bytes, Any]] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            _, tag, closed, msg = broker.recv()
            if closed:
                seen["closed"] = (tag, None)
            elif isinstance(msg, (Hello, Update)):
                seen[type(msg).__name__] = (tag, msg)
        assert seen["closed"][0] == tags["c0"]
        assert seen["Update"] == (tags["c1"], seen["Update"][1]) and seen["Update"][1].worker_id == "c1"
        assert seen["Hello"][1].worker_id == "c0" and seen["Hello"][0] not in tags.values()
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_stray_messages_on_a_shared_connection_are_dropped(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A tag no session holds, a closed notice, a message without a tag frame and a malformed message are
    each dropped; the sessions carry on."""
    broker = TaggedBroker(port)
    loop = WorkerLoop([loop_client(0)], f"127.0.0.1:{port}", loop_fit, context=ctx, share_connection=True)
    thread, _ = run_loop(loop)
    try:
        (route,), tags = _greet(broker, 1)
        task = Task(2, "train", {}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames()
        broker.send(route, b"\x01" * TAG_BYTES, task)  # nobody's tag
        broker.sock.send_multipart([route, tag_frame(tags["c0"], closed=True)])
        broker.sock.send_multipart([route, *task])  # no tag frame
        broker.send(route, tags["c0"], [b"FL1", b"garbage"])
        broker.send(route, tags["c0"], Task(3, "train", {}, LOOP_WEIGHTS, 0, 1, 10.0).to_frames())
        _, tag, update = broker.recv_kind(Update)
        assert (tag, update.round_id) == (tags["c0"], 3), "only the well-addressed TASK was trained on"
        assert thread.is_alive()
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


def test_sessions_with_transport_keys_cannot_share_a_connection(tmp_path: Any) -> None:
    _, secret = create_worker_keys(tmp_path / "c0", "c0")
    with pytest.raises(ValueError, match="cannot share a connection"):
        WorkerLoop([loop_client(0)], "127.0.0.1:1", loop_fit, keys={"c0": load_worker_keys(secret)},
                   broker_key=b"x" * 40, share_connection=True)


def test_an_error_for_one_session_reaches_only_that_session(port: int, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """``unknown_worker`` to c0's tag makes c0 announce again, under the same tag; c1 says nothing."""
    broker = TaggedBroker(port)
    loop = WorkerLoop([loop_client(0), loop_client(1)], f"127.0.0.1:{port}", loop_fit, context=ctx, share_connection=True)
    thread, _ = run_loop(loop)
    try:
        (route,), tags = _greet(broker, 2)
        broker.send(route, tags["c0"], Error("unknown_worker", "send HELLO first").to_frames())
        _, tag, hello = broker.recv_kind(Hello)
        assert (tag, hello.worker_id) == (tags["c0"], "c0")
    finally:
        loop.stop()
        thread.join(10)
        broker.close()


@pytest.mark.parametrize("share", [True, False])
def test_one_bye_ends_the_run_for_every_session_of_the_process(port: int, ctx: zmq.Context[zmq.Socket[bytes]],
                                                                share: bool) -> None:
    """The broker says BYE only when its run is over: sessions it never welcomed (a short run can end
    before the last of thousands of virtual clients joins) stop too, instead of waiting for a broker that
    is gone."""
    router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    loop = WorkerLoop([loop_client(i) for i in range(3)], f"127.0.0.1:{port}", loop_fit, context=ctx,
                      share_connection=share)
    thread, result = run_loop(loop)
    try:
        assert router.poll(10_000)
        route, *frames = router.recv_multipart()  # the first HELLO; the others go unanswered
        head = [route, frames[0]] if share else [route]
        router.send_multipart([*head, *Bye("", "training finished").to_frames()])
        thread.join(10)
        assert result == [0] and all(s.done for s in loop.sessions)
    finally:
        loop.stop()
        thread.join(10)
        router.close()
