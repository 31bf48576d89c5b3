"""Real worker sessions (:class:`~federated.worker.session.WorkerSession`) driven without sockets: every
message crosses the real codec, and training is a function that returns a constant update."""

from __future__ import annotations

from typing import Any

import numpy as np

from federated.crypto.params import SecAggParams
from federated.crypto.secagg_input import EXTRA_COORDINATES
from federated.protocol import Task
from federated.worker.session import ClientData, Send, Train, WorkerSession

from .codec import through_codec

__all__ = ["SESSION_SIZE", "SESSION_WEIGHTS", "fit_with", "secagg_params", "secure_task", "sends", "train_now",
           "worker_session"]

#: The model the sessions train: two small float32 tensors of SESSION_SIZE numbers in all.
SESSION_WEIGHTS = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 3), np.float32)}
SESSION_SIZE = 9


def fit_with(delta: float) -> Any:
    """A training function whose update is ``delta`` everywhere (a TASK config with ``fail`` raises)."""
    def fit(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: dict[str, Any],
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        if config.get("fail"):
            raise ValueError("unknown option 'fail'")
        return {k: np.full_like(v, delta) for k, v in weights.items()}, {"loss": 0.5, "accuracy": 0.25, "train_s": 0.01}
    return fit


def worker_session(wid: str, n: int = 4, **kwargs: Any) -> WorkerSession:
    """A connected session of worker ``wid`` holding ``n`` samples (``kwargs`` to ``WorkerSession``)."""
    data = ClientData(wid, np.zeros((n, 2), np.float32), np.zeros(n, np.int64))
    s = WorkerSession(data, **kwargs)
    s.connected()
    return s


def secagg_params(n: int, *, threshold: int | None = None, degree: int | None = None) -> SecAggParams:
    """Secure-aggregation parameters for ``n`` sessions (a complete graph and a majority threshold unless
    given) and the sessions' model."""
    degree = degree if degree is not None else n - 1
    return SecAggParams(threshold if threshold is not None else degree // 2 + 1, degree, 10.0, 100, 16, n,
                        SESSION_SIZE + EXTRA_COORDINATES)


def secure_task(round_id: int, p: SecAggParams, index: int, size: int, **extra: Any) -> Task:
    """A secure round's TASK (run ``run-a``, seed 3) as a session receives it; ``extra`` goes in its config."""
    config = {"secagg": p.to_dict(), "seed": 3, "run_id": "run-a", **extra}
    task: Task = through_codec(Task(round_id, "train", config, SESSION_WEIGHTS, index, size, 30.0).to_frames())
    return task


def sends(actions: list[Any]) -> list[Any]:
    """The messages a session's actions send, through the codec."""
    return [through_codec(a.frames) for a in actions if isinstance(a, Send)]


def train_now(s: WorkerSession, actions: list[Any], delta: float) -> list[Any]:
    """Run the Train action of ``actions`` (as the loop's training thread would) and hand back its result."""
    jobs = [a.job for a in actions if isinstance(a, Train)]
    assert len(jobs) == 1, actions
    return s.on_trained(s.train(jobs[0], fit_with(delta)))
