"""The SecAgg+ neighbour graph: who exchanges masks and holds shares with whom.

Bell et al. (2020) replace the complete graph of Bonawitz et al. (2017) with a random k-regular graph,
k = O(log n), which cuts each worker's key agreements, shares and mask expansions from n - 1 to k while
keeping the aggregate secure and robust to dropouts with high probability. We use a Harary graph (a ring
where each node is joined to its k/2 nearest nodes on each side) over a random permutation of the cohort;
the permutation is drawn from the mask PRG keyed by the session id, so every worker computes the same
graph without talking, and a broker cannot choose it after seeing the keys.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

from federated.crypto import prg
from federated.crypto.primitives import hkdf

__all__ = ["default_degree", "default_threshold", "degree_for", "neighbours"]

#: Cohorts up to this size use the complete graph: k = O(log n) only saves work for larger n.
COMPLETE_GRAPH_MAX = 30


def _draws(key: bytes) -> Iterator[int]:
    """An endless stream of uint32 words from the PRG keystream of ``key``."""
    produced = 0
    length = 64
    while True:
        # The keystream of a longer length starts with the shorter one, so extending is seamless.
        words = prg.keystream_u32(key, length)
        yield from (int(w) for w in words[produced:])
        produced = length
        length *= 2


def _below(draws: Iterator[int], bound: int) -> int:
    """Uniform in [0, bound) by rejection: drop draws from the last, incomplete run of ``bound`` values."""
    limit = 2**32 - (2**32 % bound)
    while True:
        value = next(draws)
        if value < limit:
            return value % bound


def _permutation(items: list[str], key: bytes) -> list[str]:
    order = list(items)
    draws = _draws(key)
    for i in range(len(order) - 1, 0, -1):  # Fisher-Yates
        j = _below(draws, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def neighbours(ids: Sequence[str], degree: int, session: bytes) -> dict[str, tuple[str, ...]]:
    """Each worker's neighbours (sorted tuples), keyed by worker id in sorted order.

    ``degree >= len(ids) - 1`` gives the complete graph. Otherwise ``degree`` must be even and >= 2, and
    the result is the Harary graph H(degree, n) over a permutation of the sorted ids drawn from
    ``hkdf(session, salt=b"", info=b"neighbour-graph")``: symmetric, every worker has exactly ``degree``
    neighbours, and the same (set of ids, degree, session) always gives the same graph.
    Raises ``ValueError`` for duplicate ids, a negative, odd or zero degree below n - 1.
    """
    members = sorted(ids)
    if len(set(members)) != len(members):
        raise ValueError("worker ids must be distinct")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
    n = len(members)
    if degree >= n - 1:
        return {u: tuple(v for v in members if v != u) for u in members}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and >= 2 when below n - 1 = {n - 1}, got {degree}")
    ring = _permutation(members, hkdf(session, salt=b"", info=b"neighbour-graph"))
    half = degree // 2
    adjacent: dict[str, tuple[str, ...]] = {}
    for position, u in enumerate(ring):
        # degree <= n - 2, so the 2 * half offsets are distinct and non-zero mod n.
        adjacent[u] = tuple(sorted(ring[(position + offset) % n]
                                   for step in range(1, half + 1) for offset in (step, -step)))
    return {u: adjacent[u] for u in members}


#: The dropout rate per round the default degree is sized for, and the chance of an abort it accepts.
DESIGN_DROPOUT = 0.1
DESIGN_ABORT_PROBABILITY = 1e-3


@functools.lru_cache(maxsize=256)
def degree_for(n: int, dropout: float, abort_probability: float = DESIGN_ABORT_PROBABILITY) -> int:
    """The smallest even degree k for which a cohort of ``n`` survives independent dropouts at rate
    ``dropout`` with probability at least ``1 - abort_probability``; ``n - 1`` (complete) if none does.

    With the majority threshold t = k // 2 + 1, a worker's secrets are lost when fewer than t of its k
    neighbours survive: P(Binomial(k, 1 - dropout) < t). The union bound over n workers must stay below
    ``abort_probability``. Raises ``ValueError`` for ``n < 1`` or a rate outside [0, 1).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cohort size must be an integer >= 1, got {n!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    survive = 1.0 - dropout
    for k in range(2, n - 1, 2):
        t = default_threshold(k)
        lost = sum(math.comb(k, i) * survive**i * (1 - survive) ** (k - i) for i in range(t))
        if n * lost <= abort_probability:
            return k
    return max(0, n - 1)


def default_degree(n: int) -> int:
    """The neighbour count for a cohort of ``n``: ``n - 1`` (complete graph) for ``n <= 30``; beyond,
    ``degree_for(n, 0.1)``: the smallest even k that survives 10% dropout per round with an abort chance
    of at most 1e-3.

    This is k = O(log n) as in Bell et al. 2020: 20 at n = 100, 24 at n = 1000. Masking costs a PRG pass
    per neighbour, so the degree is a trade-off: for rounds where more workers vanish, set a larger one
    (``degree_for(100, 0.2)`` = 44, ``degree_for(100, 0.3)`` = the complete graph). Raises ``ValueError``
    for ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cohort size must be an integer >= 1, got {n!r}")
    if n <= COMPLETE_GRAPH_MAX:
        return n - 1
    return degree_for(n, DESIGN_DROPOUT)


def default_threshold(degree: int) -> int:
    """The Shamir threshold for a secret held by ``degree`` neighbours: a majority, ``degree // 2 + 1``
    (at least 1). Two disjoint groups of holders cannot both reach a majority, so a broker cannot collect
    ``t`` shares of a worker's self-mask seed from one group and ``t`` of its mask key from another.
    Raises ``ValueError`` for a negative degree."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
    return max(1, degree // 2 + 1)
