"""From what a round collected to the next global model, on flat vectors.

Every mode arrives here as flat float32 vectors in :func:`~federated.aggregation.vectors.flatten` order: a
plain round's updates as the rows of one matrix, a secure round's buckets as decoded means. On them:

- central differential privacy (:func:`federated.privacy.central.central_mean`): clip, sum, noise,
  divide by the planned cohort (its expected size under Poisson sampling); no weights, no detection, no
  robust rule;
- detection (plain rounds): every worker scored, the suspects logged and recorded;
- the rule: the sample-weighted mean, or a robust rule, over the rows or, with bucketing, over random
  bucket means (a secure round's buckets are its own);
- the server step: the mean is unflattened once, here, and handed to the server optimizer.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federated.aggregation import (
    Rule,
    ServerOptimizer,
    detect_byzantine_clients,
    make_rule,
    make_server_optimizer,
    weighted_mean,
)
from federated.aggregation.bucketing import bucket_means
from federated.aggregation.vectors import unflatten
from federated.broker.collector import Collected, DecodedSum
from federated.broker.secure_round import combine
from federated.config import FederatedConfig
from federated.privacy.central import central_mean
from federated.privacy.ledger import PrivacyLedger

__all__ = ["Aggregate", "Aggregator"]

log = logging.getLogger("federated.broker")


@dataclass(frozen=True)
class Aggregate:
    """A round's mean update (flat float32), the workers detection suspects, and for a secure round the
    merged decoded sum (its weight and training metrics)."""

    mean: np.ndarray
    suspects: tuple[str, ...] = ()
    decoded: DecodedSum | None = None


class Aggregator:
    """The round's mean update under the run's settings, and the server step.

    ``reference``: the global model (names and shapes: the mean is unflattened to them); ``rng``: the
    coordinator's generator, which draws bucket shuffles (its state is saved for a resume);
    ``privacy``: the ledger under differential privacy (central DP needs its clip and sigma);
    ``server_optimizer``: the one the broker settings name unless given.
    """

    def __init__(self, config: FederatedConfig, reference: Mapping[str, np.ndarray], rng: random.Random,
                 privacy: PrivacyLedger | None, server_optimizer: ServerOptimizer | None = None) -> None:
        self.config = config
        self.reference = {k: np.asarray(v) for k, v in reference.items()}
        self.num_params = sum(int(w.size) for w in self.reference.values())
        b = config.broker
        self.server_optimizer = server_optimizer or make_server_optimizer(
            b.server_optimizer, b.server_learning_rate, beta1=b.server_beta1, beta2=b.server_beta2,
            tau=b.server_tau)
        self.rng = rng
        self.privacy = privacy
        self._rows: np.ndarray | None = None
        self._suspected: set[str] = set()  # workers whose first suspicion was logged

    def rows(self, n: int) -> np.ndarray:
        """A float32 matrix of ``n`` rows, one model's parameters each, for a plain round's updates.

        The same one round after round when ``n`` does not change: at n=100, d=1M a fresh 400 MB matrix
        spent ~1 s a round faulting in its pages.
        """
        if self._rows is None or self._rows.shape != (n, self.num_params):
            self._rows = np.empty((n, self.num_params), dtype=np.float32)
        return self._rows

    def aggregate(self, collected: Collected) -> Aggregate:
        """The mean update of a round that collected enough. Raises ValueError if the rule refuses (a
        cohort too small for a robust rule)."""
        if collected.rows is None:
            return self._across_buckets(collected.sums, collected.suspects)
        samples = [collected.updates[w].num_samples for w in collected.survivors]
        return self._plain(collected.survivors, collected.rows, samples)

    def step(self, weights: Mapping[str, np.ndarray], mean: np.ndarray) -> dict[str, np.ndarray]:
        """The new global model: the server optimizer's step from ``weights`` along the flat ``mean``."""
        return self.server_optimizer.step(weights, unflatten(mean, self.reference))

    def _plain(self, ids: list[str], rows: np.ndarray, samples: Sequence[int]) -> Aggregate:
        agg = self.config.aggregation
        privacy = self.privacy
        if privacy is not None and privacy.mode == "central":
            return Aggregate(central_mean(rows, clip=privacy.current_clip, sigma=privacy.update_sigma,
                                          planned=privacy.expected_cohort, clipper=privacy.clipper))
        suspects: tuple[str, ...] = ()
        if agg.detect and len(ids) >= 3:
            detection = detect_byzantine_clients(rows, ids, threshold=agg.detect_threshold,
                                                 byzantine_fraction=agg.byzantine_fraction)
            suspects = detection.suspects
            for wid in (w for w in suspects if w not in self._suspected):  # later ones: the round store
                self._suspected.add(wid)
                log.info("worker %s suspected Byzantine (score %.1f > %.1f); further suspicions are only recorded",
                         wid, detection.scores[wid], agg.detect_threshold)
        if not agg.needs_individual_updates and agg.bucket_size is None:
            # The weighted mean of rows is that of the tensors, to the bit: each coordinate is the same sum.
            return Aggregate(weighted_mean([{"": row} for row in rows], samples)[""], suspects)
        matrix = rows
        sample_weights: np.ndarray | None = np.asarray(samples, dtype=np.float64)
        if agg.bucket_size is not None:
            matrix = bucket_means(rows, agg.bucket_size, np.random.default_rng(self.rng.getrandbits(64)))
            sample_weights = None
        # A copy: a rule may return a row of the matrix, which the next round overwrites.
        vector = np.array(self._rule(len(matrix))(matrix, sample_weights), dtype=np.float32)
        return Aggregate(vector, suspects)

    def _across_buckets(self, sums: list[DecodedSum], suspects: tuple[str, ...]) -> Aggregate:
        """One bucket, or the mean rule: the weighted mean. A robust rule: the rule across bucket means."""
        merged = combine(sums)
        if not self.config.aggregation.needs_individual_updates:
            return Aggregate(merged.mean, suspects, merged)
        matrix = np.stack([d.mean.astype(np.float64) for d in sums])
        vector = self._rule(len(sums))(matrix, np.array([d.weight for d in sums]))
        return Aggregate(np.asarray(vector, dtype=np.float32), suspects, merged)

    def _rule(self, n: int) -> Rule:
        agg = self.config.aggregation
        return make_rule(agg.rule, f=math.floor(agg.byzantine_fraction * n), trim_ratio=agg.trim_ratio,
                         clip_tau=agg.clip_tau, norm_bound=agg.norm_bound)
