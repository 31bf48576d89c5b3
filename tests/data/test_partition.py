"""Client partitioners: iid and Dirichlet label skew."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.data import DataError, parse_partition, partition

LABELS = np.arange(2000) % 10  # balanced, 200 per class


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("iid", ("iid", None)), ("dirichlet:0.5", ("dirichlet", 0.5)), ("dirichlet:1e-1", ("dirichlet", 0.1)),
     ("natural", ("natural", None))],
)
def test_parse_partition_accepts(spec: str, expected: tuple[str, float | None]) -> None:
    assert parse_partition(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "IID",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:abc",
        "shards:2",
    ],
)
def test_parse_partition_rejects_with_allowed_values(spec: str) -> None:
    with pytest.raises(DataError, match=r'"iid", "dirichlet:ALPHA" with ALPHA > 0 .* or "natural"'):
        parse_partition(spec)


def _check_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.1", "dirichlet:1.0", "dirichlet:100"])
@pytest.mark.parametrize("num_clients", [1, 7, 50])
def test_disjoint_cover_and_min_samples(spec: str, num_clients: int) -> None:
    parts = partition(LABELS, num_clients, spec, seed=0)
    assert len(parts) == num_clients
    _check_disjoint_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 2
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3"])
def test_deterministic_from_seed(spec: str) -> None:
    a = partition(LABELS, 10, spec, seed=5)
    b = partition(LABELS, 10, spec, seed=5)
    c = partition(LABELS, 10, spec, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_shares_are_balanced() -> None:
    sizes = [len(p) for p in partition(LABELS, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def _mean_top_class_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


def test_small_alpha_skews_label_histograms() -> None:
    skewed = _mean_top_class_share(partition(LABELS, 20, "dirichlet:0.1", seed=0))
    mild = _mean_top_class_share(partition(LABELS, 20, "dirichlet:100", seed=0))
    iid = _mean_top_class_share(partition(LABELS, 20, "iid", seed=0))
    assert skewed > 0.5  # a dominant class per client
    assert mild < 0.25 and iid < 0.25  # close to the uniform 0.1


def test_too_many_clients_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="2000 samples cannot give 1001 clients at least 2"):
        partition(LABELS, 1001, "iid", seed=0)


def test_impossible_dirichlet_fails_fast_with_advice() -> None:
    start = time.perf_counter()
    with pytest.raises(DataError, match="use a larger ALPHA, fewer clients"):
        partition(LABELS, 500, "dirichlet:0.05", seed=0, min_samples=3)
    assert time.perf_counter() - start < 5.0


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="num_clients"):
        partition(LABELS, 0, "iid", seed=0)
    with pytest.raises(DataError, match="1-D"):
        partition(LABELS.reshape(2, -1), 2, "iid", seed=0)
    with pytest.raises(DataError, match="empty"):
        partition(np.array([], dtype=np.int64), 2, "iid", seed=0, min_samples=0)
    with pytest.raises(DataError, match="unknown partition"):
        partition(LABELS, 2, "shards", seed=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(10, 300),
    classes=st.integers(1, 12),
    clients=st.integers(1, 5),
    alpha=st.sampled_from([0.3, 1.0, 10.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_always_covers_exactly(n: int, classes: int, clients: int, alpha: float, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    parts = partition(labels, clients, f"dirichlet:{alpha}", seed=seed, min_samples=1)
    _check_disjoint_cover(parts, n)
