"""The worker's secure input: its update, clipped and fixed-point encoded, ready to be masked.

``encode_input`` runs on the training (main) thread right after local training (through
:mod:`federated.worker.payload`); the protocol steps are :mod:`federated.worker.session`'s. Layout of the
encoded vector: :mod:`federated.crypto.secagg_input`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from federated.aggregation.vectors import flatten
from federated.crypto import secagg_input
from federated.crypto.params import SecAggParams
from federated.privacy.noise import noise_rng, skellam_share
from federated.privacy.skellam import add_share

__all__ = ["encode_input"]


def encode_input(update: Mapping[str, np.ndarray] | np.ndarray, metrics: Mapping[str, float], num_samples: int,
                 params: SecAggParams, indices: np.ndarray | None = None, *,
                 skellam_mu: float | None = None, rounding_seed: bytes | None = None,
                 noise: np.random.Generator | None = None) -> np.ndarray:
    """Fixed-point encoding of this worker's contribution (uint32, ``params.vector_length``).

    ``update``: by tensor name, or already flat (in sorted tensor-name order, and already reduced to
    the round's shared coordinates when the caller did the random-k selection itself, as error feedback
    needs). ``indices``: under shared random-k compression, the coordinates of this round (the same on
    every worker), and only those of ``update`` are encoded.

    ``skellam_mu`` (distributed DP): add this worker's share of Skellam noise, ``Poisson(mu) - Poisson(mu)``
    per update coordinate in the integer domain, drawn from ``noise`` (default: an OS-seeded generator the
    broker cannot predict); the weight is then 1 (a sample count would scale this worker's influence past the clip) and
    the loss, accuracy and evaluation coordinates are 0 (un-noised, they would leak).

    ``metrics`` may carry the federated evaluation of the model the round started from: ``eval_loss`` and
    ``eval_accuracy`` (on the worker's held-out split); without them the evaluation coordinates are 0.

    ``rounding_seed`` (32 bytes) keys the stochastic rounding; default ``os.urandom(32)``. Both are the
    worker's local randomness (:class:`federated.worker.randomness.LocalRandomness`).

    The update is L2-clipped to ``params.clip``; the loss is capped at ``max(clip, 1)`` and the accuracy is
    in [0, 1], so every coordinate stays within the bound the wrap check assumed.
    """
    bound = max(float(params.clip), 1.0)
    part: np.ndarray | list[np.ndarray]
    if isinstance(update, np.ndarray):
        part = update.reshape(-1) if indices is None else update.reshape(-1)[indices]
    elif indices is None:
        # The tensors themselves, in sorted-name order: the encoder reads them as one vector, a block
        # at a time, so no whole-model copy is made (nor a float64 one).
        part = [np.asarray(update[k]).reshape(-1) for k in sorted(update)]
    else:
        part = flatten(update, np.result_type(*update.values()))[indices]
    size = part.size if isinstance(part, np.ndarray) else sum(p.size for p in part)
    loss = min(max(float(metrics.get("loss", 0.0)), 0.0), bound)
    accuracy = min(max(float(metrics.get("accuracy", 0.0)), 0.0), 1.0)
    evaluation: tuple[float, float] | None = None
    if "eval_loss" in metrics and "eval_accuracy" in metrics:
        evaluation = (min(max(float(metrics["eval_loss"]), 0.0), bound),
                      min(max(float(metrics["eval_accuracy"]), 0.0), 1.0))
    if skellam_mu is not None:
        loss = accuracy = 0.0
        evaluation = None
        num_samples = 1
    weight = max(1, min(num_samples, params.weight_cap))
    # The update is clipped to the clip bound; loss and accuracy ride along unclipped, already within it.
    encoded = secagg_input.encode_input(part, loss, accuracy, weight, params,
                                        rounding_seed if rounding_seed is not None else os.urandom(32), evaluation)
    if skellam_mu is None:
        return encoded
    share = np.zeros(encoded.shape[0], dtype=np.int64)
    share[:size] = skellam_share(size, skellam_mu, noise if noise is not None else noise_rng())
    return add_share(encoded, share)
