"""User-level clipping for DP-FedAvg: fixed L2 clipping of a whole update, and adaptive clipping.

:func:`clip_update` bounds one worker's contribution (all tensors together) to L2 norm ``clip``, which is
the sensitivity the Gaussian noise is calibrated to; :func:`clip_vector` does the same to an update held as
one flat vector (the broker's form). Both scale by :func:`clip_factor`.

:class:`AdaptiveClipper` follows Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning
with Adaptive Clipping" (NeurIPS 2021): the clip norm ``C`` tracks a target quantile ``gamma`` of the
update norms with the geometric rule ``C <- C * exp(-eta_c * (b_bar - gamma))``, where ``b_bar`` is the
fraction of the round's workers whose update norm was ``<= C``. That fraction is computed from private
data, so it is released with noise of its own: every worker contributes ``b_i - 1/2`` (sensitivity 1/2
under add/remove of a worker) and Gaussian noise of std ``sigma_b`` is added to the sum. The update and
the count together are then a Gaussian mechanism of noise multiplier

    sigma = (sigma_delta^-2 + (2 sigma_b)^-2)^(-1/2)

(their RDP curves ``alpha / (2 s^2)`` add), so to keep an overall ``sigma`` the update itself must use the
larger ``sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2)``: :func:`update_noise_multiplier`. Account
the rounds with ``sigma`` (not ``sigma_delta``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from federated.privacy.noise import noise_rng

__all__ = [
    "AdaptiveClipper",
    "clip_factor",
    "clip_update",
    "clip_vector",
    "combined_noise_multiplier",
    "global_norm",
    "update_noise_multiplier",
]


def _check_clip(clip: float, name: str = "clip") -> float:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {clip!r}")
    return float(clip)


def global_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all tensors of ``update`` taken together (squares summed in float64).

    Raises ValueError if a tensor is not finite.
    """
    total = 0.0
    for name, value in update.items():
        array = np.asarray(value, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} has non-finite values")
        total += float(np.dot(array.ravel(), array.ravel()))
    return math.sqrt(total)


def clip_factor(norm: float, clip: float) -> float:
    """The scale that brings an update of L2 norm ``norm`` within ``clip``: ``min(1, clip / norm)``, and 1
    for a zero update."""
    return min(1.0, clip / norm) if norm > 0 else 1.0


def clip_vector(vector: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``(clipped, original_norm)``: one worker's whole update as a flat vector, in float64, scaled by
    :func:`clip_factor`, and its L2 norm. Raises ValueError for ``clip`` not a finite number > 0 or a
    non-finite value."""
    clip = _check_clip(clip)
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("the update has non-finite values")
    norm = math.sqrt(float(np.dot(flat, flat)))
    return flat * clip_factor(norm, clip), norm


def clip_update(update: Mapping[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``(clipped, original_norm)``: ``update`` scaled by ``min(1, clip / norm)`` and its global L2 norm.

    The norm is over all tensors together (a worker's whole contribution), so the clipped update has norm
    ``<= clip``. Tensors keep their names, shapes and dtypes; the inputs are not modified. Raises
    ValueError for ``clip`` not a finite number > 0 or a non-finite tensor.
    """
    clip = _check_clip(clip)
    norm = global_norm(update)
    factor = clip_factor(norm, clip)
    clipped = _scaled(update, factor)
    if factor < 1.0 and global_norm(clipped) > clip:
        # Casting back to float32 can round the norm up by ~1e-7 relative; the bound is a privacy
        # guarantee, so shave a little more rather than exceed it.
        clipped = _scaled(update, factor * (1.0 - 1e-6))
    return clipped, norm


def _scaled(update: Mapping[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    out = {}
    for name, value in update.items():
        array = np.asarray(value)
        dtype = array.dtype if array.dtype.kind == "f" else np.dtype(np.float64)
        out[name] = (array.astype(np.float64) * factor).astype(dtype)
    return out


def combined_noise_multiplier(sigma_delta: float, sigma_b: float) -> float:
    """The overall noise multiplier of an update noised at ``sigma_delta`` plus a clipped-count release of
    noise std ``sigma_b`` (Andrew et al. 2021): ``(sigma_delta^-2 + (2 sigma_b)^-2)^(-1/2)``.

    ``sigma_b = 0`` means the count is released exactly (returns 0: no privacy). Raises ValueError for
    negative or non-finite inputs.
    """
    for name, value in (("sigma_delta", sigma_delta), ("sigma_b", sigma_b)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if sigma_delta == 0 or sigma_b == 0:
        return 0.0
    return float((sigma_delta**-2 + (2 * sigma_b) ** -2) ** -0.5)


def update_noise_multiplier(sigma: float, sigma_b: float) -> float:
    """The noise multiplier to put on the update so that, with the count noised at std ``sigma_b``, the
    round is a Gaussian mechanism of noise multiplier ``sigma``: ``(sigma^-2 - (2 sigma_b)^-2)^(-1/2)``.

    Raises ValueError unless ``sigma > 0`` and ``2 * sigma_b > sigma`` (otherwise the count alone would
    spend more than the whole budget).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if not (math.isfinite(sigma_b) and 2 * sigma_b > sigma):
        raise ValueError(f"sigma_b must be finite and > sigma / 2 = {sigma / 2:g}, got {sigma_b!r}")
    return float((sigma**-2 - (2 * sigma_b) ** -2) ** -0.5)


class AdaptiveClipper:
    """Clip norm that follows a target quantile of update norms (Andrew et al. 2021, geometric rule).

    ``clip`` is the initial norm C (the units of the updates); ``target_quantile`` gamma in [0, 1] (the
    paper's default 0.5: half the updates unclipped); ``learning_rate`` eta_c >= 0 (paper: 0.2);
    ``count_noise_std`` sigma_b >= 0, the std of the noise on the sum of ``b_i - 1/2`` (paper: expected
    cohort / 20; 0 releases the count exactly, which is not private). Raises ValueError naming a bad field.
    """

    def __init__(
        self,
        clip: float,
        *,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_std: float = 0.0,
    ) -> None:
        self.clip = _check_clip(clip)
        if not (math.isfinite(target_quantile) and 0.0 <= target_quantile <= 1.0):
            raise ValueError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
        if not (math.isfinite(learning_rate) and learning_rate >= 0.0):
            raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate!r}")
        if not (math.isfinite(count_noise_std) and count_noise_std >= 0.0):
            raise ValueError(f"count_noise_std must be a finite number >= 0, got {count_noise_std!r}")
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = float(count_noise_std)

    def indicator(self, norm: float) -> bool:
        """``b_i``: whether an update of L2 norm ``norm`` is within the current clip (``norm <= C``)."""
        return bool(norm <= self.clip)

    def noised_fraction(
        self,
        unclipped: Sequence[bool] | np.ndarray,
        *,
        expected_clients: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> float:
        """``b_bar`` in [0, 1]: ``(sum(b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2``, clamped to [0, 1].

        ``m`` is ``expected_clients`` (the expected cohort, as in the paper, so the denominator does not
        depend on who took part) or else ``len(unclipped)``. ``rng`` defaults to :func:`noise_rng`.
        Raises ValueError for an empty cohort without ``expected_clients`` or ``expected_clients <= 0``.
        """
        bits = np.asarray(unclipped, dtype=np.float64).ravel()
        m = float(len(bits)) if expected_clients is None else float(expected_clients)
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"expected_clients must be > 0 (or the cohort non-empty), got {m!r}")
        noise = 0.0
        if self.count_noise_std > 0:
            noise = float((rng if rng is not None else noise_rng()).normal(0.0, self.count_noise_std))
        fraction = (float(np.sum(bits - 0.5)) + noise) / m + 0.5
        return min(1.0, max(0.0, fraction))

    def step(self, fraction: float) -> float:
        """Apply ``C <- C * exp(-eta_c * (fraction - gamma))`` for an already-noised ``fraction`` in [0, 1]
        (e.g. decoded from a secure sum) and return the new C. Raises ValueError outside [0, 1]."""
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        self.clip = float(self.clip * math.exp(-self.learning_rate * (fraction - self.target_quantile)))
        return self.clip

    def update(
        self,
        norms: Sequence[float] | np.ndarray,
        *,
        expected_clients: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> float:
        """One round with a trusted aggregator that sees the update ``norms``: ``b_i = norm_i <= C``, the
        noised fraction, the geometric step. Returns the new C (for the next round)."""
        values = np.asarray(norms, dtype=np.float64).ravel()
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError("norms must be finite numbers >= 0")
        fraction = self.noised_fraction(values <= self.clip, expected_clients=expected_clients, rng=rng)
        return self.step(fraction)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (the current C and the settings)."""
        return {
            "clip": self.clip,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptiveClipper:
        """Rebuild from :meth:`to_dict`; raises ValueError for missing, unknown or bad fields."""
        keys = {"clip", "target_quantile", "learning_rate", "count_noise_std"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ValueError(f"adaptive clipper state must be an object with keys {sorted(keys)}")
        for key in keys:
            if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
                # ValueError for every defect of decoded state, as in the other from_dict methods.
                problem = f"adaptive clipper state {key!r} must be a number, got {data[key]!r}"
                raise ValueError(problem)  # noqa: TRY004
        return cls(
            data["clip"],
            target_quantile=data["target_quantile"],
            learning_rate=data["learning_rate"],
            count_noise_std=data["count_noise_std"],
        )

    def __repr__(self) -> str:
        return (
            f"AdaptiveClipper(clip={self.clip!r}, target_quantile={self.target_quantile!r}, "
            f"learning_rate={self.learning_rate!r}, count_noise_std={self.count_noise_std!r})"
        )
