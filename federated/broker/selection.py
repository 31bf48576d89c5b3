"""Client selection: which live workers take part in a round.

- ``random``: a uniform sample (seeded).
- ``performance``: the fastest workers by their recent response time, ties broken by higher recent loss;
  a quarter of the cohort is still drawn at random so new and slow workers get measured.
- ``adaptive`` (in the spirit of Oort, Lai et al. 2021): utility = statistical utility (samples x
  sqrt(mean squared loss)) x a system factor ``(T / t) ** alpha`` for workers slower than the preferred
  round duration T (the ``quantile`` of recent response times); an ``exploration`` share of the cohort goes
  to workers never measured, and a fairness floor forces in any worker not selected for ``max_skip``
  rounds, so no worker starves.
- ``poisson``: Poisson sampling, DP-FedAvg's (McMahan et al. 2018): every live worker joins independently
  with probability ``sampling_rate``, so the cohort's size is random (``k`` is ignored). The draws come from
  the OS CSPRNG (:class:`secrets.SystemRandom`), never from the broker's seeded generator: amplification
  by sampling needs the sample to be secret, and a ``random.Random(seed)`` is predictable to anyone who
  knows the seed.

All strategies choose only among the live workers they are given. Times in seconds.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federated.config import SELECTIONS  # named once, by the config that accepts them

__all__ = ["SELECTIONS", "Selector", "WorkerStats"]


@dataclass
class WorkerStats:
    """What the broker has learned about one worker from its past rounds."""

    duration: float | None = None  # seconds from TASK to answer, smoothed
    loss: float | None = None  # training loss it reported, smoothed
    num_samples: int = 1
    last_selected: int = -1  # round id

    def observe(self, duration: float, loss: float | None, smoothing: float = 0.5) -> None:
        self.duration = duration if self.duration is None else smoothing * duration + (1 - smoothing) * self.duration
        if loss is not None:
            self.loss = loss if self.loss is None else smoothing * loss + (1 - smoothing) * self.loss


class Selector:
    """Picks ``k`` of the live workers each round with ``strategy`` (one of ``SELECTIONS``); ``poisson``
    picks each live worker with probability ``sampling_rate`` instead (required for it, in (0, 1]).

    Raises ValueError for an unknown strategy or a missing or out-of-range ``sampling_rate``.
    """

    def __init__(self, strategy: str, rng: random.Random, *, exploration: float = 0.2, alpha: float = 2.0,
                 quantile: float = 0.5, max_skip: int = 20, sampling_rate: float | None = None) -> None:
        if strategy not in SELECTIONS:
            raise ValueError(f"selection {strategy!r} is not one of {', '.join(SELECTIONS)}")
        if strategy == "poisson" and not (sampling_rate is not None and 0.0 < sampling_rate <= 1.0):
            raise ValueError(f"selection poisson needs a sampling rate in (0, 1], got {sampling_rate!r}")
        self.strategy, self.rng = strategy, rng
        self.sampling_rate = sampling_rate
        # Poisson draws: the OS CSPRNG, never ``rng`` (see the module docstring).
        self._secret = secrets.SystemRandom()
        self.exploration, self.alpha, self.quantile, self.max_skip = exploration, alpha, quantile, max_skip
        self.stats: dict[str, WorkerStats] = {}

    def stats_of(self, worker_id: str) -> WorkerStats:
        return self.stats.setdefault(worker_id, WorkerStats())

    def state_dict(self) -> dict[str, list[Any]]:
        """What was learned about each worker, JSON-ready (the RNG is saved by its owner)."""
        return {w: [s.duration, s.loss, s.num_samples, s.last_selected] for w, s in sorted(self.stats.items())}

    def load_state_dict(self, state: Mapping[str, Sequence[Any]]) -> None:
        """Restore :meth:`state_dict`'s output. Raises ValueError/TypeError if it is malformed."""
        stats = {}
        for wid, (duration, loss, num_samples, last_selected) in state.items():
            stats[str(wid)] = WorkerStats(None if duration is None else float(duration),
                                          None if loss is None else float(loss), int(num_samples), int(last_selected))
        self.stats = stats

    def select(self, live: Sequence[str], k: int, round_id: int) -> list[str]:
        """``min(k, len(live))`` distinct workers from ``live``; under ``poisson``, each of ``live`` with
        probability ``sampling_rate`` (any number of them, none included)."""
        k = min(k, len(live))
        if self.strategy == "poisson":
            assert self.sampling_rate is not None  # checked in __init__
            chosen = self.poisson_sample(live, self.sampling_rate)
        elif self.strategy == "random" or k == len(live):
            chosen = self.rng.sample(list(live), k)
        elif self.strategy == "performance":
            chosen = self._performance(live, k)
        else:
            chosen = self._adaptive(live, k, round_id)
        for wid in chosen:
            self.stats_of(wid).last_selected = round_id
        return chosen

    def poisson_sample(self, live: Sequence[str], q: float) -> list[str]:
        """Each of ``live`` independently with probability ``q``, drawn from the OS CSPRNG.

        ``random()`` is uniform on multiples of 2^-53, so each worker joins with probability
        ``ceil(q * 2^53) / 2^53``: ``q`` to within 1.2e-16 (and exactly 1 at ``q = 1``).
        """
        return [w for w in live if self._secret.random() < q]

    def _performance(self, live: Sequence[str], k: int) -> list[str]:
        explore = self.rng.sample(list(live), max(1, k // 4))
        rest = [w for w in live if w not in explore]
        rest.sort(key=lambda w: (self.stats_of(w).duration or 0.0, -(self.stats_of(w).loss or 0.0)))
        return explore + rest[: k - len(explore)]

    def _adaptive(self, live: Sequence[str], k: int, round_id: int) -> list[str]:
        chosen: list[str] = []
        # Fairness floor first: anyone skipped too long is forced in (oldest first).
        starving = sorted((w for w in live if round_id - self.stats_of(w).last_selected > self.max_skip),
                          key=lambda w: self.stats_of(w).last_selected)
        chosen += starving[:k]
        unexplored = [w for w in live if self.stats_of(w).duration is None and w not in chosen]
        room = max(0, min(len(unexplored), math.ceil(self.exploration * k), k - len(chosen)))
        chosen += self.rng.sample(unexplored, room)
        known = [w for w in live if w not in chosen and self.stats_of(w).duration is not None]
        if known and len(chosen) < k:
            durations = sorted(self.stats_of(w).duration or 0.0 for w in known)
            preferred = durations[min(len(durations) - 1, int(self.quantile * len(durations)))]

            def utility(w: str) -> float:
                s = self.stats_of(w)
                statistical = s.num_samples * math.sqrt(max(s.loss or 1.0, 1e-12) ** 2)
                t = s.duration or preferred
                system = (preferred / t) ** self.alpha if t > preferred > 0 else 1.0
                return statistical * system

            known.sort(key=utility, reverse=True)
            chosen += known[: k - len(chosen)]
        if len(chosen) < k:  # not enough measured workers yet: fill at random
            others = [w for w in live if w not in chosen]
            chosen += self.rng.sample(others, k - len(chosen))
        return chosen
