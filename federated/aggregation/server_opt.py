"""Server optimizers: turn the aggregated update into the next global model.

The aggregated update (mean of local weights - global weights) is a pseudo-gradient with the sign of a
descent step. Plain FedAvg is ``w <- w + lr * update`` with lr 1.0. The adaptive optimizers follow Reddi
et al. 2021, "Adaptive Federated Optimization" (Algorithm 2), with the update playing the role of the
negative gradient:

- FedAvgM:    m <- beta1 m + update;                       w <- w + lr m
- FedAdagrad: v <- v + update^2;                           w <- w + lr m / (sqrt(v) + tau), m as Adam's
- FedAdam:    v <- beta2 v + (1 - beta2) update^2
- FedYogi:    v <- v - (1 - beta2) update^2 sign(v - update^2)

with m <- beta1 m + (1 - beta1) update for the last three, v starting at tau^2. State is kept per
tensor as float32 arrays and can be saved and restored (``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

__all__ = ["SERVER_OPTIMIZERS", "AdaptiveServer", "FedAvgServer", "ServerOptimizer", "make_server_optimizer"]

#: Names accepted by :func:`make_server_optimizer`, with the server learning rate used when none is given.
SERVER_OPTIMIZERS = {"fedavg": 1.0, "fedavgm": 1.0, "fedadagrad": 0.1, "fedadam": 0.1, "fedyogi": 0.1}


class ServerOptimizer(Protocol):
    """Applies one aggregated update (a pseudo-gradient with the sign of a descent step)."""

    def step(self, weights: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the new global weights; never modifies its arguments."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state as named float32 arrays (empty for stateless optimizers)."""
        ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        ...


class FedAvgServer:
    """``w + lr * update``: FedAvg when ``lr`` is 1.0 (the default). Stateless."""

    def __init__(self, learning_rate: float = 1.0) -> None:
        if not learning_rate > 0:
            raise ValueError(f"server learning rate must be positive, got {learning_rate}")
        self.learning_rate = learning_rate

    def step(self, weights: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        lr = np.float32(self.learning_rate)
        return {name: (w + lr * update[name]).astype(np.float32) for name, w in weights.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError("FedAvg keeps no state")


class AdaptiveServer:
    """FedAvgM, FedAdagrad, FedAdam or FedYogi (``kind``); see the module docstring for the updates.

    ``learning_rate`` is the server step size, ``beta1`` the momentum, ``beta2`` the second-moment decay,
    ``tau`` the adaptivity floor (Reddi et al. use 1e-3). Raises ``ValueError`` for bad settings.
    """

    def __init__(self, kind: str, learning_rate: float, *, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        if kind not in ("fedavgm", "fedadagrad", "fedadam", "fedyogi"):
            raise ValueError(f"unknown adaptive server optimizer {kind!r}")
        if not learning_rate > 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or not tau > 0:
            raise ValueError(f"bad {kind} settings: lr={learning_rate}, beta1={beta1}, beta2={beta2}, tau={tau}")
        self.kind, self.learning_rate, self.beta1, self.beta2, self.tau = kind, learning_rate, beta1, beta2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, weights: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, w in weights.items():
            g = np.asarray(update[name], np.float32)
            m = self.m.get(name, np.zeros_like(g))
            if self.kind == "fedavgm":
                m = self.beta1 * m + g
                self.m[name] = m.astype(np.float32)
                out[name] = (w + self.learning_rate * m).astype(np.float32)
                continue
            m = self.beta1 * m + (1 - self.beta1) * g
            v = self.v.get(name, np.full_like(g, self.tau**2))
            g2 = g * g
            if self.kind == "fedadagrad":
                v = v + g2
            elif self.kind == "fedadam":
                v = self.beta2 * v + (1 - self.beta2) * g2
            else:  # fedyogi: v moves towards g^2 additively, so it cannot blow up as Adam's can shrink
                v = v - (1 - self.beta2) * g2 * np.sign(v - g2)
            self.m[name], self.v[name] = m.astype(np.float32), v.astype(np.float32)
            out[name] = (w + self.learning_rate * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"m.{k}": v for k, v in self.m.items()}
        state.update({f"v.{k}": v for k, v in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v, np.float32) for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.asarray(v, np.float32) for k, v in state.items() if k.startswith("v.")}
        if len(self.m) + len(self.v) != len(state):
            raise ValueError("server optimizer state has entries that are neither m.* nor v.*")


def make_server_optimizer(name: str, learning_rate: float | None = None, **kwargs: float) -> ServerOptimizer:
    """The server optimizer called ``name`` (see ``SERVER_OPTIMIZERS``); ``learning_rate`` None takes its
    default. Raises ``ValueError`` for an unknown name, listing the known ones."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(f"server optimizer {name!r} is not one of {', '.join(SERVER_OPTIMIZERS)}")
    lr = SERVER_OPTIMIZERS[name] if learning_rate is None else learning_rate
    if name == "fedavg":
        return FedAvgServer(lr)  # stateless: beta1, beta2 and tau do not apply
    return AdaptiveServer(name, lr, **kwargs)
