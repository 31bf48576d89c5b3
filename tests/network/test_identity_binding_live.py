"""Issue 13, item 11 over a real ROUTER: a routing id is the peer's choice, so it proves nothing.

Bob connects with a routing id of his own and says HELLO; his connection goes away (no BYE), so the broker
still holds his record until it expires or a send to him fails (heartbeats are slow here, so neither
happens during the test). Alice, enrolled too, connects with the same routing id, which libzmq now lets her
have, and speaks as bob. The old broker took her HEARTBEAT for bob's (silently: it refreshed his
liveness); it now answers ``wrong_worker``. The socket-free cases are in
``tests/broker/test_identity_binding.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

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

pytestmark = [pytest.mark.network]


def _reply(sock: zmq.Socket[bytes], timeout_s: float) -> object | None:
    deadline = time.monotonic() + timeout_s
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        msg = decode_message(sock.recv_multipart())
        if not isinstance(msg, Heartbeat):  # the broker's own heartbeats may come first
            return msg
    return None


def test_a_routing_id_taken_over_with_another_key_cannot_speak_for_its_worker(tmp_path: Path) -> None:
    keys_dir, keys = enrolled_workers(tmp_path, ("alice", "bob"))
    config = FederatedConfig(num_clients=5, broker=BrokerConfig(start_timeout_s=600.0, heartbeat_interval_s=300.0,
                                                                heartbeat_timeout_s=900.0))
    coordinator = Coordinator(config, {"w": np.zeros(3, np.float32)}, enrolment=Enrolment(keys_dir))
    broker = BrokerThread(coordinator, keys=load_broker_keys(keys_dir))
    server = load_broker_public(keys_dir)

    def dealer(wid: str) -> zmq.Socket[bytes]:
        return broker.dealer((keys[wid].curve_public, keys[wid].curve_secret, server), routing_id=b"the-route")

    try:
        bob = dealer("bob")
        bob.send_multipart(Hello("bob", 10).to_frames())
        assert isinstance(_reply(bob, 5), Welcome)
        bob.close()
        expires = coordinator.registry.get("bob").expires_at  # type: ignore[union-attr]
        # libzmq refuses a routing id that is still connected; retry until bob's connection is gone.
        deadline = time.monotonic() + 10
        reply = None
        while reply is None and time.monotonic() < deadline:
            alice = dealer("alice")
            alice.send_multipart(Heartbeat("bob").to_frames())
            reply = _reply(alice, 0.5)
            if reply is None:
                alice.close()
        assert isinstance(reply, Error) and reply.code == "wrong_worker", reply
        assert coordinator.registry.get("bob").expires_at == expires  # type: ignore[union-attr]
        alice.close()
    finally:
        broker.close()
