"""The SecAgg+ neighbour graph: k-regular, symmetric, the same for every worker, fresh per session."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.crypto import graph


def _ids(n: int) -> list[str]:
    return [f"worker-{i:03d}" for i in range(n)]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_regular_and_symmetric(n: int, data: st.DataObject) -> None:
    if n >= 4:
        degree = data.draw(st.one_of(st.sampled_from(range(2, n - 1, 2)), st.integers(n - 1, n + 3)))
    else:
        degree = data.draw(st.integers(max(n - 1, 0), n + 3))
    ids = _ids(n)
    adjacency = graph.neighbours(ids, degree, data.draw(st.binary(min_size=0, max_size=40)))
    assert sorted(adjacency) == ids
    expected = min(degree, n - 1)
    for u, vs in adjacency.items():
        assert len(vs) == len(set(vs)) == expected
        assert u not in vs and list(vs) == sorted(vs)
        for v in vs:
            assert u in adjacency[v]


def test_deterministic_given_the_set_of_ids() -> None:
    ids, session = _ids(50), os.urandom(32)
    first = graph.neighbours(ids, 6, session)
    assert graph.neighbours(list(reversed(ids)), 6, session) == first
    assert graph.neighbours(tuple(ids[25:] + ids[:25]), 6, session) == first


def test_sessions_give_different_graphs() -> None:
    ids = _ids(50)
    graphs = {tuple(sorted(graph.neighbours(ids, 4, os.urandom(32)).items())) for _ in range(10)}
    assert len(graphs) == 10


def test_complete_graph_when_degree_reaches_n_minus_1() -> None:
    ids = _ids(7)
    for degree in (6, 7, 100):
        adjacency = graph.neighbours(ids, degree, b"s")
        assert all(set(vs) == set(ids) - {u} for u, vs in adjacency.items())
    assert graph.neighbours([], 0, b"s") == {}
    assert graph.neighbours(["solo"], 0, b"s") == {"solo": ()}


@pytest.mark.parametrize(("n", "degree"), [(10, 3), (10, 7), (10, 0), (10, -2), (5, 1)])
def test_bad_degree_is_refused(n: int, degree: int) -> None:
    with pytest.raises(ValueError):
        graph.neighbours(_ids(n), degree, b"s")


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        graph.neighbours(["a", "b", "a"], 2, b"s")


def test_permutation_is_unbiased() -> None:
    # All 6 orders of 3 ids over 12,000 sessions: each ~2,000 times (sd ~41). The classic biased shuffle
    # (swap with any position) gives 1,778 or 2,222 (5.4 sd off); the tolerance is 4.5 sd.
    counts = Counter(tuple(graph._permutation(["a", "b", "c"], os.urandom(32))) for _ in range(12_000))
    assert len(counts) == 6
    assert all(abs(c - 2000) < 185 for c in counts.values()), counts


def test_rejection_sampling_drops_the_incomplete_run() -> None:
    # For bound 3, 2^32 - 1 is in the incomplete last run of three values and must be redrawn.
    draws = iter([2**32 - 1, 5])
    assert graph._below(draws, 3) == 2
    assert graph._below(iter([2**32 - 2]), 3) == (2**32 - 2) % 3


def test_defaults() -> None:
    # Small cohorts use the complete graph; beyond, the degree is either n - 1 or an even k < n - 1 that
    # the Harary construction accepts (the exact rule for k lives in default_degree's docstring).
    assert [graph.default_degree(n) for n in (1, 2, 10, 30)] == [0, 1, 9, 29]
    for n in range(31, 2000, 37):
        k = graph.default_degree(n)
        assert k == n - 1 or (k % 2 == 0 and 2 <= k < n - 1)
        if n < 200:
            graph.neighbours(_ids(n), k, b"s")
    assert graph.default_degree(2000) < 1999  # sparse for large cohorts
    assert [graph.default_threshold(k) for k in (0, 1, 2, 3, 20, 29)] == [1, 1, 2, 2, 11, 15]
    with pytest.raises(ValueError):
        graph.default_degree(0)
    with pytest.raises(ValueError):
        graph.default_threshold(-1)
