"""Named tensors <-> flat vectors and update matrices, in sorted-name order."""

from __future__ import annotations

import numpy as np
import pytest

from federated.aggregation.vectors import flatten, flatten_into, flatten_rows, unflatten


def _updates(n: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    # Names out of order and mixed dtypes: rows must follow sorted names and come out float32.
    return [{"w2": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5),
             "a": rng.standard_normal((2, 2)).astype(np.float16)} for _ in range(n)]


def test_flatten_rows_equals_stacked_flatten_and_reuses_its_buffer() -> None:
    rng = np.random.default_rng(0)
    updates = _updates(4, rng)
    matrix = flatten_rows(updates)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 21)
    np.testing.assert_array_equal(matrix, np.stack([flatten(u, np.float32) for u in updates]))
    again = _updates(4, rng)
    reused = flatten_rows(again, out=matrix)
    assert reused is matrix  # same shape: filled in place
    np.testing.assert_array_equal(reused, np.stack([flatten(u, np.float32) for u in again]))
    fewer = flatten_rows(again[:3], out=matrix)
    assert fewer is not matrix and fewer.shape == (3, 21)
    row = unflatten(fewer[1], again[1])
    assert set(row) == {"a", "b", "w2"} and row["w2"].shape == (3, 4)


def test_flatten_rows_refuses_updates_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        flatten_rows([{"a": np.zeros(3)}, {"a": np.zeros(4)}])
    assert flatten_rows([]).shape == (0, 0)


def test_flatten_into_writes_flatten_into_a_given_row() -> None:
    update = _updates(1, np.random.default_rng(1))[0]
    matrix = np.zeros((2, 21), np.float32)
    row = matrix[1]
    assert flatten_into(update, row) is row  # written in place, into the matrix
    np.testing.assert_array_equal(matrix[1], flatten(update, np.float32))
    assert not matrix[0].any()
    with pytest.raises(ValueError, match="do not fit"):
        flatten_into(update, np.zeros(20, np.float32))
