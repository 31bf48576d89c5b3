"""The worker's DEALER loop: one or more client sessions sharing a process and a training thread.

Each session is one worker identity with its own DEALER socket and data (``flworker`` runs one;
``fl simulate`` packs many virtual clients into a few processes). The main thread only moves messages
and keeps time on an I/O thread: it sends HELLO, heartbeats and UPDATEs, and reconnects with exponential
backoff and jitter when the broker falls silent. Training runs on the calling (main) thread, so
heartbeats keep flowing while a model trains; finished updates go back to the I/O thread through a
queue and an inproc wake-up socket. MLX stays on the main thread because it aborts at interpreter exit
when another thread has used it (seen with random initialisation and compiled steps).
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from federated.aggregation.vectors import flatten
from federated.compression import make_codec, secure_plan
from federated.compression.sparsify import shared_indices
from federated.crypto.errors import CryptoError
from federated.crypto.keyfiles import WorkerKeys
from federated.crypto.params import SecAggParams
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import (
    Bye,
    ConsistencyCheck,
    Error,
    Heartbeat,
    Hello,
    Limits,
    ProtocolError,
    Roster,
    Shares,
    Task,
    UnmaskRequest,
    Update,
    Welcome,
    decode_message,
)
from federated.transport import configure_socket, curve_client
from federated.worker.secure import SecureRound, encode_input

__all__ = ["DROPOUT_STAGES", "ClientData", "FitFunction", "WorkerLoop", "task_seed"]

#: Where a simulated dropout can happen: on receiving the TASK, or a secure round's later stages.
DROPOUT_STAGES = ("task", "roster", "shares", "unmask")

log = logging.getLogger("federated.worker")

#: How fast the broker is assumed to digest a model (bytes per second) when a worker decides whether its
#: silence after a TASK is a dead broker or a busy one: 10 MB/s, i.e. 20 s of grace for a 200 MB model.
GRACE_BYTES_PER_S = 10e6

_SECAGG_STAGES = (Roster, Shares, ConsistencyCheck, UnmaskRequest)

#: ``fit(global_weights, x, y, task_config, seed) -> (update, metrics)``; metrics include loss, accuracy,
#: train_s. Provided by :mod:`federated.worker.runner` over the MLX trainer.
FitFunction = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any], int],
                       tuple[dict[str, np.ndarray], dict[str, float]]]


@dataclass(frozen=True)
class ClientData:
    """One worker identity and its private training data."""

    worker_id: str
    x: np.ndarray
    y: np.ndarray


def task_seed(seed: int, round_id: int, worker_id: str) -> int:
    """A per-(run, round, worker) seed for local shuffling, stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}/{round_id}/{worker_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _Session:
    """Connection state of one client identity."""

    def __init__(self, data: ClientData, keys: WorkerKeys | None = None) -> None:
        self.data = data
        self.keys = keys
        self.sock: zmq.Socket[bytes] | None = None
        self.generation = 0
        self.welcomed = False
        self.done = False
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
        # Signs this client's secure-aggregation keys. With enrolled keys, it is the enrolled identity the
        # broker verifies against; without, a fresh key the broker pins at HELLO.
        if keys is not None:
            self.identity, self.identity_hex = keys.identity, keys.identity_public.hex()
        else:
            self.identity, public = generate_identity()
            self.identity_hex = public.hex()
        self.secure: SecureRound | None = None
        self.hold_s = 0.0  # simulated extra compute time of the current result (heterogeneity)
        self.codecs: dict[str, Any] = {}  # compression spec -> codec (with its error-feedback state)

    def hello(self) -> Hello:
        return Hello(self.data.worker_id, len(self.data.y), ("train", "secagg"), self.identity_hex)

    def codec(self, spec: str) -> Any:
        """This client's codec for ``spec``, made once: error feedback's residual lives in it. Its
        quantizer's rounding is salted with the client id. Raises ``ValueError`` for a bad spec."""
        codec = self.codecs.get(spec)
        if codec is None:
            codec = self.codecs[spec] = make_codec(spec, salt=task_seed(0, 0, self.data.worker_id))
        return codec


@dataclass(frozen=True)
class _SecureInput:
    """A trained and fixed-point encoded input, waiting for the masking stage."""

    round_id: int
    encoded: np.ndarray
    local_s: float


class WorkerLoop:
    """Runs client sessions against ``server_address`` (``HOST:PORT``) until the broker says BYE.

    ``dropout_rate`` is for simulation only: a session whose position in a round's cohort is below
    ``round(dropout_rate * cohort_size)`` vanishes on receiving the message of ``dropout_stage`` (the
    TASK, or in a secure round the ROSTER, SHARES or UNMASK_REQUEST): it closes its socket without a
    word and comes back as a new connection, as a device that lost its network would. ``slowdown`` (also
    simulation only) maps a worker id to how many times slower its device computes.

    ``keys`` (worker id -> its enrolled key material) and ``broker_key`` (the broker's Z85 public key) turn
    on CurveZMQ: each session authenticates with its own key and pins the broker's, so it talks to that
    broker only, and signs secure-aggregation keys with its enrolled identity.
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
        slowdown: Mapping[str, float] | None = None,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        keys: Mapping[str, WorkerKeys] | None = None,
        broker_key: bytes | None = None,
    ) -> None:
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
        self.broker_key = broker_key
        self.sessions = [_Session(c, keys.get(c.worker_id)) for c in clients]
        self.endpoint = server_address if "://" in server_address else f"tcp://{server_address}"
        self.fit = fit
        self.limits = limits or Limits()
        if dropout_stage not in DROPOUT_STAGES:
            raise ValueError(f"dropout_stage must be one of {', '.join(DROPOUT_STAGES)}, got {dropout_stage!r}")
        self.dropout_rate = dropout_rate
        self.dropout_stage = dropout_stage
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.context = context or zmq.Context.instance()
        self._jobs: queue.Queue[tuple[_Session, int, Task, float] | None] = queue.Queue()
        self._results: queue.Queue[tuple[_Session, int, Sequence[bytes | memoryview] | _SecureInput, float]] = \
            queue.Queue()
        # Results of simulated slow devices, held until their due time (monotonic seconds).
        self._held: list[tuple[_Session, int, Sequence[bytes | memoryview] | _SecureInput, float]] = []
        self.slowdown = dict(slowdown or {})
        self._stopping = False
        self._rng = random.Random(secrets.randbits(32))  # jitter only; not security relevant
        self.updates_sent = 0

    def stop(self) -> None:
        """Ask ``run`` to return soon (safe from a signal handler)."""
        self._stopping = True

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Serve until every session got BYE (returns 0) or ``stop()`` (returns 1).

        Trains on the calling thread; sockets live on an I/O thread started here.
        """
        wake_addr = f"inproc://worker-wake-{id(self)}"
        wake_tx: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        wake_tx.bind(wake_addr)
        codes: list[int] = []
        io = threading.Thread(target=self._io_thread, args=(wake_addr, codes), name="worker-io", daemon=True)
        io.start()
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=0.25)  # a timeout, so signal handlers get to run
                except queue.Empty:
                    if not io.is_alive():
                        break
                    continue
                if job is None:
                    break
                s, generation, task, queued_at = job
                started = time.perf_counter()
                frames = self._train_one(s, task, started - queued_at)
                log.debug("%s: round %d trained in %.1f ms after %.1f ms queued", s.data.worker_id, task.round_id,
                          (time.perf_counter() - started) * 1e3, (started - queued_at) * 1e3)
                self._results.put((s, generation, frames, time.monotonic() + s.hold_s))
                s.hold_s = 0.0
                wake_tx.send(b"", zmq.NOBLOCK)
        finally:
            self._stopping = True
            io.join(timeout=30)
            wake_tx.close(linger=0)
        return codes[0] if codes else 1

    def _io_thread(self, wake_addr: str, codes: list[int]) -> None:
        wake_rx: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        wake_rx.connect(wake_addr)
        try:
            codes.append(self._serve(wake_rx))
        finally:
            for s in self.sessions:
                self._close(s)
            wake_rx.close(linger=0)
            self._jobs.put(None)  # wake the training thread so run() returns

    def _serve(self, wake_rx: zmq.Socket[bytes]) -> int:
        polled: tuple[zmq.Socket[bytes] | None, ...] = ()
        poller = zmq.Poller()
        by_sock: dict[zmq.Socket[bytes], _Session] = {}
        while not self._stopping:
            now = time.monotonic()
            for s in self.sessions:
                self._timers(s, now)
            if all(s.done for s in self.sessions):
                return 0
            sockets = tuple(s.sock for s in self.sessions)
            if sockets != polled:
                # Rebuilt only when a session (re)connects: with many virtual clients per process, a
                # fresh poller per iteration costs more than the messages it waits for.
                polled, poller, by_sock = sockets, zmq.Poller(), {}
                poller.register(wake_rx, zmq.POLLIN)
                for s in self.sessions:
                    if s.sock is not None:
                        poller.register(s.sock, zmq.POLLIN)
                        by_sock[s.sock] = s
            events = dict(poller.poll(self._wait_ms(time.monotonic())))
            if wake_rx in events:
                while wake_rx.poll(0):
                    wake_rx.recv()
            if wake_rx in events or self._held:
                self._send_results()
            for sock, s in by_sock.items():
                if sock in events:
                    self._drain(s)
        return 1

    def _wait_ms(self, now: float) -> int:
        times = [now + 0.5, *(h[3] for h in self._held)]
        for s in self.sessions:
            if s.done:
                continue
            times.append(s.reconnect_at if s.reconnect_at is not None else min(s.next_heartbeat, s.hello_due))
            if s.sock is not None:
                times.append(s.last_heard + s.timeout + s.grace)
        return max(0, int((min(times) - now) * 1000) + 1)

    def _timers(self, s: _Session, now: float) -> None:
        if s.done:
            return
        if s.reconnect_at is not None:
            if now >= s.reconnect_at:
                self._connect(s, now)
            return
        if now - s.last_heard > s.timeout + s.grace:
            log.warning("%s: broker silent for %.1f s; reconnecting", s.data.worker_id, now - s.last_heard)
            self._schedule_reconnect(s, now)
            return
        if now >= s.hello_due:
            self._send(s, s.hello().to_frames())
            s.hello_sent_at, s.hello_due = now, math.inf
        if now >= s.next_heartbeat:
            self._send(s, Heartbeat(s.data.worker_id).to_frames())
            s.next_heartbeat = now + s.interval

    # ------------------------------------------------------------------ connection

    def _connect(self, s: _Session, now: float) -> None:
        self._close(s)
        sock: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        configure_socket(sock, self.limits, s.interval, s.timeout)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_max_s * 1000))
        if s.keys is not None and self.broker_key is not None:
            curve_client(sock, s.keys.curve_public, s.keys.curve_secret, self.broker_key)
        sock.connect(self.endpoint)
        s.sock, s.generation, s.welcomed = sock, s.generation + 1, False
        s.reconnect_at = None
        s.last_heard = now
        s.next_heartbeat = now + s.interval
        self._send(s, s.hello().to_frames())
        s.hello_sent_at, s.hello_due = now, math.inf

    def _close(self, s: _Session) -> None:
        if s.sock is not None:
            s.sock.close(linger=0)
            s.sock = None

    def _schedule_reconnect(self, s: _Session, now: float) -> None:
        """Close now; reconnect after an exponentially growing, jittered delay."""
        self._close(s)
        s.backoff = min(self.reconnect_max_s, max(self.reconnect_min_s, s.backoff * 2))
        s.reconnect_at = now + s.backoff * (0.5 + self._rng.random())

    def _send(self, s: _Session, frames: Sequence[bytes | memoryview]) -> None:
        if s.sock is None:
            return
        try:
            s.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("%s: send queue full; message dropped", s.data.worker_id)

    # ------------------------------------------------------------------ inbound

    def _drain(self, s: _Session) -> None:
        while s.sock is not None:
            try:
                frames = s.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            s.last_heard = time.monotonic()
            try:
                msg = decode_message(frames, self.limits)
            except ProtocolError as exc:
                log.warning("%s: ignoring a malformed message from the broker: %s", s.data.worker_id, exc)
                continue
            if isinstance(msg, Task):
                s.grace = sum(len(f) for f in frames) / GRACE_BYTES_PER_S
            self._on_message(s, msg)

    def _on_message(self, s: _Session, msg: Any) -> None:
        wid = s.data.worker_id
        if isinstance(msg, Welcome):
            s.welcomed, s.backoff = True, 0.0
            s.interval, s.timeout = msg.heartbeat_interval_s, msg.heartbeat_timeout_s
        elif isinstance(msg, Task):
            s.secure = None
            if self._vanish(s, "task", msg.cohort_index, msg.cohort_size, msg.round_id):
                return
            if "secagg" in msg.config:
                try:
                    params = SecAggParams.from_dict(msg.config["secagg"])
                except ValueError as exc:
                    self._send(s, Error("bad_task", str(exc), msg.round_id).to_frames())
                    return
                machine = SecAggWorker(wid, s.identity, msg.round_id, params)
                s.secure = SecureRound(machine, s.generation, msg.cohort_index, msg.cohort_size)
                self._send(s, machine.advertise().to_frames())
            self._jobs.put((s, s.generation, msg, time.perf_counter()))
        elif isinstance(msg, _SECAGG_STAGES):
            self._on_secagg(s, msg)
        elif isinstance(msg, Bye):
            log.info("%s: broker said goodbye: %s", wid, msg.reason)
            s.done = True
            self._close(s)
        elif isinstance(msg, Error):
            if msg.code == "unknown_worker":
                # The broker forgot us (it restarted, or expired us): announce again on this connection,
                # once per heartbeat interval (every queued heartbeat it refused brings one such ERROR).
                s.hello_due = min(s.hello_due, s.hello_sent_at + s.interval)
            else:
                log.warning("%s: broker refused a message: %s: %s", wid, msg.code, msg.message)
        elif not isinstance(msg, Heartbeat):
            log.warning("%s: unexpected %s from the broker", wid, type(msg).__name__)

    def _vanish(self, s: _Session, stage: str, index: int, size: int, round_id: int) -> bool:
        """Simulated dropout: vanish (close without a word, come back as a new connection) if this is the
        configured stage and our cohort position is below the cut."""
        if stage != self.dropout_stage or index >= round(self.dropout_rate * size):
            return False
        log.info("%s: simulated dropout at %s in round %d", s.data.worker_id, stage, round_id)
        self._close(s)
        s.secure = None
        s.reconnect_at = time.monotonic()
        return True

    def _on_secagg(self, s: _Session, msg: Any) -> None:
        sec = s.secure
        if sec is None or msg.round_id != sec.machine.round_id:
            log.info("%s: ignoring %s for a round this client is not in", s.data.worker_id, type(msg).__name__)
            return
        stage = {Roster: "roster", Shares: "shares", ConsistencyCheck: "consistency", UnmaskRequest: "unmask"}[type(msg)]
        if self._vanish(s, stage, sec.cohort_index, sec.cohort_size, msg.round_id):
            return
        log.debug("%s: %s for round %d", s.data.worker_id, type(msg).__name__, msg.round_id)
        try:
            if isinstance(msg, Roster):
                self._send(s, sec.machine.on_roster(msg).to_frames())
            elif isinstance(msg, Shares):
                sec.machine.on_shares(msg)
                self._send_masked(s)
            elif isinstance(msg, ConsistencyCheck):
                self._send(s, sec.machine.on_consistency(msg).to_frames())
            else:
                self._send(s, sec.machine.on_unmask(msg).to_frames())
                s.secure = None
        except (CryptoError, ValueError) as exc:
            # (ValueError: a decrypted share that is not a field element.)
            # Refuse, reveal nothing, and leave the round: the broker will count us as dropped.
            log.error("%s: refusing secure-aggregation step in round %d: %s", s.data.worker_id, msg.round_id, exc)
            self._send(s, Error("secagg_refused", str(exc), msg.round_id).to_frames())
            s.secure = None

    def _send_masked(self, s: _Session) -> None:
        """Send our masked input once both the shares and the trained input are there."""
        sec = s.secure
        if sec is None or sec.encoded is None or sec.sent_input or sec.machine.stage != "masked_input":
            return
        sec.sent_input = True
        started = time.perf_counter()
        # The encoding is ours alone and never used again: mask it where it lies.
        encoded, sec.encoded = sec.encoded, None
        self._send(s, sec.machine.masked_input(encoded, sec.local_s, in_place=True).to_frames())
        log.debug("%s: masked input sent (%.1f ms)", s.data.worker_id, (time.perf_counter() - started) * 1e3)

    # ------------------------------------------------------------------ training thread

    def _train_one(self, s: _Session, task: Task, wait_s: float) -> Sequence[bytes | memoryview] | _SecureInput:
        """Train one task. ``wait_s`` is how long it queued behind other clients of this process for
        the shared trainer: reported so the broker can tell simulation queueing from its own overhead."""
        wid = s.data.worker_id
        try:
            seed = task_seed(int(task.config.get("seed", 0)), task.round_id, wid)
            update, metrics = self.fit(dict(task.weights), s.data.x, s.data.y, task.config, seed)
        except (ValueError, TypeError) as exc:
            # A bad TASK (unknown option, wrong model) is the broker's problem: tell it, keep serving.
            log.error("%s: cannot train round %d: %s", wid, task.round_id, exc)
            return Error("bad_task", str(exc), task.round_id).to_frames()
        except Exception as exc:
            log.exception("%s: training failed in round %d", wid, task.round_id)
            return Error("train_failed", f"{type(exc).__name__}: {exc}", task.round_id).to_frames()
        metrics = {**metrics, "wait_s": wait_s}
        factor = self.slowdown.get(wid, 1.0)
        if factor > 1.0:
            # A simulated slow device: its compute takes ``factor`` times as long, so its answer leaves
            # that much later (the I/O thread holds it) and it reports the longer compute time.
            s.hold_s = (factor - 1.0) * metrics.get("train_s", 0.0)
            metrics["train_s"] = metrics.get("train_s", 0.0) * factor
        if "secagg" in task.config:
            # Encode here, on the training thread; masking waits for the shares on the I/O thread.
            try:
                params = SecAggParams.from_dict(task.config["secagg"])
                indices = None
                # Under secure aggregation a codec only picks the shared coordinates (and, through the
                # TASK's ring_bits, the 16-bit sums that quantize): see federated.compression.secure.
                spec = str(task.config.get("compression", "none"))
                plan = secure_plan(spec)
                to_encode: Any = update
                if plan.error_feedback:
                    _, to_encode = s.codec(spec).select(flatten(update, np.float32),
                                                        round_seed=int(task.config["compression_seed"]))
                elif plan.fraction is not None:
                    size = sum(int(v.size) for v in update.values())
                    indices = shared_indices(size, plan.fraction, int(task.config["compression_seed"]))
                privacy = task.config.get("privacy") or {}
                mu = privacy.get("skellam_mu") if isinstance(privacy, dict) else None
                if mu is not None and (isinstance(mu, bool) or not isinstance(mu, (int, float))):
                    raise ValueError(f"privacy.skellam_mu must be a number, got {mu!r}")
                encoded = encode_input(to_encode, metrics, len(s.data.y), params, indices,
                                       skellam_mu=None if mu is None else float(mu))
            except (ValueError, KeyError) as exc:
                return Error("bad_task", str(exc), task.round_id).to_frames()
            return _SecureInput(task.round_id, encoded, metrics.get("train_s", 0.0) + wait_s)
        spec = task.config.get("compression", "none")
        if spec != "none":
            try:
                packed = s.codec(str(spec)).encode(flatten(update, np.float32),
                                                   round_seed=int(task.config["compression_seed"]))
            except (ValueError, TypeError, KeyError) as exc:
                return Error("bad_task", f"compression: {exc}", task.round_id).to_frames()
            return Update(wid, task.round_id, task.stage, len(s.data.y), metrics, packed.tensors,
                          {"meta": packed.meta}).to_frames()
        return Update(wid, task.round_id, task.stage, len(s.data.y), metrics, update).to_frames()

    def _send_results(self) -> None:
        now = time.monotonic()
        while True:
            try:
                s, generation, frames, due = self._results.get_nowait()
            except queue.Empty:
                break
            if due > now:
                self._held.append((s, generation, frames, due))
                continue
            self._deliver(s, generation, frames)
        ready = [h for h in self._held if h[3] <= now]
        self._held = [h for h in self._held if h[3] > now]
        for s, generation, frames, _ in ready:
            self._deliver(s, generation, frames)

    def _deliver(self, s: _Session, generation: int, frames: Sequence[bytes | memoryview] | _SecureInput) -> None:
        if generation != s.generation or s.done or s.sock is None:
            return  # the session reconnected since: the broker already counted it as dropped
        if isinstance(frames, _SecureInput):
            if s.secure is not None and s.secure.machine.round_id == frames.round_id:
                s.secure.encoded, s.secure.local_s = frames.encoded, frames.local_s
                self._send_masked(s)
            return
        self._send(s, frames)
        self.updates_sent += 1
