"""The worker's side of federated evaluation, without sockets: it scores the TASK's global model on its
held-out split when asked (before training), sends nothing of it when not asked, trains not at all in an
evaluation-only round, and refuses evaluation data its model cannot take with a reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from federated.models import build_model
from federated.models.weights import get_weights
from federated.protocol import Error, ErrorCode, Task, Update, decode_message
from federated.worker.runner import ModelRunner, model_config
from federated.worker.session import ClientData, Train, WorkerSession

RNG = np.random.default_rng(3)
X, Y = RNG.random((40, 64)).astype(np.float32), np.arange(40) % 10
X_EVAL, Y_EVAL = RNG.random((12, 64)).astype(np.float32), np.arange(12) % 10


def _weights() -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in get_weights(build_model("mlp", input_shape=(64,), num_classes=10)).items()}


def _task(**extra: Any) -> Task:
    config = {"model": model_config("mlp", (64,), 10), "train": {"epochs": 1}, **extra}
    return decode_message([bytes(f) for f in Task(3, "train", config, _weights(), 0, 1, 30.0).to_frames()])


def _run(session: WorkerSession, task: Task, runner: ModelRunner) -> Any:
    session.connected()
    (job,) = [a.job for a in session.on_message(task) if isinstance(a, Train)]
    result = session.train(job, runner.fit, evaluate=runner.evaluate)
    return decode_message([bytes(f) for f in result.payload])  # type: ignore[union-attr]


def test_a_worker_scores_the_global_model_it_was_sent_when_asked() -> None:
    runner = ModelRunner()
    task = _task(evaluate=True)
    update = _run(WorkerSession(ClientData("w0", X, Y, X_EVAL, Y_EVAL)), task, runner)
    assert isinstance(update, Update) and update.update  # it trained too
    # The scores are those of the model the TASK brought, not of the model after local training.
    loss, accuracy = runner.trainer(task.config["model"]).evaluate(dict(task.weights), X_EVAL, Y_EVAL)
    assert update.metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert update.metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert update.metrics["eval_samples"] == len(Y_EVAL)


@pytest.mark.parametrize("task", [_task(), _task(evaluate=False)])
def test_a_worker_sends_no_scores_unless_asked(task: Task) -> None:
    update = _run(WorkerSession(ClientData("w0", X, Y, X_EVAL, Y_EVAL)), task, ModelRunner())
    assert isinstance(update, Update) and not any(k.startswith("eval_") for k in update.metrics)


def test_a_worker_without_held_out_data_answers_without_scores() -> None:
    update = _run(WorkerSession(ClientData("w0", X, Y)), _task(evaluate=True), ModelRunner())
    assert isinstance(update, Update) and "eval_accuracy" not in update.metrics


def test_an_evaluation_only_round_trains_nothing() -> None:
    runner = ModelRunner()
    calls: list[int] = []

    def fit(*args: Any) -> Any:
        calls.append(1)
        return runner.fit(*args)

    session = WorkerSession(ClientData("w0", X, Y, X_EVAL, Y_EVAL))
    session.connected()
    (job,) = [a.job for a in session.on_message(_task(evaluate=True, evaluate_only=True)) if isinstance(a, Train)]
    update = decode_message([bytes(f) for f in session.train(job, fit, evaluate=runner.evaluate).payload])  # type: ignore[union-attr]
    assert calls == [] and isinstance(update, Update) and update.update == {}
    assert 0.0 <= update.metrics["eval_accuracy"] <= 1.0


@pytest.mark.parametrize(("x", "y", "why"), [
    (RNG.random((5, 24)).astype(np.float32), np.zeros(5, np.int64), "evaluation data has 24 features"),
    (X_EVAL, np.arange(12) + 1, "labels 1..12"),
])
def test_evaluation_data_the_model_cannot_take_is_refused_with_the_reason(x: Any, y: Any, why: str) -> None:
    error = _run(WorkerSession(ClientData("w0", X, Y, x, y)), _task(evaluate=True), ModelRunner())
    assert isinstance(error, Error) and error.code == ErrorCode.BAD_TASK and why in error.message


def test_training_data_of_another_task_is_refused_with_both_figures() -> None:
    # The README's first trap: a broker describing a 64-feature model, a worker holding 24 features.
    error = _run(WorkerSession(ClientData("w0", RNG.random((8, 24)).astype(np.float32), np.zeros(8, np.int64))),
                 _task(), ModelRunner())
    assert isinstance(error, Error) and error.code == ErrorCode.BAD_TASK
    assert "24 features" in error.message and "takes 64" in error.message
