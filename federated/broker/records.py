"""What the store keeps about a finished round: :func:`build_record` makes the
:class:`~federated.broker.store.RoundRecord` from what the round planned, collected and produced, and
nothing else (no clock, no store).

Timing (DESIGN §3): a participant's local time is its compute plus, in simulation, the time it queued for
a CPU shared with other virtual clients; neither is orchestration overhead, so ``overhead_s`` is the
round's duration less the slowest survivor's local time. A secure round knows only the weighted sums of
the training metrics and each survivor's reported time.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from federated.broker.collector import Collected, DecodedSum, merged_scores
from federated.broker.planning import RoundPlan
from federated.broker.store import RoundRecord
from federated.protocol import local_seconds

__all__ = ["FederatedScore", "build_record", "federated_score"]

log = logging.getLogger("federated.broker")


@dataclass(frozen=True)
class FederatedScore:
    """The federated evaluation of round ``round``'s model: the weighted-mean loss and accuracy on the
    held-out data of the workers that scored it, and what the record keeps beside them (``metrics``).

    In a plain round each score is weighted by its held-out examples, and the metrics say how many
    workers scored (``fed_workers``), on how many examples (``fed_samples``), and the spread of their
    accuracies (``fed_accuracy_min``/``_median``/``_max``). In a secure round the broker sees only the
    masked sums: each score is weighted by its worker's FedAvg weight (its capped training-sample
    count), ``fed_weight`` is their sum, and there is no spread, because no worker's score is seen alone.
    """

    round: int
    loss: float
    accuracy: float
    metrics: dict[str, float]


def federated_score(plan: RoundPlan, collected: Collected) -> FederatedScore | None:
    """What a round's answers say about the model it scored (``plan.scores``), or None if nobody scored
    it. A plain answer's scores count only from a worker that was asked and whose figures are possible
    (accuracy in [0, 1], loss >= 0, a whole number of examples >= 1); others are left out and logged."""
    if plan.scores is None:
        return None
    if collected.sums:
        loss, accuracy, weight = merged_scores(collected.sums)
        if loss is None or accuracy is None:
            return None
        return FederatedScore(plan.scores, loss, accuracy, {"fed_weight": weight})
    scored: list[tuple[float, float, float]] = []
    for wid, update in sorted(collected.updates.items()):
        m = update.metrics
        if wid not in plan.evaluators or "eval_accuracy" not in m:
            continue
        loss, accuracy, samples = m.get("eval_loss", -1.0), m["eval_accuracy"], m.get("eval_samples", 0.0)
        if not (0.0 <= accuracy <= 1.0 and loss >= 0.0 and samples >= 1 and float(samples).is_integer()
                and math.isfinite(loss)):
            log.info("round %d: left out %s's evaluation (loss %r, accuracy %r, %r examples)", plan.round_id,
                     wid, loss, accuracy, samples)
            continue
        scored.append((loss, accuracy, samples))
    if not scored:
        return None
    total = sum(n for _, _, n in scored)
    accuracies = [a for _, a, _ in scored]
    return FederatedScore(plan.scores, sum(lo * n for lo, _, n in scored) / total,
                          sum(a * n for _, a, n in scored) / total,
                          {"fed_workers": float(len(scored)), "fed_samples": total,
                           "fed_accuracy_min": min(accuracies), "fed_accuracy_median": statistics.median(accuracies),
                           "fed_accuracy_max": max(accuracies)})


def build_record(*, round_id: int, status: str, started_at: float, duration_s: float, cohort: Sequence[str],
                 collected: Collected, bytes_up: int, bytes_down: int, epsilon: float | None,
                 decoded: DecodedSum | None = None, loss: float | None = None, accuracy: float | None = None,
                 error: str | None = None, suspects: tuple[str, ...] = (),
                 train_metrics: bool = True) -> RoundRecord:
    """The record of round ``round_id`` (``status`` "complete" or "failed").

    ``started_at``: unix seconds; ``duration_s``: wall time from the first TASK to now; ``collected``: its
    survivors, dropouts and (plain rounds) updates; ``decoded``: a complete secure round's merged sum;
    ``loss``/``accuracy``: the new model's held-out evaluation; ``error``: why a round failed;
    ``suspects``: workers detection or a secure sum's bounds suspect; ``train_metrics`` False when a
    secure round's sums carry no training metrics (distributed DP: the workers send zeros), so the record
    says None rather than 0.
    """
    survivors = collected.survivors
    updates = [collected.updates[w] for w in survivors if w in collected.updates]
    samples = sum(u.num_samples for u in updates)

    def mean_metric(key: str) -> float | None:
        if decoded is not None:  # secure round: only the weighted sums are known
            if not train_metrics:
                return None
            return decoded.train_loss if key == "loss" else decoded.train_accuracy
        vals = [(u.metrics[key], u.num_samples) for u in updates if key in u.metrics]
        return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

    times = [local_seconds(u.metrics) for u in updates]
    local_s = collected.local_s
    if decoded is not None and local_s is not None:  # a complete secure round
        times = [local_s[w] for w in survivors if w in local_s]
        samples = round(decoded.weight)
    slowest = max(times, default=None)
    reasons = list(collected.dropped.values())
    return RoundRecord(
        round=round_id, status=status, started_at=started_at, duration_s=duration_s,
        overhead_s=None if slowest is None else max(0.0, duration_s - slowest),
        participants=tuple(cohort), survivors=tuple(survivors), dropped=tuple(sorted(collected.dropped)),
        num_samples=samples, bytes_up=bytes_up, bytes_down=bytes_down,
        accuracy=accuracy, loss=loss, train_loss=mean_metric("loss"),
        train_accuracy=mean_metric("accuracy"), epsilon=epsilon, error=error, suspects=suspects,
        metrics={"max_local_s": slowest or 0.0,
                 **{f"dropped_{r}": float(reasons.count(r)) for r in set(reasons)}},
    )
