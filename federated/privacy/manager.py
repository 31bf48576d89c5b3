"""The seed README's ``DifferentialPrivacyManager``: a thin façade over clipping, noise and accounting,
whose epsilon accounts for what it really did.

It privatises gradient trees in one of two ways, and reports the (epsilon, delta) of the releases:

- ``add_noise_to_gradients(grads)`` (the seed's call) clips the *whole tree* once to ``max_grad_norm`` C and
  adds Gaussian noise of std ``noise_multiplier * C``: one Gaussian release whose sensitivity is C for the
  tree as one unit (zero-out adjacency: this tree against none). It is not a DP-SGD step. If the tree is a
  batch gradient, the clip bounds the batch, not an example in it (adding one example can flip the
  clipped sum, a change of 2C), and nothing here knows how the batch was sampled. So once such a release
  was made, :meth:`compute_privacy_spent` charges every step at sampling rate 1 (no amplification by
  subsampling), and the epsilon protects the tree's owner as a whole; for one example of a batch it
  would be that of noise multiplier sigma / 2. The old façade charged these at ``batch_size /
  dataset_size`` as if each were a per-example-clipped, Poisson-sampled DP-SGD step, which understated
  epsilon by orders of magnitude (0.95 instead of 655 for the seed snippet's 1,000 steps at sigma 1).
- ``add_noise_to_gradients(grads, per_example=True)`` takes per-example gradients (a leading batch axis on
  every leaf), clips each example's gradient to C, sums them and adds the noise once: a DP-SGD step with
  per-example sensitivity C (add or remove one example). If every release was of this kind,
  :meth:`compute_privacy_spent` gives the DP-SGD epsilon at ``q = batch_size / dataset_size``, which holds
  only if the caller drew each batch by Poisson sampling at that rate.

Dataset and batch sizes are treated as public: epsilon covers the examples' contents, not how many there
are. Training code should use :mod:`federated.privacy.dpsgd` (compiled per-example clipping, Poisson
sampling from OS entropy). MLX is imported only when a gradient tree is privatised, so the broker can use
:meth:`DifferentialPrivacyManager.compute_privacy_spent` without it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import numpy as np

from federated.privacy.accountant import ACCOUNTANTS, compute_epsilon
from federated.privacy.noise import noise_rng

__all__ = ["DifferentialPrivacyManager"]


class DifferentialPrivacyManager:
    """Gaussian-mechanism helper: ``noise_multiplier`` sigma (>= 0; 0 adds no noise and gives epsilon
    inf), ``max_grad_norm`` C (> 0, the L2 clip), ``delta`` in (0, 1), ``accountant`` "rdp" or "pld".

    It counts its releases (``tree_releases``: whole trees clipped once; ``example_steps``: per-example
    clipped batches) so that :meth:`compute_privacy_spent` accounts for what was done. Raises ValueError
    naming a bad argument.
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
        #: Whole trees clipped once and noised (each one release of sensitivity C, never amplified).
        self.tree_releases = 0
        #: Batches of per-example gradients clipped per example, summed and noised (DP-SGD steps).
        self.example_steps = 0

    def add_noise_to_gradients(self, grads: Any, *, per_example: bool = False) -> Any:
        """A privatised copy of ``grads``, a (nested dict/list) tree of ``mx.array``.

        ``per_example=False``: the whole tree is clipped to global L2 norm ``max_grad_norm`` as *one*
        contribution, then N(0, (noise_multiplier * max_grad_norm)^2) noise is added to every entry; same
        structure, shapes and dtypes. Counted as one release of sensitivity C, which
        :meth:`compute_privacy_spent` charges without amplification (see the module docstring).

        ``per_example=True``: every leaf has the same leading batch axis B >= 1; each example's gradient
        (its slice of every leaf) is clipped to ``max_grad_norm``, the B clipped gradients are summed and
        the noise is added once. Returns the noised *sum*, leaves without the batch axis; divide it by the
        expected batch size (q * dataset size), not by B, which would reveal the sampled count. Counted as
        one DP-SGD step.

        Noise comes from :func:`noise_rng` (OS-seeded). Raises ValueError for a tree with non-finite
        values, or per-example leaves without a common batch axis.
        """
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten

        leaves = cast(list[tuple[str, mx.array]], tree_flatten(grads))
        # Through float32 (every MLX float dtype converts to it) into float64 for the norm and the noise.
        arrays = [np.asarray(value.astype(mx.float32), dtype=np.float64) for _, value in leaves]
        for (name, _), array in zip(leaves, arrays, strict=True):
            if not np.isfinite(array).all():
                raise ValueError(f"gradient {name!r} has non-finite values")
        if per_example:
            clipped = self._clip_each_example(leaves, arrays)
        else:
            squares = sum(float(np.einsum("i,i->", a.ravel(), a.ravel())) for a in arrays)
            norm = math.sqrt(squares)
            factor = min(1.0, self.max_grad_norm / norm) if norm > 0 else 1.0
            clipped = [array * factor for array in arrays]
        std = self.noise_multiplier * self.max_grad_norm
        rng = noise_rng()
        noisy = []
        for (name, value), array in zip(leaves, clipped, strict=True):
            out = array + rng.normal(0.0, std, size=array.shape) if std > 0 else array
            noisy.append((name, mx.array(out.astype(np.float32)).astype(value.dtype)))
        if per_example:
            self.example_steps += 1
        else:
            self.tree_releases += 1
        return tree_unflatten(noisy)

    def _clip_each_example(self, leaves: list[tuple[str, Any]], arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The sum over the batch axis of each example's gradient clipped to ``max_grad_norm``."""
        sizes = {array.shape[0] if array.ndim else None for array in arrays}
        if len(sizes) != 1 or None in sizes or 0 in sizes:
            shapes = {name: tuple(array.shape) for (name, _), array in zip(leaves, arrays, strict=True)}
            raise ValueError(f"per-example gradients need one leading batch axis (>= 1) on every leaf, got {shapes}")
        batch = arrays[0].shape[0]
        squares = np.zeros(batch)
        for array in arrays:
            flat = array.reshape(batch, -1)
            squares += np.einsum("bi,bi->b", flat, flat)
        norms = np.sqrt(squares)
        factors = np.minimum(1.0, self.max_grad_norm / np.where(norms > 0, norms, 1.0))
        return [np.tensordot(factors, array, axes=1) for array in arrays]

    def compute_privacy_spent(
        self, num_iterations: int, batch_size: int, dataset_size: int
    ) -> tuple[float, float]:
        """``(epsilon, delta)`` (epsilon in nats, inf when ``noise_multiplier`` is 0) of ``max(num_iterations,
        releases made so far)`` steps, from the configured accountant:

        - if every release so far was per-example (or none was made yet: a plan), DP-SGD steps with Poisson
          sampling at rate ``q = batch_size / dataset_size``: valid only if the batches were drawn so;
        - once a whole tree was noised (``add_noise_to_gradients(grads)``), every step at rate 1, each one
          Gaussian release of sensitivity C, with a warning: a tree clipped once gets no amplification
          by subsampling, and this is its honest cost.

        Raises ValueError for non-positive counts or batch_size > dataset_size.
        """
        for name, value in (("num_iterations", num_iterations), ("batch_size", batch_size),
                            ("dataset_size", dataset_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if batch_size > dataset_size:
            raise ValueError(f"batch_size ({batch_size}) cannot exceed dataset_size ({dataset_size})")
        steps = max(num_iterations, self.tree_releases + self.example_steps)
        q = batch_size / dataset_size
        if self.tree_releases:
            warnings.warn(
                f"{self.tree_releases} whole gradient tree(s) were clipped once and noised: each is a release of "
                f"sensitivity max_grad_norm with no amplification by sampling, so epsilon is computed at "
                f"sampling rate 1, not {q:.4g}; for DP-SGD pass per-example gradients "
                f"(add_noise_to_gradients(grads, per_example=True)) or use federated.privacy.dpsgd",
                stacklevel=2)
            q = 1.0
        epsilon = compute_epsilon(q, self.noise_multiplier, steps, self.delta, self.accountant)
        return epsilon, self.delta

    def __repr__(self) -> str:
        return (
            f"DifferentialPrivacyManager(noise_multiplier={self.noise_multiplier!r}, "
            f"max_grad_norm={self.max_grad_norm!r}, delta={self.delta!r}, accountant={self.accountant!r})"
        )
