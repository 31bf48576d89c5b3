"""The broker's side of federated evaluation: which model the workers score when, and where the scores go.

Workers score the global model a TASK brings on their own held-out data before training on it
(:meth:`federated.worker.session.WorkerSession.train`), so the scores of round r's model arrive with round
r + 1's answers (inside the masked sums under secure aggregation) and cost no extra round trip. The final
model is scored in one closing evaluation-only round, after which training ends. Every
``evaluation.every``-th complete round's model is scored, and always the final one; ``evaluation.fraction``
of each cohort is asked. See :class:`~federated.config.EvaluationConfig`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from federated.broker.collector import Collected
from federated.broker.planning import RoundPlan, pick_evaluators
from federated.broker.records import federated_score
from federated.broker.store import RoundRecord, RoundStore
from federated.config import FederatedConfig

__all__ = ["FederatedEvaluation"]

log = logging.getLogger("federated.broker")


class FederatedEvaluation:
    """What the coordinator knows about federated evaluation: the round whose model is the global one
    (``model_round``; None: the initial model), the last one the workers scored (``scored_round``), and,
    once training is over but the final model is still to be scored, why training stops (``closing``).

    ``store``: where scores are attached to their round's record (None: only the in-memory history);
    ``on_evaluation``: called with each record once its scores are in. Its own generator picks the
    evaluators, so evaluation never shifts the selection's draws.
    """

    def __init__(self, config: FederatedConfig, store: RoundStore | None,
                 on_evaluation: Callable[[RoundRecord], None] | None) -> None:
        self.enabled = config.federated_evaluation
        self.config = config
        self.store = store
        self.on_evaluation = on_evaluation
        # A resumed run's global model is its last complete round's (its scores, if any, were not kept).
        self.model_round: int | None = store.last_complete_round() if store is not None else None
        self.scored_round: int | None = None
        self.closing: str | None = None
        self._rng = random.Random(f"{config.seed}/evaluation")

    def to_score(self, completed: int) -> int | None:
        """The round whose model the next round's workers score (``completed``: complete rounds so far),
        or None."""
        latest = self.model_round
        if not self.enabled or latest is None or latest == self.scored_round:
            return None
        if self.closing is not None or completed % self.config.evaluation.every == 0:
            return latest
        return None

    def evaluators(self, sample: Sequence[str], scores: int | None) -> frozenset[str]:
        """Who of ``sample`` scores the model (nobody if ``scores`` is None)."""
        return pick_evaluators(self.config, sample, self._rng) if scores is not None else frozenset()

    def wind_down(self, reason: str) -> bool:
        """Training is over for ``reason``: True if the final model must first be scored in a closing
        round (then ``closing`` holds the reason)."""
        if self.enabled and self.model_round is not None and self.model_round != self.scored_round:
            self.closing = reason
            return True
        return False

    def closed(self, round_id: int, collected: Collected) -> str:
        """The closing round ``round_id`` is over (its scores already taken): why training stops."""
        if collected.failure is not None:
            log.warning("the closing evaluation round %d failed: %s", round_id, collected.failure)
        reason, self.closing = self.closing or "training finished", None
        return reason

    def take(self, plan: RoundPlan, collected: Collected, history: list[RoundRecord]) -> list[RoundRecord]:
        """Attach what ``collected`` says about ``plan.scores``'s model to its record (store and
        ``history``); returns the history, updated."""
        score = federated_score(plan, collected)
        if score is None:
            return history
        self.scored_round = score.round
        log.info("round %d's model scored %.4f accuracy, %.4f loss on the workers' held-out data",
                 score.round, score.accuracy, score.loss)
        found = [r for r in history if r.round == score.round]
        if self.store is not None:
            record = self.store.record_evaluation(score.round, loss=score.loss, accuracy=score.accuracy,
                                                  metrics=score.metrics)
        elif found:
            record = replace(found[-1], fed_loss=score.loss, fed_accuracy=score.accuracy,
                             metrics={**found[-1].metrics, **score.metrics})
        else:
            return history
        if self.on_evaluation is not None:
            self.on_evaluation(record)
        return [record if r.round == score.round else r for r in history]
