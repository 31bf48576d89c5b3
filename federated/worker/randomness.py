"""Where a worker's local randomness comes from: the training seed (batch order, DP-SGD's Poisson
batches), the stochastic rounding of a secure input, and distributed-DP noise.

Against a broker that cheats, none of these may be predictable or repeatable from what the broker knows
(the run's seed, the round, the worker id): DP-SGD's amplification by subsampling assumes the broker
cannot replay the sampler, and a broker that could make a worker compute the same update twice under two
survivor sets could subtract the two sums. So a real worker (``flworker``, the Python API) draws all of
it from the operating system's CSPRNG: :meth:`LocalRandomness.system`, the default everywhere.

``fl simulate`` runs broker and workers of one experiment on one machine, where the broker is the
experimenter's own process; there, reproducible runs matter more, and :meth:`LocalRandomness.seeded`
derives everything from the simulation's seed. Only the simulation's internal worker entry point
(``federated.cli.simworker``) uses it; ``flworker`` has no way to ask for it. Keys and masks never come
from here: they always come from ``os.urandom`` / ``cryptography`` (:mod:`federated.crypto`).
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

__all__ = ["LocalRandomness"]


class LocalRandomness:
    """One worker identity's source of local randomness (see the module docstring)."""

    def __init__(self, seed: int | None, worker_id: str) -> None:
        # None: the OS CSPRNG. An int: the simulation's reproducible stream for this worker.
        self._seed = seed
        self._worker_id = worker_id
        self._counter = 0

    @classmethod
    def system(cls, worker_id: str = "") -> LocalRandomness:
        """Everything from ``os.urandom``: what every real worker uses."""
        return cls(None, worker_id)

    @classmethod
    def seeded(cls, seed: int, worker_id: str) -> LocalRandomness:
        """Reproducible from ``seed`` (simulation only: the broker of a simulation knows the seed)."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return cls(seed, worker_id)

    @property
    def reproducible(self) -> bool:
        """Whether this stream is derived from a seed (a simulation) rather than the OS."""
        return self._seed is not None

    def _bytes(self, purpose: bytes, n: int) -> bytes:
        if self._seed is None:
            return os.urandom(n)
        self._counter += 1
        out = b""
        block = 0
        while len(out) < n:
            out += hashlib.sha256(b"fl-sim-randomness-v1" + struct.pack(">qQI", self._seed, self._counter, block)
                                  + purpose + b"|" + self._worker_id.encode()).digest()
            block += 1
        return out[:n]

    def training_seed(self, task_seed: int) -> int:
        """The seed of one local training run (32 bits). Reproducible streams keep ``task_seed`` (the
        run's seed, round and id: the same as before this class existed); the OS stream ignores it."""
        if self._seed is not None:
            return task_seed
        return int.from_bytes(os.urandom(4), "little")

    def rounding_seed(self) -> bytes:
        """32 bytes keying the stochastic rounding of one secure input."""
        return self._bytes(b"rounding", 32)

    def noise_generator(self) -> np.random.Generator:
        """A fresh PCG64 generator for distributed-DP noise, seeded with 256 bits from this stream."""
        return np.random.Generator(np.random.PCG64(int.from_bytes(self._bytes(b"noise", 32), "little")))
