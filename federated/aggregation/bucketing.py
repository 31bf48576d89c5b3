"""Bucketing (Karimireddy, He and Jaggi 2022): average random groups of updates before a robust rule.

Under non-IID data honest updates differ a lot, and robust rules mistake that heterogeneity for
attacks (or attackers hide in it). Averaging random buckets of ``s`` updates divides the honest spread
by about ``sqrt(s)``; each Byzantine worker contaminates at most one bucket, so the inner rule still
faces at most ``f`` bad rows, now out of ``ceil(n / s)``. The price: the Byzantine *fraction* the inner
rule sees grows by up to ``s``, so ``s`` must stay below (inner breakdown fraction) / (f / n).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from federated.aggregation.rule import Rule, as_update_matrix, check_count, require_cohort

__all__ = ["Bucketing", "bucket_means"]


def bucket_means(updates: np.ndarray, bucket_size: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``ceil(n / s)`` buckets of the rows of ``updates`` (n, d), shuffled by ``rng.permutation``.

    Buckets are consecutive runs of ``s = bucket_size`` shuffled rows; the last holds the remainder
    when ``s`` does not divide ``n``. The result keeps the input's float dtype (float32 stays float32).
    Raises ``ValueError`` for a bucket size below 1 or bad input.
    """
    x = as_update_matrix(updates, "bucketing")
    s = check_count("bucket_size", bucket_size, 1)
    n, d = x.shape
    order = rng.permutation(n)
    full, rest = divmod(n, s)
    means = np.empty((full + (rest > 0), d), dtype=x.dtype)
    if full:
        # Bucket b holds shuffled rows b*s .. b*s + s - 1: add the j-th member of every bucket at once.
        # (np.add.reduceat does the same but was 10x slower along axis 0.)
        members = order[:full * s].reshape(full, s)
        # Each member is divided before adding, so that huge finite float32 values cannot overflow.
        np.divide(x[members[:, 0]], s, out=means[:full])
        for j in range(1, s):
            means[:full] += x[members[:, j]] / x.dtype.type(s)
    if rest:
        means[full] = x[order[full * s:]].mean(axis=0, dtype=np.float64)  # float64: no overflow
    return means


@dataclass
class Bucketing:
    """Any rule applied to bucket means: shuffle with ``rng``, average buckets of ``bucket_size``, then
    aggregate the bucket means with ``inner``.

    Tolerates what ``inner`` tolerates at the same f, counted in buckets: it needs
    ``ceil(n / s) >= inner.min_clients()``, i.e. ``n >= (inner.min_clients() - 1) * s + 1``. With
    ``s = 1`` it is ``inner`` on shuffled rows. ``weights`` are ignored (the buckets are plain means).
    Raises ``ValueError`` for too small a cohort or bad input.
    """

    inner: Rule
    bucket_size: int = 2
    rng: np.random.Generator = field(default_factory=np.random.default_rng, compare=False, repr=False)
    name: str = field(init=False)
    needs_individual_updates: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_count("bucket_size", self.bucket_size, 1)
        self.name = f"bucketing({self.inner.name}, s={self.bucket_size})"

    def min_clients(self) -> int:
        return (self.inner.min_clients() - 1) * self.bucket_size + 1

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        x = as_update_matrix(updates, self.name, check_finite=False)  # bucket_means checks
        f = int(getattr(self.inner, "f", 0))
        require_cohort(self.name, x.shape[0], f, self.min_clients(),
                       f"(min_clients({self.inner.name}) - 1) * s + 1")
        return self.inner(bucket_means(x, self.bucket_size, self.rng))
