"""The privacy budget of a training run: what has been spent, and whether the next round may start.

:class:`PrivacyBudgetTracker` records one entry per released round. The value recorded is the
**cumulative** guarantee of the whole run so far, as a :class:`~federated.privacy.PrivacyAccountant`
reports it after that round (``accountant.epsilon(delta)``): epsilons of a composition do not add up
linearly (RDP and PLD compose far tighter), so the tracker never sums them. The spent epsilon is the
latest recorded value; a later round cannot report less (that would mean the caller mixed up runs or
accountants, and is refused).

A caller that only has per-round costs of separate mechanisms can record them with
``cumulative=False``: they are then added under basic composition (epsilons add, deltas add), which is
always valid but loose. The two modes cannot be mixed in one tracker.

The check before a round is :meth:`PrivacyBudgetTracker.would_exceed` with the epsilon the accountant
*would* report (``accountant.would_spend(...)``); the broker refuses the round if it is true.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PrivacyBudgetTracker"]


def _non_negative(value: float, name: str) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _delta(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


class PrivacyBudgetTracker:
    """A run's (epsilon, delta) budget: ``max_epsilon`` (nats, finite, > 0) at ``delta`` in (0, 1).

    Raises ValueError for a bad budget. The budget is exceeded when the spent epsilon is *above*
    ``max_epsilon`` (spending exactly the budget is allowed) or the spent delta is above ``delta``.
    """

    def __init__(self, max_epsilon: float, delta: float = 1e-5) -> None:
        self.max_epsilon = _non_negative(max_epsilon, "max_epsilon")
        if self.max_epsilon == 0:
            raise ValueError("max_epsilon must be > 0, got 0")
        self.delta = _delta(delta, "delta")
        self._rounds: list[tuple[int, float, float]] = []  # (round_id, epsilon, delta) as recorded
        self._cumulative: bool | None = None  # fixed by the first record
        self._spent_epsilon = 0.0
        self._spent_delta = 0.0

    # ------------------------------------------------------------------------------------ recording

    def record_round(self, round_id: int, epsilon: float, delta: float, *, cumulative: bool = True) -> None:
        """Record the guarantee after round ``round_id`` (ints, strictly increasing).

        With ``cumulative=True`` (default) ``epsilon``/``delta`` are the whole run's guarantee after this
        round, from an accountant; with ``cumulative=False`` they are this round's own cost and are
        added. Raises ValueError for a non-increasing round id, negative or non-finite epsilon, delta
        outside (0, 1), a cumulative epsilon below the previous one, or a switch of mode.
        """
        if isinstance(round_id, bool) or not isinstance(round_id, int) or round_id < 0:
            raise ValueError(f"round_id must be an integer >= 0, got {round_id!r}")
        if self._rounds and round_id <= self._rounds[-1][0]:
            last = self._rounds[-1][0]
            raise ValueError(f"round_id {round_id} is not after the last recorded round {last}")
        epsilon = _non_negative(epsilon, "epsilon")
        delta = _delta(delta, "delta")
        if self._cumulative is not None and self._cumulative != cumulative:
            raise ValueError("cannot mix cumulative and per-round records in one tracker")
        if cumulative:
            if epsilon < self._spent_epsilon:
                raise ValueError(
                    f"cumulative epsilon {epsilon} is below the {self._spent_epsilon} already recorded; "
                    "record the accountant's total after each round (or use cumulative=False)"
                )
            self._spent_epsilon, self._spent_delta = epsilon, delta
        else:
            self._spent_epsilon += epsilon
            self._spent_delta += delta
        self._cumulative = cumulative
        self._rounds.append((round_id, epsilon, delta))

    # --------------------------------------------------------------------------------------- queries

    @property
    def spent_epsilon(self) -> float:
        """Epsilon spent so far (nats); 0.0 before any record."""
        return self._spent_epsilon

    @property
    def spent_delta(self) -> float:
        """Delta spent so far; 0.0 before any record."""
        return self._spent_delta

    def is_budget_exceeded(self) -> bool:
        """Whether the spent epsilon is above ``max_epsilon`` or the spent delta above ``delta``."""
        return self._spent_epsilon > self.max_epsilon or self._spent_delta > self.delta

    def would_exceed(self, epsilon: float, delta: float | None = None) -> bool:
        """Whether recording ``epsilon`` (and ``delta``) next would exceed the budget, in this tracker's
        mode: a cumulative total, or a per-round cost added to what is spent. Without ``delta`` only
        epsilon is checked (the spent delta is kept). Raises ValueError for a negative or non-finite
        epsilon or a delta outside (0, 1)."""
        epsilon = _non_negative(epsilon, "epsilon")
        additive = self._cumulative is False
        if delta is None:
            spent_delta = self._spent_delta
        else:
            spent_delta = _delta(delta, "delta") + (self._spent_delta if additive else 0.0)
        if additive:
            epsilon += self._spent_epsilon
        return epsilon > self.max_epsilon or spent_delta > self.delta

    def get_budget_status(self) -> dict[str, Any]:
        """``{"spent_epsilon", "remaining_epsilon", "max_epsilon", "delta", "spent_delta", "rounds",
        "last_round", "exceeded"}``; remaining is never negative, last_round is None before a record."""
        return {
            "spent_epsilon": self._spent_epsilon,
            "remaining_epsilon": max(0.0, self.max_epsilon - self._spent_epsilon),
            "max_epsilon": self.max_epsilon,
            "delta": self.delta,
            "spent_delta": self._spent_delta,
            "rounds": len(self._rounds),
            "last_round": self._rounds[-1][0] if self._rounds else None,
            "exceeded": self.is_budget_exceeded(),
        }

    # ----------------------------------------------------------------------------------------- state

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (budget, mode and every record), for a resumed broker."""
        return {
            "max_epsilon": self.max_epsilon,
            "delta": self.delta,
            "cumulative": self._cumulative,
            "rounds": [[r, e, d] for r, e, d in self._rounds],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyBudgetTracker:
        """Rebuild from :meth:`to_dict` by replaying the records; raises ValueError for bad state."""
        keys = {"max_epsilon", "delta", "cumulative", "rounds"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ValueError(f"budget state must be an object with keys {sorted(keys)}")
        tracker = cls(data["max_epsilon"], data["delta"])
        rounds = data["rounds"]
        if not isinstance(rounds, list):
            # ValueError, not TypeError, for every defect of decoded state: callers catch one type.
            raise ValueError("budget state 'rounds' must be a list")  # noqa: TRY004
        mode = data["cumulative"]
        if not (mode is None or isinstance(mode, bool)) or (mode is None and rounds):
            raise ValueError(f"budget state 'cumulative' must be a bool (null without rounds), got {mode!r}")
        for i, entry in enumerate(rounds):
            if not isinstance(entry, list) or len(entry) != 3:
                raise ValueError(f"budget state round {i} must be [round_id, epsilon, delta]")
            tracker.record_round(entry[0], entry[1], entry[2], cumulative=bool(mode))
        return tracker

    def __repr__(self) -> str:
        return (
            f"PrivacyBudgetTracker(max_epsilon={self.max_epsilon!r}, delta={self.delta!r}, "
            f"spent_epsilon={self._spent_epsilon!r}, rounds={len(self._rounds)})"
        )
