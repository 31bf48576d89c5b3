"""A worker's own safety floor for secure aggregation: limits it holds every round to, whatever the
broker's parameters say (the broker chooses ``threshold`` and ``degree`` and could choose them to break
privacy, so the worker, not the broker, owns these checks).

Why these limits. Each secret of worker u (its self-mask seed ``b_u`` and its mask key ``s_u``) is
Shamir-shared with threshold ``t`` among its ``k`` neighbours, and an honest neighbour answers one unmask
request per round with either kind of share for u, never both. To learn u's input, a cheating broker must
rebuild both ``b_u`` (from ``t`` holders told "u survived") and ``s_u`` (from ``t`` holders told "u
dropped"). Colluding neighbours answer both ways, so with ``c`` of them among the ``k`` the split needs
``2t <= k + c``. The floor ``2t > k + assumed_colluders`` makes that impossible for up to
``assumed_colluders`` colluding neighbours; the consistency stage (survivors sign the one survivor set
they were told) makes every honest worker answer for the same set.
"""

from __future__ import annotations

from dataclasses import dataclass

from federated.crypto.errors import ParameterError, ProtocolViolation

__all__ = ["SafetyFloor"]


@dataclass(frozen=True)
class SafetyFloor:
    """What a worker requires of a secure round before it reveals anything.

    ``min_degree``: the fewest neighbours (pairwise masks) it accepts; ``assumed_colluders``: colluding
    neighbours it must withstand (``2 * threshold > degree + assumed_colluders``); ``min_survivors``: the
    fewest inputs it lets the broker unmask a sum of (at least the threshold, whatever is set here).
    """

    min_degree: int = 2
    assumed_colluders: int = 0
    min_survivors: int = 0

    def __post_init__(self) -> None:
        for name in ("min_degree", "assumed_colluders", "min_survivors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ParameterError(f"secure-aggregation floor {name} must be a non-negative integer, "
                                     f"got {value!r}")
        if self.min_degree < 1:
            raise ParameterError(f"secure-aggregation floor min_degree must be >= 1, got {self.min_degree}")

    def check_graph(self, threshold: int, degree: int) -> None:
        """Refuse (ProtocolViolation) a round where this worker has ``degree`` neighbours holding its
        secrets with ``threshold``: too few neighbours, or a threshold low enough to split."""
        if degree < self.min_degree:
            raise ProtocolViolation(f"{degree} neighbours is below this worker's minimum of {self.min_degree}")
        if 2 * threshold <= degree + self.assumed_colluders:
            raise ProtocolViolation(
                f"threshold {threshold} with {degree} neighbours lets a broker rebuild both of a worker's "
                f"secrets (needs 2 * threshold > neighbours + {self.assumed_colluders} assumed colluders)")

    def survivors_needed(self, threshold: int) -> int:
        """The fewest survivors this worker lets a sum be unmasked over."""
        return max(threshold, self.min_survivors)
