"""The broker's round lifecycle. No sockets: it is fed decoded-or-not frames and the time, and it
returns the frames to send. The ROUTER loop in :mod:`federated.broker.loop` only moves bytes.

A round (DESIGN §3): select a cohort from live workers and plan the round
(:mod:`~federated.broker.planning`), send each a TASK with the global model, and let the mode's collector
(:mod:`~federated.broker.plain_round`, :mod:`~federated.broker.secure_round`) gather answers until all
answered, dropped (expired, reconnected, unreachable, left) or the deadline passed; then either aggregate
what it collected (:mod:`~federated.broker.aggregate`), evaluate, checkpoint and record the round
(:mod:`~federated.broker.records`), or, with fewer than ``min_clients`` survivors, record a failed round
and keep the model unchanged. A round is complete only once it is in the store.

Every inbound message passes the door first (:mod:`~federated.broker.admission`); anything malformed or
out of place is answered with an ERROR and a log line and changes no state.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from federated.aggregation import ServerOptimizer
from federated.broker.admission import Admission, Refusal
from federated.broker.aggregate import Aggregate, Aggregator
from federated.broker.collector import ActiveRound, Collected, no_round
from federated.broker.evaluation import FederatedEvaluation
from federated.broker.launch import Outbound, collector_for, launch
from federated.broker.planning import (
    STAGE_TRAIN,
    candidates,
    fewest_to_start,
    plan_round,
    waiting_for,
)
from federated.broker.records import build_record
from federated.broker.registry import WorkerRegistry
from federated.broker.resume import resume_arrays, resume_payload
from federated.broker.secure_round import SECAGG_INBOUND
from federated.broker.selection import Selector
from federated.broker.store import RoundRecord, RoundStore
from federated.compression import make_codec
from federated.config import FederatedConfig
from federated.keys import Enrolment
from federated.privacy.ledger import PrivacyLedger
from federated.protocol import (
    Bye,
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Limits,
    MaskedInput,
    ProtocolError,
    Update,
    Welcome,
    decode_message,
)

__all__ = ["STAGE_TRAIN", "Coordinator", "Evaluator", "Outbound"]

log = logging.getLogger("federated.broker")

#: ``evaluate(weights) -> (loss, accuracy)`` on the broker's held-out split.
Evaluator = Callable[[Mapping[str, np.ndarray]], tuple[float, float]]


class Coordinator:
    """Runs ``config.num_rounds`` complete rounds over whatever workers connect.

    ``initial_weights`` is the global model (name -> float32 array); ``store`` receives every round and
    checkpoint; ``evaluate`` scores each new global model on held-out data; ``on_round`` is called with
    each recorded round (complete or failed); ``task_config`` is merged into every TASK's config (the
    model description). ``clock`` is ``time.monotonic`` except in tests. ``enrolment``: with transport
    security, who may speak (re-read when its files change). ``on_evaluation``: called with a round's
    record once the workers' scores of its model are in (:mod:`~federated.broker.evaluation`).
    """

    def __init__(self, config: FederatedConfig, initial_weights: Mapping[str, np.ndarray], *,
                 store: RoundStore | None = None, evaluate: Evaluator | None = None,
                 server_optimizer: ServerOptimizer | None = None, limits: Limits | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 task_config: Mapping[str, Any] | None = None, first_round: int = 1, completed_rounds: int = 0,
                 clock: Callable[[], float] = time.monotonic, enrolment: Enrolment | None = None,
                 on_evaluation: Callable[[RoundRecord], None] | None = None) -> None:
        self.config = config
        self.weights: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in initial_weights.items()}
        self.store = store
        self.evaluate = evaluate
        self.limits = limits or Limits()
        self.on_round = on_round
        self.task_config = dict(task_config or {})
        self.clock = clock
        self.registry = WorkerRegistry(config.broker.heartbeat_timeout_s)
        self.enrolment = enrolment
        self.admission = Admission(self.registry, enrolment)
        #: Ed25519 identity keys pinned at each worker's first HELLO (they sign secure-aggregation keys).
        self.identities = self.admission.identities
        self.rng = random.Random(config.seed)
        self.selector = Selector(config.selection, self.rng, sampling_rate=config.client_sampling_rate)
        self._codec = make_codec(config.compression) if config.compression != "none" else None
        # What the codec becomes under secure aggregation (shared coordinates, ring width), once.
        self._secure_codec = config.secure_plan() if config.secure.enabled else None
        #: Differential privacy: the accountant and budget (None without DP). Calibrates sigma if asked.
        self.privacy = (PrivacyLedger(config, sum(int(w.size) for w in self.weights.values()))
                        if config.privacy.mode != "none" else None)
        self.aggregator = Aggregator(config, self.weights, self.rng, self.privacy, server_optimizer)
        self.server_optimizer = self.aggregator.server_optimizer
        self.next_round_id = first_round
        #: This run's id, random and kept across a resume: workers key their round ledger with it.
        self.run_id = secrets.token_hex(16)
        self.completed = completed_rounds
        self.consecutive_failures = 0
        self.round: ActiveRound | None = None
        self.history: list[RoundRecord] = []
        self.done = completed_rounds >= config.num_rounds
        self.failed = False
        self.exit_reason = ""
        self.refused = 0
        self._waiting_since: float | None = None
        self._next_heartbeat = 0.0
        self._last_size_warning = -float("inf")
        self.evaluation = FederatedEvaluation(config, store, on_evaluation)

    # ------------------------------------------------------------------ inbound

    def handle(self, route: bytes, frames: Sequence[Any], now: float, *, peer: str | None = None) -> list[Outbound]:
        """Process one inbound message from connection ``route``; return what to send.

        ``peer`` is the Z85 CURVE key the connection authenticated with (the frames' ``User-Id``); with an
        enrolment it must belong to an enrolled worker, checked on every message so a revoked worker is
        refused on a live connection, and it fixes the worker id that connection may speak for.
        """
        nbytes = sum(len(getattr(f, "buffer", f)) for f in frames)
        door = self.admission.door(route, frames, peer, now)
        for revoked in door.revoked:
            self._drop(revoked, "revoked")
        if door.refusal is not None:
            return self._refuse(route, door.refusal) + (self._maybe_finish(now) if door.connection_revoked else [])
        try:
            msg = decode_message(frames, self.limits)
        except ProtocolError as exc:
            return self._refuse(route, Refusal(exc.code, str(exc)))
        if isinstance(msg, Hello):
            admitted = self.admission.admit_hello(msg, door.enrolled, peer)
            if isinstance(admitted, Refusal):
                return self._refuse(route, admitted)
            return self._on_hello(route, admitted, now)
        wid = self.admission.speaker(route, msg, door.enrolled)
        if not isinstance(wid, str):
            return [] if wid is None else self._refuse(route, wid)
        self.registry.touch(wid, now)
        if self.round is not None and wid in self.round.cohort:
            self.round.bytes_up += nbytes
        if isinstance(msg, Heartbeat):
            return []
        if isinstance(msg, (Update, *SECAGG_INBOUND)):
            return self._on_answer(route, wid, msg, now)
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
        return self._refuse(route, Refusal(ErrorCode.WRONG_DIRECTION,
                                           f"{type(msg).__name__} is sent by the broker, not to it"))

    def unreachable(self, route: bytes, now: float) -> list[Outbound]:
        """The socket could not deliver to ``route`` (peer gone): its worker is a dropout."""
        wid = self.registry.id_of(route)
        if wid is None:
            return []
        log.warning("worker %s is unreachable; removing it", wid)
        self.registry.remove(wid)
        self._drop(wid, "unreachable")
        return self._maybe_finish(now)

    def _refuse(self, route: bytes, refusal: Refusal) -> list[Outbound]:
        self.refused += 1
        self.admission.note(route, refusal)
        round_id = self.round.round_id if self.round is not None else -1
        return [Outbound(route, Error(refusal.code, refusal.message, round_id).to_frames())]

    def _on_hello(self, route: bytes, msg: Hello, now: float) -> list[Outbound]:
        welcome = Outbound(route, Welcome(msg.worker_id, self.config.broker.heartbeat_interval_s,
                                          self.config.broker.heartbeat_timeout_s).to_frames())
        fresh, dropouts = self.admission.register(route, msg, now)
        if not fresh:  # the same connection announcing itself again: its session is intact
            return [welcome]
        for wid, reason in dropouts:
            self._drop(wid, reason)
        if self.store is not None:
            self.store.upsert_worker(msg.worker_id, num_samples=msg.num_samples, seen_at=time.time())
        out = [welcome]
        if self.done:
            out.append(Outbound(route, Bye("", self.exit_reason or "training finished").to_frames()))
        return out + self._maybe_finish(now)

    def _on_answer(self, route: bytes, wid: str, msg: Any, now: float) -> list[Outbound]:
        """An UPDATE or a secure-aggregation message: for the round's collector."""
        rnd = self.round
        if rnd is None:
            return self._refuse(route, no_round(msg))
        refusal = rnd.collector.receive(wid, msg)
        if refusal is not None:
            return self._refuse(route, refusal)
        # Answers feed performance-based selection: an update's time, loss and samples; a masked input's time.
        if isinstance(msg, Update):
            stats = self.selector.stats_of(wid)
            stats.observe(now - rnd.started, msg.metrics.get("loss"))
            stats.num_samples = msg.num_samples
        elif isinstance(msg, MaskedInput):
            self.selector.stats_of(wid).observe(now - rnd.started, None)
        return self._maybe_finish(now)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Outbound]:
        """Expire silent workers, close or start rounds, send heartbeats. Call at least every
        :meth:`next_wakeup` seconds."""
        for wid in self.admission.refresh(now):
            self._drop(wid, "revoked")
        for wid in self.registry.expire(now):
            log.warning("worker %s missed its heartbeats; counted as dropped", wid)
            self._drop(wid, "timeout")
        out = self._maybe_finish(now)
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
        if self.evaluation.closing is None and self.privacy is not None and not self.privacy.allows_next_round():
            spent, planned = self.privacy.epsilon(), self.privacy.next_round_epsilon()
            return self._wind_down(
                f"privacy budget: round {self.next_round_id} would bring epsilon to {planned:.4g} "
                f"> budget {self.privacy.budget:g} (spent {spent:.4g} at delta {self.privacy.delta:g})")
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since >= cfg.broker.start_timeout_s
        live = candidates(cfg, self.registry.live_ids(), self.identities, waited=waited)
        if live is None and self.evaluation.closing is not None and waited:
            log.warning("the final model was not scored by the workers: too few live workers (%s)",
                        waiting_for(cfg, self.registry.live_ids(), self.identities, waited=waited))
            return self._finish_training(self.evaluation.closing)
        if live is None:
            return self._say(now, logging.INFO, "waiting for workers: %s",
                             waiting_for(cfg, self.registry.live_ids(), self.identities, waited=waited))
        size = min(cfg.clients_per_round, len(live))
        sample = self.selector.select(live, size, self.next_round_id)
        fewest = fewest_to_start(cfg) if self.evaluation.closing is None else 1
        if len(sample) < fewest:  # only a Poisson sample can be this small
            return self._say(now, logging.INFO, "round %d: a Poisson sample of %d workers is below the %d a "
                             "round needs; not run (nothing released or charged), drawing again",
                             self.next_round_id, len(sample), fewest)
        scores = self.evaluation.to_score(self.completed)
        try:
            plan = plan_round(cfg, self.next_round_id, sample, weights=self.weights, run_id=self.run_id,
                              model_config=self.task_config, privacy=self.privacy,
                              secure_codec=self._secure_codec, scores=scores,
                              evaluators=self.evaluation.evaluators(sample, scores),
                              evaluate_only=self.evaluation.closing is not None)
        except ValueError as exc:  # only a secure round's buckets can be too small for their settings
            return self._say(now, logging.WARNING, "waiting for more workers: a secure round of %d cannot "
                             "run: %s", size, exc)
        self._waiting_since = None
        self.next_round_id += 1
        collector = collector_for(plan, cfg, now, weights=self.weights, identities=self.identities,
                                  privacy=self.privacy, rows=self.aggregator.rows, codec=self._codec)
        self.round, out = launch(plan, collector, now, weights=self.weights, registry=self.registry,
                                 store=self.store, privacy=self.privacy)
        if not plan.cohort:  # an empty Poisson sample under central DP: the noise alone, released now
            out += self._maybe_finish(now)
        return out

    def _say(self, now: float, level: int, message: str, *args: Any) -> list[Outbound]:
        """Log why no round starts now, at most every 10 s (the broker ticks far more often)."""
        if now - self._last_size_warning > 10.0:
            self._last_size_warning = now
            log.log(level, message, *args)
        return []

    def _drop(self, wid: str, reason: str) -> None:
        if self.round is not None:
            self.round.collector.drop(wid, reason)

    def _maybe_finish(self, now: float) -> list[Outbound]:
        rnd = self.round
        if rnd is None:
            return []
        out: list[Outbound] = []
        for wid, msg in rnd.collector.progress(now):
            rec = self.registry.get(wid)
            if rec is None:
                rnd.collector.drop(wid, "gone")
                continue
            frames = msg.to_frames()
            rnd.bytes_down += sum(len(f) for f in frames)
            out.append(Outbound(rec.route, frames))
        if not rnd.collector.finished:
            return out
        self.round = None
        self._waiting_since = now
        collected = rnd.collector.result()
        self.history = self.evaluation.take(rnd.plan, collected, self.history)
        if rnd.plan.evaluate_only:  # the closing round: training ends whatever it brought
            return out + self._finish_training(self.evaluation.closed(rnd.round_id, collected))
        if collected.failure is not None:
            return out + self._fail(rnd, collected, collected.failure)
        try:
            aggregate = self.aggregator.aggregate(collected)
        except ValueError as exc:  # a robust rule refusing a cohort too small for it
            return out + self._fail(rnd, collected, f"{exc}; model unchanged")
        return out + self._complete(rnd, collected, aggregate)

    def _fail(self, rnd: ActiveRound, collected: Collected, error: str) -> list[Outbound]:
        log.error("round %d failed: %s", rnd.round_id, error)
        self._record(rnd, collected, "failed", error=error)
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.config.broker.max_failed_rounds:
            self.failed = True
            return self._finish_training(f"{self.consecutive_failures} rounds in a row failed")
        return []

    def _complete(self, rnd: ActiveRound, collected: Collected, aggregate: Aggregate) -> list[Outbound]:
        new_weights = self.aggregator.step(self.weights, aggregate.mean)
        loss, accuracy = self.evaluate(new_weights) if self.evaluate is not None else (None, None)
        self._record(rnd, collected, "complete", weights=new_weights, loss=loss, accuracy=accuracy,
                     decoded=aggregate.decoded, suspects=aggregate.suspects,
                     train_metrics=self.privacy is None or self.privacy.mode != "distributed")
        self.weights = new_weights
        self.evaluation.model_round = rnd.round_id
        self.completed += 1
        self.consecutive_failures = 0
        if self.store is not None:
            for wid in collected.survivors:
                self.store.count_worker(wid, "rounds_completed")
        if self.completed >= self.config.num_rounds:
            return self._wind_down("training finished")
        return []

    def _record(self, rnd: ActiveRound, collected: Collected, status: str, *,
                weights: dict[str, np.ndarray] | None = None, **outcome: Any) -> None:
        record = build_record(round_id=rnd.round_id, status=status, started_at=rnd.started_wall,
                              duration_s=self.clock() - rnd.started, cohort=rnd.cohort, collected=collected,
                              bytes_up=rnd.bytes_up, bytes_down=rnd.bytes_down, epsilon=rnd.epsilon,
                              **outcome)
        if self.store is not None:
            self.store.record_round(record, weights, resume=resume_payload(self, status),
                                    state=resume_arrays(self))
            for wid in collected.dropped:
                self.store.count_worker(wid, "rounds_dropped")
        self.history.append(record)
        if self.on_round is not None:
            self.on_round(record)

    # ------------------------------------------------------------------ end (resuming: broker.resume)

    def _wind_down(self, reason: str) -> list[Outbound]:
        """Training is over for ``reason``: stop now, or first let the workers score the final model in a
        closing evaluation-only round (started by the next tick), if federated evaluation wants it."""
        return [] if self.evaluation.wind_down(reason) else self._finish_training(reason)

    def _finish_training(self, reason: str) -> list[Outbound]:
        self.done = True
        self.exit_reason = reason
        log.info("stopping: %s", reason)
        return [Outbound(rec.route, Bye("", reason).to_frames()) for rec in self.registry.records()]
