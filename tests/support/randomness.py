"""Make the statistical generators unusable, to show that something draws only from the OS CSPRNG (or
``cryptography``): Python's ``random`` (module functions and ``Random`` objects, not ``SystemRandom``) and
NumPy's generators raise if used."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

__all__ = ["refuse_statistical_rng"]

_RANDOM_FUNCTIONS = ("random", "getrandbits", "randbytes", "randint", "randrange", "shuffle", "sample", "choice",
                     "choices", "seed", "Random")
_NUMPY_FUNCTIONS = ("default_rng", "Generator", "RandomState", "PCG64", "MT19937", "Philox", "SFC64", "SeedSequence",
                    "shuffle", "permutation", "random", "rand", "randint", "integers", "choice", "seed", "bytes")


def refuse_statistical_rng(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    """From now on (for the test), any use of a statistical generator raises AssertionError naming it and
    ``why`` it must not be used."""

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{name} was used: {why}")
        return refused

    # Methods of existing and new Random instances; SystemRandom overrides these two with os.urandom.
    for name in ("random", "getrandbits"):
        monkeypatch.setattr(random.Random, name, refuse(f"random.Random.{name}"))
    for name in _RANDOM_FUNCTIONS:
        monkeypatch.setattr(random, name, refuse(f"random.{name}"))
    for name in _NUMPY_FUNCTIONS:
        if hasattr(np.random, name):
            monkeypatch.setattr(np.random, name, refuse(f"numpy.random.{name}"))
