"""Record-level DP-SGD (Abadi et al. 2016) in MLX: the only privacy module that imports MLX.

One DP-SGD step on a Poisson sample of the local data (each example in independently with probability
``q``):

1. per-example gradients of the cross-entropy loss, ``mx.vmap`` of ``mx.value_and_grad`` over the batch
   (no Python loop over examples);
2. each example's gradient clipped to global L2 norm ``C`` (all tensors together);
3. the clipped gradients summed, Gaussian noise of std ``sigma * C`` added to the sum, and the result
   divided by the *expected* batch size ``q * N`` (not the realised one, which is private);
4. the optimizer step with that gradient (post-processing: SGD, momentum or Adam are all fine).

Shapes: a Poisson batch has a random size, so it is padded to a fixed number of rows
(:func:`poisson_batch_rows`) with a 0/1 mask; padded rows get clip factor 0. The rare batch larger than
the padded size is not truncated (that would change the mechanism): the extra examples go through
:meth:`DpSgdStep.accumulate` in further chunks and their clipped sum joins the noise vector.

Noise comes from :func:`federated.privacy.noise.noise_rng` (NumPy PCG64 seeded with 256 bits of
``os.urandom``), drawn on the host and passed into the compiled step. Why not ``mx.random`` with an
OS-seeded key: on the CPU backend NumPy's generator measured 1.3-2.5x faster for 5k-1M values, its seed
is 256 rather than 64 bits, and all privacy noise then has one audited source. Poisson *sampling* uses the
trainer's seed (reproducible, and which examples were drawn is not released).

Models whose operations have no ``vmap`` rule in MLX (the built-in CNN: its convolution's gradient uses
``as_strided``) fall back to an unrolled trace: the per-example gradients are traced once per batch shape
as B copies of the gradient inside ``mx.compile``. Same result, slower to compile;
:func:`supports_vmap` tells which path a model takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx import nn
from mlx.utils import tree_unflatten

from federated.models import flat_parameters
from federated.privacy.noise import noise_rng

__all__ = [
    "DpSgdStep",
    "clip_per_example",
    "clipped_per_example_gradients",
    "per_example_gradients",
    "poisson_batch_rows",
    "poisson_sample",
    "private_gradient",
    "supports_vmap",
]

#: Norms below this are treated as this, so a zero gradient gets factor 1 rather than 0/0.
_TINY_NORM = 1e-12

_PerExample = Callable[[Any, mx.array, mx.array], tuple[list[mx.array], mx.array, mx.array]]


# ----------------------------------------------------------------------------------------- gradients


def _example_loss_fn(model: nn.Module) -> Callable[[Any, mx.array, mx.array], tuple[mx.array, mx.array]]:
    def example_loss(params: Any, x: mx.array, y: mx.array) -> tuple[mx.array, mx.array]:
        model.update(params)
        logits = model(x[None])
        loss = nn.losses.cross_entropy(logits, y[None], reduction="sum")
        correct = (mx.argmax(logits, axis=1) == y[None]).sum()
        return loss, correct

    return example_loss


def _per_example_fn(model: nn.Module, *, vectorize: bool) -> _PerExample:
    """``f(params, x, y) -> (flat grads [(B, *shape)], losses (B,), correct (B,))``.

    ``model.update`` inside the traced loss leaves tracer arrays in the model; callers restore the real
    parameters afterwards (``model.update(params)``).
    """
    value_and_grad = mx.value_and_grad(_example_loss_fn(model))
    if vectorize:
        batched = mx.vmap(value_and_grad, in_axes=(None, 0, 0))

        def vmapped(params: Any, x: mx.array, y: mx.array) -> tuple[list[mx.array], mx.array, mx.array]:
            (losses, correct), grads = batched(params, x, y)
            return [g for _, g in flat_parameters(grads)], losses, correct

        return vmapped

    def unrolled(params: Any, x: mx.array, y: mx.array) -> tuple[list[mx.array], mx.array, mx.array]:
        outs = [value_and_grad(params, x[i], y[i]) for i in range(x.shape[0])]
        per_row = [[g for _, g in flat_parameters(grads)] for _, grads in outs]
        grads = [mx.stack(list(column)) for column in zip(*per_row, strict=True)]
        losses = mx.stack([loss.reshape(()) for (loss, _), _ in outs])
        correct = mx.stack([c.reshape(()) for (_, c), _ in outs])
        return grads, losses, correct

    return unrolled


def supports_vmap(model: nn.Module, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether MLX can ``vmap`` the per-example gradient of ``model`` (tried on the first row of ``x, y``).

    The model's parameters are left as they were.
    """
    params = model.trainable_parameters()
    try:
        grads, losses, _ = _per_example_fn(model, vectorize=True)(params, mx.array(x[:1]), mx.array(y[:1]))
        mx.eval(grads, losses)
    except (ValueError, RuntimeError) as exc:
        if "vmap" not in str(exc):
            raise
        return False
    finally:
        model.update(params)
    return True


def per_example_gradients(
    model: nn.Module, x: mx.array, y: mx.array, *, vectorize: bool = True
) -> tuple[list[tuple[str, mx.array]], mx.array, mx.array]:
    """``([(name, grad (B, *shape))], losses (B,), correct (B,))``: each example's cross-entropy gradient
    with respect to the trainable parameters, its loss and whether it was classified right.

    ``vectorize=False`` traces one gradient per row instead of ``vmap`` (for models ``vmap`` cannot
    handle). The model's parameters are left as they were.
    """
    params = model.trainable_parameters()
    names = [name for name, _ in flat_parameters(params)]
    try:
        grads, losses, correct = _per_example_fn(model, vectorize=vectorize)(params, x, y)
    finally:
        model.update(params)
    return list(zip(names, grads, strict=True)), losses, correct


def _squared_norms(grads: Sequence[mx.array]) -> mx.array:
    """(B,) squared L2 norm of each row over all tensors (reductions over the non-batch axes, no copies)."""
    total = mx.zeros((grads[0].shape[0],))
    for g in grads:
        squares = mx.square(g)
        total = total + (squares.sum(axis=tuple(range(1, g.ndim))) if g.ndim > 1 else squares)
    return total


def _clip_factor(squared_norms: mx.array, clip: float | mx.array) -> mx.array:
    """(B,) ``min(1, clip / norm)``; a zero gradient gets 1 (norm floored at 1e-12, not divided by 0)."""
    return mx.minimum(1.0, clip * mx.rsqrt(mx.maximum(squared_norms, _TINY_NORM**2)))


def clip_per_example(
    grads: Sequence[mx.array], clip: float | mx.array, weights: mx.array | None = None
) -> tuple[list[mx.array], mx.array]:
    """``(clipped, norms)``: per-example gradients (each ``(B, ...)``) scaled by
    ``weights * min(1, clip / norm)`` with ``norm`` the example's L2 norm over all tensors.

    ``weights`` (B,) is the 0/1 row mask (padded rows -> 0); omitted, every row counts. In float32 a
    clipped norm can exceed ``clip`` by a few parts in 10^7.
    """
    rows = grads[0].shape[0]
    squared = _squared_norms(grads)
    factor = _clip_factor(squared, clip)
    if weights is not None:
        factor = factor * weights
    clipped = [g * factor.reshape((rows,) + (1,) * (g.ndim - 1)) for g in grads]
    return clipped, mx.sqrt(squared)


def clipped_per_example_gradients(
    model: nn.Module, x: np.ndarray, y: np.ndarray, clip: float, *, vectorize: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """NumPy view of steps 1-2 for checks: ``({name: (B, *shape)} clipped gradients, (B,) norms before
    clipping)``. Raises ValueError for ``clip`` not a finite number > 0."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    named, _, _ = per_example_gradients(model, mx.array(x), mx.array(y), vectorize=vectorize)
    clipped, norms = clip_per_example([g for _, g in named], clip)
    mx.eval(clipped, norms)
    return {name: np.array(g) for (name, _), g in zip(named, clipped, strict=True)}, np.array(norms)


def private_gradient(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    clip: float,
    noise_multiplier: float,
    expected_batch: float,
    rng: np.random.Generator | None = None,
    vectorize: bool = True,
) -> dict[str, np.ndarray]:
    """One DP-SGD gradient, uncompiled (a reference for the compiled step): ``(sum_i clip(g_i) +
    N(0, (noise_multiplier * clip)^2 I)) / expected_batch`` over the rows of ``x, y``.

    ``rng`` defaults to :func:`noise_rng`. Raises ValueError for a non-positive clip or expected batch,
    or a negative noise multiplier.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(expected_batch) and expected_batch > 0):
        raise ValueError(f"expected_batch must be a finite number > 0, got {expected_batch!r}")
    clipped, _ = clipped_per_example_gradients(model, x, y, clip, vectorize=vectorize)
    rng = rng if rng is not None else noise_rng()
    out = {}
    for name, g in clipped.items():
        summed = g.sum(axis=0, dtype=np.float64)
        noise = rng.normal(0.0, noise_multiplier * clip, size=summed.shape)
        out[name] = ((summed + noise) / expected_batch).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------ sampling


def poisson_batch_rows(n: int, q: float) -> int:
    """Rows of the padded Poisson batch for ``n`` examples at rate ``q``: the expected size plus one
    standard deviation, rounded up to a multiple of 8, and never more than the plain trainer's
    ``next power of two >= n`` (so q = 1 never overflows).

    Smaller means less work on padding; the price is an extra chunk on the ~2-15% of steps whose sample
    is larger (handled exactly, see :class:`DpSgdStep`).
    """
    mean = n * q
    std = math.sqrt(n * q * (1.0 - q))
    padded = 8 * max(1, math.ceil((mean + std) / 8))
    return min(padded, 1 << max(0, (n - 1).bit_length()))


def poisson_sample(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    """Indices (sorted, int64) of one Poisson sample: each of ``n`` examples independently with
    probability ``q``. Drawn as a Binomial(n, q) size and a uniform subset of that size, which is the
    same distribution at O(size) cost."""
    k = int(rng.binomial(n, q))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


# ------------------------------------------------------------------------------------ compiled step


class DpSgdStep:
    """The compiled DP-SGD step for one (model, optimizer, FedProx on/off), reused across fits.

    ``step(xb, yb, wb, perturbation, anchor, mu, clip, inv_denominator) -> (ce_sum, correct)`` runs 1-4
    above on a padded batch; ``perturbation`` (flat, length :attr:`num_parameters`) is the noise
    ``sigma * C * z`` plus the clipped sums of any overflow chunks. With FedProx, ``mu * (w - anchor)`` is
    added to the privatised gradient: it depends only on the current and global weights, not on the data,
    so it needs no clipping or noise. ``accumulate(xb, yb, wb, clip) -> (flat clipped sum, ce_sum,
    correct)`` handles overflow chunks. Both read the model and optimizer state directly.
    """

    def __init__(
        self, model: nn.Module, optimizer: optim.Optimizer, *, proximal: bool, vectorize: bool = True
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.proximal = proximal
        self.vectorize = vectorize
        flat = flat_parameters(model.trainable_parameters())
        self.names = [name for name, _ in flat]
        self.shapes = [tuple(value.shape) for _, value in flat]
        sizes = [int(value.size) for _, value in flat]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        per_example = _per_example_fn(model, vectorize=vectorize)

        def clipped_sum(
            xb: mx.array, yb: mx.array, wb: mx.array, clip: mx.array
        ) -> tuple[list[mx.array], mx.array, mx.array]:
            params = model.trainable_parameters()
            grads, losses, correct = per_example(params, xb, yb)
            model.update(params)  # put the real parameters back in place of the traced ones
            factor = wb * _clip_factor(_squared_norms(grads), clip)
            # One (B,) x (B, size) product per tensor: the clipped sum without materialising clipped copies.
            sums = [mx.tensordot(factor, g, axes=1) for g in grads]
            return sums, (losses * wb).sum(), (correct * wb).sum()

        def step(
            xb: mx.array,
            yb: mx.array,
            wb: mx.array,
            perturbation: mx.array,
            anchor: list[mx.array],
            mu: mx.array,
            clip: mx.array,
            inv_denominator: mx.array,
        ) -> tuple[mx.array, mx.array]:
            sums, ce_sum, correct = clipped_sum(xb, yb, wb, clip)
            grads = []
            for i, (summed, shape) in enumerate(zip(sums, self.shapes, strict=True)):
                noise = perturbation[self.offsets[i] : self.offsets[i + 1]].reshape(shape)
                grads.append((summed + noise) * inv_denominator)
            if proximal:
                params = [value for _, value in flat_parameters(model.trainable_parameters())]
                grads = [g + mu * (p - a) for g, p, a in zip(grads, params, anchor, strict=True)]
            optimizer.update(model, tree_unflatten(list(zip(self.names, grads, strict=True))))
            return ce_sum, correct

        def accumulate(
            xb: mx.array, yb: mx.array, wb: mx.array, clip: mx.array
        ) -> tuple[mx.array, mx.array, mx.array]:
            sums, ce_sum, correct = clipped_sum(xb, yb, wb, clip)
            return mx.concatenate([s.reshape(-1) for s in sums]), ce_sum, correct

        state = [model.state, optimizer.state]
        self._step = mx.compile(step, inputs=state, outputs=state)
        # The state is an output too only so that compile restores the model after the traced update.
        self._accumulate = mx.compile(accumulate, inputs=[model.state], outputs=[model.state])

    @property
    def num_parameters(self) -> int:
        """Length of the flat perturbation vector (all trainable parameters)."""
        return self.offsets[-1]

    def step(
        self,
        xb: mx.array,
        yb: mx.array,
        wb: mx.array,
        perturbation: mx.array,
        anchor: list[mx.array],
        mu: mx.array,
        clip: mx.array,
        inv_denominator: mx.array,
    ) -> tuple[mx.array, mx.array]:
        """One DP-SGD update of the model (see the class docstring); returns (loss sum, correct count)
        over the real rows of the batch, as lazy MLX scalars."""
        ce_sum, correct = self._step(xb, yb, wb, perturbation, anchor, mu, clip, inv_denominator)
        return ce_sum, correct

    def accumulate(
        self, xb: mx.array, yb: mx.array, wb: mx.array, clip: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """(flat clipped-gradient sum, loss sum, correct count) of a chunk; the model is not changed."""
        flat, ce_sum, correct = self._accumulate(xb, yb, wb, clip)
        return flat, ce_sum, correct
