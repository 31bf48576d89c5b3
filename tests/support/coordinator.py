"""A broker's round state machine driven by hand: a :class:`~federated.broker.coordinator.Coordinator` with
a fake clock, and helpers that speak for workers ``w1``, ``w2``, ... with real protocol frames.

No sockets and no sleeping: time is a number the test moves, and every message is made by the message
classes' ``to_frames()`` (or crafted bytes), so the coordinator sees exactly what a socket would hand it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Outbound
from federated.broker.store import RoundRecord, RoundStore
from federated.config import BrokerConfig, EvaluationConfig, FederatedConfig
from federated.protocol import Heartbeat, Hello, Message, Task, Update, decode_message

from .codec import wire

__all__ = [
    "HARNESS_BROKER",
    "HARNESS_T0",
    "CoordinatorHarness",
    "FakeClock",
    "decoded",
    "harness_config",
    "harness_weights",
    "of_type",
    "tasked",
]

#: Where a harness's fake clock starts.
HARNESS_T0 = 1000.0
#: The broker settings of ``harness_config``: short timeouts, two failed rounds in a row stop training.
HARNESS_BROKER = BrokerConfig(round_timeout_s=10.0, start_timeout_s=5.0, heartbeat_interval_s=1.0,
                              heartbeat_timeout_s=3.0, max_failed_rounds=2)


def harness_config(**kw: Any) -> FederatedConfig:
    """Three workers, all selected, ``min_clients`` 2, three rounds, ``HARNESS_BROKER``, no federated
    evaluation (the harness's updates carry no scores; tests of evaluation turn it on) (overrides in ``kw``)."""
    base: dict[str, Any] = {"num_clients": 3, "clients_per_round": 3, "min_clients": 2, "num_rounds": 3,
                            "broker": HARNESS_BROKER, "evaluation": EvaluationConfig(every=0)}
    base.update(kw)
    return FederatedConfig(**base)


def harness_weights() -> dict[str, np.ndarray]:
    """The harness's initial model: two small float32 tensors."""
    return {"w": np.arange(4, dtype=np.float32), "b": np.ones((2, 3), np.float32)}


class FakeClock:
    """A clock that stands still until a test moves ``t``."""

    def __init__(self, t: float = HARNESS_T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CoordinatorHarness:
    """A coordinator, its fake clock, and helpers that speak for workers ``w1``, ``w2``, ... on routes
    ``b"r-w1"``, ... . Every call checks that ``next_wakeup`` is not negative."""

    def __init__(self, config: FederatedConfig | None = None, store: RoundStore | None = None,
                 **kw: Any) -> None:
        self.clock = FakeClock()
        self.records: list[RoundRecord] = []
        self.evaluated: list[dict[str, np.ndarray]] = []

        def evaluate(weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
            self.evaluated.append(dict(weights))
            return 0.25, 0.75

        self.coord = Coordinator(config or harness_config(), harness_weights(), store=store, evaluate=evaluate,
                                 on_round=self.records.append, clock=self.clock, **kw)
        self.routes: dict[str, bytes] = {}

    @property
    def now(self) -> float:
        return self.clock.t

    def _check(self, out: list[Outbound]) -> list[Outbound]:
        assert self.coord.next_wakeup(self.now) >= 0.0
        assert self.coord.next_wakeup(self.now + 1e6) == 0.0
        for o in out:
            assert isinstance(o, Outbound) and isinstance(o.route, bytes)
        return out

    def route(self, wid: str) -> bytes:
        return self.routes.get(wid, f"r-{wid}".encode())

    def send(self, wid_or_route: str | bytes, msg: Message | list[bytes]) -> list[Outbound]:
        route = wid_or_route if isinstance(wid_or_route, bytes) else self.route(wid_or_route)
        frames = msg if isinstance(msg, list) else wire(msg.to_frames())
        return self._check(self.coord.handle(route, frames, self.now))

    def hello(self, wid: str, num_samples: int = 10, route: bytes | None = None) -> list[Outbound]:
        if route is not None:
            self.routes[wid] = route
        return self.send(wid, Hello(wid, num_samples))

    def tick(self) -> list[Outbound]:
        return self._check(self.coord.tick(self.now))

    def advance(self, seconds: float, alive: Sequence[str] = (), step: float = 0.5) -> list[Outbound]:
        """Move time forward in steps; ``alive`` workers heartbeat and the broker ticks at every step."""
        out: list[Outbound] = []
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.clock.t = min(end, self.now + step)
            for wid in alive:
                out += self.send(wid, Heartbeat(wid))
            out += self.tick()
        return out

    def join(self, *wids: str) -> list[Outbound]:
        out: list[Outbound] = []
        for wid in wids:
            out += self.hello(wid)
        return out + self.tick()

    def update(self, wid: str, values: Mapping[str, np.ndarray] | None = None, *, num_samples: int = 10,
               round_id: int | None = None, metrics: Mapping[str, float] | None = None,
               stage: str = STAGE_TRAIN) -> Update:
        rid = self.coord.round.round_id if round_id is None and self.coord.round else (round_id or 0)
        if values is None:
            values = {k: np.full(v.shape, 0.5, np.float32) for k, v in self.coord.weights.items()}
        return Update(wid, rid, stage, num_samples, dict(metrics or {}), dict(values))

    def snapshot(self) -> tuple[Any, ...]:
        c = self.coord
        rnd = c.round
        return (
            tuple(c.weights),
            [(v.dtype.str, v.shape, v.tobytes()) for v in c.weights.values()],
            None if rnd is None else rnd.round_id,
            None if rnd is None else frozenset(rnd.pending),
            None if rnd is None else {w: id(u) for w, u in rnd.updates.items()},
            None if rnd is None else dict(rnd.dropped),
            tuple(c.registry.live_ids()),
            tuple((r.worker_id, r.route) for r in c.registry.records()),
            c.completed, c.next_round_id, c.done, c.failed, len(c.history), c.consecutive_failures,
        )


def decoded(out: Sequence[Outbound]) -> list[tuple[bytes, Message]]:
    """Each outbound message's route and decoded message."""
    return [(o.route, decode_message(wire(o.frames))) for o in out]


def of_type(out: Sequence[Outbound], cls: type) -> dict[bytes, Any]:
    """The messages of type ``cls`` in ``out`` by route (at most one per route)."""
    found: dict[bytes, Any] = {}
    for route, msg in decoded(out):
        if isinstance(msg, cls):
            assert route not in found, f"two {cls.__name__} messages to {route!r}"
            found[route] = msg
    return found


def tasked(h: CoordinatorHarness, out: Sequence[Outbound]) -> dict[str, Task]:
    """The TASKs in ``out`` by worker id (``w1`` ... ``w9``)."""
    by_route = of_type(out, Task)
    ids = {h.route(w): w for w in [f"w{i}" for i in range(1, 10)]}
    return {ids[r]: t for r, t in by_route.items()}
