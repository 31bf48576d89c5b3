"""The seed README's ``DifferentialPrivacyManager``: a thin façade over clipping, noise and accounting.

It privatises one gradient tree (clip the whole tree to ``max_grad_norm``, add Gaussian noise of std
``noise_multiplier * max_grad_norm``) and reports the (epsilon, delta) of a DP-SGD run. Training code
should use :mod:`federated.privacy.dpsgd` (per-example clipping, Poisson sampling, compiled); this class
serves the README's interface. MLX is imported only when a gradient tree is privatised, so the broker
can use :meth:`DifferentialPrivacyManager.compute_privacy_spent` without it.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from federated.privacy.accountant import ACCOUNTANTS, compute_epsilon
from federated.privacy.noise import noise_rng

__all__ = ["DifferentialPrivacyManager"]


class DifferentialPrivacyManager:
    """Gaussian-mechanism helper: ``noise_multiplier`` sigma (>= 0; 0 adds no noise and gives epsilon
    inf), ``max_grad_norm`` C (> 0, the L2 clip), ``delta`` in (0, 1), ``accountant`` "rdp" or "pld".

    Raises ValueError naming a bad argument.
    """

    def __init__(
        self, noise_multiplier: float, max_grad_norm: float, delta: float = 1e-5, accountant: str = "rdp"
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.accountant = accountant

    def add_noise_to_gradients(self, grads: Any) -> Any:
        """A privatised copy of ``grads``, a (nested dict/list) tree of ``mx.array``: the whole tree
        clipped to global L2 norm ``max_grad_norm``, then N(0, (noise_multiplier * max_grad_norm)^2) noise
        added to every entry. Same structure, shapes and dtypes; noise from :func:`noise_rng`.

        This clips the tree as *one* contribution (user-level, or a single example's gradient); for
        per-example clipping of a batch use :mod:`federated.privacy.dpsgd`. Raises ValueError for a
        tree with non-finite values.
        """
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten

        leaves = cast(list[tuple[str, mx.array]], tree_flatten(grads))
        # Through float32 (every MLX float dtype converts to it) into float64 for the norm and the noise.
        arrays = [np.asarray(value.astype(mx.float32), dtype=np.float64) for _, value in leaves]
        squares = 0.0
        for (name, _), array in zip(leaves, arrays, strict=True):
            if not np.isfinite(array).all():
                raise ValueError(f"gradient {name!r} has non-finite values")
            squares += float(np.dot(array.ravel(), array.ravel()))
        norm = math.sqrt(squares)
        factor = min(1.0, self.max_grad_norm / norm) if norm > 0 else 1.0
        std = self.noise_multiplier * self.max_grad_norm
        rng = noise_rng()
        noisy = []
        for (name, value), array in zip(leaves, arrays, strict=True):
            out = array * factor
            if std > 0:
                out = out + rng.normal(0.0, std, size=array.shape)
            noisy.append((name, mx.array(out.astype(np.float32)).astype(value.dtype)))
        return tree_unflatten(noisy)

    def compute_privacy_spent(
        self, num_iterations: int, batch_size: int, dataset_size: int
    ) -> tuple[float, float]:
        """``(epsilon, delta)`` of ``num_iterations`` DP-SGD steps with Poisson sampling at rate
        ``q = batch_size / dataset_size``, from the configured accountant (epsilon in nats; inf when
        ``noise_multiplier`` is 0). Raises ValueError for non-positive counts or batch_size > dataset_size.
        """
        for name, value in (("num_iterations", num_iterations), ("batch_size", batch_size),
                            ("dataset_size", dataset_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if batch_size > dataset_size:
            raise ValueError(f"batch_size ({batch_size}) cannot exceed dataset_size ({dataset_size})")
        q = batch_size / dataset_size
        epsilon = compute_epsilon(q, self.noise_multiplier, num_iterations, self.delta, self.accountant)
        return epsilon, self.delta

    def __repr__(self) -> str:
        return (
            f"DifferentialPrivacyManager(noise_multiplier={self.noise_multiplier!r}, "
            f"max_grad_norm={self.max_grad_norm!r}, delta={self.delta!r}, accountant={self.accountant!r})"
        )
