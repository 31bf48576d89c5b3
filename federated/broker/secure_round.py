"""Glue between the coordinator and the secure-aggregation state machines (broker side): buckets,
their deadlines, and decoding the unmasked sums.

The layout of an encoded input and of their sum is :mod:`federated.crypto.secagg_input`'s (the worker
encodes with the same module): the model update, then the weighted loss and accuracy, then the weight.
The decoded sum divided by the summed weight is the weighted FedAvg of the survivors' clipped updates.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from federated.aggregation.vectors import unflatten
from federated.crypto import secagg_input
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult
from federated.crypto.secagg_input import EXTRA_COORDINATES, split_sum, update_length
from federated.privacy.skellam import noise_norm_bound
from federated.protocol.codes import Stage

__all__ = ["EXTRA_COORDINATES", "NOISE_TAIL", "DecodedSum", "SecureRound", "assign_buckets", "combine",
           "decode_round", "vector_length"]

def vector_length(weights: Mapping[str, np.ndarray], kept: int | None = None) -> int:
    """Coordinates of an encoded input for a model with ``weights`` (or ``kept`` of its parameters, under
    shared random-k compression)."""
    return secagg_input.vector_length(sum(int(w.size) for w in weights.values()) if kept is None else kept)


@dataclass(frozen=True)
class DecodedSum:
    """The weighted mean update (per tensor) and weighted-mean training metrics of the survivors."""

    mean_update: dict[str, np.ndarray]
    weight: float
    train_loss: float
    train_accuracy: float


#: The chance that :func:`decode_round` refuses an honest distributed-DP sum for its noise alone.
NOISE_TAIL = 1e-9


def decode_round(total: np.ndarray, params: SecAggParams, reference: Mapping[str, np.ndarray],
                 indices: np.ndarray | None = None, *, inputs: int, noise_mu: float = 0.0) -> DecodedSum:
    """Check the unmasked uint32 sum of ``inputs`` encodings against every bound an honest sum meets, and
    only then turn it into the mean update shaped like ``reference``.

    The broker sees only the sum, so a member may put anything into its own input; these bounds keep
    what it can do to the sum within what honest inputs could do. In units of 2^-frac_bits, with ``W``
    the summed weight, ``n = inputs`` and ``d`` the update's coordinates:

    - weight: ``W`` is a whole number in ``[n, n * weight_cap]`` (each input weighs an integer in
      ``[1, weight_cap]``, encoded exactly), so exactly ``n`` when ``weight_cap`` is 1 (distributed DP,
      16-bit sums). This stops a member from shrinking the divisor to one unit or claiming many times
      the cap to make the mean its own vector;
    - metrics: the weighted loss in ``[0, W * max(clip, 1)]`` and the weighted accuracy in ``[0, W]``
      (each worker's loss is capped at ``max(clip, 1)``, its accuracy is in [0, 1]), plus ``n`` units of
      stochastic rounding each;
    - norm: the update sum within ``W * clip`` (each input is clipped to ``clip``, then weighted), plus
      ``sqrt(d) * n`` units of rounding, plus under distributed DP the noise tail
      :func:`~federated.privacy.skellam.noise_norm_bound` for Skellam noise of per-side mean
      ``n * noise_mu`` (``noise_mu`` is each worker's share, so the sum's noise has variance
      ``2 * noise_mu * n`` per coordinate); an honest sum exceeds it with probability at most
      :data:`NOISE_TAIL` = 1e-9.

    What stays possible: inside these bounds a member still chooses its own input (a weight up to
    ``n * weight_cap`` less the others', a direction), which only range proofs on each input could stop;
    the mean applied never leaves the clip ball (widened by the noise tail).

    With shared random-k compression, the sum covers only the coordinates ``indices`` (the same on every
    worker of the round); the others are zero in the mean update.
    Raises ``ValueError`` naming the first bound the sum breaks (or a bad ``inputs``).
    """
    if isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 1:
        raise ValueError(f"inputs must be an integer >= 1, got {inputs!r}")
    parts = split_sum(total, params)
    weight = parts.weight
    unit = 2.0**-params.frac_bits  # one integer unit, decoded (scaling by a power of two is exact)
    if not (weight.is_integer() and inputs <= weight <= inputs * params.weight_cap):
        expected = (f"exactly {inputs}" if params.weight_cap == 1
                    else f"a whole number in [{inputs}, {inputs * params.weight_cap}]")
        raise ValueError(f"its summed weight is {weight:.10g}, not {expected} for {inputs} inputs")
    loss, accuracy = parts.weighted_loss, parts.weighted_accuracy
    # Exact rationals: a float product could round a sum just past a bound back inside it.
    rounding = inputs * Fraction(unit)
    loss_cap = Fraction(weight) * max(Fraction(params.clip), Fraction(1)) + rounding
    if not 0 <= Fraction(loss) <= loss_cap:
        raise ValueError(f"its weighted loss {loss:.6g} is outside [0, {float(loss_cap):.6g}]")
    accuracy_cap = Fraction(weight) + rounding
    if not 0 <= Fraction(accuracy) <= accuracy_cap:
        raise ValueError(f"its weighted accuracy {accuracy:.6g} is outside [0, {float(accuracy_cap):.6g}]")
    update = parts.update
    dims = update_length(params)
    noise = noise_norm_bound(inputs * noise_mu, dims, NOISE_TAIL) if noise_mu > 0 else 0.0
    bound = weight * params.clip * (1 + 1e-9) + (math.sqrt(dims) * inputs + noise) * unit
    norm = _norm(update)
    if not norm <= bound:
        raise ValueError(f"its mean is beyond the clip bound {params.clip:.4g}: norm {norm / weight:.6g} > "
                         f"{bound / weight:.6g} (the clip, rounding{' and the noise tail' if noise else ''})")
    mean = update / weight
    if indices is not None:
        full = np.zeros(sum(int(r.size) for r in reference.values()), dtype=np.float64)
        full[indices] = mean
        mean = full
    return DecodedSum(unflatten(mean, reference), weight, loss / weight, accuracy / weight)


def _norm(vector: np.ndarray) -> float:
    """The L2 norm of a float64 vector: scaled by its largest magnitude (no overflow), and with einsum,
    not np.dot, whose OpenBLAS threads spin and take the cores from training (see fixedpoint)."""
    largest = float(np.abs(vector).max(initial=0.0))
    if largest == 0.0:
        return 0.0
    scaled = vector / largest
    return largest * math.sqrt(float(np.einsum("i,i->", scaled, scaled)))


_ACTIVE = tuple(stage.value for stage in Stage if stage.active)


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
    mean = {k: (sum((d.mean_update[k].astype(np.float64) * d.weight for d in decoded),
                    np.zeros(decoded[0].mean_update[k].shape)) / total).astype(np.float32)
            for k in names}
    return DecodedSum(mean, total, sum(d.train_loss * d.weight for d in decoded) / total,
                      sum(d.train_accuracy * d.weight for d in decoded) / total)
