"""Byzantine update-crafting strategies, as pure numpy functions over flattened update vectors.

Every model-poisoning strategy takes float vectors of one length ``d`` (an update flattened in sorted
tensor-name order; :mod:`federated.attacks.colluding` does the flattening) and returns a float64 vector of
that length. ``benign`` is an ``(m, d)`` matrix of the colluding attackers' own honest updates: what they
would have sent had they been honest, and their only estimate of what the honest majority sends.

=============  =====  ===========================================================================
attack         data?  idea
=============  =====  ===========================================================================
sign_flip      no     send ``-scale * own``: drag the mean backwards
gaussian       no     send pure noise, much larger than a benign update
label_flip     yes    train honestly on labels ``c -> C - 1 - c`` (:func:`flip_labels`)
alie           no     stay inside the honest spread on every coordinate, all on one side
ipm            no     send ``-epsilon * mean``: make the aggregate's inner product with the mean small
minmax         no     go as far from the mean as the benign updates are from each other
=============  =====  ===========================================================================

The defaults are the values in the papers' experiments, or, where a paper leaves it open, chosen so the
attack is clearly harmful against plain FedAvg at 20% attackers; each constant says why.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "ATTACKS",
    "GAUSSIAN_STD",
    "IPM_EPSILON",
    "IPM_EPSILON_LARGE",
    "IPM_EPSILON_SMALL",
    "MINMAX_PERTURBATIONS",
    "POOLED_ATTACKS",
    "SIGN_FLIP_SCALE",
    "alie",
    "alie_z",
    "flip_labels",
    "gaussian",
    "ipm",
    "minmax",
    "minmax_gamma",
    "sign_flip",
]

#: Every attack ``fl simulate --attack`` accepts.
ATTACKS = ("sign_flip", "gaussian", "label_flip", "alie", "ipm", "minmax")

#: Attacks that craft from the whole colluding set's benign updates (the others need only their own).
POOLED_ATTACKS = ("alie", "ipm", "minmax")

#: FedAvg with a fraction ``f/n`` of attackers sends ``(n - f - f*scale) / n`` times the honest mean
#: (when ``own`` is close to it). At 20% attackers, scale 4 exactly cancels honest progress; 5 reverses it
#: (the aggregate points uphill, -0.2x the honest mean), so the default visibly diverges instead of stalling.
SIGN_FLIP_SCALE = 5.0

#: Per-coordinate noise standard deviation, as a multiple of ``own``'s root-mean-square coordinate: the
#: noise vector's norm is then about 10x a benign update's. That is far outside the benign spread (any
#: distance- or norm-based defence should drop it), and under FedAvg with f of n attackers the noise in the
#: mean has norm ~ 100 sqrt(f)/n benign norms, e.g. 10 at f=4, n=20: it swamps the honest signal (at 10x
#: the mean still learned on digits, 92.8% against 95.8% clean). Blanchard et al. 2017 use an absolute
#: std of 200; a relative one means the same on every model.
GAUSSIAN_STD = 100.0

#: Xie et al. (2019) use a small epsilon against Krum/median-style rules, where the attack must stay near
#: the benign cluster to be selected, and a large one against the mean, where it must outweigh it.
IPM_EPSILON_SMALL = 0.1
IPM_EPSILON_LARGE = 100.0
#: Default: the small value, the one most robust-aggregation benchmarks report (it targets defences,
#: which is what an attack simulation is for; against plain FedAvg at 20% it only slows training).
IPM_EPSILON = IPM_EPSILON_SMALL

#: Perturbation directions of Shejwalkar & Houmansadr (2021): ``-std`` (their default), ``-mean/|mean|``
#: (inverse unit vector), ``-sign(mean)``.
MINMAX_PERTURBATIONS = ("std", "unit_vec", "sign")

_NORMAL = NormalDist()


def _benign_matrix(benign: np.ndarray) -> np.ndarray:
    """``benign`` as a float64 ``(m, d)`` matrix with m >= 1, or ValueError."""
    b = np.asarray(benign, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] < 1 or b.shape[1] < 1:
        raise ValueError(f"benign updates must be a non-empty (m, d) matrix, got shape {b.shape}")
    return b


def sign_flip(own: np.ndarray, scale: float = SIGN_FLIP_SCALE) -> np.ndarray:
    """Sign flipping (e.g. Li et al., AAAI 2019, "RSA"): ``-scale * own``.

    ``scale`` > 0 sets how far the flipped update outweighs honest ones; see :data:`SIGN_FLIP_SCALE`.
    """
    if not scale > 0:
        raise ValueError(f"sign_flip scale must be positive, got {scale}")
    return -float(scale) * np.asarray(own, dtype=np.float64)


def gaussian(own: np.ndarray, rng: np.random.Generator, std: float = GAUSSIAN_STD) -> np.ndarray:
    """Gaussian noise (Blanchard et al. 2017, "Machine learning with adversaries"): pure noise, no signal.

    Each coordinate is ``N(0, (std * rms(own))^2)``, where ``rms(own) = |own| / sqrt(d)``: ``std`` is
    relative to the attacker's own benign update, so the noise norm is about ``std * |own|`` whatever the
    model. An all-zero ``own`` gives zero noise (there is no scale to be large relative to).
    """
    if not std > 0:
        raise ValueError(f"gaussian std must be positive, got {std}")
    v = np.asarray(own, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(v)))) if v.size else 0.0
    return rng.normal(0.0, std * rms, size=v.shape)


def alie_z(n: int, f: int) -> float:
    """The z_max of "A Little Is Enough" (Baruch et al. 2019) for ``f`` attackers among ``n`` workers.

    ``s = floor(n/2 + 1) - f`` honest workers must be won over to reach a majority; z_max is the largest z
    with ``Phi(z) <= (n - s) / n``, so that many honest workers sit further from the mean than the attack.
    Raises ValueError unless ``0 < f < n`` and the attackers are a minority (``s >= 1``).
    """
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    if s < 1:
        raise ValueError(f"ALIE assumes attackers are a minority: f={f} of n={n} leaves s={s} < 1")
    return _NORMAL.inv_cdf((n - s) / n)


def alie(benign: np.ndarray, n: int, f: int) -> np.ndarray:
    """A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019): ``mean - z_max * std`` per coordinate.

    ``mean`` and ``std`` (population, ddof=0) are over the colluders' ``benign`` rows, their estimate of
    the honest distribution; ``z_max = alie_z(n, f)``. Every coordinate is within the honest spread, so
    per-coordinate and distance-based rules (median, trimmed mean, Krum) accept it, yet all coordinates
    lean the same way. With one colluder the std is zero and this is its benign update.
    """
    b = _benign_matrix(benign)
    out: np.ndarray = b.mean(axis=0) - alie_z(n, f) * b.std(axis=0)
    return out


def ipm(benign: np.ndarray, epsilon: float = IPM_EPSILON) -> np.ndarray:
    """Inner product manipulation (Xie, Koyejo & Gupta, UAI 2019 "Fall of Empires"): ``-epsilon * mean``.

    Its inner product with the benign mean is ``-epsilon |mean|^2 < 0``; see :data:`IPM_EPSILON_SMALL`
    and :data:`IPM_EPSILON_LARGE` for the two regimes of the paper.
    """
    if not epsilon > 0:
        raise ValueError(f"ipm epsilon must be positive, got {epsilon}")
    out: np.ndarray = -float(epsilon) * _benign_matrix(benign).mean(axis=0)
    return out


def _perturbation(b: np.ndarray, kind: str) -> np.ndarray:
    """The direction ``p`` named ``kind`` (one of MINMAX_PERTURBATIONS) for benign rows ``b``."""
    mean: np.ndarray = b.mean(axis=0)
    if kind == "std":
        std: np.ndarray = b.std(axis=0)
        return -std
    if kind == "unit_vec":
        norm = float(np.linalg.norm(mean))
        return -mean / norm if norm > 0 else np.zeros_like(mean)
    if kind == "sign":
        sign: np.ndarray = np.sign(mean)
        return -sign
    raise ValueError(f"minmax perturbation must be one of {', '.join(MINMAX_PERTURBATIONS)}, got {kind!r}")


def minmax_gamma(benign: np.ndarray, perturbation: np.ndarray) -> float:
    """The largest gamma >= 0 with ``max_i |mu + gamma p - b_i| <= max_{i,j} |b_i - b_j|`` (mu the mean).

    The paper finds gamma by binary search; here it is exact. For each i the constraint is the quadratic
    ``|p|^2 g^2 - 2 <c_i, p> g + |c_i|^2 - R^2 <= 0`` in g (``c_i = b_i - mu``, R the largest pairwise
    distance), which holds at g = 0 because ``|mu - b_i| <= mean_j |b_j - b_i| <= R``; so the answer is the
    smallest of the quadratics' upper roots. It is shrunk by one part in 10^6 so that rounding cannot push
    the result across the boundary. Returns 0.0 when ``p`` is zero (there is no direction to move in).
    """
    b = _benign_matrix(benign)
    p = np.asarray(perturbation, dtype=np.float64)
    pp = float(p @ p)
    if pp == 0.0:
        return 0.0
    # Centred first: benign updates share a large common part, and distances taken from the Gram matrix
    # of uncentred rows would lose their digits to cancellation. Clipped: rounding can give tiny negatives.
    c = b - b.mean(axis=0)
    gram = c @ c.T
    sq = np.diag(gram)
    radius_sq = float(np.max(np.clip(sq[:, None] + sq[None, :] - 2 * gram, 0.0, None)))
    cp = c @ p
    disc = np.clip(cp * cp - pp * (sq - radius_sq), 0.0, None)
    roots = (cp + np.sqrt(disc)) / pp
    return max(0.0, float(np.min(roots)) * (1.0 - 1e-6))


def minmax(benign: np.ndarray, perturbation: str = "std") -> np.ndarray:
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021 "Manipulating the Byzantine"): ``mu + gamma * p``.

    ``mu`` is the mean of the colluders' ``benign`` rows, ``p`` the ``perturbation`` direction (one of
    :data:`MINMAX_PERTURBATIONS`; ``"std"`` means ``-std``, the paper's default), and gamma
    :func:`minmax_gamma`: the attack is no further from any benign update than the two most distant benign
    updates are from each other, so distance-based filters cannot single it out. With one colluder this
    is its benign update.
    """
    b = _benign_matrix(benign)
    p = _perturbation(b, perturbation)
    out: np.ndarray = b.mean(axis=0) + minmax_gamma(b, p) * p
    return out


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping (the baseline of Fang et al., USENIX Security 2020): class ``c`` becomes ``C - 1 - c``.

    A data attack: train honestly on these labels. It is an involution and moves every class when C is
    even (the middle class stays put when C is odd). Raises ValueError for labels outside ``[0, C)``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    flipped: np.ndarray = (num_classes - 1 - labels).astype(labels.dtype, copy=False)
    return flipped
