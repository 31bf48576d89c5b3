"""A secure round's collector: secure aggregation bucket by bucket, and decoding the unmasked sums.

:class:`SecureRound` is the bucket machinery: one :class:`~federated.crypto.secagg_broker.SecAggBroker`
per bucket, each with its own stage deadline. :class:`SecureCollector` puts it behind the coordinator's
:class:`~federated.broker.collector.Collector` interface and, once every bucket is done or aborted,
decodes each bucket's sum with :func:`decode_round`, keeping only sums that honest inputs could give.

The layout of an encoded input and of their sum is :mod:`federated.crypto.secagg_input`'s (the worker
encodes with the same module): the model update, then the weighted training and evaluation metrics, then
the weight.
The decoded sum divided by the summed weight is the weighted FedAvg of the survivors' clipped updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from federated.broker.admission import Refusal
from federated.broker.collector import Collected, DecodedSum, merged_scores, too_few
from federated.broker.planning import RoundPlan
from federated.config import FederatedConfig
from federated.crypto.errors import CryptoError
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult
from federated.crypto.secagg_input import split_sum, update_length
from federated.privacy.ledger import PrivacyLedger
from federated.privacy.skellam import noise_norm_bound
from federated.protocol import (
    AdvertiseKeys,
    ConsistencySignature,
    ErrorCode,
    MaskedInput,
    ShareKeys,
    Stage,
    UnmaskShares,
    Update,
)

__all__ = ["NOISE_TAIL", "SECAGG_INBOUND", "DecodedSum", "SecureCollector", "SecureRound", "combine",
           "decode_round"]

log = logging.getLogger("federated.broker")

#: The messages workers send during secure aggregation.
SECAGG_INBOUND = (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)

#: The chance that :func:`decode_round` refuses an honest distributed-DP sum for its noise alone.
NOISE_TAIL = 1e-9


def decode_round(total: np.ndarray, params: SecAggParams, reference: Mapping[str, np.ndarray],
                 indices: np.ndarray | None = None, *, inputs: int, noise_mu: float = 0.0) -> DecodedSum:
    """Check the unmasked uint32 sum of ``inputs`` encodings against every bound an honest sum meets, and
    only then turn it into the mean update over ``reference``'s parameters (a flat float32 vector).

    The broker sees only the sum, so a member may put anything into its own input; these bounds keep
    what it can do to the sum within what honest inputs could do. In units of 2^-frac_bits, with ``W``
    the summed weight, ``n = inputs`` and ``d`` the update's coordinates:

    - weight: ``W`` is a whole number in ``[n, n * weight_cap]`` (each input weighs an integer in
      ``[1, weight_cap]``, encoded exactly), so exactly ``n`` when ``weight_cap`` is 1 (distributed DP,
      16-bit sums). This stops a member from shrinking the divisor to one unit or claiming many times
      the cap to make the mean its own vector;
    - metrics: the weighted loss in ``[0, W * max(clip, 1)]`` and the weighted accuracy in ``[0, W]``
      (each worker's loss is capped at ``max(clip, 1)``, its accuracy is in [0, 1]), plus ``n`` units of
      stochastic rounding each; the evaluated weight ``E`` a whole number in ``[0, W]`` (each input's is
      0 or its weight, exactly), and the weighted evaluation loss and accuracy in ``[0, E * max(clip, 1)]``
      and ``[0, E]`` with the same rounding allowance;
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
    evaluated = parts.eval_weight
    if not (evaluated.is_integer() and 0 <= evaluated <= weight):
        raise ValueError(f"its evaluated weight {evaluated:.10g} is not a whole number in [0, {weight:.10g}]")
    eval_loss, eval_accuracy = parts.weighted_eval_loss, parts.weighted_eval_accuracy
    if not 0 <= Fraction(eval_loss) <= Fraction(evaluated) * max(Fraction(params.clip), Fraction(1)) + rounding:
        raise ValueError(f"its weighted evaluation loss {eval_loss:.6g} is outside what {evaluated:.10g} "
                         "evaluated weight allows")
    if not 0 <= Fraction(eval_accuracy) <= Fraction(evaluated) + rounding:
        raise ValueError(f"its weighted evaluation accuracy {eval_accuracy:.6g} is outside [0, {evaluated:.10g}]")
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
    return DecodedSum(np.asarray(mean, np.float32), weight, loss / weight, accuracy / weight,
                      eval_loss / evaluated if evaluated else None,
                      eval_accuracy / evaluated if evaluated else None, evaluated)


def _norm(vector: np.ndarray) -> float:
    """The L2 norm of a float64 vector: scaled by its largest magnitude (no overflow), and with einsum,
    not np.dot, whose OpenBLAS threads spin and take the cores from training (see fixedpoint)."""
    largest = float(np.abs(vector).max(initial=0.0))
    if largest == 0.0:
        return 0.0
    scaled = vector / largest
    return largest * math.sqrt(float(np.einsum("i,i->", scaled, scaled)))


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
        self.deadlines = [now + stage_wait(Stage.ADVERTISE) for _ in self.machines]

    @property
    def deadline(self) -> float:
        active = [d for d, m in zip(self.deadlines, self.machines, strict=True) if Stage(m.stage).active]
        return min(active, default=math.inf)

    @property
    def finished(self) -> bool:
        return not any(Stage(m.stage).active for m in self.machines)

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
            while Stage(machine.stage).active and (machine.ready or now >= self.deadlines[i]):
                out.extend(machine.advance())
                self.deadlines[i] = now + self.stage_wait(machine.stage)
        return out

    def results(self) -> list[tuple[SecAggBroker, SecAggResult]]:
        """The buckets that finished, with their sums."""
        return [(m, m.result) for m in self.machines if m.stage == Stage.DONE and m.result is not None]

    def errors(self) -> list[str]:
        return [m.error for m in self.machines if m.stage == Stage.ABORTED]

    def dropped(self) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for machine in self.machines:
            reasons.update(machine.dropped)
        return reasons


def combine(decoded: Sequence[DecodedSum]) -> DecodedSum:
    """Merge bucket results into one weighted mean (the mean rule across buckets)."""
    total = sum(d.weight for d in decoded)
    # float64 products of the float32 means, summed in bucket order from zero, then float32 again.
    mean = (sum((d.mean.astype(np.float64) * d.weight for d in decoded), np.zeros(decoded[0].mean.shape))
            / total).astype(np.float32)
    return DecodedSum(mean, total, sum(d.train_loss * d.weight for d in decoded) / total,
                      sum(d.train_accuracy * d.weight for d in decoded) / total, *merged_scores(decoded))


class SecureCollector:
    """A secure round behind the :class:`~federated.broker.collector.Collector` interface.

    ``config``: the run's settings (the masked-input stage waits ``broker.round_timeout_s``, as workers
    train first; the others ``secure.stage_timeout_s``; ``min_clients``: the fewest survivors a round may
    aggregate); ``identities``: the pinned identity keys that verify the workers' signed advertisements;
    ``reference``: the global model (its sizes); ``privacy``: the run's ledger (under distributed DP, the
    sums carry each worker's Skellam share, which the norm bound allows for).
    """

    def __init__(self, plan: RoundPlan, config: FederatedConfig, identities: Mapping[str, bytes],
                 now: float, *, reference: Mapping[str, np.ndarray], privacy: PrivacyLedger | None) -> None:
        self.plan = plan
        masked_wait, stage_wait = config.broker.round_timeout_s, config.secure.stage_timeout_s
        self.buckets = SecureRound(plan.round_id, plan.buckets, plan.secure, identities, now,
                                   lambda stage: masked_wait if stage == Stage.MASKED_INPUT else stage_wait)
        self.reference = reference
        distributed = privacy is not None and privacy.mode == "distributed"
        self.noise_mu = privacy.skellam_mu if distributed and privacy is not None else 0.0
        self.min_clients = config.min_clients

    @property
    def deadline(self) -> float:
        return self.buckets.deadline

    @property
    def pending(self) -> set[str]:
        return {w for w in self.plan.cohort if self.buckets.is_pending(w)}

    @property
    def dropped(self) -> dict[str, str]:
        return self.buckets.dropped()

    @property
    def finished(self) -> bool:
        return self.buckets.finished

    def receive(self, worker_id: str, msg: Any) -> Refusal | None:
        if isinstance(msg, Update):
            return Refusal(ErrorCode.WRONG_STAGE, "this is a secure round: plain updates are not accepted")
        if msg.round_id != self.plan.round_id or worker_id not in self.buckets.bucket_of:
            return Refusal(ErrorCode.WRONG_STAGE, f"{type(msg).__name__} for round {msg.round_id}; "
                                                  f"current secure round is {self.plan.round_id}")
        try:
            self.buckets.machine_of(worker_id).receive(worker_id, msg)
        except CryptoError as exc:
            return Refusal(ErrorCode.SECAGG, str(exc))
        return None

    def drop(self, worker_id: str, reason: str) -> None:
        if self.buckets.is_pending(worker_id):
            log.info("round %d: worker %s dropped at %s (%s)", self.plan.round_id, worker_id,
                     self.buckets.machine_of(worker_id).stage, reason)
        self.buckets.drop(worker_id, reason)

    def progress(self, now: float) -> list[tuple[str, Any]]:
        """Close the bucket stages that are complete or past their deadline."""
        out = self.buckets.progress(now)
        if out:
            stages = sorted({m.stage for m in self.buckets.machines})
            log.info("round %d: secure aggregation at %s", self.plan.round_id, "/".join(stages))
        return out

    def result(self) -> Collected:
        """The survivors of the finished buckets and their decoded sums; a failure if every bucket
        aborted, too few survived, or no bucket's sum is one honest inputs could give."""
        results = self.buckets.results()
        survivors = sorted(w for _, result in results for w in result.survivors)
        reasons = self.buckets.dropped()
        dropped = {w: reasons.get(w, "bucket aborted") for w in self.plan.cohort if w not in survivors}
        if not results:
            error = "; ".join(sorted(set(self.buckets.errors()))) or "no bucket finished"
            return Collected([], dropped, failure=f"secure aggregation aborted: {error}; model unchanged")
        failure = too_few(survivors, self.plan.cohort, self.min_clients)
        if failure is not None:
            return Collected(survivors, dropped, failure=failure)
        kept, sums, rejected, why = self._plausible(results)
        for wid in rejected:
            dropped[wid] = "its bucket's sum was not one honest inputs could give"
        survivors = [w for w in survivors if w not in rejected]
        if not kept:
            return Collected(survivors, dropped, failure=f"no secure sum could come from honest inputs "
                                                         f"({'; '.join(why)}); model unchanged")
        local_s = {w: t for _, result in kept for w, t in result.train_s.items()}
        return Collected(survivors, dropped, sums=sums, local_s=local_s, suspects=rejected)

    def _plausible(self, results: list[tuple[SecAggBroker, SecAggResult]]
                   ) -> tuple[list[tuple[SecAggBroker, SecAggResult]], list[DecodedSum], tuple[str, ...], list[str]]:
        """Decode each bucket's sum and keep those that honest inputs could have produced, in every mode:
        summed weight, weighted metrics and mean norm within their bounds (:func:`decode_round`; under
        distributed DP the norm bound includes a 1e-9 tail of the workers' Skellam noise). Returns the
        kept buckets, their decoded sums, the members of the others (suspects: one of them sent an input
        no honest encoder makes), and why each of those was left out."""
        round_id = self.plan.round_id
        indices = self.plan.shared_indices(sum(int(w.size) for w in self.reference.values()))
        kept: list[tuple[SecAggBroker, SecAggResult]] = []
        decoded: list[DecodedSum] = []
        rejected: list[str] = []
        why: list[str] = []
        for machine, result in results:
            try:
                d = decode_round(result.total, machine.params, self.reference, indices,
                                 inputs=len(result.survivors), noise_mu=self.noise_mu)
            except ValueError as exc:
                log.warning("round %d: bucket of %s left out, a member sent an input no honest encoder makes: %s",
                            round_id, ", ".join(result.survivors), exc)
                rejected.extend(result.survivors)
                why.append(str(exc))
                continue
            kept.append((machine, result))
            decoded.append(d)
        return kept, decoded, tuple(sorted(rejected)), why
