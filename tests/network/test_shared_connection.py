"""Sessions sharing one connection, against the real broker loop (:mod:`federated.protocol.multiplex`), from
an attacker's side: a tag names a session only on the connection that drew it, so a stranger can neither
speak for nor close another's session, and under CurveZMQ a shared connection speaks for its key's worker
only. Honest sharing: each session is a worker of its own, and a closed notice makes it a dropout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from support import BrokerThread, enrolled_workers

from federated.broker.coordinator import Coordinator
from federated.config import BrokerConfig, FederatedConfig
from federated.keys import (
    Enrolment,
    load_broker_keys,
    load_broker_public,
)
from federated.protocol import Error, Heartbeat, Hello, Welcome, decode_message
from federated.protocol.multiplex import new_tag, parse_tag_frame, split_route, tag_frame

pytestmark = [pytest.mark.network]

#: No round starts (five clients are needed) and nobody expires during a test.
CONFIG = FederatedConfig(num_clients=5, broker=BrokerConfig(start_timeout_s=600.0, heartbeat_interval_s=300.0,
                                                            heartbeat_timeout_s=900.0))


def _reply(sock: zmq.Socket[bytes], tag: bytes, timeout_s: float = 5.0) -> Any:
    """The next message to ``tag`` other than a heartbeat, or None."""
    deadline = time.monotonic() + timeout_s
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        first, *frames = sock.recv_multipart()
        tagged = parse_tag_frame(first)
        assert tagged is not None, "an answer on a shared connection without a tag frame"
        if tagged[0] != tag:
            continue
        msg = decode_message(frames)
        if not isinstance(msg, Heartbeat):
            return msg
    return None


def _send(sock: zmq.Socket[bytes], tag: bytes, frames: list[Any]) -> None:
    sock.send_multipart([tag_frame(tag), *frames])


def _wait_for(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def broker() -> Any:
    coordinator = Coordinator(CONFIG, {"w": np.zeros(3, np.float32)})
    thread = BrokerThread(coordinator)
    yield thread
    thread.close()


def test_sessions_on_one_connection_are_workers_of_their_own(broker: BrokerThread) -> None:
    sock = broker.dealer()
    tags = {"alice": new_tag(), "bob": new_tag()}
    for wid, tag in tags.items():
        _send(sock, tag, Hello(wid, 10).to_frames())
    for wid, tag in tags.items():
        welcome = _reply(sock, tag)
        assert isinstance(welcome, Welcome) and welcome.worker_id == wid
    registry = broker.coordinator.registry
    alice, bob = registry.get("alice"), registry.get("bob")
    assert alice is not None and bob is not None
    assert alice.route != bob.route and split_route(alice.route)[0] == split_route(bob.route)[0]
    # Each session speaks for its own worker only.
    _send(sock, tags["bob"], Heartbeat("alice").to_frames())
    refused = _reply(sock, tags["bob"])
    assert isinstance(refused, Error) and refused.code == "wrong_worker"


def test_a_stranger_using_a_session_s_tag_speaks_for_nobody(broker: BrokerThread) -> None:
    owner, stranger = broker.dealer(), broker.dealer()
    tag = new_tag()
    _send(owner, tag, Hello("alice", 10).to_frames())
    assert isinstance(_reply(owner, tag), Welcome)
    record = broker.coordinator.registry.get("alice")
    assert record is not None
    expires = record.expires_at
    _send(stranger, tag, Heartbeat("alice").to_frames())
    refused = _reply(stranger, tag)
    assert isinstance(refused, Error) and refused.code == "unknown_worker"
    assert broker.coordinator.registry.get("alice") is record and record.expires_at == expires


def test_only_the_connection_that_drew_a_tag_can_close_its_session(broker: BrokerThread) -> None:
    owner, stranger = broker.dealer(), broker.dealer()
    tags = {"alice": new_tag(), "bob": new_tag()}
    for wid, tag in tags.items():
        _send(owner, tag, Hello(wid, 10).to_frames())
        assert isinstance(_reply(owner, tag), Welcome)
    registry = broker.coordinator.registry
    stranger.send(tag_frame(tags["alice"], closed=True))
    _send(stranger, new_tag(), Hello("carol", 10).to_frames())  # something the loop answers, to sync on
    assert _wait_for(lambda: registry.get("carol") is not None)
    assert registry.get("alice") is not None, "a stranger closed alice's session"
    owner.send(tag_frame(tags["alice"], closed=True))
    assert _wait_for(lambda: registry.get("alice") is None), "a closed session is a dropout"
    assert registry.get("bob") is not None, "closing one session closes no other"


def test_a_closed_notice_with_frames_behind_it_is_only_a_close(broker: BrokerThread) -> None:
    sock = broker.dealer()
    tag = new_tag()
    _send(sock, tag, Hello("alice", 10).to_frames())
    assert isinstance(_reply(sock, tag), Welcome)
    received = broker.loop.received
    sock.send_multipart([tag_frame(tag, closed=True), *Hello("mallory", 10).to_frames()])
    assert _wait_for(lambda: broker.coordinator.registry.get("alice") is None)
    assert broker.coordinator.registry.get("mallory") is None and broker.loop.received == received


def test_under_curve_a_shared_connection_speaks_for_its_key_s_worker_only(tmp_path: Path) -> None:
    keys_dir, keys = enrolled_workers(tmp_path, ("alice", "bob"))
    coordinator = Coordinator(CONFIG, {"w": np.zeros(3, np.float32)}, enrolment=Enrolment(keys_dir))
    broker = BrokerThread(coordinator, keys=load_broker_keys(keys_dir))
    try:
        alice = keys["alice"]
        sock = broker.dealer((alice.curve_public, alice.curve_secret, load_broker_public(keys_dir)))
        mine, theirs = new_tag(), new_tag()
        _send(sock, mine, Hello("alice", 10).to_frames())
        assert isinstance(_reply(sock, mine), Welcome)
        _send(sock, theirs, Hello("bob", 10).to_frames())
        refused = _reply(sock, theirs)
        assert isinstance(refused, Error) and refused.code == "wrong_worker"
        assert coordinator.registry.get("bob") is None
    finally:
        broker.close()
