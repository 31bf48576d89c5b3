"""Distributed DP with Skellam noise: plans, exact decoding through Z_2^32, wrap headroom, accounting."""

from __future__ import annotations

import math
import os

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from scipy import stats

from federated.crypto import fixedpoint, prg
from federated.crypto.errors import ParameterError
from federated.privacy import (
    SKELLAM_ORDERS,
    add_share,
    check_no_wrap_with_noise,
    noise_headroom,
    plan_skellam,
    skellam_epsilon,
    skellam_mu_per_worker,
    skellam_rdp,
    skellam_sensitivities,
    skellam_share,
)


def test_mu_per_worker_gives_the_target_variance() -> None:
    sigma, clip, frac_bits, n = 1.2, 0.5, 6, 8
    scale = 2.0**frac_bits
    mu = skellam_mu_per_worker(sigma, clip, scale, n)
    assert 2 * n * mu == pytest.approx((sigma * clip * scale) ** 2)
    rng = np.random.default_rng(2)
    total = sum(skellam_share(100_000, mu, rng) for _ in range(n))
    assert float(np.std(total)) == pytest.approx(sigma * clip * scale, rel=0.02)


def test_plan_is_sized_for_the_guaranteed_survivors() -> None:
    plan = plan_skellam(sigma=1.0, clip=1.0, scale=2.0**8, planned=20, min_survivors=15)
    target_mu = (1.0 * 1.0 * 2**8) ** 2 / 2
    assert plan.mu_guaranteed == pytest.approx(target_mu)  # 15 survivors already reach the target
    assert plan.mu_max == pytest.approx(target_mu * 20 / 15)  # everyone reporting adds more
    assert plan.noise_std_max == pytest.approx(math.sqrt(2 * plan.mu_max))
    with pytest.raises(ValueError, match="cannot exceed"):
        plan_skellam(1.0, 1.0, 256.0, planned=5, min_survivors=6)
    with pytest.raises(ValueError, match="min_survivors must be an integer >= 1"):
        plan_skellam(1.0, 1.0, 256.0, planned=5, min_survivors=0)


def _vector(length: int, scale: float) -> np.ndarray:
    return (prg.uniform01(os.urandom(32), length) * 2.0 - 1.0) * scale


def test_noised_encodings_decode_exactly_to_the_integer_sum() -> None:
    n, d, clip, frac_bits, sigma = 10, 500, 1.0, 12, 1.0
    plan = plan_skellam(sigma, clip, 2.0**frac_bits, planned=n, min_survivors=n)
    # The configuration check that a broker must make: data plus the noise tail fit in the int32 range.
    check_no_wrap_with_noise(n, clip, 1, frac_bits, plan.mu_max, dim=d + 1)
    rng = np.random.default_rng(3)
    encodings = [fixedpoint.encode(_vector(d, 0.2), 1, clip=clip, frac_bits=frac_bits, seed=os.urandom(32))
                 for _ in range(n)]
    shares = [skellam_share(d + 1, plan.mu_per_worker, rng) for _ in range(n)]
    noised = [add_share(e, s) for e, s in zip(encodings, shares, strict=True)]
    total = np.sum(np.stack(noised), axis=0, dtype=np.uint32)  # wraps mod 2^32, as the masks do
    data, weight = fixedpoint.decode_sum(total, frac_bits)
    exact = sum(e.view(np.int32).astype(np.int64) for e in encodings) + sum(shares)
    np.testing.assert_array_equal(data, exact[:-1] * 2.0**-frac_bits)
    assert weight == exact[-1] * 2.0**-frac_bits
    # The noise really is there, at the planned size.
    noise = (data - sum(e.view(np.int32)[:-1].astype(np.int64) for e in encodings) * 2.0**-frac_bits)
    assert float(np.std(noise)) == pytest.approx(sigma * clip, rel=0.15)


def test_add_share_wraps_like_the_group() -> None:
    encoded = np.array([0, 2**32 - 1, 5], dtype=np.uint32)
    out = add_share(encoded, np.array([-1, 1, -7], dtype=np.int64))
    assert out.dtype == np.uint32
    assert out.tolist() == [2**32 - 1, 0, 2**32 - 2]
    with pytest.raises(ValueError, match="uint32"):
        add_share(encoded.astype(np.int64), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="integers shaped"):
        add_share(encoded, np.zeros(2, np.int64))


# ------------------------------------------------------------------------------------ wrap headroom


@pytest.mark.parametrize("mu", [0.5, 3.0, 40.0, 2000.0])
def test_headroom_tail_bound_holds_against_the_exact_distribution(mu: float) -> None:
    dim, failure = 1000, 1e-6
    h = noise_headroom(mu, dim, failure)
    exact_tail = 2 * stats.skellam.sf(h - 1, mu, mu)  # P(|X| >= h)
    assert dim * exact_tail <= failure
    # ...and it is not wildly loose: within ~25% of what the exact distribution needs.
    need = 1
    while dim * 2 * stats.skellam.sf(need - 1, mu, mu) > failure:
        need += 1
    assert need <= h <= 1.25 * need + 2


def test_headroom_scales_like_a_few_standard_deviations() -> None:
    mu = 1e6
    h = noise_headroom(mu, 10**6, 1e-9)
    assert 8 < h / math.sqrt(2 * mu) < 9
    assert noise_headroom(0.0, 10, 1e-9) == 0


def test_wrap_check_counts_the_noise() -> None:
    n, clip, frac_bits = 100, 1.0, 16
    fixedpoint.check_no_wrap(n, clip, 1, frac_bits)  # the data alone fits...
    data = n * (2**frac_bits + 1)
    spare = 2**31 - data
    mu_too_big = (spare / 6) ** 2 / 2  # noise whose tail alone would need > 6 std of the spare room
    with pytest.raises(ParameterError, match="with noise could wrap"):
        check_no_wrap_with_noise(n, clip, 1, frac_bits, mu_too_big, dim=10**6)
    check_no_wrap_with_noise(n, clip, 1, frac_bits, (spare / 20) ** 2 / 2, dim=10**6)


# --------------------------------------------------------------------------------------- accounting


def test_skellam_rdp_formula_and_gaussian_limit() -> None:
    alpha, l1, l2, mu = 8, 30.0, 5.0, 40.0
    expected = alpha * l2**2 / (4 * mu) + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (16 * mu**2),
                                              3 * l1 / (4 * mu))
    assert skellam_rdp(alpha, l1, l2, mu) == pytest.approx(expected, rel=1e-15)
    # Never below the Gaussian of the same variance 2 mu, and equal to it in the limit of large mu.
    gaussian = [a * l2**2 / (2 * (2 * m)) for a, m in [(alpha, mu), (alpha, 1e8)]]
    assert skellam_rdp(alpha, l1, l2, mu) > gaussian[0]
    assert skellam_rdp(alpha, l1, l2, 1e8) == pytest.approx(gaussian[1], rel=1e-6)
    assert skellam_rdp(2, 1.0, 1.0, 0.0) == math.inf
    with pytest.raises(ValueError, match="integer >= 2"):
        skellam_rdp(1, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="integer >= 2"):
        skellam_rdp(2.5, 1.0, 1.0, 1.0)  # type: ignore[arg-type]


def test_skellam_epsilon_approaches_the_gaussian_accountant() -> None:
    clip, scale, dim, rounds, delta, sigma = 1.0, 2.0**12, 10_000, 50, 1e-5, 1.0
    l1, l2 = skellam_sensitivities(clip, scale, dim, weight_coordinate=False)
    assert l2 == pytest.approx(clip * scale + math.sqrt(dim))
    mu = (sigma * l2) ** 2 / 2  # noise std sigma * (integer sensitivity)
    ours = skellam_epsilon(l1, l2, mu, rounds, delta)
    library = rdp.RdpAccountant(orders=list(SKELLAM_ORDERS))
    library.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    gaussian = library.get_epsilon(delta)
    assert gaussian <= ours <= 1.02 * gaussian
    # Less noise (fewer survivors than planned) costs more.
    assert skellam_epsilon(l1, l2, mu * 0.5, rounds, delta) > ours
    assert skellam_epsilon(l1, l2, 0.0, rounds, delta) == math.inf


def test_sensitivities_cover_rounding_and_the_weight_coordinate() -> None:
    l1, l2 = skellam_sensitivities(1.0, 256.0, 100)
    assert l2 == pytest.approx(math.hypot(256 + 10, 256))
    assert l1 == pytest.approx(10 * 256 + 100 + 256)
    rng = np.random.default_rng(0)
    for _ in range(50):  # every real encoding is within the bound
        x = rng.normal(size=100) * 3
        enc = fixedpoint.encode(x, 1, clip=1.0, frac_bits=8, seed=os.urandom(32)).view(np.int32).astype(float)
        assert np.linalg.norm(enc) <= l2 and np.abs(enc).sum() <= l1
