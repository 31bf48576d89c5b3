"""The worker loop's sockets: a DEALER socket per session, or one that every session shares
(:class:`~federated.worker.connection.SharedLine`), opened, watched and closed on the loop's I/O thread.
No protocol here: :mod:`federated.worker.loop` decides when a session connects, and what it says.

Sockets are watched through their ``ZMQ_FD`` descriptors in the OS's own selector (epoll on Linux), which
costs per ready socket: ``zmq_poll`` costs per watched socket, 13 ms a call over 5,000 of them, and that
was most of a simulation process's time. ``ZMQ_FD`` only says "look again", and libzmq gives that notice
only after a look found nothing: so a ready socket is read until it has nothing left, and a new socket,
or one sent on, goes to :attr:`Sockets.look_at`, to be looked at before the loop waits again (a send can
take the notice of a message that arrived meanwhile).
"""

from __future__ import annotations

import selectors

import zmq

from federated.protocol import Limits
from federated.transport import configure_socket, curve_client, shared_hwm
from federated.worker.connection import Connection, SharedLine, socket_fd

__all__ = ["MONITORED_EVENTS", "Sockets"]

#: What a session's socket monitor reports (see :meth:`Connection.on_monitor_event`).
MONITORED_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_CONNECT_RETRIED)


class Sockets:
    """The sockets of ``sessions`` sessions connecting to ``endpoint`` (``tcp://HOST:PORT``) from
    ``context``: all on one :class:`SharedLine` when ``share``, else a DEALER each, with a socket monitor
    when ``monitor``. ``broker_key`` (Z85) pins the broker under CurveZMQ (each session's own keys are on
    its :class:`Connection`). ``selector`` is the I/O thread's while it serves (None: nothing watched)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, limits: Limits,
                 broker_key: bytes | None, *, share: bool, sessions: int, monitor: bool,
                 reconnect_max_s: float) -> None:
        self.context = context
        self.endpoint = endpoint
        self.limits = limits
        self.broker_key = broker_key
        self.sessions = sessions
        self.monitor = monitor
        self.reconnect_max_s = reconnect_max_s
        self.line = SharedLine() if share else None
        self.selector: selectors.BaseSelector | None = None
        #: Sockets made or sent on since the loop last waited: look at them before it waits again.
        self.look_at: set[Connection | SharedLine] = set()

    def watch(self, owner: Connection | SharedLine, sock: zmq.Socket[bytes]) -> None:
        if self.selector is not None:
            self.selector.register(socket_fd(sock), selectors.EVENT_READ, (sock, owner))
            if isinstance(owner, Connection):
                self.look_at.add(owner)

    def unwatch(self, sock: zmq.Socket[bytes]) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(socket_fd(sock))
            except (KeyError, ValueError):
                pass

    def _dealer(self, c: Connection, connections: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        configure_socket(sock, self.limits, c.interval, c.timeout, connections=connections)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_max_s * 1000))
        return sock

    def open(self, c: Connection) -> None:
        """Give ``c`` a new connection: a tag of its own on the shared line (opened with the first), or
        a socket of its own (with its CURVE keys, and its monitor)."""
        line = self.line
        if line is not None:
            if line.sock is None:
                line.sock = self._dealer(c, 1)
                for option in (zmq.SNDHWM, zmq.RCVHWM):
                    line.sock.setsockopt(option, shared_hwm(self.sessions))
                line.sock.connect(self.endpoint)
                self.watch(line, line.sock)
            line.attach(c)
            return
        sock = self._dealer(c, self.sessions)
        if c.keys is not None and self.broker_key is not None:
            curve_client(sock, c.keys.curve_public, c.keys.curve_secret, self.broker_key)
        if self.monitor:
            c.monitor = sock.get_monitor_socket(MONITORED_EVENTS)
        sock.connect(self.endpoint)
        c.sock = sock
        self.watch(c, sock)
        if c.monitor is not None:
            self.watch(c, c.monitor)

    def close(self, c: Connection, *, notify: bool = False) -> None:
        """Close ``c``'s connection. On a shared line that is dropping its tag; with ``notify`` the broker
        is told, as a socket that closes would tell it (its next send there fails), so a session that
        vanishes or reconnects is a dropout at once. A session the broker said BYE to leaves quietly."""
        if c.tag is not None:
            assert self.line is not None
            if self.line.detach(c, notify=notify):
                self.look_at.add(self.line)
        elif c.sock is not None:
            if c.monitor is not None:
                c.sock.disable_monitor()
                self.unwatch(c.monitor)
                c.monitor.close(linger=0)
                c.monitor = None
            self.unwatch(c.sock)
            c.sock.close(linger=0)
            c.sock = None

    def close_line(self) -> None:
        """Close the shared socket, if there is one (after every session's connection is closed)."""
        if self.line is not None and self.line.sock is not None:
            self.unwatch(self.line.sock)
            self.line.sock.close(linger=0)
            self.line.sock = None
