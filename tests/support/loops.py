"""Worker loops (``WorkerLoop``) driven against hand-made brokers: a training function that needs no
model, a client's data, a loop running on a thread of its own, and a bare ROUTER to play the broker."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import zmq

from federated.worker.loop import ClientData, WorkerLoop

__all__ = ["LOOP_WEIGHTS", "HandRouter", "loop_client", "loop_fit", "run_loop"]

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


class HandRouter:
    """A ROUTER bound on ``tcp://127.0.0.1:<port>`` with a context of its own, for a test to play the
    broker by hand (subclasses say how they read and write messages); ``close()`` when done."""

    def __init__(self, port: int) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://127.0.0.1:{port}")

    def frames(self, timeout: float) -> list[bytes]:
        """The next message's frames, routing id first (fails the test after ``timeout`` seconds)."""
        assert self.sock.poll(int(timeout * 1000)), "nothing received in time"
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
