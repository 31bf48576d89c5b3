"""Simulation-only behaviour of a worker: vanishing at a chosen protocol stage, and slow devices.

``fl simulate`` uses these to exercise dropouts and stragglers with the real worker code; a real worker
(``flworker``) never sets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DROPOUT_STAGES", "DropoutPlan", "SlowDevices"]

#: Where a simulated dropout can happen: on receiving the TASK, or a secure round's later stages.
DROPOUT_STAGES = ("task", "roster", "shares", "consistency", "unmask")


@dataclass(frozen=True)
class DropoutPlan:
    """Vanish at ``stage`` when this worker's position in the round's cohort is below
    ``round(rate * cohort_size)``: close the connection without a word and come back as a new one, as a
    device that lost its network would. Raises ``ValueError`` for an unknown stage or a rate outside
    [0, 1]."""

    rate: float = 0.0
    stage: str = "task"

    def __post_init__(self) -> None:
        if self.stage not in DROPOUT_STAGES:
            raise ValueError(f"dropout_stage must be one of {', '.join(DROPOUT_STAGES)}, got {self.stage!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {self.rate!r}")

    def vanishes(self, stage: str, cohort_index: int, cohort_size: int) -> bool:
        return stage == self.stage and cohort_index < round(self.rate * cohort_size)


@dataclass(frozen=True)
class SlowDevices:
    """``factors``: worker id -> how many times slower its device computes (1.0 or absent: normal)."""

    factors: Mapping[str, float] = field(default_factory=dict)

    def factor(self, worker_id: str) -> float:
        return float(self.factors.get(worker_id, 1.0))
