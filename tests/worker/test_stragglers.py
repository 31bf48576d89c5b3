"""Simulated stragglers (FedProx's systems heterogeneity): the first round(rate * cohort) positions of a
round's cohort train 1..E-1 local epochs instead of E, and still answer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import SESSION_WEIGHTS, round_trip, worker_session

from federated.protocol import Task
from federated.worker.session import Train
from federated.worker.simulation import Stragglers


def test_only_the_first_positions_straggle() -> None:
    plan = Stragglers(0.5)
    for index in range(10):
        epochs = plan.epochs(index, 10, 20, seed=index)
        assert (1 <= epochs <= 19) if index < 5 else epochs == 20
    assert Stragglers(0.9).epochs(8, 10, 20, seed=0) < 20 and Stragglers(0.9).epochs(9, 10, 20, seed=0) == 20
    assert Stragglers(0.0).epochs(0, 10, 20, seed=0) == 20


def test_straggler_epochs_are_uniform_in_1_to_e_minus_1_and_repeat_with_the_seed() -> None:
    plan = Stragglers(1.0)
    draws = [plan.epochs(0, 1, 5, seed) for seed in range(400)]
    assert draws == [plan.epochs(0, 1, 5, seed) for seed in range(400)]
    counts = np.bincount(draws, minlength=5)
    assert counts[0] == 0 and counts[1:].sum() == 400
    # Each of 1..4 has probability 1/4: binomial(400, 1/4) has standard deviation 8.7; 4.5 sigma is 39.
    assert np.all(np.abs(counts[1:] - 100) < 39)
    assert plan.epochs(0, 1, 1, seed=3) == 1  # one epoch asked: nothing fewer to do


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_outside_0_1_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="straggler rate"):
        Stragglers(rate)


def _trained_epochs(index: int, size: int) -> tuple[int, dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fit(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: dict[str, Any],
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        seen.append(config)
        return {k: np.zeros_like(v) for k, v in weights.items()}, {"loss": 0.5, "accuracy": 0.5, "train_s": 0.0}

    s = worker_session(f"w{index}", stragglers=Stragglers(0.5))
    config = {"seed": 5, "train": {"epochs": 20, "batch_size": 4}}
    task = round_trip(Task(1, "train", config, SESSION_WEIGHTS, index, size, 30.0))
    (job,) = [a.job for a in s.on_message(task) if isinstance(a, Train)]
    s.train(job, fit)
    return seen[0]["train"]["epochs"], task.config


def test_a_straggling_session_trains_fewer_epochs_and_the_task_is_untouched() -> None:
    fewer, config = _trained_epochs(0, 4)  # position 0 < round(0.5 * 4)
    assert 1 <= fewer <= 19
    assert config["train"]["epochs"] == 20
    assert _trained_epochs(3, 4)[0] == 20  # position 3: trains what the TASK asks


def test_fl_simulate_refuses_dropout_and_stragglers_together(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from federated.cli.simulate import simulate_command

    result = CliRunner().invoke(simulate_command, ["--dropout", "0.5", "--stragglers", "0.5",
                                                   "--store", str(tmp_path / "s.db")])
    assert result.exit_code == 2 and "give one of them" in result.output
