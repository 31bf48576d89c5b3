"""Split a dataset's samples among clients: ``iid``, label-skewed ``dirichlet:ALPHA``, or ``natural``.

``iid`` shuffles the samples and deals them out in near-equal shares. ``dirichlet:ALPHA`` is the label-skew
partition of Hsu et al. (2019, "Measuring the effects of non-identical data distribution"): for every class
the share each client receives is drawn from Dirichlet(ALPHA, ..., ALPHA). Small ALPHA (0.1) gives each
client a few dominant classes; large ALPHA (100) approaches iid. Draws that leave a client with fewer than
``min_samples`` samples are re-drawn a bounded number of times. ``natural`` is the data set's own split
into devices (``leaf-synthetic``: client i gets device i's samples); it needs a data set that has one, and
exactly as many clients as devices.

Randomness comes from a NumPy generator seeded with ``seed``: partitioning is simulation bookkeeping, not
anything secret, and it must be reproducible.
"""

from __future__ import annotations

import math

import numpy as np

from federated.data.datasets import Dataset
from federated.data.errors import DataError

__all__ = ["MAX_DIRICHLET_DRAWS", "parse_partition", "partition", "partition_dataset"]

#: Re-draws allowed before a Dirichlet partition that keeps starving some client is declared impossible.
MAX_DIRICHLET_DRAWS = 1000
#: ... and at most this many shares drawn over all re-draws (classes x clients a draw), so a hopeless
#: request fails within about a second however many clients it asks for: 1,000 draws for 10,000 clients
#: took 85 s. The bound depends only on the request, so every process of a simulation agrees.
MAX_DIRICHLET_SHARES = 10_000_000

_ALLOWED = ('"iid", "dirichlet:ALPHA" with ALPHA > 0 (e.g. "dirichlet:0.5") or "natural" (for a data set '
            'split into devices: leaf-synthetic)')


def parse_partition(spec: str) -> tuple[str, float | None]:
    """Parse a partition spec into ``(kind, alpha)``: ``("iid", None)``, ``("dirichlet", alpha)`` or
    ``("natural", None)``.

    Raises :class:`DataError` naming the allowed values for anything else, including ALPHA <= 0, NaN or inf.
    """
    if spec in ("iid", "natural"):
        return spec, None
    kind, sep, value = spec.partition(":")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(value)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return "dirichlet", alpha
        raise DataError(f"partition {spec!r}: ALPHA must be a finite number > 0; allowed: {_ALLOWED}")
    raise DataError(f"unknown partition {spec!r}; allowed: {_ALLOWED}")


def partition_dataset(data: Dataset, num_clients: int, spec: str, *, seed: int,
                      min_samples: int = 2) -> list[np.ndarray]:
    """:func:`partition` of ``data``'s samples, with its devices for ``natural`` (errors name ``data``)."""
    return partition(data.y, num_clients, spec, seed=seed, min_samples=min_samples, devices=data.devices,
                     source=data.name)


def partition(
    labels: np.ndarray, num_clients: int, spec: str, *, seed: int, min_samples: int = 2,
    devices: np.ndarray | None = None, source: str = "the data set",
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` among ``num_clients`` clients.

    Returns one sorted int64 index array per client; together they are disjoint and cover every sample.
    Deterministic from ``seed``. Every client gets at least ``min_samples`` samples. ``natural`` gives
    client i the samples whose entry in ``devices`` is i (``source`` names the data set in its errors).
    Raises :class:`DataError` for a bad spec, too few samples for the clients, a Dirichlet partition that
    still starves some client after :data:`MAX_DIRICHLET_DRAWS` draws, or :data:`MAX_DIRICHLET_SHARES`
    shares drawn in all (raise ALPHA or lower the client
    count), or ``natural`` without devices or with a client count other than the device count.
    """
    kind, alpha = parse_partition(spec)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {labels.shape}")
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if min_samples < 0:
        raise DataError(f"min_samples must be >= 0, got {min_samples}")
    n = len(labels)
    if n == 0:
        raise DataError("cannot partition an empty dataset")
    if kind == "natural":
        return _natural(labels, num_clients, devices, source, min_samples)
    if n < num_clients * min_samples:
        raise DataError(
            f"{n} samples cannot give {num_clients} clients at least {min_samples} each; "
            "use fewer clients or a larger dataset"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        shares = np.array_split(rng.permutation(n), num_clients)
        return [np.sort(share).astype(np.int64) for share in shares]
    assert alpha is not None  # parse_partition returns an alpha for every non-iid kind
    return _dirichlet(labels, num_clients, alpha, rng, min_samples, spec)


def _natural(labels: np.ndarray, num_clients: int, devices: np.ndarray | None, source: str,
             min_samples: int) -> list[np.ndarray]:
    if devices is None:
        raise DataError(f"partition 'natural': {source} has no natural split into devices (only "
                        "leaf-synthetic:ALPHA,BETA[,DEVICES] has); use iid or dirichlet:ALPHA")
    devices = np.asarray(devices)
    if devices.shape != labels.shape:
        raise DataError(f"partition 'natural': devices must have shape {labels.shape}, got {devices.shape}")
    count = int(devices.max()) + 1
    if num_clients != count:
        raise DataError(f"partition 'natural': {source} has {count} devices, so the number of clients "
                        f"(--num-clients) must be {count}, got {num_clients}")
    # A stable sort keeps each device's samples in order: client i's indices come out sorted.
    order = np.argsort(devices, kind="stable").astype(np.int64)
    parts = np.split(order, np.cumsum(np.bincount(devices, minlength=count))[:-1])
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise DataError(f"partition 'natural': a device of {source} has {smallest} < {min_samples} samples")
    return parts


def _dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int,
    spec: str,
) -> list[np.ndarray]:
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    class_sizes = np.array([len(m) for m in members], dtype=np.int64)
    smallest = 0
    draws = max(1, min(MAX_DIRICHLET_DRAWS, MAX_DIRICHLET_SHARES // (len(members) * num_clients)))
    for _ in range(draws):
        # One row of client shares per class. Cut points are rounded on the cumulative sum (not per
        # client) so that each class is still split exactly; only counts are computed per draw, which
        # keeps a hopeless request (say 1,000 clients on 1,400 samples) failing in milliseconds.
        proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(members))
        cuts = np.round(np.cumsum(proportions, axis=1)[:, :-1] * class_sizes[:, None]).astype(np.int64)
        bounds = np.concatenate([np.zeros((len(members), 1), np.int64), cuts, class_sizes[:, None]], axis=1)
        smallest = int(np.diff(bounds, axis=1).sum(axis=0).min())
        if smallest >= min_samples:
            shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for class_members, class_cuts in zip(members, cuts):
                for client, piece in enumerate(np.split(class_members, class_cuts)):
                    shares[client].append(piece)
            return [np.sort(np.concatenate(pieces)).astype(np.int64) for pieces in shares]
    raise DataError(
        f"partition {spec!r}: after {draws} draws some client still had {smallest} < "
        f"{min_samples} samples ({len(labels)} samples, {num_clients} clients); "
        "use a larger ALPHA, fewer clients or a smaller min_samples"
    )
