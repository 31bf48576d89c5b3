"""Byzantine attacks: each strategy's defining property checked with numpy, and the colluding fit
function driven by a numpy stand-in for the honest trainer (no MLX, no sockets)."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from federated.attacks import (
    ATTACKS,
    GAUSSIAN_STD,
    IPM_EPSILON,
    MINMAX_PERTURBATIONS,
    SIGN_FLIP_SCALE,
    ColludingAttackers,
    alie,
    alie_z,
    flip_labels,
    gaussian,
    ipm,
    minmax,
    minmax_gamma,
    sign_flip,
)
from federated.attacks.strategies import _perturbation
from federated.worker.loop import ClientData


def _benign(m: int = 6, d: int = 50, seed: int = 0) -> np.ndarray:
    """Benign-looking updates: a shared direction plus per-client noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.1, size=d)[None, :] + rng.normal(0.0, 0.2, size=(m, d))


def _max_distance(vector: np.ndarray, benign: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(benign - vector, axis=1)))


def _diameter(benign: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(benign[:, None, :] - benign[None, :, :], axis=2)))


# ---------------------------------------------------------------------------- strategies


def test_sign_flip_is_scaled_negation() -> None:
    own = _benign(1)[0]
    np.testing.assert_allclose(sign_flip(own), -SIGN_FLIP_SCALE * own)
    np.testing.assert_allclose(sign_flip(own, scale=1.0), -own)
    with pytest.raises(ValueError, match="positive"):
        sign_flip(own, scale=0.0)


def test_gaussian_has_the_stated_std_relative_to_own() -> None:
    own = _benign(1, d=200_000)[0]
    noise = gaussian(own, np.random.default_rng(1))
    rms = np.sqrt(np.mean(own**2))
    assert noise.shape == own.shape
    assert abs(noise.std() / (GAUSSIAN_STD * rms) - 1) < 0.01
    assert abs(noise.mean()) < 0.01 * GAUSSIAN_STD * rms
    # Pure noise: no alignment with the benign update (|cosine| ~ 1/sqrt(d)).
    assert abs(own @ noise) / (np.linalg.norm(own) * np.linalg.norm(noise)) < 0.01
    assert np.linalg.norm(noise) == pytest.approx(GAUSSIAN_STD * np.linalg.norm(own), rel=0.01)
    np.testing.assert_array_equal(gaussian(np.zeros(5), np.random.default_rng(0)), np.zeros(5))


def test_alie_z_follows_the_paper_for_n20_f4() -> None:
    s = 20 // 2 + 1 - 4  # floor(n/2 + 1) - f = 7
    assert s == 7
    z = alie_z(20, 4)
    assert z == pytest.approx(NormalDist().inv_cdf((20 - 7) / 20))
    assert z == pytest.approx(0.38532, abs=1e-5)  # Phi^-1(0.65)


def test_alie_is_mean_minus_z_std() -> None:
    benign = _benign()
    expected = benign.mean(axis=0) - alie_z(20, 4) * benign.std(axis=0)
    np.testing.assert_allclose(alie(benign, 20, 4), expected)
    # Every coordinate stays inside the benign spread.
    out = alie(benign, 20, 4)
    assert np.all(out >= benign.mean(axis=0) - benign.std(axis=0))


@pytest.mark.parametrize(("n", "f"), [(20, 0), (20, 20), (20, 11), (3, 2)])
def test_alie_refuses_no_attackers_or_an_attacker_majority(n: int, f: int) -> None:
    with pytest.raises(ValueError):
        alie_z(n, f)


def test_ipm_has_negative_inner_product_with_the_benign_mean() -> None:
    benign = _benign()
    mean = benign.mean(axis=0)
    for epsilon in (IPM_EPSILON, 0.5, 100.0):
        out = ipm(benign, epsilon)
        np.testing.assert_allclose(out, -epsilon * mean)
        assert out @ mean < 0
    with pytest.raises(ValueError):
        ipm(benign, -1.0)


def _gamma_by_bisection(benign: np.ndarray, p: np.ndarray) -> float:
    """The paper's way: grow then halve gamma until the step is below 1e-9 of it."""
    mu, radius = benign.mean(axis=0), _diameter(benign)
    lo, hi = 0.0, 1.0
    while _max_distance(mu + hi * p, benign) <= radius:
        hi *= 2
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _max_distance(mu + mid * p, benign) <= radius else (lo, mid)
    return lo


@pytest.mark.parametrize("perturbation", MINMAX_PERTURBATIONS)
def test_minmax_meets_the_distance_bound_with_a_maximal_gamma(perturbation: str) -> None:
    benign = _benign(m=5, d=40, seed=3)
    out = minmax(benign, perturbation)
    radius = _diameter(benign)
    assert _max_distance(out, benign) <= radius
    p = _perturbation(benign, perturbation)
    gamma = minmax_gamma(benign, p)
    assert gamma > 0
    np.testing.assert_allclose(out, benign.mean(axis=0) + gamma * p)
    # Nearly maximal: a little further breaks the bound, and bisection finds the same gamma.
    assert _max_distance(benign.mean(axis=0) + gamma * 1.001 * p, benign) > radius
    assert gamma == pytest.approx(_gamma_by_bisection(benign, p), rel=1e-5)


def test_minmax_with_one_colluder_is_its_benign_update() -> None:
    benign = _benign(m=1)
    np.testing.assert_allclose(minmax(benign), benign[0])
    with pytest.raises(ValueError, match="perturbation"):
        minmax(_benign(), "sideways")


def test_label_flip_is_an_involution_that_moves_every_class() -> None:
    y = np.arange(10, dtype=np.int32).repeat(3)
    flipped = flip_labels(y, 10)
    assert flipped.dtype == y.dtype
    np.testing.assert_array_equal(flipped[:3], [9, 9, 9])
    assert np.all(flipped != y)
    np.testing.assert_array_equal(flip_labels(flipped, 10), y)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        flip_labels(np.array([10]), 10)


def test_strategies_refuse_an_empty_or_flat_benign_matrix() -> None:
    for bad in (np.zeros((0, 3)), np.zeros(3)):
        with pytest.raises(ValueError, match="benign"):
            ipm(bad)


# ---------------------------------------------------------------------------- colluding attackers

WEIGHTS = {"layer1.weight": np.ones((2, 3), np.float32), "layer0.bias": np.zeros(3, np.float32)}
TASK: dict[str, Any] = {"train": {"epochs": 1}, "seed": 7}


class FakeFit:
    """Honest-fit stand-in: the update is the mean of x's rows broadcast into each tensor, plus a little
    seed-dependent noise (so seeds matter); it records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, np.ndarray, int]] = []

    def __call__(self, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, task_config: dict[str, Any],
                 seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        self.calls.append((id(x), y, seed))
        rng = np.random.default_rng(seed)
        row = x.mean(axis=0)
        update = {name: (np.broadcast_to(row, w.shape) + 1e-3 * rng.standard_normal(w.shape)).astype(np.float32)
                  for name, w in weights.items()}
        return update, {"loss": float(row.sum()), "accuracy": 0.5, "train_s": 0.01}


def _clients(count: int = 4) -> list[ClientData]:
    rng = np.random.default_rng(42)
    return [ClientData(f"byz_{i}", rng.normal(i, 1.0, size=(8, 3)), rng.integers(0, 10, size=8))
            for i in range(count)]


def _attackers(attack: str, clients: list[ClientData], fit: FakeFit, seed: int = 1) -> ColludingAttackers:
    return ColludingAttackers(attack, clients, fit, num_workers=20, num_classes=10, seed=seed)


def _flat(update: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([update[name].ravel() for name in sorted(update)]).astype(np.float64)


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_returns_the_weights_shapes_as_float32(attack: str) -> None:
    clients = _clients()
    attackers = _attackers(attack, clients, FakeFit())
    for c in clients:
        update, metrics = attackers.fit(dict(WEIGHTS), c.x, c.y, TASK, seed=3)
        assert set(update) == set(WEIGHTS)
        for name, w in WEIGHTS.items():
            assert update[name].shape == w.shape
            assert update[name].dtype == np.float32
            assert np.all(np.isfinite(update[name]))
        assert set(metrics) >= {"loss", "accuracy", "train_s"}


@pytest.mark.parametrize("attack", ["alie", "ipm", "minmax"])
def test_pooled_attacks_train_the_colluders_once_per_round(attack: str) -> None:
    clients, fit = _clients(), FakeFit()
    attackers = _attackers(attack, clients, fit)
    first = attackers.fit(dict(WEIGHTS), clients[2].x, clients[2].y, TASK, seed=11)
    assert sorted(i for i, _, _ in fit.calls) == sorted(id(c.x) for c in clients)  # all colluders, once
    for c in clients:
        attackers.fit(dict(WEIGHTS), c.x, c.y, TASK, seed=12)
    assert len(fit.calls) == len(clients)
    # A new round (new global weights) trains again; only the current round is kept, so going back does too.
    moved = {name: w + 1 for name, w in WEIGHTS.items()}
    attackers.fit(moved, clients[0].x, clients[0].y, TASK, seed=13)
    assert len(fit.calls) == 2 * len(clients)
    again = attackers.fit(dict(WEIGHTS), clients[2].x, clients[2].y, TASK, seed=11)
    assert len(fit.calls) == 3 * len(clients)
    np.testing.assert_array_equal(_flat(first[0]), _flat(again[0]))


def test_alie_colluders_craft_from_their_pooled_benign_updates() -> None:
    clients, fit = _clients(), FakeFit()
    attackers = _attackers("alie", clients, fit)
    update, metrics = attackers.fit(dict(WEIGHTS), clients[1].x, clients[1].y, TASK, seed=5)
    by_x = {id(c.x): c for c in clients}
    benign = np.stack([_flat(FakeFit()(dict(WEIGHTS), by_x[i].x, by_x[i].y, TASK, s)[0]) for i, _, s in fit.calls])
    np.testing.assert_allclose(_flat(update), alie(benign, 20, len(clients)), rtol=1e-6, atol=1e-6)
    assert metrics["loss"] == pytest.approx(float(clients[1].x.mean(axis=0).sum()))  # its own benign metrics


def test_pooled_result_does_not_depend_on_who_asks_first() -> None:
    clients = _clients()
    a, b = _attackers("minmax", clients, FakeFit()), _attackers("minmax", clients, FakeFit())
    from_a = a.fit(dict(WEIGHTS), clients[0].x, clients[0].y, TASK, seed=1)[0]
    b.fit(dict(WEIGHTS), clients[3].x, clients[3].y, TASK, seed=2)
    from_b = b.fit(dict(WEIGHTS), clients[0].x, clients[0].y, TASK, seed=1)[0]
    np.testing.assert_array_equal(_flat(from_a), _flat(from_b))


def test_sign_flip_gives_each_client_its_own_flipped_update() -> None:
    clients, fit = _clients(), FakeFit()
    attackers = _attackers("sign_flip", clients, fit)
    sent = [attackers.fit(dict(WEIGHTS), c.x, c.y, TASK, seed=20 + i)[0] for i, c in enumerate(clients)]
    for i, c in enumerate(clients):
        benign = FakeFit()(dict(WEIGHTS), c.x, c.y, TASK, 20 + i)[0]
        np.testing.assert_allclose(_flat(sent[i]), -SIGN_FLIP_SCALE * _flat(benign), rtol=1e-6)
    assert not np.allclose(_flat(sent[0]), _flat(sent[1]))
    assert len(fit.calls) == len(clients)  # only the asking client trains


def test_gaussian_noise_differs_per_client_and_is_reproducible() -> None:
    clients = _clients(2)
    first = _attackers("gaussian", clients, FakeFit())
    second = _attackers("gaussian", clients, FakeFit())
    u0 = _flat(first.fit(dict(WEIGHTS), clients[0].x, clients[0].y, TASK, seed=4)[0])
    u1 = _flat(first.fit(dict(WEIGHTS), clients[1].x, clients[1].y, TASK, seed=5)[0])
    assert not np.allclose(u0, u1)
    np.testing.assert_array_equal(u0, _flat(second.fit(dict(WEIGHTS), clients[0].x, clients[0].y, TASK, seed=4)[0]))


def test_label_flip_trains_honestly_on_flipped_labels() -> None:
    clients, fit = _clients(), FakeFit()
    attackers = _attackers("label_flip", clients, fit)
    attackers.fit(dict(WEIGHTS), clients[1].x, clients[1].y, TASK, seed=9)
    (x_id, y, seed), = fit.calls
    assert x_id == id(clients[1].x) and seed == 9
    np.testing.assert_array_equal(y, 9 - clients[1].y)


def test_unknown_client_data_is_refused() -> None:
    clients = _clients()
    attackers = _attackers("alie", clients, FakeFit())
    with pytest.raises(ValueError, match="none of the attacker clients"):
        attackers.fit(dict(WEIGHTS), clients[0].x.copy(), clients[0].y, TASK, seed=0)


def test_bad_configurations_are_refused() -> None:
    clients = _clients()
    with pytest.raises(ValueError, match="sign_flip, gaussian, label_flip, alie, ipm, minmax"):
        _attackers("backdoor", clients, FakeFit())
    with pytest.raises(ValueError, match="minority"):
        ColludingAttackers("alie", clients, FakeFit(), num_workers=6, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="share one x array"):
        _attackers("ipm", [clients[0], ClientData("twin", clients[0].x, clients[0].y)], FakeFit())
    with pytest.raises(ValueError, match="at least one"):
        _attackers("ipm", [], FakeFit())
