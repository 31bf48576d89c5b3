"""What a round will be, decided before any TASK leaves: a frozen :class:`RoundPlan`, built by
:func:`plan_round` from the coordinator's state without changing it.

A plan names the cohort (in TASK order), and for a secure round its buckets and each bucket's
secure-aggregation parameters; the compression seed every worker of the round shares; and the TASK's
settings (training, differential privacy, compression, the model description). The coordinator burns
the round id, charges the privacy ledger and sends the TASKs only once a plan exists, so a round that
cannot be planned (a bucket too small for the secure settings) costs nothing.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from federated.compression import SecurePlan, kept_count, shared_indices
from federated.config import FederatedConfig
from federated.crypto import secagg_input
from federated.crypto.params import SecAggParams
from federated.privacy.ledger import PrivacyLedger
from federated.protocol import Task

__all__ = ["STAGE_TRAIN", "RoundPlan", "assign_buckets", "candidates", "compression_seed", "fewest_to_start",
           "pick_evaluators", "plan_round", "vector_length", "waiting_for"]

#: The stage of a TASK and of the UPDATE that answers it, in plain and secure rounds alike (the
#: secure-aggregation stages that follow are :class:`federated.protocol.Stage`).
STAGE_TRAIN = "train"


def compression_seed(seed: int, round_id: int) -> int:
    """The round's shared seed for random-k compression (every worker keeps the same coordinates)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{round_id}/compression".encode()).digest()[:4], "little")


def vector_length(weights: Mapping[str, np.ndarray], kept: int | None = None) -> int:
    """Coordinates of an encoded secure-aggregation input for a model with ``weights`` (or ``kept`` of
    its parameters, under shared random-k compression)."""
    return secagg_input.vector_length(sum(int(w.size) for w in weights.values()) if kept is None else kept)


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


@dataclass(frozen=True, eq=False)
class RoundPlan:
    """One round as decided at its start.

    ``cohort``: the selected workers in TASK order (a secure round's bucket by bucket); ``task_config``:
    the TASK config every worker gets; ``timeout_s``: the round's deadline in seconds, also sent in the
    TASK; ``buckets`` and ``secure`` (each bucket's :class:`SecAggParams`): empty in a plain round;
    ``compression_seed``: None without compression; ``shared_fraction``: the coordinates each worker of
    a secure round keeps under shared random-k compression (None: all of them).

    Federated evaluation: ``scores`` is the complete round whose model (the one every TASK carries) the
    ``evaluators`` score on their held-out data before training (None: nobody scores it this round);
    ``evaluate_only``: a closing round in which workers only score the final model and send no update.
    """

    round_id: int
    cohort: tuple[str, ...]
    task_config: Mapping[str, Any]
    timeout_s: float
    buckets: tuple[tuple[str, ...], ...] = ()
    secure: tuple[SecAggParams, ...] = ()
    compression_seed: int | None = None
    shared_fraction: float | None = None
    scores: int | None = None
    evaluators: frozenset[str] = frozenset()
    evaluate_only: bool = False

    @property
    def is_secure(self) -> bool:
        """Whether the round runs secure aggregation (its updates arrive masked, bucket by bucket)."""
        return bool(self.buckets)

    @cached_property
    def _secagg(self) -> dict[str, dict[str, Any]]:
        return {w: p.to_dict() for bucket, p in zip(self.buckets, self.secure, strict=True) for w in bucket}

    def task(self, index: int, weights: Mapping[str, np.ndarray]) -> Task:
        """The TASK for the ``index``-th member of the cohort, carrying the global model ``weights``."""
        worker_id = self.cohort[index]
        config = dict(self.task_config)
        if self.is_secure:
            config["secagg"] = self._secagg[worker_id]
        if self.scores is not None:
            config["evaluate"] = worker_id in self.evaluators
        if self.evaluate_only:
            config["evaluate_only"] = True
        return Task(self.round_id, STAGE_TRAIN, config, dict(weights), index, len(self.cohort), self.timeout_s)

    def shared_indices(self, num_params: int) -> np.ndarray | None:
        """The coordinates a secure round's sum covers under shared random-k compression (None: all)."""
        if self.shared_fraction is None or self.compression_seed is None:
            return None
        return shared_indices(num_params, self.shared_fraction, self.compression_seed)


def candidates(config: FederatedConfig, live: Sequence[str], identities: Mapping[str, bytes], *,
               waited: bool) -> list[str] | None:
    """The live workers a round may be drawn from now, or None to keep waiting.

    A round starts with ``clients_per_round`` live workers, or with at least ``min_clients`` once the
    broker has ``waited`` its start timeout. A secure round draws only workers that announced an
    identity key (``identities``: they sign their secure-aggregation keys), and at least 3 of them.
    """
    if len(live) < config.clients_per_round and (len(live) < config.min_clients or not waited):
        return None
    if config.secure.enabled:
        live = [w for w in live if w in identities]
        if len(live) < max(config.min_clients, 3):
            return None
    return list(live)


def waiting_for(config: FederatedConfig, live: Sequence[str], identities: Mapping[str, bytes], *,
                waited: bool) -> str:
    """Why :func:`candidates` keeps waiting, in words for the log: how many workers are live against
    what a round needs now."""
    need = config.clients_per_round if not waited else config.min_clients
    what = (f"{len(live)} live workers; a round needs {config.clients_per_round} "
            f"(or {config.min_clients} after {config.broker.start_timeout_s:g} s)")
    if config.secure.enabled and len(live) >= need:
        keyed = sum(1 for w in live if w in identities)
        what = (f"{keyed} live workers with identity keys; a secure round needs at least "
                f"{max(config.min_clients, 3)}")
    return what


def fewest_to_start(config: FederatedConfig) -> int:
    """The fewest selected workers a round is started with; a smaller sample (only a Poisson sample can be
    one) is not run: no TASK leaves, nothing is released or charged, and a new sample is drawn.

    Central DP with Poisson sampling: 0. DP-FedAvg releases every round it draws, whatever the sample's
    size (an empty one releases noise alone); not running a small sample would reveal its size, which
    amplification by sampling must keep secret. Otherwise ``min_clients`` (a round with fewer would fail
    anyway), and at least 3 under secure aggregation (with 2, each learns the other's input).
    """
    if config.selection == "poisson" and config.privacy.mode == "central":
        return 0
    return max(config.min_clients, 3) if config.secure.enabled else config.min_clients


def pick_evaluators(config: FederatedConfig, cohort: Sequence[str], rng: random.Random) -> frozenset[str]:
    """The members of ``cohort`` asked to score the global model: ``evaluation.fraction`` of them (at
    least one), drawn with ``rng``."""
    count = max(1, math.ceil(config.evaluation.fraction * len(cohort) - 1e-9))
    return frozenset(cohort) if count >= len(cohort) else frozenset(rng.sample(sorted(cohort), count))


def plan_round(config: FederatedConfig, round_id: int, sample: Sequence[str], *,
               weights: Mapping[str, np.ndarray], run_id: str, model_config: Mapping[str, Any],
               privacy: PrivacyLedger | None, secure_codec: SecurePlan | None, scores: int | None = None,
               evaluators: frozenset[str] = frozenset(), evaluate_only: bool = False) -> RoundPlan:
    """The plan of round ``round_id`` for the selected workers ``sample``.

    ``weights``: the global model (its sizes fix the secure inputs' length); ``model_config``: what every
    TASK says about the model; ``privacy``: the run's ledger (read, not charged); ``secure_codec``: what
    the run's compression becomes under secure aggregation. Graph and threshold fit each bucket; the
    fixed-point scale is the one validated at configuration time for the largest possible bucket.
    ``scores``, ``evaluators`` and ``evaluate_only``: federated evaluation (see :class:`RoundPlan`); an
    evaluation-only round carries no update, so its secure inputs hold only the metrics, and it needs
    neither compression nor noise.
    Raises ValueError if a secure bucket is too small for the settings.
    """
    cohort = tuple(sample)
    buckets: list[list[str]] = []
    params: list[SecAggParams] = []
    seed = compression_seed(config.seed, round_id) if config.compression != "none" and not evaluate_only else None
    fraction = secure_codec.fraction if secure_codec is not None and not evaluate_only else None
    if config.secure.enabled:
        size = config.aggregation.bucket_size
        buckets = assign_buckets(sample, size)
        n_max = config.clients_per_round if size is None else min(2 * size - 1, config.clients_per_round)
        num_params = sum(int(w.size) for w in weights.values())
        kept = 0 if evaluate_only else None if fraction is None else kept_count(num_params, fraction)
        length = vector_length(weights, kept)
        ring_bits = secure_codec.ring_bits if secure_codec is not None and not evaluate_only else 32
        params = [config.secure.round_params(len(b), length, n_max=n_max, ring_bits=ring_bits)
                  for b in buckets]
        if privacy is not None and privacy.mode == "distributed" and not evaluate_only:
            # Unweighted, clipped to the DP clip, at the scale whose sum leaves room for the noise.
            params = [replace(p, clip=privacy.clip, weight_cap=1, frac_bits=privacy.frac_bits)
                      for p in params]
        cohort = tuple(w for bucket in buckets for w in bucket)
    train = config.training.to_task_config()
    extra: dict[str, Any] = {}
    if privacy is not None and not evaluate_only:
        train.update(privacy.train_settings())
        if privacy.mode == "distributed":
            extra = {"privacy": {"skellam_mu": privacy.skellam_mu}}
    task_config = {**model_config, "train": train, "seed": config.seed, "run_id": run_id, **extra}
    if seed is not None:
        task_config.update(compression=config.compression, compression_seed=seed)
    return RoundPlan(round_id, cohort, task_config, config.broker.round_timeout_s,
                     buckets=tuple(tuple(b) for b in buckets), secure=tuple(params), compression_seed=seed,
                     shared_fraction=fraction if config.secure.enabled else None, scores=scores,
                     evaluators=evaluators, evaluate_only=evaluate_only)
