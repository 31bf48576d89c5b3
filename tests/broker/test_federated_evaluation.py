"""Federated evaluation in the coordinator: the workers score the model a TASK brings on their own
held-out data, the scores come back with the next round's answers (inside the masked sums under secure
aggregation), and a closing evaluation-only round scores the final model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import CoordinatorHarness, harness_config
from support.codec import wire
from support.coordinator import of_type
from support.workers import SECURE_WEIGHTS, SecureFakeWorker

from federated.broker.coordinator import Coordinator, Outbound
from federated.broker.store import RoundStore
from federated.config import BrokerConfig, EvaluationConfig, FederatedConfig, PrivacyConfig, SecureConfig
from federated.protocol import Bye, decode_message

WORKERS = ("w1", "w2", "w3")
#: What each plain worker reports when asked: (loss, accuracy, held-out examples).
SCORES = {"w1": (0.9, 0.5, 10.0), "w2": (0.6, 0.75, 30.0), "w3": (0.3, 1.0, 60.0)}


def _answer_round(h: CoordinatorHarness, scores: dict[str, tuple[float, float, float]]) -> list[Outbound]:
    """Every worker answers its TASK of the current round, with its scores if the TASK asks for them."""
    out: list[Outbound] = []
    assert h.coord.round is not None
    plan = h.coord.round.plan
    for index, wid in enumerate(plan.cohort):
        task = plan.task(index, h.coord.weights)
        metrics: dict[str, float] = {"loss": 1.0, "accuracy": 0.5}
        if task.config.get("evaluate") is True:
            loss, accuracy, n = scores[wid]
            metrics.update(eval_loss=loss, eval_accuracy=accuracy, eval_samples=n)
        values = {} if task.config.get("evaluate_only") is True else None
        out += h.send(wid, h.update(wid, values, metrics=metrics))
    return out


@pytest.mark.parametrize("with_store", [False, True])
def test_plain_rounds_record_each_models_weighted_score_and_spread(tmp_path: Any, with_store: bool) -> None:
    store = RoundStore(tmp_path / "store.db") if with_store else None
    events: list[Any] = []
    h = CoordinatorHarness(harness_config(num_rounds=2, evaluation=EvaluationConfig(every=1)), store=store)
    h.coord.evaluation.on_evaluation = events.append
    h.join(*WORKERS)
    # Round 1 brings the initial model: nobody is asked to score it.
    assert all("evaluate" not in h.coord.round.plan.task(i, h.coord.weights).config for i in range(3))  # type: ignore[union-attr]
    _answer_round(h, SCORES)
    h.tick()
    plan = h.coord.round.plan  # type: ignore[union-attr]
    assert plan.scores == 1 and plan.evaluators == frozenset(WORKERS) and not plan.evaluate_only
    _answer_round(h, SCORES)
    # Round 2's answers scored round 1's model: weighted by held-out examples.
    total = sum(n for _, _, n in SCORES.values())
    accuracy = sum(a * n for _, a, n in SCORES.values()) / total
    loss = sum(lo * n for lo, _, n in SCORES.values()) / total
    first = h.coord.history[0]
    assert first.fed_accuracy == pytest.approx(accuracy) and first.fed_loss == pytest.approx(loss)
    assert first.metrics["fed_workers"] == 3 and first.metrics["fed_samples"] == total
    assert (first.metrics["fed_accuracy_min"], first.metrics["fed_accuracy_median"],
            first.metrics["fed_accuracy_max"]) == (0.5, 0.75, 1.0)
    # Training is over, but the final model is not scored yet: a closing evaluation-only round.
    assert not h.coord.done
    h.tick()
    plan = h.coord.round.plan  # type: ignore[union-attr]
    assert plan.evaluate_only and plan.scores == 2
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    last = _answer_round(h, SCORES)
    assert h.coord.done and h.coord.completed == 2 and h.coord.exit_reason == "training finished"
    assert sorted(of_type(last, Bye)) == [b"r-w1", b"r-w2", b"r-w3"]
    assert h.coord.history[1].fed_accuracy == pytest.approx(accuracy)
    for name, value in before.items():  # scores only: the model is unchanged
        np.testing.assert_array_equal(h.coord.weights[name], value)
    assert [e.round for e in events] == [1, 2]
    if store is not None:
        assert [r.fed_accuracy for r in store.list_rounds()] == pytest.approx([accuracy, accuracy])
        assert [r.round for r in store.list_rounds()] == [1, 2]  # the closing round is no round of training


def test_impossible_scores_are_left_out_and_a_fraction_of_the_cohort_is_asked() -> None:
    h = CoordinatorHarness(harness_config(num_rounds=3, evaluation=EvaluationConfig(every=1, fraction=0.5)))
    h.join(*WORKERS)
    _answer_round(h, SCORES)
    h.tick()
    plan = h.coord.round.plan  # type: ignore[union-attr]
    assert len(plan.evaluators) == 2  # ceil(0.5 * 3)
    liar = min(plan.evaluators)
    _answer_round(h, {**SCORES, liar: (0.1, 5.0, 10.0)})  # an accuracy of 500%: left out
    (honest,) = sorted(plan.evaluators - {liar})
    assert h.coord.history[0].fed_accuracy == pytest.approx(SCORES[honest][1])
    assert h.coord.history[0].metrics["fed_workers"] == 1


def test_every_k_rounds_scores_only_those_models_and_the_last() -> None:
    h = CoordinatorHarness(harness_config(num_rounds=3, evaluation=EvaluationConfig(every=2)))
    h.join(*WORKERS)
    asked = []
    for _ in range(3):
        asked.append(h.coord.round.plan.scores)  # type: ignore[union-attr]
        _answer_round(h, SCORES)
        h.tick()
    assert asked == [None, None, 2]  # round 2's model (the 2nd complete) is scored in round 3
    assert h.coord.round is not None and h.coord.round.plan.evaluate_only and h.coord.round.plan.scores == 3
    _answer_round(h, SCORES)
    assert h.coord.done
    assert [r.fed_accuracy is not None for r in h.coord.history] == [False, True, True]


def test_no_closing_round_without_federated_evaluation_or_under_distributed_dp() -> None:
    h = CoordinatorHarness(harness_config(num_rounds=1, evaluation=EvaluationConfig(every=0)))
    h.join(*WORKERS)
    _answer_round(h, SCORES)
    assert h.coord.done
    distributed = FederatedConfig(num_clients=4, secure=SecureConfig(enabled=True),
                                  privacy=PrivacyConfig(mode="distributed", noise_multiplier=1.0))
    assert not distributed.federated_evaluation


def _drive(coordinator: Coordinator, workers: list[SecureFakeWorker]) -> None:
    """Deliver every message until training is over, ticking whenever nothing is in flight."""
    by_route = {w.wid.encode(): w for w in workers}
    queue: list[Outbound] = []
    now = 0.0
    for w in workers:
        queue += coordinator.handle(w.wid.encode(), w.hello.to_frames(), now)
    for _ in range(10_000):
        if coordinator.done:
            return
        if not queue:
            queue += coordinator.tick(now)
            now += 0.001
            continue
        out = queue.pop(0)
        answer = by_route[out.route].answer(decode_message(wire(out.frames)))
        if answer is not None:
            queue += coordinator.handle(out.route, wire(answer.to_frames()), now)
        now += 0.001
    raise AssertionError("training did not finish")


def test_secure_rounds_carry_the_scores_inside_the_masked_sums() -> None:
    # Weighted by each worker's FedAvg weight (its capped sample count), since no score is seen alone.
    samples = [10, 30, 60, 100]
    scores = [(0.9, 0.25), (0.6, 0.5), (0.3, 0.75), (0.2, 1.0)]
    workers = [SecureFakeWorker(f"w{i}", n, 0.1, s) for i, (n, s) in enumerate(zip(samples, scores, strict=True))]
    config = FederatedConfig(num_clients=4, clients_per_round=4, num_rounds=2, min_clients=2,
                             secure=SecureConfig(enabled=True),
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    coordinator = Coordinator(config, SECURE_WEIGHTS)
    _drive(coordinator, workers)
    weight = sum(samples)
    accuracy = sum(n * a for n, (_, a) in zip(samples, scores, strict=True)) / weight
    loss = sum(n * lo for n, (lo, _) in zip(samples, scores, strict=True)) / weight
    assert [r.status for r in coordinator.history] == ["complete", "complete"]
    for record in coordinator.history:  # round 1's model scored in round 2, round 2's in the closing round
        assert record.fed_accuracy == pytest.approx(accuracy, abs=1e-3)
        assert record.fed_loss == pytest.approx(loss, abs=1e-3)
        assert record.metrics["fed_weight"] == weight
        assert "fed_accuracy_min" not in record.metrics  # no worker's score is seen alone
