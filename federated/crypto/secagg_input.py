"""The layout of a secure-aggregation input, and of the sum of such inputs: defined once, used by the
worker that encodes and by the broker that decodes.

An input is ``params.vector_length`` coordinates of Z_2^ring_bits (fixed point, scale 2^frac_bits)::

    [ weight * clip_l2(update) ... | weight * loss | weight * accuracy | weight ]
      update coordinates             (EXTRA_COORDINATES = 3 after them)

The update is flattened in sorted tensor-name order (or reduced to a round's shared coordinates under
random-k compression). Loss and accuracy travel weighted, so the broker learns only their weighted sums,
never one worker's; the weight comes last, so the sum divided by the summed weight is the weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.crypto.fixedpoint import decode_sum, encode
from federated.crypto.params import SecAggParams

__all__ = ["EXTRA_COORDINATES", "InputSum", "encode_input", "split_sum", "update_length", "vector_length"]

#: Coordinates after the update: weight * loss, weight * accuracy, weight.
EXTRA_COORDINATES = 3


def vector_length(update_coordinates: int) -> int:
    """Coordinates of an encoded input carrying ``update_coordinates`` update values."""
    return update_coordinates + EXTRA_COORDINATES


def update_length(params: SecAggParams) -> int:
    """Update coordinates in one of this round's inputs."""
    return params.vector_length - EXTRA_COORDINATES


def encode_input(update: np.ndarray | Sequence[np.ndarray], loss: float, accuracy: float, weight: int,
                 params: SecAggParams, rounding_seed: bytes) -> np.ndarray:
    """One worker's input (uint32, ``params.vector_length``): its update L2-clipped to ``params.clip``
    and scaled by ``weight``, then the weighted loss and accuracy and the weight.

    ``update``: a flat vector, or a sequence of flat vectors read as their concatenation. ``loss`` must be
    in ``[0, max(clip, 1)]`` and ``accuracy`` in [0, 1] (the bounds the wrap check and the broker's sum
    checks assume); ``weight`` an integer in ``[1, weight_cap]``. ``rounding_seed`` (32 bytes) keys the
    stochastic rounding. Raises ``ValueError`` for a length that does not fit the round, or a value out
    of its range.
    """
    size = update.size if isinstance(update, np.ndarray) else sum(int(p.size) for p in update)
    if size != update_length(params):
        raise ValueError(f"the update has {size} coordinates to send; the round expects {update_length(params)}")
    if not 0.0 <= loss <= max(float(params.clip), 1.0) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"loss {loss!r} or accuracy {accuracy!r} is outside its encodable range")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= params.weight_cap:
        raise ValueError(f"weight must be an integer in [1, {params.weight_cap}], got {weight!r}")
    return encode(update, weight, clip=float(params.clip), frac_bits=params.frac_bits, seed=rounding_seed,
                  extra=(loss, accuracy))


@dataclass(frozen=True)
class InputSum:
    """A decoded sum of inputs: the summed weighted updates (float64), the summed weighted loss and
    accuracy, and the summed weight (all in model units, i.e. divided by 2^frac_bits)."""

    update: np.ndarray
    weighted_loss: float
    weighted_accuracy: float
    weight: float


def split_sum(total: np.ndarray, params: SecAggParams) -> InputSum:
    """The parts of an unmasked sum of inputs (two's complement in Z_2^ring_bits, decoded)."""
    data, weight = decode_sum(total, params.frac_bits, params.ring_bits)
    return InputSum(data[:-2], float(data[-2]), float(data[-1]), float(weight))
