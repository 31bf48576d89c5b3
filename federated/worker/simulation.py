"""Simulation-only behaviour of a worker: vanishing at a chosen protocol stage, stragglers, slow devices.

``fl simulate`` uses these to exercise dropouts and stragglers with the real worker code; a real worker
(``flworker``) never sets them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DROPOUT_STAGES", "DropoutPlan", "SlowDevices", "Stragglers"]

log = logging.getLogger("federated.worker")

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
class Stragglers:
    """The stragglers of FedProx's systems heterogeneity (Li et al., MLSys 2020, §5.2, and their trainers):
    the workers at the first ``round(rate * cohort_size)`` positions of a round's cohort (the positions a
    :class:`DropoutPlan` of the same rate would drop) train fewer local epochs than the TASK asks for,
    uniform in 1..E-1 (as ``np.random.randint(1, E)`` there; 1 when E is 1), and still answer. Their FedAvg
    drops the stragglers instead: that is a dropout of the same rate. The epoch count is drawn from the
    training seed, so a seeded simulation repeats. Raises ``ValueError`` for a rate outside [0, 1]."""

    rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"straggler rate must be in [0, 1], got {self.rate!r}")

    def epochs(self, cohort_index: int, cohort_size: int, epochs: int, seed: int) -> int:
        """The local epochs the worker at ``cohort_index`` trains when the TASK asks for ``epochs``."""
        if epochs <= 1 or cohort_index >= round(self.rate * cohort_size):
            return epochs
        return random.Random(f"straggler/{seed}").randrange(1, epochs)

    def task_config(self, config: Mapping[str, Any], cohort_index: int, cohort_size: int, seed: int,
                    worker_id: str, round_id: int) -> Mapping[str, Any]:
        """A TASK's ``config`` as this worker trains it: with fewer local epochs if it is a straggler this
        round (a malformed ``train`` section is passed on as it is, for the trainer to refuse)."""
        train = config.get("train")
        epochs = train.get("epochs") if isinstance(train, dict) else None
        if not isinstance(train, dict) or not isinstance(epochs, int) or isinstance(epochs, bool):
            return config
        fewer = self.epochs(cohort_index, cohort_size, epochs, seed)
        if fewer == epochs:
            return config
        log.info("%s: simulated straggler in round %d: %d of %d local epochs", worker_id, round_id, fewer, epochs)
        return {**config, "train": {**train, "epochs": fewer}}


@dataclass(frozen=True)
class SlowDevices:
    """``factors``: worker id -> how many times slower its device computes (1.0 or absent: normal)."""

    factors: Mapping[str, float] = field(default_factory=dict)

    def factor(self, worker_id: str) -> float:
        return float(self.factors.get(worker_id, 1.0))
