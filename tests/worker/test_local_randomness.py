"""A real worker's local randomness comes from the OS (issue 13 #12): the keys of its stochastic rounding
and the seeds of its distributed-DP noise are bytes ``os.urandom`` returned, so nothing the broker knows
replays them. Found unguarded by the mutation check (``benchmarks/mutation.py``): with the OS stream
replaced by zeros every test still passed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from federated.worker.randomness import LocalRandomness


def test_the_system_stream_is_what_os_urandom_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[bytes] = []
    real = os.urandom

    def spy(n: int) -> bytes:
        given.append(real(n))
        return given[-1]

    monkeypatch.setattr("federated.worker.randomness.os.urandom", spy)
    local = LocalRandomness.system("w0")
    assert not local.reproducible
    seed = local.rounding_seed()
    assert len(seed) == 32 and given == [seed]
    generator = local.noise_generator()
    expected = np.random.Generator(np.random.PCG64(int.from_bytes(given[-1], "little")))
    assert generator.integers(0, 2**63, 4).tolist() == expected.integers(0, 2**63, 4).tolist()


def test_two_system_streams_never_repeat() -> None:
    a, b = LocalRandomness.system("w0"), LocalRandomness.system("w0")
    seeds = {a.rounding_seed(), a.rounding_seed(), b.rounding_seed()}
    assert len(seeds) == 3  # equal with probability 2^-256 per pair
    draws = [g.integers(0, 2**63, 4).tolist() for g in (a.noise_generator(), b.noise_generator())]
    assert draws[0] != draws[1]
