"""User-level central DP's release (federated.privacy.central): clipped sum, noise, planned cohort.

The broker-level check (a real round, sample counts ignored, a dropout still counted in the divisor) is
tests/broker/test_central_dp_guard.py; here the function alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated.privacy import AdaptiveClipper
from federated.privacy import central as central_dp
from federated.privacy.central import central_mean


class _NoNoise:
    def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return np.zeros(size, np.float64)


def test_the_mean_is_the_clipped_sum_over_the_planned_cohort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(central_dp, "noise_rng", _NoNoise)
    rows = np.array([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, -20.0]], np.float32)  # norms 5, 0.1, 20
    mean = central_mean(rows, clip=1.0, sigma=1.0, planned=5)
    expected = (np.array([0.6, 0.8, 0.0]) + np.array([0.1, 0.0, 0.0]) + np.array([0.0, 0.0, -1.0])) / 5
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, rtol=0, atol=1e-7)


def test_the_noise_has_std_sigma_clip_over_planned() -> None:
    rows = np.zeros((3, 20_000), np.float32)
    mean = central_mean(rows, clip=0.5, sigma=3.0, planned=4)
    assert float(mean.std()) == pytest.approx(3.0 * 0.5 / 4, rel=0.05)


def test_an_adaptive_clipper_moves_from_the_norms_and_bad_settings_are_refused() -> None:
    clipper = AdaptiveClipper(1.0, target_quantile=0.5, learning_rate=0.2)
    central_mean(np.full((4, 3), 10.0, np.float32), clip=1.0, sigma=0.0, planned=4, clipper=clipper)
    assert clipper.clip > 1.0  # every norm above the clip: it grows
    with pytest.raises(ValueError, match="planned"):
        central_mean(np.zeros((1, 3), np.float32), clip=1.0, sigma=1.0, planned=0)
    with pytest.raises(ValueError, match="sigma"):
        central_mean(np.zeros((1, 3), np.float32), clip=1.0, sigma=-1.0, planned=1)
