"""The broker's round state machine. No sockets: it is fed decoded-or-not frames and the time, and it
returns the frames to send. The ROUTER loop in :mod:`federated.broker.loop` only moves bytes.

A round (DESIGN §3): select a cohort from live workers, send each a TASK with the global model, collect
UPDATEs until all answered, dropped (expired, reconnected, unreachable, left) or the deadline passed;
then either aggregate the survivors' updates (weighted FedAvg + server step), evaluate, checkpoint and
record the round, or, with fewer than ``min_clients`` survivors, record a failed round and keep the model
unchanged. A round is complete only once it is in the store.

Every inbound message is validated; anything malformed or out of place is answered with an ERROR and a
log line and changes no state.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from federated.aggregation import (
    Rule,
    ServerOptimizer,
    check_compatible,
    detect_byzantine_clients,
    make_rule,
    make_server_optimizer,
    weighted_mean,
)
from federated.aggregation.bucketing import bucket_means
from federated.aggregation.vectors import flatten, flatten_rows, unflatten
from federated.broker.registry import WorkerRegistry
from federated.broker.secure_round import (
    DecodedSum,
    SecureRound,
    assign_buckets,
    combine,
    decode_round,
    vector_length,
)
from federated.broker.selection import Selector
from federated.broker.store import RoundRecord, RoundStore
from federated.compression import Compressed, make_codec
from federated.compression.sparsify import kept_count, shared_indices
from federated.config import FederatedConfig
from federated.crypto.errors import CryptoError
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult
from federated.keys import Enrolment
from federated.privacy.clipping import AdaptiveClipper
from federated.privacy.ledger import PrivacyLedger
from federated.privacy.noise import noise_rng
from federated.protocol import (
    AdvertiseKeys,
    Bye,
    ConsistencySignature,
    Error,
    Heartbeat,
    Hello,
    Limits,
    MaskedInput,
    ProtocolError,
    ShareKeys,
    Task,
    UnmaskShares,
    Update,
    Welcome,
    decode_message,
)

__all__ = ["STAGE_TRAIN", "Coordinator", "Evaluator", "Outbound"]

log = logging.getLogger("federated.broker")

STAGE_TRAIN = "train"
_SECAGG_INBOUND = (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)

#: ``evaluate(weights) -> (loss, accuracy)`` on the broker's held-out split.
Evaluator = Callable[[Mapping[str, np.ndarray]], tuple[float, float]]


@dataclass(frozen=True)
class Outbound:
    """Frames to send to one connection (ZeroMQ routing id)."""

    route: bytes
    frames: Sequence[bytes | memoryview]


@dataclass
class _Round:
    round_id: int
    started_wall: float
    started: float
    deadline: float
    cohort: list[str]
    pending: set[str]
    updates: dict[str, Update] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    secure: SecureRound | None = None
    epsilon: float | None = None  # privacy spent including this round (None: no differential privacy)


def compression_seed(seed: int, round_id: int) -> int:
    """The round's shared seed for random-k compression (every worker keeps the same coordinates)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{round_id}/compression".encode()).digest()[:4], "little")


class Coordinator:
    """Runs ``config.num_rounds`` complete rounds over whatever workers connect.

    ``initial_weights`` is the global model (name -> float32 array); ``store`` receives every round and
    checkpoint; ``evaluate`` scores each new global model on held-out data; ``on_round`` is called with
    each recorded round (complete or failed); ``task_config`` is merged into every TASK's config (the
    model description). ``clock`` is ``time.monotonic`` except in tests.
    """

    def __init__(
        self,
        config: FederatedConfig,
        initial_weights: Mapping[str, np.ndarray],
        *,
        store: RoundStore | None = None,
        evaluate: Evaluator | None = None,
        server_optimizer: ServerOptimizer | None = None,
        limits: Limits | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        task_config: Mapping[str, Any] | None = None,
        first_round: int = 1,
        completed_rounds: int = 0,
        clock: Callable[[], float] = time.monotonic,
        enrolment: Enrolment | None = None,
    ) -> None:
        self.config = config
        self.weights: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in initial_weights.items()}
        #: Parameters of the model (the shapes never change during a run).
        self.num_params = sum(int(w.size) for w in self.weights.values())
        self.store = store
        self.evaluate = evaluate
        b = config.broker
        self.server_optimizer = server_optimizer or make_server_optimizer(
            b.server_optimizer, b.server_learning_rate, beta1=b.server_beta1, beta2=b.server_beta2, tau=b.server_tau)
        self.limits = limits or Limits()
        self.on_round = on_round
        self.task_config = dict(task_config or {})
        self.clock = clock
        self.registry = WorkerRegistry(config.broker.heartbeat_timeout_s)
        self.rng = random.Random(config.seed)
        self.selector = Selector(config.selection, self.rng)
        self._codec = make_codec(config.compression) if config.compression != "none" else None
        # What the codec becomes under secure aggregation (shared coordinates, ring width), once.
        self._secure_codec = config.secure_plan() if config.secure.enabled else None
        # The plain rounds' update matrix (clients x parameters, float32), kept between rounds for reuse.
        self._rows: np.ndarray | None = None
        #: Differential privacy: the accountant and budget (None without DP). Calibrates sigma if asked.
        self.privacy = PrivacyLedger(config, self.num_params) if config.privacy.mode != "none" else None
        self.next_round_id = first_round
        #: This run's id, random and kept across a resume: workers key their round ledger with it.
        self.run_id = secrets.token_hex(16)
        self.completed = completed_rounds
        self.consecutive_failures = 0
        self.round: _Round | None = None
        self.history: list[RoundRecord] = []
        self.done = completed_rounds >= config.num_rounds
        self.failed = False
        self.exit_reason = ""
        self.refused = 0
        self._waiting_since: float | None = None
        self._next_heartbeat = 0.0
        #: Ed25519 identity keys pinned at each worker's first HELLO (they sign secure-aggregation keys).
        self.identities: dict[str, bytes] = {}
        self._last_size_warning = -math.inf
        #: With transport security: who may speak (re-read when its files change), and the CURVE key
        #: each registered worker authenticated with.
        self.enrolment = enrolment
        self._keys: dict[str, str] = {}
        self._enrolment_checked = -math.inf
        self._last_refusal_log = -math.inf
        self._unlogged_refusals = 0

    # ------------------------------------------------------------------ inbound

    def handle(self, route: bytes, frames: Sequence[Any], now: float, *, peer: str | None = None) -> list[Outbound]:
        """Process one inbound message from connection ``route``; return what to send.

        ``peer`` is the Z85 CURVE key the connection authenticated with (the frames' ``User-Id``); with an
        enrolment it must belong to an enrolled worker, checked on every message so a revoked worker is
        refused on a live connection, and it fixes the worker id that connection may speak for.
        """
        nbytes = sum(len(getattr(f, "buffer", f)) for f in frames)
        enrolled = None
        if self.enrolment is not None:
            self._refresh_enrolment(now)
            enrolled = self.enrolment.by_curve_key(peer) if peer else None
            if enrolled is None:
                return self._refuse_unenrolled(route, now)
        if len(frames) > 3 and self.registry.id_of(route) is None:
            # Tensor frames from a connection that never said HELLO: refuse before decoding (joining chunks,
            # scanning for NaN) so a stranger cannot make the broker work in proportion to what it sends.
            # HELLO, BYE and ERROR, all a stranger may send, carry no tensors.
            return self._refuse(route, "unknown_worker", "unknown connection: send HELLO first")
        try:
            msg = decode_message(frames, self.limits)
        except ProtocolError as exc:
            return self._refuse(route, exc.code, str(exc))
        if isinstance(msg, Hello):
            if enrolled is not None:
                if msg.worker_id != enrolled.worker_id:
                    return self._refuse(route, "wrong_worker", f"this key is enrolled as {enrolled.worker_id!r}, "
                                                               f"not {msg.worker_id!r}")
                if msg.identity and msg.identity != enrolled.identity_public.hex():
                    return self._refuse(route, "identity_mismatch",
                                        "identity key differs from the one enrolled for this worker")
                # The enrolled identity key, not whatever HELLO carries, verifies its signatures.
                msg = replace(msg, identity=enrolled.identity_public.hex())
                self._keys[msg.worker_id] = str(peer)
            return self._on_hello(route, msg, now)
        wid = self.registry.id_of(route)
        if wid is None:
            if isinstance(msg, (Bye, Error)):
                log.info("ignoring %s from a connection that never said HELLO", type(msg).__name__)
                return []
            return self._refuse(route, "unknown_worker", "unknown connection: send HELLO first")
        if enrolled is not None and enrolled.worker_id != wid:
            # The routing id is the peer's to choose, so the connection does not say who speaks: the key
            # it authenticated with must be the one enrolled for the worker this connection is bound to.
            return self._refuse(route, "wrong_worker", f"this key is enrolled as {enrolled.worker_id!r}, "
                                                       f"not {wid!r}")
        claimed = getattr(msg, "worker_id", wid)
        if claimed and claimed != wid:
            return self._refuse(route, "wrong_worker", f"worker_id {claimed!r} does not match this connection")
        self.registry.touch(wid, now)
        if self.round is not None and wid in self.round.cohort:
            self.round.bytes_up += nbytes
        if isinstance(msg, Heartbeat):
            return []
        if isinstance(msg, Update):
            return self._on_update(route, wid, msg, now)
        if isinstance(msg, _SECAGG_INBOUND):
            return self._on_secagg(route, wid, msg, now)
        if isinstance(msg, Bye):
            log.info("worker %s left: %s", wid, msg.reason or "no reason given")
            self.registry.remove(wid)
            self._drop(wid, "left")
            return self._maybe_finish(now)
        if isinstance(msg, Error):
            log.warning("worker %s reported an error: %s: %s", wid, msg.code, msg.message)
            if self.round is not None and msg.round_id == self.round.round_id:
                # It refused or failed this round's work and will not answer: a dropout now, not at the
                # deadline (up to the round timeout later).
                self._drop(wid, f"error {msg.code}")
                return self._maybe_finish(now)
            return []
        return self._refuse(route, "wrong_direction", f"{type(msg).__name__} is sent by the broker, not to it")

    def unreachable(self, route: bytes, now: float) -> list[Outbound]:
        """The socket could not deliver to ``route`` (peer gone): its worker is a dropout."""
        wid = self.registry.id_of(route)
        if wid is None:
            return []
        log.warning("worker %s is unreachable; removing it", wid)
        self.registry.remove(wid)
        self._drop(wid, "unreachable")
        return self._maybe_finish(now)

    def flush_refusal_log(self) -> None:
        """Log how many refusals went unlogged since the last line (call when the broker stops)."""
        if self._unlogged_refusals:
            log.warning("and %d more refusals since the last line", self._unlogged_refusals)
            self._unlogged_refusals = 0

    def _refresh_enrolment(self, now: float) -> None:
        """Re-read the enrolment if its files changed (at most every 0.2 s), and drop every registered
        worker whose key is no longer enrolled: revocation takes effect on live connections too."""
        assert self.enrolment is not None
        if now - self._enrolment_checked < 0.2:
            return
        self._enrolment_checked = now
        if not self.enrolment.reload_if_changed():
            return
        for wid in self.registry.live_ids():
            key = self._keys.get(wid)
            entry = self.enrolment.by_curve_key(key) if key else None
            if entry is None or entry.worker_id != wid:
                log.warning("worker %s is no longer enrolled; disconnecting it", wid)
                self.registry.remove(wid)
                self._keys.pop(wid, None)
                self._drop(wid, "revoked")

    def _refuse_unenrolled(self, route: bytes, now: float) -> list[Outbound]:
        wid = self.registry.id_of(route)
        if wid is not None:  # revoked while connected
            self.registry.remove(wid)
            self._keys.pop(wid, None)
            self._drop(wid, "revoked")
            return self._refuse(route, "not_enrolled", "this key is not enrolled (revoked)") + self._maybe_finish(now)
        return self._refuse(route, "not_enrolled", "this key is not enrolled with the broker")

    def _refuse(self, route: bytes, code: str, message: str) -> list[Outbound]:
        self.refused += 1
        # One line per second at most: a flood of junk must not turn into a flood of log lines.
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            more = f" (and {self._unlogged_refusals} more refusals since the last line)" if self._unlogged_refusals else ""
            log.warning("refused a message from connection %s: %s: %s%s", route.hex()[:16], code, message, more)
            self._last_refusal_log, self._unlogged_refusals = now, 0
        else:
            self._unlogged_refusals += 1
        round_id = self.round.round_id if self.round is not None else -1
        return [Outbound(route, Error(code, message, round_id).to_frames())]

    def _on_hello(self, route: bytes, msg: Hello, now: float) -> list[Outbound]:
        if msg.identity:
            pinned = self.identities.get(msg.worker_id)
            identity = bytes.fromhex(msg.identity)
            if pinned is not None and pinned != identity:
                if msg.worker_id in self.registry:
                    # A live worker's id cannot be taken over with another key.
                    return self._refuse(route, "identity_mismatch",
                                        f"{msg.worker_id} is connected with a different identity key")
                # The old session is gone (a restarted worker makes a new key): pin the new one.
                log.warning("worker %s came back with a new identity key", msg.worker_id)
            self.identities[msg.worker_id] = identity
        known = self.registry.get(msg.worker_id)
        welcome = Outbound(route, Welcome(msg.worker_id, self.config.broker.heartbeat_interval_s,
                                          self.config.broker.heartbeat_timeout_s).to_frames())
        if known is not None and known.route == route:
            # The same connection announcing itself again (e.g. a worker whose queued heartbeats reached
            # a restarted broker answers each refusal with a HELLO): its session is intact, nothing lost.
            self.registry.touch(msg.worker_id, now)
            return [welcome]
        displaced = self.registry.id_of(route)
        previous = self.registry.register(msg.worker_id, route, msg.num_samples, now)
        if displaced is not None and displaced != msg.worker_id:
            # The registry unbinds an id whose connection now speaks for another one; that id can neither
            # answer nor expire any more, so it is a dropout now rather than at the round's deadline.
            log.warning("connection of worker %s now speaks for %s; %s removed", displaced, msg.worker_id,
                        displaced)
            self._drop(displaced, "displaced")
        if previous is not None:
            log.info("worker %s re-announced itself (new connection)", msg.worker_id)
            self._drop(msg.worker_id, "reconnected")
        else:
            log.info("worker %s joined with %d samples", msg.worker_id, msg.num_samples)
        if self.store is not None:
            self.store.upsert_worker(msg.worker_id, num_samples=msg.num_samples, seen_at=time.time())
        out = [welcome]
        if self.done:
            out.append(Outbound(route, Bye("", self.exit_reason or "training finished").to_frames()))
        return out + self._maybe_finish(now)

    def _on_update(self, route: bytes, wid: str, msg: Update, now: float) -> list[Outbound]:
        rnd = self.round
        if rnd is not None and rnd.secure is not None:
            return self._refuse(route, "wrong_stage", "this is a secure round: plain updates are not accepted")
        if rnd is None or msg.round_id != rnd.round_id or msg.stage != STAGE_TRAIN:
            current = "none" if rnd is None else f"{rnd.round_id}/{STAGE_TRAIN}"
            return self._refuse(route, "wrong_stage",
                                f"update for round {msg.round_id}/{msg.stage}; current round is {current}")
        if wid not in rnd.pending:
            return self._refuse(route, "wrong_stage", f"no update expected from {wid} in round {rnd.round_id}")
        if self.config.compression != "none":
            try:
                msg = replace(msg, update=self._decompress(msg, rnd.round_id))
            except (ValueError, TypeError) as exc:
                return self._refuse(route, "bad_tensor", f"compressed update: {exc}")
        try:
            check_compatible(self.weights, msg.update)
        except ValueError as exc:
            return self._refuse(route, "bad_tensor", str(exc))
        if any(t.dtype != np.float32 for t in msg.update.values()):
            return self._refuse(route, "bad_tensor", "update tensors must be float32")
        rnd.updates[wid] = msg
        rnd.pending.discard(wid)
        stats = self.selector.stats_of(wid)
        stats.observe(now - rnd.started, msg.metrics.get("loss"))
        stats.num_samples = msg.num_samples
        return self._maybe_finish(now)

    def _on_secagg(self, route: bytes, wid: str, msg: Any, now: float) -> list[Outbound]:
        rnd = self.round
        if rnd is None or rnd.secure is None or msg.round_id != rnd.round_id or wid not in rnd.secure.bucket_of:
            current = "none" if rnd is None else str(rnd.round_id)
            return self._refuse(route, "wrong_stage", f"{type(msg).__name__} for round {msg.round_id}; "
                                                      f"current secure round is {current}")
        try:
            rnd.secure.machine_of(wid).receive(wid, msg)
        except CryptoError as exc:
            return self._refuse(route, "secagg", str(exc))
        if isinstance(msg, MaskedInput):  # a secure round's answer: its timing is all the broker learns
            self.selector.stats_of(wid).observe(now - rnd.started, None)
        return self._maybe_finish(now)

    def _decompress(self, msg: Update, round_id: int) -> dict[str, np.ndarray]:
        """Undo the worker's codec. Raises ValueError/TypeError for a payload that does not decode."""
        if self._codec is None:
            raise ValueError("a compressed update, but this run has no codec")
        meta = msg.compression.get("meta")
        if not isinstance(meta, dict):
            raise TypeError("missing compression metadata")
        if "round_seed" in meta and meta["round_seed"] != compression_seed(self.config.seed, round_id):
            raise ValueError("shared random-k indices for another round")
        length = self.num_params
        packed = Compressed(dict(msg.update), dict(meta), sum(int(t.nbytes) for t in msg.update.values()))
        return unflatten(self._codec.decode(packed, length), self.weights)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Outbound]:
        """Expire silent workers, close or start rounds, send heartbeats. Call at least every
        :meth:`next_wakeup` seconds."""
        out: list[Outbound] = []
        if self.enrolment is not None:
            self._refresh_enrolment(now)
        for wid in self.registry.expire(now):
            log.warning("worker %s missed its heartbeats; counted as dropped", wid)
            self._drop(wid, "timeout")
        out += self._maybe_finish(now)
        if self.round is None and not self.done:
            out += self._maybe_start(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.broker.heartbeat_interval_s
            for rec in self.registry.records():
                out.append(Outbound(rec.route, Heartbeat(rec.worker_id).to_frames()))
        return out

    def next_wakeup(self, now: float) -> float:
        """Seconds until :meth:`tick` has something to do (never negative)."""
        times = [self._next_heartbeat]
        expiry = self.registry.next_expiry()
        if expiry is not None:
            times.append(expiry)
        if self.round is not None:
            times.append(self.round.deadline)
        elif self._waiting_since is not None:
            times.append(self._waiting_since + self.config.broker.start_timeout_s)
        return max(0.0, min(times) - now)

    # ------------------------------------------------------------------ rounds

    def _maybe_start(self, now: float) -> list[Outbound]:
        cfg = self.config
        if self.privacy is not None and not self.privacy.allows_next_round():
            spent, planned = self.privacy.epsilon(), self.privacy.next_round_epsilon()
            return self._finish_training(
                f"privacy budget: round {self.next_round_id} would bring epsilon to {planned:.4g} "
                f"> budget {self.privacy.budget:g} (spent {spent:.4g} at delta {self.privacy.delta:g})")
        live = self.registry.live_ids()
        if self._waiting_since is None:
            self._waiting_since = now
        if len(live) < cfg.clients_per_round:
            waited = now - self._waiting_since >= cfg.broker.start_timeout_s
            if len(live) < cfg.min_clients or not waited:
                return []
        if cfg.secure.enabled:
            # Only workers that announced an identity key can sign secure-aggregation keys.
            live = [w for w in live if w in self.identities]
            if len(live) < max(cfg.min_clients, 3):
                return []
        size = min(cfg.clients_per_round, len(live))
        plan: tuple[list[list[str]], list[Any]] | None = None
        if cfg.secure.enabled:
            try:
                plan = self._secure_plan(self.selector.select(live, size, self.next_round_id))
            except ValueError as exc:
                if now - self._last_size_warning > 10.0:
                    self._last_size_warning = now
                    log.warning("waiting for more workers: a secure round of %d cannot run: %s", size, exc)
                return []
            cohort = [w for bucket in plan[0] for w in bucket]
        else:
            cohort = self.selector.select(live, size, self.next_round_id)
        self._waiting_since = None
        rid = self.next_round_id
        self.next_round_id += 1
        if self.store is not None:
            # Burn the id before any TASK leaves: a broker restarted mid-round resumes with the next id,
            # never re-running this one (a worker refuses a round it already contributed to, and two runs
            # of one round under different survivor sets would let the sums be subtracted).
            self.store.set_meta("started_round", rid)
        rnd = _Round(rid, time.time(), now, now + cfg.broker.round_timeout_s, cohort, set(cohort))
        train = cfg.training.to_task_config()
        task_extra: dict[str, Any] = {}
        if self.privacy is not None:
            # Charged before any TASK leaves: from now on the workers release updates, whatever happens.
            rnd.epsilon = self.privacy.charge_round()
            train.update(self.privacy.train_settings())
            if self.privacy.mode == "distributed":
                task_extra = {"privacy": {"skellam_mu": self.privacy.skellam_mu}}
            if self.store is not None:
                self.store.set_meta("privacy", self.privacy.to_dict())
        task_config = {**self.task_config, "train": train, "seed": cfg.seed, "run_id": self.run_id, **task_extra}
        if cfg.compression != "none":
            task_config.update(compression=cfg.compression, compression_seed=compression_seed(cfg.seed, rid))
        params_of: dict[str, Any] = {}
        if plan is not None:
            buckets, params = plan
            rnd.secure = SecureRound(rid, buckets, params, self.identities, now, self._stage_wait)
            rnd.deadline = rnd.secure.deadline
            params_of = {w: p.to_dict() for bucket, p in zip(buckets, params, strict=True) for w in bucket}
        self.round = rnd
        out = []
        for index, wid in enumerate(cohort):
            rec = self.registry.get(wid)
            assert rec is not None  # cohort was drawn from the registry this instant
            config = {**task_config, "secagg": params_of[wid]} if params_of else task_config
            frames = Task(rid, STAGE_TRAIN, config, self.weights, index, len(cohort),
                          cfg.broker.round_timeout_s).to_frames()
            rnd.bytes_down += sum(len(f) for f in frames)
            out.append(Outbound(rec.route, frames))
            if self.store is not None:
                self.store.count_worker(wid, "rounds_selected")
        log.info("round %d started with %d workers", rid, len(cohort))
        return out

    def _secure_plan(self, sample: list[str]) -> tuple[list[list[str]], list[Any]]:
        """Buckets (one, without bucketing) and each bucket's secure-aggregation parameters.

        Graph and threshold fit each bucket; the fixed-point scale is the one validated at configuration
        time for the largest possible bucket. Raises ValueError if a bucket is too small for the settings.
        """
        cfg = self.config
        size = cfg.aggregation.bucket_size
        buckets = assign_buckets(sample, size)
        n_max = cfg.clients_per_round if size is None else min(2 * size - 1, cfg.clients_per_round)
        length = vector_length(self.weights, self._secure_kept())
        ring_bits = self._secure_codec.ring_bits if self._secure_codec is not None else 32
        params = [cfg.secure.round_params(len(b), length, n_max=n_max, ring_bits=ring_bits) for b in buckets]
        if self.privacy is not None and self.privacy.mode == "distributed":
            # Unweighted, clipped to the DP clip, at the scale whose sum leaves room for the noise.
            params = [replace(p, clip=self.privacy.clip, weight_cap=1, frac_bits=self.privacy.frac_bits)
                      for p in params]
        return buckets, params

    def _secure_kept(self) -> int | None:
        """Coordinates each worker masks under shared random-k compression (None: all of them)."""
        fraction = self._secure_codec.fraction if self._secure_codec is not None else None
        return None if fraction is None else kept_count(self.num_params, fraction)

    def _secure_indices(self, round_id: int) -> np.ndarray | None:
        fraction = self._secure_codec.fraction if self._secure_codec is not None else None
        if fraction is None:
            return None
        return shared_indices(self.num_params, fraction, compression_seed(self.config.seed, round_id))

    def _stage_wait(self, stage: str) -> float:
        """Seconds a secure stage may take: masked inputs wait for training, the others are quick."""
        return self.config.broker.round_timeout_s if stage == "masked_input" else self.config.secure.stage_timeout_s

    def _drop(self, wid: str, reason: str) -> None:
        rnd = self.round
        if rnd is not None and rnd.secure is not None and wid in rnd.cohort:
            if rnd.secure.is_pending(wid):
                log.info("round %d: worker %s dropped at %s (%s)", rnd.round_id, wid,
                         rnd.secure.machine_of(wid).stage, reason)
            rnd.secure.drop(wid, reason)
            return
        if rnd is not None and wid in rnd.pending:
            rnd.pending.discard(wid)
            rnd.dropped[wid] = reason
            # Dropouts are routine in federated learning: INFO. Their causes are logged where seen.
            log.info("round %d: worker %s dropped (%s)", rnd.round_id, wid, reason)

    def _maybe_finish(self, now: float) -> list[Outbound]:
        rnd = self.round
        if rnd is not None and rnd.secure is not None:
            return self._secure_progress(rnd, now)
        if rnd is None or (rnd.pending and now < rnd.deadline):
            return []
        for wid in sorted(rnd.pending):
            self._drop(wid, "deadline")
        self.round = None
        self._waiting_since = now
        survivors = sorted(rnd.updates)
        if len(survivors) < self.config.min_clients:
            return self._fail(rnd, survivors)
        return self._complete(rnd, survivors)

    def _secure_progress(self, rnd: _Round, now: float) -> list[Outbound]:
        """Close secure-aggregation stages that are complete or past their deadline (bucket by bucket);
        finish the round when every bucket is done or aborted."""
        sec = rnd.secure
        assert sec is not None
        out: list[Outbound] = []
        for wid, msg in sec.progress(now):
            rec = self.registry.get(wid)
            if rec is None:
                sec.drop(wid, "gone")
                continue
            frames = msg.to_frames()
            rnd.bytes_down += sum(len(f) for f in frames)
            out.append(Outbound(rec.route, frames))
        if out:
            stages = sorted({m.stage for m in sec.machines})
            log.info("round %d: secure aggregation at %s", rnd.round_id, "/".join(stages))
        if not sec.finished:
            rnd.deadline = sec.deadline
            return out
        self.round = None
        self._waiting_since = now
        results = sec.results()
        survivors = sorted(w for _, result in results for w in result.survivors)
        reasons = sec.dropped()
        rnd.dropped = {w: reasons.get(w, "bucket aborted") for w in rnd.cohort if w not in survivors}
        if not results:
            error = "; ".join(sorted(set(sec.errors()))) or "no bucket finished"
            return out + self._fail(rnd, [], error=f"secure aggregation aborted: {error}; model unchanged")
        if len(survivors) < self.config.min_clients:
            return out + self._fail(rnd, survivors)
        results, decoded, rejected, why = self._plausible(rnd.round_id, results)
        for wid in rejected:
            rnd.dropped[wid] = "its bucket's sum was not one honest inputs could give"
        survivors = [w for w in survivors if w not in rejected]
        if not results:
            return out + self._fail(rnd, survivors, error=f"no secure sum could come from honest inputs "
                                                          f"({'; '.join(why)}); model unchanged")
        local_s = {w: t for _, result in results for w, t in result.train_s.items()}
        try:
            merged = self._across_buckets(decoded)
        except ValueError as exc:
            return out + self._fail(rnd, survivors, error=f"{exc}; model unchanged")
        return out + self._complete(rnd, survivors, decoded=merged, local_s=local_s, suspects=rejected)

    def _plausible(self, round_id: int, results: list[tuple[SecAggBroker, SecAggResult]]
                   ) -> tuple[list[tuple[SecAggBroker, SecAggResult]], list[DecodedSum], tuple[str, ...], list[str]]:
        """Decode each bucket's sum and keep those that honest inputs could have produced, in every mode:
        summed weight, weighted metrics and mean norm within their bounds (:func:`decode_round`; under
        distributed DP the norm bound includes a 1e-9 tail of the workers' Skellam noise). Returns the
        kept buckets, their decoded sums, the members of the others (suspects: one of them sent an input
        no honest encoder makes), and why each of those was left out."""
        indices = self._secure_indices(round_id)
        distributed = self.privacy is not None and self.privacy.mode == "distributed"
        noise_mu = self.privacy.skellam_mu if distributed and self.privacy is not None else 0.0
        kept: list[tuple[SecAggBroker, SecAggResult]] = []
        decoded: list[DecodedSum] = []
        rejected: list[str] = []
        why: list[str] = []
        for machine, result in results:
            try:
                d = decode_round(result.total, machine.params, self.weights, indices,
                                 inputs=len(result.survivors), noise_mu=noise_mu)
            except ValueError as exc:
                log.warning("round %d: bucket of %s left out, a member sent an input no honest encoder makes: %s",
                            round_id, ", ".join(result.survivors), exc)
                rejected.extend(result.survivors)
                why.append(str(exc))
                continue
            kept.append((machine, result))
            decoded.append(d)
        return kept, decoded, tuple(sorted(rejected)), why

    def _across_buckets(self, decoded: list[DecodedSum]) -> DecodedSum:
        """One bucket, or the mean: the weighted mean. A robust rule: the rule across bucket means."""
        agg = self.config.aggregation
        merged = combine(decoded)
        if not agg.needs_individual_updates:
            return merged
        rule = self._rule(len(decoded))
        matrix = np.stack([flatten(d.mean_update) for d in decoded])
        vector = rule(matrix, np.array([d.weight for d in decoded]))
        return DecodedSum(unflatten(vector, self.weights), merged.weight, merged.train_loss, merged.train_accuracy)

    def _rule(self, n: int) -> Rule:
        agg = self.config.aggregation
        return make_rule(agg.rule, f=math.floor(agg.byzantine_fraction * n), trim_ratio=agg.trim_ratio,
                         clip_tau=agg.clip_tau, norm_bound=agg.norm_bound)

    def _fail(self, rnd: _Round, survivors: list[str], error: str | None = None) -> list[Outbound]:
        error = error or (f"only {len(survivors)} of {len(rnd.cohort)} workers answered; "
                          f"min_clients is {self.config.min_clients}; model unchanged")
        log.error("round %d failed: %s", rnd.round_id, error)
        self._record(rnd, survivors, "failed", error=error)
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.config.broker.max_failed_rounds:
            self.failed = True
            return self._finish_training(f"{self.consecutive_failures} rounds in a row failed")
        return []

    def _complete(self, rnd: _Round, survivors: list[str], *, decoded: DecodedSum | None = None,
                  local_s: Mapping[str, float] | None = None, suspects: tuple[str, ...] = ()) -> list[Outbound]:
        """Apply the round's mean (the plain rule's, or ``decoded`` under secure aggregation) and record it.
        ``suspects``: workers a secure round already suspects; plain rounds get theirs from detection."""
        if decoded is None:
            updates = [rnd.updates[w] for w in survivors]
            try:
                mean, suspects = self._aggregate_plain(survivors, updates)
            except ValueError as exc:  # a robust rule refusing a cohort too small for it
                return self._fail(rnd, survivors, error=f"{exc}; model unchanged")
        else:
            mean = decoded.mean_update
        new_weights = self.server_optimizer.step(self.weights, mean)
        loss = accuracy = None
        if self.evaluate is not None:
            loss, accuracy = self.evaluate(new_weights)
        self._record(rnd, survivors, "complete", weights=new_weights, loss=loss, accuracy=accuracy,
                     decoded=decoded, local_s=local_s, suspects=suspects)
        self.weights = new_weights
        self.completed += 1
        self.consecutive_failures = 0
        if self.store is not None:
            for wid in survivors:
                self.store.count_worker(wid, "rounds_completed")
        if self.completed >= self.config.num_rounds:
            return self._finish_training("training finished")
        return []

    def _aggregate_plain(self, ids: list[str], updates: list[Update]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """The round's mean update under the configured rule, and the workers detection suspects."""
        agg = self.config.aggregation
        if self.privacy is not None and self.privacy.mode == "central":
            return self._central_dp_mean(updates), ()
        weights = [u.num_samples for u in updates]
        if not agg.needs_individual_updates and agg.bucket_size is None and not agg.detect:
            return weighted_mean([u.update for u in updates], weights), ()
        # Reused round after round: at n=100, d=1M a fresh 400 MB matrix spent ~1 s a round faulting in.
        matrix = self._rows = flatten_rows([u.update for u in updates], out=self._rows)
        suspects: tuple[str, ...] = ()
        if agg.detect and len(ids) >= 3:
            detection = detect_byzantine_clients(matrix, ids, threshold=agg.detect_threshold)
            suspects = detection.suspects
            if suspects:
                log.warning("suspected Byzantine workers: %s", ", ".join(suspects))
        if not agg.needs_individual_updates and agg.bucket_size is None:
            return weighted_mean([u.update for u in updates], weights), suspects
        sample_weights: np.ndarray | None = np.asarray(weights, dtype=np.float64)
        if agg.bucket_size is not None:
            matrix = bucket_means(matrix, agg.bucket_size, np.random.default_rng(self.rng.getrandbits(64)))
            sample_weights = None
        # A copy: a rule may return a row of the matrix, which the next round overwrites.
        vector = np.array(self._rule(len(matrix))(matrix, sample_weights), dtype=np.float32)
        return unflatten(vector, self.weights), suspects

    def _central_dp_mean(self, updates: list[Update]) -> dict[str, np.ndarray]:
        """User-level central DP (DESIGN §6): clip each update to L2 norm C, sum, add N(0, (sigma C)^2) per
        coordinate, divide by the planned cohort size (McMahan et al. 2018's fixed denominator, so the
        released model does not depend on how many answered). Unweighted: a sample-count weight would let
        one worker's influence exceed C."""
        assert self.privacy is not None
        clip, sigma = self.privacy.current_clip, self.privacy.update_sigma
        total = np.zeros(self.num_params, np.float64)
        norms = []
        for u in updates:
            vector = flatten(u.update, np.float64)
            norm = float(np.linalg.norm(vector))
            norms.append(norm)
            total += vector * (min(1.0, clip / norm) if norm > 0 else 1.0)
        total += noise_rng().normal(0.0, sigma * clip, size=total.shape)
        if self.privacy.clipper is not None:  # the next round's clip, from a noised count (accounted)
            self.privacy.clipper.update(norms, expected_clients=self.config.clients_per_round)
        return unflatten((total / self.config.clients_per_round).astype(np.float32), self.weights)

    def _record(self, rnd: _Round, survivors: list[str], status: str, *, weights: dict[str, np.ndarray] | None = None,
                loss: float | None = None, accuracy: float | None = None, error: str | None = None,
                decoded: DecodedSum | None = None, local_s: Mapping[str, float] | None = None,
                suspects: tuple[str, ...] = ()) -> None:
        updates = [rnd.updates[w] for w in survivors if w in rnd.updates]
        samples = sum(u.num_samples for u in updates)

        def mean_metric(key: str) -> float | None:
            if decoded is not None:  # secure round: only the weighted sums are known
                return decoded.train_loss if key == "loss" else decoded.train_accuracy
            vals = [(u.metrics[key], u.num_samples) for u in updates if key in u.metrics]
            return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

        duration = self.clock() - rnd.started
        # A participant's local time is its compute plus, in simulation, the time it queued for a CPU
        # shared with other virtual clients; neither is orchestration overhead (DESIGN §3).
        times = [u.metrics.get("train_s", 0.0) + u.metrics.get("wait_s", 0.0) for u in updates]
        if local_s is not None:
            times = [local_s[w] for w in survivors if w in local_s]
            samples = round(decoded.weight) if decoded is not None else samples
        slowest = max(times, default=None)
        record = RoundRecord(
            round=rnd.round_id, status=status, started_at=rnd.started_wall, duration_s=duration,
            overhead_s=None if slowest is None else max(0.0, duration - slowest),
            participants=tuple(rnd.cohort), survivors=tuple(survivors), dropped=tuple(sorted(rnd.dropped)),
            num_samples=samples, bytes_up=rnd.bytes_up, bytes_down=rnd.bytes_down,
            accuracy=accuracy, loss=loss, train_loss=mean_metric("loss"),
            train_accuracy=mean_metric("accuracy"), epsilon=rnd.epsilon, error=error, suspects=suspects,
            metrics={"max_local_s": slowest or 0.0,
                     **{f"dropped_{r}": float(list(rnd.dropped.values()).count(r))
                        for r in set(rnd.dropped.values())}},
        )
        if self.store is not None:
            self.store.record_round(record, weights, resume=self._resume_payload(status),
                                    state=self._resume_arrays())
            for wid in rnd.dropped:
                self.store.count_worker(wid, "rounds_dropped")
        self.history.append(record)
        if self.on_round is not None:
            self.on_round(record)

    # ------------------------------------------------------------------ resume

    def _resume_payload(self, status: str) -> dict[str, Any]:
        """What a restarted broker needs, besides arrays, to continue after the round being recorded
        with ``status`` (the counters are those *after* that round)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "next_round": self.next_round_id,
            "completed": self.completed + (status == "complete"),
            "consecutive_failures": 0 if status == "complete" else self.consecutive_failures + 1,
            "rng": [version, list(internal), gauss],
            "selector": self.selector.state_dict(),
            "run_id": self.run_id,
            "clipper": None if self.privacy is None or self.privacy.clipper is None else self.privacy.clipper.to_dict(),
        }

    def _resume_arrays(self) -> dict[str, np.ndarray]:
        return {f"server_optimizer/{k}": v for k, v in self.server_optimizer.state_dict().items()}

    def restore(self, resume: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                weights: Mapping[str, np.ndarray]) -> None:
        """Continue a run from the state :meth:`RoundStore.load_resume` returned and the global model of
        the last complete round. Raises ValueError if the state does not fit this coordinator."""
        try:
            version, internal, gauss = resume["rng"]
            self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
            self.selector.load_state_dict(resume["selector"])
            self.next_round_id = int(resume["next_round"])
            self.completed = int(resume["completed"])
            self.consecutive_failures = int(resume["consecutive_failures"])
            self.run_id = str(resume.get("run_id", self.run_id))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"resume state is malformed: {exc!r}") from exc
        started = self.store.get_meta("started_round") if self.store is not None else None
        if isinstance(started, int) and not isinstance(started, bool) and started >= self.next_round_id:
            self.next_round_id = started + 1  # that round was under way when the broker stopped: burnt
        if self.privacy is not None and self.privacy.clipper is not None and resume.get("clipper") is not None:
            self.privacy.clipper = AdaptiveClipper.from_dict(resume["clipper"])
        prefix = "server_optimizer/"
        self.server_optimizer.load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        check_compatible(self.weights, weights)
        self.weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.done = self.completed >= self.config.num_rounds
        if self.done:
            self.exit_reason = "training finished"

    def _finish_training(self, reason: str) -> list[Outbound]:
        self.done = True
        self.exit_reason = reason
        log.info("stopping: %s", reason)
        return [Outbound(rec.route, Bye("", reason).to_frames()) for rec in self.registry.records()]
