"""The broker's ROUTER socket loop: a thin I/O driver around :class:`Coordinator`.

It binds, sets the socket options DESIGN §4 asks for, and then only moves frames: received messages go to
``Coordinator.handle``, timers to ``Coordinator.tick``, and whatever those return is sent. A peer that
cannot be reached (``ROUTER_MANDATORY`` raises EHOSTUNREACH) or whose queue is full is reported to the
coordinator as a dropout instead of blocking the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import zmq

from federated.broker.coordinator import Coordinator, Outbound
from federated.crypto.keyfiles import BrokerKeys
from federated.transport import configure_socket, curve_server, start_authenticator

__all__ = ["BrokerLoop"]

log = logging.getLogger("federated.broker")

#: Inbound messages handled per poll wake-up before timers get a turn, so a flood cannot starve ticks.
BATCH = 256


class BrokerLoop:
    """Owns the ROUTER socket; ``run()`` returns when the coordinator is done (or ``stop()`` is called)."""

    def __init__(self, coordinator: Coordinator, bind: str, *, context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 keys: BrokerKeys | None = None) -> None:
        if (keys is None) != (coordinator.enrolment is None):
            raise ValueError("transport security needs both the broker's keys and the coordinator's enrolment")
        self.coordinator = coordinator
        self.keys = keys
        #: Messages handed to the coordinator (what got past CURVE and ZAP), for tests and tools.
        self.received = 0
        self.bind = bind
        self.context = context or zmq.Context.instance()
        self._stopping = False
        self.endpoint = ""
        #: Called with the bound endpoint (e.g. ``tcp://127.0.0.1:8080``) once listening.
        self.on_bound: Callable[[str], None] | None = None

    def stop(self) -> None:
        """Ask ``run`` to return after its current iteration (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        cfg = self.coordinator.config.broker
        sock: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        configure_socket(sock, self.coordinator.limits, cfg.heartbeat_interval_s, cfg.heartbeat_timeout_s)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        auth = None
        try:
            if self.keys is not None:
                # The ZAP handler first: a CURVE server without one admits any client key.
                auth = start_authenticator(self.context, self.coordinator.enrolment)
                curve_server(sock, self.keys.public, self.keys.secret)
            sock.bind(self.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("broker listening on %s", self.endpoint)
            if self.on_bound is not None:
                self.on_bound(self.endpoint)
            self._serve(sock)
        finally:
            # Linger briefly only on a clean finish, so the final BYEs reach the workers.
            sock.close(linger=500 if self.coordinator.done else 0)
            if auth is not None:
                auth.stop()

    def _serve(self, sock: zmq.Socket[bytes]) -> None:
        coord = self.coordinator
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        self._send(sock, coord.tick(coord.clock()))
        while not coord.done and not self._stopping:
            timeout_ms = coord.next_wakeup(coord.clock()) * 1000.0
            # Round up so we never wake a hair early and spin; cap so stop() is noticed promptly.
            if poller.poll(min(int(timeout_ms) + 1, 500)):
                for _ in range(BATCH):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    route = frames[0].bytes
                    self.received += 1
                    # Under CURVE every frame carries the authenticated client key; it, not the
                    # routing id or anything the message says, is who the sender is.
                    peer = frames[-1].get("User-Id") if self.keys is not None else None
                    self._send(sock, coord.handle(route, frames[1:], coord.clock(), peer=peer))
            self._send(sock, coord.tick(coord.clock()))

    def _send(self, sock: zmq.Socket[bytes], outbound: Iterable[Outbound]) -> None:
        for out in outbound:
            try:
                sock.send_multipart([out.route, *out.frames], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                    raise
                reason = "unreachable" if exc.errno == zmq.EHOSTUNREACH else "send queue full"
                log.warning("could not send to connection %s: %s", out.route.hex()[:16], reason)
                self._send(sock, self.coordinator.unreachable(out.route, self.coordinator.clock()))
