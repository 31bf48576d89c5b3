"""Data the model cannot take is refused with the reason before MLX sees it (issue 16, item 4: labels out
of range used to corrupt memory inside MLX, killing the worker with "double free or corruption")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from federated.models import build_model
from federated.models.weights import get_weights
from federated.protocol import Error, ErrorCode, Task, decode_message
from federated.worker.runner import ModelRunner, model_config
from federated.worker.session import ClientData, Train, WorkerSession
from federated.worker.trainer import LocalTrainer, TrainConfig

RNG = np.random.default_rng(0)
X = RNG.random((20, 64)).astype(np.float32)
Y = np.arange(20) % 10


@pytest.fixture(scope="module")
def trainer() -> tuple[LocalTrainer, dict[str, np.ndarray]]:
    model = build_model("mlp", input_shape=(64,), num_classes=10)
    return LocalTrainer(model), {k: np.array(v) for k, v in get_weights(model).items()}


@pytest.mark.parametrize(("x", "y", "reason"), [
    (X, np.full(20, 10), "label 10 is out of range: the model has 10 classes"),
    (X, np.full(20, 2**31 - 1), "out of range"),
    (X, Y - 1, "labels must be integers >= 0"),
    (X, Y.astype(np.float32), "integer labels"),
    (RNG.random((20, 24)), Y, "24 features per example"),
    (np.full((20, 64), np.nan), Y, "NaN or Inf"),
    (np.full((20, 64), 1e39), Y, "NaN or Inf"),
    (np.array([["a"] * 64] * 20), Y, "must hold numbers"),
])
def test_bad_data_is_refused_with_the_reason(trainer: tuple[LocalTrainer, dict[str, np.ndarray]], x: Any, y: Any,
                                            reason: str) -> None:
    local, weights = trainer
    with pytest.raises(ValueError, match=reason):
        local.fit(weights, x, y, TrainConfig(epochs=1), seed=0)
    with pytest.raises(ValueError, match=reason):
        local.evaluate(weights, x, y)


def test_good_data_still_trains(trainer: tuple[LocalTrainer, dict[str, np.ndarray]]) -> None:
    local, weights = trainer
    result = local.fit(weights, X, Y, TrainConfig(epochs=1), seed=0)
    assert np.isfinite(result.loss)


def test_a_worker_answers_a_task_its_labels_do_not_fit_with_an_error_naming_them() -> None:
    # The broker's model has 10 classes; this worker's data has labels up to 11.
    model = build_model("mlp", input_shape=(64,), num_classes=10)
    weights = {k: np.array(v) for k, v in get_weights(model).items()}
    config = {"model": model_config("mlp", (64,), 10), "train": {"epochs": 1}}
    task = decode_message([bytes(f) for f in Task(1, "train", config, weights, 0, 1, 30.0).to_frames()])
    session = WorkerSession(ClientData("w0", X, np.arange(20) % 12))
    session.connected()
    (job,) = [a.job for a in session.on_message(task) if isinstance(a, Train)]
    result = session.train(job, ModelRunner().fit)
    error = decode_message([bytes(f) for f in result.payload])  # type: ignore[union-attr]
    assert isinstance(error, Error) and error.code == ErrorCode.BAD_TASK
    assert "labels 0..11" in error.message and "10 classes" in error.message
