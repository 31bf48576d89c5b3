"""What the store keeps about a finished round: :func:`build_record` makes the
:class:`~federated.broker.store.RoundRecord` from what the round planned, collected and produced, and
nothing else (no clock, no store).

Timing (DESIGN §3): a participant's local time is its compute plus, in simulation, the time it queued for
a CPU shared with other virtual clients; neither is orchestration overhead, so ``overhead_s`` is the
round's duration less the slowest survivor's local time. A secure round knows only the weighted sums of
the training metrics and each survivor's reported time.
"""

from __future__ import annotations

from collections.abc import Sequence

from federated.broker.collector import Collected, DecodedSum
from federated.broker.store import RoundRecord

__all__ = ["build_record"]


def build_record(*, round_id: int, status: str, started_at: float, duration_s: float, cohort: Sequence[str],
                 collected: Collected, bytes_up: int, bytes_down: int, epsilon: float | None,
                 decoded: DecodedSum | None = None, loss: float | None = None, accuracy: float | None = None,
                 error: str | None = None, suspects: tuple[str, ...] = ()) -> RoundRecord:
    """The record of round ``round_id`` (``status`` "complete" or "failed").

    ``started_at``: unix seconds; ``duration_s``: wall time from the first TASK to now; ``collected``: its
    survivors, dropouts and (plain rounds) updates; ``decoded``: a complete secure round's merged sum;
    ``loss``/``accuracy``: the new model's held-out evaluation; ``error``: why a round failed;
    ``suspects``: workers detection or a secure sum's bounds suspect.
    """
    survivors = collected.survivors
    updates = [collected.updates[w] for w in survivors if w in collected.updates]
    samples = sum(u.num_samples for u in updates)

    def mean_metric(key: str) -> float | None:
        if decoded is not None:  # secure round: only the weighted sums are known
            return decoded.train_loss if key == "loss" else decoded.train_accuracy
        vals = [(u.metrics[key], u.num_samples) for u in updates if key in u.metrics]
        return sum(v * n for v, n in vals) / sum(n for _, n in vals) if vals else None

    times = [u.metrics.get("train_s", 0.0) + u.metrics.get("wait_s", 0.0) for u in updates]
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
