"""The worker's side of the protocol as a state machine without sockets: the mirror of the broker's
:class:`~federated.broker.coordinator.Coordinator`.

One :class:`WorkerSession` is one worker identity. Messages from the broker go in (already decoded by
the codec); what the worker wants done comes out as actions: frames to send, a training job to run,
vanish (simulated dropout), announce again, finish. The DEALER loop (:mod:`federated.worker.loop`) only
moves bytes and keeps time; every protocol decision is made here, so a test (or a malicious-broker
harness) drives the real worker logic with no network::

    session = WorkerSession(ClientData("w0", x, y))
    actions = session.on_message(task)          # [Send(ADVERTISE_KEYS), Train(job)]
    result = session.train(job, fit)            # on the training thread: fit, clip, encode
    actions = session.on_trained(result)        # [] until the shares are in
    actions = session.on_message(roster)        # [Send(SHARE_KEYS)]
    ...

What the session refuses, whatever the broker says: code the worker was not started with (the model
runner), a secure round below its :class:`~federated.crypto.floor.SafetyFloor`, less noise than
``min_noise`` (record-level DP-SGD, or distributed DP at the smallest sum it lets be unmasked), and a
round of a run it already contributed a masked input to (:class:`~federated.worker.ledger.RoundLedger`).
A refusal is an ERROR to the broker and the end of this worker's part in that round; nothing secret
leaves.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federated.compression import make_codec
from federated.crypto.errors import CryptoError
from federated.crypto.floor import SafetyFloor
from federated.crypto.params import SecAggParams
from federated.crypto.primitives import generate_identity, public_bytes
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import (
    Bye,
    ConsistencyCheck,
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Roster,
    Shares,
    Task,
    UnmaskRequest,
    Welcome,
)
from federated.worker.ledger import RoundLedger
from federated.worker.payload import (
    SecureInput,
    distributed_noise_multiplier,
    encode_update,
    non_finite,
    skellam_mu_of,
)
from federated.worker.randomness import LocalRandomness
from federated.worker.simulation import DropoutPlan, Stragglers

__all__ = ["Action", "Announce", "ClientData", "EvaluateFunction", "Finish", "FitFunction", "Send", "Train", "TrainJob",
           "TrainResult", "Vanish", "Welcomed", "WorkerSession", "task_seed"]

log = logging.getLogger("federated.worker")

Frames = list[bytes | memoryview]

#: ``fit(global_weights, x, y, task_config, seed) -> (update, metrics)``; metrics include loss, accuracy,
#: train_s. Provided by :mod:`federated.worker.runner` over the MLX trainer.
FitFunction = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any], int],
                       tuple[dict[str, np.ndarray], dict[str, float]]]

#: ``evaluate(global_weights, x, y, task_config) -> (mean loss, accuracy)`` on held-out data; raises
#: ValueError for data the TASK's model cannot take. Provided by :mod:`federated.worker.runner`.
EvaluateFunction = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]], tuple[float, float]]

_SECURE_STAGE = {Roster: "roster", Shares: "shares", ConsistencyCheck: "consistency", UnmaskRequest: "unmask"}


@dataclass(frozen=True)
class ClientData:
    """One worker identity, its private training data and its held-out evaluation split (``x_eval``,
    ``y_eval``; None: this worker takes no part in federated evaluation)."""

    worker_id: str
    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray | None = None
    y_eval: np.ndarray | None = None

    @property
    def evaluates(self) -> bool:
        """Whether this worker holds an evaluation split to score global models on."""
        return self.y_eval is not None and len(self.y_eval) > 0


def task_seed(seed: int, round_id: int, worker_id: str) -> int:
    """A per-(run, round, worker) seed, stable across processes and platforms (simulation's training
    seed; real workers draw theirs from the OS, see :mod:`federated.worker.randomness`)."""
    digest = hashlib.sha256(f"{seed}/{round_id}/{worker_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Send:
    """Send these frames to the broker."""

    frames: Frames


@dataclass(frozen=True)
class TrainJob:
    """One local training run, to be done off the I/O thread by :meth:`WorkerSession.train`."""

    generation: int
    task: Task
    seed: int


@dataclass(frozen=True)
class Train:
    """Run ``job`` on the training thread, then hand its result to :meth:`WorkerSession.on_trained`."""

    job: TrainJob


@dataclass(frozen=True)
class Vanish:
    """Simulated dropout: close the connection without a word and come back as a new one."""


@dataclass(frozen=True)
class Announce:
    """The broker does not know this connection (it restarted, or expired us): say HELLO again."""


@dataclass(frozen=True)
class Welcomed:
    """The broker accepted our HELLO; its liveness settings (seconds)."""

    heartbeat_interval_s: float
    heartbeat_timeout_s: float


@dataclass(frozen=True)
class Finish:
    """This session is over: the broker said BYE, or (``refused``) it refused this worker for good."""

    reason: str
    refused: bool = False


Action = Send | Train | Vanish | Announce | Welcomed | Finish


@dataclass(frozen=True)
class TrainResult:
    """What a training job produced: UPDATE or ERROR frames, or a secure input to mask. ``hold_s`` is how
    long a simulated slow device holds it back (seconds)."""

    generation: int
    round_id: int
    payload: Frames | SecureInput
    hold_s: float = 0.0
    summary: str = ""  # for the log: what training gave (loss, accuracy, seconds)


@dataclass
class _SecureState:
    """This session's part in one secure round."""

    machine: SecAggWorker
    run: str
    cohort_index: int
    cohort_size: int
    encoded: SecureInput | None = None
    sent_input: bool = False


# ------------------------------------------------------------------------------------------ session


class WorkerSession:
    """The protocol state of one worker identity (no sockets; see the module docstring).

    ``identity``: the Ed25519 key that signs this worker's secure-aggregation keys (its enrolled identity;
    default a fresh one the broker pins at HELLO). ``floor``: its secure-aggregation safety floor.
    ``min_noise``: the least noise multiplier it trains with (0: no floor); a TASK must give at least this
    much through DP-SGD or through distributed DP. ``randomness``: its local randomness (default the OS).
    ``ledger``: the rounds it already contributed to (default: in memory). ``dropout`` and ``stragglers``:
    simulation only.
    """

    def __init__(self, data: ClientData, *, identity: Ed25519PrivateKey | None = None,
                 floor: SafetyFloor | None = None, min_noise: float = 0.0,
                 randomness: LocalRandomness | None = None, ledger: RoundLedger | None = None,
                 dropout: DropoutPlan | None = None, stragglers: Stragglers | None = None) -> None:
        self.data = data
        self.worker_id = data.worker_id
        if identity is None:
            identity, public = generate_identity()
        else:
            public = public_bytes(identity.public_key())
        self.identity, self.identity_hex = identity, public.hex()
        self.floor = floor or SafetyFloor()
        self.min_noise = float(min_noise)
        self.randomness = randomness or LocalRandomness.system(data.worker_id)
        self.ledger = ledger or RoundLedger()
        self.dropout = dropout or DropoutPlan()
        self.stragglers = stragglers or Stragglers()
        #: Bumped on every (re)connection: results of an older connection's task are stale.
        self.generation = 0
        self.done = False
        self.secure: _SecureState | None = None
        self._codecs: dict[str, Any] = {}  # compression spec -> codec (with its error-feedback state)

    # ------------------------------------------------------------------ connection

    def hello(self) -> Hello:
        return Hello(self.worker_id, len(self.data.y), ("train", "secagg"), self.identity_hex)

    def connected(self) -> Hello:
        """A new connection: whatever round was under way is abandoned (the broker counts it as a
        dropout). Returns the HELLO to send first."""
        self.generation += 1
        self.secure = None
        return self.hello()

    # ------------------------------------------------------------------ inbound

    def on_message(self, msg: Any) -> list[Action]:
        """One decoded message from the broker; what to do about it."""
        if isinstance(msg, Welcome):
            log.info("%s: joined the broker (%d training examples)", self.worker_id, len(self.data.y))
            return [Welcomed(msg.heartbeat_interval_s, msg.heartbeat_timeout_s)]
        if isinstance(msg, Task):
            return self._on_task(msg)
        if isinstance(msg, tuple(_SECURE_STAGE)):
            return self._on_secure(msg)
        if isinstance(msg, Bye):
            log.info("%s: broker said goodbye: %s", self.worker_id, msg.reason)
            self.done = True
            self.secure = None
            return [Finish(msg.reason)]
        if isinstance(msg, Error):
            if msg.code == ErrorCode.UNKNOWN_WORKER:
                return [Announce()]
            if msg.code == ErrorCode.NOT_ENROLLED:
                # Revoked (or never enrolled): no retry can change that, only the broker's operator.
                self.done = True
                self.secure = None
                return [Finish(f"the broker refused this worker: {msg.message}", refused=True)]
            log.warning("%s: broker refused a message: %s: %s", self.worker_id, msg.code, msg.message)
            return []
        if not isinstance(msg, Heartbeat):
            log.warning("%s: unexpected %s from the broker", self.worker_id, type(msg).__name__)
        return []

    def _refuse(self, code: ErrorCode, message: str, round_id: int) -> list[Action]:
        log.error("%s: refusing round %d: %s", self.worker_id, round_id, message)
        self.secure = None
        return [Send(Error(code.value, message, round_id).to_frames())]

    def _on_task(self, task: Task) -> list[Action]:
        self.secure = None
        if self.dropout.vanishes("task", task.cohort_index, task.cohort_size):
            return self._vanish("task", task.round_id)
        actions: list[Action] = []
        if "secagg" in task.config:
            run = str(task.config.get("run_id", ""))
            if self.ledger.seen(run, task.round_id):
                return self._refuse(ErrorCode.REPLAYED_ROUND, f"round {task.round_id} of run {run!r} was already "
                                    "run by this worker; it never contributes to a round twice", task.round_id)
            try:
                params = SecAggParams.from_dict(task.config["secagg"])
                skellam_mu_of(task.config)  # refused now, not after training, if out of range
                self._check_noise(task.config)
            except ValueError as exc:
                return self._refuse(ErrorCode.BAD_TASK, str(exc), task.round_id)
            machine = SecAggWorker(self.worker_id, self.identity, task.round_id, params, self.floor)
            self.secure = _SecureState(machine, run, task.cohort_index, task.cohort_size)
            actions.append(Send(machine.advertise().to_frames()))
        seed = self.randomness.training_seed(task_seed(int(task.config.get("seed", 0)), task.round_id,
                                                       self.worker_id))
        actions.append(Train(TrainJob(self.generation, task, seed)))
        return actions

    def _check_noise(self, config: dict[str, Any]) -> None:
        """Refuse a distributed-DP TASK whose noise is below ``min_noise`` at the smallest sum we let be
        unmasked. (A TASK without distributed noise must bring DP-SGD noise instead: the model runner
        checks that, as it parses the training settings.)"""
        if self.min_noise <= 0 or skellam_mu_of(config) is None:
            return
        sigma = distributed_noise_multiplier(config, self.floor)
        if sigma < self.min_noise:
            raise ValueError(f"this worker trains only with noise multiplier >= {self.min_noise:g}; the task's "
                             f"distributed noise gives {sigma:.3g} at the smallest sum it may reveal")

    def _vanish(self, stage: str, round_id: int) -> list[Action]:
        log.info("%s: simulated dropout at %s in round %d", self.worker_id, stage, round_id)
        self.secure = None
        return [Vanish()]

    def _on_secure(self, msg: Any) -> list[Action]:
        sec = self.secure
        if sec is None or msg.round_id != sec.machine.round_id:
            log.info("%s: ignoring %s for a round this worker is not in", self.worker_id, type(msg).__name__)
            return []
        if self.dropout.vanishes(_SECURE_STAGE[type(msg)], sec.cohort_index, sec.cohort_size):
            return self._vanish(_SECURE_STAGE[type(msg)], msg.round_id)
        try:
            if isinstance(msg, Roster):
                return [Send(sec.machine.on_roster(msg).to_frames())]
            if isinstance(msg, Shares):
                sec.machine.on_shares(msg)
                return self._send_masked()
            if isinstance(msg, ConsistencyCheck):
                return [Send(sec.machine.on_consistency(msg).to_frames())]
            answer = sec.machine.on_unmask(msg)
            self.secure = None
            log.info("%s: round %d: secure aggregation done (%d survivors)", self.worker_id, msg.round_id,
                     len(msg.survivors))
            return [Send(answer.to_frames())]
        except (CryptoError, ValueError) as exc:
            # (ValueError: a decrypted share that is not a field element.) Refuse, reveal nothing, and
            # leave the round: the broker counts us as dropped.
            return self._refuse(ErrorCode.SECAGG_REFUSED, str(exc), msg.round_id)

    def _send_masked(self) -> list[Action]:
        """Our masked input, once both the shares and the trained input are there."""
        sec = self.secure
        if sec is None or sec.encoded is None or sec.sent_input or sec.machine.stage != "masked_input":
            return []
        # Recorded (durably) before the input leaves: this (run, round) is never contributed to again.
        self.ledger.record(sec.run, sec.machine.round_id)
        sec.sent_input = True
        encoded, sec.encoded = sec.encoded, None
        # The encoding is ours alone and never used again: mask it where it lies.
        masked = sec.machine.masked_input(encoded.encoded, encoded.local_s, in_place=True)
        return [Send(masked.to_frames())]

    # ------------------------------------------------------------------ training

    def codec(self, spec: str) -> Any:
        """This worker's codec for ``spec``, made once: error feedback's residual lives in it. Its
        quantizer's rounding is salted with the worker id. Raises ``ValueError`` for a bad spec."""
        codec = self._codecs.get(spec)
        if codec is None:
            codec = self._codecs[spec] = make_codec(spec, salt=task_seed(0, 0, self.worker_id))
        return codec

    def train(self, job: TrainJob, fit: FitFunction, wait_s: float = 0.0, slowdown: float = 1.0,
              evaluate: EvaluateFunction | None = None) -> TrainResult:
        """Run one training job (on the training thread; touches only this session's codecs).

        ``wait_s``: how long the job queued behind other clients of this process for the shared trainer
        (reported so the broker can tell simulation queueing from its own overhead). ``slowdown``
        (simulation): this device computes that many times slower; its result is held back accordingly.
        ``evaluate``: scores the TASK's global model on this worker's evaluation split when the TASK asks
        (``evaluate: true``; ``evaluate_only: true`` asks for nothing else), before any training; the
        result travels with the update (inside the masked input under secure aggregation).
        A bad TASK or a failed fit becomes an ERROR, never an exception.
        """
        task = job.task
        wid = self.worker_id

        def error(code: ErrorCode, message: str) -> TrainResult:
            return TrainResult(job.generation, task.round_id, Error(code.value, message, task.round_id).to_frames())

        evaluation: dict[str, float] = {}
        only = task.config.get("evaluate_only") is True
        try:
            if task.config.get("evaluate") is True and evaluate is not None and self.data.evaluates:
                assert self.data.x_eval is not None and self.data.y_eval is not None
                began = time.perf_counter()
                eval_loss, eval_accuracy = evaluate(dict(task.weights), self.data.x_eval, self.data.y_eval,
                                                    task.config)
                # Local compute like training (eval_s): the broker does not count it as its overhead.
                evaluation = {"eval_loss": eval_loss, "eval_accuracy": eval_accuracy,
                              "eval_samples": float(len(self.data.y_eval)), "eval_s": time.perf_counter() - began}
            config = dict(self.stragglers.task_config(task.config, task.cohort_index, task.cohort_size, job.seed,
                                                      wid, task.round_id))
            update: dict[str, np.ndarray]
            if only:
                update, metrics = {}, {"loss": 0.0, "accuracy": 0.0, "train_s": 0.0}
            else:
                update, metrics = fit(dict(task.weights), self.data.x, self.data.y, config, job.seed)
        except (ValueError, TypeError) as exc:
            # A bad TASK (unknown option, wrong model) is the broker's problem: tell it, keep serving.
            log.error("%s: cannot train round %d: %s", wid, task.round_id, exc)
            return error(ErrorCode.BAD_TASK, str(exc))
        except Exception as exc:
            log.exception("%s: training failed in round %d", wid, task.round_id)
            return error(ErrorCode.TRAIN_FAILED, f"{type(exc).__name__}: {exc}")
        metrics = {**metrics, **evaluation, "wait_s": wait_s}
        if diverged := non_finite(update, metrics):  # an ERROR now; the broker would wait out the round
            log.error("%s: training diverged in round %d: %s", wid, task.round_id, diverged)
            return error(ErrorCode.TRAIN_FAILED, f"training diverged: {diverged} (try a smaller learning rate)")
        hold_s = 0.0
        if slowdown > 1.0:
            # A simulated slow device: its compute takes ``slowdown`` times as long, so its answer leaves
            # that much later and it reports the longer compute time.
            hold_s = (slowdown - 1.0) * metrics.get("train_s", 0.0)
            metrics["train_s"] = metrics.get("train_s", 0.0) * slowdown
        try:
            payload = encode_update(task, wid, update, metrics, len(self.data.y), self.codec, self.randomness)
        except (ValueError, TypeError, KeyError) as exc:
            return error(ErrorCode.BAD_TASK, str(exc))
        summary = "" if only else (f"loss {metrics.get('loss', float('nan')):.4f}, accuracy "
                                   f"{metrics.get('accuracy', float('nan')):.3f}, "
                                   f"{metrics.get('train_s', 0.0):.2f} s on {len(self.data.y)} examples")
        if evaluation:
            scored = (f"global model scored loss {evaluation['eval_loss']:.4f}, accuracy "
                      f"{evaluation['eval_accuracy']:.3f} on {int(evaluation['eval_samples'])} held-out examples")
            summary = f"{summary}; {scored}" if summary else scored
        return TrainResult(job.generation, task.round_id, payload, hold_s, summary)

    def on_trained(self, result: TrainResult) -> list[Action]:
        """A training job's result is ready (back on the I/O thread)."""
        if result.generation != self.generation or self.done:
            return []  # the session reconnected since: the broker already counted it as dropped
        if result.summary:
            log.info("%s: round %d trained: %s", self.worker_id, result.round_id, result.summary)
        if isinstance(result.payload, SecureInput):
            sec = self.secure
            if sec is None or sec.machine.round_id != result.round_id:
                return []
            sec.encoded = result.payload
            return self._send_masked()
        return [Send(result.payload)]
