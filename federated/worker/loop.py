"""The worker's DEALER loop: one or more worker sessions sharing a process and a training thread.

An I/O driver only: every protocol decision is :class:`~federated.worker.session.WorkerSession`'s. Each
session is one worker identity with its own connection and data (``flworker`` runs one; ``fl simulate``
packs many virtual clients into a few processes). A connection is a DEALER socket of its own, or, with
``share_connection``, a tagged virtual connection on one socket the process's sessions share
(:mod:`federated.protocol.multiplex`): the broker still sees one peer per session, and a session that is
never selected costs its data and a few objects instead of libzmq's memory for a connection. An I/O
thread moves messages between the sockets and the sessions, sends HELLO and heartbeats, and reconnects
with exponential backoff and jitter when the broker falls silent. Training runs on the calling (main)
thread, so heartbeats keep flowing while a model trains; finished results go back to the I/O thread
through a queue and an inproc wake-up socket. MLX stays on the main thread because it aborts at
interpreter exit when another thread has used it (seen with random initialisation and compiled steps).
"""

from __future__ import annotations

import logging
import math
import queue
import random
import secrets
import selectors
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from federated.crypto.floor import SafetyFloor
from federated.keys import WorkerKeys
from federated.protocol import Heartbeat, Limits, ProtocolError, Task, decode_message
from federated.protocol.multiplex import tag_frame
from federated.transport import context_for
from federated.worker.connection import (
    CONNECT_SPACING_S,
    GRACE_BYTES_PER_S,
    TIMER_BATCH_S,
    WATCH_MAX_SESSIONS,
    Connection,
    Outcome,
    SharedLine,
    TimerHeap,
    connections_for,
    socket_fd,
)
from federated.worker.payload import SecureInput
from federated.worker.randomness import LocalRandomness
from federated.worker.session import (
    Announce,
    ClientData,
    EvaluateFunction,
    Finish,
    FitFunction,
    Send,
    Train,
    TrainJob,
    TrainResult,
    Vanish,
    Welcomed,
    WorkerSession,
    task_seed,
)
from federated.worker.simulation import DROPOUT_STAGES, DropoutPlan, SlowDevices, Stragglers
from federated.worker.sockets import Sockets

__all__ = ["DROPOUT_STAGES", "ClientData", "FitFunction", "Outcome", "WorkerLoop", "task_seed"]

log = logging.getLogger("federated.worker")



class WorkerLoop:
    """Runs worker sessions against ``server_address`` (``HOST:PORT``) until the broker says BYE.

    ``dropout_rate``/``dropout_stage``, ``straggler_rate`` and ``slowdown`` (worker id -> how many times
    slower its device computes) are for simulation only: see :mod:`federated.worker.simulation`.

    ``keys`` (worker id -> its enrolled key material) and ``broker_key`` (the broker's Z85 public key) turn
    on CurveZMQ: each session authenticates with its own key and pins the broker's, so it talks to that
    broker only, and signs secure-aggregation keys with its enrolled identity. ``floor`` and ``min_noise``
    are every session's own limits (:class:`~federated.worker.session.WorkerSession`); ``randomness``
    (worker id -> its source) defaults to the OS for each; ``ledger_dir`` keeps each session's round ledger
    on disk (``<dir>/<worker id>.rounds``) so a restarted worker still refuses replayed rounds.
    ``evaluate`` scores global models on each client's evaluation split when a TASK asks (federated
    evaluation; None: this process never evaluates). ``share_connection`` puts every session on one
    shared socket (not with ``keys``: a CURVE key is one worker's, and a connection has one); a shared
    socket has no socket monitor, so handshake failures and refused connections are not reported.
    Raises ValueError for ``share_connection`` with ``keys``, and as :func:`connections_for` does.
    """

    def __init__(
        self,
        clients: Sequence[ClientData],
        server_address: str,
        fit: FitFunction,
        *,
        limits: Limits | None = None,
        dropout_rate: float = 0.0,
        dropout_stage: str = "task",
        straggler_rate: float = 0.0,
        slowdown: Mapping[str, float] | None = None,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        keys: Mapping[str, WorkerKeys] | None = None,
        broker_key: bytes | None = None,
        floor: SafetyFloor | None = None,
        min_noise: float = 0.0,
        randomness: Mapping[str, LocalRandomness] | None = None,
        ledger_dir: str | None = None,
        evaluate: EvaluateFunction | None = None,
        share_connection: bool = False,
    ) -> None:
        if share_connection and keys is not None:
            raise ValueError("sessions with transport keys cannot share a connection: each key is one worker's")
        self.connections = connections_for(clients, keys, broker_key, floor=floor, min_noise=min_noise,
                                           randomness=randomness, ledger_dir=ledger_dir,
                                           dropout=DropoutPlan(dropout_rate, dropout_stage),
                                           stragglers=Stragglers(straggler_rate))
        self.broker_key = broker_key
        endpoint = server_address if "://" in server_address else f"tcp://{server_address}"
        self.fit = fit
        self.evaluate = evaluate
        self.limits = limits or Limits()
        self.slow = SlowDevices(dict(slowdown or {}))
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        # A process of thousands of virtual clients needs more sockets than libzmq's default context
        # allows (1,023) and more files than the usual soft limit: its own context, sized to fit.
        self._owns_context = context is None
        self.context = context or context_for(8 if share_connection else len(self.connections) + 8)
        self.sockets = Sockets(self.context, endpoint, self.limits, broker_key, share=share_connection,
                               sessions=len(self.connections), reconnect_max_s=reconnect_max_s,
                               monitor=len(self.connections) <= WATCH_MAX_SESSIONS and not share_connection)
        self._jobs: queue.Queue[tuple[Connection, TrainJob, float] | None] = queue.Queue()
        self._results: queue.Queue[tuple[Connection, TrainResult, float]] = queue.Queue()
        # Results of simulated slow devices, held until their due time (monotonic seconds).
        self._held: list[tuple[Connection, TrainResult, float]] = []
        self._stopping = False
        self._rng = random.Random(secrets.randbits(32))  # jitter only; not security relevant
        self.updates_sent = 0
        # The I/O thread's timers: (due, sequence, connection), at most one live entry per connection.
        self._timer_heap = TimerHeap()
        self._maybe_done = True  # a session may have finished since the last look

    @property
    def sessions(self) -> list[WorkerSession]:
        return [c.session for c in self.connections]

    def stop(self) -> None:
        """Ask ``run`` to return soon (safe from a signal handler)."""
        self._stopping = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> Outcome:
        """Serve until every session is done (BYE: ``Outcome.DONE``; refused or misconfigured: see
        :class:`Outcome`, the worst over the sessions) or ``stop()`` (``Outcome.STOPPED``).

        Trains on the calling thread; sockets live on an I/O thread started here.
        """
        wake_addr = f"inproc://worker-wake-{id(self)}"
        wake_tx: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        wake_tx.bind(wake_addr)
        codes: list[Outcome] = []
        io = threading.Thread(target=self._io_thread, args=(wake_addr, codes), name="worker-io", daemon=True)
        io.start()
        try:
            while True:
                try:
                    item = self._jobs.get(timeout=0.25)  # a timeout, so signal handlers get to run
                except queue.Empty:
                    if not io.is_alive():
                        break
                    continue
                if item is None:
                    break
                conn, job, queued_at = item
                started = time.perf_counter()
                result = conn.session.train(job, self.fit, started - queued_at, self.slow.factor(conn.wid),
                                            self.evaluate)
                log.debug("%s: round %d trained in %.1f ms after %.1f ms queued", conn.wid, job.task.round_id,
                          (time.perf_counter() - started) * 1e3, (started - queued_at) * 1e3)
                self._results.put((conn, result, time.monotonic() + result.hold_s))
                try:
                    wake_tx.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # wake-ups are already queued: the I/O thread takes every result on the next
        finally:
            self._stopping = True
            io.join(timeout=30)
            wake_tx.close(linger=0)
            if self._owns_context and not io.is_alive():
                self.context.term()
        return codes[0] if codes else Outcome.STOPPED

    def _io_thread(self, wake_addr: str, codes: list[Outcome]) -> None:
        wake_rx: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        wake_rx.connect(wake_addr)
        try:
            codes.append(self._serve(wake_rx))
        finally:
            for c in self.connections:
                self.sockets.close(c)
            self.sockets.close_line()
            wake_rx.close(linger=0)
            self._jobs.put(None)  # wake the training thread so run() returns

    def _serve(self, wake_rx: zmq.Socket[bytes]) -> Outcome:
        # How sockets are watched, and why they are looked at again: see federated.worker.sockets.
        selector = self.sockets.selector = selectors.DefaultSelector()
        selector.register(socket_fd(wake_rx), selectors.EVENT_READ, None)
        while wake_rx.poll(0):  # a look arms the notice of the next wake-up
            wake_rx.recv()
        start = time.monotonic()
        for i, c in enumerate(self.connections):
            # First connections spread out, so a process of thousands of virtual clients does not greet
            # the broker all in the same millisecond.
            if c.reconnect_at is not None:
                c.reconnect_at = start + i * CONNECT_SPACING_S
            self._timer_heap.arm(c)
        try:
            while not self._stopping:
                now = time.monotonic()
                # Only the connections whose timers are due: a pass over every session per wake-up made a
                # process of thousands of virtual clients spend its time in this loop.
                for c in self._timer_heap.pop_due(now):
                    self._timers(c, now)
                    self._timer_heap.arm(c)
                self._look_again()
                if self._maybe_done and all(c.session.done for c in self.connections):
                    return max(c.outcome for c in self.connections)
                self._maybe_done = False
                ready = selector.select(self._wait_ms(time.monotonic()) / 1000.0)
                woken = False
                for key, _ in ready:
                    if key.data is None:
                        woken = True
                        continue
                    sock, owner = key.data
                    if isinstance(owner, SharedLine):
                        self._drain_line()
                    elif sock is owner.sock:
                        self._drain(owner)
                    elif sock is owner.monitor:
                        self._connection_events(owner)
                if woken:
                    while wake_rx.poll(0):
                        wake_rx.recv()
                if woken or self._held:
                    self._deliver_results()
            return Outcome.STOPPED
        finally:
            selector.close()
            self.sockets.selector = None

    def _look_again(self) -> None:
        """Look at the sockets made or sent on since the last wait, and read what they have (see
        :meth:`_serve`)."""
        while self.sockets.look_at:
            c = self.sockets.look_at.pop()
            if isinstance(c, SharedLine):
                if c.sock is not None and int(c.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    self._drain_line()
                continue
            if c.monitor is not None and int(c.monitor.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self._connection_events(c)
            if c.sock is not None and int(c.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self._drain(c)

    def _wait_ms(self, now: float) -> int:
        """Until the first timer (plus :data:`TIMER_BATCH_S`, so timers a few milliseconds apart are
        served by one wake-up), a held result, or half a second."""
        times = [now + 0.5, *(h[2] for h in self._held)]
        first = self._timer_heap.first()
        if first is not None:
            times.append(first + TIMER_BATCH_S)
        return max(0, int((min(times) - now) * 1000) + 1)

    def _timers(self, c: Connection, now: float) -> None:
        if c.session.done:
            return
        if c.reconnect_at is not None:
            if now >= c.reconnect_at:
                self._connect(c, now)
            return
        if now - c.last_heard > c.silence_limit() and c.sock is not None and c.sock.poll(0):
            # Messages are waiting: the broker spoke, this thread was late to listen (it shares the GIL
            # with training, and with thousands of sessions). Read them before judging the silence.
            self._drain(c)
        if now - c.last_heard > c.silence_limit():
            log.warning("%s: broker silent for %.1f s; reconnecting", c.wid, now - c.last_heard)
            if not c.welcomed:
                c.unwelcomed += 1
            self._schedule_reconnect(c, now)
            return
        if now >= c.hello_due:
            self._send(c, c.session.hello().to_frames())
            c.hello_sent_at, c.hello_due = now, math.inf
        if now >= c.next_heartbeat:
            self._send(c, Heartbeat(c.wid).to_frames())
            c.next_heartbeat = now + c.interval

    # ------------------------------------------------------------------ connection

    def _connect(self, c: Connection, now: float) -> None:
        self.sockets.close(c, notify=True)
        self.sockets.open(c)
        c.reconnect_at = None
        c.welcomed = False
        c.last_heard = now
        c.next_heartbeat = now + c.interval
        self._send(c, c.session.connected().to_frames())
        c.hello_sent_at, c.hello_due = now, math.inf

    def _connection_events(self, c: Connection) -> None:
        """What the socket monitor saw (:meth:`Connection.on_monitor_event`); give up if it says so."""
        while c.monitor is not None and c.monitor.poll(0):
            verdict = c.on_monitor_event(recv_monitor_message(c.monitor)["event"], time.monotonic(),
                                         self.sockets.endpoint, pinned=self.broker_key is not None)
            if verdict is not None:
                self._give_up(c, *verdict)

    def _give_up(self, c: Connection, outcome: Outcome, reason: str) -> None:
        log.error("%s: %s; stopping", c.wid, reason)
        c.outcome = outcome
        c.session.done = True
        self._maybe_done = True
        self.sockets.close(c, notify=True)

    def _schedule_reconnect(self, c: Connection, now: float) -> None:
        """Close now; reconnect after an exponentially growing, jittered delay."""
        self.sockets.close(c, notify=True)
        c.backoff = min(self.reconnect_max_s, max(self.reconnect_min_s, c.backoff * 2))
        c.reconnect_at = now + c.backoff * (0.5 + self._rng.random())

    def _send(self, c: Connection, frames: Sequence[bytes | memoryview]) -> None:
        if c.sock is None:
            return
        if c.tag is not None:
            frames = [tag_frame(c.tag), *frames]
        try:
            c.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("%s: send queue full; message dropped", c.wid)
        self.sockets.look_at.add(c)

    # ------------------------------------------------------------------ inbound

    def _drain(self, c: Connection) -> None:
        if c.tag is not None:
            self._drain_line()
            return
        while c.sock is not None:
            try:
                frames = c.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._received(c, frames)

    def _drain_line(self) -> None:
        assert self.sockets.line is not None
        for c, frames in self.sockets.line.receive():
            self._received(c, frames)

    def _received(self, c: Connection, frames: Sequence[zmq.Frame]) -> None:
        c.last_heard = time.monotonic()
        try:
            msg = decode_message(frames, self.limits)
        except ProtocolError as exc:
            log.warning("%s: ignoring a malformed message from the broker: %s", c.wid, exc)
            return
        if isinstance(msg, Task):
            c.grace = sum(len(f) for f in frames) / GRACE_BYTES_PER_S
        self._act(c, c.session.on_message(msg))

    def _act(self, c: Connection, actions: Sequence[Any]) -> None:
        """Carry out what the session decided, then queue the connection's timers if they moved earlier
        (a shorter timeout, an announcement, a reconnection)."""
        self._carry_out(c, actions)
        self._timer_heap.arm(c)

    def _carry_out(self, c: Connection, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(c, action.frames)
            elif isinstance(action, Train):
                self._jobs.put((c, action.job, time.perf_counter()))
            elif isinstance(action, Welcomed):
                c.backoff = 0.0
                c.welcomed, c.unwelcomed = True, 0
                c.interval, c.timeout = action.heartbeat_interval_s, action.heartbeat_timeout_s
            elif isinstance(action, Announce):
                # Once per heartbeat interval (every queued heartbeat it refused brings one such ERROR).
                c.hello_due = min(c.hello_due, c.hello_sent_at + c.interval)
            elif isinstance(action, Vanish):
                # Close without a word and come back as a new connection, as a device off the network.
                self.sockets.close(c, notify=True)
                c.reconnect_at = time.monotonic()
            elif isinstance(action, Finish):
                self._maybe_done = True
                if action.refused:
                    log.error("%s: %s; stopping", c.wid, action.reason)
                    c.outcome = Outcome.REFUSED
                self.sockets.close(c)
                if not action.refused:
                    self._run_over(action.reason)

    def _run_over(self, reason: str) -> None:
        """The broker said BYE: it does so only when its run is over, to every worker it knows. Sessions of
        this process it does not know (still connecting, or reconnecting: a short run can end before the
        last of thousands of virtual clients joins) would otherwise wait for a broker that is gone."""
        left = [c for c in self.connections if not c.session.done]
        if left:
            log.info("the broker's run is over (%s): this process's %d other session(s) stop with it", reason,
                     len(left))
        for c in left:
            c.session.done = True
            self.sockets.close(c)

    # ------------------------------------------------------------------ results of the training thread

    def _deliver_results(self) -> None:
        now = time.monotonic()
        while True:
            try:
                c, result, due = self._results.get_nowait()
            except queue.Empty:
                break
            if due > now:
                self._held.append((c, result, due))
                continue
            self._deliver(c, result)
        ready = [h for h in self._held if h[2] <= now]
        self._held = [h for h in self._held if h[2] > now]
        for c, result, _ in ready:
            self._deliver(c, result)

    def _deliver(self, c: Connection, result: TrainResult) -> None:
        if c.sock is None:
            return  # the session is reconnecting: the broker already counted it as dropped
        actions = c.session.on_trained(result)
        self._act(c, actions)
        if actions and not isinstance(result.payload, SecureInput):
            self.updates_sent += 1
