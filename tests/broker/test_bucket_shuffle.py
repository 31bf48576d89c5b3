"""Secure-aggregation buckets are shuffled with the OS CSPRNG, so nobody can predict their bucket-mates.

README: bucket shuffling from the CSPRNG. :func:`federated.broker.planning.assign_buckets` must not
draw from Python's ``random`` or NumPy's generators, which a known seed (the run's ``seed`` setting, or any
reseeding) would make predictable. Two checks: with every statistical generator made to raise it still
works; and reseeding them identically before each call does not repeat the assignment.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from support.randomness import refuse_statistical_rng

from federated.broker.planning import assign_buckets

COHORT = [f"w{i:02d}" for i in range(20)]
SIZE = 5


@pytest.fixture
def no_statistical_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ``random`` and NumPy's generators raise if used."""
    refuse_statistical_rng(monkeypatch, "bucket shuffling must come from the OS CSPRNG")


def _check(buckets: list[list[str]]) -> None:
    assert len(buckets) == len(COHORT) // SIZE and all(len(b) == SIZE and b == sorted(b) for b in buckets)
    assert sorted(w for b in buckets for w in b) == COHORT


def test_bucket_shuffling_uses_no_statistical_generator(no_statistical_rng: None) -> None:
    for _ in range(3):
        _check(assign_buckets(COHORT, SIZE))


def test_reseeding_the_statistical_generators_does_not_repeat_the_buckets() -> None:
    draws = []
    for _ in range(5):
        random.seed(1234)
        np.random.seed(1234)  # the legacy global generator: what a careless shuffle would draw from
        buckets = assign_buckets(COHORT, SIZE)
        _check(buckets)
        draws.append(tuple(tuple(b) for b in buckets))
    # Each draw is one of 20! / (5!)^4 = 1.17e10 equally likely ordered bucket lists; two of five draws
    # coincide with probability at most C(5, 2) / 1.17e10 < 1e-9.
    assert math.factorial(20) // math.factorial(5) ** 4 > 1e10
    assert len(set(draws)) == 5


def test_without_bucketing_the_cohort_is_one_bucket(no_statistical_rng: None) -> None:
    assert assign_buckets(COHORT, None) == [COHORT]
    assert assign_buckets(COHORT[:4], SIZE) == [COHORT[:4]]
