"""A broker for tests: settings for a ``flbroker`` process, and a real broker loop on a thread of the test.

``BrokerThread`` serves a :class:`~federated.broker.coordinator.Coordinator` with the real
:class:`~federated.broker.loop.BrokerLoop` (a ROUTER on 127.0.0.1), so a test can talk to it over TCP with
DEALER sockets and still look at the coordinator's state between messages.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
import zmq

from federated.broker.coordinator import Coordinator
from federated.broker.loop import BrokerLoop
from federated.keys import WorkerKeys, create_broker_keys, create_worker_keys, enrol_worker, load_worker_keys
from federated.transport import curve_client

from .processes import free_port

__all__ = ["BrokerThread", "CurveClientKeys", "broker_config", "enrolled_workers"]

#: A DEALER's CURVE keys: its own Z85 public and secret key, and the broker's Z85 public key it pins.
CurveClientKeys = tuple[bytes, bytes, bytes]


def enrolled_workers(base: Path, worker_ids: Any, *, keys_dir: str = "broker-keys") -> tuple[Path, dict[str, WorkerKeys]]:
    """Broker keys in ``base/keys_dir`` and, for each of ``worker_ids``, worker keys in ``base/<id>``,
    enrolled with that broker. Returns the broker's key directory and each worker's loaded keys."""
    broker_dir = base / keys_dir
    create_broker_keys(broker_dir)
    workers = {}
    for wid in worker_ids:
        public, secret = create_worker_keys(base / wid, wid)
        enrol_worker(broker_dir, public)
        workers[wid] = load_worker_keys(secret)
    return broker_dir, workers


def broker_config(tmp_path: Path, **broker: Any) -> Path:
    """A YAML config with fast liveness settings for tests (overrides in ``broker``)."""
    settings = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.5, "start_timeout_s": 1.0,
                "round_timeout_s": 20.0, **broker}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"broker": settings}))
    return path


class BrokerThread:
    """``coordinator`` served on ``tcp://127.0.0.1:<port>`` by a ``BrokerLoop`` on a daemon thread, with a
    context of its own. Returns once the ROUTER is bound (fails the test after ``bind_timeout_s``). Use it as
    a context manager, or call ``close()``.

    ``port``: a free one if not given (a test whose config names the bind address passes that port).
    ``keys``: the broker's keys, for CURVE (the coordinator must then have the enrolment).
    """

    def __init__(self, coordinator: Coordinator, *, port: int | None = None, keys: Any = None,
                 bind_timeout_s: float = 10.0) -> None:
        self.coordinator = coordinator
        self.port = port if port is not None else free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.loop = BrokerLoop(coordinator, self.endpoint, context=self.context, keys=keys)
        bound = threading.Event()
        self.loop.on_bound = lambda _endpoint: bound.set()
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()
        if not bound.wait(bind_timeout_s):
            self.close()
            raise AssertionError(f"the broker loop did not bind {self.endpoint} within {bind_timeout_s} s")

    def dealer(self, curve: CurveClientKeys | None = None, *,
               routing_id: bytes | None = None) -> zmq.Socket[bytes]:
        """A DEALER connected to the broker (LINGER 0; a CURVE client if ``curve`` is given; the routing id
        it asks for, if given)."""
        sock: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if curve is not None:
            curve_client(sock, *curve)
        sock.connect(self.endpoint)
        return sock

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the loop to end by itself (the coordinator done); True if it did."""
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def close(self) -> None:
        """Stop the loop, wait for its thread, and close every socket of the context."""
        self.loop.stop()
        self.thread.join(10)
        self.context.destroy(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
