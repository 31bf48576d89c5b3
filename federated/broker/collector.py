"""The one small interface behind which each mode collects a round's answers, and the round in progress.

A :class:`Collector` is fed the cohort's answers (:meth:`~Collector.receive`) and dropouts
(:meth:`~Collector.drop`); :meth:`~Collector.progress` closes whatever is complete or past its deadline
and returns the messages that follow; once :attr:`~Collector.finished`, :meth:`~Collector.result` says who
contributed and what, or why the round fails. :class:`~federated.broker.plain_round.PlainRound` collects
UPDATEs; :class:`~federated.broker.secure_round.SecureCollector` runs secure aggregation bucket by bucket.
The coordinator never asks which one it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from federated.broker.admission import Refusal
from federated.broker.planning import RoundPlan
from federated.protocol import ErrorCode, Update

__all__ = ["ActiveRound", "Collected", "Collector", "DecodedSum", "merged_scores", "no_round", "too_few"]


@dataclass(frozen=True)
class DecodedSum:
    """A secure bucket's (or several buckets') weighted mean update, as one flat float32 vector in
    :func:`~federated.aggregation.vectors.flatten` order, with its summed weight and weighted-mean
    training metrics; and the federated evaluation it carried: the weighted-mean evaluation loss and
    accuracy over the inputs that evaluated (None if none did) and their summed weight."""

    mean: np.ndarray
    weight: float
    train_loss: float
    train_accuracy: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_weight: float = 0.0


def merged_scores(sums: Sequence[DecodedSum]) -> tuple[float | None, float | None, float]:
    """The federated evaluation several secure sums carry together: the weighted-mean evaluation loss and
    accuracy over the inputs that scored (None if none did) and their summed weight."""
    evaluated = sum(d.eval_weight for d in sums)
    if not evaluated:
        return None, None, 0.0
    return (sum((d.eval_loss or 0.0) * d.eval_weight for d in sums) / evaluated,
            sum((d.eval_accuracy or 0.0) * d.eval_weight for d in sums) / evaluated, evaluated)


@dataclass(frozen=True)
class Collected:
    """What a finished round brought in.

    ``survivors`` (sorted) contributed; ``dropped`` did not, each with its reason. ``failure``, if set, is
    why the round fails (too few survivors, an aborted or implausible secure sum); otherwise exactly one
    of ``rows`` (a plain round: the survivors' updates, one float32 row each in ``survivors`` order) and
    ``sums`` (a secure round: each kept bucket's decoded mean) is set. ``updates``: a plain round's
    UPDATE messages by worker (tensors already in ``rows``), for their sample counts and metrics;
    ``local_s``: a secure round's reported local times; ``suspects``: members of a secure round's
    buckets whose sum no honest inputs give.
    """

    survivors: list[str]
    dropped: dict[str, str]
    failure: str | None = None
    updates: Mapping[str, Update] = field(default_factory=dict)
    rows: np.ndarray | None = None
    sums: list[DecodedSum] = field(default_factory=list)
    local_s: Mapping[str, float] | None = None
    suspects: tuple[str, ...] = ()


class Collector(Protocol):
    """One round's collection of answers, whatever the mode."""

    @property
    def deadline(self) -> float:
        """When :meth:`progress` next has something to close (monotonic seconds)."""
        ...

    @property
    def pending(self) -> set[str]:
        """The cohort members the round still waits for."""
        ...

    @property
    def dropped(self) -> Mapping[str, str]:
        """The cohort members dropped so far, with their reasons."""
        ...

    @property
    def finished(self) -> bool:
        """Whether :meth:`result` is ready."""
        ...

    def receive(self, worker_id: str, msg: Any) -> Refusal | None:
        """Take an answer from cohort member ``worker_id``, or say why it is refused (nothing changes)."""
        ...

    def drop(self, worker_id: str, reason: str) -> None:
        """``worker_id`` will not answer (a no-op for a worker outside the round or done with it)."""
        ...

    def progress(self, now: float) -> list[tuple[str, Any]]:
        """Close what is complete or past its deadline; return (worker id, message) to send."""
        ...

    def result(self) -> Collected:
        """Who contributed what, once :attr:`finished`."""
        ...


class ActiveRound:
    """The round in progress: its plan, its collector, and what the coordinator tallies around them
    (start times, bytes each way, the privacy spent including it)."""

    def __init__(self, plan: RoundPlan, collector: Collector, started_wall: float, started: float,
                 epsilon: float | None = None) -> None:
        self.plan = plan
        self.collector = collector
        self.started_wall = started_wall
        self.started = started
        self.epsilon = epsilon  # None: no differential privacy
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def round_id(self) -> int:
        return self.plan.round_id

    @property
    def cohort(self) -> tuple[str, ...]:
        return self.plan.cohort

    @property
    def deadline(self) -> float:
        return self.collector.deadline

    @property
    def pending(self) -> set[str]:
        return self.collector.pending

    @property
    def dropped(self) -> Mapping[str, str]:
        return self.collector.dropped

    @property
    def updates(self) -> Mapping[str, Update]:
        """The UPDATEs accepted so far (none in a secure round: the broker never sees one)."""
        updates: Mapping[str, Update] = getattr(self.collector, "updates", {})
        return updates

    @property
    def secure(self) -> Any:
        """A secure round's :class:`~federated.broker.secure_round.SecureRound` (its buckets), for
        inspection; None in a plain round."""
        return getattr(self.collector, "buckets", None)


def too_few(survivors: list[str], cohort: tuple[str, ...], min_clients: int) -> str | None:
    """Why a round with these survivors fails for ``min_clients`` (None: enough of them)."""
    if len(survivors) >= min_clients:
        return None
    return (f"only {len(survivors)} of {len(cohort)} workers answered; min_clients is {min_clients}; "
            "model unchanged")


def no_round(msg: Any) -> Refusal:
    """The refusal of an answer (an UPDATE or a secure-aggregation message) when no round is running."""
    if isinstance(msg, Update):
        return Refusal(ErrorCode.WRONG_STAGE,
                       f"update for round {msg.round_id}/{msg.stage}; current round is none")
    return Refusal(ErrorCode.WRONG_STAGE,
                   f"{type(msg).__name__} for round {msg.round_id}; current secure round is none")

