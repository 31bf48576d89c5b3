"""Bound the bytes one connection can make the broker hold before it has handed over a message.

libzmq delivers a multipart message only once every frame of it has arrived: until then the frames sit in
the connection's pipe, out of the application's reach. ``MAXMSGSIZE`` bounds one frame, the receive
high-water mark counts whole messages, and nothing in libzmq bounds the number of frames in one message,
so a single connection could make the broker hold any amount (40,000 frames of 64 KiB, 2.5 GiB, was
delivered whole before ``max_frames`` was ever checked). Reading frame by frame does not help: the first
frame is readable only after the last has arrived.

So :class:`InflightGuard` watches each TCP connection from outside libzmq. For every connection it
compares what the kernel says arrived (``TCP_INFO``'s ``tcpi_bytes_received``, less what still waits in
the kernel's receive queue) with what the broker loop has been handed from it (every message carries
the file descriptor it was read from, ``ZMQ_SRCFD``), counted as the frames' size on the wire. The
difference is what libzmq holds for that connection: frames of a message not yet complete, and whole
messages not yet read. When it passes the budget (one largest acceptable message, see
:meth:`~federated.protocol.Limits.inflight_budget`) the guard shuts the connection down; libzmq then
drops the connection and frees the partial message, and a worker's socket reconnects by itself.

The credit is a lower bound of the wire size (ZMTP frame header plus, under CURVE, the 33 bytes of a
MESSAGE box), so an honest connection never looks larger than it is; the ZMTP handshake and heartbeats,
which carry no message, get a small allowance. How late the guard acts is one sampling interval (20 ms:
at loopback speed some 10-30 MB) while there are at most :data:`SAMPLES_PER_PASS` connections. Beyond
that, an interval samples the next :data:`SAMPLES_PER_PASS` of them in turn, so a sweep of all takes
``n / SAMPLES_PER_PASS`` intervals (0.8 s at 10,000 connections) and the guard's CPU stays bounded (about
10% of a core) instead of growing with the federation: sampling 10,000 connections every 20 ms took the
whole of a core and starved the broker loop of the GIL. Linux only (``TCP_INFO``); elsewhere, or on a
non-TCP endpoint, the guard logs that it is off and the broker runs without it.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["SAMPLES_PER_PASS", "InflightGuard", "wire_size"]

log = logging.getLogger("federated.broker.inflight")

#: ``struct tcp_info`` (linux/tcp.h): ``tcpi_state`` is the first byte, ``tcpi_bytes_received`` (Linux 4.1+)
#: the u64 at offset 128.
_TCP_INFO_LEN = 256
_BYTES_RECEIVED = 128
_TCP_ESTABLISHED = 1
#: The ZMTP greeting and CURVE handshake (about 600 bytes), with room to spare.
_HANDSHAKE_ALLOWANCE = 64 * 1024
#: ZMTP PING and PONG commands (about 42 bytes each under CURVE) per heartbeat interval, twice over.
_PING_BYTES = 256
#: Connections sampled per interval at most (two system calls and a few microseconds of Python each).
SAMPLES_PER_PASS = 256


def wire_size(nbytes: int, *, curve: bool) -> int:
    """The fewest bytes a frame of ``nbytes`` takes on the wire (ZMTP 3 framing; under CURVE, a MESSAGE
    command: 8-byte name, 8-byte nonce, 16-byte tag and a flags byte around the data)."""
    body = nbytes + (33 if curve else 0)
    return body + (2 if body <= 255 else 9)


@dataclass
class _Connection:
    since: float
    peer: str


@contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """libzmq's descriptor ``fd`` as a Python socket for a moment, given back (never closed) after.

    Not a duplicate (``os.dup``): a broker of 10,000 workers would need 20,000 descriptors, above many
    systems' hard limit, and libzmq then fails to accept connections. A descriptor number that libzmq
    closes comes back for a later connection, which inherits the credit the closed one was handed (the
    guard never resets credit: its events arrive late). That credit is too large, and
    :meth:`InflightGuard._check` removes it at the new connection's first sample (a connection is never
    handed more than it received), so at most what the new connection received before that sample goes
    uncounted, as the guard's sampling delay allows anyway; from then on it is bounded like any other. If
    the guard sees the new connection under the old record, its allowance is only too large by the old
    connection's age in pings (256 bytes an interval). So it never cuts a connection that holds less than
    the budget (``tests/broker/test_inflight_fd_reuse.py``)."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


class InflightGuard:
    """Cuts any TCP connection of ``sock`` (a bound or about-to-bind ROUTER) through which libzmq holds more
    than ``budget`` bytes not yet handed to the broker.

    Call :meth:`credit` from the socket's own thread for every message received; :meth:`start` after
    creating the socket and before binding it, :meth:`stop` before closing it.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes], budget: int, *,
                 curve: bool, heartbeat_interval_s: float, interval_s: float = 0.02) -> None:
        self.budget = budget
        self.curve = curve
        self.interval_s = interval_s
        self._ping_rate = _PING_BYTES / max(heartbeat_interval_s, 0.001)  # bytes per second
        self._context, self._sock = context, sock
        self._address = f"inproc://federated.broker.inflight.{id(self):x}"
        self._credit: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Connections shut down for holding too much, the most any connection held, and what each watched
        #: connection (by descriptor) held at its last sample (bytes, allowance included; for tests and tools).
        self.cuts = 0
        self.peak = 0
        self.held: dict[int, int] = {}
        #: Credit found above what a connection received, and removed (bytes): only ever from a closed
        #: connection whose descriptor number was reused; anything else means the credit is too generous.
        self.excess = 0
        self._warned = False

    @staticmethod
    def available() -> bool:
        """Whether this platform reports ``tcpi_bytes_received`` (Linux)."""
        return sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")

    def start(self) -> None:
        # libzmq sends monitor events blocking, from its I/O thread: the reading end must be connected before
        # the first event, must never fill up (no high-water mark), and must outlive the monitor (stop()).
        self._sock.monitor(self._address, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        monitor: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.connect(self._address)
        self._thread = threading.Thread(target=self._run, args=(monitor,), name="broker-inflight-guard",
                                        daemon=True)
        self._thread.start()  # the socket moves to that thread; starting it is the memory barrier zmq asks for

    def stop(self) -> None:
        """Stop watching (from the socket's own thread), then stop the guard's thread."""
        self._sock.disable_monitor()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def credit(self, fd: int, nbytes: int) -> None:
        """``nbytes`` on the wire were handed to the broker from the connection on descriptor ``fd``."""
        with self._lock:
            self._credit[fd] = self._credit.get(fd, 0) + nbytes

    # ------------------------------------------------------------------ the guard's thread

    def _run(self, monitor: zmq.Socket[bytes]) -> None:
        conns: dict[int, _Connection] = {}
        sweep: list[int] = []  # the descriptors of this sweep over all connections, sampled from `cursor` on
        cursor = 0
        watching = True
        try:
            while not self._stopping.is_set():
                events = []
                if monitor.poll(int(self.interval_s * 1000)):
                    while monitor.poll(0):
                        events.append(recv_monitor_message(monitor))
                if not watching:
                    continue
                try:
                    for event in events:
                        self._event(event, conns)
                    now = time.monotonic()
                    if cursor >= len(sweep):
                        sweep, cursor = list(conns), 0
                    batch, cursor = sweep[cursor:cursor + SAMPLES_PER_PASS], cursor + SAMPLES_PER_PASS
                    for fd in batch:
                        conn = conns.get(fd)
                        if conn is not None and not self._check(fd, conn, now):
                            del conns[fd]
                            self.held.pop(fd, None)
                except Exception:  # never take the broker down; keep draining events so libzmq never blocks
                    log.exception("the connection guard failed; the broker runs on without it")
                    watching = False
        finally:
            monitor.close(linger=0)

    def _event(self, event: Mapping[str, Any], conns: dict[int, _Connection]) -> None:
        fd = int(event["value"])
        conns.pop(fd, None)
        # Credit is never reset here: events arrive late, and a reset could erase what a new connection on
        # this descriptor was already handed. What a closed one left is removed by the check in _check.
        if event["event"] != zmq.EVENT_ACCEPTED:
            return
        try:
            with _borrowed(fd) as sock:
                host, port = sock.getpeername()[:2]
        except (OSError, ValueError):  # gone, or not a TCP socket
            return
        conns[fd] = _Connection(time.monotonic(), f"{host}:{port}")

    def _check(self, fd: int, conn: _Connection, now: float) -> bool:
        """Sample one connection; cut it if it holds too much. False when it is no longer worth watching."""
        with self._lock:
            credit = self._credit.get(fd, 0)  # read before the kernel's count, so it never runs ahead of it
        try:
            with _borrowed(fd) as sock:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
        except (OSError, ValueError):
            return False
        if len(info) < _BYTES_RECEIVED + 8:
            if not self._warned:
                self._warned = True
                log.warning("this kernel does not report tcpi_bytes_received (Linux 4.1+): no per-connection "
                            "bound on partly received messages")
            return False
        if info[0] != _TCP_ESTABLISHED:
            return False
        received = struct.unpack_from("=Q", info, _BYTES_RECEIVED)[0]
        if credit > received:
            # What a closed connection on this descriptor number left (its credit, or messages of it read
            # late): a connection is never handed more than it received, so the excess is not this one's.
            with self._lock:
                self._credit[fd] = self._credit.get(fd, 0) - (credit - received)
            self.excess += credit - received
            credit = received
        allowance = _HANDSHAKE_ALLOWANCE + (now - conn.since) * self._ping_rate
        held = received - queued - credit
        self.peak = max(self.peak, held)
        self.held[fd] = held
        if held - allowance <= self.budget:
            return True
        log.warning("cut the connection from %s: libzmq held %.1f MiB of messages from it not yet handed to "
                    "the broker (budget %.1f MiB)", conn.peer, held / 2**20, self.budget / 2**20)
        self.cuts += 1
        try:
            with _borrowed(fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)  # libzmq sees the end of the stream and drops the connection
        except (OSError, ValueError):
            pass
        return False
