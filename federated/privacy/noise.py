"""Drawing privacy noise: Gaussian noise for float trees, and Skellam shares for distributed DP.

Noise must be unpredictable to everyone who sees the noised result, including the broker. Training
seeds are not: they are derived from the run seed, the round and the worker id (``task_seed``), which the
broker knows, so noise seeded from them could be subtracted again. :func:`noise_rng` therefore seeds a
NumPy generator with 256 bits from the operating system's CSPRNG (``os.urandom``), fresh for every call.
(PCG64 is a statistical generator, not a cryptographic one; what the guarantee needs is a seed nobody can
know, and it gets one. Pairwise masks and keys of secure aggregation never use NumPy at all: they stay
in :mod:`federated.crypto` on AES-CTR.)

Skellam noise: a worker's share is ``Poisson(mu) - Poisson(mu)`` per coordinate (variance ``2 mu``). Sums
of independent Skellam variables are Skellam, so ``n`` workers' shares add up to Skellam noise of
variance ``2 n mu``; integers survive secure aggregation's arithmetic mod 2^32 exactly. Planning the
shares and accounting for them is in :mod:`federated.privacy.skellam`.

The accountant assumes the shares *are* Skellam, so the Poisson draws must be exact. NumPy's sampler
(PTRS, Hoermann 1993) is exact in exact arithmetic, but it evaluates log-factorials of size ``lam *
log(lam)`` in float64, and for very large means the error shows: measured on 2 million draws, the variance
is 1.008 lam at lam = 1e14 and 1.096 lam at 3e14 (a fatter tail than accounted), against 1.000 within
sampling error up to 1e13. A share therefore never asks it for a mean above :data:`POISSON_EXACT_MAX`
(1e10): a larger ``mu`` is drawn as the sum of ``ceil(mu / 1e10)`` Poisson draws of equal means, which is
Poisson(mu) exactly (Poisson is additive). The ledger picks its fixed-point scale so that honest runs need
one draw per side (:class:`federated.privacy.ledger.PrivacyLedger`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["POISSON_EXACT_MAX", "gaussian_noise_like", "noise_rng", "skellam_share"]

#: The largest Poisson mean one NumPy draw is asked for (its sampler is exact well beyond, to ~1e13).
POISSON_EXACT_MAX = 1e10


def noise_rng() -> np.random.Generator:
    """A fresh NumPy generator (PCG64) seeded with 256 bits from ``os.urandom``: for noise only."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


def _check_std(std: float) -> float:
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    return float(std)


def gaussian_noise_like(tree: Any, std: float, rng: np.random.Generator) -> Any:
    """Independent N(0, std^2) noise shaped like ``tree``, a NumPy array or a (nested) mapping of arrays.

    Float leaves keep their dtype (noise is drawn in float64, then cast); other leaves get float64 noise.
    Mappings come back as plain dicts with the same keys in the same order. ``std`` is in the units of the
    values (e.g. ``sigma * clip``). Raises ValueError for a negative or non-finite ``std`` and TypeError for
    a leaf that is not array-like.
    """
    std = _check_std(std)
    if isinstance(tree, Mapping):
        return {key: gaussian_noise_like(value, std, rng) for key, value in tree.items()}
    try:
        array = np.asarray(tree)
    except Exception as exc:  # anything numpy cannot read is the caller's type error
        raise TypeError(f"noise tree leaves must be arrays, got {type(tree).__name__}") from exc
    if array.dtype.kind not in "fiub":
        raise TypeError(f"noise tree leaves must be numeric arrays, got dtype {array.dtype}")
    dtype = array.dtype if array.dtype.kind == "f" else np.dtype(np.float64)
    return rng.normal(0.0, std, size=array.shape).astype(dtype, copy=False)


def skellam_share(size: int | tuple[int, ...], mu: float, rng: np.random.Generator) -> np.ndarray:
    """One worker's share of Skellam noise: ``Poisson(mu) - Poisson(mu)`` per coordinate, as int64.

    Each coordinate has mean 0 and variance ``2 * mu`` (integer units, i.e. already at the fixed-point
    scale). Each side is drawn exactly, as ``ceil(mu / POISSON_EXACT_MAX)`` draws of ``rng.poisson`` of
    equal means summed (see the module docstring), so a ``mu`` above 1e10 costs that many passes.
    ``mu = 0`` gives zeros. Raises ValueError for a negative, non-finite or absurdly large ``mu`` (above
    1e15, where the int64 counts lose their meaning for a 32-bit sum anyway).
    """
    is_number = isinstance(mu, (int, float)) and not isinstance(mu, bool)
    if not (is_number and math.isfinite(mu) and 0 <= mu <= 1e15):
        raise ValueError(f"mu must be a finite number in [0, 1e15], got {mu!r}")
    if mu == 0:
        return np.zeros(size, dtype=np.int64)
    parts = math.ceil(mu / POISSON_EXACT_MAX)
    lam = mu / parts
    share = rng.poisson(lam, size).astype(np.int64)
    share -= rng.poisson(lam, size)
    for _ in range(parts - 1):
        share += rng.poisson(lam, size)
        share -= rng.poisson(lam, size)
    return share
