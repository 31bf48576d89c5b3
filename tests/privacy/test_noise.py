"""Noise drawing: OS-seeded generators, Gaussian noise for trees, Skellam shares."""

from __future__ import annotations

import numpy as np
import pytest

from federated.privacy import gaussian_noise_like, noise_rng, skellam_share


def test_noise_rng_is_fresh_every_time() -> None:
    a, b = noise_rng(), noise_rng()
    assert isinstance(a.bit_generator, np.random.PCG64)
    assert not np.array_equal(a.integers(0, 2**63, 8), b.integers(0, 2**63, 8))


def test_gaussian_noise_like_keeps_the_structure() -> None:
    tree = {"layer": {"weight": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float16)},
            "steps": np.zeros(2, np.int32)}
    noise = gaussian_noise_like(tree, 0.5, noise_rng())
    assert list(noise) == ["layer", "steps"] and list(noise["layer"]) == ["weight", "bias"]
    assert noise["layer"]["weight"].dtype == np.float32 and noise["layer"]["weight"].shape == (3, 4)
    assert noise["layer"]["bias"].dtype == np.float16
    assert noise["steps"].dtype == np.float64  # integer leaves get float noise
    assert np.all(gaussian_noise_like(tree, 0.0, noise_rng())["layer"]["weight"] == 0)


def test_gaussian_noise_has_the_requested_std() -> None:
    draws = gaussian_noise_like(np.zeros(200_000), 2.5, np.random.default_rng(0))
    assert float(np.std(draws)) == pytest.approx(2.5, rel=0.01)
    assert abs(float(np.mean(draws))) < 0.02


def test_gaussian_noise_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="std must be"):
        gaussian_noise_like(np.zeros(2), -1.0, noise_rng())
    with pytest.raises(TypeError, match="numeric"):
        gaussian_noise_like({"w": np.array(["a"])}, 1.0, noise_rng())


def test_skellam_share_moments() -> None:
    share = skellam_share(400_000, 3.7, np.random.default_rng(0))
    assert share.dtype == np.int64 and share.shape == (400_000,)
    assert float(np.mean(share)) == pytest.approx(0.0, abs=0.02)
    assert float(np.var(share)) == pytest.approx(2 * 3.7, rel=0.02)
    assert np.all(skellam_share((2, 3), 0.0, noise_rng()) == 0)


def test_sum_of_worker_shares_has_variance_2_n_mu() -> None:
    rng = np.random.default_rng(1)
    n, mu, d = 12, 0.8, 200_000
    total = sum(skellam_share(d, mu, rng) for _ in range(n))
    # Var of a variance estimate ~ 2 var^2 / d for a near-Gaussian: 3% is > 9 standard errors.
    assert float(np.var(total)) == pytest.approx(2 * n * mu, rel=0.03)


def test_skellam_share_rejects_bad_mu() -> None:
    for mu in (-1.0, float("nan"), float("inf"), 1e16):
        with pytest.raises(ValueError, match="mu must be"):
            skellam_share(3, mu, noise_rng())
