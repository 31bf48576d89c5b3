"""CurveZMQ transport security: only enrolled workers get a message accepted, workers pin the broker's
key, and a revoked worker is refused at its next message on a live connection. Loopback only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from support import BIN, BrokerThread, Proc, broker_config, free_port

from federated.broker.coordinator import Coordinator
from federated.broker.store import RoundStore
from federated.config import BrokerConfig, FederatedConfig
from federated.keys import (
    Enrolment,
    create_broker_keys,
    create_worker_keys,
    enrol_worker,
    load_broker_keys,
    load_broker_public,
    load_worker_keys,
    revoke_worker,
)
from federated.protocol import Error, Heartbeat, Hello, Welcome, decode_message

pytestmark = [pytest.mark.network]


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "broker-keys"
    create_broker_keys(directory)
    return directory


def _worker_keys(tmp_path: Path, worker_id: str, keys_dir: Path | None) -> Path:
    public, secret = create_worker_keys(tmp_path / f"keys-{worker_id}", worker_id)
    if keys_dir is not None:
        enrol_worker(keys_dir, public)
    return secret


class CurveBroker(BrokerThread):
    """An in-process broker (coordinator + ROUTER loop on a thread) with CURVE on."""

    def __init__(self, keys_dir: Path) -> None:
        config = FederatedConfig(num_clients=5, broker=BrokerConfig(start_timeout_s=600.0, keys_dir=str(keys_dir)))
        coordinator = Coordinator(config, {"w": np.zeros(3, np.float32)}, enrolment=Enrolment(keys_dir))
        keys = load_broker_keys(keys_dir)
        self.public = keys.public
        super().__init__(coordinator, keys=keys)

    def keyed_dealer(self, secret_file: Path, server_public: bytes | None = None) -> zmq.Socket[bytes]:
        """A DEALER with the keys of ``secret_file``, pinning ``server_public`` (default: this broker's)."""
        keys = load_worker_keys(secret_file)
        return self.dealer((keys.curve_public, keys.curve_secret, server_public or self.public))


@pytest.fixture
def live(keys_dir: Path) -> Iterator[CurveBroker]:
    broker = CurveBroker(keys_dir)
    yield broker
    broker.close()


def _recv(sock: zmq.Socket[bytes], timeout_s: float) -> object | None:
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return decode_message(sock.recv_multipart())


def test_an_unenrolled_key_gets_no_message_accepted(tmp_path: Path, keys_dir: Path, live: CurveBroker) -> None:
    enrolled = live.keyed_dealer(_worker_keys(tmp_path, "good", keys_dir))
    stranger = live.keyed_dealer(_worker_keys(tmp_path, "stranger", None))
    for _ in range(20):
        stranger.send_multipart(Hello("stranger", 10).to_frames())
        stranger.send_multipart(Heartbeat("stranger").to_frames())
    enrolled.send_multipart(Hello("good", 10).to_frames())
    assert isinstance(_recv(enrolled, 5.0), Welcome)  # the broker is up and serving
    assert _recv(stranger, 0.5) is None
    assert live.loop.received == 1  # the enrolled worker's HELLO; the stranger's 40 never got through
    assert live.coordinator.registry.live_ids() == ["good"]


@pytest.mark.slow  # waits a second for the answer that must not come
def test_a_worker_pinning_the_wrong_broker_key_delivers_nothing(tmp_path: Path, keys_dir: Path,
                                                                 live: CurveBroker) -> None:
    impostor_keys = create_broker_keys(tmp_path / "other-broker")
    wrong = load_broker_public(impostor_keys[0])
    sock = live.keyed_dealer(_worker_keys(tmp_path, "w1", keys_dir), server_public=wrong)
    for _ in range(10):
        sock.send_multipart(Hello("w1", 10).to_frames())
    assert _recv(sock, 1.0) is None
    assert live.loop.received == 0 and len(live.coordinator.registry) == 0


def test_an_enrolled_key_cannot_speak_for_another_worker(tmp_path: Path, keys_dir: Path, live: CurveBroker) -> None:
    _worker_keys(tmp_path, "victim", keys_dir)
    sock = live.keyed_dealer(_worker_keys(tmp_path, "w1", keys_dir))
    sock.send_multipart(Hello("victim", 10).to_frames())
    reply = _recv(sock, 5.0)
    assert isinstance(reply, Error) and reply.code == "wrong_worker"
    assert len(live.coordinator.registry) == 0


def test_a_revoked_worker_is_refused_at_its_next_message_on_a_live_connection(
        tmp_path: Path, keys_dir: Path, live: CurveBroker) -> None:
    sock = live.keyed_dealer(_worker_keys(tmp_path, "w1", keys_dir))
    sock.send_multipart(Hello("w1", 10).to_frames())
    assert isinstance(_recv(sock, 5.0), Welcome)
    revoke_worker(keys_dir, "w1")
    time.sleep(0.25)  # the broker re-reads the enrolment at most every 0.2 s
    sock.send_multipart(Heartbeat("w1").to_frames())
    deadline = time.monotonic() + 5.0
    reply = _recv(sock, 5.0)
    while isinstance(reply, Heartbeat) and time.monotonic() < deadline:  # broker heartbeats may come first
        reply = _recv(sock, 5.0)
    assert isinstance(reply, Error) and reply.code == "not_enrolled"
    assert "w1" not in live.coordinator.registry
    # A new connection with the revoked key does not even get through the handshake.
    again = live.keyed_dealer(tmp_path / "keys-w1" / "w1.secret")
    received = live.loop.received
    again.send_multipart(Hello("w1", 10).to_frames())
    assert _recv(again, 0.5) is None
    assert live.loop.received == received


@pytest.mark.slow
def test_enrolled_workers_train_a_secure_round_over_curve(tmp_path: Path, keys_dir: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--keys-dir", str(keys_dir),
                   "--config", str(broker_config(tmp_path)), "--store", str(tmp_path / "store.db"),
                   "--num-clients", "3", "--num-rounds", "2", "--secure", "--local-epochs", "5", "--events"])
    procs.append(broker)
    for i in range(3):
        secret = _worker_keys(tmp_path, f"w{i}", keys_dir)
        procs.append(Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                           "--dataset", "digits", "--shard", str(i), "--num-shards", "3",
                           "--keys", str(secret), "--broker-key", str(keys_dir / "broker.key")]))
    rounds = [e for e in broker.events(timeout=120) if e["event"] == "round"]
    assert broker.wait(30) == 0
    assert [r["status"] for r in rounds] == ["complete", "complete"]
    assert all(sorted(r["survivors"]) == ["w0", "w1", "w2"] for r in rounds)
    with RoundStore(tmp_path / "store.db", readonly=True) as store:
        assert store.get_round(2).accuracy is not None and store.get_round(2).accuracy > 0.5
