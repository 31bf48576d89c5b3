"""``flworker --dp-min-noise S``: the worker trains only when the TASK asks for DP-SGD with noise >= S.

README: a worker's own guarantee that its data is never trained on without the noise it agreed to,
whatever the broker sends. The check lives in :meth:`ModelRunner.fit` (before any training); the CLI
hands the flag to the runner that the worker loop calls. Both halves are tested here without sockets:
the runner directly, and the command with the worker loop replaced by a stand-in that keeps the fit
function it was given.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from federated.cli.worker import worker_command
from federated.worker import loop as worker_loop
from federated.worker.runner import ModelRunner, model_config
from federated.worker.trainer import FitResult, LocalTrainer

X = np.zeros((8, 4), np.float32)
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int64)


def _task(**train: Any) -> dict[str, Any]:
    return {"model": model_config("mlp", (4,), 3), "train": {"epochs": 1, "batch_size": 4, **train}}


def _dp(noise: float) -> dict[str, Any]:
    return _task(dp_clip=1.0, dp_noise_multiplier=noise, dp_sampling_rate=0.5)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """LocalTrainer.fit replaced by a recorder: which training settings reached the trainer."""
    calls: list[Any] = []

    def fit(self: LocalTrainer, weights: Any, x: Any, y: Any, cfg: Any, *, seed: int) -> FitResult:
        calls.append(cfg)
        return FitResult(update={k: np.zeros_like(v) for k, v in weights.items()}, num_samples=len(y),
                         loss=0.0, accuracy=0.0, train_s=0.0, dp_steps=2, dp_sampling_rate=0.5)

    monkeypatch.setattr(LocalTrainer, "fit", fit)
    return calls


def _weights(runner: ModelRunner) -> dict[str, np.ndarray]:
    from federated.models import get_weights

    return get_weights(runner.trainer(model_config("mlp", (4,), 3)).model)


def _check_floor(fit: Any, weights: dict[str, np.ndarray], trained: list[Any]) -> None:
    """``fit`` (a runner's) refuses tasks below a floor of 1.0 before training, and trains at or above it."""
    for task in (_task(), _dp(0.5), _dp(0.999), _task(dp_clip=1.0, dp_sampling_rate=0.5)):
        with pytest.raises(ValueError, match="noise multiplier >= 1"):
            fit(weights, X, Y, task, 0)
    assert trained == []
    fit(weights, X, Y, _dp(1.0), 0)
    fit(weights, X, Y, _dp(3.0), 0)
    assert [cfg.dp_noise_multiplier for cfg in trained] == [1.0, 3.0]


def test_runner_refuses_a_task_below_its_noise_floor_before_training(trained: list[Any]) -> None:
    runner = ModelRunner(min_noise_multiplier=1.0)
    _check_floor(runner.fit, _weights(runner), trained)


def test_without_a_floor_any_task_trains(trained: list[Any]) -> None:
    runner = ModelRunner()
    runner.fit(_weights(runner), X, Y, _task(), 0)
    runner.fit(_weights(runner), X, Y, _dp(0.1), 0)
    assert len(trained) == 2


def test_flworker_dp_min_noise_reaches_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  trained: list[Any]) -> None:
    np.savez(tmp_path / "train.npz", x=X, y=Y.astype(np.int32))
    loops: list[Any] = []

    class Loop:
        """Stands in for WorkerLoop: keeps the fit function and returns at once (no sockets)."""

        def __init__(self, clients: Any, address: str, fit: Any, **kwargs: Any) -> None:
            self.fit = fit
            loops.append(self)

        def run(self) -> int:
            return 0

        def stop(self) -> None:
            pass

    monkeypatch.setattr(worker_loop, "WorkerLoop", Loop)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # run_worker must not replace pytest's handlers
    result = CliRunner().invoke(worker_command, ["--client-id", "w1", "--data-path", str(tmp_path),
                                                 "--dp-min-noise", "1.0"])
    assert result.exit_code == 0, result.output
    (loop,) = loops
    _check_floor(loop.fit, _weights(ModelRunner()), trained)
