"""User-level clipping and adaptive clipping (Andrew et al. 2021)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from federated.privacy import (
    AdaptiveClipper,
    clip_factor,
    clip_update,
    clip_vector,
    combined_noise_multiplier,
    global_norm,
    update_noise_multiplier,
)


def _update(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a.weight": (rng.normal(size=(8, 5)) * scale).astype(np.float32),
            "a.bias": (rng.normal(size=5) * scale).astype(np.float32)}


def test_clip_update_bounds_the_global_norm() -> None:
    update = _update(10.0)
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in update.values())))
    clipped, original = clip_update(update, 1.5)
    assert original == pytest.approx(norm)
    assert global_norm(clipped) <= 1.5
    assert global_norm(clipped) == pytest.approx(1.5, rel=1e-5)
    for name, value in update.items():
        assert clipped[name].dtype == np.float32 and clipped[name].shape == value.shape
        # One common factor for every tensor: the direction is kept.
        np.testing.assert_allclose(clipped[name], value * (1.5 / norm), rtol=1e-5, atol=1e-7)
    assert np.array_equal(update["a.bias"], _update(10.0)["a.bias"])  # inputs untouched


def test_clip_update_leaves_short_updates_alone() -> None:
    update = _update(0.01)
    clipped, norm = clip_update(update, 100.0)
    assert norm < 100.0
    assert all(np.array_equal(clipped[k], update[k]) for k in update)
    zero = {"w": np.zeros(3, np.float32)}
    assert clip_update(zero, 1.0)[1] == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_float32_rounding_never_exceeds_the_clip(seed: int) -> None:
    update = _update(1e3, seed)
    clip = float(np.random.default_rng(seed).uniform(0.1, 10))
    clipped, _ = clip_update(update, clip)
    assert global_norm(clipped) <= clip


def test_clip_update_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="clip must be a finite number > 0"):
        clip_update(_update(1.0), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"w": np.array([1.0, np.nan])}, 1.0)


# ------------------------------------------------------------------------------ noise multipliers


def test_noise_multiplier_split_is_exact() -> None:
    # The RDP curves alpha / (2 s^2) of the update (s = sigma_delta) and the count (s = 2 sigma_b) add
    # up to that of one Gaussian with the combined sigma.
    sigma, sigma_b = 1.0, 5.0
    sigma_delta = update_noise_multiplier(sigma, sigma_b)
    assert sigma_delta > sigma
    assert sigma_delta == pytest.approx((1 - 1 / 100) ** -0.5)
    assert combined_noise_multiplier(sigma_delta, sigma_b) == pytest.approx(sigma, rel=1e-12)
    assert 1 / sigma_delta**2 + 1 / (2 * sigma_b) ** 2 == pytest.approx(1 / sigma**2)
    assert combined_noise_multiplier(1.0, 0.0) == 0.0  # an exact count is no privacy
    with pytest.raises(ValueError, match="sigma_b must be"):
        update_noise_multiplier(1.0, 0.5)  # the count alone would take the whole budget
    with pytest.raises(ValueError, match="sigma must be"):
        update_noise_multiplier(0.0, 1.0)


# ---------------------------------------------------------------------------------- adaptive clip


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_adaptive_clip_moves_to_the_target_quantile(quantile: float) -> None:
    rng = np.random.default_rng(1)
    clipper = AdaptiveClipper(0.01, target_quantile=quantile, learning_rate=0.2, count_noise_std=0.5)
    expected = 200

    def norms() -> np.ndarray:
        return rng.lognormal(mean=0.0, sigma=0.5, size=expected)  # a stable norm distribution

    history = [clipper.update(norms(), expected_clients=expected, rng=rng) for _ in range(300)]
    truth = float(np.quantile(rng.lognormal(0.0, 0.5, size=200_000), quantile))
    settled = float(np.mean(history[-100:]))
    assert settled == pytest.approx(truth, rel=0.1)
    # It moved there from far below, monotonically on average.
    assert history[0] < history[20] < history[60]


def test_adaptive_clip_direction_and_step() -> None:
    clipper = AdaptiveClipper(1.0, target_quantile=0.5, learning_rate=0.2)
    # Everyone under the clip: fraction 1, C shrinks by exp(-0.2 * 0.5).
    assert clipper.update([0.1, 0.2, 0.3]) == pytest.approx(math.exp(-0.1))
    # Everyone over: fraction 0, C grows by exp(0.1).
    clipper = AdaptiveClipper(1.0, target_quantile=0.5, learning_rate=0.2)
    assert clipper.update([5.0, 6.0]) == pytest.approx(math.exp(0.1))
    assert clipper.indicator(1.0) and not clipper.indicator(1.2)


def test_noised_fraction_uses_centered_bits_and_expected_cohort() -> None:
    clipper = AdaptiveClipper(1.0, count_noise_std=0.0)
    assert clipper.noised_fraction([True, False, True, True]) == 0.75
    # Denominator = expected cohort (10), not the 4 who answered: (3 - 2) / 10 + 1/2.
    assert clipper.noised_fraction([True, False, True, True], expected_clients=10) == pytest.approx(0.6)
    noisy = AdaptiveClipper(1.0, count_noise_std=3.0)
    rng = np.random.default_rng(0)
    draws = [noisy.noised_fraction([True] * 5 + [False] * 5, rng=rng) for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(0.5, abs=0.02)
    assert np.std(draws) == pytest.approx(0.3 * 0.93, rel=0.1)  # std 3/10, a little lost to the [0, 1] clamp
    assert all(0.0 <= d <= 1.0 for d in draws)


def test_adaptive_clipper_state_round_trip() -> None:
    clipper = AdaptiveClipper(0.7, target_quantile=0.3, learning_rate=0.1, count_noise_std=2.0)
    clipper.update([0.5, 0.9, 1.2], rng=np.random.default_rng(0))
    restored = AdaptiveClipper.from_dict(json.loads(json.dumps(clipper.to_dict())))
    assert restored.to_dict() == clipper.to_dict()
    with pytest.raises(ValueError, match="keys"):
        AdaptiveClipper.from_dict({"clip": 1.0})
    with pytest.raises(ValueError, match="must be a number"):
        AdaptiveClipper.from_dict(clipper.to_dict() | {"clip": "1"})


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"clip": 0.0}, "clip must be"),
    ({"target_quantile": 1.5}, "target_quantile"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"count_noise_std": float("nan")}, "count_noise_std"),
])
def test_adaptive_clipper_rejects_bad_settings(kwargs: dict[str, float], problem: str) -> None:
    args = {"clip": 1.0} | kwargs
    clip = args.pop("clip")
    with pytest.raises(ValueError, match=problem):
        AdaptiveClipper(clip, **args)


def test_adaptive_clipper_rejects_bad_rounds() -> None:
    clipper = AdaptiveClipper(1.0)
    with pytest.raises(ValueError, match="norms"):
        clipper.update([1.0, -2.0])
    with pytest.raises(ValueError, match="expected_clients"):
        clipper.update([])
    with pytest.raises(ValueError, match="fraction"):
        clipper.step(1.5)


def test_clip_vector_is_clip_update_on_a_flat_vector() -> None:
    update = _update(10.0, seed=3)
    flat = np.concatenate([update[k].astype(np.float64).ravel() for k in sorted(update)])
    clipped, norm = clip_vector(flat.astype(np.float32), 1.5)
    assert clipped.dtype == np.float64 and norm == pytest.approx(global_norm(update), rel=1e-12)
    np.testing.assert_array_equal(clipped, flat * (1.5 / norm))
    assert math.sqrt(float(clipped @ clipped)) == pytest.approx(1.5, rel=1e-12)
    small, small_norm = clip_vector(flat / 100, 1.5)  # inside the clip: unchanged
    np.testing.assert_array_equal(small, flat / 100)
    assert clip_factor(small_norm, 1.5) == 1.0 and clip_factor(0.0, 1.5) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        clip_vector(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="clip"):
        clip_vector(flat, 0.0)
