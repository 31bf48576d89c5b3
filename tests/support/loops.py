"""Worker loops (``WorkerLoop``) driven against hand-made brokers: a training function that needs no
model, a client's data, and a loop running on a thread of its own."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from federated.worker.loop import ClientData, WorkerLoop

__all__ = ["LOOP_WEIGHTS", "loop_client", "loop_fit", "run_loop"]

#: The global model a hand-made broker sends in its TASKs.
LOOP_WEIGHTS = {"w": np.ones((2, 3), np.float32)}


def loop_fit(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: dict[str, Any],
             seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """An update of 0.5 everywhere (a TASK config with ``fail`` raises, as a bad option does)."""
    if config.get("fail"):
        raise ValueError("unknown option 'fail'")
    return {k: np.full_like(v, 0.5) for k, v in weights.items()}, {"loss": 1.0, "accuracy": 0.5, "train_s": 0.01}


def loop_client(i: int = 0, n: int = 7) -> ClientData:
    """Client ``c<i>`` with ``n`` samples of 4 zero features."""
    return ClientData(f"c{i}", np.zeros((n, 4), np.float32), np.zeros(n, np.int32))


def run_loop(loop: WorkerLoop) -> tuple[threading.Thread, list[int]]:
    """Start ``loop.run()`` on a daemon thread; the list gets its outcome when it returns."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), daemon=True)
    thread.start()
    return thread, result
