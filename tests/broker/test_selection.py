"""Client selection strategies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from federated.broker.selection import SELECTIONS, Selector
from federated.config import SELECTIONS as CONFIG_SELECTIONS

IDS = [f"w{i:02d}" for i in range(20)]
SLOW = set(IDS[:4])


def _run(strategy: str, rounds: int = 50) -> tuple[Counter[str], list[float]]:
    sel = Selector(strategy, random.Random(0))
    counts: Counter[str] = Counter()
    round_times = []
    for r in range(rounds):
        cohort = sel.select(IDS, 10, r)
        assert len(set(cohort)) == 10 and set(cohort) <= set(IDS)
        counts.update(cohort)
        times = {w: (10.0 if w in SLOW else 1.0) for w in cohort}
        for w, t in times.items():
            sel.stats_of(w).observe(t, 1.0)
        round_times.append(max(times.values()))
    return counts, round_times


def test_names_match_the_config() -> None:
    assert SELECTIONS == CONFIG_SELECTIONS


def test_adaptive_avoids_slow_workers_yet_starves_none() -> None:
    _, random_times = _run("random")
    counts, times = _run("adaptive")
    assert sum(times) < 0.7 * sum(random_times)
    assert set(counts) == set(IDS)  # the fairness floor: everyone at least once in 50 rounds


def test_performance_prefers_fast_workers() -> None:
    counts, _ = _run("performance")
    assert sum(counts[w] for w in SLOW) < sum(counts[w] for w in IDS if w not in SLOW) / 4


def test_small_pools_and_unknown_strategies() -> None:
    sel = Selector("adaptive", random.Random(1))
    assert sorted(sel.select(["a", "b"], 5, 0)) == ["a", "b"]
    with pytest.raises(ValueError, match="adaptive"):
        Selector("greedy", random.Random(0))
