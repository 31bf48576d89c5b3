"""Glue between the coordinator and the secure-aggregation state machines (broker side): buckets,
their deadlines, and decoding the unmasked sums.

Layout of an encoded input (shared with :mod:`federated.worker.secure`): the model update flattened in
sorted tensor-name order, then ``weight * loss``, ``weight * accuracy`` (so the broker learns only their
weighted sums, never one worker's), then the weight itself. The decoded sum divided by the summed weight
is the weighted FedAvg of the survivors' clipped updates.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.aggregation.vectors import unflatten
from federated.crypto.fixedpoint import decode_sum
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult

__all__ = ["EXTRA_COORDINATES", "DecodedSum", "SecureRound", "assign_buckets", "combine", "decode_round",
           "vector_length", "within_clip"]

#: Coordinates after the model update: weight * loss, weight * accuracy, weight.
EXTRA_COORDINATES = 3


def vector_length(weights: Mapping[str, np.ndarray], kept: int | None = None) -> int:
    """Coordinates of an encoded input for a model with ``weights`` (or ``kept`` of its parameters, under
    shared random-k compression)."""
    return (sum(int(w.size) for w in weights.values()) if kept is None else kept) + EXTRA_COORDINATES


@dataclass(frozen=True)
class DecodedSum:
    """The weighted mean update (per tensor) and weighted-mean training metrics of the survivors."""

    mean_update: dict[str, np.ndarray]
    weight: float
    train_loss: float
    train_accuracy: float


def decode_round(total: np.ndarray, params: SecAggParams, reference: Mapping[str, np.ndarray],
                 indices: np.ndarray | None = None) -> DecodedSum:
    """Turn the unmasked uint32 sum into the mean update shaped like ``reference``.

    With shared random-k compression, the sum covers only the coordinates ``indices`` (the same on every
    worker of the round); the others are zero in the mean update.
    Raises ``ValueError`` if the summed weight is not positive (no real input was summed).
    """
    data, weight = decode_sum(total, params.frac_bits, params.ring_bits)
    if not weight > 0:
        raise ValueError(f"the secure sum has weight {weight}; nothing to average")
    mean = data[:-2] / weight
    if indices is not None:
        full = np.zeros(sum(int(r.size) for r in reference.values()), dtype=np.float64)
        full[indices] = mean
        mean = full
    return DecodedSum(unflatten(mean, reference), weight, float(data[-2] / weight), float(data[-1] / weight))


def within_clip(decoded: DecodedSum, params: SecAggParams, survivors: int) -> bool:
    """Whether a bucket's mean update could have come from honest inputs: each honest input is L2-clipped
    to ``params.clip`` and weighted, so the weighted mean has norm at most ``clip``, plus the fixed-point
    rounding (under one unit of 2^-frac_bits per coordinate and input). A larger mean proves that some
    member sent an input outside the bound (an encoder that skipped clipping). Not meaningful with
    distributed DP, whose noise is added on purpose."""
    dims = params.vector_length - EXTRA_COORDINATES
    slack = math.sqrt(dims) * survivors * 2.0**-params.frac_bits / decoded.weight
    norm = math.sqrt(sum(float(np.dot(v.ravel(), v.ravel())) for v in decoded.mean_update.values()))
    return norm <= params.clip * (1 + 1e-9) + slack


_ACTIVE = ("advertise", "share_keys", "masked_input", "unmask")


def assign_buckets(cohort: Sequence[str], bucket_size: int | None) -> list[list[str]]:
    """Split ``cohort`` into buckets of ``bucket_size`` (a remainder joins the last bucket), shuffled with
    the OS CSPRNG so that no worker can predict or choose its bucket-mates. No size: one bucket."""
    members = list(cohort)
    if bucket_size is None or bucket_size >= len(members):
        return [sorted(members)]
    secrets.SystemRandom().shuffle(members)
    count = len(members) // bucket_size
    buckets = [members[i * bucket_size:(i + 1) * bucket_size] for i in range(count)]
    buckets[-1].extend(members[count * bucket_size:])
    return [sorted(b) for b in buckets]


class SecureRound:
    """One round's secure aggregation: one :class:`SecAggBroker` per bucket, each with its own stage
    deadline. Without bucketing there is a single bucket holding the whole cohort.

    ``stage_wait(stage)`` gives the seconds a bucket waits in ``stage``.
    """

    def __init__(self, round_id: int, buckets: Sequence[Sequence[str]], params: Sequence[SecAggParams],
                 identities: Mapping[str, bytes], now: float, stage_wait: Callable[[str], float]) -> None:
        self.machines = [SecAggBroker(round_id, b, p, identities) for b, p in zip(buckets, params, strict=True)]
        self.bucket_of = {w: i for i, b in enumerate(buckets) for w in b}
        self.stage_wait = stage_wait
        self.deadlines = [now + stage_wait("advertise") for _ in self.machines]

    @property
    def deadline(self) -> float:
        active = [d for d, m in zip(self.deadlines, self.machines, strict=True) if m.stage in _ACTIVE]
        return min(active, default=math.inf)

    @property
    def finished(self) -> bool:
        return all(m.stage not in _ACTIVE for m in self.machines)

    def machine_of(self, worker_id: str) -> SecAggBroker:
        return self.machines[self.bucket_of[worker_id]]

    def drop(self, worker_id: str, reason: str) -> None:
        if worker_id in self.bucket_of:
            self.machine_of(worker_id).drop(worker_id, reason)

    def is_pending(self, worker_id: str) -> bool:
        return worker_id in self.bucket_of and worker_id in self.machine_of(worker_id).pending

    def progress(self, now: float) -> list[tuple[str, Any]]:
        """Close every bucket stage that is complete or past its deadline; return messages to send."""
        out: list[tuple[str, Any]] = []
        for i, machine in enumerate(self.machines):
            while machine.stage in _ACTIVE and (machine.ready or now >= self.deadlines[i]):
                out.extend(machine.advance())
                self.deadlines[i] = now + self.stage_wait(machine.stage)
        return out

    def results(self) -> list[tuple[SecAggBroker, SecAggResult]]:
        """The buckets that finished, with their sums."""
        return [(m, m.result) for m in self.machines if m.stage == "done" and m.result is not None]

    def errors(self) -> list[str]:
        return [m.error for m in self.machines if m.stage == "aborted"]

    def dropped(self) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for machine in self.machines:
            reasons.update(machine.dropped)
        return reasons


def combine(decoded: Sequence[DecodedSum]) -> DecodedSum:
    """Merge bucket results into one weighted mean (used when the rule is the plain mean)."""
    total = sum(d.weight for d in decoded)
    names = decoded[0].mean_update.keys()
    mean = {k: (sum(d.mean_update[k].astype(np.float64) * d.weight for d in decoded) / total).astype(np.float32)
            for k in names}
    return DecodedSum(mean, total, sum(d.train_loss * d.weight for d in decoded) / total,
                      sum(d.train_accuracy * d.weight for d in decoded) / total)
