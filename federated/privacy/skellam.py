"""Distributed DP with Skellam noise: planning the workers' shares, sensitivity, accounting, wrap headroom.

With secure aggregation the broker only sees the sum of the workers' fixed-point encodings (integers mod
2^32, :mod:`federated.crypto.fixedpoint`, scale ``2^frac_bits``). Each worker adds its own integer noise
share (:func:`federated.privacy.noise.skellam_share`, variance ``2 mu`` per coordinate) before masking;
the sum of ``n`` shares is Skellam noise of variance ``2 n mu``. Parametrisation used throughout: ``mu``
is the Poisson mean of *each side* (``Sk = Poisson(mu) - Poisson(mu)``, variance ``2 mu``).

Dropouts: if workers vanish after their shares were planned, the sum carries less noise. Plans are
therefore made for the fewest inputs a sum the broker can see may hold: secure aggregation unmasks any
sum of at least the threshold ``t`` survivors (whatever ``min_clients`` says), so that is the smallest
``t`` a round can have, capped at ``min_clients``
(:func:`federated.privacy.ledger.smallest_revealed_sum`). :func:`plan_skellam` gives the per-worker
``mu`` such that any ``min_survivors`` shares already reach the target variance; the accountant uses that
guaranteed noise, the wrap check the largest (all ``planned`` workers report).

Accounting: :func:`skellam_rdp` is the RDP bound of the multi-dimensional Skellam mechanism of Agarwal,
Kairouz and Liu, "The Skellam Mechanism for Differentially Private Federated Learning" (NeurIPS 2021,
arXiv:2110.04995; Theorem 3.5 there, though numbering differs between versions of the paper). It is
stated for noise of variance ``v`` per coordinate (``v = 2 mu`` here) and integer orders ``alpha > 1``:

    eps(alpha) <= alpha D2^2 / (2 v) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 v^2),  3 D1 / (2 v) )

i.e. with ``v = 2 mu``: ``alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))``,
where ``D1``, ``D2`` are the L1 and L2 sensitivities of the *integer* sum.
The first term is the Gaussian mechanism's RDP at the same variance; the second is the price of
discreteness and vanishes as ``mu`` grows. Rounds compose by adding RDP; (epsilon, delta) comes from
``dp_accounting``'s RDP conversion over integer orders. No amplification by sampling is claimed for
distributed DP (the cohort's selection is not hidden from the broker), so every round counts in full.

Adjacency: zero-out. Neighbouring rounds differ in one worker's clipped update being replaced by the zero
update, the worker still taking part with weight 1; :func:`skellam_sensitivities` is the sensitivity of
one encoding against that, and the weight coordinate, the same on both sides, carries no noise. For
replace-one adjacency (one update swapped for any other) both ``D1`` and ``D2`` double. Who took part, and
so the summed weight (the number of survivors), is public, as are the workers' sample counts (announced
in HELLO; they do not enter the sum, every weight being 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from federated.crypto import fixedpoint
from federated.crypto.errors import ParameterError

__all__ = [
    "SKELLAM_ORDERS",
    "SkellamPlan",
    "add_share",
    "check_no_wrap_with_noise",
    "noise_headroom",
    "noise_norm_bound",
    "plan_skellam",
    "skellam_epsilon",
    "skellam_mu_per_worker",
    "skellam_rdp",
    "skellam_sensitivities",
]

#: Integer RDP orders for Skellam accounting (the bound is proved for integer orders).
SKELLAM_ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 192, 256, 384, 512, 1024)
_WRAP_LIMIT = 2**31


def _positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------ planning


def skellam_mu_per_worker(sigma: float, clip: float, scale: float, n: int) -> float:
    """Per-worker ``mu`` so that ``n`` shares sum to variance ``(sigma * clip * scale)^2`` (integer units).

    ``sigma`` is the noise multiplier, ``clip`` the L2 clip of an update (model units), ``scale`` the
    fixed-point scale ``2^frac_bits``; each share has variance ``2 mu``, the sum ``2 n mu``. Raises
    ValueError for sigma < 0, clip or scale <= 0, n < 1.
    """
    sigma = _positive(sigma, "sigma", allow_zero=True)
    clip, scale, n = _positive(clip, "clip"), _positive(scale, "scale"), _count(n, "n")
    return (sigma * clip * scale) ** 2 / (2.0 * n)


@dataclass(frozen=True)
class SkellamPlan:
    """The noise of one distributed-DP round, dropout-safe.

    ``mu_per_worker`` is what each worker draws with; ``mu_guaranteed`` (``min_survivors`` shares) is what
    the accountant must use; ``mu_max`` (all ``planned_workers`` shares) is what the wrap check must use.
    All ``mu`` are per-side Poisson means in integer units (variance ``2 mu``).
    """

    mu_per_worker: float
    planned_workers: int
    min_survivors: int

    @property
    def mu_guaranteed(self) -> float:
        """Total ``mu`` when only the guaranteed survivors report (the accountant's noise)."""
        return self.min_survivors * self.mu_per_worker

    @property
    def mu_max(self) -> float:
        """Total ``mu`` when every planned worker reports (the most noise, for the wrap check)."""
        return self.planned_workers * self.mu_per_worker

    @property
    def noise_std_max(self) -> float:
        """Std of the summed noise (integer units) when everyone reports; the accuracy cost of the plan."""
        return math.sqrt(2.0 * self.mu_max)


def plan_skellam(sigma: float, clip: float, scale: float, planned: int, min_survivors: int) -> SkellamPlan:
    """Shares for a round of ``planned`` workers of which at least ``min_survivors`` are guaranteed to
    report: each share is sized so that ``min_survivors`` of them reach std ``sigma * clip * scale``.

    Raises ValueError for bad numbers or ``min_survivors > planned``.
    """
    planned, min_survivors = _count(planned, "planned"), _count(min_survivors, "min_survivors")
    if min_survivors > planned:
        raise ValueError(f"min_survivors ({min_survivors}) cannot exceed planned ({planned})")
    mu = skellam_mu_per_worker(sigma, clip, scale, min_survivors)
    return SkellamPlan(mu_per_worker=mu, planned_workers=planned, min_survivors=min_survivors)


def skellam_sensitivities(
    clip: float, scale: float, dim: int, *, weight: int = 1, weight_coordinate: bool = True
) -> tuple[float, float]:
    """``(D1, D2)``: L1 and L2 sensitivity (integer units) of one worker's fixed-point encoding.

    The encoding rounds ``weight * clip_l2(x, clip) * scale`` coordinate-wise to a neighbouring integer,
    which can move each of the ``dim`` coordinates by less than 1, so (worst case, no probability):
    ``D2 <= weight*clip*scale + sqrt(dim)`` and ``D1 <= sqrt(dim)*weight*clip*scale + dim``. With
    ``weight_coordinate`` the encoding's extra coordinate ``weight * scale`` (which the noise must then
    cover too) is included. Under DP, use ``weight = 1`` (uniform weights); a worker's sample count would
    scale its influence. Raises ValueError for bad numbers.
    """
    clip, scale, dim = _positive(clip, "clip"), _positive(scale, "scale"), _count(dim, "dim")
    weight = _count(weight, "weight")
    data_l2 = weight * clip * scale + math.sqrt(dim)
    data_l1 = math.sqrt(dim) * weight * clip * scale + dim
    if not weight_coordinate:
        return data_l1, data_l2
    return data_l1 + weight * scale, math.hypot(data_l2, weight * scale)


# ---------------------------------------------------------------------------------------- accounting


def skellam_rdp(alpha: int, l1: float, l2: float, mu_total: float) -> float:
    """RDP epsilon at integer order ``alpha >= 2`` of one Skellam release (Agarwal et al. 2021, see above):
    ``alpha l2^2 / (4 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 mu^2), 3 l1 / (4 mu))``.

    ``l1``, ``l2`` are the sensitivities and ``mu_total`` the per-side Poisson mean of the *summed* noise
    (variance ``2 mu_total``), all in integer units. ``mu_total = 0`` gives inf. Raises ValueError for a
    non-integer or < 2 order, negative sensitivities or negative ``mu_total``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, np.integer)) or alpha < 2:
        raise ValueError(f"alpha must be an integer >= 2 (the bound is for integer orders), got {alpha!r}")
    l1, l2 = _positive(l1, "l1", allow_zero=True), _positive(l2, "l2", allow_zero=True)
    mu = _positive(mu_total, "mu_total", allow_zero=True)
    if mu == 0:
        return math.inf
    a = int(alpha)
    gaussian = a * l2**2 / (4.0 * mu)
    discrete = min(((2 * a - 1) * l2**2 + 6.0 * l1) / (16.0 * mu**2), 3.0 * l1 / (4.0 * mu))
    return gaussian + discrete


def skellam_epsilon(
    l1: float,
    l2: float,
    mu_total: float,
    rounds: int,
    delta: float,
    orders: Sequence[int] = SKELLAM_ORDERS,
) -> float:
    """Epsilon (nats) at ``delta`` of ``rounds`` Skellam releases (RDP added over rounds, then
    ``dp_accounting``'s RDP-to-DP conversion, minimised over ``orders``). No sampling amplification.

    Use the *guaranteed* noise (:attr:`SkellamPlan.mu_guaranteed`) for ``mu_total``. Returns inf for
    ``mu_total = 0``. Raises ValueError for bad numbers, ``rounds < 1`` or ``delta`` outside (0, 1).
    """
    rounds = _count(rounds, "rounds")
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    if not orders:
        raise ValueError("orders must not be empty")
    from dp_accounting.rdp import rdp_privacy_accountant  # here, not at the top: it loads SciPy

    rdp = [rounds * skellam_rdp(int(a), l1, l2, mu_total) for a in orders]
    if math.isinf(rdp[0]):
        return math.inf
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(orders), rdp, delta)
    return float(epsilon)


# ------------------------------------------------------------------------------------- wrap headroom


def _log_tail(a: float, mu: float) -> float:
    """log of the Chernoff bound on P(X >= a) for X ~ Skellam(mu, mu): min_t 2mu(cosh t - 1) - t a,
    attained at sinh t = a / (2 mu)."""
    r = a / (2.0 * mu)
    t = math.asinh(r)
    cosh_minus_1 = r * r / (math.sqrt(1.0 + r * r) + 1.0)  # cosh(asinh r) - 1 without cancellation
    return 2.0 * mu * cosh_minus_1 - t * a


def noise_headroom(mu_total: float, dim: int, failure_prob: float = 1e-9) -> int:
    """The smallest integer ``h`` such that all ``dim`` coordinates of Skellam noise of per-side mean
    ``mu_total`` satisfy ``|noise| < h`` except with probability at most ``failure_prob``.

    Rigorous, not a k-sigma rule of thumb: the Chernoff bound ``P(|X| >= h) <= 2 exp(2 mu (cosh t - 1) -
    t h)``, ``sinh t = h / (2 mu)``, with a union bound over coordinates. For large ``mu`` this is about
    ``sqrt(2 * 2mu * ln(2 dim / failure_prob))``, e.g. ~8.4 standard deviations for 10^6 coordinates at
    1e-9. Raises ValueError for bad numbers.
    """
    mu = _positive(mu_total, "mu_total", allow_zero=True)
    dim = _count(dim, "dim")
    if not (isinstance(failure_prob, float) and 0.0 < failure_prob < 1.0):
        raise ValueError(f"failure_prob must be a float in (0, 1), got {failure_prob!r}")
    if mu == 0:
        return 0
    budget = math.log(failure_prob) - math.log(2.0 * dim)

    def ok(h: int) -> bool:
        return _log_tail(float(h), mu) <= budget

    hi = max(1, math.ceil(math.sqrt(2.0 * mu)))
    while not ok(hi):
        hi *= 2
    lo = 0  # ok(0) is False: the bound at 0 is 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def noise_norm_bound(mu_total: float, dim: int, failure_prob: float = 1e-9) -> float:
    """An L2 bound (integer units) on ``dim`` coordinates of Skellam noise of per-side mean ``mu_total``
    that the noise exceeds with probability at most ``failure_prob``: how far noise alone can move an
    honest sum, for the broker's plausibility check.

    Derivation (rigorous, no Gaussian approximation). Each coordinate ``X`` has variance ``v = 2 mu`` and
    fourth moment ``E X^4 = 3 v^2 + v`` (Skellam cumulants: ``k2 = k4 = 2 mu``), so ``Var(X^2) = 2 v^2 + v``.
    Split the failure probability in two halves. (1) :func:`noise_headroom` gives ``h`` with every
    ``|X_j| < h`` except with probability ``failure_prob / 2``. (2) ``Y_j = min(X_j^2, h^2)`` lies in
    ``[0, h^2]``, has mean at most ``v`` and variance at most ``Var(X^2)`` (truncation is 1-Lipschitz), so
    Bernstein's inequality gives ``P(sum Y_j > d v + t) <= exp(-t^2 / (2 (d Var(X^2) + h^2 t / 3)))``; with
    ``L = ln(2 / failure_prob)`` this is ``failure_prob / 2`` at ``t = L h^2 / 3 + sqrt((L h^2 / 3)^2 + 2 L d
    Var(X^2))``. Outside both events ``||X||^2 = sum Y_j <= d v + t``. The bound is ``sqrt(d v + t)``:
    about 1.12 times the typical norm ``sqrt(d v)`` at d = 4,810 and 1.005 times at d = 10^6.
    Raises ValueError for bad numbers.
    """
    mu = _positive(mu_total, "mu_total", allow_zero=True)
    dim = _count(dim, "dim")
    if not (isinstance(failure_prob, float) and 0.0 < failure_prob < 1.0):
        raise ValueError(f"failure_prob must be a float in (0, 1), got {failure_prob!r}")
    if mu == 0:
        return 0.0
    v = 2.0 * mu
    h2 = float(noise_headroom(mu, dim, failure_prob / 2.0)) ** 2
    log_term = math.log(2.0 / failure_prob)
    linear = log_term * h2 / 3.0
    t = linear + math.sqrt(linear * linear + 2.0 * log_term * dim * (2.0 * v * v + v))
    return math.sqrt(dim * v + t)


def check_no_wrap_with_noise(
    n_max: int,
    clip: float,
    weight_cap: int,
    frac_bits: int,
    mu_total: float,
    dim: int,
    failure_prob: float = 1e-9,
) -> None:
    """Raise :class:`~federated.crypto.errors.ParameterError` unless data plus noise fit in the sum:
    ``n_max * (max_abs(clip, weight_cap) * 2^frac_bits + 1) + noise_headroom(mu_total, dim) < 2^31``.

    Extends :func:`federated.crypto.fixedpoint.check_no_wrap` with the noise tail; pass the *largest*
    noise (:attr:`SkellamPlan.mu_max`) and ``dim`` = coordinates per sum. ``failure_prob`` is per sum:
    divide a run's tolerance by its number of rounds.
    """
    fixedpoint.check_no_wrap(n_max, clip, weight_cap, frac_bits)
    headroom = noise_headroom(mu_total, dim, failure_prob)
    data = n_max * (weight_cap * max(Fraction(clip), Fraction(1)) * 2**frac_bits + 1)
    if data + headroom >= _WRAP_LIMIT:
        raise ParameterError(
            f"secure-aggregation sum with noise could wrap: n_max={n_max}, clip={clip}, "
            f"weight_cap={weight_cap}, frac_bits={frac_bits} leave {float(_WRAP_LIMIT - data):.4g} of "
            f"2^31 for noise, but mu_total={mu_total:g} over dim={dim} needs {headroom} "
            f"(failure_prob={failure_prob:g}); lower frac_bits, n_max or the noise"
        )


def add_share(encoded: np.ndarray, share: np.ndarray) -> np.ndarray:
    """``encoded + share`` mod 2^32, as uint32 (two's complement): a worker adds its noise share to its
    fixed-point encoding before masking. Both must have the same length (the caller decides whether
    the weight coordinate gets noise). Raises ValueError for a non-uint32 encoding, a non-integer share
    or mismatched shapes."""
    enc = np.asarray(encoded)
    noise = np.asarray(share)
    if enc.dtype != np.uint32 or enc.ndim != 1:
        raise ValueError(f"encoded must be a 1-D uint32 array, got {enc.dtype} {enc.shape}")
    if noise.dtype.kind not in "iu" or noise.shape != enc.shape:
        raise ValueError(f"share must be integers shaped {enc.shape}, got {noise.dtype} {noise.shape}")
    total = (enc.astype(np.int64) + noise.astype(np.int64)) & 0xFFFFFFFF
    return total.astype(np.uint32)
