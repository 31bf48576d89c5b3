"""One worker session's connection as the worker loop keeps it: its socket, liveness timers and reconnect
state (:class:`Connection`), the socket that sessions share when they share one (:class:`SharedLine`),
the I/O thread's timer queue (:class:`TimerHeap`), and how the loop ends (:class:`Outcome`).
:mod:`federated.worker.sockets` opens, watches and closes the sockets; the only I/O here is a shared
line's reading and writing of its sessions' tags on the socket it was given.
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import zmq

from federated.crypto.floor import SafetyFloor
from federated.keys import WorkerKeys
from federated.protocol.multiplex import new_tag, parse_tag_frame, tag_frame
from federated.worker.ledger import RoundLedger
from federated.worker.randomness import LocalRandomness
from federated.worker.session import ClientData, WorkerSession
from federated.worker.simulation import DropoutPlan, Stragglers

log = logging.getLogger("federated.worker")

__all__ = [
    "CONNECT_SPACING_S",
    "FIRST_CONTACT_S",
    "GRACE_BYTES_PER_S",
    "HANDSHAKE_FAILURES_MAX",
    "TIMER_BATCH_S",
    "UNREACHABLE_LOG_S",
    "WATCH_MAX_SESSIONS",
    "Connection",
    "Outcome",
    "SharedLine",
    "TimerHeap",
    "connections_for",
    "socket_fd",
]

#: How fast the broker is assumed to digest a model (bytes per second) when a worker decides whether its
#: silence after a TASK is a dead broker or a busy one: 10 MB/s, i.e. 20 s of grace for a 200 MB model.
GRACE_BYTES_PER_S = 10e6

#: Connections watched with a ZeroMQ socket monitor (handshake failures, refused connections): a process
#: with more sessions than this (a simulation's virtual clients) does not pay a second socket for each.
WATCH_MAX_SESSIONS = 16
#: Consecutive CURVE handshakes that fail without detail (the broker's key is not the one pinned) before
#: a session gives up: one could be a broker restarting; three in a row, a wrong --broker-key.
HANDSHAKE_FAILURES_MAX = 3
#: Seconds between repeated "cannot reach the broker" warnings of one session.
UNREACHABLE_LOG_S = 30.0
#: Seconds a new connection waits for the broker's WELCOME before it is given up (at least; see
#: :meth:`Connection.silence_limit`).
FIRST_CONTACT_S = 30.0
#: Seconds between the first connections of a process's sessions (1,000 a second).
CONNECT_SPACING_S = 0.001
#: Timers due within this many seconds of the first are served by one wake-up of the I/O thread, so a
#: process of thousands of virtual clients does not wake for each heartbeat (they fall into batches).
TIMER_BATCH_S = 0.02

def socket_fd(sock: zmq.Socket[bytes]) -> int:
    """The descriptor that becomes readable when ``sock`` may have something new (ZMQ_FD)."""
    return int(sock.getsockopt(zmq.FD))


class Outcome(enum.IntEnum):
    """How :meth:`WorkerLoop.run` ended (the values are ``flworker``'s exit statuses)."""

    DONE = 0  # every session got BYE: training finished
    STOPPED = 1  # stop() was called (a signal)
    BAD_SETTINGS = 2  # the broker's key is not the one pinned: CURVE handshakes fail
    REFUSED = 3  # the broker refused this worker: its key is not (or no longer) enrolled


class Connection:
    """One session's socket and timers."""

    def __init__(self, session: WorkerSession, keys: WorkerKeys | None) -> None:
        self.session = session
        self.keys = keys
        self.sock: zmq.Socket[bytes] | None = None
        self.last_heard = 0.0
        self.next_heartbeat = 0.0
        self.reconnect_at: float | None = 0.0
        self.hello_sent_at = -math.inf
        self.hello_due = math.inf  # when to announce again after the broker said it does not know us
        # Extra silence tolerated (seconds) while the broker digests model-sized messages: its loop does
        # not send heartbeats while it aggregates, evaluates and checkpoints a large model.
        self.grace = 0.0
        self.backoff = 0.0
        self.interval = 1.0
        self.timeout = 5.0
        self.monitor: zmq.Socket[bytes] | None = None
        self.handshake_failures = 0
        self.last_unreachable_log = -math.inf
        self.outcome = Outcome.DONE  # once the session is done: why
        self.timer_at = math.inf  # the due time of this connection's entry in the loop's timer heap
        self.welcomed = False  # the broker answered this connection's HELLO
        self.unwelcomed = 0  # connections in a row that the broker never welcomed
        #: On a shared line: this connection's tag (None while closed, or with a socket of its own).
        self.tag: bytes | None = None

    def silence_limit(self) -> float:
        """Seconds of silence from the broker after which this connection is given up.

        Before a WELCOME it is at least :data:`FIRST_CONTACT_S`, doubling with each connection in a row
        the broker left unanswered (up to 16 times): a broker that thousands of clients greet at once
        answers late, and a new connection would only queue one more HELLO behind the others. Waiting
        loses nothing: a broker that restarted and lost our HELLO answers our heartbeats with
        ``unknown_worker``, and we announce again on the same connection.
        """
        if self.welcomed:
            return self.timeout + self.grace
        return max(self.timeout, FIRST_CONTACT_S) * float(2 ** min(self.unwelcomed, 4)) + self.grace

    @property
    def wid(self) -> str:
        return self.session.worker_id

    def on_monitor_event(self, event: int, now: float, endpoint: str, *, pinned: bool) -> tuple[Outcome, str] | None:
        """Read one socket-monitor ``event`` (at monotonic ``now``): a refused connection is logged (every
        :data:`UNREACHABLE_LOG_S`), a handshake that succeeded clears the failures. Returns how and why
        to give up, or None: the broker refused this worker's key (``REFUSED``), or
        :data:`HANDSHAKE_FAILURES_MAX` handshakes in a row failed without detail (``BAD_SETTINGS``: a
        ``pinned`` broker key that is not the broker's, or a broker that expects CurveZMQ)."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if self.handshake_failures or self.last_unreachable_log > -math.inf:
                log.info("%s: connected to the broker at %s", self.wid, endpoint)
            self.handshake_failures, self.last_unreachable_log = 0, -math.inf
        elif event == zmq.EVENT_CONNECT_RETRIED:
            if now - self.last_unreachable_log >= UNREACHABLE_LOG_S:
                self.last_unreachable_log = now
                log.warning("%s: cannot reach the broker at %s (connection refused or no route); retrying",
                            self.wid, endpoint)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return Outcome.REFUSED, "the broker refused this worker's key: it is not enrolled there, or it was revoked"
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self.handshake_failures += 1
            if self.handshake_failures >= HANDSHAKE_FAILURES_MAX:
                why = ("--broker-key is not this broker's key" if pinned
                       else "the broker expects CurveZMQ (give --keys and --broker-key)")
                return Outcome.BAD_SETTINGS, (f"{self.handshake_failures} handshakes with the broker at {endpoint} "
                                              f"failed: {why}")
        return None

    def due(self) -> float:
        """When this connection's timers next have something to do (infinity once its session is done)."""
        if self.session.done:
            return math.inf
        if self.reconnect_at is not None:
            return self.reconnect_at
        due = min(self.next_heartbeat, self.hello_due)
        return min(due, self.last_heard + self.silence_limit()) if self.sock is not None else due


class SharedLine:
    """One DEALER socket whose connection carries many sessions' virtual connections, each under its own
    tag (:mod:`federated.protocol.multiplex`): a process of thousands of virtual clients pays libzmq's
    per-connection memory once, not once per client. A session's connection is open while its tag is
    in ``by_tag``; ``sock`` is the shared socket (None until the first session connects; the worker
    loop opens and closes it)."""

    def __init__(self) -> None:
        self.sock: zmq.Socket[bytes] | None = None
        self.by_tag: dict[bytes, Connection] = {}

    def attach(self, c: Connection) -> None:
        """Open a new virtual connection for ``c``: a new tag, so the broker sees a new peer."""
        assert self.sock is not None
        c.tag = new_tag()
        self.by_tag[c.tag] = c
        c.sock = self.sock

    def detach(self, c: Connection, *, notify: bool) -> bool:
        """Close ``c``'s virtual connection; with ``notify``, tell the broker, as a socket that closes
        would (its next send there fails). Returns whether anything was sent on the socket."""
        assert c.tag is not None
        self.by_tag.pop(c.tag, None)
        sent = False
        if notify and self.sock is not None:
            try:
                self.sock.send(tag_frame(c.tag, closed=True), zmq.NOBLOCK)
                sent = True
            except zmq.Again:
                pass  # the broker still finds out: this session's heartbeats stop
        c.tag, c.sock = None, None
        return sent

    def receive(self) -> Iterator[tuple[Connection, list[zmq.Frame]]]:
        """Read the socket until it has nothing left: each message with the session its tag names. A tag
        no session holds any more (it reconnected, or the broker answers a closed one) is dropped."""
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            tagged = parse_tag_frame(frames[0].bytes) if frames else None
            if tagged is None or tagged[1]:
                log.warning("ignoring a message from the broker without a session's tag on a shared connection")
                continue
            c = self.by_tag.get(tagged[0])
            if c is not None:
                yield c, frames[1:]


def connections_for(clients: Sequence[ClientData], keys: Mapping[str, WorkerKeys] | None, broker_key: bytes | None,
                    *, floor: SafetyFloor | None, min_noise: float, randomness: Mapping[str, LocalRandomness] | None,
                    ledger_dir: str | None, dropout: DropoutPlan, stragglers: Stragglers) -> list[Connection]:
    """One session and connection per client, each with its own keys (CurveZMQ: ``keys`` by worker id,
    with the ``broker_key`` to pin), round ledger (``<ledger_dir>/<worker id>.rounds``, or in memory) and
    local randomness (default the OS). Raises ValueError for no clients, keys without a broker key (or
    the reverse), a client without keys, or keys of another worker."""
    if not clients:
        raise ValueError("a worker needs at least one client")
    if (keys is None) != (broker_key is None):
        raise ValueError("transport security needs both the workers' keys and the broker's public key")
    keys = dict(keys or {})
    if broker_key is not None:
        missing = sorted(c.worker_id for c in clients if c.worker_id not in keys)
        if missing:
            raise ValueError(f"no keys for client(s) {', '.join(missing)}")
        wrong = sorted(w for w, k in keys.items() if k.worker_id != w)
        if wrong:
            raise ValueError(f"keys of another worker given for {', '.join(wrong)}")
    randomness = dict(randomness or {})
    out = []
    for c in clients:
        k = keys.get(c.worker_id)
        ledger = RoundLedger(f"{ledger_dir}/{c.worker_id}.rounds" if ledger_dir else None)
        session = WorkerSession(c, identity=k.identity if k is not None else None, floor=floor, min_noise=min_noise,
                                randomness=randomness.get(c.worker_id), ledger=ledger, dropout=dropout,
                                stragglers=stragglers)
        out.append(Connection(session, k))
    return out


class TimerHeap:
    """The I/O thread's timers: at most one live entry per connection, ordered by due time (monotonic
    seconds), so a wake-up serves only the connections that are due."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._seq = 0

    def arm(self, c: Connection) -> None:
        """Queue ``c``'s next timer if it is earlier than the one queued (a later one needs no entry: the
        queued one comes up first, finds nothing to do, and queues the later one then)."""
        due = c.due()
        if due < c.timer_at:
            c.timer_at = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, c))

    def pop_due(self, now: float) -> list[Connection]:
        """The connections whose timers are due at ``now`` (their entries removed; re-arm them after)."""
        due: list[Connection] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, c = heapq.heappop(self._heap)
            if at != c.timer_at:
                continue  # superseded by an earlier entry
            c.timer_at = math.inf
            due.append(c)
        return due

    def first(self) -> float | None:
        """When the earliest queued timer is due (None: nothing queued)."""
        return self._heap[0][0] if self._heap else None
