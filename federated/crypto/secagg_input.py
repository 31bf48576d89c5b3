"""The layout of a secure-aggregation input, and of the sum of such inputs: defined once, used by the
worker that encodes and by the broker that decodes.

An input is ``params.vector_length`` coordinates of Z_2^ring_bits (fixed point, scale 2^frac_bits)::

    [ w * clip_l2(update) ... | w * loss | w * accuracy | w * e * eval_loss | w * e * eval_accuracy | w * e | w ]
      update coordinates          (EXTRA_COORDINATES = 6 after them; w the weight, e 1 if it evaluated)

The update is flattened in sorted tensor-name order (or reduced to a round's shared coordinates under
random-k compression). Loss and accuracy travel weighted, so the broker learns only their weighted sums,
never one worker's; the weight comes last, so the sum divided by the summed weight is the weighted mean.
The evaluation coordinates carry federated evaluation (the global model the round started from, scored on
the worker's held-out split): they are zero for a worker that did not evaluate, so the evaluated share of
the weight, ``w * e`` summed, is the divisor of their weighted means. An evaluation-only round has no
update coordinates at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.crypto.fixedpoint import decode_sum, encode
from federated.crypto.params import SecAggParams

__all__ = ["EXTRA_COORDINATES", "InputSum", "encode_input", "split_sum", "update_length", "vector_length"]

#: Coordinates after the update: the weighted training loss and accuracy, the weighted evaluation loss and
#: accuracy, the evaluated weight, the weight.
EXTRA_COORDINATES = 6


def vector_length(update_coordinates: int) -> int:
    """Coordinates of an encoded input carrying ``update_coordinates`` update values."""
    return update_coordinates + EXTRA_COORDINATES


def update_length(params: SecAggParams) -> int:
    """Update coordinates in one of this round's inputs."""
    return params.vector_length - EXTRA_COORDINATES


def encode_input(update: np.ndarray | Sequence[np.ndarray], loss: float, accuracy: float, weight: int,
                 params: SecAggParams, rounding_seed: bytes,
                 evaluation: tuple[float, float] | None = None) -> np.ndarray:
    """One worker's input (uint32, ``params.vector_length``): its update L2-clipped to ``params.clip``
    and scaled by ``weight``, then the weighted loss and accuracy, the weighted evaluation loss and
    accuracy (zero, and an evaluated weight of zero, when ``evaluation`` is None), and the weight.

    ``update``: a flat vector, or a sequence of flat vectors read as their concatenation. ``loss`` (and the
    evaluation loss) must be in ``[0, max(clip, 1)]`` and ``accuracy`` (and the evaluation accuracy) in
    [0, 1] (the bounds the wrap check and the broker's sum checks assume); ``weight`` an integer in
    ``[1, weight_cap]``. ``rounding_seed`` (32 bytes) keys the stochastic rounding. Raises ``ValueError``
    for a length that does not fit the round, or a value out of its range.
    """
    size = update.size if isinstance(update, np.ndarray) else sum(int(p.size) for p in update)
    if size != update_length(params):
        raise ValueError(f"the update has {size} coordinates to send; the round expects {update_length(params)}")
    if not 0.0 <= loss <= max(float(params.clip), 1.0) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"loss {loss!r} or accuracy {accuracy!r} is outside its encodable range")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= params.weight_cap:
        raise ValueError(f"weight must be an integer in [1, {params.weight_cap}], got {weight!r}")
    extra: tuple[float, ...] = (loss, accuracy, 0.0, 0.0, 0.0)
    if evaluation is not None:
        eval_loss, eval_accuracy = evaluation
        if not 0.0 <= eval_loss <= max(float(params.clip), 1.0) or not 0.0 <= eval_accuracy <= 1.0:
            raise ValueError(f"evaluation loss {eval_loss!r} or accuracy {eval_accuracy!r} is outside its "
                             "encodable range")
        extra = (loss, accuracy, eval_loss, eval_accuracy, 1.0)
    return encode(update, weight, clip=float(params.clip), frac_bits=params.frac_bits, seed=rounding_seed,
                  extra=extra)


@dataclass(frozen=True)
class InputSum:
    """A decoded sum of inputs: the summed weighted updates (float64), the summed weighted loss and
    accuracy, the summed weighted evaluation loss and accuracy and the weight of the inputs that evaluated,
    and the summed weight (all in model units, i.e. divided by 2^frac_bits)."""

    update: np.ndarray
    weighted_loss: float
    weighted_accuracy: float
    weighted_eval_loss: float
    weighted_eval_accuracy: float
    eval_weight: float
    weight: float


def split_sum(total: np.ndarray, params: SecAggParams) -> InputSum:
    """The parts of an unmasked sum of inputs (two's complement in Z_2^ring_bits, decoded)."""
    data, weight = decode_sum(total, params.frac_bits, params.ring_bits)
    loss, accuracy, eval_loss, eval_accuracy, evaluated = (float(v) for v in data[-(EXTRA_COORDINATES - 1):])
    return InputSum(data[:-(EXTRA_COORDINATES - 1)], loss, accuracy, eval_loss, eval_accuracy, evaluated,
                    float(weight))
