"""Starting a planned round: the step between a :class:`~federated.broker.planning.RoundPlan` and the TASKs
on the wire, in the order that keeps a crash safe.

The round id is burnt in the store before any TASK leaves (a broker restarted mid-round resumes with the
next id, never re-running this one: see :mod:`~federated.broker.resume`); the privacy ledger is charged
before any TASK leaves (from then on workers release updates, whatever happens); then each cohort member
gets its TASK with the global model. An evaluation-only round releases nothing, so it is not charged and
does not count as a selection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federated.broker.collector import ActiveRound, Collector
from federated.broker.plain_round import PlainRound
from federated.broker.planning import RoundPlan
from federated.broker.registry import WorkerRegistry
from federated.broker.secure_round import SecureCollector
from federated.broker.store import RoundStore
from federated.compression import Codec
from federated.config import FederatedConfig
from federated.privacy.ledger import PrivacyLedger

__all__ = ["Outbound", "collector_for", "launch"]

log = logging.getLogger("federated.broker")


@dataclass(frozen=True)
class Outbound:
    """Frames to send to one connection (ZeroMQ routing id)."""

    route: bytes
    frames: Sequence[bytes | memoryview]


def collector_for(plan: RoundPlan, config: FederatedConfig, now: float, *, weights: Mapping[str, np.ndarray],
                  identities: Mapping[str, bytes], privacy: PrivacyLedger | None, rows: Callable[[int], np.ndarray],
                  codec: Codec | None) -> Collector:
    """The collector of ``plan``'s mode: secure aggregation bucket by bucket, or plain UPDATEs written into
    ``rows(cohort size)`` (decompressed with the run's ``codec``)."""
    if plan.is_secure:
        return SecureCollector(plan, config, identities, now, reference=weights, privacy=privacy)
    return PlainRound(plan, config, rows(len(plan.cohort)), now, reference=weights, codec=codec)


def launch(plan: RoundPlan, collector: Collector, now: float, *, weights: Mapping[str, np.ndarray],
           registry: WorkerRegistry, store: RoundStore | None,
           privacy: PrivacyLedger | None) -> tuple[ActiveRound, list[Outbound]]:
    """Start ``plan`` (collected by ``collector``) at monotonic time ``now``: burn its id, charge the
    ledger, and return the round in progress with the TASKs to send. Every cohort member must be in
    ``registry`` (the cohort was drawn from it this instant)."""
    if store is not None:
        store.set_meta("started_round", plan.round_id)
    rnd = ActiveRound(plan, collector, time.time(), now)
    if privacy is not None and not plan.evaluate_only:
        rnd.epsilon = privacy.charge_round()
        if store is not None:
            store.set_meta("privacy", privacy.to_dict())
    out = []
    for index, wid in enumerate(plan.cohort):
        rec = registry.get(wid)
        assert rec is not None  # cohort was drawn from the registry this instant
        frames = plan.task(index, weights).to_frames()
        rnd.bytes_down += sum(len(f) for f in frames)
        out.append(Outbound(rec.route, frames))
        if store is not None and not plan.evaluate_only:
            store.count_worker(wid, "rounds_selected")
    if plan.evaluate_only:
        log.info("round %d: %d workers score the final model (round %s's) on their held-out data",
                 plan.round_id, len(plan.evaluators), plan.scores)
    else:
        log.info("round %d started with %d workers", plan.round_id, len(plan.cohort))
    return rnd, out
