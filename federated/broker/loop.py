"""The broker's ROUTER socket loop: a thin I/O driver around :class:`Coordinator`.

It binds, sets the socket options DESIGN §4 asks for, and then only moves frames: received messages go to
``Coordinator.handle``, timers to ``Coordinator.tick``, and whatever those return is sent. A peer that
cannot be reached (``ROUTER_MANDATORY`` raises EHOSTUNREACH) or whose queue is full is reported to the
coordinator as a dropout instead of blocking the loop.

What one connection can make the broker hold is bounded twice. While a message arrives, libzmq keeps all
of it out of reach, so an :class:`~federated.broker.inflight.InflightGuard` cuts a connection through
which libzmq holds more than one largest message. Once a message is readable, it is read frame by frame,
and past ``Limits.max_frames`` frames or ``Limits.max_received_bytes()`` the rest is dropped as it is
read, never kept, and the sender gets an ERROR (``limit``).

A connection may carry many worker sessions (a simulation process's virtual clients, see
:mod:`federated.protocol.multiplex`): a message that starts with a tag frame comes from, and its answers go
to, the tagged session's virtual route, which the coordinator treats as a connection of its own. A tag
frame that says the session closed is, for the coordinator, a connection that cannot be reached.
So the broker's send queue holds :func:`~federated.transport.shared_hwm` messages per connection, room
for a round's messages to every client the broker serves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zmq

from federated.broker.coordinator import Coordinator, Outbound
from federated.broker.errors import BindError
from federated.broker.inflight import InflightGuard, wire_size
from federated.keys import BrokerKeys
from federated.protocol import Error, LimitExceeded
from federated.protocol.multiplex import (
    TAG_FRAME_BYTES,
    parse_tag_frame,
    split_route,
    tag_frame,
    virtual_route,
)
from federated.transport import (
    FD_MARGIN,
    configure_socket,
    curve_server,
    ensure_open_files,
    shared_hwm,
    start_authenticator,
)

__all__ = ["BrokerLoop"]

log = logging.getLogger("federated.broker")

#: Inbound messages handled per poll wake-up before timers get a turn, so a flood cannot starve ticks.
BATCH = 256
#: Pending TCP connections the listening socket queues (libzmq's default is 100).
ACCEPT_BACKLOG = 4096
#: Whole messages libzmq queues per connection before it stops reading from it (backpressure: nothing is
#: dropped, the peer's messages wait in TCP and in its own queue). Everything queued counts toward the
#: connection guard's budget (one largest message), so a connection that many sessions share
#: (:mod:`federated.protocol.multiplex`) must not queue many large ones: 8 updates of up to 28 MiB each
#: fit the default budget of 256 MiB; an honest connection of its own rarely has more than one update
#: and a few heartbeats queued.
RECEIVE_HWM = 8


@dataclass
class _Inbound:
    """One message as read off the ROUTER: its connection (a session's virtual route on a shared
    connection), its frames (none if it was over a limit), the CURVE key it came with, why it was refused,
    if it was, and whether it only says that a session on a shared connection closed."""

    route: bytes
    frames: list[zmq.Frame]
    peer: str | None
    refused: str = ""
    closed: bool = False


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
        #: Messages refused unread for too many frames or bytes.
        self.oversized = 0
        #: Bounds what a connection makes libzmq hold before a message is whole (None: not watching).
        self.guard: InflightGuard | None = None
        self._last_refusal_log = -math.inf
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
        # One descriptor per worker's TCP connection (and a quarter more for connections closing while new
        # ones open): thousands of workers need more than the usual 1,024. When accept() runs out, libzmq
        # retries it, the kernel's accept queue overflows and connecting workers wait for SYN retries.
        ensure_open_files(self.coordinator.config.num_clients * 5 // 4 + FD_MARGIN)
        sock: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        configure_socket(sock, self.coordinator.limits, cfg.heartbeat_interval_s, cfg.heartbeat_timeout_s,
                         connections=self.coordinator.config.num_clients)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, shared_hwm(self.coordinator.config.num_clients))
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        # Connections not yet accepted wait in the kernel's queue; libzmq's default of 100 drops the SYNs of
        # a crowd (thousands of simulated clients connecting at once), which then retry only after
        # seconds. The kernel caps it at net.core.somaxconn.
        sock.setsockopt(zmq.BACKLOG, ACCEPT_BACKLOG)
        auth = None
        if self.bind.startswith("tcp://") and InflightGuard.available():
            self.guard = InflightGuard(self.context, sock, self.coordinator.limits.inflight_budget(),
                                       curve=self.keys is not None, heartbeat_interval_s=cfg.heartbeat_interval_s)
            self.guard.start()
        elif self.bind.startswith("tcp://"):
            log.warning("no per-connection bound on partly received messages (it needs Linux): one "
                        "connection can make the broker hold as much as it sends in one message")
        try:
            if self.keys is not None:
                # The ZAP handler first: a CURVE server without one admits any client key.
                auth = start_authenticator(self.context, self.coordinator.enrolment)
                curve_server(sock, self.keys.public, self.keys.secret)
            try:
                sock.bind(self.bind)
            except zmq.ZMQError as exc:
                raise BindError(f"cannot listen on {self.bind}: {exc.strerror}") from None
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("broker listening on %s", self.endpoint)
            if self.on_bound is not None:
                self.on_bound(self.endpoint)
            self._serve(sock)
        finally:
            if self.guard is not None:
                self.guard.stop()
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
                    if coord.done:
                        break
                    try:
                        msg = self._receive(sock)
                    except zmq.Again:
                        break
                    if msg.refused:
                        self._refuse_oversized(sock, msg)
                        continue
                    if msg.closed:
                        self._send(sock, coord.unreachable(msg.route, coord.clock()))
                        continue
                    self.received += 1
                    self._send(sock, coord.handle(msg.route, msg.frames, coord.clock(), peer=msg.peer))
            self._send(sock, coord.tick(coord.clock()))

    def _receive(self, sock: zmq.Socket[bytes]) -> _Inbound:
        """Read one message frame by frame (raises ``zmq.Again`` if none is queued).

        libzmq hands over a message only when all of it is there, so every frame after the first is read
        without waiting. Past the frame or byte limit the frames are dropped as they are read: the broker
        never keeps more than one acceptable message's worth of a message it will refuse anyway.
        """
        limits = self.coordinator.limits
        route = sock.recv(zmq.NOBLOCK, copy=False)
        msg = _Inbound(route.bytes, [], None)
        count = nbytes = wire = 0
        fd = -1
        first = True
        more = route.more
        while more:
            frame = sock.recv(copy=False)
            more = frame.more
            size = len(frame)
            wire += wire_size(size, curve=self.keys is not None)
            if first:
                first = False
                fd = frame.get(zmq.SRCFD)
                # Under CURVE every frame carries the authenticated client key; it, not the routing id or
                # anything the message says, is who the sender is.
                peer = frame.get("User-Id") if self.keys is not None else None
                msg.peer = peer if isinstance(peer, str) else None
                tagged = parse_tag_frame(frame.bytes) if size == TAG_FRAME_BYTES else None
                if tagged is not None:  # the transport's frame, not one of the message
                    tag, msg.closed = tagged
                    msg.route = virtual_route(msg.route, tag)
                    continue
            count, nbytes = count + 1, nbytes + size
            if msg.refused or msg.closed:
                continue
            if count > limits.max_frames:
                msg.refused = f"message has more than {limits.max_frames} frames"
            elif nbytes > limits.max_received_bytes():
                msg.refused = f"message has more than {limits.max_received_bytes()} bytes"
            if msg.refused:
                msg.frames.clear()
            else:
                msg.frames.append(frame)
        if self.guard is not None and fd >= 0:
            self.guard.credit(fd, wire)
        return msg

    def _refuse_oversized(self, sock: zmq.Socket[bytes], msg: _Inbound) -> None:
        """Answer a message dropped for its size as the coordinator answers malformed ones: an ERROR and a
        log line (at most one a second)."""
        self.oversized += 1
        coord = self.coordinator
        coord.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warning("refused a message from connection %s (%d so far): %s; dropped unread",
                        msg.route.hex()[:16], self.oversized, msg.refused)
        round_id = coord.round.round_id if coord.round is not None else -1
        self._send(sock, [Outbound(msg.route, Error(LimitExceeded.code, msg.refused, round_id).to_frames())])

    def _send(self, sock: zmq.Socket[bytes], outbound: Iterable[Outbound]) -> None:
        for out in outbound:
            route, tag = split_route(out.route)
            head = [route] if tag is None else [route, tag_frame(tag)]
            try:
                sock.send_multipart([*head, *out.frames], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                    raise
                if self.coordinator.done:
                    # The run is over and this is its BYE: a worker that already left (a process whose
                    # sessions share a connection closes it on the first BYE) is no news.
                    continue
                reason = "unreachable" if exc.errno == zmq.EHOSTUNREACH else "send queue full"
                log.warning("could not send to connection %s: %s", out.route.hex()[:16], reason)
                self._send(sock, self.coordinator.unreachable(out.route, self.coordinator.clock()))
