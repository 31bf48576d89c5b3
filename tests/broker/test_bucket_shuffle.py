"""Secure-aggregation buckets are shuffled with the OS CSPRNG, so nobody can predict their bucket-mates.

README: bucket shuffling from the CSPRNG. :func:`federated.broker.planning.assign_buckets` must not
draw from Python's ``random`` or NumPy's generators, which a known seed (the run's ``seed`` setting, or any
reseeding) would make predictable. Two checks: with every statistical generator made to raise it still
works; and reseeding them identically before each call does not repeat the assignment.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from federated.broker.planning import assign_buckets

COHORT = [f"w{i:02d}" for i in range(20)]
SIZE = 5


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} was used: bucket shuffling must come from the OS CSPRNG")
    return refuse


@pytest.fixture
def no_statistical_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ``random`` (module functions and ``Random`` objects, not ``SystemRandom``) and NumPy's
    generators raise if used."""
    # Methods of existing and new Random instances; SystemRandom overrides these two with os.urandom.
    for name in ("random", "getrandbits"):
        monkeypatch.setattr(random.Random, name, _refuse(f"random.Random.{name}"))
    for name in ("random", "getrandbits", "randbytes", "randint", "randrange", "shuffle", "sample", "choice",
                 "choices", "seed", "Random"):
        monkeypatch.setattr(random, name, _refuse(f"random.{name}"))
    for name in ("default_rng", "Generator", "RandomState", "PCG64", "MT19937", "Philox", "SFC64", "SeedSequence",
                 "shuffle", "permutation", "random", "rand", "randint", "choice", "seed", "bytes"):
        monkeypatch.setattr(np.random, name, _refuse(f"numpy.random.{name}"))


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
