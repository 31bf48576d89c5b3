"""Tests of weighted federated averaging and the FedAvg server step, with numpy as the oracle."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from federated.aggregation import FedAvgServer, check_compatible, weighted_mean


def random_updates(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"layer.weight": rng.standard_normal((5, 3)).astype(np.float32),
             "layer.bias": rng.standard_normal(5).astype(np.float32),
             "scale": np.array(rng.standard_normal(), np.float32)} for _ in range(n)]


def oracle(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, np.float64)
    return {name: np.tensordot(w / w.sum(), np.stack([u[name].astype(np.float64) for u in updates]), axes=1)
            for name in updates[0]}


@pytest.mark.parametrize("n, weights", [
    (1, [7]), (2, [1, 1]), (3, [10, 20, 70]), (5, [1, 2, 3, 4, 5]), (4, [1e-3, 1e6, 3, 0]),
])
def test_weighted_mean_matches_numpy(n: int, weights: list[float]) -> None:
    updates = random_updates(n, seed=n)
    out = weighted_mean(updates, weights)
    expected = oracle(updates, weights)
    assert list(out) == list(updates[0])
    for name, arr in expected.items():
        assert out[name].dtype == np.float32 and out[name].shape == arr.shape
        np.testing.assert_allclose(out[name], arr, rtol=1e-6, atol=1e-7)


def test_weighted_mean_is_float32_rounding_of_the_exact_mean() -> None:
    # "Accumulates in float64": the result is the float64 mean rounded once to float32, whatever the order.
    updates = random_updates(7, seed=3)
    weights = [3, 1, 4, 1, 5, 9, 2]
    expected = {k: v.astype(np.float32) for k, v in oracle(updates, weights).items()}
    for perm in ([0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [3, 0, 6, 1, 5, 2, 4]):
        out = weighted_mean([updates[i] for i in perm], [weights[i] for i in perm])
        for name, want in expected.items():
            np.testing.assert_array_equal(out[name], want)


def test_weighted_mean_of_identical_updates_is_that_update() -> None:
    (u,) = random_updates(1)
    out = weighted_mean([u, u, u], [3, 5, 11])
    for name in u:
        np.testing.assert_allclose(out[name], u[name], rtol=1e-6)


def test_weighted_mean_does_not_modify_its_inputs() -> None:
    updates = random_updates(3)
    copies = [{k: v.copy() for k, v in u.items()} for u in updates]
    weighted_mean(updates, [1, 2, 3])
    for u, c in zip(updates, copies):
        for k in u:
            np.testing.assert_array_equal(u[k], c[k])


def test_weighted_mean_accepts_numpy_integer_weights() -> None:
    updates = random_updates(2)
    out = weighted_mean(updates, list(np.array([3, 1], np.int64)))
    np.testing.assert_allclose(out["layer.bias"], oracle(updates, [3, 1])["layer.bias"], rtol=1e-6)


def test_weighted_mean_errors_for_no_updates() -> None:
    with pytest.raises(ValueError, match="zero updates"):
        weighted_mean([], [])


def test_weighted_mean_errors_for_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 updates but 3 weights"):
        weighted_mean(random_updates(2), [1, 2, 3])


@pytest.mark.parametrize("weights", [[0, 0], [0.0, -0.0], [math.nan, 1], [-1, -2]])
def test_weighted_mean_errors_for_non_positive_total(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        weighted_mean(random_updates(2), weights)


@pytest.mark.parametrize("weights", [[-1, 2], [math.inf, 1], [1, math.nan]])
def test_weighted_mean_errors_for_negative_or_non_finite_weights(weights: list[float]) -> None:
    # A negative sample count would silently turn the average into an extrapolation.
    with pytest.raises(ValueError, match="weight"):
        weighted_mean(random_updates(2), weights)


@pytest.mark.parametrize("change", ["missing", "extra", "shape", "broadcastable"])
def test_weighted_mean_errors_for_mismatched_updates(change: str) -> None:
    a, b = random_updates(2)
    if change == "missing":
        del b["layer.bias"]
    elif change == "extra":
        b["other"] = np.zeros(2, np.float32)
    elif change == "shape":
        b["layer.weight"] = np.zeros((3, 5), np.float32)
    else:
        b["layer.weight"] = np.zeros((1, 3), np.float32)  # numpy would broadcast it silently
    with pytest.raises(ValueError):
        weighted_mean([a, b], [1, 1])


def test_check_compatible() -> None:
    a, b = random_updates(2)
    check_compatible(a, b)
    with pytest.raises(ValueError, match="missing \\['layer.bias'\\]"):
        check_compatible(a, {k: v for k, v in b.items() if k != "layer.bias"})
    with pytest.raises(ValueError, match="unexpected \\['x'\\]"):
        check_compatible(a, {**b, "x": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        check_compatible(a, {**b, "scale": np.zeros(1, np.float32)})


# ------------------------------------------------------------------------------------------- server step


@pytest.mark.parametrize("lr", [1.0, 0.5, 2.0])
def test_fedavg_server_step(lr: float) -> None:
    (weights,) = random_updates(1, seed=10)
    (update,) = random_updates(1, seed=11)
    new = FedAvgServer(lr).step(weights, update)
    for name in weights:
        assert new[name].dtype == np.float32
        np.testing.assert_allclose(new[name], weights[name].astype(np.float64) + lr * update[name], rtol=1e-6)
        assert not np.shares_memory(new[name], weights[name])


def test_fedavg_server_step_does_not_modify_arguments() -> None:
    (weights,) = random_updates(1, seed=10)
    (update,) = random_updates(1, seed=11)
    w_copy = {k: v.copy() for k, v in weights.items()}
    u_copy = {k: v.copy() for k, v in update.items()}
    FedAvgServer().step(weights, update)
    for k in weights:
        np.testing.assert_array_equal(weights[k], w_copy[k])
        np.testing.assert_array_equal(update[k], u_copy[k])


def test_fedavg_round_end_to_end() -> None:
    """Weighted mean of (local - global) then a step of 1.0 is the sample-weighted mean of local models."""
    (global_w,) = random_updates(1, seed=20)
    locals_ = random_updates(3, seed=21)
    samples = [100, 50, 25]
    updates = [{k: loc[k] - global_w[k] for k in global_w} for loc in locals_]
    new = FedAvgServer().step(global_w, weighted_mean(updates, samples))
    for name, expected in oracle(locals_, samples).items():
        np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lr", [0.0, -1.0, math.nan])
def test_fedavg_server_rejects_non_positive_learning_rate(lr: Any) -> None:
    with pytest.raises(ValueError, match="learning rate"):
        FedAvgServer(lr)
